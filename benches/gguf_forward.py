#!/usr/bin/env python3
"""GGUF teachers against the f32 safetensors teacher of the same model, on this machine's CPU:
precompute tokens/s (the teacher's seconds from the run's summary line) and peak RSS, per file
type. `make bench-gguf` runs it on the end-to-end bench's SmolLM2-shaped teacher:

    python3 benches/gguf_forward.py --bin target/release/taidcache \
        --teacher target/bench-e2e/v49152/teacher --corpus target/bench-e2e/v49152/corpus.jsonl \
        --work target/bench-gguf --out target/bench-results/gguf_forward.json

For each type it writes the teacher as a GGUF file with tests/python/gguf_fixture.py (the `gguf`
PyPI package), then runs `taidcache precompute --top-k 50 --dtype f32` on the corpus, --rounds
rounds with the order of the types rotating between rounds. Peak RSS is the child's ru_maxrss
(os.wait4). Types: f32 safetensors (the baseline), GGUF f32, q8_0, q4_0 (both multiplied
quantized by candle), q4_1 (dequantized at load on the CPU: candle has no vector kernel for it).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE = os.path.join(ROOT, "tests", "python", "gguf_fixture.py")
SUMMARY = re.compile(r"\((\d+) sequences, (\d+) tokens\).*?([\d.]+)s \(([\d.]+)s teacher\)")


def precompute(args, teacher, out_dir, env):
    cmd = [args.bin, "precompute", "--teacher", teacher, "--corpus", args.corpus, "--out", out_dir,
           "--top-k", "50", "--seq-len", str(args.seq_len), "--batch-size", "4", "--dtype", "f32"]
    if teacher.endswith(".gguf"):
        # The bench teacher's tokenizer (word-level) is not a byte-level BPE: given as a file.
        cmd += ["--tokenizer", os.path.join(args.teacher, "tokenizer.json")]
    subprocess.run(["rm", "-rf", out_dir], check=True)
    # Popen + wait4 by hand: communicate() reaps the child, which would lose its rusage.
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    m = SUMMARY.search(out)
    if not m:
        sys.exit(f"no summary line in the output of {' '.join(cmd)}:\n{out}")
    tokens, teacher_s = int(m.group(2)), float(m.group(4))
    return tokens / teacher_s, usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--teacher", required=True, help="Hugging Face directory (f32 safetensors, tokenizer.json)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", default="target/bench-gguf")
    ap.add_argument("--out", default="target/bench-results/gguf_forward.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="f32,q8_0,q4_0,q4_1")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))

    teachers = [("safetensors f32", args.teacher, None)]
    for ty in args.types.split(","):
        path = os.path.join(args.work, f"teacher-{ty}.gguf")
        if not os.path.exists(path):
            subprocess.run([sys.executable, FIXTURE, "write", args.teacher, path, "--type", ty,
                            "--no-tokenizer"], check=True, stdout=subprocess.DEVNULL)
        teachers.append((f"GGUF {ty}", path, path))

    results = {name: {"tps": [], "rss": []} for name, _, _ in teachers}
    for r in range(args.rounds):
        order = teachers[r % len(teachers):] + teachers[:r % len(teachers)]
        for name, path, _ in order:
            tps, rss = precompute(args, path, os.path.join(args.work, "cache"), env)
            results[name]["tps"].append(tps)
            results[name]["rss"].append(rss)
            print(f"round {r}: {name}: {tps:.1f} tokens/s, peak RSS {rss / 2**20:.0f} MiB", flush=True)

    base = statistics.median(results["safetensors f32"]["tps"])
    rows = []
    for name, path, gguf in teachers:
        size = (os.path.getsize(gguf) if gguf else
                sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors")))
        tps = statistics.median(results[name]["tps"])
        rss = max(results[name]["rss"])
        rows.append({"teacher": name, "file_bytes": size, "tokens_per_s": tps, "vs_f32": tps / base,
                     "peak_rss_bytes": rss, "rss_over_file": rss / size})
    print(f"\n| teacher | file MiB | tokens/s | vs f32 | peak RSS MiB | RSS / file |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['teacher']} | {row['file_bytes'] / 2**20:.0f} | {row['tokens_per_s']:.0f} | "
              f"{row['vs_f32']:.2f} | {row['peak_rss_bytes'] / 2**20:.0f} | {row['rss_over_file']:.2f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rounds": args.rounds, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
