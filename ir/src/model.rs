//! A model: the main graph plus what ONNX records around it.

use std::collections::BTreeMap;

use crate::graph::Graph;

/// A model as kiln holds it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Model {
    pub graph: Graph,
    /// Opset version per domain (`""` is ONNX's default domain).
    pub opsets: BTreeMap<String, i64>,
    pub ir_version: i64,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: i64,
    pub doc_string: String,
    pub metadata: Vec<(String, String)>,
}

impl Model {
    /// Opset version of ONNX's default domain.
    pub fn onnx_opset(&self) -> i64 {
        self.opsets.get("").copied().unwrap_or(0)
    }
}
