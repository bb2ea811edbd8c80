use crate::attr::{Attr, AttrMap};
use crate::graph::Graph;

/// An op kiln has no typed struct for (another domain, or a newer ONNX op). It keeps its
/// raw attributes so that a model containing it still imports, prints and exports; only
/// executing it is an error.
#[derive(Clone, Debug, PartialEq)]
pub struct Opaque {
    pub domain: String,
    pub op_type: String,
    /// The domain's opset version the model imports (needed to export it faithfully).
    pub version: i64,
    pub attrs: AttrMap,
}

impl Opaque {
    pub(super) fn graphs(&self) -> Vec<&Graph> {
        let mut out = Vec::new();
        for a in self.attrs.values() {
            match a {
                Attr::Graph(g) => out.push(g),
                Attr::Graphs(gs) => out.extend(gs.iter()),
                _ => {}
            }
        }
        out
    }

    pub(super) fn graphs_mut(&mut self) -> Vec<&mut Graph> {
        let mut out = Vec::new();
        for a in self.attrs.values_mut() {
            match a {
                Attr::Graph(g) => out.push(g),
                Attr::Graphs(gs) => out.extend(gs.iter_mut()),
                _ => {}
            }
        }
        out
    }
}
