//! The distill loader: memory-mapped shards → seeded order → reusable training batches.
//!
//! The unit of work is a row group (or part of one, where the eval split cuts it). Each epoch
//! visits the units in a seeded permutation and the rows of each unit in a seeded permutation;
//! batches are the next `batch_size` rows of that stream. A background thread decodes units
//! straight from the memory map into per-unit buffers and copies rows into `[batch, seq]` /
//! `[batch, seq, k]` batch buffers that the trainer hands back with [`Loader::recycle`], so
//! steady state allocates nothing and memory is bounded by `prefetch` batches plus the units
//! being decoded, whatever the size of the cache.
//!
//! A shard is mapped only while one of its units is decoded: a memory map kept for the whole
//! run would keep every page the run has read resident in the process (after one epoch, the
//! whole cache counts in its RSS), and keep every shard's parsed footer allocated.
//!
//! The position in the stream is a [`Cursor`] (epoch, batches consumed in it): a checkpoint
//! stores it and a resumed run starts exactly where the interrupted one stopped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cache::validate::check_ids;
use crate::cache::{Cache, ShardBatch, ShardReader, Unit};
use crate::error::{Error, Result};
use crate::hash::xxh3_file;

/// Where a loader is in its stream: the epoch and how many batches of it were handed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub batches_in_epoch: u64,
}

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub seed: u64,
    /// Permute units and rows (training); off: sequence order (evaluation).
    pub shuffle: bool,
    /// Batches decoded ahead of the trainer.
    pub prefetch: usize,
    /// Units decoded in parallel by the background thread.
    pub threads: usize,
    /// Drop an epoch's final short batch (training); keep it (evaluation).
    pub drop_last: bool,
    /// Start a new epoch after the last (training); stop (evaluation).
    pub repeat: bool,
    /// Check each shard's xxh3 against the manifest the first time it is read (one extra
    /// sequential pass per shard and run, not per epoch).
    pub verify: bool,
}

impl LoaderOptions {
    pub fn train(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            seed,
            shuffle: true,
            prefetch: 2,
            threads: 1,
            drop_last: true,
            repeat: true,
            verify: true,
        }
    }

    pub fn eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            seed: 0,
            shuffle: false,
            prefetch: 2,
            threads: 1,
            drop_last: false,
            repeat: false,
            verify: true,
        }
    }
}

/// One batch and the cursor just after it.
pub struct Batch {
    pub data: ShardBatch,
    pub cursor: Cursor,
}

pub struct Loader {
    batches: Receiver<Result<Batch>>,
    recycled: SyncSender<ShardBatch>,
    worker: Option<JoinHandle<()>>,
    wait_s: f64,
    rows_per_epoch: usize,
    batch_size: usize,
    drop_last: bool,
    row_groups_decoded: Arc<AtomicU64>,
}

