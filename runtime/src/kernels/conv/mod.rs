//! f32 `Conv` over 1 or 2 spatial dims on the packed GEMM.
//!
//! Per image and group, the output is computed channel-major, straight into NCHW:
//! `Y[Mg, P] = W[Mg, K] · col[K, P]` (`P` output pixels, `K = Cg·kh·kw`). `col` is the im2col
//! matrix, which the GEMM packs block by block straight from the image
//! ([`crate::gemm::Gemm::sgemm_ops`] with [`BOperand::Im2col`]: materializing it cost a write
//! and a read of `K × P` floats per convolution, 7 MB for a 3×3 one over 64 × 56 × 56), or
//! the input itself for 1×1 stride-1 unpadded convolutions.
//! The wide operand (`col`, `K × P`) is the GEMM's `B`, so when the threads split the
//! columns each packs only its own pixels; the weights are its `A`, packed once at build when
//! constant ([`pack_weights`]). (Computing `Yᵀ = colᵀ·Wᵀ` instead made every thread pack
//! the whole im2col matrix and needed a transpose of the output: ResNet-50 took 298 ms
//! instead of 252 under the same load.)
//! The bias (per output channel: the GEMM's row bias), the residual `Z` of a `FusedConv` and
//! its activation are applied in the GEMM's store, so `Y` is written once. Depthwise
//! convolutions (`group = C = M`) run a direct kernel instead, and 3×3 stride-1 ones with
//! enough channels and pixels Winograd's F(4×4, 3×3) ([`winograd`]).

use rayon::prelude::*;

pub(crate) mod nchwc;
mod nchwc_winograd;
pub(crate) mod winograd;

use crate::gemm::{
    cols_inside, default_gemm, scalar_activate, AOperand, Activation, BOperand, Epilogue, Im2col,
    PackedA,
};

/// Geometry of a 2-D convolution (1-D ones have `h = kh = oh = 1`): `n` images, `m` output
/// channels, `g` groups, and the window of one group (`win.c` = input channels per group),
/// which is also its im2col matrix's geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: usize,
    pub m: usize,
    pub g: usize,
    pub win: Im2col,
}

impl Geom {
    /// Input channels.
    fn c(&self) -> usize {
        self.win.c * self.g
    }
    fn mg(&self) -> usize {
        self.m / self.g
    }
    fn is_depthwise(&self) -> bool {
        self.g > 1 && self.win.c == 1 && self.g == self.m
    }
    fn is_pointwise(&self) -> bool {
        let w = &self.win;
        w.kh == 1
            && w.kw == 1
            && w.sh == 1
            && w.sw == 1
            && w.ph == 0
            && w.pw == 0
            && w.oh == w.h
            && w.ow == w.w
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

/// The weights of each group packed for the default GEMM (`W[Mg, K]` as its `A`), once, when
/// they are constant; `None` for a depthwise convolution (its direct kernel reads `W`).
pub(crate) fn pack_weights(
    m: usize,
    group: usize,
    w: &[f32],
    w_shape: &[usize],
) -> Option<Vec<PackedA>> {
    let kd: usize = w_shape.iter().skip(1).product();
    let depthwise = group > 1 && w_shape.get(1) == Some(&1) && group == m;
    if depthwise || group == 0 || m % group != 0 || w.len() != m * kd {
        return None;
    }
    let mg = m / group;
    Some(
        (0..group)
            .map(|gi| {
                default_gemm().pack_a(mg, kd, &w[gi * mg * kd..(gi + 1) * mg * kd], kd, false)
            })
            .collect(),
    )
}

/// `y = act(conv(x, w) + bias + z)` for NCHW `x` (`[n, c, h, w]`), `w` (`[m, c/g, kh, kw]`),
/// `y` and `z` (`[n, m, oh, ow]`); `packed` is [`pack_weights`] of `w`.
pub(crate) fn conv2d(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    packed: Option<&[PackedA]>,
    post: Post,
    y: &mut [f32],
) {
    let p = g.win.cols();
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
    let (win, mg) = (&g.win, g.mg());
    let (cg, kd) = (win.c, win.rows());
    let in_img = g.c() * win.h * win.w;
    let pointwise = g.is_pointwise();
    let gemm = default_gemm();
    for ni in 0..g.n {
        let xi = &x[ni * in_img..(ni + 1) * in_img];
        for gi in 0..g.g {
            let xg = &xi[gi * cg * win.h * win.w..(gi + 1) * cg * win.h * win.w];
            let (y0, y1) = ((ni * g.m + gi * mg) * p, (ni * g.m + (gi + 1) * mg) * p);
            let yg = &mut y[y0..y1];
            let mut epi = Epilogue::NONE.with_activation(post.act);
            if let Some(b) = post.bias {
                epi = epi.with_row_bias(&b[gi * mg..(gi + 1) * mg]);
            }
            if let Some(z) = post.z {
                epi = epi.with_residual(&z[y0..y1], p);
            }
            let a = match packed {
                Some(pk) => AOperand::Packed(&pk[gi]),
                None => AOperand::Matrix {
                    a: &w[gi * mg * kd..(gi + 1) * mg * kd],
                    lda: kd,
                    trans: false,
                },
            };
            let b = if pointwise || kd == 0 {
                // The image is the im2col matrix.
                BOperand::Matrix {
                    b: xg,
                    ldb: p,
                    trans: false,
                }
            } else {
                BOperand::Im2col { x: xg, geom: *win }
            };
            gemm.sgemm_ops(mg, p, kd, 1.0, a, b, 0.0, yg, p, epi);
        }
    }
}

/// Depthwise convolution (`group = C = M`): each output plane from its own input plane.
fn depthwise(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (c, g) = (g.c(), &g.win);
    let (p, hw, kk) = (g.oh * g.ow, g.h * g.w, g.kh * g.kw);
    let plane = |idx: usize, out: &mut [f32]| {
        let ch = idx % c;
        let xp = &x[idx * hw..(idx + 1) * hw];
        let wp = &w[ch * kk..(ch + 1) * kk];
        out.fill(bias.map_or(0.0, |b| b[ch]));
        for kj in 0..g.kw {
            let off = (kj * g.dw) as isize - g.pw as isize;
            let (lo, hi) = cols_inside(off, g.w, g.sw, g.ow);
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
