//! The precompute stage: corpus → teacher → top-k → cache.
//!
//! Four threads joined by bounded channels of one message type ([`pipeline`]), so the teacher
//! forward (the expensive part) overlaps tokenization on one side and top-k, encoding,
//! compression and writing on the other:
//!
//! ```text
//! producer: read + tokenize + pack ──Batch──▶ teacher: forward ──logits chunks──▶
//!     top-k ──rows──▶ writer: CacheWriter (shards + manifest)
//! ```
//!
//! - [`options`]: the flags. `plan`: the teacher checked, the cache's identity.
//! - `teacher`: the forward, its logits chunks and their top-k ([`topk`] on the host,
//!   [`device_topk`] on a GPU). `pipeline`: the producer, top-k and writer threads.
//!
//! The top-k thread's queue holds a bounded amount of logits; when it falls behind that far the
//! teacher waits. On a GPU the top-k is taken on the device and only k ids and log-probs per
//! position cross the queue.
//!
//! Sequence `i` of the packed corpus always lands in shard `i / shard_rows`, and a teacher batch
//! never spans two shards, so a resumed run and a run split over `--workers N` compute exactly
//! the batches an uninterrupted single run does. Shard `j` belongs to worker `j % N`.

pub mod device_topk;
pub mod options;
mod pipeline;
mod plan;
pub mod tail_sample;
mod teacher;
pub mod topk;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::cache::create::merge_when_complete;
use crate::cache::{
    default_row_group_rows, schema, CacheWriter, Resumed, WriteOptions, WrittenShards,
};
use crate::corpus::{CorpusOptions, DocumentReader, SequenceStream};
use crate::error::{Error, IoContext, Result};
use crate::model::bf16_products::Kernel;

pub use options::PrecomputeOptions;
pub use teacher::{forward_chunks, Chunk};

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct PrecomputeSummary {
    pub out: PathBuf,
    /// Shards computed by this run.
    pub shards_written: usize,
    /// Shards found complete from an earlier run and skipped.
    pub shards_resumed: usize,
    pub sequences_written: u64,
    pub tokens_written: u64,
    pub total_sequences: u64,
    /// Whether the combined `manifest.json` exists (always for one worker; for several, once all are done).
    pub merged: bool,
    pub elapsed_s: f64,
    /// Seconds the teacher thread spent in the forward passes, waits for a full top-k queue
    /// included (the top-k runs beside it).
    pub teacher_s: f64,
}

