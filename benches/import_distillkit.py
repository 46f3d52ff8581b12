#!/usr/bin/env python3
"""`taidcache import --from distillkit` against DistillKit's own Python decompression of the same
capture files, on this machine's CPU, in the same run.

    python3 benches/import_distillkit.py --bin target/release/taidcache \
        --python VENV/bin/python --work target/bench-import --out target/bench-import/import.json \
        [--rounds 3] [--docs 64] [--doc-len 1024] [--vocab 151936] [--configs budget,recommended]

This script needs numpy and pyarrow only; --python must have torch, pydantic, pyarrow, numpy and
PyYAML (it runs the vendored DistillKit code in tests/python/distillkit/).

For each configuration (DistillKit's documented `budget` and `recommended` blocks, d = --vocab)
it writes once, under --work/CONFIG/ (kept, and reused while the parameters are the same):

- capture/data_N.parquet: --docs documents of --doc-len random token ids with --doc-len − 1
  entries each (vLLM's convention: nothing for the first token), compressed per document with
  DistillKit's `LogprobCompressor.compress_from_sparse(ids[None], values[None])` as its
  sample_logits_vllm.py does, in DistillKit's schema (input_ids list<uint64>,
  compressed_logprobs / bytepacked_indices list<list<uint8>>), 16 rows per file, pyarrow's
  default compression. The top-k values are LM-like: per position k descending float32
  log-probs of a Zipf law over the whole vocabulary (exponent drawn per position in [0.8, 3.0],
  log-normal noise on the top-k logits, the tail's mass counted in the normalizer), with k
  distinct random ids in [0, d);
- compression_config.yaml: yaml.safe_dump(cfg.model_dump(mode="json")), as DistillKit writes it;
- tokenizer.json (in --work): a minimal WordLevel tokenizer with "<eos>" as its EOS.

An untimed import per configuration first, then a check that the cache's row 0 holds document 0
as DistillKit decodes it (same ids; log-probs within float16 rounding where not floored).

Then --rounds rounds, the first side alternating between rounds (ours, theirs / theirs, ours):

- ours: `taidcache import --from distillkit` of the capture into a fresh directory, the wall
  time of the subprocess: process start, reading, DistillKit decoding, the tail log-mass per
  position, and writing a complete taidcache cache (zstd Parquet shards, manifest), all of it;
- theirs: a subprocess under --python that reads every capture file with pyarrow and calls
  `LogprobCompressor.decompress_to_sparse(row)` with torch uint8 tensors — (a) per document
  ([entries, bytes]: one batch of DistillKit's trainer at per_device_train_batch_size 1) and
  (b) per file, all its rows concatenated into one [positions, bytes] call (the most favourable
  batching for DistillKit). Timed inside the subprocess around read + decode only (the
  interpreter's start, the imports and the compressor's construction excluded), after one
  untimed pass of each variant in the same process (the warm allocator and caches of a
  long-running trainer), the median of --peer-passes passes (default 1); no tail, nothing
  written. The Arrow → torch conversion is zero-copy (flattened list values viewed as
  [positions, bytes]), cheaper than the HF datasets path DistillKit's trainer takes.

Both sides use --threads threads (default: all cores): RAYON_NUM_THREADS for taidcache,
torch.set_num_threads (and OMP/MKL_NUM_THREADS) for DistillKit. Positions = entries (teacher
targets). Prints a markdown table per configuration with the medians of the rounds and the
ratios, and writes {"name", "value", "unit"} entries to --out (the details to OUT's name with
.details.json).
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYDIR = os.path.join(ROOT, "tests", "python")  # the vendored DistillKit package

sys.path.insert(0, PYDIR)
sys.path.insert(0, HERE)
from distillkit_capture import PRESETS  # noqa: E402  DistillKit's documented blocks (d is --vocab)
from end_to_end import cpu_name  # noqa: E402

CONFIGS = {name: PRESETS[name] for name in ("budget", "recommended")}
ROWS_PER_FILE = 16
GENERATOR_VERSION = 1  # bump when the generated captures change

TOKENIZER = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [
        {"id": 0, "content": "<eos>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
    ],
    "normalizer": None,
    "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": None,
    "decoder": None,
    "model": {"type": "WordLevel", "vocab": {"<eos>": 0, "a": 1, "b": 2, "c": 3}, "unk_token": "<eos>"},
}


def run(cmd, env, what):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"import_distillkit: {what} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p.stdout, wall


# ---------------------------------------------------------------------------------------------
# Sub-steps run under --python (torch): `generate` and `theirs`.


def torch_setup(threads):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    sys.path.insert(0, PYDIR)
    import torch

    torch.set_num_threads(threads)
    return torch


def compressor_for(cfg_path):
    import yaml
    from distillkit.compression.compressor import LogprobCompressor
    from distillkit.compression.config import DistributionQuantizationConfig

    with open(cfg_path) as f:
        cfg = DistributionQuantizationConfig.model_validate(yaml.safe_load(f))
    return LogprobCompressor(config=cfg), cfg


def sample_topk(rng, n, k, vocab, exps, log_tail):
    """n positions of k descending float32 log-probs (Zipf-like) and k distinct ids in [0, vocab)."""
    import numpy as np

    which = rng.integers(0, len(exps), n)
    s = exps[which][:, None]
    rank = np.arange(1, k + 1, dtype=np.float64)[None, :]
    logits = -s * np.log(rank) + rng.normal(0.0, 0.15, (n, k)) * np.log1p(rank) ** 0.5
    logits = -np.sort(-logits, axis=-1)
    # Normalizer: the top-k as drawn plus the Zipf tail beyond rank k over the whole vocabulary.
    m = logits[:, :1]
    z = np.exp(logits - m).sum(-1, keepdims=True) + np.exp(log_tail[which][:, None] - m)
    values = (logits - m - np.log(z)).astype(np.float32)
    ids = rng.integers(0, vocab, (n, k))
    while True:  # redraw the positions whose ids repeat
        srt = np.sort(ids, axis=-1)
        dup = (srt[:, 1:] == srt[:, :-1]).any(-1)
        if not dup.any():
            break
        ids[dup] = rng.integers(0, vocab, (int(dup.sum()), k))
    return ids, values


def generate(args):
    torch = torch_setup(args.threads)
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from distillkit.compression.compressor import LogprobCompressor
    from distillkit.compression.config import DistributionQuantizationConfig

    cfg = DistributionQuantizationConfig(d=args.vocab, **CONFIGS[args.config])
    comp = LogprobCompressor(config=cfg)
    out = os.path.join(args.work, args.config)
    cap = os.path.join(out, "capture")
    os.makedirs(cap, exist_ok=True)
    with open(os.path.join(out, "compression_config.yaml"), "w") as f:
        f.write(yaml.safe_dump(cfg.model_dump(mode="json")))

    k, entries = cfg.k, args.doc_len - 1
    rng = np.random.default_rng(args.seed)
    # Zipf exponents on a grid, with log Σ_{r=k+1}^{d} r^-s for each.
    exps = np.linspace(0.8, 3.0, 45)
    tail_ranks = np.log(np.arange(k + 1, args.vocab + 1, dtype=np.float64))
    log_tail = np.array([np.log(np.exp(-s * tail_ranks).sum()) for s in exps])
    schema = pa.schema([
        ("input_ids", pa.list_(pa.uint64())),
        ("compressed_logprobs", pa.list_(pa.list_(pa.uint8()))),
        ("bytepacked_indices", pa.list_(pa.list_(pa.uint8()))),
    ])

    def nested(mats):
        """[entries, bytes] uint8 arrays (one per row) -> list<list<uint8>>."""
        flat = np.concatenate([m.reshape(-1) for m in mats])
        width = mats[0].shape[1]
        total = sum(m.shape[0] for m in mats)
        inner = pa.ListArray.from_arrays(pa.array(np.arange(total + 1, dtype=np.int32) * width),
                                         pa.array(flat, pa.uint8()))
        outer = np.concatenate([[0], np.cumsum([m.shape[0] for m in mats])]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(outer), inner)

    positions, nbytes = 0, 0
    for file_no, start in enumerate(range(0, args.docs, ROWS_PER_FILE)):
        tokens, lps, idx = [], [], []
        for _ in range(start, min(start + ROWS_PER_FILE, args.docs)):
            tokens.append(rng.integers(0, args.vocab, args.doc_len).astype(np.uint64))
            ids, values = sample_topk(rng, entries, k, args.vocab, exps, log_tail)
            c = comp.compress_from_sparse(torch.from_numpy(ids).unsqueeze(0),
                                          torch.from_numpy(values).unsqueeze(0))
            lps.append(c["compressed_logprobs"][0].numpy())
            idx.append(c["bytepacked_indices"][0].numpy())
            positions += entries
            nbytes = lps[-1].shape[1] + idx[-1].shape[1]
        table = pa.Table.from_arrays(
            [pa.array([t.tolist() for t in tokens], pa.list_(pa.uint64())), nested(lps), nested(idx)],
            schema=schema)
        pq.write_table(table, os.path.join(cap, f"data_{file_no}.parquet"))
    print(json.dumps({"positions": positions, "bytes_per_entry": nbytes}))


def theirs(args):
    torch = torch_setup(args.threads)
    import warnings

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    warnings.filterwarnings("ignore", message=".*not writable.*")  # zero-copy views of Arrow memory
    comp, cfg = compressor_for(args.compression)
    files = sorted(os.path.join(args.capture, f) for f in os.listdir(args.capture) if f.endswith(".parquet"))

    def columns(path):
        """(entry offsets per row, compressed_logprobs [positions, B], bytepacked_indices [positions, B'])."""
        t = pq.read_table(path)
        out = []
        for name in ("compressed_logprobs", "bytepacked_indices"):
            col = t.column(name).combine_chunks()
            offsets = np.asarray(col.offsets)
            inner = col.flatten()
            flat = np.asarray(inner.flatten())
            width = len(flat) // max(len(inner), 1)
            assert width * len(inner) == len(flat), f"{name}: entries of unequal length"
            vals = flat.reshape(-1, width)
            out.append((offsets, vals))
        (off, lp), (off2, ix) = out
        assert (off == off2).all(), "entry counts differ between the two columns"
        return off, lp, ix

    def per_row():
        n = 0
        for path in files:
            off, lp, ix = columns(path)
            for r in range(len(off) - 1):
                a, b = int(off[r]), int(off[r + 1])
                row = {"compressed_logprobs": torch.from_numpy(lp[a:b]),
                       "bytepacked_indices": torch.from_numpy(ix[a:b])}
                ids, logprobs = comp.decompress_to_sparse(row)
                n += logprobs.shape[0]
        return n

    def per_file():
        n = 0
        for path in files:
            _, lp, ix = columns(path)
            row = {"compressed_logprobs": torch.from_numpy(lp), "bytepacked_indices": torch.from_numpy(ix)}
            ids, logprobs = comp.decompress_to_sparse(row)
            n += logprobs.shape[0]
        return n

    # A check on the first row: shapes, ids in range, values finite and descending-ish.
    off, lp, ix = columns(files[0])
    ids, logprobs = comp.decompress_to_sparse({"compressed_logprobs": torch.from_numpy(lp[: off[1]]),
                                               "bytepacked_indices": torch.from_numpy(ix[: off[1]])})
    assert ids.shape == logprobs.shape == (int(off[1]), cfg.k), (ids.shape, logprobs.shape)
    assert int(ids.min()) >= 0 and int(ids.max()) < cfg.d and bool(torch.isfinite(logprobs).all())

    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "pyarrow": pa.__version__,
              "out_dtype": str(logprobs.dtype)}
    order = [("per_row", per_row), ("per_file", per_file)]
    if args.swap:
        order.reverse()
    for name, fn in order:  # untimed warm-up of both: a long-running trainer's allocator and caches
        fn()
    for name, fn in order:
        times = []
        for _ in range(args.passes):
            t0 = time.perf_counter()
            n = fn()
            times.append(time.perf_counter() - t0)
        result[f"{name}_s"] = statistics.median(times)
        result[f"{name}_passes_s"] = times
        result["positions"] = n
    print(json.dumps(result))


def check(args):
    """Document 0 as DistillKit decodes it against row 0 of the cache taidcache wrote: the same
    ids per position, and log-probs within float16 rounding where the decoded mass is below 1."""
    torch = torch_setup(args.threads)
    import json as _json

    import numpy as np
    import pyarrow.parquet as pq

    comp, cfg = compressor_for(args.compression)
    first = sorted(f for f in os.listdir(args.capture) if f.endswith(".parquet"))[0]
    doc = pq.read_table(os.path.join(args.capture, first)).slice(0, 1).to_pylist()[0]
    ids, lp = comp.decompress_to_sparse(
        {"compressed_logprobs": torch.tensor(doc["compressed_logprobs"], dtype=torch.uint8),
         "bytepacked_indices": torch.tensor(doc["bytepacked_indices"], dtype=torch.uint8)})
    ids, lp = ids.numpy(), lp.double().numpy()
    with open(os.path.join(args.cache, "manifest.json")) as f:
        shard = _json.load(f)["shards"][0]["path"]
    row = pq.read_table(os.path.join(args.cache, shard)).slice(0, 1).to_pylist()[0]
    n = ids.shape[0]
    cids = np.array(row["topk_ids"][:n], dtype=np.int64)
    clp = np.array(row["topk_logprobs"][:n], dtype=np.float64)
    o1, o2 = np.argsort(ids, -1), np.argsort(cids, -1)
    same_ids = bool((np.take_along_axis(ids, o1, -1) == np.take_along_axis(cids, o2, -1)).all())
    same_tokens = [int(t) for t in row["input_ids"][: len(doc["input_ids"])]] == doc["input_ids"]
    a, b = np.take_along_axis(lp, o1, -1), np.take_along_axis(clp, o2, -1)
    kept = np.exp(lp).sum(-1) < 1  # positions taidcache did not floor
    err = float(np.max(np.abs(a - b)[kept] / (1e-3 + np.abs(a)[kept]))) if kept.any() else 0.0
    ok = same_ids and same_tokens and sum(row["loss_mask"]) == n and err < 5e-3
    print(_json.dumps({"ok": ok, "same_ids": same_ids, "same_tokens": same_tokens, "max_rel_err": err,
                       "positions": n, "unfloored": int(kept.sum())}))


# ---------------------------------------------------------------------------------------------
# The driver (any python3 with the standard library).


class Bench:
    def __init__(self, args, config):
        self.args, self.config = args, config
        self.dir = os.path.join(args.work, config)
        self.capture = os.path.join(self.dir, "capture")
        self.compression = os.path.join(self.dir, "compression_config.yaml")
        self.cache = os.path.join(self.dir, "cache")
        threads = str(args.threads)
        self.ours_env = dict(os.environ, RAYON_NUM_THREADS=threads)
        self.peer_env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                             CUDA_VISIBLE_DEVICES="")
        self.positions = None
        self.samples = {"ours": [], "ours_dry": [], "per_row": [], "per_file": []}
        self.ours_internal = []
        self.floored = None

    def fixtures(self):
        spec = {"generator": GENERATOR_VERSION, "config": dict(CONFIGS[self.config], d=self.args.vocab),
                "docs": self.args.docs, "doc_len": self.args.doc_len, "rows_per_file": ROWS_PER_FILE,
                "seed": self.args.seed}
        marker = os.path.join(self.dir, "fixtures.json")
        if os.path.exists(marker):
            with open(marker) as f:
                old = json.load(f)
            if old.get("spec") == spec:
                self.positions = old["positions"]
                self.bytes_per_entry = old["bytes_per_entry"]
                return
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        print(f"  writing the {self.config} capture under {self.dir}", flush=True)
        t0 = time.perf_counter()
        out, _ = run([self.args.python, os.path.abspath(__file__), "_generate", "--config", self.config,
                      "--work", self.args.work, "--vocab", str(self.args.vocab), "--docs", str(self.args.docs),
                      "--doc-len", str(self.args.doc_len), "--seed", str(self.args.seed),
                      "--threads", str(self.args.threads)], self.peer_env, "generating the capture")
        info = json.loads(out.strip().splitlines()[-1])
        self.positions, self.bytes_per_entry = info["positions"], info["bytes_per_entry"]
        with open(marker, "w") as f:
            json.dump({"spec": spec, **info}, f)
        print(f"  ({time.perf_counter() - t0:.1f}s)", flush=True)

    def ours(self):
        shutil.rmtree(self.cache, ignore_errors=True)
        out, wall = run([self.args.bin, "import", "--from", "distillkit", self.capture,
                         "--compression", self.compression, "--vocab-size", str(self.args.vocab),
                         "--tokenizer", self.args.tokenizer, "--out", self.cache,
                         "--seq-len", str(self.args.doc_len)], self.ours_env, "taidcache import")
        m = re.search(r"imported (\d+) documents \((\d+) positions with a target\).*?([\d.]+)s\s*$", out, re.M)
        if not m:
            sys.exit(f"import_distillkit: no summary line in taidcache import's output:\n{out[-2000:]}")
        if int(m.group(1)) != self.args.docs or int(m.group(2)) != self.positions:
            sys.exit(f"import_distillkit: taidcache imported {m.group(1)} documents / {m.group(2)} positions, "
                     f"expected {self.args.docs} / {self.positions}:\n{out}")
        fl = re.search(r": (\d+) positions \(([\d.]+)%\) decoded to a top-\d+ mass", out)
        self.floored = (int(fl.group(1)), float(fl.group(2))) if fl else None
        self.samples["ours"].append(self.positions / wall)
        self.ours_internal.append(float(m.group(3)))

    def ours_dry(self):
        """`import --dry-run`: read, decode, check and rebuild the tail of every position, write
        nothing: the same work as DistillKit's side."""
        out, wall = run([self.args.bin, "import", "--from", "distillkit", self.capture,
                         "--compression", self.compression, "--vocab-size", str(self.args.vocab),
                         "--tokenizer", self.args.tokenizer, "--dry-run",
                         "--seq-len", str(self.args.doc_len)], self.ours_env, "taidcache import --dry-run")
        m = re.search(r"decoded \(nothing written\) (\d+) documents \((\d+) positions", out)
        if not m or int(m.group(2)) != self.positions:
            sys.exit(f"import_distillkit: unexpected taidcache import --dry-run output:\n{out[-2000:]}")
        self.samples["ours_dry"].append(self.positions / wall)

    def check(self):
        out, _ = run([self.args.python, os.path.abspath(__file__), "_check", "--capture", self.capture,
                      "--compression", self.compression, "--cache", self.cache, "--threads",
                      str(self.args.threads)], self.peer_env, "the check of document 0")
        r = json.loads(out.strip().splitlines()[-1])
        if not r["ok"]:
            sys.exit(f"import_distillkit: taidcache's cache and DistillKit disagree on document 0: {r}")
        print(f"  {self.config}: document 0 checked: taidcache's cache holds DistillKit's decoding "
              f"(ids identical, log-probs within {r['max_rel_err']:.1e} relative, float16)", flush=True)

    def theirs(self, swap):
        cmd = [self.args.python, os.path.abspath(__file__), "_theirs", "--capture", self.capture,
               "--compression", self.compression, "--threads", str(self.args.threads),
               "--passes", str(self.args.peer_passes)]
        out, _ = run(cmd + (["--swap"] if swap else []), self.peer_env, "DistillKit's decompression")
        r = json.loads(out.strip().splitlines()[-1])
        if r["positions"] != self.positions:
            sys.exit(f"import_distillkit: DistillKit decoded {r['positions']} positions, expected {self.positions}")
        self.peer_info = r
        self.samples["per_row"].append(self.positions / r["per_row_s"])
        self.samples["per_file"].append(self.positions / r["per_file_s"])

    def row(self):
        med = {k: statistics.median(v) for k, v in self.samples.items()}
        return {"config": self.config, "k": CONFIGS[self.config]["k"], "positions": self.positions,
                "bytes_per_entry": self.bytes_per_entry,
                "ours_positions_per_s": med["ours"], "ours_dry_positions_per_s": med["ours_dry"],
                "per_row_positions_per_s": med["per_row"],
                "per_file_positions_per_s": med["per_file"],
                "ratio_per_row": med["ours"] / med["per_row"], "ratio_per_file": med["ours"] / med["per_file"],
                "dry_ratio_per_row": med["ours_dry"] / med["per_row"],
                "samples": self.samples, "ours_internal_elapsed_s": self.ours_internal,
                "floored_positions": self.floored, "peer": self.peer_info}


