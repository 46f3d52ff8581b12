//! `config.json` of a Hugging Face decoder-only model, read into one normalized struct.
//!
//! Accepts the file as transformers 4.x and 5.x write it: `rope_theta` at the top level or
//! inside `rope_parameters`, `rope_scaling` or `rope_parameters.rope_type`, `torch_dtype` or
//! `dtype`, `head_dim` given or derived, `eos_token_id` as a number or a list.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

/// The architectures this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, phi3";

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "llama" => Self::Llama,
            "mistral" => Self::Mistral,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "phi3" => Self::Phi3,
            _ => return None,
        })
    }

    /// The `architectures` entry transformers writes for the causal-LM head.
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Phi3 => "Phi3ForCausalLM",
        }
    }
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Each frequency divided by its own factor, `[head_dim / 2]`: how a GGUF file stores
    /// Llama-3 scaling (its `rope_freqs.weight` tensor; llama.cpp's `freq_factors`).
    Factors(Vec<f64>),
}

/// The normalized model configuration.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on gate, up and down projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer: attend to at most this many previous positions (itself included).
    pub sliding_window: Vec<Option<usize>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written, if any.
    pub stored_dtype: Option<String>,
    /// The file it was read from, for error messages.
    pub path: PathBuf,
}

impl ModelConfig {
    /// Read `config.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(&value, path)
    }

    /// Read a parsed `config.json`; `path` is only used in error messages.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::field(path, "(root)", "expected a JSON object"))?;
        let f = Fields { obj, path };
        let model_type = f.string("model_type")?;
        let architecture = Architecture::from_model_type(&model_type).ok_or_else(|| {
            Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: model_type.clone(),
                supported: Architecture::SUPPORTED.to_string(),
            }
        })?;

        let vocab_size = f.usize("vocab_size")?;
        let hidden_size = f.usize("hidden_size")?;
        let intermediate_size = f.usize("intermediate_size")?;
        let num_hidden_layers = f.usize("num_hidden_layers")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        for (name, v) in [
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("intermediate_size", intermediate_size),
            ("num_hidden_layers", num_hidden_layers),
            ("num_attention_heads", num_attention_heads),
            ("num_key_value_heads", num_key_value_heads),
        ] {
            if v == 0 {
                return Err(Error::field(path, name, "must be at least 1"));
            }
        }
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::field(
                path,
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(Error::field(
                        path,
                        "head_dim",
                        format!(
                            "absent, and hidden_size = {hidden_size} is not a multiple of num_attention_heads = {num_attention_heads}"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(Error::field(
                path,
                "head_dim",
                format!("must be even and positive, found {head_dim}"),
            ));
        }
        if let Some(factor) = f.opt_f64("partial_rotary_factor")? {
            if factor != 1.0 {
                return Err(Error::field(
                    path,
                    "partial_rotary_factor",
                    format!("{factor} is not supported (only 1.0)"),
                ));
            }
        }
        let act = f.opt_string("hidden_act")?.unwrap_or_else(|| "silu".into());
        if act != "silu" {
            return Err(Error::field(
                path,
                "hidden_act",
                format!("`{act}` is not supported (only silu)"),
            ));
        }

        // transformers 5.x: `rope_parameters` holds theta and the scaling; 4.x: top-level
        // `rope_theta` and `rope_scaling`.
        let rope_params = match obj.get("rope_parameters") {
            Some(Value::Object(m)) => Some(m),
            Some(Value::Null) | None => None,
            Some(_) => return Err(Error::field(path, "rope_parameters", "expected an object")),
        };
        let default_theta = match architecture {
            Architecture::Qwen2 | Architecture::Qwen3 => 1_000_000.0,
            _ => 10_000.0,
        };
        let rope_theta = match rope_params {
            Some(p) => Fields { obj: p, path }.opt_f64("rope_theta")?,
            None => None,
        }
        .or(f.opt_f64("rope_theta")?)
        .unwrap_or(default_theta);
        let scaling = match obj.get("rope_scaling") {
            Some(Value::Object(m)) => Some(("rope_scaling", m)),
            Some(Value::Null) | None => rope_params.map(|p| ("rope_parameters", p)),
            Some(_) => {
                return Err(Error::field(
                    path,
                    "rope_scaling",
                    "expected an object or null",
                ))
            }
        };
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some((key, m)) => parse_rope_scaling(key, m, path)?,
        };
        let max_position_embeddings = f.opt_usize("max_position_embeddings")?.unwrap_or(4096);

        let tie_word_embeddings = f.opt_bool("tie_word_embeddings")?.unwrap_or(false);
        let attention_bias = f.opt_bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Llama | Architecture::Qwen3 => (attention_bias, attention_bias),
            Architecture::Mistral | Architecture::Phi3 => (false, false),
        };
        let mlp_bias =
            architecture == Architecture::Llama && f.opt_bool("mlp_bias")?.unwrap_or(false);

        let sliding_window = sliding_windows(&f, architecture, num_hidden_layers)?;
        let bos_token_id = f.opt_ids("bos_token_id")?.and_then(|v| v.first().copied());
        let eos_token_ids = f.opt_ids("eos_token_id")?.unwrap_or_default();
        let stored_dtype = f.opt_string("dtype")?.or(f.opt_string("torch_dtype")?);

        Ok(Self {
            architecture,
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias,
            sliding_window,
            bos_token_id,
            eos_token_ids,
            stored_dtype,
            path: path.to_path_buf(),
        })
    }

    /// Rotary inverse frequencies, `[head_dim / 2]`, with any scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        let scaled: Vec<f64> = match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Factors(ref factors) => {
                base.iter().zip(factors).map(|(f, d)| f / d).collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        };
        // transformers computes inv_freq in f32 from the f64-free formula; rounding once here
        // keeps the same values.
        scaled.into_iter().map(|f| f as f32).collect()
    }
}

