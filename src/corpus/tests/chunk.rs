//! Long documents tokenized a window at a time give the ids of tokenizing them whole, and come
//! through the reader in parts.

use std::sync::Arc;

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

use crate::corpus::chunk::{ChunkError, ChunkedText, Step};
use crate::corpus::testing::sample_tokenizer;

use super::*;

/// Texts a window cut could break: long whitespace runs (spaces, tabs, newlines, CRLF), unicode
/// (accents, CJK, emoji, a combining mark), digits, punctuation, contractions, the special token.
fn hard_texts() -> Vec<String> {
    let pieces = [
        "The teacher predicts the next word",
        " ",
        "   ",
        "\t\t",
        "\n",
        "\n\n\n",
        "\r\n",
        "héllo wörld",
        "日本語のテキスト",
        "🦀🦀 crab",
        "e\u{301}te\u{301}",
        "1234567890",
        "!!!???",
        "don't it's we'll",
        "<|endoftext|>",
        "packs long documents",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..3)
        .map(|t| {
            let mut s = String::new();
            while s.len() < 2500 {
                let p = pieces[next(pieces.len())];
                s.push_str(p);
                if next(4) == 0 {
                    s.push_str(&" ".repeat(next(300)));
                }
                if t == 2 && next(5) == 0 {
                    s.push_str(&"\n".repeat(next(40)));
                }
            }
            s
        })
        .collect()
}

/// `text` fed in pieces of `piece` bytes, tokenized in windows of `window` (cut `margin` before
/// their end, growing up to `max`).
fn chunked(
    tok: &Tokenizer,
    text: &str,
    (window, margin, max): (usize, usize, usize),
    piece: usize,
) -> Result<Vec<u32>, ChunkError> {
    let mut c = ChunkedText::with_sizes(window, margin, max);
    let mut rest = text;
    let mut out = Vec::new();
    loop {
        match c.step(tok)? {
            Step::NeedText if rest.is_empty() => c.finish(),
            Step::NeedText => {
                let mut at = piece.min(rest.len());
                while !rest.is_char_boundary(at) {
                    at += 1;
                }
                c.push(&rest[..at]);
                rest = &rest[at..];
            }
            Step::Ids(ids) => out.extend(ids),
            Step::Done(ids) => {
                out.extend(ids);
                return Ok(out);
            }
        }
    }
}

fn tokenizers() -> Vec<(&'static str, Tokenizer)> {
    let fixture = sample_tokenizer(400);
    let mut prefix = fixture.clone();
    prefix.with_pre_tokenizer(Some(ByteLevel::new(true, true, true)));
    vec![
        ("byte-level (the fixture)", fixture),
        ("byte-level with a prefix space", prefix),
    ]
}

#[test]
fn chunked_tokenization_equals_whole_text_tokenization_wherever_the_cuts_land() {
    for (name, tok) in tokenizers() {
        for (t, text) in hard_texts().iter().enumerate() {
            let whole = tok.encode_fast(text.as_str(), false).unwrap();
            let whole = whole.get_ids();
            assert!(whole.len() > 300, "{name}: text {t} too short");
            // Every window from 40 to 140 bytes: cuts land at every place of the text. The
            // margin must exceed the longest special token (13 bytes): a window's end inside
            // one splits it into words.
            for window in 40..=140 {
                let margin = 16 + window % 13;
                let piece = [7, 61, 500][window % 3];
                let ids = chunked(&tok, text, (window, margin, 1 << 16), piece).unwrap();
                if ids != whole {
                    let at = ids.iter().zip(whole).take_while(|(a, b)| a == b).count();
                    panic!(
                        "{name}, text {t}, window {window}, margin {margin}, pieces of {piece}: \
                         ids differ from whole-text tokenization at token {at} of {} \
                         ({} chunked)",
                        whole.len(),
                        ids.len()
                    );
                }
            }
        }
    }
}

#[test]
fn a_tokenizer_without_word_boundaries_grows_its_window_then_refuses() {
    let mut tok = sample_tokenizer(400);
    // No regex: the whole text is one word.
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
    let text = "a few words without any split ".repeat(20);
    let whole = tok.encode_fast(text.as_str(), false).unwrap();
    let ids = chunked(&tok, &text, (32, 8, 1 << 12), 50).unwrap();
    assert_eq!(ids, whole.get_ids());
    let err = chunked(&tok, &text, (32, 8, 256), 50).unwrap_err();
    assert!(
        matches!(err, ChunkError::NoBoundary { at_byte: 0 }),
        "{err:?}"
    );
}

#[test]
fn a_long_text_file_streams_in_parts_to_the_ids_of_the_whole_file() {
    use crate::corpus::readers::TEXT_PART_BYTES;
    let dir = tempfile::tempdir().unwrap();
    // Just over two parts, a 3-byte character across the first part's end, long runs.
    let mut text = "word ".repeat((TEXT_PART_BYTES - 1) / 5);
    text.push_str(&" ".repeat(TEXT_PART_BYTES - 1 - text.len()));
    text.push_str("日本語 ");
    while text.len() < 2 * TEXT_PART_BYTES + 1000 {
        text.push_str("The model packs long documents,\n\n   héllo 🦀 1234!\t");
    }
    let path = write(dir.path(), "book.txt", &text);
    let tok = Arc::new(sample_tokenizer(400));
    let mut reader = DocumentReader::new(std::slice::from_ref(&path), &opts()).unwrap();
    let parts: Vec<Document> = reader.by_ref().map(|d| d.unwrap()).collect();
    assert_eq!(parts.len(), 3);
    assert!(matches!(&parts[0], Document::TextPart(t) if t.len() == TEXT_PART_BYTES - 1));
    assert!(matches!(&parts[2], Document::Text(_)));
    assert_eq!(reader.documents(), 1);
    let joined: String = parts
        .into_iter()
        .map(|d| match d {
            Document::Text(t) | Document::TextPart(t) => t,
            Document::Tokens(_) => unreachable!(),
        })
        .collect();
    assert!(joined == text, "the parts join to the file");

    let seq_len = 64;
    let stream = SequenceStream::new(
        DocumentReader::new(std::slice::from_ref(&path), &opts()).unwrap(),
        tok.clone(),
        seq_len,
        0,
        1,
        400,
    );
    let seqs: Vec<PackedSequence> = stream.map(|s| s.unwrap()).collect();
    let mut got = Vec::new();
    for s in &seqs {
        let real = s.loss_mask.iter().filter(|&&m| m).count();
        got.extend_from_slice(&s.input_ids[..real]);
    }
    let mut want = tok
        .encode_fast(text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    want.push(0);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "streamed ids differ from whole-file ids");
}

#[test]
fn invalid_utf8_past_the_first_part_names_its_line() {
    use crate::corpus::readers::TEXT_PART_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = "line\n".repeat(TEXT_PART_BYTES / 5 + 10).into_bytes();
    bytes.extend_from_slice(b"bad \xff byte\n");
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let path = write(dir.path(), "bad.txt", &bytes);
    let err = first_error(&[path], &opts());
    assert!(
        err.contains("bad.txt") && err.contains(&format!("line {lines}")) && err.contains("UTF-8"),
        "{err}"
    );
}
