#!/usr/bin/env python3
"""Build GGUF teacher fixtures from tiny Hugging Face checkpoints, and turn GGUF files back
into Hugging Face directories (the dequantized reference).

Only needs numpy and the `gguf` PyPI package (tested with gguf 0.19.0:
`python3 -m pip install gguf`). No torch, no safetensors package: safetensors files are read
and written by the small numpy reader/writer below.

How the Rust integration tests use it
-------------------------------------

    python3 tests/python/gguf_fixture.py write HF_DIR OUT.gguf --type q8_0
    python3 tests/python/gguf_fixture.py write HF_DIR OUT.gguf --type f32 --split 2
    python3 tests/python/gguf_fixture.py write HF_DIR BAD.gguf --type f32 --arch gpt9
    python3 tests/python/gguf_fixture.py write HF_DIR BAD.gguf --type f32 \\
        --drop-key llama.attention.head_count
    python3 tests/python/gguf_fixture.py dequantize OUT.gguf REF_DIR --config-from HF_DIR

`write` prints one JSON line on stdout, e.g. for the llama golden fixture with --type q8_0:
    {"command": "write", "files": ["/t/OUT.gguf"], "architecture": "llama",
     "model_type": "llama", "type": "q8_0", "file_type": 7, "n_tensors": 22,
     "tensor_types": {"F32": 6, "Q8_0": 16}, "tensors_per_file": [22], "f32_fallback": [],
     "dropped_keys": [], "tokenizer": false, "rope_freqs": true}
`dequantize` prints one JSON line too:
    {"command": "dequantize", "files": ["/t/OUT.gguf"], "architecture": "llama",
     "n_tensors": 21, "source_types": {"F32": 5, "Q8_0": 16}, "skipped": ["rope_freqs.weight"],
     "config": "HF_DIR/config.json", "out": "REF_DIR/model.safetensors"}
Everything is deterministic: the same inputs give byte-identical outputs. Warnings go to
stderr. Exit status 0 on success, 2 on bad input (message on stderr).

The dequantized directory (`REF_DIR/model.safetensors` in F32 + `config.json`) is what
transformers' GGUF loader would see: every tensor dequantized with `gguf.quants.dequantize`
(K-quants such as Q4_K from candle included), the llama q/k row permutation undone and the
names mapped back to Hugging Face names. Loading it with plain safetensors code therefore
gives the exact weights a GGUF reader must reconstruct.

Conventions (those of llama.cpp's convert_hf_to_gguf.py unless noted)
----------------------------------------------------------------------

Architecture: "llama" for model_type llama AND mistral (llama.cpp converts Mistral as llama),
"qwen2", "qwen3", "phi3". `--arch NAME` replaces the architecture string and the key prefix
only (for a bad-input fixture); tensors are still converted for the real model_type.

Metadata keys (ARCH = the architecture string):
  general.architecture, general.type ("model"), general.name (gguf.Metadata's heuristic on the
  directory name, e.g. "Mistral"; `--name` overrides), general.file_type (LlamaFileType of
  --type: f32 0, f16 1, q4_0 2, q4_1 3, q8_0 7, q5_0 8, q5_1 9, bf16 32),
  general.quantization_version (2);
  ARCH.context_length, .embedding_length, .block_count, .feed_forward_length,
  .attention.head_count, .attention.head_count_kv, .attention.key_length and
  .attention.value_length (= head_dim; written always, llama.cpp only when config.json has
  head_dim), .rope.freq_base (f32), .attention.layer_norm_rms_epsilon (f32), .vocab_size;
  llama/mistral and phi3 also .rope.dimension_count (llama: head_dim;
  phi3: int(partial_rotary_factor * hidden) // heads) -- transformers' GGUF loader reads the
  llama head_dim from rope.dimension_count;
  mistral: llama.attention.sliding_window (u32) when sliding_window is set (a deviation asked
  for by the Rust tests: llama.cpp's LlamaModel ignores Mistral's sliding window);
  phi3: phi3.rope.scaling.original_context_length and phi3.attention.sliding_window (0 when
  null), as llama.cpp's Phi3MiniModel writes them.
  All integers are u32, floats f32 (gguf-py's add_* defaults).

Llama-3 RoPE (rope_type "llama3" in rope_parameters / rope_scaling): no rope scaling keys, but
a `rope_freqs.weight` F32 tensor of head_dim/2 per-frequency divisors (llama.cpp's
LlamaModel.generate_extra_tensors; formula in `llama3_rope_freqs`). One deliberate deviation:
llama.cpp reads original_max_position_embeddings from the TOP LEVEL of config.json (default
8192), never from rope_scaling; real Llama-3.x checkpoints have 8192 there anyway, so it does
not matter for them, but the tiny golden fixture uses 8 inside rope_parameters. We take it from
rope_parameters first (then top level, then 8192), which is what transformers computes.

Tensors (HF -> GGUF; N = layer index):
  model.embed_tokens.weight -> token_embd.weight, model.norm.weight -> output_norm.weight,
  lm_head.weight -> output.weight (absent when tied), model.layers.N.input_layernorm ->
  blk.N.attn_norm, .post_attention_layernorm -> blk.N.ffn_norm, self_attn.{q,k,v,o}_proj ->
  blk.N.attn_{q,k,v,output} (+ .bias when present: qwen2 q/k/v), self_attn.{q,k}_norm ->
  blk.N.attn_{q,k}_norm (qwen3), mlp.{gate,up,down}_proj -> blk.N.ffn_{gate,up,down};
  phi3: self_attn.qkv_proj -> blk.N.attn_qkv (q, k, v rows), mlp.gate_up_proj -> blk.N.ffn_up
  (gate half first, as llama.cpp's phi3 graph splits it; there is no ffn_gate).
  Tensor order: llama3 rope_freqs first, then the safetensors files in sorted order and each
  file's tensors sorted by name (what llama.cpp's converter iterates).
  numpy shape order: a HF [out, in] matrix is handed to gguf-py as a numpy [out, in] array;
  gguf-py stores the reversed dims (ne0 = in, ne1 = out), as llama.cpp does.

Llama q/k permutation (arch llama incl. mistral only; not qwen2/qwen3/phi3): rows of q_proj
(n_head = num_attention_heads) and k_proj (n_head = num_key_value_heads), weights and biases:
    w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
i.e. each head's HF "rotate-half" layout becomes llama.cpp's interleaved pairs layout.
`dequantize` applies the inverse (reshape(n_head, rows // n_head // 2, 2, ...).swapaxes(1, 2)).

Types: --type T (f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1) applies to every 2-D weight matrix
(token_embd and output included), quantized with gguf.quants.quantize; 1-D tensors (norms,
biases, rope_freqs) and anything named *_norm.weight stay F32. gguf-py can only quantize rows
whose length is a multiple of the block size (32 for all these types; a QuantError otherwise);
such a matrix stays F32 (llama.cpp would fall back to F16) and is reported on stderr and in
"f32_fallback".

Tokenizer (unless --no-tokenizer or HF_DIR has no tokenizer.json): tokenizer.ggml.model
"gpt2", tokenizer.ggml.pre "gpt-2" (--pre overrides), tokenizer.ggml.tokens ordered by id with
exactly config vocab_size entries (missing ids are "[PAD{id}]"), tokenizer.ggml.token_type
(an INT32 array of gguf.TokenType: NORMAL 1, CONTROL 3 for special added tokens -- and, like llama.cpp's
does_token_look_special, for added tokens spelled <|...|> --, USER_DEFINED 4 for other added
tokens, UNUSED 5 for the padding), tokenizer.ggml.merges ("a b" strings; merges stored as
[a, b] pairs are joined with a space, a space inside a part becomes U+0120 as llama.cpp does),
tokenizer.ggml.bos_token_id / eos_token_id from config.json when they are integers (a list is
skipped, as llama.cpp's SpecialVocab does). Not done: llama.cpp's re-normalization of
non-normalized added tokens (needs the tokenizers library).

Split (--split N): exactly N files named like llama.cpp's gguf-split and gguf-py's
SHARD_NAME_FORMAT, "{stem}-{i:05d}-of-{N:05d}.gguf" with i from 1 and stem = OUT without
".gguf". Tensors are distributed in order, the first (total % N) files get one more. The first
file holds all metadata; every file has split.no (u16, 0-based), split.count (u16 N) and
split.tensors.count (i32, total tensors across all files); later files have no other keys.
These are the key names/types gguf-py's writer and llama.cpp's gguf-split write.

`dequantize IN OUT_DIR [--config-from HF_DIR]`: IN may be one file or the first/any part of a
split set ("-0000i-of-0000N.gguf"; all N parts are read). Writes OUT_DIR/model.safetensors
(all F32, tensors sorted by name, no rope_freqs) and OUT_DIR/config.json: a verbatim copy of
HF_DIR/config.json when --config-from is given (tokenizer.json is copied too when present),
otherwise rebuilt from the metadata (model_type llama, or mistral when
llama.attention.sliding_window is present, qwen2, qwen3, phi3; tie_word_embeddings true when
there is no output.weight). A llama3 rope_freqs tensor cannot be turned back into
rope_parameters: without --config-from a warning is printed and the rebuilt config has none.
The rebuilt config sets pad_token_id null (transformers' Phi3Config defaults to 32000).

Checked (gguf 0.19.0, transformers 5.25, golden fixtures in tests/golden/forward): `write
--type f32` + `dequantize` round-trips every tensor bit for bit; split sets dequantize to the
same tensors as the single file; transformers' own GGUF loader, given the fixture's config.json,
builds exactly the weights of the dequantized directory (llama, mistral as llama, qwen2, qwen3,
phi3; f32, q8_0, q4_0). Transformers' GGUF *config* reading is weaker than these files: it
ignores rope_freqs (llama3 scaling) and llama.attention.sliding_window, reads no head_dim for
qwen3 (attention.key_length is only mapped for qwen3_moe) and keeps Phi3Config's pad_token_id
32000 -- so only qwen2 loads from the GGUF alone with the golden logits. rope_freqs values are
bit-identical to llama.cpp's torch code (2592 values over several bases/head_dims checked).
"""

