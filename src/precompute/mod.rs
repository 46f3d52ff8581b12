//! The precompute stage: corpus → teacher → top-k → cache.
//!
//! Four threads joined by bounded channels, so the teacher forward (the expensive part)
//! overlaps tokenization on one side and top-k, encoding, compression and writing on the other:
//!
//! ```text
//! producer: read + tokenize + pack ──Batch──▶ teacher: forward ──logits chunks──▶
//!     top-k ──Rows──▶ writer: Parquet + manifest
//! ```
//!
//! The top-k thread's queue holds up to [`QUEUED_LOGITS_BYTES`] of logits; when it falls
//! behind that far the teacher waits. On a GPU the top-k is taken on the device and only k ids
//! and log-probs per position cross the queue.
//!
//! Sequence `i` of the packed corpus always lands in shard `i / shard_rows`, and a teacher batch
//! never spans two shards, so a resumed run and a run split over `--workers N` compute exactly
//! the batches an uninterrupted single run does. Shard `j` belongs to worker `j % N`.

pub mod device_topk;
pub mod topk;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use crate::cache::manifest::{
    worker_manifest_path, CorpusFile, CorpusInfo, Manifest, PackingInfo, ShardEntry, TeacherInfo,
    WorkerInfo,
};
use crate::cache::writer::{default_row_group_rows, ShardBatch, ShardWriter, WriteOptions};
use crate::cache::{
    schema, shard_file_name, shard_rel_path, Encoding, MANIFEST_FILE, SHARDS_DIR,
    WORKER_MANIFESTS_DIR,
};
use crate::corpus::{
    self, CorpusOptions, DocumentReader, PackedSequence, SequenceStream, TextSplit,
};
use crate::error::{CandleContext, Error, IoContext, Result};
use crate::hash::sha256_file;
use crate::model::{weights, Decoder, Mode, ModelDir};

/// Defaults of the precompute options, referenced by the CLI help and the config loader.
pub mod defaults {
    pub const TOP_K: usize = 50;
    pub const SEQ_LEN: usize = 2048;
    pub const BATCH_SIZE: usize = 8;
    pub const DTYPE: &str = "f32";
    pub const DEVICE: &str = "cpu";
    pub const TEXT_FIELD: &str = "text";
    pub const SHARD_ROWS: usize = 256;
    pub const ZSTD_LEVEL: i32 = 3;
}

/// Logits are materialized in chunks of at most this many bytes (`[rows, vocab]` f32): below
/// the 32 MiB that [`crate::keep_freed_memory`] keeps in the heap, so a chunk reuses the
/// memory of the one before instead of faulting in fresh pages (1.07 M page faults and 3.3 s
/// of system time in 8 s of the precompute bench at 128 MiB, 68 K and 0.8 s at 24 MiB).
const LOGITS_CHUNK_BYTES: usize = 24 << 20;
/// Logits chunks that may wait for the top-k thread, in bytes: enough to ride out a batch
/// whose top-k falls behind the forward for a while, bounded whatever the batch size.
const QUEUED_LOGITS_BYTES: usize = 256 << 20;

/// Rows per logits chunk of `teacher`.
fn chunk_rows(teacher: &Decoder) -> usize {
    (LOGITS_CHUNK_BYTES / 4 / teacher.config().vocab_size).max(1)
}

/// Capacity of the channel of logits chunks from the teacher to the top-k thread.
fn queued_chunks(teacher: &Decoder) -> usize {
    let chunk_bytes = chunk_rows(teacher) * teacher.config().vocab_size * 4;
    (QUEUED_LOGITS_BYTES / chunk_bytes).max(1)
}

