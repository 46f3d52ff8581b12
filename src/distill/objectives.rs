//! Distillation objectives on sparse targets: their value and their gradient with respect to the
//! student's logits, position by position, without a dense teacher vector.
//!
//! For a loss `J = Σ_y φ(p_y, q_y)` with a fixed (stop-gradient) target `p` and `q = softmax(s)`,
//! the gradient is `∂J/∂s_i = h_i − q_i·Σ_y h_y` with `h_y = q_y·∂φ/∂q_y`. The generic path
//! evaluates `φ` and `h` id by id (the tail ids through the target's affine rule, see
//! [`super::targets`]). The KL family (`taid`, `taid-linear`, `kl`) with a `student` or
//! `renorm` tail has a closed form on the tail, `h_y = −p_y = −q_y·e^{a+L}`, so its loss costs
//! O(k) after the row statistics and its gradient one `exp` per id: the same work as plain
//! cross-entropy. Both paths are tested against each other and against finite differences.
//!
//! | objective | φ(p, q) | h = q·∂φ/∂q |
//! |---|---|---|
//! | `taid`, `taid-linear`, `kl` | p·(log p − log q) (target p_t for TAID) | −p |
//! | `rkl` | q·(log q − log p) | q·(log q − log p + 1) |
//! | `tvd` | ½·\|p − q\| | ½·q·sign(q − p) |
//! | `skew-kl` | p·(log p − log m), m = λp + (1−λ)q | −(1−λ)·p·q/m |
//! | `skew-rkl` | q·(log q − log m), m = λq + (1−λ)p | q·(log q + 1 − log m − λq/m) |
//! | `gjs` | λ·p·log(p/m) + (1−λ)·q·log(q/m), m = λp + (1−λ)q | (1−λ)·q·(log q − log m) |
//! | `ce` | −log q(next token) | −[y = next token] |
//!
//! Sums are accumulated in f64. Masked positions contribute nothing.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::targets::{
    build_target, for_each_tail_range, needs_scaled_stats, row_stats, Real, Record, RowStats,
    TailMode, TailRule,
};

/// The training objective of `taidcache distill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// TAID with the adaptive t of Algorithm 1 (default).
    Taid,
    /// TAID with t growing linearly from t_start to t_end (the paper's ablation).
    TaidLinear,
    /// Forward KL(teacher ‖ student).
    Kl,
    /// Reverse KL(student ‖ teacher).
    Rkl,
    /// Total variation distance.
    Tvd,
    /// KL(teacher ‖ λ·teacher + (1−λ)·student).
    SkewKl,
    /// KL(student ‖ λ·student + (1−λ)·teacher).
    SkewRkl,
    /// Generalized Jensen–Shannon divergence with weight λ on the teacher.
    Gjs,
    /// Next-token cross-entropy on the cached tokens only (no teacher).
    Ce,
}

impl Objective {
    /// Every objective, in `--objective`'s order.
    pub const ALL: [Objective; 9] = [
        Objective::Taid,
        Objective::TaidLinear,
        Objective::Kl,
        Objective::Rkl,
        Objective::Tvd,
        Objective::SkewKl,
        Objective::SkewRkl,
        Objective::Gjs,
        Objective::Ce,
    ];

    /// Whether the target is TAID's interpolation `p_t` (else the completed teacher).
    pub fn is_taid(self) -> bool {
        matches!(self, Objective::Taid | Objective::TaidLinear)
    }

    fn is_forward_kl(self) -> bool {
        matches!(
            self,
            Objective::Taid | Objective::TaidLinear | Objective::Kl
        )
    }
}

/// One step's loss settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossConfig {
    pub objective: Objective,
    pub tail: TailMode,
    /// TAID's interpolation t (ignored by the other objectives).
    pub t: f32,
    /// λ of `skew-kl`, `skew-rkl` and `gjs`.
    pub lambda: f32,
    /// Weight of the next-token cross-entropy added to the objective.
    pub ce_weight: f32,
}

