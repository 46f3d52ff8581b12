//! Checks of a cache's contents that do not trust the manifest or the shards: a shard file
//! against its manifest entry ([`check_shard_file`]) and every position against the format's
//! invariants ([`PositionChecker`]). `verify` runs both over a whole cache; anything else that
//! must trust a shard calls them too.

use std::path::Path;

use super::batch::ShardBatch;
use super::encoding::{Codec, Encoding};
use super::layout::MANIFEST_FILE;
use super::manifest::ShardEntry;
use super::open::Cache;
use super::reader::ShardReader;
use super::schema;
use crate::error::{Error, Result};
use crate::hash::xxh3_file;

/// How much of a listed shard [`check_listed_file`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileCheck {
    /// Present, a file, with the recorded size: a `stat`.
    Size,
    /// Also the recorded xxh3 of its contents: one read of the file.
    Hash,
}

/// Check the file of a shard entry of the manifest named `listed_in`, in cache directory `dir`:
/// present, a plain file, the recorded size, and (with [`FileCheck::Hash`]) the recorded xxh3.
/// The error is one sentence naming the shard file and what is wrong with it.
pub fn check_listed_file(
    dir: &Path,
    entry: &ShardEntry,
    listed_in: &str,
    check: FileCheck,
) -> Result<()> {
    let path = dir.join(&entry.path);
    let file_err = |msg: String| Error::cache(&path, msg);
    let size = match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(file_err(format!(
                "listed in {listed_in} as a shard, but it is a directory"
            )))
        }
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(file_err(format!("listed in {listed_in} but missing")))
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    if size != entry.bytes {
        return Err(file_err(format!(
            "{size} bytes on disk, {listed_in} records {}",
            entry.bytes
        )));
    }
    if check == FileCheck::Hash {
        let hash = xxh3_file(&path)?;
        if hash != entry.xxh3 {
            return Err(file_err(format!(
                "content hash xxh3 {hash}, {listed_in} records {}: the file is corrupt or \
                 was replaced",
                entry.xxh3
            )));
        }
    }
    Ok(())
}

/// Check shard `i` of `cache` as a file: present with the recorded size and xxh3, its footer
/// agreeing with the manifest (format version, k, vocab, seq_len) and holding the recorded
/// rows. Returns the open reader. Errors are [`Error::Cache`] naming the shard file.
pub fn check_shard_file(cache: &Cache, i: usize) -> Result<ShardReader> {
    let m = cache.manifest();
    let entry = &m.shards[i];
    let path = cache.shard_path(i);
    let file_err = |msg: String| Error::cache(&path, msg);
    check_listed_file(cache.dir(), entry, MANIFEST_FILE, FileCheck::Hash)?;
    let reader = ShardReader::open(&path)?;
    let footer = [
        (schema::META_FORMAT_VERSION, m.format_version.to_string()),
        (schema::META_TOP_K, m.top_k.to_string()),
        (schema::META_VOCAB_SIZE, m.vocab_size.to_string()),
        (schema::META_SEQ_LEN, m.packing.seq_len.to_string()),
    ];
    for (key, expected) in footer {
        let found = reader.key_value(key);
        if found.as_deref() != Some(expected.as_str()) {
            return Err(file_err(format!(
                "footer metadata {key} is {}, manifest.json says {expected}",
                found.map_or("missing".to_string(), |v| format!("{v:?}"))
            )));
        }
    }
    if reader.num_rows() as u64 != entry.rows {
        return Err(file_err(format!(
            "{} rows, manifest.json records {}",
            reader.num_rows(),
            entry.rows
        )));
    }
    Ok(reader)
}

/// Check that every token id of `b` (inputs and top-k) is below `vocab`, the one invariant a
/// trainer indexes by. A scan for the maximum, cheap next to decoding; the error names the first
/// offending row (of `b`) and position.
pub fn check_ids(b: &ShardBatch, vocab: usize) -> std::result::Result<(), String> {
    let (s, k) = (b.seq_len.max(1), b.k.max(1));
    let first_bad = |ids: &[u32]| -> Option<(usize, u32)> {
        let max = ids.iter().copied().max()?;
        if (max as usize) < vocab {
            return None;
        }
        ids.iter()
            .position(|&id| id as usize >= vocab)
            .map(|i| (i, ids[i]))
    };
    if let Some((i, id)) = first_bad(&b.input_ids) {
        return Err(format!(
            "row {} position {}: input id {id} >= vocab_size {vocab}",
            i / s,
            i % s
        ));
    }
    if let Some((i, id)) = first_bad(&b.topk_ids) {
        let p = i / k;
        return Err(format!(
            "row {} position {}: top-k id {id} >= vocab_size {vocab}",
            p / s,
            p % s
        ));
    }
    Ok(())
}

