//! `QuantizeLinear`, `DequantizeLinear` (per-tensor, per-axis and blocked; integer outputs
//! of 2 to 16 bits, float8 and float4 outputs) and `DynamicQuantizeLinear`, with the
//! element codecs of the quantized types (sub-byte types packed first-element-in-low-bits).

use kiln_ir::{DType, Op, Tensor};

use super::KResult;
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::num::{view, Float};
use crate::kernels::util::norm_axis;
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let k: Box<dyn Kernel> = match op {
        Op::QuantizeLinear(o) => Box::new(QuantizeK {
            axis: o.axis,
            block: o.block_size,
            output_dtype: o.output_dtype,
            precision: o.precision,
            saturate: o.saturate,
        }),
        Op::DequantizeLinear(o) => Box::new(DequantizeK {
            axis: o.axis,
            block: o.block_size,
            output_dtype: o.output_dtype,
        }),
        Op::DynamicQuantizeLinear(_) => Box::new(DynQuantK),
        _ => return None,
    };
    Some(Ok(k))
}

fn dtype_code(code: i64) -> KResult<DType> {
    i32::try_from(code)
        .ok()
        .and_then(DType::from_onnx)
        .ok_or_else(|| KernelError::Invalid(format!("unknown element type code {code}")))
}

// ---------------------------------------------------------------------------------------------
// Element codecs.

/// Range of an integer quantized type.
pub(crate) fn int_range(dt: DType) -> Option<(i64, i64)> {
    Some(match dt {
        DType::U8 => (0, 255),
        DType::I8 => (-128, 127),
        DType::U16 => (0, 65535),
        DType::I16 => (-32768, 32767),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::U4 => (0, 15),
        DType::I4 => (-8, 7),
        DType::U2 => (0, 3),
        DType::I2 => (-2, 1),
        _ => return None,
    })
}

/// The raw codes of a sub-byte tensor (one per element, unpacked).
fn unpack(t: &Tensor) -> Vec<u8> {
    let bits = t.dtype().bits();
    let per = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    let b = t.bytes();
    (0..t.len())
        .map(|i| (b[i / per] >> ((i % per) * bits)) & mask)
        .collect()
}

/// Packs codes (low bits of each byte) of a sub-byte type.
fn pack(codes: &[u8], bits: usize, out: &mut [u8]) {
    let per = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    out.fill(0);
    for (i, &c) in codes.iter().enumerate() {
        out[i / per] |= (c & mask) << ((i % per) * bits);
    }
}

/// Elements of an integer tensor (including 2- and 4-bit types, and bool) as i64.
pub(crate) fn quant_ints(t: &Tensor) -> KResult<Vec<i64>> {
    let dt = t.dtype();
    Ok(match dt {
        DType::U4 | DType::U2 => unpack(t).into_iter().map(i64::from).collect(),
        DType::I4 | DType::I2 => {
            let bits = dt.bits() as u32;
            unpack(t)
                .into_iter()
                .map(|c| (((c as i8) << (8 - bits)) >> (8 - bits)) as i64)
                .collect()
        }
        _ => t.to_i64_vec().ok_or_else(|| {
            KernelError::Unsupported(format!("{dt} where an integer tensor is expected"))
        })?,
    })
}

/// A small float format: exponent and mantissa bits, bias, and how it encodes NaN/inf.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mini {
    ebits: u32,
    mbits: u32,
    bias: i32,
    /// NaN is the negative-zero code (0x80); no negative zero, no infinities.
    fnuz: bool,
    /// IEEE-like: all-ones exponent is inf (mantissa 0) or NaN.
    ieee: bool,
    /// NaN-free and inf-free (float4): saturates always.
    finite: bool,
}

