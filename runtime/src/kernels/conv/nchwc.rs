//! Convolution, max pooling and global average pooling on channel-blocked images (NCHWc
//! with c = [`BLOCK`]): an image `[N, C, H, W]` is stored as `[N, C/8, H, W, 8]`, so the 8
//! channels of a pixel are one AVX2 vector (and two blocks' one AVX-512 vector).
//!
//! A convolution then needs no im2col and no packing of its image: the register tile is
//! `P` output pixels × `F` blocks of 8 output channels, and for every input channel the tile
//! broadcasts each pixel's input value and multiplies it into the `F` weight vectors
//! (weights packed once, at build, as `[M/8][C/8][KH][KW][8 in][8 out]`). The accumulators
//! stay in registers over all input channels and taps, and the epilogue (bias, the residual
//! `Z` of a `FusedConv`, the activation) runs on them before the one store. Lowering picks
//! this layout for chains of convolutions and pools whose values nothing else reads
//! (`kiln-codegen`'s `layout`); the first convolution of a chain reads its NCHW input
//! directly (the same tile with other strides: a "block" of all `C` channels, `H·W` apart).
//! A padded convolution first copies its input into a zero-padded image, so that no tile
//! has taps outside it. The AVX2 tile is 6 pixels × 2 blocks, the AVX-512 one 12 pixels × 4
//! blocks (each vector a pixel's two blocks).
//!
//! This is the algorithm of ONNX Runtime's NCHWc convolutions (MLAS), written for kiln's
//! runtime; the scalar tile is the model of the AVX2 and AVX-512 ones (same FMAs in the same
//! order).

use kiln_ir::op::{Conv, MaxPool};
use kiln_ir::{DType, Op, Tensor};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::gemm::Activation;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::nn_core::{fused_attr, window};
use crate::kernels::par::OutPtr;
use crate::kernels::reduce::num::view;
use crate::value::Value;

/// Channels per block.
pub const BLOCK: usize = 8;
/// The most output-channel blocks and output pixels of any tile (the AVX-512 one).
const F_MAX: usize = 4;
const P_MAX: usize = 12;

/// Whether lowering chooses this layout: where the tiles run SIMD code (AVX2 or AVX-512,
/// [`Tile::best`]), unless `KILN_NCHWC` says otherwise (`1`: always, the scalar tile where
/// the CPU has neither; `0`: never). ResNet-50 ran at 1.04-1.05× ONNX Runtime's speed this
/// way against 0.92 on the im2col/Winograd GEMM path on a Zen 1 (AVX2), and at 0.91 against
/// 0.70 on a Zen 4 with AVX-512.
pub fn preferred() -> bool {
    match std::env::var("KILN_NCHWC").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => Tile::best() != Tile::Scalar,
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What a node can do with blocked values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A 2-D f32 `Conv`/`FusedConv` with constant weights, one group, no dilation and a
    /// multiple of 8 output channels: it can write a blocked output, and read a blocked `X`
    /// when `in_channels` is a multiple of 8 (and a blocked `Z` when fused).
    Conv { in_channels: usize },
    /// A 2-D f32 `MaxPool` without indices: blocked in, blocked out.
    MaxPool,
    /// `GlobalAveragePool`: reads a blocked `X`, writes NCHW.
    GlobalAveragePool,
    /// Nothing blocked.
    None,
}

/// The node's [`Role`] (from its op, its constant weights and the inferred types).
pub fn role(op: &Op, cx: &BuildCx) -> Role {
    let f32_in = matches!(
        cx.input_types.first().copied().flatten(),
        Some(kiln_ir::Type::Tensor(t)) if t.dtype == DType::F32
            && t.shape.as_ref().is_none_or(|s| s.len() == 4)
    );
    if !f32_in {
        return Role::None;
    }
    match op {
        Op::Conv(_) | Op::FusedConv(_) => {
            let attr = conv_attr(op);
            let ones = |v: &Option<Vec<i64>>| v.as_ref().is_none_or(|v| v.iter().all(|&x| x == 1));
            let Some((c, _)) = attr else {
                return Role::None;
            };
            match cx.const_inputs.get(1).copied().flatten() {
                Some(w)
                    if w.dtype() == DType::F32
                        && w.shape().len() == 4
                        && w.shape()[0] % BLOCK == 0
                        && w.shape()[0] > 0
                        && w.shape().iter().all(|&d| d > 0)
                        && c.group == 1
                        && ones(&c.dilations) =>
                {
                    Role::Conv {
                        in_channels: w.shape()[1],
                    }
                }
                _ => Role::None,
            }
        }
        Op::MaxPool(p) if cx.output_types.len() == 1 && p.kernel_shape.len() == 2 => Role::MaxPool,
        Op::GlobalAveragePool(_) => Role::GlobalAveragePool,
        _ => Role::None,
    }
}

/// The activations the tile applies in registers; any other goes through the scalar one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Act {
    None,
    Relu,
    Other(Activation),
}

fn conv_attr(op: &Op) -> Option<(Conv, Act)> {
    let (c, act) = match op {
        Op::Conv(c) => (c.clone(), Activation::None),
        Op::FusedConv(f) => fused_attr(f).ok()?,
        _ => return None,
    };
    Some((
        c,
        match act {
            Activation::None => Act::None,
            Activation::Relu => Act::Relu,
            a => Act::Other(a),
        },
    ))
}

/// The kernel of a node lowering chose to run blocked: a convolution (blocked output; blocked
/// `X` when `x_blocked`), a max pool (blocked in and out) or a global average pool (blocked in).
pub fn build(op: &Op, cx: &BuildCx, x_blocked: bool) -> Result<Box<dyn Kernel>, KernelError> {
    let not = || KernelError::Invalid(format!("{} cannot run on blocked images", op.op_type()));
    match (role(op, cx), op) {
        (Role::Conv { in_channels }, _) => {
            let (attr, act) = conv_attr(op).ok_or_else(not)?;
            if x_blocked && in_channels % BLOCK != 0 {
                return Err(not());
            }
            let w = cx.const_inputs[1].ok_or_else(not)?;
            let wv = w.as_slice::<f32>().ok_or_else(not)?;
            let ws = w.shape();
            let shape = [ws[0], ws[1], ws[2], ws[3]];
            let algo = if x_blocked && super::winograd::pays(&attr, ws, cx, true) {
                Algo::Winograd(super::nchwc_winograd::Weights::new(ws[0], ws[1], wv))
            } else {
                Algo::Direct(Weights::pack(wv, ws, x_blocked, Tile::best()))
            };
            w.release_pages();
            Ok(Box::new(BlockedConv {
                attr,
                act,
                fused: matches!(op, Op::FusedConv(_)),
                x_blocked,
                shape,
                algo,
            }))
        }
        (Role::MaxPool, Op::MaxPool(p)) if x_blocked => Ok(Box::new(BlockedMaxPool(p.clone()))),
        (Role::GlobalAveragePool, _) if x_blocked => Ok(Box::new(BlockedGlobalAveragePool)),
        _ => Err(not()),
    }
}

/// A blocked image's shape from its NCHW one (`C` a multiple of 8).
pub fn blocked_shape(n: usize, c: usize, h: usize, w: usize) -> Vec<usize> {
    vec![n, c / BLOCK, h, w, BLOCK]
}

