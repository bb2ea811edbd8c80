//! Signal processing: `HannWindow`, `HammingWindow`, `BlackmanWindow`, `MelWeightMatrix`,
//! `DFT` and `STFT`. Everything is computed in f64 and converted to the output type at the
//! end, so that f32 results match numpy's (double precision) FFT to the last bit or so.
//!
//! The FFT is a radix-2 Cooley–Tukey for power-of-two lengths, a direct DFT with a
//! twiddle table for short other lengths, and Bluestein's chirp-z algorithm (a power-of-two
//! convolution) for long other lengths: O(n log n) for every length above the cutoff.

use std::f64::consts::PI;

use kiln_ir::Op;

use super::{dtype_of, from_f64s, opt_scalar, scalar_int, to_f64s, KResult};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let k: Box<dyn Kernel> = match op {
        Op::HannWindow(w) => Box::new(Window {
            kind: WindowKind::Hann,
            periodic: w.periodic,
            dtype: w.output_datatype,
        }),
        Op::HammingWindow(w) => Box::new(Window {
            kind: WindowKind::Hamming,
            periodic: w.periodic,
            dtype: w.output_datatype,
        }),
        Op::BlackmanWindow(w) => Box::new(Window {
            kind: WindowKind::Blackman,
            periodic: w.periodic,
            dtype: w.output_datatype,
        }),
        Op::MelWeightMatrix(m) => Box::new(MelWeights {
            dtype: m.output_datatype,
        }),
        Op::DFT(d) => Box::new(Dft {
            inverse: d.inverse,
            onesided: d.onesided,
        }),
        Op::STFT(s) => Box::new(Stft {
            onesided: s.onesided,
        }),
        _ => return None,
    };
    Some(Ok(k))
}

// ---------------------------------------------------------------------------------------
// Complex arithmetic and the FFT.

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct C64 {
    pub re: f64,
    pub im: f64,
}

impl C64 {
    #[inline]
    fn new(re: f64, im: f64) -> C64 {
        C64 { re, im }
    }
    /// e^{-2πi k/n}.
    #[inline]
    fn twiddle(k: usize, n: usize) -> C64 {
        let a = -2.0 * PI * (k as f64) / (n as f64);
        C64::new(a.cos(), a.sin())
    }
    #[inline]
    fn mul(self, o: C64) -> C64 {
        C64::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
    #[inline]
    fn add(self, o: C64) -> C64 {
        C64::new(self.re + o.re, self.im + o.im)
    }
    #[inline]
    fn sub(self, o: C64) -> C64 {
        C64::new(self.re - o.re, self.im - o.im)
    }
    #[inline]
    fn conj(self) -> C64 {
        C64::new(self.re, -self.im)
    }
    #[inline]
    fn scale(self, s: f64) -> C64 {
        C64::new(self.re * s, self.im * s)
    }
}

/// Lengths up to this that are not powers of two use the direct O(n²) DFT.
const DIRECT_MAX: usize = 64;

/// A forward FFT of one length, planned once and applied to many lines.
pub(crate) enum Fft {
    Empty,
    Radix2 {
        n: usize,
        tw: Vec<C64>,
        rev: Vec<u32>,
    },
    Direct {
        n: usize,
        tw: Vec<C64>,
    },
    Bluestein {
        n: usize,
        chirp: Vec<C64>,
        kernel: Vec<C64>,
        inner: Box<Fft>,
        buf_len: usize,
    },
}

impl Fft {
    pub(crate) fn new(n: usize) -> Fft {
        if n == 0 {
            Fft::Empty
        } else if n.is_power_of_two() {
            let bits = n.trailing_zeros();
            let rev = (0..n as u32)
                .map(|i| {
                    if bits == 0 {
                        0
                    } else {
                        i.reverse_bits() >> (32 - bits)
                    }
                })
                .collect();
            Fft::Radix2 {
                n,
                tw: (0..n / 2).map(|k| C64::twiddle(k, n)).collect(),
                rev,
            }
        } else if n <= DIRECT_MAX {
            Fft::Direct {
                n,
                tw: (0..n).map(|k| C64::twiddle(k, n)).collect(),
            }
        } else {
            // x_k = c_k · Σ_j (x_j c_j) · conj(c_{k−j}), with c_j = e^{−πi j²/n}: a
            // convolution, done with a power-of-two FFT of length m ≥ 2n − 1.
            let m = (2 * n - 1).next_power_of_two();
            let chirp: Vec<C64> = (0..n)
                .map(|j| {
                    // j² mod 2n keeps the angle small and exact.
                    let q = ((j as u128 * j as u128) % (2 * n as u128)) as f64;
                    let a = -PI * q / n as f64;
                    C64::new(a.cos(), a.sin())
                })
                .collect();
            let inner = Fft::new(m);
            let mut kernel = vec![C64::default(); m];
            kernel[0] = chirp[0].conj();
            for j in 1..n {
                kernel[j] = chirp[j].conj();
                kernel[m - j] = chirp[j].conj();
            }
            inner.forward(&mut kernel, &mut Vec::new());
            Fft::Bluestein {
                n,
                chirp,
                kernel,
                inner: Box::new(inner),
                buf_len: m,
            }
        }
    }

