//! Top-k extraction at k = 50 on LLM-like logits, parallel over rows with rayon; throughput in
//! positions (rows). Three functions on the same rows:
//!
//! - `select`: taidcache's one-pass selection with normalizer and tail mass;
//! - `max_pass`: a maximum over every row, the fastest pass that reads the same bytes (the
//!   memory-bandwidth floor the selection is held against);
//! - `full_sort`: the simple reference (full log-softmax and a sort of every row);
//! - `select_cached_1t`, `max_cached_1t`: the first two on one thread over one row read `ROWS`
//!   times, so that it comes from the cache: their compute cost alone, for the profile in
//!   `docs/performance.md` (one-thread `select` ≈ memory time of `max_pass` + this compute);
//! - `select_flat_cached_1t/32000`: the same on a row of standard normal logits, like the
//!   random teacher's of `benches/precompute.rs`, where most chunks hold candidates.
//!
//! After the criterion groups, `select` and `max_pass` at vocab 151,936 are also timed in
//! alternation (`PAIRED_ROUNDS` rounds, see `benches/common/paired.rs`): the median per-round
//! ratio goes to `target/bench-results/topk.json` for `make bench` (`--bench topk -- paired`
//! runs only that).
//!
//! The 151,936-vocabulary rows are also written to `target/bench-data/topk/` for the numpy peer
//! (`benches/peers/topk_numpy.py`).

#[path = "common/paired.rs"]
mod paired;
#[path = "common/results.rs"]
mod results;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use taidcache::precompute::topk::bench::{row_max, topk_row, topk_row_by_sort};
use taidcache::precompute::topk::topk_rows;
use taidcache::testing::llm_like_logits;

const ROWS: usize = 256;
const K: usize = 50;

fn write_for_peers(vocab: usize, logits: &[f32]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/topk");
    std::fs::create_dir_all(&dir).expect("creating target/bench-data/topk");
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(dir.join(format!("logits_{vocab}.f32")), bytes).expect("writing peer logits");
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("topk");
    group.sample_size(10);
    for vocab in [32_000usize, 151_936] {
        let logits = llm_like_logits(ROWS, vocab, 1);
        if vocab == 151_936 {
            write_for_peers(vocab, &logits);
        }
        group.throughput(Throughput::Elements(ROWS as u64));
        let (mut ids, mut lp, mut tail) =
            (vec![0u32; ROWS * K], vec![0f32; ROWS * K], vec![0f32; ROWS]);
        group.bench_with_input(BenchmarkId::new("select", vocab), &logits, |b, logits| {
            b.iter(|| topk_rows(logits, vocab, K, &mut ids, &mut lp, &mut tail).unwrap())
        });
        // The same work on one row re-read ROWS times, so it comes from the cache: the
        // selection's compute alone, and the max pass's, on one thread.
        let hot = &logits[..vocab];
        let (mut hot_ids, mut hot_lp) = (vec![0u32; K], vec![0f32; K]);
        group.bench_with_input(
            BenchmarkId::new("select_cached_1t", vocab),
            hot,
            |b, hot| {
                b.iter(|| {
                    for _ in 0..ROWS {
                        topk_row(hot, &mut hot_ids, &mut hot_lp).unwrap();
                    }
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("max_cached_1t", vocab), hot, |b, hot| {
            b.iter(|| {
                for _ in 0..ROWS {
                    std::hint::black_box(row_max(hot));
                }
            })
        });
        let mut maxima = vec![0f32; ROWS];
        group.bench_with_input(BenchmarkId::new("max_pass", vocab), &logits, |b, logits| {
            b.iter(|| {
                logits
                    .par_chunks(vocab)
                    .zip(maxima.par_iter_mut())
                    .for_each(|(row, m)| *m = row_max(row))
            })
        });
        group.bench_with_input(
            BenchmarkId::new("full_sort", vocab),
            &logits,
            |b, logits| {
                b.iter(|| {
                    logits
                        .par_chunks(vocab)
                        .map(|row| topk_row_by_sort(row, K))
                        .collect::<Vec<_>>()
                })
            },
        );
    }
    // Rows like a random teacher's (the precompute bench's): standard normal logits, so the
    // k-th value rises slowly and most chunks of a row hold a candidate. One row, cached, one
    // thread: the candidates' share of the compute.
    let vocab = 32_000;
    let mut rng = taidcache::testing::Normal::new(5);
    let flat: Vec<f32> = (0..vocab).map(|_| rng.sample()).collect();
    let (mut flat_ids, mut flat_lp) = (vec![0u32; K], vec![0f32; K]);
    group.bench_with_input(
        BenchmarkId::new("select_flat_cached_1t", vocab),
        &flat,
        |b, flat| {
            b.iter(|| {
                for _ in 0..ROWS {
                    topk_row(flat, &mut flat_ids, &mut flat_lp).unwrap();
                }
            })
        },
    );
    group.finish();
}

/// Rounds of the paired run, and passes over the 256 rows per timing.
const PAIRED_ROUNDS: usize = 40;
const PAIRED_PASSES: usize = 5;

/// `select` and `max_pass` at vocab 151,936 in alternation: the median per-round ratio.
fn paired() {
    let vocab = 151_936;
    let logits = llm_like_logits(ROWS, vocab, 1);
    let (mut ids, mut lp, mut tail) =
        (vec![0u32; ROWS * K], vec![0f32; ROWS * K], vec![0f32; ROWS]);
    let mut maxima = vec![0f32; ROWS];
    let mut select = || {
        for _ in 0..PAIRED_PASSES {
            topk_rows(&logits, vocab, K, &mut ids, &mut lp, &mut tail).unwrap();
        }
    };
    let mut max_pass = || {
        for _ in 0..PAIRED_PASSES {
            logits
                .par_chunks(vocab)
                .zip(maxima.par_iter_mut())
                .for_each(|(row, m)| *m = row_max(row));
        }
    };
    select();
    max_pass();
    let (s, m) = paired::alternate(PAIRED_ROUNDS, select, max_pass);
    let per_pass = |v: &[f64]| {
        v.iter()
            .map(|t| t * 1e3 / PAIRED_PASSES as f64)
            .collect::<Vec<_>>()
    };
    paired::record(
        "topk",
        ["select", "max_pass"],
        "ms",
        &per_pass(&s),
        &per_pass(&m),
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if paired::requested() {
        paired();
    }
}
