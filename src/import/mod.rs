//! The import stage: teacher top-k captured elsewhere (DistillKit's vLLM captures, any top-k
//! columns) → a taidcache cache, so a teacher that runs on a serving engine feeds `distill`.
//!
//! ```text
//! reader: input files, one lane per core ─▶ documents, in file order ──chunks──▶
//!     convert: decode + checks + tail, rayon ──rows──▶ writer: CacheWriter (shards + manifest)
//! ```
//!
//! - [`distillkit`]: DistillKit's compression settings and its decompression, bit for bit.
//! - [`source`]: the input files, read a batch of rows at a time, split into documents.
//!
//! `--dry-run` runs the reader and the conversion, every check included, and writes nothing.
//!
//! **Alignment.** A capture's entry `e` of a document is the teacher's distribution of the token
//! after `tokens[..=e]` (vLLM returns nothing for the first token, so a document of n tokens has
//! n − 1 entries, or n when DistillKit's packer cut the tokens to the entries): exactly
//! taidcache's position `e`.
//!
//! **Rows.** One document per row, padded to `--seq-len` (default: the longest document) and
//! masked there, never two documents in one row: the teacher saw each document alone, and a
//! student reading a packed row would see context the teacher did not. A document longer than
//! `--seq-len` keeps its first `--seq-len` positions (the rest are counted and reported).
//!
//! **Tail.** `log(1 − Σ exp ℓ)` from the decoded log-probs, in f64 with `expm1`/`log1p`. A lossy
//! capture can decode to a top-k mass of 1 or more; a position whose mass is at least
//! 1 − `--tail-floor` keeps a tail of `--tail-floor` and its log-probs are shifted so that the
//! position sums to 1 (counted, printed and recorded in the manifest).
//!
//! Input document `i` (in file order) is sequence `i` of the cache, so shards are fixed by the
//! input alone and a rerun after a kill continues after the last complete shard.

pub mod distillkit;
pub mod source;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cache::manifest::{
    CorpusFile, CorpusInfo, ImportInfo, Manifest, PackingInfo, TeacherInfo,
};
use crate::cache::{
    default_row_group_rows, schema, CacheWriter, Encoding, Resumed, ShardBatch, WriteOptions,
};
use crate::config::bounds;
use crate::error::{Error, IoContext, Result};
use distillkit::{Compression, Decoder, Scratch};
use source::{Columns, ColumnsKind, Document, DocumentReader, Entries};

/// Where a capture comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureFormat {
    /// DistillKit capture Parquet files: `compressed_logprobs` + `bytepacked_indices` (with
    /// --compression), or `token_ids` + `top_values`; prepacked rows with `attention_mask` too.
    Distillkit,
    /// Parquet or JSONL files with per-position top-k ids and log-probs in list columns
    /// (--ids, --logprobs).
    TopkColumns,
}

/// Everything `taidcache import` needs.
#[derive(Clone, Debug, clap::Args)]
pub struct ImportOptions {
    /// The capture's format.
    #[arg(long = "from", value_enum)]
    pub from: CaptureFormat,
    /// Capture files or directories (every non-hidden file below, sorted by name).
    #[arg(required = true, value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
    /// Cache directory to create, or to resume if it holds an unfinished import of the same inputs.
    #[arg(long, value_name = "CACHE", required_unless_present = "dry_run")]
    pub out: Option<PathBuf>,
    /// Read and decode the capture, check every position and print the counts; write nothing.
    #[arg(long, conflicts_with = "out")]
    pub dry_run: bool,
    /// The teacher's vocabulary size (the student's output size); every id must be below it.
    #[arg(long, value_parser = bounds::at_least_one)]
    pub vocab_size: usize,
    /// The teacher's tokenizer.json: the student must use the same one (its sha256 goes into the
    /// manifest, its EOS token pads the rows).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: PathBuf,
    /// DistillKit's `logprob_compressor` block as YAML (the capture's compression_config.yaml,
    /// or a DistillKit config holding the block); needed for compressed captures.
    #[arg(long, value_name = "FILE.yaml")]
    pub compression: Option<PathBuf>,
    /// Positions per row; default: the longest document (found by one more pass over the
    /// files). Longer documents are cut (counted).
    #[arg(long, value_parser = bounds::at_least_one)]
    pub seq_len: Option<usize>,
    /// Column of the token ids.
    #[arg(long, default_value = "input_ids")]
    pub input_ids: String,
    /// topk-columns: column of the per-position top-k ids (a list of lists of integers).
    #[arg(long, value_name = "COL")]
    pub ids: Option<String>,
    /// topk-columns: column of the per-position log-probs (a list of lists of numbers).
    #[arg(long, value_name = "COL")]
    pub logprobs: Option<String>,
    /// topk-columns: column of a per-position 0/1 mask; positions with 0 keep no target.
    #[arg(long, value_name = "COL")]
    pub mask: Option<String>,
    /// The teacher's name, recorded in the manifest (e.g. Qwen/Qwen3-235B-A22B).
    #[arg(long, value_name = "NAME")]
    pub teacher_name: Option<String>,
    /// Tail mass given to a position whose decoded top-k mass is 1 − this or more (lossy
    /// captures); its log-probs are shifted so that it sums to 1.
    #[arg(long, default_value_t = 1e-6)]
    pub tail_floor: f64,
    /// Sequences per shard file.
    #[arg(long, default_value_t = 256, value_parser = bounds::at_least_one)]
    pub shard_rows: usize,
    /// zstd compression level, 1..=22.
    #[arg(long, default_value_t = 3, value_parser = bounds::zstd_level)]
    pub zstd_level: i32,
    /// How top-k records are stored (as for precompute).
    #[arg(long, value_enum, default_value_t = Encoding::Plain)]
    pub encoding: Encoding,
    /// Draw a progress bar on stderr when it is a terminal (not a flag).
    #[arg(skip = true)]
    pub progress: bool,
}

