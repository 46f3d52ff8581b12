#!/usr/bin/env python3
"""Independent numpy decoder for the DistillKit fixtures: the bit-exact formulas, checked.

    python3 tests/golden/distillkit/check_formulas.py

Decodes every NAME.parquet / recommended-packed.parquet with plain numpy following the formulas
below (no DistillKit, no torch) and requires bit-identical ids and log-probs to
NAME.expected.parquet (= DistillKit's decompress_to_sparse, torch 2.15 CPU, x86 AVX2/AVX512
kernels).  Then it compares other candidate evaluation orders and, when torch is installed,
sweeps torch's linspace / pow / sqrt / sum / cumsum against the formulas.

Formulas (torch 2.15 CPU, ATen CPU capability AVX2 or AVX512; "f32(.)" = round to float32,
"bf(.)" = round float32 to bfloat16, nearest-even):
  linspace(0, 1, t) float32: t == 1 -> [0]; step = f32(1 / (t-1));
      x_i = f32(step * i) for i < t // 2, else fma(-step, t-1-i, 1) (single rounding).
      (The ATEN_CPU_CAPABILITY=default kernel rounds twice: f32(1 - f32(step * (t-1-i))).)
  linspace bfloat16 / float16: bf(linspace float32) / f16(linspace float32).
  arange(t): exact integers i.
  pts**0 = 1, pts**1 = pts, pts**2 = pts*pts, pts**3 = (pts*pts)*pts (each product rounded in
      the term dtype; bf16: bf(bf(x*x)*x)); pts**e for e >= 4: float32 elements that torch
      computes in its vector loop (i < (t // 2V) * 2V, V = 8 lanes AVX2 / 16 AVX512) use
      Sleef_powf_u10 (not always correctly rounded; exceptions for integer bases below),
      the others std::pow(double) = correctly rounded; bf16: bf(correctly rounded float32).
  sqrt: float32 correctly rounded for integer bases < 267 (MKL vsSqrt; not always correctly
      rounded for other inputs); bf16: bf(correctly rounded float32 sqrt).
  fit: products P_j = c_j * X_j rounded to the term dtype; sum in float32 in torch's row_sum
      order (valid for <= 7 terms): acc_k = 0 + P_k for k < 4*(n//4) grouped by k % 4,
      remainder added to acc_0, then ((acc_0 + acc_1) + acc_2) + acc_3; rounded to the term
      dtype.  3 terms: (P0 + P1) + P2; 4: ((P0+P1)+P2)+P3; 6: ((((P0+P4)+P5)+P1)+P2)+P3.
  approx = f32(fit) + f32(round_out(residual)) rounded to promote(term, out) dtype.
  logprobs = cat(exact, approx) in promote(out, approx dtype);  delta: running float64 sum,
      rounded to float32 per element, then rounded to the exact dtype.
"""

import os
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["budget", "recommended", "readme", "bins", "bf16terms"]
f32 = np.float32
# Sleef_powf_u10 (torch vector loop, AVX2 and AVX512 alike) results for integer bases < 256
# that differ from the correctly rounded float32 value: {e: {i: value}}.
SLEEF_POW = {
    4: {69: 22667122, 73: 28398242, 138: 362673952, 141: 395254144, 146: 454371872,
        167: 777796288, 169: 815730688, 223: 2472973312, 225: 2562890496},
    5: {65: 1160290560, 130: 37129297920, 245: 882735185920},
    6: {33: 1291467904, 66: 82653945856, 132: 5289852534784},
}


def bf(a):
    u = np.asarray(a, dtype=f32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)).view(f32)


def to_dtype(a, dt):
    a = np.asarray(a, dtype=f32)
    if dt == "float16":
        return a.astype(np.float16).astype(f32)
    return bf(a) if dt == "bfloat16" else a


def promote(a, b):
    return a if a == b else "float32"


def from_bytes(b, dt):
    b = bytes(b)
    if dt == "bfloat16":
        return (np.frombuffer(b, dtype=np.uint16).astype(np.uint32) << 16).view(f32)
    return np.frombuffer(b, dtype={"float32": f32, "float16": np.float16}[dt]).astype(f32)


