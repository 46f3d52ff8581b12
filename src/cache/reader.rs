//! A memory-mapped shard, read one row group at a time.
//!
//! The file is mapped, not read: Parquet's reader gets the map as [`bytes::Bytes`]
//! (`Bytes::from_owner`), so column chunks are sliced out of the page cache without copying the
//! file. Opening a shard parses only its footer and checks that the schema is its format's (v1,
//! v2 or v3; decoded through one [`Codec`]) for the top-k the footer names.
//!
//! # Memory usage
//!
//! [`ShardReader::read_row_group`] decodes one row group (about 8 MiB raw with the writer's
//! default) into fresh Arrow arrays. [`ShardReader::read_row_group_into`] then copies them into
//! a reusable [`ShardBatch`], which does not allocate once it has the capacity; the Arrow decode
//! buffers are per row group (parquet's decoder owns them).

use std::path::{Path, PathBuf};

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, FixedSizeListArray, ListArray,
    PrimitiveArray,
};
use arrow::datatypes::{Float16Type, Float32Type, UInt32Type, UInt64Type, UInt8Type};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;

use super::batch::ShardBatch;
use super::encoding::{Codec, Encoding, Values};
use super::schema::{self, check_schema_with, top_k_of};
use crate::error::{Error, IoContext, Result};
use half::f16;

/// An open, memory-mapped shard of any format this build reads. Cheap to share across threads (`&self` reads).
#[derive(Debug)]
pub struct ShardReader {
    path: PathBuf,
    data: Bytes,
    metadata: ArrowReaderMetadata,
    k: usize,
    seq_len: usize,
    /// Tail draws per position (formats v4 and v5), else 0.
    draws: usize,
    /// The shard's encoding with its footer's parameters.
    codec: Codec,
}

