//! Loading `tokenizer.json` and guessing the EOS token.

use crate::corpus::testing::sample_tokenizer;

use super::*;

#[test]
fn load_tokenizer_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing/tokenizer.json");
    let err = load_tokenizer(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing/tokenizer.json"));
    let corrupt = write(
        dir.path(),
        "tokenizer.json",
        "{\"version\": \"1.0\", \"model\": 3}",
    );
    let err = load_tokenizer(&corrupt).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    assert!(
        err.to_string().contains("tokenizer.json: not a valid"),
        "{err}"
    );
}

#[test]
fn find_eos_prefers_endoftext_and_returns_none_without_candidates() {
    let tok = sample_tokenizer(300);
    assert_eq!(find_eos(&tok), Some(0));
    let mut tok2 = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    assert_eq!(find_eos(&tok2), None);
    tok2.add_special_tokens([tokenizers::AddedToken::from("</s>", true)])
        .unwrap();
    assert_eq!(find_eos(&tok2), Some(0));
}
