//! Products with bf16 weights on the CPU: what `precompute --dtype bf16` runs a teacher's linear
//! layers with when the device is the CPU (candle's CPU matmul has no bf16 kernel).
//!
//! A weight `[out, in]` is rounded to bf16 once, at load, and stored in the layout of an AMX
//! tile operand ([`PackedBf16`]): the weights a bf16 checkpoint holds. Each product splits its
//! f32 activations into two bf16 parts, `x ≈ hi + lo` with `hi = round(x)` and
//! `lo = round(x − hi)` (16 bits of mantissa, relative error about 2⁻¹⁷), multiplies both by the
//! weights and sums in f32: `x · round(W)ᵀ` to within f32 rounding of the sums and 2⁻¹⁷ of the
//! activations. Norms, attention, rope and the softmax between the layers stay in f32.
//!
//! Why two parts: with one (`round(x) · round(W)ᵀ`, as a plain bf16 forward computes) the mean
//! KL of a 30-layer hidden-576 teacher's cache to its f32 cache was 1.6e-3 (`make bench-e2e`'s
//! v49,152 teacher, f32 weights); with two it is 0.9e-3, the rest being the weights' own
//! rounding (none for a checkpoint stored in bf16), for about 20% more time in precompute.
//!
//! Two kernels compute that product:
//! - **AMX** (`tdpbf16ps`, Intel Sapphire Rapids and later, where the kernel lets the process
//!   use the tile registers): 16 × 16 × 32 products per instruction. Measured on a Xeon of
//!   family 6 model 207: about 3 TFLOP/s per core from the instruction alone, against 0.2 for
//!   f32 FMA. The AVX-512 `vdpbf16ps` was measured too and gives half the FLOP/s of f32 FMA on
//!   the same core, so it is not used.
//! - **Portable**, every other CPU: the same products in the same order (per 32 `k`, the `hi`
//!   pairs then the `lo` pairs, `acc + a₀b₀` then `+ a₁b₁`; each product of two bf16 values is
//!   exact in f32), so it computes what the tile instruction's definition computes. It is slower than candle's f32
//!   product: on such a CPU `--dtype f32` is the faster choice, and precompute says so.
//!
//! Both split the output's columns over the rayon pool.

use std::arch::asm;
use std::sync::OnceLock;

use rayon::prelude::*;

/// `k` values per tile row: 32 bf16, 64 bytes.
const TILE_K: usize = 32;
/// Columns of a weight tile, and rows of an activation tile.
const TILE: usize = 16;
/// Rows (and columns) of the output block one kernel step computes: 2 × 2 tiles.
const BLOCK: usize = 2 * TILE;

/// A weight `[n, k]` (a linear layer's `[out, in]`) rounded to bf16 (round to nearest even) in
/// AMX tile layout: for each block of 16 output columns, for each block of 32 `k`, a 1 KiB tile
/// of 16 rows (pairs of `k`) × 16 columns, each entry a `u32` holding the bf16 of `k = 2r`
/// (low half) and of `k = 2r + 1` (high half). `k` is padded with zeros to a multiple of 32 and
/// `n` to a multiple of 32.
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// `k` padded to [`TILE_K`].
    kp: usize,
    /// `n` padded to [`BLOCK`].
    np: usize,
    data: Vec<u32>,
}

/// The product kernel, chosen once per process ([`Kernel::best`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Amx,
    Portable,
}

impl Kernel {
    /// AMX where the CPU has `amx-bf16` and the kernel grants the process the tile state;
    /// otherwise portable.
    pub fn best() -> Self {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            if amx_available() {
                Kernel::Amx
            } else {
                Kernel::Portable
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "AMX tiles",
            Kernel::Portable => "a portable loop (no AMX on this CPU)",
        }
    }
}

/// `x` rounded to the nearest bf16, ties to even (NaN stays NaN, quieted): the bits of
/// `half::bf16::from_f32`, written without branches on the value so loops of it vectorize.
#[inline(always)]
fn to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        rounded
    }
}

/// Round `src` to bf16 into `dst` (equal lengths).
fn round_slice(src: &[f32], dst: &mut [u16]) {
    #[inline(always)]
    fn body(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = to_bf16_bits(s);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn avx512(src: &[f32], dst: &mut [u16]) {
            body(src, dst)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(src: &[f32], dst: &mut [u16]) {
            body(src, dst)
        }
        if is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { avx512(src, dst) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2(src, dst) };
        }
    }
    body(src, dst)
}

