//! The AVX2 + FMA kernel: `MR × NR = 6 × 16` register tile (12 ymm accumulators, 2 loads of B
//! and 6 broadcasts of A per step of k), blocked for Zen 3/4 caches (L1d 32 KiB, L2 ≥ 512 KiB):
//! a `KC × NR` panel of B (16 KiB) stays in L1, an `MC × KC` block of A (≤ 192 KiB) in L2.

use super::scalar::Emu;
use super::{BlockArgs, Isa, Kernel};

pub(crate) const MR: usize = 6;
pub(crate) const NV: usize = 2;
pub(crate) const LANES: usize = 8;
pub(crate) const KC: usize = 256;
pub(crate) const MC: usize = 144;
pub(crate) const NC: usize = 3072;

#[cfg(target_arch = "x86_64")]
mod native {
    use std::arch::x86_64::*;

    use super::super::{BlockArgs, Simd};

    #[derive(Clone, Copy)]
    pub(crate) struct Ymm(__m256);

    impl Simd for Ymm {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Ymm(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Ymm(_mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Ymm(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            _mm256_storeu_ps(p, v.0)
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Ymm(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            Ymm(_mm256_mul_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Ymm(_mm256_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        }
        #[inline(always)]
        unsafe fn prefetch_l2(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
        }
        #[inline(always)]
        unsafe fn broadcast(p: *const f32) -> Self {
            Ymm(_mm256_broadcast_ss(&*p))
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; `x` as documented on [`BlockArgs`].
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn block(x: &BlockArgs) {
        super::super::block::<Ymm, { super::MR }, { super::NV }>(x)
    }
}

unsafe fn block_model(x: &BlockArgs) {
    super::block::<Emu<LANES>, MR, NV>(x)
}

pub(crate) fn kernel(model: bool) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    let native: super::BlockFn = native::block;
    #[cfg(not(target_arch = "x86_64"))]
    let native: super::BlockFn = block_model;
    Kernel {
        isa: Isa::Avx2,
        model,
        mr: MR,
        nr: NV * LANES,
        lanes: LANES,
        kc: KC,
        mc: MC,
        nc: NC,
        block: if model { block_model } else { native },
        direct_a: true,
    }
}
