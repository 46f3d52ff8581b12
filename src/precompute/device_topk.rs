//! Top-k from tensor ops that every candle device runs, for a teacher on a GPU.
//!
//! candle's `arg_sort_last_dim` fails on CUDA for rows over 8192 columns, and no real vocabulary
//! fits in that. So the vocabulary is cut into blocks of [`BLOCK`] ids (padded with −∞), each
//! block is sorted and keeps its k best, and the candidates (`⌈V/BLOCK⌉·k`, folded again in
//! blocks while there are more than `2·BLOCK`) are sorted once more and cut to k. The
//! normalizer and the tail log-mass are reduced on the device too, so only k ids, k log-probs
//! and one scalar per position are copied to the host.
//!
//! Ids and the selected logits equal the CPU top-k of [`super::topk`] exactly; ties keep the
//! smaller id where the sort is stable (candle's CPU sort; CUDA's bitonic sort may order exact
//! ties differently, which changes an id among equal log-probs, never a value). Log-probs and
//! the tail are computed in f32 on the device (the CPU path folds into f64), so they agree to
//! f32 rounding, well inside the f16 the cache stores.

use candle_core::{DType, Result, Tensor, D};

/// Widest row sorted at once; candle's CUDA sort works up to 8192.
pub const BLOCK: usize = 4096;

