"""What a higher zstd level would buy the compact encoding on the synthetic source.

Reads the steps (format v2) shard that `cargo bench --bench storage` leaves in
target/bench-data/storage/synthetic-steps.parquet, lays out its columns as the writer does
(the byte planes of topk_ids and of tail_logmass apart, as BYTE_STREAM_SPLIT does; the u8 steps
as they are) and compresses each whole column with zstd at several levels (pyarrow's codec, one
thread). Prints bytes per token and compression speed per column and level (a few seconds;
not part of `make bench`).

    python3 benches/storage_levels.py
"""
import os
import pathlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SHARD = TARGET / "bench-data" / "storage" / "synthetic-steps.parquet"
LEVELS = (3, 6, 9, 12, 15, 19)


def flat(table, name):
    col = table[name]
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = pc.list_flatten(col)
    return col.to_numpy()


def planes(values, width):
    b = np.ascontiguousarray(values).view(np.uint8).reshape(-1, width)
    return b"".join(b[:, i].tobytes() for i in range(width))


def main():
    f = pq.ParquetFile(SHARD)
    t = f.read()
    positions = len(flat(t, "tail_logmass"))
    columns = {
        "topk_ids": planes(flat(t, "topk_ids").astype("<u4"), 4),
        "topk_logprob_steps": flat(t, "topk_logprob_steps").astype(np.uint8).tobytes(),
        "tail_logmass": planes(flat(t, "tail_logmass").astype("<f4"), 4),
    }
    print(f"{SHARD}: {positions} positions")
    for level in LEVELS:
        codec = pa.Codec("zstd", compression_level=level)
        cells = []
        for name, raw in columns.items():
            t0 = time.perf_counter()
            out = codec.compress(raw, asbytes=True)
            dt = time.perf_counter() - t0
            cells.append(f"{name} {len(out) / positions:6.2f} B ({len(raw) / dt / 1e6:6.1f} MB/s)")
        print(f"level {level:2d}: " + "  ".join(cells))


if __name__ == "__main__":
    main()