/// Run the precompute stage. Progress goes to stderr (a bar, on a terminal); a summary to `out`.
pub fn run(opts: &PrecomputeOptions, out: &mut dyn Write) -> Result<PrecomputeSummary> {
    let started = Instant::now();
    opts.validate()?;
    let device = opts
        .device
        .open()
        .map_err(|msg| Error::flag("--device", msg))?;
    let plan = plan::plan(opts)?;
    let load_dtype = plan::load_dtype(opts.dtype.dtype(), &device);
    let memory = crate::model::memory::MemoryPlan::precompute(
        plan.teacher.config(),
        load_dtype,
        crate::model::memory::ForwardShape {
            batch: opts.batch_size,
            seq_len: opts.seq_len,
        },
        teacher::LOGITS_CHUNK_BYTES,
        teacher::QUEUED_LOGITS_BYTES,
        device.is_cpu(),
    );
    let memory = match plan.teacher.memory_bytes(load_dtype, &device) {
        Some(bytes) => memory.with_teacher_weights(bytes, None),
        None => memory,
    };
    if let Some(line) = plan.teacher.describe(&device) {
        writeln!(out, "{line}").at(&opts.out)?;
    }
    if load_dtype != opts.dtype.dtype() {
        let kernel = Kernel::best();
        let advice = match kernel {
            Kernel::Amx | Kernel::Dpbf16 => "",
            Kernel::Portable => "; --dtype f32 is faster here",
        };
        writeln!(
            out,
            "--dtype bf16 on the CPU: the linear layers multiply bf16 weights with {}{advice}",
            kernel.name()
        )
        .at(&opts.out)?;
    }
    memory.announce(out, &opts.device, &device)?;
    // Held to the end of the run, taken before anything looks at what --out holds.
    let _lock = crate::cache::lock::lock_for_writing(&opts.out, opts.worker, opts.workers)?;
    let write_opts = WriteOptions {
        zstd_level: opts.zstd_level,
        row_group_rows: default_row_group_rows(opts.seq_len, opts.top_k),
        metadata: schema::footer_metadata(&plan.manifest),
        encoding: opts.encoding,
        tail_draws: opts.tail_samples,
    };
    let cache = match CacheWriter::create_or_resume(&opts.out, plan.manifest.clone(), write_opts)? {
        Resumed::Complete => {
            writeln!(
                out,
                "{}: already complete, nothing to do",
                opts.out.display()
            )
            .at(&opts.out)?;
            return Ok(summary(opts, started, WrittenShards::default(), 0, 0.0));
        }
        Resumed::Open(cache) => cache,
    };
    for why in cache.redone_shards() {
        writeln!(out, "{why}; computing it again").at(&opts.out)?;
    }
    let teacher = plan.teacher.load(opts.dtype.dtype(), &device)?;

    let total_bytes: u64 = plan.manifest.corpus.files.iter().map(|f| f.bytes).sum();
    let progress = crate::progress_bar(
        opts.progress,
        total_bytes,
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} corpus, {msg}, ETA {eta}",
    );
    let bytes_read = Arc::new(AtomicU64::new(0));

    let (work_tx, work_rx) = sync_channel(2);
    let (selection_tx, selection_rx) = sync_channel(1);
    let (rows_tx, rows_rx) = sync_channel(2);
    let resumed = cache.resumed_shards();
    let pending = cache.pending_shards();

    let (teacher_s, (manifest, written)) = std::thread::scope(|scope| {
        let producer = {
            let bytes_read = bytes_read.clone();
            let corpus_opts = CorpusOptions {
                text_field: opts.text_field.clone(),
                text_split: opts.text_split,
            };
            let files = plan.files.clone();
            let tokenizer = plan.tokenizer.clone();
            let (seq_len, eos, vocab) = (opts.seq_len, plan.eos_id, teacher.config().vocab_size);
            let (shard_rows, batch) = (opts.shard_rows as u64, opts.batch_size);
            scope.spawn(move || {
                let result = (|| {
                    let reader = DocumentReader::new(&files, &corpus_opts)?;
                    let stream = SequenceStream::new(reader, tokenizer, seq_len, eos, eos, vocab);
                    pipeline::produce(stream, shard_rows, batch, &pending, &work_tx, &bytes_read)
                })();
                if let Err(e) = result {
                    let _ = work_tx.send(Err(e));
                }
            })
        };
        let writer = scope.spawn(move || pipeline::write_shards(rows_rx, *cache));
        let topk = {
            let teacher_path = teacher.config().path.clone();
            let dtype = opts.dtype;
            scope.spawn(move || pipeline::run_topk(&teacher_path, dtype, selection_rx, rows_tx))
        };
        let teacher_result = pipeline::run_teacher(
            &teacher,
            opts,
            work_rx,
            selection_tx,
            &progress,
            &bytes_read,
        );
        let topk_result = topk
            .join()
            .map_err(|_| Error::Internal("the top-k thread panicked".into()))?;
        let writer_result = writer
            .join()
            .map_err(|_| Error::Internal("the writer thread panicked".into()))?;
        producer
            .join()
            .map_err(|_| Error::Internal("the producer thread panicked".into()))?;
        // The root cause wins over "the other side hung up": the first stage, in pipeline
        // order, that failed for a reason of its own.
        match (teacher_result, topk_result, writer_result) {
            (Ok(t), Ok(()), Ok(w)) => Ok((t, w)),
            (t, k, w) => Err([t.err(), k.err(), w.err()]
                .into_iter()
                .flatten()
                .reduce(|first, e| match first {
                    Error::Internal(_) => e,
                    first => first,
                })
                .unwrap_or_else(|| Error::Internal("a stage failed".into()))),
        }
    })?;
    progress.finish_and_clear();

    let merged = if opts.workers > 1 {
        let merged = merge_when_complete(&opts.out, opts.workers)?;
        let msg = if merged {
            format!(
                "all {} workers complete, manifest.json written",
                opts.workers
            )
        } else {
            "waiting for the other workers; `taidcache merge` combines them".to_string()
        };
        writeln!(out, "{}: {msg}", opts.out.display()).at(&opts.out)?;
        merged
    } else {
        true
    };
    let summary = PrecomputeSummary {
        merged,
        total_sequences: manifest.total_sequences.unwrap_or(0),
        ..summary(opts, started, written, resumed, teacher_s)
    };
    writeln!(
        out,
        "{}: wrote {} shards ({} sequences, {} tokens), resumed {} shards, {:.1}s ({:.1}s teacher)",
        opts.out.display(),
        summary.shards_written,
        summary.sequences_written,
        summary.tokens_written,
        summary.shards_resumed,
        summary.elapsed_s,
        summary.teacher_s
    )
    .at(&opts.out)?;
    Ok(summary)
}

fn summary(
    opts: &PrecomputeOptions,
    started: Instant,
    written: WrittenShards,
    shards_resumed: usize,
    teacher_s: f64,
) -> PrecomputeSummary {
    PrecomputeSummary {
        out: opts.out.clone(),
        shards_written: written.shards,
        shards_resumed,
        sequences_written: written.sequences,
        tokens_written: written.sequences * opts.seq_len as u64,
        total_sequences: 0,
        merged: true,
        elapsed_s: started.elapsed().as_secs_f64(),
        teacher_s,
    }
}
