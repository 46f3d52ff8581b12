//! The decoder-only transformer shared by every supported architecture.
//!
//! Parameters are addressed with `vb.pp(..)` under their Hugging Face names, so loading a
//! checkpoint and saving one use the same paths. The forwards share one code path:
//! [`Mode::Infer`] uses fused kernels without a backward; [`Mode::Train`] uses differentiable
//! ops only: on the CPU in f32 the fused ops of [`super::cpu_ops`], each with a one-pass
//! backward, elsewhere candle's (`rms_norm` via `forward_diff`, `rope_slow`, `ops::softmax`),
//! which [`Mode::TrainReference`] runs everywhere.

use candle_core::backprop::GradStore;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};

use super::bf16_products::PackedBf16;
use super::config::{Architecture, ModelConfig};

type CResult<T> = candle_core::Result<T>;

/// Which kernels a forward uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Fused kernels, no gradients.
    Infer,
    /// Differentiable ops only: the fused CPU ops (with their backward) where they apply.
    Train,
    /// Differentiable candle ops only: the reference the fused training ops are tested and
    /// measured against.
    TrainReference,
}

impl Mode {
    /// Whether this forward runs the fused CPU ops on `x`.
    fn fused(self, x: &Tensor) -> bool {
        self == Self::Train && super::cpu_ops::applies(x)
    }
}

fn norm(n: &RmsNorm, x: &Tensor, mode: Mode) -> CResult<Tensor> {
    match mode {
        Mode::Infer => n.forward(&x.contiguous()?),
        _ if mode.fused(x) => super::cpu_ops::rms_norm(x, n.weight(), n.eps()),
        Mode::Train | Mode::TrainReference => n.forward_diff(x),
    }
}

/// A linear layer whose weight is dense (safetensors, or an F32/F16/BF16 GGUF tensor) or
/// quantized (a GGUF block type, multiplied by candle's `QMatMul`). Quantized products take f32
/// activations: the input is cast to f32 and the output back to the input's dtype.
pub enum Proj {
    Dense(Linear),
    Quant {
        w: QMatMul,
        bias: Option<Tensor>,
    },
    /// A dense f32 weight rounded to bf16 for the CPU's bf16 products
    /// ([`Decoder::with_bf16_products`]); f32 in and out.
    Bf16 {
        w: PackedBf16,
        bias: Option<Tensor>,
    },
}

impl Proj {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        match self {
            Self::Dense(l) => l.forward(x),
            Self::Quant { w, bias } => {
                let dtype = x.dtype();
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                let y = if x.device().is_cpu() {
                    quant_rows_parallel(w, &x)?
                } else {
                    w.forward(&x)?
                };
                let y = match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                y.to_dtype(dtype)
            }
            Self::Bf16 { w, bias } => {
                let dims = x.dims().to_vec();
                let m = x.elem_count() / w.in_dim().max(1);
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                let y = {
                    let (storage, layout) = x.storage_and_layout();
                    let candle_core::Storage::Cpu(cpu) = &*storage else {
                        candle_core::bail!("bf16 products run on the CPU only");
                    };
                    let data = cpu.as_slice::<f32>()?;
                    let start = layout.start_offset();
                    w.matmul(&data[start..start + m * w.in_dim()], m)
                };
                let mut out_dims = dims;
                let last = out_dims.len() - 1;
                out_dims[last] = w.out_dim();
                let y = Tensor::from_vec(y, out_dims, x.device())?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }

    /// The dense weight `[out, in]`; `None` when quantized or packed.
    fn weight(&self) -> Option<&Tensor> {
        match self {
            Self::Dense(l) => Some(l.weight()),
            Self::Quant { .. } | Self::Bf16 { .. } => None,
        }
    }

