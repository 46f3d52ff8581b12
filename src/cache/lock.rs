//! Who may write a cache at the same time: the lock protocol of `precompute --out` and `merge`.
//!
//! - A single-process run holds `CACHE/.lock` exclusively: nothing else writes the cache.
//! - Worker `I` of `N` holds `CACHE/.lock` shared (so no single-process run starts beside it) and
//!   `CACHE/.lock-worker-I-of-N` exclusively (so worker `I` runs once). Workers of another count
//!   `M` would write the same shards under other manifests: after taking its own locks, a worker
//!   refuses to run while any `.lock-worker-J-of-M` with `M ≠ N` is held. Of two such workers
//!   starting together at least one sees the other (each takes its own lock before it looks).
//! - A merge holds `CACHE/.lock` shared (so it never runs beside a single-process run) and waits
//!   for `CACHE/.lock-merge`, so that workers finishing together merge one after the other.
//!
//! The locks are taken before anything reads the cache's state (resume detection, cleanup of a
//! killed run's leftovers) and held until the run ends. See [`crate::lock`] for the mechanism.

use std::path::Path;

use super::layout::{
    parse_worker_lock_name, refuse_foreign_entries, worker_lock_name, CACHE_LOCK_FILE,
    MERGE_LOCK_FILE,
};
use crate::error::{Error, IoContext, Result};
use crate::lock::{in_use, Access, DirLock, Holder};

/// The flag that names a cache being written, in messages.
const OUT_FLAG: &str = "--out";

/// The locks of a process writing a cache; released when dropped.
#[derive(Debug)]
pub struct CacheLock {
    _locks: Vec<DirLock>,
}

/// Lock `dir` for precompute worker `index` of `count` (`0` of `1`: a single-process run),
/// creating it if needed. Refuses a directory that holds something other than a cache, a
/// regular file in its place, and a cache another process is writing in a conflicting way,
/// naming that process.
pub fn lock_for_writing(dir: &Path, index: usize, count: usize) -> Result<CacheLock> {
    // Before the first lock file is created: a lock file in a user's directory is litter.
    refuse_foreign_entries(dir)?;
    if count <= 1 {
        let what = "taidcache precompute";
        return match DirLock::try_acquire(dir, CACHE_LOCK_FILE, Access::Exclusive, what, OUT_FLAG)?
        {
            Ok(lock) => Ok(CacheLock { _locks: vec![lock] }),
            // Shared holders (workers, merges) do not record themselves in `.lock`: name a
            // worker if one holds its lock, else the exclusive holder `.lock` records.
            Err(recorded) => Err(in_use(
                dir,
                &some_worker_holder(dir)?.unwrap_or(recorded),
                OUT_FLAG,
            )),
        };
    }
    let what = format!("taidcache precompute --worker {index} --workers {count}");
    let shared = DirLock::acquire(dir, CACHE_LOCK_FILE, Access::Shared, &what, OUT_FLAG)?;
    let own = DirLock::acquire(
        dir,
        &worker_lock_name(index, count),
        Access::Exclusive,
        &what,
        OUT_FLAG,
    )?;
    for (name, (_, other)) in worker_locks(dir)? {
        if other == count {
            continue;
        }
        if let Some(holder) = DirLock::holder(&dir.join(name))? {
            return Err(Error::flag(
                OUT_FLAG,
                format!(
                    "{} is in use by {holder}, which splits the cache over --workers {other}, not \
                     {count}; wait for it to finish or choose another {OUT_FLAG}",
                    dir.display()
                ),
            ));
        }
    }
    Ok(CacheLock {
        _locks: vec![shared, own],
    })
}

/// Lock the cache `dir` for a merge: no single-process run beside it, one merge at a time
/// (waiting for the one under way). `dir` must exist.
pub(crate) fn lock_for_merge(dir: &Path) -> Result<CacheLock> {
    let what = "taidcache merge";
    let shared = match DirLock::try_acquire(dir, CACHE_LOCK_FILE, Access::Shared, what, "CACHE")? {
        Ok(lock) => lock,
        Err(holder) => {
            return Err(Error::cache(
                dir,
                format!(
                    "in use by {holder}, which writes it as a single process; there is nothing \
                     to merge before it ends"
                ),
            ))
        }
    };
    let merging = DirLock::wait(dir, MERGE_LOCK_FILE, what)?;
    Ok(CacheLock {
        _locks: vec![shared, merging],
    })
}

/// A worker that holds its lock in `dir`, if any.
fn some_worker_holder(dir: &Path) -> Result<Option<Holder>> {
    for (name, _) in worker_locks(dir)? {
        if let Some(holder) = DirLock::holder(&dir.join(name))? {
            return Ok(Some(holder));
        }
    }
    Ok(None)
}

/// The worker lock files of `dir` with their `(index, count)`, sorted by name.
fn worker_locks(dir: &Path) -> Result<Vec<(String, (usize, usize))>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name();
        if let Some(name) = name.to_str() {
            if let Some(worker) = parse_worker_lock_name(name) {
                found.push((name.to_string(), worker));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_of_one_count_share_a_cache_and_keep_everyone_else_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let w0 = lock_for_writing(&cache, 0, 2).unwrap();
        let w1 = lock_for_writing(&cache, 1, 2).unwrap();
        let pid = std::process::id();
        let in_use_by = |err: String, what: &str| {
            assert!(
                err.starts_with(&format!(
                    "--out: {} is in use by process {pid} ({what})",
                    cache.display()
                )),
                "{err}"
            );
        };
        // The same worker twice.
        let err = lock_for_writing(&cache, 1, 2).unwrap_err().to_string();
        in_use_by(err, "taidcache precompute --worker 1 --workers 2");
        // A single-process run.
        let err = lock_for_writing(&cache, 0, 1).unwrap_err().to_string();
        in_use_by(err, "taidcache precompute --worker 0 --workers 2");
        // Another worker count.
        let err = lock_for_writing(&cache, 2, 3).unwrap_err().to_string();
        assert!(err.contains("--workers 2, not 3"), "{err}");
        in_use_by(err, "taidcache precompute --worker 0 --workers 2");
        // A merge runs beside the workers (each worker merges at its end).
        drop(lock_for_merge(&cache).unwrap());
        drop((w0, w1));

        let single = lock_for_writing(&cache, 0, 1).unwrap();
        let err = lock_for_writing(&cache, 0, 2).unwrap_err().to_string();
        in_use_by(err, "taidcache precompute");
        let err = lock_for_merge(&cache).unwrap_err().to_string();
        assert!(
            err.contains("in use by") && err.contains("single process"),
            "{err}"
        );
        drop(single);
        let names: std::collections::BTreeSet<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                ".lock",
                ".lock-merge",
                ".lock-worker-00000-of-00002",
                ".lock-worker-00001-of-00002",
                ".lock-worker-00002-of-00003",
            ]
            .map(String::from)
            .into(),
            "lock files stay"
        );
        // All released: any layout may start again.
        drop(lock_for_writing(&cache, 2, 3).unwrap());
    }

    #[test]
    fn a_directory_that_is_not_a_cache_gets_no_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let err = lock_for_writing(dir.path(), 0, 1).unwrap_err().to_string();
        assert!(err.contains("notes.txt"), "{err}");
        assert!(!dir.path().join(CACHE_LOCK_FILE).exists());
    }
}
