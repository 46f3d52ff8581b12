//! The whole corpus stage: documents → token ids → packed sequences.

use std::sync::Arc;

use tokenizers::Tokenizer;

use super::chunk::{ChunkError, ChunkedText, Step, MAX_WINDOW_BYTES};
use super::readers::DocLocation;
use super::{Document, DocumentReader, PackedSequence, Packer};
use crate::error::{Error, Result};

/// At most this many documents are tokenized in one parallel batch...
const BATCH_DOCS: usize = 256;
/// ... or this many bytes of text.
const BATCH_BYTES: usize = 4 << 20;
/// A text document longer than this is tokenized a window at a time ([`ChunkedText`]), its ids
/// packed as they come: memory does not grow with a document's length.
const CHUNKED_TEXT_BYTES: usize = 256 << 10;
/// Files named in the "no documents" error before "and N more".
const FILES_NAMED: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Documents are left to read.
    Reading,
    /// The reader is exhausted; the padded last sequence (or the empty-corpus error) is next.
    Finishing,
    Done,
}

/// Packed sequences of a corpus: documents from a [`DocumentReader`], text tokenized in batches
/// (up to 256 documents or 4 MB of text, encoded in parallel without special tokens), token ids
/// given in the corpus used as they are, each document followed by EOS, packed by a
/// [`Packer`]. Documents that tokenize to nothing are skipped.
///
/// Every token id must be below `vocab_size`, else the stream yields an error naming the
/// document's file and line or row. If the corpus yields no token at all, the stream yields one
/// error naming the files. After an error the stream ends.
///
/// Truncation and padding configured in `tokenizer.json` are ignored (a clone of the tokenizer
/// without them is used): documents are packed, never cut. So is the post-processor, which adds
/// no id without special tokens (it only moves offsets).
///
/// A long text document (over 256 KiB, or a text file read in parts) is tokenized a window at a
/// time with the ids of tokenizing it whole (see `chunk.rs`) and packed as it goes, so memory
/// stays bounded whatever a document's length.
pub struct SequenceStream {
    reader: DocumentReader,
    tokenizer: Arc<Tokenizer>,
    packer: Packer,
    vocab_size: usize,
    state: State,
    tokens: u64,
    documents: u64,
    /// The long text document being tokenized a window at a time.
    long: Option<LongDocument>,
}

/// A text document tokenized a window at a time.
struct LongDocument {
    text: ChunkedText,
    loc: Option<DocLocation>,
    tokens: u64,
}

/// A document of the batch being assembled, in corpus order.
enum Pending {
    /// The next text of the batch, with its location.
    Text(Option<DocLocation>),
    Tokens(Vec<u32>),
}

impl SequenceStream {
    /// # Panics
    /// If `seq_len` is 0.
    pub fn new(
        reader: DocumentReader,
        tokenizer: Arc<Tokenizer>,
        seq_len: usize,
        eos_id: u32,
        pad_id: u32,
        vocab_size: usize,
    ) -> Self {
        let tokenizer = if tokenizer.get_truncation().is_some()
            || tokenizer.get_padding().is_some()
            || tokenizer.get_post_processor().is_some()
        {
            let mut plain = (*tokenizer).clone();
            plain.with_padding(None);
            // Removing truncation cannot fail.
            let _ = plain.with_truncation(None);
            plain.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
            Arc::new(plain)
        } else {
            tokenizer
        };
        SequenceStream {
            reader,
            tokenizer,
            packer: Packer::new(seq_len, eos_id, pad_id),
            vocab_size,
            state: State::Reading,
            tokens: 0,
            documents: 0,
            long: None,
        }
    }

    /// Approximate input bytes consumed so far (see [`DocumentReader::bytes_read`]); reading
    /// runs at most one batch ahead of the sequences yielded.
    pub fn bytes_read(&self) -> u64 {
        self.reader.bytes_read()
    }

    /// Documents packed so far.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// Document tokens packed so far (without the EOS after each document or padding).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The reader, e.g. for its skip counters.
    pub fn reader(&self) -> &DocumentReader {
        &self.reader
    }

    /// Read, tokenize and pack the next batch of documents (or the next window of a long one).
    fn fill(&mut self) -> Result<()> {
        if self.long.is_some() {
            return self.fill_long();
        }
        let mut texts = Vec::new();
        let mut pending = Vec::new();
        let mut bytes = 0;
        while pending.len() < BATCH_DOCS && bytes < BATCH_BYTES {
            match self.reader.next() {
                None => {
                    self.state = State::Finishing;
                    break;
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(Document::Text(text))) if text.len() > CHUNKED_TEXT_BYTES => {
                    self.start_long(&text, true);
                    break;
                }
                Some(Ok(Document::TextPart(text))) => {
                    self.start_long(&text, false);
                    break;
                }
                Some(Ok(Document::Text(text))) => {
                    bytes += text.len();
                    texts.push(text);
                    pending.push(Pending::Text(self.reader.last_location()));
                }
                Some(Ok(Document::Tokens(ids))) => {
                    if let Some((index, id)) = first_out_of_vocab(&ids, self.vocab_size) {
                        return Err(self.reader.error_at(
                            self.reader.last_location(),
                            format!(
                                "token id {id} at index {index} is not below the model's \
                                 vocab_size {}",
                                self.vocab_size
                            ),
                        ));
                    }
                    bytes += 4 * ids.len();
                    pending.push(Pending::Tokens(ids));
                }
            }
        }

        let encodings = if texts.is_empty() {
            Vec::new()
        } else {
            let first = pending.iter().find_map(|p| match p {
                Pending::Text(loc) => Some(*loc),
                Pending::Tokens(_) => None,
            });
            self.tokenizer
                .encode_batch_fast(texts, false)
                .map_err(|e| {
                    self.reader.error_at(
                        first.flatten(),
                        format!("tokenizing the batch of documents starting here failed: {e}"),
                    )
                })?
        };

        let mut encodings = encodings.into_iter();
        for doc in pending {
            match doc {
                Pending::Text(loc) => {
                    let encoding = encodings.next().expect("one encoding per text");
                    let ids = encoding.get_ids();
                    if let Some((_, id)) = first_out_of_vocab(ids, self.vocab_size) {
                        return Err(self.reader.error_at(
                            loc,
                            format!(
                                "the tokenizer produced token id {id}, which is not below the \
                                 model's vocab_size {}; tokenizer.json does not match the model",
                                self.vocab_size
                            ),
                        ));
                    }
                    self.push(ids);
                }
                Pending::Tokens(ids) => self.push(&ids),
            }
        }
        Ok(())
    }

