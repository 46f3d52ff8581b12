//! The threads of the precompute pipeline and the one message type that joins them: the
//! producer (read, tokenize, pack), the teacher, the top-k and the writer.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use candle_core::Tensor;

use super::options::PrecomputeOptions;
use super::teacher::{batch_rows, forward_chunks, queued_chunks, Chunk, Selected};
use crate::cache::{CacheWriter, Manifest, ShardBatch, WrittenShards};
use crate::corpus::{PackedSequence, SequenceStream};
use crate::error::{CandleContext, Error, Result};
use crate::model::{Decoder, FloatType};

/// What flows between the stages: a batch of `T` belonging to shard `shard`, the end of a
/// shard, or the end of the corpus (and how many sequences it packed into). Producer → teacher
/// carries packed sequences, teacher → top-k rows with their logits chunks, top-k → writer
/// finished rows.
pub(super) enum Msg<T> {
    Batch { shard: u64, data: T },
    ShardEnd { shard: u64 },
    End { total_sequences: u64 },
}

/// Read the sequence stream and hand owned, unfinished shards to the teacher in batches that
/// never span two shards.
pub(super) fn produce(
    stream: SequenceStream,
    shard_rows: u64,
    batch_size: usize,
    owned: &dyn Fn(u64) -> bool,
    tx: &SyncSender<Result<Msg<Vec<PackedSequence>>>>,
    bytes_read: &AtomicU64,
) -> Result<()> {
    let hung_up = || Error::Internal("the teacher stage stopped".into());
    let mut batch: Vec<PackedSequence> = Vec::with_capacity(batch_size);
    let mut count = 0u64;
    let mut stream = stream;
    while let Some(seq) = stream.next() {
        let seq = seq?;
        let shard = seq.seq_id / shard_rows;
        count = seq.seq_id + 1;
        bytes_read.store(stream.bytes_read(), Ordering::Relaxed);
        if !owned(shard) {
            continue;
        }
        let last_in_shard = count.is_multiple_of(shard_rows);
        batch.push(seq);
        if batch.len() == batch_size || last_in_shard {
            let seqs = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            tx.send(Ok(Msg::Batch { shard, data: seqs }))
                .map_err(|_| hung_up())?;
        }
        if last_in_shard {
            tx.send(Ok(Msg::ShardEnd { shard }))
                .map_err(|_| hung_up())?;
        }
    }
    // The last shard may be short.
    let last_shard = count.saturating_sub(1) / shard_rows;
    if !count.is_multiple_of(shard_rows) && owned(last_shard) {
        if !batch.is_empty() {
            let seqs = std::mem::take(&mut batch);
            tx.send(Ok(Msg::Batch {
                shard: last_shard,
                data: seqs,
            }))
            .map_err(|_| hung_up())?;
        }
        tx.send(Ok(Msg::ShardEnd { shard: last_shard }))
            .map_err(|_| hung_up())?;
    }
    bytes_read.store(stream.bytes_read(), Ordering::Relaxed);
    tx.send(Ok(Msg::End {
        total_sequences: count,
    }))
    .map_err(|_| hung_up())?;
    Ok(())
}