/// Everything `taidcache precompute` needs; the CLI and `--config` files fill it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecomputeOptions {
    /// Hugging Face model directory of the teacher.
    pub teacher: PathBuf,
    /// Corpus files or directories (JSONL, TXT, Parquet).
    pub corpus: Vec<PathBuf>,
    /// Cache directory to create or resume.
    pub out: PathBuf,
    pub top_k: usize,
    pub seq_len: usize,
    pub batch_size: usize,
    /// Forward dtype: f32, bf16 or f16.
    pub dtype: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub text_field: String,
    pub text_split: TextSplit,
    pub shard_rows: usize,
    pub zstd_level: i32,
    /// `plain` (format v1), `compact` (format v3) or `steps` (format v2).
    #[serde(default)]
    pub encoding: Encoding,
    pub worker: usize,
    pub workers: usize,
    /// Draw a progress bar on stderr when it is a terminal.
    #[serde(default = "yes")]
    pub progress: bool,
}

fn yes() -> bool {
    true
}

impl PrecomputeOptions {
    /// Options with every default and the three required paths.
    pub fn new(teacher: impl Into<PathBuf>, corpus: Vec<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            teacher: teacher.into(),
            corpus,
            out: out.into(),
            top_k: defaults::TOP_K,
            seq_len: defaults::SEQ_LEN,
            batch_size: defaults::BATCH_SIZE,
            dtype: defaults::DTYPE.into(),
            device: defaults::DEVICE.into(),
            text_field: defaults::TEXT_FIELD.into(),
            text_split: TextSplit::File,
            shard_rows: defaults::SHARD_ROWS,
            zstd_level: defaults::ZSTD_LEVEL,
            encoding: Encoding::Plain,
            worker: 0,
            workers: 1,
            progress: true,
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("--seq-len", self.seq_len),
            ("--batch-size", self.batch_size),
            ("--shard-rows", self.shard_rows),
            ("--workers", self.workers),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(Error::flag(flag, "must be at least 1"));
            }
        }
        if self.top_k == 0 {
            return Err(Error::flag("--top-k", "must be at least 1"));
        }
        if self.worker >= self.workers {
            return Err(Error::flag(
                "--worker",
                format!(
                    "{} is out of range for --workers {} (workers count from 0)",
                    self.worker, self.workers
                ),
            ));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(Error::flag(
                "--zstd-level",
                format!("{} is not in 1..=22", self.zstd_level),
            ));
        }
        if self.corpus.is_empty() {
            return Err(Error::flag("--corpus", "name at least one corpus file"));
        }
        Ok(())
    }
}

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

/// Parse `--dtype`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(Error::flag(
            "--dtype",
            format!("`{other}` is not one of f32, bf16, f16"),
        )),
    }
}

/// Parse `--device`: `cpu` or `cuda:N` (`cuda` alone is `cuda:0`).
pub fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::flag("--device", format!("`{s}` is not `cpu` or `cuda:N`")))?,
        None => {
            return Err(Error::flag(
                "--device",
                format!("`{s}` is not `cpu` or `cuda:N`"),
            ))
        }
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::flag(
            "--device",
            format!("`{s}` asks for CUDA, but this taidcache was built without the `cuda` feature (rebuild with `--features cuda`)"),
        ));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::flag("--device", format!("`{s}`: no usable CUDA device ({e})")))
}

/// The identity part of a manifest for these options: everything but shards and completion.
struct Plan {
    manifest: Manifest,
    files: Vec<PathBuf>,
    eos_id: u32,
    tokenizer: Arc<tokenizers::Tokenizer>,
    model: ModelDir,
}

