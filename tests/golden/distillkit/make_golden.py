#!/usr/bin/env python3
"""Regenerate the DistillKit import fixtures under tests/golden/distillkit/.

Usage (from the repository root):

    python3 -m pip install torch pydantic pyyaml pyarrow numpy
    python3 tests/golden/distillkit/make_golden.py

Every compressed byte, every decoded value and the packing layout come from DistillKit's
own code (arcee-ai/DistillKit, vendored unmodified under tests/python/distillkit/, see the
README there for the commit).  This script only makes up a synthetic teacher and writes files.

Synthetic teacher: vocabulary d = 1000 (not a power of two: ids pack at ceil(log2 1000) = 10
bits).  Six documents ("rows") of random input ids in [0, 1000).  A document of n tokens gets
n - 1 next-token distributions, like vLLM's prompt_logprobs (none for the first token; entry j
predicts token j + 1 from tokens[..=j]).  Each distribution is a float64 log-softmax over a
Zipf-like logit vector: logits[perm[r]] = -1.1 * log(r + 1) + 0.5 * N(0, 1) for a random
permutation perm, so the mass outside the top 50 is substantial (printed; checked to be in
[0.05, 0.4]).  Top-k = the k largest, sorted descending: ids int64, values float32 (as
sample_logits_vllm.process_prompt_logprobs hands them to the compressor).

Per config NAME (budget, recommended, readme, bins, bf16terms):

  NAME.yaml             the compression config exactly as sample_logits_vllm.py writes
                        compression_config.yaml: yaml.safe_dump(cfg.model_dump(mode="json"))
  NAME.parquet          DistillKit's capture schema (sample_common.compressed_logit_schema):
                        input_ids list<uint64> (n), compressed_logprobs list<list<uint8>>
                        (n - 1 entries), bytepacked_indices list<list<uint8>> (n - 1 entries),
                        one row per document, from LogprobCompressor.compress_from_sparse(
                        ids.unsqueeze(0), values.unsqueeze(0)) as sample_logits_vllm.py calls it
  NAME.expected.parquet one row per document:
                        ids           list<uint32>   decompress_to_sparse ids, entry-major
                        logprobs      list<float32>  decompress_to_sparse log-probs, same order,
                                                     converted to float32 (exact: see dtypes)
                        true_logprobs list<float64>  exact top-k before compression
                        true_tail     list<float64>  per entry, log of the exact mass outside
                                                     the top-k (float64 logsumexp of the rest)

DistillKit's decompress_to_sparse is called as the trainer calls it (signals.py): a row dict
whose compressed_logprobs / bytepacked_indices are torch uint8 tensors [entries, bytes], read
back from NAME.parquet.  Decoded dtypes (torch 2.15 CPU, printed on every run):
    budget      torch.float32   (exact part bfloat16, fit float32: torch.cat promotes)
    recommended torch.float32   (same)
    readme      torch.float32
    bins        torch.float16   (delta decoding ends with .to(exact_dtype) = float16)
    bf16terms   torch.float32

recommended-packed: the `recommended` rows after DistillKit's pre-packing
(pack_logits.iterative_packing's first step and one pack_pass):
  1. _truncate_row cuts input_ids to the number of entries (len(bytepacked_indices) = n - 1):
     the last token, which has no logits in a vLLM capture, is dropped.  (datasets.map keeps
     the other columns, so the row is {**row, **_truncate_row(row)}.)
  2. pack_pass(batch of all 6 rows, max_len=48): rows with >= 48 entries are cut to 48 and
     emitted alone; the rest are sorted by length and packed greedily (longest first, then
     the shortest ones) into rows of exactly 48 entries; the last document of a packed row is
     cut to the space left (its remaining entries are dropped); attention_mask numbers the
     documents inside a packed row 1, 2, 3, ...; documents of a final, unfilled group are
     emitted one per row with attention_mask all 1.
  Columns: input_ids list<uint64>, compressed_logprobs, bytepacked_indices, attention_mask
  list<int64>; recommended-packed.expected.parquet has the same four expected columns per
  packed row (entries = len(input_ids)).

topvalues: the uncompressed layout (top_values / token_ids, k = 20, same documents):
  input_ids list<uint64>, token_ids list<list<int64>>, top_values list<list<float32>>;
  decompress_to_sparse returns (token_ids, top_values) unchanged; topvalues.expected.parquet as
  above.

Capture files use pyarrow's default writer settings (snappy), like DistillKit's
StreamingParquetWriter.  Expected files use zstd, DELTA_BINARY_PACKED ids and BYTE_STREAM_SPLIT
floats to keep the fixtures small.  Deterministic: fixed seeds, single-threaded torch on CPU.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from distillkit.compression.compressor import LogprobCompressor  # noqa: E402
from distillkit.compression.config import DistributionQuantizationConfig  # noqa: E402
from distillkit.pack_logits import _truncate_row, pack_pass  # noqa: E402

SEED = 20260314
VOCAB = 1000
# Document lengths (tokens).  Short on purpose: all fixtures together stay < 400 KB (the
# float64 true_logprobs dominate).  49 entries in all, so pack_pass at max_len=48 yields one
# full row holding all six documents, the last one cut from 8 to 7 entries.
DOC_LENGTHS = [9, 10, 9, 9, 9, 9]
PACK_MAX_LEN = 48
TOPVALUES_K = 20

CONFIGS = {
    "budget": {
        "d": VOCAB, "k": 50, "exact_k": 1, "exact_dtype": "bfloat16",
        "polynomial_terms": [0, 1, "sqrt"], "term_dtype": "float32",
        "residual_bins": [], "delta_encoding": False, "error_diffusion": False,
    },
    "recommended": {
        "d": VOCAB, "k": 128, "exact_k": 16, "exact_dtype": "bfloat16",
        "polynomial_terms": [0, 1, 2, 3, 4, "sqrt"], "term_dtype": "float32",
        "residual_bins": [], "delta_encoding": False, "error_diffusion": False,
    },
    "readme": {
        "d": VOCAB, "k": 128, "exact_k": 32, "exact_dtype": "float32",
        "polynomial_terms": [0, 1, 2], "term_dtype": "float32",
        "residual_bins": [], "delta_encoding": True, "error_diffusion": False,
    },
    "bins": {
        "d": VOCAB, "k": 64, "exact_k": 8, "exact_dtype": "float16",
        "polynomial_terms": [0, 1, 2], "term_dtype": "float32",
        "residual_bins": [
            {"scale_dtype": "float16", "element_bits": 4, "num_elements": 32},
            {"scale_dtype": "float32", "element_bits": 1, "num_elements": 8},
            {"scale_dtype": "bfloat16", "element_bits": 3, "num_elements": 10},
        ],
        "delta_encoding": True, "error_diffusion": True, "normalize_t": True,
    },
    "bf16terms": {
        "d": VOCAB, "k": 32, "exact_k": 4, "exact_dtype": "float32",
        "polynomial_terms": [0, 1, 2, "sqrt"], "term_dtype": "bfloat16",
        "residual_bins": [], "delta_encoding": False, "error_diffusion": False,
        "normalize_t": False,
    },
}

# DistillKit's sample_common.compressed_logit_schema(), copied (that module needs `datasets`).
CAPTURE_SCHEMA = pa.schema([
    pa.field("input_ids", pa.list_(pa.uint64())),
    pa.field("compressed_logprobs", pa.list_(pa.list_(pa.uint8()))),
    pa.field("bytepacked_indices", pa.list_(pa.list_(pa.uint8()))),
])
PACKED_SCHEMA = pa.schema(list(CAPTURE_SCHEMA) + [pa.field("attention_mask", pa.list_(pa.int64()))])
TOPVALUES_SCHEMA = pa.schema([
    pa.field("input_ids", pa.list_(pa.uint64())),
    pa.field("token_ids", pa.list_(pa.list_(pa.int64()))),
    pa.field("top_values", pa.list_(pa.list_(pa.float32()))),
])
EXPECTED_SCHEMA = pa.schema([
    pa.field("ids", pa.list_(pa.uint32())),
    pa.field("logprobs", pa.list_(pa.float32())),
    pa.field("true_logprobs", pa.list_(pa.float64())),
    pa.field("true_tail", pa.list_(pa.float64())),
])


def out(name):
    return os.path.join(HERE, name)


def write_capture(name, table):
    pq.write_table(table, out(name))  # pyarrow defaults, as DistillKit's writer


def write_expected(name, rows):
    table = pa.Table.from_pylist(rows, schema=EXPECTED_SCHEMA)
    # (parquet column paths of list elements are "NAME.list.element")
    pq.write_table(
        table, out(name), compression="zstd", compression_level=19, use_dictionary=False,
        column_encoding={
            "ids.list.element": "DELTA_BINARY_PACKED",
            "logprobs.list.element": "BYTE_STREAM_SPLIT",
            "true_logprobs.list.element": "BYTE_STREAM_SPLIT",
            "true_tail.list.element": "BYTE_STREAM_SPLIT",
        },
    )


def make_teacher():
    """Documents and their exact float64 next-token log-distributions."""
    rng = np.random.default_rng(SEED)
    docs = []
    for n in DOC_LENGTHS:
        input_ids = rng.integers(0, VOCAB, size=n).tolist()
        lps = np.empty((n - 1, VOCAB), dtype=np.float64)
        for j in range(n - 1):
            perm = rng.permutation(VOCAB)
            logits = np.empty(VOCAB, dtype=np.float64)
            logits[perm] = -1.1 * np.log(np.arange(1, VOCAB + 1)) + 0.5 * rng.standard_normal(VOCAB)
            m = logits.max()
            lps[j] = logits - (m + np.log(np.exp(logits - m).sum()))
        docs.append({"input_ids": input_ids, "logprobs": lps})
    return docs


def logsumexp(x):
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


def top_k(lps, k):
    """(ids int64 [E, k], values float32 [E, k], true float64 [E, k], tail float64 [E])."""
    order = np.argsort(-lps, axis=-1, kind="stable")
    ids = order[:, :k].astype(np.int64)
    true = np.take_along_axis(lps, ids, axis=-1)
    tail = np.array([logsumexp(np.delete(lps[e], ids[e])) for e in range(lps.shape[0])])
    vals = true.astype(np.float32)
    # strictly decreasing in float32 too, so DistillKit's sort keeps the order
    assert (np.diff(vals, axis=-1) < 0).all()
    return ids, vals, true, tail


def decode_rows(comp, capture_table):
    """decompress_to_sparse on each row read back from the capture file, as the trainer does."""
    decoded = []
    dtypes = set()
    for row in capture_table.to_pylist():
        cl = torch.tensor(row["compressed_logprobs"], dtype=torch.uint8)
        bi = torch.tensor(row["bytepacked_indices"], dtype=torch.uint8)
        with torch.no_grad():
            ids, lps = comp.decompress_to_sparse({"compressed_logprobs": cl, "bytepacked_indices": bi})
            # the trainer's batches carry a leading batch dimension: same values
            ids_b, lps_b = comp.decompress_to_sparse(
                {"compressed_logprobs": cl.unsqueeze(0), "bytepacked_indices": bi.unsqueeze(0)})
        assert torch.equal(ids_b[0], ids) and torch.equal(lps_b[0].view(torch.uint8), lps.view(torch.uint8))
        dtypes.add(lps.dtype)
        decoded.append((ids, lps))
    assert len(dtypes) == 1, dtypes
    return decoded, dtypes.pop()


def expected_row(ids, lps, true, tail):
    f = lps.to(torch.float32)
    # the conversion to float32 is exact (float16 / bfloat16 / float32 -> float32)
    assert torch.equal(f.to(lps.dtype).view(torch.uint8), lps.view(torch.uint8))
    return {
        "ids": ids.reshape(-1).to(torch.int64).numpy().astype(np.uint32),
        "logprobs": f.reshape(-1).numpy(),
        "true_logprobs": np.asarray(true, dtype=np.float64).reshape(-1),
        "true_tail": np.asarray(tail, dtype=np.float64).reshape(-1),
    }


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    docs = make_teacher()
    all_lps = np.concatenate([d["logprobs"] for d in docs])
    tail50 = np.exp([logsumexp(np.sort(r)[:-50]) for r in all_lps])
    print(f"{len(docs)} documents, lengths {DOC_LENGTHS}, {all_lps.shape[0]} entries; "
          f"mean mass outside top-50: {tail50.mean():.4f} (min {tail50.min():.4f}, max {tail50.max():.4f})")
    assert 0.05 <= tail50.mean() <= 0.4

    recommended_capture = None
    for name, block in CONFIGS.items():
        cfg = DistributionQuantizationConfig.model_validate(block)
        with open(out(f"{name}.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(cfg.model_dump(mode="json"), f)
        comp = LogprobCompressor(config=cfg)
        cols = {"input_ids": [], "compressed_logprobs": [], "bytepacked_indices": []}
        truth = []
        for d in docs:
            ids, vals, true, tail = top_k(d["logprobs"], cfg.k)
            row_out = comp.compress_from_sparse(torch.from_numpy(ids).unsqueeze(0),
                                                torch.from_numpy(vals).unsqueeze(0))
            cols["input_ids"].append(d["input_ids"])
            cols["compressed_logprobs"].append(row_out["compressed_logprobs"].cpu().squeeze(0).tolist())
            cols["bytepacked_indices"].append(row_out["bytepacked_indices"].cpu().squeeze(0).tolist())
            truth.append((ids, true, tail))
        table = pa.Table.from_pydict(cols, schema=CAPTURE_SCHEMA)
        write_capture(f"{name}.parquet", table)
        decoded, dtype = decode_rows(comp, pq.read_table(out(f"{name}.parquet")))
        rows = []
        maxerr = 0.0
        for (ids, lps), (tids, true, tail) in zip(decoded, truth):
            assert np.array_equal(ids.numpy(), tids)
            maxerr = max(maxerr, float(np.abs(lps.double().numpy() - true).max()))
            rows.append(expected_row(ids, lps, true, tail))
        write_expected(f"{name}.expected.parquet", rows)
        nbytes = len(cols["compressed_logprobs"][0][0]) + len(cols["bytepacked_indices"][0][0])
        print(f"{name:12s} k={cfg.k:3d} bytes/entry={nbytes:3d} (total_bits/8={cfg.total_bits() / 8:g}) "
              f"decoded dtype={dtype} max|decoded-true|={maxerr:.4f}")
        if name == "recommended":
            recommended_capture = (cfg, comp, cols, truth)

    # ---- pre-packed variant (DistillKit pack_logits: _truncate_row, then pack_pass) ----
    cfg, comp, cols, truth = recommended_capture
    rows = []
    for i in range(len(docs)):
        row = {key: cols[key][i] for key in cols}
        row["_src"] = [i * 1000 + e for e in range(len(row["bytepacked_indices"]))]  # bookkeeping only
        row = {**row, **_truncate_row(row)}  # datasets.map keeps the other columns
        rows.append(row)
    batch = {key: [r[key] for r in rows] for key in rows[0]}
    packed = pack_pass(batch, max_len=PACK_MAX_LEN)
    # the bookkeeping column does not change what pack_pass does with the real ones
    packed_plain = pack_pass({k: v for k, v in batch.items() if k != "_src"}, max_len=PACK_MAX_LEN)
    assert packed_plain == {k: v for k, v in packed.items() if k != "_src"}
    for i in range(len(packed["input_ids"])):
        n = len(packed["input_ids"][i])
        assert all(len(packed[k][i]) == n for k in packed)
    table = pa.Table.from_pydict({k: packed[k] for k in PACKED_SCHEMA.names}, schema=PACKED_SCHEMA)
    write_capture("recommended-packed.parquet", table)
    decoded, dtype = decode_rows(comp, pq.read_table(out("recommended-packed.parquet")))
    exp_rows = []
    for (ids, lps), src in zip(decoded, packed["_src"]):
        t_ids = np.stack([truth[s // 1000][0][s % 1000] for s in src])
        assert np.array_equal(ids.numpy(), t_ids)
        true = np.stack([truth[s // 1000][1][s % 1000] for s in src])
        tail = np.array([truth[s // 1000][2][s % 1000] for s in src])
        exp_rows.append(expected_row(ids, lps, true, tail))
    write_expected("recommended-packed.expected.parquet", exp_rows)
    print(f"recommended-packed: {len(packed['input_ids'])} rows, lengths "
          f"{[len(x) for x in packed['input_ids']]}, attention_mask documents "
          f"{[sorted(set(m)) for m in packed['attention_mask']]}, "
          f"sources {[sorted({s // 1000 for s in src}) for src in packed['_src']]}")

    # ---- uncompressed top_values / token_ids variant ----
    cfg = DistributionQuantizationConfig.model_validate(
        {"d": VOCAB, "k": TOPVALUES_K, "exact_k": TOPVALUES_K, "exact_dtype": "float32", "residual_bins": []})
    comp = LogprobCompressor(config=cfg)
    cols = {"input_ids": [], "token_ids": [], "top_values": []}
    exp_rows = []
    for d in docs:
        ids, vals, true, tail = top_k(d["logprobs"], TOPVALUES_K)
        cols["input_ids"].append(d["input_ids"])
        cols["token_ids"].append(ids.tolist())
        cols["top_values"].append(vals.tolist())
    write_capture("topvalues.parquet", pa.Table.from_pydict(cols, schema=TOPVALUES_SCHEMA))
    for i, row in enumerate(pq.read_table(out("topvalues.parquet")).to_pylist()):
        r_ids, r_lps = comp.decompress_to_sparse({
            "token_ids": torch.tensor(row["token_ids"], dtype=torch.int64),
            "top_values": torch.tensor(row["top_values"], dtype=torch.float32),
        })
        _, _, true, tail = top_k(docs[i]["logprobs"], TOPVALUES_K)
        exp_rows.append(expected_row(r_ids, r_lps, true, tail))
    write_expected("topvalues.expected.parquet", exp_rows)

    total = sum(os.path.getsize(out(f)) for f in os.listdir(HERE) if os.path.isfile(out(f)))
    print(f"total size of {HERE}: {total} bytes")


if __name__ == "__main__":
    main()
