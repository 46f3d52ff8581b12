//! Flat row buffers ([`ShardBatch`]) and the atomic shard writer.
//!
//! A shard becomes visible under its final name only once it is complete and durable:
//! it is written to `<final>.tmp`, fsynced, renamed, and the directory fsynced. A crash leaves at
//! most a stale `.tmp`, which the next run overwrites.
//!
//! # Memory usage
//!
//! [`write_shard_atomic`] converts one row group at a time to Arrow arrays (a copy of about
//! `row_group_rows × seq_len × (6k + 9)` bytes) and the Parquet writer holds that row group's
//! encoded pages until it is flushed; the batch itself stays borrowed.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, ListArray, UInt32Array,
    UInt64Array, UInt8Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use half::f16;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Encoding as ParquetEncoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use xxhash_rust::xxh3::Xxh3;

use super::manifest::ShardEntry;
use super::schema::{self, arrow_schema_for};
use super::{commit_tmp, levels, tmp_path, Encoding, LOGPROB_STEP};
use crate::error::{Error, IoContext, Result};

/// Rows of one shard in flat, row-major buffers; `seq_len` (S) and `k` are fixed per shard.
///
/// Row r's tokens are `input_ids[r*S..(r+1)*S]`, position i's top-k ids are
/// `topk_ids[(r*S+i)*k..(r*S+i+1)*k]`, and likewise for the other buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardBatch {
    pub seq_len: usize,
    pub k: usize,
    /// [rows]
    pub seq_ids: Vec<u64>,
    /// [rows * S]
    pub input_ids: Vec<u32>,
    /// [rows * S]
    pub loss_mask: Vec<bool>,
    /// [rows * S * k]
    pub topk_ids: Vec<u32>,
    /// [rows * S * k], descending along k.
    pub topk_logprobs: Vec<f16>,
    /// [rows * S]
    pub tail_logmass: Vec<f32>,
}

impl ShardBatch {
    pub fn new(seq_len: usize, k: usize) -> Self {
        ShardBatch {
            seq_len,
            k,
            seq_ids: Vec::new(),
            input_ids: Vec::new(),
            loss_mask: Vec::new(),
            topk_ids: Vec::new(),
            topk_logprobs: Vec::new(),
            tail_logmass: Vec::new(),
        }
    }

    /// An empty batch with room for `rows` rows (so that refilling it does not allocate).
    pub fn with_capacity(seq_len: usize, k: usize, rows: usize) -> Self {
        let positions = rows * seq_len;
        ShardBatch {
            seq_len,
            k,
            seq_ids: Vec::with_capacity(rows),
            input_ids: Vec::with_capacity(positions),
            loss_mask: Vec::with_capacity(positions),
            topk_ids: Vec::with_capacity(positions * k),
            topk_logprobs: Vec::with_capacity(positions * k),
            tail_logmass: Vec::with_capacity(positions),
        }
    }

    pub fn rows(&self) -> usize {
        self.seq_ids.len()
    }

    /// Append every row of `other` (same `seq_len` and `k`).
    pub fn extend_from(&mut self, other: &ShardBatch) {
        self.seq_ids.extend_from_slice(&other.seq_ids);
        self.input_ids.extend_from_slice(&other.input_ids);
        self.loss_mask.extend_from_slice(&other.loss_mask);
        self.topk_ids.extend_from_slice(&other.topk_ids);
        self.topk_logprobs.extend_from_slice(&other.topk_logprobs);
        self.tail_logmass.extend_from_slice(&other.tail_logmass);
    }

    /// Drop the first `n` rows.
    pub fn drain_front(&mut self, n: usize) {
        let (s, k) = (self.seq_len, self.k);
        self.seq_ids.drain(..n);
        self.input_ids.drain(..n * s);
        self.loss_mask.drain(..n * s);
        self.topk_ids.drain(..n * s * k);
        self.topk_logprobs.drain(..n * s * k);
        self.tail_logmass.drain(..n * s);
    }

