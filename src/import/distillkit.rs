//! DistillKit's capture format: its `logprob_compressor` settings and the decompression of one
//! position, bit for bit what DistillKit's own Python computes from the same bytes.
//!
//! A DistillKit capture stores, per position, two byte strings:
//!
//! - `bytepacked_indices`: the k token ids, most probable first, bit-packed MSB first at
//!   ⌈log2 d⌉ bits each (`distillkit/compression/bitpack.py`);
//! - `compressed_logprobs` (`monotonic_logprobs.py`): the first `exact_k` log-probs as
//!   little-endian `exact_dtype` values, then the coefficients of a least-squares fit of the other
//!   `k − exact_k` over the rank (`polynomial_terms`, in `term_dtype`), then each residual bin (a
//!   scale in `scale_dtype` and `num_elements` signed integers of `element_bits` bits). With
//!   `delta_encoding` the stored values are the differences of consecutive log-probs.
//!
//! DistillKit decodes with torch, in the dtypes of the settings: the fit is evaluated in
//! `term_dtype`, the residuals are added in the promoted dtype, and delta-coded values are summed
//! in f32 and rounded to `exact_dtype`. [`Decoder`] reproduces each rounding step: every value is
//! carried in f64 and rounded to the dtype torch would hold it in after each operation (f32
//! arithmetic done in f64 and rounded once is exact for `+`, `×` and `√`).

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// The floating-point types DistillKit stores values in (`TermDtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float16,
    Bfloat16,
    Float32,
    Float64,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::Float16 | Dtype::Bfloat16 => 2,
            Dtype::Float32 => 4,
            Dtype::Float64 => 8,
        }
    }

    /// `x` rounded to this dtype as torch does: f16 and bf16 results come from f32 arithmetic.
    #[inline]
    fn round(self, x: f64) -> f64 {
        match self {
            Dtype::Float64 => x,
            Dtype::Float32 => x as f32 as f64,
            Dtype::Bfloat16 => bf16::from_f32(x as f32).to_f64(),
            Dtype::Float16 => f16::from_f32(x as f32).to_f64(),
        }
    }

    /// The little-endian value at the start of `b` (at least [`Dtype::bytes`] long).
    #[inline]
    fn read(self, b: &[u8]) -> f64 {
        match self {
            Dtype::Float16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
            Dtype::Bfloat16 => bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            Dtype::Float32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::Float64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        }
    }

    /// torch's type promotion between two floating dtypes.
    fn promote(self, other: Dtype) -> Dtype {
        use Dtype::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Float64, _) | (_, Float64) => Float64,
            _ => Float32,
        }
    }
}

/// One term of the rank polynomial: a power of t, or `sqrt` / `exp` of t.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Term {
    Power(u32),
    Special(String),
}

/// A residual bin: a scale and `num_elements` quantized residuals of `element_bits` bits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bin {
    pub scale_dtype: Dtype,
    pub element_bits: u32,
    pub num_elements: usize,
}

fn float32() -> Dtype {
    Dtype::Float32
}

fn yes() -> bool {
    true
}

/// DistillKit's `logprob_compressor` block (`DistributionQuantizationConfig`), with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// Vocabulary the ids were packed for: ⌈log2 d⌉ bits per id.
    pub d: usize,
    pub k: usize,
    pub exact_k: usize,
    #[serde(default = "float32")]
    pub exact_dtype: Dtype,
    #[serde(default)]
    pub polynomial_terms: Option<Vec<Term>>,
    #[serde(default = "float32")]
    pub term_dtype: Dtype,
    #[serde(default)]
    pub residual_bins: Vec<Bin>,
    #[serde(default = "yes")]
    pub delta_encoding: bool,
    /// Only changes how values were quantized, not how they decode.
    #[serde(default)]
    pub error_diffusion: bool,
    #[serde(default)]
    pub normalize_t: bool,
}

impl Compression {
    /// Parse a YAML (or JSON) document holding the block: its keys at the top level (DistillKit's
    /// `compression_config.yaml`), or under `logprob_compressor`, or under
    /// `teacher.logprob_compressor` (a DistillKit training config). The error is one sentence.
    pub fn from_yaml(text: &str) -> Result<Compression, String> {
        let value: serde_json::Value =
            serde_yaml_ng::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        let block = value
            .get("teacher")
            .and_then(|t| t.get("logprob_compressor"))
            .or_else(|| value.get("logprob_compressor"))
            .unwrap_or(&value);
        let c: Compression = serde_json::from_value(block.clone())
            .map_err(|e| format!("not a DistillKit logprob_compressor block: {e}"))?;
        c.check()?;
        Ok(c)
    }

