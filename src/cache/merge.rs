//! Merge the partial manifests of `--worker I --workers N` runs into `CACHE/manifest.json`.
//!
//! Every worker writes its own shards (disjoint seq-id ranges) and its own manifest
//! `CACHE/manifests/worker-I-of-N.json`. The merge refuses anything that would make a cache
//! lie: a missing or unfinished worker, workers that ran on different inputs, overlapping or
//! missing sequences, a shard file that is absent or of another size.

use std::path::{Path, PathBuf};

use super::layout::{
    parse_worker_file_name, worker_manifest_path, MANIFEST_FILE, WORKER_MANIFESTS_DIR,
};
use super::lock::lock_for_merge;
use super::manifest::{Manifest, ShardEntry, WorkerInfo};
use crate::error::{Error, IoContext, Result};

/// Check the worker manifests of `cache` against each other and write the combined
/// `CACHE/manifest.json` (worker: None, complete: true) atomically; return it.
pub fn merge(cache: &Path) -> Result<Manifest> {
    // Workers that finish at the same moment each merge: one at a time, or the second one's
    // rename of `manifest.json.tmp` finds the first one's already moved.
    // Only a directory with worker manifests is a cache to merge (and gets lock files).
    let _lock = if cache.join(WORKER_MANIFESTS_DIR).is_dir() {
        Some(lock_for_merge(cache)?)
    } else {
        None
    };
    merge_unlocked(cache)
}

