//! Packing of `op(A)` and `op(B)` into the micro-kernel's panel layout, the per-thread packing
//! buffers, and [`PackedB`] (a `B` packed once, ahead of time).

use std::cell::RefCell;
use std::fmt;

use rayon::prelude::*;

use super::{AView, Im2col, Isa, Kernel};

/// A growable f32 buffer whose slices start on a 64-byte boundary (so that packed panels never
/// straddle cache lines more than they must).
#[derive(Default, Clone)]
pub(crate) struct AlignedBuf {
    v: Vec<f32>,
}

const ALIGN_F32: usize = 16; // 64 bytes

impl AlignedBuf {
    fn offset(&self) -> usize {
        let addr = self.v.as_ptr() as usize;
        ((64 - addr % 64) % 64) / 4
    }

    /// A `len`-element slice (contents unspecified), reallocating only to grow.
    pub(crate) fn get(&mut self, len: usize) -> &mut [f32] {
        if self.v.len() < len + ALIGN_F32 {
            self.v = vec![0.0; len + ALIGN_F32];
        }
        let off = self.offset();
        &mut self.v[off..off + len]
    }

    fn slice(&self, len: usize) -> &[f32] {
        let off = self.offset();
        &self.v[off..off + len]
    }
}

thread_local! {
    static BUFFERS: RefCell<(AlignedBuf, AlignedBuf)> = RefCell::new(Default::default());
}

thread_local! {
    static SHARED_B: RefCell<AlignedBuf> = RefCell::new(Default::default());
}

thread_local! {
    static SHARED_A: RefCell<AlignedBuf> = RefCell::new(Default::default());
}

/// [`with_shared_b`] for an `A` that all threads pack together and then read.
pub(crate) fn with_shared_a<R>(f: impl FnOnce(&mut AlignedBuf) -> R) -> Option<R> {
    SHARED_A.with(|cell| cell.try_borrow_mut().ok().map(|mut buf| f(&mut buf)))
}

/// Runs `f` with the calling thread's buffer for a `B` that all threads pack together and then
/// read (kept between calls, like [`with_buffers`]); `None` when re-entered on this thread.
pub(crate) fn with_shared_b<R>(f: impl FnOnce(&mut AlignedBuf) -> R) -> Option<R> {
    SHARED_B.with(|cell| cell.try_borrow_mut().ok().map(|mut buf| f(&mut buf)))
}

/// Runs `f` with this thread's (A, B) packing buffers, kept between calls so that a GEMM in a
/// loop does not allocate.
pub(crate) fn with_buffers<R>(f: impl FnOnce(&mut AlignedBuf, &mut AlignedBuf) -> R) -> R {
    let mut f = Some(f);
    let r = BUFFERS.with(|cell| {
        cell.try_borrow_mut().ok().map(|mut bufs| {
            let (a, b) = &mut *bufs;
            (f.take().unwrap())(a, b)
        })
    });
    match r {
        Some(r) => r,
        // Re-entered on this thread (not expected): use fresh buffers.
        None => {
            let (mut a, mut b) = (AlignedBuf::default(), AlignedBuf::default());
            (f.take().unwrap())(&mut a, &mut b)
        }
    }
}

/// Packs the `kc × nc` block of `b` into `ceil(nc/nr)` panels of `kc × nr` (row `p` of panel
/// `q` at `dst[(q·kc + p)·nr..]`), zero-padding the columns past `nc`.
///
/// # Safety
/// `b` must be valid for the `kc × nc` block.
pub(crate) unsafe fn pack_b(dst: &mut [f32], b: AView, kc: usize, nc: usize, nr: usize) {
    let np = nc.div_ceil(nr);
    assert!(dst.len() >= np * nr * kc);
    if b.cs == 1 {
        // Row-major B: read each row once, sequentially, and deal it out to the panels.
        let full = nc / nr;
        match nr {
            8 => deal_rows::<8>(dst, b.ptr.0, b.rs, kc, full),
            12 => deal_rows::<12>(dst, b.ptr.0, b.rs, kc, full),
            16 => deal_rows::<16>(dst, b.ptr.0, b.rs, kc, full),
            32 => deal_rows::<32>(dst, b.ptr.0, b.rs, kc, full),
            _ => {
                for q in 0..full {
                    for p in 0..kc {
                        let s = std::slice::from_raw_parts(b.ptr.0.add(p * b.rs + q * nr), nr);
                        dst[(q * kc + p) * nr..][..nr].copy_from_slice(s);
                    }
                }
            }
        }
        if full < np {
            let j0 = full * nr;
            let w = nc - j0;
            let panel = &mut dst[full * kc * nr..np * kc * nr];
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                let s = std::slice::from_raw_parts(b.ptr.0.add(p * b.rs + j0), w);
                row[..w].copy_from_slice(s);
                row[w..].fill(0.0);
            }
        }
    } else {
        // B stored transposed: column j of op(B) is contiguous in memory.
        for q in 0..np {
            let j0 = q * nr;
            let w = nr.min(nc - j0);
            let panel = &mut dst[q * kc * nr..(q + 1) * kc * nr];
            transpose_into(panel, nr, b.ptr.0.add(j0 * b.cs), b.cs, b.rs, w, kc);
        }
    }
}

