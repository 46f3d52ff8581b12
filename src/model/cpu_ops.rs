//! Fused ops of the decoder's forward for f32 tensors on the CPU, where candle would run each
//! as several single-threaded passes (and, in training, as several autograd nodes, each with a
//! zero-filled gradient buffer and an addition into it):
//!
//! - [`masked_softmax`]: the attention block's `softmax(scores / √d + causal mask)` in one pass
//!   per row, the masked entries never exponentiated;
//! - [`silu_mul`]: the MLP's `silu(gate) · up`;
//! - [`rms_norm`]: `x / √(mean(x²) + ε) · w`;
//! - [`rope_transposed`]: the rotary embedding of `[b, t, heads, head_dim]` rows, written as
//!   `[b, heads, t, head_dim]` (the transpose attention needs, in the same pass).
//!
//! Each has its backward ([`CustomOp1::bwd`], [`CustomOp2::bwd`]), itself one fused pass, so
//! the training forward ([`super::Mode::Train`]) uses them too; the unit tests check values and
//! gradients against candle's own ops, which [`super::Mode::TrainReference`] still runs. All
//! split their rows over rayon's pool and use [`crate::vexp`]'s vector `exp`. Other dtypes and
//! devices take candle's ops.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per rayon task (a row is a few hundred to a few thousand elements).
const ROWS_PER_TASK: usize = 16;

