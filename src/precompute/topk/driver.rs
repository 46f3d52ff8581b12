//! The one chunk loop of the top-k pass, shared by the three kernels: chunks of [`CHUNK`]
//! logits, the tail sums in two registers of f32 lanes rescaled on a new maximum and folded into
//! the f64 total every [`FOLD`] chunks, the walk over a chunk's candidates by mask bits, and the
//! elements after a chunk's last full step.
//!
//! A kernel supplies only its [`Lanes`]: what one register of f32 lanes and one lane mask are,
//! and how to load, compare, accumulate and take `exp` of them. [`topk_row`] is generic over
//! them and `#[inline(always)]`, and so is every lane operation: each kernel's
//! `#[target_feature]` entry point gets its own copy of the loop, compiled for its features,
//! with the intrinsics inlined.
//!
//! This file holds no `unsafe` but the prefetch (whose address is in bounds by construction).

use super::pass::{first_non_finite, NonFinite, Pass};
use super::{CHUNK, FOLD};

/// The lane operations of a kernel: one register (`V`) of [`Lanes::WIDTH`] f32 lanes and its
/// lane mask (`Mask`). A value of the implementing type is made only where the kernel's CPU
/// features are enabled, so its methods may use them (see the module doc of `topk`).
///
/// Every method must be `#[inline(always)]`: inlined into the kernel's `#[target_feature]` entry
/// point, the intrinsics they call are compiled for its features; a call left out of line would
/// be compiled without them.
pub(super) trait Lanes: Copy {
    /// f32 lanes per register. The chunk loop takes two registers (`2 · WIDTH` logits) per step,
    /// in two independent accumulators; `WIDTH ≤ 16`, so a step's mask bits fit in a `u32`.
    const WIDTH: usize;
    /// One register of f32 lanes.
    type V: Copy;
    /// One bit (or boolean) per lane of a `V`.
    type Mask: Copy;

    /// Every lane `x`.
    fn splat(self, x: f32) -> Self::V;
    /// The first `WIDTH` floats of `c` (panics when `c` is shorter).
    fn load(self, c: &[f32]) -> Self::V;
    /// `a − b` in each lane.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// The minimum of each lane: `b` where either is NaN.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · s` in each lane.
    fn scale(self, a: Self::V, s: f32) -> Self::V;
    /// `exp(max(d, EXP_FLOOR))` in each lane, for `d ≤ 0`; NaN stays NaN.
    fn exp_le0(self, d: Self::V) -> Self::V;
    /// The scalar `exp_le0` the kernel's remainder uses (fused where the kernel has FMA).
    fn exp_le0_scalar(self, d: f32) -> f32;
    /// The lanes not at or below `thr`: above it, or NaN. These are the candidates.
    fn above(self, x: Self::V, thr: Self::V) -> Self::Mask;
    /// No lane set.
    fn none(self) -> Self::Mask;
    /// The lanes set in `a` or `b`.
    fn or(self, a: Self::Mask, b: Self::Mask) -> Self::Mask;
    /// Lane `l` of `m` as bit `l`.
    fn bits(self, m: Self::Mask) -> u32;
    /// `acc + e` in the lanes not set in `m`, `acc` in the others.
    fn add_unless(self, acc: Self::V, m: Self::Mask, e: Self::V) -> Self::V;
    /// The sum of every lane of both accumulators, in f64.
    fn fold(self, acc: [Self::V; 2]) -> f64;
    /// Whether a lane is −∞.
    fn any_neg_inf(self, v: Self::V) -> bool;
}

