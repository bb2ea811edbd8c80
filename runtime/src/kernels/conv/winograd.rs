//! Winograd F(4×4, 3×3) for 3×3 convolutions of stride and dilation 1 (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016).
//!
//! A 4×4 block of outputs of one output channel needs, per input channel, 144 products from a
//! 6×6 input patch `d` and the 3×3 filter `g`; in the Winograd domain it needs 36:
//! `Y = Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A`. Summed over channels, the 36 element-wise products
//! are 36 independent GEMMs `M_ξ[m, t] = U_ξ[m, c] · V_ξ[c, t]` over the tiles `t` of all
//! images, which kiln's packed GEMM runs (one per thread at a time; `U_ξ` packed at build).
//! So the multiply count falls 4× (ResNet-50's stride-1 3×3 layers: 9.2 G → 2.6 G FLOPs at
//! 224²), at the price of three passes over memory (input transform, `V`; GEMM output, `M`;
//! output transform) and `U` being 4× the size of the filters.
//!
//! That price is why the planner ([`worthwhile`]) takes this path only with enough tiles to
//! reuse `U` over (a 7×7 output has 4: `U` streams from memory and the GEMMs are too thin)
//! and enough channels for the GEMMs to dominate the transforms.
//!
//! Accuracy: the transforms' constants (up to 8 in `Aᵀ`, 1/24 in `G`) add rounding error that
//! direct convolution does not have, a few f32 ulps of `Σ|x|·|w|` rather than of the result;
//! `runtime/tests/conv_prop.rs` bounds it against an f64 reference.
//!
//! The transforms run over [`L`] tiles of a tile row at once (one array lane per tile), so
//! they vectorize; the 6×6 patches of a tile row are read from one padded copy of each input
//! row.

use kiln_ir::op::Conv;
use kiln_ir::Type;
use rayon::prelude::*;

use super::{Geom, Post};
use crate::gemm::{default_gemm, scalar_activate, AOperand, BOperand, Epilogue, Isa, PackedA};
use crate::kernel::BuildCx;

/// Tiles transformed at once (array lanes).
const L: usize = 16;
/// Transformed-domain elements per tile (6 × 6).
pub(super) const XI: usize = 36;

/// Below this many output tiles per image, the GEMMs are too thin to pay for `U`.
pub(crate) const MIN_TILES: usize = 16;
/// The same with AVX-512, whose GEMM is twice as fast per FLOP (Zen 5, Intel server parts)
/// while the transforms and the streaming of `U` are not: ResNet-50's 256-channel 3×3 layers
/// at 14² (16 tiles) took 4.3–4.6 ms here against 3.8–3.9 ms as im2col + GEMM on a Zen 5,
/// its 128-channel ones at 28² (49 tiles) 1.5–1.9 ms against 2.2–2.4. On blocked images
/// ([`super::nchwc_winograd`], whose transforms are cheaper) the rule stays `MIN_TILES`: on a
/// Zen 4 with AVX-512 the 14² layer took 1.7–2.8 ms that way against 2.6–3.1 ms on the
/// direct AVX-512 tiles, one thread (not measured on a Zen 5).
pub(crate) const MIN_TILES_AVX512: usize = 25;
/// Below this many input or output channels, the transforms cost more than they save.
pub(crate) const MIN_CHANNELS: usize = 16;

/// The filters in the Winograd domain, `U_ξ = (G g Gᵀ)_ξ` as 36 `[m, c]` matrices, each
/// packed as the GEMM's `A`.
pub(crate) struct Weights {
    m: usize,
    c: usize,
    u: Vec<PackedA>,
}

pub(super) fn tiles(n: usize) -> usize {
    n.div_ceil(4)
}

/// Whether the planner may choose this path: unless the environment variable `KILN_WINOGRAD`
/// is `0` (im2col + GEMM everywhere: direct convolution's rounding, for comparisons).
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WINOGRAD").map_or(true, |v| v != "0"))
}

/// Whether a convolution of `m` output and `c` input channels with an `oh × ow` output
/// gains from this path (see the module notes), on blocked images or not.
pub(crate) fn worthwhile(m: usize, c: usize, oh: usize, ow: usize, blocked: bool) -> bool {
    let min_tiles = match default_gemm().isa() {
        Isa::Avx512 if !blocked => MIN_TILES_AVX512,
        _ => MIN_TILES,
    };
    m >= MIN_CHANNELS && c >= MIN_CHANNELS && tiles(oh) * tiles(ow) >= min_tiles
}

