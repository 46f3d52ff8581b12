//! [`Trainer`]: one optimizer step (micro-batches → student forward → sparse targets → loss and
//! gradient → backward → clipping → AdamW → TAID t update), evaluation, and checkpoints.
//!
//! The output projection's backward is done by hand, chunk by chunk over positions, so the
//! `[positions × vocab]` logits never exist all at once: for a chunk `c` with hidden states
//! `H_c` and gradient `G_c = ∂loss/∂logits_c` (from [`objectives::loss_and_grad`]),
//! `∂loss/∂H_c = G_c·W` and `∂loss/∂W += G_cᵀ·H_c`. The rest of the network gets its gradient
//! from one backward of the surrogate `Σ H ⊙ sg(∂loss/∂H)`.

use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::calibration::Calibration;
use super::checkpoint::{self, TrainerState};
use super::device::{self, DeviceBatch, DeviceSums, StepPath};
use super::loader::{Batch, Cursor, Loader};
use super::objectives::{self, Chunk, LossConfig, LossOutput, Objective};
use super::optim::{clip_factor, with_host_f32, AdamWConfig, Optimizer};
use super::options::{AdaptiveSignal, DistillOptions, Precision};
use super::schedule::{LrSchedule, TaidSchedule};
use crate::cache::ShardBatch;
use crate::error::{CandleContext, Error, Result};
use crate::model::decoder::TrainForward;
use crate::model::train::Student;
use crate::model::Mode;

/// Logits are materialized for at most this many bytes per chunk (`[positions, vocab]` f32).
pub const LOSS_CHUNK_BYTES: usize = 64 << 20;

/// Sums over one optimizer step (all micro-batches): the objectives' own sums.
pub type StepStats = LossOutput;

impl StepStats {
    pub fn add(&mut self, o: &LossOutput) {
        *self += *o;
    }

    /// The token-weighted mean of the optimized loss.
    pub fn loss(&self, objective: Objective) -> f64 {
        self.loss_sum / self.normalizer(objective).max(1) as f64
    }

    pub fn normalizer(&self, objective: Objective) -> usize {
        if objective == Objective::Ce {
            self.ce_positions
        } else {
            self.positions
        }
    }

    pub fn xent(&self) -> f64 {
        self.target_xent_sum / self.positions.max(1) as f64
    }

    pub fn ce(&self) -> f64 {
        self.ce_sum / self.ce_positions.max(1) as f64
    }

    pub fn kl(&self) -> f64 {
        self.kl_sum / self.positions.max(1) as f64
    }
}

/// The first sequence of `micro` whose cached teacher values are NaN or +inf (−inf is a valid
/// tail log-mass: the top-k held all the probability).
pub fn non_finite_targets(micro: &[Batch]) -> Option<u64> {
    micro.iter().find_map(|b| {
        let d = &b.data;
        let (s, k) = (d.seq_len, d.k);
        (0..d.rows()).find_map(|r| {
            let bad_lp = d.topk_logprobs[r * s * k..(r + 1) * s * k]
                .iter()
                .any(|x| x.is_nan() || *x == half::f16::INFINITY);
            let bad_tail = d.tail_logmass[r * s..(r + 1) * s]
                .iter()
                .any(|x| x.is_nan() || *x == f32::INFINITY);
            (bad_lp || bad_tail).then(|| d.seq_ids[r])
        })
    })
}

/// Next-token labels of one batch: position i's label is token i+1 when both are unmasked.
pub fn labels(data: &ShardBatch) -> Vec<Option<u32>> {
    let s = data.seq_len;
    (0..data.rows() * s)
        .map(|p| {
            let i = p % s;
            (i + 1 < s && data.loss_mask[p] && data.loss_mask[p + 1]).then(|| data.input_ids[p + 1])
        })
        .collect()
}

/// `--precision bf16` runs on the host step path only (`cpu_head`).
pub(super) fn check_precision(precision: Precision, path: StepPath) -> Result<()> {
    if precision == Precision::Bf16 && path == StepPath::Device {
        return Err(Error::flag(
            "--precision",
            format!(
                "bf16 runs on the host step path only; unset {}=device",
                device::STEP_PATH_ENV
            ),
        ));
    }
    Ok(())
}