fn parse_rope_scaling(key: &str, m: &Map<String, Value>, path: &Path) -> Result<RopeScaling> {
    let f = Fields { obj: m, path };
    let kind = f
        .opt_string("rope_type")?
        .or(f.opt_string("type")?)
        .unwrap_or_else(|| "default".into());
    let field = |name: &str| format!("{key}.{name}");
    let get = |name: &str| -> Result<f64> {
        f.opt_f64(name)?.ok_or_else(|| {
            Error::field(
                path,
                field(name),
                format!("required for rope_type `{kind}`"),
            )
        })
    };
    Ok(match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: get("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: get("factor")?,
            low_freq_factor: get("low_freq_factor")?,
            high_freq_factor: get("high_freq_factor")?,
            original_max_position_embeddings: get("original_max_position_embeddings")?,
        },
        other => {
            return Err(Error::field(
                path,
                field("rope_type"),
                format!("`{other}` is not supported (supported: default, linear, llama3)"),
            ))
        }
    })
}

fn sliding_windows(f: &Fields, arch: Architecture, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = f.opt_usize("sliding_window")?;
    if let Some(Value::Array(types)) = f.obj.get("layer_types") {
        if types.len() != layers {
            return Err(Error::field(
                f.path,
                "layer_types",
                format!("has {} entries, num_hidden_layers is {layers}", types.len()),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => window.map(Some).ok_or_else(|| {
                    Error::field(f.path, "sliding_window", "required by layer_types")
                }),
                _ => Err(Error::field(
                    f.path,
                    "layer_types",
                    format!("unknown layer type {t}"),
                )),
            })
            .collect();
    }
    Ok(match arch {
        Architecture::Mistral | Architecture::Phi3 => vec![window; layers],
        Architecture::Qwen2 | Architecture::Qwen3 => {
            if f.opt_bool("use_sliding_window")?.unwrap_or(false) {
                let from = f.opt_usize("max_window_layers")?.unwrap_or(layers);
                (0..layers)
                    .map(|i| if i >= from { window } else { None })
                    .collect()
            } else {
                vec![None; layers]
            }
        }
        Architecture::Llama => vec![None; layers],
    })
}

/// Typed access to fields of a JSON object, with errors naming the file and field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn present(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<String> {
        self.opt_string(name)?
            .ok_or_else(|| Error::field(self.path, name, "missing"))
    }

    fn opt_string(&self, name: &str) -> Result<Option<String>> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Error::field(
                self.path,
                name,
                format!("expected a string, found {v}"),
            )),
        }
    }

    fn usize(&self, name: &str) -> Result<usize> {
        self.opt_usize(name)?
            .ok_or_else(|| Error::field(self.path, name, "missing"))
    }

    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        match self.present(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                Error::field(
                    self.path,
                    name,
                    format!("expected a non-negative integer, found {v}"),
                )
            }),
        }
    }

    fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        match self.present(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::field(self.path, name, format!("expected a number, found {v}"))
            }),
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Error::field(
                self.path,
                name,
                format!("expected true or false, found {v}"),
            )),
        }
    }

    /// A token id written as a number or a list of numbers.
    fn opt_ids(&self, name: &str) -> Result<Option<Vec<u32>>> {
        let bad = |v: &Value| {
            Error::field(
                self.path,
                name,
                format!("expected a token id or a list of ids, found {v}"),
            )
        };
        match self.present(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| bad(v)))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => v
                .as_u64()
                .map(|n| Some(vec![n as u32]))
                .ok_or_else(|| bad(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "eos_token_id": [7, 8], "torch_dtype": "bfloat16", "rope_theta": 500000.0
        })
    }

    #[test]
    fn transformers_4_and_5_layouts_give_the_same_config() {
        let v4 = base();
        let mut v5 = base();
        let o = v5.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("torch_dtype");
        o.insert("dtype".into(), json!("bfloat16"));
        o.insert(
            "rope_parameters".into(),
            json!({"rope_theta": 500000.0, "rope_type": "default"}),
        );
        let a = ModelConfig::from_value(&v4, Path::new("a")).unwrap();
        let b = ModelConfig::from_value(&v5, Path::new("b")).unwrap();
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(b.rope_theta, 500000.0);
        assert_eq!(a.head_dim, 8);
        assert_eq!(a.stored_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(b.stored_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(a.eos_token_ids, vec![7, 8]);
        assert_eq!(a.rope_inv_freq(), b.rope_inv_freq());
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let cfg = ModelConfig::from_value(&v, Path::new("c")).unwrap();
        let scaled = cfg.rope_inv_freq();
        v["rope_scaling"] = Value::Null;
        let plain = ModelConfig::from_value(&v, Path::new("c"))
            .unwrap()
            .rope_inv_freq();
        assert_eq!(
            scaled[0], plain[0],
            "highest frequency (wavelength 2π < 8192/4) is kept"
        );
        let last = plain.len() - 1;
        assert!(
            (scaled[last] - plain[last] / 8.0).abs() < 1e-12,
            "lowest frequency divided by factor"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = base();
        v["model_type"] = json!("gpt2");
        let e = ModelConfig::from_value(&v, Path::new("m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gpt2") && e.contains("m/config.json") && e.contains("llama"),
            "{e}"
        );
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = ModelConfig::from_value(&v, Path::new("m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size") && e.contains("missing"), "{e}");
        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        let e = ModelConfig::from_value(&v, Path::new("m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
    }
}