    /// Round this layer's weight to bf16 and pack it ([`PackedBf16`]) when it is a dense f32
    /// weight on the CPU; other layers stay as they are.
    fn pack_bf16(&mut self) -> CResult<()> {
        let Self::Dense(l) = self else {
            return Ok(());
        };
        let w = l.weight();
        if !w.device().is_cpu() || w.dtype() != DType::F32 {
            return Ok(());
        }
        let (n, k) = w.dims2()?;
        let packed = PackedBf16::pack(&w.flatten_all()?.to_vec1::<f32>()?, n, k);
        let bias = l.bias().cloned();
        *self = Self::Bf16 { w: packed, bias };
        Ok(())
    }
}

/// A quantized product on the CPU, its rows split over the rayon pool: candle runs it on
/// `CANDLE_NUM_THREADS` threads, which taidcache sets to one (`single_threaded_candle_ops`).
/// Each part quantizes its own activation rows and reads the whole weight.
fn quant_rows_parallel(w: &QMatMul, x: &Tensor) -> CResult<Tensor> {
    use rayon::prelude::*;
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let m = x.elem_count() / k.max(1);
    let parts = rayon::current_num_threads().min(m.div_ceil(16)).max(1);
    if parts == 1 {
        return w.forward(x);
    }
    let x2 = x.reshape((m, k))?;
    let rows = m.div_ceil(parts);
    let outs = (0..parts)
        .into_par_iter()
        .map(|p| {
            let start = p * rows;
            let n = rows.min(m - start.min(m));
            w.forward(&x2.narrow(0, start, n)?)
        })
        .collect::<CResult<Vec<_>>>()?;
    let y = Tensor::cat(&outs, 0)?;
    let mut out_dims = dims;
    let last = out_dims.len() - 1;
    out_dims[last] = y.dim(1)?;
    y.reshape(out_dims)
}

/// Where a decoder's parameters come from, addressed by their Hugging Face names: a
/// `VarBuilder` (safetensors, fresh students) or a GGUF file's tensors (`super::gguf`).
pub trait Params: Sized {
    /// The same source under `prefix.name`.
    fn pp(&self, name: impl ToString) -> Self;
    /// A linear layer `in_dim → out_dim` at this prefix (`weight`, and `bias` when asked).
    fn linear(&self, in_dim: usize, out_dim: usize, bias: bool) -> CResult<Proj>;
    fn rms_norm(&self, dim: usize, eps: f64) -> CResult<RmsNorm>;
    fn embedding(&self, vocab: usize, hidden: usize) -> CResult<Embedding>;
    /// The output projection at the root: `lm_head`, or the embedding when tied.
    fn lm_head(&self, cfg: &ModelConfig, embed: &Embedding) -> CResult<Proj>;
    fn dtype(&self) -> DType;
    fn device(&self) -> &Device;
}

impl Params for VarBuilder<'_> {
    fn pp(&self, name: impl ToString) -> Self {
        VarBuilder::pp(self, name)
    }

    fn linear(&self, in_dim: usize, out_dim: usize, bias: bool) -> CResult<Proj> {
        Ok(Proj::Dense(if bias {
            candle_nn::linear_b(in_dim, out_dim, true, self.clone())?
        } else {
            candle_nn::linear_no_bias(in_dim, out_dim, self.clone())?
        }))
    }

    fn rms_norm(&self, dim: usize, eps: f64) -> CResult<RmsNorm> {
        candle_nn::rms_norm(dim, eps, self.clone())
    }

    fn embedding(&self, vocab: usize, hidden: usize) -> CResult<Embedding> {
        candle_nn::embedding(vocab, hidden, self.clone())
    }

    fn lm_head(&self, cfg: &ModelConfig, embed: &Embedding) -> CResult<Proj> {
        Ok(Proj::Dense(if cfg.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, self.pp("lm_head"))?
        }))
    }

    fn dtype(&self) -> DType {
        VarBuilder::dtype(self)
    }

    fn device(&self) -> &Device {
        VarBuilder::device(self)
    }
}

enum Qkv {
    Separate { q: Proj, k: Proj, v: Proj },
    Fused(Proj),
}

enum GateUp {
    Separate { gate: Proj, up: Proj },
    Fused(Proj),
}

struct Attention {
    qkv: Qkv,
    o: Proj,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
}

