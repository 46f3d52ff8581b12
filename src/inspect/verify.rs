//! `taidcache verify`: every shard of a cache checked against its manifest and every position
//! against the format's invariants ([`crate::cache::validate`]).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::cache::validate::{check_shard_file, PositionChecker};
use crate::cache::{Cache, Codec, ShardBatch};
use crate::error::{Error, IoContext, Result};

/// What `verify` checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub shards: usize,
    pub sequences: u64,
    pub tokens: u64,
    pub bytes: u64,
}

/// Check a cache end to end; stop at the first problem.
///
/// - `manifest.json` loads (version, paths) and describes a finished, merged cache whose shards
///   cover sequences 0..total_sequences.
/// - Every shard: exists with the recorded size and xxh3; is v1 for the manifest's k; its footer
///   agrees with the manifest (format version, k, vocab, seq_len); rows and seq ids match.
/// - Every position: S positions per row and k values per position; input and top-k ids <
///   vocab and the top-k ids distinct; log-probs finite and non-increasing along k; the tail
///   log-mass τ finite and ≤ 0 (−∞ only when k = vocab: nothing dropped); and
///   |Σ_K e^ℓ + e^τ − 1| ≤ 1e-4 + 2^-10 · Σ_K e^ℓ·|ℓ|. The tolerance: f16 keeps 11 significant
///   bits, so a stored ℓ is off by up to |ℓ|·2^-11 and its probability by p·|ℓ|·2^-11; the
///   bound allows twice that, plus 1e-4 for the teacher's f32 log-softmax.
///
/// Row-level problems are [`Error::Verify`] (shard file, row within the shard, position);
/// file-level ones [`Error::Cache`] naming the shard file. Prints one line per shard and a final
/// `ok: N shards, M sequences, T tokens` line to `out`.
pub fn verify(dir: &Path, out: &mut impl Write) -> Result<VerifyReport> {
    let cache = Cache::open(dir)?;
    let manifest_path = cache.manifest_path().to_path_buf();
    let m = cache.manifest();
    if m.worker.is_some() {
        return Err(Error::field(
            &manifest_path,
            "worker",
            "manifest.json is a worker's partial manifest; run `taidcache merge`",
        ));
    }
    let encoding = cache.encoding();
    if m.value_encoding != encoding.value_encoding() {
        return Err(Error::field(
            &manifest_path,
            "value_encoding",
            format!(
                "`{}` is not defined by format v{} (only `{}`)",
                m.value_encoding,
                m.format_version,
                encoding.value_encoding()
            ),
        ));
    }
    if m.top_k == 0 || m.top_k > m.vocab_size {
        return Err(Error::field(
            &manifest_path,
            "top_k",
            format!("{} is not in 1..={} (vocab_size)", m.top_k, m.vocab_size),
        ));
    }

    let mut checker =
        PositionChecker::for_codec(m.top_k, m.vocab_size, Codec::for_writing(encoding));
    let mut batch = ShardBatch::new(m.packing.seq_len, m.top_k);
    for (i, entry) in m.shards.iter().enumerate() {
        let reader = check_shard_file(&cache, i)?;
        let path = reader.path().to_path_buf();
        let mut row0 = 0usize;
        for g in 0..reader.num_row_groups() {
            reader.read_row_group_into(g, &mut batch)?;
            checker.check_rows(&batch, entry.seq_id_start, row0, &path)?;
            row0 += batch.rows();
        }
        writeln!(
            out,
            "{}: ok, {} sequences, {} tokens, {} bytes, xxh3 {}",
            entry.path, entry.rows, entry.tokens, entry.bytes, entry.xxh3
        )
        .at("<output>")?;
    }

    let sequences = m.total_rows();
    if !m.complete {
        let progress = match m.total_sequences {
            Some(t) => format!("{sequences} of {t} sequences"),
            None => format!("{sequences} sequences so far"),
        };
        return Err(Error::cache(
            &manifest_path,
            format!(
                "the cache is incomplete ({progress} in {} shards, which verified ok): \
                 precompute was interrupted; re-run the same `taidcache precompute` command to \
                 resume after the last complete shard",
                m.shards.len()
            ),
        ));
    }
    let Some(total) = m.total_sequences else {
        return Err(Error::field(
            &manifest_path,
            "total_sequences",
            "null in a complete cache",
        ));
    };
    let mut next = 0u64;
    for entry in &m.shards {
        if entry.seq_id_start != next {
            return Err(Error::cache(
                &manifest_path,
                format!(
                    "shard {} starts at sequence {}, expected {next}: sequences missing or duplicated",
                    entry.path, entry.seq_id_start
                ),
            ));
        }
        next = entry.seq_id_end;
    }
    if next != total {
        return Err(Error::cache(
            &manifest_path,
            format!("shards hold sequences 0..{next}, total_sequences is {total}"),
        ));
    }
    let report = VerifyReport {
        shards: m.shards.len(),
        sequences,
        tokens: m.total_tokens(),
        bytes: m.total_bytes(),
    };
    writeln!(
        out,
        "ok: {} shards, {} sequences, {} tokens",
        report.shards, report.sequences, report.tokens
    )
    .at("<output>")?;
    Ok(report)
}
