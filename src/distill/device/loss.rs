//! Every objective's loss and gradient on a chunk of logits, in tensor ops on their device.
//!
//! The same mathematics as [`crate::distill::objectives`] (the generic path: `φ` and
//! `h = q·∂φ/∂q` id by id, gradient `h − q·Σh`), with the sparse target of
//! [`crate::distill::targets`] scattered into the chunk: explicit log-probabilities on the
//! record's ids and `a + b·s_y` on every other id. The chunk's `[n, vocab]` temporaries are
//! what the logits already cost; nothing leaves the device but the four sums the caller adds
//! up. Row sums are taken in f32 and the sums over rows in f64, as the host path does within
//! and across its ranges.

use candle_core::{DType, Tensor};

use super::{as_f32, DeviceChunk};
use crate::distill::objectives::{LossConfig, Objective};
use crate::distill::targets::{needs_scaled_stats, TailMode};
use crate::error::{CandleContext, Result};

type R<T> = candle_core::Result<T>;

/// The row statistics of [`crate::distill::targets::RowStats`] as `[n, 1]` tensors, and where
/// the record's ids are.
struct Stats {
    /// `[n, vocab]` u8: 1 on the ids outside the record (the tail)
    is_tail: Tensor,
    /// L = logsumexp_y s_y
    lse: Tensor,
    /// logsumexp over the tail (−∞ when the record covers the vocabulary)
    tail_lse: Tensor,
    /// |tail| as f32
    count: Tensor,
    /// logsumexp over the tail of `scale·s` (a uniform TAID target at t < 1)
    tail_lse_scaled: Option<Tensor>,
}

fn stats(s: &Tensor, c: &DeviceChunk, scale: Option<f64>) -> R<Stats> {
    let (n, v) = s.dims2()?;
    let k = c.ids.dim(1)?;
    let dev = s.device();
    let hits = Tensor::zeros((n, v), DType::F32, dev)?.scatter_add(
        &c.ids,
        &Tensor::ones((n, k), DType::F32, dev)?,
        1,
    )?;
    let is_tail = hits.eq(0f32)?;
    let tail = is_tail.to_dtype(DType::F32)?;
    let max = s.max_keepdim(1)?;
    let shifted = s.broadcast_sub(&max)?;
    let e = shifted.exp()?;
    let lse = (&max + e.sum_keepdim(1)?.log()?)?;
    let tail_lse = (&max + (&e * &tail)?.sum_keepdim(1)?.log()?)?;
    let tail_lse_scaled = match scale {
        Some(sc) => Some(
            (max.affine(sc, 0.0)?
                + (shifted.affine(sc, 0.0)?.exp()? * &tail)?
                    .sum_keepdim(1)?
                    .log()?)?,
        ),
        None => None,
    };
    Ok(Stats {
        count: tail.sum_keepdim(1)?,
        is_tail,
        lse,
        tail_lse,
        tail_lse_scaled,
    })
}

fn neg_inf(shape: (usize, usize), like: &Tensor) -> R<Tensor> {
    Tensor::full(f32::NEG_INFINITY, shape, like.device())
}

