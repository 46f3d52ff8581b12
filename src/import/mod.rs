//! The import stage: teacher top-k captured elsewhere (DistillKit's vLLM captures, any top-k
//! columns) → a taidcache cache, so a teacher that runs on a serving engine feeds `distill`.
//!
//! ```text
//! input files ─▶ documents (source) ─▶ decode + tail, in parallel (rayon) ─▶ CacheWriter
//! ```
//!
//! - [`distillkit`]: DistillKit's compression settings and its decompression, bit for bit.
//! - [`source`]: the input files, read a batch of rows at a time, split into documents.
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
//! capture can decode to a top-k mass of 1 or more; such a position keeps a tail of
//! `--tail-floor` and its log-probs are shifted so that the position sums to 1 (counted, printed
//! and recorded in the manifest).
//!
//! Input document `i` (in file order) is sequence `i` of the cache, so shards are fixed by the
//! input alone and a rerun after a kill continues after the last complete shard.

pub mod distillkit;
pub mod source;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use half::f16;
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
pub enum From {
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
    pub from: From,
    /// Capture files or directories (every non-hidden file below, sorted by name).
    #[arg(required = true, value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
    /// Cache directory to create, or to resume if it holds an unfinished import of the same inputs.
    #[arg(long, value_name = "CACHE")]
    pub out: PathBuf,
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
    /// Positions per row; default: the longest document. Longer documents are cut (counted).
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
    /// Tail mass given to a position whose decoded top-k mass is 1 or more (lossy captures).
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
    pub out: PathBuf,
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
        scratch: &mut Scratch,
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
        let mut seen: Vec<u64> = Vec::with_capacity(k);
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
                        scratch,
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
            seen.clear();
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
                seen.push(ids[j]);
            }
            seen.sort_unstable();
            if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
                return Err(fail(e, format!("top-k id {} appears twice", w[0])));
            }
            // Most probable first, as the cache stores them (a lossy decode need not be sorted;
            // ties keep the capture's order).
            order.clear();
            order.extend(0..k);
            order.sort_by(|&a, &b| lps[b].total_cmp(&lps[a]));
            let lse = logsumexp(order.iter().map(|&j| lps[j] as f64));
            let (shift, tail) = if lse >= self.full_ln {
                counts.floored += 1;
                (lse - self.full_ln, self.floor_ln)
            } else {
                (0.0, ln_one_minus_exp(lse))
            };
            for &j in &order {
                out.topk_ids.push(ids[j] as u32);
                out.topk_logprobs.push(f16::from_f64(lps[j] as f64 - shift));
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

/// The writing side of an import: documents → rows (in parallel) → shards.
struct Rows<'a> {
    convert: Convert<'a>,
    cache: CacheWriter,
    /// Whether a shard is still to be written (the others are complete from an earlier run; their
    /// documents are still converted, for the counts).
    pending: Box<dyn Fn(u64) -> bool + Send + Sync>,
    shard_rows: u64,
    /// Sequence id of the next document.
    seq_id: u64,
    /// The shard being written.
    open: Option<u64>,
    counts: Counts,
    /// One row per document of a chunk, reused.
    buffers: Vec<ShardBatch>,
}

impl Rows<'_> {
    /// Convert `docs` (the next documents in input order) and write the rows of pending shards.
    fn write(&mut self, docs: &[Document]) -> Result<()> {
        let (s, k) = (self.convert.seq_len, self.convert.codec.k());
        let first = self.seq_id;
        self.buffers
            .resize_with(docs.len(), || ShardBatch::new(s, k));
        let convert = &self.convert;
        let results: Vec<Result<Counts>> = docs
            .par_iter()
            .zip(self.buffers.par_iter_mut())
            .enumerate()
            .map_init(Scratch::default, |scratch, (i, (d, row))| {
                convert.row(d, first + i as u64, row, scratch)
            })
            .collect();
        for (i, r) in results.into_iter().enumerate() {
            self.counts += r?;
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
            self.cache.write_rows(shard, &self.buffers[i])?;
        }
        self.seq_id += docs.len() as u64;
        Ok(())
    }
}