impl Loader {
    /// Start loading `units` of `cache` from `cursor`.
    pub fn new(cache: &Cache, units: &[Unit], opts: LoaderOptions, cursor: Cursor) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(Error::flag("--batch-size", "must be at least 1"));
        }
        let manifest = cache.manifest();
        let paths = check_shards(cache, units)?;
        let rows_per_epoch = units.iter().map(Unit::len).sum();
        let (tx, batches) = std::sync::mpsc::sync_channel(opts.prefetch.max(1));
        let (recycled, pool) = std::sync::mpsc::sync_channel(opts.prefetch.max(1) + 2);
        let decoded = Arc::new(AtomicU64::new(0));
        let producer = Producer {
            shared: Shared {
                hashes: manifest.shards.iter().map(|e| e.xxh3.clone()).collect(),
                verified: (0..manifest.shards.len())
                    .map(|_| std::sync::OnceLock::new())
                    .collect(),
                paths,
                units: units.to_vec(),
                verify: opts.verify,
                vocab: manifest.vocab_size,
                decoded: decoded.clone(),
            },
            opts: opts.clone(),
            pool,
            tx,
        };
        let worker = std::thread::Builder::new()
            .name("taidcache-loader".into())
            .spawn(move || producer.run(cursor))
            .map_err(|e| Error::Internal(format!("cannot start the loader thread: {e}")))?;
        Ok(Self {
            batches,
            recycled,
            worker: Some(worker),
            wait_s: 0.0,
            rows_per_epoch,
            batch_size: opts.batch_size,
            drop_last: opts.drop_last,
            row_groups_decoded: decoded,
        })
    }

    /// The next batch; `None` when a non-repeating loader is done. Time spent blocked here is
    /// counted in [`wait_seconds`](Self::wait_seconds).
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        let t0 = Instant::now();
        let got = self.batches.recv().ok();
        self.wait_s += t0.elapsed().as_secs_f64();
        got
    }

    /// Hand a batch's buffers back for reuse.
    pub fn recycle(&self, data: ShardBatch) {
        let _ = self.recycled.try_send(data);
    }

    /// Seconds the caller spent blocked in [`next_batch`](Self::next_batch).
    pub fn wait_seconds(&self) -> f64 {
        self.wait_s
    }

    pub fn sequences_per_epoch(&self) -> usize {
        self.rows_per_epoch
    }

    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.rows_per_epoch / self.batch_size
        } else {
            self.rows_per_epoch.div_ceil(self.batch_size)
        }
    }

    /// Row groups decoded so far (units skipped on resume are not decoded).
    pub fn row_groups_decoded(&self) -> u64 {
        self.row_groups_decoded.load(Ordering::Relaxed)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the producer: drain what it queued; it exits when its sends fail.
        let (_, dead) = std::sync::mpsc::sync_channel(0);
        let batches = std::mem::replace(&mut self.batches, dead);
        drop(batches);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Open every shard `units` read once, checked against the manifest ([`Cache::open_shard`]),
/// and return its path (by shard index; `None` for the shards no unit reads). The decoder
/// reopens a shard per unit.
fn check_shards(cache: &Cache, units: &[Unit]) -> Result<Vec<Option<PathBuf>>> {
    let mut paths: Vec<Option<PathBuf>> = vec![None; cache.manifest().shards.len()];
    for u in units {
        if u.shard >= paths.len() {
            return Err(Error::Internal(format!(
                "unit names shard {} of {}",
                u.shard,
                paths.len()
            )));
        }
        if paths[u.shard].is_none() {
            paths[u.shard] = Some(cache.open_shard(u.shard)?.path().to_path_buf());
        }
    }
    Ok(paths)
}

/// What decoding threads share: the shards' paths and which were hash-checked.
struct Shared {
    paths: Vec<Option<PathBuf>>,
    units: Vec<Unit>,
    hashes: Vec<String>,
    verified: Vec<std::sync::OnceLock<()>>,
    verify: bool,
    /// Token ids must be below it.
    vocab: usize,
    decoded: Arc<AtomicU64>,
}

struct Producer {
    shared: Shared,
    opts: LoaderOptions,
    pool: Receiver<ShardBatch>,
    tx: SyncSender<Result<Batch>>,
}

/// The order of one epoch: units, and for each unit the order of its rows.
fn epoch_order(units: &[Unit], seed: u64, epoch: u64, shuffle: bool) -> Vec<(usize, Vec<usize>)> {
    let mut order: Vec<usize> = (0..units.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    if shuffle {
        order.shuffle(&mut rng);
    }
    order
        .into_iter()
        .map(|u| {
            let mut rows: Vec<usize> = units[u].rows.clone().collect();
            if shuffle {
                rows.shuffle(&mut rng);
            }
            (u, rows)
        })
        .collect()
}

impl Producer {
    fn run(self, start: Cursor) {
        if let Err(e) = self.stream(start) {
            let _ = self.tx.send(Err(e));
        }
    }

    fn buffer(&self, seq_len: usize, k: usize) -> ShardBatch {
        match self.pool.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                ShardBatch::with_capacity(seq_len, k, self.opts.batch_size)
            }
        }
    }

    /// Produce batches from `start` on; returns when the consumer hangs up or (not repeating)
    /// the epoch ends.
    fn stream(&self, start: Cursor) -> Result<()> {
        let b = self.opts.batch_size;
        let total_rows: usize = self.shared.units.iter().map(Unit::len).sum();
        if total_rows == 0 || (self.opts.drop_last && total_rows < b) {
            return Ok(());
        }
        let mut cursor = start;
        let threads = self.opts.threads.max(1);
        let mut decoded: Vec<ShardBatch> = Vec::new();
        loop {
            let order = epoch_order(
                &self.shared.units,
                self.opts.seed,
                cursor.epoch,
                self.opts.shuffle,
            );
            let batches = if self.opts.drop_last {
                total_rows / b
            } else {
                total_rows.div_ceil(b)
            };
            // Rows already handed out in this epoch (resume): skip whole units without decoding.
            let mut skip = cursor.batches_in_epoch as usize * b;
            let mut first = 0;
            while first < order.len() && skip >= order[first].1.len() {
                skip -= order[first].1.len();
                first += 1;
            }
            let mut batch: Option<ShardBatch> = None;
            let mut handed = cursor.batches_in_epoch as usize;
            let mut i = first;
            while i < order.len() && handed < batches {
                // Decode up to `threads` units at once, then copy their rows in order.
                let group = &order[i..(i + threads).min(order.len())];
                decoded.resize_with(group.len(), || ShardBatch::new(0, 0));
                self.shared.decode(group, &mut decoded)?;
                for ((_, rows), unit_data) in group.iter().zip(&decoded) {
                    for &r in rows.iter().skip(std::mem::take(&mut skip)) {
                        let out = batch
                            .get_or_insert_with(|| self.buffer(unit_data.seq_len, unit_data.k));
                        copy_row(unit_data, r, out);
                        if out.rows() == b {
                            handed += 1;
                            cursor.batches_in_epoch = handed as u64;
                            let data = batch.take().expect("just filled");
                            if self.tx.send(Ok(Batch { data, cursor })).is_err() {
                                return Ok(());
                            }
                            if handed == batches {
                                break;
                            }
                        }
                    }
                    if handed == batches {
                        break;
                    }
                }
                i += group.len();
            }
            if let Some(data) = batch
                .take()
                .filter(|d| d.rows() > 0 && !self.opts.drop_last)
            {
                cursor.batches_in_epoch += 1;
                if self.tx.send(Ok(Batch { data, cursor })).is_err() {
                    return Ok(());
                }
            }
            if !self.opts.repeat {
                return Ok(());
            }
            cursor = Cursor {
                epoch: cursor.epoch + 1,
                batches_in_epoch: 0,
            };
        }
    }
}

