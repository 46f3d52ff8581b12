//! Per-position top-k of the teacher's next-token distribution, on the CPU.
//!
//! For one row of logits `x` (length V) this computes, in one pass over the row and without
//! sorting it: the k largest entries (ids by descending log-prob, ties to the smaller id), their
//! normalized log-probabilities `x_j - logsumexp(x)`, and the tail log-mass
//! `log Σ_{y∉K} softmax(x)_y` summed over the tail elements themselves (never `1 - Σ top-k`,
//! which loses everything when the tail is tiny).
//!
//! The row is read once, in chunks of [`CHUNK`] elements that stay in L1:
//!
//! - every element `x ≤ thr` (the k-th value of the k best so far, as it stood at the start of
//!   the chunk) is certainly in the tail, since `thr` only grows: `exp(x − M)` is added into f32
//!   lanes, where `M` is the running maximum (the tail sum is rescaled on the rare new maximum),
//!   and the lanes are folded into an f64 total every [`FOLD`] chunks;
//! - the few elements above it are found by mask bits and appended to a pool behind the k best;
//!   every [`POOL_EXTRA`] candidates the pool is cut back to k (`select_nth_unstable`), the rest
//!   joins the tail and `thr` rises to the new k-th value ([`Pass`]).
//!
//! `exp` is branch-free so that the chunk loops vectorize. The row kernel exists three times,
//! picked at run time:
//!
//! - on AVX-512, written with intrinsics ([`topk_row_avx512`]): a table-driven `exp`
//!   (2^(j/32) from 32 entries in two registers, a degree-2 polynomial, the exponent added as an
//!   integer; relative error below 2e-6 on `[-87, 0]`) and one mask compare per 16 logits for
//!   the candidates: 15 instructions per 16 logits, 23% less time than the portable kernel
//!   compiled for AVX-512 (`topk/select_cached_1t`, 12.3 → 9.7 ms);
//! - on AVX2 + FMA, written with intrinsics ([`avx2::topk_row`]): Cody–Waite + degree-5
//!   polynomial ([`exp_le0`], relative error below 3e-7) on two registers per 16 logits, one
//!   AND-mask for the candidates; the portable loop compiled for AVX2 kept its 32 lanes of sums,
//!   minima and maxima on the stack;
//! - portable ([`topk_row_impl`]): the same pass as plain loops over [`LANES`] lanes that the
//!   compiler vectorizes, for baseline x86-64 and other targets.
//!
//! The kernel is picked at run time. `benches/topk.rs` holds it against a bare streaming
//! maximum of the same rows (`topk/select` against `topk/max_pass`).

use rayon::prelude::*;

/// Elements per chunk of the one pass: one threshold check, one vector loop.
const CHUNK: usize = 256;
/// Chunks whose exp sums stay in f32 lanes (8 terms per lane each) before they are added to
/// the f64 total.
const FOLD: usize = 4;
/// f32 lanes of the chunk loop (two AVX-512 registers, four AVX2 registers: independent
/// accumulators for the out-of-order core).
const LANES: usize = 32;
/// The vector loop takes `exp(x − M)` as `exp(−87) ≈ 1.6e-38` below `M − 87`; a row whose tail is
/// small enough for that to matter is summed again exactly (see [`exact_tail`]).
const EXP_FLOOR: f32 = -87.0;

