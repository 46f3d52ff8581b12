//! The layout of a cache directory: the names of its files, and the one way a file appears
//! in it (written as `NAME.tmp`, fsynced, renamed, directory fsynced).
//!
//! ```text
//! CACHE/manifest.json                         the combined manifest
//! CACHE/shards/part-00000.parquet ...         one Parquet row per packed sequence
//! CACHE/manifests/worker-00001-of-00003.json  partial manifests of `--worker I --workers N` runs
//! CACHE/.lock                                held by the processes writing the cache
//! CACHE/.lock-worker-00001-of-00003           held by worker 1 of 3 for its whole run
//! CACHE/.lock-merge                           held for the length of a merge
//! ```
//!
//! The lock files ([`super::lock`]) are never deleted, and readers ignore them.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Name of the combined manifest inside a cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Directory of the shards inside a cache directory.
pub const SHARDS_DIR: &str = "shards";

/// Directory of the per-worker partial manifests inside a cache directory.
pub const WORKER_MANIFESTS_DIR: &str = "manifests";

/// Lock of the whole cache: exclusive for a single-process precompute, shared by the workers of
/// a `--workers N` run and by merges.
pub const CACHE_LOCK_FILE: &str = ".lock";

/// Lock held for the length of a merge.
pub const MERGE_LOCK_FILE: &str = ".lock-merge";

/// Lock of worker `index` of `count`: `.lock-worker-00001-of-00003`.
pub fn worker_lock_name(index: usize, count: usize) -> String {
    format!("{CACHE_LOCK_FILE}-worker-{index:05}-of-{count:05}")
}

/// Parse a worker lock file name back into `(index, count)`.
pub(crate) fn parse_worker_lock_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix(CACHE_LOCK_FILE)?.strip_prefix("-")?;
    parse_worker_file_name(&format!("{rest}.json"))
}

/// Whether `name` may appear at the top of a cache directory (a manifest write a kill
/// interrupted leaves `manifest.json.tmp`; lock files stay).
pub fn is_cache_entry(name: &str) -> bool {
    name == MANIFEST_FILE
        || name == SHARDS_DIR
        || name == WORKER_MANIFESTS_DIR
        || name.strip_suffix(".tmp") == Some(MANIFEST_FILE)
        || name == CACHE_LOCK_FILE
        || name == MERGE_LOCK_FILE
        || parse_worker_lock_name(name).is_some()
}

/// Refuse a directory holding anything [`is_cache_entry`] does not name (nothing to do when it
/// does not exist).
pub(crate) fn refuse_foreign_entries(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name();
        let name = name.to_string_lossy();
        if !is_cache_entry(&name) {
            return Err(Error::cache(
                dir,
                format!("holds `{name}`, which is not part of a taidcache cache; choose an empty or new directory"),
            ));
        }
    }
    Ok(())
}

/// File name of shard `index`: `part-00000.parquet` (at least 5 digits, more past 99,999).
pub fn shard_file_name(index: u64) -> String {
    format!("part-{index:05}.parquet")
}

/// Relative path of shard `index` as the manifest records it: `shards/part-00000.parquet`.
pub fn shard_rel_path(index: u64) -> String {
    format!("{SHARDS_DIR}/{}", shard_file_name(index))
}

/// The shard index of an unfinished shard's file name, `part-00042.parquet.tmp` → 42.
pub fn unfinished_shard_index(name: &str) -> Option<u64> {
    name.strip_prefix("part-")?
        .strip_suffix(".parquet.tmp")?
        .parse()
        .ok()
}

/// `CACHE/manifests/worker-00001-of-00003.json` (worker `index` is 0-based).
pub fn worker_manifest_path(cache: &Path, index: usize, count: usize) -> PathBuf {
    cache
        .join(WORKER_MANIFESTS_DIR)
        .join(format!("worker-{index:05}-of-{count:05}.json"))
}

/// Parse a worker manifest file name back into `(index, count)`.
pub(crate) fn parse_worker_file_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("worker-")?.strip_suffix(".json")?;
    let (index, count) = rest.split_once("-of-")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(count) {
        return None;
    }
    Some((index.parse().ok()?, count.parse().ok()?))
}

/// The temporary name a file is written under before its atomic rename: `PATH.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
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

    #[test]
    fn unfinished_shard_names_give_their_index_and_nothing_else_does() {
        assert_eq!(unfinished_shard_index("part-00042.parquet.tmp"), Some(42));
        assert_eq!(
            unfinished_shard_index("part-123456.parquet.tmp"),
            Some(123_456)
        );
        for other in [
            "part-00042.parquet",
            "part-x.parquet.tmp",
            "manifest.json.tmp",
            "",
        ] {
            assert_eq!(unfinished_shard_index(other), None, "{other}");
        }
        for name in [
            "manifest.json",
            "manifest.json.tmp",
            "shards",
            "manifests",
            ".lock",
            ".lock-merge",
            ".lock-worker-00001-of-00003",
        ] {
            assert!(is_cache_entry(name), "{name}");
        }
        for name in ["notes.txt", ".lock-worker-1", ".lock-other", ".merge.lock"] {
            assert!(!is_cache_entry(name), "{name}");
        }
        assert_eq!(worker_lock_name(1, 3), ".lock-worker-00001-of-00003");
        assert_eq!(
            parse_worker_lock_name(".lock-worker-00001-of-00003"),
            Some((1, 3))
        );
    }
}