fn merge_unlocked(cache: &Path) -> Result<Manifest> {
    let dir = cache.join(WORKER_MANIFESTS_DIR);
    if !dir.exists() {
        // A single-process cache (or one whose workers were merged and cleaned up) is already
        // one manifest: nothing to do when it is complete.
        let main = cache.join(MANIFEST_FILE);
        if main.exists() {
            let m = Manifest::load(&main)?;
            if m.complete {
                return Ok(m);
            }
        }
        return Err(Error::cache(
            &dir,
            "no worker manifests: run `taidcache precompute ... --worker I --workers N` into this cache first",
        ));
    }
    let mut found: Vec<(usize, usize, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir).at(&dir)? {
        let entry = entry.at(&dir)?;
        if let Some((index, count)) = entry.file_name().to_str().and_then(parse_worker_file_name) {
            found.push((index, count, entry.path()));
        }
    }
    found.sort();
    let Some((_, count, first_path)) = found.first().cloned() else {
        return Err(Error::cache(
            &dir,
            "no worker manifests (worker-IIIII-of-NNNNN.json): nothing to merge",
        ));
    };
    if let Some((_, other, path)) = found.iter().find(|(_, c, _)| *c != count) {
        return Err(Error::cache(
            path,
            format!(
                "written for {other} workers, but {} was written for {count}; \
                 remove the manifests of the other run",
                file_name(&first_path)
            ),
        ));
    }
    for index in 0..count {
        if !found.iter().any(|(i, _, _)| *i == index) {
            return Err(Error::cache(
                worker_manifest_path(cache, index, count),
                format!(
                    "worker {index} of {count} has no manifest; run it \
                     (`taidcache precompute ... --worker {index} --workers {count}`) before merging"
                ),
            ));
        }
    }
    if let Some((index, _, path)) = found.iter().find(|(i, _, _)| *i >= count) {
        return Err(Error::cache(
            path,
            format!("worker index {index} is not in 0..{count}"),
        ));
    }

    let mut manifests = Vec::with_capacity(count);
    for (index, count, path) in &found {
        let m = Manifest::load(path)?;
        let expected = WorkerInfo {
            index: *index,
            count: *count,
        };
        if m.worker != Some(expected) {
            let found = match m.worker {
                Some(w) => format!("says worker {} of {}", w.index, w.count),
                None => "is not set (a single-process manifest)".to_string(),
            };
            return Err(Error::field(
                path,
                "worker",
                format!(
                    "{found}, but the file name says worker {index} of {count}; \
                     move the file back or re-run that worker"
                ),
            ));
        }
        if !m.complete {
            return Err(Error::cache(
                path,
                format!(
                    "worker {index} of {count} has not finished (complete = false, {} shards so far); \
                     re-run it with the same command to resume, then merge",
                    m.shards.len()
                ),
            ));
        }
        manifests.push((path.clone(), m));
    }

    let (first_path, first) = &manifests[0];
    for (path, m) in &manifests[1..] {
        if let Some(d) = first.identity_diff(m) {
            let what = d
                .field
                .split(['.', '['])
                .next()
                .unwrap_or(&d.field)
                .to_string();
            return Err(Error::cache(
                path,
                format!(
                    "{what} differs between workers, this worker ran with {} ({} is {} here, {} in {}); \
                     re-run it with the same inputs as the others",
                    d.what(),
                    d.field,
                    d.theirs,
                    d.ours,
                    file_name(first_path)
                ),
            ));
        }
        if m.total_sequences != first.total_sequences {
            let n = |t: Option<u64>| t.map_or("unknown".to_string(), |t| t.to_string());
            return Err(Error::field(
                path,
                "total_sequences",
                format!(
                    "{} here, {} in {}: the workers packed the corpus differently",
                    n(m.total_sequences),
                    n(first.total_sequences),
                    file_name(first_path)
                ),
            ));
        }
    }
    let Some(total) = first.total_sequences else {
        return Err(Error::field(
            first_path,
            "total_sequences",
            "unknown in a complete worker manifest",
        ));
    };

    let mut shards: Vec<(&Path, &ShardEntry)> = manifests
        .iter()
        .flat_map(|(p, m)| m.shards.iter().map(move |s| (p.as_path(), s)))
        .collect();
    shards.sort_by_key(|(_, s)| s.index);
    for pair in shards.windows(2) {
        let ((pa, a), (pb, b)) = (pair[0], pair[1]);
        if a.index == b.index || a.path == b.path {
            return Err(Error::cache(
                pb,
                format!(
                    "shard {} ({}) is also listed by {}",
                    b.index,
                    b.path,
                    file_name(pa)
                ),
            ));
        }
    }
    check_coverage(&shards, total)?;
    for (manifest_path, shard) in &shards {
        let file = cache.join(&shard.path);
        match std::fs::metadata(&file) {
            Ok(meta) if meta.len() == shard.bytes => {}
            Ok(meta) => {
                return Err(Error::cache(
                    &file,
                    format!(
                        "{} bytes on disk, {} records {}",
                        meta.len(),
                        file_name(manifest_path),
                        shard.bytes
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::cache(
                    &file,
                    format!("listed by {} but missing", file_name(manifest_path)),
                ))
            }
            Err(e) => return Err(Error::io(&file, e)),
        }
    }

    let mut combined = first.clone();
    combined.taidcache_version = env!("CARGO_PKG_VERSION").to_string();
    combined.worker = None;
    combined.complete = true;
    combined.shards = shards.into_iter().map(|(_, s)| s.clone()).collect();
    combined.save_atomic(&cache.join(MANIFEST_FILE))?;
    Ok(combined)
}

/// The shards, taken in seq-id order, must cover 0..total exactly once.
fn check_coverage(shards: &[(&Path, &ShardEntry)], total: u64) -> Result<()> {
    let mut by_seq: Vec<_> = shards.to_vec();
    by_seq.sort_by_key(|(_, s)| (s.seq_id_start, s.seq_id_end));
    let mut next = 0u64;
    for (path, s) in by_seq {
        if s.seq_id_start > next {
            return Err(Error::cache(
                path,
                format!(
                    "sequences {next}..{} are in no shard (gap before shard {}, {})",
                    s.seq_id_start, s.index, s.path
                ),
            ));
        }
        if s.seq_id_start < next {
            return Err(Error::cache(
                path,
                format!(
                    "shard {} ({}) holds sequences {}..{}, which overlap sequences before {next}",
                    s.index, s.path, s.seq_id_start, s.seq_id_end
                ),
            ));
        }
        next = s.seq_id_end;
    }
    if next != total {
        let path = shards.last().map(|(p, _)| *p).unwrap_or(Path::new("."));
        return Err(Error::cache(
            path,
            if next < total {
                format!("sequences {next}..{total} are in no shard (total_sequences = {total})")
            } else {
                format!("shards hold sequences up to {next}, beyond total_sequences = {total}")
            },
        ));
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::sample_manifest;
    use crate::cache::{shard_rel_path, SHARDS_DIR};

    /// Three workers over 6 shards of 4 rows (24 sequences), dealt round-robin: shard i belongs
    /// to worker i % 3. Shard files are placeholders of the recorded size.
    fn write_workers(cache: &Path) -> Vec<Manifest> {
        std::fs::create_dir_all(cache.join(SHARDS_DIR)).unwrap();
        std::fs::create_dir_all(cache.join(WORKER_MANIFESTS_DIR)).unwrap();
        let all = sample_manifest(6, 4);
        for s in &all.shards {
            std::fs::write(cache.join(&s.path), vec![0u8; s.bytes as usize]).unwrap();
        }
        (0..3)
            .map(|w| {
                let mut m = all.clone();
                m.worker = Some(WorkerInfo { index: w, count: 3 });
                m.shards.retain(|s| s.index as usize % 3 == w);
                m.save_atomic(&worker_manifest_path(cache, w, 3)).unwrap();
                m
            })
            .collect()
    }

    #[test]
    fn merge_of_three_workers_covers_all_sequences_in_index_order() {
        let dir = tempfile::tempdir().unwrap();
        write_workers(dir.path());
        let m = merge(dir.path()).unwrap();
        assert_eq!(m.worker, None);
        assert!(m.complete);
        assert_eq!(
            m.shards.iter().map(|s| s.index).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!(m.total_rows(), 24);
        assert_eq!(m.total_sequences, Some(24));
        assert_eq!(Manifest::load(&dir.path().join(MANIFEST_FILE)).unwrap(), m);
        assert_eq!(m.shards, sample_manifest(6, 4).shards);
    }

    #[test]
    fn concurrent_merges_of_the_same_workers_all_succeed_with_the_same_manifest() {
        let dir = tempfile::tempdir().unwrap();
        write_workers(dir.path());
        for _ in 0..20 {
            let results: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4).map(|_| s.spawn(|| merge(dir.path()))).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in &results {
                let m = r.as_ref().map_err(|e| e.to_string()).unwrap();
                assert_eq!(m.shards, sample_manifest(6, 4).shards);
            }
        }
        assert!(!dir.path().join("manifest.json.tmp").exists());
    }

    #[test]
    fn merge_refuses_a_worker_with_another_teacher_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut ms = write_workers(dir.path());
        ms[2].teacher.config_sha256 = "e".repeat(64);
        ms[2]
            .save_atomic(&worker_manifest_path(dir.path(), 2, 3))
            .unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("worker-00002-of-00003.json")
                && err.contains("teacher differs between workers")
                && err.contains("teacher.config_sha256")
                && err.contains(&"e".repeat(64))
                && err.contains(&"c".repeat(64)),
            "{err}"
        );
        assert!(!dir.path().join(MANIFEST_FILE).exists());
    }

    #[test]
    fn merge_names_a_misplaced_worker_manifest_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let mut ms = write_workers(dir.path());
        ms[1].worker = None;
        ms[1]
            .save_atomic(&worker_manifest_path(dir.path(), 1, 3))
            .unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("field `worker`: is not set (a single-process manifest), but the file name says worker 1 of 3")
                && !err.contains("Some(")
                && !err.contains("WorkerInfo"),
            "{err}"
        );
    }

    #[test]
    fn merge_refuses_a_gap_naming_the_missing_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let mut ms = write_workers(dir.path());
        // Worker 1 lost shard 4 (sequences 16..20).
        ms[1].shards.retain(|s| s.index != 4);
        ms[1]
            .save_atomic(&worker_manifest_path(dir.path(), 1, 3))
            .unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(err.contains("sequences 16..20 are in no shard"), "{err}");
    }

    #[test]
    fn merge_refuses_missing_unfinished_and_resized_workers() {
        let dir = tempfile::tempdir().unwrap();
        let mut ms = write_workers(dir.path());
        std::fs::remove_file(worker_manifest_path(dir.path(), 1, 3)).unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(err.contains("worker 1 of 3 has no manifest"), "{err}");

        ms[1].complete = false;
        ms[1]
            .save_atomic(&worker_manifest_path(dir.path(), 1, 3))
            .unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(err.contains("worker 1 of 3 has not finished"), "{err}");

        ms[1].complete = true;
        ms[1]
            .save_atomic(&worker_manifest_path(dir.path(), 1, 3))
            .unwrap();
        std::fs::write(dir.path().join(shard_rel_path(4)), b"short").unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("part-00004.parquet")
                && err.contains("5 bytes on disk")
                && err.contains("records 1004"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join(shard_rel_path(4))).unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("part-00004.parquet") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn merge_refuses_overlapping_shards() {
        let dir = tempfile::tempdir().unwrap();
        let mut ms = write_workers(dir.path());
        let s = &mut ms[0].shards[1]; // shard 3, sequences 12..16
        s.seq_id_start = 10;
        s.seq_id_end = 14;
        ms[0]
            .save_atomic(&worker_manifest_path(dir.path(), 0, 3))
            .unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");
    }
}
