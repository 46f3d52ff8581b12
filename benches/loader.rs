//! The distill loader's decode rate, in tokens per second: shards (zstd Parquet, k = 50,
//! vocab 32,000, LLM-like top-k records) decoded into shuffled training batches.
//!
//! Baseline in the same run: decoding every row group straight into one reused buffer with
//! `ShardReader::read_row_group_into` (no shuffling, no batch assembly, no thread hand-off),
//! one row group at a time on the bench thread: single-threaded decoding, the figure
//! `benches/peers/loader_pyarrow.py` is compared with.
//!
//! The shards are written to `target/bench-data/loader/shards/` (deleted and rewritten on every
//! run), so that the pyarrow peer reads the very same files.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use taidcache::cache::manifest::Manifest;
use taidcache::cache::reader::ShardReader;
use taidcache::cache::writer::{default_row_group_rows, write_shard_atomic, WriteOptions};
use taidcache::cache::ShardBatch;
use taidcache::distill::loader::{Cursor, Loader, LoaderOptions};
use taidcache::testing::llm_like_batch;

const SEQ_LEN: usize = 1024;
const ROWS: usize = 16;
const SHARDS: usize = 4;
const K: usize = 50;
const VOCAB: usize = 32_000;
const BATCH: usize = 4;

/// A cache of `SHARDS` shards of `ROWS` rows each, with a manifest listing them.
fn cache(dir: &std::path::Path) -> Manifest {
    let batch = llm_like_batch(ROWS, SEQ_LEN, K, VOCAB, 0);
    let opts = WriteOptions {
        row_group_rows: default_row_group_rows(SEQ_LEN, K),
        ..Default::default()
    };
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    let mut shards = Vec::new();
    for i in 0..SHARDS {
        let mut b = batch.clone();
        for (r, id) in b.seq_ids.iter_mut().enumerate() {
            *id = (i * ROWS + r) as u64;
        }
        let rel = format!("shards/part-{i:05}.parquet");
        let mut e = write_shard_atomic(&dir.join(&rel), &b, &opts).unwrap();
        e.index = i as u64;
        e.path = rel;
        shards.push(e);
    }
    let mut m = taidcache::testing::sample_manifest(0, 0);
    m.top_k = K;
    m.vocab_size = VOCAB;
    m.packing.seq_len = SEQ_LEN;
    m.shards = shards;
    m
}

/// `target/bench-data/loader` (under `CARGO_TARGET_DIR` when set), emptied.
fn bench_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |t| root.join(t));
    let dir = target.join("bench-data").join("loader");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bench(c: &mut Criterion) {
    let dir = bench_dir();
    let m = cache(&dir);
    let tokens = (SHARDS * ROWS * SEQ_LEN) as u64;
    let cache_handle = taidcache::cache::Cache::new(&dir, m.clone()).unwrap();
    let (units, _) = cache_handle.units(0.0).unwrap();
    let mut group = c.benchmark_group("loader");
    group.sample_size(10);
    group.throughput(Throughput::Elements(tokens));

    let readers: Vec<ShardReader> = m
        .shards
        .iter()
        .map(|e| ShardReader::open(&dir.join(&e.path)).unwrap())
        .collect();
    let mut buf = ShardBatch::new(SEQ_LEN, K);
    group.bench_function("read_row_group_into", |b| {
        b.iter(|| {
            for r in &readers {
                for g in 0..r.num_row_groups() {
                    r.read_row_group_into(g, &mut buf).unwrap();
                }
            }
        })
    });
    for threads in [1, 2] {
        group.bench_with_input(
            BenchmarkId::new("epoch_shuffled", threads),
            &threads,
            |b, &threads| {
                b.iter(|| {
                    let mut opts = LoaderOptions::train(BATCH, 0);
                    opts.threads = threads;
                    opts.repeat = false;
                    opts.verify = false;
                    let mut l =
                        Loader::new(&cache_handle, &units, opts, Cursor::default()).unwrap();
                    while let Some(batch) = l.next_batch() {
                        l.recycle(batch.unwrap().data);
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
