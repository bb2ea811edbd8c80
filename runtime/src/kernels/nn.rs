//! Neural-network ops beyond the core CNN kernels of `nn_core`: resampling and geometry
//! (`resample`), the rest of the convolution/pool/normalization family (`conv_extra`) and
//! the recurrent cells (`recurrent`).

use kiln_ir::Op;

use crate::error::KernelError;
use crate::kernel::{BuildCx, Kernel};

mod conv_extra;
mod recurrent;
mod resample;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    resample::build(op, cx)
        .or_else(|| conv_extra::build(op, cx))
        .or_else(|| recurrent::build(op, cx))
}
