//! The Parquet source: the document column only, read record batch by record batch; text
//! columns (strings, dictionaries of strings) and integer list columns (token ids).

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::{int_to_id, is_empty, IdProblem, Next, Place, Skipped};
use crate::corpus::Document;
use crate::error::{Error, IoContext, Result};

/// Rows per Parquet record batch.
const PARQUET_BATCH_ROWS: usize = 1024;

/// What the document column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColumnKind {
    Text,
    Tokens,
}

fn column_kind(dt: &DataType) -> Option<ColumnKind> {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(ColumnKind::Text),
        DataType::Dictionary(_, v)
            if matches!(
                v.as_ref(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            Some(ColumnKind::Text)
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
            if f.data_type().is_integer() =>
        {
            Some(ColumnKind::Tokens)
        }
        _ => None,
    }
}

/// A Parquet file read record batch by record batch, only the document column.
pub(super) struct ParquetSource {
    reader: ParquetRecordBatchReader,
    /// The document column of the current batch.
    batch: Option<ArrayRef>,
    /// Next row in `batch`.
    pos: usize,
    /// Rows consumed from the file (0-based number of the next row).
    row: u64,
    total_rows: u64,
    file_len: u64,
}

impl ParquetSource {
    pub(super) fn open(path: &Path, field: &str) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let file_len = file.metadata().at(path)?.len();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::parquet_source(path, "not a readable Parquet file", e))?;
        let schema = builder.schema().clone();
        let Some((index, column)) = schema.column_with_name(field) else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Error::field(
                path,
                field,
                format!(
                    "no such column; the file has columns: {}; name the document column with \
                     --text-field",
                    names.join(", ")
                ),
            ));
        };
        if column_kind(column.data_type()).is_none() {
            return Err(Error::field(
                path,
                field,
                format!(
                    "column has type {}; expected text (Utf8, LargeUtf8, Utf8View) or a list of \
                     integer token ids",
                    column.data_type()
                ),
            ));
        }
        let total_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(PARQUET_BATCH_ROWS)
            .build()
            .map_err(|e| Error::parquet_source(path, format!("cannot read column `{field}`"), e))?;
        Ok(ParquetSource {
            reader,
            batch: None,
            pos: 0,
            row: 0,
            total_rows,
            file_len,
        })
    }

    pub(super) fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The file size times the share of rows consumed.
    pub(super) fn bytes_read(&self) -> u64 {
        if self.total_rows == 0 {
            return 0;
        }
        let rows = self.row.min(self.total_rows);
        (self.file_len as u128 * rows as u128 / self.total_rows as u128) as u64
    }

    pub(super) fn next(&mut self, path: &Path, skipped: &mut Skipped) -> Next {
        loop {
            if let Some(col) = &self.batch {
                if self.pos < col.len() {
                    let r = self.pos;
                    let row = self.row;
                    self.pos += 1;
                    self.row += 1;
                    match parquet_document(col, r) {
                        Ok(None) => skipped.nulls += 1,
                        Ok(Some(doc)) if is_empty(&doc) => skipped.empty += 1,
                        Ok(Some(doc)) => return Some(Ok((doc, Place::Row(row)))),
                        Err(msg) => {
                            return Some(Err(Error::corpus(path, format!("row {row}"), msg)))
                        }
                    }
                    continue;
                }
            }
            // parquet 60 panics on some corrupt pages (a division by zero in its byte-array
            // decoder, found by tests/it/fuzz.rs): a corrupt file is an error, not a crash.
            let next = match crate::catch_panic_quietly(|| self.reader.next()) {
                Some(next) => next,
                None => {
                    return Some(Err(Error::parquet(
                        path,
                        format!(
                            "cannot read rows from row {}: the file is corrupt",
                            self.row
                        ),
                    )))
                }
            };
            let batch = match next? {
                Ok(b) => b,
                Err(e) => {
                    return Some(Err(Error::parquet_source(
                        path,
                        format!("cannot read rows from row {}", self.row),
                        e,
                    )))
                }
            };
            let mut col = batch.column(0).clone();
            if let DataType::Dictionary(..) = col.data_type() {
                col = match arrow::compute::cast(&col, &DataType::LargeUtf8) {
                    Ok(c) => c,
                    Err(e) => {
                        return Some(Err(Error::parquet_source(
                            path,
                            format!("cannot decode dictionary strings from row {}", self.row),
                            e,
                        )))
                    }
                };
            }
            self.batch = Some(col);
            self.pos = 0;
        }
    }
}

/// Row `r` of the document column: `None` if null, else the document; `Err` says what is wrong.
fn parquet_document(col: &ArrayRef, r: usize) -> std::result::Result<Option<Document>, String> {
    if col.is_null(r) {
        return Ok(None);
    }
    let text = |s: &str| Ok(Some(Document::Text(s.to_owned())));
    let ids = |values: ArrayRef| {
        int_array_to_ids(&values)
            .map(|ids| Some(Document::Tokens(ids)))
            .map_err(|p| p.to_string())
    };
    match col.data_type() {
        DataType::Utf8 => text(col.as_string::<i32>().value(r)),
        DataType::LargeUtf8 => text(col.as_string::<i64>().value(r)),
        DataType::Utf8View => text(col.as_string_view().value(r)),
        DataType::List(_) => ids(col.as_list::<i32>().value(r)),
        DataType::LargeList(_) => ids(col.as_list::<i64>().value(r)),
        DataType::FixedSizeList(..) => ids(col.as_fixed_size_list().value(r)),
        other => Err(format!("unsupported column type {other}")),
    }
}

/// An integer array (any width, signed or not) as token ids.
fn int_array_to_ids(values: &ArrayRef) -> std::result::Result<Vec<u32>, IdProblem> {
    macro_rules! convert {
        ($t:ty) => {{
            let a = values.as_primitive::<$t>();
            let mut out = Vec::with_capacity(a.len());
            for index in 0..a.len() {
                if a.is_null(index) {
                    return Err(IdProblem {
                        index,
                        what: "is null".to_string(),
                    });
                }
                let id =
                    int_to_id(a.value(index) as i128).map_err(|what| IdProblem { index, what })?;
                out.push(id);
            }
            Ok(out)
        }};
    }
    match values.data_type() {
        DataType::Int8 => convert!(Int8Type),
        DataType::Int16 => convert!(Int16Type),
        DataType::Int32 => convert!(Int32Type),
        DataType::Int64 => convert!(Int64Type),
        DataType::UInt8 => convert!(UInt8Type),
        DataType::UInt16 => convert!(UInt16Type),
        DataType::UInt32 => convert!(UInt32Type),
        DataType::UInt64 => convert!(UInt64Type),
        other => Err(IdProblem {
            index: 0,
            what: format!("has type {other}, not an integer"),
        }),
    }
}
