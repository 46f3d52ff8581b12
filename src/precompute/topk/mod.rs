//! Per-position top-k of the teacher's next-token distribution, on the CPU.
//!
//! For one row of logits `x` (length V) this computes, in one pass over the row and without
//! sorting it: the k largest entries (ids by descending log-prob, ties to the smaller id), their
//! normalized log-probabilities `x_j - logsumexp(x)`, and the tail log-mass
//! `log Σ_{y∉K} softmax(x)_y` summed over the tail elements themselves (never `1 - Σ top-k`,
//! which loses everything when the tail is tiny).
//!
//! The row is read once, in chunks of `CHUNK` elements that stay in L1 (`driver.rs`):
//!
//! - every element `x ≤ thr` (the k-th value of the k best so far, as it stood at the start of
//!   the chunk) is certainly in the tail, since `thr` only grows: `exp(x − M)` is added into f32
//!   lanes, where `M` is the running maximum (the tail sum is rescaled on the rare new maximum),
//!   and the lanes are folded into an f64 total every `FOLD` chunks;
//! - the few elements above it are found by mask bits and appended to a pool behind the k best;
//!   every `pass::POOL_EXTRA` candidates the pool is cut back to k (`select_nth_unstable`),
//!   the rest joins the tail and `thr` rises to the new k-th value (`pass::Pass`).
//!
//! The files, by what they own:
//!
//! - `mod.rs`: the stage's entry point [`topk_rows`] and the run-time choice of kernel;
//! - `pass.rs`: one row's scalar state between chunks (the pool of rank keys, the threshold, the
//!   running maximum and the f64 tail), the normalization and the exact tail for tiny tails;
//! - `driver.rs`: the one chunk loop, generic over the `driver::Lanes` a kernel supplies;
//! - `portable.rs`, `avx2.rs`, `avx512.rs`: only those lane operations (load, minimum, compare
//!   mask, masked accumulate, `exp`), each kernel's entry point instantiating the driver;
//! - `bench.rs`: what `benches/topk.rs` and the tests call that is not the stage's API.
//!
//! The kernel is picked at run time, the widest the CPU runs:
//!
//! - AVX-512F (`avx512::topk_row`): a table-driven `exp` (2^(j/32) from 32 entries in two
//!   registers, a degree-2 polynomial, the exponent added as an integer; relative error below
//!   2e-6 on `[-87, 0]`) and one mask compare per 16 logits for the candidates;
//! - AVX2 + FMA (`avx2::topk_row`): Cody–Waite + degree-5 polynomial (`portable::exp_le0`
//!   on 8 lanes, relative error below 3e-7) and one compare mask per 8 logits;
//! - portable (`portable::topk_row`): the lane operations as plain loops over arrays that the
//!   compiler vectorizes, for baseline x86-64 and other targets.
//!
//! Why intrinsics and not the portable loop compiled for each feature set, and what each step
//! bought, with the figures: `docs/performance.md` ("Where the time goes", "Precompute").
//! `benches/topk.rs` holds the selection against a bare streaming maximum of the same rows
//! (`topk/select` against `topk/max_pass`).
//!
//! Unsafe code follows one convention. A kernel's entry point is an `unsafe fn` compiled with
//! `#[target_feature]`; its contract is that the CPU has those features, and only
//! `topk_row`'s dispatch calls it, after `is_x86_feature_detected!`. The lane operations are
//! safe methods of a type that only a `#[target_feature]` constructor makes, so a value of it is
//! the proof that the intrinsics it calls run on this CPU; each `unsafe` block around them says
//! so in its `// SAFETY:` comment, next to any pointer argument's bounds.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[doc(hidden)]
pub mod bench;
mod driver;
mod pass;
mod portable;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

/// Elements per chunk of the one pass: one threshold check, one vector loop.
const CHUNK: usize = 256;
/// Chunks whose exp sums stay in f32 lanes (8 terms per lane each) before they are added to
/// the f64 total.
const FOLD: usize = 4;
/// The vector loop takes `exp(x − M)` as `exp(−87) ≈ 1.6e-38` below `M − 87`; a row whose tail is
/// small enough for that to matter is summed again exactly ([`pass::exact_tail`]).
const EXP_FLOOR: f32 = -87.0;

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

/// The k best of one row, written into caller-owned slices, by the widest kernel the CPU runs.
///
/// `ids` and `logprobs` have length k; returns the tail log-mass (−∞ when nothing is left out).
/// Returns `Err(position)` of the first non-finite logit if the row holds one.
fn topk_row(row: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> Result<f32, usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the kernel's one feature.
            return unsafe { avx512::topk_row(row, ids, logprobs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, the kernel's features.
            return unsafe { avx2::topk_row(row, ids, logprobs) };
        }
    }
    portable::topk_row(row, ids, logprobs)
}
