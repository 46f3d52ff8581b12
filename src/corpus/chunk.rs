//! Tokenizing one long text document a window at a time, with the ids of tokenizing it whole.
//!
//! Tokenizing a text at once costs the tokenizer about 160 bytes of working memory per byte of
//! text (normalization alignments, splits, offsets): one 5 MB document peaked at 818 MB. A
//! [`ChunkedText`] tokenizes a window of [`WINDOW_BYTES`] at a time instead and keeps the ids of
//! the words that start at least [`MARGIN_BYTES`] before the window's end. The next window starts
//! at the start of the last kept word's predecessor (context, whose ids are dropped), so that
//! the first kept word is tokenized with the same text before it.
//!
//! Why the ids are those of the whole text: the model (BPE, WordPiece, Unigram) tokenizes each
//! word (pre-token) on its own, so the ids only depend on where the words are. The tokenizer's
//! own pipeline (added tokens, normalizer, pre-tokenizer) says where they are in each window,
//! and a word boundary far enough before the window's end does not depend on the text past it
//! (the pre-tokenizers split with regexes whose matches look a character or two ahead).
//! What happens at the start of a text (a prefix space, a first `▁`) only touches the context
//! word. `src/corpus/tests/chunk.rs` checks the ids against whole-text tokenization with
//! windows so small that a cut lands at every place of texts with long whitespace runs,
//! newlines, unicode and special tokens.
//!
//! A tokenizer without a pre-tokenizer sees a text as one word: there is no boundary to cut at.
//! The window then grows, up to [`MAX_WINDOW_BYTES`]; a word longer than that is an error (its
//! tokenization alone would take gigabytes).

use tokenizers::Tokenizer;

/// Bytes of text tokenized at a time.
pub(crate) const WINDOW_BYTES: usize = 64 << 10;
/// A word starting less than this before a window's end is left to the next window. It must
/// exceed the longest added token (a window's end inside one splits it into ordinary words)
/// and the look-ahead of the pre-tokenizer's regex (a character or two).
pub(crate) const MARGIN_BYTES: usize = 4 << 10;
/// The largest window, when no word boundary turns up in a smaller one: about 1.3 GB of
/// tokenizer working memory.
pub(crate) const MAX_WINDOW_BYTES: usize = 8 << 20;

/// What [`ChunkedText::step`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The ids of the next words; more follow.
    Ids(Vec<u32>),
    /// The ids of the last words: the document is done.
    Done(Vec<u32>),
    /// More text is needed before a window can be tokenized ([`ChunkedText::push`], or
    /// [`ChunkedText::finish`] when there is none).
    NeedText,
}

/// Why a window could not be cut.
#[derive(Debug)]
pub(crate) enum ChunkError {
    /// The tokenizer failed.
    Tokenizer(tokenizers::Error),
    /// No word boundary in [`MAX_WINDOW_BYTES`] of text.
    NoBoundary { at_byte: u64 },
}

/// A text document tokenized a window at a time (see the module documentation).
pub(crate) struct ChunkedText {
    /// Context (`buf[start..start + ctx]`, already tokenized) and pending text after it.
    buf: String,
    start: usize,
    ctx: usize,
    /// Bytes of the document drained from `buf` before `start`, for messages.
    drained: u64,
    /// No more text will be pushed.
    complete: bool,
    window: usize,
    base_window: usize,
    margin: usize,
    max_window: usize,
}

impl ChunkedText {
    pub(crate) fn new() -> Self {
        Self::with_sizes(WINDOW_BYTES, MARGIN_BYTES, MAX_WINDOW_BYTES)
    }

    /// Windows of `window` bytes growing up to `max_window`, cut `margin` bytes before their end.
    pub(crate) fn with_sizes(window: usize, margin: usize, max_window: usize) -> Self {
        assert!(margin < window && window <= max_window, "chunk sizes");
        ChunkedText {
            buf: String::new(),
            start: 0,
            ctx: 0,
            drained: 0,
            complete: false,
            window,
            base_window: window,
            margin,
            max_window,
        }
    }

    /// Append the document's next text.
    pub(crate) fn push(&mut self, text: &str) {
        debug_assert!(!self.complete);
        // Drop what no window will read again, once it is most of the buffer.
        if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.drained += self.start as u64;
            self.start = 0;
        }
        self.buf.push_str(text);
    }

    /// No more text: the rest is the document's end.
    pub(crate) fn finish(&mut self) {
        self.complete = true;
    }

    /// Tokenize the next window: the ids of its words that are safe to keep.
    pub(crate) fn step(&mut self, tok: &Tokenizer) -> Result<Step, ChunkError> {
        let rest = &self.buf[self.start..];
        let pending = rest.len() - self.ctx;
        let last = self.complete && self.ctx + pending <= self.window;
        if !last && pending < self.window && !self.complete {
            return Ok(Step::NeedText);
        }
        let end = if last {
            rest.len()
        } else {
            floor_char_boundary(rest, (self.ctx + self.window).min(rest.len()))
        };
        let text = &rest[..end];
        let enc = tok.encode(text, false).map_err(ChunkError::Tokenizer)?;
        let (ids, offsets, words) = (enc.get_ids(), enc.get_offsets(), enc.get_word_ids());
        // The context's tokens start before `ctx`.
        let first = offsets.partition_point(|o| o.0 < self.ctx);
        if last {
            let out = ids[first..].to_vec();
            self.buf = String::new();
            (self.start, self.ctx) = (0, 0);
            return Ok(Step::Done(out));
        }
        // The last word start past the context and at least `margin` before the window's end.
        let limit = end.saturating_sub(self.margin);
        let cut = (first.max(1)..ids.len()).rev().find(|&j| {
            words[j] != words[j - 1] && offsets[j].0 > self.ctx && offsets[j].0 <= limit
        });
        let Some(cut) = cut else {
            if self.window >= self.max_window {
                return Err(ChunkError::NoBoundary {
                    at_byte: self.drained + (self.start + self.ctx) as u64,
                });
            }
            self.window = (self.window * 2).min(self.max_window);
            return self.step(tok);
        };
        let out = ids[first..cut].to_vec();
        // Context of the next window: the word before the cut.
        let prev = words[cut - 1];
        let ctx_token = (0..cut)
            .rev()
            .take_while(|&i| words[i] == prev)
            .last()
            .unwrap_or(cut - 1);
        let ctx_start = offsets[ctx_token].0.min(offsets[cut].0);
        self.start += ctx_start;
        self.ctx = offsets[cut].0 - ctx_start;
        self.window = self.base_window;
        Ok(Step::Ids(out))
    }
}

/// The largest char boundary of `s` at or before `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
