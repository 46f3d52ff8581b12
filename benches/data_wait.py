#!/usr/bin/env python3
"""Data wait of a distill step on the demo student (target: under 2% of the run).

Runs the release `taidcache distill` on the demo's train cache and student (`make demo` makes
both) with the demo's flags (batch 8, TAID), for 60 steps, and reads the share of the run spent
waiting for the loader from distill's last line ("..., N% of the time waiting for data; ...").
Writes `target/bench-results/data_wait.json`.

    python3 benches/data_wait.py [--steps N]
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def main(argv):
    steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 60
    demo = ROOT / "demo-out"
    cache, student = demo / "caches" / "train", demo / "models" / "student-init"
    if not (cache / "manifest.json").exists() or not student.exists():
        sys.exit("data_wait: demo-out/ has no train cache or student; run `make demo` first")
    out = TARGET / "bench-data" / "data-wait"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(TARGET / "release" / "taidcache"), "distill", "--cache", str(cache),
           "--student", str(student), "--out", str(out), "--objective", "taid",
           "--steps", str(steps), "--batch-size", "8", "--lr", "3e-3",
           "--warmup", str(steps // 10), "--alpha", "5e-3"]
    print("$", " ".join(cmd), flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"data_wait: distill failed:\n{run.stderr}")
    text = run.stdout + run.stderr
    m = re.search(r"([0-9.]+) tokens/s, ([0-9.]+)% of the time waiting for data", text)
    if not m:
        sys.exit(f"data_wait: no data-wait figure in distill's output:\n{text}")
    tokens_s, share = float(m.group(1)), float(m.group(2))
    print(f"data wait: {share:.2f}% of the run ({tokens_s:.0f} tokens/s, {steps} steps)")
    results = TARGET / "bench-results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "data_wait.json").write_text(json.dumps([
        {"name": "loader.data_wait_percent", "value": share, "unit": "%"},
        {"name": "loader.demo_distill_tokens_per_s", "value": tokens_s, "unit": "tok/s"},
    ], indent=2))


if __name__ == "__main__":
    main(sys.argv)
