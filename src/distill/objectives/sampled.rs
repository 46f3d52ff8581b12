//! `--tail sampled`: the objectives on a teacher completed by the draws of
//! `precompute --tail-samples N` ([`crate::precompute::tail_sample`]).
//!
//! A position holds the exact top-k `K` (log-probs `l_y`), the exact tail mass `M = e^τ`, and N
//! draws from the teacher's tail `π(y) = p(y)/M` (`y ∉ K`), as distinct ids `S` with counts `c_y`
//! and their log-probs `log p(y)`. Every objective here is a sum of per-id terms `φ(p_y, q_y)`
//! over the vocabulary (TAID aside, below), split as `Σ_K φ + Σ_{y∉K} φ`. The tail sum is
//! estimated by importance sampling with the weights `ω_y = c_y·M / (N·p(y))`:
//!
//! ```text
//! Ĵ = Σ_{y∈K} φ(p_y, q_y) + Σ_{y∈S} ω_y·φ(p_y, q_y)
//! ```
//!
//! **Unbiasedness.** `E[c_y] = N·π(y) = N·p(y)/M`, so `E[ω_y] = 1` for every tail id and
//! `E[Ĵ] = Σ_K φ + Σ_{y∉K} φ = J` for any fixed student logits `s`. The estimate is a finite sum
//! of differentiable terms whose random coefficients (`ω`) do not depend on `s`, so
//! `E[∇_s Ĵ] = ∇_s E[Ĵ] = ∇_s J`: the gradient is unbiased too, for every objective of this
//! form (forward KL, reverse KL, TVD, skew KL, skew reverse KL, GJS). With `h_y = q_y·∂φ/∂q_y`
//! the gradient is, as in [`super`], `∂Ĵ/∂s_i = ĥ_i − q_i·Σ_y ĥ_y` with `ĥ = h` on K, `ω·h` on S
//! and 0 elsewhere.
//!
//! For forward KL, `ω_y·h_y = −ω_y·p_y = −c_y·M/N`: the completed teacher is
//! `p̂ = p` on K and `M·c_y/N` on S (no stored log-prob needed), it sums to one exactly, and the
//! gradient is `q − p̂`. The stored log-probs only enter its value (the `p·log p` term).
//!
//! **TAID** targets `p_t ∝ q^{1−t}·p^t`, a normalized geometric mix: not a sum of per-id terms of
//! a fixed `p`. Its unnormalized tail is estimated the same way, `û_y = ω_y·q_y^{1−t}·p_y^t =
//! (c_y·M/N)·(q_y/p_y)^{1−t}` (unbiased for `u_y = q_y^{1−t}·p_y^t`), and normalized with the
//! estimated normalizer: self-normalized importance sampling, biased by O(1/N) (the tests measure
//! it). At t = 1 it is the forward-KL estimator above, exactly.

use super::{element, f, position_sums, LossConfig, LossOutput, Objective, Real, Record, RowStats};

/// The draws of one position: `ids` ascending with repeats adjacent, `logprobs` their teacher
/// log-probs (−∞ for the placeholder of a position without a tail).
#[derive(Clone, Copy, Debug)]
pub struct Draws<'a, T> {
    pub ids: &'a [u32],
    pub logprobs: &'a [T],
}

/// One id of the completed teacher: its id, teacher log-prob, and importance weight (1 on K).
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    id: u32,
    lp: f64,
    /// ω (1 on K): the weight of this id's term in the estimate.
    w: f64,
    /// log of the estimated teacher mass: `l_y` on K, `log(c·M/N)` on S.
    log_mass: f64,
    /// ĥ: this id's term of the gradient before the `−q·Σĥ` part (filled by [`position`]).
    h: f64,
}

/// The entries of one position: K, then the distinct draws with their weights; ids at or above
/// `vocab` (the placeholder of a position without a tail) are left out.
pub(super) fn entries(
    rec: &Record<'_, impl Real>,
    draws: &Draws<'_, impl Real>,
    vocab: usize,
    out: &mut Vec<Entry>,
) {
    out.clear();
    for (&id, &l) in rec.ids.iter().zip(rec.logprobs) {
        if (id as usize) < vocab {
            let l = f(l);
            out.push(Entry {
                id,
                lp: l,
                w: 1.0,
                log_mass: l,
                h: 0.0,
            });
        }
    }
    let tau = f(rec.tail);
    let n = draws.ids.len() as f64;
    if tau == f64::NEG_INFINITY || tau.is_nan() || n == 0.0 {
        return;
    }
    let mut j = 0;
    while j < draws.ids.len() {
        let id = draws.ids[j];
        let lp = f(draws.logprobs[j]);
        let mut c = 1usize;
        while j + c < draws.ids.len() && draws.ids[j + c] == id {
            c += 1;
        }
        j += c;
        if lp == f64::NEG_INFINITY || id as usize >= vocab {
            continue;
        }
        let log_mass = (c as f64 / n).ln() + tau;
        out.push(Entry {
            id,
            lp,
            w: (log_mass - lp).exp(),
            log_mass,
            h: 0.0,
        });
    }
}