/// NCHW → blocked (`C` a multiple of 8).
pub fn to_blocked(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    reorder(x, n, c, hw, true)
}

/// Blocked → NCHW.
pub fn from_blocked(y: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    reorder(y, n, c, hw, false)
}

fn reorder(src: &[f32], n: usize, c: usize, hw: usize, to_blocked: bool) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    for ni in 0..n {
        for ch in 0..c {
            let (cb, l) = (ch / BLOCK, ch % BLOCK);
            for p in 0..hw {
                let plain = (ni * c + ch) * hw + p;
                let blocked = ((ni * (c / BLOCK) + cb) * hw + p) * BLOCK + l;
                let (from, to) = if to_blocked {
                    (plain, blocked)
                } else {
                    (blocked, plain)
                };
                dst[to] = src[from];
            }
        }
    }
    dst
}

/// Weights `[M, C, KH, KW]` packed as `[M/8][C/cb][KH][KW][cb][8]`, where `cb` (channels per
/// input block) is 8 for a blocked input and `C` for an NCHW one.
pub(crate) struct Weights {
    data: Vec<f32>,
    cb: usize,
    /// Output channels per packed row (`wl` above): the tile's vector width.
    wl: usize,
    /// The tile they are packed for.
    tile: Tile,
}

impl Weights {
    /// Packs `w` for `tile`, as `[M/wl][C/cb][KH][KW][cb][wl]` with `wl` its vector width
    /// (8 for AVX2 and the scalar model, 16 for AVX-512, so that a vector of two blocks'
    /// weights is one load; `M` padded with zero filters to a multiple of `wl`).
    pub(crate) fn pack(w: &[f32], ws: &[usize], x_blocked: bool, tile: Tile) -> Weights {
        let (m, c, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let wl = tile.lanes();
        let cb = if x_blocked { BLOCK } else { c };
        let icb = c / cb.max(1);
        let mut data = vec![0f32; m.next_multiple_of(wl) * c * kh * kw];
        for o in 0..m {
            for i in 0..c {
                for y in 0..kh {
                    for x in 0..kw {
                        let (og, ol, ib, ci) = (o / wl, o % wl, i / cb, i % cb);
                        let d = ((((og * icb + ib) * kh + y) * kw + x) * cb + ci) * wl + ol;
                        data[d] = w[((o * c + i) * kh + y) * kw + x];
                    }
                }
            }
        }
        Weights { data, cb, wl, tile }
    }
}

/// One convolution's geometry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geo {
    pub n: usize,
    pub c: usize,
    pub m: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
    pub x_blocked: bool,
}

impl Geo {
    /// A pointwise convolution (1×1, stride 1, no padding) as one of an image of one row of
    /// `H·W` pixels, which it is in either layout: the tiles of 6 pixels then run along the
    /// whole image instead of each row (a 14-pixel row left 4 of 18 tile lanes idle, a 7-pixel
    /// row 5 of 12).
    fn as_one_row(self) -> Geo {
        let pointwise = (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw)
            == (1, 1, 1, 1, 0, 0)
            && (self.oh, self.ow) == (self.h, self.w);
        if pointwise {
            Geo {
                h: 1,
                w: self.h * self.w,
                oh: 1,
                ow: self.h * self.w,
                ..self
            }
        } else {
            self
        }
    }

    /// The convolution of `x` with its padding written out as zeros around the image, which
    /// [`conv`] copies it into first: every tile then has all its taps, where the columns
    /// whose taps fall outside ran as tiles of one pixel, which the FMAs' latency bounds
    /// (2 or 4 accumulators) — 2 of the 7 columns of a 7×7 layer.
    fn padded(&self) -> Option<Geo> {
        if (self.ph, self.pw) == (0, 0) || self.oh == 0 || self.ow == 0 {
            return None;
        }
        Some(Geo {
            h: ((self.oh - 1) * self.sh + self.kh).max(self.ph + self.h),
            w: ((self.ow - 1) * self.sw + self.kw).max(self.pw + self.w),
            ph: 0,
            pw: 0,
            ..*self
        })
    }

    /// A strided pointwise convolution (1×1, no padding) as the unstrided one of the pixels it
    /// reads, which [`conv`] gathers first: a copy of `1/(sh·sw)` of the image, which the tiles
    /// then read from cache for every group of output blocks, where they read the whole image
    /// from L3 at a stride for each (ResNet-50's downsampling 1×1 layers ran at two thirds of
    /// the rate of the unstrided ones).
    fn subsampled(&self) -> Option<Geo> {
        ((self.kh, self.kw, self.ph, self.pw) == (1, 1, 0, 0)
            && (self.sh, self.sw) != (1, 1)
            && self.h > 0
            && self.w > 0
            // Every output pixel reads one inside the image.
            && self.oh == (self.h - 1) / self.sh + 1
            && self.ow == (self.w - 1) / self.sw + 1)
            .then_some(Geo {
                h: self.oh,
                w: self.ow,
                sh: 1,
                sw: 1,
                ..*self
            })
    }
}

/// `x` (geometry `g`) into `xp` with `g`'s padding as zeros (geometry `p`, from
/// [`Geo::padded`]), laid out as `x`.
fn pad(g: &Geo, p: &Geo, x: &[f32], xp: &mut [f32]) {
    let lanes = if g.x_blocked { BLOCK } else { 1 };
    let (row, prow) = (g.w * lanes, p.w * lanes);
    let (plane, pplane) = (g.h * row, p.h * prow);
    xp.par_chunks_mut(pplane).enumerate().for_each(|(i, dst)| {
        dst.fill(0.0);
        for y in 0..g.h {
            let d = (g.ph + y) * prow + g.pw * lanes;
            dst[d..d + row].copy_from_slice(&x[i * plane + y * row..][..row]);
        }
    });
}

/// The pixels `(oy·sh, ox·sw)` of `x` (as `g.x_blocked` says), into `xs`, laid out as `x`.
fn gather(g: &Geo, x: &[f32], xs: &mut [f32]) {
    let lanes = if g.x_blocked { BLOCK } else { 1 };
    let (plane, sub) = (g.h * g.w * lanes, g.oh * g.ow * lanes);
    xs.par_chunks_mut(sub)
        .zip(x.par_chunks(plane))
        .for_each(|(dst, src)| {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let (d, s) = (
                        (oy * g.ow + ox) * lanes,
                        (oy * g.sh * g.w + ox * g.sw) * lanes,
                    );
                    dst[d..d + lanes].copy_from_slice(&src[s..s + lanes]);
                }
            }
        });
}

/// What one tile reads, as distances in floats: the input's between channel blocks, between
/// a block's channels, rows, columns and the tile's pixels; the packed weights' between
/// input blocks, kernel rows and groups of `wl` output channels, and `wl`; and the taps
/// inside the image.
#[derive(Clone, Copy)]
struct Taps {
    icb: usize,
    cb: usize,
    xs_blk: usize,
    xs_c: usize,
    xs_row: usize,
    xs_col: usize,
    xs_px: usize,
    ws_blk: usize,
    ws_row: usize,
    ws_f: usize,
    wl: usize,
    nkh: usize,
    nkw: usize,
}

