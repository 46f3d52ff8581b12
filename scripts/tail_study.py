#!/usr/bin/env python3
"""`make tail-study`: what the top-k's missing tail does to a student, and what tail draws fix.

One teacher (the demo's: a Llama trained with CE on 3,000 grammar documents, `taidcache demo`),
its caches of the students' 300 documents at top-k 8 and 50, each also with N = 4 and 16 tail
draws (`precompute --tail-samples N`), and a dense cache (k = vocabulary); held-out, one dense
cache, so every student's KL to the teacher is measured against the teacher's full distribution.
Students (one seeded init, the demo's size and schedule) learn from each cache with `kl` and
`taid`: top-k caches with every tail mode (`student`, `uniform`, `renorm`), draw caches with
`--tail sampled`, the dense cache as it is. Held-out CE, KL(teacher ‖ student), ECE (15 bins)
and top-1 agreement come from each run's last eval line; bytes per token from `inspect`.
Results go between the `<!-- results` and `<!-- /results -->` markers of the report.

Any failing command stops the script with the command and the tail of its stderr.
"""

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time

OBJECTIVES = ["kl", "taid"]
TOP_KS = [8, 50]
DRAWS = [4, 16]
TAILS = ["student", "uniform", "renorm"]
SEQ_LEN = 128
BATCH = 8
STEPS = 300
LR = "3e-3"
ALPHA = "2e-2"
ENCODING = "compact"


def run(cmd, log):
    log.write("$ " + " ".join(shlex.quote(str(c)) for c in cmd) + "\n")
    log.flush()
    p = subprocess.run([str(c) for c in cmd], stdout=log, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-10:])
        sys.exit(f"tail-study: `{' '.join(map(str, cmd))}` failed ({p.returncode}):\n{tail}")