/// What an import did.
#[derive(Clone, Debug, Serialize)]
pub struct ImportSummary {
    /// None with --dry-run.
    pub out: Option<PathBuf>,
    pub documents: u64,
    /// Positions with a teacher target.
    pub positions: u64,
    /// Of those, positions whose decoded top-k mass was 1 or more (tail floored).
    pub floored_positions: u64,
    /// Positions beyond --seq-len, dropped.
    pub truncated_positions: u64,
    pub shards_written: usize,
    pub shards_resumed: usize,
    pub seq_len: usize,
    pub elapsed_s: f64,
}

/// How the entries of a capture turn into top-k rows.
enum Codec {
    DistillKit(Decoder),
    /// Plain top-k lists of k entries each.
    Plain {
        k: usize,
    },
}

impl Codec {
    fn k(&self) -> usize {
        match self {
            Codec::DistillKit(d) => d.k(),
            Codec::Plain { k } => *k,
        }
    }
}

/// Settings every document's conversion shares.
struct Convert<'a> {
    codec: &'a Codec,
    vocab: usize,
    seq_len: usize,
    pad: u32,
    /// ln(--tail-floor) and ln(1 − --tail-floor).
    floor_ln: f64,
    full_ln: f64,
    paths: &'a [PathBuf],
}

/// Reusable buffers of one thread's conversions.
#[derive(Default)]
struct RowScratch {
    decode: Scratch,
    /// A bit per id of the vocabulary (vocabularies up to 2^24), all clear between positions.
    seen: Vec<u64>,
    sorted: Vec<u64>,
    /// A position's log-probs in the cache's order, for one conversion to f16.
    values: Vec<f32>,
}

impl RowScratch {
    /// The first id of `ids` that repeats an earlier one.
    fn repeated(&mut self, ids: &[u64], vocab: usize) -> Option<u64> {
        if vocab > 1 << 24 {
            self.sorted.clear();
            self.sorted.extend_from_slice(ids);
            self.sorted.sort_unstable();
            return self.sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
        }
        self.seen.resize(vocab.div_ceil(64), 0);
        let mut found = None;
        for &id in ids {
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            if self.seen[word] & bit != 0 {
                found = Some(id);
                break;
            }
            self.seen[word] |= bit;
        }
        for &id in ids {
            self.seen[id as usize / 64] = 0;
        }
        found
    }
}

/// Counts of one document's conversion.
#[derive(Clone, Copy, Default)]
struct Counts {
    positions: u64,
    floored: u64,
    truncated: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.positions += o.positions;
        self.floored += o.floored;
        self.truncated += o.truncated;
    }
}

