//! `Cast` and `CastLike` between every dtype kiln stores: the native numeric types and
//! bool, strings (parsed, and formatted as numpy's `str` does), the float8 types
//! (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ with `saturate`), float8 E8M0 (`round_mode`), and the
//! packed 4- and 2-bit types (int4, uint4, int2, uint2, float4 E2M1).
//!
//! Native-to-native casts run one loop per (source, target) pair. The exotic sources are
//! first decoded to f64 (floats) or i64 (packed integers), which hold them exactly, and
//! then cast like a native tensor of that type.

use kiln_ir::{DType, Op, Tensor};

use super::num::Num;
use super::{new_tensor, unsupported, view};
use crate::error::KernelError;
use crate::kernel::{tensor_input, Kernel, RunCx};
use crate::value::Value;

pub(super) fn build(op: &Op) -> Option<Box<dyn Kernel>> {
    let (to, saturate, round) = match op {
        Op::Cast(c) => (Some(c.to), c.saturate, c.round_mode.as_str()),
        Op::CastLike(c) => (None, c.saturate, c.round_mode.as_str()),
        _ => return None,
    };
    let round = match round.to_ascii_lowercase().as_str() {
        "down" => Round::Down,
        "nearest" => Round::Nearest,
        _ => Round::Up,
    };
    Some(Box::new(Cast {
        to,
        opts: Opts { saturate, round },
    }))
}

/// Rounding of casts to float8 E8M0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Round {
    Up,
    Down,
    Nearest,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Opts {
    pub saturate: bool,
    pub round: Round,
}

struct Cast {
    /// `None` for `CastLike` (the target is input 1's dtype).
    to: Option<DType>,
    opts: Opts,
}

impl Kernel for Cast {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let to = match self.to {
            Some(d) => d,
            None => tensor_input(inputs, 1)?.dtype(),
        };
        Ok(vec![Value::Tensor(cast(x, to, self.opts, cx)?)])
    }
}

/// Casts `x` to `to`.
pub(crate) fn cast(
    x: &Tensor,
    to: DType,
    opts: Opts,
    cx: &mut RunCx,
) -> Result<Tensor, KernelError> {
    let from = x.dtype();
    if from == to {
        return Ok(x.clone());
    }
    let shape = x.shape().to_vec();
    if from == DType::String {
        return from_strings(x.strings().unwrap_or_default(), shape, to, opts, cx);
    }
    if let Some(fmt) = MiniFmt::of(from) {
        let v: Vec<f64> = (0..x.len())
            .map(|i| fmt.decode(code_at(x.bytes(), from.bits(), i)))
            .collect();
        return cast_from::<f64>(&v, from, shape, to, opts, cx);
    }
    match from {
        DType::F8E8M0 => {
            let v: Vec<f64> = x.bytes().iter().map(|&b| e8m0_decode(b)).collect();
            cast_from::<f64>(&v, from, shape, to, opts, cx)
        }
        DType::I4 | DType::U4 | DType::I2 | DType::U2 => {
            let bits = from.bits();
            let signed = from.is_signed_int();
            let v: Vec<i64> = (0..x.len())
                .map(|i| int_decode(code_at(x.bytes(), bits, i), bits, signed))
                .collect();
            cast_from::<i64>(&v, from, shape, to, opts, cx)
        }
        _ => with_dtype!(from, S => {
            let v = view::<S>(x)?;
            cast_from::<S>(&v, from, shape, to, opts, cx)
        }, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool],
            else Err(KernelError::Unsupported(format!("Cast from {from} to {to}")))),
    }
}

