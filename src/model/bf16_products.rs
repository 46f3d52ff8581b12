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
//! [`SplitBf16::fill_rounded`] keeps one part, for half the work: the two gradient products of
//! `distill --precision bf16` (`distill::cpu_head`) take it, the logits keep two.
//!
//! Three kernels compute that product:
//! - **AMX** (`tdpbf16ps`, Intel Sapphire Rapids and later, where the kernel lets the process
//!   use the tile registers): 16 × 16 × 32 products per instruction. Measured on a Xeon of
//!   family 6 model 207: about 3 TFLOP/s per core from the instruction alone, against 0.2 for
//!   f32 FMA.
//! - **`vdpbf16ps`** (AVX-512 with `avx512_bf16`, no AMX: AMD Zen 4 and later, Intel Cooper
//!   Lake): 16 columns × one pair of `k` per instruction. Its worth depends on the core: on a
//!   Xeon of family 6 model 207 it gives half the FLOP/s of f32 FMA (so that CPU uses AMX), on
//!   an AMD EPYC of family 25 model 17 (Zen 4) twice (`cargo bench --bench peak_flops`: 234
//!   against 117 GFLOP/s per core). With two parts a product then costs what an f32 one does.
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
/// `k` values a product kernel takes against every block of its task before the next: the
/// task's tiles of one chunk (32 rows × 1024 `k` × two parts, 128 KiB, and 64 KiB of the right
/// operand per 32 columns) stay in a core's L2 cache.
const K_CHUNK: usize = 1024;
/// Rows one task of [`SplitBf16::fill_scaled`] splits: two blocks, so every band it writes is
/// whole (`mp` is a multiple of it) and a transposed source is read in runs of 256 bytes.
const GROUP_ROWS: usize = 2 * BLOCK;

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
    /// `tdpbf16ps` on tiles ([`amx_available`]).
    Amx,
    /// AVX-512 `vdpbf16ps` on 16 columns a register ([`dpbf16_available`]).
    Dpbf16,
    Portable,
}

