//! Winograd F(4×4, 3×3) on channel-blocked images ([`super::nchwc`]): the algorithm of
//! [`super::winograd`] (its module notes have the arithmetic), for the 3×3 stride-1 layers of
//! a blocked chain, which the direct tiles would run with 4× the multiplies.
//!
//! Blocking turns the data flow around. A patch's 8 channels are one vector, so the
//! transforms run over a block's channels rather than over tiles, and each reads and writes
//! whole vectors: `V` is laid out `[tile][ξ][c]` and the 36 GEMMs compute
//! `Mᵀ_ξ[t, m] = Vᵀ_ξ[t, c] · Uᵀ_ξ[c, m]` (`Uᵀ_ξ` packed at build as the GEMM's `B`) into
//! `[tile][ξ][m]`, whose 8-channel vectors the output transform turns into a tile's 4×4 pixels
//! of one output block, with bias, the residual `Z` and the activation applied before the one
//! store. A tile's `V` and `M` are contiguous, so a transform reads or writes one block of
//! memory per tile.

use rayon::prelude::*;

use super::nchwc::{finish, Act, Geo, BLOCK};
use super::winograd::{at, bt, filter_transform, tiles, with_scratch, XI};
use crate::gemm::{default_gemm, AOperand, BOperand, Epilogue, PackedB};
use crate::kernels::par::OutPtr;

/// A block of 8 channels.
type Lanes = [f32; BLOCK];

/// The filters in the Winograd domain, `Uᵀ_ξ` as 36 `[c, m]` matrices packed as the GEMM's
/// `B`.
pub(crate) struct Weights {
    m: usize,
    c: usize,
    u: Vec<PackedB>,
}

impl Weights {
    /// From `w` (`[m, c, 3, 3]`).
    pub(crate) fn new(m: usize, c: usize, w: &[f32]) -> Weights {
        let gemm = default_gemm();
        let u = (0..XI)
            .into_par_iter()
            // `filter_transform` gives U_ξ as [m][c], which is Uᵀ_ξ's transpose.
            .map(|xi| gemm.pack_b(c, m, &filter_transform(w, m * c, xi), c, true))
            .collect();
        Weights { m, c, u }
    }
}

/// The GEMMs' shared output, written through a pointer (see [`conv`]).
struct ColsOut(*mut f32);
// SAFETY: the GEMMs running in parallel write disjoint columns.
unsafe impl Sync for ColsOut {}

/// `y = act(conv(x, w) + bias + z)` with `x`, `y` and `z` blocked, for a 3×3 convolution of
/// stride 1 (`g.kh = g.kw = 3`, `g.sh = g.sw = 1`; any size and padding).
pub(crate) fn conv(
    g: &Geo,
    x: &[f32],
    w: &Weights,
    bias: Option<&[f32]>,
    z: Option<&[f32]>,
    act: Act,
    y: &mut [f32],
) {
    assert!(
        g.x_blocked && (g.kh, g.kw, g.sh, g.sw) == (3, 3, 1, 1),
        "{g:?}"
    );
    assert_eq!((g.m, g.c), (w.m, w.c), "channels");
    assert_eq!(x.len(), g.n * g.c * g.h * g.w, "x");
    assert_eq!(y.len(), g.n * g.m * g.oh * g.ow, "y");
    assert!(z.is_none_or(|z| z.len() == y.len()), "z");
    assert!(bias.is_none_or(|b| b.len() == g.m), "bias");
    let t_all = g.n * tiles(g.oh) * tiles(g.ow);
    if t_all == 0 || g.m == 0 {
        return;
    }
    let (vlen, mlen) = (t_all * XI * g.c, t_all * XI * g.m);
    with_scratch(vlen + mlen, |s| {
        let (v, mt) = s.split_at_mut(vlen);
        run(g, x, w, bias, z, act, y, v, mt)
    })
}

