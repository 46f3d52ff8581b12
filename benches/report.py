#!/usr/bin/env python3
"""Print the performance table from existing results (`make bench` runs everything first).

Inputs:
  target/criterion/<id>/new/{benchmark,estimates}.json   criterion medians (ns / iteration)
  target/criterion-1thread/...   the same, run with RAYON_NUM_THREADS=1
  target/bench-results/*.json   lists of {"name", "value", "unit"} (peers, storage, memory)
Output: the table on stdout and as Markdown in target/bench-results/table.md.
A row whose inputs are missing says "not run".
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")
CRITERION = TARGET / "criterion"
RESULTS = TARGET / "bench-results"
CRITERION_1T = TARGET / "criterion-1thread"  # `make bench`: RAYON_NUM_THREADS=1 CRITERION_HOME=...
NOT_RUN = "not run"


class Missing(Exception):
    pass


def load_criterion(home):
    """full_id -> (median ns per iteration, elements or bytes per iteration or None)."""
    out = {}
    for bench in home.glob("**/new/benchmark.json"):
        try:
            meta = json.loads(bench.read_text())
            est = json.loads((bench.parent / "estimates.json").read_text())
        except (OSError, ValueError):
            continue
        tp = meta.get("throughput") or {}
        out[meta["full_id"]] = (est["median"]["point_estimate"], next(iter(tp.values()), None))
    return out


def load_results():
    out = {}
    for f in sorted(RESULTS.glob("*.json")):
        try:
            entries = json.loads(f.read_text())
            for e in entries:
                out[e["name"]] = float(e["value"])
        except (OSError, ValueError, TypeError, KeyError) as err:
            print(f"warning: skipping {f}: {err}", file=sys.stderr)
    return out


CRIT = {"all": load_criterion(CRITERION), "1": load_criterion(CRITERION_1T)}
VALUES = load_results()


def ns(full_id, threads="all"):
    try:
        return CRIT[threads][full_id][0]
    except KeyError:
        raise Missing(full_id) from None


def rate(full_id, threads="all"):
    """Throughput elements per second of a criterion benchmark."""
    elems = CRIT[threads].get(full_id, (0, None))[1]
    if elems is None:
        raise Missing(full_id)
    return elems / (ns(full_id, threads) * 1e-9)


def value(name):
    try:
        return VALUES[name]
    except KeyError:
        raise Missing(name) from None


def t(x):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} ns"


def per_s(x, unit):
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{unit}/s"
    return f"{x:.3g} {unit}/s"


def yes(ok):
    return "yes" if ok else "no"


def cell(fn):
    try:
        return fn()
    except Missing:
        return NOT_RUN


# Each row: target, then functions giving ours, baseline, (ratio text, met).
def time_ratio(target, ours_id, base_id, goal):
    """ours / baseline in time; met when <= goal."""
    def ratio():
        r = ns(ours_id) / ns(base_id)
        return f"{r:.2f}", yes(r <= goal)
    return target, lambda: t(ns(ours_id)), lambda: t(ns(base_id)), ratio, f"≤ {goal:.2f}"


def rate_vs_peer(target, ours, peer, unit, goal=None):
    """ours / peer in throughput; met when >= goal (None: informational)."""
    def ratio():
        r = ours() / peer()
        return f"{r:.2f}", ("-" if goal is None else yes(r >= goal))
    return (target, lambda: per_s(ours(), unit), lambda: per_s(peer(), unit), ratio,
            "info" if goal is None else f"≥ {goal}")


def storage_rows(corpus):
    v = lambda enc, what: value(f"storage.{corpus}.{enc}.{what}")  # noqa: E731
    def bytes_base():
        found = {e: VALUES.get(f"storage.{corpus}.{e}.bytes_per_token") for e in ("plain", "raw")}
        if not any(x is not None for x in found.values()):
            raise Missing(corpus)
        return ", ".join(f"{e} {NOT_RUN if x is None else f'{x:.1f} B'}" for e, x in found.items())
    def bytes_ratio():
        c = v("compact", "bytes_per_token")
        try:
            r = f"{c / v('plain', 'bytes_per_token'):.2f} of plain"
        except Missing:
            r = "-"
        return r, yes(c <= 100)
    def kl_ratio():
        return "-", yes(v("compact", "kl_mean") <= 1e-3)
    return [
        (f"storage {corpus}: compact bytes/token", lambda: f"{v('compact', 'bytes_per_token'):.1f} B",
         bytes_base, bytes_ratio, "≤ 100 B"),
        (f"storage {corpus}: compact mean KL", lambda: f"{v('compact', 'kl_mean'):.2e}",
         lambda: f"plain {v('plain', 'kl_mean'):.2e}", kl_ratio, "≤ 1e-3"),
        (f"  storage {corpus}: steps (format v2) bytes/token, mean KL", lambda: f"{v('steps', 'bytes_per_token'):.1f} B",
         lambda: f"KL {v('steps', 'kl_mean'):.2e}", lambda: ("-", "-"), "info"),
    ]


def rows():
    rss = lambda g: value(f"memory.distill_peak_rss_{g}gb_mb")  # noqa: E731
    alloc = lambda s: value(f"memory.loss_peak_alloc_mb_{s}")  # noqa: E731

    def adamw_ratio():
        r = ns("adamw_step/candle_nn") / ns("adamw_step/fused")
        return f"{r:.2f}× faster", yes(r >= 3)

    def alloc_ratio():
        r = alloc("large") / alloc("small")
        return f"{r:.2f}", yes(r <= 1.1)

    def rss_ratio():
        d = rss(4) - rss(1)
        return f"{d:+.0f} MB", yes(d < 50)

    return [
        (f"top-k V=151,936 k=50: select / max pass ({os.cpu_count()} threads, paired rounds, medians)",
         lambda: f"{value('topk.paired.select_ms'):.2f} ms",
         lambda: f"{value('topk.paired.max_pass_ms'):.2f} ms",
         lambda: (f"{value('topk.paired.ratio'):.2f}", yes(value("topk.paired.ratio") <= 1.5)),
         "≤ 1.50"),
        time_ratio(f"  top-k V=151,936 k=50: select / max pass ({os.cpu_count()} threads, criterion groups)",
                   "topk/select/151936", "topk/max_pass/151936", 1.5),
        rate_vs_peer("top-k V=151,936 k=50: ours / numpy (1 thread)",
                     lambda: rate("topk/select/151936", threads="1"),
                     lambda: value("peer.numpy_topk.positions_per_s"), "pos"),
        ("  numpy argpartition alone (1 thread)", lambda: "-",
         lambda: per_s(value("peer.numpy_argpartition.positions_per_s"), "pos"),
         lambda: ("-", "-"), "info"),
        ("precompute: full / forward only (paired rounds, medians)",
         lambda: f"{value('precompute.paired.full_s'):.2f} s",
         lambda: f"{value('precompute.paired.forward_only_s'):.2f} s",
         lambda: (f"{value('precompute.paired.ratio'):.3f}", yes(value("precompute.paired.ratio") <= 1.10)),
         "≤ 1.10"),
        ("precompute: --tail-samples 16 / without (paired rounds, medians)",
         lambda: f"{value('precompute-draws.paired.draws_16_s'):.2f} s",
         lambda: f"{value('precompute-draws.paired.no_draws_s'):.2f} s",
         lambda: (f"{value('precompute-draws.paired.ratio'):.3f}", yes(value("precompute-draws.paired.ratio") <= 1.10)),
         "≤ 1.10"),
        time_ratio("  precompute: full / forward only (criterion groups, a minute apart)",
                   "precompute/full", "precompute/forward_only", 1.10),
        ("  precompute start-up (one-sequence run, included in full)", lambda: t(ns("precompute/startup")),
         lambda: "-", lambda: ("-", "-"), "info"),
        *storage_rows("synthetic"),
        ("  storage synthetic: information floor of the v2 layout (static models, benches/storage_floor.py)",
         lambda: f"{value('storage.synthetic.floor.bytes_per_token'):.1f} B",
         lambda: "-", lambda: ("-", "-"), "info"),
        *storage_rows("demo"),
        rate_vs_peer("loader: read_row_group_into / pyarrow (1 thread)",
                     lambda: rate("loader/read_row_group_into"),
                     lambda: value("peer.pyarrow_read.tokens_per_s"), "tok", goal=1),
        rate_vs_peer("loader: shuffled epoch, 1 loader thread / pyarrow",
                     lambda: rate("loader/epoch_shuffled/1"),
                     lambda: value("peer.pyarrow_read.tokens_per_s"), "tok"),
        rate_vs_peer("loader: shuffled epoch, 2 loader threads / pyarrow",
                     lambda: rate("loader/epoch_shuffled/2"),
                     lambda: value("peer.pyarrow_read.tokens_per_s"), "tok"),
        ("loader: data wait of a demo-student distill step", lambda: f"{value('loader.data_wait_percent'):.2f} %",
         lambda: "-", lambda: ("-", yes(value("loader.data_wait_percent") < 2)), "< 2 %"),
        ("AdamW step 5.1M params: fused vs candle-nn", lambda: t(ns("adamw_step/fused")),
         lambda: t(ns("adamw_step/candle_nn")), adamw_ratio, "≥ 3× faster"),
        ("student forward + backward, fused CPU ops / candle's ops (paired rounds, medians)",
         lambda: f"{value('student_step.paired.fused_s'):.3f} s",
         lambda: f"{value('student_step.paired.candle_s'):.3f} s",
         lambda: (f"{value('student_step.paired.ratio'):.2f}", "-"), "info"),
        time_ratio("TAID (student tail) / CE, V=151,936",
                   "loss_and_grad/taid-student/151936", "loss_and_grad/ce/151936", 1.3),
        time_ratio("TAID (student tail) / CE, V=32,000",
                   "loss_and_grad/taid-student/32000", "loss_and_grad/ce/32000", 1.3),
        time_ratio("TAID (sampled tail, 16 draws) / CE, V=151,936",
                   "loss_and_grad/taid-sampled/151936", "loss_and_grad/ce/151936", 1.3),
        time_ratio("TAID (sampled tail, 16 draws) / CE, V=32,000",
                   "loss_and_grad/taid-sampled/32000", "loss_and_grad/ce/32000", 1.3),
        ("loss peak alloc: large / small input", lambda: f"{alloc('large'):.3g} MB",
         lambda: f"{alloc('small'):.3g} MB", alloc_ratio, "≤ 1.10"),
        ("distill peak RSS: 4 GB vs 1 GB cache", lambda: f"{rss(4):.0f} MB",
         lambda: f"{rss(1):.0f} MB", rss_ratio, "< +50 MB"),
        *e2e_rows(),
    ]


def e2e_rows():
    """benches/end_to_end.py: taidcache / PyTorch + transformers, end to end, same threads."""
    out = []
    for work, what, goal in [("precompute", "precompute f32 (30-layer hidden-576 Llama, top-50)", 1.0),
                             ("precompute-bf16", "precompute --dtype bf16 against PyTorch f32", 1.5),
                             ("distill", "distill step kl (4-layer hidden-256 student, batch 4 × 256)", 1.5),
                             ("distill-bf16", "distill step kl --precision bf16 against PyTorch f32", 1.5),
                             ("distill-bf16-vs-autocast",
                              "distill step kl --precision bf16 against PyTorch bf16 autocast", None)]:
        for vocab in (49152, 151936):
            key = f"e2e.{work}.v{vocab}"
            out.append(rate_vs_peer(f"{what}, V={vocab:,}: taidcache / PyTorch",
                                    lambda key=key: value(f"{key}.ours_tokens_per_s"),
                                    lambda key=key: value(f"{key}.peer_tokens_per_s"), "tok", goal=goal))
    return out


def machine():
    try:
        info = dict(
            line.split(":", 1) for line in subprocess.run(
                ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cores = int(info["Core(s) per socket"]) * int(info.get("Socket(s)", "1"))
        return f"{info.get('Model name', '?')}, {cores} cores, {os.cpu_count()} CPUs"
    except (OSError, subprocess.CalledProcessError, KeyError, ValueError):
        return f"unknown CPU, {os.cpu_count()} CPUs"


def main():
    header = ["target", "ours", "baseline", "ratio", "goal", "met"]
    table = []
    for target, ours, base, ratio, goal in rows():
        try:
            r, met = ratio()
        except Missing:
            r, met = "-", NOT_RUN
        table.append([target, cell(ours), cell(base), r, goal, met])
    widths = [max(len(r[i]) for r in [header] + table) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    text = "\n".join([
        f"Machine: {machine()}",
        "Criterion medians, rayon default pool (all CPUs) unless a row says 1 thread; peers: 1 thread.",
        "",
        line(header),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *map(line, table),
    ])
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    (RESULTS / "table.md").write_text(f"# Benchmarks ({stamp})\n\n{text}\n")


if __name__ == "__main__":
    main()