/// Where one tile writes: the output (and `Z`) at its first pixel and first block, the
/// distance between output blocks, and the bias of its first block.
#[derive(Clone, Copy)]
struct Store {
    y: *mut f32,
    z: *const f32,
    ys_f: usize,
    bias: *const f32,
    act: Act,
}

/// The portable tile, and the model of the AVX2 one: the same fused multiply-adds in the
/// same order, so both give the same bits.
///
/// # Safety
/// `x` and `w` must be valid for every offset `t` describes; `s` for `fb` blocks of `np`
/// pixels.
unsafe fn tile_scalar(x: *const f32, w: *const f32, t: &Taps, s: &Store, fb: usize, np: usize) {
    let mut acc = [[[0f32; BLOCK]; F_MAX]; P_MAX];
    for ib in 0..t.icb {
        for ky in 0..t.nkh {
            for kx in 0..t.nkw {
                let xp = x.add(ib * t.xs_blk + ky * t.xs_row + kx * t.xs_col);
                let wp = w.add(ib * t.ws_blk + ky * t.ws_row + kx * t.cb * t.wl);
                for ci in 0..t.cb {
                    for (p, acc) in acc.iter_mut().enumerate().take(np) {
                        let b = *xp.add(p * t.xs_px + ci * t.xs_c);
                        for (f, acc) in acc.iter_mut().enumerate().take(fb) {
                            let o = f * BLOCK;
                            let wv = wp.add(o / t.wl * t.ws_f + ci * t.wl + o % t.wl);
                            for (l, a) in acc.iter_mut().enumerate() {
                                *a = b.mul_add(*wv.add(l), *a);
                            }
                        }
                    }
                }
            }
        }
    }
    for (p, acc) in acc.iter().enumerate().take(np) {
        for (f, acc) in acc.iter().enumerate().take(fb) {
            let o = f * s.ys_f + p * BLOCK;
            for (l, &a) in acc.iter().enumerate() {
                let mut v = a;
                if !s.bias.is_null() {
                    v += *s.bias.add(f * BLOCK + l);
                }
                if !s.z.is_null() {
                    v += *s.z.add(o + l);
                }
                *s.y.add(o + l) = finish(v, s.act);
            }
        }
    }
}

/// Applies an activation other than Relu to a tile's stored outputs. The SIMD tiles store
/// `acc + bias + z` first and call this after their last store: an activation called while
/// accumulators were live made LLVM keep them on the stack for the whole tile (every vector
/// register is caller-saved), inner loop included.
///
/// # Safety
/// `s` must be valid for `fb` blocks of `np` pixels.
#[inline(always)]
unsafe fn finish_stored(s: &Store, fb: usize, np: usize) {
    #[inline(never)]
    unsafe fn apply(s: &Store, fb: usize, np: usize) {
        for f in 0..fb {
            for i in 0..np * BLOCK {
                let y = s.y.add(f * s.ys_f + i);
                *y = finish(*y, s.act);
            }
        }
    }
    if let Act::Other(_) = s.act {
        apply(s, fb, np)
    }
}

