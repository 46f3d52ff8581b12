//! The device step path: a whole optimizer step in candle tensor ops on the student's device.
//!
//! The host path ([`super::objectives`], [`super::optim::AdamW`]) computes the loss and its
//! gradient position by position on the CPU, and keeps AdamW's master weights in host memory.
//! On a GPU that would copy every chunk of `[positions × vocab]` logits to the host and back,
//! and every weight every step. This path keeps them where the student is:
//!
//! - [`DeviceBatch`] uploads a micro-batch once: token ids, the top-k ids and log-probs, the
//!   tail log-masses, the loss mask and the next-token labels;
//! - [`loss::chunk`] builds the sparse targets of every objective and tail and the gradient
//!   w.r.t. a chunk of logits with tensor ops (the completion rule of [`super::targets`],
//!   scattered into the chunk);
//! - [`optim::DeviceAdamW`] keeps the moments as tensors beside the weights and updates both in
//!   place of the old ones; [`optim::grad_norm`] reduces on the device;
//! - the step reads back four loss sums and the gradient norm: a few scalars.
//!
//! On CUDA this path is the default. On the CPU the host path is (it is faster there); the
//! environment variable `TAIDCACHE_STEP_PATH=device` runs this path on the CPU backend, a
//! testing aid: the test suite checks that it equals the host path step for step.
//!
//! [`traffic`] counts what the step path moves between host and device, so a test can assert
//! that this path moves no logits, gradients or weights.

pub mod loss;
pub mod optim;
pub mod traffic;

use candle_core::{DType, Device, Tensor};

use super::trainer::labels;
use crate::cache::ShardBatch;
use crate::error::{CandleContext, Error, Result};

/// The environment variable that chooses the step path.
pub const STEP_PATH_ENV: &str = "TAIDCACHE_STEP_PATH";

/// Where the loss, its gradient and the optimizer run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPath {
    /// Position by position on the CPU, f64 sums, host master weights (the CPU default).
    Host,
    /// Tensor ops on the student's device (the CUDA default).
    Device,
}

impl StepPath {
    /// The path for a student on `device`: [`STEP_PATH_ENV`] (`host` or `device`) if set, else
    /// the device path on CUDA and the host path on the CPU.
    pub fn for_device(device: &Device) -> Result<Self> {
        Self::choose(std::env::var(STEP_PATH_ENV).ok().as_deref(), device)
    }

    /// The path for a run with tail mode `tail`: `--tail sampled` has only the host path, which
    /// the default takes on CUDA too; asking for the device path with it is an error.
    pub fn for_run(device: &Device, tail: crate::distill::targets::TailMode) -> Result<Self> {
        let path = Self::for_device(device)?;
        if tail != crate::distill::targets::TailMode::Sampled || path == StepPath::Host {
            return Ok(path);
        }
        if std::env::var(STEP_PATH_ENV).is_ok_and(|v| v.trim() == "device") {
            return Err(Error::flag(
                "--tail",
                format!("sampled runs on the host step path only; unset {STEP_PATH_ENV}=device"),
            ));
        }
        Ok(StepPath::Host)
    }

    fn choose(env: Option<&str>, device: &Device) -> Result<Self> {
        match env.map(str::trim) {
            None | Some("") => Ok(if device.is_cpu() {
                StepPath::Host
            } else {
                StepPath::Device
            }),
            Some("host") => Ok(StepPath::Host),
            Some("device") => Ok(StepPath::Device),
            Some(other) => Err(Error::flag(
                STEP_PATH_ENV,
                format!("the environment variable must be `host` or `device`, found `{other}`"),
            )),
        }
    }
}

/// One micro-batch's inputs, uploaded to the device once.
pub struct DeviceBatch {
    /// `[positions, k]` u32
    pub ids: Tensor,
    /// `[positions, k]` f32
    pub logprobs: Tensor,
    /// `[positions, 1]` f32
    pub tail: Tensor,
    /// `[positions, 1]` u8: 1 where the position counts
    pub mask: Tensor,
    /// `[positions, 1]` u32: the next token, 0 where there is none
    pub labels: Tensor,
    /// `[positions, 1]` u8: 1 where the position has a next-token label
    pub has_label: Tensor,
}

/// The rows `start..start + n` of a [`DeviceBatch`] (views, no copies).
pub struct DeviceChunk {
    pub ids: Tensor,
    pub logprobs: Tensor,
    pub tail: Tensor,
    pub mask: Tensor,
    pub labels: Tensor,
    pub has_label: Tensor,
}

impl DeviceBatch {
    /// Upload the sparse records of `data` to `device` (counted in [`traffic`]).
    pub fn upload(data: &ShardBatch, device: &Device) -> Result<Self> {
        let p = data.rows() * data.seq_len;
        let k = data.k;
        let logprobs: Vec<f32> = data.topk_logprobs.iter().map(|x| x.to_f32()).collect();
        let labels = labels(data);
        let mask: Vec<u8> = data.loss_mask.iter().map(|&m| m as u8).collect();
        let has_label: Vec<u8> = labels.iter().map(|l| l.is_some() as u8).collect();
        let label_ids: Vec<u32> = labels.iter().map(|l| l.unwrap_or(0)).collect();
        let up = |t: candle_core::Result<Tensor>| t.ctx("uploading the batch");
        let batch = Self {
            ids: up(traffic::upload(&data.topk_ids, (p, k), device))?,
            logprobs: up(traffic::upload(&logprobs, (p, k), device))?,
            tail: up(traffic::upload(&data.tail_logmass, (p, 1), device))?,
            mask: up(traffic::upload(&mask, (p, 1), device))?,
            labels: up(traffic::upload(&label_ids, (p, 1), device))?,
            has_label: up(traffic::upload(&has_label, (p, 1), device))?,
        };
        Ok(batch)
    }

    /// Rows `start..start + n`.
    pub fn chunk(&self, start: usize, n: usize) -> Result<DeviceChunk> {
        let r = |t: &Tensor| t.narrow(0, start, n).ctx("loss chunk");
        Ok(DeviceChunk {
            ids: r(&self.ids)?,
            logprobs: r(&self.logprobs)?,
            tail: r(&self.tail)?,
            mask: r(&self.mask)?,
            labels: r(&self.labels)?,
            has_label: r(&self.has_label)?,
        })
    }
}

/// The four loss sums of a step as f64 scalars on the device, read back once per step.
pub struct DeviceSums {
    /// `[4]` f64: loss, target cross-entropy, CE on the labels, KL from the completed teacher.
    sums: Option<Tensor>,
}

impl DeviceSums {
    pub fn new() -> Self {
        Self { sums: None }
    }

    pub fn add(&mut self, chunk: Tensor) -> Result<()> {
        self.sums = Some(match self.sums.take() {
            None => chunk,
            Some(acc) => (acc + chunk).ctx("loss sums")?,
        });
        Ok(())
    }

    /// `[loss, target_xent, ce, kl]` on the host (32 bytes, counted in [`traffic`]).
    pub fn read(&self) -> Result<[f64; 4]> {
        match &self.sums {
            None => Ok([0.0; 4]),
            Some(t) => {
                let v = traffic::read_scalars(t).ctx("reading the loss sums")?;
                Ok([v[0], v[1], v[2], v[3]])
            }
        }
    }
}

impl Default for DeviceSums {
    fn default() -> Self {
        Self::new()
    }
}

/// A u8 `[n, 1]` flag as f32 (0 or 1).
fn as_f32(flag: &Tensor) -> candle_core::Result<Tensor> {
    flag.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests;
