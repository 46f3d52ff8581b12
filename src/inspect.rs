//! `taidcache inspect` and `taidcache verify`: what a cache holds, and whether it can be trusted.
//!
//! Both stream over the shards one row group at a time (never the whole cache in memory) through
//! [`crate::cache`]; neither writes to the cache.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::cache::reader::ShardReader;
use crate::cache::schema;
use crate::cache::writer::{raw_bytes_per_position, ShardBatch};
use crate::cache::{
    levels, readable_versions, Encoding, Manifest, MANIFEST_FILE, WORKER_MANIFESTS_DIR,
};
use crate::error::{Error, IoContext, Result};
use crate::hash::xxh3_file;

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
    pub top_k: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub dtype: String,
    pub temperature: f32,
    pub value_encoding: String,
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
    /// Uncompressed size: per position k·(4+2) + 4 (tail) + 4 (input id) + 1 (mask).
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

/// Load `CACHE/manifest.json`, saying what to do when it is missing.
fn load_manifest(cache: &Path) -> Result<Manifest> {
    let path = cache.join(MANIFEST_FILE);
    if !path.exists() {
        let hint = if cache.join(WORKER_MANIFESTS_DIR).is_dir() {
            "it holds worker manifests: run `taidcache merge` once every worker has finished"
        } else {
            "not a taidcache cache (or precompute has not written its first shard yet)"
        };
        return Err(Error::cache(&path, format!("manifest not found; {hint}")));
    }
    Manifest::load(&path)
}