    /// Drop the rows, keep the capacity.
    pub fn clear(&mut self) {
        self.seq_ids.clear();
        self.input_ids.clear();
        self.loss_mask.clear();
        self.topk_ids.clear();
        self.topk_logprobs.clear();
        self.tail_logmass.clear();
    }

    /// Check that every buffer has the length `rows()`, S and k imply.
    pub fn check_lengths(&self) -> std::result::Result<(), String> {
        let (rows, s, k) = (self.rows(), self.seq_len, self.k);
        let checks = [
            ("input_ids", self.input_ids.len(), rows * s),
            ("loss_mask", self.loss_mask.len(), rows * s),
            ("topk_ids", self.topk_ids.len(), rows * s * k),
            ("topk_logprobs", self.topk_logprobs.len(), rows * s * k),
            ("tail_logmass", self.tail_logmass.len(), rows * s),
        ];
        for (name, found, expected) in checks {
            if found != expected {
                return Err(format!(
                    "batch buffer `{name}` has {found} values, expected {expected} \
                     ({rows} rows, seq_len {s}, k {k})"
                ));
            }
        }
        Ok(())
    }

    /// The rows in `range` as a v1 [`RecordBatch`] (copies the values; offsets are computed, as
    /// every list has a fixed length).
    pub fn to_record_batch(&self, range: Range<usize>) -> Result<RecordBatch> {
        self.to_record_batch_for(range, Encoding::Plain)
    }

    /// The rows in `range` as a [`RecordBatch`] of `encoding`'s schema.
    pub fn to_record_batch_for(
        &self,
        range: Range<usize>,
        encoding: Encoding,
    ) -> Result<RecordBatch> {
        let internal = |msg: String| Error::Internal(format!("ShardBatch::to_record_batch: {msg}"));
        self.check_lengths().map_err(internal)?;
        if range.start > range.end || range.end > self.rows() {
            return Err(internal(format!(
                "rows {range:?} out of 0..{}",
                self.rows()
            )));
        }
        let (s, k) = (self.seq_len, self.k);
        let n = range.len();
        if n.checked_mul(s)
            .and_then(|p| i32::try_from(p).ok())
            .is_none()
        {
            return Err(internal(format!(
                "{n} rows of {s} positions overflow 32-bit list offsets; write fewer rows per row group"
            )));
        }
        let schema = arrow_schema_for(k, encoding);
        let pos = range.start * s..range.end * s;
        let val = range.start * s * k..range.end * s * k;
        let offsets = OffsetBuffer::new((0..=n).map(|r| (r * s) as i32).collect());
        let list = |col: &str, values: ArrayRef| -> Result<ArrayRef> {
            let field = item_field(&schema, col);
            Ok(Arc::new(
                ListArray::try_new(field, offsets.clone(), values, None)
                    .map_err(|e| internal(format!("{col}: {e}")))?,
            ))
        };
        let fixed = |col: &str, values: ArrayRef| -> Result<ArrayRef> {
            let field = match item_field(&schema, col).data_type() {
                DataType::FixedSizeList(f, _) => f.clone(),
                other => return Err(internal(format!("{col}: unexpected item type {other}"))),
            };
            Ok(Arc::new(
                FixedSizeListArray::try_new(field, k as i32, values, None)
                    .map_err(|e| internal(format!("{col}: {e}")))?,
            ))
        };
        // The top-k columns: ids and log-probs as they are (v1), ids with u8 steps (v2), or
        // sorted by id as gaps and levels (v3).
        let (ids, values): (ArrayRef, ArrayRef) = match encoding {
            Encoding::Plain => (
                Arc::new(UInt32Array::from(self.topk_ids[val.clone()].to_vec())),
                Arc::new(Float16Array::from(self.topk_logprobs[val].to_vec())),
            ),
            Encoding::Steps => {
                let mut steps = Vec::with_capacity(val.len());
                encode_steps(&self.topk_logprobs[val.clone()], k, &mut steps);
                (
                    Arc::new(UInt32Array::from(self.topk_ids[val].to_vec())),
                    Arc::new(UInt8Array::from(steps)),
                )
            }
            Encoding::Compact => {
                let mut gaps = Vec::with_capacity(val.len());
                let mut lv = Vec::with_capacity(val.len());
                let mut scratch = Vec::with_capacity(k);
                for (ids, lps) in self.topk_ids[val.clone()]
                    .chunks(k)
                    .zip(self.topk_logprobs[val].chunks(k))
                {
                    levels::encode_position(ids, lps, &mut gaps, &mut lv, &mut scratch);
                }
                (
                    Arc::new(UInt32Array::from(gaps)),
                    Arc::new(UInt8Array::from(lv)),
                )
            }
        };
        let (ids_name, values_name) = (
            schema::ids_column(encoding),
            schema::values_column(encoding),
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(self.seq_ids[range].to_vec())),
            list(
                schema::INPUT_IDS,
                Arc::new(UInt32Array::from(self.input_ids[pos.clone()].to_vec())),
            )?,
            list(
                schema::LOSS_MASK,
                Arc::new(BooleanArray::from(self.loss_mask[pos.clone()].to_vec())),
            )?,
            list(ids_name, fixed(ids_name, ids)?)?,
            list(values_name, fixed(values_name, values)?)?,
            list(
                schema::TAIL_LOGMASS,
                Arc::new(Float32Array::from(self.tail_logmass[pos].to_vec())),
            )?,
        ];
        RecordBatch::try_new(schema, columns).map_err(|e| internal(e.to_string()))
    }
}