    /// In-place forward transform of `x` (length n); `scratch` is reused between calls.
    pub(crate) fn forward(&self, x: &mut [C64], scratch: &mut Vec<C64>) {
        match self {
            Fft::Empty => {}
            Fft::Radix2 { n, tw, rev } => {
                let n = *n;
                for i in 0..n {
                    let j = rev[i] as usize;
                    if i < j {
                        x.swap(i, j);
                    }
                }
                let mut len = 2;
                while len <= n {
                    let half = len / 2;
                    let step = n / len;
                    for start in (0..n).step_by(len) {
                        for k in 0..half {
                            let w = tw[k * step];
                            let a = x[start + k];
                            let b = x[start + k + half].mul(w);
                            x[start + k] = a.add(b);
                            x[start + k + half] = a.sub(b);
                        }
                    }
                    len *= 2;
                }
            }
            Fft::Direct { n, tw } => {
                let n = *n;
                scratch.clear();
                scratch.extend_from_slice(&x[..n]);
                for (k, out) in x.iter_mut().enumerate().take(n) {
                    let mut acc = C64::default();
                    let mut idx = 0usize;
                    for v in scratch.iter() {
                        acc = acc.add(v.mul(tw[idx]));
                        idx += k;
                        if idx >= n {
                            idx -= n;
                        }
                    }
                    *out = acc;
                }
            }
            Fft::Bluestein {
                n,
                chirp,
                kernel,
                inner,
                buf_len,
            } => {
                let (n, m) = (*n, *buf_len);
                // The inner transform is radix-2 and needs no scratch of its own.
                let a = scratch;
                a.clear();
                a.resize(m, C64::default());
                for j in 0..n {
                    a[j] = x[j].mul(chirp[j]);
                }
                inner.forward(a, &mut Vec::new());
                for (v, k) in a.iter_mut().zip(kernel) {
                    *v = v.mul(*k).conj();
                }
                // Inverse by conjugation: ifft(y) = conj(fft(conj(y))) / m.
                inner.forward(a, &mut Vec::new());
                let s = 1.0 / m as f64;
                for k in 0..n {
                    x[k] = a[k].conj().scale(s).mul(chirp[k]);
                }
            }
        }
    }

