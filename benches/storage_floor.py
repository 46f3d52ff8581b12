"""How small the synthetic source of benches/storage.rs can get: an information floor.

Reads the steps (format v2) shard that `cargo bench --bench storage` leaves in
target/bench-data/storage/synthetic-steps.parquet and compares, column by column, the bytes
per token the shard spends with the ideal code length of the same values under a static model:

- topk_ids and input_ids: -log2 P(id) under the generator's own id law (testing.rs,
  `SyntheticTeacher`: id = floor(exp(U * ln(V + 1))) - 1, so P(id) = ln((id + 2) / (id + 1)) /
  ln(V + 1)). No coder that treats ids one at a time can beat this on average.
- topk_logprob_steps: the empirical entropy of the u8 steps at each rank (a separate static
  model per rank, which zstd's single byte-wise Huffman table cannot use).
- tail_logmass and the rest: counted as stored.

Writes target/bench-results/storage_floor.json for `make bench` and prints the table.

    python3 benches/storage_floor.py
"""
import json
import os
import pathlib

import numpy as np
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SHARD = TARGET / "bench-data" / "storage" / "synthetic-steps.parquet"
VOCAB = 151_936


def ideal_id_bits(ids):
    ids = ids.astype(np.float64)
    p = np.log((ids + 2) / (ids + 1)) / np.log(VOCAB + 1)
    return -np.log2(p)


def entropy_bits(x):
    _, counts = np.unique(x, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def main():
    if not SHARD.exists():
        raise SystemExit(f"{SHARD}: missing; run `cargo bench --bench storage` first")
    f = pq.ParquetFile(SHARD)
    k = int(f.metadata.metadata[b"taidcache.top_k"])
    table = f.read()
    positions = sum(len(r) for r in table.column("input_ids").to_pylist())

    stored = {}
    for g in range(f.metadata.num_row_groups):
        rg = f.metadata.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            name = col.path_in_schema.split(".")[0]
            stored[name] = stored.get(name, 0) + col.total_compressed_size
    stored = {n: b / positions for n, b in stored.items()}
    footer = (f.metadata.serialized_size + 8) / positions

    def leaves(name, width):
        chunked = table.column(name).combine_chunks()
        values = chunked.flatten()
        while hasattr(values, "flatten"):
            values = values.flatten()
        return np.asarray(values).reshape(-1, width)

    ids = leaves("topk_ids", k)
    steps = leaves("topk_logprob_steps", k)
    inputs = leaves("input_ids", 1)
    floor = {
        "topk_ids": ideal_id_bits(ids).sum() / 8 / positions,
        "topk_logprob_steps": sum(entropy_bits(steps[:, j]) for j in range(k)) / 8,
        "input_ids": ideal_id_bits(inputs).sum() / 8 / positions,
    }
    rows = []
    total_stored = total_floor = 0.0
    for name in ["topk_ids", "topk_logprob_steps", "tail_logmass", "input_ids", "seq_id", "loss_mask"]:
        s = stored.get(name, 0.0)
        fl = floor.get(name, s)
        rows.append((name, s, fl))
        total_stored += s
        total_floor += fl
    rows.append(("footer", footer, footer))
    total_stored += footer
    total_floor += footer
    print(f"{SHARD.name}: {positions} positions, k = {k}; bytes/token")
    print(f"  {'column':22} {'stored':>8} {'floor':>8}")
    for name, s, fl in rows:
        print(f"  {name:22} {s:8.2f} {fl:8.2f}")
    print(f"  {'total':22} {total_stored:8.2f} {total_floor:8.2f}")
    out = TARGET / "bench-results"
    out.mkdir(parents=True, exist_ok=True)
    results = [
        {"name": "storage.synthetic.floor.bytes_per_token", "value": total_floor, "unit": "B/token"},
        {"name": "storage.synthetic.floor.topk_ids", "value": floor["topk_ids"], "unit": "B/token"},
        {"name": "storage.synthetic.steps.topk_ids", "value": stored["topk_ids"], "unit": "B/token"},
    ]
    (out / "storage_floor.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
