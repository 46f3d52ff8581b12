//! A fused AdamW over flat f32 buffers.
//!
//! candle-nn's `AdamW` runs about ten tensor ops per variable and step, each allocating a new
//! tensor. Here every parameter keeps its two moments as plain `Vec<f32>`; one rayon pass per
//! parameter reads the gradient, updates the moments and the weights in place. A variable that
//! is an f32 tensor on the CPU is updated in its own buffer (a candle in-place op, no copy);
//! any other keeps an f32 master copy on the host, copied into the `Var` once per step. The update is PyTorch's AdamW
//! (decoupled weight decay, bias-corrected moments), so it matches `candle_nn::AdamW` step for
//! step (tested).
//!
//! Weight decay applies to matrices only (rank ≥ 2); norms and biases are not decayed, as in the
//! usual transformer recipes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;

use crate::error::{CandleContext, Error, IoContext, Result};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// The defaults with a run's learning rate and weight decay (what `distill` trains with).
    pub fn with_lr_and_decay(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            weight_decay,
            ..Self::default()
        }
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    /// An f32 CPU tensor: updated in its own buffer, without `weights`.
    in_place: bool,
    /// The f32 master copy of a variable that is not updated in place (else empty).
    weights: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    decay: bool,
}

pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    /// Optimizer steps taken (the `t` of the bias correction).
    steps: u64,
}

/// Run `f` on a host f32 view of `t` (copied only when `t` is not a contiguous f32 CPU tensor).
/// Counted in [`super::device::traffic`] as bytes moved to the host.
pub fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    super::device::traffic::count_to_host(t.elem_count() * t.dtype().size_in_bytes());
    let t = t.to_device(&Device::Cpu).ctx("copying to host")?;
    let t = t
        .to_dtype(DType::F32)
        .ctx("to f32")?
        .contiguous()
        .ctx("contiguous")?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Internal("tensor is not on the host".into()));
    };
    let data = cpu.as_slice::<f32>().ctx("host slice")?;
    let (lo, hi) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Internal("tensor is not contiguous".into()))?;
    Ok(f(&data[lo..hi]))
}

impl AdamW {
    /// An optimizer over `params` (name, variable), with zero moments.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                let in_place = var.device().is_cpu() && var.dtype() == DType::F32;
                let weights = master_copy(&var, in_place)?;
                Ok(Slot {
                    decay: var.rank() >= 2,
                    name,
                    var,
                    in_place,
                    weights,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            slots,
            steps: 0,
        })
    }

    pub fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with the gradients in `grads`, each multiplied by `grad_scale` first (the
    /// clipping factor). Every parameter must have a gradient.
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        self.steps += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bc2 = 1.0 - c.beta2.powi(self.steps as i32);
        // p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε), with m̂ = m/bc1, v̂ = v/bc2.
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let step_size = (c.lr / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let eps = c.eps as f32;
        let scale = grad_scale as f32;
        for slot in &mut self.slots {
            let grad = grads
                .get(slot.var.as_tensor())
                .ok_or_else(|| Error::MissingGradient(slot.name.clone()))?;
            let decay = if slot.decay {
                (1.0 - c.lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let update = Update {
                b1,
                b2,
                step_size,
                inv_sqrt_bc2,
                eps,
                scale,
                decay,
            };
            let Slot {
                in_place,
                weights,
                m,
                v,
                var,
                name,
                ..
            } = slot;
            with_host_f32(grad, |g| {
                if *in_place {
                    let op = InPlace {
                        update,
                        moments: std::sync::Mutex::new((m, v)),
                        grad: g,
                    };
                    var.as_tensor().inplace_op1(&op).ctx(name.clone())
                } else {
                    update.apply(weights, m, v, g);
                    let t =
                        Tensor::from_slice(weights, var.shape(), var.device()).ctx(name.clone())?;
                    var.set(&t).ctx(name.clone())
                }
            })??;
        }
        Ok(())
    }

    /// Save the moments and the step count (safetensors: `m.NAME`, `v.NAME`, `steps`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut moments = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            for (prefix, data) in [("m", &s.m), ("v", &s.v)] {
                let t = Tensor::from_slice(data, s.var.shape(), &Device::Cpu).ctx("save")?;
                moments.push((format!("{prefix}.{}", s.name), t));
            }
        }
        write_state(path, self.steps, moments)
    }

    /// Load what [`save`](Self::save) wrote, for the same parameters; the weights are re-read
    /// from the variables (the checkpoint's model files were loaded into them).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let state = SavedState::read(path)?;
        self.steps = state.steps;
        for s in &mut self.slots {
            s.m = with_host_f32(state.moment("m", &s.name, s.var.dims())?, |x| x.to_vec())?;
            s.v = with_host_f32(state.moment("v", &s.name, s.var.dims())?, |x| x.to_vec())?;
            s.weights = master_copy(&s.var, s.in_place)?;
        }
        Ok(())
    }
}

