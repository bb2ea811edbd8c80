//! `Softmax`, `LogSoftmax`, `Hardmax` along one axis (opset-13 semantics).

use kiln_ir::Op;

use super::num::{view, Float, Real};
use super::{split_at_axis, KResult};
use crate::error::KernelError;
use crate::kernel::{tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::util::norm_axis;
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let (kind, axis) = match op {
        Op::Softmax(o) => (Kind::Softmax, o.axis),
        Op::LogSoftmax(o) => (Kind::LogSoftmax, o.axis),
        Op::Hardmax(o) => (Kind::Hardmax, o.axis),
        _ => return None,
    };
    Some(Ok(Box::new(SoftmaxK { kind, axis })))
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Kind {
    Softmax,
    LogSoftmax,
    Hardmax,
}

struct SoftmaxK {
    kind: Kind,
    axis: i64,
}

impl Kernel for SoftmaxK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let shape = x.shape().to_vec();
        let axis = norm_axis(self.axis, shape.len())?;
        let (outer, n, inner) = if shape.is_empty() {
            (1, 1, 1)
        } else {
            split_at_axis(&shape, axis)
        };
        let dt = x.dtype();
        let kind = self.kind;
        if dt == kiln_ir::DType::F32 && kind == Kind::Softmax && inner == 1 {
            // Vectorized exp, rows over threads (gemm::vmath).
            let xs = view::<f32>(x)?;
            let t =
                cx.tensor_dirty::<f32>(shape, |o| crate::gemm::vmath::softmax_rows(&xs, n, o))?;
            return Ok(vec![t.into()]);
        }
        crate::with_float!(dt, T => {
            let xs = view::<T>(x)?;
            let t = cx.tensor::<T>(shape, |o| softmax::<T>(&xs, outer, n, inner, kind, o))?;
            Ok(vec![t.into()])
        }, else Err(KernelError::Unsupported(format!("{kind:?} of {dt} tensors"))))
    }
}

/// Softmax-family op along the middle axis of `(outer, n, inner)`. For `f16`/`bf16` each
/// elementwise step rounds to the element type, as the ONNX reference computes in the
/// element type; the sum accumulates in f32 for f16 (as numpy does) and rounds after each
/// addition for bf16 (as numpy with ml_dtypes does).
pub(crate) fn softmax<T: Float>(
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
    kind: Kind,
    out: &mut [T],
) {
    if n == 0 {
        return;
    }
    if inner == 1 {
        let mut buf: Vec<T::R> = vec![T::R::ZERO; n];
        for (row, orow) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)).take(outer) {
            for (b, &v) in buf.iter_mut().zip(row) {
                *b = v.to_r();
            }
            softmax_row_with(&mut buf, kind, |v| T::from_r(v).to_r(), bf16_sum::<T>());
            for (o, &b) in orow.iter_mut().zip(&buf) {
                *o = T::from_r(b);
            }
        }
        return;
    }
    // Along a non-trailing axis: gather each column into a buffer.
    let mut buf: Vec<T::R> = vec![T::R::ZERO; n];
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            for (j, b) in buf.iter_mut().enumerate() {
                *b = x[base + j * inner].to_r();
            }
            softmax_row_with(&mut buf, kind, |v| T::from_r(v).to_r(), bf16_sum::<T>());
            for (j, &b) in buf.iter().enumerate() {
                out[base + j * inner] = T::from_r(b);
            }
        }
    }
}

/// Softmax-family op over one row, in place.
pub(crate) fn softmax_row<R: Real>(row: &mut [R], kind: Kind) {
    softmax_row_with(row, kind, |v| v, false)
}

/// Whether the softmax sum rounds after every addition: numpy sums bf16 (ml_dtypes) in
/// bf16, but f16 in f32.
fn bf16_sum<T: Float>() -> bool {
    T::DTYPE == kiln_ir::DType::BF16
}

/// [`softmax_row`], rounding the result of every elementwise step with `rt`.
#[inline]
fn softmax_row_with<R: Real>(row: &mut [R], kind: Kind, rt: impl Fn(R) -> R, round_sum: bool) {
    let add = |s: R, v: R| if round_sum { rt(s + v) } else { s + v };
    let mut m = R::NEG_INF;
    let mut arg = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > m || (v.is_nan() && !m.is_nan()) {
            m = v;
            arg = j;
        }
    }
    match kind {
        Kind::Hardmax => {
            for (j, v) in row.iter_mut().enumerate() {
                *v = if j == arg { R::ONE } else { R::ZERO };
            }
        }
        Kind::Softmax => {
            let mut s = R::ZERO;
            for v in row.iter_mut() {
                *v = rt(rt(*v - m).exp());
                s = add(s, *v);
            }
            let s = rt(s);
            for v in row.iter_mut() {
                *v = rt(*v / s);
            }
        }
        Kind::LogSoftmax => {
            let mut s = R::ZERO;
            for &v in row.iter() {
                s = add(s, rt(rt(v - m).exp()));
            }
            let l = rt(rt(s).ln());
            for v in row.iter_mut() {
                *v = rt(rt(*v - m) - l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_along_axis_0_and_last() {
        // [[1, 2], [3, 4]] along axis 0: columns (1,3) and (2,4).
        let x = [1f32, 2., 3., 4.];
        let mut o = [0f32; 4];
        softmax::<f32>(&x, 1, 2, 2, Kind::Softmax, &mut o);
        let a = 1.0 / (1.0 + 2f32.exp());
        for (g, w) in o.iter().zip([a, a, 1. - a, 1. - a]) {
            assert!((g - w).abs() < 1e-6);
        }
        softmax::<f32>(&x, 2, 2, 1, Kind::LogSoftmax, &mut o);
        let l = -(1.0 + 1f32.exp()).ln();
        for (g, w) in o.iter().zip([l, l + 1., l, l + 1.]) {
            assert!((g - w).abs() < 1e-6);
        }
        softmax::<f32>(&[5., 5., 1., 0.], 2, 2, 1, Kind::Hardmax, &mut o);
        assert_eq!(o, [1., 0., 1., 0.]);
    }

    #[test]
    fn softmax_large_values_do_not_overflow() {
        let mut r = [1000f64, 1000.];
        softmax_row(&mut r, Kind::Softmax);
        assert_eq!(r, [0.5, 0.5]);
    }
}