/// Vocabularies up to this size find repeated top-k ids with a bitset over the vocabulary
/// (2 MiB); larger ones (which only a corrupt manifest claims) sort a copy of the k ids, so
/// what `verify` allocates never follows the manifest's claim.
const BITSET_MAX_VOCAB: usize = 1 << 24;

/// Per-position checks of `verify`, with a reusable seen-ids bitset.
pub struct PositionChecker {
    k: usize,
    vocab: usize,
    /// One bit per id when `vocab <= BITSET_MAX_VOCAB`, else empty.
    seen: Vec<u64>,
    /// The position's ids, sorted, when there is no bitset.
    sorted: Vec<u32>,
    /// What the positions must look like: log-probs descending (plain, steps) or ids ascending
    /// (compact), and how far quantization may move each probability beyond f16 rounding.
    codec: Codec,
}

impl PositionChecker {
    /// A checker of plain (format v1) positions.
    pub fn new(k: usize, vocab: usize) -> Self {
        Self::for_codec(k, vocab, Codec::for_writing(Encoding::Plain))
    }

    /// A checker of positions decoded by `codec`.
    pub fn for_codec(k: usize, vocab: usize, codec: Codec) -> Self {
        PositionChecker {
            k,
            vocab,
            seen: if vocab <= BITSET_MAX_VOCAB {
                vec![0; vocab.div_ceil(64)]
            } else {
                Vec::new()
            },
            sorted: Vec::new(),
            codec,
        }
    }

    /// Check the rows of `b`, which are rows `row0..` of the shard whose first seq id is
    /// `seq_id_start`.
    pub fn check_rows(
        &mut self,
        b: &ShardBatch,
        seq_id_start: u64,
        row0: usize,
        path: &Path,
    ) -> Result<()> {
        let (s, k) = (b.seq_len, self.k);
        for r in 0..b.rows() {
            let row = row0 + r;
            let fail = |msg: String| Error::Verify {
                path: path.to_path_buf(),
                row,
                msg,
            };
            let expected = seq_id_start + row as u64;
            if b.seq_ids[r] != expected {
                return Err(fail(format!(
                    "seq_id {}, manifest.json's range gives {expected}",
                    b.seq_ids[r]
                )));
            }
            for i in 0..s {
                let p = r * s + i;
                self.check_position(b, p, k)
                    .map_err(|msg| fail(format!("position {i}: {msg}")))?;
            }
        }
        Ok(())
    }

    pub fn check_position(
        &mut self,
        b: &ShardBatch,
        p: usize,
        k: usize,
    ) -> std::result::Result<(), String> {
        let input = b.input_ids[p];
        if input as usize >= self.vocab {
            return Err(format!("input id {input} >= vocab_size {}", self.vocab));
        }
        let ids = &b.topk_ids[p * k..(p + 1) * k];
        let lps = &b.topk_logprobs[p * k..(p + 1) * k];
        let tau = b.tail_logmass[p];
        let ids_ascending = self.codec.encoding().sorted_by_id();
        let mut result = Ok(());
        let bitset = !self.seen.is_empty();
        for (j, &id) in ids.iter().enumerate() {
            if ids_ascending && j > 0 && id <= ids[j - 1] {
                result = Err(format!(
                    "topk_id_gaps: ids not ascending: [{}] = {} >= [{j}] = {id}",
                    j - 1,
                    ids[j - 1]
                ));
                break;
            }
            if id as usize >= self.vocab {
                result = Err(format!("topk_ids[{j}] = {id} >= vocab_size {}", self.vocab));
                break;
            }
            if bitset {
                let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
                if self.seen[word] & bit != 0 {
                    result = Err(format!("topk_ids[{j}] = {id} appears twice"));
                    break;
                }
                self.seen[word] |= bit;
            }
        }
        if bitset {
            for &id in ids.iter().filter(|&&id| (id as usize) < self.vocab) {
                self.seen[id as usize / 64] = 0;
            }
        } else if result.is_ok() {
            self.sorted.clear();
            self.sorted.extend_from_slice(ids);
            self.sorted.sort_unstable();
            if let Some(w) = self.sorted.windows(2).find(|w| w[0] == w[1]) {
                let j = ids.iter().rposition(|&id| id == w[0]).unwrap_or(0);
                result = Err(format!("topk_ids[{j}] = {} appears twice", w[0]));
            }
        }
        result?;

        let mut mass = 0.0f64;
        let mut spread = 0.0f64;
        // Bound on Σ |p − p̂| from quantization beyond f16 rounding: none for plain, every
        // log-prob within half a step for steps, each p within its level's bound for compact.
        let mut quantization = 0.0f64;
        let mut prev = f32::INFINITY;
        for (j, l) in lps.iter().enumerate() {
            let l = l.to_f32();
            if !l.is_finite() {
                return Err(format!("topk_logprobs[{j}] = {l} is not finite"));
            }
            if !ids_ascending && l > prev {
                return Err(format!(
                    "topk_logprobs not descending: [{}] = {prev} < [{j}] = {l}",
                    j - 1
                ));
            }
            prev = l;
            let pr = f64::from(l).exp();
            mass += pr;
            spread += pr * f64::from(l).abs();
            quantization += self.codec.error_bound(pr);
        }
        let nothing_dropped = k == self.vocab && tau == f32::NEG_INFINITY;
        if !(tau.is_finite() || nothing_dropped) || tau > 0.0 {
            return Err(format!(
                "tail_logmass = {tau}, expected finite and <= 0{}",
                if k == self.vocab {
                    " (or -inf when k = vocab)"
                } else {
                    ""
                }
            ));
        }
        let total = mass + f64::from(tau).exp();
        let tol = 1e-4 + spread / 1024.0 + quantization;
        if (total - 1.0).abs() > tol {
            return Err(format!(
                "top-k mass {mass:.6} + tail mass {:.6} = {total:.6}, not 1 within {tol:.2e}",
                f64::from(tau).exp()
            ));
        }
        if b.draws > 0 {
            self.check_draws(b, p, k, tau)?;
        }
        Ok(())
    }

