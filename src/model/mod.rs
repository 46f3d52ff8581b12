//! The decoder-only model family: Llama (with Llama-3 rope scaling), Mistral (sliding window),
//! Qwen2 (qkv bias, tied embeddings), Qwen3 (q/k norm) and Phi-3 (fused projections).
//!
//! Owns Hugging Face directories (config, safetensors, tokenizer) and the forward passes.
//! Knows nothing of corpora or caches.

pub mod bf16_products;
pub mod config;
mod cpu_ops;
pub mod decoder;
pub mod device;
pub mod gguf;
pub mod init;
pub mod memory;
pub mod train;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use config::{Architecture, ModelConfig};
pub use decoder::{Decoder, Mode};
pub use device::{DeviceSpec, FloatType};

use crate::error::{CandleContext, Result};

/// A model directory opened and checked: config parsed, tensors present with the right shapes.
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub files: Vec<PathBuf>,
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join(weights::CONFIG_FILE))?;
        let files = weights::safetensors_files(dir)?;
        weights::check_tensors(dir, &config, &files)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            files,
        })
    }

    /// Memory-map the weights and build the model in `dtype` on `device`.
    pub fn load(&self, dtype: DType, device: &Device) -> Result<Decoder> {
        self.load_mapped(self.map()?, dtype, device)
    }

    /// Memory-map the weights, to hash them before (or instead of) loading them.
    pub fn map(&self) -> Result<weights::MappedWeights> {
        weights::MappedWeights::map(&self.dir, &self.files)
    }

    /// Build the model in `dtype` on `device` from weights [`map`](Self::map)ped before.
    pub fn load_mapped(
        &self,
        weights: weights::MappedWeights,
        dtype: DType,
        device: &Device,
    ) -> Result<Decoder> {
        let vb = VarBuilder::from_backend(Box::new(weights.into_inner()), dtype, device.clone());
        Decoder::new(&self.config, vb).ctx(format!("{}: building the model", self.dir.display()))
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(weights::TOKENIZER_FILE)
    }
}