impl LossConfig {
    /// Settings no run can train with, as a sentence.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.t) {
            return Err(format!("TAID's t must lie in [0, 1], found {}", self.t));
        }
        if matches!(
            self.objective,
            Objective::SkewKl | Objective::SkewRkl | Objective::Gjs
        ) && !(self.lambda > 0.0 && self.lambda < 1.0)
        {
            return Err(format!(
                "--lambda must lie in (0, 1) for {:?}, found {}",
                self.objective, self.lambda
            ));
        }
        if self.objective == Objective::Rkl && self.tail == TailMode::Renorm {
            return Err(
                "rkl with --tail renorm is infinite wherever the student puts mass outside the top-k; use --tail student or uniform"
                    .into(),
            );
        }
        if !(self.ce_weight >= 0.0 && self.ce_weight.is_finite()) {
            return Err(format!(
                "--ce-weight must be a non-negative number, found {}",
                self.ce_weight
            ));
        }
        if self.objective == Objective::Ce && self.ce_weight > 0.0 {
            return Err("--ce-weight adds the next-token loss to a distillation objective; --objective ce is that loss already".into());
        }
        Ok(())
    }

    fn target_t(&self) -> f64 {
        if self.objective.is_taid() {
            self.t as f64
        } else {
            1.0
        }
    }
}

/// A chunk of positions: the student's logits and the cached records of the same positions.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a, T = f32> {
    /// [n, vocab]
    pub logits: &'a [T],
    pub vocab: usize,
    pub k: usize,
    /// [n, k]
    pub ids: &'a [u32],
    /// [n, k]
    pub logprobs: &'a [T],
    /// [n]
    pub tail: &'a [T],
    /// [n]
    pub mask: &'a [bool],
    /// [n]: the next token where it counts for cross-entropy.
    pub labels: &'a [Option<u32>],
}

impl<T> Chunk<'_, T> {
    pub fn positions(&self) -> usize {
        self.mask.len()
    }
}

/// Sums over the counted positions of a chunk (divide by the counts for means).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossOutput {
    /// Σ of the optimized loss (the objective plus `ce_weight`·CE).
    pub loss_sum: f64,
    /// Σ −Σ_y p(y)·log q(y) over the objective's target (TAID: p_t).
    pub target_xent_sum: f64,
    /// Σ −log q(next token), over the positions with a label.
    pub ce_sum: f64,
    /// Σ KL(completed teacher ‖ student).
    pub kl_sum: f64,
    /// Unmasked positions.
    pub positions: usize,
    /// Positions with a next-token label.
    pub ce_positions: usize,
}

impl std::ops::AddAssign for LossOutput {
    fn add_assign(&mut self, o: Self) {
        self.loss_sum += o.loss_sum;
        self.target_xent_sum += o.target_xent_sum;
        self.ce_sum += o.ce_sum;
        self.kl_sum += o.kl_sum;
        self.positions += o.positions;
        self.ce_positions += o.ce_positions;
    }
}

/// Loss sums of a chunk, and `grad` [n, vocab] = ∂(loss_sum)/∂logits (unscaled: divide by the
/// step's token count). Positions are independent and run in parallel; the sums are added in
/// position order, so the result does not depend on the thread count.
///
/// Memory besides the inputs and `grad`: the sums of at most [`SUM_BLOCK`] positions and one
/// O(k) scratch per rayon job, whatever the number of positions.
pub fn loss_and_grad<T: Real>(cfg: &LossConfig, c: &Chunk<'_, T>, grad: &mut [T]) -> LossOutput {
    run_chunk(cfg, c, Some(grad), true)
}

/// Loss sums of a chunk without the gradient (evaluation).
pub fn loss_only<T: Real>(cfg: &LossConfig, c: &Chunk<'_, T>) -> LossOutput {
    run_chunk(cfg, c, None, true)
}

/// Positions whose per-position sums are held at once: positions run in blocks of this many
/// (parallel within a block), so the sums kept for the ordered addition do not grow with the
/// chunk.
pub const SUM_BLOCK: usize = 256;

/// `fast`: allow the closed forms of the forward-KL family (off only to test them).
fn run_chunk<T: Real>(
    cfg: &LossConfig,
    c: &Chunk<'_, T>,
    grad: Option<&mut [T]>,
    fast: bool,
) -> LossOutput {
    let n = c.positions();
    let mut parts: Vec<LossOutput> = Vec::with_capacity(SUM_BLOCK.min(n));
    let mut out = LossOutput::default();
    match grad {
        Some(grad) => {
            assert_eq!(
                grad.len(),
                c.logits.len(),
                "gradient buffer of another shape than the logits"
            );
            let mut first = 0;
            for block in grad.chunks_mut(SUM_BLOCK * c.vocab.max(1)) {
                block
                    .par_chunks_mut(c.vocab)
                    .enumerate()
                    .map_init(
                        || Scratch::new(c.k),
                        |sc, (i, g)| position(cfg, c, first + i, Some(g), sc, fast),
                    )
                    .collect_into_vec(&mut parts);
                first += parts.len();
                add(&mut out, &parts);
            }
        }
        None => {
            for first in (0..n).step_by(SUM_BLOCK) {
                (first..(first + SUM_BLOCK).min(n))
                    .into_par_iter()
                    .map_init(
                        || Scratch::new(c.k),
                        |sc, i| position(cfg, c, i, None, sc, fast),
                    )
                    .collect_into_vec(&mut parts);
                add(&mut out, &parts);
            }
        }
    }
    out
}

