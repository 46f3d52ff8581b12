//! The options of `taidcache distill`: each defined once, here — its flag, help text and
//! default (clap), and its key in a pipeline file's `[distill]` table (serde).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::objectives::{LossConfig, Objective};
use super::targets::TailMode;
use crate::config::bounds::{self, Bounds};
use crate::error::{Error, Result};
use crate::model::{DeviceSpec, FloatType};

/// What feeds TAID's adaptive update: the KL of Eq. 2 (default) or the cross-entropy −Σ p_t log q.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AdaptiveSignal {
    Kl,
    Ce,
}

/// Everything `taidcache distill` needs. Every flag may also be set in the `[distill]` table of
/// `--config`; a flag given on the command line wins over the file, and `--steps` on the command
/// line replaces the file's `epochs` (and the other way round).
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct DistillOptions {
    /// Cache directory written by `precompute`.
    #[arg(long, value_name = "CACHE", default_value = "", hide_default_value = true, value_parser = crate::config::path_arg)]
    pub cache: PathBuf,
    /// Student: a Hugging Face directory with weights (pretrained init), or with config.json alone (seeded random init).
    #[arg(long, value_name = "DIR", default_value = "", hide_default_value = true, value_parser = crate::config::path_arg)]
    pub student: PathBuf,
    /// Run directory: metrics.jsonl, checkpoints/step-N/, final/.
    #[arg(long, value_name = "RUN", default_value = "", hide_default_value = true, value_parser = crate::config::path_arg)]
    pub out: PathBuf,
    /// Training objective.
    #[arg(long, value_enum, default_value_t = Objective::Taid)]
    pub objective: Objective,
    /// Optimizer steps (or give --epochs).
    #[arg(long, conflicts_with = "epochs", value_parser = bounds::at_least_one_u64)]
    pub steps: Option<u64>,
    /// Passes over the training split (may be fractional).
    #[arg(long, value_parser = bounds::positive)]
    pub epochs: Option<f64>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8, value_parser = bounds::at_least_one)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = bounds::at_least_one)]
    pub grad_accum: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-4, value_parser = bounds::positive)]
    pub lr: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 0, value_parser = bounds::count_u64)]
    pub warmup: u64,
    /// AdamW decoupled weight decay, on matrices only.
    #[arg(long, default_value_t = 0.01, value_parser = bounds::non_negative)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0, value_parser = bounds::non_negative)]
    pub max_grad_norm: f64,
    /// TAID: initial interpolation t.
    #[arg(long, default_value_t = 0.4, value_parser = bounds::unit)]
    pub t_start: f64,
    /// TAID: final interpolation t.
    #[arg(long, default_value_t = 1.0, value_parser = bounds::unit)]
    pub t_end: f64,
    /// TAID: step size of the adaptive t update.
    #[arg(long, default_value_t = 5e-4, value_parser = bounds::non_negative)]
    pub alpha: f64,
    /// TAID: momentum of the adaptive t update.
    #[arg(long, default_value_t = 0.99, value_parser = bounds::unit_below_one)]
    pub beta: f64,
    /// TAID: loss that drives the adaptive t update.
    #[arg(long, value_enum, default_value_t = AdaptiveSignal::Kl)]
    pub adaptive_signal: AdaptiveSignal,
    /// How the teacher is completed beyond its cached top-k.
    #[arg(long, value_enum, default_value_t = TailMode::Student)]
    pub tail: TailMode,
    /// λ of skew-kl, skew-rkl and gjs.
    #[arg(long, default_value_t = 0.1, value_parser = bounds::open_unit_f32)]
    pub lambda: f32,
    /// Weight of the next-token cross-entropy added to the objective.
    #[arg(long, default_value_t = 0.0, value_parser = bounds::non_negative_f32)]
    pub ce_weight: f32,
    /// Seed of the random init and the data order.
    #[arg(long, default_value_t = 0, value_parser = bounds::count_u64)]
    pub seed: u64,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Evaluate every N steps; 0: only at the end.
    #[arg(long, default_value_t = 0, value_parser = bounds::count_u64)]
    pub eval_every: u64,
    /// Checkpoint every N steps; 0: never (final/ is always written).
    #[arg(long, default_value_t = 0, value_parser = bounds::count_u64)]
    pub save_every: u64,
    /// Fraction of the cache's sequences (the last ones, in sequence order) held out for evaluation.
    #[arg(long, default_value_t = 0.0, value_parser = bounds::unit_below_one)]
    pub eval_fraction: f64,
    /// A separate cache to evaluate on (instead of --eval-fraction).
    #[arg(long, value_name = "CACHE")]
    pub eval_cache: Option<PathBuf>,
    /// dtype of the saved student (training keeps f32 master weights).
    #[arg(long, value_enum, default_value_t = FloatType::F32)]
    pub save_dtype: FloatType,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// Pipeline config (TOML) whose [distill] table sets the flags not given here.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Start a new run in --out even where it holds an earlier run, a model in final/ or other
    /// files: the earlier run's run.json, metrics.jsonl, checkpoints/ and final/ are deleted
    /// first, other files are left as they are.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Draw a progress bar on stderr when it is a terminal (not a flag).
    #[arg(skip = true)]
    #[serde(default = "yes", skip_serializing)]
    pub progress: bool,
    /// Accept an --eval-cache made by another teacher (or tokenizer) than --cache.
    #[arg(long)]
    pub eval_cache_any_teacher: bool,
    /// Keep only each layer's input during the forward and run the layer again in the backward
    /// (gradient checkpointing): about a third more compute for the activations and attention
    /// scores of one layer instead of all of them. The same gradients.
    #[arg(long)]
    #[serde(default)]
    pub recompute: bool,
    /// The output projection's three matrix products (logits, and the two gradients behind
    /// them: 4/5 of a step's arithmetic for a small student with a large vocabulary): f32, or
    /// bf16 on a CPU student (AMX tiles where the CPU has them; the projection's weights and
    /// the loss gradient rounded to bf16 as products' right operands, f32 sums). Everything
    /// else stays f32, master weights and moments included.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    #[serde(default)]
    pub precision: Precision,
}

