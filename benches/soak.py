#!/usr/bin/env python3
"""Kill-and-resume soak: SIGKILL `precompute` and `distill` at random moments, resume each with
the same command until it completes, and compare the result with an uninterrupted run byte for
byte. Python 3 standard library only; drives a built binary.

    python3 benches/soak.py [--bin /work/mytarget/release/taidcache] [--kills 50] [--seed 0]

The fixture is the binary's own `demo` at tiny sizes (a trained one-layer teacher, a JSONL corpus
and a student config), so nothing is downloaded. Compared:

- precompute: every `shards/*.parquet` byte for byte, and `manifest.json` as JSON (no field
  differs between a resumed and an uninterrupted run: the manifest holds no times or process
  ids, and the teacher, corpus and output paths are the same).
- distill: `final/*` byte for byte, and `metrics.jsonl` line for line without `elapsed_s` (wall
  time since the run (re)started: the only field that legitimately differs).

Anything else in the directories (lock files, `*.tmp` leftovers, checkpoints) is ignored, so
the soak keeps working when those change. Exit status 1 on any mismatch or failed run.
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SIZES = {
    "train_docs": 300,
    "heldout_docs": 20,
    "vocab_size": 256,
    "seq_len": 64,
    "teachers": [{"layers": 1, "hidden": 32}],
    "teacher_steps": 5,
    "teacher_lr": 3e-3,
    "student": {"layers": 1, "hidden": 32},
    "objectives": ["taid"],
    "student_steps": 5,
    "student_lr": 3e-3,
    "batch_size": 4,
    "top_k": 8,
    "seed": 0,
}
# Resumes that may be killed again before one is left to finish.
MAX_KILLS_PER_TRIAL = 4


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def check(p, what):
    if p.returncode != 0:
        sys.exit(f"soak: {what} failed (exit {p.returncode}):\n{p.stderr}")


def files_under(root, rel):
    out = {}
    base = os.path.join(root, rel)
    if os.path.isdir(base):
        for name in sorted(os.listdir(base)):
            path = os.path.join(base, name)
            if os.path.isfile(path) and not name.startswith(".") and not name.endswith(".tmp"):
                with open(path, "rb") as f:
                    out[f"{rel}/{name}"] = f.read()
    return out


def cache_result(cache):
    """(shard bytes by name, manifest as JSON)."""
    with open(os.path.join(cache, "manifest.json")) as f:
        manifest = json.load(f)
    shards = {k: v for k, v in files_under(cache, "shards").items() if k.endswith(".parquet")}
    return shards, manifest


def run_result(out):
    """(final/ bytes by name, metrics lines without elapsed_s)."""
    lines = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                m = json.loads(line)
                m.pop("elapsed_s", None)
                lines.append(m)
    return files_under(out, "final"), lines


def diff(a, b):
    """What differs between two results, in words (empty when equal)."""
    (fa, ja), (fb, jb) = a, b
    problems = []
    for name in sorted(set(fa) | set(fb)):
        if fa.get(name) != fb.get(name):
            problems.append(f"{name} differs" if name in fa and name in fb else f"{name} missing")
    if ja != jb:
        if isinstance(ja, dict):
            keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k))
            problems.append("manifest.json fields differ: " + ", ".join(keys))
        else:
            problems.append(f"metrics differ ({len(ja)} vs {len(jb)} lines)")
    return problems


def precompute_phase(cache, total_shards):
    """Where a kill landed, from what is on disk: no manifest yet, a third of the shards, ..."""
    try:
        with open(os.path.join(cache, "manifest.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return "before the first shard"
    if m.get("complete"):
        return "after completion"
    third = min(2, 3 * len(m["shards"]) // max(total_shards, 1))
    return ["first third of shards", "second third", "last third"][third]


def distill_phase(out, steps):
    ckpt = os.path.join(out, "checkpoints")
    saved = [d for d in os.listdir(ckpt) if d.startswith("step-") and d[5:].isdigit()] \
        if os.path.isdir(ckpt) else []
    if os.path.exists(os.path.join(out, "final", "model.safetensors")):
        return "after final/ was written"
    if not saved:
        return "before the first checkpoint"
    last = max(int(d.split("-")[1]) for d in saved)
    third = min(2, 3 * last // steps)
    return ["first third of steps", "second third", "last third"][third]


def soak(name, kills, rng, ref_seconds, start, result, phase):
    """`kills` trials: start, SIGKILL at a random moment (uniform over the reference run's
    duration), resume until it exits 0; compare with the reference."""
    stats = {"kills": 0, "resumes": 0, "mismatches": 0, "phases": {}, "t0": time.time()}
    trial = 0
    while stats["kills"] < kills:
        trial += 1
        out, reference = start(trial, fresh=True)
        killed_this_trial = 0
        attempt = 0
        while True:
            cmd = start(trial, fresh=False, attempt=attempt)
            attempt += 1
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            kill = killed_this_trial < MAX_KILLS_PER_TRIAL and stats["kills"] < kills and (
                killed_this_trial == 0 or rng.random() < 0.5
            )
            if kill:
                try:
                    p.wait(timeout=rng.uniform(0.0, 1.1 * ref_seconds))
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    stats["kills"] += 1
                    killed_this_trial += 1
                    where = phase(out)
                    stats["phases"][where] = stats["phases"].get(where, 0) + 1
                    stats["resumes"] += 1
                    continue
            else:
                p.wait()
            err = p.stderr.read()
            if p.returncode != 0:
                print(f"{name} trial {trial}: exit {p.returncode}: {err.strip()}", file=sys.stderr)
                stats["mismatches"] += 1
                break
            problems = diff(result(out), reference)
            if problems:
                stats["mismatches"] += 1
                print(f"{name} trial {trial}: " + "; ".join(problems), file=sys.stderr)
            break
        shutil.rmtree(out, ignore_errors=True)
    stats["wall"] = time.time() - stats["t0"]
    stats["trials"] = trial
    return stats


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_bin = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "taidcache")
    ap.add_argument("--bin", default=default_bin, help="the taidcache binary (release)")
    ap.add_argument("--kills", type=int, default=50, help="SIGKILLs of each command")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--steps", type=int, default=30, help="distill steps")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed)")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        sys.exit(f"soak: {binary} is not an executable; build it with `cargo build --release --locked` or pass --bin")
    rng = random.Random(args.seed)
    work = args.work or tempfile.mkdtemp(prefix="taidcache-soak-")
    os.makedirs(work, exist_ok=True)
    t_start = time.time()

    sizes = os.path.join(work, "sizes.json")
    with open(sizes, "w") as f:
        json.dump(SIZES, f)
    demo = os.path.join(work, "demo")
    shutil.rmtree(demo, ignore_errors=True)
    check(run([binary, "demo", "--out", demo, "--sizes", sizes]), "the demo fixture")
    teacher = os.path.join(demo, "runs", "teacher", "final")
    corpus = os.path.join(demo, "corpus", "train.jsonl")
    student = os.path.join(demo, "models", "student-init")

    def precompute_cmd(out):
        return [binary, "precompute", "--teacher", teacher, "--corpus", corpus, "--out", out,
                "--top-k", "8", "--seq-len", "64", "--shard-rows", "8"]

    ref_cache = os.path.join(work, "ref-cache")
    shutil.rmtree(ref_cache, ignore_errors=True)
    t0 = time.time()
    check(run(precompute_cmd(ref_cache)), "the reference precompute")
    pre_seconds = time.time() - t0
    pre_ref = cache_result(ref_cache)
    total_shards = len(pre_ref[0])

    def distill_cmd(out, resume):
        return [binary, "distill", "--cache", ref_cache, "--student", student, "--out", out,
                "--steps", str(args.steps), "--batch-size", "4", "--lr", "3e-3",
                "--save-every", "1", "--eval-every", "5", "--eval-fraction", "0.1"] + (
                    ["--resume"] if resume else [])

    ref_run = os.path.join(work, "ref-run")
    shutil.rmtree(ref_run, ignore_errors=True)
    t0 = time.time()
    check(run(distill_cmd(ref_run, False)), "the reference distill")
    dis_seconds = time.time() - t0
    dis_ref = run_result(ref_run)

    pre_out = os.path.join(work, "cache")

    def pre_start(trial, fresh, attempt=0):
        if fresh:
            shutil.rmtree(pre_out, ignore_errors=True)
            return pre_out, pre_ref
        # The same command resumes: precompute finds the manifest and continues after it.
        return precompute_cmd(pre_out)

    dis_out = os.path.join(work, "run")

    def dis_start(trial, fresh, attempt=0):
        if fresh:
            shutil.rmtree(dis_out, ignore_errors=True)
            return dis_out, dis_ref
        if attempt == 0:
            return distill_cmd(dis_out, False)
        ckpt = os.path.join(dis_out, "checkpoints")
        if os.path.isdir(ckpt) and os.listdir(ckpt):
            return distill_cmd(dis_out, True)
        # Killed before the first checkpoint: nothing to resume, start over as a user would.
        shutil.rmtree(dis_out, ignore_errors=True)
        return distill_cmd(dis_out, False)

    results = [
        ("precompute", soak("precompute", args.kills, rng, pre_seconds, pre_start, cache_result,
                            lambda out: precompute_phase(out, total_shards))),
        ("distill", soak("distill", args.kills, rng, dis_seconds, dis_start, run_result,
                         lambda out: distill_phase(out, args.steps))),
    ]

    print(f"cpu: {cpu_model()} ({os.cpu_count()} cpus); binary {binary}")
    print(f"reference: precompute {pre_seconds:.1f} s ({total_shards} shards), "
          f"distill {dis_seconds:.1f} s ({args.steps} steps, a checkpoint every step)")
    print()
    print("| command | trials | kills | resumes | mismatches | wall s |")
    print("|---|---|---|---|---|---|")
    for name, s in results:
        print(f"| {name} | {s['trials']} | {s['kills']} | {s['resumes']} | {s['mismatches']} | {s['wall']:.0f} |")
    print()
    for name, s in results:
        phases = ", ".join(f"{k}: {v}" for k, v in sorted(s["phases"].items(), key=lambda kv: -kv[1]))
        print(f"{name} kills by phase: {phases}")
    print(f"total wall time {time.time() - t_start:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    bad = sum(s["mismatches"] for _, s in results)
    if bad:
        print(f"soak: {bad} mismatches", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
