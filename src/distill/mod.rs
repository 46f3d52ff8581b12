//! The distill stage: train a student from a cache with sparse TAID (or a baseline objective).
//!
//! ```text
//! Cache → Loader (mmap, seeded order, prefetch) → Trainer::step: student forward → sparse
//!   targets → loss and gradient (chunked) → manual lm_head backward + surrogate backward →
//!   clipping → AdamW → TAID t update → MetricsLine, evaluation, checkpoints
//! ```
//!
//! Never loads the teacher. Owns `RUN/`: `run.json` (the run's identity), `metrics.jsonl`,
//! `checkpoints/step-N/`, `final/`.
//! [`run`] only orchestrates: it opens the cache and the student, resumes, and drives a
//! [`Trainer`] over the [`Loader`]'s batches.

pub mod calibration;
pub mod checkpoint;
mod cpu_head;
pub mod device;
pub mod identity;
pub mod loader;
pub mod metrics;
pub mod objectives;
pub mod optim;
pub mod options;
pub mod rundir;
pub mod schedule;
pub mod targets;
pub mod trainer;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::cache::{Cache, Unit};
use crate::error::{Error, IoContext, Result};
use crate::hash::sha256_file;
use crate::lock::{Access, DirLock};
use crate::model::config::ModelConfig;
use crate::model::memory::{DistillSettings, ForwardShape, MemoryPlan};
use crate::model::train::Student;
use crate::model::weights::{CONFIG_FILE, TOKENIZER_FILE};

use identity::RunIdentity;
use loader::{Cursor, Loader, LoaderOptions};
use metrics::{MetricsLine, METRICS_FILE};
pub use options::{AdaptiveSignal, DistillOptions, Precision};
use rundir::{Start, FINAL_DIR};
use targets::TailMode;
pub use trainer::Trainer;

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
    /// Expected calibration error of the student's top-1 probability (15 bins).
    pub ece: Option<f64>,
    /// Share of positions where the student's top-1 token is the teacher's.
    pub top1_agreement: Option<f64>,
}

/// Open `--cache` (or `--eval-cache`, named by `flag`): a directory holding a complete cache.
fn open_cache(dir: &Path, flag: &str) -> Result<Cache> {
    if !dir.is_dir() {
        return Err(Error::flag(
            flag,
            format!("{} is not a cache directory", dir.display()),
        ));
    }
    Cache::open_complete(dir)
}

/// Refuse a student whose context is shorter than the cache's sequences, naming its
/// `config.json` field.
fn check_context(student: &ModelConfig, cache: &Cache) -> Result<()> {
    let seq_len = cache.manifest().packing.seq_len;
    if student.max_position_embeddings < seq_len {
        return Err(Error::field(
            &student.path,
            "max_position_embeddings",
            format!(
                "{} is below the seq_len {seq_len} of the cache {}: the student cannot read its sequences; use a student with a longer context or a cache made with --seq-len {}",
                student.max_position_embeddings,
                cache.dir().display(),
                student.max_position_embeddings
            ),
        ));
    }
    Ok(())
}

/// Lock file of a run directory, held by the `distill` writing it (never deleted: see
/// [`crate::lock`]).
pub const RUN_LOCK_FILE: &str = ".lock";

/// Refuse an eval cache of another teacher than the training cache, unless `any_teacher`:
/// its KL would measure the distance to another model.
fn same_teacher(cache: &Cache, eval: &Cache, any_teacher: bool) -> Result<()> {
    match cache.manifest().teacher_diff(eval.manifest()) {
        Some(d) if !any_teacher => Err(Error::flag(
            "--eval-cache",
            format!(
                "{} was made by {} than --cache {} ({} differs: {} there, {} in --cache); \
                 evaluate on a cache of the same teacher, or pass --eval-cache-any-teacher",
                eval.dir().display(),
                d.what(),
                cache.dir().display(),
                d.field,
                d.theirs,
                d.ours
            ),
        )),
        _ => Ok(()),
    }
}

