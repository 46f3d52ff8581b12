//! The integration tests, as one test binary (each binary links candle, arrow and parquet:
//! one link instead of nine). `tests/loss_memory.rs` stays its own binary: it installs a
//! counting global allocator that would count every other test too.

mod common;

mod cache_pyarrow;
mod concurrency;
mod demo;
mod distill;
mod errors;
mod flags;
mod forward_golden;
mod fuzz;
mod gguf;
mod identity;
mod import;
mod pipelines;
mod precompute;
mod readme;
mod resume;
mod student;
mod tail_draws;