/// Casts elements of native type `S` (standing for dtype `from`) to `to`.
fn cast_from<S: Num>(
    src: &[S],
    from: DType,
    shape: Vec<usize>,
    to: DType,
    opts: Opts,
    cx: &mut RunCx,
) -> Result<Tensor, KernelError> {
    if let Some(fmt) = MiniFmt::of(to) {
        let sat = opts.saturate || fmt.kind == Kind::F4;
        return packed(cx, to, shape, src, |v| fmt.encode(v.to_f64(), sat));
    }
    match to {
        DType::Bool => new_tensor::<u8>(cx, to, shape, |o| {
            for (o, &v) in o.iter_mut().zip(src) {
                *o = if S::FLOAT {
                    v.to_f64() != 0.0
                } else {
                    v.to_i64() != 0
                } as u8;
            }
        }),
        DType::String => {
            let v: Vec<Vec<u8>> = src
                .iter()
                .map(|&v| format_num(v, from).into_bytes())
                .collect();
            Ok(Tensor::from_strings(shape, v)?)
        }
        DType::F8E8M0 => packed(cx, to, shape, src, |v| e8m0_encode(v.to_f64() as f32, opts)),
        DType::I4 | DType::U4 | DType::I2 | DType::U2 => {
            packed(cx, to, shape, src, |v| v.to_i64() as u8)
        }
        _ => with_numeric!(to, D => new_tensor::<D>(cx, to, shape, |o| {
            for (o, &v) in o.iter_mut().zip(src) {
                *o = conv::<S, D>(v);
            }
        }), else Err(KernelError::Unsupported(format!("Cast from {from} to {to}")))),
    }
}

/// One numeric value converted: through f64 when either side is a float (exact for every
/// source, one rounding into the target), else as wrapping integers.
#[inline(always)]
fn conv<S: Num, D: Num>(v: S) -> D {
    if S::FLOAT || D::FLOAT {
        D::from_f64(v.to_f64())
    } else {
        D::from_i64(v.to_i64())
    }
}

/// A tensor of `to` (8 bits or less per element) whose element `i` is `code(src[i])`,
/// packed from the low bits of each byte up.
fn packed<S: Copy>(
    cx: &mut RunCx,
    to: DType,
    shape: Vec<usize>,
    src: &[S],
    code: impl Fn(S) -> u8,
) -> Result<Tensor, KernelError> {
    let bits = to.bits();
    cx.tensor_bytes(to, shape, |out| {
        if bits == 8 {
            for (o, &v) in out.iter_mut().zip(src) {
                *o = code(v);
            }
            return;
        }
        let per = 8 / bits;
        let mask = ((1u16 << bits) - 1) as u8;
        for (o, chunk) in out.iter_mut().zip(src.chunks(per)) {
            let mut b = 0u8;
            for (k, &v) in chunk.iter().enumerate() {
                b |= (code(v) & mask) << (k * bits);
            }
            *o = b;
        }
    })
}

/// The code of element `i` of a packed (or byte) tensor.
#[inline]
fn code_at(bytes: &[u8], bits: usize, i: usize) -> u8 {
    if bits == 8 {
        return bytes[i];
    }
    let bit = i * bits;
    (bytes[bit / 8] >> (bit % 8)) & (((1u16 << bits) - 1) as u8)
}

fn int_decode(code: u8, bits: usize, signed: bool) -> i64 {
    let v = code as i64;
    if signed && v >= 1 << (bits - 1) {
        v - (1 << bits)
    } else {
        v
    }
}

/// Small float formats without E8M0.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// E4M3FN: no infinities, NaN is S.1111.111.
    Fn,
    /// FNUZ: no infinities, no negative zero, NaN is 0x80.
    Uz,
    /// E5M2: IEEE-like infinities and NaNs.
    Ieee,
    /// F4E2M1: no infinities or NaNs.
    F4,
}

#[derive(Clone, Copy, Debug)]
struct MiniFmt {
    bits: u32,
    mbits: u32,
    bias: i32,
    kind: Kind,
    /// Largest finite value.
    max: f64,
}

impl MiniFmt {
    fn of(dt: DType) -> Option<MiniFmt> {
        let (bits, mbits, bias, kind, max) = match dt {
            DType::F8E4M3FN => (8, 3, 7, Kind::Fn, 448.0),
            DType::F8E4M3FNUZ => (8, 3, 8, Kind::Uz, 240.0),
            DType::F8E5M2 => (8, 2, 15, Kind::Ieee, 57344.0),
            DType::F8E5M2FNUZ => (8, 2, 16, Kind::Uz, 57344.0),
            DType::F4E2M1 => (4, 1, 1, Kind::F4, 6.0),
            _ => return None,
        };
        Some(MiniFmt {
            bits,
            mbits,
            bias,
            kind,
            max,
        })
    }

    fn sign_bit(&self) -> u8 {
        1 << (self.bits - 1)
    }

