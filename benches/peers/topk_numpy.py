#!/usr/bin/env python3
"""numpy peer of `topk/select`: top-50 ids, log-probs and tail log-mass per row, one thread.

Usage: topk_numpy.py [LOGITS.f32] [--repeats N] [--out JSON]

LOGITS.f32 is raw little-endian f32 of shape [rows, 151936] (default
target/bench-data/topk/logits_151936.f32, written by `cargo bench --bench topk`).
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

VOCAB = 151_936
K = 50
ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")


def topk_row(x, buf):
    """(ids descending, log-probs, tail log-mass) of one row; `buf` is scratch of x's shape."""
    part = np.argpartition(x, x.size - K)[x.size - K:]
    ids = part[np.argsort(-x[part], kind="stable")]
    top = x[ids]
    m = top[0]  # the row's max
    np.subtract(x, m, out=buf)
    np.exp(buf, out=buf)
    top_sum = float(buf[ids].sum(dtype=np.float64))
    buf[ids] = 0.0  # the tail is summed over the tail itself, never 1 - sum(top)
    tail = float(buf.sum(dtype=np.float64))
    log_z = m + np.log(top_sum + tail)
    return ids, top - log_z, m + np.log(tail) - log_z


def select_only(x, _buf):
    return np.argpartition(x, x.size - K)[x.size - K:]


def check(x):
    """Row 0 against a full sort and a float64 log-softmax."""
    ids, lp, tail = topk_row(x, np.empty_like(x))
    x64 = x.astype(np.float64)
    lse = np.logaddexp.reduce(x64)
    order = np.argsort(-x64, kind="stable")
    assert np.array_equal(np.sort(ids), np.sort(order[:K])), "top-k ids differ from a full sort"
    assert np.allclose(lp, x64[ids] - lse, atol=1e-5), "log-probs differ"
    ref_tail = np.logaddexp.reduce(x64[order[K:]] - lse)
    assert abs(tail - ref_tail) < 1e-4, f"tail {tail} vs {ref_tail}"


def median_seconds(fn, logits, repeats):
    buf = np.empty(logits.shape[1], dtype=np.float32)
    for row in logits[: min(8, len(logits))]:  # warm-up
        fn(row, buf)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for row in logits:
            fn(row, buf)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logits", nargs="?", type=Path, default=TARGET / "bench-data/topk/logits_151936.f32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=TARGET / "bench-results/peer_topk_numpy.json")
    args = ap.parse_args()
    if not args.logits.exists():
        raise SystemExit(f"{args.logits} does not exist (run `cargo bench --bench topk` first)")

    logits = np.fromfile(args.logits, dtype="<f4")
    rows = logits.size // VOCAB
    if rows == 0 or logits.size != rows * VOCAB:
        raise SystemExit(f"{args.logits}: {logits.size} values is not a whole number of {VOCAB}-wide rows")
    logits = logits.reshape(rows, VOCAB)
    check(logits[0])

    full = median_seconds(topk_row, logits, args.repeats)
    part = median_seconds(select_only, logits, args.repeats)
    results = [
        {"name": "peer.numpy_topk.positions_per_s", "value": rows / full, "unit": "positions/s"},
        {"name": "peer.numpy_argpartition.positions_per_s", "value": rows / part, "unit": "positions/s"},
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"numpy {np.__version__}, 1 thread, {rows} rows x {VOCAB}, k = {K}, median of {args.repeats}")
    print(f"  top-k + log-probs + tail: {full * 1e3:8.1f} ms  {rows / full:10.0f} positions/s")
    print(f"  argpartition alone:       {part * 1e3:8.1f} ms  {rows / part:10.0f} positions/s")
    print(f"  -> {args.out}")


if __name__ == "__main__":
    main()
