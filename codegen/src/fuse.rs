//! Loop fusion of f32 elementwise chains at lowering: a group of elementwise nodes whose
//! intermediate values nothing outside the group reads becomes one [`FusedMap`] step. The IR
//! (and so `kiln optimize`'s ONNX export) is unchanged; only the plan runs fewer, fused loops.
//!
//! Grouping grows from the last node of a chain towards its inputs: a producer joins when
//! it is fusible, its value is not a graph output, has the shape of the group's result, and
//! every reader of that value is already in the group. A group of one node stays a plain
//! step.
//!
//! [`FusedMap`]: kiln_runtime::kernels::FusedMap

use std::collections::{HashMap, HashSet};

use kiln_ir::{DType, Graph, NodeId, Op, Type, ValueDef, ValueId};
use kiln_runtime::kernels::{MapOp, MapProgram};

/// A fused group: its nodes in schedule order (the last is the root, whose output the
/// fused step produces), its external inputs (in register order) and its program.
pub(crate) struct Group {
    pub nodes: Vec<NodeId>,
    pub inputs: Vec<ValueId>,
    pub prog: MapProgram,
}

/// What a fusible node computes, its operands still values.
enum Form {
    Unary(fn(u16) -> MapOp),
    Binary(fn(u16, u16) -> MapOp),
    Pow(f32),
    Where,
}

fn dtype(g: &Graph, v: ValueId) -> Option<DType> {
    match g.value(v).ty.as_ref()? {
        Type::Tensor(t) => Some(t.dtype),
        _ => None,
    }
}

/// The node's form when it is a fusible elementwise op on f32 tensors of known type.
fn form(g: &Graph, n: NodeId) -> Option<Form> {
    let node = g.node(n);
    if node.outputs.len() != 1 || node.inputs.iter().any(|i| i.is_none()) {
        return None;
    }
    let ins: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
    let f32s = |vs: &[ValueId]| vs.iter().all(|&v| dtype(g, v) == Some(DType::F32));
    let out = dtype(g, node.outputs[0]);
    use MapOp as M;
    let f = match &node.op {
        Op::Add(_) => Form::Binary(M::Add),
        Op::Sub(_) => Form::Binary(M::Sub),
        Op::Mul(_) => Form::Binary(M::Mul),
        Op::Div(_) => Form::Binary(M::Div),
        Op::Sqrt(_) => Form::Unary(M::Sqrt),
        Op::Erf(_) => Form::Unary(M::Erf),
        Op::Exp(_) => Form::Unary(M::Exp),
        Op::Tanh(_) => Form::Unary(M::Tanh),
        Op::Sigmoid(_) => Form::Unary(M::Sigmoid),
        Op::Neg(_) => Form::Unary(M::Neg),
        Op::Abs(_) => Form::Unary(M::Abs),
        Op::Relu(_) => Form::Unary(M::Relu),
        Op::IsNaN(_) => {
            return (ins.len() == 1 && f32s(&ins) && out == Some(DType::Bool))
                .then_some(Form::Unary(M::IsNaN))
        }
        Op::Where(_) => {
            return (ins.len() == 3
                && dtype(g, ins[0]) == Some(DType::Bool)
                && f32s(&ins[1..])
                && out == Some(DType::F32))
            .then_some(Form::Where)
        }
        Op::Pow(_) => {
            // Only by a constant scalar exponent (what the Pow kernel special-cases).
            let e = g.const_value(*ins.get(1)?)?;
            if ins.len() != 2 || e.dtype() != DType::F32 || e.len() != 1 || !f32s(&ins[..1]) {
                return None;
            }
            let e = e.to_f64_vec()?[0] as f32;
            return (out == Some(DType::F32)).then_some(Form::Pow(e));
        }
        _ => return None,
    };
    let arity = if matches!(f, Form::Unary(_)) { 1 } else { 2 };
    (ins.len() == arity && f32s(&ins) && out == Some(DType::F32)).then_some(f)
}