fn plan(opts: &PrecomputeOptions) -> Result<Plan> {
    let model = ModelDir::open(&opts.teacher)?;
    let cfg = &model.config;
    if opts.top_k > cfg.vocab_size {
        return Err(Error::flag(
            "--top-k",
            format!(
                "{} exceeds the teacher's vocab_size {}",
                opts.top_k, cfg.vocab_size
            ),
        ));
    }
    if opts.seq_len > cfg.max_position_embeddings {
        return Err(Error::flag(
            "--seq-len",
            format!(
                "{} exceeds the teacher's max_position_embeddings {} ({})",
                opts.seq_len,
                cfg.max_position_embeddings,
                cfg.path.display()
            ),
        ));
    }
    let tok_path = model.tokenizer_path();
    let tokenizer = corpus::load_tokenizer(&tok_path)?;
    let tok_vocab = tokenizer.get_vocab_size(true);
    if tok_vocab > cfg.vocab_size {
        return Err(Error::Tokenizer {
            path: tok_path,
            msg: format!(
                "has {tok_vocab} tokens, more than the model's vocab_size {} in config.json",
                cfg.vocab_size
            ),
        });
    }
    let eos_id = match cfg.eos_token_ids.first() {
        Some(&id) => id,
        None => corpus::find_eos(&tokenizer).ok_or_else(|| {
            Error::field(
                &cfg.path,
                "eos_token_id",
                "missing, and tokenizer.json has no known end-of-text token to join documents with",
            )
        })?,
    };
    let corpus_files = corpus::describe_files(&opts.corpus)?;
    let files = corpus_files
        .iter()
        .map(|f| PathBuf::from(&f.path))
        .collect();
    let manifest = Manifest {
        format_version: opts.encoding.format_version(),
        taidcache_version: env!("CARGO_PKG_VERSION").to_string(),
        teacher: TeacherInfo {
            model_type: cfg.model_type.clone(),
            architecture: cfg.architecture.hf_class().to_string(),
            vocab_size: cfg.vocab_size,
            config_sha256: sha256_file(&cfg.path)?,
            safetensors_header_sha256: weights::header_hashes(&model.files)?,
            source: opts.teacher.display().to_string(),
        },
        tokenizer_sha256: sha256_file(&tok_path)?,
        corpus: CorpusInfo {
            files: corpus_files
                .iter()
                .map(|f| CorpusFile {
                    path: f.path.clone(),
                    format: f.format.clone(),
                    bytes: f.bytes,
                    xxh3: f.xxh3.clone(),
                })
                .collect(),
            text_field: opts.text_field.clone(),
            text_split: serde_json::to_value(opts.text_split)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        },
        packing: PackingInfo {
            seq_len: opts.seq_len,
            eos_id,
            pad_id: eos_id,
            add_special_tokens: false,
            shard_rows: opts.shard_rows,
        },
        top_k: opts.top_k,
        vocab_size: cfg.vocab_size,
        dtype: opts.dtype.clone(),
        temperature: 1.0,
        value_encoding: opts.encoding.value_encoding().to_string(),
        worker: (opts.workers > 1).then_some(WorkerInfo {
            index: opts.worker,
            count: opts.workers,
        }),
        complete: false,
        total_sequences: None,
        shards: Vec::new(),
    };
    Ok(Plan {
        manifest,
        files,
        eos_id,
        tokenizer: Arc::new(tokenizer),
        model,
    })
}

/// Where this run's manifest lives.
fn own_manifest_path(opts: &PrecomputeOptions) -> PathBuf {
    if opts.workers > 1 {
        worker_manifest_path(&opts.out, opts.worker, opts.workers)
    } else {
        opts.out.join(MANIFEST_FILE)
    }
}