pub(super) fn finish(v: f32, act: Act) -> f32 {
    match act {
        Act::None => v,
        // `_mm256_max_ps(0, v)`: NaN and -0 stay.
        Act::Relu => {
            if 0.0 > v {
                0.0
            } else {
                v
            }
        }
        Act::Other(a) => a.apply(v),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Act, Store, Taps, BLOCK};
    use std::arch::x86_64::*;

    /// The AVX2 tile for `FB` (1 or 2) output blocks of `NP` (1 to 6) pixels; `BLK`: the
    /// input is blocked (8 channels per block, 1 apart: the channel loop unrolls and its
    /// loads take constant displacements). Each accumulator is its own local (an array
    /// indexed in loops stayed on the stack).
    ///
    /// # Safety
    /// As [`super::tile_scalar`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const FB: usize, const NP: usize, const BLK: bool>(
        x: *const f32,
        w: *const f32,
        t: &Taps,
        s: &Store,
    ) {
        let zero = _mm256_setzero_ps();
        let (mut a00, mut a01, mut a10, mut a11, mut a20, mut a21) =
            (zero, zero, zero, zero, zero, zero);
        let (mut a30, mut a31, mut a40, mut a41, mut a50, mut a51) =
            (zero, zero, zero, zero, zero, zero);
        let cb = if BLK { BLOCK } else { t.cb };
        let xs_c = if BLK { 1 } else { t.xs_c };
        let (px, ws_f) = (t.xs_px, t.ws_f);
        for ib in 0..t.icb {
            for ky in 0..t.nkh {
                let xr = x.add(ib * t.xs_blk + ky * t.xs_row);
                let wr = w.add(ib * t.ws_blk + ky * t.ws_row);
                for kx in 0..t.nkw {
                    let xp = xr.add(kx * t.xs_col);
                    let wp = wr.add(kx * cb * BLOCK);
                    for ci in 0..cb {
                        let w0 = _mm256_loadu_ps(wp.add(ci * BLOCK));
                        let w1 = if FB > 1 {
                            _mm256_loadu_ps(wp.add(ws_f + ci * BLOCK))
                        } else {
                            zero
                        };
                        let xc = xp.add(ci * xs_c);
                        macro_rules! pixel {
                            ($p:literal, $a0:ident, $a1:ident) => {
                                if NP > $p {
                                    let b = _mm256_broadcast_ss(&*xc.add($p * px));
                                    $a0 = _mm256_fmadd_ps(b, w0, $a0);
                                    if FB > 1 {
                                        $a1 = _mm256_fmadd_ps(b, w1, $a1);
                                    }
                                }
                            };
                        }
                        pixel!(0, a00, a01);
                        pixel!(1, a10, a11);
                        pixel!(2, a20, a21);
                        pixel!(3, a30, a31);
                        pixel!(4, a40, a41);
                        pixel!(5, a50, a51);
                    }
                }
            }
        }
        // The epilogue, inline (as a closure it was a call per vector, a quarter of a 1×1
        // layer's time over 64 channels).
        let has_bias = !s.bias.is_null();
        let b0 = if has_bias {
            _mm256_loadu_ps(s.bias)
        } else {
            zero
        };
        let b1 = if has_bias && FB > 1 {
            _mm256_loadu_ps(s.bias.add(BLOCK))
        } else {
            zero
        };
        macro_rules! store {
            ($p:literal, $f:literal, $a:ident, $b:ident) => {
                if NP > $p && FB > $f {
                    let o = $f * s.ys_f + $p * BLOCK;
                    let mut v = $a;
                    if has_bias {
                        v = _mm256_add_ps(v, $b);
                    }
                    if !s.z.is_null() {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(s.z.add(o)));
                    }
                    if let Act::Relu = s.act {
                        // max_ps returns its second operand when either is NaN: NaN stays.
                        v = _mm256_max_ps(zero, v);
                    }
                    _mm256_storeu_ps(s.y.add(o), v);
                }
            };
        }
        store!(0, 0, a00, b0);
        store!(0, 1, a01, b1);
        store!(1, 0, a10, b0);
        store!(1, 1, a11, b1);
        store!(2, 0, a20, b0);
        store!(2, 1, a21, b1);
        store!(3, 0, a30, b0);
        store!(3, 1, a31, b1);
        store!(4, 0, a40, b0);
        store!(4, 1, a41, b1);
        store!(5, 0, a50, b0);
        store!(5, 1, a51, b1);
        super::finish_stored(s, FB, NP);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Act, Store, Taps, BLOCK};
    use std::arch::x86_64::*;

    /// Two 8-float vectors as one 16-float one (`lo` in the low half).
    #[inline(always)]
    unsafe fn pair(lo: *const f32, hi: *const f32) -> __m512 {
        let lo = _mm512_castps256_ps512(_mm256_loadu_ps(lo));
        let hi = _mm256_castps_pd(_mm256_loadu_ps(hi));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(lo), hi))
    }

    /// The AVX-512 tile for `fb` output blocks (`Z` = `fb.div_ceil(2)` vectors of two blocks
    /// each) of `NP` (1 to 12) pixels, weights packed 16 output channels to a row. A vector
    /// holds one pixel's outputs in two consecutive blocks, so the blocked layout (and
    /// everything that reads it) stays that of the AVX2 tiles: its halves are stored to the
    /// two blocks. With an odd `fb` the last vector's high half multiplies the zero filters
    /// that pad the weights and is not stored; its bias and `Z` are read from the low half's
    /// block (nothing past the end is read).
    ///
    /// # Safety
    /// As [`super::tile_scalar`], on a CPU with AVX-512F and VL. (Without VL the halves
    /// stored as 256-bit vectors must live in the low 16 registers, and LLVM kept the 24
    /// accumulators there, spilling half of them in the inner loop.)
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) unsafe fn tile<const Z: usize, const NP: usize>(
        x: *const f32,
        w: *const f32,
        t: &Taps,
        s: &Store,
        fb: usize,
    ) {
        let zero = _mm512_setzero_ps();
        let (mut a00, mut a01, mut a10, mut a11, mut a20, mut a21) =
            (zero, zero, zero, zero, zero, zero);
        let (mut a30, mut a31, mut a40, mut a41, mut a50, mut a51) =
            (zero, zero, zero, zero, zero, zero);
        let (mut a60, mut a61, mut a70, mut a71, mut a80, mut a81) =
            (zero, zero, zero, zero, zero, zero);
        let (mut a90, mut a91, mut aa0, mut aa1, mut ab0, mut ab1) =
            (zero, zero, zero, zero, zero, zero);
        // The channel loop's bound stays a variable: unrolled (8 channels of a blocked input),
        // LLVM loaded all 16 weight vectors ahead and spilled the accumulators.
        let (cb, xs_c) = (t.cb, t.xs_c);
        let (px, ws_f) = (t.xs_px, t.ws_f);
        // Where each vector's high half reads its weights (and bias, `Z`): the next block,
        // or the low half's own where there is none.
        let (hb0, hb1) = (if fb > 1 { 1 } else { 0 }, if fb > 3 { 3 } else { 2 });
        for ib in 0..t.icb {
            for ky in 0..t.nkh {
                let xr = x.add(ib * t.xs_blk + ky * t.xs_row);
                let wr = w.add(ib * t.ws_blk + ky * t.ws_row);
                for kx in 0..t.nkw {
                    let xp = xr.add(kx * t.xs_col);
                    let wp = wr.add(kx * cb * 2 * BLOCK);
                    for ci in 0..cb {
                        let wc = wp.add(ci * 2 * BLOCK);
                        let w0 = _mm512_loadu_ps(wc);
                        let w1 = if Z > 1 {
                            _mm512_loadu_ps(wc.add(ws_f))
                        } else {
                            zero
                        };
                        let xc = xp.add(ci * xs_c);
                        macro_rules! pixel {
                            ($p:literal, $a0:ident, $a1:ident) => {
                                if NP > $p {
                                    let b = _mm512_set1_ps(*xc.add($p * px));
                                    $a0 = _mm512_fmadd_ps(b, w0, $a0);
                                    if Z > 1 {
                                        $a1 = _mm512_fmadd_ps(b, w1, $a1);
                                    }
                                }
                            };
                        }
                        pixel!(0, a00, a01);
                        pixel!(1, a10, a11);
                        pixel!(2, a20, a21);
                        pixel!(3, a30, a31);
                        pixel!(4, a40, a41);
                        pixel!(5, a50, a51);
                        pixel!(6, a60, a61);
                        pixel!(7, a70, a71);
                        pixel!(8, a80, a81);
                        pixel!(9, a90, a91);
                        pixel!(10, aa0, aa1);
                        pixel!(11, ab0, ab1);
                    }
                }
            }
        }
        let has_bias = !s.bias.is_null();
        let b0 = if has_bias {
            pair(s.bias, s.bias.add(hb0 * BLOCK))
        } else {
            zero
        };
        let b1 = if has_bias && Z > 1 {
            pair(s.bias.add(2 * BLOCK), s.bias.add(hb1 * BLOCK))
        } else {
            zero
        };
        // Output (and `Z`) offsets of each vector's halves, from a pixel's.
        let (hy0, hy1) = (hb0 * s.ys_f, hb1 * s.ys_f);
        let store_hi = [fb > 1, fb > 3];
        macro_rules! store {
            ($p:literal, $z:literal, $a:ident, $b:ident, $hy:ident) => {
                if NP > $p && Z > $z {
                    let lo = 2 * $z * s.ys_f + $p * BLOCK;
                    let hi = $hy + $p * BLOCK;
                    let mut v = $a;
                    if has_bias {
                        v = _mm512_add_ps(v, $b);
                    }
                    if !s.z.is_null() {
                        v = _mm512_add_ps(v, pair(s.z.add(lo), s.z.add(hi)));
                    }
                    if let Act::Relu = s.act {
                        // max_ps returns its second operand when either is NaN: NaN stays.
                        v = _mm512_max_ps(zero, v);
                    }
                    _mm256_storeu_ps(s.y.add(lo), _mm512_castps512_ps256(v));
                    if store_hi[$z] {
                        let h = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v));
                        _mm256_storeu_ps(s.y.add(hi), _mm256_castpd_ps(h));
                    }
                }
            };
        }
        store!(0, 0, a00, b0, hy0);
        store!(0, 1, a01, b1, hy1);
        store!(1, 0, a10, b0, hy0);
        store!(1, 1, a11, b1, hy1);
        store!(2, 0, a20, b0, hy0);
        store!(2, 1, a21, b1, hy1);
        store!(3, 0, a30, b0, hy0);
        store!(3, 1, a31, b1, hy1);
        store!(4, 0, a40, b0, hy0);
        store!(4, 1, a41, b1, hy1);
        store!(5, 0, a50, b0, hy0);
        store!(5, 1, a51, b1, hy1);
        store!(6, 0, a60, b0, hy0);
        store!(6, 1, a61, b1, hy1);
        store!(7, 0, a70, b0, hy0);
        store!(7, 1, a71, b1, hy1);
        store!(8, 0, a80, b0, hy0);
        store!(8, 1, a81, b1, hy1);
        store!(9, 0, a90, b0, hy0);
        store!(9, 1, a91, b1, hy1);
        store!(10, 0, aa0, b0, hy0);
        store!(10, 1, aa1, b1, hy1);
        store!(11, 0, ab0, b0, hy0);
        store!(11, 1, ab1, b1, hy1);
        super::finish_stored(s, fb, NP);
    }
}