/// Packs rows `k0..k0 + kc`, columns `j0..j0 + nc` of the im2col matrix of `x` (see
/// [`Im2col`]) like [`pack_b`] packs a stored `B`: row by row of the matrix (one tap of one
/// channel), each output row's run of pixels read from one input row (0 in the padding).
///
/// # Safety
/// `x` must hold `g.c · g.h · g.w` elements. Only pixels inside the image are read, whatever
/// the geometry.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_b_im2col(
    dst: &mut [f32],
    x: *const f32,
    g: &Im2col,
    k0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    nr: usize,
) {
    if nc == 0 {
        return;
    }
    let np = nc.div_ceil(nr);
    assert!(dst.len() >= np * nr * kc && g.ow > 0);
    let gather = gathers(g);
    match nr {
        8 if gather => im2col_gather::<8>(dst, x, g, k0, kc, j0, nc),
        16 if gather => im2col_gather::<16>(dst, x, g, k0, kc, j0, nc),
        32 if gather => im2col_gather::<32>(dst, x, g, k0, kc, j0, nc),
        8 => im2col_panels::<8>(dst, x, g, k0, kc, j0, nc),
        16 => im2col_panels::<16>(dst, x, g, k0, kc, j0, nc),
        32 => im2col_panels::<32>(dst, x, g, k0, kc, j0, nc),
        _ => {
            // Other panel widths (none of kiln's kernels): through a NR = 1 layout.
            let mut tmp = vec![0f32; kc * nc];
            im2col_panels::<1>(&mut tmp, x, g, k0, kc, j0, nc);
            for (j, col) in tmp.chunks_exact(kc).enumerate() {
                for (p, &v) in col.iter().enumerate() {
                    dst[((j / nr) * kc + p) * nr + j % nr] = v;
                }
            }
        }
    }
    // The columns of the last panel past nc.
    let w = nc - (np - 1) * nr;
    if w < nr {
        for p in 0..kc {
            dst[((np - 1) * kc + p) * nr + w..((np - 1) * kc + p + 1) * nr].fill(0.0);
        }
    }
}

/// The output columns `[lo, hi)` (of `ow`) whose input column `ox·sw + off` lies inside a row
/// of `w` pixels: a convolution tap's unpadded span.
pub(crate) fn cols_inside(off: isize, w: usize, sw: usize, ow: usize) -> (usize, usize) {
    let lo = if off >= 0 {
        0
    } else {
        ((-off) as usize).div_ceil(sw)
    }
    .min(ow);
    let hi = if (w as isize) <= off {
        0
    } else {
        ((w as isize - off) as usize).div_ceil(sw)
    }
    .clamp(lo, ow);
    (lo, hi)
}