/// Split `src` into two bf16 parts, `hi = round(x)` and `lo = round(x − hi)`.
fn split_slice(src: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    round_slice(src, hi);
    for ((l, &h), &x) in lo.iter_mut().zip(hi.iter()).zip(src) {
        *l = to_bf16_bits(x - f32::from_bits((h as u32) << 16));
    }
}

#[inline]
fn lo(w: u32) -> f32 {
    f32::from_bits(w << 16)
}

#[inline]
fn hi(w: u32) -> f32 {
    f32::from_bits(w & 0xffff_0000)
}

impl PackedBf16 {
    /// Round and pack `weight`, row-major `[n, k]`.
    pub fn pack(weight: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(weight.len(), n * k, "weight of {n} × {k}");
        let kp = k.div_ceil(TILE_K).max(1) * TILE_K;
        let np = n.div_ceil(BLOCK).max(1) * BLOCK;
        let k_blocks = kp / TILE_K;
        let mut data = vec![0u32; np * kp / 2];
        data.par_chunks_mut(k_blocks * TILE * TILE)
            .enumerate()
            .for_each(|(nb, panel)| {
                // The panel's 16 weight rows rounded to bf16, each padded with zeros to `kp`.
                let mut rows = vec![0u16; TILE * kp];
                for (c, row) in rows.chunks_mut(kp).enumerate() {
                    let col = nb * TILE + c;
                    if col < n {
                        round_slice(&weight[col * k..(col + 1) * k], &mut row[..k]);
                    }
                }
                for (i, e) in panel.iter_mut().enumerate() {
                    // Entry (kb, r, c): column c's values at k = 32·kb + 2r and 2r + 1.
                    let (kb, r, c) = (i / (TILE * TILE), (i / TILE) % TILE, i % TILE);
                    let at = c * kp + kb * TILE_K + 2 * r;
                    *e = rows[at] as u32 | (rows[at + 1] as u32) << 16;
                }
            });
        Self { n, k, kp, np, data }
    }

