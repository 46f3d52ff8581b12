//! What one core of this CPU can do, from registers (no memory traffic): f32 FMA (AVX-512 and
//! AVX2), AVX-512 `vdpbf16ps`, and AMX `tdpbf16ps`, each on enough independent accumulators to
//! hide its latency. The ceilings the achieved GFLOP/s of `docs/performance.md` are read
//! against, and why `--dtype bf16` on the CPU uses AMX and not `vdpbf16ps`.
//!
//! ```sh
//! cargo bench --bench peak_flops
//! ```
//!
//! One thread; each kernel runs three times and the best is printed. A kernel the CPU lacks is
//! skipped with a line saying so.

use std::time::Instant;

fn best_of_three(flop: f64, f: impl Fn() -> f32) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            flop / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    pub const ITERS: usize = 20_000_000;
    /// Independent accumulators per kernel.
    pub const ACC: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512() -> f32 {
        let b = _mm512_set1_ps(0.999);
        let mut a = [_mm512_set1_ps(1.0); ACC];
        for _ in 0..ITERS {
            for x in a.iter_mut() {
                *x = _mm512_fmadd_ps(*x, b, b);
            }
        }
        a.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256() -> f32 {
        let b = _mm256_set1_ps(0.999);
        let mut a = [_mm256_set1_ps(1.0); ACC];
        for _ in 0..ITERS {
            for x in a.iter_mut() {
                *x = _mm256_fmadd_ps(*x, b, b);
            }
        }
        let mut out = [0f32; 8];
        let s = a
            .iter()
            .fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16() -> f32 {
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let mut a = [_mm512_setzero_ps(); ACC];
        for _ in 0..ITERS {
            for x in a.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, b, b);
            }
        }
        a.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }

    /// Four `tdpbf16ps` per iteration into four accumulator tiles, from operand tiles loaded
    /// once. Needs the tile state ([`taidcache::model::bf16_products::amx_available`]).
    pub unsafe fn amx() -> f32 {
        let cfg = taidcache::model::bf16_products::TileConfig::new();
        let ones = vec![0x3f80_3f80u32; 256];
        let mut c = vec![0f32; 256];
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) &cfg as *const _);
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3"
            );
            asm!(
                "tileloadd tmm4, [{0} + {1}*1]",
                "tileloadd tmm5, [{0} + {1}*1]",
                "tileloadd tmm6, [{0} + {1}*1]",
                "tileloadd tmm7, [{0} + {1}*1]",
                in(reg) ones.as_ptr(),
                in(reg) 64usize
            );
            for _ in 0..ITERS / 8 {
                asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack)
                );
            }
            asm!("tilestored [{0} + {1}*1], tmm0", in(reg) c.as_mut_ptr(), in(reg) 64usize);
            asm!("tilerelease");
        }
        c[0]
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::*;
        let lane_flop = |lanes: usize, per_lane: usize| (ITERS * ACC * lanes * per_lane) as f64;
        println!("one core, from registers (best of three):");
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature.
            let g = best_of_three(lane_flop(16, 2), || unsafe { fma512() });
            println!("  f32 FMA, AVX-512 (vfmadd, 16 lanes × 2 FLOP): {g:.0} GFLOP/s");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features.
            let g = best_of_three(lane_flop(8, 2), || unsafe { fma256() });
            println!("  f32 FMA, AVX2 (vfmadd, 8 lanes × 2 FLOP): {g:.0} GFLOP/s");
        }
        if is_x86_feature_detected!("avx512bf16") {
            // SAFETY: the CPU has the feature.
            let g = best_of_three(lane_flop(16, 4), || unsafe { dpbf16() });
            println!("  bf16 pairs, AVX-512 (vdpbf16ps, 16 lanes × 4 FLOP): {g:.0} GFLOP/s");
        } else {
            println!("  bf16 pairs, AVX-512: this CPU has no avx512_bf16");
        }
        if taidcache::model::bf16_products::amx_available() {
            let flop = (ITERS / 8 * 4 * 16 * 16 * 32 * 2) as f64;
            // SAFETY: AMX is present and granted.
            let g = best_of_three(flop, || unsafe { amx() });
            println!("  bf16 tiles, AMX (tdpbf16ps, 16 × 16 × 32 × 2 FLOP): {g:.0} GFLOP/s");
        } else {
            println!("  bf16 tiles, AMX: not on this CPU (or not granted by the kernel)");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("peak_flops measures x86-64 kernels only");
}