/// [`pack_b_im2col`] for panels `NR` wide: element `(p, j)` at `((j / NR)·kc + p)·NR + j % NR`.
#[inline(always)]
unsafe fn im2col_panels<const NR: usize>(
    dst: &mut [f32],
    x: *const f32,
    g: &Im2col,
    k0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
) {
    let dst = dst.as_mut_ptr();
    for p in 0..kc {
        let r = k0 + p;
        let kj = r % g.kw;
        let ki = (r / g.kw) % g.kh;
        let ci = r / (g.kw * g.kh);
        let plane = x.add(ci * g.h * g.w);
        let off = (kj * g.dw) as isize - g.pw as isize;
        let (lo, hi) = cols_inside(off, g.w, g.sw, g.ow);
        let (mut oy, mut ox0) = (j0 / g.ow, j0 % g.ow);
        let mut j = 0;
        while j < nc {
            // The run of pixels from here to the end of the output row: columns j..j + len.
            let len = (g.ow - ox0).min(nc - j);
            let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
            if iy < 0 || iy >= g.h as isize {
                put_cols::<NR>(dst, kc, p, j, len, None, 1);
            } else {
                let src = plane.add(iy as usize * g.w);
                // [ox0, a) left padding, [a, b) inside, [b, ox0 + len) right padding.
                let a = lo.clamp(ox0, ox0 + len);
                let b = hi.clamp(a, ox0 + len);
                put_cols::<NR>(dst, kc, p, j, a - ox0, None, 1);
                let ja = j + (a - ox0);
                if b > a {
                    let s = src.offset((a * g.sw) as isize + off);
                    put_cols::<NR>(dst, kc, p, ja, b - a, Some(s), g.sw);
                }
                put_cols::<NR>(dst, kc, p, ja + (b - a), ox0 + len - b, None, 1);
            }
            j += len;
            ox0 = 0;
            oy += 1;
        }
    }
}

/// Output rows at most this wide pack through [`im2col_gather`].
const GATHER_MAX_OW: usize = 16;

/// Whether [`pack_b_im2col`] packs `g` through a table of source offsets: output rows so short
/// (a 7×7 or 14×14 map) that [`im2col_panels`]' per-run work (a run per output row, split
/// into padding, inside and panel pieces) costs more than the copy. On ResNet-50's 3×3 over
/// 7×7 that packing took 23 % of the convolution's samples, 6 % through the table.
fn gathers(g: &Im2col) -> bool {
    g.ow <= GATHER_MAX_OW && g.h * g.w > 0 && g.h * g.w <= i32::MAX as usize
}

/// [`im2col_panels`] through a table: per tap `(ki, kj)` and column `j`, the pixel's offset
/// in its channel's plane, or −1 in the padding (built once per call: `kh·kw·nc` entries
/// against `kc·nc` packed). Every element is then one load and a mask.
#[inline(always)]
unsafe fn im2col_gather<const NR: usize>(
    dst: &mut [f32],
    x: *const f32,
    g: &Im2col,
    k0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
) {
    let taps = g.kh * g.kw;
    let mut table = vec![-1i32; taps * nc];
    for (t, offs) in table.chunks_exact_mut(nc).enumerate() {
        let (ki, kj) = (t / g.kw, t % g.kw);
        let (mut oy, mut ox) = (j0 / g.ow, j0 % g.ow);
        for o in offs.iter_mut() {
            let iy = (oy * g.sh + ki * g.dh).wrapping_sub(g.ph);
            let ix = (ox * g.sw + kj * g.dw).wrapping_sub(g.pw);
            // A negative coordinate wrapped around to a huge one: outside too.
            if iy < g.h && ix < g.w {
                *o = (iy * g.w + ix) as i32;
            }
            ox += 1;
            if ox == g.ow {
                ox = 0;
                oy += 1;
            }
        }
    }
    let dst = dst.as_mut_ptr();
    for p in 0..kc {
        let r = k0 + p;
        let plane = x.add(r / taps * g.h * g.w);
        let offs = &table[r % taps * nc..][..nc];
        for (q, piece) in offs.chunks(NR).enumerate() {
            let d = dst.add((q * kc + p) * NR);
            for (t, &o) in piece.iter().enumerate() {
                // Branch-free: the load reads the plane's first pixel for a padding tap, and
                // the mask clears it (the padding is 0 whatever the image holds).
                let v = (*plane.add(o.max(0) as usize)).to_bits();
                let keep = ((o >= 0) as u32).wrapping_neg();
                *d.add(t) = f32::from_bits(v & keep);
            }
        }
    }
}