/// Loss sums of one position on the sampled completion, and its gradient into `grad`.
/// `w_ce`: the weight of the next-token term (with `label`); `stats` of `s` against K.
#[allow(clippy::too_many_arguments)]
pub(super) fn position<T: Real>(
    cfg: &LossConfig,
    s: &[T],
    rec: &Record<'_, T>,
    draws: &Draws<'_, T>,
    stats: &RowStats,
    label: Option<u32>,
    w_ce: f64,
    scratch: &mut Vec<Entry>,
    mut grad: Option<&mut [T]>,
) -> LossOutput {
    entries(rec, draws, s.len(), scratch);
    let l = stats.lse;
    let lq = |id: u32| f(s[id as usize]) - l;

    // Forward KL(p ‖ q) of the completed teacher, always reported.
    let kl: f64 = scratch
        .iter()
        .map(|e| e.log_mass.exp() * (e.lp - lq(e.id)))
        .sum();
    let (ce, mut out) = position_sums(s, l, label, kl);

    // ĥ per entry (the gradient's id-wise part) and the loss.
    let (mut loss, mut xent, mut h_sum) = (0.0, 0.0, 0.0);
    let t = cfg.target_t();
    let w_ce = if cfg.objective == Objective::Ce {
        // Next-token cross-entropy alone: the teacher only enters the reported KL.
        if label.is_some() {
            1.0
        } else {
            0.0
        }
    } else {
        w_ce
    };
    if cfg.objective == Objective::Ce {
        xent = ce.unwrap_or(0.0);
    } else if cfg.objective.is_taid() || cfg.objective == Objective::Kl {
        // log û: exact on K, (c·M/N)·(q/p)^{1−t} on S (held in `h` until normalized by the
        // estimate's sum).
        for e in scratch.iter_mut() {
            e.h = e.log_mass + (1.0 - t) * (lq(e.id) - e.lp);
        }
        let m = scratch
            .iter()
            .map(|e| e.h)
            .fold(f64::NEG_INFINITY, f64::max);
        let log_z = m + scratch.iter().map(|e| (e.h - m).exp()).sum::<f64>().ln();
        for e in scratch.iter_mut() {
            let q = lq(e.id);
            let p_t = (e.h - log_z).exp();
            // The density of p_t at this id: q^{1−t}·p^t / Z.
            let log_density = (1.0 - t) * q + t * e.lp - log_z;
            loss += p_t * (log_density - q);
            xent -= p_t * q;
            h_sum -= p_t;
            e.h = -p_t;
        }
    } else {
        for e in scratch.iter_mut() {
            let q = lq(e.id);
            let (phi, h) = element(cfg.objective, cfg.lambda as f64, e.lp, q);
            loss += e.w * phi;
            xent -= e.log_mass.exp() * q;
            e.h = e.w * h;
            h_sum += e.h;
        }
    }
    if let (Some(g), true) = (
        grad.as_deref_mut(),
        cfg.objective == Objective::Ce && label.is_none(),
    ) {
        g.fill(T::zero());
    } else if let Some(g) = grad {
        // ∂/∂s_i = ĥ_i − q_i·(Σĥ − w_ce), minus w_ce at the label.
        let (lt, ct): (T, T) = (
            T::from(l).unwrap_or(T::nan()),
            T::from(-(h_sum - w_ce)).unwrap_or(T::nan()),
        );
        T::exp_scaled(s, lt, ct, g);
        for e in scratch.iter() {
            let y = e.id as usize;
            g[y] = g[y] + T::from(e.h).unwrap_or(T::nan());
        }
        if let (Some(y), true) = (label, w_ce > 0.0) {
            g[y as usize] = g[y as usize] - T::from(w_ce).unwrap_or(T::nan());
        }
    }
    out.loss_sum = loss + w_ce * ce.unwrap_or(0.0);
    out.target_xent_sum = xent;
    out
}

