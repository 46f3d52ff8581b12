//! Train a byte-level BPE tokenizer offline (the demo's tokenizer, and the tests').

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The special token of [`train_bpe`], id 0; [`super::find_eos`] finds it.
pub const EOS: &str = "<|endoftext|>";

/// Train a byte-level BPE tokenizer (GPT-2 style: ByteLevel pre-tokenizer without prefix space,
/// ByteLevel decoder) on `texts`, entirely offline. Id 0 is the special token `<|endoftext|>`,
/// ids 1..=256 the byte alphabet, the rest merges: the vocabulary has `vocab_size` entries if
/// the texts hold enough distinct pairs to merge (`vocab_size` must exceed 257).
///
/// # Panics
/// If training fails (it does not on UTF-8 input).
pub fn train_bpe(texts: &[&str], vocab_size: usize) -> Tokenizer {
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOS, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tokenizer
        .train(&mut trainer, texts.iter().copied())
        .expect("BPE training on UTF-8 text");
    tokenizer
}
