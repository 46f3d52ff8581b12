//! Advisory locks on output directories: one process at a time writes a cache (per worker) or a
//! run directory.
//!
//! A [`DirLock`] is an OS lock (`flock` on Unix, `LockFileEx` on Windows, through std's
//! [`File::try_lock`]) on a file inside the directory, held until the `DirLock` is dropped (in
//! practice for the life of the process; the OS releases it when the process dies, even on
//! SIGKILL, so a killed run never leaves a stale lock). The holder writes its pid and what it is
//! (`12345 taidcache precompute`) into the file after locking, so that the loser can say who
//! is in the way.
//!
//! Lock files are never deleted: deleting a lock file that another process holds (or is about
//! to hold) would let a third process lock a new file of the same name while the second still
//! holds the old one, which breaks mutual exclusion. They are empty of meaning when no process
//! holds them, and the cache layout and the run directory accept them.
//!
//! The locks are advisory: they keep taidcache processes apart, not other programs.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Prefix of every lock file's name (`.lock`, `.lock-worker-00001-of-00003`, `.lock-merge`).
pub const LOCK_PREFIX: &str = ".lock";

/// Whether `name` is the name of a lock file ([`LOCK_PREFIX`], alone or followed by `-`).
pub fn is_lock_file(name: &str) -> bool {
    name == LOCK_PREFIX
        || name
            .strip_prefix(LOCK_PREFIX)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Exclusive (one holder) or shared (any number of shared holders, no exclusive one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Exclusive,
    Shared,
}

/// A held lock on `DIR/NAME`; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

/// Who holds a lock, as its file records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The holder's process id, if it had written it yet.
    pub pid: Option<u32>,
    /// What the holder is, e.g. `taidcache precompute`.
    pub what: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.what.is_empty()) {
            (Some(pid), false) => write!(f, "process {pid} ({})", self.what),
            (Some(pid), true) => write!(f, "process {pid}"),
            (None, _) => f.write_str("another process"),
        }
    }
}

impl DirLock {
    /// Take the lock `dir/name` without waiting, creating `dir` (and the lock file) if needed.
    /// `what` (e.g. `taidcache precompute`) is recorded with the pid for the loser's message.
    ///
    /// `flag` names the directory in messages (`--out`): a directory held by another process
    /// is an [`Error::Flag`] "DIR is in use by process N (WHAT); wait for it to finish or choose
    /// another FLAG"; a path that exists and is not a directory is refused the same way.
    pub fn acquire(
        dir: &Path,
        name: &str,
        access: Access,
        what: &str,
        flag: &str,
    ) -> Result<DirLock> {
        match Self::try_acquire(dir, name, access, what, flag)? {
            Ok(lock) => Ok(lock),
            Err(holder) => Err(in_use(dir, &holder, flag)),
        }
    }

    /// As [`acquire`](Self::acquire), but a lock held by another process is returned as its
    /// [`Holder`] instead of an error.
    pub fn try_acquire(
        dir: &Path,
        name: &str,
        access: Access,
        what: &str,
        flag: &str,
    ) -> Result<std::result::Result<DirLock, Holder>> {
        let (path, file) = open_lock_file(dir, name, flag)?;
        let locked = match access {
            Access::Exclusive => file.try_lock(),
            Access::Shared => file.try_lock_shared(),
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Err(read_holder(&path))),
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        if access == Access::Exclusive {
            record_holder(&file, what).at(&path)?;
        }
        Ok(Ok(DirLock { path, _file: file }))
    }

    /// Take the lock `dir/name` exclusively, waiting for its holder to let it go (for short
    /// critical sections such as a merge). `dir` must exist.
    pub fn wait(dir: &Path, name: &str, what: &str) -> Result<DirLock> {
        let (path, file) = open_lock_file(dir, name, "")?;
        file.lock().at(&path)?;
        record_holder(&file, what).at(&path)?;
        Ok(DirLock { path, _file: file })
    }