/// Which tile runs: AVX2, AVX-512 or the scalar model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    Scalar,
    Avx2,
    Avx512,
}

impl Tile {
    /// The tile of the ISA the GEMM runs (`KILN_ISA` forces both), the scalar model where
    /// that is neither AVX2 nor AVX-512.
    pub(crate) fn best() -> Tile {
        match crate::gemm::default_gemm().isa() {
            crate::gemm::Isa::Avx512 if avx512() => Tile::Avx512,
            crate::gemm::Isa::Avx512 | crate::gemm::Isa::Avx2 if avx2() => Tile::Avx2,
            _ => Tile::Scalar,
        }
    }

    /// Output channels of the tile's vectors, which its weights are packed by.
    fn lanes(self) -> usize {
        match self {
            Tile::Avx512 => 2 * BLOCK,
            Tile::Scalar | Tile::Avx2 => BLOCK,
        }
    }

    /// Output-channel blocks and output pixels of a full tile: 2 × 6 for AVX2 (12 of the 16
    /// ymm registers accumulate), 4 × 12 for AVX-512 (24 of the 32 zmm registers, each two
    /// blocks of one pixel). The scalar model computes the same bits with any shape.
    fn dims(self) -> (usize, usize) {
        match self {
            Tile::Avx512 => (4, 12),
            Tile::Scalar | Tile::Avx2 => (2, 6),
        }
    }
}