impl Convert<'_> {
    /// Fill `out` (one row, cleared) from `doc`, as sequence `seq_id`.
    fn row(
        &self,
        doc: &Document,
        seq_id: u64,
        out: &mut ShardBatch,
        scratch: &mut RowScratch,
    ) -> Result<Counts> {
        let (s, k, vocab) = (self.seq_len, self.codec.k(), self.vocab);
        let path = &self.paths[doc.file];
        let fail = |pos: usize, msg: String| {
            let at = if doc.part > 0 {
                format!(
                    "row {} (document {} of the packed row)",
                    doc.row,
                    doc.part + 1
                )
            } else {
                format!("row {}", doc.row)
            };
            Error::corpus(path, format!("{at} position {pos}"), msg)
        };
        out.clear();
        out.seq_ids.push(seq_id);
        let n = doc.tokens.len().min(s);
        for (i, &t) in doc.tokens[..n].iter().enumerate() {
            if t as usize >= vocab {
                return Err(fail(i, format!("input id {t} >= --vocab-size {vocab}")));
            }
        }
        out.input_ids.extend_from_slice(&doc.tokens[..n]);
        out.input_ids.resize(s, self.pad);
        let entries = doc.entries.len();
        let with_target = entries.min(s);
        let mut counts = Counts {
            truncated: (entries - with_target) as u64,
            ..Counts::default()
        };
        let mut ids = vec![0u64; k];
        let mut lps = vec![0f32; k];
        let mut order: Vec<usize> = (0..k).collect();
        for e in 0..with_target {
            match (&doc.entries, self.codec) {
                (
                    Entries::Compressed {
                        logprobs,
                        lp_off,
                        ids: id_bytes,
                        id_off,
                    },
                    Codec::DistillKit(dec),
                ) => dec
                    .decode(
                        &logprobs[lp_off[e]..lp_off[e + 1]],
                        &id_bytes[id_off[e]..id_off[e + 1]],
                        &mut ids,
                        &mut lps,
                        &mut scratch.decode,
                    )
                    .map_err(|m| fail(e, m))?,
                (
                    Entries::TopK {
                        ids: id_v,
                        logprobs,
                        off,
                        lp_off,
                    },
                    _,
                ) => {
                    let (a, b) = (off[e], off[e + 1]);
                    let (c, d) = (lp_off[e], lp_off[e + 1]);
                    if b - a != d - c {
                        return Err(fail(e, format!("{} ids but {} log-probs", b - a, d - c)));
                    }
                    if b - a != k {
                        return Err(fail(
                            e,
                            format!("{} top-k entries, the first position has {k}: every position needs the same k", b - a),
                        ));
                    }
                    for j in 0..k {
                        let id = id_v[a + j];
                        if id < 0 {
                            return Err(fail(e, format!("top-k id {id} is negative")));
                        }
                        ids[j] = id as u64;
                        lps[j] = logprobs[c + j];
                    }
                }
                (Entries::Compressed { .. }, Codec::Plain { .. }) => {
                    return Err(Error::Internal(
                        "compressed entries without a decoder".into(),
                    ))
                }
            }
            // Checks: ids in the vocabulary and distinct, log-probs numbers.
            for j in 0..k {
                if ids[j] >= vocab as u64 {
                    return Err(fail(
                        e,
                        format!("top-k id {} >= --vocab-size {vocab} (rank {j})", ids[j]),
                    ));
                }
                if !lps[j].is_finite() {
                    return Err(fail(
                        e,
                        format!("log-prob {} at rank {j} is not a finite number", lps[j]),
                    ));
                }
            }
            if let Some(id) = scratch.repeated(&ids[..k], vocab) {
                return Err(fail(e, format!("top-k id {id} appears twice")));
            }
            // Most probable first, as the cache stores them (a lossy decode need not be sorted;
            // ties keep the capture's order).
            order.clear();
            order.extend(0..k);
            if !lps.windows(2).all(|w| w[0] >= w[1]) {
                order.sort_by(|&a, &b| lps[b].total_cmp(&lps[a]));
            }
            // order[0] is the largest: one pass of exp in f64.
            let m = lps[order[0]] as f64;
            let lse = m + order
                .iter()
                .map(|&j| (lps[j] as f64 - m).exp())
                .sum::<f64>()
                .ln();
            let (shift, tail) = if lse >= self.full_ln {
                counts.floored += 1;
                (lse - self.full_ln, self.floor_ln)
            } else {
                (0.0, ln_one_minus_exp(lse))
            };
            out.topk_ids.extend(order.iter().map(|&j| ids[j] as u32));
            if shift == 0.0 {
                // One bulk conversion (F16C where the CPU has it).
                let values = &mut scratch.values;
                values.clear();
                values.extend(order.iter().map(|&j| lps[j]));
                let at = out.topk_logprobs.len();
                out.topk_logprobs.resize(at + k, f16::ZERO);
                out.topk_logprobs[at..].convert_from_f32_slice(values);
            } else {
                let shifted = order.iter().map(|&j| f16::from_f64(lps[j] as f64 - shift));
                out.topk_logprobs.extend(shifted);
            }
            out.tail_logmass.push(tail as f32);
            let keep = doc.keep.as_ref().is_none_or(|m| m[e]);
            out.loss_mask.push(keep);
            counts.positions += u64::from(keep);
        }
        // Positions without a target: a uniform stand-in (never trained on: masked).
        let uniform = f16::from_f64(-(vocab as f64).ln());
        let uniform_tail = if k < vocab {
            ((vocab - k) as f64 / vocab as f64).ln() as f32
        } else {
            f32::NEG_INFINITY
        };
        for _ in with_target..s {
            out.topk_ids.extend(0..k as u32);
            out.topk_logprobs.extend(std::iter::repeat_n(uniform, k));
            out.tail_logmass.push(uniform_tail);
            out.loss_mask.push(false);
        }
        Ok(counts)
    }
}