    /// DistillKit's own checks (`check_valid`), plus what decoding needs.
    pub fn check(&self) -> Result<(), String> {
        if self.d == 0 || self.d > 1 << 32 {
            return Err(format!(
                "d = {} is not a vocabulary size (1 to 2^32)",
                self.d
            ));
        }
        if self.k == 0 || self.k < self.exact_k {
            return Err(format!(
                "k = {} must be at least 1 and at least exact_k = {}",
                self.k, self.exact_k
            ));
        }
        let terms = self.terms().len();
        if self.exact_k < self.k && terms == 0 && self.residual_bins.is_empty() {
            return Err(format!(
                "exact_k = {} < k = {} needs polynomial_terms or residual_bins",
                self.exact_k, self.k
            ));
        }
        let binned: usize = self.residual_bins.iter().map(|b| b.num_elements).sum();
        if binned > self.k - self.exact_k {
            return Err(format!(
                "residual_bins hold {binned} elements, more than k - exact_k = {}",
                self.k - self.exact_k
            ));
        }
        for (i, b) in self.residual_bins.iter().enumerate() {
            if !(1..=64).contains(&b.element_bits) || b.num_elements == 0 {
                return Err(format!(
                    "residual_bins[{i}]: element_bits {} must be in 1..=64 and num_elements {} at least 1",
                    b.element_bits, b.num_elements
                ));
            }
        }
        for t in self.terms() {
            if let Term::Special(s) = t {
                if s != "sqrt" && s != "exp" {
                    return Err(format!(
                        "polynomial_terms: `{s}` is not a term (an integer power, \"sqrt\" or \"exp\")"
                    ));
                }
            }
        }
        Ok(())
    }

    fn terms(&self) -> &[Term] {
        self.polynomial_terms.as_deref().unwrap_or(&[])
    }

    /// Bits per packed id: ⌈log2 d⌉, computed in f32 as DistillKit does.
    pub fn id_bits(&self) -> u32 {
        ((self.d as f32).log2().ceil() as u32).max(1)
    }

    /// Bytes of `bytepacked_indices` per position.
    pub fn id_bytes(&self) -> usize {
        (self.k * self.id_bits() as usize).div_ceil(8)
    }

    /// Bytes of `compressed_logprobs` per position (`logprob_bits() / 8`).
    pub fn logprob_bytes(&self) -> usize {
        let mut bits = self.exact_k * self.exact_dtype.bytes() * 8;
        bits += self.terms().len() * self.term_dtype.bytes() * 8;
        for b in &self.residual_bins {
            bits += (b.scale_dtype.bytes() * 8 + b.element_bits as usize * b.num_elements)
                .next_multiple_of(8);
        }
        bits.div_ceil(8)
    }

    /// The settings in one line, for messages.
    pub fn describe(&self) -> String {
        format!(
            "d = {}, k = {}, exact_k = {} ({:?}), {} polynomial terms ({:?}), {} residual bins, delta_encoding {}",
            self.d,
            self.k,
            self.exact_k,
            self.exact_dtype,
            self.terms().len(),
            self.term_dtype,
            self.residual_bins.len(),
            self.delta_encoding
        )
        .to_lowercase()
    }
}

/// Decodes positions of one capture; holds the rank polynomial's basis, evaluated once.
#[derive(Clone, Debug)]
pub struct Decoder {
    c: Compression,
    id_bits: u32,
    id_bytes: usize,
    lp_bytes: usize,
    /// `[k − exact_k][terms]`, in `term_dtype`.
    basis: Vec<f64>,
    terms: usize,
    /// The settings every documented DistillKit config uses (f32 terms, at most 7 of them, no
    /// residual bins, 16- or 32-bit exact values) decode in f32 directly: the basis term-major,
    /// `[terms][k − exact_k]`, so each step runs over all ranks at once.
    fast_basis: Option<Vec<f32>>,
}

/// Reusable buffers of [`Decoder::decode`].
#[derive(Default)]
pub struct Scratch {
    values: Vec<f64>,
    quantized: Vec<u64>,
    coeffs: Vec<f64>,
    /// The four partial sums of the fast path, `[4][k − exact_k]`.
    parts: Vec<f32>,
}

