//! The AVX-512 kernel's lane operations: 16 lanes per register, compare results in mask
//! registers (one `vcmpps` both excludes a candidate from the sum and flags it, NaN included),
//! and a table-driven `exp` ([`Avx512::exp_le0`]): 2^(j/32) from a 32-entry table in two
//! registers, a degree-2 polynomial for the rest, the exponent added as an integer.
//!
//! Why intrinsics, and the variants measured against them: `docs/performance.md`.

use std::arch::x86_64::*;

use super::driver::{self, Lanes};
use super::EXP_FLOOR;

/// The AVX-512 row kernel: [`driver::topk_row`] on [`Avx512`] lanes, compiled for AVX-512F.
///
/// # Safety
///
/// The CPU must have AVX-512F (`is_x86_feature_detected!`).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn topk_row(
    row: &[f32],
    ids: &mut [u32],
    logprobs: &mut [f32],
) -> Result<f32, usize> {
    driver::topk_row(Avx512::new(), row, ids, logprobs)
}

/// AVX-512F lanes, holding `2^(j/32)` for j in 0..32 in two registers for `vpermt2ps`. Only
/// [`Avx512::new`], compiled for AVX-512F, makes one: a value is the proof that the CPU has it.
#[derive(Clone, Copy)]
pub(super) struct Avx512 {
    lo: __m512,
    hi: __m512,
}

impl Avx512 {
    #[target_feature(enable = "avx512f")]
    pub(super) fn new() -> Self {
        let t: [f32; 32] = std::array::from_fn(|j| 2f64.powf(j as f64 / 32.0) as f32);
        // SAFETY: `t` holds 32 floats; the CPU has AVX-512F (this function is compiled for it).
        unsafe {
            Self {
                lo: _mm512_loadu_ps(t.as_ptr()),
                hi: _mm512_loadu_ps(t.as_ptr().add(16)),
            }
        }
    }
}

impl Lanes for Avx512 {
    const WIDTH: usize = 16;
    type V = __m512;
    type Mask = __mmask16;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, c: &[f32]) -> __m512 {
        assert!(c.len() >= 16);
        // SAFETY: `c` holds at least 16 floats; `self` exists, so the CPU has AVX-512F.
        unsafe { _mm512_loadu_ps(c.as_ptr()) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn scale(self, a: __m512, s: f32) -> __m512 {
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe { _mm512_mul_ps(a, _mm512_set1_ps(s)) }
    }
    /// `exp(max(d, EXP_FLOOR))` for 16 lanes `d ≤ 0` (NaN stays NaN). With
    /// `t = round(32 · log2(e) · d) = 32a + b`: `exp(d) = 2^a · 2^(b/32) · exp(r)`, where
    /// `r = d − t · ln2/32` lies in ±ln2/64 and `exp(r)` is `1 + r + r²/2` (written in the
    /// variable `f = t_exact − t`). Relative error below 2e-6 on `[−87, 0]` and 5e-7 on
    /// `[−10, 0]`, where the tail sum gets almost all its mass (the rounding of 32·log2(e)
    /// grows with `|d|`).
    #[inline(always)]
    fn exp_le0(self, d: __m512) -> __m512 {
        const C: f32 = 32.0 * std::f32::consts::LOG2_E;
        // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
        const ROUND: f32 = 12_582_912.0;
        const C1: f32 = std::f32::consts::LN_2 / 32.0;
        const C2: f32 = C1 * C1 / 2.0;
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe {
            // max(floor, d): the second operand (d) when it is NaN.
            let d = _mm512_max_ps(_mm512_set1_ps(EXP_FLOOR), d);
            let t = _mm512_fmadd_ps(d, _mm512_set1_ps(C), _mm512_set1_ps(ROUND));
            let n = _mm512_sub_ps(t, _mm512_set1_ps(ROUND));
            let f = _mm512_fmsub_ps(d, _mm512_set1_ps(C), n);
            let p = _mm512_fmadd_ps(
                _mm512_fmadd_ps(_mm512_set1_ps(C2), f, _mm512_set1_ps(C1)),
                f,
                _mm512_set1_ps(1.0),
            );
            // The low 5 bits of t's bits are b = n mod 32.
            let tb = _mm512_castps_si512(t);
            let e = _mm512_mul_ps(p, _mm512_permutex2var_ps(self.lo, tb, self.hi));
            // 2^a: a = floor(n / 32) into the exponent field. The bits of t are
            // 0x4B40_0000 + n, and 0x4B40_0000 << 18 wraps to 0, so (bits << 18) with the low 23
            // bits cleared is a << 23.
            let a = _mm512_and_si512(
                _mm512_slli_epi32::<18>(tb),
                _mm512_set1_epi32(0xFF80_0000u32 as i32),
            );
            _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(e), a))
        }
    }
    #[inline(always)]
    fn exp_le0_scalar(self, d: f32) -> f32 {
        // AVX-512F implies FMA.
        super::portable::exp_le0::<true>(d)
    }
    #[inline(always)]
    fn above(self, x: __m512, thr: __m512) -> __mmask16 {
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe { _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x, thr) }
    }
    #[inline(always)]
    fn none(self) -> __mmask16 {
        0
    }
    #[inline(always)]
    fn or(self, a: __mmask16, b: __mmask16) -> __mmask16 {
        a | b
    }
    #[inline(always)]
    fn bits(self, m: __mmask16) -> u32 {
        m as u32
    }
    #[inline(always)]
    fn add_unless(self, acc: __m512, m: __mmask16, e: __m512) -> __m512 {
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe { _mm512_mask_add_ps(acc, !m, acc, e) }
    }
    /// Each register summed in f32, the two sums added in f64.
    #[inline(always)]
    fn fold(self, acc: [__m512; 2]) -> f64 {
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe { _mm512_reduce_add_ps(acc[0]) as f64 + _mm512_reduce_add_ps(acc[1]) as f64 }
    }
    #[inline(always)]
    fn any_neg_inf(self, v: __m512) -> bool {
        // SAFETY: `self` exists, so the CPU has AVX-512F (`Avx512::new`).
        unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_set1_ps(f32::NEG_INFINITY)) != 0 }
    }
}
