//! The command line: clap definitions and dispatch. Each subcommand resolves its options
//! (flags over `--config` file over defaults) and calls its stage's `run`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config;
use crate::corpus::TextSplit;
use crate::distill::objectives::Objective;
use crate::distill::targets::TailMode;
use crate::distill::{self, AdaptiveSignal, DistillOptions};
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
    /// Train a student from a cache with sparse TAID (or a baseline objective).
    Distill(Box<DistillArgs>),
    /// Draw loss, t and held-out KL against steps for one or more distill runs.
    Plot(PlotArgs),
    /// Run the whole pipeline on a generated corpus: tokenizer, teacher, cache, three students.
    Demo(DemoArgs),
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
    /// How top-k records are stored: plain (format v1: f16 log-probs), compact (format v3: each
    /// position sorted by id, ids as gaps, log-probs as 8-bit levels uniform in √p; about half
    /// the size, mean KL to the exact values below 1e-3) or steps (format v2, the compact
    /// encoding of earlier releases) [default: plain].
    #[arg(long, value_enum)]
    pub encoding: Option<crate::cache::Encoding>,
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

/// Flags of `distill`. Every flag may also be set in the `[distill]` table of `--config`.
#[derive(Args, Debug, Default, Serialize)]
pub struct DistillArgs {
    /// Cache directory written by `precompute`.
    #[arg(long, value_name = "CACHE")]
    pub cache: Option<PathBuf>,
    /// Student: a Hugging Face directory with weights (pretrained init), or with config.json alone (seeded random init).
    #[arg(long, value_name = "DIR")]
    pub student: Option<PathBuf>,
    /// Run directory: metrics.jsonl, checkpoints/step-N/, final/.
    #[arg(long, value_name = "RUN")]
    pub out: Option<PathBuf>,
    /// Training objective [default: taid].
    #[arg(long, value_enum)]
    pub objective: Option<Objective>,
    /// Optimizer steps (or give --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the training split (may be fractional).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Sequences per micro-batch [default: 8].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate (AdamW) [default: 0.0001].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warmup steps before the cosine decay [default: 0].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// AdamW decoupled weight decay, on matrices only [default: 0.01].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to this value; 0 turns clipping off [default: 1].
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// TAID: initial interpolation t [default: 0.4].
    #[arg(long)]
    pub t_start: Option<f64>,
    /// TAID: final interpolation t [default: 1].
    #[arg(long)]
    pub t_end: Option<f64>,
    /// TAID: step size of the adaptive t update [default: 0.0005].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// TAID: momentum of the adaptive t update [default: 0.99].
    #[arg(long)]
    pub beta: Option<f64>,
    /// TAID: loss that drives the adaptive t update [default: kl].
    #[arg(long, value_enum)]
    pub adaptive_signal: Option<AdaptiveSignal>,
    /// How the teacher is completed beyond its cached top-k [default: student].
    #[arg(long, value_enum)]
    pub tail: Option<TailMode>,
    /// λ of skew-kl, skew-rkl and gjs [default: 0.1].
    #[arg(long)]
    pub lambda: Option<f32>,
    /// Weight of the next-token cross-entropy added to the objective [default: 0].
    #[arg(long)]
    pub ce_weight: Option<f32>,
    /// Seed of the random init and the data order [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
    /// Evaluate every N steps; 0: only at the end [default: 0].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Checkpoint every N steps; 0: never (final/ is always written) [default: 0].
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Fraction of the cache's sequences held out for evaluation [default: 0].
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    /// A separate cache to evaluate on (instead of --eval-fraction).
    #[arg(long, value_name = "CACHE")]
    pub eval_cache: Option<PathBuf>,
    /// dtype of the saved student: f32, bf16 or f16 [default: f32].
    #[arg(long)]
    pub save_dtype: Option<String>,
    /// Device: cpu or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Pipeline config (TOML) whose [distill] table sets defaults for these flags.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

impl DistillArgs {
    /// Flags over the config file over the defaults; `--steps` on the command line replaces
    /// the file's `epochs` and the other way round.
    pub fn resolve(&self) -> Result<DistillOptions> {
        let defaults = DistillOptions::new("", "", "");
        let mut o: DistillOptions = config::resolve(
            &defaults,
            self.config.as_deref().map(|p| (p, "distill")),
            self,
            &["cache", "student", "out"],
        )?;
        if self.steps.is_some() {
            o.epochs = None;
        }
        if self.epochs.is_some() {
            o.steps = None;
        }
        if o.steps.is_some() && o.epochs.is_some() {
            return Err(crate::Error::flag(
                "--steps",
                "give either steps or epochs, not both",
            ));
        }
        Ok(o)
    }
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Distill run directories (each with metrics.jsonl).
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Output image: .svg or .png.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for everything the demo makes (must be new or empty).
    #[arg(long, value_name = "DIR", default_value = "demo-out")]
    pub out: PathBuf,
    /// A JSON file overriding the demo's sizes (fields of `DemoConfig`), e.g. for a quick run.
    #[arg(long, value_name = "FILE")]
    pub sizes: Option<PathBuf>,
    /// Also write the results into this Markdown file (between its `<!-- results -->` markers,
    /// keeping the rest), with the plots copied beside it.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
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
        Command::Distill(args) => {
            distill::run(&args.resolve()?, out)?;
        }
        Command::Plot(a) => {
            let runs = a
                .runs
                .iter()
                .map(|r| crate::plot::read_run(r))
                .collect::<Result<Vec<_>>>()?;
            crate::plot::plot(&runs, &a.out)?;
            writeln!(out, "{}: {} runs plotted", a.out.display(), runs.len())
                .map_err(|e| crate::Error::io(&a.out, e))?;
        }
        Command::Demo(a) => {
            let cfg = match &a.sizes {
                None => crate::demo::DemoConfig::default(),
                Some(p) => {
                    let text = std::fs::read_to_string(p).map_err(|e| crate::Error::io(p, e))?;
                    serde_json::from_str(&text).map_err(|source| crate::Error::Json {
                        path: p.clone(),
                        source,
                    })?
                }
            };
            let command: Vec<String> = std::env::args().collect();
            let summary = crate::demo::run(&a.out, &cfg, out)?;
            if let Some(report) = &a.report {
                crate::demo::write_report(report, &summary, &command.join(" "))?;
                writeln!(out, "results written into {}", report.display())
                    .map_err(|e| crate::Error::io(report, e))?;
            }
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

    #[test]
    fn distill_help_states_the_real_defaults() {
        use crate::distill::defaults as d;
        let help = Cli::command()
            .find_subcommand_mut("distill")
            .unwrap()
            .render_long_help()
            .to_string();
        for (flag, value) in [
            ("batch-size", d::BATCH_SIZE.to_string()),
            ("grad-accum", d::GRAD_ACCUM.to_string()),
            ("lr", d::LR.to_string()),
            ("warmup", d::WARMUP.to_string()),
            ("weight-decay", d::WEIGHT_DECAY.to_string()),
            ("max-grad-norm", d::MAX_GRAD_NORM.to_string()),
            ("t-start", d::T_START.to_string()),
            ("t-end", d::T_END.to_string()),
            ("alpha", d::ALPHA.to_string()),
            ("beta", d::BETA.to_string()),
            ("lambda", d::LAMBDA.to_string()),
            ("seed", d::SEED.to_string()),
        ] {
            let at = help
                .find(&format!("--{flag} "))
                .unwrap_or_else(|| panic!("--{flag} missing"));
            let rest = &help[at..];
            let para = &rest[..rest.find("\n\n").unwrap_or(rest.len())];
            assert!(
                para.contains(&format!("[default: {value}]")),
                "--{flag}: {para}"
            );
        }
    }

    #[test]
    fn distill_flags_override_the_file_and_steps_replace_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[distill]\ncache = \"c\"\nstudent = \"s\"\nout = \"r\"\nepochs = 5.0\nlr = 0.001\nobjective = \"kl\"\n").unwrap();
        let cli = Cli::try_parse_from([
            "taidcache",
            "distill",
            "--config",
            file.to_str().unwrap(),
            "--steps",
            "7",
            "--lr",
            "0.01",
        ])
        .unwrap();
        let Command::Distill(args) = cli.command else {
            panic!("not distill")
        };
        let o = args.resolve().unwrap();
        assert_eq!(
            (o.steps, o.epochs, o.lr, o.objective),
            (Some(7), None, 0.01, Objective::Kl)
        );
        assert_eq!(o.cache, PathBuf::from("c"));
    }
}