    fn nan(&self, neg: bool) -> u8 {
        let s = if neg { self.sign_bit() } else { 0 };
        match self.kind {
            Kind::Fn => 0x7F | s,
            Kind::Uz => 0x80,
            Kind::Ieee => 0x7E | s,
            // No NaN: what ml_dtypes (the ONNX reference) produces.
            Kind::F4 => {
                if neg {
                    0x0
                } else {
                    0x8
                }
            }
        }
    }

    fn decode(&self, code: u8) -> f64 {
        let sb = self.sign_bit();
        let neg = code & sb != 0;
        let mag = code & (sb - 1);
        let ebits = self.bits - 1 - self.mbits;
        let e = (mag >> self.mbits) as i32;
        let m = (mag & ((1 << self.mbits) - 1)) as f64;
        match self.kind {
            Kind::Uz if code == 0x80 => return f64::NAN,
            Kind::Fn if mag == 0x7F => return f64::NAN,
            Kind::Ieee if e == (1 << ebits) - 1 => {
                return if m == 0.0 {
                    if neg {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    }
                } else {
                    f64::NAN
                }
            }
            _ => {}
        }
        let scale = (1u32 << self.mbits) as f64;
        let v = if e == 0 {
            m / scale * 2f64.powi(1 - self.bias)
        } else {
            (1.0 + m / scale) * 2f64.powi(e - self.bias)
        };
        if neg {
            -v
        } else {
            v
        }
    }

    /// Round to nearest even; out of range saturates to ±max or overflows (NaN, or ±inf
    /// for E5M2) as the format allows.
    fn encode(&self, v: f64, saturate: bool) -> u8 {
        let neg = v.is_sign_negative();
        let sign = if neg { self.sign_bit() } else { 0 };
        // Zero has no sign in the FNUZ formats (0x80 is their NaN).
        let zero = if self.kind == Kind::Uz { 0 } else { sign };
        if v.is_nan() {
            return self.nan(neg);
        }
        let max_code = sign | ((self.max_bits_mag()) as u8);
        let overflow = || {
            if saturate {
                max_code
            } else {
                match self.kind {
                    Kind::Ieee => sign | 0x7C,
                    _ => self.nan(neg),
                }
            }
        };
        let a = v.abs();
        if a.is_infinite() {
            return overflow();
        }
        if a == 0.0 {
            return zero;
        }
        let emin = 1 - self.bias;
        let e = exponent(a).max(emin);
        let q = 2f64.powi(e - self.mbits as i32);
        let n = (a / q).round_ties_even();
        if n * q > self.max {
            return overflow();
        }
        if n == 0.0 {
            return zero;
        }
        let one = (1u32 << self.mbits) as f64;
        let (e, n) = if n >= 2.0 * one { (e + 1, one) } else { (e, n) };
        let code = if n < one {
            n as u32
        } else {
            (((e + self.bias) as u32) << self.mbits) | (n - one) as u32
        };
        sign | code as u8
    }

    /// The magnitude bits of the largest finite value.
    fn max_bits_mag(&self) -> u32 {
        let e = exponent(self.max);
        let m = (self.max / 2f64.powi(e - self.mbits as i32)) as u32 - (1 << self.mbits);
        (((e + self.bias) as u32) << self.mbits) | m
    }
}

/// floor(log2(a)) of a finite positive f64.
fn exponent(a: f64) -> i32 {
    let b = a.to_bits();
    let e = ((b >> 52) & 0x7FF) as i32;
    if e == 0 {
        // Subnormal f64: far below every small format's range.
        -1075
    } else {
        e - 1023
    }
}

/// float8 E8M0 from f32 as the ONNX reference (`onnx.numpy_helper.to_float8e8m0`) does:
/// the f32 exponent, rounded by the dropped mantissa; NaN and infinities give 0xFF.
fn e8m0_encode(x: f32, opts: Opts) -> u8 {
    let bits = x.to_bits();
    let exp = (bits >> 23) & 0xFF;
    if exp == 0xFF {
        return 0xFF;
    }
    let round_up = match opts.round {
        Round::Down => false,
        Round::Up => bits & 0x7F_FFFF != 0,
        Round::Nearest => {
            let g = bits & 0x40_0000 != 0;
            let r = bits & 0x20_0000 != 0;
            let s = bits & 0x1F_FFFF != 0;
            g && (r || s || exp > 0)
        }
    };
    let inc = round_up && !(opts.saturate && exp == 0xFE);
    (exp + inc as u32) as u8
}