/// Check the output directory and pick up what an earlier run finished.
/// Returns the shards already complete, by index.
fn prepare_out(
    opts: &PrecomputeOptions,
    fresh: &Manifest,
) -> Result<Option<BTreeMap<u64, ShardEntry>>> {
    let out = &opts.out;
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::flag(
                "--out",
                format!("{} exists and is not a directory", out.display()),
            ));
        }
        // `manifest.json.tmp`: a manifest write a kill interrupted (the previous manifest.json
        // is still whole); deleted with the other leftovers below.
        let manifest_tmp = format!("{MANIFEST_FILE}.tmp");
        for entry in std::fs::read_dir(out).at(out)? {
            let name = entry.at(out)?.file_name();
            let name = name.to_string_lossy();
            if ![
                MANIFEST_FILE,
                &manifest_tmp,
                SHARDS_DIR,
                WORKER_MANIFESTS_DIR,
            ]
            .contains(&name.as_ref())
            {
                return Err(Error::flag(
                    "--out",
                    format!("{} holds `{name}`, which is not part of a taidcache cache; choose an empty or new directory", out.display()),
                ));
            }
        }
    }
    let shards_dir = out.join(SHARDS_DIR);
    std::fs::create_dir_all(&shards_dir).at(&shards_dir)?;
    if opts.workers > 1 {
        let dir = out.join(WORKER_MANIFESTS_DIR);
        std::fs::create_dir_all(&dir).at(&dir)?;
    }
    // A merged or single-process manifest must describe the same cache, whoever we are.
    let mut done = BTreeMap::new();
    for path in [out.join(MANIFEST_FILE), own_manifest_path(opts)] {
        if !path.exists() {
            continue;
        }
        let existing = Manifest::load(&path)?;
        existing.identity_matches(fresh).map_err(|diff| {
            Error::cache(
                &path,
                format!(
                    "the cache in {} does not match this run ({diff}); a cache holds one teacher, tokenizer, corpus and packing: choose another --out or delete it",
                    out.display()
                ),
            )
        })?;
        if existing.worker.is_none() && existing.complete {
            return Ok(None);
        }
        if path == own_manifest_path(opts) {
            if existing.complete {
                return Ok(None);
            }
            for s in existing.shards {
                let file = out.join(&s.path);
                let ok = std::fs::metadata(&file)
                    .map(|m| m.len() == s.bytes)
                    .unwrap_or(false);
                if ok {
                    done.insert(s.index, s);
                }
            }
        }
    }
    // Leftovers of a killed run: never listed anywhere, safe to delete.
    // (With several workers another process may be writing manifest.json right now: leave it.)
    let manifest_tmp = crate::cache::tmp_path(&out.join(MANIFEST_FILE));
    if opts.workers == 1 && manifest_tmp.exists() {
        std::fs::remove_file(&manifest_tmp).at(&manifest_tmp)?;
    }
    // A shard's `.tmp` is this worker's leftover only if the shard is this worker's: another
    // worker may be writing its own right now.
    let ours = |name: &str| {
        let index = name
            .strip_prefix("part-")
            .and_then(|rest| rest.strip_suffix(".parquet.tmp"))
            .and_then(|digits| digits.parse::<u64>().ok());
        index.is_some_and(|i| i % opts.workers as u64 == opts.worker as u64)
    };
    for entry in std::fs::read_dir(&shards_dir).at(&shards_dir)? {
        let path = entry.at(&shards_dir)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_some_and(ours) {
            std::fs::remove_file(&path).at(&path)?;
        }
    }
    Ok(Some(done))
}

/// Producer → teacher.
enum Work {
    Batch {
        shard: u64,
        seqs: Vec<PackedSequence>,
    },
    ShardEnd {
        shard: u64,
    },
    End {
        total_sequences: u64,
    },
}

/// Teacher → top-k.
enum Selection {
    Batch {
        shard: u64,
        rows: ShardBatch,
        chunks: Receiver<Chunk>,
    },
    ShardEnd {
        shard: u64,
    },
    End {
        total_sequences: u64,
    },
}

/// Top-k → writer.
enum Rows {
    Batch { shard: u64, rows: ShardBatch },
    ShardEnd { shard: u64 },
    End { total_sequences: u64 },
}