/// Counted positions of a batch for `objective`, known before any forward: the normalizer of the
/// token-weighted mean across the micro-batches of a step.
pub fn count_positions(data: &ShardBatch, objective: Objective) -> usize {
    if objective == Objective::Ce {
        labels(data).iter().filter(|l| l.is_some()).count()
    } else {
        data.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// Loss and gradients of one micro-batch; gradients are scaled by `1 / normalizer` and added
/// into `acc` (created on the first micro-batch).
pub fn micro_batch(
    student: &Student,
    data: &ShardBatch,
    cfg: &LossConfig,
    normalizer: usize,
    acc: &mut Option<GradStore>,
) -> Result<LossOutput> {
    if student.model.device().is_cpu() && student.lm_head_var().dtype() == candle_core::DType::F32 {
        return super::cpu_head::micro_batch(student, data, cfg, normalizer, acc);
    }
    micro_batch_candle(student, data, cfg, normalizer, acc)
}

/// [`micro_batch`] in candle ops (a student on a GPU with the host step path; on the CPU,
/// [`super::cpu_head`] does the same without them).
pub(super) fn micro_batch_candle(
    student: &Student,
    data: &ShardBatch,
    cfg: &LossConfig,
    normalizer: usize,
    acc: &mut Option<GradStore>,
) -> Result<LossOutput> {
    let (b, s) = (data.rows(), data.seq_len);
    let device = student.model.device().clone();
    let vocab = student.config.vocab_size;
    let ids = Tensor::from_slice(&data.input_ids, (b, s), &device).ctx("student input")?;
    let (forward, hidden) = train_forward(student, &ids)?;
    let hd = hidden.detach();
    let w_var = student.lm_head_var();
    let w = w_var.as_tensor().detach();
    let scale = 1.0 / normalizer.max(1) as f32;
    let mut out = LossOutput::default();
    let mut grad_h = Vec::new();
    let mut grad_w: Option<Tensor> = None;
    // Zeroed by the allocator (calloc): the pages of positions the loss never writes (masked
    // ones) are never touched, which keeps them out of the resident set.
    let mut grad = vec![0f32; chunk_rows(vocab).min(b * s) * vocab];
    for_each_chunk(&hd, &w, data, vocab, |hc, chunk| {
        let g = &mut grad[..chunk.positions() * vocab];
        out += objectives::loss_and_grad(cfg, &chunk, g);
        for x in g.iter_mut() {
            *x *= scale;
        }
        let gt = Tensor::from_slice(g, (chunk.positions(), vocab), &device).ctx("loss gradient")?;
        grad_h.push(gt.matmul(&w).ctx("lm_head backward")?);
        let gw = gt
            .t()
            .ctx("lm_head backward")?
            .matmul(hc)
            .ctx("lm_head backward")?;
        grad_w = Some(match grad_w.take() {
            None => gw,
            Some(acc) => (acc + gw).ctx("lm_head backward")?,
        });
        Ok(())
    })?;
    finish_backward(student, forward, &hidden, grad_h, grad_w, acc)?;
    Ok(out)
}

/// The student's training forward on `ids` `[b, t]`, and its hidden states as `[b·t, hidden]`.
pub(super) fn train_forward(student: &Student, ids: &Tensor) -> Result<(TrainForward, Tensor)> {
    let forward = student
        .model
        .forward_train_in(ids, student.recompute, student.train_kernels)
        .ctx("student forward")?;
    let (b, t, h) = forward.hidden.dims3().ctx("student forward")?;
    let hidden = forward.hidden.reshape((b * t, h)).ctx("student forward")?;
    Ok((forward, hidden))
}

/// The rest of a micro-batch's backward once the output projection's is done: one backward of
/// the surrogate `Σ H ⊙ sg(∂loss/∂H)` (`grad_h`: the chunks of `∂loss/∂H` in order), the
/// projection's own gradient `grad_w` added, and everything accumulated into `acc`.
pub(super) fn finish_backward(
    student: &Student,
    forward: TrainForward,
    hidden: &Tensor,
    grad_h: Vec<Tensor>,
    grad_w: Option<Tensor>,
    acc: &mut Option<GradStore>,
) -> Result<()> {
    let w_var = student.lm_head_var();
    let grad_h = Tensor::cat(&grad_h, 0).ctx("lm_head backward")?;
    let surrogate = (hidden * grad_h)
        .ctx("surrogate")?
        .sum_all()
        .ctx("surrogate")?;
    let grads = surrogate.backward().ctx("backward")?;
    let mut grads = student
        .model
        .backward_through_layers(forward, grads)
        .ctx("backward")?;
    if let Some(gw) = grad_w {
        let total = match grads.remove(w_var.as_tensor()) {
            Some(g) => (g + gw).ctx("lm_head gradient")?,
            None => gw,
        };
        grads.insert(w_var.as_tensor(), total);
    }
    match acc {
        None => *acc = Some(grads),
        Some(store) => {
            for (_, var) in &student.params {
                if let Some(g) = grads.remove(var.as_tensor()) {
                    let sum = match store.remove(var.as_tensor()) {
                        Some(prev) => (prev + g).ctx("gradient accumulation")?,
                        None => g,
                    };
                    store.insert(var.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

/// [`micro_batch`] on the device path: the batch is uploaded once, every chunk's loss and
/// gradient are tensor ops on the student's device ([`device::loss::chunk`]), and the loss sums
/// are added into `sums` there. The returned [`LossOutput`] holds the position counts only.
pub fn micro_batch_device(
    student: &Student,
    data: &ShardBatch,
    cfg: &LossConfig,
    normalizer: usize,
    acc: &mut Option<GradStore>,
    sums: &mut DeviceSums,
) -> Result<LossOutput> {
    let (b, s) = (data.rows(), data.seq_len);
    let device = student.model.device().clone();
    let vocab = student.config.vocab_size;
    let ids = device::traffic::upload(&data.input_ids, (b, s), &device).ctx("student input")?;
    let batch = DeviceBatch::upload(data, &device)?;
    let (forward, hidden) = train_forward(student, &ids)?;
    let hd = hidden.detach();
    let w = student.lm_head_var().as_tensor().detach();
    let wt = w.t().ctx("lm_head")?;
    let scale = 1.0 / normalizer.max(1) as f64;
    let mut grad_h = Vec::new();
    let mut grad_w: Option<Tensor> = None;
    let positions = b * s;
    let rows = chunk_rows(vocab);
    let mut start = 0;
    while start < positions {
        let n = rows.min(positions - start);
        let hc = hd.narrow(0, start, n).ctx("loss chunk")?;
        let logits = hc.matmul(&wt).ctx("lm_head")?;
        let (chunk_sums, g) =
            device::loss::chunk(cfg, &logits, &batch.chunk(start, n)?, Some(scale))?;
        sums.add(chunk_sums)?;
        let g = g.ok_or_else(|| Error::Internal("no loss gradient".into()))?;
        grad_h.push(g.matmul(&w).ctx("lm_head backward")?);
        let gw = g
            .t()
            .ctx("lm_head backward")?
            .matmul(&hc)
            .ctx("lm_head backward")?;
        grad_w = Some(match grad_w.take() {
            None => gw,
            Some(acc) => (acc + gw).ctx("lm_head backward")?,
        });
        start += n;
    }
    finish_backward(student, forward, &hidden, grad_h, grad_w, acc)?;
    Ok(counts(data))
}

/// The position counts of a batch (the sums left at zero).
fn counts(data: &ShardBatch) -> LossOutput {
    LossOutput {
        positions: data.loss_mask.iter().filter(|&&m| m).count(),
        ce_positions: labels(data).iter().filter(|l| l.is_some()).count(),
        ..LossOutput::default()
    }
}

/// Fill the sums of `out` from the device's `[loss, target_xent, ce, kl]`.
fn with_sums(mut out: LossOutput, sums: [f64; 4]) -> LossOutput {
    out.loss_sum = sums[0];
    out.target_xent_sum = sums[1];
    out.ce_sum = sums[2];
    out.kl_sum = sums[3];
    out
}

/// Positions per chunk of logits at `vocab`: at most [`LOSS_CHUNK_BYTES`] of f32, at least one.
pub(super) fn chunk_rows(vocab: usize) -> usize {
    (LOSS_CHUNK_BYTES / 4 / vocab).max(1)
}

/// A batch's teacher records as the loss reads them: log-probs in f32, next-token labels.
pub(super) struct Records<'a> {
    data: &'a ShardBatch,
    logprobs: Vec<f32>,
    draw_logprobs: Vec<f32>,
    labels: Vec<Option<u32>>,
}

impl<'a> Records<'a> {
    pub(super) fn new(data: &'a ShardBatch) -> Self {
        Self {
            data,
            logprobs: data.topk_logprobs.iter().map(|x| x.to_f32()).collect(),
            draw_logprobs: data.draw_logprobs.iter().map(|x| x.to_f32()).collect(),
            labels: labels(data),
        }
    }

    /// The [`Chunk`] of positions `start .. start + n` with their `logits` `[n, vocab]`.
    pub(super) fn chunk<'l>(
        &'l self,
        logits: &'l [f32],
        vocab: usize,
        start: usize,
        n: usize,
    ) -> Chunk<'l> {
        let (d, k) = (self.data, self.data.k);
        Chunk {
            logits,
            vocab,
            k,
            ids: &d.topk_ids[start * k..(start + n) * k],
            logprobs: &self.logprobs[start * k..(start + n) * k],
            tail: &d.tail_logmass[start..start + n],
            mask: &d.loss_mask[start..start + n],
            labels: &self.labels[start..start + n],
            draws: d.draws,
            draw_ids: &d.draw_ids[start * d.draws..(start + n) * d.draws],
            draw_logprobs: &self.draw_logprobs[start * d.draws..(start + n) * d.draws],
        }
    }
}

/// The one loop over a batch's positions in chunks of at most [`LOSS_CHUNK_BYTES`] of logits:
/// `f(hidden_chunk, chunk)` gets each chunk's hidden states `[n, hidden]` and its logits
/// (`hidden_chunk · wᵀ`, on the host) with their sparse teacher records. `hidden`:
/// `[positions, hidden]`, `w`: `[vocab, hidden]`.
fn for_each_chunk(
    hidden: &Tensor,
    w: &Tensor,
    data: &ShardBatch,
    vocab: usize,
    mut f: impl FnMut(&Tensor, Chunk<'_>) -> Result<()>,
) -> Result<()> {
    let positions = data.rows() * data.seq_len;
    let records = Records::new(data);
    let wt = w.t().ctx("lm_head")?;
    let rows = chunk_rows(vocab);
    let mut start = 0;
    while start < positions {
        let n = rows.min(positions - start);
        let hc = hidden.narrow(0, start, n).ctx("loss chunk")?;
        let logits = hc.matmul(&wt).ctx("lm_head")?;
        with_host_f32(&logits, |l| f(&hc, records.chunk(l, vocab, start, n)))??;
        start += n;
    }
    Ok(())
}

/// Evaluate the student on every batch of `loader`: CE on the tokens, KL from the cached
/// teacher, and its calibration and top-1 agreement with the teacher.
pub fn evaluate(
    student: &Student,
    loader: &mut Loader,
    tail: super::targets::TailMode,
    path: StepPath,
) -> Result<(StepStats, Calibration)> {
    if path == StepPath::Device {
        return evaluate_device(student, loader, tail);
    }
    let cfg = LossConfig {
        objective: Objective::Kl,
        tail,
        t: 1.0,
        lambda: 0.1,
        ce_weight: 0.0,
    };
    let device = student.model.device().clone();
    let vocab = student.config.vocab_size;
    let w = student.lm_head_var().as_tensor().detach();
    let mut stats = StepStats::default();
    let mut calibration = Calibration::default();
    while let Some(batch) = loader.next_batch() {
        let Batch { data, .. } = batch?;
        let (b, s) = (data.rows(), data.seq_len);
        let ids = Tensor::from_slice(&data.input_ids, (b, s), &device).ctx("eval input")?;
        let hidden = student
            .model
            .forward_hidden(&ids, Mode::Infer)
            .ctx("eval forward")?;
        let hidden = hidden
            .reshape((b * s, hidden.dim(2).ctx("eval")?))
            .ctx("eval")?;
        for_each_chunk(&hidden, &w, &data, vocab, |_, chunk| {
            stats.add(&objectives::loss_only(&cfg, &chunk));
            let k = chunk.k;
            calibration.add_host(chunk.logits, vocab, chunk.labels, chunk.mask, |i| {
                teacher_top1(
                    &chunk.ids[i * k..(i + 1) * k],
                    &chunk.logprobs[i * k..(i + 1) * k],
                )
            });
            Ok(())
        })?;
        loader.recycle(data);
    }
    Ok((stats, calibration))
}

/// The teacher's likeliest id of one cached record: the largest log-prob's (the first of a
/// rank-ordered record; a compact cache stores its records by id).
fn teacher_top1<L: Copy + PartialOrd>(ids: &[u32], logprobs: &[L]) -> u32 {
    let mut best = 0;
    for (j, &l) in logprobs.iter().enumerate() {
        if l > logprobs[best] {
            best = j;
        }
    }
    ids[best]
}

/// [`evaluate`] on the device path: the sums stay on the device until the end.
fn evaluate_device(
    student: &Student,
    loader: &mut Loader,
    tail: super::targets::TailMode,
) -> Result<(StepStats, Calibration)> {
    let cfg = LossConfig {
        objective: Objective::Kl,
        tail,
        t: 1.0,
        lambda: 0.1,
        ce_weight: 0.0,
    };
    let device = student.model.device().clone();
    let vocab = student.config.vocab_size;
    let wt = student
        .lm_head_var()
        .as_tensor()
        .detach()
        .t()
        .ctx("lm_head")?;
    let mut stats = StepStats::default();
    let mut calibration = Calibration::default();
    let mut sums = DeviceSums::new();
    while let Some(batch) = loader.next_batch() {
        let Batch { data, .. } = batch?;
        let (b, s) = (data.rows(), data.seq_len);
        let ids = device::traffic::upload(&data.input_ids, (b, s), &device).ctx("eval input")?;
        let records = DeviceBatch::upload(&data, &device)?;
        let labels = labels(&data);
        let hidden = student
            .model
            .forward_hidden(&ids, Mode::Infer)
            .ctx("eval forward")?;
        let hidden = hidden
            .reshape((b * s, hidden.dim(2).ctx("eval")?))
            .ctx("eval")?;
        let rows = chunk_rows(vocab);
        let mut start = 0;
        while start < b * s {
            let n = rows.min(b * s - start);
            let logits = hidden
                .narrow(0, start, n)
                .and_then(|h| h.matmul(&wt))
                .ctx("lm_head")?;
            sums.add(device::loss::chunk(&cfg, &logits, &records.chunk(start, n)?, None)?.0)?;
            let k = data.k;
            calibration.add_tensor(
                &logits,
                &labels[start..start + n],
                &data.loss_mask[start..start + n],
                |i| {
                    let r = (start + i) * k..(start + i + 1) * k;
                    teacher_top1(&data.topk_ids[r.clone()], &data.topk_logprobs[r])
                },
            )?;
            start += n;
        }
        stats.add(&counts(&data));
        loader.recycle(data);
    }
    Ok((with_sums(stats, sums.read()?), calibration))
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// The token-weighted mean of the optimized loss over the step's micro-batches.
    pub loss: f64,
    /// The interpolation t the step trained with.
    pub t: f64,
    /// The learning rate of the step.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The step's sums, for the cross-entropy on the labels and the KL.
    pub stats: StepStats,
}

/// A student being trained: its optimizer, schedules and position in the data.
pub struct Trainer {
    student: Student,
    /// Where the loss, the gradient norm and the optimizer run.
    path: StepPath,
    opt: Optimizer,
    state: TrainerState,
    lr: LrSchedule,
    /// The run's options: objective, tail, λ, clipping, the adaptive signal.
    opts: DistillOptions,
    /// The last checkpoint written or resumed from, for the message of a diverged run.
    last_checkpoint: Option<PathBuf>,
}

impl Trainer {
    /// A fresh run of `total_steps` optimizer steps of `student` with `opts`.
    /// The step path is [`StepPath::for_device`]'s for the student's device.
    pub fn new(student: Student, opts: &DistillOptions, total_steps: u64) -> Result<Self> {
        let path = StepPath::for_run(student.model.device(), opts.tail)?;
        Self::with_step_path(student, opts, total_steps, path)
    }

    /// [`new`](Self::new) on a given step path.
    pub fn with_step_path(
        mut student: Student,
        opts: &DistillOptions,
        total_steps: u64,
        path: StepPath,
    ) -> Result<Self> {
        student.recompute = opts.recompute;
        check_precision(opts.precision, path)?;
        student.bf16_output_products = opts.precision == Precision::Bf16;
        let opt = Optimizer::new(
            path,
            student.params.clone(),
            AdamWConfig::with_lr_and_decay(opts.lr, opts.weight_decay),
        )?;
        let adaptive = opts.objective == Objective::Taid;
        Ok(Self {
            student,
            path,
            opt,
            state: TrainerState {
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
            },
            lr: LrSchedule {
                base_lr: opts.lr,
                warmup_steps: opts.warmup,
                total_steps,
                min_lr_ratio: 0.0,
            },
            opts: opts.clone(),
            last_checkpoint: None,
        })
    }

    /// Continue from the checkpoint in `dir` (whose model files the student was loaded from):
    /// the optimizer moments and the trainer state.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        self.state = checkpoint::load_state(dir)?;
        self.opt.load(&dir.join(checkpoint::OPTIMIZER_FILE))?;
        self.last_checkpoint = Some(dir.to_path_buf());
        Ok(())
    }

    pub fn student(&self) -> &Student {
        &self.student
    }

    /// Where this trainer's steps run.
    pub fn step_path(&self) -> StepPath {
        self.path
    }

    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The TAID interpolation of the next step.
    pub fn t(&self) -> f64 {
        self.state.schedule.t()
    }

    /// One optimizer step over `micro` (the step's micro-batches, each followed by its cursor):
    /// loss and gradients, clipping, AdamW, the TAID update. A non-finite loss is
    /// [`Error::Diverged`] and changes nothing.
    pub fn step(&mut self, micro: &[Batch]) -> Result<StepReport> {
        let t = self.t();
        let cfg = self.opts.loss_config(t);
        let normalizer: usize = micro
            .iter()
            .map(|b| count_positions(&b.data, self.opts.objective))
            .sum();
        let mut grads = None;
        let mut stats = StepStats::default();
        match self.path {
            StepPath::Host => {
                for b in micro {
                    let o = micro_batch(&self.student, &b.data, &cfg, normalizer, &mut grads)?;
                    stats.add(&o);
                }
            }
            StepPath::Device => {
                let mut sums = DeviceSums::new();
                for b in micro {
                    let o = micro_batch_device(
                        &self.student,
                        &b.data,
                        &cfg,
                        normalizer,
                        &mut grads,
                        &mut sums,
                    )?;
                    stats.add(&o);
                }
                stats = with_sums(stats, sums.read()?);
            }
        }
        let loss = stats.loss(self.opts.objective);
        if !loss.is_finite() {
            let why = match non_finite_targets(micro) {
                Some(seq) => format!(
                    "the cached teacher values of sequence {seq} are not finite (NaN or +inf): the cache is damaged; check it with `taidcache verify`"
                ),
                None => match self.student.first_non_finite()? {
                    Some(name) => format!(
                        "the student's weights (tensor `{name}`) became non-finite in the updates before; lower --lr or --max-grad-norm"
                    ),
                    None => "the student's logits overflowed; lower --lr".to_string(),
                },
            };
            return Err(Error::Diverged {
                step: self.state.step + 1,
                what: format!("the loss is not finite ({loss}): {why}"),
                last_checkpoint: self.last_checkpoint.clone(),
            });
        }
        let grads = grads.ok_or_else(|| Error::Internal("no gradients".into()))?;
        let grad_norm = self.opt.grad_norm(&self.student.params, &grads)?;
        let lr = self.lr.lr(self.state.step);
        self.opt.set_lr(lr);
        self.opt
            .step(&grads, clip_factor(grad_norm, self.opts.max_grad_norm))?;
        self.state.step += 1;
        self.state.tokens += micro
            .iter()
            .map(|b| b.data.input_ids.len() as u64)
            .sum::<u64>();
        self.state.cursor = micro.last().map_or(self.state.cursor, |b| b.cursor);
        self.state.schedule.update(match self.opts.adaptive_signal {
            AdaptiveSignal::Kl => loss,
            AdaptiveSignal::Ce => stats.xent(),
        });
        Ok(StepReport {
            loss,
            t,
            lr,
            grad_norm,
            stats,
        })
    }

    /// Held-out CE and KL from the teacher, calibration and top-1 agreement, over every batch
    /// of `loader`.
    pub fn eval(&self, loader: &mut Loader) -> Result<(StepStats, Calibration)> {
        evaluate(&self.student, loader, self.opts.tail, self.path)
    }

    /// Write `RUN/checkpoints/step-N` for the current step.
    /// Weights that are no longer finite are [`Error::Diverged`] and never saved.
    pub fn checkpoint(&mut self, run: &Path, tokenizer: Option<&Path>) -> Result<PathBuf> {
        if let Some(name) = self.student.first_non_finite()? {
            return Err(Error::Diverged {
                step: self.state.step,
                what: format!(
                    "the student's weights (tensor `{name}`) are not finite after the update; lower --lr or --max-grad-norm"
                ),
                last_checkpoint: self.last_checkpoint.clone(),
            });
        }
        let dir = checkpoint::save(run, &self.student, &self.opt, &self.state, tokenizer)?;
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_teachers_top1_is_the_likeliest_id_of_a_record_in_either_order() {
        // Rank order (plain), and sorted by id (compact): the same record, the same top-1.
        assert_eq!(teacher_top1(&[9, 3, 5], &[-0.2f32, -1.5, -2.0]), 9);
        assert_eq!(teacher_top1(&[3, 5, 9], &[-1.5f32, -2.0, -0.2]), 9);
        let lp = [-1.5, -2.0, -0.2].map(half::f16::from_f32);
        assert_eq!(teacher_top1(&[3, 5, 9], &lp), 9);
    }
    use half::f16;

    fn batch(seq_ids: &[u64], bad: Option<(usize, bool)>) -> Batch {
        let (s, k) = (2, 2);
        let mut d = ShardBatch::new(s, k);
        d.seq_ids.extend_from_slice(seq_ids);
        let rows = seq_ids.len();
        d.topk_logprobs = vec![f16::from_f32(-0.7); rows * s * k];
        // −inf tail log-mass is valid (the top-k held all the probability).
        d.tail_logmass = vec![f32::NEG_INFINITY; rows * s];
        if let Some((row, in_tail)) = bad {
            if in_tail {
                d.tail_logmass[row * s + 1] = f32::NAN;
            } else {
                d.topk_logprobs[row * s * k + 3] = f16::INFINITY;
            }
        }
        Batch {
            data: d,
            cursor: Cursor::default(),
        }
    }

    #[test]
    fn non_finite_cached_values_name_their_sequence_and_neg_inf_tails_pass() {
        assert_eq!(non_finite_targets(&[batch(&[4, 5], None)]), None);
        let micro = [batch(&[4, 5], None), batch(&[8, 9], Some((1, false)))];
        assert_eq!(non_finite_targets(&micro), Some(9));
        assert_eq!(
            non_finite_targets(&[batch(&[6, 7], Some((0, true)))]),
            Some(6)
        );
    }
}
