//! Structural verifier: SSA definitions, acyclicity, subgraph references, unique names.
//! Type consistency is checked by [`crate::infer::check_types`], which re-infers every node.

use std::collections::HashSet;

use crate::error::IrError;
use crate::graph::{Graph, ValueDef, ValueId};

/// Checks the structural invariants of `g` and of every subgraph in it.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    verify_in(g, None)
}

fn verify_in(g: &Graph, parent: Option<&Graph>) -> Result<(), IrError> {
    let bad = |msg: String| Err(IrError::Verify(format!("graph `{}`: {msg}", g.name)));
    let defined = |v: ValueId| -> Result<(), IrError> {
        if v.index() >= g.num_values() {
            return Err(IrError::Verify(format!(
                "graph `{}`: reads unknown value {v:?}",
                g.name
            )));
        }
        match &g.value(v).def {
            ValueDef::Node { node, index } => {
                if !g.is_live(*node) {
                    return Err(IrError::Verify(format!(
                        "graph `{}`: value `{}` is read but its node was removed",
                        g.name,
                        g.value(v).name
                    )));
                }
                if g.node(*node).outputs.get(*index) != Some(&v) {
                    return Err(IrError::Verify(format!(
                        "graph `{}`: value `{}` claims to be output {index} of `{}`, which disagrees",
                        g.name,
                        g.value(v).name,
                        g.node(*node).name
                    )));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    };
    for &i in &g.inputs {
        if i.index() >= g.num_values()
            || !matches!(
                g.value(i).def,
                ValueDef::Input | ValueDef::InputWithDefault(_)
            )
        {
            return bad(format!("input {i:?} is not defined as an input"));
        }
    }
    for v in g.value_ids() {
        if let ValueDef::Outer(o) = g.value(v).def {
            match parent {
                None => {
                    return bad(format!(
                        "value `{}` refers to an enclosing graph, but there is none",
                        g.value(v).name
                    ))
                }
                Some(p) if o.index() >= p.num_values() => {
                    return bad(format!(
                        "value `{}` refers to an unknown outer value",
                        g.value(v).name
                    ))
                }
                _ => {}
            }
        }
    }
    let mut names = HashSet::new();
    for n in g.node_ids() {
        let node = g.node(n);
        for i in node.inputs.iter().flatten() {
            defined(*i)?;
        }
        for (k, &o) in node.outputs.iter().enumerate() {
            if g.value(o).def != (ValueDef::Node { node: n, index: k }) {
                return bad(format!(
                    "output {k} of node `{}` is not defined by it",
                    node.name
                ));
            }
        }
        for sg in node.op.subgraphs() {
            verify_in(sg, Some(g))?;
        }
    }
    for &o in &g.outputs {
        defined(o)?;
    }
    // Names of live values must be unique: the exporter writes them as-is.
    for v in g.value_ids() {
        let val = g.value(v);
        let live = match val.def {
            ValueDef::Node { node, .. } => g.is_live(node),
            _ => true,
        };
        if live && !val.name.is_empty() && !names.insert(val.name.as_str()) {
            return bad(format!("value name `{}` is defined twice", val.name));
        }
    }
    g.topo_order()?;
    Ok(())
}
