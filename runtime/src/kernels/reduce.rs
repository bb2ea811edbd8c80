//! Reductions and ops that work along axes: `ReduceX`, `ArgMax`/`ArgMin`, `TopK`,
//! `CumSum`/`CumProd`, `Softmax`/`LogSoftmax`/`Hardmax`, and the normalizations
//! (`LpNormalization`, `MeanVarianceNormalization`, `LayerNormalization`,
//! `RMSNormalization`, `GroupNormalization`).
//!
//! Kernels are generic over the element type and monomorphized per dtype; float kernels
//! compute in the element's [`num::Real`] (`f16`/`bf16` in `f32`).

use kiln_ir::Op;

use crate::error::KernelError;
use crate::kernel::{BuildCx, Kernel};

mod axes;
pub(crate) use axes::sum_f32;
pub(crate) mod norm;
pub(crate) mod num;
pub(crate) mod softmax;

type KResult<T> = Result<T, KernelError>;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    axes::build(op, cx)
        .or_else(|| softmax::build(op, cx))
        .or_else(|| norm::build(op, cx))
}

/// Splits `shape` around `axis` into (outer, axis size, inner) element counts.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}
