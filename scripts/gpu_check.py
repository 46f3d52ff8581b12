#!/usr/bin/env python3
"""The GPU check (scripts/gpu-check.sh runs this): taidcache against PyTorch on one device, one
command, one JSON report.

    python3 scripts/gpu_check.py [--device cuda:0|cpu] [--bin PATH] [--out DIR] [--work DIR]

1. A random Llama teacher (hidden 2048, 16 layers, vocab 32,000 on a GPU; hidden 64, 2 layers,
   vocab 512 for `--device cpu`), its word-level tokenizer, a JSONL corpus packing into exactly
   256 × 512 tokens (16 × 128 on cpu), and a student config (scripts/gpu_fixtures.py).
2. On a GPU, a smoke run first: precompute of the cpu-sized teacher on the device (does the
   binary load its libraries, does the driver take its kernels), which also warms the
   driver's kernel cache so that the timed runs do not pay for it.
3. `taidcache precompute` on the device in f32 and in bf16, compared with PyTorch's
   log-softmax top-k of the same model on the same device (benches/peers/torch_teacher.py), or,
   where torch is not importable, with an f64 numpy forward: ids equal except ties, log-probs
   within 2e-3 of the f32 forward (f32), and for bf16 within max(2e-2, 1.5 × PyTorch's own bf16
   error) of the f32 forward of the bf16-rounded weights, each beyond the stored f16's rounding
   (gpu_fixtures.compare says why).
4. `taidcache distill --objective kl`, 30 steps on the device, and the same 30 steps on the cpu
   with TAIDCACHE_STEP_PATH=device (the device step path on the CPU backend), same seed; the
   loss curves from each run's metrics.jsonl compared step by step (relative difference).
5. Throughput: precompute tokens/s (tokens over the seconds its teacher thread ran, the model
   load left out) and a distill step's tokens/s (median step time after the first five) against
   PyTorch doing the same work (benches/peers/torch_teacher.py, torch_student.py); peak GPU
   memory by polling nvidia-smi for taidcache and torch.cuda.max_memory_allocated for PyTorch.
6. OUT/gpu-check.json (rewritten after every step, so a run cut short still leaves what it
   did), OUT/gpu-check.log (every command and its output), and both runs' metrics.jsonl.

Exit status 0 when every check passes; otherwise the last line names the failed checks. Every
step has a share of a time budget (`--budget-s`, 450 s by default: under the device tool's
8 minutes with room for the transfers); a step that would not fit is recorded as failed.
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gpu_fixtures as fx  # noqa: E402

# Sizes per device kind. On a GPU: a 0.84B-parameter teacher (3.4 GB of f32 weights, written
# once, loaded by taidcache twice and by PyTorch once) over 256 × 512 tokens, so that the bf16
# precompute's teacher time (printed to 0.1 s) is over a second; a 4-layer, hidden-256 student
# (16M parameters, most of them the 32,000-row embedding and head), since its 30 steps also run
# on the GPU machine's CPU (about 10 s a step on 2 busy cores here). Estimated 3 minutes in
# all on an H100, never run there yet.
SIZES = {
    "cuda": {
        "teacher": {"vocab": 32000, "hidden": 2048, "intermediate": 5632, "layers": 16, "heads": 32, "kv_heads": 4},
        "seqs": 256, "seq_len": 512, "batch_size": 8, "top_k": 50,
        "student": {"vocab": 32000, "hidden": 256, "intermediate": 704, "layers": 4, "heads": 4, "kv_heads": 2},
        "distill_steps": 30, "distill_batch": 4, "peer_steps": 10,
    },
    "cpu": {
        "teacher": {"vocab": 512, "hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2},
        "seqs": 16, "seq_len": 128, "batch_size": 4, "top_k": 50,
        "student": {"vocab": 512, "hidden": 32, "intermediate": 64, "layers": 2, "heads": 4, "kv_heads": 2},
        "distill_steps": 30, "distill_batch": 2, "peer_steps": 5,
    },
}
LOGPROB_TOL = {"f32": 2e-3, "bf16": 2e-2}
# Loss curves: on the dry run both runs are on the CPU and must agree as issue 20 item 2 asks
# of the device path (1e-5); CUDA against CPU is f32 with other summation orders, over 30
# AdamW steps.
LOSS_RTOL = {"cuda": 1e-3, "cpu": 1e-5}
DISTILL_LR = 1e-3
SEED = 7


# What a few CUDA errors mean here, appended to the failure's sentence.
HINTS = [
    ("UNSUPPORTED_PTX_VERSION", " (the kernels' PTX is newer than this driver takes: build the bundle with an nvcc no newer than the driver's CUDA)"),
    ("JIT_COMPILER_NOT_FOUND", " (this driver cannot compile PTX: candle's kernels are shipped as PTX)"),
    ("NO_BINARY_FOR_GPU", " (the bundle's kernels are not for this GPU's compute capability)"),
    ("error while loading shared libraries", " (a CUDA library is missing: see cuda_library_dirs in the report)"),
]


class Failure(Exception):
    """A step failed; the message is the one sentence the report and the last line carry."""


class Check:
    def __init__(self, args):
        self.args = args
        self.started = time.monotonic()
        self.kind = "cuda" if args.device.startswith("cuda") else "cpu"
        self.sizes = json.loads(json.dumps(SIZES[self.kind]))
        if args.sizes:
            with open(args.sizes) as f:
                self.sizes.update(json.load(f))
        self.env = dict(os.environ)
        self.report = {
            "pass": None,
            "device": args.device,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_s": args.budget_s,
            "sizes": self.sizes,
            "versions": {},
            "checks": {},
            "timings": {},
            "memory": {},
            "skipped": {},
        }
        os.makedirs(args.out, exist_ok=True)
        self.log = open(os.path.join(args.out, "gpu-check.log"), "w")

    # --- plumbing -------------------------------------------------------------------------------

    def remaining(self):
        return self.args.budget_s - (time.monotonic() - self.started)

    def say(self, msg):
        line = f"[{time.monotonic() - self.started:6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def save(self):
        self.report["wall_s"] = round(time.monotonic() - self.started, 1)
        path = os.path.join(self.args.out, "gpu-check.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.report, f, indent=2)
        os.replace(path + ".tmp", path)

    def run(self, what, cmd, env=None, timeout=None, poll_gpu=False):
        """Run `cmd`; its output goes to the log. Returns (stdout+stderr, seconds, peak GPU bytes
        above the level before it started, or None). Raises Failure with one sentence."""
        budget = self.remaining() - 15
        timeout = min(timeout or budget, budget)
        if timeout < 5:
            raise Failure(f"{what}: no time left in the {self.args.budget_s:.0f} s budget")
        self.say(f"$ {' '.join(cmd)}")
        poller = GpuMemory(self.gpu_index()) if poll_gpu and self.kind == "cuda" else None
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout, cwd=ROOT)
            out, rc = proc.stdout.decode(errors="replace"), proc.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"").decode(errors="replace"), None
        except OSError as e:
            raise Failure(f"{what}: could not start {cmd[0]} ({e.strerror})")
        finally:
            peak = poller.stop() if poller else None
        seconds = time.monotonic() - t0
        self.log.write(out + ("" if out.endswith("\n") else "\n"))
        self.say(f"  ({seconds:.1f} s, exit {rc})")
        if rc is None:
            raise Failure(f"{what}: still running after {timeout:.0f} s (the budget's share), stopped")
        if rc != 0:
            hint = next((h for pattern, h in HINTS if pattern in out), "")
            raise Failure(f"{what}: exit status {rc}: {last_error_line(out)}{hint}")
        return out, seconds, peak

    def gpu_index(self):
        return int(self.args.device.split(":")[1]) if ":" in self.args.device else 0

    def step(self, name, fn, *a):
        """Run one step; a failure is recorded under checks[name] (the caller decides whether
        the later steps still make sense). A bug of this script is a failure too, with its
        traceback in the log."""
        try:
            return fn(*a)
        except Failure as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - the report must still be written
            import traceback
            self.log.write(traceback.format_exc())
            error = f"the check itself failed ({type(e).__name__}: {e}); traceback in gpu-check.log"
        finally:
            self.save()
        self.say(f"FAIL {name}: {error}")
        self.report["checks"][name] = {"pass": False, "error": error}
        self.save()
        return None

    # --- steps ----------------------------------------------------------------------------------

    def environment(self):
        v = self.report["versions"]
        v["python"] = platform.python_version()
        for pkg in ["numpy", "pyarrow", "torch", "transformers", "safetensors"]:
            v[pkg] = package_version(pkg)
        out, _, _ = self.run("taidcache --version", [self.args.bin, "--version"], timeout=30)
        v["taidcache"] = out.strip()
        if os.path.exists(self.args.build):
            with open(self.args.build) as f:
                self.report["bundle"] = json.load(f)
        if self.kind == "cuda":
            try:
                smi = subprocess.run(
                    ["nvidia-smi", "-i", str(self.gpu_index()), "--query-gpu=name,driver_version,memory.total",
                     "--format=csv,noheader"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                raise Failure("nvidia-smi did not answer: no NVIDIA driver on this machine?")
            if smi.returncode != 0:
                raise Failure(f"nvidia-smi found no GPU {self.gpu_index()}: {smi.stdout.decode().strip()}")
            name, driver, mem = [x.strip() for x in smi.stdout.decode().strip().split(",")]
            self.report["device_name"], v["driver"], self.report["device_memory"] = name, driver, mem
        else:
            self.report["device_name"] = platform.processor() or platform.machine()
        self.torch = (importlib.util.find_spec("torch") is not None
                      and importlib.util.find_spec("transformers") is not None)
        self.say(f"device {self.report['device_name']}; torch {v['torch']}, transformers {v['transformers']}")

    def libraries(self):
        """The bundle links CUDA dynamically (cudarc `dynamic-linking`): libcuda.so.1 from the
        driver; libcublas.so.13 (which loads libcublasLt.so.13), libcurand.so.10 and
        libcudart.so.13 from PyTorch's pip `nvidia-*` wheels. Their folders go on
        LD_LIBRARY_PATH, and ldd must then find everything."""
        dirs = cuda_library_dirs()
        self.env["LD_LIBRARY_PATH"] = ":".join(dirs + [p for p in self.env.get("LD_LIBRARY_PATH", "").split(":") if p])
        self.report["cuda_library_dirs"] = dirs
        try:
            ldd = subprocess.run(["ldd", self.args.bin], env=self.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=30).stdout.decode()
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Failure(f"ldd could not read {self.args.bin} ({e})")
        self.log.write(ldd)
        missing = sorted({m.group(1) for m in re.finditer(r"^\s*(\S+) => not found", ldd, re.M)})
        found = {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\S+) => (/\S+)", ldd, re.M)}
        self.report["libraries"] = {n: p for n, p in found.items() if re.match(r"lib(cu|nvrtc)", n)}
        if missing:
            raise Failure(f"{self.args.bin} needs {', '.join(missing)}, not found in the driver's folders "
                          f"or in {', '.join(dirs) or 'any pip nvidia-* package'}")
        self.report["checks"]["libraries"] = {"pass": True, "found": self.report["libraries"]}

    def fixtures(self):
        work, s = self.args.work, self.sizes
        marker = os.path.join(work, ".taidcache-gpu-check")
        if os.path.isdir(work) and os.listdir(work) and not os.path.exists(marker):
            raise Failure(f"--work {work} holds files this check did not write; give an empty or new folder")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        open(marker, "w").close()
        self.teacher = os.path.join(work, "teacher")
        shape = dict(s["teacher"], seq_len=s["seq_len"])
        t0 = time.monotonic()
        out, _, _ = self.run("generating the teacher", [
            sys.executable, os.path.join(HERE, "gpu_fixtures.py"), "teacher", "--out", self.teacher,
            "--shape", json.dumps(shape), "--device", self.args.device if self.torch else "cpu",
        ], timeout=120)
        drawn = json.loads(out.strip().splitlines()[-1])["weights_drawn_with"]
        self.corpus = os.path.join(work, "corpus.jsonl")
        docs, size = fx.write_corpus(self.corpus, s["teacher"]["vocab"], s["seqs"], s["seq_len"])
        self.student = os.path.join(work, "student")
        fx.write_student(self.student, dict(s["student"], seq_len=s["seq_len"]))
        weights = os.path.getsize(os.path.join(self.teacher, "model.safetensors"))
        self.report["fixtures"] = {
            "teacher_params": sum(int(np.prod(shp)) for _, shp in fx.tensor_shapes(fx.config_json(shape))),
            "teacher_bytes": weights, "weights_drawn_with": drawn, "corpus_documents": docs,
            "corpus_bytes": size, "tokens": s["seqs"] * s["seq_len"], "seconds": round(time.monotonic() - t0, 1),
        }
        self.say(f"teacher {weights / 2**30:.2f} GiB ({drawn}), corpus {docs} documents, {size / 1024:.0f} KiB")

    def smoke(self):
        """The cpu-sized teacher on the device, f32 then bf16: a failure here is about the
        binary, its libraries or the driver, not about sizes; and the driver compiles candle's
        PTX once here, into its cache, outside the timed runs."""
        work = os.path.join(self.args.work, "smoke")
        shape = dict(SIZES["cpu"]["teacher"], seq_len=128)
        fx.write_teacher(os.path.join(work, "teacher"), shape, use_torch=False)
        fx.write_corpus(os.path.join(work, "corpus.jsonl"), shape["vocab"], 8, 128)
        for dtype in ["f32", "bf16"]:
            self.run(f"smoke precompute ({dtype}) on {self.args.device}", [
                self.args.bin, "precompute", "--teacher", os.path.join(work, "teacher"),
                "--corpus", os.path.join(work, "corpus.jsonl"), "--out", os.path.join(work, f"cache-{dtype}"),
                "--seq-len", "128", "--batch-size", "4", "--dtype", dtype, "--device", self.args.device,
            ], timeout=180)
        self.report["checks"]["smoke"] = {"pass": True}

    def precompute(self, dtype):
        s = self.sizes
        cache = os.path.join(self.args.work, f"cache-{dtype}")
        out, seconds, peak = self.run(f"precompute ({dtype})", [
            self.args.bin, "precompute", "--teacher", self.teacher, "--corpus", self.corpus, "--out", cache,
            "--seq-len", str(s["seq_len"]), "--batch-size", str(s["batch_size"]), "--top-k", str(s["top_k"]),
            "--dtype", dtype, "--device", self.args.device,
        ], poll_gpu=True)
        m = re.search(r"\((\d+) sequences, (\d+) tokens\).*?([\d.]+)s \(([\d.]+)s teacher\)", out)
        if not m:
            raise Failure(f"precompute ({dtype}): its summary line was not found in its output")
        tokens, teacher_s = int(m.group(2)), float(m.group(4))
        self.report["timings"][f"precompute_{dtype}"] = {
            "tokens": tokens, "wall_s": round(seconds, 2), "elapsed_s": float(m.group(3)), "teacher_s": teacher_s,
            "tokens_per_s": tokens / max(teacher_s, 1e-9),
        }
        if peak is not None:
            self.report["memory"][f"precompute_{dtype}_peak_bytes"] = peak
        setattr(self, f"cache_{dtype}", cache)

    def reference(self):
        """Reference arrays for both caches: PyTorch on the device, or numpy f64 on the CPU."""
        dtypes = [d for d in ["f32", "bf16"] if hasattr(self, f"cache_{d}")]
        if not dtypes:
            raise Failure("no precompute cache to compare (both precompute runs failed)")
        refs = {}
        if self.torch:
            out_dir = os.path.join(self.args.work, "torch-teacher")
            cmd = [sys.executable, os.path.join(ROOT, "benches", "peers", "torch_teacher.py"), "--teacher", self.teacher,
                   "--device", self.args.device, "--batch-size", str(self.sizes["batch_size"]), "--out-dir", out_dir]
            for d in dtypes:
                cmd += ["--cache", f"{d}={getattr(self, f'cache_{d}')}"]
            self.run("PyTorch reference and peer (precompute)", cmd, timeout=240)
            with open(os.path.join(out_dir, "torch_teacher.json")) as f:
                peer = json.load(f)
            for d in dtypes:
                with np.load(os.path.join(out_dir, f"ref-{d}.npz")) as z:
                    refs[d] = {n: z[n] for n in z.files}
                run = peer["runs"][d]
                t = self.report["timings"].get(f"precompute_{d}")
                self.report["timings"][f"peer_precompute_{d}"] = run
                if t:
                    t["vs_pytorch"] = t["tokens_per_s"] / run["tokens_per_s"]
                if "max_memory_allocated_bytes" in run:
                    self.report["memory"][f"pytorch_precompute_{d}_max_allocated_bytes"] = run["max_memory_allocated_bytes"]
            reference = "pytorch " + peer["torch"]
            self.report["versions"]["torch_cuda"] = peer.get("torch_cuda")
        else:
            for d in dtypes:
                cache = fx.read_cache(getattr(self, f"cache_{d}"))
                n, s, k = cache["topk_ids"].shape
                parts = []
                for i in range(n):
                    z = fx.numpy_logits(self.teacher, cache["input_ids"][i:i + 1], d)[0]
                    parts.append(fx.reference_arrays(z, cache["topk_ids"][i], k))
                refs[d] = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
            reference = "numpy"
            self.report["skipped"]["peer_precompute"] = "skipped: torch not importable"
        for d in dtypes:
            result = fx.compare(fx.read_cache(getattr(self, f"cache_{d}")), refs[d], LOGPROB_TOL[d], d)
            prec = "f64" if reference.startswith("numpy") else "f32"
            result["reference"] = f"{reference}: the {prec} forward of the weights" + (" rounded to bf16" if d == "bf16" else "")
            self.report["checks"][f"precompute_{d}_vs_reference"] = result
            self.say(f"precompute {d} vs {reference}: {'pass' if result['pass'] else 'FAIL'} "
                     f"(max |Δ| {result['ours_vs_exact']['max']:.2e}, bound {result['bound']:.2e} + half an f16 step; "
                     f"ids exact {result['ids_exact_fraction']:.4f}, ties {result['ids_tie_swaps']}, "
                     f"not ties {result['ids_not_ties']})")

    def distill(self, where):
        """`where`: 'device' (--device as given) or 'cpu-device-path' (cpu, TAIDCACHE_STEP_PATH=device)."""
        if not hasattr(self, "cache_f32"):
            raise Failure("no f32 cache to distill from (precompute f32 failed)")
        s = self.sizes
        run_dir = os.path.join(self.args.work, f"run-{where}")
        device = self.args.device if where == "device" else "cpu"
        env = dict(self.env)
        if where == "cpu-device-path":
            env["TAIDCACHE_STEP_PATH"] = "device"
            if self.kind == "cuda":
                # The binary runs candle's element-wise ops on one thread unless told otherwise;
                # on the GPU machine's 16 cores this run is the check's longest step.
                env.setdefault("CANDLE_NUM_THREADS", str(os.cpu_count() or 1))
        _, seconds, peak = self.run(f"distill ({where})", [
            self.args.bin, "distill", "--cache", self.cache_f32, "--student", self.student, "--out", run_dir,
            "--objective", "kl", "--steps", str(s["distill_steps"]), "--batch-size", str(s["distill_batch"]),
            "--lr", str(DISTILL_LR), "--seed", str(SEED), "--device", device,
        ], env=env, poll_gpu=(where == "device"))
        lines = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        shutil.copy(os.path.join(run_dir, "metrics.jsonl"), os.path.join(self.args.out, f"metrics-{where}.jsonl"))
        if len(lines) != s["distill_steps"]:
            raise Failure(f"distill ({where}): metrics.jsonl has {len(lines)} training lines, not {s['distill_steps']}")
        steps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(lines, lines[1:])][4:]
        tokens = lines[1]["tokens"] - lines[0]["tokens"]
        step_s = statistics.median(steps) if steps else float("nan")
        self.report["timings"][f"distill_{where}"] = {
            "steps": len(lines), "wall_s": round(seconds, 2), "tokens_per_step": tokens,
            "median_step_s": step_s, "tokens_per_s": tokens / step_s,
        }
        if peak is not None:
            self.report["memory"]["distill_peak_bytes"] = peak
        setattr(self, f"losses_{where.replace('-', '_')}", [l["loss"] for l in lines])

    def compare_losses(self):
        a, b = getattr(self, "losses_device", None), getattr(self, "losses_cpu_device_path", None)
        if a is None or b is None:
            raise Failure("a distill run is missing, so there are no two loss curves to compare")
        rel = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)]
        tol = LOSS_RTOL[self.kind]
        worst = max(range(len(rel)), key=rel.__getitem__)
        self.report["checks"]["distill_loss_curve"] = {
            "pass": max(rel) <= tol, "max_rel_diff": max(rel), "at_step": worst + 1, "rtol": tol,
            "device_losses": a, "cpu_device_path_losses": b,
            "note": "the current binary may ignore TAIDCACHE_STEP_PATH (then the cpu run is the native CPU path)",
        }
        self.say(f"loss curves {self.args.device} vs cpu device path: max relative difference {max(rel):.2e} "
                 f"at step {worst + 1} (tolerance {tol:g})")

    def peer_distill(self):
        if not self.torch:
            self.report["skipped"]["peer_distill"] = "skipped: torch not importable"
            return
        s, out = self.sizes, os.path.join(self.args.work, "torch_student.json")
        self.run("PyTorch peer (distill step)", [
            sys.executable, os.path.join(ROOT, "benches", "peers", "torch_student.py"), "--student", self.student,
            "--cache", self.cache_f32, "--device", self.args.device, "--batch-size", str(s["distill_batch"]),
            "--steps", str(s["peer_steps"]), "--lr", str(DISTILL_LR), "--out", out,
        ], timeout=180)
        with open(out) as f:
            peer = json.load(f)
        self.report["timings"]["peer_distill"] = peer
        ours = self.report["timings"].get("distill_device")
        if ours:
            ours["vs_pytorch"] = ours["tokens_per_s"] / peer["tokens_per_s"]
        if "max_memory_allocated_bytes" in peer:
            self.report["memory"]["pytorch_distill_max_allocated_bytes"] = peer["max_memory_allocated_bytes"]

    # --- the whole check ------------------------------------------------------------------------

    def main(self):
        self.say(f"gpu-check on {self.args.device} with {self.args.bin}; report in {self.args.out}/gpu-check.json")
        if self.kind == "cuda":
            self.step("libraries", self.libraries)
            if not self.report["checks"]["libraries"]["pass"]:
                return self.finish()
        self.step("environment", self.environment)
        if "environment" in self.report["checks"]:
            return self.finish()
        self.step("fixtures", self.fixtures)
        if "fixtures" in self.report["checks"]:
            return self.finish()
        if self.kind == "cuda":
            self.step("smoke", self.smoke)
            if not self.report["checks"]["smoke"]["pass"]:
                return self.finish()
        for dtype in ["f32", "bf16"]:
            self.step(f"precompute_{dtype}", self.precompute, dtype)
        self.step("reference", self.reference)
        for where in ["device", "cpu-device-path"]:
            self.step(f"distill_{where}", self.distill, where)
        self.step("distill_loss_curve", self.compare_losses)
        if hasattr(self, "cache_f32"):
            self.step("peer_distill", self.peer_distill)
        return self.finish()

    def finish(self):
        failed = [n for n, c in self.report["checks"].items() if not c.get("pass")]
        self.report["pass"] = not failed and bool(self.report["checks"])
        self.report["failed"] = failed
        self.save()
        self.log.close()
        t = self.report["timings"]
        for name in ["precompute_f32", "precompute_bf16", "distill_device"]:
            if name in t:
                vs = t[name].get("vs_pytorch")
                print(f"  {name}: {t[name]['tokens_per_s']:.0f} tokens/s" + (f" ({vs:.2f}x PyTorch)" if vs else ""))
        for name, why in self.report["skipped"].items():
            print(f"  {name}: {why}")
        wall, report = self.report["wall_s"], os.path.join(self.args.out, "gpu-check.json")
        if failed:
            print(f"gpu-check: FAIL ({', '.join(failed)}) in {wall:.0f} s; see {report}")
        else:
            print(f"gpu-check: every check passed in {wall:.0f} s; report in {report}")
        passed = len(self.report["checks"]) - len(failed)
        print(f"gpu-check: {passed} passed, {len(failed)} failed, {len(self.report['skipped'])} skipped")
        return 1 if failed else 0


class GpuMemory:
    """Peak `memory.used` of one GPU while a command runs, by polling nvidia-smi every 100 ms,
    minus the level before it started (this process holds no CUDA context)."""

    def __init__(self, index):
        self.peak = self.base = None
        cmd = ["nvidia-smi", "-i", str(index), "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        try:
            self.base = int(subprocess.run(cmd, stdout=subprocess.PIPE, timeout=10).stdout.split()[0])
            self.proc = subprocess.Popen(cmd + ["-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired, IndexError, ValueError):
            self.proc = None
            return
        self.peak = self.base
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.peak = max(self.peak, int(line.strip()))
            except ValueError:
                pass

    def stop(self):
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait()
        self.thread.join(timeout=5)
        return (self.peak - self.base) * 2**20


def cuda_library_dirs():
    """Folders of PyTorch's pip CUDA libraries (nvidia/cu13/lib in the CUDA 13 wheels,
    nvidia/<name>/lib in older ones), then a system toolkit's; TAIDCACHE_CUDA_LIB_DIRS
    (colon-separated) first when set."""
    import glob
    import site

    wanted = ("libcublas.so.", "libcublasLt.so.", "libcurand.so.", "libcudart.so.", "libnvrtc.so.")
    dirs = [d for d in os.environ.get("TAIDCACHE_CUDA_LIB_DIRS", "").split(":") if d]
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    candidates = []
    for root in roots:
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
    candidates += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
    for d in candidates:
        if d not in dirs and os.path.isdir(d) and any(f.startswith(wanted) for f in os.listdir(d)):
            dirs.append(os.path.realpath(d))
    # libcuda.so.1 is the driver's: normally in the loader's cache already; these where not.
    for d in ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"]:
        if os.path.exists(os.path.join(d, "libcuda.so.1")):
            dirs.append(d)
    return list(dict.fromkeys(dirs))


def read_metrics(path):
    if not os.path.exists(path):
        raise Failure(f"{path} was not written")
    with open(path) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    return [l for l in lines if "split" not in l and l.get("loss") is not None]


def package_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def last_error_line(out):
    """The line of a failed command's output that says why: taidcache's `error: …`, a Python
    exception (`XError: …`), a Rust panic; else the last line that mentions an error."""
    lines = [l.strip() for l in out.strip().splitlines() if l.strip()]
    for pattern in [r"^error: ", r"^[\w.]*(Error|Exception): ", r"panicked at", r"(?i)error"]:
        for l in reversed(lines):
            if re.search(pattern, l):
                return l[:400]
    return (lines[-1] if lines else "no output")[:400]


def unpack(xz, build):
    """make gpu-bundle ships the binary xz-compressed (70 MiB stripped, over the device tool's
    64 MiB): unpack it into the temporary folder, checked against BUILD.json's sha256."""
    import hashlib
    import lzma
    import tempfile

    out = os.path.join(tempfile.gettempdir(), "taidcache-gpu-bundle", "taidcache")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        with lzma.open(xz) as src, open(out + ".tmp", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    except (OSError, lzma.LZMAError) as e:
        sys.exit(f"gpu-check: {xz} could not be unpacked ({e}); run `make gpu-bundle` again.")
    want = json.load(open(build)).get("binary_sha256") if os.path.exists(build) else None
    with open(out + ".tmp", "rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") else hashlib.sha256(f.read()).hexdigest()
    if want and got != want:
        sys.exit(f"gpu-check: {xz} unpacks to a binary whose sha256 is not BUILD.json's; run `make gpu-bundle` again.")
    os.chmod(out + ".tmp", 0o755)
    os.replace(out + ".tmp", out)
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda:0", help="cuda:N (the check) or cpu (a dry run, small sizes)")
    ap.add_argument("--bin", default="gpu-bundle/taidcache", help="the taidcache binary (default: make gpu-bundle's)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out",
                    help="where the report goes ($OUT when set, else gpu-check-out/)")
    ap.add_argument("--work", default=None, help="scratch folder for the teacher and caches (default: a temporary one)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="seconds the whole check may take")
    ap.add_argument("--sizes", help="a JSON file overriding keys of the sizes (teacher, seqs, seq_len, ...)")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        ap.exit(2, f"gpu-check: --device {args.device!r} is not cpu or cuda:N.\n")
    args.build = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "BUILD.json")
    if not os.path.exists(args.bin) and os.path.isfile(args.bin + ".xz"):
        args.bin = unpack(args.bin + ".xz", args.build)
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        hint = " (nor its .xz: run `make gpu-bundle` where Rust is, and carry gpu-bundle/)" if "gpu-bundle" in args.bin else ""
        ap.exit(2, f"gpu-check: {args.bin} is not an executable file{hint}.\n")
    args.bin = os.path.abspath(args.bin)
    args.out = os.path.abspath(args.out)
    if args.work is None:
        import tempfile
        args.work = os.path.join(tempfile.gettempdir(), "taidcache-gpu-check")
    return args


if __name__ == "__main__":
    sys.exit(Check(parse_args(sys.argv[1:])).main())
