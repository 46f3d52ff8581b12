//! Shard writing: a teacher batch's rows encoded to Parquet with zstd and written atomically.
//! Throughput in tokens; bytes/token is printed once per configuration.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::slice::HalfFloatSliceExt;
use taidcache::cache::writer::{
    default_row_group_rows, write_shard_atomic, ShardBatch, WriteOptions,
};
use taidcache::precompute::topk::topk_rows;
use taidcache::testing::llm_like_logits;

const SEQ_LEN: usize = 1024;
const ROWS: usize = 8;
const K: usize = 50;
const VOCAB: usize = 32_000;

/// Rows with real top-k records of LLM-like logits.
fn batch() -> ShardBatch {
    let mut b = ShardBatch::new(SEQ_LEN, K);
    let positions = ROWS * SEQ_LEN;
    let mut lp = vec![0f32; positions * K];
    b.topk_ids.resize(positions * K, 0);
    b.tail_logmass.resize(positions, 0.0);
    // Generate in slices to bound memory.
    let step = 512;
    for start in (0..positions).step_by(step) {
        let logits = llm_like_logits(step, VOCAB, start as u64);
        topk_rows(
            &logits,
            VOCAB,
            K,
            &mut b.topk_ids[start * K..(start + step) * K],
            &mut lp[start * K..(start + step) * K],
            &mut b.tail_logmass[start..start + step],
        )
        .unwrap();
    }
    b.topk_logprobs.resize(positions * K, half::f16::ZERO);
    b.topk_logprobs.convert_from_f32_slice(&lp);
    for r in 0..ROWS {
        b.seq_ids.push(r as u64);
        b.input_ids
            .extend((0..SEQ_LEN).map(|i| ((i * 7919 + r) % VOCAB) as u32));
        b.loss_mask.extend(std::iter::repeat_n(true, SEQ_LEN));
    }
    b
}

fn bench(c: &mut Criterion) {
    let b = batch();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("shard_write");
    group.sample_size(10);
    group.throughput(Throughput::Elements((ROWS * SEQ_LEN) as u64));
    for level in [1, 3, 9] {
        let opts = WriteOptions {
            zstd_level: level,
            row_group_rows: default_row_group_rows(SEQ_LEN, K),
            metadata: Vec::new(),
        };
        let path = dir.path().join(format!("level-{level}.parquet"));
        let entry = write_shard_atomic(&path, &b, &opts).unwrap();
        let tokens = (ROWS * SEQ_LEN) as f64;
        let raw = tokens * (K * 6 + 9) as f64;
        eprintln!(
            "shard_write zstd {level}: {:.1} bytes/token (raw {:.1}, ratio {:.2})",
            entry.bytes as f64 / tokens,
            raw / tokens,
            raw / entry.bytes as f64
        );
        group.bench_with_input(BenchmarkId::new("zstd", level), &b, |bench, b| {
            bench.iter(|| write_shard_atomic(&path, b, &opts).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
