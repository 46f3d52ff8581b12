//! The portable kernel's lane operations (baseline x86-64 and other targets): plain loops over
//! arrays of 16 f32 lanes that the compiler vectorizes, and the scalar `exp` they apply, which
//! the scalar [`super::pass::Pass`] and the intrinsics kernels' remainders use as well.

use super::driver::{self, Lanes};
use super::EXP_FLOOR;

/// The portable row kernel: [`driver::topk_row`] on [`Portable`] lanes.
pub(super) fn topk_row(row: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> Result<f32, usize> {
    driver::topk_row(Portable, row, ids, logprobs)
}

/// Lanes per array: two arrays per step give the 32 independent accumulators that the
/// intrinsics kernels have in registers.
const W: usize = 16;

/// Lanes as arrays; needs nothing of the CPU.
#[derive(Clone, Copy)]
pub(super) struct Portable;

// Every operation is a plain loop over the lanes: `array::map` and `array::from_fn` were left
// out of line, which kept the chunk loop from vectorizing.
impl Lanes for Portable {
    const WIDTH: usize = W;
    type V = [f32; W];
    type Mask = [bool; W];

    #[inline(always)]
    fn splat(self, x: f32) -> [f32; W] {
        [x; W]
    }
    #[inline(always)]
    fn load(self, c: &[f32]) -> [f32; W] {
        let mut v = [0.0; W];
        v.copy_from_slice(&c[..W]);
        v
    }
    #[inline(always)]
    fn sub(self, mut a: [f32; W], b: [f32; W]) -> [f32; W] {
        for (a, b) in a.iter_mut().zip(b) {
            *a -= b;
        }
        a
    }
    #[inline(always)]
    fn min(self, mut a: [f32; W], b: [f32; W]) -> [f32; W] {
        for (a, b) in a.iter_mut().zip(b) {
            *a = if *a < b { *a } else { b };
        }
        a
    }
    #[inline(always)]
    fn scale(self, mut a: [f32; W], s: f32) -> [f32; W] {
        for a in &mut a {
            *a *= s;
        }
        a
    }
    #[inline(always)]
    fn exp_le0(self, mut d: [f32; W]) -> [f32; W] {
        for d in &mut d {
            *d = exp_le0::<false>(*d);
        }
        d
    }
    #[inline(always)]
    fn exp_le0_scalar(self, d: f32) -> f32 {
        exp_le0::<false>(d)
    }
    // `!(x <= t)` is the intrinsics kernels' `_CMP_NLE_UQ`: true for NaN, so NaN is a candidate.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    #[inline(always)]
    fn above(self, x: [f32; W], thr: [f32; W]) -> [bool; W] {
        let mut m = [false; W];
        for ((m, x), t) in m.iter_mut().zip(x).zip(thr) {
            *m = !(x <= t);
        }
        m
    }
    #[inline(always)]
    fn none(self) -> [bool; W] {
        [false; W]
    }
    #[inline(always)]
    fn or(self, mut a: [bool; W], b: [bool; W]) -> [bool; W] {
        for (a, b) in a.iter_mut().zip(b) {
            *a |= b;
        }
        a
    }
    #[inline(always)]
    fn bits(self, m: [bool; W]) -> u32 {
        let mut bits = 0;
        for (l, m) in m.into_iter().enumerate() {
            bits |= (m as u32) << l;
        }
        bits
    }
    #[inline(always)]
    fn add_unless(self, mut acc: [f32; W], m: [bool; W], e: [f32; W]) -> [f32; W] {
        for ((acc, m), e) in acc.iter_mut().zip(m).zip(e) {
            *acc += if m { 0.0 } else { e };
        }
        acc
    }
    #[inline(always)]
    fn fold(self, acc: [[f32; W]; 2]) -> f64 {
        let mut total = 0.0;
        for v in acc.into_iter().flatten() {
            total += v as f64;
        }
        total
    }
    #[inline(always)]
    fn any_neg_inf(self, v: [f32; W]) -> bool {
        v.contains(&f32::NEG_INFINITY)
    }
}

/// `a · b + c`, fused where the kernel is compiled for FMA (a plain `mul_add` elsewhere would
/// be a libm call per element).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(max(d, EXP_FLOOR))` for `d ≤ 0`; branch-free so that loops over it vectorize.
#[inline(always)]
pub(super) fn exp_le0<const FMA: bool>(d: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for |n| < 2^11.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if d < EXP_FLOOR { EXP_FLOOR } else { d };
    let t = madd::<FMA>(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    // exp(r) = 1 + r + r²·p(r) on [-ln2/2, ln2/2], p of degree 3 fitted for least maximum
    // relative error (2.2e-7 in f32 arithmetic; fitted by `benches/exp_fit.py`).
    let mut p = 8.343_355e-3;
    p = madd::<FMA>(p, r, 4.192_340_4e-2);
    p = madd::<FMA>(p, r, 1.666_681_5e-1);
    p = madd::<FMA>(p, r, 4.999_890_3e-1);
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    // 2^n from the bits of t = ROUND + n (n in [-126, 0]).
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B3F_FF81) << 23);
    e * scale
}
