//! Generators and metadata ops: `Shape`, `Size`, `ConstantOfShape`, `Range`, `EyeLike`,
//! `Constant`, and `BitCast` (a view of the same bytes under another type).

use kiln_ir::{DType, Op, Tensor, TensorData};

use super::{dim, first_lane, ints, with_lane, KResult, Lane};
use crate::error::KernelError;
use crate::kernel::{tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<KResult<Box<dyn Kernel>>> {
    let k: Box<dyn Kernel> = match op {
        Op::Shape(o) => Box::new(Shape {
            start: o.start,
            end: o.end,
        }),
        Op::Size(_) => Box::new(Size),
        Op::ConstantOfShape(o) => {
            let value = match &o.value {
                Some(v) if v.len() != 1 => {
                    return Some(Err(KernelError::Invalid(format!(
                        "ConstantOfShape: value has {} elements",
                        v.len()
                    ))))
                }
                Some(v) => v.clone(),
                None => Tensor::scalar(0f32),
            };
            Box::new(ConstantOfShape { value })
        }
        Op::Range(o) => Box::new(Range {
            stash_f64: o.stash_type == DType::F64.onnx_code() as i64,
        }),
        Op::EyeLike(o) => {
            let dtype = match o.dtype {
                None => None,
                Some(code) => match i32::try_from(code).ok().and_then(DType::from_onnx) {
                    Some(d) => Some(d),
                    None => {
                        return Some(Err(KernelError::Invalid(format!(
                            "EyeLike: unknown dtype code {code}"
                        ))))
                    }
                },
            };
            Box::new(EyeLike { dtype, k: o.k })
        }
        Op::Constant(o) => match constant_value(o) {
            Ok(value) => Box::new(Constant { value }),
            Err(e) => return Some(Err(e)),
        },
        Op::BitCast(o) => Box::new(BitCast { to: o.to }),
        _ => return None,
    };
    Some(Ok(k))
}

fn one(t: Tensor) -> KResult<Vec<Value>> {
    Ok(vec![Value::Tensor(t)])
}

struct Shape {
    start: i64,
    end: Option<i64>,
}

impl Kernel for Shape {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let r = x.rank() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (b, e) = (clamp(self.start), clamp(self.end.unwrap_or(r)));
        let dims: &[usize] = if b < e { &x.shape()[b..e] } else { &[] };
        one(cx.tensor::<i64>(vec![dims.len()], |o| {
            for (o, &d) in o.iter_mut().zip(dims) {
                *o = d as i64;
            }
        })?)
    }
}

struct Size;

impl Kernel for Size {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let n = tensor_input(inputs, 0)?.len() as i64;
        one(cx.tensor::<i64>(vec![], |o| o[0] = n)?)
    }
}

struct ConstantOfShape {
    value: Tensor,
}

impl Kernel for ConstantOfShape {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let shape: Vec<usize> = ints(tensor_input(inputs, 0)?, "ConstantOfShape shape")?
            .into_iter()
            .map(|v| dim(v, "ConstantOfShape: dim"))
            .collect::<KResult<_>>()?;
        let dt = self.value.dtype();
        let t = with_lane!(dt, T => {
            let v = first_lane::<T>(&self.value)?;
            T::make(cx, dt, shape, |o| o.fill(v))
        })?;
        one(t)
    }
}

struct Range {
    /// Low-precision floats are computed in f64 (`stash_type` DOUBLE) rather than f32.
    stash_f64: bool,
}

/// The single number of a Range input.
fn range_scalar<'a>(t: &'a Tensor, what: &str) -> KResult<&'a Tensor> {
    if t.len() != 1 {
        return Err(KernelError::Invalid(format!(
            "Range: {what} must be a scalar, got {:?}",
            t.shape()
        )));
    }
    Ok(t)
}

/// Number of elements of `Range(start, limit, delta)` computed in f64.
fn float_count(s: f64, l: f64, d: f64) -> KResult<usize> {
    if d == 0.0 {
        return Err("Range: delta cannot be 0".into());
    }
    let n = ((l - s) / d).ceil();
    if !n.is_finite() && n > 0.0 {
        return Err("Range: infinite length".into());
    }
    Ok(if n > 0.0 { n as usize } else { 0 })
}

