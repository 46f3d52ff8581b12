#!/usr/bin/env python3
"""pyarrow peer of `loader/read_row_group_into`: decode cache shards into numpy arrays, one thread.

Usage: loader_pyarrow.py [DIR] [--repeats N] [--out JSON]

Every *.parquet under DIR (default target/bench-data/loader, written by
`cargo bench --bench loader`) is read with pyarrow.parquet.read_table(use_threads=False) and its
top-k columns are flattened into numpy arrays [positions, k] (ids uint32, log-probs float16) and
[positions] (tail float32), zero-copy where Arrow allows. Throughput is in tokens (positions).
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")


def values(column):
    """The innermost values of a list<...> column as one numpy array."""
    arr = column.combine_chunks()
    while not pa.types.is_primitive(arr.type):
        arr = arr.flatten()
    return np.asarray(arr)


def read_shard(path):
    t = pq.read_table(path, use_threads=False)
    tail = values(t.column("tail_logmass"))
    n = tail.shape[0]
    ids = values(t.column("topk_ids")).reshape(n, -1)
    logprobs = values(t.column("topk_logprobs")).reshape(n, -1)
    return ids, logprobs, tail


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", type=Path, default=TARGET / "bench-data/loader")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=TARGET / "bench-results/peer_loader_pyarrow.json")
    args = ap.parse_args()
    paths = sorted(args.dir.rglob("*.parquet"))
    if not paths:
        raise SystemExit(f"no *.parquet under {args.dir} (run `cargo bench --bench loader` first)")
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)

    # Warm-up (page cache, allocator) and a shape check.
    tokens = 0
    for p in paths:
        ids, logprobs, tail = read_shard(p)
        assert ids.dtype == np.uint32 and logprobs.dtype == np.float16 and tail.dtype == np.float32
        assert ids.shape == logprobs.shape and ids.shape[0] == tail.shape[0]
        tokens += tail.shape[0]
    k = ids.shape[1]

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for p in paths:
            read_shard(p)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)

    results = [{"name": "peer.pyarrow_read.tokens_per_s", "value": tokens / sec, "unit": "tokens/s"}]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"pyarrow {pa.__version__}, 1 thread, {len(paths)} shards, {tokens} tokens, k = {k}, median of {args.repeats}")
    print(f"  read_table + numpy: {sec * 1e3:8.1f} ms  {tokens / sec / 1e6:8.2f} M tokens/s")
    print(f"  -> {args.out}")


if __name__ == "__main__":
    main()
