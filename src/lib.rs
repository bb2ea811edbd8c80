//! kiln: load, optimize, compile and run ONNX models.
//!
//! This crate is the facade over kiln's workspace crates: [`ir`] (the SSA graph, types,
//! tensors, text printer, verifier), [`frontend`] (ONNX protobuf import and export),
//! [`transforms`] (the passes behind the optimization levels), and the runtime behind
//! [`Session`]:
//!
//! ```
//! // The small BERT model that ships with kiln (the `kiln` CLI's embedded default).
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/bert_tiny_eager_opset14.onnx");
//! let mut model = kiln::load(path)?; // import, infer types, verify
//! kiln::optimize(&mut model, 2, &[])?; // -O2: cleanup, folding, transformer fusions
//! let session = kiln::Session::new(model)?; // compile once, run from any thread
//! let ids = |v: Vec<i64>| kiln::ir::Tensor::from_vec(vec![1, 3], v);
//! let out = session.run(vec![
//!     ("input_ids".into(), ids(vec![101, 7, 102])?),
//!     ("attention_mask".into(), ids(vec![1, 1, 1])?),
//!     ("token_type_ids".into(), ids(vec![0, 0, 0])?),
//! ])?;
//! assert_eq!(out[0].1.shape(), &[1, 3, 64]); // last_hidden_state
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Large weights are not copied: tensors stored as ONNX external data stay memory-mapped.

use std::path::Path;

pub use kiln_frontend as frontend;
pub use kiln_ir as ir;
pub use kiln_runtime as runtime;
pub use kiln_transforms as transforms;

pub use kiln_ir::infer::InferStats;
pub use kiln_ir::Model;

pub mod conformance;
pub mod env;
pub mod npz;
pub mod session;
pub mod validate;

pub use session::{random_inputs, Session, SessionError};
#[cfg(feature = "ort")]
pub mod oracle;

/// Errors of the facade: loading, inferring types, verifying.
///
/// Every message is one line. The variants keep their cause as [`std::error::Error::source`],
/// and the message already includes it (print `{}`, not the chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read, or is not an ONNX model kiln can import.
    #[error(transparent)]
    Frontend(#[from] kiln_frontend::FrontendError),

    /// Type inference found a node whose inputs its op cannot take.
    #[error("{origin}: type inference failed: {source}")]
    Infer {
        /// The model's path, or "in-memory model".
        origin: String,
        #[source]
        source: kiln_ir::IrError,
    },

    /// An optimization pass failed, or the level or a pass name is unknown.
    #[error("optimization: {0}")]
    Optimize(String),

    /// The imported graph breaks an IR invariant (a bug in the importer, or a malformed model
    /// that slipped through it).
    #[error("{origin}: the imported graph is invalid: {source}")]
    Verify {
        origin: String,
        #[source]
        source: kiln_ir::IrError,
    },
}

/// Loads the ONNX model at `path`: imports it into the IR (external data is memory-mapped
/// relative to the file's directory, not read), infers the type of every value, and verifies
/// the graph.
///
/// Values whose types cannot be inferred statically stay `None`; that is not an error
/// (see [`analyze`] for the count).
pub fn load(path: impl AsRef<Path>) -> Result<Model, Error> {
    let path = path.as_ref();
    let mut model = kiln_frontend::load_model(path)?;
    analyze_in(&mut model, &path.display().to_string())?;
    Ok(model)
}

/// Like [`load`], for a model held in memory. A model that refers to external data is an
/// error (there is no directory to find it in): load it from its file instead.
pub fn load_bytes(bytes: &[u8]) -> Result<Model, Error> {
    let mut model = kiln_frontend::load_model_bytes(bytes)?;
    analyze_in(&mut model, "in-memory model")?;
    Ok(model)
}

/// What [`load`] does after importing: infers types (merging them with the types the model
/// declares) and verifies the graph. Returns the inference statistics: `untyped` is the number
/// of values, in all graphs, whose type is still unknown.
///
/// For a model imported with [`frontend::import_model`] directly.
pub fn analyze(model: &mut Model) -> Result<InferStats, Error> {
    analyze_in(model, "model")
}

fn analyze_in(model: &mut Model, origin: &str) -> Result<InferStats, Error> {
    let stats = kiln_ir::infer::infer_graph(&mut model.graph).map_err(|source| Error::Infer {
        origin: origin.to_string(),
        source,
    })?;
    kiln_ir::verify::verify(&model.graph).map_err(|source| Error::Verify {
        origin: origin.to_string(),
        source,
    })?;
    Ok(stats)
}

/// Makes every fixed dim of the model's inputs symbolic and re-infers all shapes, for
/// running a model on input shapes other than the ones it was exported with (exporters
/// often fix image height and width though the graph works for any). Types the model
/// declares for intermediate values and outputs are dropped: they were derived from the
/// fixed dims. Symbols are named `INPUT_dK`.
pub fn free_input_dims(model: &mut Model) -> Result<InferStats, Error> {
    let g = &mut model.graph;
    for &i in &g.inputs.clone() {
        let name = g.value(i).name.clone();
        if let Some(kiln_ir::Type::Tensor(tt)) = g.value_mut(i).ty.as_mut() {
            if let Some(shape) = tt.shape.as_mut() {
                for (k, d) in shape.iter_mut().enumerate() {
                    if d.is_known() {
                        *d = kiln_ir::Dim::sym(&format!("{name}_d{k}"));
                    }
                }
            }
        }
    }
    for n in g.node_ids().collect::<Vec<_>>() {
        for o in g.node(n).outputs.clone() {
            g.value_mut(o).ty = None;
        }
    }
    analyze(model)
}

/// Optimizes `model` in place at `level` (0 = as imported, 1 = cleanup and folding, 2 = + transformer
/// fusions, 3 = + Gelu approximated by FastGelu), not
/// running the passes named in `disabled`. Returns the rewrites each pass made.
pub fn optimize(
    model: &mut Model,
    level: u8,
    disabled: &[String],
) -> Result<kiln_transforms::Report, Error> {
    let level = kiln_transforms::Level::from_number(level).ok_or_else(|| {
        Error::Optimize(format!(
            "-O{level} is not implemented yet (levels: 0, 1, 2, 3)"
        ))
    })?;
    let mut opts = kiln_transforms::Options::level(level);
    opts.disabled = disabled.iter().cloned().collect();
    kiln_transforms::optimize(model, &opts).map_err(|e| Error::Optimize(e.to_string()))
}
