//! The AArch64 NEON kernel: `MR × NR = 8 × 12` register tile (24 of the 32 q registers as
//! accumulators, 3 loads of B and 8 broadcasts of A per step of k, `vfmaq_f32`).

use super::scalar::Emu;
use super::{BlockArgs, Isa, Kernel};

pub(crate) const MR: usize = 8;
pub(crate) const NV: usize = 3;
pub(crate) const LANES: usize = 4;
pub(crate) const KC: usize = 256;
pub(crate) const MC: usize = 128;
pub(crate) const NC: usize = 3072;

#[cfg(target_arch = "aarch64")]
mod native {
    use std::arch::aarch64::*;

    use super::super::{BlockArgs, Simd};

    #[derive(Clone, Copy)]
    pub(crate) struct Q(float32x4_t);

    impl Simd for Q {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Q(vdupq_n_f32(0.0))
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Q(vdupq_n_f32(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Q(vld1q_f32(p))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            vst1q_f32(p, v.0)
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            // vfmaq_f32(c, a, b) = c + a·b, fused.
            Q(vfmaq_f32(c.0, a.0, b.0))
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            Q(vmulq_f32(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Q(vaddq_f32(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            // PRFM PLDL1KEEP (the prefetch intrinsics are unstable on AArch64).
            std::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, readonly, preserves_flags));
        }
        #[inline(always)]
        unsafe fn prefetch_l2(p: *const u8) {
            std::arch::asm!("prfm pldl2keep, [{p}]", p = in(reg) p, options(nostack, readonly, preserves_flags));
        }
        #[inline(always)]
        unsafe fn broadcast(p: *const f32) -> Self {
            Q(vld1q_dup_f32(p))
        }
    }

    /// # Safety
    /// `x` as documented on [`BlockArgs`] (NEON is baseline on AArch64).
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn block(x: &BlockArgs) {
        super::super::block::<Q, { super::MR }, { super::NV }>(x)
    }
}

unsafe fn block_model(x: &BlockArgs) {
    super::block::<Emu<LANES>, MR, NV>(x)
}

pub(crate) fn kernel(model: bool) -> Kernel {
    #[cfg(target_arch = "aarch64")]
    let native: super::BlockFn = native::block;
    #[cfg(not(target_arch = "aarch64"))]
    let native: super::BlockFn = block_model;
    Kernel {
        isa: Isa::Neon,
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
