//! What `benches/topk.rs` and the tests call besides [`super::topk_rows`], which is the stage's
//! API: one row at a time, the bandwidth floor and the reference. Hidden from the docs; not for
//! use by the crate itself.

/// The k best of one row ([`super::topk_rows`] for one row, on the calling thread).
///
/// `ids` and `logprobs` have length k; returns the tail log-mass (−∞ when nothing is left out),
/// or `Err(position)` of the first non-finite logit.
#[inline]
pub fn topk_row(row: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> Result<f32, usize> {
    super::topk_row(row, ids, logprobs)
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

/// Lanes of the maximum's loop (two AVX-512 registers, four AVX2 registers).
const LANES: usize = 32;

/// The maximum of a row, as fast as the machine streams it: the baseline that `benches/topk.rs`
/// holds the selection against (a pass that only reads the row), compiled for the same features
/// as the top-k kernel the CPU gets.
pub fn row_max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the function's one feature.
            return unsafe { row_max_avx512(row) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, the function's one feature.
            return unsafe { row_max_avx2(row) };
        }
    }
    row_max_portable(row)
}

/// [`row_max_portable`] compiled for AVX-512F.
///
/// # Safety
///
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row_max_avx512(row: &[f32]) -> f32 {
    row_max_portable(row)
}

/// [`row_max_portable`] compiled for AVX2.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn row_max_avx2(row: &[f32]) -> f32 {
    row_max_portable(row)
}

/// The maximum as plain loops over [`LANES`] lanes that the compiler vectorizes.
#[inline(always)]
pub(super) fn row_max_portable(row: &[f32]) -> f32 {
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
