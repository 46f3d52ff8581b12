//! The AVX2 + FMA kernel's lane operations: 8 lanes per register, two registers of sums, one
//! minimum and one compare mask per step, and [`super::portable::exp_le0`] on 8 lanes.
//!
//! Why intrinsics: the portable loop compiled for AVX2 kept its 32 lanes of sums, minima and
//! maxima on the stack (16 registers) and spilled them at every step (`docs/performance.md`).

use std::arch::x86_64::*;

use super::driver::{self, Lanes};
use super::EXP_FLOOR;

/// The AVX2 row kernel: [`driver::topk_row`] on [`Avx2`] lanes, compiled for AVX2 and FMA.
///
/// # Safety
///
/// The CPU must have AVX2 and FMA (`is_x86_feature_detected!`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn topk_row(
    row: &[f32],
    ids: &mut [u32],
    logprobs: &mut [f32],
) -> Result<f32, usize> {
    driver::topk_row(Avx2::new(), row, ids, logprobs)
}

/// AVX2 + FMA lanes. Only [`Avx2::new`], compiled for those features, makes one: a value is the
/// proof that the CPU has them.
#[derive(Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn new() -> Self {
        Self(())
    }
}

impl Lanes for Avx2 {
    const WIDTH: usize = 8;
    type V = __m256;
    /// All ones or all zeros per lane, as `_mm256_cmp_ps` returns it.
    type Mask = __m256;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, c: &[f32]) -> __m256 {
        assert!(c.len() >= 8);
        // SAFETY: `c` holds at least 8 floats; `self` exists, so the CPU has AVX2.
        unsafe { _mm256_loadu_ps(c.as_ptr()) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn scale(self, a: __m256, s: f32) -> __m256 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_mul_ps(a, _mm256_set1_ps(s)) }
    }
    /// [`super::portable::exp_le0`] on 8 lanes (NaN stays NaN): the same Cody–Waite reduction
    /// and polynomial, so the same relative error (below 3e-7).
    #[inline(always)]
    fn exp_le0(self, d: __m256) -> __m256 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const ROUND: f32 = 12_582_912.0;
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe {
            // max(floor, d): the second operand (d) when it is NaN.
            let x = _mm256_max_ps(_mm256_set1_ps(EXP_FLOOR), d);
            let t = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(ROUND));
            let n = _mm256_sub_ps(t, _mm256_set1_ps(ROUND));
            let r = _mm256_fnmadd_ps(
                n,
                _mm256_set1_ps(LN2_LO),
                _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x),
            );
            let mut p = _mm256_set1_ps(8.343_355e-3);
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.192_340_4e-2));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_681_5e-1));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.999_890_3e-1));
            let e = _mm256_add_ps(
                _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
                _mm256_set1_ps(1.0),
            );
            // 2^n from the bits of t = ROUND + n (n in [-126, 0]).
            let scale = _mm256_slli_epi32::<23>(_mm256_sub_epi32(
                _mm256_castps_si256(t),
                _mm256_set1_epi32(0x4B3F_FF81),
            ));
            _mm256_mul_ps(e, _mm256_castsi256_ps(scale))
        }
    }
    #[inline(always)]
    fn exp_le0_scalar(self, d: f32) -> f32 {
        super::portable::exp_le0::<true>(d)
    }
    #[inline(always)]
    fn above(self, x: __m256, thr: __m256) -> __m256 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_cmp_ps::<_CMP_NLE_UQ>(x, thr) }
    }
    #[inline(always)]
    fn none(self) -> __m256 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn or(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_or_ps(a, b) }
    }
    #[inline(always)]
    fn bits(self, m: __m256) -> u32 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_movemask_ps(m) as u32 }
    }
    #[inline(always)]
    fn add_unless(self, acc: __m256, m: __m256, e: __m256) -> __m256 {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe { _mm256_add_ps(acc, _mm256_andnot_ps(m, e)) }
    }
    /// The two registers added in f32, then their 8 lanes in f64.
    #[inline(always)]
    fn fold(self, acc: [__m256; 2]) -> f64 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats; `self` exists, so the CPU has AVX2 (`Avx2::new`).
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1])) };
        lanes.iter().map(|&v| v as f64).sum()
    }
    #[inline(always)]
    fn any_neg_inf(self, v: __m256) -> bool {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA (`Avx2::new`).
        unsafe {
            _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                v,
                _mm256_set1_ps(f32::NEG_INFINITY),
            )) != 0
        }
    }
}
