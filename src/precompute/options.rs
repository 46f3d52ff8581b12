//! The options of `taidcache precompute`: each defined once, here — its flag, help text and
//! default (clap), and its key in a pipeline file's `[precompute]` table (serde).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cache::Encoding;
use crate::config::bounds;
use crate::corpus::TextSplit;
use crate::error::{Error, Result};
use crate::model::{DeviceSpec, FloatType};

/// Everything `taidcache precompute` needs. Every flag may also be set in the `[precompute]`
/// table of `--config`; a flag given on the command line wins over the file.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PrecomputeOptions {
    /// Teacher: a Hugging Face model directory (config.json, safetensors, tokenizer.json), or a
    /// llama.cpp GGUF file (dense or quantized; for a split model, its -00001-of-N file).
    #[arg(long, value_name = "DIR|FILE.gguf", default_value = "", hide_default_value = true, value_parser = crate::config::path_arg)]
    pub teacher: PathBuf,
    /// The teacher's tokenizer.json, instead of the one in its directory or its GGUF metadata
    /// (a GGUF teacher's tokens must match it, id for id).
    #[arg(long, value_name = "FILE", value_parser = crate::config::path_arg)]
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Corpus files or directories (.jsonl, .txt, .parquet); a directory stands for every
    /// non-hidden file below it, at any depth, sorted by name at each level.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// Cache directory to create, or to resume if it holds an unfinished run of the same inputs.
    #[arg(long, value_name = "CACHE", default_value = "", hide_default_value = true, value_parser = crate::config::path_arg)]
    pub out: PathBuf,
    /// Log-probabilities kept per position.
    #[arg(long, default_value_t = 50, value_parser = bounds::at_least_one)]
    pub top_k: usize,
    /// Tokens per packed sequence.
    #[arg(long, default_value_t = 2048, value_parser = bounds::at_least_one)]
    pub seq_len: usize,
    /// Sequences per teacher forward.
    #[arg(long, default_value_t = 8, value_parser = bounds::at_least_one)]
    pub batch_size: usize,
    /// Teacher forward dtype.
    #[arg(long, value_enum, default_value_t = FloatType::F32)]
    pub dtype: FloatType,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// JSONL key / Parquet column holding the text (a string) or token ids (a list of integers).
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// How .txt files split into documents: one per file, or one per blank-line-separated block.
    #[arg(long, value_enum, default_value_t = TextSplit::File)]
    pub text_split: TextSplit,
    /// Sequences per shard file.
    #[arg(long, default_value_t = 256, value_parser = bounds::at_least_one)]
    pub shard_rows: usize,
    /// zstd compression level, 1..=22.
    #[arg(long, default_value_t = 3, value_parser = bounds::zstd_level)]
    pub zstd_level: i32,
    /// How top-k records are stored: plain (format v1: f16 log-probs), compact (format v3: each
    /// position sorted by id, ids as gaps, log-probs as 8-bit levels uniform in √p; about half
    /// the size, mean KL to the exact values below 1e-3) or steps (format v2, the compact
    /// encoding of earlier releases).
    #[arg(long, value_enum, default_value_t = Encoding::Plain)]
    #[serde(default)]
    pub encoding: Encoding,
    /// Tail draws per position: N ids drawn from the teacher's distribution outside the top-k
    /// (in proportion to its probabilities, seeded by sequence and position), stored with their
    /// log-probs for `distill --tail sampled`, an unbiased tail (0: none). Plain and compact
    /// encodings (formats v4 and v5); about 6 raw bytes per draw before compression.
    #[arg(long, default_value_t = 0, value_parser = bounds::count)]
    #[serde(default)]
    pub tail_samples: usize,
    /// This process's index among --workers, from 0.
    #[arg(long, default_value_t = 0, value_parser = bounds::count)]
    pub worker: usize,
    /// Number of independent processes filling this cache; shard j goes to worker j mod N.
    #[arg(long, default_value_t = 1, value_parser = bounds::at_least_one)]
    pub workers: usize,
    /// Pipeline config (TOML) whose [precompute] table sets the flags not given here.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Draw a progress bar on stderr when it is a terminal (not a flag).
    #[arg(skip = true)]
    #[serde(default = "yes", skip_serializing)]
    pub progress: bool,
}

/// The most tail draws per position `--tail-samples` takes.
pub const MAX_TAIL_SAMPLES: usize = 4096;

fn yes() -> bool {
    true
}

impl Default for PrecomputeOptions {
    /// Every option at its default (the flags' defaults), the required paths empty.
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

impl PrecomputeOptions {
    /// Options with every default and the three required paths.
    pub fn new(teacher: impl Into<PathBuf>, corpus: Vec<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            teacher: teacher.into(),
            corpus,
            out: out.into(),
            ..Self::default()
        }
    }

    /// The flags a run cannot go without, for [`crate::config::require`].
    pub const REQUIRED: [&'static str; 3] = ["teacher", "corpus", "out"];

    /// Check the options a run cannot start with, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("--seq-len", self.seq_len),
            ("--batch-size", self.batch_size),
            ("--shard-rows", self.shard_rows),
            ("--workers", self.workers),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(Error::flag(flag, "must be at least 1"));
            }
        }
        if self.top_k == 0 {
            return Err(Error::flag("--top-k", "must be at least 1"));
        }
        if self.worker >= self.workers {
            return Err(Error::flag(
                "--worker",
                format!(
                    "{} is out of range for --workers {} (workers count from 0)",
                    self.worker, self.workers
                ),
            ));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(Error::flag(
                "--zstd-level",
                format!("{} is not in 1..=22", self.zstd_level),
            ));
        }
        if self.corpus.is_empty() {
            return Err(Error::flag("--corpus", "name at least one corpus file"));
        }
        if self.tail_samples > MAX_TAIL_SAMPLES {
            return Err(Error::flag(
                "--tail-samples",
                format!(
                    "{} is above {MAX_TAIL_SAMPLES} draws per position",
                    self.tail_samples
                ),
            ));
        }
        if self.tail_samples > 0
            && self
                .encoding
                .format_version_with(self.tail_samples)
                .is_none()
        {
            return Err(Error::flag(
                "--tail-samples",
                format!(
                    "the {} encoding has no format with tail draws; use --encoding plain or compact",
                    self.encoding.name()
                ),
            ));
        }
        Ok(())
    }
}
