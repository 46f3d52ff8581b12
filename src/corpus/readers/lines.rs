//! A corpus file read line by line into a reused buffer, for the line-based sources (JSONL and
//! blank-line-separated text). Knows nothing of documents.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Read buffer of JSONL and text files.
const READ_BUFFER: usize = 1 << 16;
/// The UTF-8 byte order mark, dropped at the start of a file.
pub(super) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A buffered file read line by line into a reused buffer.
pub(super) struct Lines {
    reader: BufReader<File>,
    buf: Vec<u8>,
    /// 1-based number of the line in `buf`.
    line: u64,
    bytes: u64,
    file_len: u64,
}

impl Lines {
    pub(super) fn open(path: &Path) -> Result<Self> {
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
    pub(super) fn next_line(&mut self, path: &Path) -> Option<Result<(u64, &[u8])>> {
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

    /// Bytes consumed so far, line terminators included.
    pub(super) fn bytes_read(&self) -> u64 {
        self.bytes
    }

    pub(super) fn file_len(&self) -> u64 {
        self.file_len
    }
}
