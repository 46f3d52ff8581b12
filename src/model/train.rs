//! A trainable student: the decoder's parameters as candle `Var`s (f32 master weights), made
//! from a Hugging Face directory (pretrained) or a `config.json` alone (seeded random init),
//! and saved back as a Hugging Face directory.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::config::ModelConfig;
use super::init::Normal;
use super::weights::{self, CONFIG_FILE, SINGLE_FILE, TOKENIZER_FILE};
use super::{Decoder, Mode};
use crate::error::{CandleContext, Error, IoContext, Result};

/// Standard deviation of the random init of linear and embedding weights (transformers'
/// default `initializer_range`).
pub const INIT_STD: f32 = 0.02;

pub struct Student {
    pub model: Decoder,
    pub config: ModelConfig,
    /// `config.json` as read, rewritten on save (dtype updated).
    pub config_json: serde_json::Value,
    /// Every parameter, sorted by its Hugging Face name.
    pub params: Vec<(String, Var)>,
    /// Recompute each layer in the backward instead of keeping its activations
    /// ([`super::Decoder::forward_train`]); `distill --recompute`.
    pub recompute: bool,
    /// Run the output projection's products in bf16 on the CPU (`distill --precision bf16`,
    /// `distill::cpu_head`).
    pub bf16_output_products: bool,
    /// The kernels of the training forward and backward: [`Mode::Train`] (the fused CPU ops
    /// where they apply) unless a test asks for candle's ([`Mode::TrainReference`]).
    pub train_kernels: Mode,
    varmap: VarMap,
}

impl Student {
    /// A student from `dir`: its safetensors if present (pretrained init), else a seeded random
    /// init from `config.json` alone.
    pub fn from_dir(dir: &Path, seed: u64, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).at(&cfg_path)?;
        let config_json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: cfg_path.clone(),
                source,
            })?;
        let config = ModelConfig::from_value(&config_json, &cfg_path)?;
        let has_weights = dir.join(SINGLE_FILE).exists() || dir.join(weights::INDEX_FILE).exists();
        let files = if has_weights {
            let files = weights::safetensors_files(dir)?;
            weights::check_tensors(dir, &config, &files)?;
            Some(files)
        } else {
            // Refuse a pickle-only directory rather than silently starting from random weights.
            match weights::safetensors_files(dir) {
                Err(e @ Error::PickleCheckpoint { .. }) => return Err(e),
                _ => None,
            }
        };
        let mut student = Self::build(config, config_json, device)?;
        match files {
            Some(files) => student.load_weights(dir, &files)?,
            None => student.random_init(seed)?,
        }
        Ok(student)
    }

    fn build(config: ModelConfig, config_json: serde_json::Value, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Decoder::new(&config, vb).ctx("building the student")?;
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| Error::Internal("variable map poisoned".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            model,
            config,
            config_json,
            params,
            recompute: false,
            bf16_output_products: false,
            train_kernels: Mode::Train,
            varmap,
        })
    }

    fn load_weights(&mut self, dir: &Path, files: &[PathBuf]) -> Result<()> {
        // SAFETY: read-only maps of files nobody truncates while we copy out of them.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }
            .ctx(format!("{}: reading safetensors", dir.display()))?;
        for (name, var) in &self.params {
            let t = st
                .load(name, var.device())
                .ctx(format!("{}: tensor {name}", dir.display()))?
                .to_dtype(DType::F32)
                .ctx(name.clone())?;
            var.set(&t)
                .ctx(format!("{}: tensor {name}", dir.display()))?;
            if !all_finite(&t)? {
                let file = match files {
                    [one] => one.clone(),
                    _ => dir.to_path_buf(),
                };
                return Err(Error::model(
                    file,
                    format!("tensor `{name}` holds non-finite values (NaN or infinity): training cannot start from these weights"),
                ));
            }
        }
        Ok(())
    }

    /// The name of the first parameter holding a NaN or an infinity, if any.
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        for (name, var) in &self.params {
            if !all_finite(var.as_tensor())? {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }

    /// Normal(0, INIT_STD) for matrices, ones for norms, zeros for biases; deterministic in `seed`.
    fn random_init(&mut self, seed: u64) -> Result<()> {
        let mut rng = Normal::new(seed);
        for (name, var) in &self.params {
            let shape = var.shape().clone();
            let n = shape.elem_count();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| rng.sample() * INIT_STD).collect()
            };
            let t = Tensor::from_vec(data, shape, var.device()).ctx(name.clone())?;
            var.set(&t).ctx(name.clone())?;
        }
        Ok(())
    }

    /// The output projection's variable (the embedding when tied).
    pub fn lm_head_var(&self) -> &Var {
        let name = if self.config.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .expect("the decoder always has an output projection")
    }

    /// Write a Hugging Face directory: `model.safetensors` in `dtype` under the HF tensor
    /// names, `config.json` (dtype updated) and, if given, a copy of `tokenizer.json`.
    /// Written to `<dir>.tmp` and renamed, so a crash never leaves half a directory.
    pub fn save_hf(&self, dir: &Path, dtype: DType, tokenizer: Option<&Path>) -> Result<()> {
        let tmp = dir.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        std::fs::create_dir_all(&tmp).at(&tmp)?;
        self.write_hf_files(&tmp, dtype, tokenizer)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).at(dir)?;
        }
        std::fs::rename(&tmp, dir).at(dir)?;
        Ok(())
    }

    /// Write the Hugging Face files into the existing directory `dir`, each fsynced.
    pub fn write_hf_files(&self, dir: &Path, dtype: DType, tokenizer: Option<&Path>) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(dtype).ctx(n.clone())?)))
            .collect::<Result<_>>()?;
        let path = dir.join(SINGLE_FILE);
        candle_core::safetensors::save(&tensors.into_iter().collect(), &path)
            .ctx(format!("writing {}", path.display()))?;
        let mut cfg = self.config_json.clone();
        if let Some(o) = cfg.as_object_mut() {
            o.remove("torch_dtype");
            o.insert(
                "dtype".into(),
                serde_json::Value::String(hf_dtype_name(dtype).into()),
            );
        }
        let cfg_path = dir.join(CONFIG_FILE);
        std::fs::write(
            &cfg_path,
            serde_json::to_string_pretty(&cfg).unwrap_or_default(),
        )
        .at(&cfg_path)?;
        let mut written = vec![path, cfg_path];
        if let Some(tok) = tokenizer {
            // Read, then write: each failure names its own file (a full disk the destination).
            let bytes = std::fs::read(tok).at(tok)?;
            let to = dir.join(TOKENIZER_FILE);
            std::fs::write(&to, bytes).at(&to)?;
            written.push(to);
        }
        for f in written {
            std::fs::File::open(&f).and_then(|h| h.sync_all()).at(&f)?;
        }
        Ok(())
    }

    /// Copy the parameter values into a plain map (for tests and checkpoints).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}

/// Whether every value of `t` is finite: `0·t` is 0 where it is and NaN where it is not, and
/// its sum cannot overflow.
fn all_finite(t: &Tensor) -> Result<bool> {
    let zeros = t.affine(0.0, 0.0).ctx("finiteness check")?;
    let sum = zeros
        .to_dtype(DType::F32)
        .and_then(|z| z.sum_all())
        .and_then(|z| z.to_scalar::<f32>())
        .ctx("finiteness check")?;
    Ok(sum == 0.0)
}

/// The `dtype` string transformers writes in `config.json`.
pub fn hf_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}