fn e8m0_decode(b: u8) -> f64 {
    if b == 0xFF {
        f64::NAN
    } else {
        2f64.powi(b as i32 - 127)
    }
}

/// Parses a string element: integers exactly, floats with `inf`/`nan` in any case.
fn parse(s: &[u8]) -> (Option<i64>, f64) {
    let s = std::str::from_utf8(s).unwrap_or("").trim();
    if let Ok(i) = s.parse::<i64>() {
        return (Some(i), i as f64);
    }
    let f = s
        .parse::<f64>()
        .unwrap_or_else(|_| match s.to_ascii_lowercase().as_str() {
            "true" => 1.0,
            "false" => 0.0,
            _ => f64::NAN,
        });
    (None, f)
}

fn from_strings(
    s: &[Vec<u8>],
    shape: Vec<usize>,
    to: DType,
    opts: Opts,
    cx: &mut RunCx,
) -> Result<Tensor, KernelError> {
    let parsed: Vec<(Option<i64>, f64)> = s.iter().map(|e| parse(e)).collect();
    match to {
        DType::Bool => new_tensor::<u8>(cx, to, shape, |o| {
            for (o, &(i, f)) in o.iter_mut().zip(&parsed) {
                *o = i.map_or(f != 0.0, |i| i != 0) as u8;
            }
        }),
        _ if to.is_int() => {
            // Integers parse exactly; other numbers truncate.
            let v: Vec<i64> = parsed
                .iter()
                .map(|&(i, f)| i.unwrap_or_else(|| i64::from_f64(f)))
                .collect();
            cast_from::<i64>(&v, DType::I64, shape, to, opts, cx)
        }
        _ if to.is_float() => {
            let v: Vec<f64> = parsed.iter().map(|&(_, f)| f).collect();
            cast_from::<f64>(&v, DType::F64, shape, to, opts, cx)
        }
        _ => Err(unsupported("Cast from string", to)),
    }
}

