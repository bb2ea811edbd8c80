//! Errors of the ONNX frontend. Every message is one line that names what failed (the
//! tensor, the file) and why, so a user can act on it without a debugger.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Errors raised while reading or writing ONNX protobuf.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// The bytes are not a well-formed protobuf message of the expected kind.
    #[error("not an ONNX {kind}: truncated or corrupt protobuf ({detail}) in {origin}")]
    Decode {
        /// What was expected: "model", "tensor" …
        kind: &'static str,
        /// Where the bytes came from: a file path, or "in-memory bytes".
        origin: String,
        /// prost's account of where decoding stopped (`TensorProto.dims: invalid varint`).
        detail: String,
    },

    /// The tensor's `data_type` is not one kiln can hold.
    #[error("tensor `{tensor}`: unsupported data type {code} ({name})")]
    UnsupportedDType {
        tensor: String,
        code: i32,
        /// ONNX's name for the code, or "unknown".
        name: &'static str,
    },

    /// The tensor is malformed: negative dims, data count that does not match its shape,
    /// segments, no data at all …
    #[error("tensor `{tensor}`: {msg}")]
    BadTensor { tensor: String, msg: String },

    /// A size computation overflowed (dims whose product does not fit in `usize`, offsets
    /// past `u64`).
    #[error("tensor `{tensor}`: size overflow: {msg}")]
    TooLarge { tensor: String, msg: String },

    /// External data could not be used: bad location, missing file, short file, wrong length.
    #[error("tensor `{tensor}`: external data `{file}`: {reason}")]
    External {
        tensor: String,
        /// The `location` as written in the model (or the resolved path when that is clearer).
        file: String,
        reason: String,
    },

    /// An I/O failure on a named file.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// "cannot read", "cannot write", "cannot create" …
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model-level problem found by the importer or exporter.
    #[error("invalid ONNX model: {0}")]
    Invalid(String),

    /// A model feature kiln does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// An error raised by the IR while building tensors or graphs.
    #[error(transparent)]
    Ir(#[from] kiln_ir::IrError),
}

impl FrontendError {
    /// A decode error from prost, with prost's fixed prefix removed so the message stays short.
    pub fn decode(kind: &'static str, origin: impl Into<String>, err: &prost::DecodeError) -> Self {
        let full = err.to_string();
        let detail = full
            .strip_prefix("failed to decode Protobuf message: ")
            .unwrap_or(&full)
            .to_string();
        FrontendError::Decode {
            kind,
            origin: origin.into(),
            detail,
        }
    }

    pub fn bad_tensor(tensor: &str, msg: impl Into<String>) -> Self {
        FrontendError::BadTensor {
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }

    pub fn too_large(tensor: &str, msg: impl Into<String>) -> Self {
        FrontendError::TooLarge {
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }

    pub fn external(tensor: &str, file: impl Into<String>, reason: impl Into<String>) -> Self {
        FrontendError::External {
            tensor: tensor.to_string(),
            file: file.into(),
            reason: reason.into(),
        }
    }

    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        FrontendError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = FrontendError> = std::result::Result<T, E>;
