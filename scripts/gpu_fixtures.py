#!/usr/bin/env python3
"""What scripts/gpu_check.py runs taidcache on, and what it compares with.

- A random Llama teacher as a Hugging Face directory (config.json, model.safetensors in f32, a
  word-level tokenizer.json of the same vocabulary) and a JSONL corpus that packs into exactly
  `seqs` sequences of `seq_len` tokens. Weights are drawn as the test fixtures draw them
  (src/model/init.rs): embeddings N(0, 1), matrices N(0, 1/fan_in), norms 1 + 0.1 N(0, 1);
  with torch on the device when torch is importable (a 0.8B teacher in a second), else numpy.
- A student `config.json` (distill initializes it at random from --seed).
- The cache as numpy arrays (pyarrow), the f64 numpy forward of the teacher (the reference when
  torch is missing: the CI dry run), and the comparison of a cache with a reference.

As a program: `python3 scripts/gpu_fixtures.py teacher --out DIR --shape JSON [--device D]`
writes a teacher (the check runs it in its own process so that the GPU memory it takes is
given back before taidcache runs).
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

SPECIALS = ["<unk>", "<s>", "</s>"]
BOS_ID, EOS_ID = 1, 2


def config_json(shape):
    """`config.json` as transformers 5.x writes it (the fields src/model/config.rs reads)."""
    h, heads = shape["hidden"], shape["heads"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape["vocab"],
        "hidden_size": h,
        "intermediate_size": shape["intermediate"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": shape["kv_heads"],
        "head_dim": h // heads,
        "hidden_act": "silu",
        "max_position_embeddings": max(4096, shape.get("seq_len", 0)),
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": bool(shape.get("tie", False)),
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "dtype": "float32",
    }


def tensor_shapes(cfg):
    """(name, shape) of every weight of a Llama `cfg`, in the Hugging Face names."""
    h, v, i = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h))]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    out += [("model.norm.weight", (h,))]
    if not cfg["tie_word_embeddings"]:
        out += [("lm_head.weight", (v, h))]
    return out


def init_scale(name, shape):
    """(mean, std) of a weight, as src/model/init.rs draws the fixtures."""
    if name.endswith("norm.weight"):
        return 1.0, 0.1
    if "embed_tokens" in name:
        return 0.0, 1.0
    return 0.0, 1.0 / np.sqrt(shape[1])


def write_safetensors(path, tensors):
    """`tensors`: (name, shape, producer) with producer() -> little-endian f32 bytes. The format:
    an 8-byte header length, the JSON header (padded to 8 bytes), then the raw data."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in tensors:
        n = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, produce in tensors:
            data = produce()
            if len(data) != 4 * int(np.prod(shape)):
                raise RuntimeError(f"{name}: {len(data)} bytes for shape {shape}")
            f.write(data)


def tokenizer_json(vocab):
    """A word-level tokenizer: `<unk> <s> </s>`, then `w3` … `w{vocab-1}`, split on whitespace,
    so a corpus of such words tokenizes to exactly one id per word, anywhere in the vocabulary."""
    words = {t: i for i, t in enumerate(SPECIALS)}
    words.update({f"w{i}": i for i in range(len(SPECIALS), vocab)})
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(SPECIALS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "<unk>"},
    }


def write_teacher(out, shape, device="cpu", seed=0, use_torch=True):
    """A random teacher directory. Returns 'torch' or 'numpy' (what drew the weights): torch
    (on `device`) when `use_torch` and it is importable."""
    os.makedirs(out, exist_ok=True)
    cfg = config_json(shape)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(shape["vocab"]), f)
    torch = None
    if use_torch:
        try:
            import torch
        except ImportError:
            pass
    tensors = []
    if torch is not None:
        dev = torch.device(device)
        gen = torch.Generator(device=dev).manual_seed(seed)

        def producer(name, shp):
            mean, std = init_scale(name, shp)
            return lambda: (torch.randn(shp, generator=gen, device=dev) * std + mean).cpu().numpy().astype("<f4").tobytes()
        how = "torch"
    else:
        rng = np.random.default_rng(seed)

        def producer(name, shp):
            mean, std = init_scale(name, shp)
            return lambda: (rng.standard_normal(shp, dtype=np.float32) * np.float32(std) + np.float32(mean)).astype("<f4").tobytes()
        how = "numpy"
    for name, shp in tensor_shapes(cfg):
        tensors.append((name, shp, producer(name, shp)))
    write_safetensors(os.path.join(out, "model.safetensors"), tensors)
    return how


def write_student(out, shape):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_json(shape), f, indent=2)


def write_corpus(path, vocab, seqs, seq_len, seed=1):
    """JSONL documents of `w<id>` words whose packing (each document plus an EOS) fills exactly
    `seqs` sequences of `seq_len` tokens. Returns (documents, bytes)."""
    rng = np.random.default_rng(seed)
    remaining, docs = seqs * seq_len, []
    while remaining > 0:
        n = int(rng.integers(50, 400))
        if remaining - (n + 1) < 51:
            n = remaining - 1
        ids = rng.integers(len(SPECIALS), vocab, size=n)
        docs.append(" ".join(f"w{i}" for i in ids))
        remaining -= n + 1
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return len(docs), os.path.getsize(path)


