//! The command line: clap definitions and dispatch. Each subcommand resolves its options
//! (flags over `--config` file over defaults) and calls its stage's `run`.

use std::io::Write;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config;
use crate::distill::{self, DistillOptions};
use crate::error::{Error, Result};
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
    #[command(allow_negative_numbers = true)]
    Precompute(Box<PrecomputeOptions>),
    /// Turn top-k log-probs captured elsewhere (DistillKit's vLLM captures, any top-k columns)
    /// into a cache that `distill` trains from.
    Import(Box<crate::import::ImportOptions>),
    /// Train a student from a cache with sparse TAID (or a baseline objective).
    #[command(allow_negative_numbers = true)]
    Distill(Box<DistillOptions>),
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

impl Cli {
    /// The command line in `matches` (from [`Cli::command`]), with each stage's options merged
    /// with its `--config` file: a flag given on the command line wins, else the file's value,
    /// else the default; `--steps` on the command line replaces the file's `epochs` and the other
    /// way round.
    pub fn resolve(matches: &ArgMatches) -> Result<Cli> {
        let mut cli = Cli::from_arg_matches(matches)
            .map_err(|e| Error::flag("(command line)", e.to_string()))?;
        let Some((name, sub)) = matches.subcommand() else {
            return Ok(cli);
        };
        match &mut cli.command {
            Command::Precompute(o) => {
                let file = o.config.clone();
                if let Some(path) = &file {
                    **o = config::merge_file((**o).clone(), sub, path, name)?;
                }
                let at = file.as_deref().map(|p| (p, name));
                config::require(&**o, &PrecomputeOptions::REQUIRED, at)?;
            }
            Command::Distill(o) => {
                let file = o.config.clone();
                if let Some(path) = &file {
                    **o = config::merge_file((**o).clone(), sub, path, name)?;
                }
                let given = |id: &str| sub.value_source(id) == Some(ValueSource::CommandLine);
                if given("steps") {
                    o.epochs = None;
                }
                if given("epochs") {
                    o.steps = None;
                }
                if o.steps.is_some() && o.epochs.is_some() {
                    return Err(Error::flag(
                        "--steps",
                        "give either steps or epochs, not both",
                    ));
                }
                let at = file.as_deref().map(|p| (p, name));
                config::require(&**o, &DistillOptions::REQUIRED, at)?;
            }
            _ => {}
        }
        Ok(cli)
    }

    /// Parse and resolve `args` (the program name first), for tests and scripts; clap's own
    /// messages become [`Error::Flag`].
    pub fn try_resolve_from<I, T>(args: I) -> Result<Cli>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command()
            .try_get_matches_from(args)
            .map_err(|e| Error::flag("(command line)", e.to_string()))?;
        Self::resolve(&matches)
    }
}

/// Run a resolved command line ([`Cli::resolve`]), writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    match cli.command {
        Command::Precompute(opts) => {
            precompute::run(&opts, out)?;
        }
        Command::Import(opts) => {
            crate::import::run(&opts, out)?;
        }
        Command::Distill(opts) => {
            distill::run(&opts, out)?;
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
    use crate::distill::objectives::Objective;

    /// The paragraph of `--flag` in a subcommand's long help.
    fn help_of(subcommand: &str, flag: &str) -> String {
        let help = Cli::command()
            .find_subcommand_mut(subcommand)
            .unwrap()
            .render_long_help()
            .to_string();
        let at = help
            .find(&format!("--{flag} "))
            .unwrap_or_else(|| panic!("--{flag} missing"));
        let rest = &help[at..];
        rest[..rest.find("\n\n").unwrap_or(rest.len())].to_string()
    }

    #[test]
    fn help_states_the_real_defaults() {
        let d = PrecomputeOptions::default();
        for (flag, value) in [
            ("top-k", d.top_k.to_string()),
            ("seq-len", d.seq_len.to_string()),
            ("batch-size", d.batch_size.to_string()),
            ("dtype", d.dtype.to_string()),
            ("device", d.device.to_string()),
            ("text-field", d.text_field.to_string()),
            ("shard-rows", d.shard_rows.to_string()),
            ("zstd-level", d.zstd_level.to_string()),
        ] {
            let para = help_of("precompute", flag);
            assert!(
                para.contains(&format!("[default: {value}]")),
                "--{flag}: {para}"
            );
        }
        assert_eq!((d.top_k, d.seq_len, d.batch_size), (50, 2048, 8));
        Cli::command().debug_assert();
    }

    #[test]
    fn distill_help_states_the_real_defaults() {
        let d = DistillOptions::default();
        for (flag, value) in [
            ("batch-size", d.batch_size.to_string()),
            ("grad-accum", d.grad_accum.to_string()),
            ("lr", d.lr.to_string()),
            ("warmup", d.warmup.to_string()),
            ("weight-decay", d.weight_decay.to_string()),
            ("max-grad-norm", d.max_grad_norm.to_string()),
            ("t-start", d.t_start.to_string()),
            ("t-end", d.t_end.to_string()),
            ("alpha", d.alpha.to_string()),
            ("beta", d.beta.to_string()),
            ("lambda", d.lambda.to_string()),
            ("seed", d.seed.to_string()),
        ] {
            let para = help_of("distill", flag);
            assert!(
                para.contains(&format!("[default: {value}]")),
                "--{flag}: {para}"
            );
        }
        // The paper's defaults (Appendix D) and the product's.
        assert_eq!(
            (d.t_start, d.t_end, d.alpha, d.beta),
            (0.4, 1.0, 5e-4, 0.99)
        );
        assert_eq!(
            (d.lr, d.batch_size, d.objective),
            (1e-4, 8, Objective::Taid)
        );
    }

    #[test]
    fn distill_flags_override_the_file_and_steps_replace_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[distill]\ncache = \"c\"\nstudent = \"s\"\nout = \"r\"\nepochs = 5.0\nlr = 0.001\nobjective = \"kl\"\n").unwrap();
        let cli = Cli::try_resolve_from([
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
        let Command::Distill(o) = cli.command else {
            panic!("not distill")
        };
        assert_eq!(
            (o.steps, o.epochs, o.lr, o.objective),
            (Some(7), None, 0.01, Objective::Kl)
        );
        assert_eq!(o.cache, PathBuf::from("c"));
        let e = Cli::try_resolve_from(["taidcache", "distill", "--student", "s", "--out", "r"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--cache") && e.contains("required"), "{e}");
    }
}
