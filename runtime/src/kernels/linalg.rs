//! Linear algebra and attention: `MatMul`, `Gemm`, `Einsum`, `Det`, the quantized matmuls
//! and (de)quantizers, ONNX `Attention`/`RotaryEmbedding`/`LinearAttention`/`SwiGLU`/
//! `CausalConvWithState`, and the ONNX Runtime contrib ops kiln's fusions emit (attention,
//! `FusedMatMul`, the fused layer norms, the dynamic-quantization matmuls).
//!
//! Every float matrix product goes through [`gemm_f32`] / [`gemm_f64`] (see [`gemm`]).

use kiln_ir::Op;

use crate::error::KernelError;
use crate::kernel::{BuildCx, Kernel};

mod attention;
mod attention_core;
mod einsum;
mod fused_norm;
mod gemm;
mod matmul;
mod ms_attention;
#[cfg(test)]
mod ort_tests;
mod qmatmul;
mod quant;
mod seq;

/// The f32/f64 GEMM entry points, for other families (convolutions …).
#[allow(unused_imports)]
pub(crate) use gemm::{gemm_f32, gemm_f64};

pub use attention_core::{AttentionCore, Operand};
pub use matmul::{gemm_with_map, matmul_with_epilogue};

type KResult<T> = Result<T, KernelError>;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    matmul::build(op, cx)
        .or_else(|| einsum::build(op, cx))
        .or_else(|| quant::build(op, cx))
        .or_else(|| qmatmul::build(op, cx))
        .or_else(|| attention::build(op, cx))
        .or_else(|| ms_attention::build(op, cx))
        .or_else(|| seq::build(op, cx))
        .or_else(|| fused_norm::build(op, cx))
}