/// Row `p` of columns `j..j + n` of `NR`-wide panels (`kc` rows each): `src[t·stride]`, or
/// zeros. Written a panel's piece at a time (contiguous in `dst`), a whole panel row as one
/// block when the source is contiguous: the packing of a stride-1 convolution is then a copy.
#[inline(always)]
unsafe fn put_cols<const NR: usize>(
    dst: *mut f32,
    kc: usize,
    p: usize,
    mut j: usize,
    mut n: usize,
    mut src: Option<*const f32>,
    stride: usize,
) {
    while n > 0 {
        let r = j % NR;
        let m = (NR - r).min(n);
        let d = dst.add(((j / NR) * kc + p) * NR + r);
        match src {
            None => {
                for t in 0..m {
                    *d.add(t) = 0.0;
                }
            }
            Some(s) if stride == 1 && m == NR => {
                std::ptr::write_unaligned(
                    d as *mut [f32; NR],
                    std::ptr::read_unaligned(s as *const [f32; NR]),
                );
            }
            Some(s) if stride == 1 => {
                for t in 0..m {
                    *d.add(t) = *s.add(t);
                }
            }
            // More of the run follows this piece, so `s[2m − 1]` (just before the next
            // piece's first pixel) may be read.
            #[cfg(target_arch = "x86_64")]
            Some(s) if stride == 2 && n > m && m >= 8 && super::vmath::has_avx2() => {
                let done = even_lanes_avx2(d, s, m);
                for t in done..m {
                    *d.add(t) = *s.add(t * 2);
                }
            }
            Some(s) => {
                for t in 0..m {
                    *d.add(t) = *s.add(t * stride);
                }
            }
        }
        if let Some(s) = src.as_mut() {
            *s = s.add(m * stride);
        }
        j += m;
        n -= m;
    }
}

/// `d[t] = s[2t]` for the largest multiple of 8 not above `m`, 8 at a time (two loads, a
/// shuffle of the even lanes, a cross-lane permute): a stride-2 convolution's im2col row
/// (the stem's packing went from 22 % to 12 % of its samples). Returns the number done.
///
/// # Safety
/// AVX2; `s` valid for `2m` floats (the last read is `s[2m − 1]`), `d` for `m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn even_lanes_avx2(d: *mut f32, s: *const f32, m: usize) -> usize {
    use std::arch::x86_64::*;
    let mut t = 0;
    while t + 8 <= m {
        let lo = _mm256_loadu_ps(s.add(2 * t));
        let hi = _mm256_loadu_ps(s.add(2 * t + 8));
        // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6], then the 64-bit pairs in order 0, 2, 1, 3.
        let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
        let ordered = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(even));
        _mm256_storeu_ps(d.add(t), _mm256_castpd_ps(ordered));
        t += 8;
    }
    t
}

/// The first `panels · N` columns of `kc` rows (`rs` apart) into `panels` panels of `kc × N`.
#[inline(always)]
unsafe fn deal_rows<const N: usize>(
    dst: &mut [f32],
    src: *const f32,
    rs: usize,
    kc: usize,
    panels: usize,
) {
    let dst = dst.as_mut_ptr();
    for p in 0..kc {
        let row = src.add(p * rs);
        for q in 0..panels {
            let v = std::ptr::read_unaligned(row.add(q * N) as *const [f32; N]);
            std::ptr::write_unaligned(dst.add((q * kc + p) * N) as *mut [f32; N], v);
        }
    }
}

/// `dst[p·width + i] = src[i·ls + p·ps]` for `i < h`, `p < kc`, and zeros for `h ≤ i < width`:
/// `h` lines of `kc` elements (element stride `ps`, line stride `ls`) become the columns of a
/// `kc × width` panel. Eight elements of each line at a time (when `ps == 1`, eight
/// consecutive floats per line).
unsafe fn transpose_into(
    dst: &mut [f32],
    width: usize,
    src: *const f32,
    ls: usize,
    ps: usize,
    h: usize,
    kc: usize,
) {
    let dst = &mut dst[..kc * width];
    if h < width {
        dst.fill(0.0);
    }
    let mut p = 0;
    #[cfg(target_arch = "x86_64")]
    if ps == 1 && width == 6 && h == 6 && super::vmath::has_avx2() {
        // SAFETY: the CPU has AVX2; `src` holds 6 lines of `kc` floats, `dst` `kc × 6`.
        p = transpose6_avx2(dst.as_mut_ptr(), src, ls, kc);
    } else if ps == 1 && h == width && width.is_multiple_of(8) && super::vmath::has_avx2() {
        // A full panel of a B stored transposed (K in `Q·Kᵀ`).
        // SAFETY: the CPU has AVX2; `src` holds `width` lines of `kc` floats, `dst`
        // `kc × width`.
        p = transpose8s_avx2(dst.as_mut_ptr(), width, src, ls, kc);
    }
    if ps == 1 {
        while p + 8 <= kc {
            for i in 0..h {
                let v = std::ptr::read_unaligned(src.add(i * ls + p) as *const [f32; 8]);
                for (q, x) in v.into_iter().enumerate() {
                    *dst.get_unchecked_mut((p + q) * width + i) = x;
                }
            }
            p += 8;
        }
    }
    while p < kc {
        for i in 0..h {
            *dst.get_unchecked_mut(p * width + i) = *src.add(i * ls + p * ps);
        }
        p += 1;
    }
}