    /// Output features (the weight's rows).
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The weight as it is used, `[n, k]` in f32: every value a bf16.
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for (col, row) in w.chunks_mut(self.k.max(1)).enumerate().take(self.n) {
            for (kk, v) in row.iter_mut().enumerate() {
                let e = self.entry(col / TILE, kk / TILE_K, (kk % TILE_K) / 2, col % TILE);
                *v = if kk % 2 == 0 { lo(e) } else { hi(e) };
            }
        }
        w
    }

    #[inline]
    fn entry(&self, nb: usize, kb: usize, r: usize, c: usize) -> u32 {
        self.data[((nb * (self.kp / TILE_K) + kb) * TILE + r) * TILE + c]
    }

    /// `x · Wᵀ` for `x` row-major `[m, k]`: `[m, n]` in f32, with the best kernel.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(x, m, Kernel::best())
    }

    /// [`matmul`](Self::matmul) with a given kernel (`Kernel::Amx` only where
    /// [`Kernel::best`] chose it).
    pub fn matmul_with(&self, x: &[f32], m: usize, kernel: Kernel) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "activations of {m} × {}", self.k);
        if m == 0 || self.n == 0 {
            return vec![0f32; m * self.n];
        }
        // Every element is written below, by exactly one task: no zeroing pass.
        let mut out: Vec<f32> = Vec::with_capacity(m * self.n);
        let mp = m.div_ceil(BLOCK) * BLOCK;
        // Activations as two bf16 parts (`hi`, then `lo` = the rest), each in tiles: for each
        // 16 rows, for each 32 `k`, a contiguous 1 KiB tile (row-major, 16 × 32), padded with
        // zeros; so a tile is read as one stream.
        let k_blocks = self.kp / TILE_K;
        let tile_len = TILE * TILE_K;
        let mut a_hi = vec![0u16; mp * self.kp];
        let mut a_lo = vec![0u16; mp * self.kp];
        a_hi.par_chunks_mut(k_blocks * tile_len)
            .zip(a_lo.par_chunks_mut(k_blocks * tile_len))
            .enumerate()
            .for_each(|(mt, (hi, lo))| {
                for r in 0..TILE.min(m.saturating_sub(mt * TILE)) {
                    let row = &x[(mt * TILE + r) * self.k..(mt * TILE + r + 1) * self.k];
                    for (kb, src) in row.chunks(TILE_K).enumerate() {
                        let at = kb * tile_len + r * TILE_K;
                        split_slice(
                            src,
                            &mut hi[at..at + src.len()],
                            &mut lo[at..at + src.len()],
                        );
                    }
                }
            });
        let kernel = if kernel == Kernel::Amx && !amx_available() {
            Kernel::Portable
        } else {
            kernel
        };
        // Tasks of whole 32-column blocks, about four per thread.
        let blocks = self.np / BLOCK;
        let per_task = blocks
            .div_ceil(4 * rayon::current_num_threads().max(1))
            .max(1);
        let out_ptr = SharedOut(out.as_mut_ptr());
        (0..blocks.div_ceil(per_task))
            .into_par_iter()
            .for_each(|t| {
                let range = t * per_task..((t + 1) * per_task).min(blocks);
                let out = &out_ptr;
                // SAFETY: each task writes only the output columns of its own blocks.
                match kernel {
                    Kernel::Amx => unsafe { self.amx_blocks([&a_hi, &a_lo], m, range, out) },
                    Kernel::Portable => unsafe {
                        self.portable_blocks([&a_hi, &a_lo], m, range, out)
                    },
                }
            });
        // SAFETY: the tasks above wrote all `m × n` elements (every row below `m` of every
        // column block below `np`, cut at `n`).
        unsafe { out.set_len(m * self.n) };
        out
    }

    /// Output columns `[32·b, 32·b + 32)` for `b` in `blocks`, by the tile instructions.
    ///
    /// # Safety
    /// The CPU has AMX and the tile state was granted ([`amx_available`]); no other task
    /// writes these output columns.
    unsafe fn amx_blocks(
        &self,
        [a, a_lo]: [&[u16]; 2],
        m: usize,
        blocks: std::ops::Range<usize>,
        out: &SharedOut,
    ) {
        let kp = self.kp;
        let k_blocks = kp / TILE_K;
        let mp = a.len() / kp;
        // An activation tile is contiguous: rows 64 bytes apart.
        let a_stride = TILE_K * 2;
        let tile_len = TILE * TILE;
        let cfg = TileConfig::new();
        let mut c = [0f32; BLOCK * BLOCK];
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack));
        }
        for b in blocks {
            let b0 = self.data[2 * b * k_blocks * tile_len..].as_ptr();
            let b1 = self.data[(2 * b + 1) * k_blocks * tile_len..].as_ptr();
            for mb in 0..mp / BLOCK {
                // Row tiles 2·mb and 2·mb + 1, each `k_blocks` tiles of 512 values.
                let a0 = a[2 * mb * kp * TILE..].as_ptr();
                let a1 = a[(2 * mb + 1) * kp * TILE..].as_ptr();
                let l0 = a_lo[2 * mb * kp * TILE..].as_ptr();
                let l1 = a_lo[(2 * mb + 1) * kp * TILE..].as_ptr();
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack)
                    );
                    for kb in 0..k_blocks {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(kb * TILE * TILE_K),
                            a1 = in(reg) a1.add(kb * TILE * TILE_K),
                            b0 = in(reg) b0.add(kb * tile_len),
                            b1 = in(reg) b1.add(kb * tile_len),
                            sa = in(reg) a_stride,
                            sb = in(reg) TILE * 4,
                            options(nostack, readonly)
                        );
                        // The activations' `lo` parts, against the weight tiles still loaded.
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) l0.add(kb * TILE * TILE_K),
                            a1 = in(reg) l1.add(kb * TILE * TILE_K),
                            sa = in(reg) a_stride,
                            options(nostack, readonly)
                        );
                    }
                    // A whole block inside the output is stored in place; an edge block goes
                    // through `c` and is cut.
                    let whole = (mb + 1) * BLOCK <= m && (b + 1) * BLOCK <= self.n;
                    let (base, stride, row_step) = if whole {
                        (
                            out.at(mb * BLOCK * self.n + b * BLOCK),
                            self.n * 4,
                            TILE * self.n,
                        )
                    } else {
                        (c.as_mut_ptr(), BLOCK * 4, TILE * BLOCK)
                    };
                    asm!(
                        "tilestored [{c0} + {s}*1], tmm0",
                        "tilestored [{c1} + {s}*1], tmm1",
                        "tilestored [{c2} + {s}*1], tmm2",
                        "tilestored [{c3} + {s}*1], tmm3",
                        c0 = in(reg) base,
                        c1 = in(reg) base.add(TILE),
                        c2 = in(reg) base.add(row_step),
                        c3 = in(reg) base.add(row_step + TILE),
                        s = in(reg) stride,
                        options(nostack)
                    );
                    if whole {
                        continue;
                    }
                }
                // `c` is the 32 × 32 block, row-major.
                let cols = BLOCK.min(self.n - b * BLOCK);
                for r in 0..BLOCK.min(m - mb * BLOCK) {
                    let row = mb * BLOCK + r;
                    unsafe { out.write(row * self.n + b * BLOCK, &c[r * BLOCK..r * BLOCK + cols]) };
                }
            }
        }
        unsafe {
            asm!("tilerelease", options(nostack));
        }
    }

    /// The same columns as [`amx_blocks`](Self::amx_blocks), one pair of `k` at a time: the
    /// even product, then the odd one, added in f32 (the tile instruction's definition).
    ///
    /// # Safety
    /// No other task writes these output columns.
    unsafe fn portable_blocks(
        &self,
        parts: [&[u16]; 2],
        m: usize,
        blocks: std::ops::Range<usize>,
        out: &SharedOut,
    ) {
        let kp = self.kp;
        let k_blocks = kp / TILE_K;
        let mut acc = [0f32; TILE];
        for nb in blocks.start * 2..blocks.end * 2 {
            let col0 = nb * TILE;
            let cols = TILE.min(self.n.saturating_sub(col0));
            if cols == 0 {
                break;
            }
            let panel = &self.data[nb * k_blocks * TILE * TILE..(nb + 1) * k_blocks * TILE * TILE];
            for row in 0..m {
                // The row's values in its row tiles, 32 `k` a tile, `hi` then `lo`.
                let at_row = (row / TILE) * kp * TILE;
                acc.fill(0.0);
                for (kb, w_tile) in panel.chunks_exact(TILE * TILE).enumerate() {
                    let at = at_row + kb * TILE * TILE_K + (row % TILE) * TILE_K;
                    for part in parts {
                        let xa = &part[at..at + TILE_K];
                        for (pair, w) in xa.chunks_exact(2).zip(w_tile.chunks_exact(TILE)) {
                            let (x0, x1) = (
                                f32::from_bits((pair[0] as u32) << 16),
                                f32::from_bits((pair[1] as u32) << 16),
                            );
                            for (s, &e) in acc.iter_mut().zip(w) {
                                *s += x0 * lo(e);
                                *s += x1 * hi(e);
                            }
                        }
                    }
                }
                unsafe { out.write(row * self.n + col0, &acc[..cols]) };
            }
        }
    }
}