#[allow(clippy::too_many_arguments)]
fn run(
    g: &Geo,
    x: &[f32],
    w: &Weights,
    bias: Option<&[f32]>,
    z: Option<&[f32]>,
    act: Act,
    y: &mut [f32],
    v: &mut [f32],
    mt: &mut [f32],
) {
    let (c, m) = (g.c, g.m);
    let t_all = v.len() / (XI * c);
    let wide = wide_transforms();

    // V: [tile][ξ][c].
    v.par_chunks_mut(XI * c)
        .enumerate()
        .with_min_len(4)
        .for_each(|(t, vt)| {
            if wide {
                // SAFETY: `wide_transforms` checked AVX2 and FMA.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    input_tile_avx2(g, x, t, vt)
                };
            } else {
                input_tile(g, x, t, vt);
            }
        });

    // Mᵀ_ξ = Vᵀ_ξ · Uᵀ_ξ, one GEMM per thread at a time, into columns ξ·m.. of [tile][ξ·m].
    let serial = default_gemm().with_threads(1);
    let out = ColsOut(mt.as_mut_ptr());
    let v = &*v;
    (0..XI).into_par_iter().with_max_len(1).for_each(|xi| {
        let out = &out;
        // SAFETY: GEMM ξ writes columns `ξ·m ..+ m` of the `t_all` rows of `36·m` floats
        // of `mt` (in bounds), which no other GEMM writes and nothing reads until all have
        // finished.
        unsafe {
            serial.sgemm_ops_raw(
                t_all,
                m,
                c,
                1.0,
                AOperand::Matrix {
                    a: &v[xi * c..],
                    lda: XI * c,
                    trans: false,
                },
                BOperand::Packed(&w.u[xi]),
                0.0,
                out.0.add(xi * m),
                XI * m,
                Epilogue::NONE,
            )
        }
    });

    let mt = &*mt;
    let yp = OutPtr(y.as_mut_ptr());
    let zp = z.map_or(0, |z| z.as_ptr() as usize);
    (0..t_all).into_par_iter().with_min_len(4).for_each(|t| {
        let yp = &yp;
        let mtile = &mt[t * XI * m..(t + 1) * XI * m];
        // SAFETY: the output transform of tile `t` writes only tile `t`'s pixels of `y`
        // (bounds checked against the output's size), which no other tile writes; `z`
        // has `y`'s length.
        unsafe {
            if wide {
                #[cfg(target_arch = "x86_64")]
                output_tile_avx2(g, mtile, t, bias, zp as *const f32, act, yp.at(0));
            } else {
                output_tile(g, mtile, t, bias, zp as *const f32, act, yp.at(0));
            };
        }
    });
}

