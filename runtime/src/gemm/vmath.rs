//! Vectorizable f32 math for the elementwise kernels: branch-free polynomial `exp` and `erf`
//! written so that LLVM vectorizes the slice loops, compiled for AVX2+FMA when the CPU has it
//! (runtime dispatch) and for the baseline target otherwise, and split over threads for large
//! slices. The row kernels of softmax and layer normalization and the bias + Gelu maps of the
//! fused transformer ops are built the same way; their reductions use interleaved partial
//! sums, so that they vectorize too.
//!
//! The polynomials step with fused multiply-adds (`mul_add`): one rounding per step, so every
//! path (AVX2, NEON, the baseline) gives the same bits, and half the latency of a multiply
//! and an add (exp, erf and the Gelu slices took ~25 % less time in `benches/vmath.rs`). The
//! baseline build of an x86 CPU without FMA calls libm's `fmaf` for them: correct, slower.
//!
//! Accuracy (measured against f64 libm in `runtime/tests/vmath_prop.rs`): `exp` within 2 ulp
//! (relative error < 2.5e-7, measured 8.0e-8) on `[-87, 88]`, subnormal results within 4
//! steps of the smallest subnormal (measured 0.75), 0 below −104, ∞ above 88.72; `erf`
//! absolute error < 5e-7 everywhere; `tanh` relative error < 4e-7 everywhere.

use rayon::prelude::*;

/// Slices at least this long are split over threads.
const PAR_MIN: usize = 1 << 16;
const CHUNK: usize = 1 << 14;

/// `e^x` (polynomial on `[-ln2/2, ln2/2]` after range reduction, Cephes coefficients).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Below −104 e^x rounds to 0 in f32, and the computation below would reach 0 through
    // subnormal products, which cost this CPU a microcode assist per vector (a masked
    // softmax row, keys at f32::MIN, took 1.6x as long): such lanes compute e^0 instead and
    // take the 0 at the end.
    let zero = x < -104.0;
    let xc = if zero { 0.0 } else { x.min(88.722_84) };
    // n = round(x / ln 2) with the 1.5·2^23 trick (round to nearest even, branch-free).
    let magic = 12_582_912.0f32;
    let t = xc.mul_add(LOG2E, magic);
    let n = t - magic;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let r2 = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let y = p.mul_add(r2, r) + 1.0;
    // 2^n in two steps so that n down to −150 scales without overflow of the exponent field.
    // n as an integer from t's bits (t lies in [2^23, 2^24), where one ulp is 1): a vector
    // integer subtraction, where `n as i32` (saturating) compiled to a scalar conversion per
    // lane and made exp, and softmax with it, ~4x slower.
    let ni = (t.to_bits() as i32).wrapping_sub(magic.to_bits() as i32);
    let n1 = ni / 2;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    let v = y * s1 * s2;
    if x.is_nan() {
        x
    } else if x > 88.722_84 {
        f32::INFINITY
    } else if zero {
        0.0
    } else {
        v
    }
}

/// `tanh(x)`: below |x| = 0.625 the odd polynomial `x + x³·P(x²)` (Cephes' `tanhf`
/// coefficients), where `1 − 2/(e^{2|x|} + 1)` would cancel; beyond, that with the sign of `x`
/// (±1 once `e^{2|x|}` overflows). Selects, not branches, so that slice loops vectorize.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = p.mul_add(z, 2.063_908_9e-2);
    p = p.mul_add(z, -5.373_971_6e-2);
    p = p.mul_add(z, 1.333_144_2e-1);
    p = p.mul_add(z, -3.333_328_2e-1);
    // With the sign of x: for x = −0 the sum would be +0.
    let small = (p * z).mul_add(x, x).copysign(x);
    let big = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 || x.is_nan() {
        small
    } else {
        big
    }
}

/// `erf(x)`: `x·P(x²)/Q(x²)` on `[-4, 4]` (±1 beyond, where f32 erf rounds to ±1).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let xc = x.clamp(-4.0, 4.0);
    let x2 = xc * xc;
    let mut p = -2.726_142_3e-10f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_6e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    p *= xc;
    let mut q = -1.456_607_2e-5f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329_2e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    let v = p / q;
    // The rational form gives 0.9999999 at the clamp; f32 erf is exactly ±1 there.
    if x.is_nan() {
        x
    } else if x.abs() >= 4.0 {
        1.0f32.copysign(x)
    } else {
        v
    }
}

