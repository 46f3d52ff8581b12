#!/usr/bin/env python3
"""taidcache against the PyTorch + transformers loop a user would write instead, end to end, on
this machine's CPU: `make bench` runs it (BENCHES=end_to_end alone: `make bench-e2e`).

    python3 benches/end_to_end.py --bin target/release/taidcache --work target/bench-e2e \
        --python target/bench-venv/bin/python --out target/bench-e2e/end_to_end.json

For each vocabulary (49,152 as SmolLM2, and 151,936 as Qwen2) it writes once, under --work:

- a random Llama teacher of SmolLM2-135M's shape (30 layers, hidden 576, 9 heads / 3 KV heads,
  intermediate 1536, tied embeddings) in f32 safetensors, scripts/gpu_fixtures.py's weights;
- a student `config.json` (4 layers, hidden 256, 4 heads / 2 KV heads, intermediate 768);
- a corpus that packs into exactly --seqs rows of --seq-len tokens.

Then --rounds rounds, each side in turn, the first side alternating between rounds:

- **precompute** (forward, log-softmax, top-50, tail): `taidcache precompute --dtype f32` on the
  corpus, timed as its own summary line's elapsed seconds (tokenizing, the forward, selection and
  the zstd Parquet shards; the teacher's load excluded), against benches/peers/torch_teacher.py
  --time-only on that cache's rows (forward, `log_softmax`, `topk`, `logsumexp`, copies to numpy;
  no tokenizing, no load, no I/O);
- **precompute --dtype bf16**, the same run with the teacher's linear layers in bf16 (on the CPU,
  AMX tile products where the CPU has them), against the same PyTorch f32 samples, with the KL
  of its cache to the f32 cache (`Bench.cache_kl`: both completed with the tail spread evenly), and
  the same KL for a copy of the teacher whose weights are already bf16 (`Bench.bf16_weights_kl`);
- **a distill step** (`--objective kl`, the student's own tail, clip, AdamW; batch --batch-size):
  `taidcache distill` for --steps steps, the median of the steps after the first two (from its
  metrics.jsonl's elapsed seconds, so evaluation and start-up are outside), against
  benches/peers/torch_student.py (dense `log_softmax`, gather, the same KL, backward,
  `clip_grad_norm_`, `torch.optim.AdamW`), its mean step after two warm-up steps;
- **a distill step with `--precision bf16`** (the output projection's three products in bf16 on
  AMX tiles where the CPU has them): the same run, against the same PyTorch f32 samples (row
  `distill-bf16`) and against torch_student.py --autocast bf16, PyTorch's own mixed precision
  (row `distill-bf16-vs-autocast`).

Both sides use the same number of threads (--threads: RAYON_NUM_THREADS for taidcache, which
otherwise runs as a user runs it; OMP_NUM_THREADS, torch's intra-op threads, for PyTorch). It prints one row per work
and vocabulary, taidcache's tokens/s over PyTorch's as medians of the rounds, and writes them to
--out for benches/report.py.
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
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu_fixtures  # noqa: E402

TEACHER = {"hidden": 576, "intermediate": 1536, "layers": 30, "heads": 9, "kv_heads": 3, "tie": True}
STUDENT = {"hidden": 256, "intermediate": 768, "layers": 4, "heads": 4, "kv_heads": 2}
TOP_K = 50
LR = 1e-3
# argv: SRC DST safetensors; every matrix rounded to the nearest bf16 (ties to even), kept f32.
ROUND_WEIGHTS = """
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
out = {}
for name, v in load_file(sys.argv[1]).items():
    if v.ndim == 2 and v.dtype == np.float32:
        b = v.view(np.uint32)
        v = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    out[name] = v
