//! `precompute --tail-samples N`: per position, N draws from the teacher's distribution
//! restricted to the ids outside its top-k, so `distill --tail sampled` can complete the
//! teacher with an unbiased tail instead of a guessed shape.
//!
//! **The proposal is the teacher's own tail**, `π(y) = p(y) / M` for `y ∉ K` with
//! `M = Σ_{y∉K} p(y)` (the cached tail mass). This is the choice of Anshumann et al. 2025
//! ("Sparse Logit Sampling", RS-KD) for forward KL: with `c_y` the count of `y` among N draws,
//! `p̂(y) = M·c_y / N` is unbiased for `p(y)` id by id and sums to `M` exactly, so the completed
//! teacher (exact top-k, exact tail mass) is a probability vector and the forward-KL gradient
//! `q − p̂` is unbiased with no stored weights. A tempered proposal (`∝ p^β`, β < 1) spreads the
//! draws over more ids, but then every draw needs its weight `p/π` stored and the forward-KL
//! target no longer sums to one per draw set; the teacher's own tail keeps the cache a plain
//! sample and the estimator a count. Each draw's teacher log-prob `log p(y)` is stored beside its
//! id: the objectives other than forward KL weight their per-id terms by `M·c_y / (N·p(y))`
//! ([`crate::distill::objectives`]), and the reported KL needs `log p(y)`.
//!
//! Draws are by inverse CDF: N uniforms from a ChaCha8 stream seeded by `(seq_id, position)`
//! only ([`position_seed`]), sorted, then one scan of the tail's cumulative mass in id order. A
//! resumed run, a run split over workers and a single run therefore draw the same ids, whatever
//! the batch or the thread. The draws come out sorted by id, repeats adjacent.
//!
//! A position whose tail is empty (`k` = vocabulary, or a tail that underflows to zero) has
//! nothing to draw from: its N ids are the vocabulary size (one past the last id) and its
//! log-probs −∞, and the estimators skip them ([`NO_TAIL_LOGPROB`]).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The log-prob stored with the placeholder draws of a position without a tail.
pub const NO_TAIL_LOGPROB: f32 = f32::NEG_INFINITY;

/// The seed of the draws of position `position` of sequence `seq_id`: the same in every run.
pub fn position_seed(seq_id: u64, position: usize) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seq_id.to_le_bytes());
    bytes[8..].copy_from_slice(&(position as u64).to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, 0x7461_6964_7461_696c)
}

/// Scratch of one thread: the tail's exponentials and the sorted uniforms.
#[derive(Default)]
pub struct Sampler {
    exps: Vec<f32>,
    uniforms: Vec<f64>,
    sorted: Vec<u32>,
}

