//! The value encoding of format v2 (`--encoding steps`, `schemas/v2/`): the ids in rank order
//! as in v1, each log-prob as an 8-bit step of [`LOGPROB_STEP`] nats along the descending
//! log-probs.

use half::f16;

/// The footer key-value entry holding the quantization step of a v2 shard (`0.125`).
pub const FOOTER_KEY: &str = "taidcache.logprob_step";

/// Quantization step of the `steps` encoding (format v2), in nats: log-prob `j` of a position is
/// `−LOGPROB_STEP · Σ_{i≤j} step_i`. Every decoded value is within half a step (plus f16
/// rounding) of the exact one, so the mean KL(exact ‖ decoded) is about `LOGPROB_STEP² / 24`
/// ≈ 6.5e-4 nats at most; the step is written to every shard's footer.
pub const LOGPROB_STEP: f32 = 0.125;

/// `q_j = round(−ℓ_j / LOGPROB_STEP)` (each position's k values non-increasing), stored as steps
/// `q_j − q_{j−1}` (`q_{−1} = 0`) that fit in a u8. A step larger than 255 (a drop of more than
/// 31.9 nats between neighbours, far below any probability that matters) is cut to 255 and the
/// next steps continue from the decoded value, so no error accumulates.
pub fn encode(logprobs: &[f16], k: usize, out: &mut Vec<u8>) {
    let inv = 1.0 / LOGPROB_STEP;
    for pos in logprobs.chunks(k) {
        let mut decoded = 0u32;
        for &v in pos {
            let q = (-v.to_f32() * inv).round();
            // NaN and negative q (a log-prob above 0) become 0; +∞ saturates.
            let q = if q > 0.0 {
                q.min(u32::MAX as f32) as u32
            } else {
                0
            };
            let step = q.saturating_sub(decoded).min(255);
            decoded += step;
            out.push(step as u8);
        }
    }
}

/// Inverse of [`encode`] for quantization step `step` (nats): appends `k` f16 log-probs per
/// position to `out`.
pub fn decode(steps: &[u8], k: usize, step: f32, out: &mut Vec<f16>) {
    for pos in steps.chunks(k) {
        let mut q = 0u32;
        out.extend(pos.iter().map(|&s| {
            q += s as u32;
            f16::from_f32(-(q as f32) * step)
        }));
    }
}

/// The largest |p − p̂| of a probability decoded as `decoded` at quantization step `step`:
/// within half a step of the log-prob, a factor e^(±step/2).
pub fn error_bound(decoded: f64, step: f32) -> f64 {
    decoded * (f64::from(step) / 2.0).exp_m1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_steps_decode_within_half_a_step_and_saturate_without_drift() {
        let k = 6;
        let mut lps = Vec::new();
        let mut rng = crate::model::init::Normal::new(5);
        for _ in 0..2000 {
            let mut v: Vec<f32> = (0..k).map(|_| -(rng.uniform() as f32) * 30.0).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            lps.extend(v.into_iter().map(f16::from_f32));
        }
        // A drop of 60 nats between neighbours: more than 255 steps of 0.125.
        lps.extend([-0.5f32, -60.5, -60.6, -60.75, -61.0, -70.0].map(f16::from_f32));
        let mut steps = Vec::new();
        encode(&lps, k, &mut steps);
        let mut back = Vec::new();
        decode(&steps, k, LOGPROB_STEP, &mut back);
        assert_eq!(back.len(), lps.len());
        let n = lps.len() - k;
        let mut worst = 0f32;
        for (a, b) in lps[..n].iter().zip(&back[..n]) {
            let (a, b) = (a.to_f32(), b.to_f32());
            // Half a step, plus the f16 rounding of the decoded value.
            worst = worst.max((a - b).abs() - a.abs() * 2f32.powi(-11));
        }
        assert!(
            worst <= LOGPROB_STEP / 2.0 + 1e-6,
            "worst error {worst} > half a step"
        );
        // The saturated step decodes 31.875 nats below its neighbour; the next ones continue
        // from there (steps of 0 while the exact values are still above) instead of drifting.
        let last: Vec<f32> = back[n..].iter().map(|v| v.to_f32()).collect();
        assert_eq!(steps[n + 1], 255);
        assert!((last[1] - (-0.5 - 31.875)).abs() < 0.02, "{last:?}");
        assert!(last.windows(2).all(|w| w[1] <= w[0]), "{last:?}");
        assert!((last[5] - (-70.0)).abs() <= LOGPROB_STEP, "{last:?}");
    }
}
