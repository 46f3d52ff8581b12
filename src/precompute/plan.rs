//! What a precompute run will make: the teacher opened and checked against the options, the
//! tokenizer, the corpus described, and the cache's identity (a manifest without shards).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use super::PrecomputeOptions;
use crate::cache::{CorpusFile, CorpusInfo, Manifest, PackingInfo, TeacherInfo, WorkerInfo};
use crate::corpus;
use crate::error::{CandleContext, Error, Result};
use crate::hash::sha256_file;
use crate::model::gguf::{self, GgufModel};
use crate::model::weights::{self, MappedWeights};
use crate::model::{Decoder, ModelConfig, ModelDir};

/// The teacher, opened and checked, its weights not loaded yet.
pub(super) enum Teacher {
    /// A Hugging Face directory, its safetensors mapped once: hashed for the identity, then
    /// loaded from this map.
    Dir {
        model: ModelDir,
        weights: MappedWeights,
    },
    /// A GGUF file (or split set).
    Gguf(GgufModel),
}

impl Teacher {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Dir { model, .. } => &model.config,
            Self::Gguf(g) => &g.config,
        }
    }

    /// The teacher in `dtype` on `device`. In bf16 on the CPU, whose matrix products have no
    /// bf16 kernel, it is loaded in f32 and its linear layers are rounded to bf16 for the bf16
    /// products of [`crate::model::bf16_products`].
    pub fn load(self, dtype: DType, device: &Device) -> Result<Decoder> {
        if load_dtype(dtype, device) != dtype {
            let what = match &self {
                Self::Dir { model, .. } => model.dir.clone(),
                Self::Gguf(g) => g.path.clone(),
            };
            return self
                .load(DType::F32, device)?
                .with_bf16_products()
                .ctx(format!("{}: rounding the weights to bf16", what.display()));
        }
        match self {
            Self::Dir { model, weights } => model.load_mapped(weights, dtype, device),
            Self::Gguf(g) => g.load(dtype, device),
        }
    }

    /// Bytes its weights take in memory in `dtype`, where that is not what the config implies
    /// (a quantized GGUF file).
    pub fn memory_bytes(&self, dtype: DType, device: &Device) -> Option<u64> {
        match self {
            Self::Dir { .. } => None,
            Self::Gguf(g) => Some(g.memory_bytes(dtype, device)),
        }
    }

    /// A line about how a GGUF teacher is held on `device`: its tensor types, and the ones
    /// dequantized at load.
    pub fn describe(&self, device: &Device) -> Option<String> {
        let Self::Gguf(g) = self else { return None };
        let types: Vec<String> = g
            .tensor_types()
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        let mut line = format!(
            "teacher {}: GGUF {}, tensors {}",
            g.path.display(),
            g.arch,
            types.join(", ")
        );
        let dense = g.dequantized_types(device);
        if !dense.is_empty() {
            line.push_str(&format!(
                "; {} dequantized at load (candle has no vector CPU kernel for it)",
                dense.join(", ")
            ));
        }
        Some(line)
    }
}

/// The dtype the teacher's weights are loaded in for a forward in `dtype` on `device`: f32 for
/// bf16 on the CPU (the weights are then packed for [`crate::model::bf16_products`] and the
/// activations stay f32), else `dtype`.
pub(super) fn load_dtype(dtype: DType, device: &Device) -> DType {
    if device.is_cpu() && dtype == DType::BF16 {
        DType::F32
    } else {
        dtype
    }
}

/// The identity part of a manifest for these options: everything but shards and completion.
pub(super) struct Plan {
    pub manifest: Manifest,
    pub files: Vec<PathBuf>,
    pub eos_id: u32,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub teacher: Teacher,
}

/// The tokenizer of a run and the file (or GGUF metadata) it came from, for the identity.
fn tokenizer_for(
    opts: &PrecomputeOptions,
    teacher: &Teacher,
) -> Result<(tokenizers::Tokenizer, PathBuf, String)> {
    let given = |path: &Path| -> Result<(tokenizers::Tokenizer, PathBuf, String)> {
        Ok((
            corpus::load_tokenizer(path)?,
            path.to_path_buf(),
            sha256_file(path)?,
        ))
    };
    match (teacher, &opts.tokenizer) {
        (Teacher::Dir { model, .. }, None) => given(&model.tokenizer_path()),
        (Teacher::Dir { .. }, Some(path)) => given(path),
        (Teacher::Gguf(g), Some(path)) => {
            let (tok, path, sha) = given(path)?;
            if let Some(tokens) = g.tokens()? {
                gguf::check_same_vocabulary(&tok, &path, &tokens, &g.path)?;
            }
            Ok((tok, path, sha))
        }
        (Teacher::Gguf(g), None) => {
            let tok = g.tokenizer()?;
            let json = tok
                .to_string(false)
                .map_err(|e| Error::Internal(format!("serializing the GGUF tokenizer: {e}")))?;
            Ok((
                tok,
                g.path.clone(),
                crate::hash::sha256_hex(json.as_bytes()),
            ))
        }
    }
}

