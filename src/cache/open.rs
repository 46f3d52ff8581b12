//! [`Cache`]: the one way to read a cache — its manifest checked once, its encoding, its shards
//! opened and checked against the manifest, and its rows as units of work.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::encoding::Encoding;
use super::layout::{MANIFEST_FILE, WORKER_MANIFESTS_DIR};
use super::manifest::Manifest;
use super::reader::ShardReader;
use super::validate::{check_listed_file, FileCheck};
use crate::error::{Error, Result};

/// An open cache directory: `manifest.json` loaded and checked (format version, paths).
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    manifest_path: PathBuf,
    manifest: Manifest,
    encoding: Encoding,
}

/// Rows `rows` of row group `row_group` of shard `shard` (an index into `Manifest::shards`):
/// the unit of work of the distill loader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub shard: usize,
    pub row_group: usize,
    pub rows: Range<usize>,
}

impl Unit {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl Cache {
    /// Open `dir/manifest.json`, saying what to do when it is missing (merge the workers, or
    /// wait for the first shard).
    pub fn open(dir: &Path) -> Result<Cache> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.exists() {
            let hint = if dir.join(WORKER_MANIFESTS_DIR).is_dir() {
                "it holds worker manifests: run `taidcache merge` once every worker has finished"
            } else {
                "not a taidcache cache (or precompute has not written its first shard yet)"
            };
            return Err(Error::cache(
                &manifest_path,
                format!("manifest not found; {hint}"),
            ));
        }
        Self::new(dir, Manifest::load(&manifest_path)?)
    }

    /// The cache in `dir` described by `manifest` (already loaded, or made in memory); refuses a
    /// format version this build does not read.
    pub fn new(dir: &Path, manifest: Manifest) -> Result<Cache> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let encoding = Encoding::of_format_version(manifest.format_version.into())
            .map_err(|msg| Error::field(&manifest_path, "format_version", msg))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            manifest_path,
            manifest,
            encoding,
        })
    }

    /// [`open`](Self::open) a cache that precompute has finished: training on a part of a
    /// corpus would be silently wrong.
    pub fn open_complete(dir: &Path) -> Result<Cache> {
        let cache = Self::open(dir)?;
        if !cache.manifest.complete {
            return Err(Error::cache(
                &cache.manifest_path,
                "the cache is incomplete (precompute was interrupted); re-run the same precompute command to finish it",
            ));
        }
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The encoding of the cache's format version.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The path of shard `i` (an index into `Manifest::shards`).
    pub fn shard_path(&self, i: usize) -> PathBuf {
        self.dir.join(&self.manifest.shards[i].path)
    }

    /// Open shard `i` and check that it holds what the manifest says: the file's size, its
    /// rows, top-k and sequence length (its content hash is the loader's to check, as it reads
    /// the file anyway).
    pub fn open_shard(&self, i: usize) -> Result<ShardReader> {
        let entry = self.manifest.shards.get(i).ok_or_else(|| {
            Error::Internal(format!(
                "shard {i} of a manifest of {}",
                self.manifest.shards.len()
            ))
        })?;
        check_listed_file(&self.dir, entry, MANIFEST_FILE, FileCheck::Size)?;
        let reader = ShardReader::open(&self.dir.join(&entry.path))?;
        let m = &self.manifest;
        let checks = [
            ("rows", reader.num_rows(), entry.rows as usize),
            ("top-k", reader.top_k(), m.top_k),
            ("seq_len", reader.seq_len(), m.packing.seq_len),
        ];
        for (what, found, expected) in checks {
            if found != expected {
                return Err(Error::cache(
                    reader.path(),
                    format!("shard has {what} {found}, manifest.json says {expected}"),
                ));
            }
        }
        Ok(reader)
    }

    /// The cache's rows as units, split into (train, eval): eval is the last
    /// `ceil(eval_fraction × rows)` rows in sequence order (so it never overlaps train, and does
    /// not depend on a seed). Opens (and checks) each shard's footer to count its row groups.
    pub fn units(&self, eval_fraction: f64) -> Result<(Vec<Unit>, Vec<Unit>)> {
        let total = self.manifest.total_rows() as usize;
        let n_eval = if eval_fraction > 0.0 {
            ((eval_fraction * total as f64).ceil() as usize).min(total)
        } else {
            0
        };
        let boundary = total - n_eval;
        let (mut train, mut eval) = (Vec::new(), Vec::new());
        let mut row = 0usize;
        for shard in 0..self.manifest.shards.len() {
            let reader = self.open_shard(shard)?;
            for row_group in 0..reader.num_row_groups() {
                let n = reader.row_group_rows(row_group);
                let (lo, hi) = (row, row + n);
                let cut = boundary.clamp(lo, hi) - lo;
                if cut > 0 {
                    train.push(Unit {
                        shard,
                        row_group,
                        rows: 0..cut,
                    });
                }
                if cut < n {
                    eval.push(Unit {
                        shard,
                        row_group,
                        rows: cut..n,
                    });
                }
                row = hi;
            }
        }
        Ok((train, eval))
    }

    /// Refuse a cache a student cannot learn from: teacher ids beyond the student's
    /// vocabulary, or (when the student has a `tokenizer.json`, given by its sha256) another
    /// tokenizer.
    pub fn check_student(
        &self,
        student_vocab: usize,
        tokenizer_sha256: Option<&str>,
    ) -> Result<()> {
        let m = &self.manifest;
        if m.vocab_size > student_vocab {
            return Err(Error::field(
                &self.manifest_path,
                "vocab_size",
                format!(
                    "the teacher's vocabulary ({}) is larger than the student's ({student_vocab}): its token ids would not fit",
                    m.vocab_size
                ),
            ));
        }
        if let Some(sha) = tokenizer_sha256 {
            if sha != m.tokenizer_sha256 {
                return Err(Error::field(
                    &self.manifest_path,
                    "tokenizer_sha256",
                    "the student's tokenizer.json differs from the teacher's the cache was made with",
                ));
            }
        }
        Ok(())
    }
}
