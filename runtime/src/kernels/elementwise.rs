//! Elementwise ops: unary maps and activations, broadcasting binary and variadic ops,
//! comparisons and logic, `Where`, `Clip`, `Cast`/`CastLike`, `Identity`, and the
//! com.microsoft Gelu family.
//!
//! Every kernel dispatches on the dtype once per run and then runs a loop monomorphized
//! for that element type (see [`num`] for the arithmetic semantics and [`broadcast`] for
//! the iteration).

use std::borrow::Cow;

use kiln_ir::{DType, Element, Op, Tensor};

use crate::error::KernelError;
use crate::kernel::{tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

mod binary;
mod broadcast;
mod cast;
pub(crate) mod fused;
mod num;
mod unary;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    if let Op::Identity(_) = op {
        return Some(Ok(Box::new(Identity)));
    }
    unary::build(op)
        .or_else(|| binary::build(op))
        .or_else(|| cast::build(op))
        .map(Ok)
}

/// `Identity`: passes any value (tensor, sequence, optional) through. Cloning a tensor
/// shares its buffer.
struct Identity;

impl Kernel for Identity {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        match inputs.first().copied().flatten() {
            Some(v) => Ok(vec![v.clone()]),
            None => Err("Identity input 0 is required".into()),
        }
    }
}

/// The elements of `t` as `T` (in place when aligned). Bool tensors read as `u8`.
pub(crate) fn view<T: Element>(t: &Tensor) -> Result<Cow<'_, [T]>, KernelError> {
    let ok = T::DTYPE == t.dtype() || (t.dtype() == DType::Bool && T::DTYPE == DType::U8);
    if !ok {
        return Err(KernelError::Invalid(format!(
            "expected a {} tensor, got {}",
            T::DTYPE,
            t.dtype()
        )));
    }
    match bytemuck::try_cast_slice::<u8, T>(t.bytes()) {
        Ok(s) => Ok(Cow::Borrowed(s)),
        Err(_) => Ok(Cow::Owned(bytemuck::pod_collect_to_vec(t.bytes()))),
    }
}

/// A new tensor of `dtype` (whose elements are stored as `T`) filled by `fill`, which must
/// write every element (the buffer is not cleared first).
pub(crate) fn new_tensor<T: Element>(
    cx: &mut RunCx,
    dtype: DType,
    shape: Vec<usize>,
    fill: impl FnOnce(&mut [T]),
) -> Result<Tensor, KernelError> {
    debug_assert_eq!(dtype.bits(), 8 * std::mem::size_of::<T>());
    cx.tensor_bytes_dirty(dtype, shape, |b| fill(bytemuck::cast_slice_mut(b)))
}

pub(crate) fn unsupported(op: &str, dt: DType) -> KernelError {
    KernelError::Unsupported(format!("{op} on {dt} tensors"))
}

/// The input tensors `0..n` (all required).
pub(crate) fn tensors<'a>(
    inputs: &[Option<&'a Value>],
    n: usize,
) -> Result<Vec<&'a Tensor>, KernelError> {
    (0..n).map(|i| tensor_input(inputs, i)).collect()
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Running one op on tensors, and numpy as an oracle.

    use super::*;
    use kiln_ir::Graph;

    pub fn run_op(op: Op, inputs: &[Option<Tensor>]) -> Result<Vec<Tensor>, KernelError> {
        let g = Graph::default();
        let cx = BuildCx {
            input_types: vec![],
            const_inputs: vec![],
            output_types: vec![],
            graph: &g,
        };
        let k = build(&op, &cx).expect("op of the elementwise family")?;
        let vals: Vec<Option<Value>> = inputs
            .iter()
            .map(|t| t.clone().map(Value::Tensor))
            .collect();
        let refs: Vec<Option<&Value>> = vals.iter().map(|v| v.as_ref()).collect();
        let mut rcx = RunCx::new();
        let out = k.run(&refs, &mut rcx)?;
        Ok(out
            .into_iter()
            .map(|v| v.into_tensor().expect("tensor output"))
            .collect())
    }

    /// Runs a built kernel on tensors; its first output.
    pub fn run_kernel(k: &dyn Kernel, inputs: &[Tensor]) -> Tensor {
        let vals: Vec<Value> = inputs.iter().cloned().map(Value::Tensor).collect();
        let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
        k.run(&refs, &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap()
    }

    pub fn run1(op: Op, inputs: &[Tensor]) -> Tensor {
        let ins: Vec<Option<Tensor>> = inputs.iter().cloned().map(Some).collect();
        run_op(op, &ins).unwrap().remove(0)
    }

    pub fn t<T: Element>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Evaluates a numpy expression printing a flat list of numbers; `None` when numpy
    /// is not available (the venv is not set up).
    pub fn numpy(expr: &str) -> Option<Vec<f64>> {
        let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/python");
        if !py.exists() {
            eprintln!("numpy oracle unavailable: {} missing", py.display());
            return None;
        }
        let code = format!(
            "import numpy as np, warnings\nwarnings.simplefilter('ignore')\nimport math\nr = np.asarray({expr}).astype(np.float64).ravel()\nprint(' '.join(repr(float(x)) for x in r))"
        );
        let out = std::process::Command::new(py)
            .arg("-c")
            .arg(&code)
            .output()
            .ok()?;
        assert!(
            out.status.success(),
            "numpy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .map(|s| s.parse::<f64>().unwrap())
                .collect(),
        )
    }

    /// Runs a python snippet whose last line prints whitespace-separated tokens.
    pub fn python(code: &str) -> Option<Vec<String>> {
        let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/python");
        if !py.exists() {
            eprintln!("python oracle unavailable: {} missing", py.display());
            return None;
        }
        let out = std::process::Command::new(py)
            .arg("-c")
            .arg(code)
            .output()
            .ok()?;
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .map(String::from)
                .collect(),
        )
    }

    pub fn close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let ok = if w.is_nan() {
                g.is_nan()
            } else if w.is_infinite() {
                g == w
            } else {
                (g - w).abs() <= 1e-6 + 1e-5 * w.abs()
            };
            assert!(ok, "{what}: element {i}: got {g}, want {w}");
        }
    }
}
