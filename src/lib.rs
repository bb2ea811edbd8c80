//! kiln: load, optimize, quantize, compile and run ONNX models.

pub mod env;
#[cfg(feature = "ort")]
pub mod oracle;