/// The `steps` encoding of log-probs (format v2; each position's k values non-increasing): `q_j =
/// round(−ℓ_j / LOGPROB_STEP)`, stored as steps `q_j − q_{j−1}` (`q_{−1} = 0`) that fit in a u8.
/// A step larger than 255 (a drop of more than 31.9 nats between neighbours, far below any
/// probability that matters) is cut to 255 and the next steps continue from the decoded value,
/// so no error accumulates.
pub fn encode_steps(logprobs: &[f16], k: usize, out: &mut Vec<u8>) {
    let inv = 1.0 / LOGPROB_STEP;
    for pos in logprobs.chunks(k) {
        let mut decoded = 0u32;
        for &v in pos {
            let q = (-v.to_f32() * inv).round();
            // NaN and negative q (a log-prob above 0) become 0; +∞ saturates.
            let q = if q > 0.0 {
                q.min(u32::MAX as f32) as u32
            } else {
                0
            };
            let step = q.saturating_sub(decoded).min(255);
            decoded += step;
            out.push(step as u8);
        }
    }
}

/// Inverse of [`encode_steps`] for quantization step `step` (nats): appends `k` f16 log-probs per
/// position to `out`.
pub fn decode_steps(steps: &[u8], k: usize, step: f32, out: &mut Vec<f16>) {
    for pos in steps.chunks(k) {
        let mut q = 0u32;
        out.extend(pos.iter().map(|&s| {
            q += s as u32;
            f16::from_f32(-(q as f32) * step)
        }));
    }
}

/// The item field of list column `col` of the v1 schema.
pub(crate) fn item_field(schema: &Schema, col: &str) -> FieldRef {
    match schema.field_with_name(col).map(|f| f.data_type()) {
        Ok(DataType::List(f)) => f.clone(),
        _ => unreachable!("v1 column {col} is a list"),
    }
}

/// How [`write_shard_atomic`] encodes a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOptions {
    /// zstd level for every column (default 3; 1..=22, negative levels are fast modes).
    pub zstd_level: i32,
    /// Rows per row group; 0 means [`default_row_group_rows`].
    pub row_group_rows: usize,
    /// Extra footer key-value metadata, e.g. [`schema::META_VOCAB_SIZE`]. The writer itself sets
    /// format version, top-k and seq_len from the batch.
    pub metadata: Vec<(String, String)>,
    /// Plain (format v1), compact (format v3) or steps (format v2).
    pub encoding: Encoding,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            zstd_level: 3,
            row_group_rows: 0,
            metadata: Vec::new(),
            encoding: Encoding::Plain,
        }
    }
}