#[cfg(test)]
mod tests {
    use super::super::{loss_and_grad, Chunk, LossConfig, Objective};
    use super::*;
    use crate::distill::targets::TailMode;
    use crate::model::init::Normal;
    use crate::precompute::tail_sample::{position_seed, Sampler};

    const VOCAB: usize = 512;
    const K: usize = 16;

    /// A teacher row whose top-16 hold about half the mass, and a student row.
    struct Setup {
        x: Vec<f32>,
        /// dense teacher log-probs
        z: Vec<f64>,
        topk: Vec<u32>,
        tau: f64,
        s: Vec<f64>,
    }

    fn setup() -> Setup {
        let mut rng = Normal::new(11);
        let x: Vec<f32> = (0..VOCAB).map(|_| 1.6 * rng.sample()).collect();
        let s: Vec<f64> = (0..VOCAB).map(|_| 1.2 * rng.sample() as f64).collect();
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let z: Vec<f64> = x.iter().map(|&v| v as f64 - lse).collect();
        let mut topk: Vec<u32> = (0..VOCAB as u32).collect();
        topk.sort_by(|&a, &b| z[b as usize].total_cmp(&z[a as usize]));
        topk.truncate(K);
        let tail: f64 = (0..VOCAB)
            .filter(|y| !topk.contains(&(*y as u32)))
            .map(|y| z[y].exp())
            .sum();
        Setup {
            x,
            z,
            topk,
            tau: tail.ln(),
            s,
        }
    }

    fn cfg(objective: Objective, t: f32) -> LossConfig {
        LossConfig {
            objective,
            tail: TailMode::Sampled,
            t,
            lambda: 0.3,
            ce_weight: 0.0,
        }
    }

    /// The dense loss and gradient: per-id terms over the whole vocabulary (TAID: forward KL to
    /// the exact `softmax((1−t)·log q + t·log p)`).
    fn dense(st: &Setup, c: &LossConfig) -> (f64, Vec<f64>) {
        let m = st.s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = m + st.s.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let lq: Vec<f64> = st.s.iter().map(|v| v - l).collect();
        let lp: Vec<f64> = if c.objective.is_taid() {
            let t = c.t as f64;
            let mix: Vec<f64> = lq
                .iter()
                .zip(&st.z)
                .map(|(q, p)| (1.0 - t) * q + t * p)
                .collect();
            let mm = mix.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lz = mm + mix.iter().map(|v| (v - mm).exp()).sum::<f64>().ln();
            mix.iter().map(|v| v - lz).collect()
        } else {
            st.z.clone()
        };
        let (mut j, mut h) = (0.0, vec![0.0; VOCAB]);
        for y in 0..VOCAB {
            let (phi, hy) = element(c.objective, c.lambda as f64, lp[y], lq[y]);
            j += phi;
            h[y] = hy;
        }
        let hs: f64 = h.iter().sum();
        let g = (0..VOCAB).map(|y| h[y] - lq[y].exp() * hs).collect();
        (j, g)
    }

    /// Mean and standard error over `runs` draws of N ids of the estimate's loss, gradient, and
    /// of the gradient summed over the `rare` ids.
    struct Averages {
        loss: (f64, f64),
        grad: Vec<(f64, f64)>,
        rare: (f64, f64),
    }

    /// Tail ids drawn in fewer than 30 of `runs` runs on average: their per-id means are far from
    /// normal (mostly one value, rarely a large one), so the tests pool them into one sum.
    fn rare_ids(st: &Setup, n: usize, runs: usize) -> Vec<bool> {
        let m = st.tau.exp();
        (0..VOCAB)
            .map(|y| {
                let pi = st.z[y].exp() / m;
                !st.topk.contains(&(y as u32))
                    && runs as f64 * (1.0 - (1.0 - pi).powi(n as i32)) < 30.0
            })
            .collect()
    }