/// The host master copy a variable needs: none (empty) when it is updated in place.
fn master_copy(var: &Var, in_place: bool) -> Result<Vec<f32>> {
    if in_place {
        Ok(Vec::new())
    } else {
        with_host_f32(var.as_tensor(), |w| w.to_vec())
    }
}

/// One AdamW step's constants: `p ← p·decay − step_size·m/(√v·inv_sqrt_bc2 + eps)` after the
/// moments take the gradient times `scale`.
#[derive(Clone, Copy)]
struct Update {
    b1: f32,
    b2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    scale: f32,
    decay: f32,
}

impl Update {
    fn apply(self, weights: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let u = self;
        let (b1, b2, eps) = (u.b1, u.b2, u.eps);
        weights
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| {
                for i in 0..w.len() {
                    let gi = g[i] * u.scale;
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    w[i] =
                        w[i] * u.decay - u.step_size * m[i] / (v[i].sqrt() * u.inv_sqrt_bc2 + eps);
                }
            })
    }
}

/// [`Update`] on a CPU variable's own buffer (candle's in-place custom op).
struct InPlace<'a> {
    update: Update,
    /// The moments, borrowed for the op (`cpu_fwd` gets `&self`).
    moments: std::sync::Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    grad: &'a [f32],
}

impl candle_core::InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("adamw: the variable is not f32")
        };
        let Some((lo, hi)) = layout.contiguous_offsets() else {
            candle_core::bail!("adamw: the variable is not contiguous")
        };
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw: moments poisoned".into()))?;
        let (m, v) = &mut *moments;
        if hi - lo != m.len() || m.len() != self.grad.len() {
            candle_core::bail!("adamw: {} weights for {} moments", hi - lo, m.len())
        }
        self.update.apply(&mut data[lo..hi], m, v, self.grad);
        Ok(())
    }
}

/// Write an optimizer state: the moments (`m.NAME`, `v.NAME`, host tensors) and `steps`, synced.
/// Both optimizers write this layout, so a checkpoint resumes on either step path.
pub fn write_state(path: &Path, steps: u64, moments: Vec<(String, Tensor)>) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = moments.into_iter().collect();
    let steps = Tensor::new(&[steps as i64], &Device::Cpu).ctx("save")?;
    tensors.insert("steps".to_string(), steps);
    candle_core::safetensors::save(&tensors, path)
        .map_err(|e| Error::checkpoint(path, format!("cannot write optimizer state: {e}")))?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .at(path)
}

/// An optimizer state read back by [`write_state`]'s layout, on the host.
pub struct SavedState {
    path: std::path::PathBuf,
    tensors: HashMap<String, Tensor>,
    pub steps: u64,
}

