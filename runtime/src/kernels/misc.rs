//! Everything else: signal processing (windows, `MelWeightMatrix`, `DFT`, `STFT`), random
//! generators, string ops, `TfIdfVectorizer`, the loss ops and `ImageDecoder`.

use kiln_ir::{DType, Element, Op, Tensor};

use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

mod image;
mod loss;
mod ml;
mod random;
mod signal;
mod text;
mod training;

type KResult<T> = Result<T, KernelError>;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    signal::build(op, cx)
        .or_else(|| random::build(op, cx))
        .or_else(|| text::build(op, cx))
        .or_else(|| loss::build(op, cx))
        .or_else(|| image::build(op, cx))
        .or_else(|| ml::build(op, cx))
        .or_else(|| training::build(op, cx))
}

/// Numbers converted through f64 (the precision the kernels of this family compute in).
pub(crate) trait Num: Element + Copy {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

macro_rules! num_as {
    ($($t:ty),*) => {$(
        impl Num for $t {
            #[inline]
            fn from_f64(v: f64) -> Self { v as $t }
            #[inline]
            fn to_f64(self) -> f64 { self as f64 }
        }
    )*};
}
num_as!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);

impl Num for half::f16 {
    #[inline]
    fn from_f64(v: f64) -> Self {
        half::f16::from_f64(v)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Num for half::bf16 {
    #[inline]
    fn from_f64(v: f64) -> Self {
        half::bf16::from_f64(v)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// The dtype of an ONNX element type code.
fn dtype_of(code: i64) -> KResult<DType> {
    i32::try_from(code)
        .ok()
        .and_then(DType::from_onnx)
        .ok_or_else(|| KernelError::Invalid(format!("unknown element type code {code}")))
}

/// A tensor of `dtype` and `shape` holding `vals` (computed in f64) converted to `dtype`;
/// bool gets `v != 0`.
fn from_f64s(cx: &mut RunCx, dtype: DType, shape: Vec<usize>, vals: &[f64]) -> KResult<Tensor> {
    if dtype == DType::Bool {
        return cx.tensor_bytes(DType::Bool, shape, |o| {
            for (o, &v) in o.iter_mut().zip(vals) {
                *o = (v != 0.0) as u8;
            }
        });
    }
    with_numeric!(dtype, T => cx.tensor::<T>(shape, |o| {
        for (o, &v) in o.iter_mut().zip(vals) {
            *o = T::from_f64(v);
        }
    }), else Err(KernelError::Unsupported(format!("{dtype} output"))))
}

/// The elements of a numeric tensor as f64.
fn to_f64s(t: &Tensor) -> KResult<Vec<f64>> {
    let dt = t.dtype();
    if dt == DType::Bool {
        return Ok(t.bytes().iter().map(|&b| b as f64).collect());
    }
    with_numeric!(dt, T => {
        let v: std::borrow::Cow<[T]> = match t.as_slice::<T>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(t.to_vec::<T>().unwrap_or_default()),
        };
        Ok(v.iter().map(|x| x.to_f64()).collect())
    }, else Err(KernelError::Unsupported(format!("{dt} input"))))
}

/// A scalar (or one-element) numeric input as f64, `None` if omitted.
fn opt_scalar(inputs: &[Option<&Value>], i: usize, what: &str) -> KResult<Option<f64>> {
    let Some(t) = opt_tensor_input(inputs, i)? else {
        return Ok(None);
    };
    if t.len() != 1 {
        return Err(KernelError::Invalid(format!(
            "{what} must be a scalar, got shape {:?}",
            t.shape()
        )));
    }
    Ok(Some(to_f64s(t)?[0]))
}

/// A required scalar integer input.
fn scalar_int(inputs: &[Option<&Value>], i: usize, what: &str) -> KResult<i64> {
    let t = opt_tensor_input(inputs, i)?
        .ok_or_else(|| KernelError::Invalid(format!("{what} is required")))?;
    if t.len() != 1 {
        return Err(KernelError::Invalid(format!(
            "{what} must be a scalar, got shape {:?}",
            t.shape()
        )));
    }
    t.to_i64_vec()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| {
            KernelError::Invalid(format!("{what} must be an integer, got {}", t.dtype()))
        })
}