/// Run the precompute stage. Progress goes to stderr (a bar, on a terminal); a summary to `out`.
pub fn run(opts: &PrecomputeOptions, out: &mut dyn Write) -> Result<PrecomputeSummary> {
    let started = Instant::now();
    opts.validate()?;
    let dtype = parse_dtype(&opts.dtype)?;
    let device = parse_device(&opts.device)?;
    let plan = plan(opts)?;
    let Some(done) = prepare_out(opts, &plan.manifest)? else {
        writeln!(
            out,
            "{}: already complete, nothing to do",
            opts.out.display()
        )
        .at(&opts.out)?;
        return finish_summary(opts, started, 0, 0, 0, 0.0);
    };
    let teacher = plan.model.load(dtype, &device)?;

    let total_bytes: u64 = plan.manifest.corpus.files.iter().map(|f| f.bytes).sum();
    let progress = progress_bar(opts.progress, total_bytes);
    let bytes_read = Arc::new(AtomicU64::new(0));

    let (work_tx, work_rx) = sync_channel::<Result<Work>>(2);
    let (selection_tx, selection_rx) = sync_channel::<Selection>(1);
    let (rows_tx, rows_rx) = sync_channel::<Rows>(2);
    let resumed = done.len();
    let owned = {
        let done: Vec<u64> = done.keys().copied().collect();
        let (worker, workers) = (opts.worker as u64, opts.workers as u64);
        move |shard: u64| shard % workers == worker && done.binary_search(&shard).is_err()
    };

    let mut manifest = plan.manifest.clone();
    manifest.shards = done.into_values().collect();
    let write_opts = WriteOptions {
        zstd_level: opts.zstd_level,
        row_group_rows: default_row_group_rows(opts.seq_len, opts.top_k),
        metadata: schema::footer_metadata(&manifest),
        encoding: opts.encoding,
    };

    let (teacher_s, written) = std::thread::scope(|scope| -> Result<(f64, (usize, u64))> {
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
                    produce(stream, shard_rows, batch, &owned, &work_tx, &bytes_read)
                })();
                if let Err(e) = result {
                    let _ = work_tx.send(Err(e));
                }
            })
        };
        let writer = {
            let manifest = &mut manifest;
            let (out_dir, path) = (opts.out.clone(), own_manifest_path(opts));
            let write_opts = &write_opts;
            scope.spawn(move || write_shards(rows_rx, manifest, &out_dir, &path, write_opts))
        };
        let topk = {
            let teacher_path = teacher.config().path.clone();
            scope.spawn(move || run_topk(&teacher_path, selection_rx, rows_tx))
        };
        let teacher_result = run_teacher(
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
    let (shards_written, sequences) = written;

    let merged = if opts.workers > 1 {
        try_merge(&opts.out, opts.workers, out)?
    } else {
        true
    };
    let summary = finish_summary(opts, started, shards_written, resumed, sequences, teacher_s)?;
    let summary = PrecomputeSummary {
        merged,
        total_sequences: manifest.total_sequences.unwrap_or(0),
        ..summary
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

fn finish_summary(
    opts: &PrecomputeOptions,
    started: Instant,
    shards_written: usize,
    shards_resumed: usize,
    sequences: u64,
    teacher_s: f64,
) -> Result<PrecomputeSummary> {
    Ok(PrecomputeSummary {
        out: opts.out.clone(),
        shards_written,
        shards_resumed,
        sequences_written: sequences,
        tokens_written: sequences * opts.seq_len as u64,
        total_sequences: 0,
        merged: true,
        elapsed_s: started.elapsed().as_secs_f64(),
        teacher_s,
    })
}

/// When every worker's manifest is complete, write the combined `manifest.json`.
fn try_merge(out_dir: &Path, workers: usize, out: &mut dyn Write) -> Result<bool> {
    for i in 0..workers {
        let path = worker_manifest_path(out_dir, i, workers);
        if !path.exists() || !Manifest::load(&path)?.complete {
            writeln!(
                out,
                "{}: waiting for the other workers; `taidcache merge` combines them",
                out_dir.display()
            )
            .at(out_dir)?;
            return Ok(false);
        }
    }
    crate::cache::merge::merge(out_dir)?;
    writeln!(
        out,
        "{}: all {workers} workers complete, manifest.json written",
        out_dir.display()
    )
    .at(out_dir)?;
    Ok(true)
}

fn progress_bar(enabled: bool, total_bytes: u64) -> indicatif::ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total_bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} corpus, {msg}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Read the sequence stream and hand owned, unfinished shards to the teacher in batches that
/// never span two shards.
fn produce(
    stream: SequenceStream,
    shard_rows: u64,
    batch_size: usize,
    owned: &dyn Fn(u64) -> bool,
    tx: &SyncSender<Result<Work>>,
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
            tx.send(Ok(Work::Batch { shard, seqs }))
                .map_err(|_| hung_up())?;
        }
        if last_in_shard {
            tx.send(Ok(Work::ShardEnd { shard }))
                .map_err(|_| hung_up())?;
        }
    }
    // The last shard may be short.
    let last_shard = count.saturating_sub(1) / shard_rows;
    if !count.is_multiple_of(shard_rows) && owned(last_shard) {
        if !batch.is_empty() {
            let seqs = std::mem::take(&mut batch);
            tx.send(Ok(Work::Batch {
                shard: last_shard,
                seqs,
            }))
            .map_err(|_| hung_up())?;
        }
        tx.send(Ok(Work::ShardEnd { shard: last_shard }))
            .map_err(|_| hung_up())?;
    }
    bytes_read.store(stream.bytes_read(), Ordering::Relaxed);
    tx.send(Ok(Work::End {
        total_sequences: count,
    }))
    .map_err(|_| hung_up())?;
    Ok(())
}