/// A number as numpy's `astype(str)` writes it: integers in decimal, bools as
/// `True`/`False`, floats with their shortest round-trip digits, positional when
/// 1e-4 <= |v| < 10^k (k = 3 for f16, 6 for f32, 16 for f64) and scientific otherwise.
fn format_num<S: Num>(v: S, from: DType) -> String {
    if from == DType::Bool {
        return if v.to_i64() != 0 { "True" } else { "False" }.into();
    }
    if !S::FLOAT {
        return if S::SIGNED {
            v.to_i64().to_string()
        } else {
            (v.to_i64() as u64).to_string()
        };
    }
    let x = v.to_f64();
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf" } else { "inf" }.into();
    }
    let neg = x.is_sign_negative();
    let sign = if neg { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    let (digits, exp) = shortest_digits(x.abs(), from);
    let cutoff = match from {
        DType::F16 => 1e3,
        DType::F64 => 1e16,
        _ => 1e6,
    };
    let a = x.abs();
    if (1e-4..cutoff).contains(&a) {
        let d = digits.as_bytes();
        let body = if exp >= 0 {
            let e = exp as usize;
            let int: String = (0..=e)
                .map(|i| d.get(i).map_or('0', |&c| c as char))
                .collect();
            let frac = if d.len() > e + 1 {
                std::str::from_utf8(&d[e + 1..]).unwrap().to_string()
            } else {
                "0".into()
            };
            format!("{int}.{frac}")
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{body}")
    } else {
        let mant = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{es}{:02}", exp.abs())
    }
}

/// The shortest decimal digits (no dot, no trailing zeros) that read back as `a` in the
/// precision of `from`, and the decimal exponent of the first digit.
fn shortest_digits(a: f64, from: DType) -> (String, i32) {
    let s = match from {
        DType::F64 => format!("{a:e}"),
        DType::F16 | DType::BF16 => {
            let same = |t: f64| match from {
                DType::F16 => half::f16::from_f64(t).to_bits() == half::f16::from_f64(a).to_bits(),
                _ => half::bf16::from_f64(t).to_bits() == half::bf16::from_f64(a).to_bits(),
            };
            (0..17)
                .map(|p| format!("{a:.p$e}"))
                .find(|s| s.parse::<f64>().is_ok_and(same))
                .unwrap_or_else(|| format!("{a:e}"))
        }
        _ => format!("{:e}", a as f32),
    };
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let mut digits: String = m.chars().filter(|c| c.is_ascii_digit()).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    (digits, e.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use kiln_ir::op;

    fn cast_op(to: DType, saturate: bool, round: &str) -> Op {
        Op::Cast(op::Cast {
            to,
            saturate,
            round_mode: round.into(),
        })
    }

    /// ml_dtypes (what the ONNX reference casts with) as the oracle for the small float
    /// formats: codes of the given f32 values for each format, saturating or not.
    #[test]
    fn float8_and_float4_match_ml_dtypes() {
        let vals: Vec<f32> = vec![
            0.0,
            -0.0,
            0.1,
            -0.1,
            0.3,
            1.0,
            1.125,
            1.0625,
            2.5,
            3.5,
            5.0,
            7.0,
            15.5,
            100.0,
            239.0,
            240.0,
            247.0,
            248.0,
            250.0,
            447.0,
            448.0,
            464.0,
            470.0,
            480.0,
            500.0,
            1e4,
            57344.0,
            61439.0,
            61440.0,
            1e6,
            1e-3,
            1e-5,
            1e-7,
            0.0009765625,
            0.001953125,
            2.0f32.powi(-9),
            2.0f32.powi(-10),
            3.0 * 2.0f32.powi(-10),
            -2.75,
            -300.0,
            -1e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.25,
            0.75,
            1.75,
            5.5,
            6.5,
            4.5,
        ];
        let list = format!("{:?}", vals)
            .replace("inf", "np.inf")
            .replace("NaN", "np.nan");
        for (dt, name) in [
            (DType::F8E4M3FN, "float8_e4m3fn"),
            (DType::F8E4M3FNUZ, "float8_e4m3fnuz"),
            (DType::F8E5M2, "float8_e5m2"),
            (DType::F8E5M2FNUZ, "float8_e5m2fnuz"),
            (DType::F4E2M1, "float4_e2m1fn"),
        ] {
            for sat in [false, true] {
                if dt == DType::F4E2M1 && !sat {
                    continue;
                }
                let code = format!(
                    "import numpy as np, ml_dtypes, warnings\nwarnings.simplefilter('ignore')\nx=np.array({list}, dtype=np.float32)\nd=ml_dtypes.{name}\nif {sat}: x=np.where(np.isnan(x), x, np.clip(x, -float(ml_dtypes.finfo(d).max), float(ml_dtypes.finfo(d).max))).astype(np.float32)\nprint(' '.join(str(int(v)) for v in x.astype(d).view(np.uint8)))",
                    sat = if sat { "True" } else { "False" }
                );
                let Some(want) = python(&code) else { return };
                let x = t(&[vals.len()], vals.clone());
                let y = run1(cast_op(dt, sat, "up"), &[x]);
                let got: Vec<String> = (0..vals.len())
                    .map(|i| code_at(y.bytes(), dt.bits(), i).to_string())
                    .collect();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, w, "{dt} saturate={sat}: {} ", vals[i]);
                }
                // And decoding every code agrees with ml_dtypes.
                let n = 1usize << dt.bits();
                let codes: Vec<u8> = (0..n as u32).map(|c| c as u8).collect();
                let t8 = if dt.bits() == 8 {
                    Tensor::from_bytes(dt, vec![n], &codes).unwrap()
                } else {
                    let b: Vec<u8> = codes.chunks(2).map(|c| c[0] | (c[1] << 4)).collect();
                    Tensor::from_bytes(dt, vec![n], &b).unwrap()
                };
                let dec = run1(cast_op(DType::F32, true, "up"), &[t8])
                    .to_f64_vec()
                    .unwrap();
                let want = numpy(&format!(
                    "__import__('ml_dtypes') and np.arange({n}, dtype=np.uint8).view(__import__('ml_dtypes').{name}).astype(np.float32)"
                ));
                let Some(want) = want else { return };
                close(&dec, &want, &format!("{dt} decode"));
            }
        }
    }

    #[test]
    fn float4_decodes_by_hand() {
        let f = MiniFmt::of(DType::F4E2M1).unwrap();
        let want = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        for (c, w) in want.iter().enumerate() {
            assert_eq!(f.decode(c as u8), *w);
            assert_eq!(f.decode(c as u8 | 8), -*w);
        }
    }

    #[test]
    fn packed_ints_wrap_and_pack_low_first() {
        let x = t(&[5], vec![-9.0f32, 8.0, -3.7, 7.0, 15.0]);
        let y = run1(cast_op(DType::I4, true, "up"), std::slice::from_ref(&x));
        // -9 -> 7, 8 -> -8, -3.7 -> -3, 7, 15 -> -1
        assert_eq!(y.bytes(), &[0x87, 0x7D, 0x0F]);
        let back = run1(cast_op(DType::I8, true, "up"), &[y]);
        assert_eq!(back.to_vec::<i8>().unwrap(), vec![7, -8, -3, 7, -1]);
        let u2 = run1(
            cast_op(DType::U2, true, "up"),
            &[t(&[7, 1], vec![-3.0f32, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])],
        );
        assert_eq!(u2.bytes(), &[0x39, 0x39]);
        let f = run1(cast_op(DType::F32, true, "up"), &[u2]);
        assert_eq!(
            f.to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn e8m0_rounding_modes_match_reference() {
        let vals = vec![
            0.0f32,
            0.124,
            0.25,
            0.5,
            1.1,
            2.0,
            3.0,
            4.0,
            6.0,
            1.5,
            1.75,
            8.0,
            3e38,
            f32::MAX,
            1e-40,
            f32::NAN,
        ];
        for round in ["up", "down", "nearest"] {
            for sat in [true, false] {
                let code = format!(
                    "import numpy as np, warnings\nwarnings.simplefilter('ignore')\nfrom onnx.numpy_helper import to_float8e8m0\nx=np.array({}, dtype=np.float32)\nprint(' '.join(str(int(v)) for v in to_float8e8m0(x, {}, '{round}').view(np.uint8)))",
                    format!("{vals:?}").replace("NaN", "np.nan"),
                    if sat { "True" } else { "False" }
                );
                let Some(want) = python(&code) else { return };
                let y = run1(
                    cast_op(DType::F8E8M0, sat, round),
                    &[t(&[vals.len()], vals.clone())],
                );
                let got: Vec<String> = y.bytes().iter().map(|b| b.to_string()).collect();
                assert_eq!(got, want, "round {round} saturate {sat}");
            }
        }
        let d = run1(
            cast_op(DType::F32, true, "up"),
            &[Tensor::from_bytes(DType::F8E8M0, vec![3], &[127, 130, 255]).unwrap()],
        );
        let v = d.to_vec::<f32>().unwrap();
        assert_eq!(&v[..2], &[1.0, 8.0]);
        assert!(v[2].is_nan());
    }

    #[test]
    fn native_casts() {
        let x = t(&[6], vec![-1.7f32, 2.9, 0.0, f32::NAN, 300.0, -0.0]);
        assert_eq!(
            run1(cast_op(DType::I32, true, "up"), std::slice::from_ref(&x))
                .to_vec::<i32>()
                .unwrap(),
            vec![-1, 2, 0, 0, 300, 0]
        );
        assert_eq!(
            run1(cast_op(DType::Bool, true, "up"), std::slice::from_ref(&x)).bytes(),
            &[1, 1, 0, 1, 1, 0]
        );
        let i = t(&[3], vec![200i16, -1, 300]);
        assert_eq!(
            run1(cast_op(DType::I8, true, "up"), std::slice::from_ref(&i))
                .to_vec::<i8>()
                .unwrap(),
            vec![-56, -1, 44]
        );
        assert_eq!(
            run1(cast_op(DType::U64, true, "up"), &[i])
                .to_vec::<u64>()
                .unwrap(),
            vec![200, u64::MAX, 300]
        );
        let h = run1(
            cast_op(DType::F16, true, "up"),
            &[t(&[2], vec![1.0 + 2f32.powi(-10) + 1e-7, 65520.0])],
        );
        assert_eq!(
            h.to_f64_vec().unwrap(),
            vec![1.0 + 2f64.powi(-10), f64::INFINITY]
        );
        let b = run1(
            cast_op(DType::BF16, true, "up"),
            &[t(
                &[2],
                vec![1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)],
            )],
        );
        // Ties to even: 1 + 2^-8 -> 1.0, 1 + 3*2^-8 -> 1 + 2^-6.
        assert_eq!(b.to_f64_vec().unwrap(), vec![1.0, 1.015625]);
        let bools = Tensor::from_bools(vec![2], &[true, false]).unwrap();
        assert_eq!(
            run1(cast_op(DType::F32, true, "up"), &[bools])
                .to_vec::<f32>()
                .unwrap(),
            vec![1.0, 0.0]
        );
    }

    #[test]
    fn strings_parse_and_format_like_numpy() {
        let s: Vec<Vec<u8>> = ["1e-5", "INF", "-inf", "NaN", "+INF", "3.5", "-2"]
            .iter()
            .map(|x| x.as_bytes().to_vec())
            .collect();
        let x = Tensor::from_strings(vec![7], s).unwrap();
        let f = run1(cast_op(DType::F32, true, "up"), std::slice::from_ref(&x))
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(f[0], 1e-5);
        assert_eq!(&f[1..3], &[f32::INFINITY, f32::NEG_INFINITY]);
        assert!(f[3].is_nan());
        assert_eq!(&f[4..], &[f32::INFINITY, 3.5, -2.0]);
        let i = run1(cast_op(DType::I64, true, "up"), &[x])
            .to_vec::<i64>()
            .unwrap();
        assert_eq!(&i[5..], &[3, -2]);

        let vals = "[0.1, 1e-5, 1e16, 123456789.0, -np.inf, np.nan, 1.0, 3.14159, 1e-4, 0.0001234, 1e15, 2.5e-5, 999999.0, 1e6, 150000.0, -0.0, 0.0, 1000.0, 65504.0, 1/3, 2048.0, 1e20]";
        for (dt, np) in [
            (DType::F32, "float32"),
            (DType::F64, "float64"),
            (DType::F16, "float16"),
        ] {
            let code = format!(
                "import numpy as np, warnings\nwarnings.simplefilter('ignore')\nx=np.array({vals}, dtype=np.{np})\nprint(' '.join(x.astype(np.str_)))\nprint(' '.join(repr(float(v)) for v in x))"
            );
            let Some(out) = python(&code) else { return };
            let (want, xs) = out.split_at(out.len() / 2);
            let xs: Vec<f64> = xs.iter().map(|s| s.parse().unwrap()).collect();
            let x = Tensor::from_vec(vec![xs.len()], xs).unwrap();
            let x = run1(cast_op(dt, true, "up"), &[x]);
            let y = run1(cast_op(DType::String, true, "up"), &[x]);
            let got: Vec<String> = y
                .strings()
                .unwrap()
                .iter()
                .map(|s| String::from_utf8(s.clone()).unwrap())
                .collect();
            assert_eq!(got, want, "{dt}");
        }
        let y = run1(
            cast_op(DType::String, true, "up"),
            &[t(&[3], vec![-5i64, 0, i64::MAX])],
        );
        assert_eq!(
            y.strings().unwrap(),
            &[
                b"-5".to_vec(),
                b"0".to_vec(),
                b"9223372036854775807".to_vec()
            ]
        );
        let y = run1(
            cast_op(DType::String, true, "up"),
            &[t(&[1], vec![u64::MAX])],
        );
        assert_eq!(y.strings().unwrap(), &[b"18446744073709551615".to_vec()]);
        let b = Tensor::from_bools(vec![2], &[true, false]).unwrap();
        let y = run1(cast_op(DType::String, true, "up"), &[b]);
        assert_eq!(y.strings().unwrap(), &[b"True".to_vec(), b"False".to_vec()]);
    }

    #[test]
    fn castlike_takes_the_target_type_from_input_1() {
        let x = t(&[2], vec![1.5f64, -2.5]);
        let like = t(&[0], Vec::<half::f16>::new());
        let y = run1(
            Op::CastLike(op::CastLike {
                round_mode: "up".into(),
                saturate: true,
            }),
            &[x, like],
        );
        assert_eq!(y.dtype(), DType::F16);
        assert_eq!(y.to_f64_vec().unwrap(), vec![1.5, -2.5]);
    }
}