import argparse
import json
import math
import os
import pathlib
import re
import shutil
import sys

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
except ImportError:  # pragma: no cover
    sys.stderr.write("gguf_fixture.py needs the gguf package: python3 -m pip install gguf\n")
    sys.exit(2)


class FixtureError(Exception):
    """Bad input; reported on stderr with exit status 2."""


def warn(msg):
    sys.stderr.write(f"gguf_fixture: warning: {msg}\n")


# --------------------------------------------------------------------------------------------
# safetensors (numpy only)
# --------------------------------------------------------------------------------------------

def _bf16_to_f32(raw):
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """{name: float32 numpy array} of one .safetensors file, in header order."""
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = np.frombuffer(blob[:8], dtype="<u8")
    header = json.loads(blob[8:8 + int(hlen)].decode("utf-8"))
    base = 8 + int(hlen)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = blob[base + a: base + b]
        dt = info["dtype"]
        if dt == "F32":
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            arr = _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            raise FixtureError(f"{path}: tensor {name} has unsupported dtype {dt}")
        out[name] = arr.reshape(info["shape"])
    return out


def write_safetensors(path, tensors, metadata=None):
    """Write {name: array} as F32 safetensors, names sorted, header padded to 8 bytes."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        data = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    with open(path, "wb") as f:
        f.write(np.array([len(hjson)], dtype="<u8").tobytes())
        f.write(hjson)
        for data in blobs:
            f.write(data)


def load_hf_weights(hf_dir):
    """[(name, float32 array)] in llama.cpp's iteration order: files sorted, names sorted."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FixtureError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
    out = []
    for fname in files:
        tensors = read_safetensors(os.path.join(hf_dir, fname))
        out.extend((name, tensors[name]) for name in sorted(tensors))
    return out


