//! Vectorizable f32 math for the elementwise kernels: branch-free polynomial `exp` and `erf`
//! written so that LLVM vectorizes the slice loops, compiled for AVX2+FMA when the CPU has it
//! (runtime dispatch) and for the baseline target otherwise, and split over threads for large
//! slices.
//!
//! Accuracy (measured against f64 libm in `runtime/tests/vmath_prop.rs`): `exp` within 2 ulp
//! (relative error < 2.5e-7) on `[-87, 88]`, subnormal results less exact, 0 below
//! −104, ∞ above 88.72; `erf` absolute error < 5e-7 everywhere.

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
    // Below this e^x is 0 in f32 (the scaling by 2^n would underflow anyway).
    let xc = x.clamp(-104.0, 88.722_84);
    // n = round(x / ln 2) with the 1.5·2^23 trick (round to nearest even, branch-free).
    let magic = 12_582_912.0f32;
    let n = (xc * LOG2E + magic) - magic;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r2 + r + 1.0;
    // 2^n in two steps so that n down to −150 scales without overflow of the exponent field.
    let ni = n as i32;
    let n1 = ni / 2;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    let v = y * s1 * s2;
    if x.is_nan() {
        x
    } else if x > 88.722_84 {
        f32::INFINITY
    } else {
        v
    }
}

/// `erf(x)`: `x·P(x²)/Q(x²)` on `[-4, 4]` (±1 beyond, where f32 erf rounds to ±1).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let xc = x.clamp(-4.0, 4.0);
    let x2 = xc * xc;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    p *= xc;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_2e-3;
    q = q * x2 + -1.426_474e-2;
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

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
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
    // Eight independent lanes per reduction so that the loops vectorize (a single running
    // max or sum is a serial dependency chain the compiler must keep in order).
    #[inline(always)]
    fn row_base(x: &[f32], o: &mut [f32]) {
        let mut mx = [f32::NEG_INFINITY; 8];
        let mut nan = false;
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for j in 0..8 {
                nan |= c[j].is_nan();
                mx[j] = if c[j] > mx[j] { c[j] } else { mx[j] };
            }
        }
        let mut m = f32::NEG_INFINITY;
        for &v in chunks.remainder().iter().chain(&mx) {
            nan |= v.is_nan();
            m = if v > m { v } else { m };
        }
        if nan {
            o.fill(f32::NAN);
            return;
        }
        if m == f32::INFINITY || m == f32::NEG_INFINITY {
            // Rows with ±inf: the exact definition (e^(x−m) is NaN for inf − inf).
            let mut s = 0f32;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - m).exp();
                s += *o;
            }
            o.iter_mut().for_each(|v| *v /= s);
            return;
        }
        for (o, &v) in o.iter_mut().zip(x) {
            *o = exp(v - m);
        }
        let mut acc = [0f32; 8];
        let mut chunks = o.chunks_exact(8);
        for c in &mut chunks {
            for j in 0..8 {
                acc[j] += c[j];
            }
        }
        let s = chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>();
        let inv = 1.0 / s;
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(x: &[f32], n: usize, out: &mut [f32]) {
        for (r, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            row_base(r, o)
        }
    }
    fn rows(x: &[f32], n: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { rows_avx2(x, n, out) };
        }
        for (r, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            row_base(r, o)
        }
    }
    let per = (CHUNK / n).max(1) * n;
    if x.len() >= PAR_MIN {
        x.par_chunks(per)
            .zip(out.par_chunks_mut(per))
            .for_each(|(x, o)| rows(x, n, o));
    } else {
        rows(x, n, out)
    }
}