impl Mini {
    pub(crate) fn of(dt: DType) -> Option<Mini> {
        let m = |ebits, mbits, bias, fnuz, ieee, finite| Mini {
            ebits,
            mbits,
            bias,
            fnuz,
            ieee,
            finite,
        };
        Some(match dt {
            DType::F8E4M3FN => m(4, 3, 7, false, false, false),
            DType::F8E4M3FNUZ => m(4, 3, 8, true, false, false),
            DType::F8E5M2 => m(5, 2, 15, false, true, false),
            DType::F8E5M2FNUZ => m(5, 2, 16, true, false, false),
            DType::F4E2M1 => m(2, 1, 1, false, false, true),
            _ => return None,
        })
    }

    fn sign_bit(self) -> u8 {
        1 << (self.ebits + self.mbits)
    }

    /// The largest positive finite code.
    fn max_code(self) -> u8 {
        let all = (1u16 << (self.ebits + self.mbits)) as u8 - 1;
        if self.fnuz || self.finite {
            all
        } else if self.ieee {
            all - (1 << self.mbits) // exponent all-ones is reserved
        } else {
            all - 1 // e4m3fn: only S.1111.111 is NaN
        }
    }

    fn nan_code(self) -> u8 {
        if self.fnuz {
            0x80
        } else {
            (1u16 << (self.ebits + self.mbits)) as u8 - 1
        }
    }

    pub(crate) fn decode(self, c: u8) -> f32 {
        let sign = c & self.sign_bit() != 0;
        let mag = c & (self.sign_bit() - 1);
        if self.fnuz && c == 0x80 {
            return f32::NAN;
        }
        let emax = (1u32 << self.ebits) - 1;
        let e = (mag >> self.mbits) as u32;
        let m = (mag & ((1 << self.mbits) - 1)) as u32;
        if self.ieee && e == emax {
            return if m == 0 {
                if sign {
                    f32::NEG_INFINITY
                } else {
                    f32::INFINITY
                }
            } else {
                f32::NAN
            };
        }
        if !self.ieee
            && !self.fnuz
            && !self.finite
            && mag == self.nan_code() & (self.sign_bit() - 1)
        {
            return f32::NAN;
        }
        let v = if e == 0 {
            m as f64 * 2f64.powi(1 - self.bias - self.mbits as i32)
        } else {
            (1.0 + m as f64 / (1u32 << self.mbits) as f64) * 2f64.powi(e as i32 - self.bias)
        };
        (if sign { -v } else { v }) as f32
    }

