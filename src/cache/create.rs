//! [`CacheWriter`]: the one way to write a cache — create it for a teacher identity, or resume
//! it after a kill, as one worker of `--workers N`; stream shards into it; publish each shard in
//! the worker's manifest the moment it is durable.
//!
//! A cache directory holds only what [`layout`](super::layout) names. On resume, the existing
//! manifests must describe the same cache (teacher, tokenizer, corpus, packing, top-k, encoding:
//! [`Manifest::identity_matches`]); the shards they list with the recorded size and xxh3 are kept
//! (the others are computed again, and a complete cache with such a shard is not complete), and the
//! leftovers of a killed run — never listed anywhere — are deleted: `manifest.json.tmp` (one
//! process only: with several, another may be writing it) and this worker's own `.tmp` shards
//! (another worker may be writing its own).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::batch::ShardBatch;
use super::layout::{
    parse_worker_file_name, refuse_foreign_entries, shard_file_name, shard_rel_path, tmp_path,
    unfinished_shard_index, worker_manifest_path, MANIFEST_FILE, SHARDS_DIR, WORKER_MANIFESTS_DIR,
};
use super::manifest::{Manifest, ShardEntry};
use super::merge::merge;
use super::validate::{check_listed_file, FileCheck};
use super::writer::{ShardWriter, WriteOptions};
use crate::error::{Error, IoContext, Result};

/// What opening a cache for writing found.
pub enum Resumed {
    /// The cache (or this worker's share of it) is already complete: nothing to do.
    Complete,
    /// Ready to write the shards [`CacheWriter::pending_shards`] says are still to do.
    Open(Box<CacheWriter>),
}

/// Shards and sequences a [`CacheWriter`] wrote in this run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WrittenShards {
    pub shards: usize,
    pub sequences: u64,
}

/// Writes one worker's share of a cache: shard files and the worker's manifest.
pub struct CacheWriter {
    dir: PathBuf,
    manifest_path: PathBuf,
    manifest: Manifest,
    write: WriteOptions,
    /// Shards complete before this run, by index.
    done: Vec<u64>,
    /// Why listed shards are computed again: one sentence each, naming the file.
    redone: Vec<String>,
    open: Option<(u64, ShardWriter)>,
    written: WrittenShards,
}

