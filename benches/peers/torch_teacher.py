#!/usr/bin/env python3
"""PyTorch + transformers doing what `taidcache precompute` does, on the same teacher, the same
packed sequences and the same device: the reference for scripts/gpu-check.sh, and the peer it
times.

    python3 benches/peers/torch_teacher.py --teacher DIR --cache f32=CACHE --cache bf16=CACHE \
        --device cuda:0 --batch-size 8 --out-dir DIR

For each `--cache DTYPE=CACHE` (the cache taidcache wrote with `--dtype DTYPE`), the teacher
(`AutoModelForCausalLM.from_pretrained` in that dtype) runs on the cache's `input_ids`. Per batch: the logits in the forward dtype, then in f32 `log_softmax`, `topk`, and
the tail log-mass as `logsumexp` of the log-probs outside the top-k.

- Reference: `DIR/ref-DTYPE.npz`, the arrays scripts/gpu_fixtures.compare reads, for every
  position of every row: the exact model's log-probs at the cache's ids, its own
  top-k values and ids and its tail; for bf16 also PyTorch's bf16 log-probs at the cache's ids
  (`peer_lp_at_ours`). The exact model is the f32 forward of the weights as the run loaded
  them: f32 for f32, rounded to bf16 for bf16 — so that PyTorch's bf16 and taidcache's bf16
  are both measured against the model they approximate.
- Peer timing: after one warm-up batch, the forward, log-softmax, top-k, tail and the copy of
  the k ids, k log-probs and the tail to the host for every batch, device synchronized before
  the clock stops; tokens/s and `torch.cuda.max_memory_allocated` (weights included) go to
  `DIR/torch_teacher.json`.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from gpu_fixtures import read_cache  # noqa: E402

def load(teacher, dtype, device):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(teacher, dtype=dtype)
    except TypeError:  # transformers 4.x
        model = AutoModelForCausalLM.from_pretrained(teacher, torch_dtype=dtype)
    return model.to(device).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def select(model, ids, k):
    """What precompute computes: [b, s] ids -> top-k log-probs, ids and tail log-mass (f32)."""
    z = model(input_ids=ids).logits.float()
    lp = torch.log_softmax(z, dim=-1)
    vals, top = lp.topk(k, dim=-1)
    tail = lp.scatter(-1, top, float("-inf")).logsumexp(dim=-1)
    return z, lp, vals, top, tail


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--cache", action="append", required=True, help="DTYPE=CACHE (f32 or bf16)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--time-only", action="store_true",
                    help="only the timed peer run: no reference arrays (benches/end_to_end.py)")
    args = ap.parse_args()
    device = torch.device(args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    report = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": str(device), "runs": {}}
    if device.type == "cuda":
        report["device_name"] = torch.cuda.get_device_name(device)
    t0 = time.perf_counter()
    exact = load(args.teacher, torch.float32, device)
    sync(device)
    report["load_s"] = time.perf_counter() - t0
    for spec in sorted(args.cache, key=lambda c: c.startswith("bf16")):  # f32 first
        name, cache_dir = spec.split("=", 1)
        cache = read_cache(cache_dir)
        ids_all = torch.from_numpy(cache["input_ids"])
        ours_all = torch.from_numpy(cache["topk_ids"])
        n, s, k = cache["topk_ids"].shape
        if name == "bf16":
            # from_pretrained in bf16, as a user loads it (a cast of the f32 model would also
            # round the rotary frequencies, which transformers keeps in f32).
            peer = load(args.teacher, torch.bfloat16, device)
            with torch.no_grad():
                for p in exact.parameters():
                    p.copy_(p.to(torch.bfloat16).float())
        else:
            peer = exact
        batches = [slice(i, min(i + args.batch_size, n)) for i in range(0, n, args.batch_size)]
        parts = {}
        with torch.inference_mode():
            for b in ([] if args.time_only else batches):
                ids = ids_all[b].to(device)
                ours = ours_all[b].to(device)
                z, lp, vals, top, tail = select(exact, ids, k)
                got = {
                    "lp_at_ours": lp.gather(-1, ours),
                    "topk_vals": vals,
                    "topk_ids": top,
                    "tail": tail,
                }
                del z, lp
                if peer is not exact:
                    got["peer_lp_at_ours"] = select(peer, ids, k)[1].gather(-1, ours)
                for c, t in got.items():
                    parts.setdefault(c, []).append(t.reshape(-1, k).cpu().numpy() if t.dim() == 3 else t.reshape(-1).cpu().numpy())
            if parts:
                np.savez(os.path.join(args.out_dir, f"ref-{name}.npz"), **{c: np.concatenate(v) for c, v in parts.items()})

            # The peer: warm-up, then every batch, timed (alone on the device).
            if peer is not exact:
                exact.to("cpu")
            select(peer, ids_all[batches[0]].to(device), k)
            sync(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for b in batches:
                _, _, vals, top, tail = select(peer, ids_all[b].to(device), k)
                vals.cpu(), top.cpu(), tail.cpu()
            sync(device)
            seconds = time.perf_counter() - t0
        run = {
            "tokens": int(n * s),
            "seconds": seconds,
            "tokens_per_s": n * s / seconds,
            "batch_size": args.batch_size,
        }
        if device.type == "cuda":
            run["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            run["max_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        report["runs"][name] = run
        if peer is not exact:
            del peer
    with open(os.path.join(args.out_dir, "torch_teacher.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
