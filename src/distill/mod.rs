//! The distill stage: train a student from a cache with sparse TAID (or a baseline objective).
//!
//! ```text
//! manifest → loader (mmap, seeded order, prefetch) → student forward → sparse targets → loss
//!          → manual lm_head backward + surrogate backward → AdamW → TAID t update → metrics
//! ```
//!
//! Never loads the teacher. Owns `RUN/`: `metrics.jsonl`, `checkpoints/step-N/`, `final/`.

pub mod loader;
pub mod objectives;
pub mod optim;
pub mod schedule;
pub mod targets;
pub mod trainer;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cache::manifest::Manifest;
use crate::cache::MANIFEST_FILE;
use crate::error::{Error, IoContext, Result};
use crate::hash::sha256_file;
use crate::model::train::Student;
use crate::model::weights::TOKENIZER_FILE;
use crate::precompute::{parse_device, parse_dtype};

use loader::{check_compatible, split_units, Cursor, Loader, LoaderOptions, Unit};
use objectives::{LossConfig, Objective};
use optim::{AdamW, AdamWConfig};
use schedule::{LrSchedule, TaidSchedule};
use targets::TailMode;
use trainer::{StepStats, TrainerState};

/// Defaults of the distill options, referenced by the CLI help.
pub mod defaults {
    pub const BATCH_SIZE: usize = 8;
    pub const GRAD_ACCUM: usize = 1;
    pub const LR: f64 = 1e-4;
    pub const WARMUP: u64 = 0;
    pub const WEIGHT_DECAY: f64 = 0.01;
    pub const MAX_GRAD_NORM: f64 = 1.0;
    pub const T_START: f64 = 0.4;
    pub const T_END: f64 = 1.0;
    pub const ALPHA: f64 = 5e-4;
    pub const BETA: f64 = 0.99;
    pub const LAMBDA: f32 = 0.1;
    pub const SEED: u64 = 0;
}

/// What feeds TAID's adaptive update: the KL of Eq. 2 (default) or the cross-entropy −Σ p_t log q.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AdaptiveSignal {
    Kl,
    Ce,
}

/// Everything `taidcache distill` needs; the CLI and `--config` files fill it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillOptions {
    pub cache: PathBuf,
    /// A Hugging Face directory: pretrained weights, or `config.json` alone for a random init.
    pub student: PathBuf,
    pub out: PathBuf,
    pub objective: Objective,
    pub steps: Option<u64>,
    pub epochs: Option<f64>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub t_start: f64,
    pub t_end: f64,
    pub alpha: f64,
    pub beta: f64,
    pub adaptive_signal: AdaptiveSignal,
    pub tail: TailMode,
    pub lambda: f32,
    pub ce_weight: f32,
    pub seed: u64,
    pub resume: bool,
    /// Evaluate every N optimizer steps (0: only at the end, when there is an eval split).
    pub eval_every: u64,
    /// Checkpoint every N optimizer steps (0: never; `final/` is always written).
    pub save_every: u64,
    /// Fraction of the cache's sequences (the last ones, in sequence order) held out for evaluation.
    pub eval_fraction: f64,
    /// A separate cache to evaluate on (instead of `eval_fraction`).
    pub eval_cache: Option<PathBuf>,
    /// dtype of `final/` on disk: f32, bf16 or f16 (training keeps f32 master weights).
    pub save_dtype: String,
    pub device: String,
    #[serde(default = "yes")]
    pub progress: bool,
}

fn yes() -> bool {
    true
}

impl DistillOptions {
    pub fn new(
        cache: impl Into<PathBuf>,
        student: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        use defaults as d;
        Self {
            cache: cache.into(),
            student: student.into(),
            out: out.into(),
            objective: Objective::Taid,
            steps: None,
            epochs: None,
            batch_size: d::BATCH_SIZE,
            grad_accum: d::GRAD_ACCUM,
            lr: d::LR,
            warmup: d::WARMUP,
            weight_decay: d::WEIGHT_DECAY,
            max_grad_norm: d::MAX_GRAD_NORM,
            t_start: d::T_START,
            t_end: d::T_END,
            alpha: d::ALPHA,
            beta: d::BETA,
            adaptive_signal: AdaptiveSignal::Kl,
            tail: TailMode::Student,
            lambda: d::LAMBDA,
            ce_weight: 0.0,
            seed: d::SEED,
            resume: false,
            eval_every: 0,
            save_every: 0,
            eval_fraction: 0.0,
            eval_cache: None,
            save_dtype: "f32".into(),
            device: "cpu".into(),
            progress: true,
        }
    }

