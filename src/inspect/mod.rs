//! `taidcache inspect` and `taidcache verify` ([`verify`]): what a cache holds, and whether it
//! can be trusted.
//!
//! Both stream over the shards one row group at a time (never the whole cache in memory) through
//! [`crate::cache`]; neither writes to the cache.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::cache::writer::raw_bytes_per_position;
use crate::cache::{Cache, ShardBatch};
use crate::error::{Error, IoContext, Result};

/// Lower edges of the tail-mass histogram bins, as decades: bin 0 is e^τ ≥ 1e-1, bin i is
/// 1e-(i+1) ≤ e^τ < 1e-i, the last bin is everything below 1e-8 (including e^τ = 0).
const TAIL_DECADES: usize = 8;

/// What `taidcache inspect` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub cache: String,
    pub format_version: u32,
    /// False while a precompute is running or was interrupted.
    pub complete: bool,
    pub teacher: TeacherSummary,
    /// Where an imported cache came from (`taidcache import`); absent for a precompute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import: Option<crate::cache::manifest::ImportInfo>,
    pub top_k: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub dtype: String,
    pub temperature: f32,
    pub value_encoding: String,
    /// Tail draws per position (`precompute --tail-samples`), 0 without.
    pub tail_draws: usize,
    /// Mean over loss positions of the distinct ids among the draws (`None` without draws).
    pub mean_distinct_draws: Option<f64>,
    /// Sequences in the shards written so far.
    pub sequences: u64,
    /// Sequences of the whole packed corpus, when known.
    pub total_sequences: Option<u64>,
    /// All positions (sequences × seq_len).
    pub tokens: u64,
    /// Positions with loss_mask = true: the ones distillation trains on.
    pub loss_tokens: u64,
    pub shards: usize,
    pub bytes_on_disk: u64,
    pub bytes_per_token: f64,
    /// Uncompressed size: per position k·(4+2) + 4 (tail) + 4 (input id) + 1 (mask), plus
    /// 6 bytes per tail draw.
    pub raw_bytes: u64,
    /// raw_bytes / bytes_on_disk.
    pub compression_ratio: f64,
    /// Mean over loss positions of −Σ_{y∈K} p_y ln p_y, in nats (a lower bound of the teacher's
    /// entropy: the tail's share is not in it).
    pub mean_topk_entropy: Option<f64>,
    /// Mean over loss positions of Σ_{y∈K} p_y.
    pub mean_topk_mass: Option<f64>,
    /// Tail mass e^τ over loss positions, by decade.
    pub tail_mass_histogram: Vec<HistogramBin>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeacherSummary {
    pub model_type: String,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramBin {
    /// e.g. `1e-3..1e-2` (lower bound inclusive), `>= 1e-1`, `< 1e-8`.
    pub range: String,
    pub count: u64,
    pub fraction: f64,
}

mod verify;

pub use verify::{verify, VerifyReport};

/// Summarise a cache, streaming over its shards row group by row group.
pub fn inspect(dir: &Path) -> Result<Summary> {
    let cache = Cache::open(dir)?;
    let m = cache.manifest();
    let mut loss_tokens = 0u64;
    let mut entropy_sum = 0.0f64;
    let mut mass_sum = 0.0f64;
    let mut histogram = [0u64; TAIL_DECADES + 1];
    let mut distinct_sum = 0u64;
    let k = m.top_k;
    let mut batch = ShardBatch::new(m.packing.seq_len, k);
    for i in 0..m.shards.len() {
        let reader = cache.open_shard(i)?;
        for g in 0..reader.num_row_groups() {
            // Decoded through the reader so that both encodings give the same f16 log-probs.
            reader.read_row_group_into(g, &mut batch)?;
            let lp = &batch.topk_logprobs;
            for (pos, tau) in batch.tail_logmass.iter().enumerate() {
                if !batch.loss_mask[pos] {
                    continue;
                }
                loss_tokens += 1;
                let (mut mass, mut entropy) = (0.0f64, 0.0f64);
                for l in &lp[pos * k..(pos + 1) * k] {
                    let l = f64::from(l.to_f32());
                    let p = l.exp();
                    mass += p;
                    if p > 0.0 {
                        entropy -= p * l;
                    }
                }
                mass_sum += mass;
                entropy_sum += entropy;
                let d = batch.draws;
                if d > 0 {
                    let ids = &batch.draw_ids[pos * d..(pos + 1) * d];
                    distinct_sum += 1 + ids.windows(2).filter(|w| w[0] != w[1]).count() as u64;
                }
                histogram[tail_decade(*tau)] += 1;
            }
        }
    }

    let tokens = m.total_tokens();
    let bytes = m.total_bytes();
    let raw_bytes = tokens * (raw_bytes_per_position(k) + m.tail_draws * 6) as u64;
    let mean = |sum: f64| (loss_tokens > 0).then(|| sum / loss_tokens as f64);
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Summary {
        cache: dir.display().to_string(),
        format_version: m.format_version,
        complete: m.complete,
        teacher: TeacherSummary {
            model_type: m.teacher.model_type.clone(),
            source: m.teacher.source.clone(),
        },
        import: m.import.clone(),
        tail_draws: m.tail_draws,
        mean_distinct_draws: (m.tail_draws > 0)
            .then(|| distinct_sum as f64 / loss_tokens.max(1) as f64),
        top_k: k,
        vocab_size: m.vocab_size,
        seq_len: m.packing.seq_len,
        dtype: m.dtype.clone(),
        temperature: m.temperature,
        value_encoding: m.value_encoding.clone(),
        sequences: m.total_rows(),
        total_sequences: m.total_sequences,
        tokens,
        loss_tokens,
        shards: m.shards.len(),
        bytes_on_disk: bytes,
        bytes_per_token: ratio(bytes, tokens),
        raw_bytes,
        compression_ratio: ratio(raw_bytes, bytes),
        mean_topk_entropy: mean(entropy_sum),
        mean_topk_mass: mean(mass_sum),
        tail_mass_histogram: histogram
            .iter()
            .enumerate()
            .map(|(i, &count)| HistogramBin {
                range: decade_label(i),
                count,
                fraction: ratio(count, loss_tokens),
            })
            .collect(),
    })
}

