#!/usr/bin/env python3
"""PyTorch + transformers doing one `taidcache distill --objective kl` step, timed: the peer
scripts/gpu-check.sh compares distill's step time with.

    python3 benches/peers/torch_student.py --student DIR --cache CACHE --device cuda:0 \
        --batch-size 4 --steps 10 --out FILE

The student is `AutoModelForCausalLM.from_config` of DIR/config.json (f32, random init), the
batches the cache's rows in order. One step: the forward, a dense f32 `log_softmax` over the
vocabulary, the student's log-probs gathered at the cached top-k ids, the forward KL from the
cached teacher completed on its tail in the student's own tail shape (`--tail student`:
KL = Σ_k p_k (log p_k − log q_k) + e^τ (τ − log(1 − Σ_k q_k))), its token mean over unmasked
positions, backward, `clip_grad_norm_`, `torch.optim.AdamW` (fused on CUDA), zero_grad. After
`--warmup` untimed steps, `--steps` steps are timed with the device synchronized before the
clock stops; tokens/s and `torch.cuda.max_memory_allocated` go to FILE. `--autocast bf16` runs
the forward (and so its backward) under `torch.autocast` in bf16: PyTorch's mixed precision, what
`taidcache distill --precision bf16` is compared with beside the f32 loop.
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


def kl_student_tail(logits, ids, lp, tail, mask):
    """logits [b, s, V]; ids, lp [b, s, k]; tail, mask [b, s] -> scalar mean KL."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    lq = logq.gather(-1, ids)
    p = lp.exp()
    kl_top = (p * (lp - lq)).sum(-1)
    q_top = lq.exp().sum(-1).clamp(max=1 - 1e-7)
    kl_tail = tail.exp() * (tail - torch.log1p(-q_top))
    per_pos = (kl_top + kl_tail) * mask
    return per_pos.sum() / mask.sum().clamp(min=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--autocast", choices=["bf16"], default=None,
                    help="run the forward under torch.autocast in bf16 (f32 weights, moments and loss math)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.student)).float().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            fused=device.type == "cuda")
    cache = read_cache(args.cache)
    n, s, _ = cache["topk_ids"].shape
    cols = {
        "ids": torch.from_numpy(cache["input_ids"]),
        "top": torch.from_numpy(cache["topk_ids"]),
        "lp": torch.from_numpy(cache["topk_logprobs"]),
        "tail": torch.from_numpy(cache["tail_logmass"]),
        "mask": torch.from_numpy(cache["loss_mask"].astype(np.float32)),
    }

    def batch(i):
        rows = [(i * args.batch_size + j) % n for j in range(args.batch_size)]
        return {c: t[rows].to(device, non_blocking=True) for c, t in cols.items()}

    def step(i):
        b = batch(i)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            logits = model(input_ids=b["ids"]).logits
        loss = kl_student_tail(logits, b["top"], b["lp"], b["tail"], b["mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    losses = [float(step(i)) for i in range(args.warmup)]
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    last = None
    for i in range(args.warmup, args.warmup + args.steps):
        last = step(i)
    sync()
    seconds = time.perf_counter() - t0
    tokens = args.steps * args.batch_size * s
    report = {
        "torch": torch.__version__,
        "autocast": args.autocast,
        "device": str(device),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "seq_len": s,
        "steps_timed": args.steps,
        "seconds": seconds,
        "step_s": seconds / args.steps,
        "tokens_per_s": tokens / seconds,
        "first_losses": losses,
        "last_loss": float(last),
    }
    if device.type == "cuda":
        report["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        report["max_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