/// Add `parts` into `out` in order.
fn add(out: &mut LossOutput, parts: &[LossOutput]) {
    for p in parts {
        *out += *p;
    }
}

struct Scratch {
    sorted: Vec<u32>,
    teacher: Vec<f64>,
    target: Vec<f64>,
}

impl Scratch {
    fn new(k: usize) -> Self {
        Self {
            sorted: Vec::with_capacity(k),
            teacher: vec![0.0; k],
            target: vec![0.0; k],
        }
    }
}

fn f<T: Real>(x: T) -> f64 {
    x.to_f64().unwrap_or(f64::NAN)
}

fn position<T: Real>(
    cfg: &LossConfig,
    c: &Chunk<'_, T>,
    i: usize,
    mut grad: Option<&mut [T]>,
    sc: &mut Scratch,
    allow_fast: bool,
) -> LossOutput {
    let (v, k) = (c.vocab, c.k);
    if !c.mask[i] {
        if let Some(g) = grad {
            g.fill(T::zero());
        }
        return LossOutput::default();
    }
    let s = &c.logits[i * v..(i + 1) * v];
    let rec = Record {
        ids: &c.ids[i * k..(i + 1) * k],
        logprobs: &c.logprobs[i * k..(i + 1) * k],
        tail: c.tail[i],
    };
    sc.sorted.clear();
    sc.sorted.extend_from_slice(rec.ids);
    sc.sorted.sort_unstable();
    let t = cfg.target_t();
    let stats = row_stats(s, &sc.sorted, needs_scaled_stats(cfg.tail, t));
    let l = stats.lse;

    let teacher_rule = build_target(cfg.tail, 1.0, s, &rec, &stats, &mut sc.teacher);
    let (kl, teacher_xent) = closed_kl_xent(s, &rec, &sc.teacher, teacher_rule, &stats);
    let label = c.labels[i].filter(|&y| (y as usize) < v);
    let ce = label.map(|y| l - f(s[y as usize]));
    let mut out = LossOutput {
        kl_sum: kl,
        ce_sum: ce.unwrap_or(0.0),
        positions: 1,
        ce_positions: label.is_some() as usize,
        ..Default::default()
    };

    if cfg.objective == Objective::Ce {
        out.loss_sum = out.ce_sum;
        out.target_xent_sum = out.ce_sum;
        if let Some(g) = grad {
            match label {
                Some(y) => {
                    let lt: T = T::from(l).unwrap_or(T::nan());
                    for (gy, &sy) in g.iter_mut().zip(s) {
                        *gy = (sy - lt).exp();
                    }
                    g[y as usize] = g[y as usize] - T::one();
                }
                None => g.fill(T::zero()),
            }
        }
        return out;
    }

    let rule = if cfg.objective.is_taid() {
        build_target(cfg.tail, t, s, &rec, &stats, &mut sc.target)
    } else {
        sc.target.copy_from_slice(&sc.teacher);
        teacher_rule
    };
    let w = if label.is_some() {
        cfg.ce_weight as f64
    } else {
        0.0
    };
    let fast = allow_fast && cfg.objective.is_forward_kl() && rule.is_none_or(|r| r.b == 1.0);
    let (loss, xent) = if fast {
        if let Some(g) = grad.as_deref_mut() {
            forward_kl_grad(s, &rec, &sc.target, rule, &stats, &sc.sorted, w, g);
        }
        if cfg.objective.is_taid() {
            closed_kl_xent(s, &rec, &sc.target, rule, &stats)
        } else {
            (kl, teacher_xent)
        }
    } else {
        generic(
            cfg,
            s,
            &rec,
            &sc.target,
            rule,
            &stats,
            &sc.sorted,
            w,
            grad.as_deref_mut(),
        )
    };
    if let (Some(g), Some(y), true) = (grad, label, w > 0.0) {
        // CE's own h: −w at the label (both paths put −w into Σh already).
        g[y as usize] = g[y as usize] - T::from(w).unwrap_or(T::nan());
    }
    out.loss_sum = loss + w * ce.unwrap_or(0.0);
    out.target_xent_sum = xent;
    out
}

