//! The training loop: batches from the loader, student forward, sparse targets, backward,
//! AdamW, the TAID schedule, metrics, evaluation and checkpoints.
//!
//! The output projection's backward is done by hand, chunk by chunk over positions, so the
//! `[positions × vocab]` logits never exist all at once: for a chunk `c` with hidden states
//! `H_c` and gradient `G_c = ∂loss/∂logits_c` (from [`objectives::loss_and_grad`]),
//! `∂loss/∂H_c = G_c·W` and `∂loss/∂W += G_cᵀ·H_c`. The rest of the network gets its gradient
//! from one backward of the surrogate `Σ H ⊙ sg(∂loss/∂H)`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::loader::{Batch, Cursor, Loader};
use super::objectives::{self, Chunk, LossConfig, LossOutput, Objective};
use super::optim::{clip_factor, grad_norm, with_host_f32, AdamW};
use super::schedule::{LrSchedule, TaidSchedule};
use crate::cache::writer::ShardBatch;
use crate::error::{CandleContext, IoContext, Result};
use crate::model::train::Student;
use crate::model::Mode;

/// Logits are materialized for at most this many bytes per chunk (`[positions, vocab]` f32).
pub const LOSS_CHUNK_BYTES: usize = 64 << 20;

/// Everything a checkpoint needs besides the weights and the optimizer moments.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub step: u64,
    pub tokens: u64,
    pub schedule: TaidSchedule,
    pub cursor: Cursor,
}

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
    let (b, s, k) = (data.rows(), data.seq_len, data.k);
    let device = student.model.device().clone();
    let vocab = student.config.vocab_size;
    let ids = Tensor::from_slice(&data.input_ids, (b, s), &device).ctx("student input")?;
    let hidden = student
        .model
        .forward_hidden(&ids, Mode::Train)
        .ctx("student forward")?;
    let h = hidden.dim(2).ctx("student forward")?;
    let hidden = hidden.reshape((b * s, h)).ctx("student forward")?;
    let hd = hidden.detach();
    let w_var = student.lm_head_var();
    let w = w_var.as_tensor().detach();
    let logprobs: Vec<f32> = data.topk_logprobs.iter().map(|x| x.to_f32()).collect();
    let labels = labels(data);
    let scale = 1.0 / normalizer.max(1) as f32;

    let positions = b * s;
    let chunk = (LOSS_CHUNK_BYTES / 4 / vocab).max(1);
    let mut out = LossOutput::default();
    let mut grad_h = Vec::new();
    let mut grad_w: Option<Tensor> = None;
    let mut grad = vec![0f32; chunk.min(positions) * vocab];
    let mut start = 0;
    while start < positions {
        let n = chunk.min(positions - start);
        let hc = hd.narrow(0, start, n).ctx("loss chunk")?;
        let logits = hc.matmul(&w.t().ctx("lm_head")?).ctx("lm_head")?;
        let g = &mut grad[..n * vocab];
        let o = with_host_f32(&logits, |l| {
            let chunk = Chunk {
                logits: l,
                vocab,
                k,
                ids: &data.topk_ids[start * k..(start + n) * k],
                logprobs: &logprobs[start * k..(start + n) * k],
                tail: &data.tail_logmass[start..start + n],
                mask: &data.loss_mask[start..start + n],
                labels: &labels[start..start + n],
            };
            objectives::loss_and_grad(cfg, &chunk, g)
        })?;
        out += o;
        for x in g.iter_mut() {
            *x *= scale;
        }
        let gt = Tensor::from_slice(g, (n, vocab), &device).ctx("loss gradient")?;
        grad_h.push(gt.matmul(&w).ctx("lm_head backward")?);
        let gw = gt
            .t()
            .ctx("lm_head backward")?
            .matmul(&hc)
            .ctx("lm_head backward")?;
        grad_w = Some(match grad_w {
            None => gw,
            Some(acc) => (acc + gw).ctx("lm_head backward")?,
        });
        start += n;
    }
    let grad_h = Tensor::cat(&grad_h, 0).ctx("lm_head backward")?;
    let surrogate = (hidden * grad_h)
        .ctx("surrogate")?
        .sum_all()
        .ctx("surrogate")?;
    let mut grads = surrogate.backward().ctx("backward")?;
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
    Ok(out)
}