macro_rules! slice_fn {
    ($(#[$doc:meta])* $name:ident, $avx:ident, $base:ident, |$v:ident| $e:expr) => {
        #[inline(always)]
        fn $base(x: &[f32], out: &mut [f32]) {
            for (o, &$v) in out.iter_mut().zip(x) {
                *o = $e;
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx(x: &[f32], out: &mut [f32]) {
            $base(x, out)
        }

        $(#[$doc])*
        pub fn $name(x: &[f32], out: &mut [f32]) {
            assert_eq!(x.len(), out.len(), "input and output lengths differ");
            let one = |x: &[f32], out: &mut [f32]| {
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { $avx(x, out) };
                }
                $base(x, out)
            };
            if x.len() >= PAR_MIN {
                x.par_chunks(CHUNK)
                    .zip(out.par_chunks_mut(CHUNK))
                    .for_each(|(x, o)| one(x, o));
            } else {
                one(x, out)
            }
        }
    };
}

/// Whether the row kernels may run their AVX-512 builds: the CPU has AVX-512F and `KILN_ISA`
/// does not ask for a narrower ISA.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static H: OnceLock<bool> = OnceLock::new();
    *H.get_or_init(|| {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && super::Isa::selected().is_ok_and(|i| i == super::Isa::Avx512)
    })
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static H: OnceLock<bool> = OnceLock::new();
    *H.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

slice_fn!(
    /// `out[i] = e^x[i]`.
    exp_slice, exp_avx2, exp_base, |v| exp(v)
);
slice_fn!(
    /// `out[i] = erf(x[i])`.
    erf_slice, erf_avx2, erf_base, |v| erf(v)
);
slice_fn!(
    /// `out[i] = tanh(x[i])`.
    tanh_slice, tanh_avx2, tanh_base, |v| tanh(v)
);
slice_fn!(
    /// `out[i] = 1 / (1 + e^−x[i])`.
    sigmoid_slice, sigmoid_avx2, sigmoid_base, |v| 1.0 / (1.0 + exp(-v))
);
slice_fn!(
    /// ONNX Gelu (`approximate = "none"`): `0.5·x·(1 + erf(x/√2))`.
    gelu_slice, gelu_avx2, gelu_base, |v| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
);

/// Softmax of each row of `x` (`rows × n`, row-major) into `out`, with the max subtracted;
/// rows are split over threads when there are many elements.
pub fn softmax_rows(x: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "input and output lengths differ");
    if n == 0 {
        return;
    }
    let per = (CHUNK / n).max(1) * n;
    if x.len() >= PAR_MIN {
        x.par_chunks(per)
            .zip(out.par_chunks_mut(per))
            .for_each(|(x, o)| {
                o.copy_from_slice(x);
                softmax_rows_in_place(o, n)
            });
    } else {
        out.copy_from_slice(x);
        softmax_rows_in_place(out, n)
    }
}

/// [`softmax_rows`] in place and on the calling thread, for callers that already spread
/// their work over threads (attention heads).
pub fn softmax_rows_in_place(x: &mut [f32], n: usize) {
    if n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(x: &mut [f32], n: usize) {
        // A `for` loop, not `for_each`: the row kernel must be inlined here to get AVX2 (a
        // `for_each` left it in an out-of-line `fold` compiled for the baseline target).
        for row in x.chunks_exact_mut(n) {
            softmax_row_base(row)
        }
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { rows_avx2(x, n) };
    }
    for row in x.chunks_exact_mut(n) {
        softmax_row_base(row)
    }
}

/// An elementwise step on a row of scores: `x op v` (`Sub`, `Div`) or `v op x` (`SubFrom`,
/// `DivInto`), exactly as the standalone op computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOp {
    Add,
    Sub,
    SubFrom,
    Mul,
    Div,
    DivInto,
}

/// The other operand of a [`RowOp`] over a `rows × n` matrix, as row `i` sees it.
#[derive(Clone, Copy, Debug)]
pub enum RowArg<'a> {
    /// One value for every element.
    Scalar(f32),
    /// Row `i` is `data[i·stride ..][..n]`; stride 0 repeats one row (a mask broadcast over
    /// the query rows).
    Rows { data: &'a [f32], stride: usize },
    /// Row `i` is `data[i]` repeated.
    PerRow(&'a [f32]),
}

impl RowArg<'_> {
    fn fits(&self, rows: usize, n: usize) -> bool {
        match *self {
            RowArg::Scalar(_) => true,
            RowArg::Rows { data, stride } => rows == 0 || (rows - 1) * stride + n <= data.len(),
            RowArg::PerRow(d) => d.len() >= rows,
        }
    }
}

/// Row `i` of an argument: a slice of the row's length or one value.
#[derive(Clone, Copy)]
enum RowVals<'a> {
    One(f32),
    Each(&'a [f32]),
}

impl<'a> RowArg<'a> {
    #[inline(always)]
    fn row(&self, i: usize, n: usize) -> RowVals<'a> {
        match *self {
            RowArg::Scalar(v) => RowVals::One(v),
            RowArg::Rows { data, stride } => RowVals::Each(&data[i * stride..i * stride + n]),
            RowArg::PerRow(d) => RowVals::One(d[i]),
        }
    }
}