impl Shared {
    fn decode(&self, group: &[(usize, Vec<usize>)], out: &mut [ShardBatch]) -> Result<()> {
        let one = |u: usize, buf: &mut ShardBatch| -> Result<()> {
            let unit = &self.units[u];
            let path = self.paths[unit.shard]
                .as_ref()
                .ok_or_else(|| Error::Internal("unit without shard".into()))?;
            if self.verify && self.verified[unit.shard].get().is_none() {
                let found = xxh3_file(path)?;
                if found != self.hashes[unit.shard] {
                    return Err(Error::cache(
                        path,
                        format!("content hash {found} differs from the manifest's {}: the shard is corrupt", self.hashes[unit.shard]),
                    ));
                }
                let _ = self.verified[unit.shard].set(());
            }
            // Mapped for this unit only: dropping the reader unmaps the pages it read.
            ShardReader::open(path)?.read_row_group_into(unit.row_group, buf)?;
            // An id beyond the vocabulary would index past the logits: refuse the shard.
            check_ids(buf, self.vocab).map_err(|msg| {
                Error::cache(
                    path,
                    format!(
                        "row group {}, {msg} of manifest.json: the shard is corrupt; \
                         run `taidcache verify` on the cache",
                        unit.row_group
                    ),
                )
            })?;
            self.decoded.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        if group.len() == 1 {
            return one(group[0].0, &mut out[0]);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .zip(out.iter_mut())
                .map(|((u, _), buf)| s.spawn(move || one(*u, buf)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Internal("a loader thread panicked".into())))
                })
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    }
}