/// Whether a 2-D convolution `c` with weights of shape `ws` (on blocked images or not) runs
/// Winograd's algorithm: 3×3, stride and dilation 1, one group, and (from the inferred output
/// shape, so only where it is static) enough tiles and channels ([`worthwhile`]).
pub(crate) fn pays(c: &Conv, ws: &[usize], cx: &BuildCx, blocked: bool) -> bool {
    let ones = |v: &Option<Vec<i64>>| v.as_ref().is_none_or(|v| v.iter().all(|&x| x == 1));
    let out = match cx.output_types.first().copied().flatten() {
        Some(Type::Tensor(t)) => t.shape.as_ref(),
        _ => None,
    };
    let spatial = |i: usize| {
        out.and_then(|s| s.get(i))
            .and_then(|d| d.known())
            .and_then(|d| usize::try_from(d).ok())
    };
    enabled()
        && ws.len() == 4
        && ws[2..] == [3, 3]
        && c.group == 1
        && ones(&c.strides)
        && ones(&c.dilations)
        && matches!((spatial(2), spatial(3)), (Some(oh), Some(ow))
            if worthwhile(ws[0], ws[1], oh, ow, blocked))
}

/// Whether the geometry is one this path computes (any spatial size and padding).
pub(crate) fn applies(g: &Geom, w: &Weights) -> bool {
    let win = &g.win;
    g.g == 1
        && g.m == w.m
        && win.c == w.c
        && (win.kh, win.kw, win.sh, win.sw, win.dh, win.dw) == (3, 3, 1, 1, 1, 1)
        && win.h > 0
        && win.w > 0
}

/// `U_ξ = (G g Gᵀ)_ξ` for each of the `count` 3×3 filters of `w`, in their order. The
/// transform runs in f64, so `U` is `G g Gᵀ` rounded once.
pub(super) fn filter_transform(w: &[f32], count: usize, xi: usize) -> Vec<f32> {
    const G: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    let (gi, gj) = (&G[xi / 6], &G[xi % 6]);
    w.chunks_exact(9)
        .take(count)
        .map(|g| {
            let mut v = 0f64;
            for p in 0..3 {
                for q in 0..3 {
                    v += gi[p] * g[p * 3 + q] as f64 * gj[q];
                }
            }
            v as f32
        })
        .collect()
}

impl Weights {
    /// From `w` (`[m, c, 3, 3]`).
    pub(crate) fn new(m: usize, c: usize, w: &[f32]) -> Weights {
        // One ξ at a time (in parallel), so the unpacked matrices never all exist at once:
        // for ResNet-50 they would be 56 MB beside their packed copies.
        let gemm = default_gemm();
        let u = (0..XI)
            .into_par_iter()
            .map(|xi| gemm.pack_a(m, c, &filter_transform(w, m * c, xi), c, false))
            .collect();
        Weights { m, c, u }
    }

    /// Floats of scratch [`conv2d`] needs for `g`.
    fn scratch_len(&self, g: &Geom) -> usize {
        XI * (self.c + self.m) * g.n * tiles(g.win.oh) * tiles(g.win.ow)
    }
}

/// The GEMMs' shared output, written through a pointer (see [`run`]).
struct RowsOut(*mut f32);
// SAFETY: the GEMMs running in parallel write disjoint rows.
unsafe impl Sync for RowsOut {}

thread_local! {
    /// `V` and `M` of the calling thread's last Winograd convolution, kept for the next: a
    /// fresh multi-megabyte buffer costs a page fault per 4 KiB on first touch, measured as
    /// a third of a 64-channel 56×56 convolution's time.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on `len` floats of this thread's scratch (contents unspecified).
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            if s.len() < len {
                s.resize(len, 0.0);
            }
            f(&mut s[..len])
        }
        // Re-entered (a convolution inside a rayon task of another): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `y = act(conv(x, w) + bias + z)` (see [`super::conv2d`]) for a geometry that
/// [`applies`].
pub(crate) fn conv2d(g: &Geom, x: &[f32], w: &Weights, post: Post, y: &mut [f32]) {
    with_scratch(w.scratch_len(g), |s| run(g, x, w, post, y, s))
}

