//! f32 `Conv` over 1 or 2 spatial dims on the packed GEMM.
//!
//! Per image and group, the output is computed channel-major, straight into NCHW:
//! `Y[Mg, P] = W[Mg, K] · col[K, P]` (`P` output pixels, `K = Cg·kh·kw`). `col` is the im2col
//! matrix, or the input itself for 1×1 stride-1 unpadded convolutions (no im2col, no copy).
//! The wide operand (`col`, `K × P`) is the GEMM's `B`, so when the threads split the
//! columns each packs only its own pixels; the small one (the weights) is packed per block
//! as `A`. (Computing `Yᵀ = colᵀ·Wᵀ` with pre-packed weights instead made every thread pack
//! the whole im2col matrix and needed a transpose of the output: ResNet-50 took 298 ms
//! instead of 252 under the same load.)
//! The bias (per output channel: the GEMM's row bias), the residual `Z` of a `FusedConv` and
//! its activation are applied in the GEMM's store, so `Y` is written once. Depthwise
//! convolutions (`group = C = M`) run a direct kernel instead.

use rayon::prelude::*;

use crate::gemm::{default_gemm, scalar_activate, Activation, Epilogue};

/// Geometry of a 2-D convolution (1-D ones have `h = kh = oh = 1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    pub g: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    fn cg(&self) -> usize {
        self.c / self.g
    }
    fn mg(&self) -> usize {
        self.m / self.g
    }
    /// Rows of the im2col matrix (per group).
    fn kdim(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn is_depthwise(&self) -> bool {
        self.g > 1 && self.g == self.c && self.g == self.m
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.ph == 0
            && self.pw == 0
            && self.oh == self.h
            && self.ow == self.w
    }
}

/// What a convolution adds to its sum before writing `y`: `act(conv + bias + z)`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Post<'a> {
    /// One per output channel.
    pub bias: Option<&'a [f32]>,
    /// Shaped like `y` (the `Z` input of `com.microsoft.FusedConv`).
    pub z: Option<&'a [f32]>,
    pub act: Activation,
}

