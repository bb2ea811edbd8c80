//! ONNX import and export.
//!
//! - [`proto`]: the ONNX protobuf schema (prost types generated from the vendored
//!   `proto/onnx.proto`) and decode helpers.
//! - [`tensor`]: `TensorProto` ⇄ [`kiln_ir::Tensor`], and [`tensor::ExternalWriter`] for
//!   writing large tensors to an external-data file.
//! - [`external`]: resolving and memory-mapping external data safely.
//! - [`error`]: the error type, [`FrontendError`].

pub mod error;
pub mod external;
pub mod proto;
pub mod tensor;

pub use error::FrontendError;
pub use external::{ExternalData, MmapStorage};
pub use tensor::{read_tensor_file, tensor_from_proto, tensor_to_proto, ExternalWriter};
pub mod data;
pub mod import;
pub mod sparse;
mod upgrade;

pub use import::{import_model, load_model, load_model_bytes};
mod downgrade;
pub mod export;

pub use data::{read_data_file, DataValue};
pub use export::{export_model, save_model, ExportOptions, SaveReport};