/// # Safety
/// As [`tile_scalar`]; `Tile::Avx2` only where the CPU has AVX2 and FMA, `Tile::Avx512`
/// only where it has AVX-512F and VL.
unsafe fn run_tile(
    tile: Tile,
    x: *const f32,
    w: *const f32,
    t: &Taps,
    s: &Store,
    fb: usize,
    np: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if tile == Tile::Avx2 {
        macro_rules! pick {
            ($($f:literal, $p:literal);*) => {
                match (fb, np, t.cb == BLOCK && t.xs_c == 1) {
                    $(($f, $p, true) => avx2::tile::<$f, $p, true>(x, w, t, s),
                      ($f, $p, false) => avx2::tile::<$f, $p, false>(x, w, t, s),)*
                    _ => unreachable!("tile of {fb} blocks × {np} pixels"),
                }
            };
        }
        pick!(1, 1; 1, 2; 1, 3; 1, 4; 1, 5; 1, 6; 2, 1; 2, 2; 2, 3; 2, 4; 2, 5; 2, 6);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if tile == Tile::Avx512 {
        macro_rules! pick {
            ($($z:literal: $($p:literal),*);*) => {
                match (fb.div_ceil(2), np) {
                    $($(($z, $p) => avx512::tile::<$z, $p>(x, w, t, s, fb),)*)*
                    _ => unreachable!("tile of {fb} blocks × {np} pixels"),
                }
            };
        }
        pick!(1: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12; 2: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
        return;
    }
    tile_scalar(x, w, t, s, fb, np)
}

/// `y = act(conv(x, w) + bias + z)` with `y` (and `z`) blocked, `x` blocked or NCHW as
/// `g.x_blocked` says and `w` packed for it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    g: &Geo,
    x: &[f32],
    w: &Weights,
    bias: Option<&[f32]>,
    z: Option<&[f32]>,
    act: Act,
    tile: Tile,
    y: &mut [f32],
) {
    if let Some(sub) = g.subsampled() {
        let len = g.n * g.c * g.oh * g.ow;
        return super::winograd::with_scratch(len, |xs| {
            gather(g, x, xs);
            conv(&sub, xs, w, bias, z, act, tile, y)
        });
    }
    if let Some(p) = g.padded() {
        let len = g.n * g.c * p.h * p.w;
        if len > 0 {
            return super::winograd::with_scratch(len, |xp| {
                pad(g, &p, x, xp);
                conv(&p, xp, w, bias, z, act, tile, y)
            });
        }
    }
    let g = &g.as_one_row();
    let mb = g.m / BLOCK;
    let (cb, wl) = (w.cb, w.wl);
    let icb = g.c / cb.max(1);
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    assert!(
        tile == w.tile || tile == Tile::Scalar,
        "weights for {:?}",
        w.tile
    );
    assert_eq!(x.len(), g.n * g.c * hw, "x");
    assert_eq!(y.len(), g.n * g.m * ohw, "y");
    assert_eq!(
        w.data.len(),
        g.m.next_multiple_of(wl) * g.c * g.kh * g.kw,
        "w"
    );
    assert!(z.is_none_or(|z| z.len() == y.len()), "z");
    assert!(bias.is_none_or(|b| b.len() == g.m), "bias");
    if y.is_empty() {
        return;
    }
    let (xs_blk, xs_c, xs_row, xs_col) = if g.x_blocked {
        (hw * BLOCK, 1, g.w * BLOCK, BLOCK)
    } else {
        (0, hw, g.w, 1)
    };
    let ws_row = g.kw * cb * wl;
    let ws_blk = g.kh * ws_row;
    let ws_f = icb * ws_blk;
    // Offset of the weights of output block `b` (a tile's first, so the first of a row).
    let (tf, tp) = tile.dims();
    let per_row = wl / BLOCK;
    assert_eq!(
        tf % per_row,
        0,
        "{tile:?} tiles of weights for {:?}",
        w.tile
    );
    let w_at = |b: usize| b / per_row * ws_f;
    let groups = mb.div_ceil(tf);
    let items = g.n * groups * g.oh;
    let (ptr, xp, wp) = (
        OutPtr(y.as_mut_ptr()),
        x.as_ptr() as usize,
        w.data.as_ptr() as usize,
    );
    let zp = z.map_or(0, |z| z.as_ptr() as usize);
    let bp = bias.map_or(0, |b| b.as_ptr() as usize);
    // Interior output columns: every tap inside the image.
    let ow_a = g.pw.div_ceil(g.sw).min(g.ow);
    let ow_b = if g.w + g.pw >= g.kw {
        ((g.w + g.pw - g.kw) / g.sw + 1).clamp(ow_a, g.ow)
    } else {
        ow_a
    };
    let row = |item: usize, end: usize| {
        let (ni, rest) = (item / (groups * g.oh), item % (groups * g.oh));
        let (gi, ohi) = (rest / g.oh, rest % g.oh);
        let ob = gi * tf;
        let fb = tf.min(mb - ob);
        let ih0 = (ohi * g.sh) as isize - g.ph as isize;
        let kh_lo = (-ih0).clamp(0, g.kh as isize) as usize;
        let kh_hi = (g.h as isize - ih0).clamp(kh_lo as isize, g.kh as isize) as usize;
        let x_n = ni * g.c * hw;
        let y_row = ((ni * mb + ob) * g.oh + ohi) * g.ow * BLOCK;
        let col = |ow0: usize, np: usize, kw_lo: usize, kw_hi: usize| {
            let iw = (ow0 * g.sw + kw_lo) as isize - g.pw as isize;
            let t = Taps {
                icb,
                cb,
                xs_blk,
                xs_c,
                xs_row,
                xs_col,
                xs_px: xs_col * g.sw,
                ws_blk,
                ws_row,
                ws_f,
                wl,
                nkh: kh_hi - kh_lo,
                nkw: kw_hi - kw_lo,
            };
            let y_off = y_row + ow0 * BLOCK;
            let s = Store {
                y: ptr.at(y_off),
                z: if zp == 0 {
                    std::ptr::null()
                } else {
                    (zp as *const f32).wrapping_add(y_off)
                },
                ys_f: ohw * BLOCK,
                bias: if bp == 0 {
                    std::ptr::null()
                } else {
                    (bp as *const f32).wrapping_add(ob * BLOCK)
                },
                act,
            };
            // With no tap inside, the pointers are not read: start them anywhere valid.
            let x_off = if t.nkh == 0 || t.nkw == 0 {
                x_n
            } else {
                x_n + (ih0 + kh_lo as isize) as usize * xs_row + iw as usize * xs_col
            };
            let w_off = w_at(ob) + kh_lo * ws_row + kw_lo * cb * wl;
            // SAFETY: every offset the tile reads lies in `x`, `w`, `z` and `bias` (taps
            // clipped to the image; blocks `ob..ob + fb` exist), and its stores are this
            // item's own pixels of `y`, which no other item writes.
            unsafe {
                run_tile(
                    tile,
                    (xp as *const f32).add(x_off),
                    (wp as *const f32).add(w_off),
                    &t,
                    &s,
                    fb,
                    np,
                )
            }
        };
        let edge = |ow0: usize| {
            let iw0 = (ow0 * g.sw) as isize - g.pw as isize;
            let lo = (-iw0).clamp(0, g.kw as isize) as usize;
            let hi = (g.w as isize - iw0).clamp(lo as isize, g.kw as isize) as usize;
            col(ow0, 1, lo, hi);
        };
        // The next group's weights come from memory (a model's weights are read once per
        // run): fetch a slice of them into L2 on each row of this group, so they are there
        // when this thread (or the other) gets to it.
        let next = ob + tf;
        if next < mb && (ni * groups + gi + 1) * g.oh < end {
            let (start, end) = (w_at(next), w_at((next + tf).min(mb) + per_row - 1));
            let per = (end - start).div_ceil(g.oh);
            let a = (start + ohi * per).min(end);
            prefetch_l2((wp as *const f32).wrapping_add(a), (per).min(end - a));
        }
        (0..ow_a).for_each(edge);
        // As few tiles as there must be, of sizes as even as they can be: 7 pixels as 4 + 3,
        // not 6 + 1, whose one pixel has only 2 chains of FMAs to hide their latency (5
        // cycles on Zen 1, where 5 chains keep the FMA unit busy).
        let len = ow_b - ow_a;
        let k = len.div_ceil(tp);
        for i in 0..k {
            let (a, b) = (len * i / k, len * (i + 1) / k);
            col(ow_a + a, b - a, 0, g.kw);
        }
        (ow_b..g.ow).for_each(edge);
    };
    let flops = g.n * groups * g.oh * g.ow * tf * BLOCK * g.c * g.kh * g.kw;
    let threads = rayon::current_num_threads();
    // Rows `range` of the items: the first group's weights are asked for all at once (many
    // misses in flight instead of a stream), each next one's while the rows before it run.
    let chunk = |range: std::ops::Range<usize>| {
        let ob = (range.start / g.oh % groups) * tf;
        prefetch_l2(
            (wp as *const f32).wrapping_add(w_at(ob)),
            w_at(ob + tf.min(mb - ob) + per_row - 1) - w_at(ob),
        );
        let end = range.end;
        range.for_each(|i| row(i, end));
    };
    if threads <= 1 || flops < 1 << 18 || items < 2 {
        chunk(0..items);
        return;
    }
    // Consecutive rows of one group of output blocks go to one thread, which keeps that
    // group's weights in its L2. Sixteen chunks per thread, not two: on a host whose other
    // jobs slow one core, ResNet-50 read 0.60-0.65 of ONNX Runtime's speed with two and
    // 0.79-0.88 with sixteen (each chunk's first group waits for its weights).
    let chunks = (16 * threads).min(items);
    (0..chunks).into_par_iter().for_each(|c| {
        chunk(c * items / chunks..(c + 1) * items / chunks);
    });
}

/// Asks for `len` floats from `p` in L2 (a hint: no effect where it cannot).
fn prefetch_l2(p: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        for off in (0..len).step_by(16) {
            // SAFETY: a prefetch does not fault, whatever the address; SSE is baseline on
            // x86-64.
            unsafe { _mm_prefetch(p.wrapping_add(off) as *const i8, _MM_HINT_T1) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// `Conv` / `FusedConv` writing a blocked output.
struct BlockedConv {
    attr: Conv,
    act: Act,
    fused: bool,
    x_blocked: bool,
    /// `[M, C, KH, KW]`.
    shape: [usize; 4],
    algo: Algo,
}

/// How a blocked convolution computes.
enum Algo {
    /// The direct tiles.
    Direct(Weights),
    /// Winograd's F(4×4, 3×3), for 3×3 stride-1 layers that gain from it (the planner's
    /// rule for NCHW images, [`super::winograd::pays`]).
    Winograd(super::nchwc_winograd::Weights),
}

impl Kernel for BlockedConv {
    fn algorithm(&self) -> Option<&'static str> {
        Some(match (&self.algo, self.x_blocked) {
            (Algo::Winograd(_), _) => "nchwc-winograd",
            (Algo::Direct(_), true) => "nchwc",
            (Algo::Direct(_), false) => "nchw→nchwc",
        })
    }

    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let b = opt_tensor_input(inputs, 2)?;
        let z = if self.fused {
            opt_tensor_input(inputs, 3)?
        } else {
            None
        };
        let [m, c, kh, kw] = self.shape;
        let xs = x.shape();
        let (n, h, wd) = match (self.x_blocked, xs) {
            (true, &[n, cb, h, w, l]) if cb * BLOCK == c && l == BLOCK => (n, h, w),
            (false, &[n, cc, h, w]) if cc == c => (n, h, w),
            _ => {
                return Err(KernelError::Invalid(format!(
                    "Conv: X has shape {xs:?}, the weights {:?} need {} channels{}",
                    self.shape,
                    c,
                    if self.x_blocked { " (blocked)" } else { "" }
                )))
            }
        };
        if x.dtype() != DType::F32 {
            return Err(KernelError::Invalid(format!(
                "Conv: X is {}, not float",
                x.dtype()
            )));
        }
        let win = window(
            &[h, wd],
            &[kh, kw],
            self.attr.strides.as_ref(),
            None,
            self.attr.pads.as_ref(),
            &self.attr.auto_pad,
            false,
        )?;
        let geo = Geo {
            n,
            c,
            m,
            h,
            w: wd,
            kh,
            kw,
            sh: win.strides[0],
            sw: win.strides[1],
            ph: win.pad_begin[0],
            pw: win.pad_begin[1],
            oh: win.out_sp[0],
            ow: win.out_sp[1],
            x_blocked: self.x_blocked,
        };
        let shape = blocked_shape(n, m, geo.oh, geo.ow);
        let bv = match b {
            Some(b) if b.dtype() == DType::F32 && b.len() == m => Some(view::<f32>(b)?),
            Some(b) => {
                return Err(KernelError::Invalid(format!(
                    "Conv: bias has shape {:?}, expected [{m}]",
                    b.shape()
                )))
            }
            None => None,
        };
        let zv = match z {
            Some(z) if z.dtype() == DType::F32 && z.shape() == shape.as_slice() => {
                Some(view::<f32>(z)?)
            }
            Some(z) => {
                return Err(KernelError::Invalid(format!(
                    "FusedConv: Z has shape {:?}, the (blocked) output {shape:?}",
                    z.shape()
                )))
            }
            None => None,
        };
        let xv = view::<f32>(x)?;
        let act = self.act;
        let y = cx.tensor_dirty::<f32>(shape, |y| match &self.algo {
            Algo::Direct(w) => conv(&geo, &xv, w, bv.as_deref(), zv.as_deref(), act, w.tile, y),
            Algo::Winograd(w) => {
                super::nchwc_winograd::conv(&geo, &xv, w, bv.as_deref(), zv.as_deref(), act, y)
            }
        })?;
        Ok(vec![Value::Tensor(y)])
    }
}

/// Blocked geometry of a 2-D pool.
fn blocked_input(x: &Tensor, op: &str) -> Result<[usize; 4], KernelError> {
    match x.shape() {
        &[n, cb, h, w, l] if l == BLOCK && x.dtype() == DType::F32 => Ok([n, cb, h, w]),
        s => Err(KernelError::Invalid(format!(
            "{op}: expected a blocked f32 image [N, C/8, H, W, 8], got {} {s:?}",
            x.dtype()
        ))),
    }
}

/// `MaxPool` on blocked images (`-inf` where a window has no tap inside; NaN inputs are
/// skipped, as in the NCHW kernel).
struct BlockedMaxPool(MaxPool);

impl Kernel for BlockedMaxPool {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let [n, cb, h, w] = blocked_input(x, "MaxPool")?;
        let p = &self.0;
        let kernel: Vec<usize> = p.kernel_shape.iter().map(|&k| k.max(1) as usize).collect();
        let win = window(
            &[h, w],
            &kernel,
            p.strides.as_ref(),
            p.dilations.as_ref(),
            p.pads.as_ref(),
            &p.auto_pad,
            p.ceil_mode,
        )?;
        let (oh, ow) = (win.out_sp[0], win.out_sp[1]);
        let xv = view::<f32>(x)?;
        let y = cx.tensor_dirty::<f32>(blocked_shape(n, cb * BLOCK, oh, ow), |y| {
            max_pool(&win, &xv, h, w, y)
        })?;
        Ok(vec![Value::Tensor(y)])
    }
}

fn max_pool(win: &super::super::Window, x: &[f32], h: usize, w: usize, y: &mut [f32]) {
    let (oh, ow) = (win.out_sp[0], win.out_sp[1]);
    let (kh, kw) = (win.kernel[0], win.kernel[1]);
    let (sh, sw) = (win.strides[0], win.strides[1]);
    let (dh, dw) = (win.dilations[0], win.dilations[1]);
    let (ph, pw) = (win.pad_begin[0], win.pad_begin[1]);
    let (plane_in, plane_out) = (h * w * BLOCK, oh * ow * BLOCK);
    if plane_out == 0 {
        return;
    }
    let tap = |o: usize, k: usize, s: usize, d: usize, p: usize, n: usize| {
        (o * s + k * d).checked_sub(p).filter(|&i| i < n)
    };
    crate::kernels::par::for_chunks_weighted(y, plane_out, kh * kw, |start, chunk| {
        for (pi, yp) in chunk.chunks_mut(plane_out).enumerate() {
            let plane = start / plane_out + pi;
            let xp = &x[plane * plane_in..(plane + 1) * plane_in];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = [f32::NEG_INFINITY; BLOCK];
                    for ky in 0..kh {
                        let Some(iy) = tap(oy, ky, sh, dh, ph, h) else {
                            continue;
                        };
                        for kx in 0..kw {
                            let Some(ix) = tap(ox, kx, sw, dw, pw, w) else {
                                continue;
                            };
                            let v = &xp[(iy * w + ix) * BLOCK..][..BLOCK];
                            for (m, &v) in m.iter_mut().zip(v) {
                                // Selects, not branches (vectorized); NaN `v` is skipped.
                                *m = if v > *m { v } else { *m };
                            }
                        }
                    }
                    yp[(oy * ow + ox) * BLOCK..][..BLOCK].copy_from_slice(&m);
                }
            }
        }
    });
}