impl Sampler {
    /// Draw `ids.len()` tail ids of one row of logits `x` (length V), outside `topk` (any
    /// order). Writes the ids (ascending, repeats adjacent) and their log-probs
    /// `x_y − logsumexp(x)` (f32).
    pub fn draw(&mut self, x: &[f32], topk: &[u32], seed: u64, ids: &mut [u32], lps: &mut [f32]) {
        let n = ids.len();
        debug_assert_eq!(lps.len(), n);
        if n == 0 {
            return;
        }
        let vocab = x.len();
        self.sorted.clear();
        self.sorted.extend_from_slice(topk);
        self.sorted.sort_unstable();
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        self.exps.resize(vocab, 0.0);
        crate::vexp::exp_scaled(x, max, 1.0, &mut self.exps);
        let mut on_k = 0f64;
        for &id in &self.sorted {
            if let Some(e) = self.exps.get_mut(id as usize) {
                on_k += *e as f64;
                // Out of the scan below: a top-k id is never drawn.
                *e = 0.0;
            }
        }
        let tail: f64 = self.exps.iter().map(|&e| e as f64).sum();
        let lse = max as f64 + (tail + on_k).ln();
        if tail.is_nan() || tail <= 0.0 {
            ids.fill(vocab as u32);
            lps.fill(NO_TAIL_LOGPROB);
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.uniforms.clear();
        self.uniforms
            .extend((0..n).map(|_| rng.random::<f64>() * tail));
        self.uniforms.sort_unstable_by(f64::total_cmp);
        let (mut cum, mut j, mut last) = (0f64, 0usize, None);
        for (y, &e) in self.exps.iter().enumerate() {
            if e == 0.0 {
                continue;
            }
            cum += e as f64;
            last = Some(y);
            while j < n && self.uniforms[j] < cum {
                ids[j] = y as u32;
                j += 1;
            }
            if j == n {
                break;
            }
        }
        // Rounding can leave the last uniforms a hair above the summed mass: the last id with
        // mass takes them (they lie in its interval up to that rounding).
        let last = last.unwrap_or(vocab - 1) as u32;
        ids[j..].fill(last);
        for (lp, &y) in lps.iter_mut().zip(ids.iter()) {
            *lp = (x[y as usize] as f64 - lse) as f32;
        }
    }
}

/// Draw `n` samples for each of the `rows` positions of `logits` (`[rows, vocab]`) in parallel:
/// position `i` is position `first + i` of the batch, whose sequence ids are `seq_ids` (`seq_len`
/// positions each). `topk` is `[rows, k]`; outputs are `[rows, n]`.
#[allow(clippy::too_many_arguments)]
pub fn draw_rows(
    logits: &[f32],
    vocab: usize,
    topk: &[u32],
    k: usize,
    seq_ids: &[u64],
    seq_len: usize,
    first: usize,
    ids: &mut [u32],
    lps: &mut [f32],
) {
    use rayon::prelude::*;
    let n = ids.len() / (logits.len() / vocab).max(1);
    if n == 0 {
        return;
    }
    ids.par_chunks_mut(n)
        .zip(lps.par_chunks_mut(n))
        .enumerate()
        .for_each_init(Sampler::default, |s, (i, (ids, lps))| {
            let p = first + i;
            let seed = position_seed(seq_ids[p / seq_len], p % seq_len);
            s.draw(
                &logits[i * vocab..(i + 1) * vocab],
                &topk[i * k..(i + 1) * k],
                seed,
                ids,
                lps,
            );
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::Normal;

    fn row(vocab: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = Normal::new(seed);
        (0..vocab).map(|_| scale * rng.sample()).collect()
    }

    fn top(x: &[f32], k: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..x.len() as u32).collect();
        ids.sort_by(|&a, &b| x[b as usize].total_cmp(&x[a as usize]));
        ids.truncate(k);
        ids
    }

    /// Upper tail probability of a chi-square statistic with `df` degrees of freedom, by the
    /// Wilson–Hilferty normal approximation (good to a few percent of the p-value at df ≥ 30).
    fn chi2_sf(stat: f64, df: f64) -> f64 {
        let z =
            ((stat / df).powf(1.0 / 3.0) - (1.0 - 2.0 / (9.0 * df))) / (2.0 / (9.0 * df)).sqrt();
        0.5 * libm_erfc(z / std::f64::consts::SQRT_2)
    }

    /// erfc by Numerical Recipes' Chebyshev fit (relative error below 1.2e-7).
    fn libm_erfc(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let r = t
            * (-z * z - 1.265_512_23
                + t * (1.000_023_68
                    + t * (0.374_091_96
                        + t * (0.096_784_18
                            + t * (-0.186_288_06
                                + t * (0.278_868_07
                                    + t * (-1.135_203_98
                                        + t * (1.488_515_87
                                            + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
                .exp();
        if x >= 0.0 {
            r
        } else {
            2.0 - r
        }
    }

    #[test]
    fn draws_follow_the_teachers_tail_by_a_chi_square_test_and_never_hit_the_top_k() {
        let (vocab, k, n) = (400, 20, 200_000);
        let x = row(vocab, 7, 2.0);
        let topk = top(&x, k);
        let mut ids = vec![0u32; n];
        let mut lps = vec![0f32; n];
        Sampler::default().draw(&x, &topk, 42, &mut ids, &mut lps);
        assert!(ids.windows(2).all(|w| w[0] <= w[1]), "ids come out sorted");
        let mut counts = vec![0usize; vocab];
        for &y in &ids {
            assert!(!topk.contains(&y), "top-k id {y} drawn");
            counts[y as usize] += 1;
        }
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
        let lse = m + z.ln();
        let tail: Vec<usize> = (0..vocab)
            .filter(|y| !topk.contains(&(*y as u32)))
            .collect();
        let mass: f64 = tail.iter().map(|&y| (x[y] as f64 - lse).exp()).sum();
        // Pool ids whose expected count is below 5 into one cell.
        let (mut stat, mut cells, mut pool_e, mut pool_o) = (0.0, 0usize, 0.0, 0.0);
        for &y in &tail {
            let e = n as f64 * (x[y] as f64 - lse).exp() / mass;
            if e < 5.0 {
                pool_e += e;
                pool_o += counts[y] as f64;
            } else {
                stat += (counts[y] as f64 - e).powi(2) / e;
                cells += 1;
            }
        }
        if pool_e > 0.0 {
            stat += (pool_o - pool_e).powi(2) / pool_e;
            cells += 1;
        }
        let p = chi2_sf(stat, (cells - 1) as f64);
        assert!(cells > 100, "{cells} cells");
        assert!(
            p > 1e-3,
            "chi-square {stat:.1} on {} df: p = {p:.2e}",
            cells - 1
        );
        // The log-probs are the teacher's, and at most the k-th.
        let kth = x[topk[k - 1] as usize] as f64 - lse;
        for (&y, &lp) in ids.iter().zip(&lps) {
            assert!(((x[y as usize] as f64 - lse) - lp as f64).abs() < 1e-4);
            assert!(lp as f64 <= kth + 1e-6);
        }
    }

    #[test]
    fn a_biased_sampler_fails_the_same_chi_square_test() {
        // The test above has power: draws from the tail with one id's mass doubled fail it.
        let (vocab, k, n) = (400, 20, 200_000);
        let mut x = row(vocab, 7, 2.0);
        let topk = top(&x, k);
        let victim = top(&x, k + 1)[k] as usize;
        let truth = x.clone();
        x[victim] += std::f32::consts::LN_2;
        let mut ids = vec![0u32; n];
        let mut lps = vec![0f32; n];
        Sampler::default().draw(&x, &topk, 42, &mut ids, &mut lps);
        let m = truth
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let w: Vec<f64> = (0..vocab)
            .map(|y| {
                if topk.contains(&(y as u32)) {
                    0.0
                } else {
                    (truth[y] as f64 - m).exp()
                }
            })
            .collect();
        let total: f64 = w.iter().sum();
        let mut counts = vec![0usize; vocab];
        ids.iter().for_each(|&y| counts[y as usize] += 1);
        let e = n as f64 * w[victim] / total;
        let z = (counts[victim] as f64 - e) / e.sqrt();
        assert!(
            z > 10.0,
            "the doubled id's count is {z:.1} sd above the truth"
        );
    }

    #[test]
    fn the_same_position_draws_the_same_ids_and_other_positions_other_ids() {
        let x = row(300, 3, 1.5);
        let topk = top(&x, 10);
        let draw = |seed| {
            let mut ids = vec![0u32; 64];
            let mut lps = vec![0f32; 64];
            Sampler::default().draw(&x, &topk, seed, &mut ids, &mut lps);
            ids
        };
        assert_eq!(draw(position_seed(5, 17)), draw(position_seed(5, 17)));
        assert_ne!(draw(position_seed(5, 17)), draw(position_seed(5, 18)));
        assert_ne!(draw(position_seed(5, 17)), draw(position_seed(6, 17)));
        // draw_rows: position p of the batch uses (seq_ids[p / S], p % S), whatever `first`.
        let (vocab, s, n) = (300, 4, 8);
        let rows: Vec<f32> = (0..2 * s)
            .flat_map(|i| row(vocab, 100 + i as u64, 1.0))
            .collect();
        let tk: Vec<u32> = (0..2 * s)
            .flat_map(|i| top(&rows[i * vocab..(i + 1) * vocab], 5))
            .collect();
        let mut all = vec![0u32; 2 * s * n];
        let mut lp = vec![0f32; 2 * s * n];
        draw_rows(&rows, vocab, &tk, 5, &[9, 11], s, 0, &mut all, &mut lp);
        let mut part = vec![0u32; 3 * n];
        let mut lp3 = vec![0f32; 3 * n];
        draw_rows(
            &rows[5 * vocab..8 * vocab],
            vocab,
            &tk[25..40],
            5,
            &[9, 11],
            s,
            5,
            &mut part,
            &mut lp3,
        );
        assert_eq!(&all[5 * n..], &part[..]);
    }

    #[test]
    fn a_position_without_a_tail_stores_the_placeholder() {
        let x = row(16, 1, 1.0);
        let all: Vec<u32> = (0..16).collect();
        let mut ids = vec![0u32; 4];
        let mut lps = vec![0f32; 4];
        Sampler::default().draw(&x, &all, 1, &mut ids, &mut lps);
        assert_eq!(ids, [16; 4]);
        assert!(lps.iter().all(|&l| l == NO_TAIL_LOGPROB));
    }
}
