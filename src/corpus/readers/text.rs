//! The text sources: a whole `.txt` file as one document ([`TextSplit::File`]), or its blocks
//! of lines separated by blank lines ([`TextSplit::BlankLine`]).
//!
//! [`TextSplit::File`]: crate::corpus::TextSplit::File
//! [`TextSplit::BlankLine`]: crate::corpus::TextSplit::BlankLine

use std::path::{Path, PathBuf};

use super::lines::{Lines, BOM};
use super::{Next, Place, Skipped};
use crate::corpus::Document;
use crate::error::{Error, IoContext, Result};

/// A text file read as one document.
pub(super) struct TextFileSource {
    path: PathBuf,
    file_len: u64,
    bytes: u64,
    done: bool,
}

impl TextFileSource {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file_len = std::fs::metadata(path).at(path)?.len();
        Ok(TextFileSource {
            path: path.to_path_buf(),
            file_len,
            bytes: 0,
            done: false,
        })
    }

    pub(super) fn bytes_read(&self) -> u64 {
        self.bytes
    }

    pub(super) fn file_len(&self) -> u64 {
        self.file_len
    }

    pub(super) fn next(&mut self, path: &Path, skipped: &mut Skipped) -> Next {
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
pub(super) struct TextBlockSource {
    lines: Lines,
}

impl TextBlockSource {
    pub(super) fn open(path: &Path) -> Result<Self> {
        Ok(TextBlockSource {
            lines: Lines::open(path)?,
        })
    }

    pub(super) fn bytes_read(&self) -> u64 {
        self.lines.bytes_read()
    }

    pub(super) fn file_len(&self) -> u64 {
        self.lines.file_len()
    }

    pub(super) fn next(&mut self, path: &Path) -> Next {
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
