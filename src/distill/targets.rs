//! Sparse teacher targets: a cached top-k record (ids `K`, log-probs `ℓ`, tail log-mass `τ`)
//! completed over the full vocabulary, and TAID's interpolation of it with the student.
//!
//! A completed target is never materialized as a `[vocab]` vector. It is kept as explicit
//! log-probabilities on `K` plus an affine rule for every tail id `y ∉ K`:
//! `log p(y) = a + b·s_y`, with `s` the student's logits. Every mode of `--tail` and every
//! `t` has that form (the project's design notes, `shared/DESIGN.md`, "Sparse TAID"):
//!
//! | tail | teacher `ẑ_y`, `y ∉ K` | TAID tail `(1−t)·s_y + t·ẑ_y` | `b` |
//! |---|---|---|---|
//! | `student` | `τ + s_y − L_tail` | `s_y + t·(τ − L_tail)` | 1 |
//! | `uniform` | `τ − log(V − k)` | `(1−t)·s_y + t·(τ − log(V − k))` | 1 − t |
//! | `renorm` | dropped | dropped | — |
//!
//! where `L_tail = logsumexp_{y∉K} s_y`. The normalizer of the target is one log-sum-exp over
//! `K` plus the tail's closed-form log-sum-exp, so building a target is O(k) once the row's
//! [`RowStats`] are known (one pass over the vocabulary). The target is a stop-gradient: it is
//! built from the student's logits but never differentiated.
//!
//! Owns the math of the completion only; the objectives and their gradients live in
//! [`super::objectives`].

use num_traits::Float;
use serde::{Deserialize, Serialize};

/// The floating-point types the loss is computed in: f32 in training, f64 in the gradient tests.
pub trait Real: Float + Send + Sync + std::fmt::Debug + 'static {
    /// `(Σ e, Σ x, Σ e·x, Σ e_c)` over `xs`, `e = exp(x − max)`, `e_c = exp(c·(x − max))` (0
    /// without `c`): one pass of [`row_stats`] over a run of tail ids.
    fn exp_sums(xs: &[Self], max: Self, c: Option<Self>) -> [Self; 4] {
        let mut acc = [Self::zero(); 4];
        for &x in xs {
            let e = (x - max).exp();
            acc[0] = acc[0] + e;
            acc[1] = acc[1] + x;
            acc[2] = acc[2] + e * x;
            if let Some(c) = c {
                acc[3] = acc[3] + (c * (x - max)).exp();
            }
        }
        acc
    }

    /// `dst[i] = exp(src[i] − shift) · mul`.
    fn exp_scaled(src: &[Self], shift: Self, mul: Self, dst: &mut [Self]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = (x - shift).exp() * mul;
        }
    }
}

/// Training: the vocabulary-wide passes in vector code ([`crate::vexp`]).
impl Real for f32 {
    fn exp_sums(xs: &[f32], max: f32, c: Option<f32>) -> [f32; 4] {
        crate::vexp::sums(xs, max, c)
    }

    fn exp_scaled(src: &[f32], shift: f32, mul: f32, dst: &mut [f32]) {
        crate::vexp::exp_scaled(src, shift, mul, dst)
    }
}

/// The gradient tests: libm, element by element.
impl Real for f64 {}

/// `x` as `T` (exact for the constants used here).
#[inline]
pub fn real<T: Real>(x: f64) -> T {
    T::from(x).unwrap_or_else(T::nan)
}

/// How the teacher is completed beyond its cached top-k.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TailMode {
    /// The tail mass `e^τ` spread in the student's own tail shape (default).
    Student,
    /// The tail mass spread evenly over the `V − k` tail ids.
    Uniform,
    /// The tail dropped and the target renormalized over the top-k (the usual, biased baseline).
    Renorm,
    /// The tail mass spread over the teacher's own tail draws of `precompute --tail-samples N`
    /// (an unbiased estimate; the cache must have them).
    Sampled,
}

