//! llama.cpp GGUF teachers: one file or a `*-00001-of-0000N.gguf` split set, dense (F32, F16,
//! BF16) or quantized in any block type candle implements (Q4_0 … Q8_0, Q2_K … Q8_K).
//!
//! The file is read into the same [`Decoder`] as a safetensors checkpoint: its metadata becomes
//! a [`ModelConfig`], its tensors are addressed by their Hugging Face names through
//! [`GgufParams`], and each linear layer is dense or quantized ([`Proj`]). Quantized weights
//! stay in their blocks in memory and are multiplied by candle's `QMatMul`; norms, biases and
//! the embedding table are dequantized (the embedding to the forward's dtype).
//!
//! Two llama.cpp conventions are undone on load:
//! - for `llama` files, `convert_hf_to_gguf.py` permutes the rows of `attn_q` and `attn_k`
//!   (and their biases) so that llama.cpp's interleaved rotary pairs line up; the loader puts the
//!   rows back in Hugging Face order, block by block, without dequantizing, so the decoder's
//!   half-split rotary embedding applies unchanged;
//! - Llama-3 rotary scaling is stored as the tensor `rope_freqs.weight` (one divisor per
//!   frequency), read into [`RopeScaling::Factors`].

mod tokenizer;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm};
use rayon::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

use super::config::{Architecture, ModelConfig, RopeScaling};
use super::decoder::{Params, Proj};
use super::Decoder;
use crate::error::{CandleContext, Error, IoContext, Result};

pub use tokenizer::{check_same_vocabulary, tokenizer_from_metadata};

type CResult<T> = candle_core::Result<T>;

/// The GGUF architectures this crate reads (`general.architecture`). Mistral files are `llama`
/// files with `llama.attention.sliding_window`.
pub const SUPPORTED_ARCHS: &str = "llama, qwen2, qwen3, phi3";

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// ggml's name of a tensor type, for the ones candle does not implement too.
fn ggml_type_name(t: u32) -> String {
    let name = match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("type {t}"),
    };
    name.to_string()
}

/// The tensor types candle multiplies, as a user reads them.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// One GGUF file: its header and where its tensor data starts.
struct GgufFile {
    path: PathBuf,
    file: File,
    content: Content,
    len: u64,
}

impl GgufFile {
    fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        let content = Content::read(&mut file).map_err(|e| {
            // The message only: with RUST_BACKTRACE set candle appends a backtrace.
            let msg = e.to_string().lines().next().unwrap_or_default().to_string();
            match msg.strip_prefix("unknown dtype for tensor ") {
                Some(t) => Error::model(
                    path,
                    format!(
                        "a tensor is stored as {}, which candle cannot multiply (supported: {SUPPORTED_TYPES})",
                        t.trim().parse().map(ggml_type_name).unwrap_or_else(|_| t.to_string())
                    ),
                ),
                None => Error::model(path, format!("not a readable GGUF file ({msg})")),
            }
        })?;
        // Every tensor's bytes must lie inside the file: a cut-off download fails here, naming
        // the first tensor it lost, instead of deep inside a forward.
        let mut ends: Vec<(&String, u64)> = content
            .tensor_infos
            .iter()
            .map(|(name, info)| {
                (
                    name,
                    content.tensor_data_offset + info.offset + bytes_of(info),
                )
            })
            .collect();
        ends.sort_by_key(|&(_, end)| end);
        if let Some((name, end)) = ends.iter().find(|&&(_, end)| end > len) {
            return Err(Error::model(
                path,
                format!(
                    "truncated: tensor `{name}` ends at byte {end} but the file has {len} bytes"
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            content,
            len,
        })
    }

    /// The header: magic, metadata and tensor infos (everything before the tensor data).
    fn header_bytes(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.content.tensor_data_offset.min(self.len) as usize];
        self.file.read_exact_at(&mut buf, 0).at(&self.path)?;
        Ok(buf)
    }

    fn tensor_range(&self, info: &TensorInfo) -> (u64, u64) {
        let start = self.content.tensor_data_offset + info.offset;
        (start, start + bytes_of(info))
    }
}

