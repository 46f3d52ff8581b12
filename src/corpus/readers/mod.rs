//! Streaming documents out of corpus files: [`DocumentReader`] walks the file list and hands
//! each file to the source for its format (`jsonl`, `text`, `parquet`), which yields documents
//! with their place in the file. The token id checks shared by JSONL and Parquet live here.
//! Nothing here tokenizes or packs (that is [`super::SequenceStream`]).

mod jsonl;
mod jsonl_field;
mod lines;
mod parquet;
mod text;

use std::fmt;
use std::path::{Path, PathBuf};

use self::jsonl::JsonlSource;
use self::parquet::ParquetSource;
#[cfg(test)]
pub(crate) use self::text::TEXT_PART_BYTES;
use self::text::{TextBlockSource, TextFileSource};
use super::{expand_inputs, CorpusFormat, CorpusOptions, Document, TextSplit};
use crate::error::{Error, Result};

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

/// Values that were not documents, counted by reason.
#[derive(Default)]
struct Skipped {
    nulls: u64,
    empty: u64,
}

/// Streams documents from a list of corpus files, in order (directories expanded as in
/// [`super::expand_inputs`]). Memory does not grow with file size: JSONL is read line by line,
/// Parquet record batch by record batch (1024 rows, only the document column), text files 1 MiB
/// at a time (in [`TextSplit::File`] mode, a longer file is one document in
/// [`Document::TextPart`]s) or one block (in [`TextSplit::BlankLine`] mode) at a time.
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
                    // A document in parts counts once, at its last part.
                    if !matches!(doc, Document::TextPart(_)) {
                        self.documents += 1;
                    }
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

/// The next document of a source with its place, `None` at the end of the file, or the error
/// that ends the stream.
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
            Source::Jsonl(s) => s.bytes_read(),
            Source::TextFile(s) => s.bytes_read(),
            Source::TextBlocks(s) => s.bytes_read(),
            Source::Parquet(s) => s.bytes_read(),
        }
    }

    fn file_len(&self) -> u64 {
        match self {
            Source::Jsonl(s) => s.file_len(),
            Source::TextFile(s) => s.file_len(),
            Source::TextBlocks(s) => s.file_len(),
            Source::Parquet(s) => s.file_len(),
        }
    }
}

/// An empty string or id list: skipped and counted, never yielded.
fn is_empty(doc: &Document) -> bool {
    match doc {
        Document::Text(t) => t.is_empty(),
        // A part is never empty, and the document it starts has text.
        Document::TextPart(_) => false,
        Document::Tokens(ids) => ids.is_empty(),
    }
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
