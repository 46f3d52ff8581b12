//! Top-k extraction: taidcache's two-pass selection against a full sort of every row, both
//! parallel over rows with rayon, on LLM-like logits. Throughput in positions (rows).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use taidcache::precompute::topk::{topk_row_by_sort, topk_rows};
use taidcache::testing::llm_like_logits;

const ROWS: usize = 256;
const K: usize = 50;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("topk");
    group.sample_size(10);
    for vocab in [32_000usize, 151_936] {
        let logits = llm_like_logits(ROWS, vocab, 1);
        group.throughput(Throughput::Elements(ROWS as u64));
        let (mut ids, mut lp, mut tail) =
            (vec![0u32; ROWS * K], vec![0f32; ROWS * K], vec![0f32; ROWS]);
        group.bench_with_input(BenchmarkId::new("select", vocab), &logits, |b, logits| {
            b.iter(|| topk_rows(logits, vocab, K, &mut ids, &mut lp, &mut tail).unwrap())
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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