fn run(g: &Geom, x: &[f32], w: &Weights, post: Post, y: &mut [f32], scratch: &mut [f32]) {
    let win = &g.win;
    let (th, tw) = (tiles(win.oh), tiles(win.ow));
    let t_all = g.n * th * tw;
    if t_all == 0 {
        // An empty batch: nothing to write (and no chunk of zero length to split V into).
        return;
    }
    let (c, m) = (w.c, w.m);
    let (v, rest) = scratch.split_at_mut(XI * c * t_all);
    let mt = &mut rest[..XI * m * t_all];
    let wide = wide_transforms();

    // V, laid out [c][ξ][t]: one contiguous block per input channel.
    v.par_chunks_mut(XI * t_all)
        .enumerate()
        .for_each(|(ci, vc)| {
            for ni in 0..g.n {
                let plane = &x[(ni * c + ci) * win.h * win.w..][..win.h * win.w];
                let t0 = ni * th * tw;
                if wide {
                    // SAFETY: `wide_transforms` checked AVX2 and FMA.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        input_plane_avx2(g, plane, vc, t0, t_all)
                    };
                } else {
                    input_plane(g, plane, vc, t0, t_all);
                }
            }
        });

    // M_ξ = U_ξ · V_ξ, one GEMM per thread at a time. M is laid out [m][ξ][t], so the
    // output transform of a channel reads one contiguous block (36 separate rows of an
    // [ξ][m][t] layout, megabytes apart, were a third of its time in cache misses).
    let serial = default_gemm().with_threads(1);
    let out = RowsOut(mt.as_mut_ptr());
    (0..XI).into_par_iter().with_max_len(1).for_each(|xi| {
        let out = &out;
        // SAFETY: GEMM ξ writes rows `(mi·36 + ξ)·t_all ..+ t_all` of `mt` (in bounds:
        // `mt` holds 36·m·t_all floats), which no other GEMM writes and nothing reads
        // until all have finished.
        unsafe {
            serial.sgemm_ops_raw(
                m,
                t_all,
                c,
                1.0,
                AOperand::Packed(&w.u[xi]),
                BOperand::Matrix {
                    b: &v[xi * t_all..],
                    ldb: XI * t_all,
                    trans: false,
                },
                0.0,
                out.0.add(xi * t_all),
                XI * t_all,
                Epilogue::NONE,
            )
        }
    });
    let mt = &*mt;
    let plane_len = win.oh * win.ow;
    y[..g.n * m * plane_len]
        .par_chunks_mut(plane_len)
        .enumerate()
        .for_each(|(nm, yp)| {
            let (ni, mi) = (nm / m, nm % m);
            let bias = post.bias.map_or(0.0, |b| b[mi]);
            if wide {
                // SAFETY: `wide_transforms` checked AVX2 and FMA.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    output_plane_avx2(g, mt, mi, ni, t_all, bias, yp)
                };
            } else {
                output_plane(g, mt, mi, ni, t_all, bias, yp);
            }
            if let Some(z) = post.z {
                for (o, &zv) in yp.iter_mut().zip(&z[nm * plane_len..]) {
                    *o += zv;
                }
            }
            scalar_activate(post.act, yp);
        });
}

