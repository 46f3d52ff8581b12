#!/usr/bin/env python3
"""Write DistillKit-format teacher captures from a taidcache cache, with numpy and pyarrow only.

A numpy port of the COMPRESSION side of arcee-ai's DistillKit (distillkit/compression:
LogprobCompressor.compress_from_sparse -> compress_monotonic_logprobs + pack_to_bytes), used
by the Rust integration tests of `taidcache import --from distillkit` to build captures without
torch or vLLM. Also a numpy port of the decompression (`decompress`), for the self-test.

    python3 tests/python/distillkit_capture.py --cache DIR --out FILE.parquet \\
        (--preset budget|recommended|readme | --config JSON) --vocab D \\
        [--k K] [--form compressed|topvalues] [--layout vllm|packed] [--rows-per-group N] \\
        [--break KIND]
    python3 tests/python/distillkit_capture.py --self-test

Input: a taidcache cache directory written with `--encoding plain` (format v1). Only
`shards[].path` is read from manifest.json; each shard has seq_id, input_ids, loss_mask,
topk_ids (fixed_size_list<uint32>[K]) and topk_logprobs (fixed_size_list<float16>[K],
descending). Rows are read in seq_id order; each row is one document whose tokens are the
positions where loss_mask is true (must be a prefix of the row; rows with no such position
are skipped). Position i of a row holds the teacher's distribution of the token after
input_ids[..=i]. Per position the first k of the K entries are used (k <= K).

Output rows, one per document of n tokens:
  --layout vllm (default): what distillkit/sample_logits_vllm.py writes: input_ids = the n
      tokens, n-1 entries for positions 0..n-2 (vLLM has no prompt log-probs for the first
      token, so entry j predicts token j+1; nothing predicts past the last token).
  --layout packed: the rows of pack_pass (pack_logits.py) for documents of max_len tokens:
      input_ids = n tokens, n entries (positions 0..n-1; the last predicts a token not in
      the row), plus attention_mask: list<int64> of n ones.
  --form compressed (default): sample_common.compressed_logit_schema():
      input_ids list<uint64>, compressed_logprobs list<list<uint8>>,
      bytepacked_indices list<list<uint8>>.
  --form topvalues: DistillKit's uncompressed form (decompress_to_sparse passes it through):
      input_ids list<uint64>, token_ids list<list<int64>>, top_values list<list<float32>>.
The compression block is also written, as DistillKit's sample_logits_vllm writes its
compression_config.yaml (yaml.safe_dump of the model: keys sorted, block lists), to FILE.yaml
(FILE.parquet's name with .yaml in place of .parquet). PyYAML is not needed.

Byte layout of one entry's compressed_logprobs (compress_monotonic_logprobs), after the k
log-probs are sorted descending (stable sort here; DistillKit's torch.sort is not stable, ties
may come out in another order) and, with delta_encoding, replaced by [x0, x1-x0, x2-x1, ...]
(in float32):
  [exact_k values in exact_dtype] [len(polynomial_terms) coefficients in term_dtype]
  [per residual bin: its scale in scale_dtype, then num_elements unsigned integers of
   element_bits bits, MSB first, padded with zero bits to a whole byte]
all little-endian, no header. The coefficients are the least-squares fit of values
exact_k..k-1 against t = 0,1,..,k-exact_k-1 (or linspace(0,1) with normalize_t) raised to the
integer powers, or sqrt(t)/exp(t) for "sqrt"/"exp"; the residuals (value - fit) of the first
sum(num_elements) positions are quantized per bin (naive: round(v/scale) clamped to
[-2^(b-1), 2^(b-1)-1], stored +2^(b-1); scale = max|v| / 2^(b-1) rounded to scale_dtype;
b=1: clamp to [0,1], dequantized as (2q-1)*scale). bytepacked_indices: the k token ids (in the
sorted order) at ceil(log2(d)) bits each (computed in float32, as DistillKit does), MSB first,
padded to a byte. bfloat16 is float32 rounded to nearest even (torch's conversion).

--break KIND writes a bad capture for the error tests, always on row index 1 (the second row):
  id-out-of-range   entry 0's first id set to d (to 2^bits-1 when d is a power of two, which
                    is then NOT out of range: a warning says so); topvalues: token id d
  short-bytes       entry 0's compressed_logprobs loses its last byte (topvalues: top_values)
  short-ids         entry 0's bytepacked_indices loses its last byte (topvalues: token_ids)
  entry-count       the row's compressed_logprobs list loses its last entry, bytepacked_indices
                    does not (topvalues: top_values loses it, token_ids does not)
  missing-column    no bytepacked_indices column at all, all rows (topvalues: no token_ids)
  too-many-entries  the row's last entry duplicated in both lists (vllm: n entries, one more
                    than n-1; packed: n+1)

Prints one line on stdout, e.g.
    rows=3 entries=45 bytes_per_entry=180.0 (logprob bytes 148, index bytes 32)
Exit status 0 on success, 2 on bad input (message on stderr).

Not supported: element_bits above 32; d < 2. error_diffusion is ported (float error diffusion
of the deltas, error-diffusion quantization of the residual bins carrying the error buffer
from bin to bin as DistillKit does), though only the self-test exercises it.

--decode CAPTURE (with --preset/--config and --vocab) prints one JSON line per row of a
capture: {"row": r, "input_ids": [...], "ids": [[k ids] per entry], "logprobs": [[k values]
per entry]}, decoded with `decompress` (compressed form) or read as they are (topvalues).

--self-test compresses random LM-like top-k log-probs (float16, with ties, columns shuffled)
with the three presets and six more configurations (every dtype, bins of 1..12 bits, delta,
error diffusion, normalize_t, sqrt/exp), decompresses with `decompress`, checks that the ids
are identical and the log-probs within a per-configuration tolerance of the input (and, without
residual bins, within 1e-3 of the float64 least-squares reconstruction), and prints the max
errors per configuration. Exit status 0 when all pass.

Checked once by hand against DistillKit itself (torch 2.15, DistillKit a61c2e7): its
decompress_to_sparse decodes these bytes to the same ids, and to log-probs within 1.2e-5 of
`decompress` (float32 summation order); with float16/bfloat16 term dtypes torch's CPU pow is
matched exactly (x*x*x rounded per product for bfloat16, once for float16). Not emulated:
torch's vectorized float32 linspace (normalize_t) and exp differ by an ulp here and there.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

DTYPES = ("float16", "bfloat16", "float32", "float64")
WIDTH = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
SPECIAL_TERMS = ("sqrt", "exp")

PRESETS = {
    "budget": {
        "k": 50,
        "exact_k": 1,
        "exact_dtype": "bfloat16",
        "polynomial_terms": [0, 1, "sqrt"],
        "term_dtype": "float32",
        "residual_bins": [],
        "delta_encoding": False,
        "error_diffusion": False,
    },
    "recommended": {
        "k": 128,
        "exact_k": 16,
        "exact_dtype": "bfloat16",
        "polynomial_terms": [0, 1, 2, 3, 4, "sqrt"],
        "term_dtype": "float32",
        "residual_bins": [],
        "delta_encoding": False,
        "error_diffusion": False,
    },
    "readme": {
        "k": 128,
        "exact_k": 32,
        "exact_dtype": "float32",
        "polynomial_terms": [0, 1, 2],
        "term_dtype": "float32",
        "residual_bins": [],
        "delta_encoding": True,
        "error_diffusion": False,
    },
}

BREAKS = (
    "id-out-of-range",
    "short-bytes",
    "short-ids",
    "entry-count",
    "missing-column",
    "too-many-entries",
)


class InputError(Exception):
    pass


# ----------------------------------------------------------------------------------------
# configuration (DistributionQuantizationConfig, with its pydantic defaults and checks)


def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{name} must be an integer, got {v!r}")
    if v < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {v}")
    return v


def _check_dtype(name, v):
    if v not in DTYPES:
        raise InputError(f"{name} must be one of {', '.join(DTYPES)}, got {v!r}")
    return v


def _check_bool(name, v):
    if not isinstance(v, bool):
        raise InputError(f"{name} must be true or false, got {v!r}")
    return v


def normalize_config(raw):
    """Validate a DistillKit compression block (a dict) and fill in DistillKit's defaults."""
    if not isinstance(raw, dict):
        raise InputError("the compression config must be a JSON object")
    known = {
        "d",
        "k",
        "exact_k",
        "exact_dtype",
        "polynomial_terms",
        "term_dtype",
        "residual_bins",
        "delta_encoding",
        "error_diffusion",
        "normalize_t",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"unknown compression config keys: {', '.join(unknown)}")
    for key in ("d", "k", "exact_k"):
        if key not in raw:
            raise InputError(f"compression config lacks {key!r}")
    cfg = {
        "d": _check_int("d", raw["d"], 2),
        "k": _check_int("k", raw["k"], 1),
        "exact_k": _check_int("exact_k", raw["exact_k"], 0),
        "exact_dtype": _check_dtype("exact_dtype", raw.get("exact_dtype", "float32")),
        "term_dtype": _check_dtype("term_dtype", raw.get("term_dtype", "float32")),
        "delta_encoding": _check_bool("delta_encoding", raw.get("delta_encoding", True)),
        "error_diffusion": _check_bool("error_diffusion", raw.get("error_diffusion", False)),
        "normalize_t": _check_bool("normalize_t", raw.get("normalize_t", False)),
    }
    terms = raw.get("polynomial_terms", None)
    if terms is not None:
        if not isinstance(terms, list):
            raise InputError("polynomial_terms must be a list or null")
        out = []
        for t in terms:
            if isinstance(t, str):
                if t not in SPECIAL_TERMS:
                    raise InputError(f"polynomial term {t!r} is not an integer, sqrt or exp")
                out.append(t)
            else:
                out.append(_check_int("a polynomial term", t, 0))
        terms = out
    cfg["polynomial_terms"] = terms
    bins = raw.get("residual_bins", [])
    if not isinstance(bins, list):
        raise InputError("residual_bins must be a list")
    cfg["residual_bins"] = []
    for b in bins:
        if not isinstance(b, dict) or set(b) != {"scale_dtype", "element_bits", "num_elements"}:
            raise InputError(
                "each residual bin must have exactly scale_dtype, element_bits, num_elements"
            )
        bits = _check_int("element_bits", b["element_bits"], 1)
        if bits > 32:
            raise InputError(f"element_bits above 32 are not supported here, got {bits}")
        cfg["residual_bins"].append(
            {
                "scale_dtype": _check_dtype("scale_dtype", b["scale_dtype"]),
                "element_bits": bits,
                "num_elements": _check_int("num_elements", b["num_elements"], 1),
            }
        )
    if cfg["k"] < cfg["exact_k"]:
        raise InputError("k must be >= exact_k")
    if cfg["exact_k"] < cfg["k"] and not cfg["polynomial_terms"] and not cfg["residual_bins"]:
        raise InputError(
            "If exact_k < k, at least one of polynomial_terms or residual_bins must be provided."
        )
    if sum(b["num_elements"] for b in cfg["residual_bins"]) > cfg["k"] - cfg["exact_k"]:
        raise InputError("Sum of num_elements in residual_bins must be <= k - exact_k")
    return cfg