/// `GlobalAveragePool` of a blocked image, written as NCHW `[N, C, 1, 1]` (sums in f64, as
/// the NCHW kernel).
struct BlockedGlobalAveragePool;

impl Kernel for BlockedGlobalAveragePool {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let [n, cb, h, w] = blocked_input(x, "GlobalAveragePool")?;
        let xv = view::<f32>(x)?;
        let hw = h * w;
        let y = cx.tensor::<f32>(vec![n, cb * BLOCK, 1, 1], |y| {
            for (plane, yb) in y.chunks_mut(BLOCK).enumerate() {
                let mut s = [0f64; BLOCK];
                for px in xv[plane * hw * BLOCK..(plane + 1) * hw * BLOCK].chunks(BLOCK) {
                    for (s, &v) in s.iter_mut().zip(px) {
                        *s += v as f64;
                    }
                }
                for (y, s) in yb.iter_mut().zip(s) {
                    *y = (s / hw as f64) as f32;
                }
            }
        })?;
        Ok(vec![Value::Tensor(y)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Direct convolution in f64 on NCHW, the independent reference.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        g: &Geo,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        z: Option<&[f32]>,
        relu: bool,
    ) -> Vec<f32> {
        let mut y = vec![0f32; g.n * g.m * g.oh * g.ow];
        for ni in 0..g.n {
            for o in 0..g.m {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut s = bias.map_or(0.0, |b| b[o] as f64);
                        for i in 0..g.c {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                                    let ix = (ox * g.sw + kx) as isize - g.pw as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv =
                                        x[((ni * g.c + i) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((o * g.c + i) * g.kh + ky) * g.kw + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        let at = ((ni * g.m + o) * g.oh + oy) * g.ow + ox;
                        if let Some(z) = z {
                            s += z[at] as f64;
                        }
                        y[at] = if relu { s.max(0.0) as f32 } else { s as f32 };
                    }
                }
            }
        }
        y
    }

    fn geo() -> impl Strategy<Value = Geo> {
        (
            1usize..3,
            prop_oneof![Just(3usize), Just(8), Just(16), Just(24), 1usize..12],
            1usize..6,
            1usize..15,
            1usize..15,
            1usize..6,
            1usize..6,
            1usize..4,
            1usize..4,
            0usize..4,
            0usize..4,
            any::<bool>(),
        )
            .prop_filter_map(
                "window inside the padded image",
                |(n, c, mb, h, w, kh, kw, sh, sw, ph, pw, blocked)| {
                    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
                    if kh > hp || kw > wp || (blocked && c % BLOCK != 0) {
                        return None;
                    }
                    Some(Geo {
                        n,
                        c,
                        m: mb * BLOCK,
                        h,
                        w,
                        kh,
                        kw,
                        sh,
                        sw,
                        ph,
                        pw,
                        oh: (hp - kh) / sh + 1,
                        ow: (wp - kw) / sw + 1,
                        x_blocked: blocked,
                    })
                },
            )
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The scalar model (on weights packed for it and for the AVX-512 tile) and every SIMD
    /// tile this CPU can run: pairs of the tile that runs and the one the weights are for.
    fn tiles() -> Vec<(Tile, Tile)> {
        let mut t = vec![(Tile::Scalar, Tile::Scalar), (Tile::Scalar, Tile::Avx512)];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2() {
                t.push((Tile::Avx2, Tile::Avx2));
            }
            if avx512() {
                t.push((Tile::Avx512, Tile::Avx512));
            }
        }
        t
    }

    fn run(g: &Geo, seed: u64, with_bias: bool, with_z: bool, relu: bool, tiles: (Tile, Tile)) {
        let (tile, packed_for) = tiles;
        let x = values(g.n * g.c * g.h * g.w, seed);
        let w = values(g.m * g.c * g.kh * g.kw, seed + 1);
        let b = values(g.m, seed + 2);
        let z = values(g.n * g.m * g.oh * g.ow, seed + 3);
        let want = reference(
            g,
            &x,
            &w,
            with_bias.then_some(&b[..]),
            with_z.then_some(&z[..]),
            relu,
        );
        let hw = g.h * g.w;
        let xin = if g.x_blocked {
            to_blocked(&x, g.n, g.c, hw)
        } else {
            x.clone()
        };
        let ohw = g.oh * g.ow;
        let zb = to_blocked(&z, g.n, g.m, ohw);
        let packed = Weights::pack(&w, &[g.m, g.c, g.kh, g.kw], g.x_blocked, packed_for);
        let mut y = vec![f32::NAN; g.n * g.m * ohw];
        let act = if relu { Act::Relu } else { Act::None };
        conv(
            g,
            &xin,
            &packed,
            with_bias.then_some(&b[..]),
            with_z.then_some(&zb[..]),
            act,
            tile,
            &mut y,
        );
        let got = from_blocked(&y, g.n, g.m, ohw);
        let taps = (g.c * g.kh * g.kw) as f32;
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + taps.sqrt()) * (1.0 + b.abs()),
                "{g:?} at {i}: {a} vs {b}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn conv_matches_reference(g in geo(), seed in any::<u64>(), bias in any::<bool>(),
                                  z in any::<bool>(), relu in any::<bool>()) {
            for tile in tiles() {
                run(&g, seed, bias, z, relu, tile);
            }
        }
    }

