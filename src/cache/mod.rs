//! The cache format: what a teacher cache looks like on disk, and nothing else.
//!
//! ```text
//! CACHE/manifest.json                       the combined manifest (format v1)
//! CACHE/shards/part-00000.parquet ...       one Parquet row per packed sequence
//! CACHE/manifests/worker-00001-of-00003.json  partial manifests of `--worker I --workers N` runs
//! ```
//!
//! - [`schema`]: the Arrow schema of a shard and its JSON description (`schemas/v1/`).
//! - [`manifest`]: the manifest, its identity check and atomic save.
//! - [`writer`]: flat row buffers ([`ShardBatch`]) and the atomic shard writer.
//! - [`reader`]: a memory-mapped shard, read one row group at a time.
//! - [`merge`]: worker manifests into one.
//!
//! This layer knows nothing of models, tokenizers or corpora: callers hand it hashes and numbers.

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

/// Version of the on-disk format this build writes and reads (`schemas/v1/`).
pub const FORMAT_VERSION: u32 = 1;

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