def config_yaml(cfg):
    """The block as yaml.safe_dump(cfg.model_dump(mode="json")) writes it (sorted keys)."""

    def scalar(v):
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    lines = []
    for key in sorted(cfg):
        v = cfg[key]
        if isinstance(v, list):
            if not v:
                lines.append(f"{key}: []")
                continue
            lines.append(f"{key}:")
            for item in v:
                if isinstance(item, dict):
                    first = True
                    for ik in sorted(item):
                        lines.append(f"{'- ' if first else '  '}{ik}: {scalar(item[ik])}")
                        first = False
                else:
                    lines.append(f"- {scalar(item)}")
        else:
            lines.append(f"{key}: {scalar(v)}")
    return "\n".join(lines) + "\n"


def vocab_index_bits(d):
    # DistillKit: int(torch.log2(torch.tensor(d, dtype=torch.float32)).ceil().item()).
    # Computed in float32: for d = 2^m + small with m >= 21 this can be one bit short of
    # ceil(log2(d)) (e.g. d = 2097153 gives 21).
    return int(np.ceil(np.log2(np.float32(d))))


def logprob_bytes(cfg):
    """DistributionQuantizationConfig.logprob_bits() // 8."""
    bits = cfg["exact_k"] * WIDTH[cfg["exact_dtype"]] * 8
    bits += len(cfg["polynomial_terms"] or []) * WIDTH[cfg["term_dtype"]] * 8
    for b in cfg["residual_bins"]:
        bb = WIDTH[b["scale_dtype"]] * 8 + b["element_bits"] * b["num_elements"]
        bits += (bb + 7) // 8 * 8
    return (bits + 7) // 8


