//! ONNX import and export.