/// The teacher thread: forward every batch and hand its logits, chunk by chunk, to the top-k
/// thread. Returns the seconds spent per batch (forward, lm_head, and waits for the queue).
fn run_teacher(
    teacher: &Decoder,
    opts: &PrecomputeOptions,
    rx: Receiver<Result<Work>>,
    tx: SyncSender<Selection>,
    progress: &indicatif::ProgressBar,
    bytes_read: &AtomicU64,
) -> Result<f64> {
    let hung_up = || Error::Internal("the top-k stage stopped".into());
    let mut busy = 0.0;
    let mut tokens = 0u64;
    let started = Instant::now();
    for work in rx {
        match work? {
            Work::Batch { shard, seqs } => {
                let t0 = Instant::now();
                let rows = batch_rows(&seqs, opts.top_k);
                // The chunks of one batch go through their own channel, so the top-k thread
                // takes them in order while this thread computes the next ones.
                let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(queued_chunks(teacher));
                let input = Tensor::from_slice(
                    &rows.input_ids,
                    (seqs.len(), opts.seq_len),
                    teacher.device(),
                )
                .ctx("teacher input")?;
                tx.send(Selection::Batch {
                    shard,
                    rows,
                    chunks: chunk_rx,
                })
                .map_err(|_| hung_up())?;
                forward_chunks(teacher, &input, opts.top_k, |chunk| {
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
            Work::ShardEnd { shard } => tx
                .send(Selection::ShardEnd { shard })
                .map_err(|_| hung_up())?,
            Work::End { total_sequences } => {
                tx.send(Selection::End { total_sequences })
                    .map_err(|_| hung_up())?;
                return Ok(busy);
            }
        }
    }
    Err(Error::Internal("the producer stage stopped".into()))
}

/// The top-k thread: select the top-k of every chunk of logits into its batch's rows, pass
/// finished batches on to the writer.
fn run_topk(teacher_path: &Path, rx: Receiver<Selection>, tx: SyncSender<Rows>) -> Result<()> {
    let hung_up = || Error::Internal("the writer stage stopped".into());
    let pool = topk_pool()?;
    for selection in rx {
        match selection {
            Selection::Batch {
                shard,
                rows,
                chunks,
            } => {
                let mut batch = Selected::new(rows, teacher_path, &pool);
                for chunk in chunks {
                    batch.add(chunk)?;
                }
                let rows = batch.finish();
                tx.send(Rows::Batch { shard, rows })
                    .map_err(|_| hung_up())?;
            }
            Selection::ShardEnd { shard } => {
                tx.send(Rows::ShardEnd { shard }).map_err(|_| hung_up())?
            }
            Selection::End { total_sequences } => {
                tx.send(Rows::End { total_sequences })
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
/// every core. `benches/precompute.rs` paired, 24 rounds each, same binary: full / forward
/// 1.080 on the global pool, 1.068 at nice 19 (docs/performance.md).
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

/// A batch's rows as the producer packed them (sequence ids, input ids, loss masks), with the
/// top-k buffers sized and still empty.
fn batch_rows(seqs: &[PackedSequence], k: usize) -> ShardBatch {
    let s = seqs[0].input_ids.len();
    let mut rows = ShardBatch::new(s, k);
    for seq in seqs {
        rows.seq_ids.push(seq.seq_id);
        rows.input_ids.extend_from_slice(&seq.input_ids);
        rows.loss_mask.extend_from_slice(&seq.loss_mask);
    }
    let positions = seqs.len() * s;
    rows.topk_ids.resize(positions * k, 0);
    rows.topk_logprobs.resize(positions * k, half::f16::ZERO);
    rows.tail_logmass.resize(positions, 0.0);
    rows
}

/// Consecutive positions of a batch, from `start`.
pub enum Chunk {
    /// `[n, vocab]` f32 logits on the host: the top-k is still to be taken.
    Logits { start: usize, logits: Tensor },
    /// Selected on the device: `n · k` ids and log-probs, `n` tail log-masses.
    Selected {
        start: usize,
        ids: Vec<u32>,
        logprobs: Vec<f32>,
        tails: Vec<f32>,
    },
}

/// Run the teacher over `input` (`[batch, seq_len]` token ids) and pass its logits on in chunks
/// of at most [`LOGITS_CHUNK_BYTES`]; on a GPU the top-k is taken there first.
pub fn forward_chunks(
    teacher: &Decoder,
    input: &Tensor,
    k: usize,
    mut emit: impl FnMut(Chunk) -> Result<()>,
) -> Result<()> {
    let (b, s) = input.dims2().ctx("teacher input")?;
    let hidden = teacher
        .forward_hidden(input, Mode::Infer)
        .ctx("teacher forward")?;
    let hidden = hidden
        .reshape((b * s, hidden.dim(2).ctx("teacher forward")?))
        .ctx("teacher forward")?;
    let positions = b * s;
    let chunk = chunk_rows(teacher);
    let mut start = 0;
    while start < positions {
        let n = chunk.min(positions - start);
        let logits = teacher
            .logits(&hidden.narrow(0, start, n).ctx("lm_head")?)
            .ctx("lm_head")?;
        if logits.device().is_cpu() {
            emit(Chunk::Logits { start, logits })?;
        } else {
            // On a GPU: top-k and tail on the device; only [n, k] ids and log-probs and [n]
            // tails come back.
            let (ids, lp, tail) =
                device_topk::topk_blocks(&logits, k).ctx("top-k on the device")?;
            let host = |t: Tensor| t.flatten_all().and_then(|t| t.to_device(&Device::Cpu));
            emit(Chunk::Selected {
                start,
                ids: host(ids)
                    .and_then(|t| t.to_vec1())
                    .ctx("copying top-k ids")?,
                logprobs: host(lp)
                    .and_then(|t| t.to_vec1())
                    .ctx("copying top-k log-probs")?,
                tails: host(tail).and_then(|t| t.to_vec1()).ctx("copying tails")?,
            })?;
        }
        start += n;
    }
    Ok(())
}

/// A batch being filled with the top-k of its chunks.
struct Selected<'a> {
    rows: ShardBatch,
    /// Where the top-k of host logits runs ([`topk_pool`]).
    pool: &'a rayon::ThreadPool,
    /// f32 log-probs, `[positions, k]`, converted to f16 once the batch is complete.
    logprobs: Vec<f32>,
    teacher_path: &'a Path,
}

impl<'a> Selected<'a> {
    fn new(rows: ShardBatch, teacher_path: &'a Path, pool: &'a rayon::ThreadPool) -> Self {
        let logprobs = vec![0f32; rows.topk_ids.len()];
        Self {
            rows,
            pool,
            logprobs,
            teacher_path,
        }
    }

    fn non_finite(&self, position: usize, token: Option<usize>) -> Error {
        let s = self.rows.seq_len;
        let (seq, pos) = (position / s, position % s);
        let token = token.map(|v| format!(" (token {v})")).unwrap_or_default();
        Error::cache(
            self.teacher_path,
            format!(
                "the teacher produced a non-finite logit{token} at sequence {} position {pos}; try --dtype f32",
                self.rows.seq_ids[seq]
            ),
        )
    }

    fn add(&mut self, chunk: Chunk) -> Result<()> {
        let k = self.rows.k;
        match chunk {
            Chunk::Selected {
                start,
                ids,
                logprobs,
                tails,
            } => {
                if let Some(p) = logprobs.iter().position(|x| !x.is_finite()) {
                    return Err(self.non_finite(start + p / k, None));
                }
                let n = tails.len();
                self.rows.topk_ids[start * k..(start + n) * k].copy_from_slice(&ids);
                self.logprobs[start * k..(start + n) * k].copy_from_slice(&logprobs);
                self.rows.tail_logmass[start..start + n].copy_from_slice(&tails);
            }
            Chunk::Logits { start, logits } => {
                let (n, vocab) = logits.dims2().ctx("logits")?;
                let (storage, layout) = logits.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else {
                    return Err(Error::Internal("logits are not on the host".into()));
                };
                let data = cpu.as_slice::<f32>().ctx("logits")?;
                let (lo, hi) = layout
                    .contiguous_offsets()
                    .ok_or_else(|| Error::Internal("logits are not contiguous".into()))?;
                let ids = &mut self.rows.topk_ids[start * k..(start + n) * k];
                let lps = &mut self.logprobs[start * k..(start + n) * k];
                let tails = &mut self.rows.tail_logmass[start..start + n];
                let result = self
                    .pool
                    .install(|| topk::topk_rows(&data[lo..hi], vocab, k, ids, lps, tails));
                if let Err((r, v)) = result {
                    return Err(self.non_finite(start + r, Some(v)));
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> ShardBatch {
        self.rows
            .topk_logprobs
            .convert_from_f32_slice(&self.logprobs);
        self.rows
    }
}

/// The writer thread: stream rows into shard files, publish each finished shard in the manifest.
/// Returns (shards written, sequences written).
fn write_shards(
    rx: Receiver<Rows>,
    manifest: &mut Manifest,
    out_dir: &Path,
    manifest_path: &Path,
    opts: &WriteOptions,
) -> Result<(usize, u64)> {
    let mut open: Option<(u64, ShardWriter)> = None;
    let (mut shards, mut sequences) = (0usize, 0u64);
    for msg in rx {
        match msg {
            Rows::Batch { shard, rows } => {
                if open.as_ref().map(|(s, _)| *s) != Some(shard) {
                    let path = out_dir.join(SHARDS_DIR).join(shard_file_name(shard));
                    open = Some((
                        shard,
                        ShardWriter::create(&path, rows.seq_len, rows.k, opts)?,
                    ));
                }
                sequences += rows.rows() as u64;
                if let Some((_, w)) = open.as_mut() {
                    w.write(&rows)?;
                }
            }
            Rows::ShardEnd { shard } => {
                let Some((s, w)) = open.take() else {
                    return Err(Error::Internal(format!(
                        "shard {shard} ended before it started"
                    )));
                };
                debug_assert_eq!(s, shard);
                let mut entry = w.finish()?;
                entry.index = shard;
                entry.path = shard_rel_path(shard);
                manifest.shards.retain(|e| e.index != shard);
                manifest.shards.push(entry);
                manifest.shards.sort_by_key(|e| e.index);
                manifest.save_atomic(manifest_path)?;
                shards += 1;
            }
            Rows::End { total_sequences } => {
                manifest.total_sequences = Some(total_sequences);
                manifest.complete = true;
                manifest.save_atomic(manifest_path)?;
                return Ok((shards, sequences));
            }
        }
    }
    Err(Error::Internal("the teacher stage stopped".into()))
}