impl Default for TileConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The output buffer, shared by tasks that write disjoint columns.
struct SharedOut(*mut f32);

// SAFETY: tasks write disjoint elements (`matmul_with`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(&self, at: usize) -> *mut f32 {
        self.0.wrapping_add(at)
    }

    /// # Safety
    /// `at + values.len()` is within the buffer and no other thread writes those elements.
    unsafe fn write(&self, at: usize, values: &[f32]) {
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len()) };
    }
}

/// The 64-byte tile configuration: palette 1, tiles 0–7 of 16 rows × 64 bytes (what
/// `ldtilecfg` reads).
#[repr(C, align(64))]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    pub fn new() -> Self {
        let mut cfg = Self {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = TILE as u8;
        }
        cfg
    }
}

/// Whether the CPU has AMX with bf16 (CPUID leaf 7: EDX bits 22 and 24), the OS saves the tile
/// state (XCR0 bits 17 and 18), and Linux granted this process the tile data
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`). Asked once.
pub fn amx_available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        if std::env::var_os("TAIDCACHE_NO_AMX").is_some() {
            return false;
        }
        amx_granted()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_granted() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    // SAFETY: CPUID exists on every x86-64 CPU; XGETBV is run only when CPUID says OSXSAVE.
    unsafe {
        let leaf1 = __cpuid_count(1, 0);
        if leaf1.ecx & (1 << 27) == 0 {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        if !(amx_bf16 && amx_tile) {
            return false;
        }
        if !is_x86_feature_detected!("xsave") || _xgetbv(0) & (0b11 << 17) != 0b11 << 17 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_granted() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;
    use crate::model::init::Normal;

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Normal::new(seed);
        (0..n).map(|_| rng.sample()).collect()
    }

    fn round(x: f32) -> f64 {
        bf16::from_f32(x).to_f64()
    }

    /// Every entry of `x · Wᵀ` against an f64 sum of the activations times the bf16-rounded
    /// weights, within what the method allows: the activations' split (2⁻¹⁷ of each product)
    /// plus f32 rounding of `2k` additions (2⁻²⁴ of the products' magnitudes each), for shapes
    /// on and off the tile sizes. At small `k` the bound is 30 times tighter than a product of
    /// bf16-rounded activations (2⁻⁹) could meet, so the `lo` parts are checked too.
    fn check(kernel: Kernel) {
        for (m, n, k) in [
            (1, 1, 1),
            (3, 17, 31),
            (33, 47, 33),
            (32, 32, 64),
            (17, 100, 576),
            (70, 33, 7),
        ] {
            let x = randn(m * k, 1 + m as u64);
            let w = randn(n * k, 2 + n as u64);
            let packed = PackedBf16::pack(&w, n, k);
            assert_eq!((packed.out_dim(), packed.in_dim()), (n, k));
            let y = packed.matmul_with(&x, m, kernel);
            assert_eq!(y.len(), m * n);
            let mut worst = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut mag) = (0f64, 0f64);
                    for l in 0..k {
                        let p = x[i * k + l] as f64 * round(w[j * k + l]);
                        exact += p;
                        mag += p.abs();
                    }
                    let err = (y[i * n + j] as f64 - exact).abs();
                    let bound = mag * (2.0 * k as f64 * 2f64.powi(-24) + 2f64.powi(-17)) + 1e-30;
                    worst = worst.max(err / bound);
                }
            }
            assert!(
                worst <= 1.0,
                "{kernel:?} {m}×{n}×{k}: error {worst:.3} of its bound"
            );
        }
    }

    #[test]
    fn the_portable_product_is_the_split_activations_times_the_bf16_weights() {
        check(Kernel::Portable);
    }

    /// On a CPU with AMX (checked by CPUID and the kernel's grant), the tile kernel meets the
    /// same bound and agrees with the portable loop to within f32 rounding of the sums; on
    /// any other CPU the test says it checked only the fallback.
    #[test]
    fn the_amx_product_equals_the_portable_one_where_the_cpu_has_amx() {
        check(Kernel::Amx);
        if !amx_available() {
            eprintln!("this CPU has no AMX: the Amx kernel request ran the portable loop");
            return;
        }
        let (m, n, k) = (65, 130, 600);
        let x = randn(m * k, 7);
        let w = randn(n * k, 8);
        let packed = PackedBf16::pack(&w, n, k);
        let amx = packed.matmul_with(&x, m, Kernel::Amx);
        let portable = packed.matmul_with(&x, m, Kernel::Portable);
        let scale = portable.iter().fold(0f32, |s, v| s.max(v.abs()));
        let diff = amx
            .iter()
            .zip(&portable)
            .fold(0f32, |s, (a, b)| s.max((a - b).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "AMX and portable differ by {diff} (scale {scale})"
        );
    }

    #[test]
    fn packing_rounds_each_weight_to_the_nearest_bf16_and_unpacks_it() {
        let (n, k) = (19, 45);
        let w = randn(n * k, 3);
        let packed = PackedBf16::pack(&w, n, k);
        let back = packed.unpack();
        for (a, b) in w.iter().zip(&back) {
            assert_eq!(*b, bf16::from_f32(*a).to_f32());
        }
        // Padded to 32 × 64 (n to 32 columns, k to 64), two bytes a value.
        assert_eq!(packed.bytes(), 32 * 64 * 2);
    }
}