/// `y = act(conv(x, w) + bias + z)` for NCHW `x` (`[n, c, h, w]`), `w` (`[m, c/g, kh, kw]`),
/// `y` and `z` (`[n, m, oh, ow]`).
pub(crate) fn conv2d(g: &Geom, x: &[f32], w: &[f32], post: Post, y: &mut [f32]) {
    let p = g.oh * g.ow;
    let out_len = g.n * g.m * p;
    let y = &mut y[..out_len];
    if out_len == 0 {
        return;
    }
    if g.is_depthwise() {
        depthwise(g, x, w, post.bias, y);
        if post.z.is_some() || post.act != Activation::None {
            crate::kernels::par::for_chunks(y, p, |start, chunk| {
                if let Some(z) = post.z {
                    for (o, &zv) in chunk.iter_mut().zip(&z[start..]) {
                        *o += zv;
                    }
                }
                scalar_activate(post.act, chunk);
            });
        }
        return;
    }
    let (cg, mg, kd) = (g.cg(), g.mg(), g.kdim());
    let in_img = g.c * g.h * g.w;
    let pointwise = g.is_pointwise();
    // The im2col matrix, reused across calls on this thread: a fresh large allocation
    // costs a page fault per 4 KiB on every run.
    let mut col = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    col.resize(if pointwise { 0 } else { kd * p }, 0.0);
    for ni in 0..g.n {
        let xi = &x[ni * in_img..(ni + 1) * in_img];
        for gi in 0..g.g {
            let xg = &xi[gi * cg * g.h * g.w..(gi + 1) * cg * g.h * g.w];
            let (y0, y1) = ((ni * g.m + gi * mg) * p, (ni * g.m + (gi + 1) * mg) * p);
            let yg = &mut y[y0..y1];
            let mut epi = Epilogue::NONE.with_activation(post.act);
            if let Some(b) = post.bias {
                epi = epi.with_row_bias(&b[gi * mg..(gi + 1) * mg]);
            }
            if let Some(z) = post.z {
                epi = epi.with_residual(&z[y0..y1], p);
            }
            let b: &[f32] = if pointwise || kd == 0 {
                xg
            } else {
                im2col(g, xg, &mut col);
                &col
            };
            let wg = &w[gi * mg * kd..(gi + 1) * mg * kd];
            default_gemm().sgemm(mg, p, kd, 1.0, wg, kd, false, b, p, false, 0.0, yg, p, epi);
        }
    }
    SCRATCH.with(|s| *s.borrow_mut() = col);
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `col[(ci·kh + ki)·kw + kj][oy·ow + ox] = x[ci][oy·sh − ph + ki·dh][ox·sw − pw + kj·dw]`
/// (0 in the padding) for one group's channels `x` (`[cg, h, w]`).
pub(crate) fn im2col(g: &Geom, x: &[f32], col: &mut [f32]) {
    let p = g.oh * g.ow;
    let rows = g.kdim();
    let col = &mut col[..rows * p];
    let fill = |r: usize, dst: &mut [f32]| {
        let kj = r % g.kw;
        let ki = (r / g.kw) % g.kh;
        let ci = r / (g.kw * g.kh);
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        // Output columns whose input column is inside: ox·sw + kj·dw − pw ∈ [0, w).
        let off = (kj * g.dw) as isize - g.pw as isize;
        let lo = if off >= 0 {
            0
        } else {
            ((-off) as usize).div_ceil(g.sw)
        }
        .min(g.ow);
        let hi = if (g.w as isize) <= off {
            0
        } else {
            ((g.w as isize - off) as usize).div_ceil(g.sw)
        }
        .clamp(lo, g.ow);
        for oy in 0..g.oh {
            let d = &mut dst[oy * g.ow..(oy + 1) * g.ow];
            let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
            if iy < 0 || iy >= g.h as isize {
                d.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            d[..lo].fill(0.0);
            d[hi..].fill(0.0);
            if hi > lo {
                let s0 = (lo * g.sw) as isize + off;
                let s0 = s0 as usize;
                if g.sw == 1 {
                    d[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                } else {
                    for (k, v) in d[lo..hi].iter_mut().enumerate() {
                        *v = src[s0 + k * g.sw];
                    }
                }
            }
        }
    };
    if rows * p >= 1 << 15 {
        col.par_chunks_mut(p)
            .enumerate()
            .with_min_len(4)
            .for_each(|(r, dst)| fill(r, dst));
    } else {
        col.chunks_mut(p)
            .enumerate()
            .for_each(|(r, dst)| fill(r, dst));
    }
}

/// Depthwise convolution (`group = C = M`): each output plane from its own input plane.
fn depthwise(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (p, hw, kk) = (g.oh * g.ow, g.h * g.w, g.kh * g.kw);
    let plane = |idx: usize, out: &mut [f32]| {
        let ch = idx % g.c;
        let xp = &x[idx * hw..(idx + 1) * hw];
        let wp = &w[ch * kk..(ch + 1) * kk];
        out.fill(bias.map_or(0.0, |b| b[ch]));
        for kj in 0..g.kw {
            let off = (kj * g.dw) as isize - g.pw as isize;
            let lo = if off >= 0 {
                0
            } else {
                ((-off) as usize).div_ceil(g.sw)
            }
            .min(g.ow);
            let hi = if (g.w as isize) <= off {
                0
            } else {
                ((g.w as isize - off) as usize).div_ceil(g.sw)
            }
            .clamp(lo, g.ow);
            if hi <= lo {
                continue;
            }
            let s0 = ((lo * g.sw) as isize + off) as usize;
            for oy in 0..g.oh {
                let orow = &mut out[oy * g.ow + lo..oy * g.ow + hi];
                for ki in 0..g.kh {
                    let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let wv = wp[ki * g.kw + kj];
                    let src = &xp[iy as usize * g.w + s0..];
                    if g.sw == 1 {
                        for (o, &v) in orow.iter_mut().zip(src) {
                            *o += wv * v;
                        }
                    } else {
                        for (k, o) in orow.iter_mut().enumerate() {
                            *o += wv * src[k * g.sw];
                        }
                    }
                }
            }
        }
    };
    y.par_chunks_mut(p.max(1))
        .enumerate()
        .with_min_len((4096 / p.max(1)).max(1))
        .for_each(|(i, o)| plane(i, o));
}
