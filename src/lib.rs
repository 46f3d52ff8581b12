//! taidcache: an offline teacher-logit cache for knowledge distillation of language models.
//!
//! The crate is organized by pipeline stage; lower layers never import higher ones:
//!
//! - [`cache`]: the on-disk format: Arrow schema, manifest, atomic shard writer, memory-mapped reader.
//! - [`inspect`]: summaries and integrity checks of a cache.

pub mod cache;
pub mod error;
pub mod hash;
pub mod inspect;

pub use error::{Error, Result};
