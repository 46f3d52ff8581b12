//! Held-out calibration of a student: what a top-k cache's bias does to it.
//!
//! - **Expected calibration error** (ECE) over [`ECE_BINS`] equal-width bins of the student's
//!   top-1 probability: `Σ_b (n_b / N)·|accuracy_b − confidence_b|`, where a position's
//!   confidence is its largest softmax probability and it is accurate when that token is the
//!   next token. Positions are those with a next token (the positions cross-entropy counts).
//! - **Top-1 agreement**: how often the student's most likely token is the teacher's (the first
//!   of the cached top-k, which is sorted by log-probability), over the positions with teacher
//!   records.

use candle_core::{DType, Tensor, D};

use crate::error::{CandleContext, Result};

/// Bins of the expected calibration error (the usual 15).
pub const ECE_BINS: usize = 15;

/// One bin's sums.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Bin {
    positions: u64,
    confidence: f64,
    correct: u64,
}

/// Sums for [`Calibration::ece`] and [`Calibration::top1_agreement`] over the positions seen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Calibration {
    bins: [Bin; ECE_BINS],
    agree: u64,
    compared: u64,
}

impl Calibration {
    /// Add positions: the student's top-1 probability `conf` and token `pred`, the next token
    /// `labels` (`None`: not counted for ECE), and, where `mask` is set, the teacher's top-1.
    pub fn add(
        &mut self,
        conf: &[f32],
        pred: &[u32],
        labels: &[Option<u32>],
        mask: &[bool],
        teacher_top1: impl Fn(usize) -> u32,
    ) {
        for i in 0..conf.len() {
            if let Some(label) = labels[i] {
                let c = f64::from(conf[i]).clamp(0.0, 1.0);
                let b = ((c * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
                let bin = &mut self.bins[b];
                bin.positions += 1;
                bin.confidence += c;
                bin.correct += u64::from(pred[i] == label);
            }
            if mask[i] {
                self.compared += 1;
                self.agree += u64::from(pred[i] == teacher_top1(i));
            }
        }
    }

    /// Add a chunk of logits on the host: `[n, vocab]` row-major.
    pub fn add_host(
        &mut self,
        logits: &[f32],
        vocab: usize,
        labels: &[Option<u32>],
        mask: &[bool],
        teacher_top1: impl Fn(usize) -> u32,
    ) {
        let n = labels.len();
        let (mut conf, mut pred) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for row in logits.chunks(vocab.max(1)).take(n) {
            let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
            for (j, &x) in row.iter().enumerate() {
                if x > max {
                    (best, max) = (j, x);
                }
            }
            let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
            conf.push((1.0 / sum) as f32);
            pred.push(best as u32);
        }
        self.add(&conf, &pred, labels, mask, teacher_top1);
    }

    /// Add a chunk of logits `[n, vocab]` on any device: the top-1 probability and token are
    /// computed there and only those `2·n` numbers are read back.
    pub fn add_tensor(
        &mut self,
        logits: &Tensor,
        labels: &[Option<u32>],
        mask: &[bool],
        teacher_top1: impl Fn(usize) -> u32,
    ) -> Result<()> {
        let logits = logits.to_dtype(DType::F32).ctx("calibration")?;
        let max = logits.max_keepdim(D::Minus1).ctx("calibration")?;
        // The top-1 probability is exp(max − logsumexp) = 1 / Σ exp(x − max).
        let conf = logits
            .broadcast_sub(&max)
            .and_then(|x| x.exp())
            .and_then(|x| x.sum(D::Minus1))
            .and_then(|s| s.recip())
            .and_then(|c| c.to_vec1::<f32>())
            .ctx("calibration")?;
        let pred = logits
            .argmax(D::Minus1)
            .and_then(|p| p.to_vec1::<u32>())
            .ctx("calibration")?;
        self.add(&conf, &pred, labels, mask, teacher_top1);
        Ok(())
    }

    /// Expected calibration error; `None` before any labelled position.
    pub fn ece(&self) -> Option<f64> {
        let total: u64 = self.bins.iter().map(|b| b.positions).sum();
        (total > 0).then(|| {
            self.bins
                .iter()
                .filter(|b| b.positions > 0)
                .map(|b| {
                    let n = b.positions as f64;
                    (n / total as f64) * (b.correct as f64 / n - b.confidence / n).abs()
                })
                .sum()
        })
    }

    /// Share of positions where the student's top-1 is the teacher's; `None` before any.
    pub fn top1_agreement(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agree as f64 / self.compared as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_is_the_weighted_gap_between_accuracy_and_confidence_per_bin() {
        let mut c = Calibration::default();
        // Bin 14 (confidence 0.95): 4 positions, 3 right → |0.75 − 0.95| = 0.2.
        // Bin 7 (confidence 0.5): 2 positions, 1 right → |0.5 − 0.5| = 0.
        // One position without a label is not counted.
        let conf = [0.95, 0.95, 0.95, 0.95, 0.5, 0.5, 0.9];
        let pred = [1, 1, 1, 1, 2, 2, 3];
        let labels = [Some(1), Some(1), Some(1), Some(0), Some(2), Some(0), None];
        let mask = [true, true, true, true, true, true, false];
        let teacher = [1, 1, 0, 0, 2, 2, 3];
        c.add(&conf, &pred, &labels, &mask, |i| teacher[i]);
        let ece = c.ece().unwrap();
        assert!((ece - (4.0 / 6.0) * 0.2).abs() < 1e-6, "{ece}");
        // Agreement over the 6 masked positions: 1, 1, ≠, ≠, 2, 2 → 4 of 6.
        assert_eq!(c.top1_agreement(), Some(4.0 / 6.0));
        assert_eq!(Calibration::default().ece(), None);
        assert_eq!(Calibration::default().top1_agreement(), None);
    }

    #[test]
    fn host_and_tensor_paths_agree_and_confidence_is_the_softmax_maximum() {
        let vocab = 5;
        let logits: Vec<f32> = vec![
            1.0, 3.0, 0.5, -1.0, 2.0, // top-1 is 1
            0.0, 0.0, 0.0, 0.0, 0.0, // a tie: the first
            -2.0, -1.0, 4.0, 0.0, 1.0, // top-1 is 2
        ];
        let labels = [Some(1), Some(3), Some(0)];
        let mask = [true, true, true];
        let teacher = [1u32, 0, 4];
        let mut host = Calibration::default();
        host.add_host(&logits, vocab, &labels, &mask, |i| teacher[i]);
        let t = Tensor::from_slice(&logits, (3, vocab), &candle_core::Device::Cpu).unwrap();
        let mut dev = Calibration::default();
        dev.add_tensor(&t, &labels, &mask, |i| teacher[i]).unwrap();
        let (h, d) = (host.ece().unwrap(), dev.ece().unwrap());
        assert!((h - d).abs() < 1e-6, "host {h} device {d}");
        assert_eq!(host.top1_agreement(), Some(2.0 / 3.0));
        assert_eq!(dev.top1_agreement(), host.top1_agreement());
        // Row 1: conf = 1/(e^-2 + 1 + e^-2.5 + e^-4 + e^-1), right.
        let c0 = 1.0 / ((-2f64).exp() + 1.0 + (-2.5f64).exp() + (-4f64).exp() + (-1f64).exp());
        // Row 2: conf 0.2, wrong (pred 0, label 3); row 3: wrong.
        let c2 = 1.0 / ((-6f64).exp() + (-5f64).exp() + 1.0 + (-4f64).exp() + (-3f64).exp());
        let expected = ((1.0 - c0) + 0.2 + c2) / 3.0; // three different bins, each of one
        assert!((h - expected).abs() < 1e-6, "{h} vs {expected}");
    }
}
