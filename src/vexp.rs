//! `exp` over a row of f32 logits, 16 or 8 lanes at a time: the two passes over the vocabulary
//! that every training position makes (the row's log-sum-exp and the gradient) are a scalar
//! `expf` call per logit otherwise, a tenth of a CPU distill step.
//!
//! [`exp`] is Cephes' `expf` (range reduction by `n·ln 2` in two parts, a degree-6 polynomial on
//! `|r| ≤ ln2/2`, `2ⁿ` built in the exponent bits): within 2 ulp of `f32::exp` from −86.99
//! (2⁻¹²⁵) up, 0 below it, +∞ above it, NaN kept. It is branch-free, so the
//! loops below vectorize; each has one copy per instruction set (`#[target_feature]`) chosen at
//! run time, as the top-k kernels are, and a portable copy elsewhere.
//!
//! The same exponential serves the teacher's forward on the CPU: the attention softmax and the
//! MLP's `silu(gate) · up` ([`crate::model::cpu_ops`]).

/// Below this `exp` is 0 (results under 2⁻¹²⁵, which the exponent construction below cannot
/// build; normal f32 go down to 2⁻¹²⁶).
const LOW: f32 = -86.99;
/// Above this `exp` is +∞.
const HIGH: f32 = 88.722_83;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `1.5·2²³`: adding it rounds an f32 of magnitude below 2²² to an integer, in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// ln 2 = C1 + C2, C1 exact in a few bits, so `x − n·C1` is exact.
const C1: f32 = 0.693_359_4;
const C2: f32 = -2.121_944_4e-4;

/// e^x, branch-free (see the module documentation for its accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(LOW, HIGH);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // n ∈ [−125, 128], so n + 126 ∈ [1, 254] sits in the low mantissa bits of n + ROUND + 126;
    // shifted to the exponent field it is the f32 2ⁿ⁻¹ (2ⁿ itself overflows at n = 128).
    let scale = f32::from_bits((n + (ROUND + 126.0)).to_bits() << 23);
    let y = e * scale * 2.0;
    let y = if x < LOW { 0.0 } else { y };
    let y = if x > HIGH { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Elements whose exponentials are computed (in vector code) before they are added.
const BLOCK: usize = 256;
/// Independent accumulators of a reduction whose order is free (one AVX-512 register of f32).
const LANES: usize = 16;

/// `(Σ e, Σ x, Σ e·x, Σ e_c)` over `xs`, with `e = exp(x − max)` and `e_c = exp(c·(x − max))`
/// (`c`: 0 skips the last sum). The exponentials of a block are computed at once; the sums then
/// run in element order, as the candle ops of the device path add them, so that the two step
/// paths agree to the last bits that Adam's normalization would magnify.
#[inline(always)]
fn sums_body(xs: &[f32], max: f32, c: f32) -> [f32; 4] {
    let mut acc = [0f32; 4];
    let (mut e, mut ec) = ([0f32; BLOCK], [0f32; BLOCK]);
    let scaled = c != 0.0;
    for block in xs.chunks(BLOCK) {
        let n = block.len();
        for (d, &x) in e[..n].iter_mut().zip(block) {
            *d = exp(x - max);
        }
        if scaled {
            for (d, &x) in ec[..n].iter_mut().zip(block) {
                *d = exp(c * (x - max));
            }
        }
        for j in 0..n {
            acc[0] += e[j];
            acc[1] += block[j];
            acc[2] += e[j] * block[j];
            acc[3] += ec[j];
        }
    }
    acc
}

/// `dst[i] = exp(src[i] − shift) · mul`.
#[inline(always)]
fn scaled_body(src: &[f32], shift: f32, mul: f32, dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = exp(x - shift) * mul;
    }
}