def index_bytes(cfg):
    return (cfg["k"] * vocab_index_bits(cfg["d"]) + 7) // 8


# ----------------------------------------------------------------------------------------
# floating-point formats (torch semantics)


def _bf16_bits(x):
    """float32 -> bfloat16 bit patterns, round to nearest even (c10::round_to_nearest_even)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded).astype(np.uint16)


def encode(x, dtype):
    """Values (any float array, last axis = values of one entry) -> little-endian bytes."""
    x = np.asarray(x)
    if dtype == "bfloat16":
        # torch converts double -> bfloat16 through float
        raw = _bf16_bits(x.astype(np.float32)).astype("<u2")
    elif dtype == "float16":
        raw = x.astype(np.float32).astype("<f2") if x.dtype != np.float16 else x.astype("<f2")
    elif dtype == "float32":
        raw = x.astype("<f4")
    elif dtype == "float64":
        raw = x.astype("<f8")
    else:
        raise ValueError(dtype)
    raw = np.ascontiguousarray(raw)
    return raw.view(np.uint8).reshape(*x.shape[:-1], x.shape[-1] * WIDTH[dtype])


def decode(b, dtype, n):
    """Little-endian bytes (..., n*width) -> values: float64 for float64, else float32."""
    b = np.ascontiguousarray(b, dtype=np.uint8)
    if dtype == "bfloat16":
        u = b.view("<u2").astype(np.uint32) << 16
        out = u.view(np.float32)
    elif dtype == "float16":
        out = b.view("<f2").astype(np.float32)
    elif dtype == "float32":
        out = b.view("<f4").astype(np.float32)
    else:
        out = b.view("<f8").astype(np.float64)
    return out.reshape(*b.shape[:-1], n)


def rnd(x, dtype):
    """x rounded to dtype, as float32 (float64 for float64)."""
    x = np.asarray(x)
    if dtype == "float64":
        return x.astype(np.float64)
    if dtype == "float32":
        return x.astype(np.float32)
    if dtype == "float16":
        return x.astype(np.float32).astype(np.float16).astype(np.float32)
    u = _bf16_bits(x.astype(np.float32)).astype(np.uint32) << 16
    return u.view(np.float32).reshape(x.shape)


def promote(a, b):
    """torch.promote_types for the four float dtypes."""
    if a == b:
        return a
    if {a, b} == {"float16", "bfloat16"}:
        return "float32"
    order = {"float16": 0, "bfloat16": 0, "float32": 1, "float64": 2}
    return a if order[a] > order[b] else b


def _np(dtype):
    return np.float64 if dtype == "float64" else np.float32


# ----------------------------------------------------------------------------------------
# bitpack.py


def pack_to_bytes(x, bits):
    """(..., N) non-negative ints -> (..., ceil(N*bits/8)) uint8, each element MSB first."""
    assert 1 <= bits <= 64
    x = np.asarray(x, dtype=np.int64)
    x = x & np.int64((1 << bits) - 1) if bits < 64 else x
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bitarr = ((x[..., None] >> shifts) & 1).astype(np.uint8)
    bitarr = bitarr.reshape(*x.shape[:-1], x.shape[-1] * bits)
    pad = (-bitarr.shape[-1]) % 8
    if pad:
        bitarr = np.concatenate(
            [bitarr, np.zeros((*bitarr.shape[:-1], pad), dtype=np.uint8)], axis=-1
        )
    return np.packbits(bitarr, axis=-1, bitorder="big")


def unpack_from_bytes(b, bits, n):
    assert 1 <= bits <= 63
    b = np.asarray(b, dtype=np.uint8)
    if n * bits > b.shape[-1] * 8:
        raise ValueError(
            f"original_num_elements {n} with elem_bits {bits} requires {n * bits} bits, "
            f"but only {b.shape[-1] * 8} available"
        )
    bitarr = np.unpackbits(b, axis=-1, bitorder="big")[..., : n * bits]
    bitarr = bitarr.reshape(*b.shape[:-1], n, bits).astype(np.int64)
    powers = np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return (bitarr * powers).sum(axis=-1)


# ----------------------------------------------------------------------------------------
# monotonic_logprobs.py


def _linspace01(t, dtype):
    # torch's CPU linspace: the first half from the start, the second half from the end
    if t == 1:
        return np.zeros(1, dtype=_np(dtype))
    w = _np(dtype)
    step = w(1.0) / w(t - 1)
    idx = np.arange(t)
    lo = w(0.0) + step * idx.astype(w)
    hi = w(1.0) - step * (t - 1 - idx).astype(w)
    return np.where(idx < t // 2, lo, hi).astype(w)


def _pow(pts, e, dtype):
    """torch.pow(tensor, int) on CPU: 0 -> ones, 1 -> copy, 2 -> x*x, 3 -> x*x*x (each
    product rounded to dtype, except float16, computed in float and rounded once, as
    measured on torch 2.x), otherwise std::pow (in float for the 16-bit types)."""
    if e == 0:
        return np.ones_like(pts)
    if e == 1:
        return pts.copy()
    if e == 2:
        return rnd(pts * pts, dtype)
    if e == 3:
        if dtype == "float16":
            return rnd(pts * pts * pts, dtype)
        return rnd(rnd(pts * pts, dtype) * pts, dtype)
    return rnd(pts ** pts.dtype.type(e), dtype)


def polynomial_terms(terms, t, dtype, normalize_t):
    """(t, len(terms)) design matrix, values rounded to dtype."""
    w = _np(dtype)
    if normalize_t:
        pts = rnd(_linspace01(t, dtype), dtype)
    else:
        pts = rnd(np.arange(t, dtype=w), dtype)
    cols = []
    with np.errstate(over="ignore", invalid="ignore"):
        for term in terms:
            if term == "sqrt":
                c = np.sqrt(pts)
            elif term == "exp":
                c = np.exp(pts)
            else:
                c = _pow(pts, term, dtype)
            cols.append(rnd(c.astype(w), dtype))
    return np.stack(cols, axis=-1).astype(w)


def _solve_least_squares(X, Y):
    """DistillKit's SVD pseudo-inverse (singular values <= 1e-5 dropped), in float64.
    X (t, m), Y (N, t) -> (N, m)."""
    U, S, Vh = np.linalg.svd(X.astype(np.float64), full_matrices=False)
    Spinv = np.zeros_like(S)
    Spinv[S > 1e-5] = 1.0 / S[S > 1e-5]
    return (Vh.T @ (Spinv[:, None] * (U.T @ Y.astype(np.float64).T))).T


def _weighted_sum(X, coeffs, dtype):
    """torch.sum(X.to(dtype) * coeffs.unsqueeze(-2), dim=-1) with coeffs (N, m) in dtype."""
    w = _np(dtype)
    prod = rnd(X[None, :, :].astype(w) * coeffs[:, None, :].astype(w), dtype)
    acc = prod.astype(np.float64 if dtype == "float64" else np.float32).sum(axis=-1)
    return rnd(acc, dtype)


def fit_polynomial(values, terms, dtype, normalize_t):
    """values (N, t) float32 -> coeffs (N, m) rounded to dtype, residual (N, t) float32."""
    n, t = values.shape
    work = values.dtype.type
    if t == 0:
        return np.zeros((n, len(terms)), dtype=_np(dtype)), values.copy()
    X = polynomial_terms(terms, t, "float64" if work == np.float64 else "float32", normalize_t)
    coeffs = _solve_least_squares(X, values).astype(work)
    coeffs_final = rnd(coeffs, dtype)
    approx = _weighted_sum(rnd(X, dtype), coeffs_final, dtype).astype(work)
    return coeffs_final, (values - approx).astype(work)


def _quantize_range(bits):
    if bits == 1:
        return 0.0, 1.0
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def _scale(values, bits, scale_dtype):
    max_abs = np.max(np.abs(values), axis=-1, keepdims=True)
    mqa = 1.0 if bits == 1 else float(2 ** (bits - 1))
    w = values.dtype.type
    scale = np.where(max_abs == 0, w(1.0), max_abs / w(mqa)).astype(w)
    return rnd(scale, scale_dtype).astype(w)


def quantize_naive(values, bits, scale_dtype):
    scale = _scale(values, bits, scale_dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.nan_to_num(values / scale, nan=0.0, posinf=np.inf, neginf=-np.inf)
    qmin, qmax = _quantize_range(bits)
    q = (np.clip(np.round(scaled), qmin, qmax) - qmin).astype(np.int64)
    return scale, q, np.zeros(values.shape[:-1], dtype=values.dtype)


def error_diffuse_and_quantize(values, bits, scale_dtype, error_buffer):
    scale = _scale(values, bits, scale_dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.nan_to_num(values / scale, nan=0.0, posinf=np.inf, neginf=-np.inf)
    if error_buffer is None:
        error_buffer = np.zeros(values.shape[:-1], dtype=values.dtype)
    qmin, qmax = _quantize_range(bits)
    q = np.zeros(values.shape, dtype=np.int64)
    for i in range(values.shape[-1]):
        current = (scaled[..., i] + error_buffer).astype(values.dtype)
        qi = np.clip(np.round(current), qmin, qmax)
        error_buffer = (current - qi).astype(values.dtype)
        q[..., i] = (qi - qmin).astype(np.int64)
    return scale, q, error_buffer


def error_diffuse_float(values, out_dtype):
    """values float64 -> out float32, carrying the rounding error along the last axis."""
    out = np.zeros(values.shape, dtype=out_dtype)
    err = np.zeros(values.shape[:-1], dtype=values.dtype)
    for i in range(values.shape[-1]):
        current = values[..., i] + err
        qv = current.astype(out_dtype)
        err = current - qv.astype(values.dtype)
        out[..., i] = qv
    return out


def compress_monotonic_logprobs(logprobs, cfg):
    """logprobs (N, k) float32, descending -> (N, logprob_bytes(cfg)) uint8."""
    logprobs = np.asarray(logprobs, dtype=np.float32)
    k, ek = cfg["k"], cfg["exact_k"]
    if logprobs.shape[-1] != k:
        raise ValueError(f"expected {k} log-probs per entry, got {logprobs.shape[-1]}")
    if cfg["delta_encoding"]:
        if cfg["error_diffusion"]:
            w = logprobs.astype(np.float64)
            deltas = np.concatenate([w[:, :1], w[:, 1:] - w[:, :-1]], axis=-1)
            logprobs = error_diffuse_float(deltas, np.float32)
        else:
            deltas = (logprobs[:, 1:] - logprobs[:, :-1]).astype(np.float32)
            logprobs = np.concatenate([logprobs[:, :1], deltas], axis=-1)
    chunks = []
    if ek > 0:
        chunks.append(encode(logprobs[:, :ek], cfg["exact_dtype"]))
    if cfg["polynomial_terms"]:
        coeffs, residual = fit_polynomial(
            logprobs[:, ek:k], cfg["polynomial_terms"], cfg["term_dtype"], cfg["normalize_t"]
        )
        chunks.append(encode(coeffs, cfg["term_dtype"]))
    else:
        residual = logprobs[:, ek:k]
    err = None
    cur = 0
    for b in cfg["residual_bins"]:
        values = residual[:, cur : cur + b["num_elements"]]
        if cfg["error_diffusion"]:
            scale, q, err = error_diffuse_and_quantize(
                values, b["element_bits"], b["scale_dtype"], err
            )
        else:
            scale, q, err = quantize_naive(values, b["element_bits"], b["scale_dtype"])
        chunks.append(encode(scale, b["scale_dtype"]))
        chunks.append(pack_to_bytes(q, b["element_bits"]))
        cur += b["num_elements"]
    if not chunks:
        return np.zeros((logprobs.shape[0], 0), dtype=np.uint8)
    return np.concatenate(chunks, axis=-1).astype(np.uint8)


def compress_from_sparse(ids, logprobs, cfg):
    """LogprobCompressor.compress_from_sparse: ids (N, k), logprobs (N, k) ->
    (compressed_logprobs (N, B) uint8, bytepacked_indices (N, I) uint8)."""
    logprobs = np.asarray(logprobs, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(-logprobs, axis=-1, kind="stable")
    values = np.take_along_axis(logprobs, order, axis=-1)
    sids = np.take_along_axis(ids, order, axis=-1)
    return (
        compress_monotonic_logprobs(values, cfg),
        pack_to_bytes(sids, vocab_index_bits(cfg["d"])),
    )


def decompress(compressed, ids_bytes, cfg, use_residual=True):
    """LogprobCompressor.decompress_to_sparse for the compressed form: bytes of one entry
    (B,) or of many (N, B) -> (ids int64, logprobs), logprobs as DistillKit returns them
    (float32 values, already rounded to exact_dtype where DistillKit's result has that dtype;
    float64 where DistillKit's result is float64)."""
    b = np.asarray(compressed, dtype=np.uint8)
    single = b.ndim == 1
    if single:
        b = b[None, :]
    k, ek = cfg["k"], cfg["exact_k"]
    out_dtype = cfg["exact_dtype"]
    n = b.shape[0]
    pos = 0

    def take(nbytes):
        nonlocal pos
        if pos + nbytes > b.shape[-1]:
            raise ValueError(f"compressed entry too short: {b.shape[-1]} bytes")
        part = b[:, pos : pos + nbytes]
        pos += nbytes
        return part

    if ek > 0:
        exact = decode(take(ek * WIDTH[out_dtype]), out_dtype, ek)
    else:
        exact = np.zeros((n, 0), dtype=_np(out_dtype))
    terms = cfg["polynomial_terms"]
    coeffs = None
    if terms:
        td = cfg["term_dtype"]
        coeffs = decode(take(len(terms) * WIDTH[td]), td, len(terms))
    residuals = []
    res_dtype = None
    for bn in cfg["residual_bins"]:
        sd = bn["scale_dtype"]
        scale = decode(take(WIDTH[sd]), sd, 1)
        bits, ne = bn["element_bits"], bn["num_elements"]
        q = unpack_from_bytes(take((bits * ne + 7) // 8), bits, ne)
        dt = promote("float32", sd)
        w = _np(dt)
        if bits == 1:
            r = (q.astype(np.float32) * np.float32(2.0) - np.float32(1.0)).astype(w)
            r = r * scale.astype(w)
        else:
            qmin, _ = _quantize_range(bits)
            r = (q + int(qmin)).astype(np.float32).astype(w) * scale.astype(w)
        residuals.append(rnd(r, dt))
        res_dtype = dt if res_dtype is None else promote(res_dtype, dt)
    approx_terms = k - ek
    if use_residual and residuals:
        w = _np(res_dtype)
        residual = np.concatenate([r.astype(w) for r in residuals], axis=-1)
        if residual.shape[-1] < approx_terms:
            residual = np.concatenate(
                [residual, np.zeros((n, approx_terms - residual.shape[-1]), dtype=w)], axis=-1
            )
    else:
        res_dtype = out_dtype
        residual = np.zeros((n, approx_terms), dtype=_np(out_dtype))
    residual_out = rnd(residual, out_dtype)  # residual.to(out_dtype)
    if coeffs is not None:
        td = cfg["term_dtype"]
        X = polynomial_terms(terms, approx_terms, td, cfg["normalize_t"])
        fit = _weighted_sum(X, coeffs, td)
        approx_dtype = promote(td, out_dtype)
        w = _np(approx_dtype)
        approx = rnd(fit.astype(w) + residual_out.astype(w), approx_dtype)
    else:
        approx_dtype = out_dtype
        approx = residual_out
    final_dtype = promote(out_dtype, approx_dtype)
    w = _np(final_dtype)
    logprobs = np.concatenate([exact.astype(w), approx.astype(w)], axis=-1)
    if cfg["delta_encoding"]:
        # torch.cumsum(x.float()) on CPU accumulates in double (acc_type), rounds each sum
        acc = np.cumsum(logprobs.astype(np.float32).astype(np.float64), axis=-1)
        logprobs = rnd(acc.astype(np.float32), out_dtype)
    ids = unpack_from_bytes(np.asarray(ids_bytes, dtype=np.uint8).reshape(n, -1),
                            vocab_index_bits(cfg["d"]), k)
    if single:
        return ids[0], logprobs[0]
    return ids, logprobs


# ----------------------------------------------------------------------------------------
# reading the taidcache cache


def read_cache(cache_dir):
    """-> list of (seq_id, tokens (n,) int64, ids (n, K) int64, logprobs (n, K) float32)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    mpath = os.path.join(cache_dir, "manifest.json")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {mpath}: {e}")
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not shards:
        raise InputError(f"{mpath} lists no shards")
    docs = []
    for shard in shards:
        path = os.path.join(cache_dir, shard["path"])
        table = pq.read_table(path)
        need = ("seq_id", "input_ids", "loss_mask", "topk_ids", "topk_logprobs")
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise InputError(
                f"{path}: no column {', '.join(missing)} (only --encoding plain caches are read)"
            )
        seq_ids = table.column("seq_id").to_numpy()
        inputs = table.column("input_ids").combine_chunks()
        masks = table.column("loss_mask").combine_chunks()
        tids = table.column("topk_ids").combine_chunks()
        tlps = table.column("topk_logprobs").combine_chunks()
        K = tids.type.value_type.list_size
        lens = pc.list_value_length(inputs).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.cumsum(lens)])
        tok_flat = inputs.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        mask_flat = masks.flatten().to_numpy(zero_copy_only=False).astype(bool)
        id_flat = tids.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        lp_flat = tlps.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if len(mask_flat) != starts[-1] or len(id_flat) != starts[-1] * K:
            raise InputError(f"{path}: list lengths of the columns disagree")
        id_flat = id_flat.reshape(-1, K)
        lp_flat = lp_flat.reshape(-1, K)
        for r in range(len(seq_ids)):
            a, e = starts[r], starts[r + 1]
            m = mask_flat[a:e]
            n = int(m.sum())
            if not m[:n].all():
                raise InputError(f"{path}: seq_id {seq_ids[r]}: loss_mask is not a prefix")
            docs.append((int(seq_ids[r]), tok_flat[a : a + n], id_flat[a : a + n],
                         lp_flat[a : a + n]))
    docs.sort(key=lambda d: d[0])
    return docs


# ----------------------------------------------------------------------------------------
# writing the capture


def out_yaml_path(out):
    return out[: -len(".parquet")] + ".yaml" if out.endswith(".parquet") else out + ".yaml"


def write_capture(args, cfg):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = read_cache(args.cache)
    K = docs[0][2].shape[1] if docs else 0
    k = cfg["k"]
    if docs and k > K:
        raise InputError(f"k = {k} but the cache holds only the top {K} per position")
    d = cfg["d"]
    bits = vocab_index_bits(d)
    skipped = [s for s, t, _, _ in docs if len(t) == 0]
    if skipped:
        print(f"warning: skipped {len(skipped)} rows with no loss_mask position", file=sys.stderr)
    docs = [doc for doc in docs if len(doc[1]) > 0]
    if not docs:
        raise InputError("the cache has no documents")
    if args.break_kind and args.break_kind != "missing-column":
        if len(docs) < 2:
            raise InputError(f"--break {args.break_kind} needs at least two documents")
    compressed = args.form == "compressed"

    rows = []  # dicts of python lists / arrays
    for seq_id, tokens, ids, lps in docs:
        n = len(tokens)
        m = n - 1 if args.layout == "vllm" else n
        ids_k = ids[:m, :k]
        lps_k = lps[:m, :k]
        maxid = int(ids_k.max()) if ids_k.size else -1
        if maxid >= d:
            raise InputError(f"seq_id {seq_id}: token id {maxid} >= --vocab {d}")
        rows.append({"tokens": tokens, "ids": ids_k, "lps": lps_k})

    def sorted_sparse(ids_k, lps_k):
        order = np.argsort(-lps_k, axis=-1, kind="stable")
        return (np.take_along_axis(ids_k, order, axis=-1),
                np.take_along_axis(lps_k, order, axis=-1))

    bk = args.break_kind
    cols = {"input_ids": [], "a": [], "b": []}  # a: logprob column, b: ids column
    n_entries = 0
    for ri, row in enumerate(rows):
        sids, svals = sorted_sparse(row["ids"], row["lps"])
        if ri == 1 and bk and bk != "missing-column" and len(sids) == 0:
            raise InputError(f"--break {bk}: row 1 has no entries")
        if ri == 1 and bk == "id-out-of-range":
            bad = d
            if d > (1 << bits) - 1:
                bad = (1 << bits) - 1
                print(f"warning: d = {d} is a power of two: {bits}-bit ids cannot be out of "
                      f"range; wrote {bad}", file=sys.stderr)
            sids = sids.copy()
            sids[0, 0] = bad
        if compressed:
            if len(sids):
                lp_bytes = compress_monotonic_logprobs(svals, cfg)
                id_bytes = pack_to_bytes(sids, bits)
            else:
                lp_bytes = np.zeros((0, logprob_bytes(cfg)), dtype=np.uint8)
                id_bytes = np.zeros((0, index_bytes(cfg)), dtype=np.uint8)
            a = [bytes(x) for x in lp_bytes]
            b = [bytes(x) for x in id_bytes]
        else:
            a = [x.astype(np.float32) for x in svals]
            b = [x.astype(np.int64) for x in sids]
        if ri == 1:
            if bk == "short-bytes":
                a[0] = a[0][:-1]
            elif bk == "short-ids":
                b[0] = b[0][:-1]
            elif bk == "entry-count":
                a = a[:-1]
            elif bk == "too-many-entries":
                a = a + [a[-1]]
                b = b + [b[-1]]
        n_entries += len(b)
        cols["input_ids"].append(row["tokens"].astype(np.uint64))
        cols["a"].append(a)
        cols["b"].append(b)

    if compressed:
        a_name, b_name = "compressed_logprobs", "bytepacked_indices"
        a_type, b_type = pa.list_(pa.list_(pa.uint8())), pa.list_(pa.list_(pa.uint8()))
        a_data = [[list(x) for x in r] for r in cols["a"]]
        b_data = [[list(x) for x in r] for r in cols["b"]]
    else:
        a_name, b_name = "top_values", "token_ids"
        a_type, b_type = pa.list_(pa.list_(pa.float32())), pa.list_(pa.list_(pa.int64()))
        a_data = [[x.tolist() for x in r] for r in cols["a"]]
        b_data = [[x.tolist() for x in r] for r in cols["b"]]
    fields = [pa.field("input_ids", pa.list_(pa.uint64()))]
    arrays = [pa.array([x.tolist() for x in cols["input_ids"]], type=pa.list_(pa.uint64()))]
    if compressed:
        order = [(a_name, a_type, a_data), (b_name, b_type, b_data)]
    else:
        order = [(b_name, b_type, b_data), (a_name, a_type, a_data)]
    for name, typ, data in order:
        if bk == "missing-column" and name == b_name:
            continue
        fields.append(pa.field(name, typ))
        arrays.append(pa.array(data, type=typ))
    if args.layout == "packed":
        fields.append(pa.field("attention_mask", pa.list_(pa.int64())))
        arrays.append(pa.array([[1] * len(t) for t in cols["input_ids"]],
                               type=pa.list_(pa.int64())))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(table, args.out, row_group_size=args.rows_per_group)
    with open(out_yaml_path(args.out), "w", encoding="utf-8") as f:
        f.write(config_yaml(cfg))
    if compressed:
        lb, ib = logprob_bytes(cfg), index_bytes(cfg)
    else:
        lb, ib = 4 * k, 8 * k
    print(f"rows={len(rows)} entries={n_entries} bytes_per_entry={float(lb + ib):.1f} "
          f"(logprob bytes {lb}, index bytes {ib})")


def decode_capture(path, cfg):
    """--decode: one JSON line per row of a capture, with the reference decoding."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = table.column_names
    for r, row in enumerate(table.to_pylist()):
        if "compressed_logprobs" in names and "bytepacked_indices" in names:
            a, b = row["compressed_logprobs"], row["bytepacked_indices"]
            if len(a) != len(b):
                raise InputError(
                    f"row {r}: {len(a)} compressed_logprobs, {len(b)} bytepacked_indices"
                )
            ids, lps = [], []
            for j, (ea, eb) in enumerate(zip(a, b)):
                try:
                    ei, ev = decompress(np.array(ea, np.uint8), np.array(eb, np.uint8), cfg)
                except ValueError as e:
                    raise InputError(f"row {r} entry {j}: {e}")
                ids.append(ei.tolist())
                lps.append(ev.astype(np.float64).tolist())
        elif "token_ids" in names and "top_values" in names:
            ids, lps = row["token_ids"], row["top_values"]
        else:
            raise InputError(f"{path}: neither compressed_logprobs + bytepacked_indices "
                             "nor token_ids + top_values")
        print(json.dumps({"row": r, "input_ids": row["input_ids"], "ids": ids, "logprobs": lps}))


# ----------------------------------------------------------------------------------------
# self-test


def _random_sparse(rng, n, k, vocab):
    """Top-k of LM-like distributions (Zipf-like logits, noise, a few boosted tokens) in
    float16 like a taidcache cache (so with ties), columns shuffled."""
    rank = np.arange(vocab)
    slope = rng.uniform(2.4, 6.0, (n, 1))
    logits = -slope * np.log1p(rank)[None, :] + rng.standard_normal((n, vocab)) * 0.3
    logits[:, :3] += rng.uniform(0, 6, (n, 1))
    m = logits.max(-1, keepdims=True)
    lp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    lp = lp.astype(np.float16).astype(np.float32)
    ids = np.argsort(-lp, axis=-1, kind="stable")[:, :k]
    vals = np.take_along_axis(lp, ids, axis=-1)
    perm = rng.permutation(k)  # compress_from_sparse must sort them back
    return ids[:, perm].astype(np.int64), vals[:, perm]


def _ideal(vals, cfg):
    """The float64 reconstruction a configuration without residual bins aims at: exact values
    rounded to exact_dtype, the rest the exact least-squares fit, then the delta cumsum."""
    k, ek = cfg["k"], cfg["exact_k"]
    x = vals.astype(np.float64)
    if cfg["delta_encoding"]:
        x = np.concatenate([x[:, :1], np.diff(x, axis=-1)], axis=-1)
    out = x.copy()
    out[:, :ek] = rnd(x[:, :ek], cfg["exact_dtype"])
    if k > ek:
        X = polynomial_terms(cfg["polynomial_terms"], k - ek, "float64", cfg["normalize_t"])
        out[:, ek:] = _solve_least_squares(X, x[:, ek:]) @ X.T
    return np.cumsum(out, axis=-1) if cfg["delta_encoding"] else out


def self_test():
    rng = np.random.default_rng(1234)
    vocab = 3000
    cases = [
        # (name, config, tolerance on |decoded - input|, tolerance on |decoded - ideal|)
        ("budget", dict(PRESETS["budget"], d=vocab), 6.0, 1e-3),
        ("recommended", dict(PRESETS["recommended"], d=vocab), 1.5, 1e-3),
        ("readme", dict(PRESETS["readme"], d=vocab), 1.5, 1e-3),
        ("exact-f32", {"d": 1 << 12, "k": 64, "exact_k": 64, "exact_dtype": "float32",
                       "residual_bins": [], "delta_encoding": False}, 0.0, 0.0),
        ("exact-f64-delta", {"d": 151936, "k": 20, "exact_k": 20, "exact_dtype": "float64",
                             "residual_bins": [], "delta_encoding": True}, 1e-5, 1e-5),
        ("exact-f16", {"d": 50257, "k": 32, "exact_k": 32, "exact_dtype": "float16",
                       "residual_bins": [], "delta_encoding": False}, 0.0, 0.0),
        ("bins-8bit", {"d": 128256, "k": 64, "exact_k": 8, "exact_dtype": "bfloat16",
                       "polynomial_terms": [0, 1, 2, "sqrt"], "term_dtype": "float32",
                       "residual_bins": [{"scale_dtype": "float16", "element_bits": 8,
                                          "num_elements": 40},
                                         {"scale_dtype": "bfloat16", "element_bits": 3,
                                          "num_elements": 16}],
                       "delta_encoding": False}, 0.3, None),
        ("bins-only-delta-ed", {"d": 1000, "k": 40, "exact_k": 4, "exact_dtype": "float16",
                                "residual_bins": [{"scale_dtype": "float32",
                                                   "element_bits": 12, "num_elements": 36}],
                                "delta_encoding": True, "error_diffusion": True}, 0.05, None),
        ("bf16-terms-normt", {"d": 32000, "k": 50, "exact_k": 2, "exact_dtype": "bfloat16",
                              "polynomial_terms": [0, 1, 2, 3, "sqrt", "exp"],
                              "term_dtype": "bfloat16", "normalize_t": True,
                              "residual_bins": [{"scale_dtype": "float64", "element_bits": 1,
                                                 "num_elements": 7}],
                              "delta_encoding": False}, 40.0, None),
    ]
    ok = True
    for name, raw, tol, tol_ideal in cases:
        cfg = normalize_config(raw)
        k = cfg["k"]
        sub = min(vocab, cfg["d"])
        ids, vals = _random_sparse(rng, 200, k, sub)
        ids = ids * (cfg["d"] // sub)  # spread over the whole vocabulary
        ids[0, 0] = cfg["d"] - 1
        lp_bytes, id_bytes = compress_from_sparse(ids, vals, cfg)
        assert lp_bytes.shape == (200, logprob_bytes(cfg)), (lp_bytes.shape, logprob_bytes(cfg))
        assert id_bytes.shape == (200, index_bytes(cfg))
        dids, dvals = decompress(lp_bytes, id_bytes, cfg)
        order = np.argsort(-vals, axis=-1, kind="stable")
        want_ids = np.take_along_axis(ids, order, -1)
        want_vals = np.take_along_axis(vals, order, -1)
        same_ids = bool((dids == want_ids).all())
        err = float(np.max(np.abs(dvals.astype(np.float64) - want_vals)))
        passed = same_ids and np.isfinite(err) and err <= tol
        line = (f"{name:20s} bytes/entry {lp_bytes.shape[1]:4d}+{id_bytes.shape[1]:3d}  "
                f"ids identical: {same_ids}  max |decoded - input| {err:.3e} (<= {tol:g})")
        if tol_ideal is not None:
            ierr = float(np.max(np.abs(dvals.astype(np.float64) - _ideal(want_vals, cfg))))
            passed = passed and ierr <= tol_ideal
            line += f"  max |decoded - float64 fit| {ierr:.3e} (<= {tol_ideal:g})"
        one = decompress(lp_bytes[3], id_bytes[3], cfg)
        passed = passed and bool((one[0] == dids[3]).all() and (one[1] == dvals[3]).all())
        ok &= passed
        print(f"{line}  {'ok' if passed else 'FAIL'}")
    # bit packing against a hand-computed example (tests/test_bitpack.py): 5, 3 at 3 bits
    packed = pack_to_bytes(np.array([5, 3]), 3)
    ok &= packed.tolist() == [0b10101100]
    for bits in (1, 5, 9, 17, 31):
        x = rng.integers(0, 1 << bits, size=(4, 101))
        ok &= bool((unpack_from_bytes(pack_to_bytes(x, bits), bits, 101) == x).all())
    # bfloat16 rounding: ties to even, NaN kept
    t = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -0.0, np.inf, np.nan], dtype=np.float32)
    r = rnd(t, "bfloat16")
    ok &= r[0] == 1.0 and r[1] == 1.0 + 2 ** -6 and np.isinf(r[3]) and np.isnan(r[4])
    try:
        import yaml  # optional: only checks config_yaml when PyYAML is there
    except ImportError:
        yaml = None
    if yaml is not None:
        for _, raw, _, _ in cases:
            cfg = normalize_config(raw)
            ok &= config_yaml(cfg) == yaml.safe_dump(cfg)
    print("self-test", "passed" if ok else "FAILED")
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache")
    p.add_argument("--out")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="the compression block as JSON (DistillKit's keys)")
    g.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--vocab", type=int, help="d, the vocabulary size")
    p.add_argument("--k", type=int, help="overrides the block's k")
    p.add_argument("--form", choices=("compressed", "topvalues"), default="compressed")
    p.add_argument("--layout", choices=("vllm", "packed"), default="vllm")
    p.add_argument("--rows-per-group", type=int, default=4)
    p.add_argument("--break", dest="break_kind", choices=BREAKS)
    p.add_argument("--self-test", action="store_true")
    p.add_argument("--decode", metavar="CAPTURE",
                   help="print the reference decoding of a capture (JSON lines) and exit")
    args = p.parse_args(argv)
    if args.self_test:
        return self_test()
    try:
        if not args.decode and (not args.cache or not args.out):
            raise InputError("--cache and --out are required")
        if args.preset:
            raw = dict(PRESETS[args.preset])
        elif args.config:
            try:
                raw = json.loads(args.config)
            except ValueError as e:
                raise InputError(f"--config is not valid JSON: {e}")
            if not isinstance(raw, dict):
                raise InputError("--config must be a JSON object")
        else:
            raise InputError("one of --preset and --config is required")
        if args.vocab is not None:
            if "d" in raw and raw["d"] != args.vocab:
                raise InputError(f"--vocab {args.vocab} disagrees with the config's d {raw['d']}")
            raw["d"] = args.vocab
        elif "d" not in raw:
            raise InputError("--vocab is required (or d in --config)")
        if args.k is not None:
            raw["k"] = args.k
        if args.rows_per_group < 1:
            raise InputError("--rows-per-group must be >= 1")
        cfg = normalize_config(raw)
        if args.decode:
            decode_capture(args.decode, cfg)
        else:
            write_capture(args, cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
