#!/usr/bin/env python3
"""The memory plan's estimate against the measured peak resident memory, on the CPU.

Generates a random Llama teacher, a corpus and a student config (scripts/gpu_fixtures.py),
then runs `taidcache precompute` and `taidcache distill` (host and device step paths) once each
and compares the estimate each prints ("estimated peak memory on cpu: ...") with the process's
peak RSS (wait4's ru_maxrss). Prints a markdown table.

    python3 benches/memory_plan.py --bin target/release/taidcache [--work DIR]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu_fixtures  # noqa: E402

TEACHER = dict(vocab=32000, hidden=512, intermediate=1376, layers=6, heads=8, kv_heads=8)
STUDENT = dict(vocab=32000, hidden=256, intermediate=688, layers=4, heads=4, kv_heads=4)
SEQS, SEQ_LEN = 48, 512

UNITS = {"MiB": 1 << 20, "GiB": 1 << 30}


def run_measured(cmd, env=None):
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        log = os.open(cmd_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(devnull, 2)
        try:
            os.execve(cmd[0], cmd, env or os.environ)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    out = open(cmd_log).read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out}")
    return out, usage.ru_maxrss * 1024


def estimate(stdout):
    m = re.search(r"estimated peak memory on cpu: ([0-9.]+) (MiB|GiB)", stdout)
    if not m:
        sys.exit(f"no memory plan in the output:\n{stdout}")
    return float(m.group(1)) * UNITS[m.group(2)]


def main():
    global cmd_log
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/taidcache"))
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="memory-plan-")
    cmd_log = os.path.join(work, "stdout.log")
    teacher, student = os.path.join(work, "teacher"), os.path.join(work, "student")
    corpus, cache = os.path.join(work, "corpus.jsonl"), os.path.join(work, "cache")
    gpu_fixtures.write_teacher(teacher, TEACHER, use_torch=False)
    gpu_fixtures.write_student(student, STUDENT)
    gpu_fixtures.write_corpus(corpus, TEACHER["vocab"], SEQS, SEQ_LEN)
    rows = []
    out, rss = run_measured([a.bin, "precompute", "--teacher", teacher, "--corpus", corpus,
                             "--out", cache, "--seq-len", str(SEQ_LEN), "--batch-size", "4",
                             "--top-k", "50"])
    rows.append(("precompute, teacher 6 × 512, vocab 32,000, batch 4 × 512", estimate(out), rss))
    for path in ["host", "device"]:
        env = dict(os.environ, TAIDCACHE_STEP_PATH=path)
        run_out = os.path.join(work, f"run-{path}")
        out, rss = run_measured([a.bin, "distill", "--cache", cache, "--student", student,
                                 "--out", run_out, "--steps", "3", "--batch-size", "4",
                                 "--eval-every", "0", "--save-every", "0"], env)
        rows.append((f"distill ({path} path), student 4 × 256, batch 4 × 512", estimate(out), rss))
    print("| run | estimate | measured peak RSS | estimate / measured |")
    print("|---|---|---|---|")
    for what, est, rss in rows:
        print(f"| {what} | {est / (1 << 20):.0f} MiB | {rss / (1 << 20):.0f} MiB | {est / rss:.2f} |")


if __name__ == "__main__":
    main()