impl SavedState {
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::checkpoint(path, msg);
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("not a readable optimizer state: {e}")))?;
        let steps = tensors
            .get("steps")
            .ok_or_else(|| bad("missing tensor `steps`".into()))?
            .to_vec1::<i64>()
            .map_err(|e| bad(format!("tensor `steps`: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            steps: steps.first().copied().unwrap_or(0).max(0) as u64,
            tensors,
        })
    }

    /// The moment `PREFIX.NAME` (`m` or `v`), which must have the parameter's shape `dims`.
    pub fn moment(&self, prefix: &str, name: &str, dims: &[usize]) -> Result<&Tensor> {
        let key = format!("{prefix}.{name}");
        let t = self
            .tensors
            .get(&key)
            .ok_or_else(|| Error::checkpoint(&self.path, format!("missing tensor `{key}`")))?;
        if t.dims() != dims {
            return Err(Error::checkpoint(
                &self.path,
                format!(
                    "tensor `{key}` has shape {:?}, the model {:?}",
                    t.dims(),
                    dims
                ),
            ));
        }
        Ok(t)
    }
}

/// The optimizer of a run: the host's fused AdamW, or the device path's
/// ([`super::device::optim::DeviceAdamW`]); both save the same state.
pub enum Optimizer {
    Host(AdamW),
    Device(super::device::optim::DeviceAdamW),
}

impl Optimizer {
    /// The optimizer of `path` over `params`.
    pub fn new(
        path: super::device::StepPath,
        params: Vec<(String, Var)>,
        config: AdamWConfig,
    ) -> Result<Self> {
        Ok(match path {
            super::device::StepPath::Host => Optimizer::Host(AdamW::new(params, config)?),
            super::device::StepPath::Device => {
                Optimizer::Device(super::device::optim::DeviceAdamW::new(params, config)?)
            }
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Optimizer::Host(o) => o.set_lr(lr),
            Optimizer::Device(o) => o.set_lr(lr),
        }
    }

    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        match self {
            Optimizer::Host(o) => o.step(grads, grad_scale),
            Optimizer::Device(o) => o.step(grads, grad_scale),
        }
    }

    /// The global gradient norm, computed where the optimizer runs.
    pub fn grad_norm(&self, params: &[(String, Var)], grads: &GradStore) -> Result<f64> {
        match self {
            Optimizer::Host(_) => grad_norm(params, grads),
            Optimizer::Device(_) => super::device::optim::grad_norm(params, grads),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        match self {
            Optimizer::Host(o) => o.save(path),
            Optimizer::Device(o) => o.save(path),
        }
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        match self {
            Optimizer::Host(o) => o.load(path),
            Optimizer::Device(o) => o.load(path),
        }
    }
}

/// The global L2 norm of the gradients of `params`.
pub fn grad_norm(params: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut sum = 0f64;
    for (name, var) in params {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::MissingGradient(name.clone()))?;
        sum += with_host_f32(g, |g| {
            g.par_chunks(CHUNK)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .sum::<f64>()
        })?;
    }
    Ok(sum.sqrt())
}