    /// Check the options a run cannot start with, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if self.steps == Some(0) {
            return Err(Error::flag("--steps", "must be at least 1"));
        }
        if let Some(e) = self.epochs {
            if !(e > 0.0 && e.is_finite()) {
                return Err(Error::flag(
                    "--epochs",
                    format!("{e} is not a positive number"),
                ));
            }
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
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::flag(
                "--lr",
                format!("{} is not a positive learning rate", self.lr),
            ));
        }
        if !(0.0..=1.0).contains(&self.t_start)
            || !(0.0..=1.0).contains(&self.t_end)
            || self.t_start > self.t_end
        {
            return Err(Error::flag(
                "--t-start",
                format!(
                    "need 0 ≤ t_start ≤ t_end ≤ 1, found {} and {}",
                    self.t_start, self.t_end
                ),
            ));
        }
        let loss = LossConfig {
            objective: self.objective,
            tail: self.tail,
            t: self.t_start as f32,
            lambda: self.lambda,
            ce_weight: self.ce_weight,
        };
        loss.validate()
            .map_err(|msg| Error::flag("--objective", msg))?;
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(Error::flag(
                "--eval-fraction",
                format!("{} is not in [0, 1)", self.eval_fraction),
            ));
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct DistillSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub final_loss: f64,
    pub final_t: f64,
    pub eval: Option<EvalSummary>,
    pub tokens: u64,
    pub elapsed_s: f64,
    /// Seconds spent waiting for data, and their share of the run's wall time.
    pub data_wait_s: f64,
    pub data_wait_share: f64,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct EvalSummary {
    pub ce: f64,
    pub kl_teacher: f64,
}

fn open_manifest(cache: &Path) -> Result<Manifest> {
    let path = cache.join(MANIFEST_FILE);
    if !cache.is_dir() {
        return Err(Error::flag(
            "--cache",
            format!("{} is not a cache directory", cache.display()),
        ));
    }
    let m = Manifest::load(&path)?;
    if !m.complete {
        return Err(Error::cache(
            &path,
            "the cache is incomplete (precompute was interrupted); re-run the same precompute command to finish it",
        ));
    }
    Ok(m)
}

