//! taidcache: an offline teacher-logit cache for knowledge distillation of language models.
//!
//! The crate is organized by pipeline stage; lower layers never import higher ones:
//!
//! - [`corpus`]: read documents (JSONL, text, Parquet, pre-tokenized), tokenize, pack into sequences.
//! - `model`: the decoder-only family (Llama, Mistral, Qwen2, Qwen3, Phi-3) loaded from
//!   Hugging Face directories.
//! - `cache`: the on-disk format: Arrow schema, manifest, atomic shard writer, memory-mapped reader.
//! - `precompute`: corpus → teacher → top-k → cache, pipelined.
//! - `inspect`: summaries and integrity checks of a cache.

pub mod corpus;
pub mod error;
pub mod hash;

pub use error::{Error, Result};
