//! What a precompute run will make: the teacher opened and checked against the options, the
//! tokenizer, the corpus described, and the cache's identity (a manifest without shards).

use std::path::PathBuf;
use std::sync::Arc;

use super::PrecomputeOptions;
use crate::cache::{CorpusFile, CorpusInfo, Manifest, PackingInfo, TeacherInfo, WorkerInfo};
use crate::corpus;
use crate::error::{Error, Result};
use crate::hash::sha256_file;
use crate::model::weights::{self, MappedWeights};
use crate::model::ModelDir;

/// The identity part of a manifest for these options: everything but shards and completion.
pub(super) struct Plan {
    pub manifest: Manifest,
    pub files: Vec<PathBuf>,
    pub eos_id: u32,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub model: ModelDir,
    /// The teacher's weights, mapped once: hashed for the identity, then loaded from this map.
    pub weights: MappedWeights,
}

pub(super) fn plan(opts: &PrecomputeOptions) -> Result<Plan> {
    let model = ModelDir::open(&opts.teacher)?;
    let cfg = &model.config;
    if opts.top_k > cfg.vocab_size {
        return Err(Error::flag(
            "--top-k",
            format!(
                "{} exceeds the teacher's vocab_size {}",
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
    let tok_path = model.tokenizer_path();
    let tokenizer = corpus::load_tokenizer(&tok_path)?;
    let tok_vocab = tokenizer.get_vocab_size(true);
    if tok_vocab > cfg.vocab_size {
        return Err(Error::tokenizer(
            tok_path,
            format!(
                "has {tok_vocab} tokens, more than the model's vocab_size {} in config.json",
                cfg.vocab_size
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
                "{eos_id} is not a token id of this model (vocab_size {}); fix config.json",
                cfg.vocab_size
            ),
        ));
    }
    let corpus_files = corpus::describe_files(&opts.corpus)?;
    let weights = model.map()?;
    let files = corpus_files
        .iter()
        .map(|f| PathBuf::from(&f.path))
        .collect();
    let manifest = Manifest {
        format_version: opts.encoding.format_version(),
        taidcache_version: env!("CARGO_PKG_VERSION").to_string(),
        teacher: TeacherInfo {
            model_type: cfg.model_type.clone(),
            architecture: cfg.architecture.hf_class().to_string(),
            vocab_size: cfg.vocab_size,
            config_sha256: sha256_file(&cfg.path)?,
            safetensors_header_sha256: weights::header_hashes(&model.files)?,
            weights_xxh3: Some(weights.content_xxh3()),
            source: opts.teacher.display().to_string(),
        },
        tokenizer_sha256: sha256_file(&tok_path)?,
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
        worker: (opts.workers > 1).then_some(WorkerInfo {
            index: opts.worker,
            count: opts.workers,
        }),
        complete: false,
        total_sequences: None,
        shards: Vec::new(),
    };
    Ok(Plan {
        manifest,
        files,
        eos_id,
        tokenizer: Arc::new(tokenizer),
        model,
        weights,
    })
}