/// The writing side of an import: rows → shards of the cache.
struct Sink {
    cache: CacheWriter,
    /// Whether a shard is still to be written (the others are complete from an earlier run; their
    /// documents are still converted, for the counts).
    pending: Box<dyn Fn(u64) -> bool + Send + Sync>,
    shard_rows: u64,
    /// The shard being written.
    open: Option<u64>,
}

impl Sink {
    /// Write `rows`, sequences `first..`, where their shard is still to be written.
    fn write(&mut self, first: u64, rows: &[ShardBatch]) -> Result<()> {
        for (i, row) in rows.iter().enumerate() {
            let shard = (first + i as u64) / self.shard_rows;
            if !(self.pending)(shard) {
                continue;
            }
            if self.open != Some(shard) {
                if let Some(done) = self.open.take() {
                    self.cache.finish_shard(done)?;
                }
                self.open = Some(shard);
            }
            self.cache.write_rows(shard, row)?;
        }
        Ok(())
    }

    /// Finish the open shard.
    fn close(mut self) -> Result<CacheWriter> {
        if let Some(done) = self.open.take() {
            self.cache.finish_shard(done)?;
        }
        Ok(self.cache)
    }
}

impl Convert<'_> {
    /// The rows of `docs`, sequences `first..`, converted in parallel, and their counts.
    fn chunk(&self, docs: &[Document], first: u64) -> Result<(Vec<ShardBatch>, Counts)> {
        let (s, k) = (self.seq_len, self.codec.k());
        let rows: Vec<Result<(ShardBatch, Counts)>> = docs
            .par_iter()
            .enumerate()
            .map_init(RowScratch::default, |scratch, (i, d)| {
                let mut row = ShardBatch::with_capacity(s, k, 1);
                let c = self.row(d, first + i as u64, &mut row, scratch)?;
                Ok((row, c))
            })
            .collect();
        let mut counts = Counts::default();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (row, c) = r?;
            counts += c;
            out.push(row);
        }
        Ok((out, counts))
    }
}

/// What a file-reading lane sends: documents of its current file, or the end of that file.
enum Lane {
    Docs(Vec<Document>),
    FileDone,
}