def drive(args):
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    args.tokenizer = os.path.join(args.work, "tokenizer.json")
    with open(args.tokenizer, "w") as f:
        json.dump(TOKENIZER, f, indent=1)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            sys.exit(f"import_distillkit: unknown config {c!r} (known: {', '.join(CONFIGS)})")
    if args.doc_len < 2:
        sys.exit("import_distillkit: --doc-len must be at least 2")
    cpu = cpu_name()
    print(f"import --from distillkit on {cpu}, {args.threads} threads per side: {args.docs} documents × "
          f"{args.doc_len} tokens ({args.doc_len - 1} entries each), d = {args.vocab:,}, {args.rounds} rounds",
          flush=True)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"  warning: load average {load:.2f} before the start: other work shares these cores", flush=True)
    rows = []
    for config in configs:
        b = Bench(args, config)
        b.fixtures()
        # Untimed run of ours (page cache, the binary's pages); DistillKit's subprocess warms itself.
        b.ours()
        b.check()
        for v in b.samples.values():
            v.clear()
        b.ours_internal.clear()
        for r in range(args.rounds):
            if r % 2 == 0:
                b.ours()
                b.ours_dry()
                b.theirs(swap=False)
            else:
                b.theirs(swap=True)
                b.ours_dry()
                b.ours()
            s = b.samples
            print(f"  {config} round {r + 1}: taidcache {s['ours'][-1]:,.0f} positions/s "
                  f"(--dry-run {s['ours_dry'][-1]:,.0f}), DistillKit per row "
                  f"{s['per_row'][-1]:,.0f}, per file {s['per_file'][-1]:,.0f}", flush=True)
        rows.append(b.row())

    entries = []
    for row in rows:
        key = f"import_distillkit.{row['config']}"
        entries += [
            {"name": f"{key}.ours_positions_per_s", "value": row["ours_positions_per_s"], "unit": "positions/s"},
            {"name": f"{key}.ours_dry_run_positions_per_s", "value": row["ours_dry_positions_per_s"],
             "unit": "positions/s"},
            {"name": f"{key}.dry_run_ratio_vs_per_row", "value": row["dry_ratio_per_row"], "unit": "x"},
            {"name": f"{key}.distillkit_per_row_positions_per_s", "value": row["per_row_positions_per_s"],
             "unit": "positions/s"},
            {"name": f"{key}.distillkit_per_file_positions_per_s", "value": row["per_file_positions_per_s"],
             "unit": "positions/s"},
            {"name": f"{key}.ratio_vs_per_row", "value": row["ratio_per_row"], "unit": "x"},
            {"name": f"{key}.ratio_vs_per_file", "value": row["ratio_per_file"], "unit": "x"},
        ]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    details = re.sub(r"\.json$", "", args.out) + ".details.json"
    with open(details, "w") as f:
        json.dump({"cpu": cpu, "threads": args.threads, "loadavg_start": load, "loadavg_end": os.getloadavg(),
                   "peer_passes": args.peer_passes, "docs": args.docs, "doc_len": args.doc_len,
                   "vocab": args.vocab, "rounds": args.rounds, "bin": os.path.abspath(args.bin),
                   "configs": {c: dict(CONFIGS[c], d=args.vocab) for c in configs}, "rows": rows}, f, indent=1)
        f.write("\n")

    print(f"\nCPU: {cpu}; {args.threads} threads each (taidcache: RAYON_NUM_THREADS; DistillKit: "
          f"torch.set_num_threads). Medians of {args.rounds} rounds.")
    print("taidcache = wall time of `taidcache import` writing a complete cache (decode, tail, zstd Parquet, "
          "manifest; process start included); DistillKit = read + decompress_to_sparse only, timed in-process.\n")
    print("taidcache --dry-run = read, decode, check and rebuild the tail of every position, write nothing "
          "(the same work as DistillKit's side).\n")
    print("| config | k | positions | taidcache import pos/s | taidcache --dry-run pos/s | DistillKit per row pos/s | "
          "DistillKit per file pos/s | import / per row | --dry-run / per row |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['k']} | {row['positions']:,} | {row['ours_positions_per_s']:,.0f} | "
              f"{row['ours_dry_positions_per_s']:,.0f} | "
              f"{row['per_row_positions_per_s']:,.0f} | {row['per_file_positions_per_s']:,.0f} | "
              f"{row['ratio_per_row']:.1f}× | {row['dry_ratio_per_row']:.1f}× |")
    goal = all(r["ratio_per_row"] >= 10 for r in rows)
    dry = all(r["dry_ratio_per_row"] >= 10 for r in rows)
    print(f"\ngoal ≥ 10× against DistillKit's faster variant: import {'met' if goal else 'NOT met'}, "
          f"--dry-run {'met' if dry else 'NOT met'}")
    print(f"-> {args.out} ({details})")


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("_generate", "_theirs", "_check"):
        step = sys.argv[1]
        ap = argparse.ArgumentParser(prog=f"import_distillkit.py {step}")
        ap.add_argument("--threads", type=int, required=True)
        if step == "_generate":
            for a in ("--config", "--work"):
                ap.add_argument(a, required=True)
            for a in ("--vocab", "--docs", "--doc-len", "--seed"):
                ap.add_argument(a, type=int, required=True)
            return generate(ap.parse_args(sys.argv[2:]))
        ap.add_argument("--capture", required=True)
        ap.add_argument("--compression", required=True)
        if step == "_check":
            ap.add_argument("--cache", required=True)
            return check(ap.parse_args(sys.argv[2:]))
        ap.add_argument("--swap", action="store_true", help="time per file before per row")
        ap.add_argument("--passes", type=int, default=1, help="timed passes per variant (median)")
        return theirs(ap.parse_args(sys.argv[2:]))

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"),
                                                  "release", "taidcache"))
    ap.add_argument("--python", default=sys.executable, help="a python with torch, pydantic, pyarrow, PyYAML")
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "bench-import"))
    ap.add_argument("--out", default=None, help="JSON results (default: WORK/import_distillkit.json)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--doc-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--configs", default="budget,recommended")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer-passes", type=int, default=1,
                    help="DistillKit's timed passes per variant and round, after one untimed pass (median)")
    args = ap.parse_args()
    args.out = args.out or os.path.join(args.work, "import_distillkit.json")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
