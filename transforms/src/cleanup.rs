//! Cleanup passes: dead code, duplicates, and ops that compute their input.

use std::collections::HashMap;

use kiln_ir::{Graph, IrError, NodeId, Op, ValueId};

use crate::{Log, Pass};

/// Replaces `out` by `src` everywhere, unless `out` is a graph output (its name is part of
/// the model's interface). Returns whether it did.
fn forward(g: &mut Graph, out: ValueId, src: ValueId) -> bool {
    if g.outputs.contains(&out) {
        return false;
    }
    g.replace_all_uses(out, src);
    true
}

/// `y = Identity(x)`: readers of `y` read `x`.
pub struct IdentityElimination;

impl Pass for IdentityElimination {
    fn name(&self) -> &'static str {
        "identity-elimination"
    }
    fn run(&self, g: &mut Graph, _log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        for id in g.node_ids().collect::<Vec<_>>() {
            let node = g.node(id);
            if let (Op::Identity(_), [Some(x)], [y]) =
                (&node.op, node.inputs.as_slice(), node.outputs.as_slice())
            {
                let (x, y) = (*x, *y);
                if forward(g, y, x) {
                    g.remove_node(id);
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Inference-mode Dropout (no `training_mode`, or a constant false) whose mask nobody reads.
pub struct DropoutElimination;

impl Pass for DropoutElimination {
    fn name(&self) -> &'static str {
        "dropout-elimination"
    }
    fn run(&self, g: &mut Graph, _log: &mut Log) -> Result<usize, IrError> {
        let uses = g.use_counts();
        let mut n = 0;
        for id in g.node_ids().collect::<Vec<_>>() {
            let node = g.node(id);
            let Op::Dropout(_) = node.op else { continue };
            let training = node.inputs.get(2).copied().flatten();
            let inference = match training {
                None => true,
                Some(t) => g
                    .const_value(t)
                    .and_then(|t| t.to_i64_vec())
                    .is_some_and(|v| v.iter().all(|&x| x == 0)),
            };
            let mask_unused = node.outputs.get(1).is_none_or(|m| uses[m.index()] == 0);
            let (Some(Some(x)), Some(&y)) = (node.inputs.first(), node.outputs.first()) else {
                continue;
            };
            let x = *x;
            if inference && mask_unused && forward(g, y, x) {
                g.remove_node(id);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// `Cast` to the type the input already has.
pub struct CastElimination;

impl Pass for CastElimination {
    fn name(&self) -> &'static str {
        "cast-elimination"
    }
    fn run(&self, g: &mut Graph, _log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        for id in g.node_ids().collect::<Vec<_>>() {
            let node = g.node(id);
            let Op::Cast(c) = &node.op else { continue };
            let (Some(Some(x)), Some(&y)) = (node.inputs.first(), node.outputs.first()) else {
                continue;
            };
            let x = *x;
            let same = g
                .value(x)
                .ty
                .as_ref()
                .and_then(|t| t.as_tensor())
                .is_some_and(|t| t.dtype == c.to);
            if same && forward(g, y, x) {
                g.remove_node(id);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Ops whose results differ between two evaluations of the same inputs.
fn nondeterministic(op: &Op) -> bool {
    matches!(
        op,
        Op::RandomNormal(_)
            | Op::RandomNormalLike(_)
            | Op::RandomUniform(_)
            | Op::RandomUniformLike(_)
            | Op::Bernoulli(_)
            | Op::Multinomial(_)
            | Op::Dropout(_)
    )
}

/// Common-subexpression elimination: a node equal to an earlier one (same op, attributes
/// and inputs) is dropped and its outputs read from the earlier one. Small constants of the
/// same type and bytes count as the same input: the fusions and the exporters write one
/// copy of a `0`, a `-inf` or an axes list per use, which would otherwise keep apart the
/// nodes that read them (the attention mask's `Where`, once per layer).
pub struct Cse;

/// Constants up to this size are compared by content.
const CSE_CONST_BYTES: usize = 4096;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }
    fn run(&self, g: &mut Graph, _log: &mut Log) -> Result<usize, IrError> {
        // Each small constant stands for the first one with its dtype, shape and bytes.
        let mut by_content: HashMap<(String, Vec<usize>, Vec<u8>), ValueId> = HashMap::new();
        let mut canon: HashMap<ValueId, ValueId> = HashMap::new();
        for v in g.value_ids() {
            if let Some(t) = g
                .const_value(v)
                .filter(|t| t.bytes().len() <= CSE_CONST_BYTES)
            {
                let key = (
                    t.dtype().to_string(),
                    t.shape().to_vec(),
                    t.bytes().to_vec(),
                );
                canon.insert(v, *by_content.entry(key).or_insert(v));
            }
        }
        let mut seen: HashMap<String, NodeId> = HashMap::new();
        let mut n = 0;
        for id in g.topo_order()? {
            let node = g.node(id);
            if nondeterministic(&node.op) || !node.op.subgraphs().is_empty() {
                continue;
            }
            let inputs: Vec<Option<ValueId>> = node
                .inputs
                .iter()
                .map(|i| i.map(|v| canon.get(&v).copied().unwrap_or(v)))
                .collect();
            let key = format!("{:?}|{:?}", node.op, inputs);
            match seen.get(&key) {
                Some(&first) => {
                    let outs: Vec<(ValueId, ValueId)> = node
                        .outputs
                        .iter()
                        .copied()
                        .zip(g.node(first).outputs.iter().copied())
                        .collect();
                    if outs.iter().any(|(o, _)| g.outputs.contains(o)) {
                        continue;
                    }
                    for (o, f) in outs {
                        g.replace_all_uses(o, f);
                    }
                    g.remove_node(id);
                    n += 1;
                }
                None => {
                    seen.insert(key, id);
                }
            }
        }
        Ok(n)
    }
}

/// Dead-code elimination: nodes none of whose outputs is read or returned.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn run(&self, g: &mut Graph, _log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        loop {
            let uses = g.use_counts();
            let dead: Vec<NodeId> = g
                .node_ids()
                .filter(|&id| g.node(id).outputs.iter().all(|o| uses[o.index()] == 0))
                .collect();
            if dead.is_empty() {
                return Ok(n);
            }
            for id in dead {
                g.remove_node(id);
                n += 1;
            }
        }
    }
}