/// `(KL(p ‖ q), −Σ p log q)` of a target whose tail rule has b ∈ {0, 1} (or no tail), in one
/// O(k) pass over the record plus the row statistics.
fn closed_kl_xent<T: Real>(
    s: &[T],
    rec: &Record<'_, T>,
    on_k: &[f64],
    rule: Option<TailRule>,
    st: &RowStats,
) -> (f64, f64) {
    let l = st.lse;
    let (mut kl, mut xent) = (0.0, 0.0);
    for (&id, &lp) in rec.ids.iter().zip(on_k) {
        if lp > f64::NEG_INFINITY {
            let (p, lq) = (lp.exp(), f(s[id as usize]) - l);
            kl += p * (lp - lq);
            xent -= p * lq;
        }
    }
    match rule {
        None => (kl, xent),
        // log p − log q = a + s_y − (s_y − L) on every tail id; Σ p_y·s_y = e^{a+max}·Σ e^{s_y−max}·s_y.
        Some(r) if r.b == 1.0 => {
            let p_tail = (r.a + st.tail_lse).exp();
            (
                kl + p_tail * (r.a + l),
                xent + l * p_tail - (r.a + st.max).exp() * st.tail_sum_es,
            )
        }
        // p_y = e^a on every tail id.
        Some(r) if r.b == 0.0 => {
            let (n, pa) = (st.tail_count as f64, r.a.exp());
            (
                kl + pa * (n * (r.a + l) - st.tail_sum_s),
                xent + pa * (n * l - st.tail_sum_s),
            )
        }
        Some(_) => (f64::NAN, f64::NAN),
    }
}

/// ∂/∂s of KL(p ‖ q) + w·CE: `q − p`, with `−w` at the label, for a tail rule with b = 1 or
/// none; one exp per id.
#[allow(clippy::too_many_arguments)]
fn forward_kl_grad<T: Real>(
    s: &[T],
    rec: &Record<'_, T>,
    on_k: &[f64],
    rule: Option<TailRule>,
    st: &RowStats,
    sorted: &[u32],
    w: f64,
    g: &mut [T],
) {
    let l = st.lse;
    let p_k: f64 = on_k.iter().map(|lp| lp.exp()).sum();
    let p_tail = rule.map_or(0.0, |r| (r.a + st.tail_lse).exp());
    let h_sum = -(p_k + p_tail) - w;
    // On the tail h_y = −p_y = −q_y·e^{a+L}, so g_y = q_y·(−e^{a+L} − H).
    let coef = rule.map_or(0.0, |r| -(r.a + l).exp()) - h_sum;
    let (lt, ct): (T, T) = (
        T::from(l).unwrap_or(T::nan()),
        T::from(coef).unwrap_or(T::nan()),
    );
    for_each_tail_range(sorted, s.len(), |lo, hi| {
        for (gy, &sy) in g[lo..hi].iter_mut().zip(&s[lo..hi]) {
            *gy = (sy - lt).exp() * ct;
        }
    });
    for (&id, &lp) in rec.ids.iter().zip(on_k) {
        let q = (f(s[id as usize]) - l).exp();
        g[id as usize] = T::from(-lp.exp() - q * h_sum).unwrap_or(T::nan());
    }
}

/// φ and h of one id, in f64: `lp`, `lq` are log p and log q (lp may be −∞).
#[inline]
fn element(obj: Objective, lambda: f64, lp: f64, lq: f64) -> (f64, f64) {
    let p = lp.exp();
    let q = lq.exp();
    let logaddexp = |x: f64, y: f64| {
        let m = x.max(y);
        if m == f64::NEG_INFINITY {
            m
        } else {
            m + ((x - m).exp() + (y - m).exp()).ln()
        }
    };
    let plogp_over = |lp: f64, lm: f64| {
        if lp > f64::NEG_INFINITY {
            lp.exp() * (lp - lm)
        } else {
            0.0
        }
    };
    let (ll, l1) = (lambda.ln(), (1.0 - lambda).ln());
    match obj {
        Objective::Taid | Objective::TaidLinear | Objective::Kl => (plogp_over(lp, lq), -p),
        Objective::Rkl => (q * (lq - lp), q * (lq - lp + 1.0)),
        Objective::Tvd => {
            let sign = if q > p {
                1.0
            } else if q < p {
                -1.0
            } else {
                0.0
            };
            (0.5 * (p - q).abs(), 0.5 * q * sign)
        }
        Objective::SkewKl => {
            let lm = logaddexp(ll + lp, l1 + lq);
            (plogp_over(lp, lm), -(1.0 - lambda) * (lp + lq - lm).exp())
        }
        Objective::SkewRkl => {
            let lm = logaddexp(ll + lq, l1 + lp);
            (
                q * (lq - lm),
                q * (lq + 1.0 - lm - lambda * (lq - lm).exp()),
            )
        }
        Objective::Gjs => {
            let lm = logaddexp(ll + lp, l1 + lq);
            (
                lambda * plogp_over(lp, lm) + (1.0 - lambda) * q * (lq - lm),
                (1.0 - lambda) * q * (lq - lm),
            )
        }
        Objective::Ce => (0.0, 0.0),
    }
}