impl Decoder {
    pub fn new(c: &Compression) -> Decoder {
        let approx = c.k - c.exact_k;
        let terms = c.terms();
        let dt = c.term_dtype;
        let pts: Vec<f64> = (0..approx)
            .map(|i| dt.round(point(i, approx, c.normalize_t, dt)))
            .collect();
        let mut basis = Vec::with_capacity(approx * terms.len());
        for &x in &pts {
            for term in terms {
                basis.push(term_value(term, x, dt));
            }
        }
        let fast = c.term_dtype == Dtype::Float32
            && c.exact_dtype != Dtype::Float64
            && c.residual_bins.is_empty()
            && terms.len() <= 7;
        let fast_basis = fast.then(|| {
            let n = terms.len();
            (0..n)
                .flat_map(|t| (0..approx).map(move |i| (t, i)))
                .map(|(t, i)| basis[i * n + t] as f32)
                .collect()
        });
        Decoder {
            fast_basis,
            id_bits: c.id_bits(),
            id_bytes: c.id_bytes(),
            lp_bytes: c.logprob_bytes(),
            basis,
            terms: terms.len(),
            c: c.clone(),
        }
    }

    pub fn compression(&self) -> &Compression {
        &self.c
    }

    pub fn k(&self) -> usize {
        self.c.k
    }

    pub fn id_bytes(&self) -> usize {
        self.id_bytes
    }

    pub fn logprob_bytes(&self) -> usize {
        self.lp_bytes
    }