/// The k best of each row of `logits` [n, vocab] (f32, any device): ids [n, k] u32 by descending
/// logit, log-probs [n, k] f32 and the tail log-mass [n] f32 (−∞ when nothing is left out), on
/// the same device.
pub fn topk_blocks(logits: &Tensor, k: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let logits = logits.to_dtype(DType::F32)?.contiguous()?;
    let (n, vocab) = logits.dims2()?;
    if k == 0 || k > vocab {
        candle_core::bail!("top-k: k = {k} is not in 1..={vocab}");
    }
    let ids = Tensor::arange(0u32, vocab as u32, logits.device())?
        .unsqueeze(0)?
        .broadcast_as((n, vocab))?
        .contiguous()?;
    let (mut vals, mut cand) = (logits.clone(), ids);
    if vocab > 2 * BLOCK && 2 * k > BLOCK {
        candle_core::bail!(
            "top-k on the device keeps at most {} ids per position, asked for {k}",
            BLOCK / 2
        );
    }
    while vals.dim(1)? > 2 * BLOCK {
        (vals, cand) = fold_blocks(&vals, &cand, k)?;
    }
    let order = vals
        .arg_sort_last_dim(false)?
        .narrow(1, 0, k)?
        .contiguous()?;
    let top_vals = vals.gather(&order, 1)?;
    let top_ids = cand.gather(&order, 1)?;

    // Normalizer and tail, as the CPU path: the tail is every logit below the k-th value plus
    // the copies of the k-th value that did not make it into K, summed element by element.
    let max = logits.max_keepdim(1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let total = shifted.exp()?.sum_keepdim(1)?;
    let log_z = (max.clone() + total.log()?)?;
    let thr = top_vals.narrow(1, k - 1, 1)?.contiguous()?;
    let below = logits.broadcast_lt(&thr)?;
    let zeros = shifted.zeros_like()?;
    let tail_lo = below.where_cond(&shifted.exp()?, &zeros)?.sum_keepdim(1)?;
    let n_eq = logits
        .broadcast_eq(&thr)?
        .to_dtype(DType::F32)?
        .sum_keepdim(1)?;
    let kept_eq = top_vals
        .broadcast_eq(&thr)?
        .to_dtype(DType::F32)?
        .sum_keepdim(1)?;
    let e_thr = thr.broadcast_sub(&max)?.exp()?;
    let tail = (tail_lo + ((n_eq - kept_eq)? * e_thr)?)?;
    // log(0) = −∞: an empty tail.
    let tail_logmass = ((tail.log()? + max)? - &log_z)?.squeeze(1)?;
    let logprobs = top_vals.broadcast_sub(&log_z)?;
    Ok((top_ids, logprobs, tail_logmass))
}

/// One round: cut the rows of `vals` [n, w] (ids alongside) into blocks of [`BLOCK`], keep each
/// block's k best in block order. Returns [n, ⌈w/BLOCK⌉·min(k, BLOCK)].
fn fold_blocks(vals: &Tensor, ids: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (n, w) = vals.dims2()?;
    let blocks = w.div_ceil(BLOCK);
    let pad = blocks * BLOCK - w;
    let (vals, ids) = if pad > 0 {
        let fill = Tensor::full(f32::NEG_INFINITY, (n, pad), vals.device())?;
        let no_id = Tensor::full(u32::MAX, (n, pad), ids.device())?;
        (
            Tensor::cat(&[vals, &fill], 1)?,
            Tensor::cat(&[ids, &no_id], 1)?,
        )
    } else {
        (vals.clone(), ids.clone())
    };
    let kb = k.min(BLOCK);
    let vals = vals.reshape((n * blocks, BLOCK))?;
    let ids = ids.reshape((n * blocks, BLOCK))?;
    let order = vals
        .arg_sort_last_dim(false)?
        .narrow(D::Minus1, 0, kb)?
        .contiguous()?;
    let v = vals.gather(&order, 1)?.reshape((n, blocks * kb))?;
    let i = ids.gather(&order, 1)?.reshape((n, blocks * kb))?;
    Ok((v, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::Normal;
    use crate::precompute::topk::topk_rows;
    use candle_core::Device;

    /// Logits with exact ties: a few values repeated across the vocabulary, some of them at
    /// the k-th place.
    fn rows(n: usize, vocab: usize, seed: u64) -> Vec<f32> {
        let mut rng = Normal::new(seed);
        let mut x: Vec<f32> = (0..n * vocab).map(|_| 3.0 * rng.sample()).collect();
        for r in 0..n {
            let row = &mut x[r * vocab..(r + 1) * vocab];
            // Ties among the best (12 copies of one high value) and ties in the tail.
            for j in 0..12 {
                row[(j * 7919 + r * 131) % vocab] = 11.5;
            }
            // 60 copies of a value just inside the top 50: the k-th place falls among them.
            for j in 0..60 {
                row[(j * 104_729 + 17 + r) % vocab] = 10.9;
            }
            for j in 0..40 {
                row[(j * 6151 + 3) % vocab] = -1.25;
            }
        }
        x
    }

    #[test]
    fn block_topk_equals_the_cpu_topk_for_real_vocabularies_ties_included() {
        let (n, k) = (4, 50);
        for vocab in [32_000usize, 128_256, 151_936] {
            let x = rows(n, vocab, vocab as u64);
            let (mut ids, mut lp, mut tail) = (vec![0u32; n * k], vec![0f32; n * k], vec![0f32; n]);
            topk_rows(&x, vocab, k, &mut ids, &mut lp, &mut tail).unwrap();
            let t = Tensor::from_slice(&x, (n, vocab), &Device::Cpu).unwrap();
            let (di, dl, dt) = topk_blocks(&t, k).unwrap();
            let di: Vec<u32> = di.flatten_all().unwrap().to_vec1().unwrap();
            let dl: Vec<f32> = dl.flatten_all().unwrap().to_vec1().unwrap();
            let dt: Vec<f32> = dt.to_vec1().unwrap();
            assert_eq!(di, ids, "vocab {vocab}: ids differ");
            // The selected logits are the same values exactly.
            for (j, &id) in di.iter().enumerate() {
                let r = j / k;
                assert_eq!(x[r * vocab + id as usize], x[r * vocab + ids[j] as usize]);
            }
            let worst_lp = dl
                .iter()
                .zip(&lp)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst_lp < 1e-5,
                "vocab {vocab}: log-probs differ by {worst_lp}"
            );
            for (a, b) in dt.iter().zip(&tail) {
                let rel = ((a - b) as f64).exp() - 1.0;
                assert!(rel.abs() < 1e-4, "vocab {vocab}: tail {a} vs {b}");
            }
        }
    }

    #[test]
    fn k_equal_to_vocab_leaves_an_empty_tail() {
        let x = rows(2, 300, 1);
        let t = Tensor::from_slice(&x, (2, 300), &Device::Cpu).unwrap();
        let (_, lp, tail) = topk_blocks(&t, 300).unwrap();
        assert_eq!(tail.to_vec1::<f32>().unwrap(), [f32::NEG_INFINITY; 2]);
        let mass: Vec<f32> = lp.exp().unwrap().sum(1).unwrap().to_vec1().unwrap();
        assert!(mass.iter().all(|m| (m - 1.0).abs() < 1e-5), "{mass:?}");
    }
}
