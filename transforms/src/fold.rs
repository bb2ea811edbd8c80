//! Folding: nodes whose inputs are all constant are evaluated once (by kiln's own runtime),
//! and Reshapes whose target is computed from shapes get a constant target.

use std::collections::BTreeMap;

use kiln_ir::{Dim, Graph, IrError, NodeId, Op, Tensor, ValueDef};
use kiln_runtime::{RunCx, Value};

use crate::{Log, Pass};

/// Evaluates nodes whose inputs are all constants.
pub struct ConstantFolding {
    /// A folded output larger than this many bytes (and larger than the node's inputs) is
    /// left to run time, so folding never bloats the model (`ConstantOfShape`, `Expand`).
    pub max_growth_bytes: usize,
}

impl Default for ConstantFolding {
    fn default() -> Self {
        ConstantFolding {
            max_growth_bytes: 1 << 20,
        }
    }
}

fn never_fold(op: &Op) -> bool {
    matches!(
        op,
        Op::RandomNormal(_)
            | Op::RandomNormalLike(_)
            | Op::RandomUniform(_)
            | Op::RandomUniformLike(_)
            | Op::Bernoulli(_)
            | Op::Multinomial(_)
            | Op::Opaque(_)
    ) || !op.subgraphs().is_empty()
}

/// Runs node `id` of `g` on its constant inputs.
fn evaluate(g: &Graph, id: NodeId) -> Option<Vec<Tensor>> {
    let node = g.node(id);
    let mut mini = Graph::new("fold");
    let mut inputs = Vec::with_capacity(node.inputs.len());
    for i in &node.inputs {
        inputs.push(match i {
            Some(v) => Some(mini.add_const(g.value(*v).name.clone(), g.const_value(*v)?.clone())),
            None => None,
        });
    }
    let names: Vec<String> = (0..node.outputs.len()).map(|k| format!("out{k}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let n = mini.add_node(node.name.clone(), node.op.clone(), inputs, &refs);
    for (k, &o) in node.outputs.iter().enumerate() {
        let mo = mini.node(n).outputs[k];
        mini.value_mut(mo).ty = g.value(o).ty.clone();
    }
    mini.outputs = mini.node(n).outputs.clone();
    let plan = kiln_codegen::compile_graph(&mini, &BTreeMap::new()).ok()?;
    let outs = plan.run_positional(Vec::new(), &mut RunCx::new()).ok()?;
    outs.into_iter()
        .map(|v| match v {
            Value::Tensor(t) => Some(t),
            _ => None,
        })
        .collect()
}

impl Pass for ConstantFolding {
    fn name(&self) -> &'static str {
        "constant-folding"
    }
    fn run(&self, g: &mut Graph, _log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        for id in g.topo_order()? {
            let node = g.node(id);
            if never_fold(&node.op)
                || node
                    .inputs
                    .iter()
                    .flatten()
                    .any(|&v| g.const_value(v).is_none())
            {
                continue;
            }
            let in_bytes: usize = node
                .inputs
                .iter()
                .flatten()
                .filter_map(|&v| g.const_value(v))
                .map(|t| t.bytes().len())
                .sum();
            let Some(outs) = evaluate(g, id) else {
                continue;
            };
            let out_bytes: usize = outs.iter().map(|t| t.bytes().len()).sum();
            if out_bytes > self.max_growth_bytes && out_bytes > in_bytes {
                continue;
            }
            let olds = g.node(id).outputs.clone();
            g.remove_node(id);
            for (old, t) in olds.into_iter().zip(outs) {
                let name = g.value(old).name.clone();
                let c = g.add_const(name, t);
                g.replace_all_uses(old, c);
            }
            n += 1;
        }
        Ok(n)
    }
}

/// A Reshape whose target shape is computed at run time (`Shape → Gather → Concat`) but whose
/// symbolic value is known gets a constant target: known dims as numbers, dims equal to the
/// input's at the same position as 0 (copy), at most one other as -1. The shape arithmetic
/// then goes dead.
pub struct ReshapeFolding;

impl Pass for ReshapeFolding {
    fn name(&self) -> &'static str {
        "reshape-folding"
    }
    fn run(&self, g: &mut Graph, _log: &mut Log) -> Result<usize, IrError> {
        let (_, syms) = kiln_ir::infer::infer_graph_symbols(g)?;
        let mut n = 0;
        for id in g.node_ids().collect::<Vec<_>>() {
            let node = g.node(id);
            let Op::Reshape(r) = &node.op else { continue };
            let (Some(Some(x)), Some(Some(s))) = (node.inputs.first(), node.inputs.get(1)) else {
                continue;
            };
            let (x, s) = (*x, *s);
            if !matches!(g.value(s).def, ValueDef::Node { .. }) {
                continue;
            }
            let (Some(target), Some(in_shape)) = (
                syms.get(&s),
                g.value(x)
                    .ty
                    .as_ref()
                    .and_then(|t| t.as_tensor())
                    .and_then(|t| t.shape.clone()),
            ) else {
                continue;
            };
            let Some(c) = constant_target(target, &in_shape, r.allowzero) else {
                continue;
            };
            let name = g.unique_name(&format!("{}/shape", g.node(id).name));
            let len = c.len();
            let cv = g.add_const(
                name,
                Tensor::from_vec(vec![len], c).expect("length matches"),
            );
            g.node_mut(id).inputs[1] = Some(cv);
            n += 1;
        }
        Ok(n)
    }
}

fn constant_target(target: &[Dim], input: &[Dim], allowzero: bool) -> Option<Vec<i64>> {
    let mut out = Vec::with_capacity(target.len());
    let mut free = false;
    for (i, d) in target.iter().enumerate() {
        out.push(match d.known() {
            // The run-time target holds the same number, 0 included (a copy when !allowzero).
            Some(v) => v,
            None if !allowzero && input.get(i) == Some(d) => 0,
            None if !free => {
                free = true;
                -1
            }
            None => return None,
        });
    }
    // The element counts agree (the original target is valid), so the single -1 resolves to
    // the one symbolic dim left.
    Some(out)
}