/// Dictionary page limit of `topk_ids` (the default is 1 MiB): any vocabulary up to a million
/// tokens fits as u32, so the dictionary never falls back to PLAIN halfway through a row group.
const TOPK_IDS_DICTIONARY_BYTES: usize = 4 << 20;

/// Data page size of the v2 and v3 encodings' top-k columns: zstd compresses each page on its own,
/// and pages of a whole row group let its entropy coder learn the byte planes once (the 1 MiB
/// default costs 5–25% on these columns).
const COMPACT_PAGE_BYTES: usize = 16 << 20;

/// Raw (uncompressed) bytes of one row group the reader should decode at a time.
const ROW_GROUP_RAW_BYTES: usize = 8 << 20;

/// Raw bytes of one position: k ids (4) and log-probs (2), tail (4), input id (4), mask (1).
pub fn raw_bytes_per_position(k: usize) -> usize {
    k * (4 + 2) + 4 + 4 + 1
}

/// Rows per row group for the reader: about 8 MiB of raw (uncompressed) data per row group, at
/// least 1.
pub fn default_row_group_rows(seq_len: usize, k: usize) -> usize {
    let per_row = 8 + seq_len * raw_bytes_per_position(k);
    (ROW_GROUP_RAW_BYTES / per_row).max(1)
}

/// Write `batch` to `final_path` atomically: `<final>.tmp` → fsync → rename → fsync(dir).
///
/// The batch must hold at least one row, with consecutive `seq_ids`. Returns the
/// [`ShardEntry`] fields the writer knows (rows, tokens, bytes, xxh3 of the final bytes, seq-id
/// range); the caller sets `index` and `path`.
pub fn write_shard_atomic(
    final_path: &Path,
    batch: &ShardBatch,
    opts: &WriteOptions,
) -> Result<ShardEntry> {
    let mut w = ShardWriter::create(final_path, batch.seq_len, batch.k, opts)?;
    match w.write(batch) {
        Ok(()) => w.finish(),
        Err(e) => {
            w.abandon();
            Err(e)
        }
    }
}

/// Streams rows into one shard, row group by row group, so a shard never has to fit in memory.
///
/// The file exists only as `<final>.tmp` until [`ShardWriter::finish`] makes it durable and
/// renames it; dropping an unfinished writer leaves just the `.tmp`, which the next run replaces.
///
/// # Memory usage
///
/// At most one row group of pending rows (`row_group_rows × seq_len × (6k + 9)` bytes) plus the
/// Parquet writer's encoded pages of the row group being written.
pub struct ShardWriter {
    final_path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<HashingWrite<File>>,
    pending: ShardBatch,
    rg_rows: usize,
    first: Option<u64>,
    rows: u64,
    encoding: Encoding,
}

impl ShardWriter {
    /// Start `<final_path>.tmp` for rows of `seq_len` tokens and `k` log-probs each.
    pub fn create(
        final_path: &Path,
        seq_len: usize,
        k: usize,
        opts: &WriteOptions,
    ) -> Result<Self> {
        let bad = |msg: String| Error::cache(final_path, format!("cannot write shard: {msg}"));
        if seq_len == 0 || k == 0 {
            return Err(bad(format!("seq_len {seq_len} and k {k} must be positive")));
        }
        let schema = arrow_schema_for(k, opts.encoding);
        let props = writer_properties(&schema, seq_len, k, opts).map_err(bad)?;
        let rg_rows = match opts.row_group_rows {
            0 => default_row_group_rows(seq_len, k),
            n => n,
        };
        let tmp = tmp_path(final_path);
        let file = File::create(&tmp).at(&tmp)?;
        let hashing = HashingWrite {
            inner: file,
            hasher: Xxh3::new(),
            bytes: 0,
        };
        let writer = ArrowWriter::try_new(hashing, schema, Some(props))
            .map_err(|e| Error::parquet(&tmp, e))?;
        Ok(Self {
            final_path: final_path.to_path_buf(),
            tmp,
            writer,
            pending: ShardBatch::with_capacity(seq_len, k, rg_rows),
            rg_rows,
            first: None,
            rows: 0,
            encoding: opts.encoding,
        })
    }

