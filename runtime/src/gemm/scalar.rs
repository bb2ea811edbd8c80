//! The scalar side of the GEMM: the portable kernel (no intrinsics), the scalar lane model of
//! the SIMD kernels ([`Emu`]), and the element-wise activations of the epilogue.
//!
//! The activations are branch-free scalar code on purpose: they are inlined into each ISA's
//! `#[target_feature]` block loop, where LLVM vectorizes them, and they give the same bits
//! whether vectorized or not (IEEE operations only; no fused multiply-add, no libm calls).

use super::{Activation, BlockArgs, Isa, Kernel, Simd};

/// `L` portable lanes with *unfused* multiply-add: the scalar ISA's vector type. Plain array
/// arithmetic that LLVM vectorizes with whatever the baseline target has (SSE2 on x86-64).
#[derive(Clone, Copy)]
pub(crate) struct Portable<const L: usize>([f32; L]);

impl<const L: usize> Simd for Portable<L> {
    const LANES: usize = L;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; L])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable([x; L])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable(std::ptr::read_unaligned(p as *const [f32; L]))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        std::ptr::write_unaligned(p as *mut [f32; L], v.0)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        let mut r = c.0;
        for i in 0..L {
            r[i] += a.0[i] * b.0[i];
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        let mut r = a.0;
        for i in 0..L {
            r[i] *= b.0[i];
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        let mut r = a.0;
        for i in 0..L {
            r[i] += b.0[i];
        }
        Portable(r)
    }
}

/// `L` scalar lanes with *fused* multiply-add (`f32::mul_add`, correctly rounded): a model of a
/// SIMD register with FMA. The generic micro-kernel over `Emu<8>` / `Emu<16>` / `Emu<4>`
/// performs exactly the operations of the AVX2 / AVX-512 / NEON kernels, in the same order, so
/// it produces the same bits — on any CPU.
#[derive(Clone, Copy)]
pub(crate) struct Emu<const L: usize>(pub [f32; L]);

impl<const L: usize> Simd for Emu<L> {
    const LANES: usize = L;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Emu([0.0; L])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Emu([x; L])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Emu(std::ptr::read_unaligned(p as *const [f32; L]))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        std::ptr::write_unaligned(p as *mut [f32; L], v.0)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        let mut r = c.0;
        for i in 0..L {
            r[i] = a.0[i].mul_add(b.0[i], c.0[i]);
        }
        Emu(r)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        let mut r = a.0;
        for i in 0..L {
            r[i] *= b.0[i];
        }
        Emu(r)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        let mut r = a.0;
        for i in 0..L {
            r[i] += b.0[i];
        }
        Emu(r)
    }
}

const MR: usize = 4;
const NV: usize = 4;
const LANES: usize = 4;

unsafe fn block_portable(x: &BlockArgs) {
    super::block::<Portable<LANES>, MR, NV>(x)
}

pub(crate) fn kernel() -> Kernel {
    Kernel {
        isa: Isa::Scalar,
        model: false,
        mr: MR,
        nr: NV * LANES,
        lanes: LANES,
        kc: 256,
        mc: 64,
        nc: 2048,
        block: block_portable,
        direct_a: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------------------------

/// `x` if `x >= lo` else `lo`, NaN propagating (unlike `f32::max`).
#[inline(always)]
fn at_least(x: f32, lo: f32) -> f32 {
    if x < lo {
        lo
    } else {
        x
    }
}

#[inline(always)]
fn at_most(x: f32, hi: f32) -> f32 {
    if x > hi {
        hi
    } else {
        x
    }
}

/// `e^x`, relative error ≲ 2e-7 on [-86, 88] (clamped outside, so that the result is never
/// subnormal — subnormal operands cost microcode assists; NaN → NaN).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to an integer
    let x = at_most(at_least(x, -86.0), 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // n as an integer, read from the low mantissa bits of t (no float → int conversion, which
    // Rust defines as saturating and LLVM then does not vectorize).
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor to degree 7 on |r| ≤ ln2/2.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    p * scale
}

/// `erfc(|z|)` by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), flushed to 0 past
/// |z| = 9 (erfc(9) ≈ 4e-37) so that no intermediate is subnormal.
#[inline(always)]
fn erfc_abs(z: f32) -> f32 {
    let z = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let p = 1.061_405_4f32;
    let p = p * t - 1.453_152;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_74;
    let p = p * t + 0.254_829_6;
    let q = p * t * exp(at_least(-z * z, -80.0));
    if z > 9.0 {
        0.0
    } else {
        q
    }
}

/// `0.5·x·(1 + erf(x/√2))`; the `1 + erf` of negative arguments is computed as `erfc(|z|)`
/// (no cancellation).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    let q = erfc_abs(x * std::f32::consts::FRAC_1_SQRT_2);
    let one_plus_erf = if x < 0.0 { q } else { 2.0 - q };
    0.5 * x * one_plus_erf
}

/// `x·sigmoid(2u)` = `0.5·x·(1 + tanh(u))`, `u = √(2/π)·(x + 0.044715·x³)`.
#[inline(always)]
fn fast_gelu(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    let u = K * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    // tanh(x) = 1 − 2/(e^{2x} + 1), with the sign restored (odd function); absolute error ~1e-7.
    let e = exp(2.0 * x.abs());
    let t = 1.0 - 2.0 / (e + 1.0);
    if x < 0.0 {
        -t
    } else {
        t
    }
}

/// Applies `act` in place. Inlined into the kernels' store (vectorized there).
#[inline(always)]
pub(crate) fn activate(act: Activation, v: &mut [f32]) {
    match act {
        Activation::None => {}
        Activation::Relu => v.iter_mut().for_each(|x| *x = at_least(*x, 0.0)),
        Activation::LeakyRelu(a) => v
            .iter_mut()
            .for_each(|x| *x = if *x < 0.0 { a * *x } else { *x }),
        Activation::Clip { min, max } => v
            .iter_mut()
            .for_each(|x| *x = at_most(at_least(*x, min), max)),
        Activation::Gelu => v.iter_mut().for_each(|x| *x = gelu(*x)),
        Activation::FastGelu => v.iter_mut().for_each(|x| *x = fast_gelu(*x)),
        Activation::Sigmoid => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
        Activation::Tanh => v.iter_mut().for_each(|x| *x = tanh(*x)),
    }
}