/// The 8 × 8 transpose of `r` (8 lines of 8 floats): element `q` of result `i` is element
/// `i` of line `q`. Pairs, then quads of lines interleaved within each 128-bit half, then
/// the halves recombined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn transpose8x8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    // Column q: lines 0-3 from u0-3, lines 4-7 from u4-7.
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// [`transpose_into`] of 6 full lines of consecutive floats into a 6-wide panel (the AVX2
/// kernel's A panels), 8 steps of `k` at a time: 6 loads, an 8 × 8 register transpose (two
/// zero lines), 8 stores of 6 floats. Returns the number of steps done (a multiple of 8).
///
/// # Safety
/// AVX2; `src` valid for lines `i·ls .. i·ls + kc` (`i < 6`), `dst` for `kc · 6` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose6_avx2(dst: *mut f32, src: *const f32, ls: usize, kc: usize) -> usize {
    use std::arch::x86_64::*;
    let mut p = 0;
    while p + 8 <= kc {
        let r = |i: usize| _mm256_loadu_ps(src.add(i * ls + p));
        let z = _mm256_setzero_ps();
        // Lines 6 and 7 are zero: column q holds lines 0..6 in its first 6 floats.
        let cols = transpose8x8([r(0), r(1), r(2), r(3), r(4), r(5), z, z]);
        for (q, c) in cols.into_iter().enumerate() {
            let d = dst.add((p + q) * 6);
            _mm_storeu_ps(d, _mm256_castps256_ps128(c));
            let hi = _mm_castps_si128(_mm256_extractf128_ps::<1>(c));
            _mm_storel_epi64(d.add(4) as *mut __m128i, hi);
        }
        p += 8;
    }
    p
}

/// [`transpose_into`] of `width` full lines (a multiple of 8) of consecutive floats into a
/// `width`-wide panel, 8 lines × 8 steps of `k` at a time: 8 loads, an 8 × 8 register
/// transpose, 8 stores of 8 floats. Returns the number of steps done (a multiple of 8).
///
/// # Safety
/// AVX2; `src` valid for lines `i·ls .. i·ls + kc` (`i < width`), `dst` for `kc · width`
/// floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8s_avx2(
    dst: *mut f32,
    width: usize,
    src: *const f32,
    ls: usize,
    kc: usize,
) -> usize {
    use std::arch::x86_64::*;
    let mut p = 0;
    while p + 8 <= kc {
        for i0 in (0..width).step_by(8) {
            let r = |i: usize| _mm256_loadu_ps(src.add((i0 + i) * ls + p));
            let cols = transpose8x8([r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7)]);
            for (q, c) in cols.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((p + q) * width + i0), c);
            }
        }
        p += 8;
    }
    p
}

/// Packs the `mc × kc` block of `a` into `ceil(mc/mr)` panels of `mr × kc` (element `(i, p)` of
/// panel `q` at `dst[q·mr·kc + p·mr + i]`), zero-padding the rows past `mc`.
///
/// # Safety
/// `a` must be valid for the `mc × kc` block.
pub(crate) unsafe fn pack_a(dst: &mut [f32], a: AView, mc: usize, kc: usize, mr: usize) {
    let mp = mc.div_ceil(mr);
    assert!(dst.len() >= mp * mr * kc);
    for q in 0..mp {
        let i0 = q * mr;
        let h = mr.min(mc - i0);
        let panel = &mut dst[q * mr * kc..(q + 1) * mr * kc];
        if a.rs == 1 {
            // A stored transposed: MR consecutive floats per step of k.
            for (p, col) in panel.chunks_exact_mut(mr).enumerate() {
                let src = std::slice::from_raw_parts(a.ptr.0.add(p * a.cs + i0), h);
                col[..h].copy_from_slice(src);
                col[h..].fill(0.0);
            }
        } else {
            transpose_into(panel, mr, a.ptr.0.add(i0 * a.rs), a.rs, a.cs, h, kc);
        }
    }
}