fn bytes_of(info: &TensorInfo) -> u64 {
    let t = info.ggml_dtype;
    (info.shape.elem_count() / t.block_size() * t.type_size()) as u64
}

/// `name-00001-of-00003.gguf` → (`name`, 1, 3).
fn split_parts(path: &Path) -> Option<(String, usize, usize)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (base, index) = rest.rsplit_once('-')?;
    if index.len() != 5 || count.len() != 5 {
        return None;
    }
    Some((base.to_string(), index.parse().ok()?, count.parse().ok()?))
}

/// The files of a model given by its (first) GGUF file.
fn model_files(path: &Path) -> Result<Vec<PathBuf>> {
    let Some((base, index, count)) = split_parts(path) else {
        return Ok(vec![path.to_path_buf()]);
    };
    if index != 1 {
        return Err(Error::model(
            path,
            format!("is part {index} of a split GGUF model; give its first part, {base}-00001-of-{count:05}.gguf"),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok((1..=count)
        .map(|i| dir.join(format!("{base}-{i:05}-of-{count:05}.gguf")))
        .collect())
}

/// Hugging Face name → GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// A GGUF teacher, opened and checked: config from the metadata, every tensor present with the
/// shape the config implies, the data inside the files. Nothing is loaded yet.
pub struct GgufModel {
    /// The path as given (the first file of a split set).
    pub path: PathBuf,
    files: Vec<GgufFile>,
    /// GGUF tensor name → index into `files`.
    owner: BTreeMap<String, usize>,
    pub config: ModelConfig,
    /// `general.architecture`.
    pub arch: String,
    /// llama files: `attn_q`/`attn_k` rows are permuted for interleaved rotary pairs.
    permuted_qk: bool,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self> {
        let paths = model_files(path)?;
        let files = paths
            .iter()
            .map(|p| GgufFile::open(p))
            .collect::<Result<Vec<_>>>()?;
        if files.len() > 1 {
            let declared = files[0].content.metadata.get("split.count").and_then(int);
            if let Some(n) = declared.filter(|&n| n != files.len() as u64) {
                return Err(Error::field(
                    path,
                    "split.count",
                    format!("says {n} parts, the file names {}", files.len()),
                ));
            }
        }
        let mut owner = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.content.tensor_infos.keys() {
                if owner.insert(name.clone(), i).is_some() {
                    return Err(Error::model(
                        &f.path,
                        format!("tensor `{name}` is also in an earlier part"),
                    ));
                }
            }
        }
        let meta = Meta {
            path,
            map: &files[0].content.metadata,
        };
        let arch = meta.string("general.architecture")?;
        let architecture = match arch.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "phi3" => Architecture::Phi3,
            other => {
                return Err(Error::field(
                    path,
                    "general.architecture",
                    format!("`{other}` is not supported (supported: {SUPPORTED_ARCHS})"),
                ))
            }
        };
        let mut model = Self {
            path: path.to_path_buf(),
            files,
            owner,
            config: placeholder_config(architecture, path),
            arch: arch.clone(),
            permuted_qk: architecture == Architecture::Llama,
        };
        model.config = model.read_config()?;
        model.check_tensors()?;
        Ok(model)
    }

    fn meta(&self) -> Meta<'_> {
        Meta {
            path: &self.path,
            map: &self.files[0].content.metadata,
        }
    }

    fn info(&self, name: &str) -> Option<(&GgufFile, &TensorInfo)> {
        let f = &self.files[*self.owner.get(name)?];
        Some((f, f.content.tensor_infos.get(name)?))
    }

    /// The metadata as a Hugging Face `config.json`, checked by [`ModelConfig::from_value`].
    fn read_config(&self) -> Result<ModelConfig> {
        let m = self.meta();
        let a = &self.arch;
        let key = |k: &str| format!("{a}.{k}");
        let hidden = m.usize(&key("embedding_length"))?;
        let heads = m.usize(&key("attention.head_count"))?;
        let kv_heads = m
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        let head_dim = m
            .opt_usize(&key("attention.key_length"))?
            .unwrap_or(hidden / heads.max(1));
        let vocab = match m.opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => match self.info("token_embd.weight") {
                Some((_, info)) => info.shape.dims()[0],
                None => return Err(self.missing_tensor("token_embd.weight")),
            },
        };
        // phi3 files write 0 for "no window".
        let window = m
            .opt_usize(&key("attention.sliding_window"))?
            .filter(|&w| w > 0);
        let model_type = match (a.as_str(), window) {
            ("llama", Some(_)) => "mistral",
            (other, _) => other,
        };
        if let Some(dims) = m.opt_usize(&key("rope.dimension_count"))? {
            if dims != head_dim {
                return Err(Error::field(
                    &self.path,
                    key("rope.dimension_count"),
                    format!(
                        "{dims}: partial rotary embeddings are not supported (head dim {head_dim})"
                    ),
                ));
            }
        }
        let mut value = json!({
            "model_type": model_type,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": m.usize(&key("feed_forward_length"))?,
            "num_hidden_layers": m.usize(&key("block_count"))?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": m.f64(&key("attention.layer_norm_rms_epsilon"))?,
            "rope_theta": m.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            "max_position_embeddings": m.usize(&key("context_length"))?,
            "tie_word_embeddings": !self.owner.contains_key("output.weight"),
            "hidden_act": "silu",
        });
        let obj = value.as_object_mut().expect("a JSON object");
        if let Some(w) = window {
            obj.insert("sliding_window".into(), json!(w));
        }
        for (gguf, hf) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ] {
            if let Some(id) = m.opt_usize(gguf)? {
                obj.insert(hf.into(), json!(id));
            }
        }
        match m.opt_string(&key("rope.scaling.type"))?.as_deref() {
            None | Some("none") => {}
            Some("linear") => {
                let factor = m.f64(&key("rope.scaling.factor"))?;
                obj.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": factor}),
                );
            }
            Some(other) => {
                return Err(Error::field(
                    &self.path,
                    key("rope.scaling.type"),
                    format!("`{other}` is not supported (none, linear, or Llama-3 factors in rope_freqs.weight)"),
                ))
            }
        }
        let mut cfg = ModelConfig::from_value(&value, &self.path)?;
        if self.owner.contains_key("rope_freqs.weight") {
            let t = self
                .tensor("rope_freqs.weight", &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>())
                .ctx(format!("{}: rope_freqs.weight", self.path.display()))?;
            if t.len() != head_dim / 2 {
                return Err(Error::model(
                    &self.path,
                    format!(
                        "tensor `rope_freqs.weight` has {} entries, expected head_dim / 2 = {}",
                        t.len(),
                        head_dim / 2
                    ),
                ));
            }
            cfg.rope_scaling = RopeScaling::Factors(t);
        }
        Ok(cfg)
    }

    fn missing_tensor(&self, gguf: &str) -> Error {
        Error::model(
            &self.path,
            format!(
                "tensor `{gguf}` is missing (the {} architecture needs it)",
                self.arch
            ),
        )
    }

    /// Every tensor the config implies, present with its shape.
    fn check_tensors(&self) -> Result<()> {
        for (hf, shape) in super::weights::expected_tensors(&self.config) {
            let name = gguf_name(&hf).ok_or_else(|| {
                Error::Internal(format!("no GGUF name for the Hugging Face tensor `{hf}`"))
            })?;
            let Some((_, info)) = self.info(&name) else {
                return Err(self.missing_tensor(&name));
            };
            if info.shape.dims() != shape.as_slice() {
                return Err(Error::model(
                    &self.path,
                    format!(
                        "tensor `{name}` has shape {:?}, the metadata implies {shape:?}",
                        info.shape.dims()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The files of the model, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    /// Bytes of tensor data the model holds in memory once loaded on `device`: quantized
    /// matrices as stored, dense ones in `dtype`, the embedding table dequantized to `dtype`,
    /// and, when the output projection is the table and stays quantized, its blocks too.
    pub fn memory_bytes(&self, dtype: DType, device: &Device) -> u64 {
        let as_loaded = |info: &TensorInfo| {
            if stays_dense(info.ggml_dtype, device) {
                (info.shape.elem_count() * dtype.size_in_bytes()) as u64
            } else {
                bytes_of(info)
            }
        };
        let stored: u64 = self
            .owner
            .keys()
            .filter(|n| n.as_str() != "token_embd.weight")
            .filter_map(|n| self.info(n))
            .map(|(_, info)| as_loaded(info))
            .sum();
        let c = &self.config;
        let table = (c.vocab_size * c.hidden_size * dtype.size_in_bytes()) as u64;
        let tied_blocks = match self.info("token_embd.weight") {
            Some((_, info)) if c.tie_word_embeddings && !stays_dense(info.ggml_dtype, device) => {
                bytes_of(info)
            }
            _ => 0,
        };
        stored + table + tied_blocks
    }

    /// The block types that load dense on `device` although stored quantized (see
    /// [`CPU_VECTOR_KERNELS`]), for the run to say so.
    pub fn dequantized_types(&self, device: &Device) -> Vec<String> {
        let types: std::collections::BTreeSet<String> = self
            .files
            .iter()
            .flat_map(|f| f.content.tensor_infos.values().map(|i| i.ggml_dtype))
            .filter(|&t| {
                !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
                    && stays_dense(t, device)
            })
            .map(|t| format!("{t:?}"))
            .collect();
        types.into_iter().collect()
    }

    /// The tensor types in the files, with their counts: `{"Q4_1": 169, "F32": 61}`.
    pub fn tensor_types(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for f in &self.files {
            for info in f.content.tensor_infos.values() {
                *out.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
            }
        }
        out
    }

    /// sha256 of each file's header (metadata and tensor table), keyed by file name: a
    /// different quantization, tokenizer or setting of the same model is a different header.
    pub fn header_hashes(&self) -> Result<BTreeMap<String, String>> {
        self.files
            .iter()
            .map(|f| {
                let name = f
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok((name, hex::encode(Sha256::digest(f.header_bytes()?))))
            })
            .collect()
    }

    /// xxh3-128 of the tensor data: every tensor in name order as its name, type, shape and
    /// the xxh3-128 of its bytes (read in parallel, a few MiB at a time, never mapped whole).
    pub fn content_xxh3(&self) -> Result<String> {
        let tensors: Vec<(&String, &GgufFile, &TensorInfo)> = self
            .owner
            .keys()
            .filter_map(|n| self.info(n).map(|(f, i)| (n, f, i)))
            .collect();
        let digests = tensors
            .par_iter()
            .map(|(_, f, info)| {
                let (start, end) = f.tensor_range(info);
                let mut h = Xxh3::new();
                let mut buf = vec![0u8; (8 << 20).min((end - start) as usize)];
                let mut at = start;
                while at < end {
                    let n = buf.len().min((end - at) as usize);
                    f.file.read_exact_at(&mut buf[..n], at).at(&f.path)?;
                    h.update(&buf[..n]);
                    at += n as u64;
                }
                Ok(h.digest128())
            })
            .collect::<Result<Vec<u128>>>()?;
        let mut h = Xxh3::new();
        for ((name, _, info), digest) in tensors.iter().zip(digests) {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            let dtype = format!("{:?}", info.ggml_dtype);
            h.update(&(dtype.len() as u64).to_le_bytes());
            h.update(dtype.as_bytes());
            h.update(&(info.shape.rank() as u64).to_le_bytes());
            for &d in info.shape.dims() {
                h.update(&(d as u64).to_le_bytes());
            }
            h.update(&digest.to_le_bytes());
        }
        Ok(format!("{:032x}", h.digest128()))
    }

    /// The tokenizer its metadata describes (`tokenizer.ggml.*`).
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        tokenizer_from_metadata(&self.files[0].content.metadata, &self.path)
    }

    /// The token strings of its metadata, by id; `None` when it has none.
    pub fn tokens(&self) -> Result<Option<Vec<String>>> {
        let map = &self.files[0].content.metadata;
        if !map.contains_key("tokenizer.ggml.tokens") {
            return Ok(None);
        }
        tokenizer::metadata_tokens(map, &self.path).map(Some)
    }

    /// One tensor, read from its file into a `QTensor` on `device` (rows put back in Hugging
    /// Face order for a llama file's q/k projections).
    fn tensor(&self, gguf: &str, device: &Device) -> CResult<QTensor> {
        let (f, info) = self
            .info(gguf)
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{gguf}` is missing")))?;
        let (start, end) = f.tensor_range(info);
        let mut raw = vec![0u8; (end - start) as usize];
        f.file.read_exact_at(&mut raw, start)?;
        let dims = info.shape.dims().to_vec();
        let qk = gguf.ends_with(".attn_q.weight")
            || gguf.ends_with(".attn_q.bias")
            || gguf.ends_with(".attn_k.weight")
            || gguf.ends_with(".attn_k.bias");
        if self.permuted_qk && qk {
            let heads = if gguf.contains(".attn_q.") {
                self.config.num_attention_heads
            } else {
                self.config.num_key_value_heads
            };
            raw = unpermute_rows(&raw, dims[0], heads);
        }
        qtensor_from_ggml(info.ggml_dtype, &raw, dims, device)
    }

    /// Build the decoder: linear layers quantized where the file is, the rest in `dtype`.
    pub fn load(&self, dtype: DType, device: &Device) -> Result<Decoder> {
        let params = GgufParams {
            model: self,
            prefix: String::new(),
            dtype,
            device: device.clone(),
        };
        Decoder::build(&self.config, params)
            .ctx(format!("{}: building the model", self.path.display()))
    }
}

/// Block types candle multiplies on the CPU with vector code (AVX2, NEON); the others (Q4_1,
/// Q5_0, Q5_1) run a scalar loop about ten times slower, so on the CPU they are dequantized at
/// load. Every type stays quantized on CUDA.
const CPU_VECTOR_KERNELS: [GgmlDType; 8] = [
    GgmlDType::Q4_0,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8K,
];

/// Whether a weight of type `t` is loaded as a dense tensor on `device`.
fn stays_dense(t: GgmlDType, device: &Device) -> bool {
    matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        || (device.is_cpu() && !CPU_VECTOR_KERNELS.contains(&t))
}

/// llama.cpp's type for a matrix whose rows do not fit `want`'s blocks (K types need rows of a
/// multiple of 256).
pub fn fallback_type(want: GgmlDType) -> GgmlDType {
    match want {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        other => other,
    }
}

/// Write the GGUF file `src` again as `dst` with every matrix (but norms) quantized to `to`
/// from its dequantized values with candle's quantizers, metadata unchanged; a matrix whose
/// rows do not fit `to`'s blocks takes [`fallback_type`]. Returns how many matrices took `to`
/// and how many the fallback. For tests and benches: what a quantization type costs.
pub fn requantize(src: &Path, dst: &Path, to: GgmlDType) -> Result<(usize, usize)> {
    let mut f = File::open(src).at(src)?;
    let content = Content::read(&mut f)
        .map_err(|e| Error::model(src, format!("not a readable GGUF file ({e})")))?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let (mut exact, mut fell) = (0, 0);
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let t = content
            .tensor(&mut f, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .ctx(format!("{}: {name}", src.display()))?;
        let ty = if t.rank() == 2 && !name.ends_with("_norm.weight") {
            if t.dim(1).ctx("shape")? % to.block_size() == 0 {
                exact += 1;
                to
            } else {
                fell += 1;
                fallback_type(to)
            }
        } else {
            GgmlDType::F32
        };
        let q = QTensor::quantize(&t, ty).ctx(format!("quantizing {name} to {ty:?}"))?;
        tensors.push((name.clone(), q));
    }
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    let metadata: Vec<(&str, &Value)> = keys
        .iter()
        .map(|k| (k.as_str(), &content.metadata[*k]))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let mut out = File::create(dst).at(dst)?;
    candle_core::quantized::gguf_file::write(&mut out, &metadata, &refs)
        .ctx(format!("writing {}", dst.display()))?;
    Ok((exact, fell))
}

/// A `ModelConfig` to hold until the metadata is read (never used for anything else).
fn placeholder_config(architecture: Architecture, path: &Path) -> ModelConfig {
    ModelConfig {
        architecture,
        model_type: String::new(),
        vocab_size: 0,
        hidden_size: 0,
        intermediate_size: 0,
        num_hidden_layers: 0,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: 0,
        rms_norm_eps: 0.0,
        rope_theta: 0.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 0,
        tie_word_embeddings: false,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        sliding_window: Vec::new(),
        bos_token_id: None,
        eos_token_ids: Vec::new(),
        stored_dtype: None,
        path: path.to_path_buf(),
    }
}

/// Undo `convert_hf_to_gguf.py`'s permutation of q/k rows: within each head of `rows / heads`
/// rows, GGUF row `2i + j` is Hugging Face row `j · half + i` (`half` = rows per head / 2).
/// Rows are whole quantization blocks, so this moves bytes and changes no value.
fn unpermute_rows(raw: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = raw.len() / rows;
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0u8; raw.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let hf = h * per_head + j * half + i;
                let gg = h * per_head + 2 * i + j;
                out[hf * row_bytes..(hf + 1) * row_bytes]
                    .copy_from_slice(&raw[gg * row_bytes..(gg + 1) * row_bytes]);
            }
        }
    }
    out
}

/// [`Params`] over a GGUF file: Hugging Face names mapped to GGUF names, tensors read on
/// demand.
struct GgufParams<'a> {
    model: &'a GgufModel,
    prefix: String,
    dtype: DType,
    device: Device,
}

impl GgufParams<'_> {
    fn qtensor(&self, suffix: &str) -> CResult<QTensor> {
        let hf = format!("{}.{suffix}", self.prefix);
        let name = gguf_name(&hf).ok_or_else(|| {
            candle_core::Error::Msg(format!("no GGUF name for the Hugging Face tensor `{hf}`"))
        })?;
        self.model.tensor(&name, &self.device)
    }

    fn dense(&self, suffix: &str) -> CResult<Tensor> {
        self.qtensor(suffix)?
            .dequantize(&self.device)?
            .to_dtype(self.dtype)
    }

    fn proj(&self, w: QTensor, bias: Option<Tensor>) -> CResult<Proj> {
        if stays_dense(w.dtype(), &self.device) {
            let w = w.dequantize(&self.device)?.to_dtype(self.dtype)?;
            Ok(Proj::Dense(Linear::new(w, bias)))
        } else {
            let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
            Ok(Proj::Quant {
                w: QMatMul::from_arc(Arc::new(w))?,
                bias,
            })
        }
    }
}

impl Params for GgufParams<'_> {
    fn pp(&self, name: impl ToString) -> Self {
        let name = name.to_string();
        Self {
            model: self.model,
            prefix: if self.prefix.is_empty() {
                name
            } else {
                format!("{}.{name}", self.prefix)
            },
            dtype: self.dtype,
            device: self.device.clone(),
        }
    }

    fn linear(&self, _in_dim: usize, _out_dim: usize, bias: bool) -> CResult<Proj> {
        let b = if bias {
            Some(self.dense("bias")?)
        } else {
            None
        };
        self.proj(self.qtensor("weight")?, b)
    }

    fn rms_norm(&self, _dim: usize, eps: f64) -> CResult<RmsNorm> {
        Ok(RmsNorm::new(self.dense("weight")?, eps))
    }

    fn embedding(&self, _vocab: usize, hidden: usize) -> CResult<Embedding> {
        Ok(Embedding::new(self.dense("weight")?, hidden))
    }

    fn lm_head(&self, cfg: &ModelConfig, embed: &Embedding) -> CResult<Proj> {
        if !cfg.tie_word_embeddings {
            return self
                .pp("lm_head")
                .linear(cfg.hidden_size, cfg.vocab_size, false);
        }
        let table = self.pp("model.embed_tokens").qtensor("weight")?;
        if stays_dense(table.dtype(), &self.device) {
            Ok(Proj::Dense(Linear::new(embed.embeddings().clone(), None)))
        } else {
            self.proj(table, None)
        }
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// An integer metadata value of any width.
fn int(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::U16(x) => Some(x as u64),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::U32(x) => Some(x as u64),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::U64(x) => Some(x),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// Typed access to GGUF metadata, with errors naming the file and key.
pub(crate) struct Meta<'a> {
    pub path: &'a Path,
    pub map: &'a std::collections::HashMap<String, Value>,
}

impl Meta<'_> {
    fn missing(&self, key: &str) -> Error {
        Error::field(self.path, key, "missing from the GGUF metadata")
    }

    fn wrong(&self, key: &str, want: &str) -> Error {
        Error::field(
            self.path,
            key,
            format!("expected {want} in the GGUF metadata"),
        )
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.map
            .get(key)
            .map(|v| {
                int(v)
                    .map(|x| x as usize)
                    .ok_or_else(|| self.wrong(key, "a non-negative integer"))
            })
            .transpose()
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.map
            .get(key)
            .map(|v| match *v {
                Value::F32(x) => Ok(x as f64),
                Value::F64(x) => Ok(x),
                _ => int(v)
                    .map(|x| x as f64)
                    .ok_or_else(|| self.wrong(key, "a number")),
            })
            .transpose()
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_string(&self, key: &str) -> Result<Option<String>> {
        self.map
            .get(key)
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(self.wrong(key, "a string")),
            })
            .transpose()
    }

    pub fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&Vec<Value>>> {
        self.map
            .get(key)
            .map(|v| match v {
                Value::Array(a) => Ok(a),
                _ => Err(self.wrong(key, "an array")),
            })
            .transpose()
    }

    pub fn array(&self, key: &str) -> Result<&Vec<Value>> {
        self.opt_array(key)?.ok_or_else(|| self.missing(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuting_inverts_llama_cpp_permutation_of_rows() {
        // convert_hf_to_gguf.py: w.reshape(heads, 2, rows/heads/2, ...).swapaxes(1, 2).
        let (heads, per_head, row_bytes) = (3, 8, 2);
        let rows = heads * per_head;
        let hf: Vec<u8> = (0..rows * row_bytes).map(|x| x as u8).collect();
        let mut gguf = vec![0u8; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..per_head / 2 {
                    let src = h * per_head + j * (per_head / 2) + i;
                    let dst = h * per_head + i * 2 + j;
                    gguf[dst * row_bytes..(dst + 1) * row_bytes]
                        .copy_from_slice(&hf[src * row_bytes..(src + 1) * row_bytes]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, rows, heads), hf);
    }

    #[test]
    fn split_file_names_parse_and_the_first_part_lists_all() {
        assert_eq!(
            split_parts(Path::new("/m/q-00001-of-00003.gguf")),
            Some(("q".into(), 1, 3))
        );
        assert_eq!(split_parts(Path::new("/m/model.gguf")), None);
        let files = model_files(Path::new("/m/q-00001-of-00003.gguf")).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files[2], Path::new("/m/q-00003-of-00003.gguf"));
        let err = model_files(Path::new("/m/q-00002-of-00003.gguf")).unwrap_err();
        assert!(err.to_string().contains("q-00001-of-00003.gguf"), "{err}");
    }

    #[test]
    fn every_hugging_face_tensor_has_a_gguf_name() {
        for arch in [
            Architecture::Llama,
            Architecture::Qwen2,
            Architecture::Qwen3,
            Architecture::Phi3,
        ] {
            let mut cfg = placeholder_config(arch, Path::new("x"));
            cfg.num_hidden_layers = 2;
            cfg.qkv_bias = arch == Architecture::Qwen2;
            for (hf, _) in super::super::weights::expected_tensors(&cfg) {
                assert!(gguf_name(&hf).is_some(), "{hf}");
            }
        }
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.bias").as_deref(),
            Some("blk.3.attn_q.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.gate_up_proj.weight").as_deref(),
            Some("blk.0.ffn_up.weight")
        );
    }
}
