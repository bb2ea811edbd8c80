//! One kernel per op, grouped by family (the same families as shape inference). Each
//! family has `fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>>`
//! answering `None` for ops outside it. Control flow (`If`, `Loop`, `Scan`, `SequenceMap`)
//! needs compiled subgraphs and is built by `kiln-codegen` from [`control`]'s kernels.

use kiln_ir::Op;

use crate::error::KernelError;
use crate::kernel::{BuildCx, Kernel};

pub mod control;
#[macro_use]
pub mod dispatch;
mod elementwise;
mod linalg;
mod misc;
mod nn;
mod nn_core;
pub(crate) mod par;
mod reduce;
mod sequence;
mod shape_ops;
pub mod util;

pub use elementwise::fused::{FusedMap, MapEpilogue, MapOp, MapProgram, RowMap};
pub use linalg::{gemm_with_map, matmul_with_epilogue, AttentionCore, Operand};

/// Channel-blocked (NCHWc) convolution and pooling kernels, which lowering chooses for
/// chains of convolutions (`kiln-codegen`'s layout choice).
pub mod nchwc {
    pub use super::nn_core::conv::nchwc::{
        blocked_shape, build, from_blocked, preferred, role, to_blocked, Role, BLOCK,
    };
}

/// Builds the kernel for `op`. Errors with `Unsupported` when kiln has none.
pub fn build(op: &Op, cx: &BuildCx) -> Result<Box<dyn Kernel>, KernelError> {
    let families: [fn(&Op, &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>>; 8] = [
        elementwise::build,
        shape_ops::build,
        reduce::build,
        linalg::build,
        nn::build,
        nn_core::build,
        sequence::build,
        misc::build,
    ];
    for f in families {
        if let Some(k) = f(op, cx) {
            return k;
        }
    }
    Err(KernelError::Unsupported(format!(
        "no kernel for {}",
        describe(op)
    )))
}

fn describe(op: &Op) -> String {
    if op.domain().is_empty() {
        op.op_type().to_string()
    } else {
        format!("{}.{}", op.domain(), op.op_type())
    }
}