/// Evaluate the student on every batch of `loader`: CE on the tokens, KL from the cached teacher.
pub fn evaluate(
    student: &Student,
    loader: &mut Loader,
    tail: super::targets::TailMode,
) -> Result<StepStats> {
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
    while let Some(batch) = loader.next_batch() {
        let Batch { data, .. } = batch?;
        let (b, s, k) = (data.rows(), data.seq_len, data.k);
        let ids = Tensor::from_slice(&data.input_ids, (b, s), &device).ctx("eval input")?;
        let hidden = student
            .model
            .forward_hidden(&ids, Mode::Infer)
            .ctx("eval forward")?;
        let hidden = hidden
            .reshape((b * s, hidden.dim(2).ctx("eval")?))
            .ctx("eval")?;
        let logprobs: Vec<f32> = data.topk_logprobs.iter().map(|x| x.to_f32()).collect();
        let labels = labels(&data);
        let chunk = (LOSS_CHUNK_BYTES / 4 / vocab).max(1);
        let mut start = 0;
        while start < b * s {
            let n = chunk.min(b * s - start);
            let logits = hidden
                .narrow(0, start, n)
                .ctx("eval")?
                .matmul(&w.t().ctx("eval")?)
                .ctx("eval")?;
            let o = with_host_f32(&logits, |l| {
                let chunk = Chunk {
                    logits: l,
                    vocab,
                    k,
                    ids: &data.topk_ids[start * k..(start + n) * k],
                    logprobs: &logprobs[start * k..(start + n) * k],
                    tail: &data.tail_logmass[start..start + n],
                    mask: &data.loss_mask[start..start + n],
                    labels: &labels[start..start + n],
                };
                objectives::loss_only(&cfg, &chunk)
            })?;
            stats.add(&o);
            start += n;
        }
        loader.recycle(data);
    }
    Ok(stats)
}

/// One metrics line.
pub fn write_metrics_line(file: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .at(file)?;
    writeln!(f, "{value}").at(file)?;
    f.flush().at(file)
}

/// Keep the metrics lines of steps ≤ `step` (a resumed run rewrites what came after).
pub fn truncate_metrics(file: &Path, step: u64) -> Result<()> {
    if !file.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(file).at(file)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let tmp = file.with_extension("jsonl.tmp");
    std::fs::write(
        &tmp,
        kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .at(&tmp)?;
    std::fs::rename(&tmp, file).at(file)
}

/// `RUN/checkpoints/step-N` directories, sorted by N.
pub fn checkpoints(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run.join("checkpoints");
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&dir).at(&dir)? {
        let p = e.at(&dir)?.path();
        let n = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let (Some(n), true) = (n, p.is_dir()) {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Write `RUN/checkpoints/step-N` atomically: model files, optimizer moments, trainer state.
pub fn save_checkpoint(
    run: &Path,
    student: &Student,
    opt: &AdamW,
    state: &TrainerState,
    tokenizer: Option<&Path>,
) -> Result<PathBuf> {
    let dir = run.join("checkpoints").join(format!("step-{}", state.step));
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    student.write_hf_files(&tmp, DType::F32, tokenizer)?;
    opt.save(&tmp.join(OPTIMIZER_FILE))?;
    let state_path = tmp.join(STATE_FILE);
    std::fs::write(
        &state_path,
        serde_json::to_string_pretty(state).unwrap_or_default(),
    )
    .at(&state_path)?;
    std::fs::File::open(&state_path)
        .and_then(|f| f.sync_all())
        .at(&state_path)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).at(&dir)?;
    }
    std::fs::rename(&tmp, &dir).at(&dir)?;
    Ok(dir)
}

/// The global gradient norm before clipping, the step's learning rate, and the optimizer update.
pub fn apply_step(
    student: &Student,
    opt: &mut AdamW,
    grads: &GradStore,
    lr: &LrSchedule,
    step: u64,
    max_grad_norm: f64,
) -> Result<(f64, f64)> {
    let norm = grad_norm(&student.params, grads)?;
    let rate = lr.lr(step);
    opt.set_lr(rate);
    opt.step(grads, clip_factor(norm, max_grad_norm))?;
    Ok((norm, rate))
}

/// Measure wall time of a closure.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t0 = Instant::now();
    let v = f();
    (v, t0.elapsed().as_secs_f64())
}