# --- the cache, read with pyarrow ---------------------------------------------------------------


def read_cache(cache):
    """The cache's rows in seq_id order: dict of numpy arrays `input_ids` [N, S] int64,
    `loss_mask` [N, S] bool, `topk_ids` [N, S, k] int64, `topk_logprobs` [N, S, k] f32 (from the
    stored f16), `tail_logmass` [N, S] f32. Plain encoding (format v1) only."""
    import pyarrow.parquet as pq

    with open(os.path.join(cache, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("format_version") != 1:
        raise ValueError(f"{cache}: format_version {manifest.get('format_version')}, the check reads v1 (--encoding plain)")
    k, s = manifest["top_k"], manifest["packing"]["seq_len"]
    parts = {c: [] for c in ["seq_id", "input_ids", "loss_mask", "topk_ids", "topk_logprobs", "tail_logmass"]}

    def flat(col, depth):
        a = col.combine_chunks()
        for _ in range(depth):
            a = a.flatten()
        return a.to_numpy(zero_copy_only=False)

    for entry in manifest["shards"]:
        t = pq.read_table(os.path.join(cache, entry["path"]))
        n = t.num_rows
        parts["seq_id"].append(t["seq_id"].to_numpy())
        parts["input_ids"].append(flat(t["input_ids"], 1).astype(np.int64).reshape(n, s))
        parts["loss_mask"].append(flat(t["loss_mask"], 1).astype(bool).reshape(n, s))
        parts["topk_ids"].append(flat(t["topk_ids"], 2).astype(np.int64).reshape(n, s, k))
        parts["topk_logprobs"].append(flat(t["topk_logprobs"], 2).astype(np.float32).reshape(n, s, k))
        parts["tail_logmass"].append(flat(t["tail_logmass"], 1).astype(np.float32).reshape(n, s))
    out = {c: np.concatenate(v) for c, v in parts.items()}
    order = np.argsort(out.pop("seq_id"), kind="stable")
    out = {c: v[order] for c, v in out.items()}
    out["manifest"] = manifest
    return out


# --- the numpy reference (f64) ------------------------------------------------------------------


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {meta['dtype']}, the numpy reference reads F32")
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(mm[base + a:base + b], dtype="<f4").reshape(meta["shape"])
    return out


def round_bf16(x):
    """f32 -> the nearest bf16 (ties to even), as f32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def numpy_logits(teacher_dir, ids, dtype="f32"):
    """Llama forward in f64, as transformers computes it: ids [B, S] -> logits [B, S, V].
    With dtype bf16 the weights are first rounded to bf16 (what `--dtype bf16` loads); the
    activations stay f64, so the comparison sees candle's bf16 arithmetic as error."""
    with open(os.path.join(teacher_dir, "config.json")) as f:
        cfg = json.load(f)
    w = load_safetensors(os.path.join(teacher_dir, "model.safetensors"))
    w = {n: (round_bf16(a) if dtype == "bf16" else a).astype(np.float64) for n, a in w.items()}
    eps, hd = cfg["rms_norm_eps"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    theta = cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    b, s = ids.shape

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    freqs = np.arange(s, dtype=np.float64)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1))

    def rope(x):  # [B, H, S, hd]
        half = hd // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    mask = np.triu(np.full((s, s), -np.inf), 1)
    x = w["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(b, s, nh, hd).transpose(0, 2, 1, 3)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(b, s, nkv, hd).transpose(0, 2, 1, 3)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(b, s, nkv, hd).transpose(0, 2, 1, 3)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(b, s, nh * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


def reference_arrays(logits, ours_ids, k):
    """From reference logits [P, V] (any float) and the cache's ids [P, k]: what `compare` needs,
    as f64 — the reference log-probs at the cache's ids, the reference's own top-k (values, ids)
    and tail log-mass (log-sum-exp of the log-probs outside its top-k)."""
    def logsumexp(x):
        m = x.max(-1, keepdims=True)
        return (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]

    z = logits.astype(np.float64)
    lp = z - logsumexp(z)[:, None]
    top = np.argpartition(-lp, k - 1, axis=-1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(lp, top, -1), axis=-1, kind="stable"), -1)
    rest = lp.copy()
    np.put_along_axis(rest, top, -np.inf, -1)
    return {
        "lp_at_ours": np.take_along_axis(lp, ours_ids, -1),
        "topk_vals": np.take_along_axis(lp, top, -1),
        "topk_ids": top,
        "tail": logsumexp(rest),
    }


# --- the comparison -----------------------------------------------------------------------------


def f16_half_ulp(x):
    """Half the spacing of f16 at |x| (the plain encoding's rounding of a stored log-prob)."""
    e = np.floor(np.log2(np.maximum(np.abs(x), 2.0 ** -14)))
    return 0.5 * 2.0 ** (e - 10)


# bf16's own error, as PyTorch's bf16 forward shows it, times this is what taidcache's bf16 may
# have; without PyTorch (the CI dry run) BF16_NO_PEER times the tolerance.
BF16_PEER_FACTOR = 1.5
BF16_NO_PEER = 3.0


def spread(err):
    return {"max": float(err.max()), "p999": float(np.quantile(err, 0.999)), "mean": float(err.mean())}


def compare(cache, ref, tol, dtype):
    """The cache against a reference on the unmasked positions. `ref` holds, for every position
    flattened to [N*S, k] / [N*S]: the exact model's log-probs at the cache's ids
    (`lp_at_ours`), its own top-k (`topk_vals`, `topk_ids`) and tail, and for bf16 optionally
    PyTorch's bf16 log-probs at the cache's ids (`peer_lp_at_ours`). The exact model is the f32
    (f64 in numpy) forward of the weights as the run loaded them (rounded to bf16 for bf16).

    The bound: f32, `tol`. bf16, max(tol, 1.5 × the largest error of PyTorch's own bf16 against
    the same exact model), or 3 × tol where PyTorch is missing: bf16 activations alone move a
    log-prob by a few 1e-2 on these teachers (PyTorch's bf16 as much as ours), so a fixed 2e-2
    on the largest error fails any bf16 implementation; the bound asks taidcache's bf16 to be
    as accurate as PyTorch's. A stored log-prob passes when |stored − exact| <= bound + half an
    f16 step at the value (the plain encoding stores f16). An id at rank j passes when it is
    the exact model's id at rank j, or a tie: its exact log-prob is within that allowance of the
    exact j-th value. The tail log-mass passes within `tol`."""
    mask = cache["loss_mask"].reshape(-1)
    k = cache["topk_ids"].shape[-1]
    ours_ids = cache["topk_ids"].reshape(-1, k)[mask]
    ours_lp = cache["topk_logprobs"].reshape(-1, k)[mask].astype(np.float64)
    ours_tail = cache["tail_logmass"].reshape(-1)[mask].astype(np.float64)
    ref = {n: np.asarray(a, dtype=np.int64 if n == "topk_ids" else np.float64)[mask] for n, a in ref.items()}
    exact = ref["lp_at_ours"]
    err = np.abs(ours_lp - exact)
    result = {"positions": int(mask.sum()), "k": int(k), "tolerance": tol, "ours_vs_exact": spread(err)}
    if dtype == "f32":
        bound, why = tol, "tol"
    elif "peer_lp_at_ours" in ref:
        peer_err = np.abs(ref["peer_lp_at_ours"] - exact)
        ours_vs_peer = np.abs(ours_lp - ref["peer_lp_at_ours"])
        result["pytorch_bf16_vs_exact"] = spread(peer_err)
        result["ours_vs_pytorch_bf16"] = dict(spread(ours_vs_peer), within_tol=float((ours_vs_peer <= tol).mean()))
        bound = max(tol, BF16_PEER_FACTOR * float(peer_err.max()))
        why = f"max(tol, {BF16_PEER_FACTOR} x PyTorch bf16's largest error against the same exact model)"
    else:
        bound, why = BF16_NO_PEER * tol, f"{BF16_NO_PEER} x tol (no PyTorch bf16 here to measure bf16's own error)"
    allow = bound + f16_half_ulp(exact)
    excess = err - allow
    same = ours_ids == ref["topk_ids"]
    tie = ~same & (np.abs(exact - ref["topk_vals"]) <= allow)
    bad_ids = ~same & ~tie
    tail_err = np.abs(ours_tail - ref["tail"])
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    result.update({
        "bound": bound,
        "bound_is": why + ", plus half an f16 step of the value",
        "ids_exact_fraction": float(same.mean()),
        "ids_tie_swaps": int(tie.sum()),
        "ids_not_ties": int(bad_ids.sum()),
        "logprobs_over_bound": int((excess > 0).sum()),
        "tail_max_abs_err": float(tail_err.max()),
        "tail_over_tol": int((tail_err > tol).sum()),
        "worst": {
            "position": int(worst[0]), "rank": int(worst[1]), "id": int(ours_ids[worst]),
            "stored": float(ours_lp[worst]), "exact": float(exact[worst]), "allowed": float(allow[worst]),
        },
    })
    result["pass"] = result["ids_not_ties"] == 0 and result["logprobs_over_bound"] == 0 and result["tail_over_tol"] == 0
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher", help="write a random teacher directory")
    t.add_argument("--out", required=True)
    t.add_argument("--shape", required=True, help="JSON: vocab, hidden, intermediate, layers, heads, kv_heads")
    t.add_argument("--device", default="cpu", help="where torch draws the weights (when importable)")
    t.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    how = write_teacher(args.out, json.loads(args.shape), args.device, args.seed)
    print(json.dumps({"weights_drawn_with": how}))


if __name__ == "__main__":
    sys.exit(main())