    /// Pointwise convolutions, which run as one row of pixels, and strided ones, which run on
    /// the pixels they read, gathered first.
    #[test]
    fn pointwise_and_strided_pointwise_match_reference() {
        for (h, w, sh, sw, blocked) in [
            (14, 14, 2, 2, true),
            (7, 9, 2, 3, true),
            (5, 4, 3, 1, false),
            (13, 1, 1, 2, true),
            (9, 11, 1, 1, true),
            (1, 7, 1, 1, false),
        ] {
            let g = Geo {
                n: 2,
                c: 16,
                m: 24,
                h,
                w,
                kh: 1,
                kw: 1,
                sh,
                sw,
                ph: 0,
                pw: 0,
                oh: (h - 1) / sh + 1,
                ow: (w - 1) / sw + 1,
                x_blocked: blocked,
            };
            assert_eq!(g.subsampled().is_some(), (sh, sw) != (1, 1));
            for tile in tiles() {
                run(&g, 11, true, true, true, tile);
            }
        }
    }

    /// The SIMD tiles give the bits of their scalar model, for every count of output
    /// blocks a tile can end with (24, 40, 56 channels: 3, 4 + 1, 4 + 3 blocks), with bias,
    /// `Z`, Relu and an activation the epilogue applies lane by lane.
    #[test]
    fn simd_tiles_match_their_model_bitwise() {
        let simd: Vec<Tile> = tiles()
            .into_iter()
            .map(|(t, _)| t)
            .filter(|&t| t != Tile::Scalar)
            .collect();
        if simd.is_empty() {
            eprintln!("skipped: no AVX2/FMA on this CPU");
            return;
        }
        for (m, act, blocked) in [
            (24, Act::Relu, true),
            (40, Act::None, true),
            (56, Act::Other(Activation::Sigmoid), true),
            (40, Act::Relu, false),
        ] {
            let g = Geo {
                n: 1,
                c: 16,
                m,
                h: 9,
                w: 29,
                kh: 3,
                kw: 3,
                sh: 1,
                sw: 2,
                ph: 1,
                pw: 1,
                oh: 9,
                ow: 15,
                x_blocked: blocked,
            };
            let xs = values(16 * 9 * 29, 7);
            let x = if blocked {
                to_blocked(&xs, 1, 16, 9 * 29)
            } else {
                xs
            };
            let b = values(m, 9);
            let z = values(m * 9 * 15, 10);
            for &tile in &simd {
                let w = Weights::pack(&values(m * 16 * 9, 8), &[m, 16, 3, 3], blocked, tile);
                let run = |tile| {
                    let mut y = vec![0f32; m * 9 * 15];
                    conv(&g, &x, &w, Some(&b), Some(&z), act, tile, &mut y);
                    y
                };
                let (want, got) = (run(Tile::Scalar), run(tile));
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{tile:?}, {m} channels, {act:?}"
                );
            }
        }
    }

    #[test]
    fn max_pool_and_global_average_match_the_nchw_definitions() {
        let (n, c, h, w) = (2, 16, 9, 11);
        let x = values(n * c * h * w, 3);
        let xb = to_blocked(&x, n, c, h * w);
        let win = window(
            &[h, w],
            &[3, 3],
            Some(&vec![2, 2]),
            None,
            Some(&vec![1, 1, 1, 1]),
            "NOTSET",
            false,
        )
        .expect("window");
        let (oh, ow) = (win.out_sp[0], win.out_sp[1]);
        let mut yb = vec![0f32; n * c * oh * ow];
        max_pool(&win, &xb, h, w, &mut yb);
        let y = from_blocked(&yb, n, c, oh * ow);
        for plane in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for iy in (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(h) {
                        for ix in (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(w) {
                            m = m.max(x[(plane * h + iy) * w + ix]);
                        }
                    }
                    assert_eq!(y[(plane * oh + oy) * ow + ox], m);
                }
            }
        }
        let mut cx = RunCx::new();
        let xt = Value::Tensor(Tensor::from_vec(vec![n, c / BLOCK, h, w, BLOCK], xb).expect("x"));
        let out = BlockedGlobalAveragePool
            .run(&[Some(&xt)], &mut cx)
            .expect("gap");
        let Value::Tensor(g) = &out[0] else {
            panic!("a tensor")
        };
        assert_eq!(g.shape(), &[n, c, 1, 1]);
        let gv = g.as_slice::<f32>().expect("f32");
        for plane in 0..n * c {
            let mean = x[plane * h * w..(plane + 1) * h * w]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / (h * w) as f64;
            assert_eq!(gv[plane], mean as f32);
        }
    }
}