/// `log p` over the chunk, `[n, vocab]`: TAID's target at `t` (`t = 1`: the completed teacher),
/// the rule of [`crate::distill::targets::build_target`] row by row.
fn target(mode: TailMode, t: f64, s: &Tensor, c: &DeviceChunk, st: &Stats) -> R<Tensor> {
    let (n, v) = s.dims2()?;
    let raw = if t == 1.0 {
        c.logprobs.clone()
    } else {
        (s.gather(&c.ids, 1)?.affine(1.0 - t, 0.0)? + c.logprobs.affine(t, 0.0)?)?
    };
    let tau = &c.tail;
    let has_tail = if mode == TailMode::Renorm {
        Tensor::zeros((n, 1), DType::U8, s.device())?
    } else {
        (st.count.gt(0f32)? * tau.gt(f32::NEG_INFINITY)?)?
    };
    // The tail's rule before normalization, a0 + b·s_y, and the log-sum-exp of its mass.
    let (a0, b, tail_mass) = match mode {
        TailMode::Student => {
            let a0 = (tau - &st.tail_lse)?.affine(t, 0.0)?;
            let mass = (&st.tail_lse + &a0)?;
            (a0, 1.0, mass)
        }
        TailMode::Uniform => {
            let a0 = (tau - st.count.log()?)?.affine(t, 0.0)?;
            let mass = match (&st.tail_lse_scaled, t == 1.0) {
                (Some(scaled), false) => (&a0 + scaled)?,
                _ => tau.clone(),
            };
            (a0, 1.0 - t, mass)
        }
        TailMode::Renorm => (tau.zeros_like()?, 1.0, neg_inf((n, 1), s)?),
        // `StepPath::for_run` keeps `--tail sampled` on the host path.
        TailMode::Sampled => candle_core::bail!("--tail sampled has no device loss path"),
    };
    let tail_mass = has_tail.where_cond(&tail_mass, &neg_inf((n, 1), s)?)?;
    let all = Tensor::cat(&[&raw, &tail_mass], 1)?;
    let m = all.max_keepdim(1)?;
    let norm = (&m + all.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()?)?;
    let on_k = raw.broadcast_sub(&norm)?;
    let a = (a0 - &norm)?;
    let tail_lp = s.affine(b, 0.0)?.broadcast_add(&a)?;
    let tail_lp = has_tail
        .broadcast_as((n, v))?
        .where_cond(&tail_lp, &neg_inf((n, v), s)?)?;
    let on_k = Tensor::zeros((n, v), DType::F32, s.device())?.scatter_add(&c.ids, &on_k, 1)?;
    st.is_tail.where_cond(&tail_lp, &on_k)
}

/// A target over the chunk: `log p`, `p`, and where `p > 0`, each computed once.
struct Target {
    lp: Tensor,
    p: Tensor,
    /// u8: 1 where `log p > −∞`
    positive: Tensor,
}

impl Target {
    fn new(lp: Tensor) -> R<Self> {
        Ok(Self {
            p: lp.exp()?,
            positive: lp.gt(f32::NEG_INFINITY)?,
            lp,
        })
    }

    /// `p·(log p − lm)`, 0 where p = 0.
    fn p_log_p_over(&self, lm: &Tensor) -> R<Tensor> {
        let term = (&self.p * (&self.lp - lm)?)?;
        self.positive.where_cond(&term, &term.zeros_like()?)
    }

    /// `−p·log q`, 0 where p = 0.
    fn xent_terms(&self, lq: &Tensor) -> R<Tensor> {
        let term = (&self.p * lq)?.neg()?;
        self.positive.where_cond(&term, &term.zeros_like()?)
    }
}

/// `log(e^x + e^y)` elementwise, for `y` finite.
fn log_add_exp(x: &Tensor, y: &Tensor) -> R<Tensor> {
    let m = x.maximum(y)?;
    let sum = ((x - &m)?.exp()? + (y - &m)?.exp()?)?;
    m + sum.log()?
}

/// φ(p, q) and h = q·∂φ/∂q of every id (the table of [`crate::distill::objectives`]).
fn terms(obj: Objective, lambda: f64, t: &Target, lq: &Tensor, q: &Tensor) -> R<(Tensor, Tensor)> {
    let (ll, l1) = (lambda.ln(), (1.0 - lambda).ln());
    let lp = &t.lp;
    match obj {
        Objective::Taid | Objective::TaidLinear | Objective::Kl => {
            Ok((t.p_log_p_over(lq)?, t.p.neg()?))
        }
        Objective::Rkl => {
            let d = (lq - lp)?;
            Ok(((q * &d)?, (q * d.affine(1.0, 1.0)?)?))
        }
        Objective::Tvd => Ok((
            (&t.p - q)?.abs()?.affine(0.5, 0.0)?,
            (q * (q - &t.p)?.sign()?)?.affine(0.5, 0.0)?,
        )),
        Objective::SkewKl => {
            let lm = log_add_exp(&lp.affine(1.0, ll)?, &lq.affine(1.0, l1)?)?;
            let h = ((lp + lq)? - &lm)?.exp()?.affine(-(1.0 - lambda), 0.0)?;
            Ok((t.p_log_p_over(&lm)?, h))
        }
        Objective::SkewRkl => {
            let lm = log_add_exp(&lq.affine(1.0, ll)?, &lp.affine(1.0, l1)?)?;
            let d = (lq - &lm)?;
            let phi = (q * &d)?;
            let h = (q * (d.affine(1.0, 1.0)? - d.exp()?.affine(lambda, 0.0)?)?)?;
            Ok((phi, h))
        }
        Objective::Gjs => {
            let lm = log_add_exp(&lp.affine(1.0, ll)?, &lq.affine(1.0, l1)?)?;
            let q_term = (q * (lq - &lm)?)?.affine(1.0 - lambda, 0.0)?;
            let phi = (t.p_log_p_over(&lm)?.affine(lambda, 0.0)? + &q_term)?;
            Ok((phi, q_term))
        }
        Objective::Ce => {
            let z = q.zeros_like()?;
            Ok((z.clone(), z))
        }
    }
}

