//! [`ShardBatch`]: the rows of a shard in flat, reusable buffers — what precompute fills, the
//! writer encodes, the reader decodes into and distill trains on.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, ListArray, UInt32Array, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use half::f16;

use super::encoding::{Codec, Encoding};
use super::schema::{self, arrow_schema_with};
use crate::error::{Error, Result};

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
    /// Tail draws per position (`precompute --tail-samples N`; 0 in a cache without them).
    pub draws: usize,
    /// [rows * S * draws]: per position ascending, repeats adjacent.
    pub draw_ids: Vec<u32>,
    /// [rows * S * draws]: the teacher's log-prob of each draw.
    pub draw_logprobs: Vec<f16>,
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
            draws: 0,
            draw_ids: Vec::new(),
            draw_logprobs: Vec::new(),
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
            draws: 0,
            draw_ids: Vec::new(),
            draw_logprobs: Vec::new(),
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
        self.draw_ids.extend_from_slice(&other.draw_ids);
        self.draw_logprobs.extend_from_slice(&other.draw_logprobs);
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
        self.draw_ids.drain(..n * s * self.draws);
        self.draw_logprobs.drain(..n * s * self.draws);
    }

    /// Drop the rows, keep the capacity.
    pub fn clear(&mut self) {
        self.seq_ids.clear();
        self.input_ids.clear();
        self.loss_mask.clear();
        self.topk_ids.clear();
        self.topk_logprobs.clear();
        self.tail_logmass.clear();
        self.draw_ids.clear();
        self.draw_logprobs.clear();
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
            ("draw_ids", self.draw_ids.len(), rows * s * self.draws),
            (
                "draw_logprobs",
                self.draw_logprobs.len(),
                rows * s * self.draws,
            ),
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
        let schema = arrow_schema_with(k, encoding, self.draws);
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
            let (field, size) = match item_field(&schema, col).data_type() {
                DataType::FixedSizeList(f, size) => (f.clone(), *size),
                other => return Err(internal(format!("{col}: unexpected item type {other}"))),
            };
            Ok(Arc::new(
                FixedSizeListArray::try_new(field, size, values, None)
                    .map_err(|e| internal(format!("{col}: {e}")))?,
            ))
        };
        // The top-k columns in the encoding's own form.
        let (ids, values) = Codec::for_writing(encoding).encode(
            &self.topk_ids[val.clone()],
            &self.topk_logprobs[val],
            k,
        );
        let (ids_name, values_name) = (
            schema::ids_column(encoding),
            schema::values_column(encoding),
        );
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(self.seq_ids[range.clone()].to_vec())),
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
                Arc::new(Float32Array::from(self.tail_logmass[pos.clone()].to_vec())),
            )?,
        ];
        if self.draws > 0 {
            let d = self.draws;
            let draws = range.start * s * d..range.end * s * d;
            let ids = &self.draw_ids[draws.clone()];
            let ids: Vec<u32> = if encoding.sorted_by_id() {
                ids.chunks(d)
                    .flat_map(|p| {
                        std::iter::once(p[0]).chain(p.windows(2).map(|w| w[1].wrapping_sub(w[0])))
                    })
                    .collect()
            } else {
                ids.to_vec()
            };
            let ids_name = schema::draw_ids_column(encoding);
            columns.push(list(
                ids_name,
                fixed(ids_name, Arc::new(UInt32Array::from(ids)))?,
            )?);
            let name = schema::draw_logprobs_column(encoding);
            let lps = &self.draw_logprobs[draws];
            let values: ArrayRef = if encoding.sorted_by_id() {
                let taus = &self.tail_logmass[pos.clone()];
                Arc::new(arrow::array::UInt8Array::from(
                    lps.iter()
                        .enumerate()
                        .map(|(j, lp)| schema::draw_logprob_step(lp.to_f32(), taus[j / d]))
                        .collect::<Vec<u8>>(),
                ))
            } else {
                Arc::new(arrow::array::Float16Array::from(lps.to_vec()))
            };
            columns.push(list(name, fixed(name, values)?)?);
        }
        RecordBatch::try_new(schema, columns).map_err(|e| internal(e.to_string()))
    }
}

/// The item field of list column `col` of the v1 schema.
pub(crate) fn item_field(schema: &Schema, col: &str) -> FieldRef {
    match schema.field_with_name(col).map(|f| f.data_type()) {
        Ok(DataType::List(f)) => f.clone(),
        _ => unreachable!("v1 column {col} is a list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::schema::arrow_schema_for;

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
