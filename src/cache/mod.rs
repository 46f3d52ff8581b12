//! The cache format: what a teacher cache looks like on disk, and nothing else.
//!
//! Two handles are the ways into a cache:
//!
//! - [`Cache`] ([`open`](mod@open)) reads one: the manifest checked once, its encoding, its
//!   shards opened and checked against the manifest, its rows as units of work.
//! - [`CacheWriter`] ([`create`]) creates one for a teacher identity, or resumes it, for one
//!   worker: the directory layout, leftovers of a killed run, shards and manifest updates.
//!
//! Beneath them:
//!
//! - [`layout`]: file names inside a cache directory, and the atomic `NAME.tmp` → rename.
//! - [`manifest`]: the manifest, its identity check and atomic save.
//! - [`encoding`]: the value encodings (plain v1, steps v2, compact v3) behind one [`Codec`].
//! - [`schema`]: the Arrow schema of a shard and its JSON description (`schemas/v1/` … `v3/`).
//! - [`batch`]: [`ShardBatch`], flat reusable row buffers.
//! - [`writer`] / [`reader`]: one shard file, written atomically / memory-mapped by row group.
//! - [`validate`]: a shard file against its manifest entry, a position against the invariants.
//! - [`merge`]: worker manifests into one.
//! - [`lock`](mod@lock): who may write a cache at the same time (per worker, merges).
//!
//! This layer knows nothing of models, tokenizers or corpora: callers hand it hashes and numbers.

pub mod batch;
pub mod create;
pub mod encoding;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod merge;
pub mod open;
pub mod reader;
pub mod schema;
pub mod validate;
pub mod writer;

#[cfg(test)]
pub(crate) mod testutil;

pub use batch::ShardBatch;
pub use create::{CacheWriter, Resumed, WrittenShards};
pub use encoding::{
    levels, readable_versions, Codec, Encoding, FORMAT_VERSION, FORMAT_VERSION_COMPACT,
    FORMAT_VERSION_STEPS, LOGPROB_STEP, VALUE_ENCODING_F16, VALUE_ENCODING_U8_LEVELS,
    VALUE_ENCODING_U8_STEPS,
};
pub use layout::{
    shard_file_name, shard_rel_path, worker_manifest_path, MANIFEST_FILE, SHARDS_DIR,
    WORKER_MANIFESTS_DIR,
};
pub use manifest::{
    CorpusFile, CorpusInfo, Manifest, PackingInfo, ShardEntry, TeacherInfo, WorkerInfo,
};
pub use merge::merge;
pub use open::{Cache, Unit};
pub use reader::ShardReader;
pub use schema::arrow_schema;
pub use writer::{default_row_group_rows, write_shard_atomic, WriteOptions};