/// Run the distill stage. Metrics go to `RUN/metrics.jsonl`, a summary to `out`.
pub fn run(opts: &DistillOptions, out: &mut dyn Write) -> Result<DistillSummary> {
    let started = Instant::now();
    opts.validate()?;
    let device = parse_device(&opts.device)?;
    let save_dtype = parse_dtype(&opts.save_dtype).map_err(|_| {
        Error::flag(
            "--save-dtype",
            format!("`{}` is not one of f32, bf16, f16", opts.save_dtype),
        )
    })?;
    let manifest = open_manifest(&opts.cache)?;
    let tokenizer = opts.student.join(TOKENIZER_FILE);
    let tokenizer = tokenizer.exists().then_some(tokenizer);

    let run_dir = &opts.out;
    let ckpts = trainer::checkpoints(run_dir)?;
    let resume_from = if opts.resume {
        ckpts.last().cloned()
    } else {
        None
    };
    if !opts.resume && (run_dir.join("metrics.jsonl").exists() || !ckpts.is_empty()) {
        return Err(Error::flag(
            "--out",
            format!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                run_dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(run_dir).at(run_dir)?;

    let student_dir = resume_from
        .as_ref()
        .map(|(_, p)| p.clone())
        .unwrap_or(opts.student.clone());
    let student = Student::from_dir(&student_dir, opts.seed, &device)?;
    let tok_sha = match &tokenizer {
        Some(t) => Some(sha256_file(t)?),
        None => None,
    };
    check_compatible(
        &opts.cache.join(MANIFEST_FILE),
        &manifest,
        student.config.vocab_size,
        tok_sha.as_deref(),
    )?;

    // Data: training rows, and held-out rows (or a separate eval cache).
    let fraction = if opts.eval_cache.is_some() {
        0.0
    } else {
        opts.eval_fraction
    };
    let (train_units, eval_units) = split_units(&opts.cache, &manifest, fraction)?;
    let eval_source: Option<(PathBuf, Manifest, Vec<Unit>)> = match &opts.eval_cache {
        Some(c) => {
            let m = open_manifest(c)?;
            check_compatible(
                &c.join(MANIFEST_FILE),
                &m,
                student.config.vocab_size,
                tok_sha.as_deref(),
            )?;
            let (all, _) = split_units(c, &m, 0.0)?;
            Some((c.clone(), m, all))
        }
        None if !eval_units.is_empty() => Some((opts.cache.clone(), manifest.clone(), eval_units)),
        None => None,
    };
    let train_rows: usize = train_units.iter().map(|u| u.rows.len()).sum();
    let batches_per_epoch = train_rows / opts.batch_size;
    if batches_per_epoch == 0 {
        return Err(Error::flag(
            "--batch-size",
            format!(
                "{} is larger than the training split ({train_rows} sequences)",
                opts.batch_size
            ),
        ));
    }
    // State: fresh or from the checkpoint.
    let total_steps = match (opts.steps, opts.epochs) {
        (Some(n), _) => n,
        (None, Some(e)) => ((e * batches_per_epoch as f64) / opts.grad_accum as f64)
            .ceil()
            .max(1.0) as u64,
        (None, None) => unreachable!("validated"),
    };
    let adaptive = opts.objective == Objective::Taid;
    let mut state = TrainerState {
        step: 0,
        tokens: 0,
        schedule: TaidSchedule::new(
            opts.t_start,
            opts.t_end,
            opts.alpha,
            opts.beta,
            total_steps,
            adaptive,
        ),
        cursor: Cursor::default(),
    };
    let params = student.params.clone();
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: opts.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: opts.weight_decay,
        },
    )?;
    let metrics = run_dir.join("metrics.jsonl");
    if let Some((n, dir)) = &resume_from {
        let text = std::fs::read_to_string(dir.join(trainer::STATE_FILE)).at(dir)?;
        state = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: dir.join(trainer::STATE_FILE),
            source,
        })?;
        opt.load(&dir.join(trainer::OPTIMIZER_FILE))?;
        trainer::truncate_metrics(&metrics, *n)?;
        writeln!(out, "{}: resuming from step {n}", run_dir.display()).at(run_dir)?;
    }
    let start_tokens = state.tokens;
    let lr = LrSchedule {
        base_lr: opts.lr,
        warmup_steps: opts.warmup,
        total_steps,
        min_lr_ratio: 0.0,
    };

    let mut loader = Loader::new(
        &opts.cache,
        &manifest,
        &train_units,
        LoaderOptions::train(opts.batch_size, opts.seed),
        state.cursor,
    )?;
    let progress = progress_bar(opts.progress, total_steps, state.step);
    let mut last = StepStats::default();
    let mut last_good: Option<u64> = resume_from.as_ref().map(|(n, _)| *n);
    let mut eval = None;
    let run_started = Instant::now();
    if let (0, true, Some((cache, m, units))) = (state.step, opts.eval_every > 0, &eval_source) {
        // The starting point of the eval curve.
        let e = run_eval(&student, cache, m, units, opts)?;
        let t = state.schedule.t();
        trainer::write_metrics_line(
            &metrics,
            &serde_json::json!({"step": 0, "split": "eval", "ce": e.ce, "kl_teacher": e.kl_teacher, "t": t}),
        )?;
    }
    while state.step < total_steps {
        let t = state.schedule.t();
        let cfg = LossConfig {
            objective: opts.objective,
            tail: opts.tail,
            t: t as f32,
            lambda: opts.lambda,
            ce_weight: opts.ce_weight,
        };
        let mut micro = Vec::with_capacity(opts.grad_accum);
        for _ in 0..opts.grad_accum {
            let batch = loader
                .next_batch()
                .ok_or_else(|| Error::Internal("the training loader ended".into()))??;
            micro.push(batch);
        }
        let normalizer: usize = micro
            .iter()
            .map(|b| trainer::count_positions(&b.data, opts.objective))
            .sum();
        let mut grads = None;
        let mut stats = StepStats::default();
        for b in &micro {
            let o = trainer::micro_batch(&student, &b.data, &cfg, normalizer, &mut grads)?;
            stats.add(&o);
        }
        let loss = stats.loss(opts.objective);
        if !loss.is_finite() {
            let keep = match last_good {
                Some(n) => format!(
                    "the last good checkpoint is {}",
                    run_dir
                        .join("checkpoints")
                        .join(format!("step-{n}"))
                        .display()
                ),
                None => "no checkpoint was written yet".to_string(),
            };
            return Err(Error::Flag {
                flag: "--lr".into(),
                msg: format!("step {}: the loss is not finite ({loss}); lower --lr or check the data; {keep}", state.step + 1),
            });
        }
        let grads = grads.ok_or_else(|| Error::Internal("no gradients".into()))?;
        let (grad_norm, rate) = trainer::apply_step(
            &student,
            &mut opt,
            &grads,
            &lr,
            state.step,
            opts.max_grad_norm,
        )?;
        state.step += 1;
        state.tokens += micro
            .iter()
            .map(|b| b.data.input_ids.len() as u64)
            .sum::<u64>();
        state.cursor = micro.last().map_or(state.cursor, |b| b.cursor);
        let signal = match opts.adaptive_signal {
            AdaptiveSignal::Kl => loss,
            AdaptiveSignal::Ce => stats.xent(),
        };
        state.schedule.update(signal);
        for b in micro {
            loader.recycle(b.data);
        }
        last = stats;
        let line = serde_json::json!({
            "step": state.step,
            "objective": opts.objective,
            "loss": loss,
            "t": t,
            "lr": rate,
            "tokens": state.tokens,
            "grad_norm": grad_norm,
            "train_ce": stats.ce(),
            "elapsed_s": run_started.elapsed().as_secs_f64(),
        });
        trainer::write_metrics_line(&metrics, &line)?;
        progress.set_position(state.step);
        progress.set_message(format!(
            "loss {loss:.4} t {t:.3} {:.0} tok/s",
            state.tokens as f64 / run_started.elapsed().as_secs_f64().max(1e-9)
        ));

        let eval_now = opts.eval_every > 0 && state.step.is_multiple_of(opts.eval_every);
        if let (true, Some((cache, m, shards))) =
            (eval_now || state.step == total_steps, &eval_source)
        {
            let e = run_eval(&student, cache, m, shards, opts)?;
            trainer::write_metrics_line(
                &metrics,
                &serde_json::json!({"step": state.step, "split": "eval", "ce": e.ce, "kl_teacher": e.kl_teacher, "t": t}),
            )?;
            eval = Some(e);
        }
        if opts.save_every > 0 && state.step.is_multiple_of(opts.save_every) {
            trainer::save_checkpoint(run_dir, &student, &opt, &state, tokenizer.as_deref())?;
            last_good = Some(state.step);
        }
    }
    progress.finish_and_clear();
    let final_dir = run_dir.join("final");
    student.save_hf(&final_dir, save_dtype, tokenizer.as_deref())?;

    let elapsed = started.elapsed().as_secs_f64();
    let wait = loader.wait_seconds();
    let summary = DistillSummary {
        steps: state.step,
        resumed_from: resume_from.map(|(n, _)| n),
        final_loss: last.loss(opts.objective),
        final_t: state.schedule.t(),
        eval,
        tokens: state.tokens,
        elapsed_s: elapsed,
        data_wait_s: wait,
        data_wait_share: wait / run_started.elapsed().as_secs_f64().max(1e-9),
    };
    writeln!(
        out,
        "{}: {} steps, final loss {:.4}, t {:.3}{}; {:.0} tokens/s, {:.2}% of the time waiting for data; student in {}",
        run_dir.display(),
        summary.steps,
        summary.final_loss,
        summary.final_t,
        match &summary.eval {
            Some(e) => format!(", eval ce {:.4} kl {:.4}", e.ce, e.kl_teacher),
            None => String::new(),
        },
        (summary.tokens - start_tokens) as f64 / summary.elapsed_s.max(1e-9),
        100.0 * summary.data_wait_share,
        final_dir.display()
    )
    .at(run_dir)?;
    Ok(summary)
}

fn run_eval(
    student: &Student,
    cache: &Path,
    m: &Manifest,
    units: &[Unit],
    opts: &DistillOptions,
) -> Result<EvalSummary> {
    let mut loader = Loader::new(
        cache,
        m,
        units,
        LoaderOptions::eval(opts.batch_size),
        Cursor::default(),
    )?;
    let s = trainer::evaluate(student, &mut loader, opts.tail)?;
    Ok(EvalSummary {
        ce: s.ce(),
        kl_teacher: s.kl(),
    })
}

fn progress_bar(enabled: bool, total: u64, start: u64) -> indicatif::ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} step {pos}/{len} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    bar
}