impl Kernel for Range {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let s = range_scalar(tensor_input(inputs, 0)?, "start")?;
        let l = range_scalar(tensor_input(inputs, 1)?, "limit")?;
        let d = range_scalar(tensor_input(inputs, 2)?, "delta")?;
        let dt = s.dtype();
        if l.dtype() != dt || d.dtype() != dt {
            return Err(KernelError::Invalid(format!(
                "Range: inputs mix {dt}, {} and {}",
                l.dtype(),
                d.dtype()
            )));
        }
        let t = if dt.is_int() {
            let v = |t: &Tensor| -> KResult<i128> { Ok(ints(t, "Range input")?[0] as i128) };
            let (s, l, d) = (v(s)?, v(l)?, v(d)?);
            if d == 0 {
                return Err("Range: delta cannot be 0".into());
            }
            let n = if d > 0 {
                (l - s + d - 1).div_euclid(d)
            } else {
                (s - l - d - 1).div_euclid(-d)
            }
            .max(0);
            let n = usize::try_from(n).map_err(|_| "Range: too many elements")?;
            crate::with_int!(dt, T => cx.tensor::<T>(vec![n], |o| {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = (s + i as i128 * d) as T;
                }
            }), else return Err(KernelError::Unsupported(format!("Range on {dt}"))))?
        } else {
            let f = |t: &Tensor| {
                t.to_f64_vec()
                    .map(|v| v[0])
                    .ok_or_else(|| KernelError::Unsupported(format!("Range on {dt}")))
            };
            let (s, l, d) = (f(s)?, f(l)?, f(d)?);
            let n = float_count(s, l, d)?;
            match dt {
                DType::F32 => {
                    let (s, d) = (s as f32, d as f32);
                    cx.tensor::<f32>(vec![n], |o| {
                        o.iter_mut()
                            .enumerate()
                            .for_each(|(i, o)| *o = s + i as f32 * d)
                    })?
                }
                DType::F64 => cx.tensor::<f64>(vec![n], |o| {
                    o.iter_mut()
                        .enumerate()
                        .for_each(|(i, o)| *o = s + i as f64 * d)
                })?,
                DType::F16 | DType::BF16 => {
                    let val = |i: usize| -> f64 {
                        if self.stash_f64 {
                            s + i as f64 * d
                        } else {
                            (s as f32 + i as f32 * d as f32) as f64
                        }
                    };
                    if dt == DType::F16 {
                        cx.tensor::<half::f16>(vec![n], |o| {
                            o.iter_mut()
                                .enumerate()
                                .for_each(|(i, o)| *o = half::f16::from_f64(val(i)))
                        })?
                    } else {
                        cx.tensor::<half::bf16>(vec![n], |o| {
                            o.iter_mut()
                                .enumerate()
                                .for_each(|(i, o)| *o = half::bf16::from_f64(val(i)))
                        })?
                    }
                }
                _ => return Err(KernelError::Unsupported(format!("Range on {dt}"))),
            }
        };
        one(t)
    }
}

/// The bytes of the number one in `dt`.
fn one_bytes(dt: DType) -> KResult<Vec<u8>> {
    Ok(match dt {
        DType::F32 => 1f32.to_le_bytes().to_vec(),
        DType::F64 => 1f64.to_le_bytes().to_vec(),
        DType::F16 => half::f16::ONE.to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::ONE.to_le_bytes().to_vec(),
        _ if (dt.is_int() || dt == DType::Bool) && dt.bits().is_multiple_of(8) => {
            let mut v = vec![0u8; dt.bits() / 8];
            v[0] = 1;
            v
        }
        _ => return Err(KernelError::Unsupported(format!("EyeLike of {dt}"))),
    })
}

struct EyeLike {
    dtype: Option<DType>,
    k: i64,
}

impl Kernel for EyeLike {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let &[rows, cols] = x.shape() else {
            return Err(KernelError::Invalid(format!(
                "EyeLike needs a 2-D input, got {:?}",
                x.shape()
            )));
        };
        let dt = self.dtype.unwrap_or(x.dtype());
        let one_t = Tensor::from_bytes(dt, vec![], &one_bytes(dt)?)?;
        let k = self.k;
        let t = with_lane!(dt, T => {
            let v = first_lane::<T>(&one_t)?;
            T::make(cx, dt, vec![rows, cols], |o| {
                for i in 0..rows {
                    let j = i as i64 + k;
                    if j >= 0 && (j as usize) < cols {
                        o[i * cols + j as usize] = v.clone();
                    }
                }
            })
        })?;
        one(t)
    }
}

struct Constant {
    value: Tensor,
}

/// The value of a `Constant` node from whichever attribute holds it.
fn constant_value(o: &kiln_ir::op::Constant) -> KResult<Tensor> {
    if let Some(t) = o.value.as_ref().or(o.sparse_value.as_ref()) {
        return Ok(t.clone());
    }
    if let Some(v) = o.value_float {
        return Ok(Tensor::scalar(v));
    }
    if let Some(v) = &o.value_floats {
        return Ok(Tensor::from_vec(vec![v.len()], v.clone())?);
    }
    if let Some(v) = o.value_int {
        return Ok(Tensor::scalar(v));
    }
    if let Some(v) = &o.value_ints {
        return Ok(Tensor::from_vec(vec![v.len()], v.clone())?);
    }
    if let Some(v) = &o.value_string {
        return Ok(Tensor::from_strings(vec![], vec![v.as_bytes().to_vec()])?);
    }
    if let Some(v) = &o.value_strings {
        return Ok(Tensor::from_strings(
            vec![v.len()],
            v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        )?);
    }
    Err("Constant has no value attribute".into())
}

impl Kernel for Constant {
    fn run(&self, _inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        one(self.value.clone())
    }
}

struct BitCast {
    to: DType,
}

impl Kernel for BitCast {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let from = x.dtype();
        if from == DType::String || self.to == DType::String || from.bits() != self.to.bits() {
            return Err(KernelError::Invalid(format!(
                "BitCast from {from} to {}",
                self.to
            )));
        }
        match x.data() {
            TensorData::Bytes {
                storage,
                offset,
                len,
            } => one(Tensor::from_storage(
                self.to,
                x.shape().to_vec(),
                storage.clone(),
                *offset,
                *len,
            )?),
            TensorData::Strings(_) => Err("BitCast of strings".into()),
        }
    }
}