impl ShardReader {
    /// Map `path`, parse its footer, and check it is a shard of a format this build reads:
    /// format version, top-k and seq_len in the footer metadata, the encoding's footer entries,
    /// and the schema equal to the format's for that top-k.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).at(path)?;
        // Mapping a directory fails with "No such device"; say what it is instead.
        if file.metadata().at(path)?.is_dir() {
            return Err(Error::cache(
                path,
                "is a directory, not a shard file (a Parquet file written by precompute)",
            ));
        }
        // SAFETY: shards are immutable once renamed into place (the writer never reopens them).
        // Truncating a shard while it is mapped is outside the contract and may fault.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
        let data = Bytes::from_owner(mmap);
        let metadata = ArrowReaderMetadata::load(&data, ArrowReaderOptions::new())
            .map_err(|e| Error::parquet_source(path, "not a readable Parquet file", e))?;
        let mut reader = ShardReader {
            path: path.to_path_buf(),
            data,
            metadata,
            k: 0,
            seq_len: 0,
            draws: 0,
            codec: Codec::for_writing(Encoding::Plain),
        };
        let version = reader.required_number(schema::META_FORMAT_VERSION)?;
        let encoding = Encoding::of_format_version(version as u64).map_err(|msg| {
            Error::cache(
                path,
                msg.replacen("cache format version", "shard format version", 1),
            )
        })?;
        reader.codec = Codec::from_footer(encoding, |key| reader.key_value(key))
            .map_err(|msg| Error::cache(path, msg))?;
        reader.k = reader.required_number(schema::META_TOP_K)?;
        reader.seq_len = reader.required_number(schema::META_SEQ_LEN)?;
        let arrow = reader.metadata.schema().clone();
        if let Some(k) = top_k_of(&arrow) {
            if k != reader.k {
                return Err(Error::cache(
                    path,
                    format!(
                        "footer says {} = {}, but column `topk_ids` holds {k} ids per position",
                        schema::META_TOP_K,
                        reader.k
                    ),
                ));
            }
        }
        if Encoding::version_has_draws(version as u64) {
            reader.draws = reader.required_number(schema::META_TAIL_DRAWS)?;
            if reader.draws == 0 {
                return Err(Error::cache(
                    path,
                    format!(
                        "footer metadata `{}` is 0 in a format v{version} shard (tail draws)",
                        schema::META_TAIL_DRAWS
                    ),
                ));
            }
        }
        check_schema_with(&arrow, reader.k, encoding, reader.draws)
            .map_err(|msg| Error::cache(path, format!("not a v{version} shard: {msg}")))?;
        Ok(reader)
    }

    fn required_number(&self, key: &str) -> Result<usize> {
        let value = self.key_value(key).ok_or_else(|| {
            Error::cache(
                &self.path,
                format!("not a taidcache shard: footer metadata has no `{key}`"),
            )
        })?;
        value.parse().map_err(|_| {
            Error::cache(
                &self.path,
                format!("footer metadata `{key}` = {value:?} is not a number"),
            )
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn num_row_groups(&self) -> usize {
        self.metadata.metadata().num_row_groups()
    }

    /// Rows of row group `i` (panics if `i >= num_row_groups()`).
    pub fn row_group_rows(&self, i: usize) -> usize {
        self.metadata.metadata().row_group(i).num_rows() as usize
    }

    pub fn num_rows(&self) -> usize {
        self.metadata.metadata().file_metadata().num_rows() as usize
    }

    /// A footer key-value pair, e.g. [`schema::META_VOCAB_SIZE`].
    pub fn key_value(&self, key: &str) -> Option<String> {
        self.metadata
            .metadata()
            .file_metadata()
            .key_value_metadata()?
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
    }

    pub fn top_k(&self) -> usize {
        self.k
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Tail draws per position (`precompute --tail-samples`), 0 in a shard without them.
    pub fn tail_draws(&self) -> usize {
        self.draws
    }

    /// Plain (format v1), steps (v2) or compact (v3), from the footer.
    pub fn encoding(&self) -> Encoding {
        self.codec.encoding()
    }

    /// The shard's encoding with its footer's parameters.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Decode row group `i` as one [`RecordBatch`] holding `columns` in file order (all
    /// columns when `columns` is empty).
    pub fn read_row_group(&self, i: usize, columns: &[&str]) -> Result<RecordBatch> {
        if i >= self.num_row_groups() {
            return Err(Error::cache(
                &self.path,
                format!(
                    "row group {i} does not exist (the shard has {})",
                    self.num_row_groups()
                ),
            ));
        }
        let mask = if columns.is_empty() {
            ProjectionMask::all()
        } else {
            let arrow = self.metadata.schema();
            let mut roots = Vec::with_capacity(columns.len());
            for name in columns {
                let index = arrow.index_of(name).map_err(|_| {
                    Error::cache(
                        &self.path,
                        format!(
                            "no column `{name}` (columns: {})",
                            schema::columns(self.encoding()).join(", ")
                        ),
                    )
                })?;
                roots.push(index);
            }
            ProjectionMask::roots(self.metadata.parquet_schema(), roots)
        };
        let rows = self.row_group_rows(i);
        let pq = |e: parquet::errors::ParquetError| {
            Error::parquet_source(&self.path, format!("row group {i}"), e)
        };
        let mut batches = ParquetRecordBatchReaderBuilder::new_with_metadata(
            self.data.clone(),
            self.metadata.clone(),
        )
        .with_row_groups(vec![i])
        .with_projection(mask)
        .with_batch_size(rows.max(1))
        .build()
        .map_err(pq)?;
        let batch = match self.next_batch(&mut batches, i)? {
            Some(b) => {
                b.map_err(|e| Error::parquet_source(&self.path, format!("row group {i}"), e))?
            }
            None => {
                return Err(Error::parquet(
                    &self.path,
                    format!("row group {i}: no rows decoded, the footer says {rows}"),
                ))
            }
        };
        if batch.num_rows() != rows || self.next_batch(&mut batches, i)?.is_some() {
            return Err(Error::parquet(
                &self.path,
                format!("row group {i}: decoded rows differ from the footer's {rows}"),
            ));
        }
        Ok(batch)
    }

    /// The next batch of `batches`. parquet 60 panics on some corrupt pages (an `expect` in
    /// its value decoder, a division by zero in its byte-array decoder; found by
    /// tests/it/fuzz.rs): a corrupt shard is an error naming it, not a crash.
    fn next_batch(
        &self,
        batches: &mut ParquetRecordBatchReader,
        i: usize,
    ) -> Result<Option<std::result::Result<RecordBatch, arrow::error::ArrowError>>> {
        crate::catch_panic_quietly(|| batches.next()).ok_or_else(|| {
            Error::parquet(
                &self.path,
                format!("row group {i}: the page data is corrupt and cannot be decoded"),
            )
        })
    }

    /// Decode row group `i` into `out`'s flat buffers (replacing its rows, setting its S and k).
    /// Does not allocate in `out` when it has the capacity: the distill loader's hot path.
    ///
    /// Fails (naming the column) if a list does not have length S, or a value is null.
    pub fn read_row_group_into(&self, i: usize, out: &mut ShardBatch) -> Result<()> {
        let batch = self.read_row_group(i, &[])?;
        let (s, k) = (self.seq_len, self.k);
        out.clear();
        out.seq_len = s;
        out.k = k;
        let col = Columns {
            path: &self.path,
            batch: &batch,
            row_group: i,
            seq_len: s,
        };
        let seq_ids = batch.column(0).as_primitive::<UInt64Type>();
        col.no_nulls(seq_ids, schema::SEQ_ID)?;
        out.seq_ids.extend_from_slice(seq_ids.values());

        let input_ids = col.list(schema::INPUT_IDS)?;
        out.input_ids
            .extend_from_slice(col.primitive::<UInt32Type>(&input_ids, schema::INPUT_IDS)?);

        let mask = col.list(schema::LOSS_MASK)?;
        let mask: &BooleanArray = mask.as_boolean();
        col.no_nulls(mask, schema::LOSS_MASK)?;
        out.loss_mask.extend(mask.values().iter());

        let encoding = self.encoding();
        let ids_name = schema::ids_column(encoding);
        let ids = col.fixed(col.list(ids_name)?, ids_name)?;
        let ids = col.primitive::<UInt32Type>(&ids, ids_name)?;
        let values_name = schema::values_column(encoding);
        let values = col.fixed(col.list(values_name)?, values_name)?;
        let values = if self.codec.values_are_f16() {
            Values::F16(col.primitive::<Float16Type>(&values, values_name)?)
        } else {
            Values::U8(col.primitive::<UInt8Type>(&values, values_name)?)
        };
        self.codec
            .decode(ids, values, k, &mut out.topk_ids, &mut out.topk_logprobs)
            .map_err(|msg| col.err(values_name, msg))?;

        let tail = col.list(schema::TAIL_LOGMASS)?;
        out.tail_logmass
            .extend_from_slice(col.primitive::<Float32Type>(&tail, schema::TAIL_LOGMASS)?);

        out.draws = self.draws;
        if self.draws > 0 {
            let d = self.draws;
            let name = schema::draw_ids_column(encoding);
            let ids = col.fixed(col.list(name)?, name)?;
            let ids = col.primitive::<UInt32Type>(&ids, name)?;
            if encoding.sorted_by_id() {
                for gaps in ids.chunks(d) {
                    let mut id = 0u32;
                    for (j, &g) in gaps.iter().enumerate() {
                        id = if j == 0 { g } else { id.wrapping_add(g) };
                        out.draw_ids.push(id);
                    }
                }
            } else {
                out.draw_ids.extend_from_slice(ids);
            }
            let name = schema::draw_logprobs_column(encoding);
            let lps = col.fixed(col.list(name)?, name)?;
            if encoding.sorted_by_id() {
                let steps = col.primitive::<UInt8Type>(&lps, name)?;
                let base = out.tail_logmass.len() - steps.len() / d;
                let taus = &out.tail_logmass[base..];
                out.draw_logprobs.extend(
                    steps
                        .iter()
                        .enumerate()
                        .map(|(j, &u)| f16::from_f32(schema::draw_logprob_of_step(u, taus[j / d]))),
                );
            } else {
                out.draw_logprobs
                    .extend_from_slice(col.primitive::<Float16Type>(&lps, name)?);
            }
        }

        out.check_lengths()
            .map_err(|msg| Error::cache(&self.path, format!("row group {i}: {msg}")))
    }
}

/// Typed access to the columns of one decoded row group, checking lengths and nulls.
struct Columns<'a> {
    path: &'a Path,
    batch: &'a RecordBatch,
    row_group: usize,
    seq_len: usize,
}

impl Columns<'_> {
    fn err(&self, col: &str, msg: impl std::fmt::Display) -> Error {
        Error::cache(
            self.path,
            format!("row group {}: column `{col}`: {msg}", self.row_group),
        )
    }

    fn no_nulls(&self, array: &dyn Array, col: &str) -> Result<()> {
        match array.null_count() {
            0 => Ok(()),
            n => Err(self.err(col, format!("{n} null values; shard values are never null"))),
        }
    }

    /// The values of a primitive array of type `T`, without nulls.
    fn primitive<'b, T: ArrowPrimitiveType>(
        &self,
        array: &'b ArrayRef,
        col: &str,
    ) -> Result<&'b [T::Native]> {
        let array: &PrimitiveArray<T> = array
            .as_primitive_opt()
            .ok_or_else(|| self.err(col, format!("values are {}", array.data_type())))?;
        self.no_nulls(array, col)?;
        Ok(array.values())
    }

    /// The values of list column `col`, checked to be S per row, without nulls.
    fn list(&self, col: &str) -> Result<ArrayRef> {
        let list: &ListArray = self
            .batch
            .column_by_name(col)
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| self.err(col, "missing or not a list"))?;
        self.no_nulls(list, col)?;
        let offsets = list.value_offsets();
        let base = offsets[0] as usize;
        if let Some(r) =
            (0..list.len()).find(|&r| (offsets[r + 1] - offsets[r]) as usize != self.seq_len)
        {
            return Err(self.err(
                col,
                format!(
                    "row {r} of the row group has {} positions, expected seq_len {}",
                    offsets[r + 1] - offsets[r],
                    self.seq_len
                ),
            ));
        }
        Ok(list.values().slice(base, list.len() * self.seq_len))
    }

    /// The flat values of a `fixed_size_list<_>[k]` array, without nulls.
    fn fixed(&self, array: ArrayRef, col: &str) -> Result<ArrayRef> {
        let fixed: &FixedSizeListArray = array
            .as_fixed_size_list_opt()
            .ok_or_else(|| self.err(col, "not a fixed-size list"))?;
        self.no_nulls(fixed, col)?;
        let k = fixed.value_length() as usize;
        Ok(fixed.values().slice(0, fixed.len() * k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::encoding::levels;
    use crate::cache::writer::{write_shard_atomic, WriteOptions};
    use std::sync::Arc;

    use crate::cache::testutil::random_batch;
    use crate::hash::xxh3_file;

    /// Write `batch` with `encoding` in row groups of 4 and read it back whole, checking that the
    /// footer names `encoding` and `version` and that every column but the top-k came back as is.
    fn round_trip(batch: &ShardBatch, encoding: Encoding, version: &str) -> ShardBatch {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-00000.parquet");
        let opts = WriteOptions {
            row_group_rows: 4,
            encoding,
            ..WriteOptions::default()
        };
        write_shard_atomic(&path, batch, &opts).unwrap();
        let r = ShardReader::open(&path).unwrap();
        let mut back = ShardBatch::new(batch.seq_len, batch.k);
        let mut part = ShardBatch::new(batch.seq_len, batch.k);
        for g in 0..r.num_row_groups() {
            r.read_row_group_into(g, &mut part).unwrap();
            back.extend_from(&part);
        }
        assert_eq!(r.encoding(), encoding);
        assert_eq!(
            r.key_value(schema::META_FORMAT_VERSION).as_deref(),
            Some(version)
        );
        assert_eq!(back.seq_ids, batch.seq_ids);
        assert_eq!(back.input_ids, batch.input_ids);
        assert_eq!(back.loss_mask, batch.loss_mask);
        assert_eq!(back.tail_logmass, batch.tail_logmass);
        back
    }

    #[test]
    fn steps_round_trip_keeps_everything_but_rounds_log_probs_to_half_a_step() {
        let batch = random_batch(11, 12, 5, 1000, 40, 3);
        let back = round_trip(&batch, Encoding::Steps, "2");
        assert_eq!(back.topk_ids, batch.topk_ids);
        let step = crate::cache::LOGPROB_STEP;
        for (a, b) in batch.topk_logprobs.iter().zip(&back.topk_logprobs) {
            let (a, b) = (a.to_f32(), b.to_f32());
            assert!(
                (a - b).abs() <= step / 2.0 + a.abs() * 2f32.powi(-11),
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn compact_round_trip_sorts_each_position_by_id_and_keeps_every_probability_within_its_level() {
        let batch = random_batch(11, 12, 5, 1000, 40, 3);
        let back = round_trip(&batch, Encoding::Compact, "3");
        let k = batch.k;
        let mut worst = 0f64;
        for p in 0..batch.tail_logmass.len() {
            let mut exact: Vec<(u32, f16)> = batch.topk_ids[p * k..(p + 1) * k]
                .iter()
                .copied()
                .zip(batch.topk_logprobs[p * k..(p + 1) * k].iter().copied())
                .collect();
            exact.sort_unstable_by_key(|&(id, _)| id);
            let ids: Vec<u32> = exact.iter().map(|&(id, _)| id).collect();
            assert_eq!(&back.topk_ids[p * k..(p + 1) * k], &ids[..], "position {p}");
            for (&(_, a), b) in exact.iter().zip(&back.topk_logprobs[p * k..(p + 1) * k]) {
                let (a, b) = (f64::from(a.to_f32()).exp(), f64::from(b.to_f32()).exp());
                // The f16 of the decoded level adds up to 2^-11 relative.
                let bound = levels::error_bound(b) + b * 2f64.powi(-10);
                worst = worst.max((a - b).abs() / bound);
            }
        }
        assert!(worst <= 1.0, "worst |p − p̂| is {worst:.3} of its bound");
    }

    #[test]
    fn compact_shards_with_another_level_table_are_refused_naming_the_footer_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-00000.parquet");
        let mut table = levels::table().to_vec();
        table[200] = -1.0;
        for (value, expect) in [
            (serde_json::to_string(&table).unwrap(), "level 200"),
            ("0.125".to_string(), "JSON array"),
        ] {
            let opts = WriteOptions {
                encoding: Encoding::Compact,
                ..WriteOptions::default()
            };
            write_shard_atomic(&path, &random_batch(2, 4, 3, 10, 0, 4), &opts).unwrap();
            // Rewrite the footer value: same data, another table.
            let file = std::fs::File::open(&path).unwrap();
            let rb: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
            let kv = vec![
                parquet::file::metadata::KeyValue::new(
                    schema::META_FORMAT_VERSION.into(),
                    "3".to_string(),
                ),
                parquet::file::metadata::KeyValue::new(schema::META_TOP_K.into(), "3".to_string()),
                parquet::file::metadata::KeyValue::new(
                    schema::META_SEQ_LEN.into(),
                    "4".to_string(),
                ),
                parquet::file::metadata::KeyValue::new(
                    schema::META_LOGPROB_LEVELS.into(),
                    value.clone(),
                ),
            ];
            let props = parquet::file::properties::WriterProperties::builder()
                .set_key_value_metadata(Some(kv))
                .build();
            let mut w = parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(&path).unwrap(),
                rb[0].schema(),
                Some(props),
            )
            .unwrap();
            for b in &rb {
                w.write(b).unwrap();
            }
            w.close().unwrap();
            let err = ShardReader::open(&path).unwrap_err().to_string();
            assert!(
                err.contains("part-00000.parquet")
                    && err.contains("taidcache.logprob_levels")
                    && err.contains(expect),
                "{err}"
            );
        }
    }

    #[test]
    fn round_trip_returns_identical_buffers_over_several_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-00000.parquet");
        let batch = random_batch(23, 12, 5, 1000, 40, 7);
        let opts = WriteOptions {
            row_group_rows: 5,
            metadata: vec![(schema::META_VOCAB_SIZE.into(), "1000".into())],
            ..WriteOptions::default()
        };
        let entry = write_shard_atomic(&path, &batch, &opts).unwrap();
        assert_eq!(
            (
                entry.rows,
                entry.tokens,
                entry.seq_id_start,
                entry.seq_id_end
            ),
            (23, 23 * 12, 40, 63)
        );

        let reader = ShardReader::open(&path).unwrap();
        assert_eq!(reader.num_row_groups(), 5, "23 rows in groups of 5");
        assert_eq!(
            (0..5).map(|i| reader.row_group_rows(i)).collect::<Vec<_>>(),
            [5, 5, 5, 5, 3]
        );
        assert_eq!(
            (reader.num_rows(), reader.top_k(), reader.seq_len()),
            (23, 5, 12)
        );
        assert_eq!(
            reader.key_value(schema::META_VOCAB_SIZE).as_deref(),
            Some("1000")
        );
        assert_eq!(
            reader.key_value(schema::META_FORMAT_VERSION).as_deref(),
            Some("1")
        );

        // read_row_group_into, reusing one buffer.
        let mut back = ShardBatch::new(12, 5);
        let mut part = ShardBatch::with_capacity(12, 5, 5);
        let capacity = part.topk_ids.capacity();
        for i in 0..reader.num_row_groups() {
            reader.read_row_group_into(i, &mut part).unwrap();
            assert_eq!(
                part.topk_ids.capacity(),
                capacity,
                "row group {i} reallocated"
            );
            back.extend_from(&part);
        }
        assert_eq!(back, batch);

        // read_row_group, converted through the writer's own RecordBatch layout.
        let mut start = 0;
        for i in 0..reader.num_row_groups() {
            let rb = reader.read_row_group(i, &[]).unwrap();
            let n = rb.num_rows();
            assert_eq!(
                rb,
                batch.to_record_batch(start..start + n).unwrap(),
                "row group {i}"
            );
            start += n;
        }
        assert_eq!(start, 23);
    }

    #[test]
    fn shard_reader_is_shareable_across_loader_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ShardReader>();
    }

    #[test]
    fn projection_reads_only_the_named_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-00000.parquet");
        let batch = random_batch(4, 6, 3, 30, 0, 1);
        write_shard_atomic(&path, &batch, &WriteOptions::default()).unwrap();
        let reader = ShardReader::open(&path).unwrap();
        assert_eq!(reader.num_row_groups(), 1);
        let rb = reader
            .read_row_group(0, &[schema::TAIL_LOGMASS, schema::SEQ_ID])
            .unwrap();
        let names: Vec<_> = rb
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, [schema::SEQ_ID, schema::TAIL_LOGMASS], "file order");
        let err = reader
            .read_row_group(0, &["logits"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no column `logits`"), "{err}");
        let err = reader.read_row_group(1, &[]).unwrap_err().to_string();
        assert!(err.contains("row group 1 does not exist"), "{err}");
    }

    #[test]
    fn atomic_write_leaves_no_tmp_and_returns_the_file_hash_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-00003.parquet");
        // A stale temporary from a killed run is replaced, not appended to.
        std::fs::write(dir.path().join("part-00003.parquet.tmp"), b"garbage").unwrap();
        let batch = random_batch(3, 8, 4, 100, 9, 2);
        let entry = write_shard_atomic(&path, &batch, &WriteOptions::default()).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["part-00003.parquet"]);
        assert_eq!(entry.xxh3, xxh3_file(&path).unwrap());
        assert_eq!(entry.bytes, std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn writer_refuses_inconsistent_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let mut batch = random_batch(3, 4, 2, 10, 0, 3);
        batch.seq_ids[2] = 5;
        let err = write_shard_atomic(&path, &batch, &WriteOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 2 has 5, expected 2"), "{err}");
        let mut batch = random_batch(3, 4, 2, 10, 0, 3);
        batch.tail_logmass.pop();
        let err = write_shard_atomic(&path, &batch, &WriteOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`tail_logmass` has 11 values, expected 12"),
            "{err}"
        );
        let opts = WriteOptions {
            metadata: vec![(schema::META_TOP_K.into(), "3".into())],
            ..WriteOptions::default()
        };
        let err = write_shard_atomic(&path, &random_batch(1, 4, 2, 10, 0, 3), &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("contradicts the batch (2)"), "{err}");
        assert!(!path.exists() && !crate::cache::layout::tmp_path(&path).exists());
    }

    #[test]
    fn reader_refuses_a_parquet_file_with_another_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.parquet");
        let batch = random_batch(2, 4, 3, 10, 0, 4);
        // Rewrite the same data with a float32 `topk_logprobs` column.
        let rb = batch.to_record_batch(0..2).unwrap();
        let lp = arrow::compute::cast(
            rb.column(4),
            &arrow::datatypes::DataType::List(Arc::new(arrow::datatypes::Field::new(
                "item",
                arrow::datatypes::DataType::FixedSizeList(
                    Arc::new(arrow::datatypes::Field::new(
                        "item",
                        arrow::datatypes::DataType::Float32,
                        true,
                    )),
                    3,
                ),
                true,
            ))),
        )
        .unwrap();
        let mut fields: Vec<_> = rb.schema().fields().iter().map(|f| (**f).clone()).collect();
        fields[4] = fields[4].clone().with_data_type(lp.data_type().clone());
        let mut cols = rb.columns().to_vec();
        cols[4] = lp;
        let rb =
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(vec![
                parquet::file::metadata::KeyValue::new(
                    schema::META_FORMAT_VERSION.into(),
                    "1".to_string(),
                ),
                parquet::file::metadata::KeyValue::new(schema::META_TOP_K.into(), "3".to_string()),
                parquet::file::metadata::KeyValue::new(
                    schema::META_SEQ_LEN.into(),
                    "4".to_string(),
                ),
            ]))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            rb.schema(),
            Some(props),
        )
        .unwrap();
        w.write(&rb).unwrap();
        w.close().unwrap();
        let err = ShardReader::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("other.parquet")
                && err.contains("column `topk_logprobs`")
                && err.contains("fixed_size_list<item: float>[3]"),
            "{err}"
        );
    }
}