/// Whether the transforms run as AVX2 code (the same arithmetic, 8 lanes per instruction
/// instead of SSE2's 4): when the CPU has it and `KILN_ISA` does not force the scalar GEMM.
fn wide_transforms() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        default_gemm().isa() != crate::gemm::Isa::Scalar
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_plane_avx2(g: &Geom, plane: &[f32], vc: &mut [f32], t0: usize, t_all: usize) {
    input_plane(g, plane, vc, t0, t_all)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_plane_avx2(
    g: &Geom,
    mt: &[f32],
    mi: usize,
    ni: usize,
    t_all: usize,
    bias: f32,
    yp: &mut [f32],
) {
    output_plane(g, mt, mi, ni, t_all, bias, yp)
}

/// `Bᵀ` applied to six lane vectors (the rows or the columns of `N` patches, or of one
/// patch's `N` channels).
#[inline(always)]
pub(super) fn bt<const N: usize>(d: [&[f32; N]; 6]) -> [[f32; N]; 6] {
    let mut r = [[0f32; N]; 6];
    for l in 0..N {
        let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * (d1 + d2) + (d3 + d4);
        r[2][l] = 4.0 * (d1 - d2) + (d4 - d3);
        r[3][l] = 2.0 * (d3 - d1) + (d4 - d2);
        r[4][l] = 2.0 * (d1 - d3) + (d4 - d2);
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// `Aᵀ` applied to six lane vectors.
#[inline(always)]
pub(super) fn at<const N: usize>(m: [&[f32; N]; 6]) -> [[f32; N]; 4] {
    let mut r = [[0f32; N]; 4];
    for l in 0..N {
        let (m0, m5) = (m[0][l], m[5][l]);
        let (p12, d12) = (m[1][l] + m[2][l], m[1][l] - m[2][l]);
        let (p34, d34) = (m[3][l] + m[4][l], m[3][l] - m[4][l]);
        r[0][l] = m0 + p12 + p34;
        r[1][l] = d12 + 2.0 * d34;
        r[2][l] = p12 + 4.0 * p34;
        r[3][l] = d12 + 8.0 * d34 + m5;
    }
    r
}

/// `Bᵀ d B` of every 6×6 patch of one input plane, written to `vc[ξ·t_all + t0 + tile]`.
#[inline(always)]
fn input_plane(g: &Geom, plane: &[f32], vc: &mut [f32], t0: usize, t_all: usize) {
    let win = &g.win;
    let (th, tw) = (tiles(win.oh), tiles(win.ow));
    for ty in 0..th {
        for tx0 in (0..tw).step_by(L) {
            let n = L.min(tw - tx0);
            // e[i] = the column transform of patch row i.
            let mut e = [[[0f32; L]; 6]; 6];
            for (i, ei) in e.iter_mut().enumerate() {
                let iy = (4 * ty + i) as isize - win.ph as isize;
                let mut row = [0f32; 4 * L + 2];
                if iy >= 0 && (iy as usize) < win.h {
                    let src = &plane[iy as usize * win.w..][..win.w];
                    // Patch column 0 of tile tx0 is input column 4·tx0 − pw.
                    let x0 = (4 * tx0) as isize - win.pw as isize;
                    let lo = (-x0).max(0) as usize;
                    let hi = ((win.w as isize - x0).max(0) as usize).min(row.len());
                    if lo < hi {
                        let s = (x0 + lo as isize) as usize;
                        row[lo..hi].copy_from_slice(&src[s..s + (hi - lo)]);
                    }
                }
                let mut d = [[0f32; L]; 6];
                for (j, dj) in d.iter_mut().enumerate() {
                    for (l, v) in dj.iter_mut().enumerate() {
                        *v = row[4 * l + j];
                    }
                }
                *ei = bt([&d[0], &d[1], &d[2], &d[3], &d[4], &d[5]]);
            }
            let base = t0 + ty * tw + tx0;
            // Lanes past `n` land on tiles this task writes later, unless past the row's end;
            // a copy of constant length is a few vector moves, one of length `n` a memmove call.
            let whole = base + L <= t_all;
            for j in 0..6 {
                let r = bt([&e[0][j], &e[1][j], &e[2][j], &e[3][j], &e[4][j], &e[5][j]]);
                for (i, ri) in r.iter().enumerate() {
                    let dst = &mut vc[(i * 6 + j) * t_all + base..];
                    if whole {
                        dst[..L].copy_from_slice(ri);
                    } else {
                        dst[..n].copy_from_slice(&ri[..n]);
                    }
                }
            }
        }
    }
}

/// `Aᵀ M A + bias` of every tile of output plane `(ni, mi)`, written to `yp`.
#[inline(always)]
fn output_plane(
    g: &Geom,
    mt: &[f32],
    mi: usize,
    ni: usize,
    t_all: usize,
    bias: f32,
    yp: &mut [f32],
) {
    let win = &g.win;
    let (th, tw) = (tiles(win.oh), tiles(win.ow));
    for ty in 0..th {
        for tx0 in (0..tw).step_by(L) {
            let n = L.min(tw - tx0);
            let base = ni * th * tw + ty * tw + tx0;
            let mut mv = [[0f32; L]; XI];
            for (xi, v) in mv.iter_mut().enumerate() {
                // Lanes past `n` are read when in bounds (and ignored): a constant-length copy.
                let src = &mt[(mi * XI + xi) * t_all + base..];
                if src.len() >= L {
                    v.copy_from_slice(&src[..L]);
                } else {
                    v[..n].copy_from_slice(&src[..n]);
                }
            }
            // s[i][b]: the column transform of row i.
            let mut s = [[[0f32; L]; 4]; 6];
            for (i, si) in s.iter_mut().enumerate() {
                let r = &mv[i * 6..i * 6 + 6];
                *si = at([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
            }
            // o[b][a]: output row a, column b of each tile.
            let mut o = [[[0f32; L]; 4]; 4];
            for (b, ob) in o.iter_mut().enumerate() {
                *ob = at([&s[0][b], &s[1][b], &s[2][b], &s[3][b], &s[4][b], &s[5][b]]);
            }
            for a in 0..4 {
                let oy = 4 * ty + a;
                if oy >= win.oh {
                    break;
                }
                let row = &mut yp[oy * win.ow..(oy + 1) * win.ow];
                for l in 0..n {
                    let ox = 4 * (tx0 + l);
                    for b in 0..4.min(win.ow - ox) {
                        row[ox + b] = o[b][a][l] + bias;
                    }
                }
            }
        }
    }
}