/// `out = softmax(scale · xs)`.
#[inline(always)]
fn softmax_body(xs: &[f32], scale: f32, out: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    for (j, &x) in chunks.remainder().iter().enumerate() {
        lanes[j] = lanes[j].max(x);
    }
    for ch in chunks {
        for j in 0..LANES {
            lanes[j] = lanes[j].max(ch[j]);
        }
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sums = [0f32; LANES];
    let mut outs = out.chunks_exact_mut(LANES);
    let mut ins = xs.chunks_exact(LANES);
    for (o, x) in (&mut outs).zip(&mut ins) {
        for j in 0..LANES {
            o[j] = exp(scale * (x[j] - max));
            sums[j] += o[j];
        }
    }
    for (j, (o, &x)) in outs
        .into_remainder()
        .iter_mut()
        .zip(ins.remainder())
        .enumerate()
    {
        *o = exp(scale * (x - max));
        sums[j] += *o;
    }
    let inv = 1.0 / sums.iter().sum::<f32>();
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// `out = silu(gate) · up`, with `silu(g) = g / (1 + e^−g)`.
#[inline(always)]
fn silu_mul_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// One public function per kernel: a copy of `$body` compiled for AVX-512 and one for AVX2 on
/// x86-64, chosen at run time, else the portable one.
macro_rules! kernel {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use kernel;

kernel! {
    /// `(Σ e, Σ x, Σ e·x, Σ e_c)` over `xs` with `e = exp(x − max)`, `e_c = exp(c·(x − max))`;
    /// the last is 0 when `c` is 0.
    pub fn sums_with(xs: &[f32], max: f32, c: f32) -> [f32; 4] = sums_body;
}

/// The backward of `out = silu(gate) · up` given `g = ∂/∂out`: `d_up = g · silu(gate)`,
/// `d_gate = g · up · σ(gate) · (1 + gate · (1 − σ(gate)))`.
#[inline(always)]
fn silu_mul_grad_body(gate: &[f32], up: &[f32], g: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    for ((((dg, du), &x), &u), &g) in d_gate
        .iter_mut()
        .zip(d_up.iter_mut())
        .zip(gate)
        .zip(up)
        .zip(g)
    {
        let s = 1.0 / (1.0 + exp(-x));
        *du = g * x * s;
        *dg = g * u * s * (1.0 + x * (1.0 - s));
    }
}

/// The backward of `y = softmax(scale · x)` given `g = ∂/∂y`: `scale · y · (g − Σ g·y)`.
#[inline(always)]
fn softmax_grad_body(y: &[f32], g: &[f32], scale: f32, out: &mut [f32]) {
    let mut lanes = [0f32; LANES];
    let (yc, gc) = (y.chunks_exact(LANES), g.chunks_exact(LANES));
    for (j, (&a, &b)) in yc.remainder().iter().zip(gc.remainder()).enumerate() {
        lanes[j] += a * b;
    }
    for (a, b) in yc.zip(gc) {
        for j in 0..LANES {
            lanes[j] += a[j] * b[j];
        }
    }
    let dot: f32 = lanes.iter().sum();
    for ((o, &a), &b) in out.iter_mut().zip(y).zip(g) {
        *o = scale * a * (b - dot);
    }
}

kernel! {
    /// The backward of [`silu_mul`] (all five of one length).
    pub fn silu_mul_grad_unchecked(gate: &[f32], up: &[f32], g: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) = silu_mul_grad_body;
}

kernel! {
    /// The backward of [`softmax`] (all three of one length).
    pub fn softmax_grad_unchecked(y: &[f32], g: &[f32], scale: f32, out: &mut [f32]) = softmax_grad_body;
}

kernel! {
    /// `dst[i] = exp(src[i] − shift) · mul` (`dst` and `src` of one length).
    pub fn exp_scaled_unchecked(src: &[f32], shift: f32, mul: f32, dst: &mut [f32]) = scaled_body;
}

kernel! {
    /// `out = softmax(scale · xs)` (`out` and `xs` of one length).
    pub fn softmax_unchecked(xs: &[f32], scale: f32, out: &mut [f32]) = softmax_body;
}

kernel! {
    /// `out = silu(gate) · up` (all three of one length).
    pub fn silu_mul_unchecked(gate: &[f32], up: &[f32], out: &mut [f32]) = silu_mul_body;
}

/// `(Σ e, Σ x, Σ e·x, Σ e_c)` over `xs` with `e = exp(x − max)`, `e_c = exp(c·(x − max))`; the
/// last is 0 when `c` is `None`.
pub fn sums(xs: &[f32], max: f32, c: Option<f32>) -> [f32; 4] {
    sums_with(xs, max, c.unwrap_or(0.0))
}

/// `dst[i] = exp(src[i] − shift) · mul`.
pub fn exp_scaled(src: &[f32], shift: f32, mul: f32, dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "exp_scaled over slices of two lengths"
    );
    exp_scaled_unchecked(src, shift, mul, dst)
}

/// `out = softmax(scale · xs)`.
pub fn softmax(xs: &[f32], scale: f32, out: &mut [f32]) {
    assert_eq!(xs.len(), out.len(), "softmax over slices of two lengths");
    softmax_unchecked(xs, scale, out)
}

/// `out = silu(gate) · up`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && up.len() == out.len(),
        "silu_mul over slices of two lengths"
    );
    silu_mul_unchecked(gate, up, out)
}