def unpack_bits(b, bits, n):
    s = "".join(f"{x:08b}" for x in b)
    return [int(s[i * bits:(i + 1) * bits], 2) for i in range(n)]


def cr_f32(q):
    """Correctly rounded float32 of an exact Fraction."""
    c = f32(float(q))
    cands = [np.nextafter(c, f32(-np.inf)), c, np.nextafter(c, f32(np.inf))]
    d = [abs(Fraction(float(v)) - q) for v in cands]
    best = [v for v, dd in zip(cands, d) if dd == min(d)]
    return [v for v in best if int(np.array([v]).view(np.uint32)[0]) % 2 == 0][0] if len(best) > 1 else best[0]


def linspace_f32(t, fma=True):
    if t == 1:
        return np.zeros(1, dtype=f32)
    step = f32(1) / f32(t - 1)
    out = []
    for i in range(t):
        if i < t // 2:
            out.append(f32(step * f32(i)))
        elif fma:
            out.append(f32(1.0 - float(step) * (t - 1 - i)))  # exact in float64, one rounding
        else:
            out.append(f32(f32(1) - f32(step * f32(t - 1 - i))))
    return np.array(out, dtype=f32)


def term_table(cfg, t, vec_lanes=16, sleef=True, lin_fma=True):
    dt, norm = cfg["term_dtype"], cfg.get("normalize_t", False)
    pts = linspace_f32(t, lin_fma) if norm else np.arange(t, dtype=f32)
    pts = to_dtype(pts, dt)
    cols = []
    for term in cfg["polynomial_terms"]:
        if term == "sqrt":
            x = np.sqrt(pts).astype(f32)
        elif term == 0:
            x = np.ones_like(pts)
        elif term == 1:
            x = pts
        elif term == 2:
            x = to_dtype(pts * pts, dt)
        elif term == 3:
            x = to_dtype(to_dtype(pts * pts, dt) * pts, dt)
        else:
            x = np.array([cr_f32(Fraction(float(p)) ** term) for p in pts], dtype=f32)
            if dt == "float32" and sleef:
                assert not norm, "Sleef powf on non-integer bases: not modelled"
                for i, v in SLEEF_POW[term].items():
                    if i < (t // (2 * vec_lanes)) * 2 * vec_lanes:
                        x[i] = v
        cols.append(to_dtype(x, dt))
    return np.stack(cols, axis=-1)


def fsum(p, order):
    n = len(p)
    if order == "torch":  # ATen SumKernel row_sum, ilp_factor 4 (valid for n <= 7)
        acc = [f32(0)] * 4
        for i in range(4 * (n // 4)):
            acc[i % 4] = f32(acc[i % 4] + p[i])
        for i in range(4 * (n // 4), n):
            acc[0] = f32(acc[0] + p[i])
        return f32(f32(f32(acc[0] + acc[1]) + acc[2]) + acc[3])
    s = f32(0) if order == "zero_left" else p[0]
    for x in (p if order == "zero_left" else p[1:]):
        s = f32(s + x)
    return s


def decode_entry(cfg, b, order="torch", round_products=True, bf16_each_add=False,
                 sleef=True, lin_fma=True, cumsum64=True):
    out_dt, term_dt = cfg["exact_dtype"], cfg["term_dtype"]
    k, ek = cfg["k"], cfg["exact_k"]
    t = k - ek
    w = {"float32": 4, "float16": 2, "bfloat16": 2}
    pos = ek * w[out_dt]
    exact = from_bytes(b[:pos], out_dt)
    terms = cfg["polynomial_terms"] or []
    coeffs = from_bytes(b[pos:pos + len(terms) * w[term_dt]], term_dt)
    pos += len(terms) * w[term_dt]
    res = []
    for binc in cfg["residual_bins"]:
        sdt, bits, n = binc["scale_dtype"], binc["element_bits"], binc["num_elements"]
        scale = from_bytes(b[pos:pos + w[sdt]], sdt)[0]
        pos += w[sdt]
        nb = (n * bits + 7) // 8
        q = np.array(unpack_bits(b[pos:pos + nb], bits, n), dtype=np.int64)
        pos += nb
        if bits == 1:
            res.append(((q.astype(f32) * f32(2) - f32(1)) * scale).astype(f32))
        else:
            res.append(((q - 2 ** (bits - 1)).astype(f32) * scale).astype(f32))
    residual = np.zeros(t, dtype=f32)
    if res:
        r = np.concatenate(res)
        residual[:len(r)] = r
    residual = to_dtype(residual, out_dt)
    if terms:
        X = term_table(cfg, t, sleef=sleef, lin_fma=lin_fma)
        fit = np.empty(t, dtype=f32)
        for i in range(t):
            prod = (X[i] * coeffs).astype(f32)
            if round_products:
                prod = to_dtype(prod, term_dt)
            if bf16_each_add:
                s = prod[0]
                for x in prod[1:]:
                    s = to_dtype(f32(s + x), term_dt)[()]
            else:
                s = fsum(prod, order)
            fit[i] = to_dtype(s, term_dt)[()]
        approx_dt = promote(term_dt, out_dt)
        approx = to_dtype(fit + residual, approx_dt)
    else:
        approx_dt, approx = out_dt, residual
    cat_dt = promote(out_dt, approx_dt)
    lp = to_dtype(np.concatenate([exact, approx]), cat_dt)
    if cfg["delta_encoding"]:
        if cumsum64:
            lp = np.cumsum(lp.astype(np.float64)).astype(f32)
        else:
            lp = np.array([fsum(lp[:i + 1], "left") for i in range(len(lp))], dtype=f32)
        lp = to_dtype(lp, out_dt)
    return lp


def decode_file(cfg, path, **kw):
    ids, lps = [], []
    vbits = int(np.ceil(np.log2(cfg["d"])))
    for row in pq.read_table(path).to_pylist():
        ri, rl = [], []
        for cl, bi in zip(row["compressed_logprobs"], row["bytepacked_indices"]):
            ri += unpack_bits(bi, vbits, cfg["k"])
            rl.append(decode_entry(cfg, cl, **kw))
        ids.append(np.array(ri, dtype=np.uint32))
        lps.append(np.concatenate(rl).astype(f32))
    return ids, lps


def compare(cfg, name, **kw):
    ids, lps = decode_file(cfg, os.path.join(HERE, f"{name}.parquet"), **kw)
    exp = pq.read_table(os.path.join(HERE, f"{name}.expected.parquet")).to_pydict()
    same_ids = all(np.array_equal(a, np.array(e, dtype=np.uint32)) for a, e in zip(ids, exp["ids"]))
    diff = sum(int((a.view(np.uint32) != np.array(e, dtype=f32).view(np.uint32)).sum())
               for a, e in zip(lps, exp["logprobs"]))
    total = sum(len(e) for e in exp["logprobs"])
    return same_ids, diff, total


def main():
    ok = True
    cfgs = {n: yaml.safe_load(open(os.path.join(HERE, f"{n}.yaml"))) for n in NAMES}
    for name in NAMES + ["recommended-packed"]:
        cfg = cfgs[name.split("-")[0]]
        same_ids, diff, total = compare(cfg, name)
        print(f"{name:20s} formulas: ids {'identical' if same_ids else 'DIFFER'}, "
              f"{diff} of {total} log-probs differ bitwise")
        ok &= same_ids and diff == 0
    print("candidate fit evaluations (log-probs differing bitwise from DistillKit):")
    for name in ["budget", "recommended", "readme", "bins", "bf16terms"]:
        cfg = cfgs[name]
        variants = {"left-to-right (P0+P1)+...": dict(order="left"),
                    "0.0 + P0 + P1 + ...": dict(order="zero_left")}
        if 4 in cfg["polynomial_terms"]:
            variants["x**4 correctly rounded (no Sleef table)"] = dict(sleef=False)
        if cfg.get("normalize_t"):
            variants["linspace without fma"] = dict(lin_fma=False)
        if cfg["delta_encoding"]:
            variants["cumsum as float32 running sum"] = dict(cumsum64=False)
        if cfg["term_dtype"] == "bfloat16":
            variants["products not rounded to bf16"] = dict(round_products=False)
            variants["sum rounded to bf16 after each add"] = dict(bf16_each_add=True)
        print(f"  {name}: " + "; ".join(f"{v}: {compare(cfg, name, **kw)[1]}" for v, kw in variants.items()))
    try:
        import torch
    except ImportError:
        print("torch not installed: sweeps skipped")
        return 0 if ok else 1
    torch.set_num_threads(1)
    cap = torch.backends.cpu.get_cpu_capability()
    bad = [t for t in range(1, 201) if not np.array_equal(
        torch.linspace(0, 1, steps=t, dtype=torch.float32).numpy().view(np.uint32),
        linspace_f32(t, fma=cap != "DEFAULT").view(np.uint32))]
        # the DEFAULT kernel matches fma=False
    bad_bf = [t for t in range(1, 201) if not np.array_equal(
        torch.linspace(0, 1, steps=t, dtype=torch.bfloat16).float().numpy().view(np.uint32),
        bf(linspace_f32(t, fma=cap != "DEFAULT")).view(np.uint32))]
    print(f"[{cap}] linspace t=1..200 mismatches: float32 {bad}, bfloat16 {bad_bf}")
    ok &= not bad and not bad_bf
    lanes = {"AVX512": 16, "AVX2": 8}.get(cap)
    for dt, tdt in [("float32", torch.float32), ("bfloat16", torch.bfloat16)]:
        for norm in [False, True]:
            terms = [0, 1, 2, 3, "sqrt"] + ([4, 5, 6] if dt == "bfloat16" or not norm else [])
            if dt == "float32" and norm:
                terms.remove("sqrt")  # MKL vsSqrt on non-integers: not modelled
            if lanes is None and dt == "float32" and not norm:
                terms = terms[:4] + ["sqrt"]  # the DEFAULT kernel's powf differs from Sleef
            bad = []
            for t in range(1, 201):
                pts = (torch.linspace(0, 1, steps=t, dtype=tdt) if norm else torch.arange(t, dtype=tdt))
                got = torch.stack([pts ** e if e != "sqrt" else torch.sqrt(pts) for e in terms], -1)
                cfg = {"term_dtype": dt, "normalize_t": norm, "polynomial_terms": terms}
                want = term_table(cfg, t, vec_lanes=lanes or 16, lin_fma=cap != "DEFAULT")
                if not np.array_equal(got.float().numpy().view(np.uint32), want.view(np.uint32)):
                    bad.append(t)
            print(f"[{cap}] {dt} {'linspace' if norm else 'arange'} terms {terms}, t=1..200: "
                  f"mismatching t: {bad}")
            ok &= not bad
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 128)) * np.exp(rng.uniform(-8, 3, (500, 128)))).astype(f32)
    c = torch.cumsum(torch.from_numpy(x), dim=-1).numpy()
    seq = np.empty_like(x)
    acc = np.zeros(500, dtype=f32)
    for i in range(128):
        acc = (acc + x[:, i]).astype(f32)
        seq[:, i] = acc
    print(f"[{cap}] cumsum float32: == float64 running sum rounded per element: "
          f"{np.array_equal(c, np.cumsum(x.astype(np.float64), axis=-1).astype(f32))}; "
          f"== float32 running sum: {np.array_equal(c, seq)}")
    for n in range(1, 8):
        a = (rng.standard_normal((2000, n)) * np.exp(rng.uniform(-10, 10, (2000, n)))).astype(f32)
        s = torch.sum(torch.from_numpy(a), dim=-1).numpy()
        mine = np.array([fsum(r, "torch") for r in a], dtype=f32)
        left = np.array([fsum(r, "left") for r in a], dtype=f32)
        print(f"[{cap}] torch.sum over {n} float32: == row_sum order {np.array_equal(s, mine)}, "
              f"== left-to-right {np.array_equal(s, left)}")
        ok &= np.array_equal(s, mine)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
