//! Two fused ops of the inference forward ([`super::Mode::Infer`]) for f32 tensors on the CPU,
//! where candle would run each as several single-threaded passes with libm's `expf`:
//!
//! - [`masked_softmax`]: the attention block's `softmax(scores / √d + causal mask)` in one pass
//!   per row, the masked entries never exponentiated;
//! - [`silu_mul`]: the MLP's `silu(gate) · up`.
//!
//! Both split their rows over rayon's pool and use [`crate::vexp`]'s vector `exp`. Neither has a
//! backward, so training keeps candle's ops. Other dtypes and devices take candle's ops too.

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
                    let i = self.start + (task * ROWS_PER_TASK + r) % self.n;
                    let first = (i + 1).saturating_sub(self.window).max(self.lo) - self.lo;
                    let last = (i + 1 - self.lo).min(keys);
                    if first < last {
                        crate::vexp::softmax(&row[first..last], self.scale, &mut o[first..last]);
                    }
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `softmax(scale · scores + mask)` of an attention block (see [`MaskedSoftmax`]): `scores`
/// `[.., n_rep · n, keys]` with the queries `start .. start + n` (each head's rows repeated
/// `n_rep` times) and the keys from `lo`; `window`: a sliding window's length.
pub fn masked_softmax(
    scores: &Tensor,
    scale: f64,
    start: usize,
    n: usize,
    lo: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    scores.apply_op1_no_bwd(&MaskedSoftmax {
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
        if l1.shape() != l2.shape() {
            candle_core::bail!("silu-mul: gate {:?} and up {:?}", l1.shape(), l2.shape())
        }
        let (gate, up) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
        );
        let mut out = vec![0f32; gate.len()];
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| crate::vexp::silu_mul(g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `silu(gate) · up` of two tensors of one shape.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &SiluMul)
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