/// The factor that clips a gradient of norm `norm` to at most `max_norm` (1 when it is below,
/// or when clipping is off: `max_norm <= 0`).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Optimizer;

    fn params(seed: u64) -> Vec<(String, Var)> {
        let mut rng = crate::model::init::Normal::new(seed);
        [
            ("a.weight", vec![7, 5]),
            ("a.bias", vec![5]),
            ("b.weight", vec![40_000]),
        ]
        .into_iter()
        .map(|(n, shape)| {
            let len: usize = shape.iter().product();
            let data: Vec<f32> = (0..len).map(|_| rng.sample()).collect();
            (
                n.to_string(),
                Var::from_vec(data, shape, &Device::Cpu).unwrap(),
            )
        })
        .collect()
    }

    fn loss(params: &[(String, Var)], step: usize) -> Tensor {
        // A smooth, step-dependent objective so moments differ across steps.
        let mut total = Tensor::new(0f32, &Device::Cpu).unwrap();
        for (i, (_, v)) in params.iter().enumerate() {
            let shift = (i + step) as f64 * 0.1;
            let term = ((v.as_tensor() - shift).unwrap().sqr().unwrap() * 0.5)
                .unwrap()
                .sum_all()
                .unwrap();
            total = (total + term).unwrap();
        }
        total
    }

    #[test]
    fn fused_adamw_equals_candle_nn_adamw_over_five_steps() {
        let (ours, theirs) = (params(1), params(1));
        let cfg = AdamWConfig {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut a = AdamW::new(ours.clone(), cfg).unwrap();
        let mut b = candle_nn::AdamW::new(
            theirs.iter().map(|(_, v)| v.clone()).collect(),
            candle_nn::ParamsAdamW {
                lr: cfg.lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
            },
        )
        .unwrap();
        for step in 0..5 {
            a.step(&loss(&ours, step).backward().unwrap(), 1.0).unwrap();
            b.backward_step(&loss(&theirs, step)).unwrap();
        }
        for ((name, x), (_, y)) in ours.iter().zip(&theirs) {
            let d = (x.as_tensor() - y.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "{name}: max |Δ| {d}");
        }
    }

    #[test]
    fn weight_decay_is_decoupled_and_spares_vectors() {
        let p = params(2);
        let before: Vec<Vec<f32>> = p
            .iter()
            .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(p.clone(), cfg).unwrap();
        // A negligible gradient (candle drops the graph of an exact `* 0.0`): its Adam update is
        // about 1e-30 / eps = 1e-22, so only the decay moves the weights.
        let zero = (p
            .iter()
            .map(|(_, v)| v.as_tensor().sum_all().unwrap())
            .fold(Tensor::new(0f32, &Device::Cpu).unwrap(), |a, b| {
                (a + b).unwrap()
            })
            * 1e-30)
            .unwrap();
        opt.step(&zero.backward().unwrap(), 1.0).unwrap();
        for ((name, v), b) in p.iter().zip(before) {
            let after: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            let factor = if v.rank() >= 2 { 1.0 - 0.1 * 0.5 } else { 1.0 };
            let worst = after
                .iter()
                .zip(&b)
                .map(|(a, b)| (a - b * factor).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-6,
                "{name}: decayed by the wrong factor (worst {worst})"
            );
        }
    }

    #[test]
    fn saved_state_resumes_identically() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (params(3), params(3));
        let cfg = AdamWConfig::default();
        let mut a = AdamW::new(p1.clone(), cfg).unwrap();
        for step in 0..3 {
            a.step(&loss(&p1, step).backward().unwrap(), 0.5).unwrap();
        }
        a.save(&dir.path().join("opt.safetensors")).unwrap();
        // A second optimizer whose variables got the same weights (as a checkpoint load does).
        for ((_, x), (_, y)) in p1.iter().zip(&p2) {
            y.set(x.as_tensor()).unwrap();
        }
        let mut b = AdamW::new(p2.clone(), cfg).unwrap();
        b.load(&dir.path().join("opt.safetensors")).unwrap();
        assert_eq!(b.steps(), 3);
        a.step(&loss(&p1, 3).backward().unwrap(), 0.5).unwrap();
        b.step(&loss(&p2, 3).backward().unwrap(), 0.5).unwrap();
        for ((name, x), (_, y)) in p1.iter().zip(&p2) {
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y, "{name}: resumed step differs");
        }
    }

    #[test]
    fn grad_norm_and_clip_factor() {
        let p = params(4);
        let grads = loss(&p, 0).backward().unwrap();
        let manual: f64 = p
            .iter()
            .map(|(_, v)| {
                let g: Vec<f32> = grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                g.iter().map(|&x| x as f64 * x as f64).sum::<f64>()
            })
            .sum::<f64>()
            .sqrt();
        let norm = grad_norm(&p, &grads).unwrap();
        assert!((norm - manual).abs() < 1e-9 * manual);
        assert!((clip_factor(norm, 1.0) * norm - 1.0).abs() < 1e-5);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert_eq!(clip_factor(10.0, 0.0), 1.0);
    }
}
