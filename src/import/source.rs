//! Reading captures made elsewhere, one document at a time: DistillKit's Parquet files
//! (compressed or `token_ids`/`top_values`, as captured or prepacked) and any Parquet or JSONL
//! file with per-position top-k ids and log-probs in list columns.
//!
//! Files are read row group by row group (Parquet) or line by line (JSONL), only the columns
//! the import needs; a [`Document`] owns the values of one document, so nothing holds more than
//! one batch of input rows.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, UInt8Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{Error, IoContext, Result};

/// Which columns hold what, for the file kinds `import` reads.
#[derive(Clone, Debug)]
pub struct Columns {
    pub input_ids: String,
    pub kind: ColumnsKind,
    /// DistillKit's document numbering of a prepacked row (1, 2, …; 0 = padding).
    pub document_mask: Option<String>,
    /// Per-position 0/1 (or bool) loss mask: positions with 0 keep no target.
    pub loss_mask: Option<String>,
}

#[derive(Clone, Debug)]
pub enum ColumnsKind {
    /// DistillKit's compressed form: `compressed_logprobs` and `bytepacked_indices`.
    Compressed { logprobs: String, ids: String },
    /// Plain per-position lists of ids and log-probs.
    TopK { ids: String, logprobs: String },
}

impl Columns {
    fn names(&self) -> Vec<&str> {
        let mut v = vec![self.input_ids.as_str()];
        match &self.kind {
            ColumnsKind::Compressed { logprobs, ids } | ColumnsKind::TopK { ids, logprobs } => {
                v.push(ids);
                v.push(logprobs);
            }
        }
        v.extend(self.document_mask.as_deref());
        v.extend(self.loss_mask.as_deref());
        v
    }
}

/// The entries of one document: per position, its encoded or plain top-k.
#[derive(Clone, Debug)]
pub enum Entries {
    /// DistillKit bytes: entry e's log-probs are `logprobs[lp_off[e]..lp_off[e+1]]`, its ids
    /// `ids[id_off[e]..id_off[e+1]]`.
    Compressed {
        logprobs: Vec<u8>,
        lp_off: Vec<usize>,
        ids: Vec<u8>,
        id_off: Vec<usize>,
    },
    /// Entry e: `ids[off[e]..off[e+1]]` with `logprobs` at the same places (`ids_off` for the
    /// log-probs when their lists differ in length, which is an error found per entry).
    TopK {
        ids: Vec<i64>,
        logprobs: Vec<f32>,
        off: Vec<usize>,
        lp_off: Vec<usize>,
    },
}