/// Whether the transforms run as AVX2 code (see [`super::winograd`]).
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
unsafe fn input_tile_avx2(g: &Geo, x: &[f32], t: usize, vt: &mut [f32]) {
    input_tile(g, x, t, vt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_tile_avx2(
    g: &Geo,
    mtile: &[f32],
    t: usize,
    bias: Option<&[f32]>,
    z: *const f32,
    act: Act,
    y: *mut f32,
) {
    output_tile(g, mtile, t, bias, z, act, y)
}

/// Tile `t`'s image, row and column.
fn tile_at(g: &Geo, t: usize) -> (usize, usize, usize) {
    let (th, tw) = (tiles(g.oh), tiles(g.ow));
    (t / (th * tw), t % (th * tw) / tw, t % tw)
}

/// `Bᵀ d B` of tile `t`'s 6×6 patch, for every block of input channels, into `vt`
/// (`[ξ][c]`).
#[inline(always)]
fn input_tile(g: &Geo, x: &[f32], t: usize, vt: &mut [f32]) {
    let (ni, ty, tx) = tile_at(g, t);
    let y0 = (4 * ty) as isize - g.ph as isize;
    let x0 = (4 * tx) as isize - g.pw as isize;
    // Offsets of the patch's rows and columns inside the image; `None` in the padding.
    let inside = |o: isize, n: usize| (o >= 0 && (o as usize) < n).then_some(o as usize);
    let rows: [Option<usize>; 6] = std::array::from_fn(|i| inside(y0 + i as isize, g.h));
    let cols: [Option<usize>; 6] = std::array::from_fn(|j| inside(x0 + j as isize, g.w));
    let plane = g.h * g.w * BLOCK;
    for cb in 0..g.c / BLOCK {
        let img = &x[((ni * g.c / BLOCK) + cb) * plane..][..plane];
        // e[i] = the column transform of patch row i.
        let mut e = [[[0f32; BLOCK]; 6]; 6];
        for (ei, r) in e.iter_mut().zip(rows) {
            let mut d = [[0f32; BLOCK]; 6];
            if let Some(r) = r {
                for (dj, col) in d.iter_mut().zip(cols) {
                    if let Some(col) = col {
                        let at = (r * g.w + col) * BLOCK;
                        dj.copy_from_slice(&img[at..at + BLOCK]);
                    }
                }
            }
            *ei = bt([&d[0], &d[1], &d[2], &d[3], &d[4], &d[5]]);
        }
        for j in 0..6 {
            let r = bt([&e[0][j], &e[1][j], &e[2][j], &e[3][j], &e[4][j], &e[5][j]]);
            for (i, ri) in r.iter().enumerate() {
                let at = (i * 6 + j) * g.c + cb * BLOCK;
                vt[at..at + BLOCK].copy_from_slice(ri);
            }
        }
    }
}

/// `Aᵀ M A + bias (+ z)`, activated, of tile `t` for every block of output channels, from
/// `mtile` (`[ξ][m]`) into the tile's pixels of `y`.
///
/// # Safety
/// `y` (and `z`, unless null) must be valid for the whole blocked output of `g`.
#[inline(always)]
unsafe fn output_tile(
    g: &Geo,
    mtile: &[f32],
    t: usize,
    bias: Option<&[f32]>,
    z: *const f32,
    act: Act,
    y: *mut f32,
) {
    let (ni, ty, tx) = tile_at(g, t);
    let (rows, cols) = ((g.oh - 4 * ty).min(4), (g.ow - 4 * tx).min(4));
    let mb = g.m / BLOCK;
    for ob in 0..mb {
        let mv: [&Lanes; XI] = std::array::from_fn(|xi| {
            let at = xi * g.m + ob * BLOCK;
            <&Lanes>::try_from(&mtile[at..at + BLOCK]).expect("8 lanes")
        });
        // s[i][b]: the column transform of row i.
        let s: [[Lanes; 4]; 6] = std::array::from_fn(|i| {
            let r = &mv[i * 6..i * 6 + 6];
            at([r[0], r[1], r[2], r[3], r[4], r[5]])
        });
        // o[b][a]: output row a, column b of the tile.
        let o: [[Lanes; 4]; 4] = std::array::from_fn(|b| {
            at([&s[0][b], &s[1][b], &s[2][b], &s[3][b], &s[4][b], &s[5][b]])
        });
        let bv: Lanes = match bias {
            Some(bias) => std::array::from_fn(|l| bias[ob * BLOCK + l]),
            None => [0.0; BLOCK],
        };
        for a in 0..rows {
            for (b, ob_col) in o.iter().enumerate().take(cols) {
                let px = (((ni * mb + ob) * g.oh + 4 * ty + a) * g.ow + 4 * tx + b) * BLOCK;
                let mut val: Lanes = std::array::from_fn(|l| ob_col[a][l] + bv[l]);
                if !z.is_null() {
                    for (l, v) in val.iter_mut().enumerate() {
                        *v += *z.add(px + l);
                    }
                }
                for (l, v) in val.iter().enumerate() {
                    *y.add(px + l) = finish(*v, act);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::nchwc::{from_blocked, to_blocked, Geo};
    use super::*;

    /// A 3×3 stride-1 convolution in f64 on NCHW, with bias, `z` and Relu.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        g: &Geo,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        z: &[f32],
        relu: bool,
    ) -> (Vec<f32>, Vec<f64>) {
        let mut y = vec![0f32; g.n * g.m * g.oh * g.ow];
        // Σ|x|·|w| per output, the scale of Winograd's rounding.
        let mut mag = vec![0f64; y.len()];
        for ni in 0..g.n {
            for o in 0..g.m {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let (mut s, mut a) = (bias[o] as f64, 0f64);
                        for i in 0..g.c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy + ky) as isize - g.ph as isize;
                                    let ix = (ox + kx) as isize - g.pw as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x
                                        [((ni * g.c + i) * g.h + iy as usize) * g.w + ix as usize]
                                        as f64;
                                    let wv = w[((o * g.c + i) * 3 + ky) * 3 + kx] as f64;
                                    s += xv * wv;
                                    a += (xv * wv).abs();
                                }
                            }
                        }
                        let at = ((ni * g.m + o) * g.oh + oy) * g.ow + ox;
                        s += z[at] as f64;
                        y[at] = if relu { s.max(0.0) as f32 } else { s as f32 };
                        mag[at] = a;
                    }
                }
            }
        }
        (y, mag)
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn check(n: usize, cb: usize, mb: usize, h: usize, w: usize, p: usize, relu: bool) {
        let (c, m) = (cb * BLOCK, mb * BLOCK);
        let (oh, ow) = (h + 2 * p - 2, w + 2 * p - 2);
        let g = Geo {
            n,
            c,
            m,
            h,
            w,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            ph: p,
            pw: p,
            oh,
            ow,
            x_blocked: true,
        };
        let seed = (n * 1000 + c * 100 + m * 10 + h * 7 + w * 3 + p) as u64;
        let x = values(n * c * h * w, seed);
        let wt = values(m * c * 9, seed + 1);
        let b = values(m, seed + 2);
        let z = values(n * m * oh * ow, seed + 3);
        let (want, mag) = reference(&g, &x, &wt, &b, &z, relu);
        let weights = Weights::new(m, c, &wt);
        let xb = to_blocked(&x, n, c, h * w);
        let zb = to_blocked(&z, n, m, oh * ow);
        let mut y = vec![f32::NAN; want.len()];
        let act = if relu { Act::Relu } else { Act::None };
        conv(&g, &xb, &weights, Some(&b), Some(&zb), act, &mut y);
        let got = from_blocked(&y, n, m, oh * ow);
        for (i, ((&a, &e), &mg)) in got.iter().zip(&want).zip(&mag).enumerate() {
            // A few f32 ulps of Σ|x|·|w| (the transforms' constants reach 8 and 1/24).
            let tol = 1e-5 * (mg + 1.0 + e.abs() as f64);
            assert!(
                ((a - e) as f64).abs() <= tol,
                "{g:?} at {i}: {a} vs {e} (tolerance {tol})"
            );
        }
    }

    #[test]
    fn matches_direct_convolution_on_resnet_like_layers() {
        // Tiles that end inside the image and past it, all-padding tiles, one tile.
        for (n, cb, mb, h, w, p) in [(1, 4, 4, 14, 14, 1), (2, 2, 3, 7, 9, 1), (1, 2, 1, 3, 3, 0)] {
            check(n, cb, mb, h, w, p, false);
            check(n, cb, mb, h, w, p, true);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        #[test]
        fn matches_direct_convolution(n in 1usize..3, cb in 1usize..4, mb in 1usize..4,
                                      h in 1usize..13, w in 1usize..13, p in 0usize..3,
                                      relu in proptest::prelude::any::<bool>()) {
            proptest::prop_assume!(h + 2 * p >= 3 && w + 2 * p >= 3);
            check(n, cb, mb, h, w, p, relu);
        }
    }
}