    fn averages(st: &Setup, c: &LossConfig, n: usize, runs: usize, dedup: bool) -> Averages {
        let rare = rare_ids(st, n, runs);
        let lp: Vec<f64> = st.topk.iter().map(|&y| st.z[y as usize]).collect();
        let (mut ids, mut lps) = (vec![0u32; n], vec![0f32; n]);
        let mut sampler = Sampler::default();
        let (mut sum_l, mut sq_l, mut sum_r, mut sq_r) = (0.0, 0.0, 0.0, 0.0);
        let (mut sum, mut sq) = (vec![0.0; VOCAB], vec![0.0; VOCAB]);
        let mut g = vec![0.0; VOCAB];
        for r in 0..runs {
            // Seeds as precompute makes them (position r of sequence 0).
            sampler.draw(&st.x, &st.topk, position_seed(0, r), &mut ids, &mut lps);
            if dedup {
                // A wrong estimator for the power checks: every distinct id counted alike.
                let mut seen = ids.clone();
                seen.dedup();
                let reps = n / seen.len() + 1;
                ids = seen
                    .iter()
                    .flat_map(|&y| std::iter::repeat_n(y, reps))
                    .take(n)
                    .collect();
            }
            let dlp: Vec<f64> = ids.iter().map(|&y| st.z[y as usize]).collect();
            let chunk = Chunk {
                logits: &st.s,
                vocab: VOCAB,
                k: K,
                ids: &st.topk,
                logprobs: &lp,
                tail: &[st.tau],
                mask: &[true],
                labels: &[None],
                draws: n,
                draw_ids: &ids,
                draw_logprobs: &dlp,
            };
            let out = loss_and_grad(c, &chunk, &mut g);
            sum_l += out.loss_sum;
            sq_l += out.loss_sum * out.loss_sum;
            let pooled: f64 = (0..VOCAB).filter(|&y| rare[y]).map(|y| g[y]).sum();
            sum_r += pooled;
            sq_r += pooled * pooled;
            for y in 0..VOCAB {
                sum[y] += g[y];
                sq[y] += g[y] * g[y];
            }
        }
        let r = runs as f64;
        let ms = |s: f64, q: f64| {
            let mean = s / r;
            let var = (q / r - mean * mean).max(0.0) * r / (r - 1.0);
            (mean, (var / r).sqrt())
        };
        Averages {
            loss: ms(sum_l, sq_l),
            grad: (0..VOCAB).map(|y| ms(sum[y], sq[y])).collect(),
            rare: ms(sum_r, sq_r),
        }
    }

    /// z-scores of the mean gradient against the dense one: every id not rare, and the sum over
    /// the rare ids as one more. Returns (largest |z|, share beyond 3 standard errors, count).
    fn z_scores(
        st: &Setup,
        a: &Averages,
        dense: &[f64],
        n: usize,
        runs: usize,
    ) -> (f64, f64, usize) {
        let rare = rare_ids(st, n, runs);
        let mut zs: Vec<f64> = (0..VOCAB)
            .filter(|&y| !rare[y])
            .map(|y| {
                let (d, se) = (a.grad[y].0 - dense[y], a.grad[y].1);
                // An id whose gradient does not vary (K under forward KL) must be exact.
                if se > 1e-12 {
                    d / se
                } else if d.abs() < 1e-9 {
                    0.0
                } else {
                    f64::INFINITY
                }
            })
            .collect();
        let pooled: f64 = (0..VOCAB).filter(|&y| rare[y]).map(|y| dense[y]).sum();
        zs.push((a.rare.0 - pooled) / a.rare.1.max(1e-300));
        let zmax = zs.iter().fold(0f64, |m, z| m.max(z.abs()));
        let beyond = zs.iter().filter(|z| z.abs() > 3.0).count();
        (zmax, beyond as f64 / zs.len() as f64, zs.len())
    }

    /// What an unbiased estimate gives with probability above 99%: "within 3 standard errors for
    /// every id" fails by chance alone for 1 id in 370, so at most 1% of the z-scores beyond 3
    /// and none beyond 4.5 (for a few hundred ids).
    fn unbiased(z: (f64, f64, usize)) -> bool {
        z.0 < 4.5 && z.1 <= 0.01
    }

    #[test]
    fn forward_kl_on_a_sampled_tail_averages_to_the_dense_gradient_within_its_standard_error() {
        let st = setup();
        let c = cfg(Objective::Kl, 1.0);
        let (j, g) = dense(&st, &c);
        let (n, runs) = (4096, 200);
        let a = averages(&st, &c, n, runs, false);
        // On K the gradient q − p is exact: p̂ sums to one in every run.
        for &y in &st.topk {
            assert!((a.grad[y as usize].0 - g[y as usize]).abs() < 1e-12);
            assert!(a.grad[y as usize].1 < 1e-9, "{:?}", a.grad[y as usize]);
        }
        let z = z_scores(&st, &a, &g, n, runs);
        eprintln!(
            "kl, N = {n}, {runs} runs: {} z-scores, max |z| {:.2}, {:.2}% beyond 3 SE; loss {:.5} ± {:.5} vs {j:.5}",
            z.2,
            z.0,
            100.0 * z.1,
            a.loss.0,
            a.loss.1
        );
        assert!(z.2 > 100, "{z:?}");
        assert!(unbiased(z), "{z:?}");
        assert!(
            (a.loss.0 - j).abs() < 4.0 * a.loss.1,
            "loss {} ± {} against {j}",
            a.loss.0,
            a.loss.1
        );
        // Power: weighting every distinct draw alike (a plausible bug) is caught by far.
        let wrong = z_scores(&st, &averages(&st, &c, n, runs, true), &g, n, runs);
        assert!(wrong.0 > 20.0, "{wrong:?}");
    }