    /// In-place inverse transform, scaled by 1/n.
    pub(crate) fn inverse(&self, x: &mut [C64], scratch: &mut Vec<C64>) {
        for v in x.iter_mut() {
            *v = v.conj();
        }
        self.forward(x, scratch);
        let s = if x.is_empty() {
            1.0
        } else {
            1.0 / x.len() as f64
        };
        for v in x.iter_mut() {
            *v = v.conj().scale(s);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Windows and the mel matrix.

#[derive(Clone, Copy)]
enum WindowKind {
    Hann,
    Hamming,
    Blackman,
}

struct Window {
    kind: WindowKind,
    periodic: bool,
    dtype: i64,
}

impl Kernel for Window {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let dt = dtype_of(self.dtype)?;
        let size = scalar_int(inputs, 0, "window size")?;
        if size < 0 {
            return Err(KernelError::Invalid(format!(
                "window size must be >= 0, got {size}"
            )));
        }
        let n = size as usize;
        let denom = if self.periodic {
            n as f64
        } else {
            n as f64 - 1.0
        };
        let vals: Vec<f64> = (0..n)
            .map(|i| {
                if denom <= 0.0 {
                    return 1.0;
                }
                let x = 2.0 * PI * i as f64 / denom;
                match self.kind {
                    WindowKind::Hann => 0.5 - 0.5 * x.cos(),
                    WindowKind::Hamming => {
                        let a0 = 25.0 / 46.0;
                        a0 - (1.0 - a0) * x.cos()
                    }
                    WindowKind::Blackman => 0.42 - 0.5 * x.cos() + 0.08 * (2.0 * x).cos(),
                }
            })
            .collect();
        Ok(vec![Value::Tensor(from_f64s(cx, dt, vec![n], &vals)?)])
    }
}

struct MelWeights {
    dtype: i64,
}

impl Kernel for MelWeights {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let dt = dtype_of(self.dtype)?;
        let mels = scalar_int(inputs, 0, "num_mel_bins")?;
        let dft_len = scalar_int(inputs, 1, "dft_length")?;
        let rate = scalar_int(inputs, 2, "sample_rate")?;
        let lo =
            opt_scalar(inputs, 3, "lower_edge_hertz")?.ok_or("lower_edge_hertz is required")?;
        let hi =
            opt_scalar(inputs, 4, "upper_edge_hertz")?.ok_or("upper_edge_hertz is required")?;
        if mels < 0 || dft_len <= 0 || rate <= 0 {
            return Err(KernelError::Invalid(format!(
                "MelWeightMatrix needs num_mel_bins >= 0, dft_length > 0, sample_rate > 0; got {mels}, {dft_len}, {rate}"
            )));
        }
        let mels = mels as usize;
        let bins = dft_len as usize / 2 + 1;
        let mel = |f: f64| 2595.0 * (f / 700.0).ln_1p() / 10f64.ln();
        let (lo_mel, hi_mel) = (mel(lo), mel(hi));
        // The points are spaced by (hi − lo) / (mels + 2), as in ONNX's reference.
        let step = (hi_mel - lo_mel) / (mels + 2) as f64;
        let points: Vec<i64> = (0..mels + 2)
            .map(|i| {
                let m = i as f64 * step + lo_mel;
                let hz = 700.0 * (m / 2595.0 * 10f64.ln()).exp_m1();
                (((dft_len + 1) as f64 * hz) / rate as f64).floor() as i64
            })
            .collect();
        let mut out = vec![0.0f64; bins * mels];
        let mut set = |j: i64, i: usize, v: f64| {
            if j >= 0 && (j as usize) < bins {
                out[j as usize * mels + i] = v;
            }
        };
        for i in 0..mels {
            let (l, c, h) = (points[i], points[i + 1], points[i + 2]);
            if c == l {
                set(c, i, 1.0);
            } else {
                for j in l..=c {
                    set(j, i, (j - l) as f64 / (c - l) as f64);
                }
            }
            if h > c {
                for j in c..h {
                    set(j, i, (h - j) as f64 / (h - c) as f64);
                }
            }
        }
        Ok(vec![Value::Tensor(from_f64s(
            cx,
            dt,
            vec![bins, mels],
            &out,
        )?)])
    }
}

// ---------------------------------------------------------------------------------------
// DFT and STFT.

struct Dft {
    inverse: bool,
    onesided: bool,
}

impl Kernel for Dft {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        if !dt.is_float() {
            return Err(KernelError::Unsupported(format!("DFT of {dt}")));
        }
        let shape = x.shape();
        let r = shape.len();
        if r < 2 || !(shape[r - 1] == 1 || shape[r - 1] == 2) {
            return Err(KernelError::Invalid(format!(
                "DFT input must be [..., 1|2], got {shape:?}"
            )));
        }
        let axis = match opt_tensor_input(inputs, 2)? {
            Some(_) => scalar_int(inputs, 2, "axis")?,
            None => -2,
        };
        let a = if axis < 0 { axis + r as i64 } else { axis };
        if a < 0 || a > r as i64 - 2 {
            return Err(KernelError::Invalid(format!(
                "DFT axis {axis} is out of range for rank {r}"
            )));
        }
        let a = a as usize;
        let len = shape[a];
        let irfft = self.inverse && self.onesided;
        let n = match opt_tensor_input(inputs, 1)? {
            Some(_) => {
                let l = scalar_int(inputs, 1, "dft_length")?;
                if l <= 0 {
                    return Err(KernelError::Invalid(format!(
                        "dft_length must be positive, got {l}"
                    )));
                }
                l as usize
            }
            None if irfft => 2 * len.saturating_sub(1),
            None => len,
        };
        let out_len = if self.onesided && !self.inverse {
            n / 2 + 1
        } else {
            n
        };
        let cin = shape[r - 1];
        let cout = if irfft { 1 } else { 2 };
        let outer: usize = shape[..a].iter().product();
        let inner: usize = shape[a + 1..r - 1].iter().product();
        let mut out_shape = shape.to_vec();
        out_shape[a] = out_len;
        out_shape[r - 1] = cout;
        let xs = to_f64s(x)?;
        let mut out = vec![0.0f64; outer * out_len * inner * cout];
        let fft = Fft::new(n);
        let mut line = vec![C64::default(); n];
        let mut scratch = Vec::new();
        // Elements of the input line that are used (the rest is zero padding).
        let take = if irfft {
            len.min(n / 2 + 1)
        } else {
            len.min(n)
        };
        for o in 0..outer {
            for i in 0..inner {
                line.iter_mut().for_each(|v| *v = C64::default());
                for (j, v) in line.iter_mut().enumerate().take(take) {
                    let b = ((o * len + j) * inner + i) * cin;
                    *v = C64::new(xs[b], if cin == 2 { xs[b + 1] } else { 0.0 });
                }
                if irfft {
                    // The full spectrum of a real signal from its first half.
                    for k in n / 2 + 1..n {
                        line[k] = line[n - k].conj();
                    }
                    fft.inverse(&mut line, &mut scratch);
                } else if self.inverse {
                    fft.inverse(&mut line, &mut scratch);
                } else {
                    fft.forward(&mut line, &mut scratch);
                }
                for (k, v) in line.iter().enumerate().take(out_len) {
                    let b = ((o * out_len + k) * inner + i) * cout;
                    out[b] = v.re;
                    if cout == 2 {
                        out[b + 1] = v.im;
                    }
                }
            }
        }
        Ok(vec![Value::Tensor(from_f64s(cx, dt, out_shape, &out)?)])
    }
}

struct Stft {
    onesided: bool,
}

impl Kernel for Stft {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        if !dt.is_float() {
            return Err(KernelError::Unsupported(format!("STFT of {dt}")));
        }
        let shape = x.shape();
        if shape.len() != 3 || !(shape[2] == 1 || shape[2] == 2) {
            return Err(KernelError::Invalid(format!(
                "STFT signal must be [batch, length, 1|2], got {shape:?}"
            )));
        }
        let (batch, len, cin) = (shape[0], shape[1], shape[2]);
        let step = scalar_int(inputs, 1, "frame_step")?;
        if step <= 0 {
            return Err(KernelError::Invalid(format!(
                "frame_step must be positive, got {step}"
            )));
        }
        let step = step as usize;
        let window = match opt_tensor_input(inputs, 2)? {
            Some(w) if w.rank() == 1 => Some(to_f64s(w)?),
            Some(w) => {
                return Err(KernelError::Invalid(format!(
                    "window must be 1-D, got shape {:?}",
                    w.shape()
                )))
            }
            None => None,
        };
        let fl = match opt_tensor_input(inputs, 3)? {
            Some(_) => {
                let f = scalar_int(inputs, 3, "frame_length")?;
                if f <= 0 {
                    return Err(KernelError::Invalid(format!(
                        "frame_length must be positive, got {f}"
                    )));
                }
                f as usize
            }
            None => window.as_ref().map_or(len, |w| w.len()),
        };
        if window.as_ref().is_some_and(|w| w.len() != fl) {
            return Err(KernelError::Invalid(format!(
                "window has length {}, frame_length is {fl}",
                window.as_ref().map_or(0, |w| w.len())
            )));
        }
        if fl > len {
            return Err(KernelError::Invalid(format!(
                "frame_length {fl} is longer than the signal ({len})"
            )));
        }
        let frames = (len - fl) / step + 1;
        let bins = if self.onesided { fl / 2 + 1 } else { fl };
        let xs = to_f64s(x)?;
        let mut out = vec![0.0f64; batch * frames * bins * 2];
        let fft = Fft::new(fl);
        let mut line = vec![C64::default(); fl];
        let mut scratch = Vec::new();
        for b in 0..batch {
            for f in 0..frames {
                for (j, v) in line.iter_mut().enumerate() {
                    let p = (b * len + f * step + j) * cin;
                    let w = window.as_ref().map_or(1.0, |w| w[j]);
                    *v = C64::new(xs[p] * w, if cin == 2 { xs[p + 1] * w } else { 0.0 });
                }
                fft.forward(&mut line, &mut scratch);
                for (k, v) in line.iter().enumerate().take(bins) {
                    let p = ((b * frames + f) * bins + k) * 2;
                    out[p] = v.re;
                    out[p + 1] = v.im;
                }
            }
        }
        Ok(vec![Value::Tensor(from_f64s(
            cx,
            dt,
            vec![batch, frames, bins, 2],
            &out,
        )?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[C64]) -> Vec<C64> {
        let n = x.len();
        (0..n)
            .map(|k| {
                x.iter().enumerate().fold(C64::default(), |acc, (j, v)| {
                    let a = -2.0 * PI * ((j * k) % n) as f64 / n as f64;
                    acc.add(v.mul(C64::new(a.cos(), a.sin())))
                })
            })
            .collect()
    }

    #[test]
    fn fft_matches_the_definition_for_every_plan() {
        // Radix-2, direct and Bluestein lengths.
        for n in [1usize, 2, 8, 64, 10, 13, 63, 65, 100, 127, 256, 243] {
            let x: Vec<C64> = (0..n)
                .map(|i| C64::new((i as f64 * 0.37).sin(), (i as f64 * 1.3).cos()))
                .collect();
            let want = naive(&x);
            let mut got = x.clone();
            let fft = Fft::new(n);
            fft.forward(&mut got, &mut Vec::new());
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g.re - w.re).abs() < 1e-9 && (g.im - w.im).abs() < 1e-9,
                    "n={n}: {g:?} vs {w:?}"
                );
            }
            fft.inverse(&mut got, &mut Vec::new());
            for (g, w) in got.iter().zip(&x) {
                assert!(
                    (g.re - w.re).abs() < 1e-12 && (g.im - w.im).abs() < 1e-12,
                    "n={n} inverse"
                );
            }
        }
    }

