//! Memory plans: the peak memory a run needs on its device, estimated from the model's config
//! and the run's settings before anything large is allocated, so a run that cannot fit is
//! refused in one sentence instead of dying of an out-of-memory error an hour in.
//!
//! Each [`Term`] is one kind of buffer (weights, optimizer state, activations, attention scores,
//! logits chunks) and names the flag that shrinks it. The estimates are upper bounds of what
//! the forward and backward keep alive at once, counted from the shapes the code builds; `docs`
//! and the tests compare them with measured peaks.

use candle_core::{DType, Device};

use super::config::ModelConfig;
use super::decoder::ATTENTION_BLOCK_BYTES;
use super::weights::expected_tensors;
use crate::error::{Error, Result};

/// One kind of buffer of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub what: &'static str,
    pub bytes: u64,
    /// What shrinks it, as the user would act on it (a flag), or `None` when nothing does.
    pub shrink: Option<&'static str>,
}

/// The estimated peak memory of a run on its device.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub terms: Vec<Term>,
}

/// Host memory of a distill run besides its tensors.
const DISTILL_RUNTIME_BYTES: u64 = 192 << 20;

/// The settings of a distill run that its memory depends on.
#[derive(Clone, Copy, Debug)]
pub struct DistillSettings {
    pub shape: ForwardShape,
    pub grad_accum: usize,
    /// f32 copies of the weights the optimizer keeps (host path: master, m, v; device: m, v).
    pub optimizer_copies: u64,
    pub loss_chunk_bytes: usize,
    /// `[chunk, vocab]` f32 buffers the loss of a chunk holds at once.
    pub chunk_temporaries: u64,
    /// `[vocab, hidden]` f32 buffers of the output projection's backward besides the
    /// gradients: 3, and 2 more with `distill --precision bf16` (its packed weights and the
    /// transposed gradient).
    pub projection_copies: u64,
    pub on_cpu: bool,
    pub recompute: bool,
}

/// The settings of a teacher forward that the plan depends on.
#[derive(Clone, Copy, Debug)]
pub struct ForwardShape {
    pub batch: usize,
    pub seq_len: usize,
}

/// Number of parameters of a model of `cfg` (the output projection once when tied).
pub fn parameters(cfg: &ModelConfig) -> u64 {
    expected_tensors(cfg)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum()
}