    /// The tail draws of position `p` (formats v4 and v5): ids ascending, below the vocabulary
    /// and outside the top-k, log-probs finite and at most the k-th (up to f16 rounding and the
    /// encoding's quantization of the k-th); the placeholder (`vocab_size`, −∞) only where the
    /// tail is empty.
    fn check_draws(
        &mut self,
        b: &ShardBatch,
        p: usize,
        k: usize,
        tau: f32,
    ) -> std::result::Result<(), String> {
        let d = b.draws;
        let ids = &b.draw_ids[p * d..(p + 1) * d];
        let lps = &b.draw_logprobs[p * d..(p + 1) * d];
        self.sorted.clear();
        self.sorted
            .extend_from_slice(&b.topk_ids[p * k..(p + 1) * k]);
        self.sorted.sort_unstable();
        let kth = b.topk_logprobs[p * k..(p + 1) * k]
            .iter()
            .map(|l| f64::from(l.to_f32()))
            .fold(f64::INFINITY, f64::min);
        let kth_p = kth.exp();
        // f16 rounding (plain), or the 1/16-nat steps of format v5 (e^(1/32) < 1.04).
        let rounding = if self.codec.encoding().sorted_by_id() {
            1.04
        } else {
            1.01
        };
        let max_p = kth_p * rounding + self.codec.error_bound(kth_p);
        for (j, (&id, lp)) in ids.iter().zip(lps).enumerate() {
            let lp = lp.to_f32();
            if j > 0 && id < ids[j - 1] {
                return Err(format!(
                    "tail_draw_ids not ascending: [{}] = {} > [{j}] = {id}",
                    j - 1,
                    ids[j - 1]
                ));
            }
            if id as usize == self.vocab && lp == f32::NEG_INFINITY && tau == f32::NEG_INFINITY {
                continue;
            }
            if id as usize >= self.vocab {
                return Err(format!(
                    "tail_draw_ids[{j}] = {id} >= vocab_size {}",
                    self.vocab
                ));
            }
            if self.sorted.binary_search(&id).is_ok() {
                return Err(format!(
                    "tail_draw_ids[{j}] = {id} is one of the top-k ids; draws come from outside them"
                ));
            }
            if !lp.is_finite() {
                return Err(format!("tail_draw_logprobs[{j}] = {lp} is not finite"));
            }
            if f64::from(lp).exp() > max_p {
                return Err(format!(
                    "tail_draw_logprobs[{j}] = {lp} is above the k-th top-k log-prob {kth:.4}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn verify_checks_tail_draws_ids_order_and_log_probs() {
        let mut checker = PositionChecker::new(3, 10);
        let mut b = ShardBatch::new(1, 3);
        b.seq_ids.push(0);
        b.input_ids.push(1);
        b.loss_mask.push(true);
        b.topk_ids.extend([2, 7, 5]);
        b.topk_logprobs
            .extend([0.5f64, 0.3, 0.15].map(|p| f16::from_f64(p.ln())));
        b.tail_logmass.push(0.05f32.ln());
        b.draws = 3;
        b.draw_ids.extend([1, 1, 8]);
        b.draw_logprobs
            .extend([0.02f64, 0.02, 0.01].map(|p| f16::from_f64(p.ln())));
        checker.check_position(&b, 0, 3).unwrap();
        for (ids, lps, want) in [
            (
                [1u32, 5, 8],
                [0.02f64, 0.02, 0.01],
                "tail_draw_ids[1] = 5 is one of the top-k ids",
            ),
            (
                [1, 8, 3],
                [0.02, 0.01, 0.01],
                "tail_draw_ids not ascending: [1] = 8 > [2] = 3",
            ),
            (
                [1, 1, 10],
                [0.02, 0.02, 0.01],
                "tail_draw_ids[2] = 10 >= vocab_size 10",
            ),
            (
                [1, 1, 8],
                [0.02, 0.2, 0.01],
                "tail_draw_logprobs[1] = -1.609375 is above the k-th",
            ),
        ] {
            b.draw_ids.copy_from_slice(&ids);
            for (d, p) in b.draw_logprobs.iter_mut().zip(lps) {
                *d = f16::from_f64(p.ln());
            }
            let err = checker.check_position(&b, 0, 3).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn verify_of_a_compact_cache_wants_ascending_ids() {
        let mut checker = PositionChecker::for_codec(3, 10, Codec::for_writing(Encoding::Compact));
        let mut b = ShardBatch::new(1, 3);
        b.seq_ids.push(0);
        b.input_ids.push(1);
        b.loss_mask.push(true);
        b.topk_ids.extend([2, 7, 5]);
        b.topk_logprobs
            .extend([0.5f64, 0.3, 0.15].map(|p| f16::from_f64(p.ln())));
        b.tail_logmass.push(0.05f32.ln());
        let err = checker.check_position(&b, 0, 3).unwrap_err();
        assert!(err.contains("not ascending: [1] = 7 >= [2] = 5"), "{err}");
        b.topk_ids[1..].copy_from_slice(&[5, 7]);
        checker.check_position(&b, 0, 3).unwrap();
    }

    #[test]
    fn a_vocab_beyond_the_bitset_finds_repeated_ids_without_allocating_by_the_vocab() {
        let vocab = BITSET_MAX_VOCAB * 64;
        let mut checker = PositionChecker::new(3, vocab);
        assert!(checker.seen.is_empty(), "no bitset over {vocab} ids");
        let mut b = ShardBatch::new(1, 3);
        b.seq_ids.push(0);
        b.input_ids.push(1);
        b.loss_mask.push(true);
        b.topk_ids.extend([9, (vocab - 1) as u32, 9]);
        b.topk_logprobs
            .extend([0.5f64, 0.3, 0.15].map(|p| f16::from_f64(p.ln())));
        b.tail_logmass.push(0.05f32.ln());
        let err = checker.check_position(&b, 0, 3).unwrap_err();
        assert_eq!(err, "topk_ids[2] = 9 appears twice");
        b.topk_ids[2] = 10;
        checker.check_position(&b, 0, 3).unwrap();
        assert_eq!(
            check_ids(&b, vocab - 1),
            Err(format!(
                "row 0 position 0: top-k id {} >= vocab_size {}",
                vocab - 1,
                vocab - 1
            ))
        );
    }

    #[test]
    fn verify_tolerance_accepts_f16_rounding_but_not_a_one_percent_error() {
        let mut checker = PositionChecker::new(2, 10);
        let mut b = ShardBatch::new(1, 2);
        b.seq_ids.push(0);
        b.input_ids.push(1);
        b.loss_mask.push(true);
        b.topk_ids.extend([3, 4]);
        // p = 0.6, 0.3 rounded to f16; the tail from the unrounded values.
        b.topk_logprobs
            .extend([f16::from_f64(0.6f64.ln()), f16::from_f64(0.3f64.ln())]);
        b.tail_logmass.push(0.1f32.ln());
        checker.check_position(&b, 0, 2).unwrap();
        b.tail_logmass[0] = 0.11f32.ln();
        let err = checker.check_position(&b, 0, 2).unwrap_err();
        assert!(err.contains("= 1.01"), "{err}");
    }
}