    /// Decode one position: its k ids into `ids` and log-probs into `lps` (both of length k), in
    /// DistillKit's order (most probable first, as captured). The byte lengths must be
    /// [`Decoder::id_bytes`] and [`Decoder::logprob_bytes`]; the error says which is not.
    pub fn decode(
        &self,
        lp_bytes: &[u8],
        id_bytes: &[u8],
        ids: &mut [u64],
        lps: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<(), String> {
        let c = &self.c;
        if id_bytes.len() != self.id_bytes {
            return Err(format!(
                "bytepacked_indices has {} bytes, but k = {} ids of {} bits (d = {}) take {}: \
                 the capture was made with another d or k",
                id_bytes.len(),
                c.k,
                self.id_bits,
                c.d,
                self.id_bytes
            ));
        }
        if lp_bytes.len() != self.lp_bytes {
            return Err(format!(
                "compressed_logprobs has {} bytes, but the compression settings ({}) take {}: \
                 --compression does not describe this capture",
                lp_bytes.len(),
                c.describe(),
                self.lp_bytes
            ));
        }
        unpack_bits(id_bytes, self.id_bits, &mut ids[..c.k]);
        if let Some(basis) = &self.fast_basis {
            self.decode_f32(basis, lp_bytes, lps, scratch);
            return Ok(());
        }

        let out = c.exact_dtype;
        let mut b = lp_bytes;
        let w = out.bytes();
        // Values in the dtype torch holds them in before the final cast (see the module docs).
        let v = &mut scratch.values;
        v.clear();
        for _ in 0..c.exact_k {
            v.push(out.read(b));
            b = &b[w..];
        }
        let tw = c.term_dtype.bytes();
        let coeffs = &mut scratch.coeffs;
        coeffs.clear();
        for _ in 0..self.terms {
            coeffs.push(c.term_dtype.read(b));
            b = &b[tw..];
        }
        let approx = c.k - c.exact_k;
        let start = v.len();
        v.resize(c.k, 0.0);
        let residual = &mut v[start..];
        let mut at = 0;
        for bin in &c.residual_bins {
            let scale = bin.scale_dtype.read(b);
            b = &b[bin.scale_dtype.bytes()..];
            let packed = (bin.num_elements * bin.element_bits as usize).div_ceil(8);
            let q = &mut scratch.quantized;
            q.resize(bin.num_elements, 0);
            unpack_bits(&b[..packed], bin.element_bits, q);
            b = &b[packed..];
            let rd = Dtype::Float32.promote(bin.scale_dtype);
            for (r, &q) in residual[at..at + bin.num_elements].iter_mut().zip(q.iter()) {
                let base = if bin.element_bits == 1 {
                    (q as f32 * 2.0 - 1.0) as f64
                } else {
                    let quant_min = -(2f64.powi(bin.element_bits as i32 - 1));
                    (q as f64 + quant_min) as f32 as f64
                };
                *r = rd.round(base * scale);
            }
            at += bin.num_elements;
        }
        // residual.to(out_dtype): zeros when there are no bins.
        if !c.residual_bins.is_empty() {
            for r in residual.iter_mut() {
                *r = out.round(*r);
            }
        }
        if self.terms > 0 {
            let td = c.term_dtype;
            let sum_dtype = td.promote(out);
            for (i, r) in residual.iter_mut().enumerate() {
                let row = &self.basis[i * self.terms..(i + 1) * self.terms];
                let fit = eval_fit(row, coeffs, td);
                *r = sum_dtype.round(fit + *r);
            }
        }
        debug_assert_eq!(residual.len(), approx);
        if c.delta_encoding {
            // torch.cumsum(logprobs.float()).to(exact_dtype): on the CPU torch accumulates the
            // f32 values in f64 and rounds each running sum to f32.
            let mut acc = 0f64;
            for (x, lp) in v.iter().zip(lps.iter_mut()) {
                acc += *x as f32 as f64;
                *lp = out.round(acc as f32 as f64) as f32;
            }
        } else {
            for (x, lp) in v.iter().zip(lps.iter_mut()) {
                *lp = *x as f32;
            }
        }
        Ok(())
    }
}

impl Decoder {
    /// [`Decoder::decode`]'s log-probs for the settings of `fast_basis`, in f32: the same
    /// operations in the same order as the general path (and torch), ranks side by side.
    fn decode_f32(&self, basis: &[f32], b: &[u8], lps: &mut [f32], scratch: &mut Scratch) {
        let c = &self.c;
        let out = c.exact_dtype;
        let (ek, approx, n) = (c.exact_k, c.k - c.exact_k, self.terms);
        let w = out.bytes();
        for (j, lp) in lps[..ek].iter_mut().enumerate() {
            *lp = out.read(&b[j * w..]) as f32;
        }
        let b = &b[ek * w..];
        let mut coeffs = [0f32; 7];
        for (t, cf) in coeffs[..n].iter_mut().enumerate() {
            *cf = f32::from_le_bytes([b[4 * t], b[4 * t + 1], b[4 * t + 2], b[4 * t + 3]]);
        }
        // torch's row_sum: term t goes to partial sum t % 4 for t < 4⌊n/4⌋, the rest to the
        // first; then ((p0 + p1) + p2) + p3, and + 0.0 for the (empty) residual.
        let parts = &mut scratch.parts;
        parts.clear();
        parts.resize(4 * approx, 0.0);
        let (p0, rest) = parts.split_at_mut(approx);
        let (p1, rest) = rest.split_at_mut(approx);
        let (p2, p3) = rest.split_at_mut(approx);
        let whole = n / 4 * 4;
        for (t, &cf) in coeffs[..n].iter().enumerate() {
            let part: &mut [f32] = match (t < whole, t % 4) {
                (true, 1) => p1,
                (true, 2) => p2,
                (true, 3) => p3,
                _ => p0,
            };
            for (p, &x) in part.iter_mut().zip(&basis[t * approx..(t + 1) * approx]) {
                *p += x * cf;
            }
        }
        let fit = &mut lps[ek..c.k];
        for (i, f) in fit.iter_mut().enumerate() {
            *f = ((p0[i] + p1[i]) + p2[i]) + p3[i] + 0.0;
        }
        if c.delta_encoding {
            let mut acc = 0f64;
            for lp in lps[..c.k].iter_mut() {
                acc += *lp as f64;
                *lp = out.round(acc as f32 as f64) as f32;
            }
        }
    }
}

/// The polynomial at one rank: Σ basis·coeff, as torch's CPU `sum(X * coeffs, dim=-1)`: the
/// products rounded to `dt`, then summed in `dt`'s accumulation type (f32 for 16-bit dtypes) in
/// the order of torch's `row_sum` (four interleaved partial sums, the remainder added to the
/// first, then the others added to it). Bit-exact for up to 7 terms; from 8 on torch vectorizes
/// the sum, and the result may differ in the last bit.
#[inline]
fn eval_fit(row: &[f64], coeffs: &[f64], dt: Dtype) -> f64 {
    let acc_dt = match dt {
        Dtype::Float64 => Dtype::Float64,
        _ => Dtype::Float32,
    };
    const ILP: usize = 4;
    let n = row.len();
    let m = n / ILP;
    let mut parts = [0f64; ILP];
    let product = |i: usize| dt.round(row[i] * coeffs[i]);
    for (j, part) in parts.iter_mut().enumerate() {
        for i in 0..m {
            *part = acc_dt.round(*part + product(i * ILP + j));
        }
    }
    for i in m * ILP..n {
        parts[0] = acc_dt.round(parts[0] + product(i));
    }
    let mut sum = parts[0];
    for part in &parts[1..] {
        sum = acc_dt.round(sum + part);
    }
    dt.round(sum)
}

/// Rank i of `n` as DistillKit's `polynomial_terms` places it: `arange(n)` or, with
/// `normalize_t`, `linspace(0, 1, n)` (torch computes the first half from 0 and the second half
/// back from 1, in the dtype's working precision).
fn point(i: usize, n: usize, normalize: bool, dt: Dtype) -> f64 {
    if !normalize {
        return i as f64;
    }
    if n == 1 {
        return 0.0;
    }
    match dt {
        Dtype::Float64 => {
            let step = 1.0 / (n - 1) as f64;
            if i < n / 2 {
                i as f64 * step
            } else {
                1.0 - (n - 1 - i) as f64 * step
            }
        }
        _ => {
            let step = 1.0f32 / (n - 1) as f32;
            let x = if i < n / 2 {
                i as f32 * step
            } else {
                1.0f32 - (n - 1 - i) as f32 * step
            };
            x as f64
        }
    }
}

/// One basis value: `x ** p` or `sqrt(x)` / `exp(x)`, in `dt`.
fn term_value(term: &Term, x: f64, dt: Dtype) -> f64 {
    let r = |v: f64| dt.round(v);
    match term {
        Term::Power(0) => 1.0,
        Term::Power(1) => x,
        Term::Power(2) => r(x * x),
        // torch's CPU pow(x, 3): bf16 rounds after each product, f16 once (from f32).
        Term::Power(3) if dt == Dtype::Float16 => r(((x * x) as f32 as f64 * x) as f32 as f64),
        Term::Power(3) => r(r(x * x) * x),
        Term::Power(p) => r(match dt {
            Dtype::Float64 => x.powi(*p as i32),
            _ => (x as f32).powf(*p as f32) as f64,
        }),
        Term::Special(s) if s == "sqrt" => r(match dt {
            Dtype::Float64 => x.sqrt(),
            _ => (x as f32).sqrt() as f64,
        }),
        Term::Special(_) => r(match dt {
            Dtype::Float64 => x.exp(),
            _ => (x as f32).exp() as f64,
        }),
    }
}

/// Unpack `out.len()` integers of `bits` bits each, most significant bit first, from `bytes`
/// (DistillKit's `unpack_from_bytes`). `bytes` holds at least `out.len() × bits` bits.
pub fn unpack_bits(bytes: &[u8], bits: u32, out: &mut [u64]) {
    debug_assert!((1..=64).contains(&bits));
    let mut acc: u128 = 0;
    let mut have: u32 = 0;
    let mut next = bytes.iter();
    let mask: u128 = if bits == 64 {
        u64::MAX as u128
    } else {
        (1u128 << bits) - 1
    };
    for o in out.iter_mut() {
        while have < bits {
            acc = (acc << 8) | *next.next().unwrap_or(&0) as u128;
            have += 8;
        }
        have -= bits;
        *o = ((acc >> have) & mask) as u64;
        acc &= (1u128 << have) - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DistillKit's `pack_to_bytes`, MSB first, for the round trip.
    fn pack_bits(values: &[u64], bits: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut have) = (0u128, 0u32);
        for &v in values {
            acc = (acc << bits) | (v as u128 & ((1u128 << bits) - 1));
            have += bits;
            while have >= 8 {
                have -= 8;
                out.push((acc >> have) as u8);
                acc &= (1u128 << have) - 1;
            }
        }
        if have > 0 {
            out.push((acc << (8 - have)) as u8);
        }
        out
    }

    #[test]
    fn unpacking_inverts_msb_first_packing_at_every_width() {
        for bits in [1u32, 3, 7, 8, 10, 17, 18, 31, 33, 64] {
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let values: Vec<u64> = (0..37u64)
                .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) & mask)
                .collect();
            let bytes = pack_bits(&values, bits);
            assert_eq!(bytes.len(), (values.len() * bits as usize).div_ceil(8));
            let mut back = vec![0u64; values.len()];
            unpack_bits(&bytes, bits, &mut back);
            assert_eq!(back, values, "{bits} bits");
        }
        // The first id's most significant bit is the first byte's top bit.
        let mut one = [0u64; 1];
        unpack_bits(&[0b1000_0000, 0b0100_0000], 10, &mut one);
        assert_eq!(one[0], 0b10_0000_0001);
    }

    #[test]
    fn the_documented_configs_have_distillkits_sizes() {
        // DistillKit's README: the budget pick is about 114 bytes/token at a 151,936 vocabulary
        // (50 ids × 18 bits = 113 bytes of ids + 2 + 3×4 of log-probs).
        let budget = Compression::from_yaml(
            "logprob_compressor:\n  d: 151936\n  k: 50\n  exact_k: 1\n  exact_dtype: bfloat16\n  \
             polynomial_terms: [0, 1, \"sqrt\"]\n  term_dtype: float32\n  residual_bins: []\n  \
             delta_encoding: false\n  error_diffusion: false\n",
        )
        .unwrap();
        assert_eq!(budget.id_bits(), 18);
        assert_eq!(budget.id_bytes(), 113);
        assert_eq!(budget.logprob_bytes(), 2 + 12);
        let bins = Compression::from_yaml(
            "d: 1000\nk: 64\nexact_k: 8\nexact_dtype: float16\npolynomial_terms: [0, 1, 2]\n\
             residual_bins:\n- {scale_dtype: float16, element_bits: 4, num_elements: 32}\n\
             - {scale_dtype: float32, element_bits: 1, num_elements: 8}\n",
        )
        .unwrap();
        // 8×16 + 3×32 + (16 + 128) + (32 + 8) bits.
        assert_eq!(bins.logprob_bytes(), (128 + 96 + 144 + 40) / 8);
        assert_eq!(bins.id_bits(), 10);
    }

    #[test]
    fn settings_distillkit_refuses_are_refused_in_one_sentence() {
        for (yaml, says) in [
            ("d: 100\nk: 4\nexact_k: 8\n", "at least exact_k"),
            ("d: 100\nk: 8\nexact_k: 4\n", "needs polynomial_terms"),
            ("d: 100\nk: 8\nexact_k: 4\npolynomial_terms: [0, cube]\n", "`cube`"),
            ("d: 100\nk: 8\nexact_k: 4\nbogus: 1\n", "bogus"),
            (
                "d: 100\nk: 8\nexact_k: 4\nresidual_bins: [{scale_dtype: float16, element_bits: 4, num_elements: 5}]\n",
                "more than k - exact_k",
            ),
        ] {
            let e = Compression::from_yaml(yaml).unwrap_err();
            assert!(e.contains(says), "{yaml:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_delta_coded_exact_capture_decodes_to_its_running_sum() {
        // k = exact_k = 3, f32, delta: stored [-0.5, -1.0, -0.25] → [-0.5, -1.5, -1.75].
        let c = Compression::from_yaml("d: 8\nk: 3\nexact_k: 3\ndelta_encoding: true\n").unwrap();
        let dec = Decoder::new(&c);
        let mut lp = Vec::new();
        for x in [-0.5f32, -1.0, -0.25] {
            lp.extend_from_slice(&x.to_le_bytes());
        }
        let ids = pack_bits(&[5, 0, 7], 3);
        let (mut out_ids, mut out_lps) = ([0u64; 3], [0f32; 3]);
        dec.decode(
            &lp,
            &ids,
            &mut out_ids,
            &mut out_lps,
            &mut Scratch::default(),
        )
        .unwrap();
        assert_eq!(out_ids, [5, 0, 7]);
        assert_eq!(out_lps, [-0.5, -1.5, -1.75]);
        let e = dec
            .decode(
                &lp[1..],
                &ids,
                &mut out_ids,
                &mut out_lps,
                &mut Scratch::default(),
            )
            .unwrap_err();
        assert!(
            e.contains("compressed_logprobs has 11 bytes") && e.contains("take 12"),
            "{e}"
        );
    }
}
