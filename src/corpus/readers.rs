//! Streaming documents out of JSONL, text and Parquet files.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{expand_inputs, CorpusFormat, CorpusOptions, Document, TextSplit};
use crate::error::{Error, IoContext, Result};

/// Rows per Parquet record batch.
const PARQUET_BATCH_ROWS: usize = 1024;
/// Read buffer of JSONL and text files.
const READ_BUFFER: usize = 1 << 16;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Where a document came from: a file (index into the reader's list) and a place in it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DocLocation {
    file: usize,
    place: Place,
}

#[derive(Clone, Copy, Debug)]
enum Place {
    /// 1-based line (JSONL; first line of a block of a text file).
    Line(u64),
    /// 0-based row (Parquet).
    Row(u64),
    /// A text file read as one document.
    WholeFile,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Row(n) => write!(f, "row {n}"),
            Place::WholeFile => f.write_str("whole file"),
        }
    }
}

#[derive(Default)]
struct Skipped {
    nulls: u64,
    empty: u64,
}

/// Streams documents from a list of corpus files, in order (directories expanded as in
/// [`super::expand_inputs`]). Memory does not grow with file size: JSONL is read line by line,
/// Parquet record batch by record batch (1024 rows, only the document column), text files one
/// file (in [`TextSplit::File`] mode) or one block (in [`TextSplit::BlankLine`] mode) at a time.
///
/// Field typing is detected per value (see the [module documentation](super)): a string is a
/// [`Document::Text`], an array (JSONL) or list column (Parquet) of integers is a
/// [`Document::Tokens`]. Nulls and empty documents are skipped and counted.
///
/// After the first `Err`, the iterator ends.
pub struct DocumentReader {
    files: Vec<PathBuf>,
    formats: Vec<CorpusFormat>,
    opts: CorpusOptions,
    next_file: usize,
    current: Option<(usize, Source)>,
    /// Sizes of the files read to the end.
    bytes_done: u64,
    last: Option<DocLocation>,
    skipped: Skipped,
    documents: u64,
    done: bool,
}

impl DocumentReader {
    /// Check the files (they exist, have a known extension; Parquet files open and have the
    /// document column of a usable type) and get ready to read the first one.
    pub fn new(files: &[PathBuf], opts: &CorpusOptions) -> Result<Self> {
        let files = expand_inputs(files)?;
        let formats = files
            .iter()
            .map(|f| CorpusFormat::from_path(f))
            .collect::<Result<Vec<_>>>()?;
        for (file, format) in files.iter().zip(&formats) {
            if *format == CorpusFormat::Parquet {
                // Fail early, before hours of work on the files before it.
                ParquetSource::open(file, &opts.text_field)?;
            }
        }
        Ok(DocumentReader {
            files,
            formats,
            opts: opts.clone(),
            next_file: 0,
            current: None,
            bytes_done: 0,
            last: None,
            skipped: Skipped::default(),
            documents: 0,
            done: false,
        })
    }