/// The teacher thread: forward every batch and hand its logits, chunk by chunk, to the top-k
/// thread. Returns the seconds spent per batch (forward, lm_head, and waits for the queue).
pub(super) fn run_teacher(
    teacher: &Decoder,
    opts: &PrecomputeOptions,
    rx: Receiver<Result<Msg<Vec<PackedSequence>>>>,
    tx: SyncSender<Msg<(ShardBatch, Receiver<Chunk>)>>,
    progress: &indicatif::ProgressBar,
    bytes_read: &AtomicU64,
) -> Result<f64> {
    let hung_up = || Error::Internal("the top-k stage stopped".into());
    let mut busy = 0.0;
    let mut tokens = 0u64;
    let started = Instant::now();
    for work in rx {
        match work? {
            Msg::Batch { shard, data: seqs } => {
                let t0 = Instant::now();
                let rows = batch_rows(&seqs, opts.top_k, opts.tail_samples);
                // The chunks of one batch go through their own channel, so the top-k thread
                // takes them in order while this thread computes the next ones.
                let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(queued_chunks(teacher));
                let input = Tensor::from_slice(
                    &rows.input_ids,
                    (seqs.len(), opts.seq_len),
                    teacher.device(),
                )
                .ctx("teacher input")?;
                tx.send(Msg::Batch {
                    shard,
                    data: (rows, chunk_rx),
                })
                .map_err(|_| hung_up())?;
                // Tail draws need the whole row of logits: the top-k then runs on the host.
                let host = opts.tail_samples > 0;
                forward_chunks(teacher, &input, opts.top_k, host, |chunk| {
                    chunk_tx.send(chunk).map_err(|_| hung_up())
                })?;
                busy += t0.elapsed().as_secs_f64();
                tokens += (seqs.len() * opts.seq_len) as u64;
                progress.set_position(bytes_read.load(Ordering::Relaxed));
                progress.set_message(format!(
                    "{} tokens, {:.0} tokens/s",
                    tokens,
                    tokens as f64 / started.elapsed().as_secs_f64()
                ));
            }
            Msg::ShardEnd { shard } => tx.send(Msg::ShardEnd { shard }).map_err(|_| hung_up())?,
            Msg::End { total_sequences } => {
                tx.send(Msg::End { total_sequences })
                    .map_err(|_| hung_up())?;
                return Ok(busy);
            }
        }
    }
    Err(Error::Internal("the producer stage stopped".into()))
}

/// The top-k thread: select the top-k of every chunk of logits into its batch's rows, pass
/// finished batches on to the writer.
pub(super) fn run_topk(
    teacher_path: &Path,
    dtype: FloatType,
    rx: Receiver<Msg<(ShardBatch, Receiver<Chunk>)>>,
    tx: SyncSender<Msg<ShardBatch>>,
) -> Result<()> {
    let hung_up = || Error::Internal("the writer stage stopped".into());
    let pool = topk_pool()?;
    for selection in rx {
        match selection {
            Msg::Batch {
                shard,
                data: (rows, chunks),
            } => {
                let mut batch = Selected::new(rows, teacher_path, dtype, &pool);
                for chunk in chunks {
                    batch.add(chunk)?;
                }
                let rows = batch.finish();
                tx.send(Msg::Batch { shard, data: rows })
                    .map_err(|_| hung_up())?;
            }
            Msg::ShardEnd { shard } => tx.send(Msg::ShardEnd { shard }).map_err(|_| hung_up())?,
            Msg::End { total_sequences } => {
                tx.send(Msg::End { total_sequences })
                    .map_err(|_| hung_up())?;
                return Ok(());
            }
        }
    }
    Err(Error::Internal("the teacher stage stopped".into()))
}

/// The top-k's own threads, one per CPU, at the lowest priority (nice 19, on Linux).
///
/// On a CPU teacher both cores run the forward's matrix products, on rayon's global pool; a
/// top-k on that pool took turns with them, so its time added to the forward's. At the lowest
/// priority it runs in the gaps the forward leaves (its single-threaded parts, the waits
/// between products), and whenever the forward waits for it (the chunk channel is full) it has
/// every core (`benches/precompute.rs` paired, figures in `docs/performance.md`).
fn topk_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("taidcache-topk-{i}"))
        .start_handler(|_| {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority only changes the scheduling weight; with `who` = 0 it is the
            // calling thread's on Linux (a thread is its own scheduling entity). Failure leaves
            // the default priority, which is only slower.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            }
        })
        .build()
        .map_err(|e| Error::Internal(format!("starting the top-k threads: {e}")))
}

/// The writer thread: stream rows into shard files and publish each finished shard. Returns
/// this run's manifest and what it wrote.
pub(super) fn write_shards(
    rx: Receiver<Msg<ShardBatch>>,
    mut cache: CacheWriter,
) -> Result<(Manifest, WrittenShards)> {
    for msg in rx {
        match msg {
            Msg::Batch { shard, data } => cache.write_rows(shard, &data)?,
            Msg::ShardEnd { shard } => cache.finish_shard(shard)?,
            Msg::End { total_sequences } => return cache.finish(total_sequences),
        }
    }
    Err(Error::Internal("the teacher stage stopped".into()))
}