/// The row pass of every kernel ([`Pass`] between chunks), on the lanes `ops`.
///
/// Non-finite logits: NaN and +∞ are candidates ([`Lanes::above`]), which [`Pass::candidate`]
/// reports; −∞ is never one and shows up as the lanes' minimum instead.
#[inline(always)]
pub(super) fn topk_row<L: Lanes>(
    ops: L,
    row: &[f32],
    ids: &mut [u32],
    logprobs: &mut [f32],
) -> Result<f32, usize> {
    let k = ids.len();
    let step = 2 * L::WIDTH;
    let mut pass = Pass::start(row, ids, logprobs)?;
    // Tail sums relative to `pass.max` not yet folded into `pass.tail`.
    let mut acc = [ops.splat(0.0); 2];
    let mut low = ops.splat(f32::INFINITY);
    let mut pending = 0usize;
    let fold = |acc: &mut [L::V; 2], tail: &mut f64| {
        *tail += ops.fold(*acc);
        *acc = [ops.splat(0.0); 2];
    };

    let mut start = k;
    while start < row.len() {
        let end = (start + CHUNK).min(row.len());
        let chunk = &row[start..end];
        let (thr, max) = (pass.threshold(), pass.max);
        prefetch(row, end + PREFETCH_AHEAD, CHUNK);
        let (vthr, vmax) = (ops.splat(thr), ops.splat(max));
        // Every x ≤ thr is in the tail; the mask tells whether anything is not.
        let mut any = ops.none();
        let mut it = chunk.chunks_exact(step);
        for c in &mut it {
            let x = [ops.load(c), ops.load(&c[L::WIDTH..])];
            for h in 0..2 {
                let e = ops.exp_le0(ops.sub(x[h], vmax));
                let m = ops.above(x[h], vthr);
                acc[h] = ops.add_unless(acc[h], m, e);
                any = ops.or(any, m);
            }
            low = ops.min(low, ops.min(x[0], x[1]));
        }
        let (rest_any, rest_low) = remainder(ops, &mut pass, it.remainder(), thr, max);
        low = ops.min(low, ops.splat(rest_low));
        pending += 1;
        if ops.bits(any) != 0 || rest_any {
            candidates(ops, &mut pass, chunk, start, thr).map_err(|_| first_non_finite(row))?;
            if let Some(scale) = pass.rescale_from(max) {
                acc = [ops.scale(acc[0], scale), ops.scale(acc[1], scale)];
            }
        }
        if pending == FOLD {
            fold(&mut acc, &mut pass.tail);
            pending = 0;
        }
        start = end;
    }
    fold(&mut acc, &mut pass.tail);
    pass.finish(row, ops.any_neg_inf(low))
}

/// The elements of a chunk after its last full step: those at or below `thr` join the tail
/// (relative to `max`, the maximum the chunk's vector loop used). Returns whether any other is
/// left for [`candidates`], and the elements' minimum (for −∞).
#[inline(always)]
fn remainder<L: Lanes>(
    ops: L,
    pass: &mut Pass<'_>,
    rest: &[f32],
    thr: f32,
    max: f32,
) -> (bool, f32) {
    let mut any = false;
    for &x in rest {
        if x <= thr {
            pass.tail += ops.exp_le0_scalar(x - max) as f64;
        } else {
            any = true;
        }
    }
    (any, rest.iter().fold(f32::INFINITY, |m, &x| m.min(x)))
}

/// Every candidate of one chunk, in order, visiting only them: a compare mask per register and
/// its set bits. A random teacher's nearly flat logits put candidates in most chunks of a row,
/// where an element-by-element walk was most of the top-k's time (`docs/performance.md`).
#[inline(always)]
fn candidates<L: Lanes>(
    ops: L,
    pass: &mut Pass<'_>,
    chunk: &[f32],
    start: usize,
    thr: f32,
) -> Result<(), NonFinite> {
    let vthr = ops.splat(thr);
    let step = 2 * L::WIDTH;
    let mut it = chunk.chunks_exact(step);
    let mut base = start;
    for c in &mut it {
        let m0 = ops.bits(ops.above(ops.load(c), vthr));
        let m1 = ops.bits(ops.above(ops.load(&c[L::WIDTH..]), vthr));
        let mut m = m0 | (m1 << L::WIDTH);
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            pass.candidate(c[l], base + l)?;
        }
        base += step;
    }
    pass.candidates(it.remainder(), base, thr)
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
            // SAFETY: `i < row.len()`, so the address is inside the slice; prefetch never faults,
            // and SSE (which has it) is part of x86-64.
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