    /// Append rows; their `seq_ids` must continue the shard's consecutively.
    pub fn write(&mut self, batch: &ShardBatch) -> Result<()> {
        let bad =
            |msg: String| Error::cache(&self.final_path, format!("cannot write shard: {msg}"));
        batch.check_lengths().map_err(bad)?;
        if (batch.seq_len, batch.k) != (self.pending.seq_len, self.pending.k) {
            return Err(bad(format!(
                "rows of seq_len {} and k {} in a shard of seq_len {} and k {}",
                batch.seq_len, batch.k, self.pending.seq_len, self.pending.k
            )));
        }
        let first = *self
            .first
            .get_or_insert(batch.seq_ids.first().copied().unwrap_or(0));
        for (r, &id) in batch.seq_ids.iter().enumerate() {
            let want = first + self.rows + r as u64;
            if id != want {
                return Err(bad(format!(
                    "seq ids must be consecutive: row {} has {id}, expected {want}",
                    self.rows + r as u64
                )));
            }
        }
        self.rows += batch.rows() as u64;
        self.pending.extend_from(batch);
        while self.pending.rows() >= self.rg_rows {
            self.flush_rows(self.rg_rows)?;
        }
        Ok(())
    }

    /// Write the first `n` pending rows as one row group and drop them from the buffer.
    fn flush_rows(&mut self, n: usize) -> Result<()> {
        let tmp = &self.tmp;
        let pq = |e: parquet::errors::ParquetError| Error::parquet(tmp, e);
        self.writer
            .write(&self.pending.to_record_batch_for(0..n, self.encoding)?)
            .map_err(pq)?;
        // One write call per row group: flush closes it whatever the writer's own limits.
        self.writer.flush().map_err(pq)?;
        self.pending.drain_front(n);
        Ok(())
    }

    /// Give up on this shard: close and delete the `.tmp`.
    pub fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = std::fs::remove_file(tmp);
    }

    /// Write what is pending, fsync, and rename to the final name (then fsync the directory).
    pub fn finish(mut self) -> Result<ShardEntry> {
        if self.rows == 0 {
            return Err(Error::cache(
                &self.final_path,
                "cannot write shard: no rows",
            ));
        }
        if self.pending.rows() > 0 {
            self.flush_rows(self.pending.rows())?;
        }
        let Self {
            final_path,
            tmp,
            writer,
            pending,
            first,
            rows,
            ..
        } = self;
        let mut hashing = writer.into_inner().map_err(|e| Error::parquet(&tmp, e))?;
        hashing.inner.flush().at(&tmp)?;
        hashing.inner.sync_all().at(&tmp)?;
        let HashingWrite {
            inner,
            hasher,
            bytes,
        } = hashing;
        drop(inner);
        commit_tmp(&tmp, &final_path)?;
        let first = first.unwrap_or(0);
        Ok(ShardEntry {
            index: 0,
            path: String::new(),
            rows,
            tokens: rows * pending.seq_len as u64,
            bytes,
            seq_id_start: first,
            seq_id_end: first + rows,
            xxh3: format!("{:032x}", hasher.digest128()),
        })
    }
}