    /// Rounds `x` to the nearest code (ties to even). Overflow gives the largest finite
    /// value when `saturate`, else infinity (IEEE-like formats) or NaN.
    pub(crate) fn encode(self, x: f64, saturate: bool) -> u8 {
        if x.is_nan() {
            return if self.finite {
                self.max_code()
            } else {
                self.nan_code()
            };
        }
        let neg = x.is_sign_negative();
        let a = x.abs();
        let maxc = self.max_code();
        let val = |c: u8| self.decode(c) as f64;
        let overflow = || -> u8 {
            if saturate || self.finite {
                maxc
            } else if self.ieee {
                maxc + 1
            } else {
                self.nan_code()
            }
        };
        let code = if a.is_infinite() {
            overflow()
        } else {
            // Largest code whose value is <= a (values increase with the code).
            let (mut lo, mut hi) = (0u8, maxc);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if val(mid) <= a {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            let c = lo;
            if c == maxc {
                let top = val(maxc);
                let half = (top - val(maxc - 1)) / 2.0;
                if a < top + half || (a == top + half && maxc.is_multiple_of(2)) {
                    maxc
                } else {
                    overflow()
                }
            } else {
                let (l, h) = (val(c), val(c + 1));
                if a - l < h - a || (a - l == h - a && c.is_multiple_of(2)) {
                    c
                } else {
                    c + 1
                }
            }
        };
        if self.fnuz && (code == 0 || code == 0x80) {
            return code;
        }
        if neg && !(self.fnuz && code == 0) {
            code | self.sign_bit()
        } else {
            code
        }
    }
}

/// Elements of a quantized tensor (integers of any width, float8, float4) or a float
/// tensor, as f32 (exact for every quantized type up to 16 bits).
pub(crate) fn decode_f32(t: &Tensor) -> KResult<Vec<f32>> {
    let dt = t.dtype();
    if let Some(m) = Mini::of(dt) {
        let codes = if dt.bits() < 8 {
            unpack(t)
        } else {
            t.bytes().to_vec()
        };
        return Ok(codes.into_iter().map(|c| m.decode(c)).collect());
    }
    if dt.is_float() {
        return crate::with_float!(dt, T => Ok(view::<T>(t)?.iter().map(|v| crate::kernels::reduce::num::Real::to_f64(v.to_r()) as f32).collect()),
            else Err(KernelError::Unsupported(format!("{dt} tensors"))));
    }
    Ok(quant_ints(t)?.into_iter().map(|v| v as f32).collect())
}

/// `v` rounded to the precision of float `dt` (f64 stays).
pub(crate) fn round_to(dt: DType, v: f64) -> f64 {
    match dt {
        DType::F32 => v as f32 as f64,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// A tensor of quantized `dt` from integer values already in range.
pub(crate) fn ints_tensor(
    cx: &mut RunCx,
    dt: DType,
    shape: Vec<usize>,
    vals: &[i64],
) -> KResult<Tensor> {
    match dt {
        DType::U8 => cx.tensor::<u8>(shape, |o| {
            o.iter_mut().zip(vals).for_each(|(o, &v)| *o = v as u8)
        }),
        DType::I8 => cx.tensor::<i8>(shape, |o| {
            o.iter_mut().zip(vals).for_each(|(o, &v)| *o = v as i8)
        }),
        DType::U16 => cx.tensor::<u16>(shape, |o| {
            o.iter_mut().zip(vals).for_each(|(o, &v)| *o = v as u16)
        }),
        DType::I16 => cx.tensor::<i16>(shape, |o| {
            o.iter_mut().zip(vals).for_each(|(o, &v)| *o = v as i16)
        }),
        DType::I32 => cx.tensor::<i32>(shape, |o| {
            o.iter_mut().zip(vals).for_each(|(o, &v)| *o = v as i32)
        }),
        DType::U4 | DType::I4 | DType::U2 | DType::I2 => {
            let codes: Vec<u8> = vals.iter().map(|&v| v as u8).collect();
            cx.tensor_bytes(dt, shape, |o| pack(&codes, dt.bits(), o))
        }
        _ => Err(KernelError::Unsupported(format!("{dt} quantized output"))),
    }
}

/// A tensor of a float8/float4 `dt` from codes.
fn codes_tensor(cx: &mut RunCx, dt: DType, shape: Vec<usize>, codes: &[u8]) -> KResult<Tensor> {
    if dt.bits() < 8 {
        cx.tensor_bytes(dt, shape, |o| pack(codes, dt.bits(), o))
    } else {
        cx.tensor_bytes(dt, shape, |o| o.copy_from_slice(codes))
    }
}

/// Which scale/zero-point element each element of `shape` uses: per tensor, per slice
/// along `axis`, or per block of `block` along `axis`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ParamMode {
    Tensor,
    Axis {
        outer: usize,
        d: usize,
        inner: usize,
    },
    Block {
        outer: usize,
        d: usize,
        inner: usize,
        block: usize,
        nb: usize,
    },
}

impl ParamMode {
    pub(crate) fn new(
        shape: &[usize],
        pshape: &[usize],
        axis: i64,
        block: i64,
    ) -> KResult<ParamMode> {
        let plen: usize = pshape.iter().product();
        if plen == 1 && block <= 0 {
            return Ok(ParamMode::Tensor);
        }
        let ax = norm_axis(axis, shape.len())?;
        let (outer, d, inner) = crate::kernels::reduce::split_at_axis(shape, ax);
        if block <= 0 {
            if pshape.len() != 1 || pshape[0] != d {
                return Err(KernelError::Invalid(format!(
                    "per-axis scale of shape {pshape:?} does not match axis {ax} of {shape:?}"
                )));
            }
            return Ok(ParamMode::Axis { outer, d, inner });
        }
        let block = block as usize;
        let nb = d.div_ceil(block);
        let ok = pshape.len() == shape.len()
            && pshape
                .iter()
                .zip(shape)
                .enumerate()
                .all(|(i, (&p, &s))| if i == ax { p == nb } else { p == s });
        if !ok {
            return Err(KernelError::Invalid(format!(
                "blocked scale of shape {pshape:?} does not match {shape:?} with blocks of {block} along axis {ax}"
            )));
        }
        Ok(ParamMode::Block {
            outer,
            d,
            inner,
            block,
            nb,
        })
    }

    /// Calls `f(element, parameter index)` for every element, in order.
    pub(crate) fn for_each(self, n: usize, mut f: impl FnMut(usize, usize)) {
        match self {
            ParamMode::Tensor => (0..n).for_each(|i| f(i, 0)),
            ParamMode::Axis { outer, d, inner } => {
                let mut i = 0;
                for _ in 0..outer {
                    for j in 0..d {
                        for _ in 0..inner {
                            f(i, j);
                            i += 1;
                        }
                    }
                }
            }
            ParamMode::Block {
                outer,
                d,
                inner,
                block,
                nb,
            } => {
                let mut i = 0;
                for o in 0..outer {
                    for j in 0..d {
                        let base = (o * nb + j / block) * inner;
                        for k in 0..inner {
                            f(i, base + k);
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// QuantizeLinear

struct QuantizeK {
    axis: i64,
    block: i64,
    output_dtype: i64,
    precision: i64,
    saturate: bool,
}

impl Kernel for QuantizeK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let scale = tensor_input(inputs, 1)?;
        let zp = opt_tensor_input(inputs, 2)?;
        let out_dt = match zp {
            Some(z) => z.dtype(),
            None if self.output_dtype != 0 => dtype_code(self.output_dtype)?,
            None => DType::U8,
        };
        let shape = x.shape().to_vec();
        let mode = ParamMode::new(&shape, scale.shape(), self.axis, self.block)?;
        // Arithmetic precision: the attribute's, else the input's (numpy's promotion of
        // int32 / float is float64).
        let cdt = if self.precision != 0 {
            dtype_code(self.precision)?
        } else if x.dtype().is_float() {
            x.dtype()
        } else {
            DType::F64
        };
        let xs = decode_f64(x)?;
        let ss = decode_f64(scale)?;
        let n = xs.len();
        let mut q = vec![0f64; n];
        mode.for_each(n, |i, p| {
            q[i] = round_to(cdt, round_to(cdt, xs[i]) / round_to(cdt, ss[p]))
        });
        let t = if let Some((lo, hi)) = int_range(out_dt) {
            let zs = match zp {
                Some(z) => quant_ints(z)?,
                None => vec![0],
            };
            let zmode = if zs.len() == 1 {
                ParamMode::Tensor
            } else {
                mode
            };
            let mut v = vec![0i64; n];
            zmode.for_each(n, |i, p| {
                let r = q[i].round_ties_even();
                let r = if r.is_nan() {
                    0
                } else {
                    r.clamp(i64::MIN as f64, i64::MAX as f64) as i64
                };
                v[i] = r.saturating_add(zs[p]).clamp(lo, hi);
            });
            ints_tensor(cx, out_dt, shape, &v)?
        } else if let Some(m) = Mini::of(out_dt) {
            if out_dt == DType::F4E2M1 {
                if let Some(z) = zp {
                    let zs = decode_f32(z)?;
                    let zmode = if zs.len() == 1 {
                        ParamMode::Tensor
                    } else {
                        mode
                    };
                    zmode.for_each(n, |i, p| q[i] += zs[p] as f64);
                }
            }
            let codes: Vec<u8> = q.iter().map(|&v| m.encode(v, self.saturate)).collect();
            codes_tensor(cx, out_dt, shape, &codes)?
        } else {
            return Err(KernelError::Unsupported(format!(
                "QuantizeLinear to {out_dt}"
            )));
        };
        Ok(vec![t.into()])
    }
}

/// Elements as f64 (exact for every type this family quantizes from or to).
fn decode_f64(t: &Tensor) -> KResult<Vec<f64>> {
    let dt = t.dtype();
    if matches!(dt, DType::F64) {
        return Ok(view::<f64>(t)?.to_vec());
    }
    if matches!(dt, DType::I32 | DType::I64 | DType::U32 | DType::U64) {
        return Ok(quant_ints(t)?.into_iter().map(|v| v as f64).collect());
    }
    Ok(decode_f32(t)?.into_iter().map(f64::from).collect())
}

// ---------------------------------------------------------------------------------------------
// DequantizeLinear

struct DequantizeK {
    axis: i64,
    block: i64,
    output_dtype: i64,
}

impl Kernel for DequantizeK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let scale = tensor_input(inputs, 1)?;
        let zp = opt_tensor_input(inputs, 2)?;
        let out_dt = if self.output_dtype != 0 {
            dtype_code(self.output_dtype)?
        } else {
            scale.dtype()
        };
        let shape = x.shape().to_vec();
        let mode = ParamMode::new(&shape, scale.shape(), self.axis, self.block)?;
        let xdt = x.dtype();
        let n = x.len();
        // x - zero_point, exactly (float8/float4 have no zero point).
        let dx: Vec<f64> = if Mini::of(xdt).is_some() || zp.is_none() {
            decode_f64(x)?
        } else {
            let xs = quant_ints(x)?;
            let zs = quant_ints(zp.unwrap_or(x))?;
            let zmode = if zs.len() == 1 {
                ParamMode::Tensor
            } else {
                mode
            };
            let mut d = vec![0f64; n];
            zmode.for_each(n, |i, p| d[i] = (xs[i] - zs[p]) as f64);
            d
        };
        let ss = decode_f64(scale)?;
        // The product is taken in f32 (f64 for f64 scales), then converted.
        let wide = scale.dtype() == DType::F64;
        let mut y = vec![0f64; n];
        mode.for_each(n, |i, p| {
            y[i] = if wide {
                dx[i] * ss[p]
            } else {
                (dx[i] as f32 * ss[p] as f32) as f64
            };
        });
        let t = crate::with_float!(out_dt, T => cx.tensor::<T>(shape, |o| {
            for (o, &v) in o.iter_mut().zip(&y) {
                *o = T::from_r(<<T as Float>::R as crate::kernels::reduce::num::Real>::from_f64(v));
            }
        })?, else return Err(KernelError::Unsupported(format!("DequantizeLinear to {out_dt}"))));
        Ok(vec![t.into()])
    }
}

// ---------------------------------------------------------------------------------------------
// DynamicQuantizeLinear

struct DynQuantK;

/// Scale and zero point of ONNX's dynamic u8 quantization of values in `[min, max]`
/// (the range is widened to include 0).
pub(crate) fn dynamic_qparams(min: f32, max: f32) -> (f32, u8) {
    let (maxx, minx) = (max.max(0.0), min.min(0.0));
    let scale = if maxx == minx { 1.0 } else { maxx - minx } / 255.0;
    let zp = (0.0 - minx / scale).clamp(0.0, 255.0).round_ties_even();
    (scale, zp as u8)
}

impl Kernel for DynQuantK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        let xs: Vec<f32> = decode_f32(x)?;
        let (mut mn, mut mx) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in &xs {
            mn = mn.min(v);
            mx = mx.max(v);
        }
        let (scale, zp) = dynamic_qparams(mn, mx);
        let y = cx.tensor::<u8>(x.shape().to_vec(), |o| {
            for (o, &v) in o.iter_mut().zip(&xs) {
                *o = ((v / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8;
            }
        })?;
        let s = crate::with_float!(dt, T => cx.tensor::<T>(vec![], |o| o[0] = T::from_r(<<T as Float>::R as crate::kernels::reduce::num::Real>::from_f64(scale as f64)))?,
            else return Err(KernelError::Unsupported(format!("DynamicQuantizeLinear of {dt}"))));
        let z = cx.tensor::<u8>(vec![], |o| o[0] = zp)?;
        Ok(vec![y.into(), s.into(), z.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float8_e4m3fn_codes() {
        let m = Mini::of(DType::F8E4M3FN).unwrap();
        assert_eq!(m.encode(1.0, true), 0x38);
        assert_eq!(m.encode(-2.0, true), 0xC0);
        assert_eq!(m.encode(448.0, true), 0x7E);
        assert_eq!(m.encode(464.0, false), 0x7E); // tie rounds to the even max
        assert_eq!(m.encode(465.0, false), 0x7F); // overflow without saturation: NaN
        assert_eq!(m.encode(1e6, true), 0x7E);
        assert_eq!(m.encode(f64::INFINITY, false), 0x7F);
        assert_eq!(m.encode(2f64.powi(-9), true), 0x01); // smallest subnormal
        assert_eq!(m.encode(2f64.powi(-10), true), 0x00); // tie to even: 0
        assert_eq!(m.encode(1.0625, true), 0x38); // tie between 1 and 1.125: even
        assert_eq!(m.encode(1.1875, true), 0x3A);
        assert_eq!(m.decode(0x7E), 448.0);
        assert!(m.decode(0x7F).is_nan());
    }

    #[test]
    fn float8_other_formats() {
        let e5 = Mini::of(DType::F8E5M2).unwrap();
        assert_eq!(e5.encode(57344.0, false), 0x7B);
        assert_eq!(e5.encode(61440.0, false), 0x7C); // tie goes to infinity
        assert_eq!(e5.encode(61440.0, true), 0x7B);
        assert_eq!(e5.encode(f64::NEG_INFINITY, false), 0xFC);
        assert_eq!(e5.decode(0x3C), 1.0);
        let uz = Mini::of(DType::F8E4M3FNUZ).unwrap();
        assert_eq!(uz.encode(240.0, true), 0x7F);
        assert_eq!(uz.encode(-0.0, true), 0x00);
        assert_eq!(uz.encode(1.0, true), 0x40);
        assert!(uz.decode(0x80).is_nan());
        let f4 = Mini::of(DType::F4E2M1).unwrap();
        let vals: Vec<f32> = (0..8).map(|c| f4.decode(c)).collect();
        assert_eq!(vals, [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(f4.encode(5.0, true), 0x6); // tie between 4 and 6: even code
        assert_eq!(f4.encode(100.0, false), 0x7);
        assert_eq!(f4.encode(-0.75, true), 0xA); // tie between 0.5 and 1: even code (1.0)
    }

    #[test]
    fn sub_byte_packing_and_params() {
        let mut b = [0u8; 2];
        pack(&[1, 0xF, 3], 4, &mut b);
        assert_eq!(b, [0xF1, 0x03]);
        let t = Tensor::from_bytes(DType::I4, vec![3], &b).unwrap();
        assert_eq!(quant_ints(&t).unwrap(), [1, -1, 3]);
        let t = Tensor::from_bytes(DType::U2, vec![4], &[0b11_10_01_00]).unwrap();
        assert_eq!(quant_ints(&t).unwrap(), [0, 1, 2, 3]);
        // Blocks of 2 along axis 1 of [2, 3]: scale [2, 2].
        let m = ParamMode::new(&[2, 3], &[2, 2], 1, 2).unwrap();
        let mut idx = Vec::new();
        m.for_each(6, |_, p| idx.push(p));
        assert_eq!(idx, [0, 0, 1, 2, 2, 3]);
        assert!(ParamMode::new(&[2, 3], &[2], 1, 0).is_err());
    }

    #[test]
    fn dynamic_quantization_params() {
        // x in [-1, 2]: scale 3/255, zero point round(85) = 85.
        let (s, z) = dynamic_qparams(-1.0, 2.0);
        assert_eq!(s, 3.0 / 255.0);
        assert_eq!(z, 85);
        assert_eq!(dynamic_qparams(0.0, 0.0), (1.0 / 255.0, 0));
    }
}
