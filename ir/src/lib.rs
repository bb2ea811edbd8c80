//! kiln's intermediate representation.
//!
//! A [`Graph`] is an SSA data-flow graph: every value is defined exactly once, by a graph
//! input, a constant, or one output of one node. Nodes and values live in arenas addressed
//! by small `Copy` ids ([`NodeId`], [`ValueId`]). Ops are typed ([`Op`]): every opset quirk
//! has been resolved by the frontend, so each op has one meaning.

pub mod dtype;
pub mod error;
pub mod tensor;

pub use dtype::DType;
pub use error::{IrError, Result};
pub use tensor::{AlignedBuf, Element, Storage, Tensor, TensorData};
pub mod attr;
pub mod graph;
pub mod infer;
pub mod model;
pub mod op;
pub mod print;
pub mod shape;
pub mod verify;

pub use attr::{Attr, AttrMap, AttrValue};
pub use graph::{Graph, Node, NodeId, Value, ValueDef, ValueId};
pub use model::Model;
pub use op::Op;
pub use shape::{Dim, Shape, TensorType, Type};