impl Entries {
    pub fn len(&self) -> usize {
        match self {
            Entries::Compressed { lp_off, .. } => lp_off.len() - 1,
            Entries::TopK { off, .. } => off.len() - 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One document of a capture, where it came from, and its alignment.
#[derive(Clone, Debug)]
pub struct Document {
    /// Index of the input file.
    pub file: usize,
    /// Row of the input file (0-based), and the document's number within a prepacked row.
    pub row: u64,
    pub part: usize,
    pub tokens: Vec<u32>,
    /// Entry `e` is the teacher's distribution of the token after `tokens[..=e]`.
    pub entries: Entries,
    /// Per position: whether its target is kept (`--mask`); all true without one.
    pub keep: Option<Vec<bool>>,
}

/// The documents of one input file, in order.
pub struct DocumentReader {
    path: PathBuf,
    file: usize,
    columns: Columns,
    rows: Box<dyn Iterator<Item = Result<RowBatch>> + Send>,
    pending: std::collections::VecDeque<Document>,
    next_row: u64,
}

/// A batch of input rows as Arrow columns (JSONL lines are read into the same shape).
struct RowBatch {
    batch: RecordBatch,
}

/// The Parquet batch size: rows decoded at a time.
const BATCH_ROWS: usize = 64;

impl DocumentReader {
    /// Open input file `file` (`.parquet`, `.jsonl` or `.json` lines) for `columns`.
    pub fn open(path: &Path, file: usize, columns: &Columns) -> Result<DocumentReader> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let rows: Box<dyn Iterator<Item = Result<RowBatch>> + Send> = match ext.as_str() {
            "parquet" => Box::new(parquet_batches(path, columns)?),
            "jsonl" | "json" | "ndjson" => Box::new(jsonl_batches(path, columns)?),
            _ => {
                return Err(Error::corpus(
                    path,
                    "file",
                    "is neither .parquet nor .jsonl: import reads Parquet files (DistillKit \
                     captures, top-k columns) and JSON lines",
                ))
            }
        };
        Ok(DocumentReader {
            path: path.to_path_buf(),
            file,
            columns: columns.clone(),
            rows,
            pending: Default::default(),
            next_row: 0,
        })
    }

    /// Input rows of a Parquet file, from its footer (None for JSONL).
    pub fn parquet_rows(path: &Path) -> Option<u64> {
        let f = File::open(path).ok()?;
        let b = ParquetRecordBatchReaderBuilder::try_new(f).ok()?;
        Some(b.metadata().file_metadata().num_rows().max(0) as u64)
    }

    fn err(&self, row: u64, msg: impl Into<String>) -> Error {
        Error::corpus(&self.path, format!("row {row}"), msg)
    }

    fn split(&mut self, rb: &RowBatch) -> Result<()> {
        let b = &rb.batch;
        let n = b.num_rows();
        let col = |name: &str| b.column_by_name(name).cloned();
        let path = self.path.clone();
        let input = list_of(
            &path,
            "input ids",
            &self.columns.input_ids,
            col(&self.columns.input_ids),
            DataType::Int64,
        )?;
        let doc_mask = match &self.columns.document_mask {
            Some(c) => match col(c) {
                Some(a) => Some(list_of(
                    &path,
                    "document mask",
                    c,
                    Some(a),
                    DataType::Int64,
                )?),
                None => None,
            },
            None => None,
        };
        let keep = match &self.columns.loss_mask {
            Some(c) => Some(list_of(&path, "--mask", c, col(c), DataType::Int64)?),
            None => None,
        };
        let entries = match &self.columns.kind {
            ColumnsKind::Compressed { logprobs, ids } => RowEntries::Compressed {
                logprobs: nested_bytes(&path, logprobs, col(logprobs))?,
                ids: nested_bytes(&path, ids, col(ids))?,
            },
            ColumnsKind::TopK { ids, logprobs } => RowEntries::TopK {
                ids: nested(&path, ids, col(ids), DataType::Int64)?,
                logprobs: nested(&path, logprobs, col(logprobs), DataType::Float32)?,
            },
        };
        for r in 0..n {
            let row = self.next_row;
            self.next_row += 1;
            if input.is_null(r) {
                return Err(self.err(row, format!("`{}` is null", self.columns.input_ids)));
            }
            let toks = input.value(r);
            let toks = toks.as_primitive::<Int64Type>();
            if toks.null_count() > 0 {
                return Err(self.err(row, format!("`{}` holds a null", self.columns.input_ids)));
            }
            let mut tokens = Vec::with_capacity(toks.len());
            for &t in toks.values() {
                if !(0..=u32::MAX as i64).contains(&t) {
                    return Err(self.err(row, format!("input id {t} is not a token id")));
                }
                tokens.push(t as u32);
            }
            let e = entries.row(r).map_err(|m| self.err(row, m))?;
            let keep = match &keep {
                Some(k) => {
                    let v = k.value(r);
                    let v = v.as_primitive::<Int64Type>();
                    if v.len() != tokens.len() {
                        return Err(self.err(
                            row,
                            format!(
                                "the mask has {} values for {} input ids",
                                v.len(),
                                tokens.len()
                            ),
                        ));
                    }
                    Some(v.values().iter().map(|&x| x != 0).collect::<Vec<bool>>())
                }
                None => None,
            };
            match doc_mask.as_ref().filter(|m| !m.is_null(r)) {
                Some(m) => {
                    // A prepacked row: documents are runs of one non-zero number, each with an
                    // entry per token (pack_logits.py truncates input_ids to the entries).
                    let m = m.value(r);
                    let m = m.as_primitive::<Int64Type>().values().to_vec();
                    if m.len() != tokens.len() || e.len() != tokens.len() {
                        return Err(self.err(
                            row,
                            format!(
                                "a prepacked row needs as many attention_mask values and entries \
                                 as input ids: {} input ids, {} attention_mask values, {} entries",
                                tokens.len(),
                                m.len(),
                                e.len()
                            ),
                        ));
                    }
                    let mut start = 0;
                    let mut part = 0;
                    while start < m.len() {
                        let mut end = start + 1;
                        while end < m.len() && m[end] == m[start] {
                            end += 1;
                        }
                        if m[start] != 0 {
                            self.pending.push_back(Document {
                                file: self.file,
                                row,
                                part,
                                tokens: tokens[start..end].to_vec(),
                                entries: e.slice(start, end),
                                keep: keep.as_ref().map(|k| k[start..end].to_vec()),
                            });
                            part += 1;
                        }
                        start = end;
                    }
                }
                None => {
                    // DistillKit's captured rows (no attention_mask) have one entry per token
                    // after the first; other top-k dumps may also have one per token.
                    let (t, n) = (tokens.len(), e.len());
                    let distillkit = self.columns.document_mask.is_some();
                    if distillkit && n + 1 != t {
                        return Err(self.err(
                            row,
                            format!(
                                "{t} input ids and {n} entries: a DistillKit capture row has one \
                                 entry per input id after the first (vLLM's prompt_logprobs); a \
                                 prepacked row has an attention_mask and one entry per input id"
                            ),
                        ));
                    }
                    if n + 1 != t && n != t {
                        return Err(self.err(
                            row,
                            format!(
                                "{t} input ids and {n} entries: a capture has one entry per input \
                                 id after the first (vLLM's prompt_logprobs), or one per input id \
                                 (prepacked rows)"
                            ),
                        ));
                    }
                    self.pending.push_back(Document {
                        file: self.file,
                        row,
                        part: 0,
                        tokens,
                        entries: e,
                        keep,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        loop {
            if let Some(d) = self.pending.pop_front() {
                return Some(Ok(d));
            }
            let rb = match self.rows.next()? {
                Ok(rb) => rb,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = self.split(&rb) {
                return Some(Err(e));
            }
        }
    }
}

/// A column cast to `list<T>`, named in the error when it is missing or of another type.
fn list_of(
    path: &Path,
    what: &str,
    name: &str,
    col: Option<ArrayRef>,
    item: DataType,
) -> Result<ListArray> {
    let Some(col) = col else {
        return Err(Error::corpus(
            path,
            "schema",
            format!("no column `{name}` ({what})"),
        ));
    };
    let to = DataType::List(Arc::new(Field::new_list_field(item.clone(), true)));
    let cast_err = |e: String| {
        Error::corpus(
            path,
            format!("column `{name}`"),
            format!(
                "is {}, not a list of numbers ({what}): {e}",
                col.data_type()
            ),
        )
    };
    let c = cast(&col, &to).map_err(|e| cast_err(e.to_string()))?;
    Ok(c.as_list::<i32>().clone())
}

/// A `list<list<T>>` column.
fn nested(path: &Path, name: &str, col: Option<ArrayRef>, item: DataType) -> Result<ListArray> {
    let inner = DataType::List(Arc::new(Field::new_list_field(item, true)));
    list_of(path, "a list per position", name, col, inner)
}

/// A `list<list<uint8>>` or `list<binary>` column of per-position byte strings, as
/// `list<list<uint8>>`.
fn nested_bytes(path: &Path, name: &str, col: Option<ArrayRef>) -> Result<ListArray> {
    if let Some(c) = &col {
        let inner = match c.data_type() {
            DataType::List(f) | DataType::LargeList(f) => Some(f.data_type().clone()),
            _ => None,
        };
        if matches!(
            inner,
            Some(DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
        ) {
            // Per-position binary values: rebuild them as lists of bytes.
            let l = cast(
                c,
                &DataType::List(Arc::new(Field::new_list_field(DataType::LargeBinary, true))),
            )
            .map_err(|e| Error::corpus(path, format!("column `{name}`"), e.to_string()))?;
            let l = l.as_list::<i32>();
            let bin = l.values().as_binary::<i64>();
            let offsets: Vec<i32> = bin.value_offsets().iter().map(|&o| o as i32).collect();
            let values = arrow::array::UInt8Array::from(bin.value_data().to_vec());
            let inner = ListArray::try_new(
                Arc::new(Field::new_list_field(DataType::UInt8, true)),
                arrow::buffer::OffsetBuffer::new(offsets.into()),
                Arc::new(values),
                None,
            )
            .map_err(|e| Error::corpus(path, format!("column `{name}`"), e.to_string()))?;
            let outer = ListArray::try_new(
                Arc::new(Field::new_list_field(inner.data_type().clone(), true)),
                l.offsets().clone(),
                Arc::new(inner),
                l.nulls().cloned(),
            )
            .map_err(|e| Error::corpus(path, format!("column `{name}`"), e.to_string()))?;
            return Ok(outer);
        }
    }
    nested(path, name, col, DataType::UInt8)
}

/// The entry columns of a batch.
enum RowEntries {
    Compressed { logprobs: ListArray, ids: ListArray },
    TopK { ids: ListArray, logprobs: ListArray },
}

/// Copy one row's per-position lists out: their values and offsets from 0.
fn row_lists<T: arrow::datatypes::ArrowPrimitiveType>(
    l: &ListArray,
    r: usize,
    what: &str,
) -> std::result::Result<(Vec<T::Native>, Vec<usize>), String> {
    if l.is_null(r) {
        return Err(format!("`{what}` is null"));
    }
    let v = l.value(r);
    let inner = v.as_list::<i32>();
    if inner.null_count() > 0 {
        return Err(format!("`{what}` has a null entry"));
    }
    let offs = inner.value_offsets();
    let base = offs[0] as usize;
    let end = offs[offs.len() - 1] as usize;
    let values = inner.values().as_primitive::<T>();
    if values.slice(base, end - base).null_count() > 0 {
        return Err(format!("`{what}` holds a null value"));
    }
    let off = offs.iter().map(|&o| o as usize - base).collect();
    Ok((values.values()[base..end].to_vec(), off))
}

impl RowEntries {
    fn row(&self, r: usize) -> std::result::Result<Entries, String> {
        match self {
            RowEntries::Compressed { logprobs, ids } => {
                let (lp, lp_off) = row_lists::<UInt8Type>(logprobs, r, "compressed_logprobs")?;
                let (id, id_off) = row_lists::<UInt8Type>(ids, r, "bytepacked_indices")?;
                if lp_off.len() != id_off.len() {
                    return Err(format!(
                        "compressed_logprobs has {} entries and bytepacked_indices {}: one of \
                         each per position",
                        lp_off.len() - 1,
                        id_off.len() - 1
                    ));
                }
                Ok(Entries::Compressed {
                    logprobs: lp,
                    lp_off,
                    ids: id,
                    id_off,
                })
            }
            RowEntries::TopK { ids, logprobs } => {
                let (id, off) = row_lists::<Int64Type>(ids, r, "the ids column")?;
                let (lp, lp_off) = row_lists::<Float32Type>(logprobs, r, "the log-probs column")?;
                if off.len() != lp_off.len() {
                    return Err(format!(
                        "the ids column has {} entries and the log-probs column {}: one of each \
                         per position",
                        off.len() - 1,
                        lp_off.len() - 1
                    ));
                }
                Ok(Entries::TopK {
                    ids: id,
                    logprobs: lp,
                    off,
                    lp_off,
                })
            }
        }
    }
}

impl Entries {
    /// Entries `a..b`.
    fn slice(&self, a: usize, b: usize) -> Entries {
        fn cut<T: Copy>(v: &[T], off: &[usize], a: usize, b: usize) -> (Vec<T>, Vec<usize>) {
            let base = off[a];
            (
                v[off[a]..off[b]].to_vec(),
                off[a..=b].iter().map(|&o| o - base).collect(),
            )
        }
        match self {
            Entries::Compressed {
                logprobs,
                lp_off,
                ids,
                id_off,
            } => {
                let (logprobs, lp_off) = cut(logprobs, lp_off, a, b);
                let (ids, id_off) = cut(ids, id_off, a, b);
                Entries::Compressed {
                    logprobs,
                    lp_off,
                    ids,
                    id_off,
                }
            }
            Entries::TopK {
                ids,
                logprobs,
                off,
                lp_off,
            } => {
                let (ids, off) = cut(ids, off, a, b);
                let (logprobs, lp_off) = cut(logprobs, lp_off, a, b);
                Entries::TopK {
                    ids,
                    logprobs,
                    off,
                    lp_off,
                }
            }
        }
    }
}

fn parquet_batches(
    path: &Path,
    columns: &Columns,
) -> Result<impl Iterator<Item = Result<RowBatch>> + Send> {
    let f = File::open(path).at(path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| Error::corpus(path, "footer", format!("not a readable Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let mut roots = Vec::new();
    for name in columns.names() {
        match schema.index_of(name) {
            Ok(i) => roots.push(i),
            // The document mask is optional (DistillKit's captures have none until packed).
            Err(_) if Some(name) == columns.document_mask.as_deref() => {}
            Err(_) => {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(Error::corpus(
                    path,
                    "schema",
                    format!("no column `{name}` (the file has: {})", have.join(", ")),
                ));
            }
        }
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| Error::corpus(path, "footer", e.to_string()))?;
    let path = path.to_path_buf();
    let mut reader = reader;
    // parquet panics on some corrupt pages: a corrupt capture is one error naming the file.
    Ok(std::iter::from_fn(move || {
        let next = crate::catch_panic_quietly(|| reader.next()).unwrap_or_else(|| {
            Some(Err(arrow::error::ArrowError::ParquetError(
                "the decoder panicked on a corrupt page".into(),
            )))
        })?;
        Some(
            next.map(|batch| RowBatch { batch })
                .map_err(|e| Error::corpus(&path, "row group", format!("cannot be decoded: {e}"))),
        )
    }))
}

fn jsonl_batches(
    path: &Path,
    columns: &Columns,
) -> Result<impl Iterator<Item = Result<RowBatch>> + Send> {
    use arrow::array::{Float32Builder, Int64Builder, ListBuilder};
    let f = File::open(path).at(path)?;
    let mut lines = BufReader::new(f).lines().enumerate();
    let path = path.to_path_buf();
    let columns = columns.clone();
    let (ids_col, lps_col) = match &columns.kind {
        ColumnsKind::TopK { ids, logprobs } => (ids.clone(), logprobs.clone()),
        ColumnsKind::Compressed { .. } => return Err(Error::corpus(
            &path,
            "file",
            "DistillKit captures are Parquet files; JSON lines are read with --from topk-columns",
        )),
    };
    Ok(std::iter::from_fn(move || {
        let mut input = ListBuilder::new(Int64Builder::new());
        let mut mask = ListBuilder::new(Int64Builder::new());
        let mut ids = ListBuilder::new(ListBuilder::new(Int64Builder::new()));
        let mut lps = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
        let mut n = 0;
        for (i, line) in lines.by_ref() {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(Error::io(&path, e))),
            };
            if line.trim().is_empty() {
                continue;
            }
            let loc = format!("line {}", i + 1);
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => return Some(Err(Error::corpus(&path, loc, format!("not JSON: {e}")))),
            };
            let field = |name: &str| -> std::result::Result<&Vec<serde_json::Value>, String> {
                v.get(name)
                    .and_then(|x| x.as_array())
                    .ok_or_else(|| format!("no list field `{name}`"))
            };
            let result = (|| -> std::result::Result<(), String> {
                let toks = field(&columns.input_ids)?;
                for t in toks {
                    input
                        .values()
                        .append_value(t.as_i64().ok_or("an input id is not an integer")?);
                }
                let id_rows = field(&ids_col)?;
                let lp_rows = field(&lps_col)?;
                // vLLM's prompt_logprobs start with null for the first token: skip it.
                let skip = usize::from(
                    id_rows.first().is_some_and(|x| x.is_null())
                        && lp_rows.first().is_some_and(|x| x.is_null()),
                );
                for e in &id_rows[skip..] {
                    let e = e
                        .as_array()
                        .ok_or("an entry of the ids column is not a list")?;
                    for x in e {
                        ids.values()
                            .values()
                            .append_value(x.as_i64().ok_or("a top-k id is not an integer")?);
                    }
                    ids.values().append(true);
                }
                for e in &lp_rows[skip..] {
                    let e = e
                        .as_array()
                        .ok_or("an entry of the log-probs column is not a list")?;
                    for x in e {
                        lps.values()
                            .values()
                            .append_value(x.as_f64().ok_or("a log-prob is not a number")? as f32);
                    }
                    lps.values().append(true);
                }
                if let Some(m) = &columns.loss_mask {
                    for x in field(m)? {
                        let b = x.as_bool().map(i64::from).or_else(|| x.as_i64());
                        mask.values().append_value(
                            b.ok_or("a mask value is neither a bool nor an integer")?,
                        );
                    }
                    mask.append(true);
                }
                Ok(())
            })();
            if let Err(msg) = result {
                return Some(Err(Error::corpus(&path, loc, msg)));
            }
            input.append(true);
            ids.append(true);
            lps.append(true);
            n += 1;
            if n == BATCH_ROWS {
                break;
            }
        }
        if n == 0 {
            return None;
        }
        let mut cols: Vec<(String, ArrayRef)> = vec![
            (columns.input_ids.clone(), Arc::new(input.finish())),
            (ids_col.clone(), Arc::new(ids.finish())),
            (lps_col.clone(), Arc::new(lps.finish())),
        ];
        if let Some(m) = &columns.loss_mask {
            cols.push((m.clone(), Arc::new(mask.finish())));
        }
        Some(
            RecordBatch::try_from_iter(cols)
                .map(|batch| RowBatch { batch })
                .map_err(|e| Error::Internal(e.to_string())),
        )
    }))
}