/// One operand packed ahead of time into a kernel's panels: `k` in blocks of `KC`; block `b`
/// holds all `ceil(outer / width)` panels of `kc_b × width` (zero-padded past `outer`), so the
/// panels of any aligned range of a `k` block are contiguous. What [`PackedA`] (`outer = m`,
/// `width = MR`) and [`PackedB`] (`outer = n`, `width = NR`) share.
#[derive(Clone)]
struct Panels {
    outer: usize,
    k: usize,
    kc: usize,
    width: usize,
    isa: Isa,
    model: bool,
    buf: AlignedBuf,
}

impl Panels {
    /// `fill(block, pc, kb)` packs the `k` block starting at `pc`, `kb` deep (blocks in
    /// parallel).
    fn pack(
        kern: &Kernel,
        outer: usize,
        k: usize,
        width: usize,
        fill: impl Fn(&mut [f32], usize, usize) + Sync,
    ) -> Panels {
        let kc = kern.kc;
        let count = outer.div_ceil(width);
        let mut buf = AlignedBuf::default();
        let len = k * count * width;
        let data = buf.get(len);
        if len > 0 {
            data.par_chunks_mut(kc * count * width)
                .enumerate()
                .for_each(|(blk, dst)| {
                    let pc = blk * kc;
                    fill(dst, pc, kc.min(k - pc))
                });
        }
        Panels {
            outer,
            k,
            kc,
            width,
            isa: kern.isa,
            model: kern.model,
            buf,
        }
    }

    fn count(&self) -> usize {
        self.outer.div_ceil(self.width)
    }

    fn len(&self) -> usize {
        self.k * self.count() * self.width
    }

    fn as_ptr(&self) -> *const f32 {
        self.buf.slice(self.len()).as_ptr()
    }

    fn matches(&self, kern: &Kernel, width: usize) -> bool {
        self.isa == kern.isa
            && self.model == kern.model
            && self.kc == kern.kc
            && self.width == width
    }

    fn describe(&self, rows: usize, cols: usize, width: &str) -> String {
        format!(
            "{}{} {rows}x{cols} {width}={} KC={}",
            self.isa,
            if self.model { " model" } else { "" },
            self.width,
            self.kc
        )
    }
}

/// `op(B)` (`k × n`) packed once into one kernel's panel layout — for weights, at compile time.
/// Column panels of `kc_b × NR` per `KC` block, so the panels a GEMM needs for any column range
/// and `k` block are contiguous. Use it with the GEMM (ISA and `KC`) it was packed for.
#[derive(Clone)]
pub struct PackedB(Panels);

impl fmt::Debug for PackedB {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackedB({})", self.describe())
    }
}

impl PackedB {
    /// Packs `op(B)` for the default GEMM ([`super::default_gemm`]): `b` holds `B` as `k × n`
    /// (`trans_b = false`, `ldb ≥ n`) or `n × k` (`trans_b = true`, `ldb ≥ k`).
    pub fn new(k: usize, n: usize, b: &[f32], ldb: usize, trans_b: bool) -> PackedB {
        super::default_gemm().pack_b(k, n, b, ldb, trans_b)
    }

    pub(crate) fn with_kernel(
        kern: &Kernel,
        k: usize,
        n: usize,
        b: &[f32],
        ldb: usize,
        trans_b: bool,
    ) -> PackedB {
        if k > 0 {
            super::check_op("b", b.len(), k, n, ldb, trans_b);
        }
        let view = AView::new(b, ldb, trans_b);
        let nr = kern.nr;
        // SAFETY: bounds checked above.
        PackedB(Panels::pack(kern, n, k, nr, |dst, pc, kb| unsafe {
            pack_b(dst, view.offset(pc, 0), kb, n, nr)
        }))
    }

    /// Rows of `op(B)`.
    pub fn k(&self) -> usize {
        self.0.k
    }

    /// Columns of `op(B)`.
    pub fn n(&self) -> usize {
        self.0.outer
    }

    /// The ISA whose kernel this was packed for.
    pub fn isa(&self) -> Isa {
        self.0.isa
    }

    /// Bytes of packed data.
    pub fn size_bytes(&self) -> usize {
        self.0.len() * 4
    }

    pub(crate) fn panels(&self) -> usize {
        self.0.count()
    }

    pub(crate) fn as_ptr(&self) -> *const f32 {
        self.0.as_ptr()
    }

    pub(crate) fn matches(&self, kern: &Kernel) -> bool {
        self.0.matches(kern, kern.nr)
    }

    pub(crate) fn describe(&self) -> String {
        self.0.describe(self.k(), self.n(), "NR")
    }
}

