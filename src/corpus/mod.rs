//! The corpus stage: read documents, tokenize them with the teacher's tokenizer, pack the token
//! stream into fixed-length sequences.
//!
//! ```text
//! files ──DocumentReader──▶ Document ──SequenceStream (tokenize in batches)──▶ Packer ──▶ PackedSequence
//! ```
//!
//! # Inputs
//!
//! The format of a file comes from its extension (see [`CorpusFormat`]); a directory stands for
//! the files below it (recursively, sorted by name, hidden files and directories ignored).
//!
//! Each document is taken from the field (JSONL) or column (Parquet) named by
//! [`CorpusOptions::text_field`], whose type decides what the document is:
//!
//! - **JSONL** (`.jsonl`, `.json`, `.ndjson`): one JSON object per line. The field holds either a
//!   string (text, tokenized by the teacher's tokenizer) or an array of non-negative integers
//!   (token ids, used as given). Blank lines are skipped. Lines are numbered from 1.
//! - **Parquet** (`.parquet`): the column is `Utf8`, `LargeUtf8`, `Utf8View` or a dictionary of
//!   strings (text), or a `List`, `LargeList` or `FixedSizeList` of any integer type (token ids).
//!   Rows are numbered from 0, across row groups.
//! - **Text** (`.txt`, `.text`, `.md`): UTF-8 text; one document per file, or one per block of
//!   lines separated by blank lines ([`TextSplit`]).
//!
//! Null values and empty strings or empty id lists are not documents: they are skipped and
//! counted ([`DocumentReader::skipped_nulls`], [`DocumentReader::skipped_empty`]). Any other
//! problem (invalid JSON, missing field, wrong type, negative or too large id, unreadable file)
//! stops the stream with an error naming the file and the line or row.

pub mod bpe;
mod chunk;
mod pack;
mod readers;
mod stream;
pub mod testing;

use std::path::{Path, PathBuf};

pub use pack::{PackedSequence, Packer};
pub use readers::DocumentReader;
pub use stream::SequenceStream;

use crate::error::{Error, IoContext, Result};

/// How a `.txt` file splits into documents.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TextSplit {
    /// The whole file is one document.
    #[default]
    File,
    /// Blocks of lines separated by one or more blank (whitespace-only) lines are documents.
    BlankLine,
}

/// How documents are taken from the corpus files.
#[derive(Clone, Debug)]
pub struct CorpusOptions {
    /// The JSONL field or Parquet column holding each document (text or token ids).
    pub text_field: String,
    /// How `.txt` files split into documents.
    pub text_split: TextSplit,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            text_field: "text".to_string(),
            text_split: TextSplit::File,
        }
    }
}

/// One document of the corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    /// Text, to be tokenized with the teacher's tokenizer (the whole document, or the last part
    /// of one whose first parts came as [`Document::TextPart`]).
    Text(String),
    /// A part of a text document that continues with the next item: more parts, then a
    /// [`Document::Text`] with its last part. A text file longer than 1 MiB comes this way.
    TextPart(String),
    /// Token ids given in the corpus, used as they are.
    Tokens(Vec<u32>),
}

/// A corpus file format, detected from the file extension (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorpusFormat {
    /// `.jsonl`, `.json`, `.ndjson`: JSON Lines, one object per line.
    Jsonl,
    /// `.txt`, `.text`, `.md`: UTF-8 text.
    Text,
    /// `.parquet`.
    Parquet,
}

/// The accepted extensions, for error messages.
const ACCEPTED_EXTENSIONS: &str =
    ".jsonl, .json, .ndjson (JSON Lines), .txt, .text, .md (text), .parquet";

impl CorpusFormat {
    /// The format of `path`, from its extension.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("jsonl" | "json" | "ndjson") => Ok(CorpusFormat::Jsonl),
            Some("txt" | "text" | "md") => Ok(CorpusFormat::Text),
            Some("parquet") => Ok(CorpusFormat::Parquet),
            Some(other) => Err(Error::corpus(
                path,
                "extension",
                format!("unknown corpus format `.{other}`; accepted extensions: {ACCEPTED_EXTENSIONS}"),
            )),
            None => Err(Error::corpus(
                path,
                "extension",
                format!("no file extension to tell the corpus format; accepted extensions: {ACCEPTED_EXTENSIONS}"),
            )),
        }
    }

    /// The name recorded in the manifest: `jsonl`, `text` or `parquet`.
    pub fn as_str(self) -> &'static str {
        match self {
            CorpusFormat::Jsonl => "jsonl",
            CorpusFormat::Text => "text",
            CorpusFormat::Parquet => "parquet",
        }
    }
}