    #[test]
    fn every_other_objective_is_unbiased_on_a_sampled_tail_and_taid_nearly_so() {
        let st = setup();
        let (n, runs) = (4096, 200);
        for (objective, t) in [
            (Objective::Rkl, 1.0),
            (Objective::Tvd, 1.0),
            (Objective::SkewKl, 1.0),
            (Objective::SkewRkl, 1.0),
            (Objective::Gjs, 1.0),
            (Objective::Taid, 0.5),
            (Objective::Taid, 0.2),
        ] {
            let c = cfg(objective, t);
            let (j, g) = dense(&st, &c);
            let a = averages(&st, &c, n, runs, false);
            let z = z_scores(&st, &a, &g, n, runs);
            eprintln!(
                "{} t={t}, N = {n}, {runs} runs: {} z-scores, max |z| {:.2}, {:.2}% beyond 3 SE; loss {:.5} ± {:.5} vs {j:.5}",
                objective.name(),
                z.2,
                z.0,
                100.0 * z.1,
                a.loss.0,
                a.loss.1
            );
            assert!(unbiased(z), "{objective:?} t={t}: {z:?}");
            assert!(
                (a.loss.0 - j).abs() < 4.5 * a.loss.1 + 1e-3 * j.abs(),
                "{objective:?}: loss {} ± {} against {j}",
                a.loss.0,
                a.loss.1
            );
        }
    }

    /// TAID's self-normalized estimate puts too little mass on the tail with few draws (the
    /// normalizer's estimate is a ratio); the bias of the tail's total gradient falls as 1/N.
    #[test]
    fn taids_self_normalized_bias_is_measurable_at_few_draws_and_shrinks_with_more() {
        let st = setup();
        let c = cfg(Objective::Taid, 0.3);
        let (_, g) = dense(&st, &c);
        let tail: Vec<usize> = (0..VOCAB)
            .filter(|y| !st.topk.contains(&(*y as u32)))
            .collect();
        let dense_tail: f64 = tail.iter().map(|&y| g[y]).sum();
        let runs = 400;
        let mut bias = Vec::new();
        for n in [4usize, 16, 256] {
            let a = averages(&st, &c, n, runs, false);
            let mean: f64 = tail.iter().map(|&y| a.grad[y].0).sum();
            // The tail's summed gradient is q(tail) − p_t(tail): its bias is p_t(tail)'s, negated.
            let b = mean - dense_tail;
            let mass = p_t_tail(&st, 0.3);
            eprintln!(
                "taid t=0.3, N = {n}, {runs} runs: p_t's tail mass {mass:.4}, estimated {:.4} ({:+.2}%)",
                mass - b,
                -100.0 * b / mass
            );
            bias.push(b.abs());
        }
        assert!(bias[0] > 3.0 * bias[2], "{bias:?}");
        assert!(bias[2] < 0.01 * p_t_tail(&st, 0.3), "{bias:?}");
    }

    /// TAID's exact target mass outside K at `t`.
    fn p_t_tail(st: &Setup, t: f64) -> f64 {
        let m = st.s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = m + st.s.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let mix: Vec<f64> =
            st.s.iter()
                .zip(&st.z)
                .map(|(s, p)| (1.0 - t) * (s - l) + t * p)
                .collect();
        let mm = mix.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lz = mm + mix.iter().map(|v| (v - mm).exp()).sum::<f64>().ln();
        (0..VOCAB)
            .filter(|y| !st.topk.contains(&(*y as u32)))
            .map(|y| (mix[y] - lz).exp())
            .sum()
    }

    #[test]
    fn taid_at_t_one_is_the_forward_kl_estimate_exactly() {
        let st = setup();
        let a = averages(&st, &cfg(Objective::Taid, 1.0), 64, 3, false);
        let b = averages(&st, &cfg(Objective::Kl, 1.0), 64, 3, false);
        for y in 0..VOCAB {
            assert!((a.grad[y].0 - b.grad[y].0).abs() < 1e-12);
        }
        assert!((a.loss.0 - b.loss.0).abs() < 1e-12);
    }
}
