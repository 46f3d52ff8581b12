//! A `tokenizers` tokenizer rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Byte-level BPE files (`tokenizer.ggml.model = "gpt2"`: GPT-2, SmolLM, Qwen2/3, Llama 3) are
//! rebuilt: the vocabulary from `tokens`, the merges from `merges`, control and user-defined
//! tokens from `token_type` as added tokens, and the pre-tokenizer that `tokenizer.ggml.pre`
//! names, written the way the model's own `tokenizer.json` writes it (so ids agree, not just
//! llama.cpp's splits). SentencePiece files (`"llama"`) need their `tokenizer.json` given with
//! `--tokenizer`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::Meta;
use crate::error::{Error, Result};

/// The `tokenizer.ggml.pre` values rebuilt.
pub const SUPPORTED_PRE: &str = "gpt-2 (and default), smollm, qwen2, llama-bpe";

/// Qwen2's split (its tokenizer.json; llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split (its tokenizer.json; llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's token types.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const UNUSED: i64 = 5;

fn integer(v: &Value) -> Option<i64> {
    match *v {
        Value::I32(x) => Some(x as i64),
        Value::U32(x) => Some(x as i64),
        Value::I64(x) => Some(x),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I8(x) => Some(x as i64),
        Value::U8(x) => Some(x as i64),
        Value::I16(x) => Some(x as i64),
        Value::U16(x) => Some(x as i64),
        _ => None,
    }
}

fn strings<'a>(meta: &Meta, key: &str, values: &'a [Value]) -> Result<Vec<&'a str>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(Error::field(
                meta.path,
                format!("{key}[{i}]"),
                "expected a string",
            )),
        })
        .collect()
}

/// Build the tokenizer of a GGUF file from its metadata.
pub fn tokenizer_from_metadata(map: &HashMap<String, Value>, path: &Path) -> Result<Tokenizer> {
    let meta = Meta { path, map };
    let model = meta.opt_string("tokenizer.ggml.model")?.ok_or_else(|| {
        Error::field(
            path,
            "tokenizer.ggml.model",
            "missing from the GGUF metadata, so the file has no tokenizer; give the model's \
             tokenizer.json with --tokenizer",
        )
    })?;
    if model != "gpt2" {
        return Err(Error::field(
            path,
            "tokenizer.ggml.model",
            format!(
                "`{model}` is not rebuilt from GGUF metadata (only byte-level BPE, `gpt2`); \
                 give the model's tokenizer.json with --tokenizer"
            ),
        ));
    }
    let tokens = strings(
        &meta,
        "tokenizer.ggml.tokens",
        meta.array("tokenizer.ggml.tokens")?,
    )?;
    let merges = strings(
        &meta,
        "tokenizer.ggml.merges",
        meta.array("tokenizer.ggml.merges")?,
    )?;
    let types: Vec<i64> = match meta.opt_array("tokenizer.ggml.token_type")? {
        None => vec![1; tokens.len()],
        Some(a) => {
            if a.len() != tokens.len() {
                return Err(Error::field(
                    path,
                    "tokenizer.ggml.token_type",
                    format!(
                        "has {} entries, tokenizer.ggml.tokens has {}",
                        a.len(),
                        tokens.len()
                    ),
                ));
            }
            a.iter().map(|v| integer(v).unwrap_or(1)).collect()
        }
    };
    let pre = meta
        .opt_string("tokenizer.ggml.pre")?
        .unwrap_or_else(|| "default".into());

    let vocab: Vocab = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t != UNUSED)
        .map(|(id, (tok, _))| (tok.to_string(), id as u32))
        .collect();
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    Error::field(
                        path,
                        format!("tokenizer.ggml.merges[{i}]"),
                        format!("`{m}` is not two tokens separated by a space"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bad = |e: String| Error::field(path, "tokenizer.ggml.merges", e);
    let builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre == "llama-bpe");
    let bpe = builder.build().map_err(|e| bad(e.to_string()))?;

    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Internal(format!("split regex: {e}")))?
        .into())
    };
    let mut tokenizer = Tokenizer::new(bpe);
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "default" | "gpt-2" | "gpt2" => ByteLevel::new(false, true, true).into(),
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "qwen2" => {
            tokenizer
                .with_normalizer(Some(NFC))
                .map_err(|e| Error::Internal(format!("NFC normalizer: {e}")))?;
            Sequence::new(vec![
                split(QWEN2_SPLIT)?,
                ByteLevel::new(false, false, false).into(),
            ])
            .into()
        }
        "llama-bpe" => Sequence::new(vec![
            split(LLAMA3_SPLIT)?,
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        other => {
            return Err(Error::field(
                path,
                "tokenizer.ggml.pre",
                format!(
                    "`{other}` is not rebuilt (supported: {SUPPORTED_PRE}); give the model's \
                     tokenizer.json with --tokenizer"
                ),
            ))
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    // Control tokens become special added tokens, user-defined ones plain added tokens.
    let (mut special, mut user) = (Vec::new(), Vec::new());
    for (tok, &t) in tokens.iter().zip(&types) {
        match t {
            CONTROL => special.push(AddedToken::from(tok.to_string(), true)),
            USER_DEFINED => user.push(AddedToken::from(tok.to_string(), false)),
            _ => {}
        }
    }
    let added = |e: tokenizers::Error| Error::field(path, "tokenizer.ggml.tokens", e.to_string());
    tokenizer.add_special_tokens(special).map_err(added)?;
    tokenizer.add_tokens(user).map_err(added)?;
    Ok(tokenizer)
}

/// The token strings of `tokenizer.ggml.tokens`, by id.
pub fn metadata_tokens(map: &HashMap<String, Value>, path: &Path) -> Result<Vec<String>> {
    let meta = Meta { path, map };
    let tokens = meta.array("tokenizer.ggml.tokens")?;
    Ok(strings(&meta, "tokenizer.ggml.tokens", tokens)?
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// Check that a `tokenizer.json` given with `--tokenizer` and the GGUF metadata's tokens are
/// the same vocabulary: every id the file knows is the same token string in both.
pub fn check_same_vocabulary(
    given: &Tokenizer,
    given_path: &Path,
    tokens: &[String],
    gguf_path: &Path,
) -> Result<()> {
    let n = given.get_vocab_size(true);
    if n > tokens.len() {
        return Err(Error::tokenizer(
            given_path,
            format!(
                "has {n} tokens, the GGUF metadata of {} has {}: they are different vocabularies",
                gguf_path.display(),
                tokens.len()
            ),
            None,
        ));
    }
    for (id, b) in tokens.iter().enumerate().take(n) {
        let a = given.id_to_token(id as u32);
        if a.as_deref() != Some(b.as_str()) {
            return Err(Error::tokenizer(
                given_path,
                format!(
                    "token {id} is {a:?} here but {b:?} in the GGUF metadata of {}: they are \
                     different vocabularies",
                    gguf_path.display()
                ),
                None,
            ));
        }
    }
    Ok(())
}