# --------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
             "phi3": "phi3"}


def rope_params(cfg):
    """transformers 5 `rope_parameters`, or 4.x `rope_scaling` (+ top-level rope_theta)."""
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if "full_attention" in rp and isinstance(rp["full_attention"], dict):
        rp = rp["full_attention"]
    return rp


def rope_theta(cfg):
    rp = rope_params(cfg)
    if rp.get("rope_theta") is not None:
        return float(rp["rope_theta"])
    return float(cfg.get("rope_theta", 10000.0))


def head_dim(cfg):
    hd = cfg.get("head_dim")
    return int(hd) if hd is not None else cfg["hidden_size"] // cfg["num_attention_heads"]


def llama3_rope_freqs(cfg):
    """llama.cpp LlamaModel.generate_extra_tensors for rope_type llama3, i.e.

        freqs = 1 / base ** (arange(0, dim, 2) / dim)             (float32, dim = head_dim)
        low_freq_wavelen  = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        for each freq: wavelen = 2 * pi / freq
            wavelen < high_freq_wavelen -> 1
            wavelen > low_freq_wavelen  -> factor
            else: smooth = (old_context_len / wavelen - low_freq_factor)
                           / (high_freq_factor - low_freq_factor)
                  -> 1 / ((1 - smooth) / factor + smooth)

    The result divides each rotary frequency (llama.cpp's ggml_rope_ext freq_factors), which
    equals transformers' _compute_llama3_parameters. Defaults as llama.cpp: factor 8,
    low 1, high 4, old_context_len 8192. Deviation: old_context_len is taken from
    rope_parameters first (llama.cpp only looks at the top level of config.json).

    llama.cpp does this arithmetic on float32 torch scalars (`x / tensor` is
    reciprocal(tensor) * x there); we repeat it in numpy float32 step by step. Only the pow
    is computed in float64 and rounded, so a value can differ from torch's by 1 ulp.
    """
    f32 = np.float32
    rp = rope_params(cfg)
    base = rope_theta(cfg)
    dim = head_dim(cfg)
    exponents = np.arange(0, dim, 2, dtype=np.float32) / f32(dim)
    powers = np.power(np.float64(f32(base)), exponents.astype(np.float64)).astype(np.float32)
    freqs = f32(1.0) / powers
    factor = rp.get("factor", 8.0)
    low_freq_factor = rp.get("low_freq_factor", 1.0)
    high_freq_factor = rp.get("high_freq_factor", 4.0)
    old_context_len = rp.get("original_max_position_embeddings",
                             cfg.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = f32(old_context_len / low_freq_factor)
    high_freq_wavelen = f32(old_context_len / high_freq_factor)
    factors = []
    for freq in freqs:
        wavelen = (f32(1.0) / freq) * f32(2 * math.pi)
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = ((f32(1.0) / wavelen) * f32(old_context_len) - f32(low_freq_factor)) \
                / f32(high_freq_factor - low_freq_factor)
            factors.append(f32(1.0) / ((f32(1.0) - smooth) / f32(factor) + smooth))
    return np.array(factors, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# tensor names
# --------------------------------------------------------------------------------------------

# HF suffix after "model.layers.N." -> GGUF suffix after "blk.N." (".weight"/".bias" kept)
LAYER_MAP = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
PHI3_LAYER_MAP = dict(LAYER_MAP, **{"mlp.gate_up_proj": "ffn_up"})
PHI3_LAYER_MAP.pop("mlp.up_proj")
TOP_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def layer_map(model_type):
    return PHI3_LAYER_MAP if model_type == "phi3" else LAYER_MAP


def hf_to_gguf_name(name, model_type):
    if name in TOP_MAP:
        return TOP_MAP[name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m and m.group(2) in layer_map(model_type):
        return f"blk.{m.group(1)}.{layer_map(model_type)[m.group(2)]}.{m.group(3)}"
    return None


def gguf_to_hf_name(name, model_type):
    for hf, gg in TOP_MAP.items():
        if gg == name:
            return hf
    m = re.fullmatch(r"blk\.(\d+)\.(.+)\.(weight|bias)", name)
    if m:
        for hf, gg in layer_map(model_type).items():
            if gg == m.group(2):
                return f"model.layers.{m.group(1)}.{hf}.{m.group(3)}"
    return None


def permute(w, n_head):
    """llama.cpp LlamaModel.permute (HF rotate-half rows -> GGUF interleaved rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    """Inverse of `permute` (transformers' LlamaTensorProcessor._reverse_permute_weights)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------------------------

TYPES = {  # --type -> (GGML tensor type for 2-D matrices, LlamaFileType)
    "f32": (QT.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (QT.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (QT.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (QT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (QT.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (QT.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q5_0": (QT.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q5_1": (QT.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
}


def model_name(hf_dir):
    """general.name as convert_hf_to_gguf.py derives it (gguf.Metadata heuristic on the dir)."""
    try:
        name = gguf.Metadata.load(None, pathlib.Path(hf_dir), None, 0).name
    except Exception:  # heuristic failed: llama.cpp falls back to the directory name
        name = None
    return name or os.path.basename(os.path.normpath(hf_dir))


def read_tokenizer(hf_dir, vocab_size):
    """(tokens, token_types, merges) as llama.cpp's get_vocab_base would produce them."""
    with open(os.path.join(hf_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    model = tok.get("model") or {}
    if model.get("type", "BPE") != "BPE":
        raise FixtureError(f"tokenizer.json model type {model.get('type')!r} is not BPE")
    by_id = {int(i): t for t, i in (model.get("vocab") or {}).items()}
    added = {}
    for at in tok.get("added_tokens") or []:
        by_id[int(at["id"])] = at["content"]
        added[int(at["id"])] = at
    if by_id and max(by_id) >= vocab_size:
        raise FixtureError(f"tokenizer id {max(by_id)} >= config vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
            continue
        t = by_id[i]
        tokens.append(t)
        if i in added:
            looks_special = t.startswith("<|") and t.endswith("|>")
            special = added[i].get("special", False) or looks_special
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
    merges = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        else:  # [a, b] pairs (tokenizers >= 0.20): spaces inside parts become U+0120
            merges.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part)
                                   for part in m))
    return tokens, types, merges


def cmd_write(args):
    hf_dir = args.hf_dir
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    model_type = cfg.get("model_type")
    if model_type not in GGUF_ARCH:
        raise FixtureError(f"unsupported model_type {model_type!r} (want {sorted(GGUF_ARCH)})")
    arch = args.arch or GGUF_ARCH[model_type]
    is_llama = GGUF_ARCH[model_type] == "llama"
    qtype, ftype = TYPES[args.type]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    hd = head_dim(cfg)
    vocab_size = int(cfg["vocab_size"])

    # ---- tensors, in llama.cpp order ----
    tensors = []  # (gguf name, float32 array)
    rp = rope_params(cfg)
    if is_llama and str(rp.get("rope_type", rp.get("type", ""))).lower() == "llama3":
        tensors.append(("rope_freqs.weight", llama3_rope_freqs(cfg)))
    for name, w in load_hf_weights(hf_dir):
        if name.endswith("rotary_emb.inv_freq"):
            continue  # llama.cpp skips these too
        gname = hf_to_gguf_name(name, model_type)
        if gname is None:
            raise FixtureError(f"can not map tensor {name!r} for model_type {model_type}")
        if is_llama and name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            w = permute(w, n_head)
        if is_llama and name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            w = permute(w, n_kv)
        tensors.append((gname, np.ascontiguousarray(w, dtype=np.float32)))

    # ---- writer, split plan ----
    out = args.out
    if not out.endswith(".gguf"):
        raise FixtureError("OUT must end with .gguf")
    n_split = args.split
    if n_split < 1 or n_split > len(tensors):
        raise FixtureError(f"--split {n_split}: need 1 <= N <= {len(tensors)} (tensor count)")
    writer = gguf.GGUFWriter(out, arch)
    # Exactly N shards: gguf-py starts a new shard when writer.tensors gets a new dict
    # (its split_max_tensors option would sometimes give fewer than N files).
    base, extra = divmod(len(tensors), n_split)
    boundaries, acc = set(), 0
    for i in range(n_split - 1):
        acc += base + (1 if i < extra else 0)
        boundaries.add(acc)

    # ---- metadata ----
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(args.name or model_name(hf_dir))
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(int(n_head))
    writer.add_head_count_kv(int(n_kv))
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_freq_base(rope_theta(cfg))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(vocab_size)
    if is_llama:
        writer.add_rope_dimension_count(hd)
        if model_type == "mistral" and cfg.get("sliding_window") is not None:
            writer.add_sliding_window(int(cfg["sliding_window"]))
    if model_type == "phi3":
        prf = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
        writer.add_rope_dimension_count(int(prf * cfg["hidden_size"]) // n_head)
        orig = cfg.get("original_max_position_embeddings", rp.get("original_max_position_embeddings"))
        if orig is not None:
            writer.add_rope_scaling_orig_ctx_len(int(orig))
        writer.add_sliding_window(int(cfg.get("sliding_window") or 0))
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    has_tok = not args.no_tokenizer and os.path.isfile(os.path.join(hf_dir, "tokenizer.json"))
    if has_tok:
        tokens, types, merges = read_tokenizer(hf_dir, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(args.pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if merges:
            writer.add_token_merges(merges)
        for key, add in (("bos_token_id", writer.add_bos_token_id),
                         ("eos_token_id", writer.add_eos_token_id)):
            if isinstance(cfg.get(key), int) and 0 <= cfg[key] < vocab_size:
                add(cfg[key])

    dropped = []
    for key in args.drop_key or []:
        if key not in writer.kv_data[0]:
            raise FixtureError(f"--drop-key {key}: no such key (have {sorted(writer.kv_data[0])})")
        del writer.kv_data[0][key]
        dropped.append(key)

    # ---- tensors ----
    counts, fallback, per_file = {}, [], [0]
    raw_types = dict(x.split("=", 1) for x in (args.raw_type or []))
    for i, (name, w) in enumerate(tensors):
        if i in boundaries:
            writer.tensors.append({})
            per_file.append(0)
        t = qtype
        if w.ndim <= 1 or name.endswith("_norm.weight"):
            t = QT.F32
        elif t not in (QT.F32, QT.F16):
            block = gguf.GGML_QUANT_SIZES[t][0]
            if w.shape[-1] % block != 0:
                warn(f"keeping {name} F32: row length {w.shape[-1]} is not a multiple of "
                     f"the {t.name} block size {block}")
                fallback.append(name)
                t = QT.F32
        if name in raw_types:
            # A type the reader under test may not implement: zero bytes of the right size.
            t = QT[raw_types[name]]
            block, size = gguf.GGML_QUANT_SIZES[t]
            data = np.zeros(w.shape[:-1] + (w.shape[-1] // block * size,), dtype=np.uint8)
        else:
            data = gguf.quants.quantize(w, t)
        writer.add_tensor(name, data, raw_dtype=t)
        counts[t.name] = counts.get(t.name, 0) + 1
        per_file[-1] += 1

    files = [str(p) for p in writer.format_shard_names(writer.path)]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(json.dumps({
        "command": "write", "files": files, "architecture": arch, "model_type": model_type,
        "type": args.type, "file_type": int(ftype), "n_tensors": len(tensors),
        "tensor_types": dict(sorted(counts.items())), "tensors_per_file": per_file,
        "f32_fallback": fallback, "dropped_keys": dropped, "tokenizer": has_tok,
        "rope_freqs": any(n == "rope_freqs.weight" for n, _ in tensors),
    }, sort_keys=False))


# --------------------------------------------------------------------------------------------
# dequantize
# --------------------------------------------------------------------------------------------

SPLIT_RE = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")


def open_gguf_parts(path):
    """[GGUFReader], all parts of a split set when `path` names one part."""
    m = SPLIT_RE.match(path)
    if not m:
        return [gguf.GGUFReader(path)], [path]
    n = int(m.group(3))
    paths = [f"{m.group(1)}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    for p in paths:
        if not os.path.isfile(p):
            raise FixtureError(f"split part {p} is missing")
    readers = [gguf.GGUFReader(p) for p in paths]
    total = 0
    for i, r in enumerate(readers):
        no, count = field_value(r, "split.no"), field_value(r, "split.count")
        if no != i or count != n:
            raise FixtureError(f"{paths[i]}: split.no={no} split.count={count}, want {i}/{n}")
        total += len(r.tensors)
    want = field_value(readers[0], "split.tensors.count")
    if want != total:
        raise FixtureError(f"split.tensors.count {want} but the parts hold {total} tensors")
    return readers, paths


def field_value(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def f32_clean(v):
    """A float32 metadata value as the shortest decimal that round-trips (1e-05, not 9.99e-06)."""
    return float(str(np.float32(v)))


def config_from_metadata(r, tensor_names):
    arch = field_value(r, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3", "phi3"):
        raise FixtureError(f"unsupported general.architecture {arch!r}")

    def kv(key, default=None):
        return field_value(r, f"{arch}.{key}", default)

    model_type = arch
    if arch == "llama" and kv("attention.sliding_window") is not None:
        model_type = "mistral"
    hidden, heads = int(kv("embedding_length")), int(kv("attention.head_count"))
    hd = kv("attention.key_length", kv("rope.dimension_count", hidden // heads))
    vocab = kv("vocab_size")
    if vocab is None:
        tokens = field_value(r, "tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens else None
    arch_class = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "phi3": "Phi3ForCausalLM"}[model_type]
    cfg = {
        "architectures": [arch_class],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(kv("feed_forward_length")),
        "num_hidden_layers": int(kv("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv("attention.head_count_kv", heads)),
        "head_dim": int(hd),
        "max_position_embeddings": int(kv("context_length")),
        "rms_norm_eps": f32_clean(kv("attention.layer_norm_rms_epsilon")),
        "rope_theta": f32_clean(kv("rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "hidden_act": "silu",
        "pad_token_id": None,  # transformers' Phi3Config defaults to 32000 (> tiny vocabs)
        "torch_dtype": "float32",
    }
    if arch == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    if model_type == "mistral":
        cfg["sliding_window"] = int(kv("attention.sliding_window"))
    if arch == "phi3":
        sw = kv("attention.sliding_window")
        cfg["sliding_window"] = int(sw) if sw else None
        orig = kv("rope.scaling.original_context_length")
        if orig is not None:
            cfg["original_max_position_embeddings"] = int(orig)
        rope_dim = kv("rope.dimension_count")
        if rope_dim is not None and int(rope_dim) != int(hd):
            cfg["partial_rotary_factor"] = int(rope_dim) / int(hd)
    for key in ("bos_token_id", "eos_token_id"):
        v = field_value(r, f"tokenizer.ggml.{key}")
        if v is not None:
            cfg[key] = int(v)
    return cfg


def cmd_dequantize(args):
    readers, paths = open_gguf_parts(args.gguf)
    first = readers[0]
    arch = field_value(first, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3", "phi3"):
        raise FixtureError(f"unsupported general.architecture {arch!r}")
    model_type = "phi3" if arch == "phi3" else arch  # only the phi3 name map differs
    n_head = int(field_value(first, f"{arch}.attention.head_count"))
    n_kv = int(field_value(first, f"{arch}.attention.head_count_kv", n_head))

    all_tensors = [t for r in readers for t in r.tensors]
    names = {t.name for t in all_tensors}
    out, types, skipped = {}, {}, []
    for t in all_tensors:
        if t.name == "rope_freqs.weight":
            skipped.append(t.name)  # not a HF weight (llama3 rope lives in config.json)
            continue
        hf = gguf_to_hf_name(t.name, model_type)
        if hf is None:
            raise FixtureError(f"can not map GGUF tensor {t.name!r} back to a HF name")
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32).reshape(tuple(reversed([int(d) for d in t.shape])))
        if arch == "llama" and t.name.endswith((".attn_q.weight", ".attn_q.bias")):
            w = unpermute(w, n_head)
        if arch == "llama" and t.name.endswith((".attn_k.weight", ".attn_k.bias")):
            w = unpermute(w, n_kv)
        out[hf] = w
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1

    os.makedirs(args.out_dir, exist_ok=True)
    write_safetensors(os.path.join(args.out_dir, "model.safetensors"), out, {"format": "pt"})
    if args.config_from:
        shutil.copyfile(os.path.join(args.config_from, "config.json"),
                        os.path.join(args.out_dir, "config.json"))
        tok = os.path.join(args.config_from, "tokenizer.json")
        if os.path.isfile(tok):
            shutil.copyfile(tok, os.path.join(args.out_dir, "tokenizer.json"))
        config_source = os.path.join(args.config_from, "config.json")
    else:
        cfg = config_from_metadata(first, names)
        if "rope_freqs.weight" in names:
            warn("rope_freqs.weight (llama3 rope) can not be turned back into rope_parameters; "
                 "pass --config-from HF_DIR")
        with open(os.path.join(args.out_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        config_source = "metadata"
    print(json.dumps({
        "command": "dequantize", "files": paths, "architecture": arch,
        "n_tensors": len(out), "source_types": dict(sorted(types.items())),
        "skipped": skipped, "config": config_source,
        "out": os.path.join(args.out_dir, "model.safetensors"),
    }))


# --------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(
        description="Build GGUF teacher fixtures from HF checkpoints (llama.cpp conventions) "
                    "and dequantize GGUF files back to HF safetensors. See the module "
                    "docstring for the conventions.")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("write", help="convert HF_DIR to OUT.gguf like convert_hf_to_gguf.py")
    w.add_argument("hf_dir", metavar="HF_DIR", help="HF model dir (config.json, safetensors, "
                   "optional tokenizer.json)")
    w.add_argument("out", metavar="OUT.gguf", help="output path (with --split: the stem of "
                   "OUT-0000i-of-0000N.gguf)")
    w.add_argument("--type", required=True, choices=sorted(TYPES),
                   help="type of the 2-D weight matrices; 1-D tensors stay F32")
    w.add_argument("--split", type=int, default=1, metavar="N",
                   help="write N gguf-split parts instead of one file (default 1)")
    w.add_argument("--no-tokenizer", action="store_true",
                   help="write no tokenizer.ggml.* keys even if tokenizer.json exists")
    w.add_argument("--arch", metavar="NAME",
                   help="override general.architecture and the key prefix (bad-input fixtures)")
    w.add_argument("--drop-key", action="append", metavar="KEY",
                   help="omit this metadata key (repeatable; bad-input fixtures)")
    w.add_argument("--raw-type", action="append", metavar="TENSOR=TYPE",
                   help="store TENSOR as ggml TYPE (e.g. IQ4_NL) with zero bytes, unquantized "
                        "(repeatable; bad-input fixtures)")
    w.add_argument("--pre", default="gpt-2", metavar="NAME",
                   help="tokenizer.ggml.pre value (default gpt-2)")
    w.add_argument("--name", metavar="NAME",
                   help="general.name (default: llama.cpp's heuristic on the directory name)")
    w.set_defaults(func=cmd_write)

    d = sub.add_parser("dequantize", help="GGUF (or split set) -> OUT_HF_DIR with F32 "
                       "model.safetensors + config.json")
    d.add_argument("gguf", metavar="IN.gguf", help="a GGUF file or any part of a split set")
    d.add_argument("out_dir", metavar="OUT_HF_DIR")
    d.add_argument("--config-from", metavar="HF_DIR",
                   help="copy HF_DIR/config.json (and tokenizer.json if present) verbatim "
                        "instead of rebuilding config.json from the metadata")
    d.set_defaults(func=cmd_dequantize)

    args = p.parse_args(argv)
    try:
        args.func(args)
    except FixtureError as e:
        sys.stderr.write(f"gguf_fixture: error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
