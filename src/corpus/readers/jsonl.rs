//! The JSONL source: one JSON object per line, the document taken from one field (see
//! [`super::jsonl_field`] for how the line is parsed). Turns what the line holds into a document,
//! a skip, or an error naming the line.

use std::path::Path;

use super::jsonl_field::{parse_jsonl_line, FieldValue, LineValue};
use super::lines::Lines;
use super::{is_empty, Next, Place, Skipped};
use crate::corpus::Document;
use crate::error::{Error, Result};

/// A JSONL file read line by line.
pub(super) struct JsonlSource {
    lines: Lines,
}

impl JsonlSource {
    pub(super) fn open(path: &Path) -> Result<Self> {
        Ok(JsonlSource {
            lines: Lines::open(path)?,
        })
    }

    pub(super) fn bytes_read(&self) -> u64 {
        self.lines.bytes_read()
    }

    pub(super) fn file_len(&self) -> u64 {
        self.lines.file_len()
    }

    pub(super) fn next(&mut self, path: &Path, field: &str, skipped: &mut Skipped) -> Next {
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

/// serde_json's message without its ` at line 1 column N` (the line is ours), with the column.
fn json_error_without_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => &msg,
    };
    format!("{msg} at column {}", e.column())
}
