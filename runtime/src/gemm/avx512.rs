//! The AVX-512F kernel: `MR × NR = 8 × 32` register tile (16 zmm accumulators, 2 loads of B
//! and 8 broadcasts of A per step of k). On Zen 4 the 512-bit FMAs are double-pumped (same
//! FLOP rate as AVX2, half the instructions); on Intel server parts, twice the AVX2 peak.

use super::scalar::Emu;
use super::{BlockArgs, Isa, Kernel};

pub(crate) const MR: usize = 8;
pub(crate) const NV: usize = 2;
pub(crate) const LANES: usize = 16;
pub(crate) const KC: usize = 256;
pub(crate) const MC: usize = 128;
pub(crate) const NC: usize = 3072;

#[cfg(target_arch = "x86_64")]
mod native {
    use std::arch::x86_64::*;

    use super::super::{BlockArgs, Simd};

    #[derive(Clone, Copy)]
    pub(crate) struct Zmm(__m512);

    impl Simd for Zmm {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Zmm(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Zmm(_mm512_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Zmm(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            _mm512_storeu_ps(p, v.0)
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Zmm(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            Zmm(_mm512_mul_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Zmm(_mm512_add_ps(a.0, b.0))
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
            Zmm(_mm512_set1_ps(*p))
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F; `x` as documented on [`BlockArgs`].
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn block(x: &BlockArgs) {
        super::super::block::<Zmm, { super::MR }, { super::NV }>(x)
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
        isa: Isa::Avx512,
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
