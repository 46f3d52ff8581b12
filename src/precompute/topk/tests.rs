//! Every kernel against the full sort (ids bit for bit, log-probs and tail mass to the
//! accuracy of the vector `exp`), non-finite logits, and the pieces: rank keys, both `exp`s.

use super::bench::{row_max, topk_row_by_sort};
use super::pass::{from_rank_key, rank_key};
use super::portable::exp_le0;
use super::{portable, topk_row, topk_rows, EXP_FLOOR};
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
    let mut all: Vec<(&'static str, Kernel)> = vec![("portable", portable::topk_row)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            all.push(("avx512", |r, i, l| unsafe {
                super::avx512::topk_row(r, i, l)
            }));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            all.push(("avx2", |r, i, l| unsafe { super::avx2::topk_row(r, i, l) }));
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
            use super::bench::{row_max_avx2, row_max_avx512, row_max_portable};
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                assert_eq!(unsafe { row_max_avx512(row) }, row_max_portable(row));
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                assert_eq!(unsafe { row_max_avx2(row) }, row_max_portable(row));
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
    let mut normal = crate::model::init::Normal::new(21);
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
    use super::avx512::Avx512;
    use super::driver::Lanes;
    // SAFETY: the CPU has AVX-512F; the buffers hold 16 floats.
    let exp16 = |d: [f32; 16]| unsafe {
        let ops = Avx512::new();
        let mut out = [0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), ops.exp_le0(ops.load(&d)));
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
