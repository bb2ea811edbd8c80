//! Small helpers that fusion rules use to read a pattern off the graph: who produces a
//! value, whether an intermediate is private to the pattern, what a constant holds.

use kiln_ir::{DType, Dim, Graph, NodeId, Op, Tensor, Type, ValueId};

/// Use counts of the graph's values, refreshed after every rewrite.
pub(crate) struct Uses(Vec<u32>);

impl Uses {
    pub(crate) fn of(g: &Graph) -> Uses {
        Uses(g.use_counts())
    }

    /// How many times `v` is read (node inputs, captures, graph outputs).
    pub(crate) fn count(&self, v: ValueId) -> u32 {
        self.0.get(v.index()).copied().unwrap_or(0)
    }
}

/// `v` is read exactly `n` times and is not a graph output: a pattern that reads it `n`
/// times may delete it.
pub(crate) fn private(g: &Graph, uses: &Uses, v: ValueId, n: u32) -> bool {
    uses.count(v) == n && !g.outputs.contains(&v)
}

/// The live node that defines `v`.
pub(crate) fn producer(g: &Graph, v: ValueId) -> Option<NodeId> {
    g.producer(v).filter(|&n| g.is_live(n))
}

/// The node producing `v` when its op is accepted by `f`, with its present inputs.
pub(crate) fn produced_by(
    g: &Graph,
    v: ValueId,
    f: impl Fn(&Op) -> bool,
) -> Option<(NodeId, Vec<ValueId>)> {
    let n = producer(g, v)?;
    let node = g.node(n);
    if !f(&node.op) || node.outputs.first() != Some(&v) {
        return None;
    }
    let ins: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
    if ins.len() != node.inputs.len() {
        return None;
    }
    Some((n, ins))
}

/// The first output of node `n`.
pub(crate) fn out0(g: &Graph, n: NodeId) -> ValueId {
    g.node(n).outputs[0]
}

/// Of a binary node's two inputs, the one that is not `v` (`None` if `v` is not an input).
pub(crate) fn other(ins: &[ValueId], v: ValueId) -> Option<ValueId> {
    match ins {
        [a, b] if *a == v => Some(*b),
        [a, b] if *b == v => Some(*a),
        _ => None,
    }
}

/// The nodes reading `v`, in arena order.
pub(crate) fn readers(g: &Graph, v: ValueId) -> Vec<NodeId> {
    g.node_ids()
        .filter(|&n| g.node(n).inputs.iter().flatten().any(|&i| i == v))
        .collect()
}

/// The only node reading `v` when `v` is read once (and is not a graph output).
pub(crate) fn sole_reader(g: &Graph, uses: &Uses, v: ValueId) -> Option<NodeId> {
    if !private(g, uses, v, 1) {
        return None;
    }
    readers(g, v).into_iter().next()
}

/// The value of a one-element floating-point constant.
pub(crate) fn scalar(g: &Graph, v: ValueId) -> Option<f64> {
    let t = g.const_value(v)?;
    if t.len() != 1 || !t.dtype().is_float() {
        return None;
    }
    t.to_f64_vec()?.first().copied()
}

/// `v` is a one-element float constant close to `want` (relative 1e-4: exporters write
/// `1/√2` and `√(2/π)` with float32 rounding).
pub(crate) fn is_scalar(g: &Graph, v: ValueId, want: f64) -> bool {
    scalar(g, v).is_some_and(|c| (c - want).abs() <= 1e-4 * want.abs().max(1e-30))
}

/// The tensor type of `v`, when known.
pub(crate) fn tensor_type(g: &Graph, v: ValueId) -> Option<(DType, Option<Vec<Dim>>)> {
    let t = g.value(v).ty.as_ref()?.as_tensor()?;
    Some((t.dtype, t.shape.clone()))
}

/// The element type of `v`, when known.
pub(crate) fn dtype(g: &Graph, v: ValueId) -> Option<DType> {
    tensor_type(g, v).map(|t| t.0)
}

/// The shape of `v`, when its rank is known.
pub(crate) fn shape(g: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    tensor_type(g, v).and_then(|t| t.1)
}

/// `v` is a tensor of one of the float types ONNX Runtime computes in (f32, f16, bf16, f64).
pub(crate) fn is_float(g: &Graph, v: ValueId) -> bool {
    matches!(
        dtype(g, v),
        Some(DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    )
}

/// `v` is 1-D of exactly `len` elements (compared symbolically).
pub(crate) fn is_vector_of(g: &Graph, v: ValueId, len: &Dim) -> bool {
    matches!(shape(g, v).as_deref(), Some([d]) if d == len)
}

/// `v` is a 1-D constant of `len` elements.
pub(crate) fn const_vector_of<'g>(g: &'g Graph, v: ValueId, len: &Dim) -> Option<&'g Tensor> {
    let t = g.const_value(v)?;
    (t.rank() == 1 && len.known() == Some(t.shape()[0] as i64)).then_some(t)
}

/// The last dim of `v`.
pub(crate) fn last_dim(g: &Graph, v: ValueId) -> Option<Dim> {
    shape(g, v)?.last().cloned()
}

/// A name for a new node built from `base`, unique among the graph's node names.
pub(crate) fn node_name(g: &Graph, base: &str) -> String {
    let used: std::collections::HashSet<&str> =
        g.node_ids().map(|n| g.node(n).name.as_str()).collect();
    if !used.contains(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| !used.contains(n.as_str()))
        .expect("some suffix is free")
}

/// Replaces the computation of `old` by a new node `op(inputs)` whose first output takes
/// over `old`'s name, type and readers; `extra` names the node's further outputs (`""` for
/// omitted ones) and gives their types. Returns the new node.
pub(crate) fn replace_with(
    g: &mut Graph,
    old: ValueId,
    name: &str,
    op: Op,
    inputs: Vec<Option<ValueId>>,
    extra: &[(&str, Option<Type>)],
) -> NodeId {
    let nname = node_name(g, name);
    let mut outs: Vec<String> = vec![g.unique_name(&format!("{}__fused", g.value(old).name))];
    outs.extend(extra.iter().map(|(n, _)| n.to_string()));
    let refs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
    let n = g.add_node(nname, op, inputs, &refs);
    let new_outs = g.node(n).outputs.clone();
    g.value_mut(new_outs[0]).ty = g.value(old).ty.clone();
    for (k, (_, ty)) in extra.iter().enumerate() {
        g.value_mut(new_outs[k + 1]).ty = ty.clone();
    }
    g.replace_all_uses(old, new_outs[0]);
    // The fused value keeps the old name: graph outputs and downstream readers see no change.
    let old_name = std::mem::take(&mut g.value_mut(old).name);
    g.value_mut(new_outs[0]).name = old_name;
    n
}

/// Removes the nodes none of whose outputs is read any more, starting from `roots` and
/// walking up through their producers (the matched pattern, after its output was taken over).
pub(crate) fn remove_dead(g: &mut Graph, roots: &[NodeId]) {
    let mut stack: Vec<NodeId> = roots.to_vec();
    while let Some(n) = stack.pop() {
        if !g.is_live(n) {
            continue;
        }
        let uses = g.use_counts();
        if g.node(n).outputs.iter().any(|o| uses[o.index()] > 0) {
            continue;
        }
        let ins: Vec<ValueId> = g.node(n).inputs.iter().flatten().copied().collect();
        g.remove_node(n);
        for i in ins {
            if let Some(p) = producer(g, i) {
                stack.push(p);
            }
        }
    }
}