impl CacheWriter {
    /// Create `dir` as the cache of `identity` (a manifest without shards; its `worker` says
    /// which share this process writes), or resume it. `write` sets how shards are encoded.
    pub fn create_or_resume(
        dir: &Path,
        identity: Manifest,
        write: WriteOptions,
    ) -> Result<Resumed> {
        let (index, count) = identity.worker.map_or((0, 1), |w| (w.index, w.count));
        refuse_foreign_entries(dir)?;
        let shards_dir = dir.join(SHARDS_DIR);
        std::fs::create_dir_all(&shards_dir).at(&shards_dir)?;
        if count > 1 {
            let d = dir.join(WORKER_MANIFESTS_DIR);
            std::fs::create_dir_all(&d).at(&d)?;
        }
        let manifest_path = if count > 1 {
            worker_manifest_path(dir, index, count)
        } else {
            dir.join(MANIFEST_FILE)
        };
        // A merged or single-process manifest must describe the same cache, whoever we are.
        let main_path = dir.join(MANIFEST_FILE);
        let mut done = BTreeMap::new();
        let mut redone = Vec::new();
        let mut paths = vec![main_path.clone()];
        if manifest_path != main_path {
            paths.push(manifest_path.clone());
            // Joining workers must share the identity too, not only at the merge: a worker of
            // another teacher would compute its whole share before the merge refused it.
            let d = dir.join(WORKER_MANIFESTS_DIR);
            for entry in std::fs::read_dir(&d).at(&d)? {
                let path = entry.at(&d)?.path();
                let other = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_worker_file_name)
                    .is_some_and(|(i, n)| n == count && i != index);
                if other {
                    paths.push(path);
                }
            }
        }
        for path in paths {
            if !path.exists() {
                continue;
            }
            let existing = Manifest::load(&path)?;
            if let Some(d) = existing.identity_diff(&identity) {
                return Err(Error::cache(
                    &path,
                    format!(
                        "the cache in {} does not match this run: it was written by {} ({} differs: the cache has {}, this run {}); \
                         a cache holds one teacher, tokenizer, corpus and packing: choose another --out or delete it",
                        dir.display(),
                        d.what(),
                        d.field,
                        d.ours,
                        d.theirs
                    ),
                ));
            }
            let listed_in = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if path != manifest_path {
                // Another process's view: only a complete merged cache matters to us.
                if existing.worker.is_none() && existing.complete {
                    if let Some((entry, e)) = first_bad_shard(dir, &existing.shards, &listed_in) {
                        let owner = entry.index % count as u64;
                        return Err(Error::cache(
                            dir.join(&entry.path),
                            format!(
                                "{}; {MANIFEST_FILE} calls the cache complete: delete {} and re-run \
                                 worker {owner} (`--worker {owner} --workers {count}`) to compute the shard again",
                                error_message(e),
                                path.display()
                            ),
                        ));
                    }
                    return Ok(Resumed::Complete);
                }
                continue;
            }
            // Our own manifest: keep each listed shard whose file is intact, compute the rest
            // again (a complete cache with a lost shard is not complete).
            for s in existing.shards.iter() {
                match check_listed_file(dir, s, &listed_in, FileCheck::Hash) {
                    Ok(()) => {
                        done.insert(s.index, s.clone());
                    }
                    Err(e @ Error::Cache { .. }) => redone.push(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            if existing.complete && redone.is_empty() {
                return Ok(Resumed::Complete);
            }
        }
        let manifest_tmp = tmp_path(&dir.join(MANIFEST_FILE));
        if count == 1 && manifest_tmp.exists() {
            std::fs::remove_file(&manifest_tmp).at(&manifest_tmp)?;
        }
        for entry in std::fs::read_dir(&shards_dir).at(&shards_dir)? {
            let path = entry.at(&shards_dir)?.path();
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(unfinished_shard_index)
                .is_some_and(|i| i % count as u64 == index as u64);
            if ours {
                std::fs::remove_file(&path).at(&path)?;
            }
        }
        let mut manifest = identity;
        manifest.complete = false;
        manifest.shards = done.into_values().collect();
        Ok(Resumed::Open(Box::new(CacheWriter {
            dir: dir.to_path_buf(),
            manifest_path,
            redone,
            done: manifest.shards.iter().map(|s| s.index).collect(),
            manifest,
            write,
            open: None,
            written: WrittenShards::default(),
        })))
    }

    /// Shards found complete from an earlier run.
    pub fn resumed_shards(&self) -> usize {
        self.done.len()
    }

    /// Shards the manifest listed whose file was missing, resized or corrupt, and which this
    /// run computes again: why, one sentence each naming the file.
    pub fn redone_shards(&self) -> &[String] {
        &self.redone
    }

    /// Which shards are this worker's and still to be written, as a test another thread (the
    /// one that packs the corpus) can own.
    pub fn pending_shards(&self) -> impl Fn(u64) -> bool + Send + Sync + 'static {
        let (index, count) = self.manifest.worker.map_or((0, 1), |w| (w.index, w.count));
        let done = self.done.clone();
        move |shard| shard % count as u64 == index as u64 && done.binary_search(&shard).is_err()
    }

    /// This run's manifest (identity and the shards published so far).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest, to record what only the end of a run knows outside the identity (e.g. an
    /// import's counts) before [`CacheWriter::finish`] saves it.
    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    /// Append rows to shard `shard`, starting its file with the first rows.
    pub fn write_rows(&mut self, shard: u64, rows: &ShardBatch) -> Result<()> {
        if self.open.as_ref().map(|(s, _)| *s) != Some(shard) {
            let path = self.dir.join(SHARDS_DIR).join(shard_file_name(shard));
            let w = ShardWriter::create(&path, rows.seq_len, rows.k, &self.write)?;
            self.open = Some((shard, w));
        }
        self.written.sequences += rows.rows() as u64;
        match self.open.as_mut() {
            Some((_, w)) => w.write(rows),
            None => Err(Error::Internal("no shard open".into())),
        }
    }

    /// Make shard `shard` durable under its final name and publish it in the manifest.
    pub fn finish_shard(&mut self, shard: u64) -> Result<()> {
        let Some((s, w)) = self.open.take() else {
            return Err(Error::Internal(format!(
                "shard {shard} ended before it started"
            )));
        };
        if s != shard {
            return Err(Error::Internal(format!(
                "shard {shard} ended while shard {s} was open"
            )));
        }
        let entry = ShardEntry {
            index: shard,
            path: shard_rel_path(shard),
            ..w.finish()?
        };
        let shards = &mut self.manifest.shards;
        shards.retain(|e| e.index != shard);
        shards.push(entry);
        shards.sort_by_key(|e| e.index);
        self.manifest.save_atomic(&self.manifest_path)?;
        self.written.shards += 1;
        Ok(())
    }

    /// Mark this worker's share complete (the corpus packs into `total_sequences`).
    pub fn finish(mut self, total_sequences: u64) -> Result<(Manifest, WrittenShards)> {
        if let Some((shard, _)) = &self.open {
            return Err(Error::Internal(format!("shard {shard} was never finished")));
        }
        self.manifest.total_sequences = Some(total_sequences);
        self.manifest.complete = true;
        self.manifest.save_atomic(&self.manifest_path)?;
        Ok((self.manifest, self.written))
    }
}

/// The first of `shards` whose file is not what `listed_in` records, with the error.
fn first_bad_shard<'a>(
    dir: &Path,
    shards: &'a [ShardEntry],
    listed_in: &str,
) -> Option<(&'a ShardEntry, Error)> {
    shards.iter().find_map(|s| {
        check_listed_file(dir, s, listed_in, FileCheck::Hash)
            .err()
            .map(|e| (s, e))
    })
}

/// An error's sentence without the path it starts with (the caller names the path itself).
fn error_message(e: Error) -> String {
    match e {
        Error::Cache { msg, .. } => msg,
        e => e.to_string(),
    }
}

/// When every one of the `workers` manifests of `dir` is complete, write the combined
/// `manifest.json` and return true; false while some worker is still running.
pub fn merge_when_complete(dir: &Path, workers: usize) -> Result<bool> {
    for i in 0..workers {
        let path = worker_manifest_path(dir, i, workers);
        if !path.exists() || !Manifest::load(&path)?.complete {
            return Ok(false);
        }
    }
    merge(dir)?;
    Ok(true)
}