    /// Who holds `path` now, if anyone: takes the lock exclusively for an instant and lets it
    /// go. `None` when nobody holds it (or the file does not exist).
    pub fn holder(path: &Path) -> Result<Option<Holder>> {
        let file = match OpenOptions::new().read(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        match file.try_lock() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => Ok(Some(read_holder(path))),
            Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The "in use" error of `dir`, held by `holder`, named by `flag`.
pub fn in_use(dir: &Path, holder: &Holder, flag: &str) -> Error {
    Error::flag(
        flag,
        format!(
            "{} is in use by {holder}; wait for it to finish or choose another {flag}",
            dir.display()
        ),
    )
}

fn open_lock_file(dir: &Path, name: &str, flag: &str) -> Result<(PathBuf, File)> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            let msg = format!("{} exists and is not a directory", dir.display());
            return Err(if flag.is_empty() {
                Error::io(dir, std::io::Error::other(msg))
            } else {
                Error::flag(flag, format!("{msg}; choose another {flag}"))
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    let path = dir.join(name);
    // Never truncate at open: the file may hold the current holder's pid.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    Ok((path, file))
}

fn record_holder(mut file: &File, what: &str) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{} {what}", std::process::id())?;
    file.flush()
}

fn read_holder(path: &Path) -> Holder {
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    let line = text.lines().next().unwrap_or("").trim();
    let (pid, what) = line.split_once(' ').unwrap_or((line, ""));
    Holder {
        pid: pid.parse().ok(),
        what: what.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_exclusive_lock_names_the_holder_and_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = DirLock::acquire(
            &run,
            ".lock",
            Access::Exclusive,
            "taidcache distill",
            "--out",
        )
        .unwrap();
        assert_eq!(first.path(), run.join(".lock"));
        let err = DirLock::acquire(&run, ".lock", Access::Exclusive, "x", "--out")
            .unwrap_err()
            .to_string();
        let pid = std::process::id();
        assert_eq!(
            err,
            format!(
                "--out: {} is in use by process {pid} (taidcache distill); wait for it to \
                 finish or choose another --out",
                run.display()
            )
        );
        assert_eq!(
            DirLock::holder(&run.join(".lock")).unwrap(),
            Some(Holder {
                pid: Some(pid),
                what: "taidcache distill".into()
            })
        );
        drop(first);
        assert_eq!(DirLock::holder(&run.join(".lock")).unwrap(), None);
        // The lock file stays; the next holder takes it over.
        let again = DirLock::acquire(&run, ".lock", Access::Exclusive, "y", "--out").unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap(),
            format!("{pid} y\n")
        );
    }

    #[test]
    fn shared_locks_coexist_and_keep_an_exclusive_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirLock::acquire(dir.path(), ".lock", Access::Shared, "a", "--out").unwrap();
        let b = DirLock::acquire(dir.path(), ".lock", Access::Shared, "b", "--out").unwrap();
        let err = DirLock::acquire(dir.path(), ".lock", Access::Exclusive, "c", "--out")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is in use by"), "{err}");
        drop((a, b));
        DirLock::acquire(dir.path(), ".lock", Access::Exclusive, "c", "--out").unwrap();
    }

    #[test]
    fn a_regular_file_in_place_of_the_directory_is_named_with_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out");
        std::fs::write(&file, b"mine").unwrap();
        let err = DirLock::acquire(&file, ".lock", Access::Exclusive, "x", "--out")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "--out: {} exists and is not a directory; choose another --out",
                file.display()
            )
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    }

    #[test]
    fn lock_file_names_are_recognized() {
        for name in [".lock", ".lock-merge", ".lock-worker-00001-of-00003"] {
            assert!(is_lock_file(name), "{name}");
        }
        for name in [".locked", "lock", ".lockx", "manifest.json"] {
            assert!(!is_lock_file(name), "{name}");
        }
    }
}
