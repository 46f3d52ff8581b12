//! The command line: clap definitions and dispatch. Each subcommand resolves its options
//! (flags over `--config` file over defaults) and calls its stage's `run`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config;
use crate::corpus::TextSplit;
use crate::error::Result;
use crate::precompute::{self, PrecomputeOptions};

#[derive(Parser, Debug)]
#[command(name = "taidcache", version, about = "Offline teacher top-k cache and TAID distillation for language models", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a teacher over a corpus once and cache its top-k next-token log-probabilities.
    Precompute(Box<PrecomputeArgs>),
    /// Combine the manifests of `--workers N` precompute runs into CACHE/manifest.json.
    Merge(CacheArg),
    /// Summarize a cache: teacher, sizes, compression, entropy, tail mass.
    Inspect(InspectArgs),
    /// Check every shard of a cache: hashes, schema, ranges, log-prob consistency.
    Verify(CacheArg),
}

/// Flags of `precompute`. Every flag may also be set in the `[precompute]` table of `--config`.
#[derive(Args, Debug, Default, Serialize)]
pub struct PrecomputeArgs {
    /// Teacher: a Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub teacher: Option<PathBuf>,
    /// Corpus files or directories (.jsonl, .txt, .parquet).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub corpus: Vec<PathBuf>,
    /// Cache directory to create, or to resume if it holds an unfinished run of the same inputs.
    #[arg(long, value_name = "CACHE")]
    pub out: Option<PathBuf>,
    /// Log-probabilities kept per position [default: 50].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Tokens per packed sequence [default: 2048].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sequences per teacher forward [default: 8].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Teacher forward dtype: f32, bf16 or f16 [default: f32].
    #[arg(long)]
    pub dtype: Option<String>,
    /// Device: cpu or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// JSONL key / Parquet column holding the text (a string) or token ids (a list of integers) [default: text].
    #[arg(long)]
    pub text_field: Option<String>,
    /// How .txt files split into documents: one per file, or one per blank-line-separated block [default: file].
    #[arg(long, value_enum)]
    pub text_split: Option<TextSplit>,
    /// Sequences per shard file [default: 256].
    #[arg(long)]
    pub shard_rows: Option<usize>,
    /// zstd compression level, 1..=22 [default: 3].
    #[arg(long)]
    pub zstd_level: Option<i32>,
    /// This process's index among --workers, from 0 [default: 0].
    #[arg(long, requires = "workers")]
    pub worker: Option<usize>,
    /// Number of independent processes filling this cache; shard j goes to worker j mod N [default: 1].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Pipeline config (TOML) whose [precompute] table sets defaults for these flags.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CacheArg {
    /// Cache directory.
    pub cache: PathBuf,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Cache directory.
    pub cache: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

impl PrecomputeArgs {
    /// Flags over the config file over the defaults.
    pub fn resolve(&self) -> Result<PrecomputeOptions> {
        let defaults = PrecomputeOptions::new("", Vec::new(), "");
        config::resolve(
            &defaults,
            self.config.as_deref().map(|p| (p, "precompute")),
            self,
            &["teacher", "corpus", "out"],
        )
    }
}

/// Run a parsed command line, writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    match cli.command {
        Command::Precompute(args) => {
            precompute::run(&args.resolve()?, out)?;
        }
        Command::Merge(a) => {
            let m = crate::cache::merge::merge(&a.cache)?;
            writeln!(
                out,
                "{}: merged {} shards, {} sequences",
                a.cache.display(),
                m.shards.len(),
                m.total_sequences.unwrap_or(0)
            )
            .map_err(|e| crate::Error::io(&a.cache, e))?;
        }
        Command::Inspect(a) => {
            let summary = crate::inspect::inspect(&a.cache)?;
            crate::inspect::write_summary(&summary, a.json, &mut &mut *out)?;
        }
        Command::Verify(a) => {
            crate::inspect::verify(&a.cache, &mut &mut *out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use precompute::defaults as d;

    #[test]
    fn help_states_the_real_defaults() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("precompute")
            .unwrap()
            .render_long_help()
            .to_string();
        for (flag, value) in [
            ("top-k", d::TOP_K.to_string()),
            ("seq-len", d::SEQ_LEN.to_string()),
            ("batch-size", d::BATCH_SIZE.to_string()),
            ("dtype", d::DTYPE.to_string()),
            ("device", d::DEVICE.to_string()),
            ("text-field", d::TEXT_FIELD.to_string()),
            ("shard-rows", d::SHARD_ROWS.to_string()),
            ("zstd-level", d::ZSTD_LEVEL.to_string()),
        ] {
            let at = help
                .find(&format!("--{flag}"))
                .unwrap_or_else(|| panic!("--{flag} missing"));
            let rest = &help[at..];
            let para = &rest[..rest.find("\n\n").unwrap_or(rest.len())];
            assert!(
                para.contains(&format!("[default: {value}]")),
                "--{flag}: {para}"
            );
        }
        Cli::command().debug_assert();
    }
}