/// The Parquet properties of a v1 shard. Measured on synthetic Zipf-distributed ids (k = 50,
/// S = 2048, vocab 32,000 and 151,936; numbers in `schemas/v1/README.md`), and checked to read
/// back exactly in pyarrow 26, DuckDB 2.0 and polars 2.1:
///
/// - zstd at `opts.zstd_level` on every column; data pages v1, whose repetition and definition
///   levels are compressed with the values (v2 pages store them raw: about 5 bytes per position
///   for each `list<fixed_size_list>` column; 198.6 → 188.7 B/token plain and 120.4 → 110.5
///   compact on the synthetic source of `benches/storage.rs`).
/// - `topk_ids`: dictionary (fallback PLAIN), 9–12% smaller than PLAIN and 13% smaller than the
///   v2 default DELTA_BINARY_PACKED.
/// - `topk_logprobs` (float16, stored as 2-byte FIXED_LEN_BYTE_ARRAY): PLAIN. The v2 default
///   DELTA_BYTE_ARRAY is 5% larger, makes writing a shard 1.7× slower, and polars cannot read it;
///   BYTE_STREAM_SPLIT is 16% smaller but DuckDB cannot read it on this type.
/// - `tail_logmass` (float32): BYTE_STREAM_SPLIT, 7% smaller than PLAIN, read everywhere.
/// - `input_ids`: PLAIN (smaller than dictionary or delta); `seq_id`: DELTA_BINARY_PACKED.
/// - Statistics only on `seq_id` (the one column worth filtering on).
///
/// The steps encoding (format v2) differs in two columns: `topk_ids` BYTE_STREAM_SPLIT (the
/// four byte planes of the ids apart, so zstd's entropy coder sees the skewed high bytes on
/// their own; 20–25% smaller than the dictionary on 151,936-token vocabularies, see
/// `benches/storage.rs`), and `topk_logprob_steps` (u8 steps) BYTE_STREAM_SPLIT too. The
/// compact encoding (format v3) stores `topk_id_gaps` and `topk_logprob_levels` the same way:
/// the gaps' byte planes are small numbers in the low planes and zeros above.
fn writer_properties(
    schema: &Schema,
    seq_len: usize,
    k: usize,
    opts: &WriteOptions,
) -> std::result::Result<WriterProperties, String> {
    let level = ZstdLevel::try_new(opts.zstd_level)
        .map_err(|e| format!("zstd level {}: {e}", opts.zstd_level))?;
    let mut own = vec![
        (
            schema::META_FORMAT_VERSION,
            opts.encoding.format_version().to_string(),
        ),
        (schema::META_TOP_K, k.to_string()),
        (schema::META_SEQ_LEN, seq_len.to_string()),
    ];
    match opts.encoding {
        Encoding::Plain => {}
        Encoding::Steps => own.push((schema::META_LOGPROB_STEP, LOGPROB_STEP.to_string())),
        Encoding::Compact => own.push((schema::META_LOGPROB_LEVELS, levels::footer_value())),
    }
    let mut kv: Vec<KeyValue> = own
        .iter()
        .map(|(k, v)| KeyValue::new(k.to_string(), v.clone()))
        .collect();
    for (key, value) in &opts.metadata {
        if let Some((_, v)) = own.iter().find(|(k, _)| k == key) {
            if v != value {
                return Err(format!(
                    "footer metadata {key} = {value} contradicts the batch ({v})"
                ));
            }
            continue;
        }
        kv.push(KeyValue::new(key.clone(), value.clone()));
    }

    let mut builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_created_by(format!("taidcache {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_key_value_metadata(Some(kv));
    let descr = ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|e| e.to_string())?;
    for col in descr.columns() {
        let path = col.path().clone();
        builder = match path.parts()[0].as_str() {
            schema::SEQ_ID => builder
                .set_column_statistics_enabled(path.clone(), EnabledStatistics::Chunk)
                .set_column_encoding(path, ParquetEncoding::DELTA_BINARY_PACKED),
            name if opts.encoding != Encoding::Plain
                && (name == schema::ids_column(opts.encoding)
                    || name == schema::values_column(opts.encoding)) =>
            {
                builder
                    .set_column_data_page_size_limit(path.clone(), COMPACT_PAGE_BYTES)
                    .set_column_data_page_row_count_limit(path.clone(), usize::MAX)
                    .set_column_encoding(path, ParquetEncoding::BYTE_STREAM_SPLIT)
            }
            schema::TOPK_IDS => builder
                .set_column_dictionary_enabled(path.clone(), true)
                .set_column_dictionary_page_size_limit(path.clone(), TOPK_IDS_DICTIONARY_BYTES)
                .set_column_encoding(path, ParquetEncoding::PLAIN),
            schema::TAIL_LOGMASS => {
                builder.set_column_encoding(path, ParquetEncoding::BYTE_STREAM_SPLIT)
            }
            _ => builder.set_column_encoding(path, ParquetEncoding::PLAIN),
        };
    }
    Ok(builder.build())
}

/// Hashes and counts the bytes on their way to the file, so the shard need not be read back.
struct HashingWrite<W> {
    inner: W,
    hasher: Xxh3,
    bytes: u64,
}

impl<W: Write> Write for HashingWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_steps_decode_within_half_a_step_and_saturate_without_drift() {
        let k = 6;
        let mut lps = Vec::new();
        let mut rng = crate::testing::Normal::new(5);
        for _ in 0..2000 {
            let mut v: Vec<f32> = (0..k).map(|_| -(rng.uniform() as f32) * 30.0).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            lps.extend(v.into_iter().map(f16::from_f32));
        }
        // A drop of 60 nats between neighbours: more than 255 steps of 0.125.
        lps.extend([-0.5f32, -60.5, -60.6, -60.75, -61.0, -70.0].map(f16::from_f32));
        let mut steps = Vec::new();
        encode_steps(&lps, k, &mut steps);
        let mut back = Vec::new();
        decode_steps(&steps, k, LOGPROB_STEP, &mut back);
        assert_eq!(back.len(), lps.len());
        let n = lps.len() - k;
        let mut worst = 0f32;
        for (a, b) in lps[..n].iter().zip(&back[..n]) {
            let (a, b) = (a.to_f32(), b.to_f32());
            // Half a step, plus the f16 rounding of the decoded value.
            worst = worst.max((a - b).abs() - a.abs() * 2f32.powi(-11));
        }
        assert!(
            worst <= LOGPROB_STEP / 2.0 + 1e-6,
            "worst error {worst} > half a step"
        );
        // The saturated step decodes 31.875 nats below its neighbour; the next ones continue
        // from there (steps of 0 while the exact values are still above) instead of drifting.
        let last: Vec<f32> = back[n..].iter().map(|v| v.to_f32()).collect();
        assert_eq!(steps[n + 1], 255);
        assert!((last[1] - (-0.5 - 31.875)).abs() < 0.02, "{last:?}");
        assert!(last.windows(2).all(|w| w[1] <= w[0]), "{last:?}");
        assert!((last[5] - (-70.0)).abs() <= LOGPROB_STEP, "{last:?}");
    }

    #[test]
    fn every_encoding_builds_batches_of_its_own_schema() {
        let b = crate::cache::testutil::random_batch(3, 5, 4, 100, 30, 1);
        for encoding in Encoding::ALL {
            let rb = b.to_record_batch_for(0..3, encoding).unwrap();
            assert_eq!(rb.schema(), arrow_schema_for(4, encoding), "{encoding:?}");
            for other in [
                schema::TOPK_LOGPROBS,
                schema::TOPK_LOGPROB_STEPS,
                schema::TOPK_LOGPROB_LEVELS,
            ] {
                let expected = other == schema::values_column(encoding);
                assert_eq!(
                    rb.column_by_name(other).is_some(),
                    expected,
                    "{encoding:?} {other}"
                );
            }
        }
        assert_eq!(
            b.to_record_batch(0..3).unwrap().schema(),
            arrow_schema_for(4, Encoding::Plain)
        );
    }
}
