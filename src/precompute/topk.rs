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
//! - the chunk's maximum is compared with the current k-th value `thr`; almost every chunk is
//!   below it, and only the rare chunk above it is walked element by element to update the k
//!   best (a sorted array; an element pushed out of it joins the tail sum);
//! - every element `x ≤ thr` (as `thr` stood at the start of the chunk) is certainly in the
//!   tail, since `thr` only grows: `exp(x − M)` is added into f32 lanes, where `M` is the
//!   running maximum (the tail sum is rescaled on the rare new maximum), and the lanes are folded
//!   into an f64 total every [`FOLD`] chunks.
//!
//! `exp` is a branch-free Cody–Waite + degree-5 polynomial ([`exp_le0`], relative error below
//! 3e-7 on `[-87, 0]`) so that the chunk loops vectorize; the row kernel is compiled three
//! times (AVX-512, AVX2 + FMA, baseline x86-64 or other targets) and picked at run time. That is
//! what makes the selection cost about one streaming read of the row (see `benches/topk.rs`,
//! `topk/select` against `topk/max_pass`).

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
    topk_row_impl::<false>(row, ids, logprobs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn topk_row_avx512(
    row: &[f32],
    ids: &mut [u32],
    logprobs: &mut [f32],
) -> Result<f32, usize> {
    topk_row_impl::<true>(row, ids, logprobs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn topk_row_avx2(row: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> Result<f32, usize> {
    topk_row_impl::<true>(row, ids, logprobs)
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

/// The running k best: `vals` descending, equal values in increasing id order.
struct Best<'a> {
    vals: &'a mut [f32],
    ids: &'a mut [u32],
}

impl Best<'_> {
    /// Insert `x` (greater than the k-th value) with id `id`; returns the value pushed out.
    #[inline]
    fn push(&mut self, x: f32, id: u32) -> f32 {
        let k = self.vals.len();
        let out = self.vals[k - 1];
        let pos = self.vals[..k - 1].partition_point(|&v| v >= x);
        self.vals.copy_within(pos..k - 1, pos + 1);
        self.ids.copy_within(pos..k - 1, pos + 1);
        self.vals[pos] = x;
        self.ids[pos] = id;
        out
    }
}

#[inline(always)]
fn topk_row_impl<const FMA: bool>(
    row: &[f32],
    ids: &mut [u32],
    logprobs: &mut [f32],
) -> Result<f32, usize> {
    let k = ids.len();
    debug_assert!(k >= 1 && k <= row.len() && logprobs.len() == k);
    // The first k elements, sorted (ties keep increasing ids).
    for (j, &x) in row[..k].iter().enumerate() {
        if !x.is_finite() {
            return Err(j);
        }
        let pos = logprobs[..j].partition_point(|&v| v >= x);
        logprobs.copy_within(pos..j, pos + 1);
        ids.copy_within(pos..j, pos + 1);
        logprobs[pos] = x;
        ids[pos] = j as u32;
    }
    let mut best = Best {
        vals: logprobs,
        ids,
    };
    let mut max = best.vals[0];
    // Tail sum relative to `max`: f64 total plus f32 lanes not yet folded into it.
    let mut tail = 0f64;
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
        let thr = best.vals[k - 1];
        prefetch(row, end + PREFETCH_AHEAD, CHUNK);
        // Every x ≤ thr is in the tail; the lane maxima tell whether anything is not.
        let mut top = [f32::NEG_INFINITY; LANES];
        let mut it = chunk.chunks_exact(LANES);
        for c in &mut it {
            for l in 0..LANES {
                let x = c[l];
                let e = exp_le0::<FMA>(x - max);
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
                exp_le0::<FMA>(x - max)
            };
        }
        pending += 1;
        if top.iter().any(|&v| v > thr) {
            // Rare: candidates. The lanes hold sums relative to the current `max`; fold them
            // before it can change.
            fold(&mut lanes, &mut tail);
            pending = 0;
            for (off, &x) in chunk.iter().enumerate() {
                if x > thr {
                    if !x.is_finite() {
                        return Err(start + off);
                    }
                    if x > best.vals[k - 1] {
                        if x > max {
                            tail *= ((max - x) as f64).exp();
                            max = x;
                        }
                        let out = best.push(x, (start + off) as u32);
                        tail += ((out - max) as f64).exp();
                    } else {
                        tail += ((x - max) as f64).exp();
                    }
                }
            }
        } else if pending == FOLD {
            fold(&mut lanes, &mut tail);
            pending = 0;
        }
        start = end;
    }
    fold(&mut lanes, &mut tail);
    if tail.is_nan() || low.contains(&f32::NEG_INFINITY) {
        return Err(row.iter().position(|x| !x.is_finite()).unwrap_or(0));
    }
    let Best { vals, ids } = best;
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

    #[test]
    fn every_compiled_kernel_gives_the_same_answer() {
        let rows = crate::testing::llm_like_logits(4, 151_936, 11);
        for row in rows.chunks(151_936) {
            let k = 50;
            let mut want = (vec![0u32; k], vec![0f32; k]);
            let t0 = topk_row_impl::<false>(row, &mut want.0, &mut want.1).unwrap();
            #[cfg(target_arch = "x86_64")]
            {
                let mut got = (vec![0u32; k], vec![0f32; k]);
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let t = unsafe { topk_row_avx512(row, &mut got.0, &mut got.1) }.unwrap();
                    assert_eq!(got.0, want.0);
                    assert!((t - t0).abs() < 1e-5 && (got.1[0] - want.1[0]).abs() < 1e-5);
                    assert_eq!(unsafe { row_max_avx512(row) }, row_max_impl(row));
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    let t = unsafe { topk_row_avx2(row, &mut got.0, &mut got.1) }.unwrap();
                    assert_eq!(got.0, want.0);
                    assert!((t - t0).abs() < 1e-5 && (got.1[0] - want.1[0]).abs() < 1e-5);
                    assert_eq!(unsafe { row_max_avx2(row) }, row_max_impl(row));
                }
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(row_max(row), max);
            check(row, k);
        }
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