/// Whether the fused CPU ops apply to `t`.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The rows of an attention block `[.., rows, keys]` whose row `r` is query `start + r % n`
/// against the keys `lo, lo + 1, …`: softmax of `scale · score` over the keys `j ≤ i` with
/// `i − j < window`, 0 elsewhere.
#[derive(Clone)]
struct MaskedSoftmax {
    scale: f32,
    start: usize,
    n: usize,
    lo: usize,
    window: usize,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let keys = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(keys * ROWS_PER_TASK)
            .zip(x.par_chunks(keys * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(task, (out, x))| {
                for (r, (o, row)) in out.chunks_mut(keys).zip(x.chunks(keys)).enumerate() {
                    let (first, last) = self.keys_seen(task * ROWS_PER_TASK + r, keys);
                    if first < last {
                        crate::vexp::softmax(&row[first..last], self.scale, &mut o[first..last]);
                    }
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `scale · y · (g − Σ g·y)` per row over the keys the row sees, 0 elsewhere.
    fn bwd(&self, _scores: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let grad = g
            .contiguous()?
            .apply_op2_no_bwd(&y.contiguous()?, &MaskedSoftmaxGrad(self.clone()))?;
        Ok(Some(grad))
    }
}

impl MaskedSoftmax {
    /// The keys `first..last` (indices into a row of `keys`) that row `row` of the block sees.
    fn keys_seen(&self, row: usize, keys: usize) -> (usize, usize) {
        let i = self.start + row % self.n;
        let first = (i + 1).saturating_sub(self.window).max(self.lo) - self.lo;
        let last = (i + 1 - self.lo).min(keys);
        (first, last)
    }
}

/// [`MaskedSoftmax`]'s backward as a fused pass over `(∂/∂y, y)`.
struct MaskedSoftmaxGrad(MaskedSoftmax);

impl CustomOp2 for MaskedSoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, y) = two_f32(s1, l1, s2, l2, self.name())?;
        let keys = l1.dims().last().copied().unwrap_or(1).max(1);
        let rows = keys * ROWS_PER_TASK;
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(rows)
            .zip(g.par_chunks(rows).zip(y.par_chunks(rows)))
            .enumerate()
            .for_each(|(task, (out, (g, y)))| {
                for (r, ((o, g), y)) in out
                    .chunks_mut(keys)
                    .zip(g.chunks(keys))
                    .zip(y.chunks(keys))
                    .enumerate()
                {
                    let (first, last) = self.0.keys_seen(task * ROWS_PER_TASK + r, keys);
                    if first < last {
                        crate::vexp::softmax_grad(
                            &y[first..last],
                            &g[first..last],
                            self.0.scale,
                            &mut o[first..last],
                        );
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(scale · scores + mask)` of an attention block (see [`MaskedSoftmax`]): `scores`
/// `[.., n_rep · n, keys]` with the queries `start .. start + n` (each head's rows repeated
/// `n_rep` times) and the keys from `lo`; `window`: a sliding window's length. Differentiable.
pub fn masked_softmax(
    scores: &Tensor,
    scale: f64,
    start: usize,
    n: usize,
    lo: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(MaskedSoftmax {
        scale: scale as f32,
        start,
        n: n.max(1),
        lo,
        window: window.unwrap_or(usize::MAX),
    })
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gate, up) = two_f32(s1, l1, s2, l2, self.name())?;
        let mut out = vec![0f32; gate.len()];
        out.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(
                gate.par_chunks(ELEMENTS_PER_TASK)
                    .zip(up.par_chunks(ELEMENTS_PER_TASK)),
            )
            .for_each(|(o, (g, u))| crate::vexp::silu_mul(g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_gate, d_up) = with_f32(&[gate, up, g], |v| {
            let (gate, up, g) = (v[0], v[1], v[2]);
            let (mut d_gate, mut d_up) = (vec![0f32; gate.len()], vec![0f32; gate.len()]);
            d_gate
                .par_chunks_mut(ELEMENTS_PER_TASK)
                .zip(d_up.par_chunks_mut(ELEMENTS_PER_TASK))
                .zip(gate.par_chunks(ELEMENTS_PER_TASK))
                .zip(
                    up.par_chunks(ELEMENTS_PER_TASK)
                        .zip(g.par_chunks(ELEMENTS_PER_TASK)),
                )
                .for_each(|(((dg, du), x), (u, g))| crate::vexp::silu_mul_grad(x, u, g, dg, du));
            (d_gate, d_up)
        })?;
        let shape = gate.shape();
        Ok((
            Some(Tensor::from_vec(d_gate, shape, gate.device())?),
            Some(Tensor::from_vec(d_up, shape, gate.device())?),
        ))
    }
}

/// Elements per rayon task of an element-wise pass.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// `silu(gate) · up` of two tensors of one shape. Differentiable.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

/// RMSNorm of the rows of `x` `[.., h]` with weight `w` `[h]`:
/// `y = x · r · w` with `r = 1 / √(Σ x² / h + ε)`.
struct RmsNorm {
    eps: f32,
}

/// `1 / √(Σ x² / h + ε)` of one row, the sum in 16 lanes.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    for (j, &v) in chunks.remainder().iter().enumerate() {
        lanes[j] += v * v;
    }
    for c in chunks {
        for j in 0..16 {
            lanes[j] += c[j] * c[j];
        }
    }
    1.0 / (lanes.iter().sum::<f32>() / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
        );
        let h = w.len().max(1);
        if l1.dims().last() != Some(&w.len()) {
            candle_core::bail!("rms-norm: x {:?} and weight {:?}", l1.shape(), l2.shape())
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h * ROWS_PER_TASK)
            .zip(x.par_chunks(h * ROWS_PER_TASK))
            .for_each(|(out, x)| {
                for (o, x) in out.chunks_mut(h).zip(x.chunks(h)) {
                    let r = inv_rms(x, self.eps);
                    for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                        *o = x * r * w;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With `a = g ⊙ w`: `∂x = r · a − x · r³ · (Σ a ⊙ x) / h` per row, `∂w = Σ_rows g ⊙ x · r`
    /// (the rows' parts summed in row order, so the result does not depend on the threads).
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = with_f32(&[x, w, g], |v| {
            let (x, w, g) = (v[0], v[1], v[2]);
            let h = w.len().max(1);
            let mut dx = vec![0f32; x.len()];
            let parts: Vec<Vec<f32>> = dx
                .par_chunks_mut(h * ROWS_PER_TASK)
                .zip(
                    x.par_chunks(h * ROWS_PER_TASK)
                        .zip(g.par_chunks(h * ROWS_PER_TASK)),
                )
                .map(|(dx, (x, g))| {
                    let mut dw = vec![0f32; h];
                    for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                        let r = inv_rms(x, self.eps);
                        let mut s = 0f32;
                        for ((&g, &w), &x) in g.iter().zip(w).zip(x) {
                            s += g * w * x;
                        }
                        let c = r * r * r * s / h as f32;
                        for ((((d, dw), &g), &w), &x) in
                            dx.iter_mut().zip(dw.iter_mut()).zip(g).zip(w).zip(x)
                        {
                            *d = r * g * w - x * c;
                            *dw += g * x * r;
                        }
                    }
                    dw
                })
                .collect();
            let mut dw = vec![0f32; h];
            for part in parts {
                for (d, p) in dw.iter_mut().zip(part) {
                    *d += p;
                }
            }
            (dx, dw)
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// `x / √(mean(x²) + eps) · w` over the last dimension of `x`; `w`: `[h]`. Differentiable in
/// both.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

/// The rotary embedding (the rotate-half form of `rope_slow`) of `x` `[b, t, heads, d]`,
/// written as `[b, heads, t, d]`; with `inverse`, the rotation by `−θ` of `[b, heads, t, d]`
/// written as `[b, t, heads, d]`, which is the forward's backward.
#[derive(Clone)]
struct Rope {
    /// `[t, d / 2]` each.
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope-transposed"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (b, d0, d1, d) = layout.shape().dims4()?;
        // Forward: x [b, t, heads, d]; inverse: x [b, heads, t, d].
        let (t, heads) = if self.inverse { (d1, d0) } else { (d0, d1) };
        let half = d / 2;
        if d % 2 != 0 || self.cos.len() < t * half || self.sin.len() < t * half {
            candle_core::bail!(
                "rope: head size {d} against tables for {} values",
                self.cos.len()
            )
        }
        let mut out = vec![0f32; x.len()];
        // One task per output row block: `[t, d]` of one (batch, head) going forward,
        // `[heads, d]` of one (batch, position) going back.
        let block = if self.inverse { heads * d } else { t * d };
        out.par_chunks_mut(block).enumerate().for_each(|(j, o)| {
            // Forward: block j is (batch, head), its rows the positions; inverse: block j is
            // (batch, position), its rows the heads.
            let (batch, fixed) = if self.inverse {
                (j / t, j % t)
            } else {
                (j / heads, j % heads)
            };
            for r in 0..block / d {
                let (p, hh) = if self.inverse { (fixed, r) } else { (r, fixed) };
                let src = if self.inverse {
                    ((batch * heads + hh) * t + p) * d
                } else {
                    ((batch * t + p) * heads + hh) * d
                };
                let (c, s) = (&self.cos[p * half..][..half], &self.sin[p * half..][..half]);
                let (x1, x2) = x[src..src + d].split_at(half);
                let (o1, o2) = o[r * d..(r + 1) * d].split_at_mut(half);
                if self.inverse {
                    for i in 0..half {
                        o1[i] = x1[i] * c[i] + x2[i] * s[i];
                        o2[i] = x2[i] * c[i] - x1[i] * s[i];
                    }
                } else {
                    for i in 0..half {
                        o1[i] = x1[i] * c[i] - x2[i] * s[i];
                        o2[i] = x2[i] * c[i] + x1[i] * s[i];
                    }
                }
            }
        });
        let shape = if self.inverse {
            (b, t, heads, d)
        } else {
            (b, heads, t, d)
        };
        Ok((CpuStorage::F32(out), shape.into()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let back = Self {
            inverse: !self.inverse,
            ..self.clone()
        };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// Rotary tables for [`rope_transposed`]: `cos`, `sin` `[t, head_dim / 2]`, f32 on the CPU.
#[derive(Clone)]
pub struct RopeTables {
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
}

impl RopeTables {
    pub fn new(cos: &Tensor, sin: &Tensor) -> Result<Self> {
        let flat = |t: &Tensor| -> Result<Arc<[f32]>> {
            Ok(t.to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into())
        };
        Ok(Self {
            cos: flat(cos)?,
            sin: flat(sin)?,
        })
    }
}

/// The rotary embedding of `x` `[b, t, heads, head_dim]` (rotate-half, as candle's `rope_slow`
/// and transformers' Llama), returned as `[b, heads, t, head_dim]`. Differentiable in `x`.
pub fn rope_transposed(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope {
        cos: tables.cos.clone(),
        sin: tables.sin.clone(),
        inverse: false,
    })
}

/// Runs `f` on the f32 values of each tensor (made contiguous), on the CPU.
fn with_f32<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Result<R> {
    let owned = ts
        .iter()
        .map(|t| t.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("a fused CPU op's backward got a tensor off the CPU")
        };
        slices.push(contiguous_f32(cpu, layout, "fused CPU op")?);
    }
    Ok(f(&slices))
}

/// The values of two contiguous f32 operands of one shape.
fn two_f32<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    op: &str,
) -> Result<(&'a [f32], &'a [f32])> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("{op}: {:?} and {:?}", l1.shape(), l2.shape())
    }
    Ok((contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?))
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: f32 only")
    };
    let Some((lo, hi)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: the input is not contiguous")
    };
    Ok(&data[lo..hi])
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, D};

    use super::*;

    use crate::testing::max_abs_diff as max_diff;

    /// Against candle's ops: scores scaled, a causal (and windowed) mask added, softmax.
    #[test]
    fn masked_softmax_equals_candles_scale_mask_and_softmax() {
        let (n_rep, n, keys) = (3, 5, 9);
        let scores = Tensor::randn(0f32, 2.0, (2, 2, n_rep * n, keys), &Device::Cpu).unwrap();
        for (start, lo, window) in [(4usize, 0usize, None), (4, 0, Some(3)), (6, 2, Some(2))] {
            let mask: Vec<f32> = (0..n_rep * n)
                .flat_map(|r| {
                    let i = start + r % n;
                    (0..keys).map(move |c| {
                        let j = lo + c;
                        let ok = j <= i && i - j < window.unwrap_or(usize::MAX);
                        if ok {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (n_rep * n, keys), &Device::Cpu).unwrap();
            let want = candle_nn::ops::softmax(
                &(&scores * 0.35).unwrap().broadcast_add(&mask).unwrap(),
                D::Minus1,
            )
            .unwrap();
            let got = masked_softmax(&scores, 0.35, start, n, lo, window).unwrap();
            let d = max_diff(&got, &want);
            assert!(d <= 1e-6, "start {start} lo {lo} window {window:?}: {d}");
        }
    }

    /// `Σ y ⊙ r` for a fixed random `r`: a loss whose gradient with respect to `y` is `r`.
    fn probe(y: &Tensor, seed: u64) -> Tensor {
        let mut rng = crate::model::init::Normal::new(seed);
        let r: Vec<f32> = (0..y.elem_count()).map(|_| rng.sample()).collect();
        let r = Tensor::from_vec(r, y.shape(), y.device()).unwrap();
        (y * r).unwrap().sum_all().unwrap()
    }

    fn var(shape: &[usize], std: f32, seed: u64) -> candle_core::Var {
        let mut rng = crate::model::init::Normal::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.sample() * std).collect();
        candle_core::Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    use crate::testing::rel_max_diff as rel;

    /// The gradients of `probe(f(vars))` for each var.
    fn grads(vars: &[&candle_core::Var], y: &Tensor) -> Vec<Tensor> {
        let g = probe(y, 99).backward().unwrap();
        vars.iter()
            .map(|v| {
                g.get(v.as_tensor())
                    .expect("a gradient for every input")
                    .clone()
            })
            .collect()
    }

    #[test]
    fn masked_softmax_gradient_equals_candles_scale_mask_and_softmax_gradient() {
        let (n_rep, n, keys) = (2, 6, 6);
        for window in [None, Some(2)] {
            let scores = var(&[2, 3, n_rep * n, keys], 2.0, 5);
            let mask: Vec<f32> = (0..n_rep * n)
                .flat_map(|r| {
                    let i = r % n;
                    (0..keys).map(move |j| {
                        if j <= i && i - j < window.unwrap_or(usize::MAX) {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (n_rep * n, keys), &Device::Cpu).unwrap();
            let want_y = candle_nn::ops::softmax(
                &(scores.as_tensor() * 0.35)
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap(),
                D::Minus1,
            )
            .unwrap();
            let want = grads(&[&scores], &want_y);
            let got_y = masked_softmax(scores.as_tensor(), 0.35, 0, n, 0, window).unwrap();
            let got = grads(&[&scores], &got_y);
            assert!(max_diff(&got_y, &want_y) <= 1e-6);
            let d = rel(&got[0], &want[0]);
            assert!(
                d <= 1e-5,
                "window {window:?}: ∂scores differs by {d} of its largest"
            );
        }
    }

    #[test]
    fn silu_mul_gradients_equal_candles() {
        let (g, u) = (var(&[3, 7, 33], 4.0, 1), var(&[3, 7, 33], 1.0, 2));
        let want = grads(
            &[&g, &u],
            &(candle_nn::ops::silu(g.as_tensor()).unwrap() * u.as_tensor()).unwrap(),
        );
        let got = grads(&[&g, &u], &silu_mul(g.as_tensor(), u.as_tensor()).unwrap());
        for (name, (got, want)) in ["gate", "up"].iter().zip(got.iter().zip(&want)) {
            let d = rel(got, want);
            assert!(d <= 1e-5, "∂{name} differs by {d} of its largest");
        }
    }

    #[test]
    fn rms_norm_values_and_gradients_equal_candles_forward_diff() {
        let x = var(&[3, 5, 37], 1.5, 3);
        let w = var(&[37], 1.0, 4);
        let reference = candle_nn::RmsNorm::new(w.as_tensor().clone(), 1e-6);
        let want_y = reference.forward_diff(x.as_tensor()).unwrap();
        let want = grads(&[&x, &w], &want_y);
        let got_y = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
        let got = grads(&[&x, &w], &got_y);
        let d = rel(&got_y, &want_y);
        assert!(d <= 1e-6, "values differ by {d} of the largest");
        for (name, (got, want)) in ["x", "weight"].iter().zip(got.iter().zip(&want)) {
            let d = rel(got, want);
            assert!(d <= 1e-5, "∂{name} differs by {d} of its largest");
        }
    }

    #[test]
    fn rope_transposed_equals_rope_slow_after_the_transpose_with_its_gradient() {
        let (b, t, heads, d) = (2, 9, 3, 8);
        let freqs: Vec<f32> = (0..t)
            .flat_map(|p| (0..d / 2).map(move |i| p as f32 * 0.7f32.powi(i as i32)))
            .collect();
        let freqs = Tensor::from_vec(freqs, (t, d / 2), &Device::Cpu).unwrap();
        let (cos, sin) = (freqs.cos().unwrap(), freqs.sin().unwrap());
        let x = var(&[b, t, heads, d], 1.0, 6);
        let want_y = candle_nn::rotary_emb::rope_slow(
            &x.as_tensor().transpose(1, 2).unwrap().contiguous().unwrap(),
            &cos,
            &sin,
        )
        .unwrap();
        let want = grads(&[&x], &want_y);
        let tables = RopeTables::new(&cos, &sin).unwrap();
        let got_y = rope_transposed(x.as_tensor(), &tables).unwrap();
        assert_eq!(got_y.dims(), &[b, heads, t, d]);
        let got = grads(&[&x], &got_y);
        assert!(max_diff(&got_y, &want_y) <= 1e-6);
        let dx = rel(&got[0], &want[0]);
        assert!(dx <= 1e-6, "∂x differs by {dx} of its largest");
    }

    #[test]
    fn silu_mul_equals_candles_silu_times_up() {
        let g = Tensor::randn(0f32, 4.0, (3, 7, 33), &Device::Cpu).unwrap();
        let u = Tensor::randn(0f32, 1.0, (3, 7, 33), &Device::Cpu).unwrap();
        let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        let d = max_diff(&silu_mul(&g, &u).unwrap(), &want);
        assert!(d <= 1e-5, "{d}");
        // A non-contiguous gate (a narrow of a fused gate_up) takes the same path.
        let both = Tensor::cat(&[&g, &u], 2).unwrap();
        let gate = both.narrow(2, 0, 33).unwrap();
        let up = both.narrow(2, 33, 33).unwrap();
        assert_eq!(
            max_diff(&silu_mul(&gate, &up).unwrap(), &silu_mul(&g, &u).unwrap()),
            0.0
        );
    }
}