def inspect(bin_, cache):
    p = subprocess.run([bin_, "inspect", cache, "--json"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def last_eval(run_dir):
    last = None
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if m.get("split") == "eval":
                last = m
    if last is None:
        sys.exit(f"tail-study: {run_dir}/metrics.jsonl has no eval line")
    return last


def mean_sd(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def cell(xs, digits=4):
    m, sd = mean_sd(xs)
    return f"{m:.{digits}f}" if math.isnan(sd) else f"{m:.{digits}f} ± {sd:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="the taidcache binary")
    ap.add_argument("--out", default="tail-study-out")
    ap.add_argument("--report", default="docs/tail-study.md")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the report from an earlier run's --out (results.json) without training")
    args = ap.parse_args()
    if args.render_only:
        return render(args)
    started = time.time()
    out = os.path.abspath(args.out)
    if os.path.exists(out) and os.listdir(out):
        sys.exit(f"tail-study: --out {out} is not empty; remove it or choose another directory")
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, "commands.log"), "w")
    bin_ = os.path.abspath(args.bin)

    # 1. The teacher: the demo's, with one `ce` student (the no-teacher baseline).
    base = os.path.join(out, "demo")
    sizes = os.path.join(out, "demo-sizes.json")
    with open(sizes, "w") as f:
        json.dump({"objectives": ["ce"], "seeds": args.seeds}, f)
    print("training the teacher (taidcache demo) ...", flush=True)
    run([bin_, "demo", "--out", base, "--sizes", sizes], log)
    teacher = os.path.join(base, "runs", "teacher", "final")
    init = os.path.join(base, "models", "student-init")
    corpus = os.path.join(base, "corpus", "students.jsonl")
    heldout = os.path.join(base, "corpus", "heldout.jsonl")
    vocab = json.load(open(os.path.join(teacher, "config.json")))["vocab_size"]
    ce_runs = [os.path.join(base, "runs", "ce" if args.seeds == 1 else f"ce-seed-{s}") for s in range(args.seeds)]

    # 2. Caches.
    caches = {}

    def precompute(name, corpus_file, k, draws):
        path = os.path.join(out, "caches", name)
        cmd = [bin_, "precompute", "--teacher", teacher, "--corpus", corpus_file, "--out", path,
               "--top-k", k, "--seq-len", SEQ_LEN, "--batch-size", BATCH, "--encoding", ENCODING]
        if draws:
            cmd += ["--tail-samples", draws]
        print(f"precompute {name} ...", flush=True)
        run(cmd, log)
        caches[name] = inspect(bin_, path)
        return path

    eval_cache = precompute("heldout-dense", heldout, vocab, 0)
    train = {}
    for k in TOP_KS:
        train[(k, 0)] = precompute(f"k{k}", corpus, k, 0)
        for n in DRAWS:
            train[(k, n)] = precompute(f"k{k}-n{n}", corpus, k, n)
    train[("dense", 0)] = precompute("dense", corpus, vocab, 0)

    # 3. Students.
    jobs = []
    for objective in OBJECTIVES:
        for k in TOP_KS:
            for tail in TAILS:
                jobs.append((objective, f"k{k}", tail, train[(k, 0)]))
            for n in DRAWS:
                jobs.append((objective, f"k{k}-n{n}", "sampled", train[(k, n)]))
        jobs.append((objective, "dense", "student", train[("dense", 0)]))
    results = {}
    for i, (objective, cache, tail, path) in enumerate(jobs):
        for seed in range(args.seeds):
            name = f"{objective}-{cache}-{tail}-seed-{seed}"
            run_dir = os.path.join(out, "runs", name)
            print(f"[{i + 1}/{len(jobs)}] distill {name} ...", flush=True)
            run([bin_, "distill", "--cache", path, "--student", init, "--out", run_dir,
                 "--objective", objective, "--tail", tail, "--steps", STEPS, "--batch-size", BATCH,
                 "--lr", LR, "--warmup", STEPS // 10, "--alpha", ALPHA, "--eval-cache", eval_cache,
                 "--eval-every", STEPS // 6, "--seed", seed], log)
            results.setdefault((objective, cache, tail), []).append(last_eval(run_dir))
    ce_evals = [last_eval(r) for r in ce_runs]
    elapsed = time.time() - started
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"vocab": vocab, "elapsed_s": elapsed, "ce": ce_evals,
                   "runs": [{"key": list(k), "evals": v} for k, v in results.items()]}, f, indent=1)
    write_report(args, caches, results, ce_evals, vocab, elapsed)


def render(args):
    """The report from the results.json and the caches of an earlier run."""
    out = os.path.abspath(args.out)
    saved = json.load(open(os.path.join(out, "results.json")))
    bin_ = os.path.abspath(args.bin)
    caches = {name: inspect(bin_, os.path.join(out, "caches", name))
              for name in os.listdir(os.path.join(out, "caches"))}
    results = {tuple(r["key"]): r["evals"] for r in saved["runs"]}
    write_report(args, caches, results, saved["ce"], saved["vocab"], saved["elapsed_s"])


def write_report(args, caches, results, ce_evals, vocab, elapsed):
    get = lambda evals, key: [e[key] for e in evals]  # noqa: E731
    bpt = lambda name: caches[name]["bytes_per_token"]  # noqa: E731
    lines = []
    lines.append(
        f"Teacher vocabulary {vocab}; mean top-k mass of the students' cache: "
        + ", ".join(f"k = {k}: {caches[f'k{k}']['mean_topk_mass']:.4f}" for k in TOP_KS)
        + f". {args.seeds} seed(s) per row (init and data order), mean ± sd; {STEPS} steps each; "
        f"`{ENCODING}` caches. Wall time {elapsed / 60:.1f} min on {platform.processor() or platform.machine()} "
        f"({os.cpu_count()} CPUs).")
    lines.append("")
    lines.append("| objective | cache | tail | bytes / token | held-out CE | KL(teacher ‖ student) | ECE | top-1 agreement |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for (objective, cache, tail), evals in results.items():
        lines.append(
            f"| {objective} | {cache} | {tail} | {bpt(cache):.1f} | {cell(get(evals, 'ce'))} | "
            f"{cell(get(evals, 'kl_teacher'))} | {cell(get(evals, 'ece'))} | {cell(get(evals, 'top1_agreement'))} |")
    lines.append(
        f"| ce (no teacher) | | | | {cell(get(ce_evals, 'ce'))} | {cell(get(ce_evals, 'kl_teacher'))} | "
        f"{cell(get(ce_evals, 'ece'))} | {cell(get(ce_evals, 'top1_agreement'))} |")
    lines.append("")
    # The acceptance figure: at k = 50, N = 16 (and at k = 8, where the tail is larger), the
    # share of the gap between the student-tail top-k cache and the dense cache that the draws
    # close, per objective. A gap within the seeds' spread is said to be one.
    for k in TOP_KS:
        for objective in OBJECTIVES:
            base = results[(objective, f"k{k}", "student")]
            dense = results[(objective, "dense", "student")]
            drawn = results[(objective, f"k{k}-n16", "sampled")]
            for key, what in [("kl_teacher", "held-out KL"), ("ece", "ECE")]:
                (b, bsd), (d, dsd), (s_, ssd) = (mean_sd(get(x, key)) for x in (base, dense, drawn))
                noise = max(x for x in (bsd, dsd) if not math.isnan(x)) if args.seeds > 1 else 0.0
                head = (f"- `{objective}`, k = {k}, {what}: student tail {b:.4f}, dense {d:.4f}, "
                        f"{k} + 16 draws {s_:.4f}")
                gap = b - d
                if gap <= 2 * noise:
                    lines.append(head + f": the dense cache is not better than the student tail by more "
                                        f"than twice the seeds' spread ({gap:+.4f} against {noise:.4f}); "
                                        "no gap to close.")
                else:
                    lines.append(head + f": the draws close {100 * (b - s_) / gap:.0f}% of the gap.")
    extra = bpt("k50-n16") - bpt("k50")
    lines.append(f"- 16 draws cost {extra:.1f} bytes / token over the top-50 cache ({ENCODING} encoding).")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.report) as f:
        report = f.read()
    start, end = "<!-- results -->", "<!-- /results -->"
    if start not in report or end not in report:
        sys.exit(f"tail-study: {args.report} has no {start} … {end} markers")
    head, rest = report.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(args.report, "w") as f:
        f.write(head + start + "\n" + text + end + tail)
    with open(os.path.join(os.path.abspath(args.out), "results.json"), "w") as f:
        json.dump({" ".join(k): v for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
