//! The atomic shard writer: [`ShardBatch`] rows → one Parquet file, row group by row group.
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
use std::path::{Path, PathBuf};

use arrow::datatypes::Schema;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Encoding as ParquetEncoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use xxhash_rust::xxh3::Xxh3;

use super::batch::ShardBatch;
use super::encoding::{Codec, Encoding};
use super::layout::{commit_tmp, tmp_path};
use super::manifest::ShardEntry;
use super::schema::{self, arrow_schema_with};
use crate::error::{Error, IoContext, Result};

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
    /// Tail draws per position (`precompute --tail-samples N`): formats v4 (plain) and v5
    /// (compact) when above 0. Every batch written must carry this many.
    pub tail_draws: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            zstd_level: 3,
            row_group_rows: 0,
            metadata: Vec::new(),
            encoding: Encoding::Plain,
            tail_draws: 0,
        }
    }
}

/// Dictionary page limit of `topk_ids` (the default is 1 MiB): any vocabulary up to a million
/// tokens fits as u32, so the dictionary never falls back to PLAIN halfway through a row group.
const TOPK_IDS_DICTIONARY_BYTES: usize = 4 << 20;

/// Data page size of the v2 and v3 encodings' top-k columns: zstd compresses each page on its own,
/// and pages of a whole row group let its entropy coder learn the byte planes once (the 1 MiB
/// default is larger on these columns; the figure is in `docs/performance.md`).
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
        if opts.encoding.format_version_with(opts.tail_draws).is_none() {
            return Err(bad(format!(
                "the {} encoding has no format with tail draws; use plain or compact",
                opts.encoding.name()
            )));
        }
        let schema = arrow_schema_with(k, opts.encoding, opts.tail_draws);
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
            .map_err(|e| Error::parquet_source(&tmp, "cannot start the Parquet writer", e))?;
        Ok(Self {
            final_path: final_path.to_path_buf(),
            tmp,
            writer,
            pending: ShardBatch {
                draws: opts.tail_draws,
                ..ShardBatch::with_capacity(seq_len, k, rg_rows)
            },
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
        if batch.draws != self.pending.draws {
            return Err(bad(format!(
                "rows with {} tail draws per position in a shard of {}",
                batch.draws, self.pending.draws
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
        let pq =
            |e: parquet::errors::ParquetError| Error::parquet_source(tmp, "writing a row group", e);
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
        let mut hashing = writer
            .into_inner()
            .map_err(|e| Error::parquet_source(&tmp, "closing the Parquet writer", e))?;
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

/// The Parquet properties of a shard, chosen by size on synthetic Zipf-distributed ids (k = 50,
/// S = 2048, vocabularies of 32,000 and 151,936) and checked to read back exactly in pyarrow,
/// DuckDB and polars; the measured sizes of every alternative are in `schemas/v1/README.md`:
///
/// - zstd at `opts.zstd_level` on every column; data pages v1, whose repetition and definition
///   levels are compressed with the values (v2 pages store them raw).
/// - `topk_ids`: dictionary (fallback PLAIN), smaller than PLAIN and than the v2 default
///   DELTA_BINARY_PACKED.
/// - `topk_logprobs` (float16, stored as 2-byte FIXED_LEN_BYTE_ARRAY): PLAIN. The v2 default
///   DELTA_BYTE_ARRAY is larger, slower to write and unreadable by polars; BYTE_STREAM_SPLIT is
///   smaller but DuckDB cannot read it on this type.
/// - `tail_logmass` (float32): BYTE_STREAM_SPLIT, smaller than PLAIN, read everywhere.
/// - `input_ids`: PLAIN (smaller than dictionary or delta); `seq_id`: DELTA_BINARY_PACKED.
/// - Statistics only on `seq_id` (the one column worth filtering on).
///
/// The steps encoding (format v2) differs in two columns: `topk_ids` BYTE_STREAM_SPLIT (the
/// four byte planes of the ids apart, so zstd's entropy coder sees the skewed high bytes on
/// their own; smaller than the dictionary on large vocabularies, `benches/storage.rs`), and
/// `topk_logprob_steps` (u8 steps) BYTE_STREAM_SPLIT too. The compact encoding (format v3)
/// stores `topk_id_gaps` and `topk_logprob_levels` the same way: the gaps' byte planes are
/// small numbers in the low planes and zeros above.
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
            opts.encoding
                .format_version_with(opts.tail_draws)
                .unwrap_or(opts.encoding.format_version())
                .to_string(),
        ),
        (schema::META_TOP_K, k.to_string()),
        (schema::META_SEQ_LEN, seq_len.to_string()),
    ];
    if opts.tail_draws > 0 {
        own.push((schema::META_TAIL_DRAWS, opts.tail_draws.to_string()));
    }
    own.extend(Codec::for_writing(opts.encoding).footer());
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
                    || name == schema::values_column(opts.encoding)
                    || name == schema::DRAW_ID_GAPS
                    || name == schema::DRAW_LOGPROB_STEPS) =>
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
            // The plain draws' ids by byte plane, as the compact top-k ids.
            schema::TAIL_LOGMASS | schema::DRAW_IDS => {
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