#[inline(always)]
fn zip_row(x: &mut [f32], v: RowVals, f: impl Fn(f32, f32) -> f32) {
    // `for` loops, not `for_each`: see `softmax_rows_in_place`.
    match v {
        RowVals::One(a) => {
            for x in x.iter_mut() {
                *x = f(*x, a);
            }
        }
        RowVals::Each(a) => {
            for (x, &a) in x.iter_mut().zip(a) {
                *x = f(*x, a);
            }
        }
    }
}

#[inline(always)]
fn row_op(x: &mut [f32], op: RowOp, v: RowVals) {
    match op {
        RowOp::Add => zip_row(x, v, |x, a| x + a),
        RowOp::Sub => zip_row(x, v, |x, a| x - a),
        RowOp::SubFrom => zip_row(x, v, |x, a| a - x),
        RowOp::Mul => zip_row(x, v, |x, a| x * a),
        RowOp::Div => zip_row(x, v, |x, a| x / a),
        RowOp::DivInto => zip_row(x, v, |x, a| a / x),
    }
}

/// [`softmax_rows_in_place`] with elementwise work fused around it, row by row while the
/// row is in L1: the `pre` steps on the scores first (scale, additive masks), and, when
/// `nan_to` is given, every NaN of the result replaced by its value (the scrub of SDPA
/// exports, `Where(IsNaN(p), c, p)`). Each element goes through the same arithmetic as the
/// unfused ops, so the result is bit-identical to running them one after another.
///
/// # Panics
/// If an argument is shorter than `x`'s rows need.
pub fn softmax_rows_fused(
    x: &mut [f32],
    n: usize,
    pre: &[(RowOp, RowArg)],
    nan_to: Option<RowArg>,
) {
    if n == 0 {
        return;
    }
    let rows = x.len() / n;
    assert!(
        pre.iter().all(|(_, a)| a.fits(rows, n)) && nan_to.is_none_or(|a| a.fits(rows, n)),
        "softmax_rows_fused: an argument is shorter than the scores"
    );
    #[inline(always)]
    fn rows_base(x: &mut [f32], n: usize, pre: &[(RowOp, RowArg)], nan_to: Option<RowArg>) {
        for (i, row) in x.chunks_exact_mut(n).enumerate() {
            for (op, a) in pre {
                row_op(row, *op, a.row(i, n));
            }
            softmax_row_scrub(row, nan_to.map(|a| a.row(i, n)));
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(x: &mut [f32], n: usize, pre: &[(RowOp, RowArg)], nan_to: Option<RowArg>) {
        rows_base(x, n, pre, nan_to)
    }
    // The same code in 16 lanes: every operation is element-wise or one of the explicit
    // `LANES` partial sums, so the bits are those of the AVX2 build.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn rows_avx512(
        x: &mut [f32],
        n: usize,
        pre: &[(RowOp, RowArg)],
        nan_to: Option<RowArg>,
    ) {
        rows_base(x, n, pre, nan_to)
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA.
        return unsafe { rows_avx512(x, n, pre, nan_to) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { rows_avx2(x, n, pre, nan_to) };
    }
    rows_base(x, n, pre, nan_to)
}

/// Lanes of the partial sums and maxima of the row kernels: independent accumulators are
/// what lets LLVM vectorize a float reduction (it may not reassociate a single one).
const LANES: usize = 16;

/// `Σ f(x[i])`, summed in [`LANES`] interleaved partial sums, then pairwise.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rem) {
        *a += f(v);
    }
    pairwise(acc)
}