/// The backward of `out = silu(gate) · up`: `(∂/∂gate, ∂/∂up)` given `g = ∂/∂out`.
pub fn silu_mul_grad(gate: &[f32], up: &[f32], g: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    let n = gate.len();
    assert!(
        up.len() == n && g.len() == n && d_gate.len() == n && d_up.len() == n,
        "silu_mul_grad over slices of two lengths"
    );
    silu_mul_grad_unchecked(gate, up, g, d_gate, d_up)
}

/// The backward of `y = softmax(scale · x)`: `∂/∂x = scale · y · (g − Σ g·y)` given `g = ∂/∂y`.
pub fn softmax_grad(y: &[f32], g: &[f32], scale: f32, out: &mut [f32]) {
    assert!(
        g.len() == y.len() && out.len() == y.len(),
        "softmax_grad over slices of two lengths"
    );
    softmax_grad_unchecked(y, g, scale, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// Every f32 in [−86.99, 88.72] at a stride of 97 bits (≈ 21 million values), and the edges.
    #[test]
    fn exp_is_within_two_ulp_of_libm_on_its_range_and_exact_at_the_edges() {
        let (mut worst, mut at, mut n) = (0u32, 0f32, 0u64);
        for range in [(0u32, LOW.to_bits()), (0, HIGH.to_bits())] {
            let mut bits = range.0;
            while bits < range.1 {
                let x = if range.1 == LOW.to_bits() {
                    -f32::from_bits(bits)
                } else {
                    f32::from_bits(bits)
                };
                let want = x.exp();
                if want.is_normal() && (LOW..=HIGH).contains(&x) {
                    let d = ulps(exp(x), want);
                    if d > worst {
                        (worst, at) = (d, x);
                    }
                    n += 1;
                }
                bits += 97;
            }
        }
        assert!(n > 20_000_000, "{n} values checked");
        assert!(
            worst <= 2,
            "{worst} ulp at {at}: {} vs {}",
            exp(at),
            at.exp()
        );
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    /// The dispatched kernels (AVX-512, AVX2 or portable on this CPU) against the same sums in
    /// the same order with libm's `expf`: only exp's last bits may differ.
    #[test]
    fn the_row_sums_and_the_scaled_exp_equal_libm_loops() {
        let xs: Vec<f32> = (0..49_157)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 6.0)
            .collect();
        let max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let c = 0.3f32;
        let got = sums(&xs, max, Some(c));
        let mut want = [0f32; 4];
        for &x in &xs {
            let e = (x - max).exp();
            want[0] += e;
            want[1] += x;
            want[2] += e * x;
            want[3] += (c * (x - max)).exp();
        }
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs(), "{got:?} vs {want:?}");
        }
        assert_eq!(sums(&xs, max, None)[3], 0.0);
        let mut dst = vec![0f32; xs.len()];
        exp_scaled(&xs, max, 2.5, &mut dst);
        let worst = xs
            .iter()
            .zip(&dst)
            .map(|(&x, &d)| {
                ((d as f64) - 2.5 * ((x - max) as f64).exp()).abs()
                    / (2.5 * ((x - max) as f64).exp())
            })
            .fold(0f64, f64::max);
        assert!(worst < 1e-6, "relative error {worst}");
    }

    /// softmax and silu·up against f64 references on rows with a remainder past 16 lanes.
    #[test]
    fn softmax_and_silu_mul_equal_f64_references() {
        for n in [1usize, 15, 16, 37, 1000] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 113) as f32 * 0.37 - 20.0)
                .collect();
            let mut out = vec![0f32; n];
            softmax(&xs, 0.7, &mut out);
            let m = xs.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let z: f64 = xs.iter().map(|&x| (0.7 * (x as f64 - m)).exp()).sum();
            for (&x, &o) in xs.iter().zip(&out) {
                // f32 rounds the argument a = 0.7·(x − max) to ~6e-8·|a|, which e^a turns
                // into a relative error of that size.
                let a = 0.7 * (x as f64 - m);
                let want = a.exp() / z;
                let tol = 1e-7 * (4.0 + a.abs()) * want;
                assert!((o as f64 - want).abs() <= tol, "n {n}: {o} vs {want}");
            }
            let up: Vec<f32> = xs.iter().map(|x| 0.5 - x * 0.01).collect();
            silu_mul(&xs, &up, &mut out);
            for ((&g, &u), &o) in xs.iter().zip(&up).zip(&out) {
                let (g, u) = (g as f64, u as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (o as f64 - want).abs() <= 1e-6 * want.abs() + 1e-37,
                    "{o} vs {want}"
                );
            }
        }
        let mut out = [0f32; 3];
        silu_mul(&[-200.0, 200.0, f32::NAN], &[1.0, 1.0, 1.0], &mut out);
        assert_eq!(&out[..2], &[-0.0, 200.0]);
        assert!(out[2].is_nan());
    }
}