impl std::fmt::Display for CorpusFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Facts about one corpus file for the manifest.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CorpusFileInfo {
    /// The path as given (a file found in a given directory is `dir/name`).
    pub path: String,
    /// `jsonl`, `text` or `parquet`.
    pub format: String,
    /// File size in bytes.
    pub bytes: u64,
    /// xxh3-128 of the contents ([`crate::hash::xxh3_file`]).
    pub xxh3: String,
}

/// Expand the corpus arguments into the list of files, in order: a file stands for itself (it
/// must exist), a directory for the non-hidden files below it, recursively, sorted by name at
/// each level. Every file must have a known extension ([`CorpusFormat::from_path`]).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).at(input)?;
        if meta.is_dir() {
            let before = files.len();
            walk_dir(input, &mut files)?;
            if files.len() == before {
                return Err(Error::corpus(
                    input,
                    "directory",
                    "holds no corpus files (hidden files are ignored)",
                ));
            }
        } else {
            files.push(input.clone());
        }
    }
    for file in &files {
        CorpusFormat::from_path(file)?;
    }
    Ok(files)
}

/// Append the non-hidden files below `dir` to `out`, sorted by name at each level, descending
/// into subdirectories (links followed). A link back to a directory being walked is an error
/// naming it: following it would never end.
pub(crate) fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    walk_dir_below(dir, out, &mut Vec::new())
}

fn walk_dir_below(dir: &Path, out: &mut Vec<PathBuf>, ancestors: &mut Vec<PathBuf>) -> Result<()> {
    let real = std::fs::canonicalize(dir).at(dir)?;
    if let Some(first) = ancestors.iter().position(|a| *a == real) {
        return Err(Error::corpus(
            dir,
            "directory",
            format!(
                "is a link back to {} (a directory it is inside of), which would be read \
                 forever; remove the link or name the files",
                ancestors[first].display()
            ),
        ));
    }
    ancestors.push(real);
    let mut entries = std::fs::read_dir(dir)
        .at(dir)?
        .collect::<std::io::Result<Vec<_>>>()
        .at(dir)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).at(&path)?;
        if meta.is_dir() {
            walk_dir_below(&path, out, ancestors)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    ancestors.pop();
    Ok(())
}

/// Describe the corpus files for the manifest (directories expanded as in [`expand_inputs`]).
/// Hashes every file, so it reads the whole corpus once.
pub fn describe_files(files: &[PathBuf]) -> Result<Vec<CorpusFileInfo>> {
    expand_inputs(files)?
        .into_iter()
        .map(|path| {
            let format = CorpusFormat::from_path(&path)?;
            let bytes = std::fs::metadata(&path).at(&path)?.len();
            let xxh3 = crate::hash::xxh3_file(&path)?;
            Ok(CorpusFileInfo {
                path: path.to_string_lossy().into_owned(),
                format: format.as_str().to_string(),
                bytes,
                xxh3,
            })
        })
        .collect()
}

/// Load a `tokenizer.json`. A missing file is an [`Error::Io`] naming it, a file that does not
/// parse is an [`Error::Tokenizer`] naming it.
pub fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(path).at(path)?;
    text.parse::<tokenizers::Tokenizer>().map_err(|e| {
        let msg = format!("not a valid Hugging Face tokenizer.json: {e}");
        Error::tokenizer(path, msg, Some(e))
    })
}

/// End-of-sequence token names, most likely first.
const EOS_CANDIDATES: &[&str] = &[
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
];

/// A fallback guess of the EOS id from the tokenizer's vocabulary (added tokens included), for
/// when `config.json` does not give `eos_token_id`: the first of `<|endoftext|>`,
/// `<|end_of_text|>`, `</s>`, `<eos>`, `<|im_end|>`, `<|eot_id|>`, `<|end|>`, `<end_of_turn>`
/// that the tokenizer knows.
pub fn find_eos(tok: &tokenizers::Tokenizer) -> Option<u32> {
    EOS_CANDIDATES.iter().find_map(|name| tok.token_to_id(name))
}

#[cfg(test)]
mod tests;
