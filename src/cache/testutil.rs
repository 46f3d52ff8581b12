//! Test fixtures shared by the cache and inspect tests.

use half::f16;
use rand::{Rng, SeedableRng};

use super::batch::ShardBatch;

/// A batch of random but well-formed rows: ids < vocab, log-probs descending, tail
/// consistent with the top-k mass.
pub fn random_batch(
    rows: usize,
    seq_len: usize,
    k: usize,
    vocab: u32,
    first_seq_id: u64,
    seed: u64,
) -> ShardBatch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut b = ShardBatch::with_capacity(seq_len, k, rows);
    for r in 0..rows {
        b.seq_ids.push(first_seq_id + r as u64);
        for i in 0..seq_len {
            b.input_ids.push(rng.random_range(0..vocab));
            b.loss_mask.push(i + 3 < seq_len || r % 2 == 0);
            // Distinct ids: a random start and a stride of vocab / k >= 1.
            let start = rng.random_range(0..vocab);
            let mut lp = -rng.random_range(0.01f32..2.0);
            let mut mass = 0.0f64;
            for j in 0..k {
                b.topk_ids
                    .push((start + j as u32 * (vocab / k as u32)) % vocab);
                let v = f16::from_f32(lp);
                mass += f64::from(v.to_f32()).exp();
                b.topk_logprobs.push(v);
                lp -= rng.random_range(0.0f32..1.5);
            }
            // Scale so that the top-k holds at most 95% of the mass.
            let scale = (0.95 / mass).min(1.0);
            let first = b.topk_logprobs.len() - k;
            let mut mass = 0.0f64;
            for v in &mut b.topk_logprobs[first..] {
                *v = f16::from_f32(v.to_f32() + scale.ln() as f32);
                mass += f64::from(v.to_f32()).exp();
            }
            b.tail_logmass.push((1.0 - mass).ln() as f32);
        }
    }
    b
}

pub use crate::testing::sample_manifest;