/// The reader stage: the documents of `files`, in order, in chunks of `chunk`, sent on `tx`
/// (an error ends the stream). Files are read side by side, one lane per core (lane j reads
/// files j, j + lanes, …, each through a bounded channel), and merged back in file order. Stops
/// when the receiver hangs up.
fn read_documents(
    files: &[PathBuf],
    columns: &Columns,
    chunk: usize,
    bar: &indicatif::ProgressBar,
    tx: std::sync::mpsc::SyncSender<Result<Vec<Document>>>,
) {
    let lanes = rayon::current_num_threads()
        .clamp(1, 8)
        .min(files.len().max(1));
    std::thread::scope(|scope| {
        let mut rxs = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let (ltx, lrx) = std::sync::mpsc::sync_channel::<Result<Lane>>(2);
            rxs.push(lrx);
            scope.spawn(move || {
                for (i, f) in files.iter().enumerate().skip(lane).step_by(lanes) {
                    let reader = match DocumentReader::open(f, i, columns) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ltx.send(Err(e));
                            return;
                        }
                    };
                    let mut docs = Vec::with_capacity(chunk);
                    for doc in reader {
                        match doc {
                            Ok(d) => docs.push(d),
                            Err(e) => {
                                let _ = ltx.send(Err(e));
                                return;
                            }
                        }
                        if docs.len() == chunk {
                            let full = std::mem::replace(&mut docs, Vec::with_capacity(chunk));
                            if ltx.send(Ok(Lane::Docs(full))).is_err() {
                                return;
                            }
                        }
                    }
                    if ltx.send(Ok(Lane::Docs(docs))).is_err()
                        || ltx.send(Ok(Lane::FileDone)).is_err()
                    {
                        return;
                    }
                }
            });
        }
        // Merge in file order; returning drops the lanes' receivers, which stops them.
        let mut docs = Vec::with_capacity(chunk);
        let mut last_row = (usize::MAX, u64::MAX);
        for i in 0..files.len() {
            loop {
                let got = match rxs[i % lanes].recv() {
                    Ok(Ok(Lane::Docs(d))) => d,
                    Ok(Ok(Lane::FileDone)) => break,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let msg = "a capture reader thread stopped without a result";
                        let _ = tx.send(Err(Error::Internal(msg.into())));
                        return;
                    }
                };
                for doc in got {
                    if (doc.file, doc.row) != last_row {
                        last_row = (doc.file, doc.row);
                        bar.inc(1);
                    }
                    docs.push(doc);
                    if docs.len() == chunk {
                        let full = std::mem::replace(&mut docs, Vec::with_capacity(chunk));
                        if tx.send(Ok(full)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if !docs.is_empty() {
            let _ = tx.send(Ok(docs));
        }
    });
}

/// log(1 − e^x) for x < 0, accurate at both ends (Mächler's log1mexp).
fn ln_one_minus_exp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// Documents converted in parallel at a time: about 8 MiB of rows, at least 2 (one per core
/// here), so that reading, converting and writing overlap.
fn chunk_docs(seq_len: usize, k: usize) -> usize {
    let per_row = seq_len * (k * 6 + 9);
    ((8 << 20) / per_row.max(1)).clamp(2, 1024)
}

/// Run `taidcache import`. Progress on stderr (a terminal only); the summary to `out`.
pub fn run(opts: &ImportOptions, out: &mut dyn Write) -> Result<ImportSummary> {
    let started = Instant::now();
    if !(opts.tail_floor > 0.0 && opts.tail_floor < 1.0) {
        return Err(Error::flag(
            "--tail-floor",
            format!("{} is not in (0, 1)", opts.tail_floor),
        ));
    }
    if opts.vocab_size > crate::cache::manifest::MAX_VOCAB_SIZE {
        return Err(Error::flag(
            "--vocab-size",
            format!("{} is above 2^31", opts.vocab_size),
        ));
    }
    let files = expand(&opts.inputs)?;
    let tokenizer = crate::corpus::load_tokenizer(&opts.tokenizer)?;
    let tok_vocab = tokenizer.get_vocab_size(true);
    if tok_vocab > opts.vocab_size {
        return Err(Error::flag(
            "--vocab-size",
            format!(
                "{} is below the {} tokens of {}: the vocabulary of the teacher is at least its tokenizer's",
                opts.vocab_size,
                tok_vocab,
                opts.tokenizer.display()
            ),
        ));
    }
    let pad = crate::corpus::find_eos(&tokenizer).unwrap_or(0);
    let tokenizer_sha256 = crate::hash::sha256_file(&opts.tokenizer)?;

    // Which columns, and how entries decode.
    let (columns, codec, compression) = plan_columns(opts, &files)?;
    let k = codec.k();
    if k > opts.vocab_size {
        return Err(Error::flag(
            "--vocab-size",
            format!("{} is below the capture's k = {k}", opts.vocab_size),
        ));
    }

    let seq_len = match opts.seq_len {
        Some(s) => s,
        None => {
            let mut longest = 0;
            // One pass over the files before the import (the entries are read too: a row's
            // documents are only known from its mask and entry count).
            for (i, f) in files.iter().enumerate() {
                for d in DocumentReader::open(f, i, &columns)? {
                    longest = longest.max(d?.tokens.len());
                }
            }
            if longest == 0 {
                return Err(no_documents(&files));
            }
            longest
        }
    };

    let mut described = Vec::with_capacity(files.len());
    for f in &files {
        let bytes = std::fs::metadata(f).at(f)?.len();
        described.push(CorpusFile {
            path: f.to_string_lossy().into_owned(),
            format: format!(
                "{}-{}",
                match opts.from {
                    CaptureFormat::Distillkit => "distillkit",
                    CaptureFormat::TopkColumns => "topk-columns",
                },
                if f.extension().is_some_and(|e| e == "parquet") {
                    "parquet"
                } else {
                    "jsonl"
                }
            ),
            bytes,
            xxh3: crate::hash::xxh3_file(f)?,
        });
    }
    let column_list = columns_description(&columns);
    let from_name = match opts.from {
        CaptureFormat::Distillkit => "distillkit",
        CaptureFormat::TopkColumns => "topk-columns",
    };
    let config_json = serde_json::json!({
        "from": from_name,
        "columns": column_list,
        "compression": compression,
    });
    let manifest = Manifest {
        format_version: opts.encoding.format_version(),
        taidcache_version: env!("CARGO_PKG_VERSION").to_string(),
        teacher: TeacherInfo {
            model_type: format!("import:{from_name}"),
            architecture: opts
                .teacher_name
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            vocab_size: opts.vocab_size,
            config_sha256: crate::hash::sha256_hex(config_json.to_string().as_bytes()),
            safetensors_header_sha256: Default::default(),
            weights_xxh3: None,
            source: opts.teacher_name.clone().unwrap_or_default(),
        },
        tokenizer_sha256,
        corpus: CorpusInfo {
            files: described,
            text_field: column_list,
            text_split: "document".into(),
        },
        packing: PackingInfo {
            seq_len,
            eos_id: pad,
            pad_id: pad,
            add_special_tokens: false,
            shard_rows: opts.shard_rows,
        },
        top_k: k,
        vocab_size: opts.vocab_size,
        dtype: "unknown".into(),
        temperature: 1.0,
        value_encoding: opts.encoding.value_encoding().to_string(),
        tail_draws: 0,
        worker: None,
        complete: false,
        total_sequences: None,
        shards: Vec::new(),
        import: Some(ImportInfo {
            source: from_name.into(),
            compression: compression.clone(),
            teacher: opts.teacher_name.clone(),
            tail_floor: opts.tail_floor,
            documents: 0,
            positions: 0,
            floored_positions: 0,
            truncated_positions: 0,
        }),
    };

    // Held to the end of the run, taken before anything looks at what --out holds.
    let mut lock = None;
    let sink = match &opts.out {
        None => None,
        Some(dir) => {
            lock = Some(crate::cache::lock::lock_for_writing(dir, 0, 1)?);
            let write = WriteOptions {
                zstd_level: opts.zstd_level,
                row_group_rows: default_row_group_rows(seq_len, k),
                metadata: schema::footer_metadata(&manifest),
                encoding: opts.encoding,
                tail_draws: 0,
            };
            match CacheWriter::create_or_resume(dir, manifest, write)? {
                Resumed::Complete => {
                    writeln!(out, "{}: already complete, nothing to do", dir.display()).at(dir)?;
                    return Ok(ImportSummary {
                        out: opts.out.clone(),
                        documents: 0,
                        positions: 0,
                        floored_positions: 0,
                        truncated_positions: 0,
                        shards_written: 0,
                        shards_resumed: 0,
                        seq_len,
                        elapsed_s: started.elapsed().as_secs_f64(),
                    });
                }
                Resumed::Open(cache) => {
                    for why in cache.redone_shards() {
                        writeln!(out, "{why}; importing it again").at(dir)?;
                    }
                    Some(Sink {
                        pending: Box::new(cache.pending_shards()),
                        cache: *cache,
                        shard_rows: opts.shard_rows as u64,
                        open: None,
                    })
                }
            }
        }
    };
    let resumed = sink.as_ref().map_or(0, |s| s.cache.resumed_shards());

    let total_rows: u64 = files
        .iter()
        .filter_map(|f| DocumentReader::parquet_rows(f))
        .sum();
    let bar = crate::progress_bar(
        opts.progress,
        total_rows,
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} capture rows, ETA {eta}",
    );
    let convert = Convert {
        codec: &codec,
        vocab: opts.vocab_size,
        seq_len,
        pad,
        floor_ln: opts.tail_floor.ln(),
        full_ln: (-opts.tail_floor).ln_1p(),
        paths: &files,
    };
    let chunk = chunk_docs(seq_len, k);
    let mut counts = Counts::default();
    let mut seq_id = 0u64;
    // Three stages joined by bounded channels: a reader thread turns the input files into chunks
    // of documents, this thread converts a chunk into rows (in parallel), a writer thread encodes
    // and writes the previous chunk's rows.
    let (doc_tx, doc_rx) = std::sync::mpsc::sync_channel::<Result<Vec<Document>>>(2);
    let (row_tx, row_rx) = std::sync::mpsc::sync_channel::<(u64, Vec<ShardBatch>)>(2);
    let cache = std::thread::scope(|scope| -> Result<Option<CacheWriter>> {
        let reader = scope.spawn(|| read_documents(&files, &columns, chunk, &bar, doc_tx));
        let writer = scope.spawn(move || -> Result<Option<CacheWriter>> {
            let Some(mut sink) = sink else {
                row_rx.iter().for_each(drop);
                return Ok(None);
            };
            for (first, rows) in row_rx {
                sink.write(first, &rows)?;
            }
            sink.close().map(Some)
        });
        let converted = (|| -> Result<()> {
            for docs in &doc_rx {
                let docs = docs?;
                let (rows, c) = convert.chunk(&docs, seq_id)?;
                counts += c;
                if row_tx.send((seq_id, rows)).is_err() {
                    break; // the writer failed: its error is the one to report
                }
                seq_id += docs.len() as u64;
            }
            Ok(())
        })();
        // Hang up both channels: the reader stops at its next send, the writer after the rows
        // it has.
        drop(doc_rx);
        drop(row_tx);
        reader
            .join()
            .map_err(|_| Error::Internal("the capture reader thread panicked".into()))?;
        let written = writer
            .join()
            .map_err(|_| Error::Internal("the writer thread panicked".into()))?;
        converted?;
        written
    })?;
    bar.finish_and_clear();
    if seq_id == 0 {
        return Err(no_documents(&files));
    }
    let (written_shards, place) = match (cache, &opts.out) {
        (Some(mut cache), Some(dir)) => {
            if let Some(info) = cache.manifest_mut().import.as_mut() {
                info.documents = seq_id;
                info.positions = counts.positions;
                info.floored_positions = counts.floored;
                info.truncated_positions = counts.truncated;
            }
            let (_, written) = cache.finish(seq_id)?;
            (written.shards, dir.display().to_string())
        }
        _ => (0, "--dry-run".to_string()),
    };
    drop(lock);
    let share = |n: u64| 100.0 * n as f64 / counts.positions.max(1) as f64;
    let at = Path::new("<output>");
    let verb = if opts.out.is_some() {
        "imported"
    } else {
        "decoded (nothing written)"
    };
    writeln!(
        out,
        "{place}: {verb} {seq_id} documents ({} positions with a target) into {written_shards} \
         shards of seq_len {seq_len}, resumed {resumed} shards, {:.1}s",
        counts.positions,
        started.elapsed().as_secs_f64()
    )
    .at(at)?;
    writeln!(
        out,
        "{place}: {} positions ({:.3}%) decoded to a top-{k} mass of at least 1 - {:e}: tail floored at {:e}",
        counts.floored,
        share(counts.floored),
        opts.tail_floor,
        opts.tail_floor
    )
    .at(at)?;
    if counts.truncated > 0 {
        writeln!(
            out,
            "{place}: {} positions beyond --seq-len {seq_len} were dropped",
            counts.truncated
        )
        .at(at)?;
    }
    Ok(ImportSummary {
        out: opts.out.clone(),
        documents: seq_id,
        positions: counts.positions,
        floored_positions: counts.floored,
        truncated_positions: counts.truncated,
        shards_written: written_shards,
        shards_resumed: resumed,
        seq_len,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// The error of a capture without a single document, naming its files.
fn no_documents(files: &[PathBuf]) -> Error {
    Error::EmptyCorpus {
        files: files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        detail: "no row with input ids and entries".into(),
    }
}

/// The input files: files as given, directories expanded (non-hidden files, sorted by name).
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    const CAPTURE_EXTENSIONS: [&str; 4] = [".parquet", ".jsonl", ".json", ".ndjson"];
    let mut files = Vec::new();
    for input in inputs {
        if !std::fs::metadata(input).at(input)?.is_dir() {
            files.push(input.clone());
            continue;
        }
        // A directory: the corpus walk (sorted, hidden files skipped, link loops refused), less
        // what is not a capture (a dataset's README.md, its compression_config.yaml).
        let mut below = Vec::new();
        crate::corpus::walk_dir(input, &mut below)?;
        let before = files.len();
        files.extend(below.into_iter().filter(|p| {
            let name = p.to_string_lossy();
            CAPTURE_EXTENSIONS.iter().any(|x| name.ends_with(x))
        }));
        if files.len() == before {
            return Err(Error::corpus(
                input,
                "directory",
                "holds no .parquet or .jsonl file",
            ));
        }
    }
    Ok(files)
}

/// The columns to read and the codec, from the flags and the first file's schema.
fn plan_columns(
    opts: &ImportOptions,
    files: &[PathBuf],
) -> Result<(Columns, Codec, Option<serde_json::Value>)> {
    let first = files
        .first()
        .ok_or_else(|| Error::flag("(inputs)", "name at least one capture file"))?;
    match opts.from {
        CaptureFormat::Distillkit => {
            for (flag, v) in [
                ("--ids", &opts.ids),
                ("--logprobs", &opts.logprobs),
                ("--mask", &opts.mask),
            ] {
                if v.is_some() {
                    return Err(Error::flag(
                        flag,
                        "is for --from topk-columns; DistillKit captures name their columns",
                    ));
                }
            }
            let names = parquet_columns(first)?;
            let has = |c: &str| names.iter().any(|n| n == c);
            if has("compressed_logprobs") || has("bytepacked_indices") {
                let Some(path) = &opts.compression else {
                    return Err(Error::flag(
                        "--compression",
                        format!(
                            "{} is a compressed DistillKit capture: give its logprob_compressor \
                             block (the capture's compression_config.yaml) with --compression",
                            first.display()
                        ),
                    ));
                };
                let text = std::fs::read_to_string(path).at(path)?;
                let c = Compression::from_yaml(&text)
                    .map_err(|m| Error::corpus(path, "logprob_compressor", m))?;
                let value = serde_json::to_value(&c).map_err(|e| Error::Internal(e.to_string()))?;
                let columns = Columns {
                    input_ids: opts.input_ids.clone(),
                    kind: ColumnsKind::Compressed {
                        logprobs: "compressed_logprobs".into(),
                        ids: "bytepacked_indices".into(),
                    },
                    document_mask: Some("attention_mask".into()),
                    loss_mask: None,
                };
                Ok((columns, Codec::DistillKit(Decoder::new(&c)), Some(value)))
            } else if has("packed_indices") && has("exact_values") && has("coeffs") {
                Err(Error::corpus(
                    first,
                    "schema",
                    "is a capture in DistillKit's legacy format (packed_indices, exact_values, \
                     coeffs: legacy_logit_compression), which import does not read; DistillKit's \
                     current LogprobCompressor format and token_ids + top_values are read",
                ))
            } else if has("token_ids") && has("top_values") {
                let columns = Columns {
                    input_ids: opts.input_ids.clone(),
                    kind: ColumnsKind::TopK {
                        ids: "token_ids".into(),
                        logprobs: "top_values".into(),
                    },
                    document_mask: Some("attention_mask".into()),
                    loss_mask: None,
                };
                let k = first_k(first, &columns)?;
                Ok((columns, Codec::Plain { k }, None))
            } else {
                Err(Error::corpus(
                    first,
                    "schema",
                    format!(
                        "is not a DistillKit capture: it has neither compressed_logprobs + \
                         bytepacked_indices nor token_ids + top_values (columns: {})",
                        names.join(", ")
                    ),
                ))
            }
        }
        CaptureFormat::TopkColumns => {
            let (Some(ids), Some(lps)) = (&opts.ids, &opts.logprobs) else {
                return Err(Error::flag(
                    if opts.ids.is_none() {
                        "--ids"
                    } else {
                        "--logprobs"
                    },
                    "--from topk-columns needs --ids COL and --logprobs COL",
                ));
            };
            if opts.compression.is_some() {
                return Err(Error::flag(
                    "--compression",
                    "is for compressed DistillKit captures",
                ));
            }
            let columns = Columns {
                input_ids: opts.input_ids.clone(),
                kind: ColumnsKind::TopK {
                    ids: ids.clone(),
                    logprobs: lps.clone(),
                },
                document_mask: None,
                loss_mask: opts.mask.clone(),
            };
            let k = first_k(first, &columns)?;
            Ok((columns, Codec::Plain { k }, None))
        }
    }
}

/// Column names of a Parquet file.
fn parquet_columns(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).at(path)?;
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| Error::corpus(path, "footer", format!("not a readable Parquet file: {e}")))?;
    Ok(b.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect())
}