    /// Begin a long document (after the batch before it): its first text, and whether that is
    /// all of it.
    fn start_long(&mut self, text: &str, whole: bool) {
        let mut chunked = ChunkedText::new();
        chunked.push(text);
        if whole {
            chunked.finish();
        }
        self.long = Some(LongDocument {
            text: chunked,
            loc: self.reader.last_location(),
            tokens: 0,
        });
    }

    /// Tokenize and pack the next window of the long document.
    fn fill_long(&mut self) -> Result<()> {
        let Some(doc) = self.long.as_mut() else {
            return Ok(());
        };
        loop {
            let (ids, done) = match doc.text.step(&self.tokenizer) {
                Ok(Step::NeedText) => {
                    match self.reader.next() {
                        Some(Ok(Document::TextPart(t))) => doc.text.push(&t),
                        Some(Ok(Document::Text(t))) => {
                            doc.text.push(&t);
                            doc.text.finish();
                        }
                        Some(Ok(Document::Tokens(_))) | None => {
                            return Err(Error::Internal(
                                "a text document in parts ended without its last part".into(),
                            ))
                        }
                        Some(Err(e)) => return Err(e),
                    }
                    continue;
                }
                Ok(Step::Ids(ids)) => (ids, false),
                Ok(Step::Done(ids)) => (ids, true),
                Err(ChunkError::Tokenizer(e)) => {
                    return Err(self
                        .reader
                        .error_at(doc.loc, format!("tokenizing this document failed: {e}")))
                }
                Err(ChunkError::NoBoundary { at_byte }) => {
                    return Err(self.reader.error_at(
                        doc.loc,
                        format!(
                            "from byte {at_byte} of the document, {} MiB of text hold no word \
                             boundary of the tokenizer (it has no pre-tokenizer, or this is one \
                             enormous word), and tokenizing that much at once would take \
                             gigabytes; split the document (e.g. --text-split blank-line)",
                            MAX_WINDOW_BYTES >> 20
                        ),
                    ))
                }
            };
            if let Some((_, id)) = first_out_of_vocab(&ids, self.vocab_size) {
                return Err(self.reader.error_at(
                    doc.loc,
                    format!(
                        "the tokenizer produced token id {id}, which is not below the model's \
                         vocab_size {}; tokenizer.json does not match the model",
                        self.vocab_size
                    ),
                ));
            }
            self.packer.push_tokens(&ids);
            doc.tokens += ids.len() as u64;
            self.tokens += ids.len() as u64;
            if done {
                if doc.tokens > 0 {
                    self.packer.end_document();
                    self.documents += 1;
                }
                self.long = None;
            }
            return Ok(());
        }
    }

    fn push(&mut self, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        self.packer.push_document(ids);
        self.tokens += ids.len() as u64;
        self.documents += 1;
    }

    fn empty_corpus_error(&self) -> Error {
        let files = self.reader.files();
        let mut named: Vec<String> = files
            .iter()
            .take(FILES_NAMED)
            .map(|f| f.display().to_string())
            .collect();
        if files.len() > FILES_NAMED {
            named.push(format!("and {} more", files.len() - FILES_NAMED));
        }
        if named.is_empty() {
            named.push("no files".to_string());
        }
        Error::EmptyCorpus {
            files: named.join(", "),
            detail: format!(
                "no document yielded a token ({} null and {} empty values skipped); check the \
                 files and --text-field",
                self.reader.skipped_nulls(),
                self.reader.skipped_empty()
            ),
        }
    }
}

fn first_out_of_vocab(ids: &[u32], vocab_size: usize) -> Option<(usize, u32)> {
    ids.iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab_size)
        .map(|(i, &id)| (i, id))
}

impl Iterator for SequenceStream {
    type Item = Result<PackedSequence>;

    fn next(&mut self) -> Option<Result<PackedSequence>> {
        loop {
            if self.state == State::Done {
                return None;
            }
            if let Some(seq) = self.packer.pop() {
                return Some(Ok(seq));
            }
            match self.state {
                State::Done => return None,
                State::Finishing => {
                    self.state = State::Done;
                    if self.tokens == 0 {
                        return Some(Err(self.empty_corpus_error()));
                    }
                    return self.packer.finish().map(Ok);
                }
                State::Reading => {
                    if let Err(e) = self.fill() {
                        self.state = State::Done;
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}
