//! The manifest: what a cache was made from (its identity) and which shards it holds.
//!
//! JSON Schema: `schemas/v1/manifest.schema.json`. The identity fields decide whether a re-run may
//! resume a cache and whether worker manifests may be merged ([`Manifest::identity_matches`]).
//! Paths inside are relative to the cache directory and may not leave it.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Write;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::encoding::Encoding;
use super::layout::{commit_tmp, tmp_path};
use crate::error::{Error, IoContext, Result};

/// The largest vocabulary a manifest may claim: token ids are u32, and readers size buffers by
/// the vocabulary, so a corrupt claim must not reach an allocation.
pub const MAX_VOCAB_SIZE: usize = 1 << 31;

/// The manifest of a cache (`CACHE/manifest.json`) or of one worker's share of it
/// (`CACHE/manifests/worker-I-of-N.json`, with `worker` set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// The taidcache version that wrote the manifest (informational).
    pub taidcache_version: String,
    pub teacher: TeacherInfo,
    /// sha256 of the teacher's `tokenizer.json`.
    pub tokenizer_sha256: String,
    pub corpus: CorpusInfo,
    pub packing: PackingInfo,
    pub top_k: usize,
    pub vocab_size: usize,
    /// Forward dtype of the teacher: `f32`, `bf16` or `f16`.
    pub dtype: String,
    pub temperature: f32,
    /// Encoding of `topk_logprobs`: `f16` in format v1.
    pub value_encoding: String,
    /// Tail draws per position (`precompute --tail-samples N`): present, and above 0, exactly in
    /// formats v4 and v5.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tail_draws: usize,
    /// Set in a worker's partial manifest.
    pub worker: Option<WorkerInfo>,
    /// True once the whole corpus (for a worker: its share) is written.
    pub complete: bool,
    /// Number of packed sequences of the whole corpus, known once it has been fully packed.
    pub total_sequences: Option<u64>,
    /// Sorted by index.
    pub shards: Vec<ShardEntry>,
    /// Set in a cache made by `taidcache import` from a capture made elsewhere: where it came
    /// from and what the import had to reconstruct. Not part of the identity beyond what
    /// `teacher.config_sha256` and `corpus` already hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportInfo>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Where an imported cache came from (`taidcache import`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportInfo {
    /// `distillkit` or `topk-columns`.
    pub source: String,
    /// DistillKit's `logprob_compressor` block the capture was decoded with (null when the
    /// capture holds plain log-probs).
    pub compression: Option<serde_json::Value>,
    /// The teacher's name as given (`--teacher-name`).
    pub teacher: Option<String>,
    /// The tail mass given to positions whose decoded top-k mass is 1 or more.
    pub tail_floor: f64,
    pub documents: u64,
    /// Positions with a teacher target.
    pub positions: u64,
    /// Of those, positions whose tail was floored.
    pub floored_positions: u64,
    /// Positions beyond `packing.seq_len`, dropped.
    pub truncated_positions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherInfo {
    pub model_type: String,
    pub architecture: String,
    pub vocab_size: usize,
    /// sha256 of `config.json`.
    pub config_sha256: String,
    /// safetensors file name -> sha256 of its header (names, dtypes, shapes, offsets).
    pub safetensors_header_sha256: BTreeMap<String, String>,
    /// xxh3-128 of the weights' content (every tensor's name, dtype, shape and bytes, in name
    /// order; `model::weights::MappedWeights::content_xxh3`). Absent in manifests written before
    /// it existed: such a cache can be read, but not resumed or joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_xxh3: Option<String>,
    /// The model directory as given on the command line (informational, not identity).
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusInfo {
    pub files: Vec<CorpusFile>,
    pub text_field: String,
    pub text_split: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusFile {
    /// As given on the command line (informational: workers may mount the corpus elsewhere).
    pub path: String,
    pub format: String,
    pub bytes: u64,
    /// xxh3-128 of the file contents, lower-case hex.
    pub xxh3: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackingInfo {
    pub seq_len: usize,
    pub eos_id: u32,
    pub pad_id: u32,
    pub add_special_tokens: bool,
    pub shard_rows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerInfo {
    /// 0-based.
    pub index: usize,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub index: u64,
    /// Relative to the cache directory, e.g. `shards/part-00003.parquet`.
    pub path: String,
    pub rows: u64,
    /// rows × seq_len.
    pub tokens: u64,
    /// File size.
    pub bytes: u64,
    pub seq_id_start: u64,
    /// Exclusive.
    pub seq_id_end: u64,
    /// xxh3-128 of the file, lower-case hex.
    pub xxh3: String,
}

impl Manifest {
    /// Load and check a manifest: the file exists, parses, has this build's format version and
    /// only shard paths inside the cache directory.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::cache(path, "manifest not found"))
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let json_err = |source| Error::Json {
            path: path.to_path_buf(),
            source,
        };
        // Check the version before the shape, so a future format fails with the version, not
        // with whatever field it renamed.
        let value: serde_json::Value = serde_json::from_str(&text).map_err(json_err)?;
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) => {
                Encoding::of_format_version(v).map_err(|msg| Error::cache(path, msg))?;
            }
            None => {
                return Err(Error::field(
                    path,
                    "format_version",
                    "missing or not an unsigned integer",
                ))
            }
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(json_err)?;
        manifest.check(path)?;
        Ok(manifest)
    }

    /// Structural checks that serde cannot express. Bounds what readers may allocate from the
    /// manifest's claims (the vocabulary), and refuses a shard list that would make a reader
    /// read rows twice.
    fn check(&self, path: &Path) -> Result<()> {
        for (field, vocab) in [
            ("vocab_size", self.vocab_size),
            ("teacher.vocab_size", self.teacher.vocab_size),
        ] {
            if vocab == 0 || vocab > MAX_VOCAB_SIZE {
                return Err(Error::field(
                    path,
                    field,
                    format!(
                        "{vocab} is not a vocabulary size taidcache supports (1 to {MAX_VOCAB_SIZE}, \
                         token ids are u32); the manifest is corrupt"
                    ),
                ));
            }
        }
        let has_draws = Encoding::version_has_draws(self.format_version.into());
        if has_draws != (self.tail_draws > 0) {
            return Err(Error::field(
                path,
                "tail_draws",
                format!(
                    "is {} in a format v{} manifest, which {} tail draws",
                    self.tail_draws,
                    self.format_version,
                    if has_draws { "has" } else { "has no" }
                ),
            ));
        }
        if self.top_k == 0 || self.top_k > self.vocab_size {
            return Err(Error::field(
                path,
                "top_k",
                format!(
                    "{} is not in 1..={} (vocab_size)",
                    self.top_k, self.vocab_size
                ),
            ));
        }
        let mut by_path: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let key = shard.path.trim_start_matches("./");
            if let Some(first) = by_path.insert(key, i) {
                return Err(Error::field(
                    path,
                    format!("shards[{i}].path"),
                    format!(
                        "`{}` is listed twice (also shards[{first}]); each shard file holds its \
                         rows once: the manifest is corrupt",
                        shard.path
                    ),
                ));
            }
        }
        let mut by_seq: Vec<usize> = (0..self.shards.len()).collect();
        by_seq.sort_by_key(|&i| (self.shards[i].seq_id_start, self.shards[i].seq_id_end));
        for pair in by_seq.windows(2) {
            let (a, b) = (&self.shards[pair[0]], &self.shards[pair[1]]);
            if b.seq_id_start < a.seq_id_end {
                return Err(Error::field(
                    path,
                    format!("shards[{}]", pair[1]),
                    format!(
                        "sequences {}..{} overlap shards[{}]'s {}..{}; each sequence is in one \
                         shard: the manifest is corrupt",
                        b.seq_id_start, b.seq_id_end, pair[0], a.seq_id_start, a.seq_id_end
                    ),
                ));
            }
        }
        // Running totals, so that `total_rows`, `total_tokens` and `total_bytes` cannot overflow
        // on a manifest that claims absurd counts.
        let mut totals = [0u64; 3];
        for (i, shard) in self.shards.iter().enumerate() {
            check_relative(&shard.path)
                .map_err(|msg| Error::field(path, format!("shards[{i}].path"), msg))?;
            if shard.seq_id_end < shard.seq_id_start
                || shard.seq_id_end - shard.seq_id_start != shard.rows
            {
                return Err(Error::field(
                    path,
                    format!("shards[{i}]"),
                    format!(
                        "seq ids {}..{} do not hold its {} rows",
                        shard.seq_id_start, shard.seq_id_end, shard.rows
                    ),
                ));
            }
            let tokens = shard.rows.checked_mul(self.packing.seq_len as u64);
            if tokens != Some(shard.tokens) {
                return Err(Error::field(
                    path,
                    format!("shards[{i}].tokens"),
                    format!(
                        "{}, but {} rows of seq_len {} are {}",
                        shard.tokens,
                        shard.rows,
                        self.packing.seq_len,
                        tokens.map_or("more than 2^64".to_string(), |t| t.to_string())
                    ),
                ));
            }
            let counts = [
                ("rows", shard.rows),
                ("tokens", shard.tokens),
                ("bytes", shard.bytes),
            ];
            for (total, (what, n)) in totals.iter_mut().zip(counts) {
                *total = total.checked_add(n).ok_or_else(|| {
                    Error::field(
                        path,
                        format!("shards[{i}].{what}"),
                        format!("{n}: the shards' {what} add up to more than 2^64"),
                    )
                })?;
            }
            if i > 0 && self.shards[i - 1].index >= shard.index {
                return Err(Error::field(
                    path,
                    format!("shards[{i}].index"),
                    format!(
                        "shards must be sorted by strictly increasing index, found {} after {}",
                        shard.index,
                        self.shards[i - 1].index
                    ),
                ));
            }
        }
        if let Some(w) = self.worker {
            if w.count == 0 || w.index >= w.count {
                return Err(Error::field(
                    path,
                    "worker",
                    format!("index {} is not in 0..{}", w.index, w.count),
                ));
            }
        }
        Ok(())
    }

    /// Write `PATH.tmp`, fsync it, rename it over `path`, fsync the directory.
    pub fn save_atomic(&self, path: &Path) -> Result<()> {
        let tmp = tmp_path(path);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        bytes.push(b'\n');
        {
            let mut file = std::fs::File::create(&tmp).at(&tmp)?;
            file.write_all(&bytes).at(&tmp)?;
            file.sync_all().at(&tmp)?;
        }
        commit_tmp(&tmp, path)
    }

    /// Whether `other` describes a cache of the same inputs, so that one may resume or merge
    /// with the other: same teacher (model type, architecture, vocab, config and header hashes,
    /// weights' content hash: a manifest without one matches none that has one), tokenizer, corpus files (format, size, xxh3; not their paths), text field/split, packing,
    /// top-k, vocab, dtype, temperature, value encoding and format version. Informational fields
    /// (`taidcache_version`, `teacher.source`, corpus paths) and progress may differ.
    ///
    /// The error names the first differing field with both values (`self`'s first).
    pub fn identity_matches(&self, other: &Manifest) -> std::result::Result<(), String> {
        match self.identity_diff(other) {
            None => Ok(()),
            Some(d) => Err(format!("{} differs: {} vs {}", d.field, d.ours, d.theirs)),
        }
    }

    /// The first identity field that differs, with both values rendered as JSON-ish text.
    pub(crate) fn identity_diff(&self, other: &Manifest) -> Option<IdentityDiff> {
        let (c, d) = (&self.corpus, &other.corpus);
        let (p, q) = (&self.packing, &other.packing);
        let files = || {
            c.files
                .iter()
                .zip(&d.files)
                .enumerate()
                .find_map(|(i, (f, g))| {
                    same(&format!("corpus.files[{i}].format"), &f.format, &g.format)
                        .or_else(|| same(&format!("corpus.files[{i}].bytes"), &f.bytes, &g.bytes))
                        .or_else(|| same(&format!("corpus.files[{i}].xxh3"), &f.xxh3, &g.xxh3))
                })
        };
        same(
            "format_version",
            &self.format_version,
            &other.format_version,
        )
        .or_else(|| self.teacher_diff(other))
        .or_else(|| same("corpus.files (count)", &c.files.len(), &d.files.len()))
        .or_else(files)
        .or_else(|| same("corpus.text_field", &c.text_field, &d.text_field))
        .or_else(|| same("corpus.text_split", &c.text_split, &d.text_split))
        .or_else(|| same("packing.seq_len", &p.seq_len, &q.seq_len))
        .or_else(|| same("packing.eos_id", &p.eos_id, &q.eos_id))
        .or_else(|| same("packing.pad_id", &p.pad_id, &q.pad_id))
        .or_else(|| {
            same(
                "packing.add_special_tokens",
                &p.add_special_tokens,
                &q.add_special_tokens,
            )
        })
        .or_else(|| same("packing.shard_rows", &p.shard_rows, &q.shard_rows))
        .or_else(|| same("top_k", &self.top_k, &other.top_k))
        .or_else(|| same("tail_draws", &self.tail_draws, &other.tail_draws))
        .or_else(|| same("vocab_size", &self.vocab_size, &other.vocab_size))
        .or_else(|| same("dtype", &self.dtype, &other.dtype))
        // Exact: the same flag value always parses to the same f32.
        .or_else(|| {
            (self.temperature.to_bits() != other.temperature.to_bits()).then(|| IdentityDiff {
                field: "temperature".into(),
                ours: self.temperature.to_string(),
                theirs: other.temperature.to_string(),
            })
        })
        .or_else(|| {
            same(
                "value_encoding",
                &self.value_encoding,
                &other.value_encoding,
            )
        })
    }

    /// The first field of the teacher's identity that differs: model type, architecture, vocab,
    /// config, safetensors headers, weights' content and tokenizer (not `teacher.source`). Two
    /// caches of the same teacher may still differ in corpus, packing or top-k.
    pub(crate) fn teacher_diff(&self, other: &Manifest) -> Option<IdentityDiff> {
        let (t, u) = (&self.teacher, &other.teacher);
        let recorded = |w: &Option<String>| w.clone().unwrap_or_else(|| "none".into());
        same("teacher.model_type", &t.model_type, &u.model_type)
            .or_else(|| same("teacher.architecture", &t.architecture, &u.architecture))
            .or_else(|| same("teacher.vocab_size", &t.vocab_size, &u.vocab_size))
            .or_else(|| same("teacher.config_sha256", &t.config_sha256, &u.config_sha256))
            .or_else(|| {
                same(
                    "teacher.safetensors_header_sha256",
                    &t.safetensors_header_sha256,
                    &u.safetensors_header_sha256,
                )
            })
            .or_else(|| {
                (t.weights_xxh3 != u.weights_xxh3).then(|| IdentityDiff {
                    field: "teacher.weights_xxh3".into(),
                    ours: recorded(&t.weights_xxh3),
                    theirs: recorded(&u.weights_xxh3),
                })
            })
            .or_else(|| {
                same(
                    "tokenizer_sha256",
                    &self.tokenizer_sha256,
                    &other.tokenizer_sha256,
                )
            })
    }

    /// Σ tokens over the shards.
    pub fn total_tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens).sum()
    }

    /// Σ bytes over the shards.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// Σ rows (sequences) over the shards.
    pub fn total_rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }
}