/// Append row `r` of `src` to `dst`.
fn copy_row(src: &ShardBatch, r: usize, dst: &mut ShardBatch) {
    let (s, k) = (src.seq_len, src.k);
    dst.seq_len = s;
    dst.k = k;
    dst.seq_ids.push(src.seq_ids[r]);
    dst.input_ids
        .extend_from_slice(&src.input_ids[r * s..(r + 1) * s]);
    dst.loss_mask
        .extend_from_slice(&src.loss_mask[r * s..(r + 1) * s]);
    dst.topk_ids
        .extend_from_slice(&src.topk_ids[r * s * k..(r + 1) * s * k]);
    dst.topk_logprobs
        .extend_from_slice(&src.topk_logprobs[r * s * k..(r + 1) * s * k]);
    dst.tail_logmass
        .extend_from_slice(&src.tail_logmass[r * s..(r + 1) * s]);
    let d = src.draws;
    dst.draws = d;
    dst.draw_ids
        .extend_from_slice(&src.draw_ids[r * s * d..(r + 1) * s * d]);
    dst.draw_logprobs
        .extend_from_slice(&src.draw_logprobs[r * s * d..(r + 1) * s * d]);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use std::path::Path;

    use super::*;
    use crate::cache::testutil::{random_batch, sample_manifest};
    use crate::cache::{write_shard_atomic, WriteOptions};

    /// A cache of 3 shards × 10 rows (row groups of 4, 4, 2 rows), seq 16, k 8.
    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample_manifest(3, 10);
        std::fs::create_dir_all(dir.path().join("shards")).unwrap();
        for (i, e) in m.shards.iter_mut().enumerate() {
            let b = random_batch(10, 16, 8, 1000, i as u64 * 10, i as u64);
            let opts = WriteOptions {
                row_group_rows: 4,
                ..Default::default()
            };
            let w = write_shard_atomic(&dir.path().join(&e.path), &b, &opts).unwrap();
            e.bytes = w.bytes;
            e.xxh3 = w.xxh3;
        }
        let c = Cache::new(dir.path(), m).unwrap();
        (dir, c)
    }

    fn seq_ids(loader: &mut Loader, n: usize) -> Vec<Vec<u64>> {
        (0..n)
            .map(|_| {
                let b = loader.next_batch().unwrap().unwrap();
                let ids = b.data.seq_ids.clone();
                loader.recycle(b.data);
                ids
            })
            .collect()
    }

    #[test]
    fn an_epoch_visits_every_training_row_once_in_a_seeded_order() {
        let (_dir, c) = cache();
        let (train, eval) = c.units(0.2).unwrap();
        assert_eq!(train.iter().map(Unit::len).sum::<usize>(), 24);
        assert_eq!(
            eval.iter().map(Unit::len).sum::<usize>(),
            6,
            "ceil(0.2 × 30) rows held out"
        );
        let mut a = Loader::new(&c, &train, LoaderOptions::train(3, 7), Cursor::default()).unwrap();
        assert_eq!(a.batches_per_epoch(), 8);
        let epoch0 = seq_ids(&mut a, 8);
        let seen: BTreeSet<u64> = epoch0.iter().flatten().copied().collect();
        assert_eq!(
            seen,
            (0..24).collect(),
            "every training row once, no eval row"
        );
        let epoch1 = seq_ids(&mut a, 8);
        assert_ne!(epoch0, epoch1, "each epoch has its own order");
        let mut b = Loader::new(&c, &train, LoaderOptions::train(3, 7), Cursor::default()).unwrap();
        assert_eq!(
            seq_ids(&mut b, 16),
            [epoch0.clone(), epoch1].concat(),
            "same seed, same stream"
        );
        let mut c = Loader::new(&c, &train, LoaderOptions::train(3, 8), Cursor::default()).unwrap();
        assert_ne!(seq_ids(&mut c, 8), epoch0, "another seed, another order");
    }

    #[test]
    fn a_loader_started_at_a_cursor_continues_the_same_stream() {
        let (_dir, c) = cache();
        let (train, _) = c.units(0.0).unwrap();
        let mut full =
            Loader::new(&c, &train, LoaderOptions::train(4, 1), Cursor::default()).unwrap();
        let mut cursors = vec![];
        let mut stream = vec![];
        for _ in 0..17 {
            let b = full.next_batch().unwrap().unwrap();
            cursors.push(b.cursor);
            stream.push(b.data.seq_ids.clone());
        }
        assert_eq!(
            cursors[6],
            Cursor {
                epoch: 0,
                batches_in_epoch: 7
            }
        );
        assert_eq!(
            cursors[7],
            Cursor {
                epoch: 1,
                batches_in_epoch: 1
            },
            "30 rows / 4 = 7 batches, the rest dropped"
        );
        for at in [3usize, 7, 9] {
            let mut resumed =
                Loader::new(&c, &train, LoaderOptions::train(4, 1), cursors[at - 1]).unwrap();
            assert_eq!(
                seq_ids(&mut resumed, 17 - at),
                stream[at..].to_vec(),
                "resumed after batch {at}"
            );
        }
    }

    #[test]
    fn batches_hold_the_rows_as_stored() {
        let (_dir, c) = cache();
        let (train, _) = c.units(0.0).unwrap();
        let mut l = Loader::new(&c, &train, LoaderOptions::eval(7), Cursor::default()).unwrap();
        let mut rows = 0;
        while let Some(b) = l.next_batch() {
            let b = b.unwrap();
            for (r, &id) in b.data.seq_ids.iter().enumerate() {
                let shard = (id / 10) as usize;
                let want = random_batch(10, 16, 8, 1000, shard as u64 * 10, shard as u64);
                let src = (id % 10) as usize;
                assert_eq!(
                    b.data.input_ids[r * 16..(r + 1) * 16],
                    want.input_ids[src * 16..(src + 1) * 16]
                );
                assert_eq!(
                    b.data.topk_ids[r * 128..(r + 1) * 128],
                    want.topk_ids[src * 128..(src + 1) * 128]
                );
                assert_eq!(
                    b.data.topk_logprobs[r * 128..(r + 1) * 128],
                    want.topk_logprobs[src * 128..(src + 1) * 128]
                );
                assert_eq!(
                    b.data.tail_logmass[r * 16..(r + 1) * 16],
                    want.tail_logmass[src * 16..(src + 1) * 16]
                );
                assert_eq!(
                    b.data.loss_mask[r * 16..(r + 1) * 16],
                    want.loss_mask[src * 16..(src + 1) * 16]
                );
            }
            rows += b.data.rows();
        }
        assert_eq!(
            rows, 30,
            "eval keeps the final short batch and stops after one pass"
        );
        assert_eq!(l.row_groups_decoded(), 9);
    }

    #[test]
    fn a_corrupt_shard_is_named() {
        let (_dir, c) = cache();
        let path = c.shard_path(1);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        let (train, _) = c.units(0.0).unwrap();
        let mut l = Loader::new(&c, &train, LoaderOptions::eval(30), Cursor::default()).unwrap();
        let err = l
            .next_batch()
            .unwrap()
            .err()
            .expect("the corrupt shard fails");
        let msg = err.to_string();
        assert!(
            msg.contains("part-00001.parquet") && msg.contains("corrupt"),
            "{msg}"
        );
    }

    #[test]
    fn incompatible_caches_are_refused_by_field() {
        let m = sample_manifest(1, 1);
        let c = Cache::new(Path::new("c"), m.clone()).unwrap();
        assert!(c.check_student(1000, Some(&m.tokenizer_sha256)).is_ok());
        let small = c.check_student(999, None).unwrap_err().to_string();
        assert!(
            small.contains("vocab_size") && small.contains("999"),
            "{small}"
        );
        let tok = c.check_student(1000, Some("x")).unwrap_err().to_string();
        assert!(tok.contains("tokenizer_sha256"), "{tok}");
        let mut future = m.clone();
        future.format_version = 6;
        assert!(Cache::new(Path::new("c"), future)
            .unwrap_err()
            .to_string()
            .contains("format_version"));
    }
}