/// Whether `a` and `b` are known to have the same shape. A producer whose output is
/// smaller than the group's (broadcast into it) stays outside: fused, it would be computed
/// once per element of the larger output (a mask computed once per head, a row's
/// `sqrt(var + eps)` once per column).
fn same_shape(g: &Graph, a: ValueId, b: ValueId) -> bool {
    let shape = |v: ValueId| match g.value(v).ty.as_ref()? {
        Type::Tensor(t) => t.shape.clone(),
        _ => None,
    };
    matches!((shape(a), shape(b)), (Some(x), Some(y)) if x == y)
}

/// The fusible groups of `g` (two nodes or more), given its schedule.
pub(crate) fn groups(g: &Graph, order: &[NodeId]) -> Vec<Group> {
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut readers: HashMap<ValueId, Vec<NodeId>> = HashMap::new();
    for &n in order {
        for v in g.node_reads(n) {
            readers.entry(v).or_default().push(n);
        }
    }
    let outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
    let forms: HashMap<NodeId, Form> = order
        .iter()
        .filter_map(|&n| form(g, n).map(|f| (n, f)))
        .collect();
    let mut taken: HashSet<NodeId> = HashSet::new();
    let mut out = Vec::new();
    for &root in order.iter().rev() {
        if taken.contains(&root) || !forms.contains_key(&root) {
            continue;
        }
        let root_out = g.node(root).outputs[0];
        let mut members: HashSet<NodeId> = HashSet::from([root]);
        // Grow until no producer qualifies (a value read twice inside the group qualifies
        // only once both readers are in).
        loop {
            let mut grew = false;
            let cands: Vec<ValueId> = members
                .iter()
                .flat_map(|&m| g.node(m).inputs.iter().flatten().copied())
                .collect();
            for v in cands {
                let ValueDef::Node { node: p, .. } = g.value(v).def else {
                    continue;
                };
                if members.contains(&p)
                    || taken.contains(&p)
                    || !forms.contains_key(&p)
                    || outputs.contains(&v)
                    || !same_shape(g, v, root_out)
                    || !readers
                        .get(&v)
                        .is_some_and(|rs| rs.iter().all(|r| members.contains(r)))
                {
                    continue;
                }
                members.insert(p);
                grew = true;
            }
            if !grew {
                break;
            }
        }
        if members.len() < 2 {
            continue;
        }
        let mut nodes: Vec<NodeId> = members.iter().copied().collect();
        nodes.sort_by_key(|n| pos[n]);
        taken.extend(nodes.iter().copied());
        out.push(program(g, nodes, &forms));
    }
    out
}

/// The group's program: external inputs first (in order of first use), then one register
/// per node.
fn program(g: &Graph, nodes: Vec<NodeId>, forms: &HashMap<NodeId, Form>) -> Group {
    let inner: HashSet<ValueId> = nodes.iter().map(|&n| g.node(n).outputs[0]).collect();
    let mut inputs: Vec<ValueId> = Vec::new();
    for &n in &nodes {
        let node = g.node(n);
        let used = match forms[&n] {
            Form::Pow(_) => &node.inputs[..1],
            _ => &node.inputs[..],
        };
        for v in used.iter().flatten() {
            if !inner.contains(v) && !inputs.contains(v) {
                inputs.push(*v);
            }
        }
    }
    let mut reg: HashMap<ValueId, u16> = inputs
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, i as u16))
        .collect();
    let mut ops = Vec::with_capacity(nodes.len());
    for &n in &nodes {
        let node = g.node(n);
        let r = |k: usize| reg[&node.inputs[k].expect("fusible nodes have every input")];
        let op = match forms[&n] {
            Form::Unary(f) => f(r(0)),
            Form::Binary(f) => f(r(0), r(1)),
            Form::Pow(e) => MapOp::Pow(r(0), e),
            Form::Where => MapOp::Where(r(0), r(1), r(2)),
        };
        reg.insert(node.outputs[0], (inputs.len() + ops.len()) as u16);
        ops.push(op);
    }
    Group {
        prog: MapProgram {
            inputs: inputs.len(),
            ops,
        },
        nodes,
        inputs,
    }
}
