//! The cache format: what a teacher cache looks like on disk, and nothing else.
//!
//! ```text
//! CACHE/manifest.json                       the combined manifest (format v1)
//! CACHE/shards/part-00000.parquet ...       one Parquet row per packed sequence
//! CACHE/manifests/worker-00001-of-00003.json  partial manifests of `--worker I --workers N` runs
//! ```
//!
//! - [`schema`]: the Arrow schema of a shard and its JSON description (`schemas/v1/` … `v3/`).
//! - [`levels`]: the value encoding of format v3 (ids as gaps, log-probs as 256 levels).
//! - [`manifest`]: the manifest, its identity check and atomic save.
//! - [`writer`]: flat row buffers ([`ShardBatch`]) and the atomic shard writer.
//! - [`reader`]: a memory-mapped shard, read one row group at a time.
//! - [`merge`]: worker manifests into one.
//!
//! This layer knows nothing of models, tokenizers or corpora: callers hand it hashes and numbers.

pub mod levels;
pub mod manifest;
pub mod merge;
pub mod reader;
pub mod schema;
pub mod writer;

#[cfg(test)]
pub(crate) mod testutil;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

pub use manifest::{
    worker_manifest_path, CorpusFile, CorpusInfo, Manifest, PackingInfo, ShardEntry, TeacherInfo,
    WorkerInfo,
};
pub use merge::merge;
pub use reader::ShardReader;
pub use schema::arrow_schema;
pub use writer::{default_row_group_rows, write_shard_atomic, ShardBatch, WriteOptions};

/// Version of the on-disk format of the default (`plain`) encoding (`schemas/v1/`).
pub const FORMAT_VERSION: u32 = 1;

/// Version of the format of the `steps` encoding (`schemas/v2/`, the compact encoding of
/// earlier releases): v1 with the log-probs as 8-bit quantized steps instead of half floats,
/// and the ids byte-stream-split.
pub const FORMAT_VERSION_STEPS: u32 = 2;

/// Version of the format of the `compact` encoding (`schemas/v3/`): each position's top-k
/// sorted by id, the ids as gaps and the log-probs as 8-bit levels ([`levels`]).
pub const FORMAT_VERSION_COMPACT: u32 = 3;

/// Value encoding of `topk_logprob_levels` in format v3: one of the 256 levels of
/// [`levels::table`] per log-prob, listed in the footer.
pub const VALUE_ENCODING_U8_LEVELS: &str = "u8-levels";

/// Value encoding of `topk_logprob_steps` in format v2: unsigned 8-bit steps of
/// [`LOGPROB_STEP`] nats along the descending log-probs.
pub const VALUE_ENCODING_U8_STEPS: &str = "u8-steps";

/// Quantization step of the `steps` encoding (format v2), in nats: log-prob `j` of a position is
/// `−LOGPROB_STEP · Σ_{i≤j} step_i`. Every decoded value is within half a step (plus f16
/// rounding) of the exact one, so the mean KL(exact ‖ decoded) is about `LOGPROB_STEP² / 24`
/// ≈ 6.5e-4 nats at most; the step is written to every shard's footer.
pub const LOGPROB_STEP: f32 = 0.125;

/// How a cache stores its top-k records (`precompute --encoding`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// Format v1: u32 ids, f16 log-probs (about 140 bytes per token at k = 50).
    #[default]
    Plain,
    /// Format v3: per position the top-k sorted by id, ids as gaps, log-probs as u8 levels
    /// uniform in √p (about 100 bytes per token at k = 50 on a 151,936-token vocabulary; mean
    /// KL to the exact top-k below 1e-3).
    Compact,
    /// Format v2, the compact encoding of earlier releases: ids in rank order, log-probs as u8
    /// steps of 0.125 nats.
    Steps,
}

impl Encoding {
    /// Every encoding, for flags and messages.
    pub const ALL: [Encoding; 3] = [Encoding::Plain, Encoding::Compact, Encoding::Steps];

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Plain => "plain",
            Encoding::Compact => "compact",
            Encoding::Steps => "steps",
        }
    }

    /// The format version a cache of this encoding carries.
    pub fn format_version(self) -> u32 {
        match self {
            Encoding::Plain => FORMAT_VERSION,
            Encoding::Compact => FORMAT_VERSION_COMPACT,
            Encoding::Steps => FORMAT_VERSION_STEPS,
        }
    }

    /// The encoding of a format version this build reads.
    pub fn from_format_version(version: u64) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|e| u64::from(e.format_version()) == version)
    }

    /// The manifest's `value_encoding` for this encoding.
    pub fn value_encoding(self) -> &'static str {
        match self {
            Encoding::Plain => VALUE_ENCODING_F16,
            Encoding::Compact => VALUE_ENCODING_U8_LEVELS,
            Encoding::Steps => VALUE_ENCODING_U8_STEPS,
        }
    }
}

/// The format versions this build reads, for messages: `1, 2 and 3`.
pub fn readable_versions() -> String {
    format!("{FORMAT_VERSION}, {FORMAT_VERSION_STEPS} and {FORMAT_VERSION_COMPACT}")
}

/// Name of the combined manifest inside a cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Directory of the shards inside a cache directory.
pub const SHARDS_DIR: &str = "shards";

/// Directory of the per-worker partial manifests inside a cache directory.
pub const WORKER_MANIFESTS_DIR: &str = "manifests";

/// Value encoding of `topk_logprobs` in format v1: IEEE half floats.
pub const VALUE_ENCODING_F16: &str = "f16";

/// File name of shard `index`: `part-00000.parquet` (at least 5 digits, more past 99,999).
pub fn shard_file_name(index: u64) -> String {
    format!("part-{index:05}.parquet")
}

/// Relative path of shard `index` as the manifest records it: `shards/part-00000.parquet`.
pub fn shard_rel_path(index: u64) -> String {
    format!("{SHARDS_DIR}/{}", shard_file_name(index))
}

/// The temporary name a file is written under before its atomic rename: `PATH.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Make a rename inside `dir` durable: fsync the directory itself (a no-op where directories
/// cannot be opened, e.g. Windows).
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
    }
    Ok(())
}

/// Rename `tmp` to `path` and fsync the parent directory, so that after a crash `path` is either
/// absent, the old version, or the complete new one, and never a partial file.
pub(crate) fn commit_tmp(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).at(path)?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_file_names_have_five_digits_and_grow_past_them() {
        assert_eq!(shard_file_name(0), "part-00000.parquet");
        assert_eq!(shard_file_name(42), "part-00042.parquet");
        assert_eq!(shard_file_name(123_456), "part-123456.parquet");
        assert_eq!(shard_rel_path(3), "shards/part-00003.parquet");
        assert_eq!(
            tmp_path(Path::new("a/b/part-00001.parquet")),
            PathBuf::from("a/b/part-00001.parquet.tmp")
        );
    }
}
