//! `ImageDecoder`.

use kiln_ir::Op;

use crate::error::KernelError;
use crate::kernel::{BuildCx, Kernel};

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    match op {
        Op::ImageDecoder(_) => Some(Err(KernelError::Unsupported(
            "ImageDecoder: kiln has no image codecs".into(),
        ))),
        _ => None,
    }
}