/// What `distill --precision` runs the output projection's products in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

fn yes() -> bool {
    true
}

impl Default for DistillOptions {
    /// Every option at its default (the flags' defaults), the required paths empty.
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

impl DistillOptions {
    /// Options with every default and the three required paths.
    pub fn new(
        cache: impl Into<PathBuf>,
        student: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cache: cache.into(),
            student: student.into(),
            out: out.into(),
            ..Self::default()
        }
    }

    /// The flags a run cannot go without, for [`crate::config::require`].
    pub const REQUIRED: [&'static str; 3] = ["cache", "student", "out"];

    /// The loss settings of these options at interpolation `t`.
    pub fn loss_config(&self, t: f64) -> LossConfig {
        LossConfig {
            objective: self.objective,
            tail: self.tail,
            t: t as f32,
            lambda: self.lambda,
            ce_weight: self.ce_weight,
        }
    }

    /// Check the options a run cannot start with, naming the flag.
    pub fn validate(&self) -> Result<()> {
        // The flags' value parsers refuse these on the command line and in a pipeline file;
        // options built in code meet the same bounds here.
        for (flag, v, b) in [
            ("--lr", self.lr, Bounds::POSITIVE),
            ("--weight-decay", self.weight_decay, Bounds::NON_NEGATIVE),
            ("--max-grad-norm", self.max_grad_norm, Bounds::NON_NEGATIVE),
            ("--t-start", self.t_start, Bounds::UNIT),
            ("--t-end", self.t_end, Bounds::UNIT),
            ("--alpha", self.alpha, Bounds::NON_NEGATIVE),
            ("--beta", self.beta, Bounds::UNIT_BELOW_ONE),
            ("--lambda", f64::from(self.lambda), Bounds::OPEN_UNIT),
            (
                "--ce-weight",
                f64::from(self.ce_weight),
                Bounds::NON_NEGATIVE,
            ),
            (
                "--eval-fraction",
                self.eval_fraction,
                Bounds::UNIT_BELOW_ONE,
            ),
            ("--epochs", self.epochs.unwrap_or(1.0), Bounds::POSITIVE),
        ] {
            b.check_flag(flag, v)?;
        }
        if self.steps == Some(0) {
            return Err(Error::flag("--steps", "must be at least 1"));
        }
        if self.steps.is_none() && self.epochs.is_none() {
            return Err(Error::flag("--steps", "give --steps N or --epochs E"));
        }
        for (flag, v) in [
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
        ] {
            if v == 0 {
                return Err(Error::flag(flag, "must be at least 1"));
            }
        }
        if self.t_start > self.t_end {
            return Err(Error::flag(
                "--t-start",
                format!(
                    "need 0 ≤ t_start ≤ t_end ≤ 1, found {} and {}",
                    self.t_start, self.t_end
                ),
            ));
        }
        self.loss_config(self.t_start)
            .validate()
            .map_err(|msg| Error::flag("--objective", msg))?;
        if self.precision == Precision::Bf16 && !matches!(self.device, DeviceSpec::Cpu) {
            return Err(Error::flag(
                "--precision",
                format!(
                    "bf16 is built for a CPU student only; on {} train with --precision f32",
                    self.device
                ),
            ));
        }
        if self.eval_fraction > 0.0 && self.eval_cache.is_some() {
            return Err(Error::flag(
                "--eval-fraction",
                "and --eval-cache both choose the evaluation data; give only one of them",
            ));
        }
        if self.eval_every > 0 && self.eval_fraction == 0.0 && self.eval_cache.is_none() {
            return Err(Error::flag(
                "--eval-every",
                format!(
                    "{} evaluates nothing without held-out data; add --eval-fraction F or --eval-cache CACHE, or drop --eval-every",
                    self.eval_every
                ),
            ));
        }
        if self.resume && self.overwrite {
            return Err(Error::flag(
                "--overwrite",
                "replaces the run in --out and --resume continues it; give only one of them",
            ));
        }
        Ok(())
    }
}
