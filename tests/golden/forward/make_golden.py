#!/usr/bin/env python3
"""Regenerate the golden forward-pass fixtures under tests/golden/forward/.

Usage (from the repository root):

    python3 -m pip install torch transformers safetensors numpy
    python3 tests/golden/forward/make_golden.py

Reference: PyTorch + Hugging Face transformers, eager attention, float32, CPU.
Produced with transformers 5.23.0 / torch 2.15.0 / safetensors 0.8.0 / numpy 2.4.6
(the exact versions used at generation time are also recorded in every golden.json).

For each of the five architectures (llama, mistral, qwen2, qwen3, phi3) this script

1. builds a tiny config (vocab 96, hidden 32, 2 layers, intermediate 64, 4 heads, 2 kv heads),
2. instantiates the model with random weights drawn from a fixed seed.  Every tensor is
   re-drawn so that a wrong loader cannot pass by accident:
     * norm weights (input/post-attention/final RMSNorm, qwen3 q_norm/k_norm): 1 + 0.3*randn
     * biases (qwen2 q/k/v): 0.3*randn
     * linear weights [out, in]: randn * gain/sqrt(in)
     * embeddings: randn (std 1; std 0.4 when tied to the lm head)
     * lm_head: randn * 2/sqrt(hidden)  (so logits have std ~2 across the vocab)
3. saves it with ``save_pretrained`` (safetensors; llama sharded into several files),
   post-processes config.json where a fixture asks for it (mistral: transformers-4.x style),
4. runs the reference forward (``model.eval()``, ``torch.no_grad()``, no attention mask,
   plain causal) on a batch of 2 x 12 token ids and writes golden.json with the full
   logits [2, 12, 96],
5. self-checks: reloads the directory with ``AutoModelForCausalLM.from_pretrained`` and
   confirms identical logits, and recomputes the logits with an independent float64 numpy
   implementation that reads only config.json + *.safetensors from disk (see
   ``numpy_forward``); both must agree with the stored logits within the tolerance.

Everything is deterministic (fixed seeds, CPU, single thread), so rerunning reproduces the
same files byte for byte with the same library versions.
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import safetensors
import torch
import transformers
from safetensors.numpy import load_file as np_load_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

HERE = os.path.dirname(os.path.abspath(__file__))
TOLERANCE = 1e-4
REFERENCE = (
    f"transformers {transformers.__version__} / torch {torch.__version__.split('+')[0]} "
    "(eager attention, float32)"
)
# Mistral's config.json is rewritten to look like a transformers 4.x checkpoint.
MISTRAL_4X_VERSION = "4.46.3"

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
    initializer_range=0.2,
)


def fixtures():
    """(name, config, seed, notes) for every fixture."""
    return [
        (
            "llama",
            LlamaConfig(
                **COMMON,
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8,
                },
            ),
            1001,
            [
                "Llama-3 rope scaling (rope_type llama3) with original_max_position_embeddings=8: "
                "head_dim=8 gives 4 inverse frequencies; with rope_theta=5e5 their wavelengths are "
                "6.28, 167, 4443, 118477 tokens. low_freq_wavelen=8, high_freq_wavelen=2, so "
                "frequency 0 is in the smoothed (medium) band and frequencies 1..3 are divided by "
                "factor=8; the unchanged high-frequency band is not exercised at this size.",
                "Checkpoint is sharded: model.safetensors.index.json + model-0000X-of-0000N.safetensors.",
                "config.json is exactly what transformers 5.x save_pretrained writes.",
            ],
        ),
        (
            "mistral",
            MistralConfig(
                **COMMON,
                rms_norm_eps=1e-6,
                tie_word_embeddings=False,
                sliding_window=4,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            1002,
            [
                "sliding_window=4: query position i attends to key positions j with i-4 < j <= i "
                "(transformers: kv_idx > q_idx - sliding_window), i.e. itself and the 3 previous tokens.",
                "config.json rewritten by make_golden.py into transformers 4.x style: rope_theta at the "
                "top level (no rope_parameters), torch_dtype instead of dtype, no head_dim key (derive "
                f"hidden_size/num_attention_heads = 8), transformers_version set to {MISTRAL_4X_VERSION}.",
            ],
        ),
        (
            "qwen2",
            Qwen2Config(
                **COMMON,
                rms_norm_eps=1e-6,
                tie_word_embeddings=True,
                use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            1003,
            [
                "tie_word_embeddings=true: the checkpoint has no lm_head.weight; logits = "
                "final_norm(h) @ model.embed_tokens.weight^T.",
                "q_proj/k_proj/v_proj have non-zero biases (o_proj has none).",
                "use_sliding_window=false, sliding_window=null: plain causal attention.",
            ],
        ),
        (
            "qwen3",
            Qwen3Config(
                **COMMON,
                head_dim=16,
                rms_norm_eps=1e-6,
                tie_word_embeddings=False,
                attention_bias=False,
                use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            1004,
            [
                "head_dim=16 explicitly, num_attention_heads*head_dim=64 != hidden_size=32: "
                "q_proj [64,32], k_proj/v_proj [32,32], o_proj [32,64].",
                "q_norm/k_norm are RMSNorm over head_dim (weight [16]) applied per head to q and k "
                "after the projection and before RoPE; they use rms_norm_eps too.",
            ],
        ),
        (
            "phi3",
            Phi3Config(
                **COMMON,
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
                original_max_position_embeddings=64,
                sliding_window=2047,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            1005,
            [
                "Fused projections: self_attn.qkv_proj [q_heads*hd + 2*kv_heads*hd = 64, 32] split "
                "in order q (32 rows), k (16), v (16); mlp.gate_up_proj [2*intermediate=128, 32] "
                "split in half, first half = gate (SiLU applied), second half = up.",
                "sliding_window=2047 (as in Phi-3-mini-4k) is far larger than the 12-token inputs, "
                "so it has no effect here; no rope_scaling.",
            ],
        ),
    ]


# --------------------------------------------------------------------------- weights


def randomize(model, seed, tied):
    g = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    with torch.no_grad():
        # named_parameters() yields a tied tensor only once (as model.embed_tokens.weight).
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * randn(p.shape))
            elif name.endswith(".bias"):
                p.copy_(0.3 * randn(p.shape))
            elif name == "model.embed_tokens.weight":
                p.copy_((0.4 if tied else 1.0) * randn(p.shape))
            elif name == "lm_head.weight":
                p.copy_(2.0 / math.sqrt(hidden) * randn(p.shape))
            elif p.dim() == 2:
                gain = 1.5 if any(k in name for k in ("q_proj", "k_proj", "qkv_proj")) else 1.0
                p.copy_(gain / math.sqrt(p.shape[1]) * randn(p.shape))
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def make_input_ids(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 96, size=(2, 12))
    assert (ids[0] != ids[1]).any()
    return ids.tolist()


# --------------------------------------------------------------------------- numpy check


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_interleaved(z, cos, sin):
    c, s = cos[:, 0::2], sin[:, 0::2]
    e, o = z[..., 0::2], z[..., 1::2]
    return np.stack([e * c - o * s, e * s + o * c], axis=-1).reshape(z.shape)


def silu(x):
    return x / (1.0 + np.exp(-x))


def numpy_forward(directory, input_ids, mutation=None):
    """Independent float64 forward reading only config.json and the safetensors files.

    ``mutation`` deliberately introduces one typical loader/model bug (see MUTATIONS); it is
    used to prove that the stored logits would catch that bug."""
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    W = {}
    for fn in sorted(os.listdir(directory)):
        if fn.endswith(".safetensors"):
            W.update({k: v.astype(np.float64) for k, v in np_load_file(os.path.join(directory, fn)).items()})

    mt = cfg["model_type"]
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    rope = cfg.get("rope_parameters") or {
        "rope_type": (cfg.get("rope_scaling") or {}).get("rope_type", "default"),
        "rope_theta": cfg["rope_theta"],
        **(cfg.get("rope_scaling") or {}),
    }
    inv_freq = 1.0 / rope["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if rope["rope_type"] == "llama3" and mutation != "no_rope_scaling":
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        out = np.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        out = np.where(medium, (1 - smooth) * out / factor + smooth * out, out)
        inv_freq = out
    else:
        assert rope["rope_type"] == "default" or mutation == "no_rope_scaling", rope
    window = cfg.get("sliding_window") if mt in ("mistral", "phi3") else None
    if mt in ("qwen2", "qwen3"):
        assert not cfg.get("use_sliding_window")

    ids = np.asarray(input_ids)
    B, T = ids.shape
    pos = np.arange(T, dtype=np.float64)
    freqs = np.outer(pos, inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)  # [T, hd]
    qi, kj = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = kj <= qi
    if window is not None and mutation != "no_sliding_window":
        allowed &= (kj >= qi - window) if mutation == "sliding_window_off_by_one" else (kj > qi - window)

    x = W["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        if mt == "phi3":
            qkv = h @ W[p + "self_attn.qkv_proj.weight"].T
            q, k, v = np.split(qkv, [nh * hd, nh * hd + nkv * hd], axis=-1)
            if mutation == "qkv_split_order_qvk":
                q, v, k = q, k, v
        else:
            q = h @ W[p + "self_attn.q_proj.weight"].T + W.get(p + "self_attn.q_proj.bias", 0.0)
            k = h @ W[p + "self_attn.k_proj.weight"].T + W.get(p + "self_attn.k_proj.bias", 0.0)
            v = h @ W[p + "self_attn.v_proj.weight"].T + W.get(p + "self_attn.v_proj.bias", 0.0)
            if mutation == "no_bias":
                q = h @ W[p + "self_attn.q_proj.weight"].T
                k = h @ W[p + "self_attn.k_proj.weight"].T
                v = h @ W[p + "self_attn.v_proj.weight"].T
        q = q.reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        k = k.reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        if mt == "qwen3" and mutation != "no_qk_norm":
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        if mutation == "interleaved_rope":  # GPT-J style pairs (2i, 2i+1) instead of rotate_half
            q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        else:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if mutation == "gqa_tile":  # head i uses kv head i % nkv (wrong)
            k, v = np.tile(k, (1, nh // nkv, 1, 1)), np.tile(v, (1, nh // nkv, 1, 1))
        else:
            k = np.repeat(k, nh // nkv, axis=1)  # head i uses kv head i // (nh/nkv)
            v = np.repeat(v, nh // nkv, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        s = np.where(allowed, s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        a = (s / s.sum(axis=-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(B, T, nh * hd)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        if mt == "phi3":
            gate, up = np.split(h @ W[p + "mlp.gate_up_proj.weight"].T, 2, axis=-1)
            if mutation == "swap_gate_up":
                gate, up = up, gate
        else:
            gate = h @ W[p + "mlp.gate_proj.weight"].T
            up = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    if mutation == "final_norm_without_weight":
        x = x / W["model.norm.weight"]
    if cfg.get("tie_word_embeddings"):
        assert "lm_head.weight" not in W
        head = W["model.embed_tokens.weight"]
    else:
        head = W["lm_head.weight"]
    return x @ head.T


# Deliberate bugs per fixture; each must move the logits by far more than the tolerance.
MUTATIONS = {
    "llama": ["no_rope_scaling", "interleaved_rope", "gqa_tile", "final_norm_without_weight"],
    "mistral": ["no_sliding_window", "sliding_window_off_by_one", "interleaved_rope", "gqa_tile"],
    "qwen2": ["no_bias", "interleaved_rope", "gqa_tile"],
    "qwen3": ["no_qk_norm", "interleaved_rope", "gqa_tile"],
    "phi3": ["swap_gate_up", "qkv_split_order_qvk", "interleaved_rope", "gqa_tile"],
}


# --------------------------------------------------------------------------- config rewrite


def rewrite_mistral_4x(directory):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rope = cfg.pop("rope_parameters")
    assert rope == {"rope_type": "default", "rope_theta": 1000000.0}, rope
    cfg.pop("head_dim")
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["transformers_version"] = MISTRAL_4X_VERSION
    with open(path, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------- main


def forward(model, input_ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(input_ids, dtype=torch.long)).logits.float().numpy()


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    names = set(sys.argv[1:])
    for name, config, seed, notes in fixtures():
        if names and name not in names:
            continue
        out = os.path.join(HERE, name)
        if os.path.isdir(out):
            shutil.rmtree(out)
        tied = bool(config.tie_word_embeddings)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        randomize(model, seed, tied)
        model.eval()
        input_ids = make_input_ids(seed)
        logits = forward(model, input_ids)

        kwargs = {"max_shard_size": "60KB"} if name == "llama" else {}
        model.save_pretrained(out, **kwargs)
        if name == "mistral":
            rewrite_mistral_4x(out)

        # Self-check 1: reload from disk through the Auto API (proves the saved / rewritten
        # config + weights reproduce the same model).
        reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
        reloaded.eval()
        assert type(reloaded).__name__ == type(model).__name__
        re_logits = forward(reloaded, input_ids)
        reload_diff = float(np.abs(re_logits - logits).max())
        assert reload_diff == 0.0, f"{name}: reload differs by {reload_diff}"

        # Self-check 2: independent float64 numpy forward from the files on disk.
        np_logits = numpy_forward(out, input_ids)
        np_diff = float(np.abs(np_logits - logits).max())
        assert np_diff < TOLERANCE / 10, f"{name}: numpy reference differs by {np_diff}"

        # Self-check 3: the fixture is sensitive to typical bugs.
        mutation_diffs = {}
        for mutation in MUTATIONS[name]:
            d = float(np.abs(numpy_forward(out, input_ids, mutation) - logits).max())
            assert d > 100 * TOLERANCE, f"{name}: mutation {mutation} only moves logits by {d}"
            mutation_diffs[mutation] = round(d, 4)

        files = sorted(os.listdir(out))
        if name == "llama":
            assert "model.safetensors.index.json" in files
            assert sum(f.endswith(".safetensors") for f in files) >= 2, files
        if tied:
            with safetensors.safe_open(os.path.join(out, "model.safetensors"), "np") as f:
                assert "lm_head.weight" not in f.keys()

        golden = {
            "produced_by": "make_golden.py",
            "reference": REFERENCE,
            "versions": {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "safetensors": safetensors.__version__,
                "numpy": np.__version__,
            },
            "model_type": config.model_type,
            "seed": seed,
            "notes": notes,
            "logits_std_over_vocab": float(logits.std(axis=-1).mean()),
            "max_abs_diff_vs_float64_numpy": np_diff,
            "max_abs_diff_if_buggy": mutation_diffs,
            "tolerance": TOLERANCE,
            "input_ids": input_ids,
            "logits": [[[float(v) for v in row] for row in seq] for seq in logits],
        }
        with open(os.path.join(out, "golden.json"), "w") as f:
            json.dump(golden, f)
            f.write("\n")
        print(
            f"{name:8s} files={files} logits std={golden['logits_std_over_vocab']:.3f} "
            f"|logits|max={np.abs(logits).max():.2f} reload_diff={reload_diff} numpy_diff={np_diff:.2e} "
            f"mutations={mutation_diffs}"
        )


if __name__ == "__main__":
    main()
