//! The value encoding of format v3 (`--encoding compact`, `schemas/v3/`): each position's top-k
//! sorted by id, the ids as gaps, and each log-prob as one of 256 fixed levels.
//!
//! The levels are uniform in √p from p = 1 down to p = 1/1024 (steps of 1/128 in √p), then
//! uniform in log-prob (steps of 0.5 nats, the √p step's width there) down to −72.4 nats. A
//! probability's KL weight is p, and an error δ in √p costs about `δ²` of KL whatever p is, so
//! equal steps in √p spend the error budget evenly over ranks, where equal steps in log-prob
//! (format v2) spend most of it on the likeliest few and store the tail more finely than it
//! matters. Below 1/1024 the log steps keep every decoded probability within a factor e^±¼ of
//! the true one, so no probability is decoded as 0.
//!
//! Sorting by id drops the order of the k ids, which the log-probs carry anyway: a set of 50
//! ids costs log2(50!) ≈ 214 bits less than the same ids in rank order, and the gaps between
//! sorted ids are small numbers that byte-stream-split and zstd compress well.

use half::f16;

/// The footer key-value entry listing the log-prob of every level of a v3 shard (a JSON array).
pub const FOOTER_KEY: &str = "taidcache.logprob_levels";

/// Number of levels: the stored value is a `u8`.
pub const LEVELS: usize = 256;

/// Step in √p of the levels `0..=KNEE`: level j decodes to `√p = 1 − j · SQRT_STEP`.
pub const SQRT_STEP: f64 = 1.0 / 128.0;

/// Last level of the √p part: √p = 4/128, p = 1/1024.
pub const KNEE: usize = 124;

/// Step in log-prob of the levels past [`KNEE`]: the width in nats of a √p step at the knee,
/// `2 · SQRT_STEP / √p_knee` = 0.5.
pub const LOG_STEP: f64 = 2.0 * SQRT_STEP / (1.0 - KNEE as f64 * SQRT_STEP);

/// The log-prob of level `j` (nats; level 0 is 0, the last about −72.4).
pub fn logprob_of_level(j: usize) -> f64 {
    if j <= KNEE {
        2.0 * (1.0 - j as f64 * SQRT_STEP).ln()
    } else {
        logprob_of_level(KNEE) - (j - KNEE) as f64 * LOG_STEP
    }
}

/// The log-prob of every level, as f32 (what the footer lists).
pub fn table() -> [f32; LEVELS] {
    std::array::from_fn(|j| logprob_of_level(j) as f32)
}

/// The footer value of [`FOOTER_KEY`]: the table as a JSON array.
pub fn footer_value() -> String {
    let items: Vec<String> = table().iter().map(|v| v.to_string()).collect();
    format!("[{}]", items.join(","))
}

/// Check a footer's level table against this build's (format v3 has exactly one table).
pub fn check_footer_value(value: &str) -> std::result::Result<(), String> {
    let found: Vec<f64> =
        serde_json::from_str(value).map_err(|e| format!("is not a JSON array of numbers ({e})"))?;
    if found.len() != LEVELS {
        return Err(format!(
            "lists {} levels, format v3 has {LEVELS}",
            found.len()
        ));
    }
    for (j, (&f, e)) in found.iter().zip(table()).enumerate() {
        if (f - f64::from(e)).abs() > 1e-6 * (1.0 + f.abs()) {
            return Err(format!("level {j} is {f}, format v3 says {e}"));
        }
    }
    Ok(())
}

/// The level of log-prob `l`: the nearest level in √p above the knee, in log-prob below it.
/// Log-probs above 0 take level 0, NaN and those below the last level the last level.
pub fn level_of(l: f32) -> u8 {
    let knee = logprob_of_level(KNEE) as f32;
    if l >= knee {
        let j = ((1.0 - (0.5 * l).exp()) * (1.0 / SQRT_STEP as f32)).round();
        // (1 − √p) · 128 is ≤ 124 at the knee; f32 rounding must not push it past.
        j.clamp(0.0, KNEE as f32) as u8
    } else {
        let j = ((knee - l) * (1.0 / LOG_STEP as f32)).round();
        // NaN fails both comparisons and lands here; `as` maps it to 0, so test it first.
        if j.is_nan() {
            return (LEVELS - 1) as u8;
        }
        (KNEE as f32 + j).clamp(KNEE as f32, (LEVELS - 1) as f32) as u8
    }
}

/// The largest |p − p̂| of a probability decoded as `decoded` (= p̂): the true value lies between
/// the neighbouring levels' probabilities, closer to this one than to them. Used by `verify`.
pub fn error_bound(decoded: f64) -> f64 {
    let u = decoded.sqrt();
    // √p part: |√p − √p̂| ≤ SQRT_STEP / 2, so |p − p̂| ≤ SQRT_STEP · (√p̂ + SQRT_STEP / 4).
    let sqrt_part = SQRT_STEP * (u + SQRT_STEP / 4.0);
    // Log part (and the knee): within half a log step, a factor e^(±LOG_STEP / 2).
    let log_part = decoded * (LOG_STEP / 2.0).exp_m1();
    sqrt_part.max(log_part)
}

/// Encode one position: `ids` and `logprobs` (k each, any order) become `gaps` (ids ascending:
/// the first id, then differences) and `levels`, appended in that order. `scratch` is reused.
pub fn encode_position(
    ids: &[u32],
    logprobs: &[f16],
    gaps: &mut Vec<u32>,
    levels: &mut Vec<u8>,
    scratch: &mut Vec<(u32, f16)>,
) {
    scratch.clear();
    scratch.extend(ids.iter().copied().zip(logprobs.iter().copied()));
    scratch.sort_unstable_by_key(|&(id, _)| id);
    let mut prev = 0u32;
    for &(id, l) in scratch.iter() {
        gaps.push(id.wrapping_sub(prev));
        levels.push(level_of(l.to_f32()));
        prev = id;
    }
}

