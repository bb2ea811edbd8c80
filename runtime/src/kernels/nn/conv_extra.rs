//! The rest of the convolution / pool / normalization family: ConvTranspose, DeformConv,
//! ConvInteger, QLinearConv, LpPool, InstanceNormalization, LRN and BatchNormalization in
//! training mode (the inference form is `nn_core`'s). f16/bf16/f32/f64 are computed in f64.

use kiln_ir::Op;

use crate::error::KernelError;
use crate::kernel::{BuildCx, Kernel};

mod common;
mod deform;
mod pool_norm;
mod quant;
mod transpose;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    Some(Ok(match op {
        Op::ConvTranspose(c) => Box::new(transpose::ConvTransposeK(c.clone())),
        Op::DeformConv(c) => Box::new(deform::DeformConvK(c.clone())),
        Op::ConvInteger(c) => Box::new(quant::ConvIntegerK(c.clone())),
        Op::QLinearConv(c) => Box::new(quant::QLinearConvK(c.clone())),
        Op::LpPool(p) => Box::new(pool_norm::LpPoolK(p.clone())),
        Op::InstanceNormalization(p) => Box::new(pool_norm::InstanceNormK(p.clone())),
        Op::LRN(p) => Box::new(pool_norm::LrnK(p.clone())),
        // Inference BatchNormalization is left to nn_core.
        Op::BatchNormalization(b) if b.training_mode => {
            Box::new(pool_norm::BatchNormTrainK(b.clone()))
        }
        _ => return None,
    }))
}
