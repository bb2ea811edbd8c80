use thiserror::Error;

/// Why a kernel could not be built or could not run.
#[derive(Debug, Error)]
pub enum KernelError {
    /// kiln has no kernel for this op with these types or attributes.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The inputs are invalid for the op (shapes that do not broadcast, out-of-range indices …).
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for KernelError {
    fn from(s: String) -> Self {
        KernelError::Invalid(s)
    }
}

impl From<&str> for KernelError {
    fn from(s: &str) -> Self {
        KernelError::Invalid(s.to_string())
    }
}

impl From<kiln_ir::IrError> for KernelError {
    fn from(e: kiln_ir::IrError) -> Self {
        KernelError::Invalid(e.to_string())
    }
}

/// Errors of a model run.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The caller's inputs do not match the model: a wrong or missing name, dtype, rank or dim.
    #[error("input error: {0}")]
    Input(String),
    /// A kernel failed.
    #[error("node `{node}` ({op}): {source}")]
    Kernel {
        node: String,
        op: String,
        #[source]
        source: KernelError,
    },
}
