//! Seeded random models: the student's random init, and [`TinySpec`], the shape of a small
//! decoder written as a Hugging Face directory (the demo's models and the tests' fixtures).
//! Deterministic for a seed on every platform.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use super::config::{Architecture, ModelConfig};
use super::weights::{expected_tensors, CONFIG_FILE, SINGLE_FILE, TOKENIZER_FILE};
use crate::error::{CandleContext, Error, IoContext, Result};

/// The shape of a small decoder, written as a Hugging Face `config.json`: the demo's teachers
/// and students, and the test fixtures.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub eos_token_id: u32,
    pub seed: u64,
}

impl TinySpec {
    pub fn new(architecture: Architecture, vocab_size: usize) -> Self {
        Self {
            architecture,
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            tie_word_embeddings: architecture == Architecture::Qwen2,
            max_position_embeddings: 512,
            eos_token_id: 0,
            seed: 0,
        }
    }

    /// `config.json` as transformers 5.x writes it.
    pub fn config_json(&self) -> Value {
        let model_type = match self.architecture {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Phi3 => "phi3",
        };
        let mut cfg = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden_size / self.heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.eos_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": "float32",
        });
        if self.architecture == Architecture::Mistral {
            cfg["sliding_window"] = json!(self.max_position_embeddings);
        }
        cfg
    }
}

impl TinySpec {
    /// Write `DIR/config.json` alone: a student that `distill` initializes at random.
    pub fn write_config(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).at(dir)?;
        let path = dir.join(CONFIG_FILE);
        let text =
            serde_json::to_string_pretty(&self.config_json()).map_err(|source| Error::Json {
                path: path.clone(),
                source,
            })?;
        std::fs::write(&path, text).at(&path)?;
        Ok(path)
    }
}

/// A deterministic stream of standard normal numbers (splitmix64 + Box–Muller).
pub struct Normal(u64);

impl Normal {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn sample(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// Write `spec` as a Hugging Face directory: `config.json`, `model.safetensors` (f32) and, if
/// given, `tokenizer.json`.
pub fn write_tiny_model(
    dir: &Path,
    spec: &TinySpec,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<()> {
    let cfg_path = spec.write_config(dir)?;
    let cfg = ModelConfig::from_value(&spec.config_json(), &cfg_path)?;
    let mut rng = Normal::new(spec.seed);
    let mut tensors = HashMap::new();
    for (name, shape) in expected_tensors(&cfg) {
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let scale = if shape.len() == 2 {
            1.0 / (shape[1] as f32).sqrt()
        } else {
            0.1
        };
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let x = rng.sample();
                if is_norm {
                    1.0 + 0.1 * x
                } else if name.contains("embed_tokens") {
                    x
                } else {
                    x * scale
                }
            })
            .collect();
        tensors.insert(
            name,
            Tensor::from_vec(data, shape, &Device::Cpu).ctx("fixture tensor")?,
        );
    }
    candle_core::safetensors::save(&tensors, dir.join(SINGLE_FILE))
        .ctx("writing fixture safetensors")?;
    if let Some(tok) = tokenizer {
        let path = dir.join(TOKENIZER_FILE);
        tok.save(&path, false)
            .map_err(|e| Error::tokenizer(&path, e.to_string(), Some(e)))?;
    }
    Ok(())
}