/// `op(A)` (`m × k`) packed once into one kernel's panel layout — a convolution's weights, at
/// compile time (packing them on every run read and wrote all of ResNet-50's 100 MB of
/// weights per inference, on each thread that split the output's columns). Row panels of
/// `MR × kc_b` per `KC` block. Use it with the GEMM (ISA, `MR` and `KC`) it was packed for.
#[derive(Clone)]
pub struct PackedA(Panels);

impl fmt::Debug for PackedA {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackedA({})", self.describe())
    }
}

impl PackedA {
    pub(crate) fn with_kernel(
        kern: &Kernel,
        m: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        trans_a: bool,
    ) -> PackedA {
        if m > 0 && k > 0 {
            super::check_op("a", a.len(), m, k, lda, trans_a);
        }
        let view = AView::new(a, lda, trans_a);
        let mr = kern.mr;
        // SAFETY: bounds checked above.
        PackedA(Panels::pack(kern, m, k, mr, |dst, pc, kb| unsafe {
            pack_a(dst, view.offset(0, pc), m, kb, mr)
        }))
    }

    /// Rows of `op(A)`.
    pub fn m(&self) -> usize {
        self.0.outer
    }

    /// Columns of `op(A)`.
    pub fn k(&self) -> usize {
        self.0.k
    }

    /// Bytes of packed data.
    pub fn size_bytes(&self) -> usize {
        self.0.len() * 4
    }

    pub(crate) fn panels(&self) -> usize {
        self.0.count()
    }

    pub(crate) fn as_ptr(&self) -> *const f32 {
        self.0.as_ptr()
    }

    pub(crate) fn matches(&self, kern: &Kernel) -> bool {
        self.0.matches(kern, kern.mr)
    }

    pub(crate) fn describe(&self) -> String {
        self.0.describe(self.m(), self.k(), "MR")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whichever path packs them (the AVX2 transpose for full 6-row panels, the portable
        /// loops for the rest and the tails), the panels hold `a[i][p]` at `p·MR + i` and
        /// zeros in the padding rows.
        #[test]
        fn pack_a_places_every_element(mc in 0usize..20, kc in 0usize..40, extra in 0usize..9) {
            let (mr, lda) = (6, kc + extra);
            let a: Vec<f32> = (0..mc * lda).map(|x| x as f32 + 0.5).collect();
            let mp = mc.div_ceil(mr);
            let mut dst = vec![f32::NAN; mp * mr * kc];
            let view = AView::new(&a, lda, false);
            // SAFETY: `a` holds the `mc × kc` block (row stride `lda`).
            unsafe { pack_a(&mut dst, view, mc, kc, mr) };
            for q in 0..mp {
                for p in 0..kc {
                    for i in 0..mr {
                        let row = q * mr + i;
                        let want = if row < mc { a[row * lda + p] } else { 0.0 };
                        prop_assert_eq!(dst[q * mr * kc + p * mr + i], want, "panel {} k {} row {}", q, p, i);
                    }
                }
            }
        }

        /// A B stored transposed (`b[j][p]`, row stride `ldb`), packed into 8-, 16- and
        /// 32-wide panels: whichever path (the AVX2 8 × 8 transposes for full panels, the
        /// portable loops for the rest and the tails), the panels hold `b[j][p]` at
        /// `p·NR + j` and zeros in the padding columns.
        #[test]
        fn pack_b_transposed_places_every_element(
            nc in 0usize..70, kc in 0usize..40, extra in 0usize..9, nr_i in 0usize..3,
        ) {
            let (nr, ldb) = ([8, 16, 32][nr_i], kc + extra);
            let b: Vec<f32> = (0..nc * ldb).map(|x| x as f32 + 0.5).collect();
            let np = nc.div_ceil(nr);
            let mut dst = vec![f32::NAN; np * nr * kc];
            let view = AView::new(&b, ldb, true);
            // SAFETY: `b` holds `nc` lines of `kc` elements (line stride `ldb`).
            unsafe { pack_b(&mut dst, view, kc, nc, nr) };
            for q in 0..np {
                for p in 0..kc {
                    for j in 0..nr {
                        let col = q * nr + j;
                        let want = if col < nc { b[col * ldb + p] } else { 0.0 };
                        prop_assert_eq!(dst[q * nr * kc + p * nr + j], want, "panel {} k {} col {}", q, p, j);
                    }
                }
            }
        }
    }
}