/// Any objective, id by id: returns (loss, −Σ p log q) and writes `h − q·H` (plus the CE term
/// of weight `w`) into `grad`.
#[allow(clippy::too_many_arguments)]
fn generic<T: Real>(
    cfg: &LossConfig,
    s: &[T],
    rec: &Record<'_, T>,
    on_k: &[f64],
    rule: Option<TailRule>,
    st: &RowStats,
    sorted: &[u32],
    w: f64,
    mut grad: Option<&mut [T]>,
) -> (f64, f64) {
    let l = st.lse;
    let lambda = cfg.lambda as f64;
    let (mut loss, mut xent, mut h_sum) = (0.0, 0.0, 0.0);
    let mut visit = |y: usize, lp: f64, grad: &mut Option<&mut [T]>| {
        let lq = f(s[y]) - l;
        let (phi, h) = element(cfg.objective, lambda, lp, lq);
        loss += phi;
        h_sum += h;
        if lp > f64::NEG_INFINITY {
            xent -= lp.exp() * lq;
        }
        if let Some(g) = grad.as_deref_mut() {
            g[y] = T::from(h).unwrap_or(T::nan());
        }
    };
    for_each_tail_range(sorted, s.len(), |lo, hi| {
        for (y, &sy) in s.iter().enumerate().take(hi).skip(lo) {
            let lp = rule.map_or(f64::NEG_INFINITY, |r| r.a + r.b * f(sy));
            visit(y, lp, &mut grad);
        }
    });
    for (&id, &lp) in rec.ids.iter().zip(on_k) {
        visit(id as usize, lp, &mut grad);
    }
    if let Some(g) = grad {
        let (lt, ht): (T, T) = (
            T::from(l).unwrap_or(T::nan()),
            T::from(h_sum - w).unwrap_or(T::nan()),
        );
        for (gy, &sy) in g.iter_mut().zip(s) {
            *gy = *gy - (sy - lt).exp() * ht;
        }
    }
    (loss, xent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Normal;

    const ALL: [Objective; 9] = Objective::ALL;
    const TAILS: [TailMode; 3] = TailMode::ALL;

    fn log_softmax(x: &[f64]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        x.iter().map(|v| v - l).collect()
    }

    /// Positions of random student logits and a teacher's top-k records of random logits.
    struct Case {
        vocab: usize,
        k: usize,
        s: Vec<f64>,
        /// dense teacher log-probs [n, vocab]
        z: Vec<f64>,
        ids: Vec<u32>,
        logprobs: Vec<f64>,
        tail: Vec<f64>,
        mask: Vec<bool>,
        labels: Vec<Option<u32>>,
    }

    impl Case {
        fn new(n: usize, vocab: usize, k: usize, seed: u64) -> Self {
            let mut rng = Normal::new(seed);
            let s: Vec<f64> = (0..n * vocab).map(|_| 1.5 * rng.sample() as f64).collect();
            let mut z = Vec::new();
            let (mut ids, mut logprobs, mut tail) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..n {
                let row: Vec<f64> = (0..vocab).map(|_| 2.5 * rng.sample() as f64).collect();
                let row = log_softmax(&row);
                let mut order: Vec<u32> = (0..vocab as u32).collect();
                order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
                let rest: Vec<f64> = order[k..].iter().map(|&i| row[i as usize]).collect();
                tail.push(if rest.is_empty() {
                    f64::NEG_INFINITY
                } else {
                    let m = rest.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    m + rest.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
                });
                logprobs.extend(order[..k].iter().map(|&i| row[i as usize]));
                ids.extend_from_slice(&order[..k]);
                z.extend(row);
            }
            let mut mask = vec![true; n];
            mask[n - 1] = false;
            let labels = (0..n)
                .map(|p| (p + 1 < n).then_some(((p * 7 + 3) % vocab) as u32))
                .collect();
            Self {
                vocab,
                k,
                s,
                z,
                ids,
                logprobs,
                tail,
                mask,
                labels,
            }
        }

        fn chunk<'a, T>(&'a self, s: &'a [T], lp: &'a [T], tail: &'a [T]) -> Chunk<'a, T> {
            Chunk {
                logits: s,
                vocab: self.vocab,
                k: self.k,
                ids: &self.ids,
                logprobs: lp,
                tail,
                mask: &self.mask,
                labels: &self.labels,
            }
        }

        /// The completed target of DESIGN.md written out densely: log p over the vocabulary.
        fn dense_target(&self, p: usize, mode: TailMode, t: f64, s: &[f64]) -> Vec<f64> {
            let v = self.vocab;
            let ids = &self.ids[p * self.k..(p + 1) * self.k];
            let z = &self.z[p * v..(p + 1) * v];
            let in_k = |y: usize| ids.contains(&(y as u32));
            let tau = self.tail[p];
            let tail: Vec<f64> = (0..v).filter(|&y| !in_k(y)).map(|y| s[y]).collect();
            let l_tail = if tail.is_empty() {
                f64::NEG_INFINITY
            } else {
                log_softmax_lse(&tail)
            };
            let zhat: Vec<f64> = (0..v)
                .map(|y| {
                    if in_k(y) {
                        z[y]
                    } else {
                        match mode {
                            TailMode::Student => tau + s[y] - l_tail,
                            TailMode::Uniform => tau - ((v - self.k) as f64).ln(),
                            TailMode::Renorm => f64::NEG_INFINITY,
                        }
                    }
                })
                .collect();
            let mix: Vec<f64> = (0..v)
                .map(|y| {
                    if zhat[y] == f64::NEG_INFINITY {
                        zhat[y]
                    } else {
                        (1.0 - t) * s[y] + t * zhat[y]
                    }
                })
                .collect();
            log_softmax(&mix)
        }
    }

    fn log_softmax_lse(x: &[f64]) -> f64 {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    }

    /// The objectives written densely in probabilities, independently of `element`.
    fn dense_loss(
        obj: Objective,
        lambda: f64,
        w: f64,
        lp: &[f64],
        s: &[f64],
        label: Option<u32>,
    ) -> f64 {
        let lq = log_softmax(s);
        let ce = label.map_or(0.0, |y| -lq[y as usize]);
        let p: Vec<f64> = lp.iter().map(|x| x.exp()).collect();
        let q: Vec<f64> = lq.iter().map(|x| x.exp()).collect();
        let kl = |a: &[f64], b: &[f64]| -> f64 {
            a.iter()
                .zip(b)
                .filter(|(x, _)| **x > 0.0)
                .map(|(x, y)| x * (x / y).ln())
                .sum()
        };
        let mix = |a: &[f64], b: &[f64], l: f64| -> Vec<f64> {
            a.iter()
                .zip(b)
                .map(|(x, y)| l * x + (1.0 - l) * y)
                .collect()
        };
        let j = match obj {
            Objective::Taid | Objective::TaidLinear | Objective::Kl => kl(&p, &q),
            Objective::Rkl => kl(&q, &p),
            Objective::Tvd => 0.5 * p.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f64>(),
            Objective::SkewKl => kl(&p, &mix(&p, &q, lambda)),
            Objective::SkewRkl => kl(&q, &mix(&q, &p, lambda)),
            Objective::Gjs => {
                let m = mix(&p, &q, lambda);
                lambda * kl(&p, &m) + (1.0 - lambda) * kl(&q, &m)
            }
            Objective::Ce => return ce,
        };
        j + w * ce
    }

    fn valid(obj: Objective, tail: TailMode) -> bool {
        !(obj == Objective::Rkl && tail == TailMode::Renorm)
    }

    /// Loss, metrics and gradient of every objective and tail mode against the dense
    /// completion, the gradient against central finite differences of the dense loss with the
    /// target held fixed (the stop-gradient), all in f64.
    #[test]
    fn every_objective_matches_its_dense_form_and_finite_differences() {
        let c = Case::new(4, 40, 6, 11);
        let v = c.vocab;
        let mut worst_grad = 0f64;
        for obj in ALL {
            for tail in TAILS {
                if !valid(obj, tail) {
                    continue;
                }
                let cfg = LossConfig {
                    objective: obj,
                    tail,
                    t: 0.35,
                    lambda: 0.1,
                    ce_weight: if obj == Objective::Ce { 0.0 } else { 0.3 },
                };
                let mut grad = vec![0f64; c.s.len()];
                let out = loss_and_grad(&cfg, &c.chunk(&c.s, &c.logprobs, &c.tail), &mut grad);
                let (mut loss, mut kl, mut ce, mut xent) = (0.0, 0.0, 0.0, 0.0);
                for p in 0..c.mask.len() {
                    let s = &c.s[p * v..(p + 1) * v];
                    if !c.mask[p] {
                        assert!(
                            grad[p * v..(p + 1) * v].iter().all(|&g| g == 0.0),
                            "masked position has a gradient"
                        );
                        continue;
                    }
                    let t = if obj.is_taid() { cfg.t as f64 } else { 1.0 };
                    let target = c.dense_target(p, tail, t, s);
                    let teacher = c.dense_target(p, tail, 1.0, s);
                    let w = cfg.ce_weight as f64;
                    let lambda = cfg.lambda as f64;
                    loss += dense_loss(obj, lambda, w, &target, s, c.labels[p]);
                    kl += dense_loss(Objective::Kl, 0.1, 0.0, &teacher, s, None);
                    ce += c.labels[p].map_or(0.0, |y| -log_softmax(s)[y as usize]);
                    let src = if obj == Objective::Ce {
                        &teacher
                    } else {
                        &target
                    };
                    let lq = log_softmax(s);
                    xent -= src
                        .iter()
                        .zip(&lq)
                        .filter(|(a, _)| a.is_finite())
                        .map(|(a, b)| a.exp() * b)
                        .sum::<f64>();
                    let h = 1e-5;
                    for i in 0..v {
                        let (mut up, mut down) = (s.to_vec(), s.to_vec());
                        up[i] += h;
                        down[i] -= h;
                        let fd = (dense_loss(obj, lambda, w, &target, &up, c.labels[p])
                            - dense_loss(obj, lambda, w, &target, &down, c.labels[p]))
                            / (2.0 * h);
                        let g = grad[p * v + i];
                        worst_grad = worst_grad.max((g - fd).abs());
                        assert!((g - fd).abs() < 1e-7, "{obj:?}/{tail:?} position {p} id {i}: gradient {g} vs finite difference {fd}");
                    }
                }
                assert!(
                    (out.loss_sum - loss).abs() < 1e-10,
                    "{obj:?}/{tail:?}: loss {} vs dense {loss}",
                    out.loss_sum
                );
                assert!(
                    (out.kl_sum - kl).abs() < 1e-10,
                    "{obj:?}/{tail:?}: kl {} vs dense {kl}",
                    out.kl_sum
                );
                assert!(
                    (out.ce_sum - ce).abs() < 1e-10,
                    "{obj:?}/{tail:?}: ce {} vs dense {ce}",
                    out.ce_sum
                );
                if obj != Objective::Ce {
                    assert!(
                        (out.target_xent_sum - xent).abs() < 1e-10,
                        "{obj:?}/{tail:?}: xent {} vs {xent}",
                        out.target_xent_sum
                    );
                }
                assert_eq!((out.positions, out.ce_positions), (3, 3));
                let only = loss_only(&cfg, &c.chunk(&c.s, &c.logprobs, &c.tail));
                assert_eq!(only, out, "loss_only and loss_and_grad disagree");
            }
        }
        eprintln!("worst |gradient − finite difference| = {worst_grad:.2e}");
    }

    fn f32s(x: &[f64]) -> Vec<f32> {
        x.iter().map(|&v| v as f32).collect()
    }

    #[test]
    fn sparse_taid_equals_dense_when_k_is_vocab() {
        let (n, vocab) = (6, 512);
        let c = Case::new(n, vocab, vocab, 3);
        let (s, lp, tail) = (f32s(&c.s), f32s(&c.logprobs), f32s(&c.tail));
        assert!(tail.iter().all(|t| *t == f32::NEG_INFINITY));
        let mut worst = (0f64, 0f64);
        for mode in TAILS {
            for t in [0.0f32, 0.4, 0.77, 1.0] {
                let cfg = LossConfig {
                    objective: Objective::Taid,
                    tail: mode,
                    t,
                    lambda: 0.1,
                    ce_weight: 0.0,
                };
                let mut grad = vec![0f32; s.len()];
                let out = loss_and_grad(&cfg, &c.chunk(&s, &lp, &tail), &mut grad);
                let mut dense_sum = 0.0;
                for p in 0..n {
                    if !c.mask[p] {
                        continue;
                    }
                    // Dense TAID (Eq. 1–2): p_t = softmax((1−t)·s + t·z), J = KL(p_t ‖ q), ∇ = q − p_t.
                    let sp: Vec<f64> = s[p * vocab..(p + 1) * vocab]
                        .iter()
                        .map(|&x| x as f64)
                        .collect();
                    let z: Vec<f64> = (0..vocab)
                        .map(|y| {
                            let j = c.ids[p * vocab..(p + 1) * vocab]
                                .iter()
                                .position(|&i| i as usize == y)
                                .unwrap();
                            lp[p * vocab + j] as f64
                        })
                        .collect();
                    let t = t as f64;
                    let mixed: Vec<f64> = sp
                        .iter()
                        .zip(&z)
                        .map(|(a, b)| (1.0 - t) * a + t * b)
                        .collect();
                    let lpt = log_softmax(&mixed);
                    let lq = log_softmax(&sp);
                    let j: f64 = lpt.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
                    dense_sum += j;
                    for y in 0..vocab {
                        let dg = lq[y].exp() - lpt[y].exp();
                        let e = (grad[p * vocab + y] as f64 - dg).abs();
                        worst.1 = worst.1.max(e);
                        assert!(
                            e < 1e-5,
                            "{mode:?} t={t} position {p} id {y}: gradient {} vs dense {dg}",
                            grad[p * vocab + y]
                        );
                    }
                }
                let e = (out.loss_sum - dense_sum).abs() / (n - 1) as f64;
                worst.0 = worst.0.max(e);
                assert!(
                    e < 1e-5,
                    "{mode:?} t={t}: mean loss {} vs dense {}",
                    out.loss_sum,
                    dense_sum
                );
            }
        }
        eprintln!(
            "k = V: worst |Δloss| {:.2e}, worst |Δgrad| {:.2e}",
            worst.0, worst.1
        );
    }

    #[test]
    fn closed_form_forward_kl_equals_the_generic_path() {
        let c = Case::new(5, 3000, 50, 5);
        let (s, lp, tail) = (f32s(&c.s), f32s(&c.logprobs), f32s(&c.tail));
        for obj in [Objective::Taid, Objective::Kl] {
            for mode in [TailMode::Student, TailMode::Renorm] {
                let cfg = LossConfig {
                    objective: obj,
                    tail: mode,
                    t: 0.6,
                    lambda: 0.1,
                    ce_weight: 0.25,
                };
                let chunk = c.chunk(&s, &lp, &tail);
                let (mut g1, mut g2) = (vec![0f32; s.len()], vec![0f32; s.len()]);
                let a = run_chunk(&cfg, &chunk, Some(&mut g1), true);
                let b = run_chunk(&cfg, &chunk, Some(&mut g2), false);
                for (x, y, what) in [
                    (a.loss_sum, b.loss_sum, "loss"),
                    (a.target_xent_sum, b.target_xent_sum, "xent"),
                    (a.kl_sum, b.kl_sum, "kl"),
                ] {
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                        "{obj:?}/{mode:?} {what}: fast {x} vs generic {y}"
                    );
                }
                let worst = g1
                    .iter()
                    .zip(&g2)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-6,
                    "{obj:?}/{mode:?}: gradients differ by {worst}"
                );
            }
        }
    }

    #[test]
    fn impossible_settings_are_refused_naming_the_flag() {
        let base = LossConfig {
            objective: Objective::Rkl,
            tail: TailMode::Renorm,
            t: 0.4,
            lambda: 0.1,
            ce_weight: 0.0,
        };
        assert!(base.validate().unwrap_err().contains("--tail renorm"));
        let skew = LossConfig {
            objective: Objective::SkewKl,
            tail: TailMode::Student,
            lambda: 1.5,
            ..base
        };
        assert!(skew.validate().unwrap_err().contains("--lambda"));
        let ce = LossConfig {
            objective: Objective::Ce,
            ce_weight: 1.0,
            ..skew
        };
        assert!(ce.validate().unwrap_err().contains("--ce-weight"));
        let ok = LossConfig {
            objective: Objective::Taid,
            tail: TailMode::Student,
            ..base
        };
        assert_eq!(ok.validate(), Ok(()));
    }
}
