//! Shard writing: a teacher batch's rows encoded to Parquet with zstd and written atomically.
//! Throughput in tokens; bytes/token is printed once per configuration.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use taidcache::cache::writer::{default_row_group_rows, write_shard_atomic, WriteOptions};
use taidcache::cache::Encoding;
use taidcache::testing::llm_like_batch;

const SEQ_LEN: usize = 1024;
const ROWS: usize = 8;
const K: usize = 50;
const VOCAB: usize = 32_000;

fn bench(c: &mut Criterion) {
    let b = llm_like_batch(ROWS, SEQ_LEN, K, VOCAB, 0);
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("shard_write");
    group.sample_size(10);
    group.throughput(Throughput::Elements((ROWS * SEQ_LEN) as u64));
    for (encoding, level) in [
        (Encoding::Plain, 1),
        (Encoding::Plain, 3),
        (Encoding::Plain, 9),
        (Encoding::Compact, 3),
        (Encoding::Steps, 3),
    ] {
        let opts = WriteOptions {
            zstd_level: level,
            row_group_rows: default_row_group_rows(SEQ_LEN, K),
            metadata: Vec::new(),
            encoding,
            tail_draws: 0,
        };
        let name = match encoding {
            Encoding::Plain => "zstd",
            Encoding::Compact => "compact-zstd",
            Encoding::Steps => "steps-zstd",
        };
        let path = dir.path().join(format!("{name}-{level}.parquet"));
        let entry = write_shard_atomic(&path, &b, &opts).unwrap();
        let tokens = (ROWS * SEQ_LEN) as f64;
        let raw = tokens * (K * 6 + 9) as f64;
        eprintln!(
            "shard_write {name} {level}: {:.1} bytes/token (raw {:.1}, ratio {:.2})",
            entry.bytes as f64 / tokens,
            raw / tokens,
            raw / entry.bytes as f64
        );
        group.bench_with_input(BenchmarkId::new(name, level), &b, |bench, b| {
            bench.iter(|| write_shard_atomic(&path, b, &opts).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
