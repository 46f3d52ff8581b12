"""Fit the polynomial of taidcache's vector exp (src/precompute/topk/portable.rs, `exp_le0`).

exp(r) = 1 + r + r^2 * p(r) on [-ln2/2, ln2/2] with p of degree 3, fitted by iteratively
reweighted least squares on the relative error of exp (a near-minimax fit), then evaluated in
float32 arithmetic as the Rust code does. Prints the float32 coefficients (highest first, as the
Horner scheme in the code uses them) and the maximum relative error.

    python3 benches/exp_fit.py
"""
import numpy as np

DEG = 3
r = np.cos(np.linspace(0, np.pi, 4001)) * np.log(2) / 2
f = np.where(np.abs(r) < 1e-6, 0.5, (np.exp(r) - 1 - r) / np.where(r == 0, 1, r) ** 2)
w = r**2 / np.exp(r)
A = np.vstack([r**i for i in range(DEG + 1)]).T
c, *_ = np.linalg.lstsq(A * w[:, None], f * w, rcond=None)
for _ in range(50):
    err = (A @ c - f) * w
    ww = w * (np.abs(err) / np.abs(err).max() + 0.1)
    c, *_ = np.linalg.lstsq(A * ww[:, None], f * ww, rcond=None)
c32 = c.astype(np.float32)

rr = np.linspace(-np.log(2) / 2, np.log(2) / 2, 200_001).astype(np.float32)
p = np.float32(0)
for ci in c32[::-1]:
    p = p * rr + ci
e = p * (rr * rr) + rr + np.float32(1)
rel = np.abs(e.astype(np.float64) / np.exp(rr.astype(np.float64)) - 1).max()
print("coefficients, highest degree first:", [f"{x:.7e}" for x in c32[::-1]])
print(f"max relative error in float32: {rel:.3e}")