/// Histogram bin of tail log-mass τ (see [`TAIL_DECADES`]).
fn tail_decade(tau: f32) -> usize {
    // −log10(e^τ), so that bin i holds 1e-(i+1) ≤ e^τ < 1e-i; NaN and −∞ land in the last bin.
    let neg_log10 = -f64::from(tau) / std::f64::consts::LN_10;
    if neg_log10 <= 1.0 {
        0
    } else if neg_log10.is_nan() || neg_log10 > TAIL_DECADES as f64 {
        TAIL_DECADES
    } else {
        (neg_log10.ceil() as usize - 1).min(TAIL_DECADES)
    }
}

fn decade_label(i: usize) -> String {
    match i {
        0 => ">= 1e-1".to_string(),
        i if i == TAIL_DECADES => format!("< 1e-{TAIL_DECADES}"),
        i => format!("1e-{}..1e-{i}", i + 1),
    }
}

/// Print `s` as a table for people, or as one JSON object.
pub fn write_summary(s: &Summary, json: bool, out: &mut impl Write) -> Result<()> {
    let stdout = Path::new("<output>");
    if json {
        serde_json::to_writer_pretty(&mut *out, s).map_err(|source| Error::Json {
            path: stdout.to_path_buf(),
            source,
        })?;
        writeln!(out).at(stdout)?;
        return Ok(());
    }
    let opt = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "n/a".to_string(),
    };
    let progress = match (s.complete, s.total_sequences) {
        (true, _) => "complete".to_string(),
        (false, Some(t)) => format!("INCOMPLETE ({} of {t} sequences)", s.sequences),
        (false, None) => "INCOMPLETE (precompute interrupted or running)".to_string(),
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("cache", s.cache.clone()),
        ("status", progress),
        ("format version", s.format_version.to_string()),
        (
            "teacher",
            format!("{} ({})", s.teacher.model_type, s.teacher.source),
        ),
        ("top-k / vocab", format!("{} / {}", s.top_k, s.vocab_size)),
        ("seq_len", s.seq_len.to_string()),
        (
            "dtype / temperature",
            format!("{} / {}", s.dtype, s.temperature),
        ),
        ("value encoding", s.value_encoding.clone()),
        (
            "tail draws",
            match s.mean_distinct_draws {
                Some(d) => format!(
                    "{} per position ({d:.2} distinct ids on average)",
                    s.tail_draws
                ),
                None => "none".to_string(),
            },
        ),
        ("sequences", s.sequences.to_string()),
        ("tokens (loss)", format!("{} ({})", s.tokens, s.loss_tokens)),
        ("shards", s.shards.to_string()),
        ("bytes on disk", human_bytes(s.bytes_on_disk)),
        ("bytes / token", format!("{:.2}", s.bytes_per_token)),
        (
            "raw size / ratio",
            format!("{} / {:.2}x", human_bytes(s.raw_bytes), s.compression_ratio),
        ),
        (
            "mean top-k entropy",
            format!("{} nats", opt(s.mean_topk_entropy, 4)),
        ),
        ("mean top-k mass", opt(s.mean_topk_mass, 4)),
    ];
    if let Some(i) = &s.import {
        let share = |n: u64| 100.0 * n as f64 / i.positions.max(1) as f64;
        let settings = match &i.compression {
            Some(c) => format!(", compression {c}"),
            None => ", plain log-probs".to_string(),
        };
        rows.insert(
            4,
            (
                "imported from",
                format!(
                    "{} capture of {}{settings}",
                    i.source,
                    i.teacher.as_deref().unwrap_or("an unnamed teacher")
                ),
            ),
        );
        rows.insert(
            5,
            (
                "import",
                format!(
                    "{} documents, {} positions; tail floored at {:e} on {} ({:.3}%); {} positions cut by seq_len; tail reconstructed from the top-k, not measured",
                    i.documents,
                    i.positions,
                    i.tail_floor,
                    i.floored_positions,
                    share(i.floored_positions),
                    i.truncated_positions
                ),
            ),
        );
    }
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        for (key, value) in &rows {
            writeln!(out, "{key:<20} {value}")?;
        }
        writeln!(out, "tail mass e^tau (loss positions):")?;
        for bin in &s.tail_mass_histogram {
            writeln!(
                out,
                "  {:<12} {:>12} {:>7.2}%",
                bin.range,
                bin.count,
                100.0 * bin.fraction
            )?;
        }
        Ok(())
    };
    write(out).at(stdout)
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests;
