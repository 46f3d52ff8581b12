//! Per-position top-k of the teacher's next-token distribution, on the CPU.
//!
//! For one row of logits `x` (length V) this computes, in two passes over the row and without
//! sorting it: the k largest entries (ids by descending log-prob, ties to the smaller id), their
//! normalized log-probabilities `x_j - logsumexp(x)`, and the tail log-mass
//! `log Σ_{y∉K} softmax(x)_y` summed over the tail elements themselves (never `1 - Σ top-k`,
//! which loses everything when the tail is tiny).
//!
//! Pass 1 keeps the running k best; almost every element is rejected by one comparison with
//! the current k-th value, checked on blocks so the comparison vectorizes. Pass 2 sums
//! `exp(x - max)` in f32 lanes, folded into f64 per block.

use rayon::prelude::*;

/// Elements checked against the threshold at once in pass 1.
const BLOCK: usize = 64;
/// Elements summed in f32 before folding into the f64 total in pass 2.
const SUM_BLOCK: usize = 1024;

/// The k best of one row, written into caller-owned slices.
///
/// `ids` and `logprobs` have length k; returns the tail log-mass (−∞ when nothing is left out).
/// Returns `Err(position)` of the first non-finite logit if the row holds one.
pub fn topk_row(row: &[f32], ids: &mut [u32], logprobs: &mut [f32]) -> Result<f32, usize> {
    let k = ids.len();
    debug_assert!(k >= 1 && k <= row.len() && logprobs.len() == k);
    if let Some(bad) = first_non_finite(row) {
        return Err(bad);
    }
    // Pass 1: `vals` descending; equal values keep the order of their (increasing) ids.
    let vals = logprobs;
    for (j, &x) in row[..k].iter().enumerate() {
        let pos = vals[..j].partition_point(|&v| v >= x);
        vals.copy_within(pos..j, pos + 1);
        ids.copy_within(pos..j, pos + 1);
        vals[pos] = x;
        ids[pos] = j as u32;
    }
    let mut thr = vals[k - 1];
    let mut start = k;
    while start < row.len() {
        let end = (start + BLOCK).min(row.len());
        let block = &row[start..end];
        if block.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) > thr {
            for (off, &x) in block.iter().enumerate() {
                if x > thr {
                    let pos = vals[..k - 1].partition_point(|&v| v >= x);
                    vals.copy_within(pos..k - 1, pos + 1);
                    ids.copy_within(pos..k - 1, pos + 1);
                    vals[pos] = x;
                    ids[pos] = (start + off) as u32;
                    thr = vals[k - 1];
                }
            }
        }
        start = end;
    }

    // Pass 2: the tail is every x < thr, plus the copies of thr that did not make it into K.
    let max = vals[0];
    let (tail_lo, n_eq) = tail_sum(row, thr, max);
    let kept_eq = vals.iter().filter(|&&v| v == thr).count();
    let e_thr = ((thr - max) as f64).exp();
    let tail = tail_lo + (n_eq - kept_eq) as f64 * e_thr;
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

/// `(Σ_{x < thr} exp(x − max), #{x == thr})`.
fn tail_sum(row: &[f32], thr: f32, max: f32) -> (f64, usize) {
    let mut total = 0f64;
    let mut n_eq = 0usize;
    for chunk in row.chunks(SUM_BLOCK) {
        let mut lanes = [0f32; 8];
        let mut it = chunk.chunks_exact(8);
        for c in &mut it {
            for l in 0..8 {
                let x = c[l];
                lanes[l] += if x < thr { (x - max).exp() } else { 0.0 };
            }
        }
        let mut s: f64 = lanes.iter().map(|&v| v as f64).sum();
        for &x in it.remainder() {
            if x < thr {
                s += ((x - max) as f64).exp();
            }
        }
        total += s;
        n_eq += chunk.iter().filter(|&&x| x == thr).count();
    }
    (total, n_eq)
}

fn first_non_finite(row: &[f32]) -> Option<usize> {
    // The sum of a row with a NaN or ±∞ is not finite; only then look for the culprit.
    let s: f32 = row
        .chunks(SUM_BLOCK)
        .map(|c| c.iter().map(|x| x * 0.0).sum::<f32>())
        .sum();
    if s == 0.0 {
        None
    } else {
        row.iter().position(|x| !x.is_finite())
    }
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