/// Decodes level bytes through a table of f16 log-probs.
#[derive(Debug)]
pub struct Decoder {
    table: [f16; LEVELS],
}

impl Decoder {
    /// The decoder of this version's one table, built once per process.
    pub fn get() -> &'static Decoder {
        static DECODER: std::sync::OnceLock<Decoder> = std::sync::OnceLock::new();
        DECODER.get_or_init(|| Decoder {
            table: table().map(f16::from_f32),
        })
    }

    /// Append the ids (running sums of `gaps`, per position of `k`) and the log-probs of
    /// `levels` to `ids` and `logprobs`.
    pub fn decode(
        &self,
        gaps: &[u32],
        levels: &[u8],
        k: usize,
        ids: &mut Vec<u32>,
        logprobs: &mut Vec<f16>,
    ) {
        for pos in gaps.chunks(k) {
            let mut id = 0u32;
            ids.extend(pos.iter().map(|&g| {
                id = id.wrapping_add(g);
                id
            }));
        }
        logprobs.extend(levels.iter().map(|&j| self.table[j as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_descend_from_0_to_about_minus_72_with_half_nat_steps_past_the_knee() {
        let t = table();
        assert_eq!(t[0], 0.0);
        assert!(t.windows(2).all(|w| w[1] < w[0]), "levels not descending");
        assert!((LOG_STEP - 0.5).abs() < 1e-12, "{LOG_STEP}");
        assert!(
            (t[KNEE] - (1.0f32 / 1024.0).ln()).abs() < 1e-5,
            "{}",
            t[KNEE]
        );
        assert!((t[LEVELS - 1] + 72.43).abs() < 0.01, "{}", t[LEVELS - 1]);
        // The step in nats is continuous at the knee: the last √p step is 0.5 nats wide too.
        let last_sqrt_step = f64::from(t[KNEE - 1] - t[KNEE]);
        assert!((last_sqrt_step - 0.5).abs() < 0.07, "{last_sqrt_step}");
    }

    #[test]
    fn every_log_prob_takes_a_level_within_half_a_step_in_its_domain() {
        let mut worst_sqrt = 0f64;
        let mut worst_log = 0f64;
        let knee = logprob_of_level(KNEE);
        let last = logprob_of_level(LEVELS - 1);
        for i in 0..=200_000 {
            let l = -75.0 * f64::from(i) / 200_000.0;
            let j = level_of(l as f32) as usize;
            let d = logprob_of_level(j);
            if l >= knee {
                worst_sqrt = worst_sqrt.max(((0.5 * l).exp() - (0.5 * d).exp()).abs());
            } else if l >= last {
                worst_log = worst_log.max((l - d).abs());
            } else {
                assert_eq!(j, LEVELS - 1, "{l}");
            }
            let p = l.exp();
            assert!(
                (p - d.exp()).abs() <= error_bound(d.exp()) * 1.001 + 1e-12,
                "l = {l}: decoded {d}, |p − p̂| = {:e} > bound {:e}",
                (p - d.exp()).abs(),
                error_bound(d.exp())
            );
        }
        assert!(worst_sqrt <= SQRT_STEP / 2.0 + 1e-6, "{worst_sqrt}");
        assert!(worst_log <= LOG_STEP / 2.0 + 1e-5, "{worst_log}");
        assert_eq!(level_of(0.3), 0);
        assert_eq!(level_of(f32::NAN), 255);
        assert_eq!(level_of(f32::NEG_INFINITY), 255);
    }

    #[test]
    fn positions_round_trip_as_sorted_ids_with_their_own_levels() {
        let ids = [900u32, 3, 77, 4, 150_000];
        let lps = [-0.5f32, -1.0, -2.0, -9.0, -30.0].map(f16::from_f32);
        let (mut gaps, mut levels, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        encode_position(&ids, &lps, &mut gaps, &mut levels, &mut scratch);
        encode_position(&ids[..], &lps, &mut gaps, &mut levels, &mut scratch);
        assert_eq!(&gaps[..5], &[3, 1, 73, 823, 149_100]);
        let (mut back_ids, mut back_lps) = (Vec::new(), Vec::new());
        Decoder::get().decode(&gaps, &levels, 5, &mut back_ids, &mut back_lps);
        assert_eq!(back_ids, [3, 4, 77, 900, 150_000, 3, 4, 77, 900, 150_000]);
        for (id, l) in back_ids.iter().zip(&back_lps) {
            let i = ids.iter().position(|x| x == id).unwrap();
            let (exact, got) = (f64::from(lps[i].to_f32()), f64::from(l.to_f32()));
            assert!(
                (exact.exp() - got.exp()).abs() <= error_bound(got.exp()) * 1.01,
                "id {id}: {exact} decoded {got}"
            );
        }
    }

    #[test]
    fn the_footer_table_parses_back_and_a_changed_one_is_named() {
        assert_eq!(check_footer_value(&footer_value()), Ok(()));
        let mut t = table().to_vec();
        t[7] -= 0.01;
        let changed = serde_json::to_string(&t).unwrap();
        let err = check_footer_value(&changed).unwrap_err();
        assert!(err.contains("level 7"), "{err}");
        let err = check_footer_value("[0, -1]").unwrap_err();
        assert!(err.contains("2 levels"), "{err}");
        assert!(check_footer_value("0.125").is_err());
    }
}