/// log Σ exp(x), in f64.
fn logsumexp(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// log(1 − e^x) for x < 0, accurate at both ends (Mächler's log1mexp).
fn ln_one_minus_exp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// Documents decoded in parallel at a time: about 64 MiB of rows, at least 1.
fn chunk_docs(seq_len: usize, k: usize) -> usize {
    let per_row = seq_len * (k * 6 + 9);
    ((64 << 20) / per_row.max(1)).clamp(1, 1024)
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
                return Err(Error::flag(
                    "(inputs)",
                    "the capture files hold no document",
                ));
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
                    From::Distillkit => "distillkit",
                    From::TopkColumns => "topk-columns",
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
        From::Distillkit => "distillkit",
        From::TopkColumns => "topk-columns",
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

    let _lock = crate::cache::lock::lock_for_writing(&opts.out, 0, 1)?;
    let write = WriteOptions {
        zstd_level: opts.zstd_level,
        row_group_rows: default_row_group_rows(seq_len, k),
        metadata: schema::footer_metadata(&manifest),
        encoding: opts.encoding,
    };
    let cache = match CacheWriter::create_or_resume(&opts.out, manifest, write)? {
        Resumed::Complete => {
            writeln!(
                out,
                "{}: already complete, nothing to do",
                opts.out.display()
            )
            .at(&opts.out)?;
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
        Resumed::Open(c) => *c,
    };
    for why in cache.redone_shards() {
        writeln!(out, "{why}; importing it again").at(&opts.out)?;
    }
    let resumed = cache.resumed_shards();
    let pending = cache.pending_shards();

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
    let mut rows = Rows {
        convert,
        cache,
        pending: Box::new(pending),
        shard_rows: opts.shard_rows as u64,
        seq_id: 0,
        open: None,
        counts: Counts::default(),
        buffers: Vec::new(),
    };
    // A reader thread decodes the input files into chunks of documents while this one turns the
    // previous chunk into rows (rayon) and writes them.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Document>>>(2);
    std::thread::scope(|scope| -> Result<()> {
        let reader = scope.spawn(|| {
            let tx = tx;
            let mut docs = Vec::with_capacity(chunk);
            let mut last_row = (usize::MAX, u64::MAX);
            for (i, f) in files.iter().enumerate() {
                let reader = match DocumentReader::open(f, i, &columns) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                for doc in reader {
                    let doc = match doc {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    if (doc.file, doc.row) != last_row {
                        last_row = (doc.file, doc.row);
                        bar.inc(1);
                    }
                    docs.push(doc);
                    if docs.len() == chunk
                        && tx
                            .send(Ok(std::mem::replace(&mut docs, Vec::with_capacity(chunk))))
                            .is_err()
                    {
                        return;
                    }
                }
            }
            if !docs.is_empty() {
                let _ = tx.send(Ok(docs));
            }
        });
        let result = rx.iter().try_for_each(|docs| rows.write(&docs?));
        // On an error the receiver goes away, and the reader stops at its next send.
        drop(rx);
        reader
            .join()
            .map_err(|_| Error::Internal("the capture reader thread panicked".into()))?;
        result
    })?;
    if let Some(s) = rows.open.take() {
        rows.cache.finish_shard(s)?;
    }
    bar.finish_and_clear();
    let Rows {
        mut cache,
        seq_id,
        counts,
        ..
    } = rows;
    if seq_id == 0 {
        return Err(Error::flag(
            "(inputs)",
            "the capture files hold no document",
        ));
    }
    if let Some(info) = cache.manifest_mut().import.as_mut() {
        info.documents = seq_id;
        info.positions = counts.positions;
        info.floored_positions = counts.floored;
        info.truncated_positions = counts.truncated;
    }
    let (_, written) = cache.finish(seq_id)?;

    let share = |n: u64| 100.0 * n as f64 / counts.positions.max(1) as f64;
    writeln!(
        out,
        "{}: imported {} documents ({} positions with a target) into {} shards of seq_len {seq_len}, \
         resumed {resumed} shards, {:.1}s",
        opts.out.display(),
        seq_id,
        counts.positions,
        written.shards,
        started.elapsed().as_secs_f64()
    )
    .at(&opts.out)?;
    writeln!(
        out,
        "{}: {} positions ({:.3}%) decoded to a top-{k} mass of at least 1 - {:e}: tail floored at {:e}",
        opts.out.display(),
        counts.floored,
        share(counts.floored),
        opts.tail_floor,
        opts.tail_floor
    )
    .at(&opts.out)?;
    if counts.truncated > 0 {
        writeln!(
            out,
            "{}: {} positions beyond --seq-len {seq_len} were dropped",
            opts.out.display(),
            counts.truncated
        )
        .at(&opts.out)?;
    }
    Ok(ImportSummary {
        out: opts.out.clone(),
        documents: seq_id,
        positions: counts.positions,
        floored_positions: counts.floored,
        truncated_positions: counts.truncated,
        shards_written: written.shards,
        shards_resumed: resumed,
        seq_len,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// The input files: files as given, directories expanded (non-hidden files, sorted by name).
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).at(input)?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = Vec::new();
            collect(input, &mut found)?;
            if found.is_empty() {
                return Err(Error::corpus(
                    input,
                    "directory",
                    "holds no .parquet or .jsonl file",
                ));
            }
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .at(dir)?
        .collect::<std::io::Result<Vec<_>>>()
        .at(dir)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else if [".parquet", ".jsonl", ".json", ".ndjson"]
            .iter()
            .any(|x| name.ends_with(x))
        {
            out.push(path);
        }
    }
    Ok(())
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
        From::Distillkit => {
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
        From::TopkColumns => {
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
        assert!((logsumexp([0.5f64.ln(), 0.25f64.ln()].into_iter()) - 0.75f64.ln()).abs() < 1e-15);
    }
}
