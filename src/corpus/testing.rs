//! Helpers for tests (unit tests of any module and integration tests in `tests/`): a small
//! tokenizer trained offline.

use tokenizers::Tokenizer;

/// The special token of [`train_test_tokenizer`], id 0; [`super::find_eos`] finds it.
pub use super::bpe::EOS as TEST_EOS;

/// [`super::bpe::train_bpe`]: a byte-level BPE tokenizer with `<|endoftext|>` at id 0.
pub fn train_test_tokenizer(texts: &[&str], vocab_size: usize) -> Tokenizer {
    super::bpe::train_bpe(texts, vocab_size)
}

/// 125 varied English-like sentences, enough to train [`train_test_tokenizer`] to a few
/// hundred tokens.
pub fn sample_texts() -> Vec<String> {
    let subjects = [
        "The teacher",
        "A student",
        "The model",
        "Every token",
        "Our corpus",
    ];
    let verbs = ["predicts", "stores", "reads", "packs", "distills"];
    let objects = [
        "the next word",
        "log-probabilities",
        "long documents",
        "sequences of ids",
        "Parquet shards",
    ];
    let mut out = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for (j, v) in verbs.iter().enumerate() {
            for (k, o) in objects.iter().enumerate() {
                out.push(format!(
                    "{s} {v} {o} ({}) quickly, {}!",
                    i * 25 + j * 5 + k,
                    o.len()
                ));
            }
        }
    }
    out
}

/// [`train_test_tokenizer`] on [`sample_texts`].
pub fn sample_tokenizer(vocab_size: usize) -> Tokenizer {
    let texts = sample_texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    train_test_tokenizer(&refs, vocab_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_has_the_asked_vocab_size_and_eos_at_id_0() {
        let texts = sample_texts();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for asked in [300usize, 400] {
            let tok = train_test_tokenizer(&refs, asked);
            let size = tok.get_vocab_size(true);
            assert!(
                size <= asked && size + 5 >= asked,
                "asked {asked}, got vocab of {size}"
            );
            assert_eq!(tok.token_to_id(TEST_EOS), Some(0));
            assert_eq!(crate::corpus::find_eos(&tok), Some(0));
        }
    }

    #[test]
    fn trained_tokenizer_encodes_and_decodes_text_losslessly() {
        let texts = sample_texts();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tok = train_test_tokenizer(&refs, 350);
        // Includes characters never seen in training: byte-level covers them.
        let text = "The model packs 12 Parquet shards, naïvely — 日本語 ✓";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert!(ids.len() > 5 && ids.len() < text.len(), "{} ids", ids.len());
        assert!(ids.iter().all(|&id| (id as usize) < 350));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        // Merges were learnt: a training sentence takes fewer tokens than bytes.
        let n = tok.encode(refs[7], false).unwrap().len();
        assert!(
            n * 2 < refs[7].len(),
            "{n} tokens for {} bytes",
            refs[7].len()
        );
    }

    #[test]
    fn trained_tokenizer_round_trips_through_json_and_load_tokenizer() {
        let texts = sample_texts();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tok = train_test_tokenizer(&refs, 320);
        let json = tok.to_string(false).unwrap();
        let back: Tokenizer = json.parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path, false).unwrap();
        let loaded = crate::corpus::load_tokenizer(&path).unwrap();
        for t in [&back, &loaded] {
            assert_eq!(t.get_vocab_size(true), tok.get_vocab_size(true));
            for text in &refs[..20] {
                assert_eq!(
                    t.encode(*text, false).unwrap().get_ids(),
                    tok.encode(*text, false).unwrap().get_ids()
                );
            }
        }
    }
}