/// Run the distill stage. Metrics go to `RUN/metrics.jsonl`, a summary to `out`.
pub fn run(opts: &DistillOptions, out: &mut dyn Write) -> Result<DistillSummary> {
    let started = Instant::now();
    opts.validate()?;
    let device = opts
        .device
        .open()
        .map_err(|msg| Error::flag("--device", msg))?;
    let cache = open_cache(&opts.cache, "--cache")?;
    let eval_cache = match &opts.eval_cache {
        Some(dir) => Some(open_cache(dir, "--eval-cache")?),
        None => None,
    };
    let tokenizer = opts.student.join(TOKENIZER_FILE);
    let tokenizer = tokenizer.exists().then_some(tokenizer);
    let tok_sha = match &tokenizer {
        Some(t) => Some(sha256_file(t)?),
        None => None,
    };
    if let Some(eval) = &eval_cache {
        same_teacher(&cache, eval, opts.eval_cache_any_teacher)?;
    }
    if opts.tail == TailMode::Sampled {
        for (c, flag) in std::iter::once((&cache, "--cache"))
            .chain(eval_cache.iter().map(|c| (c, "--eval-cache")))
        {
            // A dense cache (k = vocabulary) has no tail to draw from, nor to complete.
            let m = c.manifest();
            if m.tail_draws == 0 && m.top_k < m.vocab_size {
                return Err(Error::flag(
                    "--tail",
                    format!(
                        "sampled needs tail draws, and the {flag} {} has none (make it with precompute --tail-samples N, or use --tail student)",
                        c.dir().display()
                    ),
                ));
            }
        }
    }
    let student_config = ModelConfig::from_file(&opts.student.join(CONFIG_FILE))?;
    for c in std::iter::once(&cache).chain(&eval_cache) {
        c.check_student(student_config.vocab_size, tok_sha.as_deref())?;
        check_context(&student_config, c)?;
    }

    // Data: training rows, and held-out rows (or a separate eval cache).
    let (train_units, eval_units) = cache.units(opts.eval_fraction)?;
    let eval_source: Option<(Cache, Vec<Unit>)> = match &eval_cache {
        Some(c) => {
            let (all, _) = c.units(0.0)?;
            Some((c.clone(), all))
        }
        None if !eval_units.is_empty() => Some((cache.clone(), eval_units)),
        None => None,
    };
    let train_rows: usize = train_units.iter().map(Unit::len).sum();
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
    let total_steps = match (opts.steps, opts.epochs) {
        (Some(n), _) => n,
        (None, Some(e)) => ((e * batches_per_epoch as f64) / opts.grad_accum as f64)
            .ceil()
            .max(1.0) as u64,
        (None, None) => unreachable!("validated"),
    };

    let path = device::StepPath::for_run(&device, opts.tail)?;
    trainer::check_precision(opts.precision, path)?;
    let (optimizer_copies, mut chunk_temporaries) = match path {
        device::StepPath::Host => (3, 4),
        device::StepPath::Device => (2, 12),
    };
    // `--precision bf16` holds a chunk's gradient split in two bf16 parts and packed once more.
    let bf16 = opts.precision == Precision::Bf16;
    if bf16 {
        chunk_temporaries += 2;
    }
    let memory = MemoryPlan::distill(
        &student_config,
        &DistillSettings {
            shape: ForwardShape {
                batch: opts.batch_size,
                seq_len: cache.manifest().packing.seq_len,
            },
            grad_accum: opts.grad_accum,
            optimizer_copies,
            loss_chunk_bytes: trainer::LOSS_CHUNK_BYTES,
            chunk_temporaries,
            projection_copies: if bf16 { 5 } else { 3 },
            on_cpu: device.is_cpu(),
            recompute: opts.recompute,
        },
    );
    if bf16 {
        let kernel = crate::model::bf16_products::Kernel::best();
        let advice = match kernel {
            crate::model::bf16_products::Kernel::Amx
            | crate::model::bf16_products::Kernel::Dpbf16 => "",
            crate::model::bf16_products::Kernel::Portable => "; --precision f32 is faster here",
        };
        writeln!(
            out,
            "--precision bf16: the output projection's products multiply bf16 operands with {}{advice}",
            kernel.name()
        )
        .at(&opts.out)?;
    }
    memory.announce(out, &opts.device, &device)?;

    // Loaded before `RUN/` is touched, so that a student that cannot be trained leaves no run.
    let initial = Student::from_dir(&opts.student, opts.seed, &device)?;
    let run_dir = &opts.out;
    let identity = RunIdentity::new(
        opts,
        cache.manifest(),
        eval_cache.as_ref().map(Cache::manifest),
        total_steps,
    )?;
    let metrics = run_dir.join(METRICS_FILE);
    rundir::check(opts)?;
    // Held to the end of the run, taken before anything changes what --out holds.
    let _lock = DirLock::acquire(
        run_dir,
        RUN_LOCK_FILE,
        Access::Exclusive,
        "taidcache distill",
        "--out",
    )?;
    let resume_from = match rundir::start(opts, &identity, out)? {
        Start::Finished { steps } => return finished_summary(&metrics, steps),
        Start::Resume { step, dir } => Some((step, dir)),
        Start::Fresh => None,
    };

    let student = match &resume_from {
        Some((_, dir)) => Student::from_dir(dir, opts.seed, &device)?,
        None => initial,
    };
    let mut trainer = Trainer::new(student, opts, total_steps)?;
    if let Some((n, dir)) = &resume_from {
        trainer.resume(dir)?;
        metrics::truncate_after(&metrics, *n)?;
        writeln!(out, "{}: resuming from step {n}", run_dir.display()).at(run_dir)?;
    }
    let start_tokens = trainer.state().tokens;

    let mut loader = Loader::new(
        &cache,
        &train_units,
        LoaderOptions::train(opts.batch_size, opts.seed),
        trainer.state().cursor,
    )?;
    let progress = progress_bar(opts.progress, total_steps, trainer.state().step);
    let mut last = trainer::StepStats::default();
    let mut eval = None;
    let run_started = Instant::now();
    let evaluate = |trainer: &Trainer, step: u64, t: f64| -> Result<Option<EvalSummary>> {
        let Some((cache, units)) = &eval_source else {
            return Ok(None);
        };
        let mut loader = Loader::new(
            cache,
            units,
            LoaderOptions::eval(opts.batch_size),
            Cursor::default(),
        )?;
        let (s, calibration) = trainer.eval(&mut loader)?;
        let e = EvalSummary {
            ce: s.ce(),
            kl_teacher: s.kl(),
            ece: calibration.ece(),
            top1_agreement: calibration.top1_agreement(),
        };
        metrics::append(
            &metrics,
            &MetricsLine {
                ece: e.ece,
                top1_agreement: e.top1_agreement,
                ..MetricsLine::eval(step, e.ce, e.kl_teacher, t)
            },
        )?;
        Ok(Some(e))
    };
    if trainer.state().step == 0 && opts.eval_every > 0 {
        // The starting point of the eval curve.
        evaluate(&trainer, 0, trainer.t())?;
    }
    while trainer.state().step < total_steps {
        let mut micro = Vec::with_capacity(opts.grad_accum);
        for _ in 0..opts.grad_accum {
            let batch = loader
                .next_batch()
                .ok_or_else(|| Error::Internal("the training loader ended".into()))??;
            micro.push(batch);
        }
        let report = trainer.step(&micro)?;
        for b in micro {
            loader.recycle(b.data);
        }
        let state = trainer.state();
        let step = state.step;
        metrics::append(
            &metrics,
            &MetricsLine {
                step,
                objective: Some(opts.objective),
                loss: Some(report.loss),
                t: Some(report.t),
                // The floor the step's t was bounded by: t_lin after the previous step.
                t_floor: opts
                    .objective
                    .is_taid()
                    .then(|| state.schedule.t_linear(step - 1).min(opts.t_end)),
                lr: Some(report.lr),
                tokens: Some(state.tokens),
                grad_norm: Some(report.grad_norm),
                train_ce: Some(report.stats.ce()),
                elapsed_s: Some(run_started.elapsed().as_secs_f64()),
                ..MetricsLine::default()
            },
        )?;
        progress.set_position(step);
        progress.set_message(format!(
            "loss {:.4} t {:.3} {:.0} tok/s",
            report.loss,
            report.t,
            state.tokens as f64 / run_started.elapsed().as_secs_f64().max(1e-9)
        ));
        last = report.stats;
        let eval_now = opts.eval_every > 0 && step.is_multiple_of(opts.eval_every);
        if eval_now || step == total_steps {
            // The eval line carries the t the step trained with.
            if let Some(e) = evaluate(&trainer, step, report.t)? {
                eval = Some(e);
            }
        }
        if opts.save_every > 0 && step.is_multiple_of(opts.save_every) {
            trainer.checkpoint(run_dir, tokenizer.as_deref())?;
        }
    }
    progress.finish_and_clear();
    let final_dir = run_dir.join(FINAL_DIR);
    trainer
        .student()
        .save_hf(&final_dir, opts.save_dtype.dtype(), tokenizer.as_deref())?;

    let elapsed = started.elapsed().as_secs_f64();
    let wait = loader.wait_seconds();
    let state = trainer.state();
    let summary = DistillSummary {
        steps: state.step,
        resumed_from: resume_from.map(|(n, _)| n),
        final_loss: last.loss(opts.objective),
        final_t: trainer.t(),
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

/// The summary of a run that had already finished, from its `metrics.jsonl`.
fn finished_summary(metrics: &Path, steps: u64) -> Result<DistillSummary> {
    let lines = metrics::read(metrics)?;
    let last = lines.iter().rev().find(|l| !l.is_eval());
    let eval = lines
        .iter()
        .rev()
        .find(|l| l.is_eval())
        .map(|l| EvalSummary {
            ce: l.ce.unwrap_or(f64::NAN),
            kl_teacher: l.kl_teacher.unwrap_or(f64::NAN),
            ece: l.ece,
            top1_agreement: l.top1_agreement,
        });
    Ok(DistillSummary {
        steps,
        resumed_from: Some(steps),
        final_loss: last.and_then(|l| l.loss).unwrap_or(f64::NAN),
        final_t: last.and_then(|l| l.t).unwrap_or(f64::NAN),
        eval,
        tokens: last.and_then(|l| l.tokens).unwrap_or(0),
        elapsed_s: 0.0,
        data_wait_s: 0.0,
        data_wait_share: 0.0,
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