pub(super) fn plan(opts: &PrecomputeOptions) -> Result<Plan> {
    let teacher = if gguf::is_gguf(&opts.teacher) {
        Teacher::Gguf(GgufModel::open(&opts.teacher)?)
    } else {
        let model = ModelDir::open(&opts.teacher)?;
        let weights = model.map()?;
        Teacher::Dir { model, weights }
    };
    let cfg = teacher.config();
    if opts.top_k > cfg.vocab_size {
        return Err(Error::flag(
            "--top-k",
            format!(
                "{} exceeds the teacher's vocab_size {}",
                opts.top_k, cfg.vocab_size
            ),
        ));
    }
    if opts.tail_samples > 0 && opts.top_k >= cfg.vocab_size {
        return Err(Error::flag(
            "--tail-samples",
            format!(
                "--top-k {} covers the teacher's whole vocabulary ({}): there is no tail to draw from",
                opts.top_k, cfg.vocab_size
            ),
        ));
    }
    if opts.seq_len > cfg.max_position_embeddings {
        return Err(Error::flag(
            "--seq-len",
            format!(
                "{} exceeds the teacher's max_position_embeddings {} ({})",
                opts.seq_len,
                cfg.max_position_embeddings,
                cfg.path.display()
            ),
        ));
    }
    let (tokenizer, tok_path, tokenizer_sha256) = tokenizer_for(opts, &teacher)?;
    let tok_vocab = tokenizer.get_vocab_size(true);
    if tok_vocab > cfg.vocab_size {
        return Err(Error::tokenizer(
            tok_path,
            format!(
                "has {tok_vocab} tokens, more than the model's vocab_size {} ({})",
                cfg.vocab_size,
                cfg.path.display()
            ),
            None,
        ));
    }
    let eos_id = match cfg.eos_token_ids.first() {
        Some(&id) => id,
        None => corpus::find_eos(&tokenizer).ok_or_else(|| {
            Error::field(
                &cfg.path,
                "eos_token_id",
                "missing, and tokenizer.json has no known end-of-text token to join documents with",
            )
        })?,
    };
    if eos_id as usize >= cfg.vocab_size {
        return Err(Error::field(
            &cfg.path,
            "eos_token_id",
            format!(
                "{eos_id} is not a token id of this model (vocab_size {})",
                cfg.vocab_size
            ),
        ));
    }
    let corpus_files = corpus::describe_files(&opts.corpus)?;
    let (config_sha256, header_sha256, weights_xxh3) = match &teacher {
        Teacher::Dir { model, weights } => (
            sha256_file(&cfg.path)?,
            weights::header_hashes(&model.files)?,
            weights.content_xxh3(),
        ),
        // The first file's header holds every setting of a GGUF model: its sha256 stands for
        // config.json's.
        Teacher::Gguf(g) => {
            let headers = g.header_hashes()?;
            let first = headers.values().next().cloned().unwrap_or_default();
            (first, headers, g.content_xxh3()?)
        }
    };
    let files = corpus_files
        .iter()
        .map(|f| PathBuf::from(&f.path))
        .collect();
    let manifest = Manifest {
        format_version: opts
            .encoding
            .format_version_with(opts.tail_samples)
            .unwrap_or(opts.encoding.format_version()),
        taidcache_version: env!("CARGO_PKG_VERSION").to_string(),
        teacher: TeacherInfo {
            model_type: cfg.model_type.clone(),
            architecture: cfg.architecture.hf_class().to_string(),
            vocab_size: cfg.vocab_size,
            config_sha256,
            safetensors_header_sha256: header_sha256,
            weights_xxh3: Some(weights_xxh3),
            source: opts.teacher.display().to_string(),
        },
        tokenizer_sha256,
        corpus: CorpusInfo {
            files: corpus_files
                .iter()
                .map(|f| CorpusFile {
                    path: f.path.clone(),
                    format: f.format.clone(),
                    bytes: f.bytes,
                    xxh3: f.xxh3.clone(),
                })
                .collect(),
            text_field: opts.text_field.clone(),
            text_split: serde_json::to_value(opts.text_split)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        },
        packing: PackingInfo {
            seq_len: opts.seq_len,
            eos_id,
            pad_id: eos_id,
            add_special_tokens: false,
            shard_rows: opts.shard_rows,
        },
        top_k: opts.top_k,
        vocab_size: cfg.vocab_size,
        dtype: opts.dtype.name().to_string(),
        temperature: 1.0,
        value_encoding: opts.encoding.value_encoding().to_string(),
        tail_draws: opts.tail_samples,
        worker: (opts.workers > 1).then_some(WorkerInfo {
            index: opts.worker,
            count: opts.workers,
        }),
        complete: false,
        total_sequences: None,
        shards: Vec::new(),
        import: None,
    };
    Ok(Plan {
        manifest,
        files,
        eos_id,
        tokenizer: Arc::new(tokenizer),
        teacher,
    })
}
