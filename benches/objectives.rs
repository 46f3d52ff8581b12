//! Sparse TAID loss + gradient against plain next-token cross-entropy on the same logits
//! (vocab 32,000 and 151,936, k = 50), both through `distill::objectives::loss_and_grad`, in
//! positions per second. CE is the floor: it needs the same max, log-sum-exp and one-exp-per-id
//! gradient pass that TAID does. `taid-sampled` is TAID on the top-k plus 16 tail draws per
//! position (`precompute --tail-samples 16`, `distill --tail sampled`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use taidcache::distill::objectives::{loss_and_grad, Chunk, LossConfig, Objective};
use taidcache::distill::targets::TailMode;
use taidcache::testing::Normal;

const POSITIONS: usize = 64;
const K: usize = 50;
/// Tail draws per position of the `taid-sampled` row.
const DRAWS: usize = 16;

struct Data {
    logits: Vec<f32>,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    tail: Vec<f32>,
    mask: Vec<bool>,
    labels: Vec<Option<u32>>,
    draw_ids: Vec<u32>,
    draw_logprobs: Vec<f32>,
}

fn data(vocab: usize) -> Data {
    let mut rng = Normal::new(7);
    let logits: Vec<f32> = (0..POSITIONS * vocab).map(|_| 2.0 * rng.sample()).collect();
    let mut ids = Vec::with_capacity(POSITIONS * K);
    let mut logprobs = Vec::with_capacity(POSITIONS * K);
    for p in 0..POSITIONS {
        // Distinct ids spread over the vocabulary, descending log-probs with 10% tail mass.
        let start = (rng.uniform() * vocab as f64) as usize;
        for j in 0..K {
            ids.push(((start + j * 997) % vocab) as u32);
            logprobs.push(-(1.0 + j as f32 * 0.1) - (p % 3) as f32 * 0.01);
        }
    }
    // Draws: ascending ids outside the top-k (ids of the form 997j + start are skipped), a few
    // repeated, with log-probs below the k-th.
    let mut draw_ids = Vec::with_capacity(POSITIONS * DRAWS);
    let mut draw_logprobs = Vec::with_capacity(POSITIONS * DRAWS);
    for p in 0..POSITIONS {
        let top = &ids[p * K..(p + 1) * K];
        let mut d: Vec<u32> = (0..DRAWS)
            .map(|j| {
                let mut y = ((p * 7919 + (j / 2) * 4099 + 1) % vocab) as u32;
                while top.contains(&y) {
                    y = (y + 1) % vocab as u32;
                }
                y
            })
            .collect();
        d.sort_unstable();
        draw_logprobs.extend(d.iter().map(|&y| -8.0 - (y % 7) as f32 * 0.5));
        draw_ids.extend(d);
    }
    Data {
        draw_ids,
        draw_logprobs,
        logits,
        ids,
        logprobs,
        tail: vec![(0.1f32).ln(); POSITIONS],
        mask: vec![true; POSITIONS],
        labels: (0..POSITIONS)
            .map(|p| Some((p * 31 % vocab) as u32))
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("loss_and_grad");
    group.sample_size(20);
    for vocab in [32_000usize, 151_936] {
        let d = data(vocab);
        let chunk = Chunk {
            logits: &d.logits,
            vocab,
            k: K,
            ids: &d.ids,
            logprobs: &d.logprobs,
            tail: &d.tail,
            mask: &d.mask,
            labels: &d.labels,
            draws: DRAWS,
            draw_ids: &d.draw_ids,
            draw_logprobs: &d.draw_logprobs,
        };
        let mut grad = vec![0f32; POSITIONS * vocab];
        group.throughput(Throughput::Elements(POSITIONS as u64));
        for (name, objective, tail) in [
            ("ce", Objective::Ce, TailMode::Student),
            ("taid-student", Objective::Taid, TailMode::Student),
            ("taid-uniform", Objective::Taid, TailMode::Uniform),
            ("taid-renorm", Objective::Taid, TailMode::Renorm),
            ("taid-sampled", Objective::Taid, TailMode::Sampled),
        ] {
            let cfg = LossConfig {
                objective,
                tail,
                t: 0.4,
                lambda: 0.1,
                ce_weight: 0.0,
            };
            group.bench_with_input(BenchmarkId::new(name, vocab), &cfg, |b, cfg| {
                b.iter(|| loss_and_grad(cfg, &chunk, &mut grad))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