/// k of a plain top-k capture: the length of the first entry of the first document.
fn first_k(path: &Path, columns: &Columns) -> Result<usize> {
    for d in DocumentReader::open(path, 0, columns)? {
        if let Entries::TopK { off, .. } = &d?.entries {
            if off.len() > 1 {
                let k = off[1] - off[0];
                if k == 0 {
                    return Err(Error::corpus(
                        path,
                        "row 0",
                        "the first position has no top-k entries",
                    ));
                }
                return Ok(k);
            }
        }
    }
    Err(Error::corpus(
        path,
        "file",
        "holds no position with top-k entries",
    ))
}

fn columns_description(c: &Columns) -> String {
    let mut v = vec![c.input_ids.clone()];
    match &c.kind {
        ColumnsKind::Compressed { logprobs, ids } => {
            v.push(logprobs.clone());
            v.push(ids.clone());
        }
        ColumnsKind::TopK { ids, logprobs } => {
            v.push(ids.clone());
            v.push(logprobs.clone());
        }
    }
    v.extend(c.document_mask.clone());
    v.extend(c.loss_mask.clone());
    v.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_accurate_where_one_minus_the_mass_cancels() {
        // Head mass 1 − 1e-12: the tail is ln(1e-12) to 6 digits, where 1 − Σ in f64 keeps 4.
        let lse = (-1e-12f64).ln_1p();
        let tail = ln_one_minus_exp(lse);
        assert!((tail - 1e-12f64.ln()).abs() < 1e-6, "{tail}");
        // Small head mass: ln(1 − 1e-20) = −1e-20, not 0 from rounding 1 − p.
        let tail = ln_one_minus_exp(1e-20f64.ln());
        assert!((tail + 1e-20).abs() < 1e-30 && tail < 0.0, "{tail}");
    }
}