/// Summarise a cache, streaming over its shards row group by row group.
pub fn inspect(cache: &Path) -> Result<Summary> {
    let m = load_manifest(cache)?;
    let mut loss_tokens = 0u64;
    let mut entropy_sum = 0.0f64;
    let mut mass_sum = 0.0f64;
    let mut histogram = [0u64; TAIL_DECADES + 1];
    let k = m.top_k;
    let mut batch = ShardBatch::new(m.packing.seq_len, k);
    for entry in &m.shards {
        let reader = ShardReader::open(&cache.join(&entry.path))?;
        if reader.top_k() != k {
            return Err(Error::cache(
                reader.path(),
                format!("shard has top-k {}, manifest.json says {k}", reader.top_k()),
            ));
        }
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
                histogram[tail_decade(*tau)] += 1;
            }
        }
    }

    let tokens = m.total_tokens();
    let bytes = m.total_bytes();
    let raw_bytes = tokens * raw_bytes_per_position(k) as u64;
    let mean = |sum: f64| (loss_tokens > 0).then(|| sum / loss_tokens as f64);
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Summary {
        cache: cache.display().to_string(),
        format_version: m.format_version,
        complete: m.complete,
        teacher: TeacherSummary {
            model_type: m.teacher.model_type.clone(),
            source: m.teacher.source.clone(),
        },
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
    let rows: Vec<(&str, String)> = vec![
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
pub fn verify(cache: &Path, out: &mut impl Write) -> Result<VerifyReport> {
    let manifest_path = cache.join(MANIFEST_FILE);
    let m = load_manifest(cache)?;
    if m.worker.is_some() {
        return Err(Error::field(
            &manifest_path,
            "worker",
            "manifest.json is a worker's partial manifest; run `taidcache merge`",
        ));
    }
    let encoding = Encoding::from_format_version(m.format_version.into()).ok_or_else(|| {
        Error::field(
            &manifest_path,
            "format_version",
            format!(
                "{} is not a format this build reads ({})",
                m.format_version,
                readable_versions()
            ),
        )
    })?;
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

    let mut checker = PositionChecker::for_encoding(m.top_k, m.vocab_size, encoding);
    let mut batch = ShardBatch::new(m.packing.seq_len, m.top_k);
    for entry in &m.shards {
        let path = cache.join(&entry.path);
        let file_err = |msg: String| Error::cache(&path, msg);
        let size = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(file_err("listed in manifest.json but missing".into()))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if size != entry.bytes {
            return Err(file_err(format!(
                "{size} bytes on disk, manifest.json records {}",
                entry.bytes
            )));
        }
        let hash = xxh3_file(&path)?;
        if hash != entry.xxh3 {
            return Err(file_err(format!(
                "content hash xxh3 {hash}, manifest.json records {}: the file is corrupt or \
                 was replaced",
                entry.xxh3
            )));
        }
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

/// Per-position checks of `verify`, with a reusable seen-ids bitset.
struct PositionChecker {
    k: usize,
    vocab: usize,
    seen: Vec<u64>,
    /// What the positions must look like: log-probs descending (plain, steps) or ids ascending
    /// (compact), and how far quantization may move each probability beyond f16 rounding.
    encoding: Encoding,
}

impl PositionChecker {
    fn new(k: usize, vocab: usize) -> Self {
        PositionChecker {
            k,
            vocab,
            seen: vec![0; vocab.div_ceil(64)],
            encoding: Encoding::Plain,
        }
    }

    fn for_encoding(k: usize, vocab: usize, encoding: Encoding) -> Self {
        Self {
            encoding,
            ..Self::new(k, vocab)
        }
    }

    /// Check the rows of `b`, which are rows `row0..` of the shard whose first seq id is
    /// `seq_id_start`.
    fn check_rows(
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

    fn check_position(
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
        let ids_ascending = self.encoding == Encoding::Compact;
        let mut result = Ok(());
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
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            if self.seen[word] & bit != 0 {
                result = Err(format!("topk_ids[{j}] = {id} appears twice"));
                break;
            }
            self.seen[word] |= bit;
        }
        for &id in ids.iter().filter(|&&id| (id as usize) < self.vocab) {
            self.seen[id as usize / 64] = 0;
        }
        result?;

        let mut mass = 0.0f64;
        let mut spread = 0.0f64;
        // Bound on Σ |p − p̂| from quantization beyond f16 rounding: none for plain, every
        // log-prob within half a step for steps, each p within its level's bound for compact.
        let mut quantization = 0.0f64;
        let step_error = (f64::from(crate::cache::LOGPROB_STEP) / 2.0).exp_m1();
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
            quantization += match self.encoding {
                Encoding::Plain => 0.0,
                Encoding::Steps => pr * step_error,
                Encoding::Compact => levels::error_bound(pr),
            };
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{random_batch, sample_manifest};
    use crate::cache::{
        shard_file_name, shard_rel_path, write_shard_atomic, WriteOptions, SHARDS_DIR,
    };
    use half::f16;

    const S: usize = 8;
    const K: usize = 4;
    const VOCAB: u32 = 1000;

    /// A cache of 3 shards × 5 rows, written through the real writer; `tamper(shard, batch)`
    /// may change a batch before it is written.
    fn write_cache(dir: &Path, tamper: impl Fn(u64, &mut ShardBatch)) -> Manifest {
        write_cache_as(dir, Encoding::Plain, tamper)
    }

    /// [`write_cache`] in `encoding`.
    fn write_cache_as(
        dir: &Path,
        encoding: Encoding,
        tamper: impl Fn(u64, &mut ShardBatch),
    ) -> Manifest {
        std::fs::create_dir_all(dir.join(SHARDS_DIR)).unwrap();
        let mut m = sample_manifest(0, 5);
        m.packing.seq_len = S;
        m.top_k = K;
        m.vocab_size = VOCAB as usize;
        m.teacher.vocab_size = VOCAB as usize;
        m.format_version = encoding.format_version();
        m.value_encoding = encoding.value_encoding().into();
        let opts = WriteOptions {
            row_group_rows: 2,
            metadata: vec![(schema::META_VOCAB_SIZE.into(), VOCAB.to_string())],
            encoding,
            ..WriteOptions::default()
        };
        for i in 0..3u64 {
            let mut b = random_batch(5, S, K, VOCAB, i * 5, 10 + i);
            tamper(i, &mut b);
            let mut e =
                write_shard_atomic(&dir.join(SHARDS_DIR).join(shard_file_name(i)), &b, &opts)
                    .unwrap();
            e.index = i;
            e.path = shard_rel_path(i);
            m.shards.push(e);
        }
        m.total_sequences = Some(15);
        m.save_atomic(&dir.join(MANIFEST_FILE)).unwrap();
        m
    }

    fn verify_err(dir: &Path) -> (Error, String) {
        let mut out = Vec::new();
        let err = verify(dir, &mut out).unwrap_err();
        (err, String::from_utf8(out).unwrap())
    }

    /// Assert a row-level error on shard `shard`, row `row`, whose message contains `needle`.
    fn assert_row_error(err: &Error, shard: u64, row: usize, needle: &str) {
        match err {
            Error::Verify { path, row: r, msg } => {
                assert!(path.ends_with(shard_rel_path(shard)), "{err}");
                assert_eq!(*r, row, "{err}");
                assert!(msg.contains(needle), "expected {needle:?} in: {err}");
            }
            other => panic!("expected Error::Verify, got {other}"),
        }
    }

    #[test]
    fn verify_accepts_a_well_formed_cache_and_prints_one_line_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        write_cache(dir.path(), |_, _| {});
        let mut out = Vec::new();
        let report = verify(dir.path(), &mut out).unwrap();
        assert_eq!(
            report,
            VerifyReport {
                shards: 3,
                sequences: 15,
                tokens: 15 * S as u64,
                bytes: report.bytes
            }
        );
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("shards/part-00000.parquet: ok, 5 sequences, 40 tokens"));
        assert_eq!(lines[3], "ok: 3 shards, 15 sequences, 120 tokens");
    }

    #[test]
    fn verify_catches_a_flipped_byte_by_hash_naming_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let m = write_cache(dir.path(), |_, _| {});
        let path = dir.path().join(&m.shards[1].path);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let (err, out) = verify_err(dir.path());
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Cache { .. })
                && msg.contains("part-00001.parquet")
                && msg.contains("content hash xxh3")
                && msg.contains(&m.shards[1].xxh3),
            "{msg}"
        );
        assert_eq!(out.lines().count(), 1, "shard 0 verified before: {out}");
    }

    #[test]
    fn verify_catches_an_id_at_or_above_vocab_naming_shard_row_and_position() {
        let dir = tempfile::tempdir().unwrap();
        // Shard 2, row 3, position 5, top-k slot 2.
        write_cache(dir.path(), |shard, b| {
            if shard == 2 {
                b.topk_ids[(3 * S + 5) * K + 2] = VOCAB;
            }
        });
        let (err, _) = verify_err(dir.path());
        assert_row_error(
            &err,
            2,
            3,
            "position 5: topk_ids[2] = 1000 >= vocab_size 1000",
        );
    }

    #[test]
    fn verify_catches_non_descending_logprobs() {
        let dir = tempfile::tempdir().unwrap();
        // Shard 0, row 4 (in the last row group), position 0: swap slots 0 and 1.
        write_cache(dir.path(), |shard, b| {
            if shard == 0 {
                b.topk_logprobs.swap(4 * S * K, 4 * S * K + 1);
            }
        });
        let (err, _) = verify_err(dir.path());
        assert_row_error(
            &err,
            0,
            4,
            "position 0: topk_logprobs not descending: [0] =",
        );
    }

    #[test]
    fn verify_catches_a_tail_inconsistent_with_the_top_k_mass() {
        let dir = tempfile::tempdir().unwrap();
        // Shard 1, row 1, position 7: claim a tail mass of 0.5 on top of the real one.
        write_cache(dir.path(), |shard, b| {
            if shard == 1 {
                let p = S + 7;
                let t = &mut b.tail_logmass[p];
                *t = (t.exp() + 0.5).ln();
            }
        });
        let (err, _) = verify_err(dir.path());
        assert_row_error(&err, 1, 1, "position 7: top-k mass");
        assert!(err.to_string().contains("not 1 within"), "{err}");
    }

    #[test]
    fn verify_catches_duplicate_ids_and_a_positive_tail() {
        let dir = tempfile::tempdir().unwrap();
        write_cache(dir.path(), |shard, b| {
            if shard == 0 {
                b.topk_ids[(2 * S + 1) * K + 3] = b.topk_ids[(2 * S + 1) * K];
            }
        });
        let (err, _) = verify_err(dir.path());
        assert_row_error(&err, 0, 2, "position 1: topk_ids[3] =");
        assert!(err.to_string().contains("appears twice"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        write_cache(dir.path(), |shard, b| {
            if shard == 2 {
                b.tail_logmass[0] = 0.01;
            }
        });
        let (err, _) = verify_err(dir.path());
        assert_row_error(&err, 2, 0, "position 0: tail_logmass = 0.01");
    }

    #[test]
    fn verify_accepts_every_encoding_and_catches_a_bad_tail_in_each() {
        for encoding in Encoding::ALL {
            let dir = tempfile::tempdir().unwrap();
            write_cache_as(dir.path(), encoding, |_, _| {});
            let mut out = Vec::new();
            let report =
                verify(dir.path(), &mut out).unwrap_or_else(|e| panic!("{encoding:?}: {e}"));
            assert_eq!(report.tokens, 15 * S as u64, "{encoding:?}");

            // A tail of 0.3 on top of the real one is beyond any encoding's rounding.
            let dir = tempfile::tempdir().unwrap();
            write_cache_as(dir.path(), encoding, |shard, b| {
                if shard == 2 {
                    let p = 3 * S + 1;
                    b.tail_logmass[p] = (b.tail_logmass[p].exp() + 0.3).ln();
                }
            });
            let (err, _) = verify_err(dir.path());
            assert_row_error(&err, 2, 3, "position 1: top-k mass");
        }
    }

    #[test]
    fn verify_of_a_compact_cache_wants_ascending_ids() {
        let mut checker = PositionChecker::for_encoding(3, 10, Encoding::Compact);
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

    #[test]
    fn verify_refuses_an_incomplete_cache_saying_how_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = write_cache(dir.path(), |_, _| {});
        m.complete = false;
        m.total_sequences = None;
        m.save_atomic(&dir.path().join(MANIFEST_FILE)).unwrap();
        let (err, out) = verify_err(dir.path());
        let msg = err.to_string();
        assert!(
            msg.contains("incomplete (15 sequences so far in 3 shards")
                && msg.contains("precompute was interrupted")
                && msg.contains("resume"),
            "{msg}"
        );
        assert_eq!(
            out.lines().count(),
            3,
            "the shards present are verified: {out}"
        );
    }

    #[test]
    fn inspect_counts_tokens_and_matches_hand_computed_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let m = write_cache(dir.path(), |_, _| {});
        let s = inspect(dir.path()).unwrap();
        // Recompute over the same batches in memory.
        let (mut n, mut ent, mut mass) = (0u64, 0.0f64, 0.0f64);
        let mut hist = [0u64; TAIL_DECADES + 1];
        for i in 0..3 {
            let b = random_batch(5, S, K, VOCAB, i * 5, 10 + i);
            for p in 0..b.loss_mask.len() {
                if b.loss_mask[p] {
                    n += 1;
                    for l in &b.topk_logprobs[p * K..(p + 1) * K] {
                        let l = f64::from(l.to_f32());
                        mass += l.exp();
                        ent -= l.exp() * l;
                    }
                    let e = f64::from(b.tail_logmass[p]).exp();
                    let bin = (0..TAIL_DECADES)
                        .find(|&d| e >= 10f64.powi(-(d as i32) - 1))
                        .unwrap_or(TAIL_DECADES);
                    hist[bin] += 1;
                }
            }
        }
        assert_eq!(
            (s.sequences, s.tokens, s.loss_tokens, s.shards),
            (15, 120, n, 3)
        );
        assert_eq!(s.bytes_on_disk, m.total_bytes());
        assert_eq!(s.raw_bytes, 120 * (K as u64 * 6 + 9));
        assert!((s.compression_ratio - s.raw_bytes as f64 / s.bytes_on_disk as f64).abs() < 1e-12);
        assert!(
            (s.mean_topk_entropy.unwrap() - ent / n as f64).abs() < 1e-9,
            "{s:?} vs {}",
            ent / n as f64
        );
        assert!((s.mean_topk_mass.unwrap() - mass / n as f64).abs() < 1e-9);
        let found: Vec<u64> = s.tail_mass_histogram.iter().map(|b| b.count).collect();
        assert_eq!(found, hist);
        assert_eq!(found.iter().sum::<u64>(), n);

        let mut json = Vec::new();
        write_summary(&s, true, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["loss_tokens"], n);
        assert_eq!(v["teacher"]["model_type"], "llama");
        let mut table = Vec::new();
        write_summary(&s, false, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("tokens (loss)        120 ("), "{table}");
        assert!(table.contains(">= 1e-1"), "{table}");
    }

    #[test]
    fn tail_decades_bin_by_powers_of_ten() {
        let bin = |mass: f64| tail_decade(mass.ln() as f32);
        assert_eq!(bin(0.5), 0);
        assert_eq!(bin(0.1001), 0);
        assert_eq!(bin(0.099), 1);
        assert_eq!(bin(0.0123), 1);
        assert_eq!(bin(0.00999), 2);
        assert_eq!(bin(2e-8), 7);
        assert_eq!(bin(5e-9), 8);
        assert_eq!(tail_decade(f32::NEG_INFINITY), 8);
        assert_eq!(decade_label(1), "1e-2..1e-1");
        assert_eq!(decade_label(8), "< 1e-8");
    }

    #[test]
    fn inspect_without_manifest_says_to_merge_when_workers_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(WORKER_MANIFESTS_DIR)).unwrap();
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("taidcache merge"), "{err}");
    }
}