/// The k best of one row, written into caller-owned slices.
///
/// `ids` and `logprobs` have length k; returns the tail log-mass (−∞ when nothing is left out).
/// Returns `Err(position)` of the first non-finite logit if the row holds one.
pub fn topk_row(row: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> Result<f32, usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled with.
            return unsafe { topk_row_avx512(row, ids, logprobs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { topk_row_avx2(row, ids, logprobs) };
        }
    }
    topk_row_impl(row, ids, logprobs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn topk_row_avx2(row: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> Result<f32, usize> {
    avx2::topk_row(row, ids, logprobs)
}

/// The maximum of a row, as fast as the machine streams it: the baseline that `benches/topk.rs`
/// holds the selection against (a pass that only reads the row), compiled like [`topk_row`].
pub fn row_max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled with.
            return unsafe { row_max_avx512(row) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { row_max_avx2(row) };
        }
    }
    row_max_impl(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_max_avx512(row: &[f32]) -> f32 {
    row_max_impl(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_max_avx2(row: &[f32]) -> f32 {
    row_max_impl(row)
}

#[inline(always)]
fn row_max_impl(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut it = row.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let m = it
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    lanes.iter().fold(m, |m, &x| m.max(x))
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
fn exp_le0<const FMA: bool>(d: f32) -> f32 {
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

/// Elements ahead of the current chunk whose cache lines are requested early: the chunk loop
/// computes too much per byte for the hardware prefetcher alone to keep the memory bus busy.
const PREFETCH_AHEAD: usize = 8 * CHUNK;

/// Ask for the cache lines of `row[from..from + len]` (clamped to the row).
#[inline(always)]
fn prefetch(row: &[f32], from: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let end = (from + len).min(row.len());
        let mut i = from;
        while i < end {
            // SAFETY: `i < row.len()`, so the address is inside the slice; prefetch never faults.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    row.as_ptr().add(i) as *const i8,
                )
            };
            i += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (row, from, len);
}

/// Candidates gathered beyond the k best before they are cut back to k ([`Pass::compact`]).
const POOL_EXTRA: usize = 64;

/// A candidate (value, id) as one integer whose ascending order is the selection's: the larger
/// value first, then the smaller id (values in `f32::total_cmp` order). Integer keys make the
/// pool's `select_nth_unstable` and final sort branch-free compares instead of a closure.
#[inline(always)]
fn rank_key(x: f32, id: u32) -> u64 {
    let b = x.to_bits();
    // Monotone in x: negative values have every bit flipped, positive ones the sign bit set.
    let ord = if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    };
    ((!ord as u64) << 32) | id as u64
}

/// The (value, id) of a [`rank_key`].
#[inline(always)]
fn from_rank_key(key: u64) -> (f32, u32) {
    let ord = !((key >> 32) as u32);
    let b = if ord & 0x8000_0000 != 0 {
        ord & 0x7FFF_FFFF
    } else {
        !ord
    };
    (f32::from_bits(b), key as u32)
}

/// A non-finite logit was met; its position is found afterwards ([`first_non_finite`]).
struct NonFinite;

/// One row's pass between chunks: the k best so far and the candidates since, the running
/// maximum `max`, and the tail sum relative to it in f64 (the vector lanes are folded into it).
///
/// Candidates are not sorted in one at a time: they are appended to `pool` ([`rank_key`]) behind
/// the k best, and every [`POOL_EXTRA`] of them the pool is cut back to its k best
/// (`select_nth_unstable`), the rest joining the tail. The threshold then only rises at a cut,
/// so a little more of the row passes it, but each candidate costs an append instead of a
/// binary search and two shifts of the sorted k (on a random teacher's nearly flat logits a row
/// of 32,000 has about 500 candidates; `topk/select_flat_cached_1t`).
struct Pass<'a> {
    ids: &'a mut [u32],
    logprobs: &'a mut [f32],
    pool: Vec<u64>,
    /// The k-th value at the last cut: every later element at or below it is in the tail.
    thr: f32,
    max: f32,
    tail: f64,
}

impl<'a> Pass<'a> {
    /// The first k elements of the row are the k best so far; the results go to `ids` and
    /// `logprobs` (length k) at [`Pass::finish`].
    #[inline(always)]
    fn start(row: &[f32], ids: &'a mut [u32], logprobs: &'a mut [f32]) -> Result<Self, usize> {
        let k = ids.len();
        debug_assert!(k >= 1 && k <= row.len() && logprobs.len() == k);
        let mut pool = Vec::with_capacity(k + POOL_EXTRA);
        let (mut thr, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for (j, &x) in row[..k].iter().enumerate() {
            if !x.is_finite() {
                return Err(j);
            }
            pool.push(rank_key(x, j as u32));
            thr = thr.min(x);
            max = max.max(x);
        }
        Ok(Self {
            ids,
            logprobs,
            pool,
            thr,
            max,
            tail: 0.0,
        })
    }

    /// Every later element at or below this value is in the tail: k elements before it are
    /// at least as large.
    #[inline(always)]
    fn threshold(&self) -> f32 {
        self.thr
    }

    /// One candidate at `pos`: an element above the threshold as it stood when the vector
    /// loop ran over its chunk, or a non-finite one (an error). The vector loop left it out of
    /// its sums; `tail` is rescaled here on a new maximum, the kernel's unfolded lanes after the
    /// chunk's candidates ([`Pass::rescale_from`]).
    #[inline]
    fn candidate(&mut self, x: f32, pos: usize) -> Result<(), NonFinite> {
        if !x.is_finite() {
            return Err(NonFinite);
        }
        if x <= self.thr {
            // The threshold rose at a cut earlier in this chunk.
            self.tail += exp_le0::<false>(x - self.max) as f64;
            return Ok(());
        }
        if x > self.max {
            self.tail *= ((self.max - x) as f64).exp();
            self.max = x;
        }
        self.pool.push(rank_key(x, pos as u32));
        if self.pool.len() == self.ids.len() + POOL_EXTRA {
            self.compact();
        }
        Ok(())
    }

    /// Cut the pool back to its k best; the rest joins the tail, and the k-th value becomes the
    /// threshold.
    #[cold]
    fn compact(&mut self) {
        let k = self.ids.len();
        self.pool.select_nth_unstable(k - 1);
        let max = self.max;
        // The vector loop's exp (relative error below 3e-7), not libm's, summed in 8 f32 lanes
        // as the vector loop sums: most of the candidates end here, and one f64 add per term
        // was a dependency chain.
        let mut lanes = [0f32; 8];
        let mut it = self.pool[k..].chunks_exact(8);
        for c in &mut it {
            for l in 0..8 {
                lanes[l] += exp_le0::<false>(from_rank_key(c[l]).0 - max);
            }
        }
        for &key in it.remainder() {
            lanes[0] += exp_le0::<false>(from_rank_key(key).0 - max);
        }
        self.tail += lanes.iter().map(|&v| v as f64).sum::<f64>();
        self.pool.truncate(k);
        self.thr = from_rank_key(self.pool[k - 1]).0;
    }

    /// Every candidate of `chunk` (at `start` in the row): the elements above `thr` (the
    /// threshold when the vector loop ran over the chunk) or NaN, in order.
    #[inline]
    fn candidates(&mut self, chunk: &[f32], start: usize, thr: f32) -> Result<(), NonFinite> {
        for (off, &x) in chunk.iter().enumerate() {
            if x > thr || x.is_nan() {
                self.candidate(x, start + off)?;
            }
        }
        Ok(())
    }

    /// The elements of a chunk after its last full vector, in an intrinsics kernel (compiled
    /// with FMA): those at or below `thr` join the tail (relative to `max`, the maximum the
    /// chunk's vector loop used). Returns whether any other is left for [`Pass::candidates`],
    /// and the elements' minimum (for −∞).
    #[inline(always)]
    fn remainder(&mut self, rest: &[f32], thr: f32, max: f32) -> (bool, f32) {
        let mut any = false;
        for &x in rest {
            if x <= thr {
                self.tail += exp_le0::<true>(x - max) as f64;
            } else {
                any = true;
            }
        }
        (any, rest.iter().fold(f32::INFINITY, |m, &x| m.min(x)))
    }

    /// The factor that takes vector lanes summed relative to `old_max` to the current maximum,
    /// if the chunk's candidates raised it.
    #[inline(always)]
    fn rescale_from(&self, old_max: f32) -> Option<f32> {
        (self.max != old_max).then(|| ((old_max - self.max) as f64).exp() as f32)
    }

    /// Normalize: the k best sorted into `ids` / `logprobs` as log-probs, and the tail
    /// log-mass. `bad` is set when the vector loop saw a non-finite logit it did not report
    /// (−∞ in its minimum, NaN in its sums).
    #[inline(always)]
    fn finish(mut self, row: &[f32], bad: bool) -> Result<f32, usize> {
        let k = self.ids.len();
        if self.pool.len() > k {
            self.compact();
        }
        let Pass {
            ids,
            logprobs: vals,
            mut pool,
            max,
            mut tail,
            ..
        } = self;
        if bad || tail.is_nan() {
            return Err(first_non_finite(row));
        }
        pool.sort_unstable();
        for ((v, id), &key) in vals.iter_mut().zip(ids.iter_mut()).zip(&pool) {
            (*v, *id) = from_rank_key(key);
        }
        // Each element the vector loop dropped was below e^-87 = 1.7e-38: they can only matter
        // (relative error above 1e-6) if the whole tail is that small.
        if tail < row.len() as f64 * 1.7e-32 && row.len() > k {
            tail = exact_tail(row, ids, max);
        }
        let top: f64 = vals.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let log_z = max as f64 + (top + tail).ln();
        for v in vals.iter_mut() {
            *v = (*v as f64 - log_z) as f32;
        }
        Ok(if tail > 0.0 {
            (max as f64 + tail.ln() - log_z) as f32
        } else {
            f32::NEG_INFINITY
        })
    }
}

/// The portable row kernel (baseline x86-64 and other targets): plain loops over [`LANES`]
/// lanes that the compiler vectorizes.
fn topk_row_impl(row: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> Result<f32, usize> {
    let k = ids.len();
    let mut pass = Pass::start(row, ids, logprobs)?;
    // Tail sums relative to `pass.max` not yet folded into `pass.tail`.
    let mut lanes = [0f32; LANES];
    // Non-finite logits: NaN fails `x > thr`, so it is summed into the lanes and makes them NaN;
    // +∞ is a candidate (checked there); −∞ shows up as the lanes' minimum.
    let mut low = [f32::INFINITY; LANES];
    let mut pending = 0usize;
    let fold = |lanes: &mut [f32; LANES], tail: &mut f64| {
        *tail += lanes.iter().map(|&v| v as f64).sum::<f64>();
        *lanes = [0.0; LANES];
    };

    let mut start = k;
    while start < row.len() {
        let end = (start + CHUNK).min(row.len());
        let chunk = &row[start..end];
        let (thr, max) = (pass.threshold(), pass.max);
        prefetch(row, end + PREFETCH_AHEAD, CHUNK);
        // Every x ≤ thr is in the tail; the lane maxima tell whether anything is not.
        let mut top = [f32::NEG_INFINITY; LANES];
        let mut it = chunk.chunks_exact(LANES);
        for c in &mut it {
            for l in 0..LANES {
                let x = c[l];
                let e = exp_le0::<false>(x - max);
                lanes[l] += if x > thr { 0.0 } else { e };
                low[l] = if x < low[l] { x } else { low[l] };
                top[l] = if x > top[l] { x } else { top[l] };
            }
        }
        for &x in it.remainder() {
            low[0] = low[0].min(x);
            top[0] = top[0].max(x);
            lanes[0] += if x > thr {
                0.0
            } else {
                exp_le0::<false>(x - max)
            };
        }
        pending += 1;
        if top.iter().any(|&v| v > thr) {
            pass.candidates(chunk, start, thr)
                .map_err(|_| first_non_finite(row))?;
            if let Some(scale) = pass.rescale_from(max) {
                lanes.iter_mut().for_each(|v| *v *= scale);
            }
        }
        if pending == FOLD {
            fold(&mut lanes, &mut pass.tail);
            pending = 0;
        }
        start = end;
    }
    fold(&mut lanes, &mut pass.tail);
    pass.finish(row, low.contains(&f32::NEG_INFINITY))
}

/// The AVX-512 row kernel: the same pass as [`topk_row_impl`], written with intrinsics so that
/// each 16 logits cost 15 instructions. `exp` is table-driven ([`avx512::exp_le0`]):
/// 2^(n/32) from a 32-entry table in two registers, a degree-2 polynomial for the rest, the
/// exponent added as an integer. Candidates are found with one mask compare per vector (which
/// also flags NaN), not with lane maxima.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn topk_row_avx512(
    row: &[f32],
    ids: &mut [u32],
    logprobs: &mut [f32],
) -> Result<f32, usize> {
    use std::arch::x86_64::*;
    let k = ids.len();
    let mut pass = Pass::start(row, ids, logprobs)?;
    let table = avx512::Exp2Table::new();
    // Two accumulators (32 lanes), as in the portable kernel.
    let mut acc = [_mm512_setzero_ps(); 2];
    // −∞ shows up as the minimum; NaN and +∞ are candidates.
    let mut low = _mm512_set1_ps(f32::INFINITY);
    let mut pending = 0usize;
    let fold = |acc: &mut [__m512; 2], tail: &mut f64| {
        *tail += _mm512_reduce_add_ps(acc[0]) as f64 + _mm512_reduce_add_ps(acc[1]) as f64;
        *acc = [_mm512_setzero_ps(); 2];
    };

    let mut start = k;
    while start < row.len() {
        let end = (start + CHUNK).min(row.len());
        let chunk = &row[start..end];
        let (thr, max) = (pass.threshold(), pass.max);
        prefetch(row, end + PREFETCH_AHEAD, CHUNK);
        let (vthr, vmax) = (_mm512_set1_ps(thr), _mm512_set1_ps(max));
        let mut any: __mmask16 = 0;
        let mut it = chunk.chunks_exact(32);
        for c in &mut it {
            // SAFETY: `c` holds 32 floats.
            let x = unsafe {
                [
                    _mm512_loadu_ps(c.as_ptr()),
                    _mm512_loadu_ps(c.as_ptr().add(16)),
                ]
            };
            for h in 0..2 {
                let e = table.exp_le0(_mm512_sub_ps(x[h], vmax));
                // Not x ≤ thr: above the threshold, or NaN.
                let m = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x[h], vthr);
                acc[h] = _mm512_mask_add_ps(acc[h], !m, acc[h], e);
                any |= m;
            }
            low = _mm512_min_ps(low, _mm512_min_ps(x[0], x[1]));
        }
        let (rest_any, rest_low) = pass.remainder(it.remainder(), thr, max);
        low = _mm512_min_ps(low, _mm512_set1_ps(rest_low));
        pending += 1;
        if any != 0 || rest_any {
            avx512::candidates(&mut pass, chunk, start, thr).map_err(|_| first_non_finite(row))?;
            if let Some(scale) = pass.rescale_from(max) {
                let scale = _mm512_set1_ps(scale);
                acc = [_mm512_mul_ps(acc[0], scale), _mm512_mul_ps(acc[1], scale)];
            }
        }
        if pending == FOLD {
            fold(&mut acc, &mut pass.tail);
            pending = 0;
        }
        start = end;
    }
    fold(&mut acc, &mut pass.tail);
    let neg_inf = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(low, _mm512_set1_ps(f32::NEG_INFINITY)) != 0;
    pass.finish(row, neg_inf)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{first_non_finite, prefetch, NonFinite, Pass, CHUNK, FOLD};
    use std::arch::x86_64::*;

    /// The AVX2 row kernel: the pass of [`super::topk_row_impl`] written with intrinsics, 16
    /// logits (two registers) per step. The portable loop, compiled for AVX2, kept 32 lanes of
    /// sums, minima and maxima and spilled them to the stack at every step; here there are two
    /// sums, one minimum and one mask (`keep`: every lane at or below the threshold), and
    /// the polynomial [`super::exp_le0`] of the portable kernel. A chunk with candidates takes
    /// them by mask bits ([`candidates`]); its sums stay in their lanes, rescaled in the rare
    /// case a candidate is a new maximum, instead of being folded into the f64 total every time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn topk_row(
        row: &[f32],
        ids: &mut [u32],
        logprobs: &mut [f32],
    ) -> Result<f32, usize> {
        let k = ids.len();
        let mut pass = Pass::start(row, ids, logprobs)?;
        let mut acc = [_mm256_setzero_ps(); 2];
        // −∞ shows up as the minimum; NaN and +∞ are candidates.
        let mut low = _mm256_set1_ps(f32::INFINITY);
        let mut pending = 0usize;
        let fold = |acc: &mut [__m256; 2], tail: &mut f64| {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1])) };
            *tail += lanes.iter().map(|&v| v as f64).sum::<f64>();
            *acc = [_mm256_setzero_ps(); 2];
        };

        let mut start = k;
        while start < row.len() {
            let end = (start + CHUNK).min(row.len());
            let chunk = &row[start..end];
            let (thr, max) = (pass.threshold(), pass.max);
            prefetch(row, end + super::PREFETCH_AHEAD, CHUNK);
            let (vthr, vmax) = (_mm256_set1_ps(thr), _mm256_set1_ps(max));
            // All ones while every lane so far is at or below the threshold (not NaN).
            let mut keep = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
            let mut it = chunk.chunks_exact(16);
            for c in &mut it {
                // SAFETY: `c` holds 16 floats.
                let x = unsafe {
                    [
                        _mm256_loadu_ps(c.as_ptr()),
                        _mm256_loadu_ps(c.as_ptr().add(8)),
                    ]
                };
                for h in 0..2 {
                    let e = exp8(_mm256_sub_ps(x[h], vmax));
                    let le = _mm256_cmp_ps::<_CMP_LE_OQ>(x[h], vthr);
                    acc[h] = _mm256_add_ps(acc[h], _mm256_and_ps(le, e));
                    keep = _mm256_and_ps(keep, le);
                }
                low = _mm256_min_ps(low, _mm256_min_ps(x[0], x[1]));
            }
            let (rest_any, rest_low) = pass.remainder(it.remainder(), thr, max);
            low = _mm256_min_ps(low, _mm256_set1_ps(rest_low));
            pending += 1;
            if _mm256_movemask_ps(keep) != 0xFF || rest_any {
                candidates(&mut pass, chunk, start, thr).map_err(|_| first_non_finite(row))?;
                if let Some(scale) = pass.rescale_from(max) {
                    let scale = _mm256_set1_ps(scale);
                    acc = [_mm256_mul_ps(acc[0], scale), _mm256_mul_ps(acc[1], scale)];
                }
            }
            if pending == FOLD {
                fold(&mut acc, &mut pass.tail);
                pending = 0;
            }
            start = end;
        }
        fold(&mut acc, &mut pass.tail);
        let neg_inf = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
            low,
            _mm256_set1_ps(f32::NEG_INFINITY),
        )) != 0;
        pass.finish(row, neg_inf)
    }

    /// [`super::exp_le0`] on 8 lanes (NaN stays NaN): the same Cody–Waite reduction and
    /// polynomial, so the same relative error (below 3e-7).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(d: __m256) -> __m256 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const ROUND: f32 = 12_582_912.0;
        // max(floor, d): the second operand (d) when it is NaN.
        let x = _mm256_max_ps(_mm256_set1_ps(super::EXP_FLOOR), d);
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

    /// [`Pass::candidates`] of one chunk on AVX2, visiting only the candidates: two mask
    /// compares per 16 logits and their set bits (as [`super::avx512::candidates`]).
    #[target_feature(enable = "avx2")]
    fn candidates(
        pass: &mut Pass<'_>,
        chunk: &[f32],
        start: usize,
        thr: f32,
    ) -> Result<(), NonFinite> {
        let vthr = _mm256_set1_ps(thr);
        let mut it = chunk.chunks_exact(16);
        let mut base = start;
        for c in &mut it {
            // SAFETY: `c` holds 16 floats.
            let (x0, x1) = unsafe {
                (
                    _mm256_loadu_ps(c.as_ptr()),
                    _mm256_loadu_ps(c.as_ptr().add(8)),
                )
            };
            // Not x ≤ thr: above the threshold, or NaN.
            let m0 = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(x0, vthr)) as u32;
            let m1 = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(x1, vthr)) as u32;
            let mut m = m0 | (m1 << 8);
            while m != 0 {
                let l = m.trailing_zeros() as usize;
                m &= m - 1;
                pass.candidate(c[l], base + l)?;
            }
            base += 16;
        }
        pass.candidates(it.remainder(), base, thr)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{NonFinite, Pass};
    use std::arch::x86_64::*;

    /// [`Pass::candidates`] of one chunk, visiting only the candidates: a mask compare per 16
    /// logits and its set bits. A random teacher's nearly flat logits put candidates in most
    /// chunks of a row, where the element-by-element walk took three quarters of the top-k's
    /// time (`perf` on `precompute/full`).
    #[target_feature(enable = "avx512f")]
    pub(super) fn candidates(
        pass: &mut Pass<'_>,
        chunk: &[f32],
        start: usize,
        thr: f32,
    ) -> Result<(), NonFinite> {
        let vthr = _mm512_set1_ps(thr);
        let mut it = chunk.chunks_exact(16);
        let mut base = start;
        for c in &mut it {
            // SAFETY: `c` holds 16 floats.
            let x = unsafe { _mm512_loadu_ps(c.as_ptr()) };
            // Not x ≤ thr: above the threshold, or NaN.
            let mut m = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x, vthr);
            while m != 0 {
                let l = m.trailing_zeros() as usize;
                m &= m - 1;
                pass.candidate(c[l], base + l)?;
            }
            base += 16;
        }
        pass.candidates(it.remainder(), base, thr)
    }

    /// `2^(j/32)` for j in 0..32, in two registers for `vpermt2ps`.
    pub(super) struct Exp2Table {
        lo: __m512,
        hi: __m512,
    }

    impl Exp2Table {
        #[target_feature(enable = "avx512f")]
        pub(super) fn new() -> Self {
            let t: [f32; 32] = std::array::from_fn(|j| 2f64.powf(j as f64 / 32.0) as f32);
            // SAFETY: `t` holds 32 floats.
            unsafe {
                Self {
                    lo: _mm512_loadu_ps(t.as_ptr()),
                    hi: _mm512_loadu_ps(t.as_ptr().add(16)),
                }
            }
        }

        /// `exp(max(d, EXP_FLOOR))` for 16 lanes `d ≤ 0` (NaN stays NaN). With
        /// `t = round(32 · log2(e) · d) = 32a + b`: `exp(d) = 2^a · 2^(b/32) · exp(r)`, where
        /// `r = d − t · ln2/32` lies in ±ln2/64 and `exp(r)` is `1 + r + r²/2` (written in the
        /// variable `f = t_exact − t`). Relative error below 2e-6 on `[−87, 0]` and 5e-7 on
        /// `[−10, 0]`, where the tail sum gets almost all its mass (the rounding of 32·log2(e)
        /// grows with `|d|`).
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub(super) fn exp_le0(&self, d: __m512) -> __m512 {
            const C: f32 = 32.0 * std::f32::consts::LOG2_E;
            // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
            const ROUND: f32 = 12_582_912.0;
            const C1: f32 = std::f32::consts::LN_2 / 32.0;
            const C2: f32 = C1 * C1 / 2.0;
            // max(floor, d): the second operand (d) when it is NaN.
            let d = _mm512_max_ps(_mm512_set1_ps(super::EXP_FLOOR), d);
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
}

/// The position of the first non-finite logit of a row known to hold one.
#[cold]
fn first_non_finite(row: &[f32]) -> usize {
    row.iter().position(|x| !x.is_finite()).unwrap_or(0)
}

/// `Σ_{y∉K} exp(x_y − max)` in f64, for the rare row whose tail is too small for the vector loop.
#[cold]
fn exact_tail(row: &[f32], ids: &[u32], max: f32) -> f64 {
    let mut kept = ids.to_vec();
    kept.sort_unstable();
    let mut next = kept.iter().peekable();
    let mut total = 0f64;
    for (y, &x) in row.iter().enumerate() {
        if next.peek() == Some(&&(y as u32)) {
            next.next();
            continue;
        }
        total += ((x - max) as f64).exp();
    }
    total
}

/// Top-k of many rows in parallel. `rows` is `[n, vocab]` row-major; outputs are `[n, k]`,
/// `[n, k]` and `[n]`. Returns `Err((row, position))` of a non-finite logit.
pub fn topk_rows(
    rows: &[f32],
    vocab: usize,
    k: usize,
    ids: &mut [u32],
    logprobs: &mut [f32],
    tail: &mut [f32],
) -> Result<(), (usize, usize)> {
    let n = rows.len() / vocab;
    assert!(
        rows.len() == n * vocab && ids.len() == n * k && logprobs.len() == n * k && tail.len() == n
    );
    rows.par_chunks(vocab)
        .zip(ids.par_chunks_mut(k))
        .zip(logprobs.par_chunks_mut(k))
        .zip(tail.par_iter_mut())
        .enumerate()
        .try_for_each(|(r, (((row, ids), lp), t))| {
            *t = topk_row(row, ids, lp).map_err(|p| (r, p))?;
            Ok(())
        })
}

/// The simple reference: full log-softmax in f64 and a full sort. Used by tests and as the
/// benchmark baseline.
pub fn topk_row_by_sort(row: &[f32], k: usize) -> (Vec<u32>, Vec<f32>, f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let log_z = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    let ids = order[..k].to_vec();
    let lps = ids
        .iter()
        .map(|&i| (row[i as usize] as f64 - log_z) as f32)
        .collect();
    let tail: f64 = order[k..]
        .iter()
        .map(|&i| (row[i as usize] as f64 - log_z).exp())
        .sum();
    (
        ids,
        lps,
        if tail > 0.0 {
            tail.ln() as f32
        } else {
            f32::NEG_INFINITY
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn check(row: &[f32], k: usize) {
        let (rid, rlp, rtail) = topk_row_by_sort(row, k);
        let mut ids = vec![0; k];
        let mut lp = vec![0.0; k];
        let tail = topk_row(row, &mut ids, &mut lp).unwrap();
        assert_eq!(ids, rid, "ids differ (k = {k}, vocab = {})", row.len());
        for (j, (a, b)) in lp.iter().zip(&rlp).enumerate() {
            assert!(
                (a - b).abs() <= 2e-6 * b.abs().max(1.0),
                "logprob {j}: {a} vs {b}"
            );
        }
        if rtail.is_finite() {
            let rel = ((tail - rtail) as f64).exp() - 1.0;
            assert!(
                rel.abs() < 1e-5,
                "tail mass relative error {rel}: {tail} vs {rtail}"
            );
        } else {
            assert_eq!(tail, f32::NEG_INFINITY);
        }
    }

    #[test]
    fn selection_equals_full_sort_on_random_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &(vocab, k) in &[
            (1, 1),
            (5, 5),
            (100, 1),
            (1000, 50),
            (32000, 50),
            (4099, 64),
        ] {
            for _ in 0..3 {
                let row: Vec<f32> = (0..vocab)
                    .map(|_| rng.random::<f32>() * 20.0 - 10.0)
                    .collect();
                check(&row, k);
            }
        }
    }

    #[test]
    fn ties_go_to_the_smaller_id_and_tail_counts_left_out_copies() {
        // 10 copies of the k-th value; only some fit into K.
        let mut row = vec![-5.0f32; 1000];
        for (i, x) in row.iter_mut().enumerate().take(300).skip(200) {
            *x = if i % 10 == 0 { 1.0 } else { 0.5 };
        }
        row[999] = 3.0;
        check(&row, 5);
        check(&row, 11);
        check(&row, 15);
        // All equal.
        check(&vec![0.25f32; 777], 50);
    }

    #[test]
    fn tiny_tail_keeps_relative_accuracy() {
        // Tail mass about e^-25 ≈ 1e-11: `1 - Σ top-k` would be pure rounding noise.
        let mut row = vec![-30.0f32; 5000];
        row[..4].copy_from_slice(&[5.0, 4.0, 3.0, 2.0]);
        let (_, _, rtail) = topk_row_by_sort(&row, 4);
        assert!(rtail < -20.0, "{rtail}");
        check(&row, 4);
    }

    #[test]
    fn k_equal_to_vocab_has_an_empty_tail() {
        let row: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        check(&row, 64);
    }

    #[test]
    fn non_finite_logits_are_reported_with_their_position() {
        let mut row = vec![0.0f32; 300];
        row[123] = f32::NAN;
        let mut ids = vec![0; 3];
        let mut lp = vec![0.0; 3];
        assert_eq!(topk_row(&row, &mut ids, &mut lp), Err(123));
        row[123] = f32::INFINITY;
        assert_eq!(topk_row(&row, &mut ids, &mut lp), Err(123));
    }

    #[test]
    fn vector_exp_is_within_3e_7_relative_on_its_range_and_clamped_below() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let d = -(i as f32) * 1e-4;
            let rel = (exp_le0::<false>(d) as f64 / (d as f64).exp() - 1.0).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        let floor = (EXP_FLOOR as f64).exp();
        for d in [-87.5, -1e4, f32::NEG_INFINITY] {
            assert!((exp_le0::<false>(d) as f64 / floor - 1.0).abs() < 3e-7);
        }
        let fused = (0..10_000).map(|i| -(i as f32) * 8.7e-3);
        for d in fused {
            let rel = (exp_le0::<true>(d) as f64 / (d as f64).exp() - 1.0).abs();
            assert!(rel < 3e-7, "fused exp at {d}: relative error {rel:e}");
        }
    }

    #[test]
    fn a_tail_below_the_vector_floor_is_summed_exactly() {
        // Tail at e^-100 relative to the top: below the vector exp's floor of e^-87.
        let mut row = vec![-95.0f32; 3000];
        row[1234] = 5.0;
        row[17] = 4.5;
        let (_, _, rtail) = topk_row_by_sort(&row, 2);
        assert!(
            (rtail - (-100.0 + (2998f32).ln() - 0.474)).abs() < 0.01,
            "{rtail}"
        );
        check(&row, 2);
    }

    #[test]
    fn negative_infinity_is_reported_like_nan() {
        let mut row: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.01).cos()).collect();
        row[4321] = f32::NEG_INFINITY;
        let mut ids = vec![0; 8];
        let mut lp = vec![0.0; 8];
        assert_eq!(topk_row(&row, &mut ids, &mut lp), Err(4321));
    }

    type Kernel = fn(&[f32], &mut [u32], &mut [f32]) -> Result<f32, usize>;

    /// Every row kernel this CPU can run, by name.
    fn kernels() -> Vec<(&'static str, Kernel)> {
        let mut all: Vec<(&'static str, Kernel)> = vec![("portable", topk_row_impl)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the feature.
                all.push(("avx512", |r, i, l| unsafe { topk_row_avx512(r, i, l) }));
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                all.push(("avx2", |r, i, l| unsafe { topk_row_avx2(r, i, l) }));
            }
        }
        all
    }

    #[test]
    fn every_compiled_kernel_equals_the_full_sort() {
        let rows = crate::testing::llm_like_logits(4, 151_936, 11);
        let k = 50;
        for row in rows.chunks(151_936) {
            let (rid, rlp, rtail) = topk_row_by_sort(row, k);
            for (name, kernel) in kernels() {
                let (mut ids, mut lp) = (vec![0u32; k], vec![0f32; k]);
                let tail = kernel(row, &mut ids, &mut lp).unwrap();
                assert_eq!(ids, rid, "{name}: ids");
                for (j, (a, b)) in lp.iter().zip(&rlp).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-6 * b.abs().max(1.0),
                        "{name}: logprob {j}: {a} vs {b}"
                    );
                }
                let rel = ((tail - rtail) as f64).exp() - 1.0;
                assert!(rel.abs() < 1e-5, "{name}: tail mass relative error {rel:e}");
            }
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    assert_eq!(unsafe { row_max_avx512(row) }, row_max_impl(row));
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    assert_eq!(unsafe { row_max_avx2(row) }, row_max_impl(row));
                }
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(row_max(row), max);
        }
    }

    #[test]
    fn rank_keys_order_like_the_selection_and_round_trip() {
        let vals = [
            -1e30f32, -3.5, -1.0, -1e-40, -0.0, 0.0, 1e-40, 0.25, 1.0, 7.5, 3e38,
        ];
        let mut pairs: Vec<(f32, u32)> = Vec::new();
        for (i, &v) in vals.iter().enumerate() {
            for id in [0u32, 5, u32::MAX] {
                pairs.push((v, id ^ i as u32));
            }
        }
        for a in &pairs {
            assert_eq!(from_rank_key(rank_key(a.0, a.1)), *a);
            assert_eq!(from_rank_key(rank_key(a.0, a.1)).0.to_bits(), a.0.to_bits());
            for b in &pairs {
                let by_rank = b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
                assert_eq!(
                    rank_key(a.0, a.1).cmp(&rank_key(b.0, b.1)),
                    by_rank,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    /// Rows whose candidates overflow the pool many times: flat Gaussian logits (a random
    /// teacher's), a rising row (every element a candidate and a new maximum) and ties that
    /// straddle a cut (the smaller id must win).
    #[test]
    fn every_kernel_equals_the_full_sort_when_the_pool_is_cut_many_times() {
        let mut normal = crate::testing::Normal::new(21);
        let flat: Vec<f32> = (0..32_000).map(|_| normal.sample()).collect();
        let rising: Vec<f32> = (0..5_000).map(|i| i as f32 * 1e-3).collect();
        // Values on a grid of 16 levels: each level holds ~190 equal logits.
        let ties: Vec<f32> = (0..3_000)
            .map(|i| ((i * 7919) % 16) as f32 * 0.25)
            .collect();
        for (what, row) in [("flat", &flat), ("rising", &rising), ("ties", &ties)] {
            for k in [1, 50, 200] {
                let (rid, rlp, rtail) = topk_row_by_sort(row, k);
                for (name, kernel) in kernels() {
                    let (mut ids, mut lp) = (vec![0u32; k], vec![0f32; k]);
                    let tail = kernel(row, &mut ids, &mut lp).unwrap();
                    assert_eq!(ids, rid, "{name}, {what}, k = {k}: ids");
                    for (j, (a, b)) in lp.iter().zip(&rlp).enumerate() {
                        assert!(
                            (a - b).abs() <= 2e-6 * b.abs().max(1.0),
                            "{name}, {what}, k = {k}: logprob {j}: {a} vs {b}"
                        );
                    }
                    let rel = ((tail - rtail) as f64).exp() - 1.0;
                    assert!(
                        rel.abs() < 1e-5,
                        "{name}, {what}, k = {k}: tail mass relative error {rel:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_reports_the_first_non_finite_logit() {
        // k = 8, then chunks of 256 from position 8; the last, 776..1010, ends in 10 elements
        // after its vector loop. Positions in the first k, in the vector loop, and in that
        // remainder.
        let base: Vec<f32> = (0..1010).map(|i| (i as f32 * 0.37).sin()).collect();
        let k = 8;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [3usize, 100, 300, 301, 1005, 1009] {
                let mut row = base.clone();
                row[at] = bad;
                // A later non-finite value of another kind never hides the first.
                if at + 1 < row.len() {
                    row[at + 1] = if bad.is_nan() {
                        f32::NEG_INFINITY
                    } else {
                        f32::NAN
                    };
                }
                // A candidate (above every other logit) just before it, in the same chunk.
                row[if at >= 13 { at - 5 } else { 12 }] = 50.0;
                for (name, kernel) in kernels() {
                    let (mut ids, mut lp) = (vec![0u32; k], vec![0f32; k]);
                    assert_eq!(
                        kernel(&row, &mut ids, &mut lp),
                        Err(at),
                        "{name}: {bad} at {at}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp_is_within_2e_6_relative_on_its_range_and_clamped_below() {
        use std::arch::x86_64::*;
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        // SAFETY: the CPU has AVX-512F; the buffers hold 16 floats.
        let exp16 = |d: [f32; 16]| unsafe {
            let table = avx512::Exp2Table::new();
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), table.exp_le0(_mm512_loadu_ps(d.as_ptr())));
            out
        };
        let (mut worst, mut worst_near) = (0f64, 0f64);
        for i in 0..870_000 / 16 {
            let d: [f32; 16] = std::array::from_fn(|l| -((16 * i + l) as f32) * 1e-4);
            for (x, e) in d.iter().zip(exp16(d)) {
                let rel = (e as f64 / (*x as f64).exp() - 1.0).abs();
                worst = worst.max(rel);
                if *x >= -10.0 {
                    worst_near = worst_near.max(rel);
                }
            }
        }
        assert!(worst < 2e-6, "worst relative error on [-87, 0]: {worst:e}");
        assert!(
            worst_near < 5e-7,
            "worst relative error on [-10, 0]: {worst_near:e}"
        );
        let floor = (EXP_FLOOR as f64).exp();
        let mut low = [-87.5f32; 16];
        low[1] = -1e4;
        low[2] = f32::NEG_INFINITY;
        low[3] = f32::MIN;
        for e in &exp16(low)[..4] {
            assert!((*e as f64 / floor - 1.0).abs() < 2e-6, "{e} vs {floor}");
        }
        let mut nan = [0f32; 16];
        nan[5] = f32::NAN;
        assert!(exp16(nan)[5].is_nan() && exp16(nan)[4] == 1.0);
    }

    #[test]
    fn many_rows_equal_one_row_at_a_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (n, v, k) = (37, 2000, 20);
        let rows: Vec<f32> = (0..n * v).map(|_| rng.random::<f32>() * 8.0).collect();
        let (mut ids, mut lp, mut tail) = (vec![0; n * k], vec![0.0; n * k], vec![0.0; n]);
        topk_rows(&rows, v, k, &mut ids, &mut lp, &mut tail).unwrap();
        for r in 0..n {
            let (rid, _, rt) = topk_row_by_sort(&rows[r * v..(r + 1) * v], k);
            assert_eq!(&ids[r * k..(r + 1) * k], &rid[..]);
            assert!((tail[r] - rt).abs() < 1e-5);
        }
    }
}