    #[test]
    fn dft_of_a_small_signal_by_hand() {
        // x = [1, 2, 3, 4]: X = [10, −2+2i, −2, −2−2i]; onesided keeps the first 3.
        let x = kiln_ir::Tensor::from_vec(vec![1, 4, 1], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let v = Value::Tensor(x);
        let k = Dft {
            inverse: false,
            onesided: false,
        };
        let y = k
            .run(&[Some(&v)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        assert_eq!(y.shape(), &[1, 4, 2]);
        assert_eq!(
            y.to_vec::<f32>().unwrap(),
            vec![10.0, 0.0, -2.0, 2.0, -2.0, 0.0, -2.0, -2.0]
        );
        let k = Dft {
            inverse: false,
            onesided: true,
        };
        let y = k
            .run(&[Some(&v)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        assert_eq!(y.shape(), &[1, 3, 2]);
        // irfft of the one-sided spectrum gives the signal back (length 2·(3−1) = 4).
        let k = Dft {
            inverse: true,
            onesided: true,
        };
        let yv = Value::Tensor(y);
        let z = k
            .run(&[Some(&yv)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        assert_eq!(z.shape(), &[1, 4, 1]);
        for (a, b) in z
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .zip([1.0f32, 2.0, 3.0, 4.0])
        {
            assert!((a - b).abs() < 1e-6);
        }
        // dft_length 2 truncates: [1+2, 1−2].
        let two = Value::Tensor(kiln_ir::Tensor::scalar(2i64));
        let k = Dft {
            inverse: false,
            onesided: false,
        };
        let y = k
            .run(&[Some(&v), Some(&two)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.0, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn windows_by_hand() {
        // Periodic Hann of 4: 0.5 − 0.5 cos(2πn/4) = [0, 0.5, 1, 0.5].
        let four = Value::Tensor(kiln_ir::Tensor::scalar(4i64));
        let k = Window {
            kind: WindowKind::Hann,
            periodic: true,
            dtype: 1,
        };
        let y = k
            .run(&[Some(&four)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        let v = y.to_vec::<f32>().unwrap();
        for (a, b) in v.iter().zip([0.0f32, 0.5, 1.0, 0.5]) {
            assert!((a - b).abs() < 1e-7, "{v:?}");
        }
        // Symmetric Blackman of 3: [0.42−0.5+0.08, 0.42+0.5+0.08, 0.42−0.5+0.08] = [0, 1, 0].
        let three = Value::Tensor(kiln_ir::Tensor::scalar(3i64));
        let k = Window {
            kind: WindowKind::Blackman,
            periodic: false,
            dtype: 11,
        };
        let y = k
            .run(&[Some(&three)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        let v = y.to_vec::<f64>().unwrap();
        for (a, b) in v.iter().zip([0.0f64, 1.0, 0.0]) {
            assert!((a - b).abs() < 1e-12, "{v:?}");
        }
    }
}