impl TailMode {
    /// Every tail mode that completes the teacher from the top-k and the tail mass alone, in
    /// `--tail`'s order ([`TailMode::Sampled`] needs a cache with tail draws besides).
    pub const ALL: [TailMode; 3] = [TailMode::Student, TailMode::Uniform, TailMode::Renorm];

    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            TailMode::Student => "student",
            TailMode::Uniform => "uniform",
            TailMode::Renorm => "renorm",
            TailMode::Sampled => "sampled",
        }
    }
}

/// One position's cached teacher record. `ids` and `logprobs` have length k.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a, T> {
    pub ids: &'a [u32],
    pub logprobs: &'a [T],
    pub tail: T,
}

/// One pass over a row of student logits `s` [vocab], split at the record's ids.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowStats {
    /// max_y s_y
    pub max: f64,
    /// L = logsumexp_y s_y
    pub lse: f64,
    /// L_tail = logsumexp_{y∉K} s_y (−∞ when K covers the vocabulary)
    pub tail_lse: f64,
    /// |{y ∉ K}|
    pub tail_count: usize,
    /// Σ_{y∉K} s_y
    pub tail_sum_s: f64,
    /// Σ_{y∉K} e^{s_y − max}·s_y (the tail's share of the cross-entropy terms)
    pub tail_sum_es: f64,
    /// logsumexp_{y∉K} (scale·s_y), when a uniform TAID target at t < 1 needs it
    pub tail_lse_scaled: f64,
}

/// `sorted` must hold the record's ids in increasing order; ids ≥ vocab are ignored.
/// Calls `f(lo, hi)` for every maximal tail range `lo..hi` of ids not in `sorted`.
#[inline]
pub fn for_each_tail_range(sorted: &[u32], vocab: usize, mut f: impl FnMut(usize, usize)) {
    let mut next = 0usize;
    for &id in sorted {
        let id = id as usize;
        if id >= vocab {
            break;
        }
        if id > next {
            f(next, id);
        }
        next = next.max(id + 1);
    }
    if next < vocab {
        f(next, vocab);
    }
}

/// Statistics of the student's row `s` against the (sorted) top-k ids. `scale`: also compute
/// `logsumexp_{y∉K}(scale·s_y)` (the uniform tail of a TAID target at `t = 1 − scale`).
pub fn row_stats<T: Real>(s: &[T], sorted: &[u32], scale: Option<f64>) -> RowStats {
    let vocab = s.len();
    let max = s.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
    let (mut tail, mut sum_s, mut sum_es, mut scaled, mut count) = (0f64, 0f64, 0f64, 0f64, 0usize);
    let sc: T = real(scale.unwrap_or(0.0));
    for_each_tail_range(sorted, vocab, |lo, hi| {
        let [e_acc, s_acc, es_acc, sc_acc] = T::exp_sums(&s[lo..hi], max, scale.map(|_| sc));
        tail += e_acc.to_f64().unwrap_or(f64::NAN);
        sum_s += s_acc.to_f64().unwrap_or(f64::NAN);
        sum_es += es_acc.to_f64().unwrap_or(f64::NAN);
        scaled += sc_acc.to_f64().unwrap_or(f64::NAN);
        count += hi - lo;
    });
    let mut on_k = 0f64;
    for &id in sorted {
        if let Some(&x) = s.get(id as usize) {
            on_k += (x - max).exp().to_f64().unwrap_or(f64::NAN);
        }
    }
    let m = max.to_f64().unwrap_or(f64::NAN);
    let sc = scale.unwrap_or(0.0);
    RowStats {
        max: m,
        lse: m + (tail + on_k).ln(),
        tail_lse: if count > 0 {
            m + tail.ln()
        } else {
            f64::NEG_INFINITY
        },
        tail_count: count,
        tail_sum_s: sum_s,
        tail_sum_es: sum_es,
        tail_lse_scaled: if count > 0 && scale.is_some() {
            sc * m + scaled.ln()
        } else {
            f64::NEG_INFINITY
        },
    }
}

