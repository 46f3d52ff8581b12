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

    /// The flag value: `taid`, `taid-linear`, `kl`, ...
    pub fn name(self) -> &'static str {
        match self {
            Objective::Taid => "taid",
            Objective::TaidLinear => "taid-linear",
            Objective::Kl => "kl",
            Objective::Rkl => "rkl",
            Objective::Tvd => "tvd",
            Objective::SkewKl => "skew-kl",
            Objective::SkewRkl => "skew-rkl",
            Objective::Gjs => "gjs",
            Objective::Ce => "ce",
        }
    }

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
    /// Tail draws per position (`precompute --tail-samples`; 0: none). Read by `--tail sampled`.
    pub draws: usize,
    /// [n, draws]: the drawn ids, ascending per position.
    pub draw_ids: &'a [u32],
    /// [n, draws]: their teacher log-probs.
    pub draw_logprobs: &'a [T],
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
    entries: Vec<sampled::Entry>,
}

impl Scratch {
    fn new(k: usize) -> Self {
        Self {
            sorted: Vec::with_capacity(k),
            teacher: vec![0.0; k],
            target: vec![0.0; k],
            entries: Vec::new(),
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
    let label = c.labels[i].filter(|&y| (y as usize) < v);
    // The weight of the next-token term added to the objective (not to `ce` itself).
    let w = if label.is_some() {
        cfg.ce_weight as f64
    } else {
        0.0
    };
    if cfg.tail == TailMode::Sampled {
        let n = c.draws;
        let draws = sampled::Draws {
            ids: &c.draw_ids[i * n..(i + 1) * n],
            logprobs: &c.draw_logprobs[i * n..(i + 1) * n],
        };
        return sampled::position(
            cfg,
            s,
            &rec,
            &draws,
            &stats,
            label,
            w,
            &mut sc.entries,
            grad,
        );
    }

    let teacher_rule = build_target(cfg.tail, 1.0, s, &rec, &stats, &mut sc.teacher);
    let (kl, teacher_xent) = closed_kl_xent(s, &rec, &sc.teacher, teacher_rule, &stats);
    let (ce, mut out) = position_sums(s, l, label, kl);

    if cfg.objective == Objective::Ce {
        out.loss_sum = out.ce_sum;
        out.target_xent_sum = out.ce_sum;
        if let Some(g) = grad {
            match label {
                Some(y) => {
                    let lt: T = T::from(l).unwrap_or(T::nan());
                    T::exp_scaled(s, lt, T::one(), g);
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

/// One counted position's next-token CE (with a label) and its [`LossOutput`] before the
/// objective's own terms: `kl`, CE, the counts. `l` is the row's log-sum-exp.
fn position_sums<T: Real>(
    s: &[T],
    l: f64,
    label: Option<u32>,
    kl: f64,
) -> (Option<f64>, LossOutput) {
    let ce = label.map(|y| l - f(s[y as usize]));
    let out = LossOutput {
        kl_sum: kl,
        ce_sum: ce.unwrap_or(0.0),
        positions: 1,
        ce_positions: label.is_some() as usize,
        ..Default::default()
    };
    (ce, out)
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
        T::exp_scaled(&s[lo..hi], lt, ct, &mut g[lo..hi]);
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

pub mod sampled;
#[cfg(test)]
mod tests;
