//! Finding, checking and identifying the safetensors files of a Hugging Face model directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::error::{CandleContext, Error, IoContext, Result};
use crate::hash::sha256_hex;

use super::config::{Architecture, ModelConfig};

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The safetensors files of `dir`, in a stable order: the files named by
/// `model.safetensors.index.json`, else `model.safetensors`. Pickle-only directories are refused.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let text = std::fs::read_to_string(&index).at(&index)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: index.clone(),
                source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::field(&index, "weight_map", "missing or not an object"))?;
        let mut files = BTreeSet::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::field(&index, format!("weight_map.{name}"), "expected a file name")
            })?;
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(Error::field(
                    &index,
                    format!("weight_map.{name}"),
                    format!("`{file}` leaves the model directory"),
                ));
            }
            files.insert(file.to_string());
        }
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        for f in &files {
            if !f.exists() {
                return Err(Error::model(
                    f,
                    format!("listed in {INDEX_FILE} but missing"),
                ));
            }
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    for pickle in [
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "model.bin",
    ] {
        let p = dir.join(pickle);
        if p.exists() {
            return Err(Error::PickleCheckpoint { path: p });
        }
    }
    Err(Error::io(
        &single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no {SINGLE_FILE} or {INDEX_FILE} in the model directory"),
        ),
    ))
}

/// Tensor name → shape.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// The JSON header of a safetensors file: `(raw header bytes, tensor name -> shape)`, read and
/// checked (offsets inside the file, no overlaps) by the `safetensors` crate over a memory map.
pub fn read_header(path: &Path) -> Result<(Vec<u8>, Shapes)> {
    let corrupt = |msg: String| Error::model(path, format!("not a safetensors file: {msg}"));
    let file = std::fs::File::open(path).at(path)?;
    // SAFETY: a read-only map of a weights file nobody truncates while we parse its header.
    let map = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
    let (n, metadata) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| corrupt(e.to_string()))?;
    let shapes = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.shape.clone()))
        .collect();
    Ok((map[8..8 + n].to_vec(), shapes))
}

/// sha256 of each file's header, keyed by file name: identifies the weights' layout and dtypes
/// without reading gigabytes of data.
pub fn header_hashes(files: &[PathBuf]) -> Result<BTreeMap<String, String>> {
    files
        .iter()
        .map(|f| {
            let (header, _) = read_header(f)?;
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, sha256_hex(&header)))
        })
        .collect()
}

/// The safetensors files of a model, memory-mapped once: hashed for the teacher's identity
/// ([`content_xxh3`](Self::content_xxh3)) and then loaded from the same map, so identifying the
/// weights by content costs no second read of the files.
pub struct MappedWeights {
    map: MmapedSafetensors,
}

impl MappedWeights {
    /// Map `files` of model directory `dir` (as [`safetensors_files`] lists them) read-only and
    /// parse their headers.
    pub fn map(dir: &Path, files: &[PathBuf]) -> Result<Self> {
        // SAFETY: a read-only map of weights files; like every safetensors loader we rely on
        // nobody truncating them while the map (or a model loaded from it) is alive.
        let map = unsafe { MmapedSafetensors::multi(files) }
            .ctx(format!("{}: loading safetensors", dir.display()))?;
        Ok(Self { map })
    }

    /// xxh3-128 (lower-case hex) of the weights' content: every tensor in name order, each as
    /// its name, dtype, shape and the xxh3-128 of its bytes. Tensors are hashed in parallel; a
    /// name in several files counts once, from the last file (the one a load uses).
    pub fn content_xxh3(&self) -> String {
        let by_name: BTreeMap<String, _> = self.map.tensors().into_iter().collect();
        let tensors: Vec<_> = by_name.iter().collect();
        let digests: Vec<u128> = tensors
            .par_iter()
            .map(|(_, view)| xxh3_128(view.data()))
            .collect();
        let mut h = Xxh3::new();
        for ((name, view), digest) in tensors.iter().zip(digests) {
            // Lengths first, so no two lists of fields run together into the same bytes.
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            let dtype = format!("{:?}", view.dtype());
            h.update(&(dtype.len() as u64).to_le_bytes());
            h.update(dtype.as_bytes());
            h.update(&(view.shape().len() as u64).to_le_bytes());
            for &d in view.shape() {
                h.update(&(d as u64).to_le_bytes());
            }
            h.update(&digest.to_le_bytes());
        }
        format!("{:032x}", h.digest128())
    }

    /// The map, for a `VarBuilder` to load tensors from.
    pub(super) fn into_inner(self) -> MmapedSafetensors {
        self.map
    }
}

/// Every tensor the architecture needs, with its shape, under its Hugging Face name.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, v, i) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (q, kv, hd) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
        cfg.head_dim,
    );
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut add = |name: String, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
        add("input_layernorm.weight".into(), vec![h]);
        add("post_attention_layernorm.weight".into(), vec![h]);
        if cfg.architecture == Architecture::Phi3 {
            add("self_attn.qkv_proj.weight".into(), vec![q + 2 * kv, h]);
            add("mlp.gate_up_proj.weight".into(), vec![2 * i, h]);
        } else {
            for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                add(format!("self_attn.{name}.weight"), vec![rows, h]);
                if cfg.qkv_bias {
                    add(format!("self_attn.{name}.bias"), vec![rows]);
                }
            }
            for name in ["gate_proj", "up_proj"] {
                add(format!("mlp.{name}.weight"), vec![i, h]);
                if cfg.mlp_bias {
                    add(format!("mlp.{name}.bias"), vec![i]);
                }
            }
        }
        add("self_attn.o_proj.weight".into(), vec![h, q]);
        if cfg.o_bias {
            add("self_attn.o_proj.bias".into(), vec![h]);
        }
        add("mlp.down_proj.weight".into(), vec![h, i]);
        if cfg.mlp_bias {
            add("mlp.down_proj.bias".into(), vec![h]);
        }
        if cfg.architecture == Architecture::Qwen3 {
            add("self_attn.q_norm.weight".into(), vec![hd]);
            add("self_attn.k_norm.weight".into(), vec![hd]);
        }
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, h]));
    }
    out
}

/// Check that the files hold every expected tensor with the expected shape.
pub fn check_tensors(dir: &Path, cfg: &ModelConfig, files: &[PathBuf]) -> Result<()> {
    let mut found = BTreeMap::new();
    for f in files {
        found.extend(read_header(f)?.1);
    }
    for (name, shape) in expected_tensors(cfg) {
        match found.get(&name) {
            None => {
                return Err(Error::MissingTensor {
                    dir: dir.to_path_buf(),
                    name,
                })
            }
            Some(s) if *s != shape => {
                return Err(Error::TensorShape {
                    dir: dir.to_path_buf(),
                    name,
                    expected: shape,
                    found: s.clone(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}