/// A completed (and possibly interpolated) target for one position: `log p` on the record's ids
/// (in `on_k`, the order of `Record::ids`) and `log p(y) = a + b·s_y` on the tail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TailRule {
    pub a: f64,
    pub b: f64,
}

/// Whether a uniform TAID target at `t` needs [`RowStats::tail_lse_scaled`] (with scale `1 − t`).
pub fn needs_scaled_stats(mode: TailMode, t: f64) -> Option<f64> {
    (mode == TailMode::Uniform && t < 1.0).then_some(1.0 - t)
}

/// Build TAID's target `p_t = softmax((1−t)·sg(s) + t·ẑ)` for one position; `t = 1` gives the
/// completed teacher itself. Writes `log p_t` on K into `on_k` and returns the tail rule
/// (`None`: the target puts no mass outside K). `stats` must come from [`row_stats`] of `s`
/// (with the scale of [`needs_scaled_stats`] for a uniform tail at t < 1).
pub fn build_target<T: Real>(
    mode: TailMode,
    t: f64,
    s: &[T],
    rec: &Record<'_, T>,
    stats: &RowStats,
    on_k: &mut [f64],
) -> Option<TailRule> {
    let tau = rec.tail.to_f64().unwrap_or(f64::NAN);
    for (slot, (&id, &l)) in on_k.iter_mut().zip(rec.ids.iter().zip(rec.logprobs)) {
        let sy = s
            .get(id as usize)
            .map_or(f64::NEG_INFINITY, |x| x.to_f64().unwrap_or(f64::NAN));
        let l = l.to_f64().unwrap_or(f64::NAN);
        *slot = if t == 1.0 { l } else { (1.0 - t) * sy + t * l };
    }
    // A sampled tail is completed by `objectives::sampled`, never by a rule.
    let has_tail = stats.tail_count > 0
        && tau > f64::NEG_INFINITY
        && !matches!(mode, TailMode::Renorm | TailMode::Sampled);
    // (a0, b, logsumexp of the tail's unnormalized mix)
    let tail = has_tail.then(|| match mode {
        TailMode::Student => {
            let a0 = t * (tau - stats.tail_lse);
            (a0, 1.0, stats.tail_lse + a0)
        }
        _ => {
            let u = tau - (stats.tail_count as f64).ln();
            let a0 = t * u;
            let lse = if t == 1.0 {
                tau
            } else {
                a0 + stats.tail_lse_scaled
            };
            (a0, 1.0 - t, lse)
        }
    });
    let mut m = tail.map_or(f64::NEG_INFINITY, |x| x.2);
    for &v in on_k.iter() {
        m = m.max(v);
    }
    let mut z = tail.map_or(0.0, |x| (x.2 - m).exp());
    for &v in on_k.iter() {
        z += (v - m).exp();
    }
    let norm = m + z.ln();
    for v in on_k.iter_mut() {
        *v -= norm;
    }
    tail.map(|(a0, b, _)| TailRule { a: a0 - norm, b })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::Normal;

    fn logsumexp(x: &[f64]) -> f64 {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    }

    /// A random row and a teacher record of its k first ids after a shuffle.
    fn case(vocab: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<u32>) {
        let mut rng = Normal::new(seed);
        let s: Vec<f64> = (0..vocab).map(|_| 2.0 * rng.sample() as f64).collect();
        let z: Vec<f64> = (0..vocab).map(|_| 3.0 * rng.sample() as f64).collect();
        let lz = logsumexp(&z);
        let z: Vec<f64> = z.iter().map(|v| v - lz).collect();
        let mut ids: Vec<u32> = (0..vocab as u32).collect();
        ids.sort_by(|&a, &b| z[b as usize].total_cmp(&z[a as usize]));
        ids.truncate(k);
        (s, z, ids)
    }

    #[test]
    fn tail_ranges_cover_exactly_the_ids_not_in_k() {
        let mut seen = [false; 20];
        for_each_tail_range(&[0, 3, 4, 9, 19], 20, |lo, hi| {
            seen[lo..hi].iter_mut().for_each(|x| *x = true)
        });
        let tail: Vec<usize> = (0..20).filter(|&i| seen[i]).collect();
        assert_eq!(tail, [1, 2, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
    }

    #[test]
    fn row_stats_match_a_dense_computation() {
        let (s, _, mut ids) = case(300, 17, 1);
        ids.sort_unstable();
        let st = row_stats(&s, &ids, Some(0.3));
        let tail: Vec<f64> = (0..300)
            .filter(|y| !ids.contains(&(*y as u32)))
            .map(|y| s[y])
            .collect();
        assert!(
            (st.lse - logsumexp(&s)).abs() < 1e-12,
            "{} vs {}",
            st.lse,
            logsumexp(&s)
        );
        assert!((st.tail_lse - logsumexp(&tail)).abs() < 1e-12);
        let scaled: Vec<f64> = tail.iter().map(|v| 0.3 * v).collect();
        assert!((st.tail_lse_scaled - logsumexp(&scaled)).abs() < 1e-12);
        assert_eq!(st.tail_count, 283);
        assert!((st.tail_sum_s - tail.iter().sum::<f64>()).abs() < 1e-9);
    }

    /// The dense completion of `shared/DESIGN.md`, written out per id, against the sparse rule.
    #[test]
    fn sparse_target_equals_the_dense_completion_in_every_mode() {
        let (vocab, k) = (200, 12);
        for (seed, t) in [(2u64, 0.4f64), (3, 0.0), (4, 0.85), (5, 1.0)] {
            let (s, z, ids) = case(vocab, k, seed);
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            let in_k = |y: usize| ids.contains(&(y as u32));
            let lp: Vec<f64> = ids.iter().map(|&i| z[i as usize]).collect();
            let tau = logsumexp(
                &(0..vocab)
                    .filter(|&y| !in_k(y))
                    .map(|y| z[y])
                    .collect::<Vec<_>>(),
            );
            let rec = Record {
                ids: &ids,
                logprobs: &lp,
                tail: tau,
            };
            for mode in [TailMode::Student, TailMode::Uniform, TailMode::Renorm] {
                let st = row_stats(&s, &sorted, needs_scaled_stats(mode, t));
                let l_tail = st.tail_lse;
                let zhat = |y: usize| -> Option<f64> {
                    if in_k(y) {
                        Some(z[y])
                    } else {
                        match mode {
                            TailMode::Student => Some(tau + s[y] - l_tail),
                            TailMode::Uniform => Some(tau - ((vocab - k) as f64).ln()),
                            TailMode::Renorm | TailMode::Sampled => None,
                        }
                    }
                };
                let mix: Vec<f64> = (0..vocab)
                    .map(|y| zhat(y).map_or(f64::NEG_INFINITY, |zh| (1.0 - t) * s[y] + t * zh))
                    .collect();
                let norm = logsumexp(&mix);
                let mut on_k = vec![0.0; k];
                let rule = build_target(mode, t, &s, &rec, &st, &mut on_k);
                for y in 0..vocab {
                    let dense = mix[y] - norm;
                    let sparse = match ids.iter().position(|&i| i as usize == y) {
                        Some(j) => on_k[j],
                        None => rule.map_or(f64::NEG_INFINITY, |r| r.a + r.b * s[y]),
                    };
                    if dense.is_finite() || sparse.is_finite() {
                        assert!(
                            (dense - sparse).abs() < 1e-10,
                            "{mode:?} t={t} y={y}: dense {dense} sparse {sparse}"
                        );
                    }
                }
            }
        }
    }
}
