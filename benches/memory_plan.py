#!/usr/bin/env python3
"""The memory plan's estimate against the measured peak resident memory, on the CPU.

Generates a random Llama teacher, a corpus and a student config (scripts/gpu_fixtures.py),
then runs `taidcache precompute` and `taidcache distill` (host and device step paths, and the
host path with --recompute) once each
and compares the estimate each prints ("estimated peak memory on cpu: ...") with the process's
peak RSS (GNU time's %M). Prints a markdown table.

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
    """(stdout, peak RSS in bytes) of one command, measured by GNU time in a fresh process (a
    fork of this Python would count the interpreter's own pages)."""
    rss_file = os.path.join(os.path.dirname(cmd_log), "rss.txt")
    if not os.path.exists("/usr/bin/time"):
        sys.exit("benches/memory_plan.py needs GNU time at /usr/bin/time (Debian package `time`)")
    full = ["/usr/bin/time", "-o", rss_file, "-f", "%M"] + cmd
    proc = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    with open(rss_file) as f:
        kib = int(f.read().split()[-1])
    return proc.stdout, kib * 1024


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
    for path, extra in [("host", []), ("device", []), ("host", ["--recompute"])]:
        env = dict(os.environ, TAIDCACHE_STEP_PATH=path)
        run_out = os.path.join(work, f"run-{path}{''.join(extra)}")
        out, rss = run_measured([a.bin, "distill", "--cache", cache, "--student", student,
                                 "--out", run_out, "--steps", "3", "--batch-size", "4",
                                 "--eval-every", "0", "--save-every", "0"] + extra, env)
        what = f"distill ({path} path{', ' + ' '.join(extra) if extra else ''})"
        rows.append((f"{what}, student 4 × 256, batch 4 × 512", estimate(out), rss))
    print("| run | estimate | measured peak RSS | estimate / measured |")
    print("|---|---|---|---|")
    for what, est, rss in rows:
        print(f"| {what} | {est / (1 << 20):.0f} MiB | {rss / (1 << 20):.0f} MiB | {est / rss:.2f} |")


if __name__ == "__main__":
    main()