/// The sum of the partial sums, pairwise.
#[inline(always)]
fn pairwise(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

/// The largest element of `x` (NaNs ignored; −∞ when empty or all NaN).
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    for (a, &v) in acc.iter_mut().zip(rem) {
        *a = if v > *a { v } else { *a };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Softmax of one row in place.
#[inline(always)]
fn softmax_row_base(o: &mut [f32]) {
    softmax_row_scrub(o, None)
}

/// Softmax of one row in place, then, with `nan_to`, each NaN replaced by its value. The
/// replacement is a select in the pass that scales the row: as a pass of its own, LLVM
/// made it a masked store, which AMD cores run slowly (22 % of the fused rows' samples).
#[inline(always)]
fn softmax_row_scrub(o: &mut [f32], nan_to: Option<RowVals>) {
    #[inline(always)]
    fn scrub(o: &mut [f32], nan_to: Option<RowVals>) {
        if let Some(c) = nan_to {
            zip_row(o, c, |p, c| if p.is_nan() { c } else { p });
        }
    }
    let m = lane_max(o);
    if m.is_infinite() {
        // Rows with ±inf (or only NaNs): the exact definition (e^(x−m) is NaN for inf − inf).
        let mut s = 0f32;
        for v in o.iter_mut() {
            *v = (*v - m).exp();
            s += *v;
        }
        for v in o.iter_mut() {
            *v /= s;
        }
        scrub(o, nan_to);
        return;
    }
    let s = exp_store_sum(o, m);
    if s.is_nan() {
        // Every term is in [0, 1] unless the row holds a NaN, which makes the whole row NaN.
        o.fill(f32::NAN);
        scrub(o, nan_to);
        return;
    }
    let inv = 1.0 / s;
    match nan_to {
        None => {
            for v in o.iter_mut() {
                *v *= inv;
            }
        }
        Some(c) => zip_row(o, c, |v, c| {
            let p = v * inv;
            if p.is_nan() {
                c
            } else {
                p
            }
        }),
    }
}

/// `o[i] = e^(o[i] − m)`, returning their sum in [`lane_sum`]'s order: one pass instead of
/// a pass of `exp` and a pass of the sum, the same result to the bit.
#[inline(always)]
fn exp_store_sum(o: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    // Two runs of LANES per step, so that four vectors of `exp`, long chains of dependent
    // operations, overlap; they are summed as two steps of LANES would sum them.
    let mut pairs = o.chunks_exact_mut(2 * LANES);
    for c in &mut pairs {
        let mut e = [0f32; 2 * LANES];
        for l in 0..2 * LANES {
            e[l] = exp(c[l] - m);
        }
        c.copy_from_slice(&e);
        for l in 0..LANES {
            acc[l] += e[l];
        }
        for l in 0..LANES {
            acc[l] += e[LANES + l];
        }
    }
    let mut chunks = pairs.into_remainder().chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp(c[l] - m);
            c[l] = e;
            acc[l] += e;
        }
    }
    for (a, v) in acc.iter_mut().zip(chunks.into_remainder()) {
        *v = exp(*v - m);
        *a += *v;
    }
    pairwise(acc)
}