impl Attention {
    fn new(cfg: &ModelConfig, window: Option<usize>, vb: impl Params) -> CResult<Self> {
        let h = cfg.hidden_size;
        let (q_dim, kv_dim) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let qkv = if cfg.architecture == Architecture::Phi3 {
            Qkv::Fused(vb.pp("qkv_proj").linear(h, q_dim + 2 * kv_dim, false)?)
        } else {
            Qkv::Separate {
                q: vb.pp("q_proj").linear(h, q_dim, cfg.qkv_bias)?,
                k: vb.pp("k_proj").linear(h, kv_dim, cfg.qkv_bias)?,
                v: vb.pp("v_proj").linear(h, kv_dim, cfg.qkv_bias)?,
            }
        };
        let (q_norm, k_norm) = if cfg.architecture == Architecture::Qwen3 {
            (
                Some(vb.pp("q_norm").rms_norm(cfg.head_dim, cfg.rms_norm_eps)?),
                Some(vb.pp("k_norm").rms_norm(cfg.head_dim, cfg.rms_norm_eps)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            qkv,
            o: vb.pp("o_proj").linear(q_dim, h, cfg.o_bias)?,
            q_norm,
            k_norm,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            window,
        })
    }

    /// x: [b, t, hidden]; cos, sin: [t, head_dim / 2]; returns [b, t, hidden].
    fn forward(&self, x: &Tensor, rope: &Rope, mode: Mode) -> CResult<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let (q, k, v) = match &self.qkv {
            Qkv::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            Qkv::Fused(qkv) => {
                let all = qkv.forward(x)?;
                (
                    all.narrow(D::Minus1, 0, nh * hd)?,
                    all.narrow(D::Minus1, nh * hd, nkv * hd)?,
                    all.narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        let mut q = q.reshape((b, t, nh, hd))?;
        let mut k = k.reshape((b, t, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = norm(qn, &q, mode)?;
            k = norm(kn, &k, mode)?;
        }
        let q = rope.apply_transposed(&q, mode)?;
        let k = rope.apply_transposed(&k, mode)?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        if mode == Mode::Infer || mode.fused(&q) {
            // Training keeps every block's probabilities for the backward anyway: one block.
            let rows = if mode == Mode::Infer {
                attention_block_rows(b, nh, t)
            } else {
                t
            };
            let out = blocked_attention(&q, &k, &v, self.window, rows)?
                .transpose(1, 2)?
                .reshape((b, t, nh * hd))?;
            return self.o.forward(&out);
        }
        let k = repeat_kv(k, nh / nkv)?.contiguous()?;
        let v = repeat_kv(v, nh / nkv)?.contiguous()?;

        let dtype = q.dtype();
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.to_dtype(DType::F32)?;
        let mask = causal_mask(t, self.window, x.device())?;
        let scores = scores.broadcast_add(&mask)?;
        // Differentiable (the inference forward returned above).
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(dtype)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        self.o.forward(&out)
    }
}

/// Attention scores of an inference forward are built for this many bytes at most at once.
pub const ATTENTION_BLOCK_BYTES: usize = 32 << 20;

/// Query rows per block of attention in an inference forward, for `batch × heads` rows of `t`
/// keys.
pub fn attention_block_rows(batch: usize, heads: usize, t: usize) -> usize {
    (ATTENTION_BLOCK_BYTES / (batch * heads * t * 4).max(1)).clamp(1, t.max(1))
}

/// Causal (and sliding-window) attention for inference, by blocks of queries: the f32 scores
/// of one block, `[b, heads, rows, keys]`, exist at a
/// time instead of the whole `[b, heads, t, t]`, and a block reads only the keys its queries
/// may see (up to its last row, from the window's start), which halves the causal work.
/// Grouped-query heads share their key/value head through a reshape, without `repeat_kv`'s
/// copies. q: `[b, heads, t, head_dim]`; k, v: `[b, kv_heads, t, head_dim]`; returns
/// `[b, heads, t, head_dim]`. The same values as the dense form: every score a query may see
/// is in its block, and the ones it may not are exactly zero in both.
fn blocked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<usize>,
    rows: usize,
) -> CResult<Tensor> {
    let (b, nh, t, hd) = q.dims4()?;
    let nkv = k.dim(1)?;
    let n_rep = nh / nkv;
    let dtype = q.dtype();
    let rows = rows.max(1);
    let w = window.unwrap_or(usize::MAX);
    let mut outs = Vec::with_capacity(t.div_ceil(rows));
    let mut start = 0;
    while start < t {
        let n = rows.min(t - start);
        let end = start + n;
        let lo = (start + 1).saturating_sub(w);
        let tk = end - lo;
        let qb = q
            .narrow(2, start, n)?
            .contiguous()?
            .reshape((b, nkv, n_rep * n, hd))?;
        let kb = k.narrow(2, lo, tk)?.contiguous()?;
        let vb = v.narrow(2, lo, tk)?.contiguous()?;
        let raw = qb.matmul(&kb.t()?)?;
        if super::cpu_ops::applies(&raw) {
            let probs = super::cpu_ops::masked_softmax(
                &raw,
                1.0 / (hd as f64).sqrt(),
                start,
                n,
                lo,
                window,
            )?;
            outs.push(probs.matmul(&vb)?.reshape((b, nh, n, hd))?);
            start = end;
            continue;
        }
        let scores = (raw / (hd as f64).sqrt())?.to_dtype(DType::F32)?;
        let mask: Vec<f32> = (start..end)
            .flat_map(|i| {
                (lo..end).map(move |j| {
                    if j <= i && i - j < w {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (n, tk), q.device())?;
        let scores = scores
            .reshape((b, nkv, n_rep, n, tk))?
            .broadcast_add(&mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?
            .to_dtype(dtype)?
            .reshape((b, nkv, n_rep * n, tk))?;
        outs.push(probs.matmul(&vb)?.reshape((b, nh, n, hd))?);
        start = end;
    }
    Tensor::cat(&outs, 2)
}

/// Grouped-query attention: each of the `kv_heads` heads of `x` (`[b, kv_heads, t, head_dim]`)
/// repeated `n_rep` times in place, giving `[b, kv_heads · n_rep, t, head_dim]` (the layout of
/// transformers' `repeat_kv`).
fn repeat_kv(x: Tensor, n_rep: usize) -> CResult<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv_heads, t, head_dim) = x.dims4()?;
    Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, kv_heads * n_rep, t, head_dim))
}

/// Additive mask `[t, t]`: 0 where position i may attend to j (j ≤ i, and i − j < window), −∞ elsewhere.
fn causal_mask(t: usize, window: Option<usize>, device: &Device) -> CResult<Tensor> {
    let w = window.unwrap_or(usize::MAX);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j <= i && i - j < w {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, t), device)
}

struct Mlp {
    gate_up: GateUp,
    down: Proj,
    intermediate: usize,
}

impl Mlp {
    fn new(cfg: &ModelConfig, vb: impl Params) -> CResult<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let gate_up = if cfg.architecture == Architecture::Phi3 {
            GateUp::Fused(vb.pp("gate_up_proj").linear(h, 2 * i, false)?)
        } else {
            GateUp::Separate {
                gate: vb.pp("gate_proj").linear(h, i, cfg.mlp_bias)?,
                up: vb.pp("up_proj").linear(h, i, cfg.mlp_bias)?,
            }
        };
        Ok(Self {
            gate_up,
            down: vb.pp("down_proj").linear(i, h, cfg.mlp_bias)?,
            intermediate: i,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(x)?, up.forward(x)?),
            GateUp::Fused(gu) => {
                let both = gu.forward(x)?;
                (
                    both.narrow(D::Minus1, 0, self.intermediate)?,
                    both.narrow(D::Minus1, self.intermediate, self.intermediate)?,
                )
            }
        };
        if (mode == Mode::Infer && super::cpu_ops::applies(&gate)) || mode.fused(&gate) {
            return self.down.forward(&super::cpu_ops::silu_mul(&gate, &up)?);
        }
        self.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}

struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

impl Layer {
    /// x + attn(norm(x)), then + mlp(norm(·)).
    fn forward(&self, x: &Tensor, rope: &Rope, mode: Mode) -> CResult<Tensor> {
        let a = self
            .attn
            .forward(&norm(&self.input_norm, x, mode)?, rope, mode)?;
        let x1 = (x + a)?;
        let m = self.mlp.forward(&norm(&self.post_norm, &x1, mode)?, mode)?;
        x1 + m
    }
}

/// A training forward's result: the final hidden states, and what a recomputing backward needs.
pub struct TrainForward {
    /// `[b, t, hidden]`, tracked by autograd.
    pub hidden: Tensor,
    recompute: Option<Recompute>,
}

struct Recompute {
    ids: Tensor,
    /// Every layer's (detached) input.
    inputs: Vec<Tensor>,
    /// The last layer's output, the variable the final norm was applied to.
    last: Var,
    rope: Rope,
    mode: Mode,
}

/// Rotary tables for one forward.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The same tables for the fused CPU op, when the forward is f32 on the CPU.
    tables: Option<super::cpu_ops::RopeTables>,
}

impl Rope {
    /// cos/sin `[t, head_dim / 2]` in `dtype`, computed in f32 as transformers does.
    fn new(inv_freq: &[f32], t: usize, dtype: DType, device: &Device) -> CResult<Self> {
        let half = inv_freq.len();
        let freqs: Vec<f32> = (0..t)
            .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let freqs = Tensor::from_vec(freqs, (t, half), device)?;
        let (cos, sin) = (freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?);
        let tables = (dtype == DType::F32 && device.is_cpu())
            .then(|| super::cpu_ops::RopeTables::new(&cos, &sin))
            .transpose()?;
        Ok(Self { cos, sin, tables })
    }

    /// x: [b, t, heads, head_dim] → the rotated [b, heads, t, head_dim].
    fn apply_transposed(&self, x: &Tensor, mode: Mode) -> CResult<Tensor> {
        if let (Some(tables), true) = (&self.tables, mode.fused(x)) {
            return super::cpu_ops::rope_transposed(x, tables);
        }
        let x = x.transpose(1, 2)?.contiguous()?;
        match mode {
            Mode::Infer => candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin),
            Mode::Train | Mode::TrainReference => {
                candle_nn::rotary_emb::rope_slow(&x, &self.cos, &self.sin)
            }
        }
    }
}

/// A decoder-only causal language model.
pub struct Decoder {
    cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Proj,
    inv_freq: Vec<f32>,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Build from a `VarBuilder` whose paths are the Hugging Face tensor names.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> CResult<Self> {
        Self::build(cfg, vb)
    }