/// Bytes of one layer's activations per position in a forward: the residual stream and its
/// norm, q/k/v and their rotated copies, the attention output, the MLP's gate, up and product.
fn activation_elems_per_position(cfg: &ModelConfig) -> u64 {
    let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let qkv = ((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim) as u64;
    3 * h + 2 * qkv + cfg.num_attention_heads as u64 * cfg.head_dim as u64 + 3 * i
}

impl MemoryPlan {
    /// `precompute`'s teacher forward: weights in `dtype`, one layer's activations at a time
    /// (inference frees them as it goes), one block of attention scores, the logits chunks and,
    /// on the CPU, the chunks queued for the top-k thread.
    /// The same plan with the teacher's weights taking `bytes` (a quantized GGUF teacher),
    /// shrunk by `shrink`.
    pub fn with_teacher_weights(mut self, bytes: u64, shrink: Option<&'static str>) -> Self {
        for t in &mut self.terms {
            if t.what == "teacher weights" {
                t.bytes = bytes;
                t.shrink = shrink;
            }
        }
        self
    }

    pub fn precompute(
        cfg: &ModelConfig,
        dtype: DType,
        shape: ForwardShape,
        logits_chunk_bytes: usize,
        queued_logits_bytes: usize,
        on_cpu: bool,
    ) -> Self {
        let db = dtype.size_in_bytes() as u64;
        let positions = (shape.batch * shape.seq_len) as u64;
        let heads = cfg.num_attention_heads as u64;
        let t = shape.seq_len as u64;
        let scores = (shape.batch as u64 * heads * t * t * 4).min(ATTENTION_BLOCK_BYTES as u64);
        let weights_shrink = if dtype == DType::F32 {
            Some("--dtype bf16")
        } else {
            None
        };
        let queued = if on_cpu {
            queued_logits_bytes as u64
        } else {
            0
        };
        Self {
            terms: vec![
                Term {
                    what: "teacher weights",
                    bytes: parameters(cfg) * db,
                    shrink: weights_shrink,
                },
                Term {
                    what: "activations",
                    // Two layers' worth: the one computing and the residual it reads.
                    bytes: 2 * positions * activation_elems_per_position(cfg) * db,
                    shrink: Some("--batch-size"),
                },
                Term {
                    what: "attention scores",
                    bytes: 3 * scores,
                    shrink: Some("--batch-size"),
                },
                Term {
                    what: "logits chunks",
                    bytes: 3 * logits_chunk_bytes as u64 + queued,
                    shrink: None,
                },
            ],
        }
    }

    /// `distill`'s step: f32 weights, their gradients (twice with gradient accumulation), the
    /// optimizer state (host path: master weights and two moments; device path: two moments),
    /// every layer's activations and attention scores kept for the backward, and the loss
    /// chunks (`chunk_temporaries` `[chunk, vocab]` buffers of `loss_chunk_bytes`).
    pub fn distill(cfg: &ModelConfig, run: &DistillSettings) -> Self {
        let DistillSettings {
            shape,
            grad_accum,
            optimizer_copies,
            loss_chunk_bytes,
            chunk_temporaries,
            projection_copies,
            on_cpu,
            recompute,
        } = *run;
        let p = parameters(cfg) * 4;
        let positions = (shape.batch * shape.seq_len) as u64;
        let layers = cfg.num_hidden_layers as u64;
        let heads = cfg.num_attention_heads as u64;
        let t = shape.seq_len as u64;
        let vocab_hidden = (cfg.vocab_size * cfg.hidden_size) as u64 * 4;
        let repeat = (cfg.num_attention_heads * cfg.head_dim) as u64 * 2;
        // With --recompute one layer's graph exists at a time, plus every layer's input.
        let (kept_layers, inputs) = if recompute {
            (1, layers * positions * cfg.hidden_size as u64 * 4)
        } else {
            (layers, 0)
        };
        let shrink = if recompute {
            Some("--batch-size")
        } else {
            Some("--recompute or --batch-size")
        };
        let mut plan = Self {
            terms: vec![
                Term {
                    what: "student weights",
                    bytes: p,
                    shrink: None,
                },
                Term {
                    what: "gradients",
                    bytes: p * if grad_accum > 1 { 2 } else { 1 },
                    shrink: None,
                },
                Term {
                    what: "optimizer state",
                    bytes: p * optimizer_copies,
                    shrink: None,
                },
                Term {
                    what: "activations",
                    // Twice the forward's (the backward's gradients of the same shapes), plus
                    // grouped-query attention's repeated keys and values.
                    bytes: 2
                        * kept_layers
                        * positions
                        * (activation_elems_per_position(cfg) + repeat)
                        * 4
                        + inputs,
                    shrink,
                },
                Term {
                    what: "attention scores",
                    // Scores, masked scores, softmax kept for the backward, and its gradient.
                    bytes: 4 * kept_layers * shape.batch as u64 * heads * t * t * 4,
                    shrink,
                },
                Term {
                    what: "logits chunks",
                    bytes: chunk_temporaries * loss_chunk_bytes as u64
                        + projection_copies * vocab_hidden
                        + positions * cfg.hidden_size as u64 * 4 * 2,
                    shrink: None,
                },
            ],
        };
        if on_cpu {
            // The binary, the loader's prefetched batches and the blocks the allocator keeps
            // (measured: `benches/memory_plan.py`); on a GPU they are host memory.
            plan.terms.push(Term {
                what: "runtime",
                bytes: DISTILL_RUNTIME_BYTES,
                shrink: None,
            });
        }
        plan
    }

    pub fn total(&self) -> u64 {
        self.terms.iter().map(|t| t.bytes).sum()
    }

    pub fn largest(&self) -> &Term {
        self.terms
            .iter()
            .max_by_key(|t| t.bytes)
            .expect("a plan has terms")
    }

    /// `2.31 GiB (teacher weights 1.20 GiB, activations 0.51 GiB, ...)`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| format!("{} {}", t.what, human(t.bytes)))
            .collect();
        format!("{} ({})", human(self.total()), parts.join(", "))
    }

    /// Print the plan to `out` (`estimated peak memory on DEVICE: …`) and refuse it when it is
    /// larger than the free memory of `device` (named `spec` on the command line).
    pub fn announce(
        &self,
        out: &mut dyn std::io::Write,
        spec: &super::DeviceSpec,
        device: &Device,
    ) -> Result<()> {
        writeln!(out, "estimated peak memory on {spec}: {}", self.describe())
            .map_err(|e| Error::Internal(format!("writing the memory plan: {e}")))?;
        self.check(free_bytes(device), &spec.to_string())
    }

    /// Refuse a plan larger than `free` bytes of `device_flag`'s device, naming the largest
    /// term and what shrinks it.
    pub fn check(&self, free: Option<u64>, device: &str) -> Result<()> {
        let Some(free) = free else { return Ok(()) };
        if self.total() <= free {
            return Ok(());
        }
        let big = self.largest();
        let remedy = match big.shrink {
            Some(flag) => format!("lower it with {flag}"),
            None => {
                "nothing but a smaller model or a device with more memory lowers it".to_string()
            }
        };
        Err(Error::flag(
            "--device",
            format!(
                "the run needs about {} on {device} but {} is free; the largest part is the {} ({}): {remedy}",
                human(self.total()),
                human(free),
                big.what,
                human(big.bytes),
            ),
        ))
    }
}

