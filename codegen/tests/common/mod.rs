//! Graph-building helpers shared by the lowering tests.

use kiln_ir::{DType, Dim, Graph, Op, Type, ValueId};

/// Adds a one-output node named after its output; returns the output.
pub fn node(g: &mut Graph, op: Op, inputs: &[ValueId], out: &str) -> ValueId {
    let n = g.add_node(out, op, inputs.iter().map(|&v| Some(v)).collect(), &[out]);
    g.node(n).outputs[0]
}

/// Adds an f32 graph input of fixed dims.
pub fn input(g: &mut Graph, name: &str, dims: &[i64]) -> ValueId {
    let shape = dims.iter().map(|&d| Dim::from(d)).collect();
    g.add_input(name, Some(Type::tensor(DType::F32, shape)))
}
