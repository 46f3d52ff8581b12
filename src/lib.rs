//! taidcache: an offline teacher-logit cache for knowledge distillation of language models.
//!
//! The crate is organized by pipeline stage; lower layers never import higher ones:
//!
//! - [`corpus`]: read documents (JSONL, text, Parquet, pre-tokenized), tokenize, pack into sequences.
//! - [`model`]: the decoder-only family (Llama, Mistral, Qwen2, Qwen3, Phi-3) loaded from
//!   Hugging Face directories.
//! - [`cache`]: the on-disk format: Arrow schema, manifest, atomic shard writer, memory-mapped reader.
//! - [`precompute`]: corpus → teacher → top-k → cache, pipelined.
//! - [`distill`]: cache → student with sparse TAID (loader, targets, objectives, schedules, AdamW).
//! - [`plot`]: loss, t and eval KL curves of distill runs as SVG/PNG.
//! - [`demo`]: the end-to-end demo on a generated corpus.
//! - [`inspect`]: summaries and integrity checks of a cache.

pub mod cache;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod demo;
pub mod distill;
pub mod error;
pub mod hash;
pub mod inspect;
pub mod model;
pub mod plot;
pub mod precompute;
#[doc(hidden)]
pub mod testing;

pub use error::{Error, Result};