/// Bytes as MiB or GiB with two decimals.
pub fn human(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    const GIB: f64 = (1u64 << 30) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

/// Free memory of `device` in bytes: on CUDA the driver's free memory; on the CPU the kernel's
/// `MemAvailable`, lowered to what the cgroup (container) limit leaves. `None` when unknown.
/// `TAIDCACHE_FREE_MEMORY` (bytes) overrides both, a testing aid.
pub fn free_bytes(device: &Device) -> Option<u64> {
    if let Some(v) = std::env::var("TAIDCACHE_FREE_MEMORY")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(v);
    }
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64),
        Device::Cpu => cpu_free(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn cpu_free() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
    })? * 1024;
    let cgroup = (|| {
        let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
        let max = max.trim().parse::<u64>().ok()?;
        let current = std::fs::read_to_string("/sys/fs/cgroup/memory.current").ok()?;
        Some(max.saturating_sub(current.trim().parse::<u64>().ok()?))
    })();
    Some(cgroup.map_or(available, |c| c.min(available)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Architecture;
    use crate::model::init::TinySpec;

    /// A Qwen2 config: (hidden, intermediate, layers, heads, kv heads, vocab, tied).
    fn qwen2(shape: (usize, usize, usize, usize, usize, usize, bool)) -> ModelConfig {
        let mut spec = TinySpec::new(Architecture::Qwen2, shape.5);
        spec.hidden_size = shape.0;
        spec.intermediate_size = shape.1;
        spec.layers = shape.2;
        spec.heads = shape.3;
        spec.kv_heads = shape.4;
        spec.tie_word_embeddings = shape.6;
        spec.max_position_embeddings = 32_768;
        let dir = tempfile::tempdir().unwrap();
        let path = spec.write_config(dir.path()).unwrap();
        ModelConfig::from_file(&path).unwrap()
    }

    fn qwen2_72b() -> ModelConfig {
        qwen2((8192, 29_568, 80, 64, 8, 152_064, false))
    }

    const GIB: u64 = 1 << 30;
    /// What an 80 GB H100 and a 141 GB H200 have free for a process.
    const H100: u64 = 79 * GIB;
    const H200: u64 = 139 * GIB;

    /// The table of the README's GPU section: which teacher fits which GPU in which dtype for
    /// `precompute` at batch 4 × 2048, and which student batch fits for `distill` (device path).
    #[test]
    fn the_readme_gpu_table() {
        let shape = ForwardShape {
            batch: 4,
            seq_len: 2048,
        };
        let teachers = [
            (
                "Qwen2-7B",
                qwen2((3584, 18_944, 28, 28, 4, 152_064, false)),
                7.6e9,
            ),
            (
                "Qwen2.5-32B",
                qwen2((5120, 27_648, 64, 40, 8, 152_064, false)),
                32.8e9,
            ),
            ("Qwen2-72B", qwen2_72b(), 72.7e9),
        ];
        let mut rows = Vec::new();
        for (name, cfg, params) in &teachers {
            let p = parameters(cfg) as f64;
            assert!((p / params - 1.0).abs() < 0.01, "{name}: {p} parameters");
            for dtype in [DType::F32, DType::BF16] {
                let plan = MemoryPlan::precompute(cfg, dtype, shape, 24 << 20, 256 << 20, false);
                let fits = |free| plan.check(Some(free), "cuda:0").is_ok();
                rows.push(format!(
                    "{name} {dtype:?} {:.0} GiB h100 {} h200 {}",
                    plan.total() as f64 / GIB as f64,
                    fits(H100),
                    fits(H200)
                ));
            }
        }
        // GGUF: every matrix in its blocks (Q8_0: 34 bytes per 32 weights; Q4_K: 144 per 256),
        // the embedding table dequantized to bf16 beside them (`GgufModel::memory_bytes`).
        let cfg = qwen2_72b();
        for (ty, bits) in [("Q8_0", 8.5), ("Q4_K", 4.5)] {
            let table = (cfg.vocab_size * cfg.hidden_size * 2) as u64;
            let weights = (parameters(&cfg) as f64 * bits / 8.0) as u64 + table;
            let plan = MemoryPlan::precompute(&cfg, DType::BF16, shape, 24 << 20, 256 << 20, false)
                .with_teacher_weights(weights, None);
            rows.push(format!(
                "Qwen2-72B GGUF {ty} {:.0} GiB h100 {} h200 {}",
                plan.total() as f64 / GIB as f64,
                plan.check(Some(H100), "cuda:0").is_ok(),
                plan.check(Some(H200), "cuda:0").is_ok()
            ));
        }
        let student = qwen2((1536, 8960, 28, 12, 2, 151_936, true));
        for (batch, seq_len, recompute) in [
            (8, 2048, false),
            (2, 2048, false),
            (1, 2048, false),
            (8, 2048, true),
        ] {
            let plan = MemoryPlan::distill(
                &student,
                &DistillSettings {
                    shape: ForwardShape { batch, seq_len },
                    grad_accum: 8,
                    optimizer_copies: 2,
                    loss_chunk_bytes: 64 << 20,
                    chunk_temporaries: 12,
                    projection_copies: 3,
                    on_cpu: false,
                    recompute,
                },
            );
            rows.push(format!(
                "Qwen2-1.5B student {batch}x{seq_len}{} {:.0} GiB h100 {} h200 {}",
                if recompute { " recompute" } else { "" },
                plan.total() as f64 / GIB as f64,
                plan.check(Some(H100), "cuda:0").is_ok(),
                plan.check(Some(H200), "cuda:0").is_ok()
            ));
        }
        let text = rows.join("\n");
        println!("{text}");
        let want = [
            "Qwen2-7B F32 33 GiB h100 true h200 true",
            "Qwen2-7B BF16 17 GiB h100 true h200 true",
            "Qwen2.5-32B F32 129 GiB h100 false h200 true",
            "Qwen2.5-32B BF16 65 GiB h100 true h200 true",
            "Qwen2-72B F32 280 GiB h100 false h200 false",
            "Qwen2-72B BF16 140 GiB h100 false h200 false",
            "Qwen2-72B GGUF Q8_0 79 GiB h100 true h200 true",
            "Qwen2-72B GGUF Q4_K 45 GiB h100 true h200 true",
            "Qwen2-1.5B student 8x2048 338 GiB h100 false h200 false",
            "Qwen2-1.5B student 2x2048 109 GiB h100 false h200 true",
            "Qwen2-1.5B student 1x2048 70 GiB h100 true h200 true",
            "Qwen2-1.5B student 8x2048 recompute 46 GiB h100 true h200 true",
        ];
        assert_eq!(text, want.join("\n"));
    }

    #[test]
    fn a_72b_teacher_in_bf16_is_refused_on_one_80_gb_gpu_naming_its_weights() {
        let cfg = qwen2_72b();
        // Qwen2-72B has 72.7 billion parameters.
        let p = parameters(&cfg) as f64;
        assert!((p / 72.7e9 - 1.0).abs() < 0.01, "{p}");
        let shape = ForwardShape {
            batch: 4,
            seq_len: 2048,
        };
        let plan = MemoryPlan::precompute(&cfg, DType::BF16, shape, 24 << 20, 256 << 20, false);
        let weights = plan.terms[0].bytes as f64;
        assert!((weights / 145.4e9 - 1.0).abs() < 0.01, "{weights}");
        assert_eq!(plan.largest().what, "teacher weights");
        let err = plan
            .check(Some(80 * 1_000_000_000), "cuda:0")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--device:") && err.contains("teacher weights") && !err.contains('\n'),
            "{err}"
        );
        assert!(plan.check(Some(200 << 30), "cuda:0").is_ok());
        assert!(plan.check(None, "cuda:0").is_ok());
    }

    #[test]
    fn training_attention_grows_with_the_square_of_the_sequence_and_names_the_batch_flag() {
        let mut spec = TinySpec::new(Architecture::Llama, 32_000);
        spec.hidden_size = 512;
        spec.intermediate_size = 1024;
        spec.layers = 4;
        spec.heads = 8;
        spec.kv_heads = 8;
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig::from_file(&spec.write_config(dir.path()).unwrap()).unwrap();
        let plan = |seq_len| {
            MemoryPlan::distill(
                &cfg,
                &DistillSettings {
                    shape: ForwardShape { batch: 8, seq_len },
                    grad_accum: 1,
                    optimizer_copies: 3,
                    loss_chunk_bytes: 64 << 20,
                    chunk_temporaries: 4,
                    projection_copies: 3,
                    on_cpu: true,
                    recompute: false,
                },
            )
        };
        let (a, b) = (plan(1024), plan(4096));
        let scores = |p: &MemoryPlan| {
            p.terms
                .iter()
                .find(|t| t.what == "attention scores")
                .unwrap()
                .bytes
        };
        assert_eq!(scores(&b), 16 * scores(&a));
        assert_eq!(b.largest().what, "attention scores");
        let err = b.check(Some(1 << 30), "cpu").unwrap_err().to_string();
        assert!(err.contains("--recompute or --batch-size"), "{err}");
        assert!(b.describe().contains("attention scores"));
    }
}