save_file(out, sys.argv[2])
"""


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown"
    name = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    has = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name.group(1).strip() if name else 'unknown'} ({', '.join(has) or 'no AVX-512'})"


def run(cmd, env, what):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.exit(f"end_to_end: {what} failed (exit {p.returncode}):\n{p.stdout[-3000:]}")
    return p.stdout, time.perf_counter() - t0


class Bench:
    def __init__(self, args, vocab):
        self.args, self.vocab = args, vocab
        self.dir = os.path.join(args.work, f"v{vocab}")
        self.teacher = os.path.join(self.dir, "teacher")
        self.student = os.path.join(self.dir, "student")
        self.corpus = os.path.join(self.dir, "corpus.jsonl")
        threads = str(args.threads)
        self.ours_env = dict(os.environ, RAYON_NUM_THREADS=threads)
        self.peer_env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                             CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false")
        self.samples = {"precompute": {"ours": [], "peer": []}, "distill": {"ours": [], "peer": []}}
        if args.bf16:
            # Its peer is the same PyTorch f32 precompute as the f32 row's.
            self.samples["precompute-bf16"] = {"ours": [], "peer": self.samples["precompute"]["peer"]}
            # `distill --precision bf16` against PyTorch's f32 step, and against its bf16 autocast.
            bf16_steps = []
            self.samples["distill-bf16"] = {"ours": bf16_steps, "peer": self.samples["distill"]["peer"]}
            self.samples["distill-bf16-vs-autocast"] = {"ours": bf16_steps, "peer": []}
        self.kl = self.kl_bf16_weights = None

    def fixtures(self):
        spec = {"teacher": dict(TEACHER, vocab=self.vocab), "student": dict(STUDENT, vocab=self.vocab),
                "seqs": self.args.seqs, "seq_len": self.args.seq_len}
        marker = os.path.join(self.dir, "fixtures.json")
        if os.path.exists(marker):
            with open(marker) as f:
                if json.load(f) == spec:
                    return
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        print(f"  writing the v{self.vocab} teacher, student and corpus under {self.dir}", flush=True)
        out, _ = run([self.args.python, os.path.join(ROOT, "scripts", "gpu_fixtures.py"), "teacher",
                      "--out", self.teacher, "--shape", json.dumps(spec["teacher"])], self.peer_env, "the teacher")
        gpu_fixtures.write_student(self.student, spec["student"])
        gpu_fixtures.write_corpus(self.corpus, self.vocab, self.args.seqs, self.args.seq_len)
        with open(marker, "w") as f:
            json.dump(spec, f)

    @property
    def cache(self):
        return os.path.join(self.dir, "cache")

    def ours_precompute(self, dtype="f32"):
        cache = self.cache if dtype == "f32" else self.cache + "-" + dtype
        out_dir = cache + ".new"
        shutil.rmtree(out_dir, ignore_errors=True)
        out, _ = run([self.args.bin, "precompute", "--teacher", self.teacher, "--corpus", self.corpus,
                      "--out", out_dir, "--seq-len", str(self.args.seq_len), "--batch-size",
                      str(self.args.batch_size), "--top-k", str(TOP_K), "--dtype", dtype, "--device", "cpu"],
                     self.ours_env, f"taidcache precompute --dtype {dtype}")
        m = re.search(r"\((\d+) sequences, (\d+) tokens\).*?([\d.]+)s \(([\d.]+)s teacher\)", out)
        if not m:
            sys.exit(f"end_to_end: no summary line in taidcache precompute's output:\n{out[-2000:]}")
        shutil.rmtree(cache, ignore_errors=True)
        os.rename(out_dir, cache)
        tokens, elapsed = int(m.group(2)), float(m.group(3))
        self.samples["precompute" if dtype == "f32" else f"precompute-{dtype}"]["ours"].append(tokens / elapsed)

    def ours_bf16_precompute(self):
        self.ours_precompute("bf16")

    def cache_kl(self, f32_cache=None, bf16_cache=None):
        """Mean KL(f32 cache ‖ bf16 cache) over positions, each cache's distribution completed
        as `distill --tail uniform` completes it: its top-k log-probs, and its tail mass spread
        evenly over the other vocab − k ids. Exact for those two distributions: summed over the
        union of the two top-k sets, plus the ids in neither (where both are uniform)."""
        import glob
        import numpy as np
        import pyarrow.parquet as pq

        def positions(cache):
            """(ids, log-probs, tail log-mass) of every position, shard by shard."""
            for path in sorted(glob.glob(os.path.join(cache, "shards", "*.parquet"))):
                t = pq.read_table(path, columns=["topk_ids", "topk_logprobs", "tail_logmass"])
                ids = t.column("topk_ids").combine_chunks().flatten().flatten().to_numpy()
                lps = t.column("topk_logprobs").combine_chunks().flatten().flatten().to_numpy()
                tails = t.column("tail_logmass").combine_chunks().flatten().to_numpy()
                yield from zip(ids.reshape(-1, TOP_K), lps.astype(np.float64).reshape(-1, TOP_K),
                               tails.astype(np.float64))

        rest = self.vocab - TOP_K
        kls = []
        f32_cache, bf16_cache = f32_cache or self.cache, bf16_cache or self.cache + "-bf16"
        for (ia, la, ta), (ib, lb, tb) in zip(positions(f32_cache), positions(bf16_cache)):
            pa, pb = dict(zip(ia.tolist(), la.tolist())), dict(zip(ib.tolist(), lb.tolist()))
            fa, fb = ta - np.log(rest), tb - np.log(rest)  # log-prob of one tail id
            union = set(pa) | set(pb)
            kl = sum(np.exp(pa.get(i, fa)) * (pa.get(i, fa) - pb.get(i, fb)) for i in union)
            kl += (self.vocab - len(union)) * np.exp(fa) * (fa - fb)
            kls.append(float(kl))
        if not kls:
            sys.exit(f"end_to_end: no positions in {f32_cache}/shards to compare")
        return {"mean": float(np.mean(kls)), "p99": float(np.percentile(kls, 99)), "positions": len(kls)}

    def bf16_weights_kl(self):
        """The same KL for a copy of the teacher whose weight matrices are rounded to bf16 (as a
        checkpoint published in bf16 holds them): what the bf16 products themselves cost, with
        the weights' rounding taken out."""
        teacher = os.path.join(self.dir, "teacher-bf16-weights")
        if not os.path.exists(os.path.join(teacher, "model.safetensors")):
            os.makedirs(teacher, exist_ok=True)
            for f in ("config.json", "tokenizer.json"):
                shutil.copy(os.path.join(self.teacher, f), teacher)
            run([self.args.python, "-c", ROUND_WEIGHTS, os.path.join(self.teacher, "model.safetensors"),
                 os.path.join(teacher, "model.safetensors")], self.peer_env, "rounding the weights to bf16")
        caches = []
        for dtype in ("f32", "bf16"):
            out = os.path.join(self.dir, f"cache-bf16-weights-{dtype}")
            shutil.rmtree(out, ignore_errors=True)
            run([self.args.bin, "precompute", "--teacher", teacher, "--corpus", self.corpus, "--out", out,
                 "--seq-len", str(self.args.seq_len), "--batch-size", str(self.args.batch_size), "--top-k",
                 str(TOP_K), "--dtype", dtype, "--device", "cpu"], self.ours_env, f"precompute --dtype {dtype}")
            caches.append(out)
        return self.cache_kl(*caches)

    def peer_precompute(self):
        out_dir = os.path.join(self.dir, "peer-teacher")
        run([self.args.python, os.path.join(HERE, "peers", "torch_teacher.py"), "--teacher", self.teacher,
             "--cache", f"f32={self.cache}", "--device", "cpu", "--batch-size", str(self.args.batch_size),
             "--out-dir", out_dir, "--time-only"], self.peer_env, "the PyTorch teacher")
        with open(os.path.join(out_dir, "torch_teacher.json")) as f:
            self.samples["precompute"]["peer"].append(json.load(f)["runs"]["f32"]["tokens_per_s"])

    def ours_distill(self, precision="f32"):
        run_dir = os.path.join(self.dir, "run")
        shutil.rmtree(run_dir, ignore_errors=True)
        run([self.args.bin, "distill", "--cache", self.cache, "--student", self.student, "--out", run_dir,
             "--objective", "kl", "--tail", "student", "--steps", str(self.args.steps), "--batch-size",
             str(self.args.batch_size), "--lr", str(LR), "--seed", "0", "--device", "cpu",
             "--eval-fraction", "0", "--precision", precision], self.ours_env, f"taidcache distill --precision {precision}")
        lines = []
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                if r.get("kind", "train") == "train" and "elapsed_s" in r and "tokens" in r:
                    lines.append(r)
        steps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(lines, lines[1:])][1:]
        if not steps:
            sys.exit(f"end_to_end: {run_dir}/metrics.jsonl has {len(lines)} training lines, too few to time")
        tokens = lines[1]["tokens"] - lines[0]["tokens"]
        work = "distill" if precision == "f32" else "distill-bf16"
        self.samples[work]["ours"].append(tokens / statistics.median(steps))

    def ours_bf16_distill(self):
        self.ours_distill("bf16")

    def peer_distill(self, autocast=None):
        out = os.path.join(self.dir, "torch_student.json")
        extra = ["--autocast", autocast] if autocast else []
        run([self.args.python, os.path.join(HERE, "peers", "torch_student.py"), "--student", self.student,
             "--cache", self.cache, "--device", "cpu", "--batch-size", str(self.args.batch_size),
             "--steps", str(max(self.args.steps - 2, 1)), "--warmup", "2", "--lr", str(LR), "--out", out] + extra,
            self.peer_env, "the PyTorch student" + (f" (autocast {autocast})" if autocast else ""))
        work = "distill-bf16-vs-autocast" if autocast else "distill"
        with open(out) as f:
            self.samples[work]["peer"].append(json.load(f)["tokens_per_s"])

    def peer_autocast_distill(self):
        self.peer_distill("bf16")

    def rows(self):
        out = []
        for work, s in self.samples.items():
            if not s["ours"] or not s["peer"]:
                continue
            ours, peer = statistics.median(s["ours"]), statistics.median(s["peer"])
            row = {"work": work, "vocab": self.vocab, "ours_tokens_per_s": ours, "peer_tokens_per_s": peer,
                   "ratio": ours / peer, "ours_samples": s["ours"], "peer_samples": s["peer"]}
            if work == "precompute-bf16" and self.kl:
                row["kl_to_f32_cache"] = self.kl
                row["kl_to_f32_cache_bf16_weights"] = self.kl_bf16_weights
            out.append(row)
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "taidcache"))
    ap.add_argument("--python", default=sys.executable, help="a python with torch and transformers")
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "bench-e2e"))
    ap.add_argument("--out", default=None, help="JSON results (default: WORK/end_to_end.json)")
    ap.add_argument("--results", default=os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"),
                                                       "bench-results", "end_to_end.json"),
                    help="the rows for benches/report.py")
    ap.add_argument("--vocab", type=int, action="append", help="repeatable (default: 49152 and 151936)")
    ap.add_argument("--seqs", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="distill steps per run (the first two untimed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", choices=["precompute", "distill"], help="one of the two works")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                    help="leave out the bf16 rows (`precompute --dtype bf16`, `distill --precision bf16`)")
    args = ap.parse_args()
    args.out = args.out or os.path.join(args.work, "end_to_end.json")
    vocabs = args.vocab or [49152, 151936]
    os.makedirs(args.work, exist_ok=True)
    print(f"end to end on {cpu_name()}, {args.threads} threads: {args.seqs} × {args.seq_len} tokens, "
          f"batch {args.batch_size}, {args.rounds} rounds", flush=True)
    rows = []
    for vocab in vocabs:
        b = Bench(args, vocab)
        b.fixtures()
        if not os.path.exists(os.path.join(b.cache, "manifest.json")):
            b.ours_precompute()  # the distill runs' cache; also warms the page cache
            b.samples["precompute"]["ours"].clear()
        for r in range(args.rounds):
            sides = [("ours", "peer"), ("peer", "ours")][r % 2]
            for work in ["precompute", "distill"]:
                if args.only and work != args.only:
                    continue
                order = list(sides)
                if args.bf16:
                    order.insert(1, "ours_bf16")
                    if work == "distill":
                        order.append("peer_autocast")
                for side in order:
                    getattr(b, f"{side}_{work}")()
                s = b.samples[work]
                bf16 = ""
                if work == "precompute" and args.bf16:
                    bf16 = f", taidcache --dtype bf16 {b.samples['precompute-bf16']['ours'][-1]:,.0f} tokens/s"
                if work == "distill" and args.bf16:
                    bf16 = (f", taidcache --precision bf16 {b.samples['distill-bf16']['ours'][-1]:,.0f} tokens/s, "
                            f"PyTorch autocast bf16 {b.samples['distill-bf16-vs-autocast']['peer'][-1]:,.0f} tokens/s")
                print(f"  v{vocab} round {r + 1} {work}: taidcache {s['ours'][-1]:,.0f} tokens/s{bf16}, "
                      f"PyTorch {s['peer'][-1]:,.0f} tokens/s", flush=True)
        if args.bf16 and b.samples["precompute-bf16"]["ours"]:
            b.kl = b.cache_kl()
            b.kl_bf16_weights = b.bf16_weights_kl()
            for what, kl in [("", b.kl), (", weights already bf16", b.kl_bf16_weights)]:
                print(f"  v{vocab} KL(f32 cache ‖ bf16 cache){what}, tails spread evenly: mean {kl['mean']:.2e}, "
                      f"p99 {kl['p99']:.2e} over {kl['positions']} positions", flush=True)
        rows += b.rows()
    report = {"cpu": cpu_name(), "threads": args.threads, "seqs": args.seqs, "seq_len": args.seq_len,
              "batch_size": args.batch_size, "rounds": args.rounds, "teacher": TEACHER, "student": STUDENT,
              "rows": rows}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    # benches/report.py's inputs: {"name", "value", "unit"} entries.
    entries = []
    for row in rows:
        key = f"e2e.{row['work']}.v{row['vocab']}"
        entries += [{"name": f"{key}.ours_tokens_per_s", "value": row["ours_tokens_per_s"], "unit": "tok/s"},
                    {"name": f"{key}.peer_tokens_per_s", "value": row["peer_tokens_per_s"], "unit": "tok/s"}]
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(entries, f, indent=2)
    print(f"\n| work | vocab | taidcache tokens/s | PyTorch tokens/s | taidcache / PyTorch |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['work']} | {row['vocab']:,} | {row['ours_tokens_per_s']:,.0f} | {row['peer_tokens_per_s']:,.0f} "
              f"| {row['ratio']:.2f}× |")
    print(f"(medians of {args.rounds} rounds; {args.out})")


if __name__ == "__main__":
    sys.exit(main())