/// The sums `[loss, target_xent, ce, kl]` (f64, `[4]`) of one chunk of logits `[n, vocab]`
/// (f32) and, with `grad_scale`, the gradient of `grad_scale · loss` w.r.t. the logits,
/// zero on masked positions. The sums mean what [`crate::distill::objectives::LossOutput`]'s
/// do.
pub fn chunk(
    cfg: &LossConfig,
    logits: &Tensor,
    c: &DeviceChunk,
    grad_scale: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    chunk_inner(cfg, logits, c, grad_scale).ctx("loss on the device")
}

fn chunk_inner(
    cfg: &LossConfig,
    s: &Tensor,
    c: &DeviceChunk,
    grad_scale: Option<f64>,
) -> R<(Tensor, Option<Tensor>)> {
    let (n, v) = s.dims2()?;
    let t = if cfg.objective.is_taid() {
        cfg.t as f64
    } else {
        1.0
    };
    let st = stats(s, c, needs_scaled_stats(cfg.tail, t))?;
    let lq = s.broadcast_sub(&st.lse)?;
    let q = lq.exp()?;
    let has_label = as_f32(&c.has_label)?;
    let ce_row = ((&st.lse - s.gather(&c.labels, 1)?)? * &has_label)?;

    let teacher = Target::new(target(cfg.tail, 1.0, s, c, &st)?)?;
    let kl_terms = teacher.p_log_p_over(&lq)?;
    let kl_row = kl_terms.sum_keepdim(1)?;

    let (loss_row, xent_row, grad) = if cfg.objective == Objective::Ce {
        let grad = match grad_scale {
            Some(_) => {
                let one_hot = s.zeros_like()?.scatter_add(&c.labels, &has_label, 1)?;
                Some((q.broadcast_mul(&has_label)? - one_hot)?)
            }
            None => None,
        };
        (ce_row.clone(), ce_row.clone(), grad)
    } else {
        let (tgt, phi, h) = if cfg.objective.is_taid() {
            let tgt = Target::new(target(cfg.tail, t, s, c, &st)?)?;
            let (phi, h) = terms(cfg.objective, cfg.lambda as f64, &tgt, &lq, &q)?;
            (tgt, phi, h)
        } else if cfg.objective == Objective::Kl {
            // φ of forward KL from the completed teacher is the KL's own terms.
            let h = teacher.p.neg()?;
            (teacher, kl_terms, h)
        } else {
            let (phi, h) = terms(cfg.objective, cfg.lambda as f64, &teacher, &lq, &q)?;
            (teacher, phi, h)
        };
        let xent_row = tgt.xent_terms(&lq)?.sum_keepdim(1)?;
        let w = cfg.ce_weight as f64;
        let w_row = has_label.affine(w, 0.0)?;
        let loss_row = (phi.sum_keepdim(1)? + (&w_row * &ce_row)?)?;
        let grad = match grad_scale {
            Some(_) => {
                let h_sum = (h.sum_keepdim(1)? - &w_row)?;
                let mut g = (h - q.broadcast_mul(&h_sum)?)?;
                if w > 0.0 {
                    g = (g - s.zeros_like()?.scatter_add(&c.labels, &w_row, 1)?)?;
                }
                Some(g)
            }
            None => None,
        };
        (loss_row, xent_row, grad)
    };
    let zero_row = loss_row.zeros_like()?;
    let rows = Tensor::cat(&[&loss_row, &xent_row, &ce_row, &kl_row], 1)?;
    let rows = c
        .mask
        .broadcast_as((n, 4))?
        .where_cond(&rows, &Tensor::cat(&[&zero_row; 4], 1)?)?;
    let sums = rows.to_dtype(DType::F64)?.sum(0)?;
    let grad = match (grad, grad_scale) {
        (Some(g), Some(scale)) => Some(
            c.mask
                .broadcast_as((n, v))?
                .where_cond(&g.affine(scale, 0.0)?, &s.zeros_like()?)?,
        ),
        _ => None,
    };
    Ok((sums, grad))
}