/// The first identity field two manifests disagree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentityDiff {
    pub field: String,
    pub ours: String,
    pub theirs: String,
}

impl IdentityDiff {
    /// What the difference means, in words: "a teacher with other weights", "another corpus".
    pub fn what(&self) -> &'static str {
        let f = self.field.as_str();
        if f == "teacher.weights_xxh3" {
            if self.ours == "none" || self.theirs == "none" {
                "an older taidcache, which did not hash the teacher's weights"
            } else {
                "a teacher with other weights"
            }
        } else if f.starts_with("teacher.") {
            "another teacher"
        } else if f == "tokenizer_sha256" {
            "another tokenizer"
        } else if f.starts_with("corpus.") {
            "another corpus"
        } else if f.starts_with("packing.") {
            "other packing settings"
        } else {
            "other settings"
        }
    }
}

/// `a` and `b` as the value of `field`, when they differ.
fn same<T: PartialEq + std::fmt::Debug>(field: &str, a: &T, b: &T) -> Option<IdentityDiff> {
    (a != b).then(|| IdentityDiff {
        field: field.to_string(),
        ours: format!("{a:?}"),
        theirs: format!("{b:?}"),
    })
}

/// A shard path must be relative and stay inside the cache directory.
fn check_relative(path: &str) -> std::result::Result<(), String> {
    fn refuse(path: &str, why: impl Display) -> std::result::Result<(), String> {
        Err(format!(
            "`{path}` {why}; shard paths are relative to the cache directory and may not leave it"
        ))
    }
    if path.is_empty() {
        return refuse(path, "is empty");
    }
    // Refuse both separators whatever the platform: a manifest moves between machines.
    if path.starts_with('/') || path.starts_with('\\') || path.contains(':') {
        return refuse(path, "is absolute");
    }
    for part in path.split(['/', '\\']) {
        if part == ".." {
            return refuse(path, "contains `..`");
        }
    }
    for c in Path::new(path).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => return refuse(path, "is not a plain relative path"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::layout::{parse_worker_file_name, worker_manifest_path};
    use crate::cache::testutil::sample_manifest;
    use std::path::PathBuf;

    #[test]
    fn manifest_json_round_trip_is_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let mut m = sample_manifest(3, 4);
        m.worker = Some(WorkerInfo { index: 1, count: 3 });
        m.temperature = 0.7;
        m.save_atomic(&path).unwrap();
        assert!(!tmp_path(&path).exists(), "manifest.json.tmp left behind");
        let back = Manifest::load(&path).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.total_tokens(), 3 * 4 * 16);
        assert_eq!(back.total_bytes(), 1000 + 1001 + 1002);
        assert_eq!(back.total_rows(), 12);
        back.identity_matches(&m).unwrap();
    }

    #[test]
    fn manifest_refuses_shard_paths_outside_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        for bad in [
            "../outside.parquet",
            "shards/../../x.parquet",
            "/etc/passwd",
            "\\\\server\\share\\x.parquet",
            "C:\\x.parquet",
            "shards\\..\\..\\x.parquet",
            "",
        ] {
            let mut m = sample_manifest(2, 4);
            m.shards[1].path = bad.into();
            m.save_atomic(&path).unwrap();
            let err = Manifest::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("shards[1].path") && err.contains("may not leave"),
                "path {bad:?}: {err}"
            );
        }
        for good in [
            "shards/part-00001.parquet",
            "./shards/x.parquet",
            "x.parquet",
        ] {
            assert_eq!(check_relative(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn manifest_with_other_format_version_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let mut value = serde_json::to_value(sample_manifest(1, 2)).unwrap();
        value["format_version"] = 6.into();
        // A future version may also change the shape; the version error must come first.
        value["shards"] = serde_json::json!("renamed");
        std::fs::write(&path, value.to_string()).unwrap();
        let err = Manifest::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("cache format version 6, this taidcache reads 1, 2, 3, 4 and 5"),
            "{err}"
        );
    }

    #[test]
    fn manifest_load_errors_name_missing_file_and_bad_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let err = Manifest::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("manifest.json") && err.contains("not found"),
            "{err}"
        );
        std::fs::write(&path, "{\"format_version\": 1,").unwrap();
        let err = Manifest::load(&path).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err}");
        let mut value = serde_json::to_value(sample_manifest(1, 2)).unwrap();
        value["extra"] = 1.into();
        std::fs::write(&path, value.to_string()).unwrap();
        let err = Manifest::load(&path).unwrap_err().to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn identity_mismatch_names_first_differing_field_with_both_values() {
        let a = sample_manifest(2, 4);
        let mut b = a.clone();
        b.teacher.source = "elsewhere".into();
        b.taidcache_version = "9.9.9".into();
        b.corpus.files[0].path = "/mnt/data/train.jsonl".into();
        b.shards.clear();
        b.complete = false;
        assert_eq!(a.identity_matches(&b), Ok(()), "informational fields only");
        b.teacher
            .safetensors_header_sha256
            .insert("model.safetensors".into(), "d".repeat(64));
        let err = a.identity_matches(&b).unwrap_err();
        assert!(
            err.starts_with("teacher.safetensors_header_sha256 differs")
                && err.contains(&"a".repeat(64))
                && err.contains(&"d".repeat(64)),
            "{err}"
        );
        let mut c = a.clone();
        c.temperature = 2.0;
        assert_eq!(
            a.identity_matches(&c),
            Err("temperature differs: 1 vs 2".to_string())
        );
        let mut d = a.clone();
        d.corpus.files[0].xxh3 = "f".repeat(32);
        assert!(a
            .identity_matches(&d)
            .unwrap_err()
            .starts_with("corpus.files[0].xxh3 differs"));
    }

    /// The JSON Schema of every format version lists exactly the fields serde writes, at every
    /// level, all required but the optional ones (absent from manifests of older releases).
    #[test]
    fn manifest_json_schema_lists_exactly_the_serialized_fields() {
        const OPTIONAL: [&str; 2] = ["weights_xxh3", "import"];
        let schemas = [
            (1, include_str!("../../schemas/v1/manifest.schema.json")),
            (2, include_str!("../../schemas/v2/manifest.schema.json")),
            (3, include_str!("../../schemas/v3/manifest.schema.json")),
            (4, include_str!("../../schemas/v4/manifest.schema.json")),
            (5, include_str!("../../schemas/v5/manifest.schema.json")),
        ];
        for (version, text) in schemas {
            let schema: serde_json::Value = serde_json::from_str(text).unwrap();
            let mut m = sample_manifest(1, 2);
            if version >= 4 {
                m.tail_draws = 16;
            }
            m.worker = Some(WorkerInfo { index: 0, count: 1 });
            m.import = Some(ImportInfo {
                source: "distillkit".into(),
                compression: Some(serde_json::json!({ "k": 50 })),
                teacher: None,
                tail_floor: 1e-6,
                documents: 1,
                positions: 2,
                floored_positions: 0,
                truncated_positions: 0,
            });
            let value = serde_json::to_value(&m).unwrap();
            let defs = &schema["$defs"];
            let objects = [
                ("manifest", &schema, &value),
                ("teacher", &defs["teacher"], &value["teacher"]),
                ("corpus", &defs["corpus"], &value["corpus"]),
                (
                    "corpus.files[]",
                    &defs["corpus"]["properties"]["files"]["items"],
                    &value["corpus"]["files"][0],
                ),
                ("packing", &defs["packing"], &value["packing"]),
                ("worker", &defs["worker"], &value["worker"]),
                ("shard", &defs["shard"], &value["shards"][0]),
                ("import", &defs["import"], &value["import"]),
            ];
            for (name, sch, val) in objects {
                let keys = |v: &serde_json::Value| {
                    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
                    k.sort();
                    k
                };
                let mut required: Vec<String> = sch["required"]
                    .as_array()
                    .unwrap_or_else(|| panic!("v{version} {name}: no `required`"))
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                required.sort();
                assert_eq!(
                    keys(&sch["properties"]),
                    keys(val),
                    "v{version} {name}: schema properties vs serde"
                );
                let mut always = keys(val);
                always.retain(|k| !OPTIONAL.contains(&k.as_str()));
                assert_eq!(
                    required, always,
                    "v{version} {name}: schema `required` vs serde"
                );
                assert_eq!(sch["additionalProperties"], false, "v{version} {name}");
            }
            assert_eq!(schema["properties"]["format_version"]["const"], version);
        }
        let v1: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/v1/manifest.schema.json")).unwrap();
        assert_eq!(
            v1["properties"]["format_version"]["const"],
            crate::cache::FORMAT_VERSION
        );
    }

    #[test]
    fn manifest_without_weights_xxh3_loads_and_matches_no_hashed_teacher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let new = sample_manifest(2, 4);
        let mut value = serde_json::to_value(&new).unwrap();
        value["teacher"]
            .as_object_mut()
            .unwrap()
            .remove("weights_xxh3");
        std::fs::write(&path, value.to_string()).unwrap();
        let old = Manifest::load(&path).unwrap();
        assert_eq!(old.teacher.weights_xxh3, None);
        let d = old.identity_diff(&new).unwrap();
        assert_eq!(d.field, "teacher.weights_xxh3");
        assert_eq!(d.theirs, "d".repeat(32));
        assert!(d.what().contains("older taidcache"), "{}", d.what());
        let mut other = new.clone();
        other.teacher.weights_xxh3 = Some("e".repeat(32));
        let d = new.identity_diff(&other).unwrap();
        assert_eq!(
            (d.field.as_str(), d.what()),
            ("teacher.weights_xxh3", "a teacher with other weights")
        );
        old.save_atomic(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("weights_xxh3"), "None is not written");
    }

    #[test]
    fn tail_draws_must_agree_with_the_format_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        for (version, draws, ok) in [
            (1u32, 0usize, true),
            (4, 16, true),
            (5, 1, true),
            (4, 0, false),
            (1, 16, false),
            (3, 8, false),
        ] {
            let mut m = sample_manifest(1, 2);
            m.format_version = version;
            m.tail_draws = draws;
            std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
            match Manifest::load(&path) {
                Ok(loaded) => {
                    assert!(ok, "v{version} with {draws} draws loaded");
                    assert_eq!(loaded.tail_draws, draws);
                }
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        !ok && e.contains("field `tail_draws`"),
                        "v{version}, {draws}: {e}"
                    );
                }
            }
        }
        // Resuming or merging with another draw count is another cache.
        let a = sample_manifest(1, 2);
        let mut b = a.clone();
        (b.format_version, b.tail_draws) = (4, 16);
        let mut c = b.clone();
        c.tail_draws = 8;
        assert_eq!(
            b.identity_matches(&c),
            Err("tail_draws differs: 16 vs 8".to_string())
        );
        assert!(a
            .identity_matches(&b)
            .unwrap_err()
            .starts_with("format_version"));
    }

    #[test]
    fn manifest_with_an_implausible_vocab_size_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        for (field, vocab) in [("vocab_size", 1u64 << 40), ("teacher.vocab_size", 0)] {
            let mut value = serde_json::to_value(sample_manifest(1, 2)).unwrap();
            match field {
                "vocab_size" => value["vocab_size"] = vocab.into(),
                _ => value["teacher"]["vocab_size"] = vocab.into(),
            }
            std::fs::write(&path, value.to_string()).unwrap();
            let err = Manifest::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "field `{field}`: {vocab} is not a vocabulary size"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn manifest_listing_a_shard_twice_or_overlapping_ranges_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let mut m = sample_manifest(3, 4);
        m.shards[2].path = m.shards[0].path.clone();
        m.save_atomic(&path).unwrap();
        let err = Manifest::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("shards[2].path")
                && err.contains("shards/part-00000.parquet` is listed twice (also shards[0])"),
            "{err}"
        );
        let mut m = sample_manifest(3, 4);
        // Shard 2 claims sequences 2..6, shard 0's 0..4 and shard 1's 4..8.
        (m.shards[2].seq_id_start, m.shards[2].seq_id_end) = (2, 6);
        m.save_atomic(&path).unwrap();
        let err = Manifest::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("`shards[2]`: sequences 2..6 overlap shards[0]'s 0..4"),
            "{err}"
        );
    }

    #[test]
    fn worker_manifest_paths_round_trip_through_their_names() {
        let p = worker_manifest_path(Path::new("/c"), 1, 3);
        assert_eq!(p, PathBuf::from("/c/manifests/worker-00001-of-00003.json"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_worker_file_name(name), Some((1, 3)));
        assert_eq!(parse_worker_file_name("worker-1-of-.json"), None);
        assert_eq!(
            parse_worker_file_name("worker-00001-of-00003.json.tmp"),
            None
        );
    }
}
