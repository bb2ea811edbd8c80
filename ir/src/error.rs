use thiserror::Error;

/// Errors raised by the IR: malformed graphs, bad attributes, failed inference.
#[derive(Debug, Error)]
pub enum IrError {
    /// A size computation overflowed (`dims multiply past usize`).
    #[error("too large: {0}")]
    TooLarge(String),
    /// A structurally invalid tensor, attribute or graph.
    #[error("{0}")]
    Invalid(String),
    /// A node's attribute is missing, of the wrong kind, or has a bad value.
    #[error("attribute `{attr}` of {op}: {msg}")]
    Attr {
        op: &'static str,
        attr: &'static str,
        msg: String,
    },
    /// Shape or type inference found inputs an op cannot take.
    #[error("node `{node}` ({op}): {msg}")]
    Infer {
        node: String,
        op: String,
        msg: String,
    },
    /// The verifier found a broken invariant.
    #[error("verifier: {0}")]
    Verify(String),
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
