//! The text sources: a whole `.txt` file as one document ([`TextSplit::File`], read in parts so
//! that a book does not sit in memory), or its blocks of lines separated by blank lines
//! ([`TextSplit::BlankLine`]).
//!
//! [`TextSplit::File`]: crate::corpus::TextSplit::File
//! [`TextSplit::BlankLine`]: crate::corpus::TextSplit::BlankLine

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::lines::{Lines, BOM};
use super::{Next, Place, Skipped};
use crate::corpus::Document;
use crate::error::{Error, IoContext, Result};

/// Bytes of a text file read at a time: a file longer than this is one document yielded in
/// parts ([`Document::TextPart`]), so that reading never holds more than a part.
pub(crate) const TEXT_PART_BYTES: usize = 1 << 20;

/// A text file read as one document, in parts of [`TEXT_PART_BYTES`].
pub(super) struct TextFileSource {
    reader: BufReader<File>,
    file_len: u64,
    bytes: u64,
    /// The bytes of a character a part's end cut, carried to the next part.
    carry: Vec<u8>,
    /// Lines before the current part, for the line of a UTF-8 error.
    lines: u64,
    started: bool,
    done: bool,
}

impl TextFileSource {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let file_len = file.metadata().at(path)?.len();
        Ok(TextFileSource {
            reader: BufReader::new(file),
            file_len,
            bytes: 0,
            carry: Vec::new(),
            lines: 0,
            started: false,
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
        let mut part = std::mem::take(&mut self.carry);
        let wanted = TEXT_PART_BYTES.saturating_sub(part.len()) as u64;
        let read = (&mut self.reader).take(wanted).read_to_end(&mut part);
        let read = read.and_then(|n| Ok((n, self.reader.fill_buf()?.is_empty())));
        let (n, at_end) = match read.at(path) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        self.bytes += n as u64;
        if !self.started {
            self.started = true;
            if part.starts_with(BOM) {
                part.drain(..BOM.len());
            }
        }
        let valid = match std::str::from_utf8(&part) {
            Ok(_) => part.len(),
            // A character cut by the part's end: finished by the next part.
            Err(e) if e.error_len().is_none() && !at_end => e.valid_up_to(),
            Err(e) => {
                let line = self.lines
                    + 1
                    + part[..e.valid_up_to()]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count() as u64;
                return Some(Err(Error::corpus(
                    path,
                    format!("line {line}"),
                    "not valid UTF-8 text",
                )));
            }
        };
        self.carry = part.split_off(valid);
        self.lines += part.iter().filter(|&&b| b == b'\n').count() as u64;
        let text = String::from_utf8(part).expect("validated above");
        if at_end {
            self.done = true;
            if text.is_empty() {
                // Only an empty file ends on an empty part: a part before it would have seen
                // the end.
                skipped.empty += 1;
                return None;
            }
            return Some(Ok((Document::Text(text), Place::WholeFile)));
        }
        Some(Ok((Document::TextPart(text), Place::WholeFile)))
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