/// Layer normalization of one row in place: `(x − mean)·inv·g + b` with
/// `inv = 1/√(mean((x − mean)²) + eps)`, or, when `rms`, `x·inv·g (+ b)` with mean 0 and
/// `inv = 1/√(mean(x²) + eps)`. Two passes over the row (mean, then squared deviations), in
/// f32 with [`LANES`] partial sums. Returns `(mean, inv)`. `g` and `b` are at least as long
/// as the row.
pub fn norm_row(row: &mut [f32], g: &[f32], b: Option<&[f32]>, eps: f32, rms: bool) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(
        row: &mut [f32],
        g: &[f32],
        b: Option<&[f32]>,
        eps: f32,
        rms: bool,
    ) -> (f32, f32) {
        norm_row_base(row, g, b, eps, rms)
    }
    assert!(
        g.len() >= row.len() && b.is_none_or(|b| b.len() >= row.len()),
        "norm_row: parameters shorter than the row"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2(row, g, b, eps, rms) };
    }
    norm_row_base(row, g, b, eps, rms)
}

#[inline(always)]
fn norm_row_base(row: &mut [f32], g: &[f32], b: Option<&[f32]>, eps: f32, rms: bool) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = if rms { 0.0 } else { lane_sum(row, |v| v) / n };
    let ss = lane_sum(row, |v| (v - mean) * (v - mean));
    let inv = 1.0 / (ss / n + eps).sqrt();
    match b {
        Some(b) => {
            for ((v, &g), &b) in row.iter_mut().zip(g).zip(b) {
                *v = (*v - mean) * inv * g + b;
            }
        }
        None => {
            for (v, &g) in row.iter_mut().zip(g) {
                *v = (*v - mean) * inv * g;
            }
        }
    }
    (mean, inv)
}

macro_rules! bias_fn {
    ($(#[$doc:meta])* $name:ident, $base:ident, |$v:ident| $e:expr) => {
        #[inline(always)]
        fn $base(x: &[f32], bias: &[f32], out: &mut [f32]) {
            if bias.is_empty() {
                for (o, &$v) in out.iter_mut().zip(x) {
                    *o = $e;
                }
                return;
            }
            for (xr, or) in x.chunks(bias.len()).zip(out.chunks_mut(bias.len())) {
                for ((o, &xv), &bv) in or.iter_mut().zip(xr).zip(bias) {
                    let $v = xv + bv;
                    *o = $e;
                }
            }
        }

        $(#[$doc])*
        pub fn $name(x: &[f32], bias: &[f32], out: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(x: &[f32], bias: &[f32], out: &mut [f32]) {
                $base(x, bias, out)
            }
            assert_eq!(x.len(), out.len(), "input and output lengths differ");
            assert!(
                bias.is_empty() || x.len() % bias.len() == 0,
                "the bias does not divide the input into rows"
            );
            let one = |x: &[f32], out: &mut [f32]| {
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2(x, bias, out) };
                }
                $base(x, bias, out)
            };
            if x.len() >= PAR_MIN {
                // Whole rows per chunk, so that every chunk starts at column 0 of the bias.
                let per = (CHUNK / bias.len().max(1)).max(1) * bias.len().max(1);
                x.par_chunks(per)
                    .zip(out.par_chunks_mut(per))
                    .for_each(|(x, o)| one(x, o));
            } else {
                one(x, out)
            }
        }
    };
}

bias_fn!(
    /// com.microsoft BiasGelu: `out = gelu(x + bias)` (ONNX Gelu, `approximate = "none"`), the
    /// bias repeated along rows of `bias.len()` (no bias when empty).
    bias_gelu, bias_gelu_base, |v| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
);
bias_fn!(
    /// com.microsoft FastGelu: `out = 0.5·v·(1 + tanh(√(2/π)·(v + 0.044715·v³)))` with
    /// `v = x + bias`, computed as `v·sigmoid(2u)` (the same function, without the
    /// cancellation of `1 + tanh` for negative `u`).
    bias_fast_gelu, bias_fast_gelu_base, |v| {
        const K: f32 = 0.797_884_6; // √(2/π)
        let u = K * (v + 0.044_715 * v * v * v);
        v / (1.0 + exp(-2.0 * u))
    }
);
