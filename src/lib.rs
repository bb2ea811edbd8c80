//! kiln: load, optimize, quantize, compile and run ONNX models.
