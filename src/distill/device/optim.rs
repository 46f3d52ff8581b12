//! AdamW and the gradient norm on the student's device.
//!
//! The master weights are the f32 variables themselves; the two moments are tensors on the same
//! device. One update is a few element-wise candle ops per parameter (on CUDA a few kernels),
//! the same formula as the host [`crate::distill::optim::AdamW`], and the saved state has the
//! same layout (`m.NAME`, `v.NAME`, `steps`), so a checkpoint written by either path resumes on
//! the other. The moments are copied to the host only when a checkpoint is saved.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::traffic;
use crate::distill::optim::{write_state, AdamWConfig, SavedState};
use crate::error::{CandleContext, Error, Result};

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

pub struct DeviceAdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    steps: u64,
}

impl DeviceAdamW {
    /// An optimizer over `params` (f32 variables), with zero moments on their device.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.zeros_like().ctx(name.clone())?;
                Ok(Slot {
                    decay: var.rank() >= 2,
                    m: zeros.clone(),
                    v: zeros,
                    name,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            slots,
            steps: 0,
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with every gradient multiplied by `grad_scale` (the clipping factor).
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        self.steps += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bc2 = 1.0 - c.beta2.powi(self.steps as i32);
        let step_size = c.lr / bc1;
        let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
        for slot in &mut self.slots {
            let grad = grads
                .get(slot.var.as_tensor())
                .ok_or_else(|| Error::MissingGradient(slot.name.clone()))?;
            let decay = if slot.decay {
                1.0 - c.lr * c.weight_decay
            } else {
                1.0
            };
            let update = || -> candle_core::Result<(Tensor, Tensor, Tensor)> {
                let g = grad.affine(grad_scale, 0.0)?;
                let m = (slot.m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?;
                let v = (slot.v.affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
                let denom = v.sqrt()?.affine(inv_sqrt_bc2, c.eps)?;
                let w = (slot.var.as_tensor().affine(decay, 0.0)?
                    - (m.affine(step_size, 0.0)? / denom)?)?;
                Ok((m, v, w))
            };
            let (m, v, w) = update().ctx(slot.name.clone())?;
            slot.var.set(&w).ctx(slot.name.clone())?;
            slot.m = m;
            slot.v = v;
        }
        Ok(())
    }

    /// Save the moments and the step count, in the host optimizer's layout.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut moments = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            for (prefix, t) in [("m", &s.m), ("v", &s.v)] {
                traffic::count_to_host(t.elem_count() * 4);
                let host = t.to_device(&Device::Cpu).ctx("save")?;
                moments.push((format!("{prefix}.{}", s.name), host));
            }
        }
        write_state(path, self.steps, moments)
    }

    /// Load what [`save`](Self::save) (or the host optimizer) wrote, for the same parameters.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let state = SavedState::read(path)?;
        self.steps = state.steps;
        for s in &mut self.slots {
            let upload = |prefix: &str| -> Result<Tensor> {
                let t = state.moment(prefix, &s.name, s.var.dims())?;
                traffic::count_to_device(t.elem_count() * 4);
                t.to_dtype(DType::F32)
                    .and_then(|t| t.to_device(s.var.device()))
                    .ctx(format!("{prefix}.{}", s.name))
            };
            s.m = upload("m")?;
            s.v = upload("v")?;
        }
        Ok(())
    }
}

/// The global L2 norm of the gradients of `params`: squares summed on the device per tensor
/// (f32), across tensors in f64, and one scalar read back.
pub fn grad_norm(params: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut parts = Vec::with_capacity(params.len());
    for (name, var) in params {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::MissingGradient(name.clone()))?;
        let sq = g
            .sqr()
            .and_then(|s| s.sum_all())
            .and_then(|s| s.to_dtype(DType::F64))
            .ctx(name.clone())?;
        parts.push(sq);
    }
    let total = Tensor::stack(&parts, 0)
        .and_then(|t| t.sum_all())
        .ctx("gradient norm")?;
    let v = traffic::read_scalars(&total).ctx("gradient norm")?;
    Ok(v[0].sqrt())
}