impl Kernel {
    /// AMX where the CPU has `amx-bf16` and the kernel grants the process the tile state;
    /// else `vdpbf16ps` where the CPU has `avx512_bf16`; otherwise portable.
    pub fn best() -> Self {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            if amx_available() {
                Kernel::Amx
            } else if dpbf16_available() {
                Kernel::Dpbf16
            } else {
                Kernel::Portable
            }
        })
    }

    /// Whether this CPU runs this kernel.
    pub fn is_available(self) -> bool {
        self.or_available() == self
    }

    /// This kernel where the CPU runs it, else the best one it does.
    fn or_available(self) -> Self {
        match self {
            Kernel::Amx if !amx_available() => Kernel::best(),
            Kernel::Dpbf16 if !dpbf16_available() => Kernel::Portable,
            k => k,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "AMX tiles",
            Kernel::Dpbf16 => "AVX-512 vdpbf16ps (no AMX on this CPU)",
            Kernel::Portable => "a portable loop (no AMX or avx512_bf16 on this CPU)",
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

crate::vexp::kernel! {
    /// Consecutive panels of [`PackedBf16::repack`] (`panels` holds whole ones): the 16 columns
    /// from `col0` of the first, every `k` block, in vector code for the CPU's widest of
    /// AVX-512 and AVX2.
    fn pack_panels(
        src: &[f32],
        nk: (usize, usize),
        strides: (usize, usize),
        kp: usize,
        col0: usize,
        panels: &mut [u32]
    ) = pack_panels_body;
}

/// Panels one task of [`PackedBf16::repack`] packs.
const PACK_PANELS: usize = 4;

#[inline(always)]
fn pack_panels_body(
    src: &[f32],
    nk: (usize, usize),
    (ns, ks): (usize, usize),
    kp: usize,
    col0: usize,
    panels: &mut [u32],
) {
    let panel_len = kp / TILE_K * TILE * TILE;
    if ns == 1 && ks != 1 {
        // Columns are runs of `src`: one pair of source rows at a time across every panel, so
        // each row is read in runs of 64 columns (256 bytes) rather than in single lines a
        // row apart (`ks` values, often a page or more).
        let count = panels.len() / panel_len;
        for pair in 0..kp / 2 {
            for p in 0..count {
                let at = p * panel_len + pair * TILE;
                pack_pair(
                    src,
                    nk,
                    (ns, ks),
                    col0 + p * TILE,
                    pair,
                    &mut panels[at..at + TILE],
                );
            }
        }
        return;
    }
    // The rows of `ks == 1`, kept from one panel to the next.
    let mut rows = Vec::new();
    for (p, panel) in panels.chunks_exact_mut(panel_len).enumerate() {
        pack_panel_body(src, nk, (ns, ks), kp, col0 + p * TILE, panel, &mut rows);
    }
}

/// Row `pair` of a panel's tiles (`k = 2·pair` and `2·pair + 1` of the 16 columns from
/// `col0`): `entries` holds its 16 values.
#[inline(always)]
fn pack_pair(
    src: &[f32],
    (n, k): (usize, usize),
    (ns, ks): (usize, usize),
    col0: usize,
    pair: usize,
    entries: &mut [u32],
) {
    let (k0, k1) = (2 * pair, 2 * pair + 1);
    if ns == 1 && col0 + TILE <= n && k1 < k {
        let (a, b) = (k0 * ks + col0, k1 * ks + col0);
        for ((e, &x0), &x1) in entries
            .iter_mut()
            .zip(&src[a..a + TILE])
            .zip(&src[b..b + TILE])
        {
            *e = to_bf16_bits(x0) as u32 | (to_bf16_bits(x1) as u32) << 16;
        }
        return;
    }
    for (c, e) in entries.iter_mut().enumerate() {
        let col = col0 + c;
        let at = |l: usize| {
            if col < n && l < k {
                to_bf16_bits(src[col * ns + l * ks]) as u32
            } else {
                0
            }
        };
        *e = at(k0) | at(k1) << 16;
    }
}

#[inline(always)]
fn pack_panel_body(
    src: &[f32],
    (n, k): (usize, usize),
    (ns, ks): (usize, usize),
    kp: usize,
    col0: usize,
    panel: &mut [u32],
    rows: &mut Vec<u16>,
) {
    if ks == 1 {
        // The panel's 16 rows rounded to bf16, each padded with zeros to `kp`.
        rows.clear();
        rows.resize(TILE * kp, 0);
        for (c, row) in rows.chunks_mut(kp).enumerate() {
            if col0 + c < n {
                let at = (col0 + c) * ns;
                for (d, &s) in row[..k].iter_mut().zip(&src[at..at + k]) {
                    *d = to_bf16_bits(s);
                }
            }
        }
        for (i, e) in panel.iter_mut().enumerate() {
            // Entry (kb, r, c): column c's values at k = 32·kb + 2r and 2r + 1.
            let (kb, r, c) = (i / (TILE * TILE), (i / TILE) % TILE, i % TILE);
            let at = c * kp + kb * TILE_K + 2 * r;
            *e = rows[at] as u32 | (rows[at + 1] as u32) << 16;
        }
        return;
    }
    for (pair, entries) in panel.chunks_exact_mut(TILE).enumerate() {
        pack_pair(src, (n, k), (ns, ks), col0, pair, entries);
    }
}

crate::vexp::kernel! {
    /// Tile bands of 16 rows of [`SplitBf16::fill_scaled`] (rows from `row0`, every `k` block;
    /// `parts` hold whole bands), in vector code for the CPU's widest of AVX-512 and AVX2.
    fn split_bands(
        src: &[f32],
        mk: (usize, usize),
        strides: (usize, usize),
        scale: f32,
        row0: usize,
        parts: [&mut [u16]; 2],
        two_parts: bool
    ) = split_bands_body;
}

#[inline(always)]
fn split_bands_body(
    src: &[f32],
    (m, k): (usize, usize),
    (rs, cs): (usize, usize),
    scale: f32,
    row0: usize,
    [hi, lo]: [&mut [u16]; 2],
    two_parts: bool,
) {
    // One part: `lo` is neither read nor written (`hi` alone is what the kernels read).
    let split = |x: f32| -> (u16, u16) {
        let h = to_bf16_bits(x);
        if two_parts {
            (h, to_bf16_bits(x - f32::from_bits((h as u32) << 16)))
        } else {
            (h, 0)
        }
    };
    let tile_len = TILE * TILE_K;
    let k_blocks = k.div_ceil(TILE_K).max(1);
    let band_len = k_blocks * tile_len;
    let bands = hi.len() / band_len;
    let rows = (bands * TILE).min(m.saturating_sub(row0));
    if rows < bands * TILE || k % TILE_K != 0 {
        // Padding: rows beyond `m`, `k` beyond its last multiple of 32.
        hi.fill(0);
        if two_parts {
            lo.fill(0);
        }
    }
    if rs == 1 && cs != 1 {
        // A column of the bands is a run of `src` (up to GROUP_ROWS values, a few cache
        // lines of one page): each run is split in vector code into a small buffer, which
        // is then transposed into the tiles from L1.
        let mut th = [[0u16; GROUP_ROWS]; TILE_K];
        let mut tl = [[0u16; GROUP_ROWS]; TILE_K];
        for kb in 0..k_blocks {
            let width = TILE_K.min(k.saturating_sub(kb * TILE_K));
            for j in 0..width {
                let from = (kb * TILE_K + j) * cs + row0;
                if rows == GROUP_ROWS {
                    let run: &[f32; GROUP_ROWS] = src[from..from + rows].try_into().unwrap();
                    for ((h, l), &x) in th[j].iter_mut().zip(tl[j].iter_mut()).zip(run) {
                        (*h, *l) = split(x * scale);
                    }
                } else {
                    for (r, &x) in src[from..from + rows].iter().enumerate() {
                        (th[j][r], tl[j][r]) = split(x * scale);
                    }
                }
            }
            for r in 0..rows {
                let at = (r / TILE) * band_len + kb * tile_len + (r % TILE) * TILE_K;
                for j in 0..width {
                    hi[at + j] = th[j][r];
                }
                if two_parts {
                    for j in 0..width {
                        lo[at + j] = tl[j][r];
                    }
                }
            }
        }
        return;
    }
    for r in 0..rows {
        let row = row0 + r;
        let band = (r / TILE) * band_len;
        for kb in 0..k_blocks {
            let width = TILE_K.min(k.saturating_sub(kb * TILE_K));
            let at = band + kb * tile_len + (r % TILE) * TILE_K;
            let h = &mut hi[at..at + width];
            if !two_parts {
                // `hi` alone, in runs the compiler vectorizes.
                if cs == 1 {
                    let from = row * rs + kb * TILE_K;
                    for (h, &x) in h.iter_mut().zip(&src[from..from + width]) {
                        *h = to_bf16_bits(x * scale);
                    }
                } else {
                    for (j, h) in h.iter_mut().enumerate() {
                        *h = to_bf16_bits(src[row * rs + (kb * TILE_K + j) * cs] * scale);
                    }
                }
                continue;
            }
            let l = &mut lo[at..at + width];
            if cs == 1 {
                let from = row * rs + kb * TILE_K;
                for ((h, l), &x) in h.iter_mut().zip(l.iter_mut()).zip(&src[from..from + width]) {
                    (*h, *l) = split(x * scale);
                }
            } else {
                for (j, (h, l)) in h.iter_mut().zip(l.iter_mut()).enumerate() {
                    (*h, *l) = split(src[row * rs + (kb * TILE_K + j) * cs] * scale);
                }
            }
        }
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
        let mut packed = Self::empty();
        packed.repack(weight, n, k, (k, 1));
        packed
    }

    /// A packing of nothing, whose buffer [`repack`](Self::repack) grows and keeps.
    pub fn empty() -> Self {
        Self {
            n: 0,
            k: 0,
            kp: TILE_K,
            np: BLOCK,
            data: Vec::new(),
        }
    }

    /// Round and pack `[n, k]` whose element (column `j`, `k` index `l`) is
    /// `src[j * strides.0 + l * strides.1]`, into the buffer this packing already holds (no
    /// allocation once it has held one as large). Two layouts run in vector code: `k`
    /// contiguous (`strides.1 == 1`, a linear layer's `[out, in]`) and columns contiguous
    /// (`strides.0 == 1`, the transpose of a row-major matrix); any other is read one value
    /// at a time.
    pub fn repack(&mut self, src: &[f32], n: usize, k: usize, (ns, ks): (usize, usize)) {
        if n > 0 && k > 0 {
            assert!(
                (n - 1) * ns + (k - 1) * ks < src.len(),
                "{n} × {k} with strides ({ns}, {ks}) outside {} values",
                src.len()
            );
        }
        let kp = k.div_ceil(TILE_K).max(1) * TILE_K;
        let np = n.div_ceil(BLOCK).max(1) * BLOCK;
        let k_blocks = kp / TILE_K;
        (self.n, self.k, self.kp, self.np) = (n, k, kp, np);
        // Every entry of the first `np · kp / 2` is written below; the buffer only grows.
        if self.data.len() < np * kp / 2 {
            self.data.resize(np * kp / 2, 0);
        }
        self.data[..np * kp / 2]
            .par_chunks_mut(PACK_PANELS * k_blocks * TILE * TILE)
            .enumerate()
            .for_each(|(t, panels)| {
                pack_panels(src, (n, k), (ns, ks), kp, t * PACK_PANELS * TILE, panels)
            });
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
        self.np * self.kp * 2
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
        let mut a = SplitBf16::default();
        a.fill(x, m, self.k, (self.k, 1));
        let mut out = vec![0f32; m * self.n];
        self.product_into(&a, &mut out, Store::PLAIN, kernel);
        out
    }

    /// `A · Bᵀ` into `out` as `store` says, for `A` the split left operand `[m, k]` and `B`
    /// this packing `[n, k]`: `out` holds `[m, n]` row-major.
    pub fn product_into(&self, a: &SplitBf16, out: &mut [f32], store: Store, kernel: Kernel) {
        assert_eq!(a.k, self.k, "left operand of {} × {}", a.m, a.k);
        let m = a.m;
        assert!(out.len() >= m * self.n, "output of {} values", out.len());
        if m == 0 || self.n == 0 {
            return;
        }
        let kernel = kernel.or_available();
        let out = SharedOut {
            ptr: out.as_mut_ptr(),
            m,
            n: self.n,
            store,
        };
        // Tasks of whole 32 × 32 blocks. Every task reads all of one operand and its own band
        // of the other, so the larger operand is the one cut into bands: columns (about four
        // bands per thread) when the right operand has more rows than the left, else rows (two
        // per thread; each band then reads the right operand once, chunk by chunk).
        let threads = rayon::current_num_threads().max(1);
        let (row_blocks, col_blocks) = (m.div_ceil(BLOCK), self.np / BLOCK);
        let (row_tasks, col_tasks) = if m > self.n {
            (row_blocks.min(2 * threads), 1)
        } else {
            (1, col_blocks.min(4 * threads))
        };
        let (rows_per, cols_per) = (
            row_blocks.div_ceil(row_tasks),
            col_blocks.div_ceil(col_tasks),
        );
        let tasks: Vec<_> = (0..row_blocks.div_ceil(rows_per))
            .flat_map(|r| {
                (0..col_blocks.div_ceil(cols_per)).map(move |c| {
                    (
                        r * rows_per..((r + 1) * rows_per).min(row_blocks),
                        c * cols_per..((c + 1) * cols_per).min(col_blocks),
                    )
                })
            })
            .collect();
        tasks.into_par_iter().for_each(|(rows, cols)| {
            // SAFETY: each task writes only the output blocks of its rows and columns.
            match kernel {
                Kernel::Amx => unsafe { self.amx_blocks(a, rows, cols, &out) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Dpbf16 => unsafe { self.dpbf16_blocks(a, rows, cols, &out) },
                _ => unsafe { self.portable_blocks(a, rows, cols, &out) },
            }
        });
    }

    /// `k` blocks of 32, blocks per chunk of [`K_CHUNK`], and chunks.
    fn k_chunks(&self) -> (usize, usize, usize) {
        let k_blocks = self.kp / TILE_K;
        let chunk_blocks = (K_CHUNK / TILE_K).min(k_blocks);
        (k_blocks, chunk_blocks, k_blocks.div_ceil(chunk_blocks))
    }

    /// The output blocks of rows `[32·r, 32·r + 32)` for `r` in `rows` and columns
    /// `[32·b, 32·b + 32)` for `b` in `cols`, by the tile instructions. `k` is taken in chunks
    /// of [`K_CHUNK`] values, each chunk against every block of the task, so the task's
    /// operands of one chunk stay in the core's cache; the sums of a block between chunks wait
    /// in a scratch buffer (none when `k` is one chunk).
    ///
    /// # Safety
    /// The CPU has AMX and the tile state was granted ([`amx_available`]); no other task
    /// writes these output blocks.
    unsafe fn amx_blocks(
        &self,
        split: &SplitBf16,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        out: &SharedOut,
    ) {
        let (a, a_lo, m) = (&split.hi, &split.lo, split.m);
        let kp = self.kp;
        let (k_blocks, chunk_blocks, chunks) = self.k_chunks();
        // An activation tile is contiguous: rows 64 bytes apart.
        let a_stride = TILE_K * 2;
        let tile_len = TILE * TILE;
        let cfg = TileConfig::new();
        let mut c = [0f32; BLOCK * BLOCK];
        // One 32 × 32 block of sums per block of the task, between chunks.
        let mut scratch = if chunks > 1 {
            vec![0f32; rows.len() * cols.len() * BLOCK * BLOCK]
        } else {
            Vec::new()
        };
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack));
        }
        for chunk in 0..chunks {
            let kbs = chunk * chunk_blocks..((chunk + 1) * chunk_blocks).min(k_blocks);
            let last = chunk + 1 == chunks;
            for (ri, mb) in rows.clone().enumerate() {
                // Row tiles 2·mb and 2·mb + 1, each `k_blocks` tiles of 512 values.
                let a0 = a[2 * mb * kp * TILE..].as_ptr();
                let a1 = a[(2 * mb + 1) * kp * TILE..].as_ptr();
                let l0 = a_lo[2 * mb * kp * TILE..].as_ptr();
                let l1 = a_lo[(2 * mb + 1) * kp * TILE..].as_ptr();
                for (ci, b) in cols.clone().enumerate() {
                    let b0 = self.data[2 * b * k_blocks * tile_len..].as_ptr();
                    let b1 = self.data[(2 * b + 1) * k_blocks * tile_len..].as_ptr();
                    // A whole block of the output keeps its sums in the output itself between
                    // chunks, and starts from the output's values when accumulating; a block
                    // cut by `m` or `n` keeps them in `scratch` and goes out through `c`.
                    let in_place = (mb + 1) * BLOCK <= m && (b + 1) * BLOCK <= self.n;
                    let (held, held_stride, held_row_step) = if in_place {
                        (
                            out.at(mb * BLOCK * self.n + b * BLOCK),
                            self.n * 4,
                            TILE * self.n,
                        )
                    } else {
                        (
                            scratch
                                .get_mut((ri * cols.len() + ci) * BLOCK * BLOCK..)
                                .map_or(std::ptr::null_mut(), |s| s.as_mut_ptr()),
                            BLOCK * 4,
                            TILE * BLOCK,
                        )
                    };
                    let load = chunk > 0 || (in_place && out.store.accumulate);
                    unsafe {
                        if !load {
                            asm!(
                                "tilezero tmm0",
                                "tilezero tmm1",
                                "tilezero tmm2",
                                "tilezero tmm3",
                                options(nostack)
                            );
                        } else {
                            asm!(
                                "tileloadd tmm0, [{c0} + {s}*1]",
                                "tileloadd tmm1, [{c1} + {s}*1]",
                                "tileloadd tmm2, [{c2} + {s}*1]",
                                "tileloadd tmm3, [{c3} + {s}*1]",
                                c0 = in(reg) held,
                                c1 = in(reg) held.add(TILE),
                                c2 = in(reg) held.add(held_row_step),
                                c3 = in(reg) held.add(held_row_step + TILE),
                                s = in(reg) held_stride,
                                options(nostack, readonly)
                            );
                        }
                        for kb in kbs.clone() {
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
                            if split.one_part {
                                continue;
                            }
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
                        let (base, stride, row_step) = if in_place || !last {
                            (held, held_stride, held_row_step)
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
                        if in_place || !last {
                            continue;
                        }
                        // `c` is the 32 × 32 block, row-major.
                        out.put(mb * BLOCK, b * BLOCK, &c, BLOCK);
                    }
                }
            }
        }
        unsafe {
            asm!("tilerelease", options(nostack));
        }
    }

    /// The same blocks as [`amx_blocks`](Self::amx_blocks) by `vdpbf16ps`: [`DP_ROWS`] rows
    /// × 32 columns at a time ([`dpbf16_rows`]), `k` in chunks of [`K_CHUNK`] as there (the
    /// sums of the task between chunks wait in a scratch buffer; none when `k` is one chunk).
    ///
    /// # Safety
    /// The CPU has `avx512f` and `avx512_bf16` ([`dpbf16_available`]); no other task writes
    /// these output blocks.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dpbf16_blocks(
        &self,
        split: &SplitBf16,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        out: &SharedOut,
    ) {
        let kp = self.kp;
        let (k_blocks, chunk_blocks, chunks) = self.k_chunks();
        let tile_len = TILE * TILE;
        let first = rows.start * BLOCK;
        // Whole groups of rows: the split is zero beyond `m`, to a multiple of 64 rows.
        let last = (rows.end * BLOCK).min(split.m.next_multiple_of(DP_ROWS));
        let width = cols.len() * BLOCK;
        let mut scratch = if chunks > 1 {
            vec![0f32; (last - first) * width]
        } else {
            Vec::new()
        };
        let mut sums = [0f32; DP_ROWS * BLOCK];
        for chunk in 0..chunks {
            let kbs = chunk * chunk_blocks..((chunk + 1) * chunk_blocks).min(k_blocks);
            for (ci, b) in cols.clone().enumerate() {
                if b * BLOCK >= self.n {
                    break;
                }
                let w = [
                    self.data[2 * b * k_blocks * tile_len..].as_ptr(),
                    self.data[(2 * b + 1) * k_blocks * tile_len..].as_ptr(),
                ];
                for row in (first..last).step_by(DP_ROWS) {
                    // The group's first row in its row tiles (a group never crosses a tile).
                    let at = (row / TILE) * kp * TILE + (row % TILE) * TILE_K;
                    let parts = [split.hi[at..].as_ptr(), split.lo[at..].as_ptr()];
                    // SAFETY: the group's rows and the block's two panels hold every `k` block
                    // of `kbs` (the split and the packing are padded to whole tiles).
                    unsafe {
                        if split.one_part {
                            dpbf16_rows::<1>(parts, w, kbs.clone(), &mut sums)
                        } else {
                            dpbf16_rows::<2>(parts, w, kbs.clone(), &mut sums)
                        }
                    };
                    if chunks == 1 {
                        // SAFETY: this task's block; `put` cuts it at `m` and `n`.
                        unsafe { out.put(row, b * BLOCK, &sums, BLOCK) };
                    } else {
                        for (r, s) in sums.chunks_exact(BLOCK).enumerate() {
                            let at = (row - first + r) * width + ci * BLOCK;
                            for (d, v) in scratch[at..at + BLOCK].iter_mut().zip(s) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
        if chunks > 1 {
            // SAFETY: this task's rows and columns, cut at `m` and `n` by `put`.
            unsafe { out.put(first, cols.start * BLOCK, &scratch, width) };
        }
    }

    /// The same blocks as [`amx_blocks`](Self::amx_blocks), one pair of `k` at a time: the
    /// even product, then the odd one, added in f32 (the tile instruction's definition).
    ///
    /// # Safety
    /// No other task writes these output columns.
    unsafe fn portable_blocks(
        &self,
        split: &SplitBf16,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        out: &SharedOut,
    ) {
        let kp = self.kp;
        let k_blocks = kp / TILE_K;
        let mut acc = [0f32; TILE];
        for nb in cols.start * 2..cols.end * 2 {
            let col0 = nb * TILE;
            if col0 >= self.n {
                break;
            }
            let panel = &self.data[nb * k_blocks * TILE * TILE..(nb + 1) * k_blocks * TILE * TILE];
            for row in rows.start * BLOCK..(rows.end * BLOCK).min(split.m) {
                // The row's values in its row tiles, 32 `k` a tile, `hi` then `lo`.
                let at_row = (row / TILE) * kp * TILE;
                acc.fill(0.0);
                for (kb, w_tile) in panel.chunks_exact(TILE * TILE).enumerate() {
                    let at = at_row + kb * TILE * TILE_K + (row % TILE) * TILE_K;
                    for part in split.parts() {
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
                unsafe { out.put(row, col0, &acc, TILE) };
            }
        }
    }
}

/// How a product's `[m, n]` result goes into its output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Store {
    /// Add into the output's values instead of replacing them.
    pub accumulate: bool,
}

impl Store {
    /// `out = A · Bᵀ`.
    pub const PLAIN: Self = Self { accumulate: false };
}

/// The left operand of a product, `[m, k]` in f32, split into two bf16 parts (`hi = round(x)`,
/// `lo = round(x − hi)`) laid out as AMX tiles: for each 16 rows, for each 32 `k`, a contiguous
/// 1 KiB tile (row-major, 16 × 32), zeros beyond `m` (to a multiple of 32) and `k`. The buffers
/// are kept by [`fill`](Self::fill), so a reused split allocates nothing.
/// [`fill_rounded`](Self::fill_rounded) keeps `hi` alone: the products then take `round(x)`.
#[derive(Default)]
pub struct SplitBf16 {
    m: usize,
    k: usize,
    hi: Vec<u16>,
    lo: Vec<u16>,
    /// `hi` alone (`lo` is stale and unread).
    one_part: bool,
}

impl SplitBf16 {
    /// The parts the products read: `hi`, then `lo` unless there is one part.
    fn parts(&self) -> impl Iterator<Item = &Vec<u16>> {
        [&self.hi, &self.lo]
            .into_iter()
            .take(if self.one_part { 1 } else { 2 })
    }

    /// Split `[m, k]` whose element `(i, l)` is `src[i * strides.0 + l * strides.1]`. Rows
    /// (`strides.1 == 1`) and columns (`strides.0 == 1`, the transpose of a row-major matrix)
    /// run in vector code, any other layout one value at a time.
    pub fn fill(&mut self, src: &[f32], m: usize, k: usize, strides: (usize, usize)) {
        self.fill_scaled(src, m, k, strides, 1.0);
    }

    /// [`fill`](Self::fill) with every value multiplied by `scale` before it is split.
    pub fn fill_scaled(
        &mut self,
        src: &[f32],
        m: usize,
        k: usize,
        strides: (usize, usize),
        scale: f32,
    ) {
        self.fill_parts(src, (m, k), strides, scale, true);
    }

    /// [`fill_scaled`](Self::fill_scaled) keeping one part, `round(scale · x)` (relative
    /// error 2⁻⁹ where two parts keep 2⁻¹⁷): the products then cost one bf16 product each,
    /// half the work of two parts.
    pub fn fill_rounded(
        &mut self,
        src: &[f32],
        m: usize,
        k: usize,
        strides: (usize, usize),
        scale: f32,
    ) {
        self.fill_parts(src, (m, k), strides, scale, false);
    }

    fn fill_parts(
        &mut self,
        src: &[f32],
        (m, k): (usize, usize),
        (rs, cs): (usize, usize),
        scale: f32,
        two_parts: bool,
    ) {
        if m > 0 && k > 0 {
            assert!(
                (m - 1) * rs + (k - 1) * cs < src.len(),
                "{m} × {k} with strides ({rs}, {cs}) outside {} values",
                src.len()
            );
        }
        let kp = k.div_ceil(TILE_K).max(1) * TILE_K;
        let mp = m.div_ceil(GROUP_ROWS).max(1) * GROUP_ROWS;
        (self.m, self.k, self.one_part) = (m, k, !two_parts);
        // Every entry of the first `mp · kp` is written below; the buffers only grow (and are
        // never shrunk, so a smaller fill after a larger one zeroes nothing).
        for part in [&mut self.hi, &mut self.lo] {
            if part.len() < mp * kp {
                part.resize(mp * kp, 0);
            }
        }
        self.hi[..mp * kp]
            .par_chunks_mut(GROUP_ROWS * kp)
            .zip(self.lo[..mp * kp].par_chunks_mut(GROUP_ROWS * kp))
            .enumerate()
            .for_each(|(g, (hi, lo))| {
                split_bands(
                    src,
                    (m, k),
                    (rs, cs),
                    scale,
                    g * GROUP_ROWS,
                    [hi, lo],
                    two_parts,
                )
            });
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.m
    }
}

impl Default for TileConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The output of [`PackedBf16::product_into`], shared by tasks that write disjoint columns of
/// the `[m, n]` result, and how they write it.
struct SharedOut {
    ptr: *mut f32,
    m: usize,
    n: usize,
    store: Store,
}

// SAFETY: tasks write disjoint elements (`product_into`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(&self, at: usize) -> *mut f32 {
        self.ptr.wrapping_add(at)
    }

    /// Result rows from `row0` and columns from `col0`, `values[r * stride + j]` for each row
    /// and column of the output it covers (cut at `m` and `n`), written as `store` says.
    ///
    /// # Safety
    /// The output holds `m × n` values and no other thread writes these elements.
    unsafe fn put(&self, row0: usize, col0: usize, values: &[f32], stride: usize) {
        let rows = (values.len() / stride).min(self.m - row0);
        let cols = stride.min(self.n - col0);
        let accumulate = self.store.accumulate;
        for r in 0..rows {
            let src = &values[r * stride..r * stride + cols];
            // SAFETY: (row0 + r, col0 .. col0 + cols) is a run of one row inside [m, n].
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.ptr.add((row0 + r) * self.n + col0), cols)
            };
            if accumulate {
                dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
            } else {
                dst.copy_from_slice(src);
            }
        }
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

/// Rows [`dpbf16_blocks`](PackedBf16::dpbf16_blocks) takes at a time: 4 rows × 2 parts ×
/// 2 panels of 16 columns is 16 accumulator registers, and each pair of `k` loads 2 weight
/// registers and broadcasts 8 pairs of activations for 16 `vdpbf16ps`.
const DP_ROWS: usize = 4;

/// `sums[r · 32 + c]` = row `r` of the group times column `c` of the block, over the `k`
/// blocks `kbs`: the first `PARTS` of the `hi` and `lo` parts (`parts`, each pointing at the
/// group's first row in its row tile; the group's rows follow 32 values apart) against the block's two panels of
/// 16 columns (`w`, each at its first `k` block), per pair of `k` one `vdpbf16ps` per part,
/// row and panel (each product of two bf16 values is exact in f32; the sums round in f32).
///
/// # Safety
/// The CPU has `avx512f` and `avx512_bf16`; `parts` and `w` hold every `k` block of `kbs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_rows<const PARTS: usize>(
    parts: [*const u16; 2],
    w: [*const u32; 2],
    kbs: std::ops::Range<usize>,
    sums: &mut [f32; DP_ROWS * BLOCK],
) {
    use std::arch::x86_64::*;
    // acc[(row · 2 + part) · 2 + panel]
    let mut acc = [_mm512_setzero_ps(); DP_ROWS * 4];
    for kb in kbs {
        let tile = kb * TILE * TILE;
        let a_tile = kb * TILE * TILE_K;
        for pair in 0..TILE {
            // 32 bf16 values a register, as `vdpbf16ps` takes them (the same 512 bits).
            let bh = |v: __m512i| unsafe { std::mem::transmute::<__m512i, __m512bh>(v) };
            // SAFETY (all loads): inside the tiles the caller vouches for.
            let b = unsafe {
                [
                    bh(_mm512_loadu_si512(w[0].add(tile + pair * TILE).cast())),
                    bh(_mm512_loadu_si512(w[1].add(tile + pair * TILE).cast())),
                ]
            };
            for r in 0..DP_ROWS {
                for (p, part) in parts.iter().enumerate().take(PARTS) {
                    let x = unsafe {
                        part.add(a_tile + r * TILE_K + 2 * pair)
                            .cast::<i32>()
                            .read_unaligned()
                    };
                    let x = bh(_mm512_set1_epi32(x));
                    let i = (r * 2 + p) * 2;
                    acc[i] = _mm512_dpbf16_ps(acc[i], x, b[0]);
                    acc[i + 1] = _mm512_dpbf16_ps(acc[i + 1], x, b[1]);
                }
            }
        }
    }
    for (r, row) in sums.chunks_exact_mut(BLOCK).enumerate() {
        let i = r * 4;
        // SAFETY: `row` holds 32 values.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), _mm512_add_ps(acc[i], acc[i + 2]));
            _mm512_storeu_ps(
                row[TILE..].as_mut_ptr(),
                _mm512_add_ps(acc[i + 1], acc[i + 3]),
            );
        }
    }
}

/// Whether the CPU has AVX-512 with `avx512_bf16` (and `TAIDCACHE_NO_DPBF16` is unset, which
/// forces the portable loop on such a CPU).
pub fn dpbf16_available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        if std::env::var_os("TAIDCACHE_NO_DPBF16").is_some() {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
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

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs()))
    }

    fn round(x: f32) -> f64 {
        bf16::from_f32(x).to_f64()
    }

    /// Every entry `(i, j)` of an `m × n` result has its error (`err_bound`'s first value)
    /// within its bound (the second).
    fn assert_within(
        kernel: Kernel,
        (m, n, k): (usize, usize, usize),
        err_bound: impl Fn(usize, usize) -> (f64, f64),
    ) {
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let (err, bound) = err_bound(i, j);
                worst = worst.max(err / (bound + 1e-30));
            }
        }
        assert!(
            worst <= 1.0,
            "{kernel:?} {m}×{n}×{k}: error {worst:.3} of its bound"
        );
    }

    /// `Σ_l a(l) · round(b(l))` over `k` in f64, and the bound the method allows on it: the
    /// split of `a` (2⁻¹⁷ of each product) plus f32 rounding of `2k` additions (2⁻²⁴ of the
    /// products' magnitudes each).
    fn reference(k: usize, a: impl Fn(usize) -> f32, b: impl Fn(usize) -> f32) -> (f64, f64) {
        let (mut exact, mut mag) = (0f64, 0f64);
        for l in 0..k {
            let p = a(l) as f64 * round(b(l));
            exact += p;
            mag += p.abs();
        }
        (
            exact,
            mag * (2.0 * k as f64 * 2f64.powi(-24) + 2f64.powi(-17)),
        )
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
            assert_within(kernel, (m, n, k), |i, j| {
                let (exact, bound) = reference(k, |l| x[i * k + l], |l| w[j * k + l]);
                ((y[i * n + j] as f64 - exact).abs(), bound)
            });
        }
    }

    #[test]
    fn the_portable_product_is_the_split_activations_times_the_bf16_weights() {
        check(Kernel::Portable);
    }

    /// `kernel` against the portable loop on a product whose `k` (1,100) spans two of the
    /// kernels' chunks of `k` and whose `m` and `n` are cut off the blocks: equal to within f32
    /// rounding of the sums (1e-5 of the largest entry). `false` where the CPU lacks `kernel`.
    fn equals_portable(kernel: Kernel) -> bool {
        if !kernel.is_available() {
            eprintln!("this CPU lacks {kernel:?}: checked only the kernel it runs instead");
            return false;
        }
        let (m, n, k) = (65, 130, 1_100);
        let x = randn(m * k, 7);
        let w = randn(n * k, 8);
        let packed = PackedBf16::pack(&w, n, k);
        let fast = packed.matmul_with(&x, m, kernel);
        let portable = packed.matmul_with(&x, m, Kernel::Portable);
        let scale = portable.iter().fold(0f32, |s, v| s.max(v.abs()));
        let diff = max_diff(&fast, &portable);
        assert!(
            diff <= 1e-5 * scale,
            "{kernel:?} and portable differ by {diff} (scale {scale})"
        );
        true
    }

    /// On a CPU with AMX (checked by CPUID and the kernel's grant), the tile kernel meets the
    /// same bound and agrees with the portable loop to within f32 rounding of the sums; on
    /// any other CPU the test says it checked only the kernel that ran instead.
    #[test]
    fn the_amx_product_equals_the_portable_one_where_the_cpu_has_amx() {
        check(Kernel::Amx);
        equals_portable(Kernel::Amx);
    }

    /// The same for `vdpbf16ps` on a CPU with `avx512_bf16`; here the kernel's sums go
    /// through a scratch buffer between chunks of `k`.
    #[test]
    fn the_dpbf16_product_equals_the_portable_one_where_the_cpu_has_avx512_bf16() {
        check(Kernel::Dpbf16);
        if equals_portable(Kernel::Dpbf16) {
            // Accumulating over chunks of `k` into an output that already holds values.
            let (m, n, k) = (9, 40, 2_100);
            let x = randn(m * k, 9);
            let packed = PackedBf16::pack(&randn(n * k, 10), n, k);
            let mut a = SplitBf16::default();
            a.fill(&x, m, k, (k, 1));
            let init = randn(m * n, 11);
            let (mut fast, mut portable) = (init.clone(), init.clone());
            let store = Store { accumulate: true };
            packed.product_into(&a, &mut fast, store, Kernel::Dpbf16);
            packed.product_into(&a, &mut portable, store, Kernel::Portable);
            let scale = portable.iter().fold(0f32, |s, v| s.max(v.abs()));
            let diff = max_diff(&fast, &portable);
            assert!(diff <= 1e-5 * scale, "accumulating: {diff} (scale {scale})");
        }
    }

    /// `product_into` in the layouts the CPU student's output projection uses
    /// (`distill::cpu_head`): the left operand split from a transposed source and scaled, the
    /// right one packed from a column-contiguous source and from a strided one, and an
    /// accumulating store. Each entry against an f64 sum with `check`'s bound, plus the f32
    /// rounding of the final addition.
    fn check_layouts(kernel: Kernel) {
        for (m, n, k) in [(5, 40, 33), (33, 70, 65), (40, 17, 100)] {
            // A [m, k] stored transposed; B [n, k] stored as [k, n] and, for the strided
            // case, as every other value of [n, 2k].
            let a_t = randn(k * m, 11 + m as u64);
            let b_t = randn(k * n, 12 + n as u64);
            let mut b_wide = vec![f32::NAN; n * 2 * k];
            for j in 0..n {
                for l in 0..k {
                    b_wide[j * 2 * k + 2 * l] = b_t[l * n + j];
                }
            }
            let mut left = SplitBf16::default();
            // A first fill of another shape, so the buffers are reused with stale values.
            left.fill(&randn(70 * 90, 5), 70, 90, (90, 1));
            left.fill_scaled(&a_t, m, k, (1, m), 0.25);
            assert_eq!(left.rows(), m);
            let mut from_columns = PackedBf16::empty();
            from_columns.repack(&randn(64 * 64, 6), 64, 64, (64, 1));
            from_columns.repack(&b_t, n, k, (1, n));
            let mut strided = PackedBf16::empty();
            strided.repack(&b_wide, n, k, (2 * k, 2));
            assert_eq!(from_columns.unpack(), strided.unpack());
            let init = randn(m * n, 13);
            for packed in [&from_columns, &strided] {
                let mut out = init.clone();
                packed.product_into(&left, &mut out, Store { accumulate: true }, kernel);
                assert_within(kernel, (m, n, k), |i, j| {
                    // 0.25 is a power of two: scaling before the split changes no rounding.
                    let (exact, bound) = reference(k, |l| a_t[l * m + i], |l| b_t[l * n + j]);
                    let want = init[i * n + j] as f64 + 0.25 * exact;
                    let err = (out[i * n + j] as f64 - want).abs();
                    (err, 0.25 * bound + want.abs() * 2f64.powi(-23))
                });
            }
        }
    }

    #[test]
    fn strided_operands_and_a_scaled_accumulating_store_meet_the_bound() {
        check_layouts(Kernel::Portable);
        check_layouts(Kernel::Amx);
        check_layouts(Kernel::Dpbf16);
    }

    /// [`SplitBf16::fill_rounded`]: each entry of `round(s·x) · round(W)ᵀ` on every kernel
    /// this CPU has, against an f64 sum of the rounded values, within the f32 rounding of `2k`
    /// additions alone (2⁻²⁴ of the products' magnitudes each: a product of two bf16 values is
    /// exact). The split first holds a two-part fill of the same rows, so a kernel that read
    /// its stale `lo` would be off by about 2⁻⁹, thousands of times the bound at these `k`
    /// (one of them spans two chunks of `k`).
    #[test]
    fn one_part_products_are_the_rounded_activations_times_the_bf16_weights() {
        for kernel in [Kernel::Portable, Kernel::Dpbf16, Kernel::Amx] {
            if !kernel.is_available() {
                eprintln!("this CPU lacks {kernel:?}: not checked");
                continue;
            }
            for (m, n, k) in [(3, 17, 31), (33, 47, 33), (70, 33, 1_100)] {
                let x = randn(m * k, 21 + m as u64);
                let w = randn(n * k, 22 + n as u64);
                let packed = PackedBf16::pack(&w, n, k);
                let mut a = SplitBf16::default();
                a.fill(&x, m, k, (k, 1));
                a.fill_rounded(&x, m, k, (k, 1), 0.5);
                let mut y = vec![f32::NAN; m * n];
                packed.product_into(&a, &mut y, Store::PLAIN, kernel);
                assert_within(kernel, (m, n, k), |i, j| {
                    let (mut exact, mut mag) = (0f64, 0f64);
                    for l in 0..k {
                        let p = round(0.5 * x[i * k + l]) * round(w[j * k + l]);
                        exact += p;
                        mag += p.abs();
                    }
                    let err = (y[i * n + j] as f64 - exact).abs();
                    (err, mag * 2.0 * k as f64 * 2f64.powi(-24))
                });
            }
        }
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
