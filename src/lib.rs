//! taidcache: an offline teacher-logit cache for knowledge distillation of language models.
//!
//! The crate is organized by pipeline stage; lower layers never import higher ones:
//!
//! - [`corpus`]: read documents (JSONL, text, Parquet, pre-tokenized), tokenize, pack into sequences.
//! - [`model`]: the decoder-only family (Llama, Mistral, Qwen2, Qwen3, Phi-3) loaded from
//!   Hugging Face directories.
//! - [`cache`]: the on-disk format: Arrow schema, manifest, atomic shard writer, memory-mapped reader.
//! - [`precompute`]: corpus → teacher → top-k → cache, pipelined.
//! - [`import`]: top-k captured elsewhere (DistillKit, top-k columns) → cache.
//! - [`distill`]: cache → student with sparse TAID (loader, targets, objectives, schedules, AdamW).
//! - [`plot`]: loss, t and eval KL curves of distill runs as SVG/PNG.
//! - [`demo`]: the end-to-end demo on a generated corpus, through the stages' typed options.
//! - [`inspect`]: summaries and integrity checks of a cache.
//! - [`config`]: pipeline files (TOML) merged with the flags; [`cli`]: the command line.
//! - [`lock`]: advisory locks that keep two processes out of one output directory.
//!
//! `docs/architecture.md` draws the data flow and says where each kind of change goes.

pub mod cache;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod demo;
pub mod distill;
pub mod error;
pub mod hash;
pub mod import;
pub mod inspect;
pub mod lock;
pub mod model;
pub mod plot;
pub mod precompute;
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testing;
pub(crate) mod vexp;

pub use error::{Error, Result};

/// Run candle's element-wise CPU ops on the calling thread (`CANDLE_NUM_THREADS=1`) unless the
/// user set `CANDLE_NUM_THREADS`. Matrix products still use every core (gemm's own rayon pool).
///
/// candle 0.11 splits element-wise ops over a pool whose caller spin-waits for the workers.
/// taidcache runs its own rayon work (loss, top-k) and loader threads beside candle, so a
/// worker is often descheduled while the caller spins on the other core; a distill step and
/// the teacher forward are faster on one thread (figures in `docs/performance.md`). Call
/// before any thread or tensor exists.
pub fn single_threaded_candle_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Edition 2021: `set_var` is safe; no other thread exists yet when `main` calls this.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Keep freed memory of up to 32 MiB blocks in the process instead of returning it to the
/// kernel (glibc `mallopt`: mmap threshold 32 MiB, trim threshold 1 GiB).
///
/// candle allocates a fresh buffer for every tensor op; with glibc's defaults the large ones are
/// mmapped and unmapped each time, so every training step faults in and zeroes the same pages
/// again (the profile and the tokens/s with and without are in `docs/performance.md`). A no-op
/// on other platforms.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A progress bar on stderr drawn with `template` (indicatif's), or a hidden one when `enabled`
/// is false or stderr is not a terminal.
pub(crate) fn progress_bar(enabled: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

thread_local! {
    /// Set while [`catch_panic_quietly`] runs on this thread.
    static CATCHING_QUIETLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`; a panic inside it becomes `None`, and the panic hook of
/// [`report_uncaught_panics_only`] prints nothing for it. For third-party decoders that panic on
/// corrupt input (parquet 60 on some corrupt pages), whose failure taidcache reports as one
/// sentence naming the file.
pub fn catch_panic_quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let was = CATCHING_QUIETLY.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING_QUIETLY.with(|q| q.set(was));
    result.ok()
}

/// Install a panic hook that keeps the default report (message and backtrace) for every panic
/// except those [`catch_panic_quietly`] catches, so that a corrupt file is one error line, not a
/// "thread panicked" line before it. Called by the binary's `main`.
pub fn report_uncaught_panics_only() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !CATCHING_QUIETLY.with(|q| q.get()) {
            default(info);
        }
    }));
}
