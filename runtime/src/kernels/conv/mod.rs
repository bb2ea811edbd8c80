//! f32 `Conv` over 1 or 2 spatial dims on the packed GEMM.
//!
//! Per image and group, the output is computed pixel-major, `T[P, Mg] = op(A)[P, K] · Wᵀ[K, Mg]`
//! (`P` output pixels, `K = Cg·kh·kw`), so that the weights are the GEMM's `B` — packed once at
//! build time when they are constant — and the bias is the epilogue's per-column bias. `op(A)`
//! is the im2col matrix `col[K, P]` read transposed, or the input itself for 1×1 stride-1
//! unpadded convolutions (no im2col). `T` (all groups side by side, `[P, M]`) is then
//! transposed into the NCHW output. Depthwise convolutions (`group = C = M`) run a direct
//! kernel instead.

use rayon::prelude::*;

use crate::gemm::{default_gemm, Epilogue, PackedB};

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

/// The weights `[M, Cg, kh, kw]`, transposed and packed per group as the GEMM's `B`
/// (`K × Mg`).
pub(crate) fn pack_weights(w: &[f32], g: &Geom) -> Vec<PackedB> {
    pack_weights_raw(w, g.m, g.g, g.kdim())
}

/// [`pack_weights`] for `m` output channels in `groups` groups of `kd = Cg·kh·kw` inputs.
pub(crate) fn pack_weights_raw(w: &[f32], m: usize, groups: usize, kd: usize) -> Vec<PackedB> {
    let mg = m / groups.max(1);
    (0..groups)
        .map(|gi| PackedB::new(kd, mg, &w[gi * mg * kd..], kd.max(1), true))
        .collect()
}

/// `y = conv(x, w) + bias` for NCHW `x` (`[n, c, h, w]`), `w` (`[m, c/g, kh, kw]`), `y`
/// (`[n, m, oh, ow]`). `packed` is [`pack_weights`] of `w` when the caller has it.
pub(crate) fn conv2d(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    packed: Option<&[PackedB]>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let p = g.oh * g.ow;
    let out_len = g.n * g.m * p;
    let y = &mut y[..out_len];
    if out_len == 0 {
        return;
    }
    if g.is_depthwise() {
        depthwise(g, x, w, bias, y);
        return;
    }
    let owned;
    let packed = match packed {
        Some(p) => p,
        None => {
            owned = pack_weights(w, g);
            &owned[..]
        }
    };
    let (cg, mg, kd) = (g.cg(), g.mg(), g.kdim());
    let in_img = g.c * g.h * g.w;
    let pointwise = g.is_pointwise();
    // Scratch (im2col matrix, pixel-major output) reused across calls on this thread: fresh
    // large allocations cost a page fault per 4 KiB on every run.
    let (mut col, mut t) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    col.resize(if pointwise { 0 } else { kd * p }, 0.0);
    t.resize(p * g.m, 0.0);
    for ni in 0..g.n {
        let xi = &x[ni * in_img..(ni + 1) * in_img];
        for gi in 0..g.g {
            let xg = &xi[gi * cg * g.h * g.w..(gi + 1) * cg * g.h * g.w];
            let a: &[f32] = if pointwise {
                xg
            } else {
                im2col(g, xg, &mut col);
                &col
            };
            let epi = match bias {
                Some(b) => Epilogue::bias(&b[gi * mg..]),
                None => Epilogue::NONE,
            };
            if kd == 0 {
                // No input channels: the output is the bias.
                for row in t.chunks_mut(g.m) {
                    for (j, v) in row[gi * mg..(gi + 1) * mg].iter_mut().enumerate() {
                        *v = bias.map_or(0.0, |b| b[gi * mg + j]);
                    }
                }
                continue;
            }
            default_gemm().sgemm_packed(
                p,
                1.0,
                a,
                p,
                true,
                &packed[gi],
                0.0,
                &mut t[gi * mg..],
                g.m,
                epi,
            );
        }
        transpose(&t, p, g.m, &mut y[ni * g.m * p..(ni + 1) * g.m * p]);
    }
    SCRATCH.with(|s| *s.borrow_mut() = (col, t));
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
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

/// `y[j][i] = t[i][j]` for `t` of `rows × cols` (`y` is `cols × rows`), in tiles.
pub(crate) fn transpose(t: &[f32], rows: usize, cols: usize, y: &mut [f32]) {
    const CB: usize = 16;
    const RB: usize = 64;
    if rows == 0 || cols == 0 {
        return;
    }
    let block = |bi: usize, yb: &mut [f32]| {
        let c0 = bi * CB;
        let cb = yb.len() / rows;
        for r0 in (0..rows).step_by(RB) {
            let r1 = (r0 + RB).min(rows);
            for cj in 0..cb {
                let yr = &mut yb[cj * rows + r0..cj * rows + r1];
                for (k, v) in yr.iter_mut().enumerate() {
                    *v = t[(r0 + k) * cols + c0 + cj];
                }
            }
        }
    };
    let y = &mut y[..rows * cols];
    if rows * cols >= 1 << 15 {
        y.par_chunks_mut(CB * rows)
            .enumerate()
            .for_each(|(bi, yb)| block(bi, yb));
    } else {
        y.chunks_mut(CB * rows)
            .enumerate()
            .for_each(|(bi, yb)| block(bi, yb));
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