    /// The files read, in order, directories expanded.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Approximate input bytes consumed so far (exact for JSONL and text, proportional to rows
    /// for Parquet), for a progress bar; the total is the sum of the file sizes.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_done + self.current.as_ref().map_or(0, |(_, s)| s.bytes_read())
    }

    /// Documents yielded so far.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// Null values skipped so far (JSONL `null` field, Parquet null row).
    pub fn skipped_nulls(&self) -> u64 {
        self.skipped.nulls
    }

    /// Empty documents skipped so far (empty string, empty id list, empty text file).
    pub fn skipped_empty(&self) -> u64 {
        self.skipped.empty
    }

    /// Where the last yielded document came from.
    pub(crate) fn last_location(&self) -> Option<DocLocation> {
        self.last
    }

    /// An [`Error::Corpus`] at a document's location.
    pub(crate) fn error_at(&self, loc: Option<DocLocation>, msg: impl Into<String>) -> Error {
        match loc {
            Some(loc) => Error::corpus(&self.files[loc.file], loc.place.to_string(), msg),
            None => Error::Internal(msg.into()),
        }
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        if self.done {
            return None;
        }
        loop {
            if self.current.is_none() {
                if self.next_file == self.files.len() {
                    self.done = true;
                    return None;
                }
                let i = self.next_file;
                self.next_file += 1;
                match Source::open(&self.files[i], self.formats[i], &self.opts) {
                    Ok(source) => self.current = Some((i, source)),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let (i, source) = self.current.as_mut().expect("a file is open");
            let path = &self.files[*i];
            match source.next(path, &self.opts.text_field, &mut self.skipped) {
                Some(Ok((doc, place))) => {
                    self.last = Some(DocLocation { file: *i, place });
                    self.documents += 1;
                    return Some(Ok(doc));
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.current = None;
                    return Some(Err(e));
                }
                None => {
                    self.bytes_done += source.file_len();
                    self.current = None;
                }
            }
        }
    }
}

/// One open corpus file.
enum Source {
    Jsonl(JsonlSource),
    TextFile(TextFileSource),
    TextBlocks(TextBlockSource),
    Parquet(ParquetSource),
}

type Next = Option<Result<(Document, Place)>>;

impl Source {
    fn open(path: &Path, format: CorpusFormat, opts: &CorpusOptions) -> Result<Self> {
        Ok(match (format, opts.text_split) {
            (CorpusFormat::Jsonl, _) => Source::Jsonl(JsonlSource::open(path)?),
            (CorpusFormat::Text, TextSplit::File) => Source::TextFile(TextFileSource::open(path)?),
            (CorpusFormat::Text, TextSplit::BlankLine) => {
                Source::TextBlocks(TextBlockSource::open(path)?)
            }
            (CorpusFormat::Parquet, _) => {
                Source::Parquet(ParquetSource::open(path, &opts.text_field)?)
            }
        })
    }

    fn next(&mut self, path: &Path, field: &str, skipped: &mut Skipped) -> Next {
        match self {
            Source::Jsonl(s) => s.next(path, field, skipped),
            Source::TextFile(s) => s.next(path, skipped),
            Source::TextBlocks(s) => s.next(path),
            Source::Parquet(s) => s.next(path, skipped),
        }
    }

    fn bytes_read(&self) -> u64 {
        match self {
            Source::Jsonl(s) => s.lines.bytes,
            Source::TextFile(s) => s.bytes,
            Source::TextBlocks(s) => s.lines.bytes,
            Source::Parquet(s) => s.bytes_read(),
        }
    }

    fn file_len(&self) -> u64 {
        match self {
            Source::Jsonl(s) => s.lines.file_len,
            Source::TextFile(s) => s.file_len,
            Source::TextBlocks(s) => s.lines.file_len,
            Source::Parquet(s) => s.file_len,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lines (JSONL and text blocks)

/// A buffered file read line by line into a reused buffer.
struct Lines {
    reader: BufReader<File>,
    buf: Vec<u8>,
    /// 1-based number of the line in `buf`.
    line: u64,
    bytes: u64,
    file_len: u64,
}

impl Lines {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let file_len = file.metadata().at(path)?.len();
        Ok(Lines {
            reader: BufReader::with_capacity(READ_BUFFER, file),
            buf: Vec::new(),
            line: 0,
            bytes: 0,
            file_len,
        })
    }

    /// The next line's number and bytes without its terminator (`\n` or `\r\n`; a first-line
    /// BOM is dropped), or `None` at the end of the file.
    fn next_line(&mut self, path: &Path) -> Option<Result<(u64, &[u8])>> {
        self.buf.clear();
        match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => None,
            Ok(n) => {
                self.line += 1;
                self.bytes += n as u64;
                let mut line = &self.buf[..];
                if self.line == 1 {
                    line = line.strip_prefix(BOM).unwrap_or(line);
                }
                line = line.strip_suffix(b"\n").unwrap_or(line);
                line = line.strip_suffix(b"\r").unwrap_or(line);
                Some(Ok((self.line, line)))
            }
            Err(e) => Some(Err(Error::io(path, e))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSONL

struct JsonlSource {
    lines: Lines,
}

impl JsonlSource {
    fn open(path: &Path) -> Result<Self> {
        Ok(JsonlSource {
            lines: Lines::open(path)?,
        })
    }

    fn next(&mut self, path: &Path, field: &str, skipped: &mut Skipped) -> Next {
        loop {
            let (n, line) = match self.lines.next_line(path)? {
                Ok(numbered) => numbered,
                Err(e) => return Some(Err(e)),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let at = || format!("line {n}");
            let parsed = parse_jsonl_line(line, field).map_err(|e| {
                Error::corpus(
                    path,
                    at(),
                    format!(
                        "not valid JSON ({}); a JSONL corpus holds one JSON object per line",
                        json_error_without_position(&e)
                    ),
                )
            });
            let (value, keys) = match parsed {
                Err(e) => return Some(Err(e)),
                Ok(LineValue::NotObject(kind)) => {
                    return Some(Err(Error::corpus(
                        path,
                        at(),
                        format!("expected a JSON object with a `{field}` field, found {kind}"),
                    )))
                }
                Ok(LineValue::Object { value, keys }) => (value, keys),
            };
            let doc = match value {
                None => {
                    let has = if keys.is_empty() {
                        "the object has no fields".to_string()
                    } else {
                        format!("the object has fields: {}", keys.join(", "))
                    };
                    return Some(Err(Error::corpus(
                        path,
                        at(),
                        format!(
                            "no field `{field}` ({has}); name the document field with --text-field"
                        ),
                    )));
                }
                Some(FieldValue::Null) => {
                    skipped.nulls += 1;
                    continue;
                }
                Some(FieldValue::Other(kind)) => {
                    return Some(Err(Error::corpus(
                        path,
                        at(),
                        format!(
                            "field `{field}` is {kind}; expected a string (text) or an array of \
                             integer token ids"
                        ),
                    )))
                }
                Some(FieldValue::BadId(problem)) => {
                    return Some(Err(Error::corpus(
                        path,
                        at(),
                        format!("field `{field}`: {problem}"),
                    )))
                }
                Some(FieldValue::Text(t)) => Document::Text(t),
                Some(FieldValue::Ids(ids)) => Document::Tokens(ids),
            };
            if is_empty(&doc) {
                skipped.empty += 1;
                continue;
            }
            return Some(Ok((doc, Place::Line(n))));
        }
    }
}

fn is_empty(doc: &Document) -> bool {
    match doc {
        Document::Text(t) => t.is_empty(),
        Document::Tokens(ids) => ids.is_empty(),
    }
}

/// serde_json's message without its ` at line 1 column N` (the line is ours), with the column.
fn json_error_without_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => &msg,
    };
    format!("{msg} at column {}", e.column())
}

/// Parse one JSONL line, materializing only the document field.
fn parse_jsonl_line(line: &[u8], field: &str) -> serde_json::Result<LineValue> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let value = LineSeed { field }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

enum LineValue {
    Object {
        value: Option<FieldValue>,
        /// The keys seen before the field was found (all keys if it is missing).
        keys: Vec<String>,
    },
    NotObject(&'static str),
}

enum FieldValue {
    Text(String),
    Ids(Vec<u32>),
    BadId(IdProblem),
    Null,
    Other(&'static str),
}

/// The first bad element of a token id list.
#[derive(Debug)]
struct IdProblem {
    index: usize,
    what: String,
}

impl fmt::Display for IdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token id at index {} {}; token ids must be integers from 0 to {}",
            self.index,
            self.what,
            u32::MAX
        )
    }
}

/// An integer as a token id, or what is wrong with it.
fn int_to_id(value: i128) -> std::result::Result<u32, String> {
    u32::try_from(value).map_err(|_| {
        if value < 0 {
            format!("is {value}, negative")
        } else {
            format!("is {value}, too large for a 32-bit id")
        }
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_to_id(v: &serde_json::Value) -> std::result::Result<u32, String> {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                int_to_id(u as i128)
            } else if let Some(i) = n.as_i64() {
                int_to_id(i as i128)
            } else {
                Err(format!("is {n}, not an integer"))
            }
        }
        other => Err(format!("is {}", json_kind(other))),
    }
}

struct LineSeed<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = LineValue;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<LineValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = LineValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<LineValue, A::Error> {
        let mut value = None;
        let mut keys = Vec::new();
        loop {
            let seed = KeySeed {
                field: self.field,
                keys: if value.is_none() {
                    Some(&mut keys)
                } else {
                    None
                },
            };
            match map.next_key_seed(seed)? {
                None => break,
                Some(true) => value = Some(map.next_value::<FieldValue>()?),
                Some(false) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(LineValue::Object { value, keys })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<LineValue, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LineValue::NotObject("an array"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a string"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<LineValue, E> {
        Ok(LineValue::NotObject("null"))
    }
}

/// Deserializes an object key into "is it the document field?", remembering the key names.
struct KeySeed<'f, 'k> {
    field: &'f str,
    keys: Option<&'k mut Vec<String>>,
}

/// At most this many key names are kept for the "no such field" message.
const MAX_KEYS_LISTED: usize = 32;

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> std::result::Result<bool, E> {
        if key == self.field {
            return Ok(true);
        }
        if let Some(keys) = self.keys {
            if keys.len() < MAX_KEYS_LISTED {
                keys.push(key.to_string());
            }
        }
        Ok(false)
    }
}

impl<'de> de::Deserialize<'de> for FieldValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = FieldValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array of token ids")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Text(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<FieldValue, A::Error> {
        let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut problem = None;
        let mut index = 0;
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            if problem.is_none() {
                match json_to_id(&v) {
                    Ok(id) => ids.push(id),
                    Err(what) => problem = Some(IdProblem { index, what }),
                }
            }
            index += 1;
        }
        Ok(match problem {
            Some(p) => FieldValue::BadId(p),
            None => FieldValue::Ids(ids),
        })
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<FieldValue, E> {
        Ok(FieldValue::Other("a number"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<FieldValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(FieldValue::Other("an object"))
    }
}

// ---------------------------------------------------------------------------------------------
// Text

/// A text file read as one document.
struct TextFileSource {
    path: PathBuf,
    file_len: u64,
    bytes: u64,
    done: bool,
}

impl TextFileSource {
    fn open(path: &Path) -> Result<Self> {
        let file_len = std::fs::metadata(path).at(path)?.len();
        Ok(TextFileSource {
            path: path.to_path_buf(),
            file_len,
            bytes: 0,
            done: false,
        })
    }

    fn next(&mut self, path: &Path, skipped: &mut Skipped) -> Next {
        if self.done {
            return None;
        }
        self.done = true;
        let bytes = match std::fs::read(&self.path).at(path) {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        self.bytes = self.file_len;
        let body = bytes.strip_prefix(BOM).unwrap_or(&bytes);
        let text = match std::str::from_utf8(body) {
            Ok(t) => t.to_owned(),
            Err(e) => {
                let line = 1 + body[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                return Some(Err(Error::corpus(
                    path,
                    format!("line {line}"),
                    "not valid UTF-8 text",
                )));
            }
        };
        if text.is_empty() {
            skipped.empty += 1;
            return None;
        }
        Some(Ok((Document::Text(text), Place::WholeFile)))
    }
}

/// A text file read as blocks of lines separated by blank lines.
struct TextBlockSource {
    lines: Lines,
}

impl TextBlockSource {
    fn open(path: &Path) -> Result<Self> {
        Ok(TextBlockSource {
            lines: Lines::open(path)?,
        })
    }

    fn next(&mut self, path: &Path) -> Next {
        let mut block = String::new();
        let mut start = 0;
        loop {
            let (n, line) = match self.lines.next_line(path) {
                None => break,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(numbered)) => numbered,
            };
            let line = match std::str::from_utf8(line) {
                Ok(l) => l,
                Err(_) => {
                    return Some(Err(Error::corpus(
                        path,
                        format!("line {n}"),
                        "not valid UTF-8 text",
                    )))
                }
            };
            if line.trim().is_empty() {
                if block.is_empty() {
                    continue;
                }
                break;
            }
            if block.is_empty() {
                start = n;
            } else {
                block.push('\n');
            }
            block.push_str(line);
        }
        if block.is_empty() {
            None
        } else {
            Some(Ok((Document::Text(block), Place::Line(start))))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parquet

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

struct ParquetSource {
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
    fn open(path: &Path, field: &str) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let file_len = file.metadata().at(path)?.len();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::parquet(path, format!("not a readable Parquet file: {e}")))?;
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
            .map_err(|e| Error::parquet(path, format!("cannot read column `{field}`: {e}")))?;
        Ok(ParquetSource {
            reader,
            batch: None,
            pos: 0,
            row: 0,
            total_rows,
            file_len,
        })
    }

    fn bytes_read(&self) -> u64 {
        if self.total_rows == 0 {
            return 0;
        }
        let rows = self.row.min(self.total_rows);
        (self.file_len as u128 * rows as u128 / self.total_rows as u128) as u64
    }

    fn next(&mut self, path: &Path, skipped: &mut Skipped) -> Next {
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
            let batch = match self.reader.next()? {
                Ok(b) => b,
                Err(e) => {
                    return Some(Err(Error::parquet(
                        path,
                        format!("cannot read rows from row {}: {e}", self.row),
                    )))
                }
            };
            let mut col = batch.column(0).clone();
            if let DataType::Dictionary(..) = col.data_type() {
                col = match arrow::compute::cast(&col, &DataType::LargeUtf8) {
                    Ok(c) => c,
                    Err(e) => {
                        return Some(Err(Error::parquet(
                            path,
                            format!(
                                "cannot decode dictionary strings from row {}: {e}",
                                self.row
                            ),
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