    /// Build from any parameter source addressed by the Hugging Face tensor names.
    pub fn build(cfg: &ModelConfig, vb: impl Params) -> CResult<Self> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let m = vb.pp("model");
        let embed = m.pp("embed_tokens").embedding(v, h)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp("layers").pp(i);
                Ok(Layer {
                    input_norm: l.pp("input_layernorm").rms_norm(h, cfg.rms_norm_eps)?,
                    attn: Attention::new(cfg, cfg.sliding_window[i], l.pp("self_attn"))?,
                    post_norm: l
                        .pp("post_attention_layernorm")
                        .rms_norm(h, cfg.rms_norm_eps)?,
                    mlp: Mlp::new(cfg, l.pp("mlp"))?,
                })
            })
            .collect::<CResult<Vec<_>>>()?;
        let norm = m.pp("norm").rms_norm(h, cfg.rms_norm_eps)?;
        let lm_head = vb.lm_head(cfg, &embed)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq: cfg.rope_inv_freq(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// ids: [b, t] u32 → final-norm hidden states [b, t, hidden] in the model dtype.
    pub fn forward_hidden(&self, ids: &Tensor, mode: Mode) -> CResult<Tensor> {
        let (_b, t) = ids.dims2()?;
        let rope = Rope::new(&self.inv_freq, t, self.dtype, &self.device)?;
        let mut x = self.embed.forward(ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, &rope, mode)?;
        }
        norm(&self.norm, &x, mode)
    }

    /// The training forward, keeping every layer's graph for the backward (`recompute: false`),
    /// or only every layer's input (`recompute: true`, gradient checkpointing): each layer runs
    /// on a detached input and its graph is dropped, so the activations and attention scores of
    /// one layer exist at a time; [`backward_through_layers`](Self::backward_through_layers)
    /// runs each layer again, last to first, for its gradients. One more forward of compute.
    pub fn forward_train(&self, ids: &Tensor, recompute: bool) -> CResult<TrainForward> {
        self.forward_train_in(ids, recompute, Mode::Train)
    }

    /// [`forward_train`](Self::forward_train) with the kernels of `mode` ([`Mode::Train`] or
    /// [`Mode::TrainReference`]).
    pub fn forward_train_in(
        &self,
        ids: &Tensor,
        recompute: bool,
        mode: Mode,
    ) -> CResult<TrainForward> {
        if mode == Mode::Infer {
            candle_core::bail!("a training forward needs a training mode");
        }
        if !recompute {
            return Ok(TrainForward {
                hidden: self.forward_hidden(ids, mode)?,
                recompute: None,
            });
        }
        let (_b, t) = ids.dims2()?;
        let rope = Rope::new(&self.inv_freq, t, self.dtype, &self.device)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = self.embed.forward(ids)?.detach();
        for layer in &self.layers {
            let next = layer.forward(&x, &rope, mode)?.detach();
            inputs.push(x);
            x = next;
        }
        let last = Var::from_tensor(&x)?;
        let hidden = norm(&self.norm, last.as_tensor(), mode)?;
        Ok(TrainForward {
            hidden,
            recompute: Some(Recompute {
                ids: ids.clone(),
                inputs,
                last,
                rope,
                mode,
            }),
        })
    }

    /// Complete `grads`, the gradients of a loss of [`TrainForward::hidden`], with those of the
    /// layers and the embedding when the forward recomputes (else `grads` is already complete).
    /// Each layer's gradients come from one backward of `Σ layer(x) ⊙ ∂loss/∂layer(x)` on its
    /// saved input `x`, which also gives the next `∂loss/∂x`.
    pub fn backward_through_layers(
        &self,
        forward: TrainForward,
        mut grads: GradStore,
    ) -> CResult<GradStore> {
        let Some(r) = forward.recompute else {
            return Ok(grads);
        };
        let missing = || candle_core::Error::Msg("no gradient reached the last layer".into());
        let mut g = grads.remove(r.last.as_tensor()).ok_or_else(missing)?;
        for (layer, x) in self.layers.iter().zip(&r.inputs).rev() {
            let x = Var::from_tensor(x)?;
            let out = layer.forward(x.as_tensor(), &r.rope, r.mode)?;
            let mut layer_grads = (out * &g)?.sum_all()?.backward()?;
            g = layer_grads.remove(x.as_tensor()).ok_or_else(missing)?;
            grads.extend(layer_grads)?;
        }
        let e = self.embed.forward(&r.ids)?;
        grads.extend((e * g)?.sum_all()?.backward()?)?;
        Ok(grads)
    }

    /// This model with every dense f32 linear layer on the CPU (the output projection
    /// included, and a tied one packed once) rounded to bf16 for the CPU's bf16 products
    /// ([`PackedBf16`]): `precompute --dtype bf16` on the CPU. Activations, norms, attention
    /// and the embedding lookup stay f32; quantized layers stay as they are. Inference only:
    /// the packed layers have no gradient.
    pub fn with_bf16_products(mut self) -> CResult<Self> {
        // A tied projection packs the embedding matrix; the lookup keeps its f32 rows.
        for p in self.projs_mut() {
            p.pack_bf16()?;
        }
        Ok(self)
    }

    /// Every linear layer, the output projection first.
    fn projs_mut(&mut self) -> Vec<&mut Proj> {
        let mut projs: Vec<&mut Proj> = vec![&mut self.lm_head];
        for l in &mut self.layers {
            match &mut l.attn.qkv {
                Qkv::Separate { q, k, v } => projs.extend([q, k, v]),
                Qkv::Fused(p) => projs.push(p),
            }
            projs.push(&mut l.attn.o);
            match &mut l.mlp.gate_up {
                GateUp::Separate { gate, up } => projs.extend([gate, up]),
                GateUp::Fused(p) => projs.push(p),
            }
            projs.push(&mut l.mlp.down);
        }
        projs
    }

    /// The output projection `[vocab, hidden]` (the embedding matrix when tied); `None` for a
    /// quantized teacher's.
    pub fn lm_head_weight(&self) -> Option<&Tensor> {
        self.lm_head.weight()
    }

    /// hidden: [.., hidden] → logits [.., vocab] in f32.
    pub fn logits(&self, hidden: &Tensor) -> CResult<Tensor> {
        self.lm_head.forward(hidden)?.to_dtype(DType::F32)
    }

    /// ids: [b, t] u32 → logits [b, t, vocab] f32 at every position.
    pub fn forward(&self, ids: &Tensor, mode: Mode) -> CResult<Tensor> {
        self.logits(&self.forward_hidden(ids, mode)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::Normal;

    fn randn(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = Normal::new(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Tensor::from_vec(
            (0..n).map(|_| rng.sample()).collect::<Vec<f32>>(),
            shape,
            &Device::Cpu,
        )
        .unwrap()
    }

    /// The `[b, heads, t, t]` form the training forward uses.
    fn dense(q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>) -> Tensor {
        let (_, nh, t, hd) = q.dims4().unwrap();
        let n_rep = nh / k.dim(1).unwrap();
        let k = repeat_kv(k.clone(), n_rep).unwrap();
        let v = repeat_kv(v.clone(), n_rep).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
        let scores = scores
            .broadcast_add(&causal_mask(t, window, &Device::Cpu).unwrap())
            .unwrap();
        candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(&v)
            .unwrap()
    }

    #[test]
    fn blocked_attention_equals_the_dense_form_for_every_block_size_and_window() {
        let (b, nh, nkv, t, hd) = (2, 4, 2, 13, 8);
        let q = randn((b, nh, t, hd), 1);
        let k = randn((b, nkv, t, hd), 2);
        let v = randn((b, nkv, t, hd), 3);
        for window in [None, Some(4), Some(1)] {
            let want = dense(&q, &k, &v, window);
            for rows in [1, 3, 5, 13, 40] {
                let got = blocked_attention(&q, &k, &v, window, rows).unwrap();
                let diff = crate::testing::max_abs_diff(&got, &want);
                assert!(
                    diff < 1e-5,
                    "window {window:?}, {rows} rows: max |Δ| {diff}"
                );
            }
        }
    }

    /// The training forward on the fused CPU ops ([`Mode::Train`]) against candle's ops
    /// ([`Mode::TrainReference`]) for every architecture (grouped-query heads, biases, fused
    /// projections, q/k norms, a sliding window of 6 over 19 positions), kept and recomputed:
    /// the hidden states within 1e-5 and every parameter's gradient of a random probe loss
    /// within 1e-4 of its largest element.
    #[test]
    fn the_fused_training_ops_give_candles_values_and_gradients_for_every_architecture() {
        use crate::model::init::TinySpec;
        use crate::model::train::Student;
        use crate::model::Architecture;
        let archs = [
            Architecture::Llama,
            Architecture::Mistral,
            Architecture::Qwen2,
            Architecture::Qwen3,
            Architecture::Phi3,
        ];
        for arch in archs {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = TinySpec::new(arch, 97).config_json();
            if arch == Architecture::Mistral {
                cfg["sliding_window"] = 6.into();
            }
            std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
            let student = Student::from_dir(dir.path(), 3, &Device::Cpu).unwrap();
            let (b, t) = (2, 19);
            let ids: Vec<u32> = (0..b * t).map(|i| (i * 31 % 97) as u32).collect();
            let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap();
            let probe = randn((b, t, student.config.hidden_size, 1), 8)
                .reshape((b, t, student.config.hidden_size))
                .unwrap();
            for recompute in [false, true] {
                let run = |mode: Mode| {
                    let f = student
                        .model
                        .forward_train_in(&ids, recompute, mode)
                        .unwrap();
                    let hidden = f.hidden.detach();
                    let loss = (&f.hidden * &probe).unwrap().sum_all().unwrap();
                    let grads = student
                        .model
                        .backward_through_layers(f, loss.backward().unwrap())
                        .unwrap();
                    let grads: Vec<(String, Tensor)> = student
                        .params
                        .iter()
                        .filter(|(n, _)| n != "lm_head.weight")
                        .map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().clone()))
                        .collect();
                    (hidden, grads)
                };
                let (h_fused, g_fused) = run(Mode::Train);
                let (h_ref, g_ref) = run(Mode::TrainReference);
                let dh = crate::testing::max_abs_diff(&h_fused, &h_ref);
                assert!(
                    dh <= 1e-5,
                    "{arch:?} recompute {recompute}: hidden differs by {dh}"
                );
                for ((name, got), (_, want)) in g_fused.iter().zip(&g_ref) {
                    assert!(
                        crate::testing::max_abs(want) > 0.0,
                        "{arch:?}: no gradient reached {name}"
                    );
                    let d = crate::testing::rel_max_diff(got, want);
                    assert!(
                        d <= 1e-4,
                        "{arch:?} recompute {recompute}: ∂{name} differs by {d} of its largest"
                    );
                }
            }
        }
    }

    #[test]
    fn an_attention_block_holds_at_most_its_byte_budget() {
        // The 72B pipeline's shape: batch 4, 64 heads, 2048 positions: 2 MiB per query row.
        let rows = attention_block_rows(4, 64, 2048);
        assert_eq!(rows, 16);
        assert!(rows * 4 * 64 * 2048 * 4 <= ATTENTION_BLOCK_BYTES);
        assert_eq!(attention_block_rows(1, 2, 10), 10);
        assert_eq!(attention_block_rows(64, 128, 1 << 20), 1);
    }

    /// `with_bf16_products` packs every linear layer of each architecture (fused, biased and
    /// tied ones included), and the logits stay those of the f32 model up to bf16 rounding:
    /// a relative difference above zero (the products did change) and below 2⁻⁶, with a mean
    /// KL to the f32 model's distribution below 1e-4.
    #[test]
    fn bf16_products_pack_every_linear_layer_and_keep_the_f32_logits_within_bf16_rounding() {
        use crate::model::init::{write_tiny_model, TinySpec};
        use crate::model::{Architecture, ModelDir};
        for arch in [Architecture::Llama, Architecture::Qwen2, Architecture::Phi3] {
            let dir = tempfile::tempdir().unwrap();
            let mut spec = TinySpec::new(arch, 300);
            spec.layers = 2;
            write_tiny_model(dir.path(), &spec, None).unwrap();
            let model = ModelDir::open(dir.path()).unwrap();
            let f32_model = model.load(DType::F32, &Device::Cpu).unwrap();
            let ids: Vec<u32> = (0..2 * 40).map(|i| (i * 37 % 300) as u32).collect();
            let ids = Tensor::from_vec(ids, (2, 40), &Device::Cpu).unwrap();
            let reference = f32_model.forward(&ids, Mode::Infer).unwrap();
            let mut bf16_model = f32_model.with_bf16_products().unwrap();
            let projs = bf16_model.projs_mut();
            let packed = projs
                .iter()
                .filter(|p| matches!(p, Proj::Bf16 { .. }))
                .count();
            assert_eq!(
                packed,
                projs.len(),
                "{arch:?}: {packed} of {} packed",
                projs.len()
            );
            assert!(bf16_model.lm_head_weight().is_none());
            let got = bf16_model.forward(&ids, Mode::Infer).unwrap();
            assert_eq!(got.dims(), reference.dims());
            let scale = reference
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = crate::testing::max_abs_diff(&got, &reference);
            assert!(
                diff > 0.0 && diff < scale / 64.0,
                "{arch:?}: logits differ by {diff} (largest logit {scale})"
            );
            let lp = candle_nn::ops::log_softmax(&reference, D::Minus1).unwrap();
            let lq = candle_nn::ops::log_softmax(&got, D::Minus1).unwrap();
            let kl = (lp.exp().unwrap() * (&lp - &lq).unwrap())
                .unwrap()
                .sum(D::Minus1)
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(kl < 1e-4, "{arch:?}: mean KL {kl}");
        }
    }
}
