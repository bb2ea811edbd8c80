//! Loop fusion of f32 elementwise chains at lowering: a group of elementwise nodes whose
//! intermediate values nothing outside the group reads becomes one [`FusedMap`] step. The IR
//! (and so `kiln optimize`'s ONNX export) is unchanged; only the plan runs fewer, fused loops.
//!
//! Grouping grows from the last node of a chain towards its inputs: a producer joins when
//! it is fusible, its value is not a graph output, has the shape of the group's result, and
//! every reader of that value is already in the group. A group of one node stays a plain
//! step.
//!
//! Before those chains, row groups: grown the same way from a node of shape `[…, C]`, but
//! also over `ReduceMean`s of the last axis (kept) and values of one per row `[…, 1]`; a
//! group that holds such a mean runs row by row ([`Fused::Rows`], a LayerNorm spelled out,
//! with the residual Add before it, in one pass over each row).
//!
//! A group whose only tensor input is a `Gemm`'s result (directly or through a `Reshape`),
//! read by nothing else, and whose other inputs are scalar constants runs in that GEMM's
//! store instead ([`Fused::GemmMap`]): -O1 leaves a transformer's Gelu spelled out after the
//! feed-forward Gemm, and so it runs on each panel of the GEMM's output while the panel is in
//! L1 rather than in another pass over a `[tokens, 4·hidden]` tensor.
//!
//! [`FusedMap`]: kiln_runtime::kernels::FusedMap

use std::collections::{HashMap, HashSet};

use kiln_ir::{DType, Dim, Graph, NodeId, Op, Type, ValueDef, ValueId};
use kiln_runtime::gemm::Activation;
use kiln_runtime::kernels::{AttentionCore, MapOp, MapProgram, Operand};

/// A fused group: its nodes in schedule order (the last is the root, whose output the
/// fused step produces), its external inputs (in the kernel's order) and its kernel.
pub(crate) struct Group {
    pub nodes: Vec<NodeId>,
    pub inputs: Vec<ValueId>,
    pub kernel: Fused,
}

/// What a group runs as.
pub(crate) enum Fused {
    Map(MapProgram),
    Attention(AttentionCore),
    /// Runs row by row (the group holds row means); per input, whether it holds one value
    /// per row (or one in all) rather than rows.
    Rows(MapProgram, Vec<bool>),
    /// A `Gemm` (then at most a `Reshape`) whose result only an element-wise chain reads: the
    /// chain runs in the GEMM's store. `prog`'s register 0 is the GEMM's result, its other
    /// inputs the constant `scalars`.
    GemmMap {
        gemm: NodeId,
        reshape: Option<NodeId>,
        prog: MapProgram,
        scalars: Vec<f32>,
    },
    /// A `MatMul` by a constant matrix whose result only a `BiasGelu`, `FastGelu` or `Gelu`
    /// reads: one GEMM with the bias and the activation in its store.
    MatMulAct {
        matmul: NodeId,
        bias: Option<Vec<f32>>,
        act: Activation,
    },
}

/// What a fusible node computes, its operands still values.
#[derive(Clone, Copy)]
enum Form {
    Unary(fn(u16) -> MapOp),
    Binary(fn(u16, u16) -> MapOp),
    Pow(f32),
    Where,
    /// `ReduceMean` over the last axis, kept: only in row groups.
    MeanRow,
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

/// The value of `v` when it is a constant f32 of one element.
fn f32_scalar(g: &Graph, v: ValueId) -> Option<f64> {
    let t = g.const_value(v)?;
    (t.dtype() == DType::F32 && t.len() == 1)
        .then(|| t.to_f64_vec())??
        .first()
        .copied()
}

/// Whether `a` and `b` are known to have the same shape. A producer whose output is
/// smaller than the group's (broadcast into it) stays outside: fused, it would be computed
/// once per element of the larger output (a mask computed once per head, a row's
/// `sqrt(var + eps)` once per column).
fn same_shape(g: &Graph, a: ValueId, b: ValueId) -> bool {
    matches!((shape(g, a), shape(g, b)), (Some(x), Some(y)) if x == y)
}

/// `v`'s inferred dims, when known.
fn shape(g: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    match g.value(v).ty.as_ref()? {
        Type::Tensor(t) => t.shape.clone(),
        _ => None,
    }
}

/// What grouping needs to know about the graph.
struct Cx<'g> {
    g: &'g Graph,
    pos: HashMap<NodeId, usize>,
    readers: HashMap<ValueId, Vec<NodeId>>,
    outputs: HashSet<ValueId>,
    forms: HashMap<NodeId, Form>,
    taken: HashSet<NodeId>,
}

impl Cx<'_> {
    /// The node computing `v`, when a node does.
    fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.g.value(v).def {
            ValueDef::Node { node, .. } => Some(node),
            _ => None,
        }
    }

    /// Whether every reader of `v` is in `members` (or is `extra`), and `v` is no graph
    /// output: then nothing outside needs `v` once the group runs.
    fn private(&self, v: ValueId, members: &HashSet<NodeId>, extra: Option<NodeId>) -> bool {
        !self.outputs.contains(&v)
            && self
                .readers
                .get(&v)
                .is_some_and(|rs| rs.iter().all(|r| members.contains(r) || Some(*r) == extra))
    }

    /// Adds to `members` every fusible producer, not yet taken, whose value has `shape_of`'s
    /// shape and is read only inside the group, until none qualifies (a value read twice
    /// inside the group qualifies only once both readers are in).
    fn grow(&self, members: &mut HashSet<NodeId>, shape_of: ValueId) {
        loop {
            let mut grew = false;
            let cands: Vec<ValueId> = members
                .iter()
                .flat_map(|&m| self.g.node(m).inputs.iter().flatten().copied())
                .collect();
            for v in cands {
                let Some(p) = self.producer(v) else { continue };
                if members.contains(&p)
                    || self.taken.contains(&p)
                    || !self.forms.contains_key(&p)
                    || !same_shape(self.g, v, shape_of)
                    || !self.private(v, members, None)
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
    }

    /// The elementwise group that ends in `v`, which only `consumer` reads, grown back
    /// towards its inputs (empty when `v`'s producer is not fusible).
    fn chain_into(&self, v: ValueId, consumer: NodeId, shape_of: ValueId) -> HashSet<NodeId> {
        let mut members = HashSet::new();
        if let Some(p) = self.producer(v) {
            if self.forms.contains_key(&p)
                && !self.taken.contains(&p)
                && same_shape(self.g, v, shape_of)
                && self.private(v, &members, Some(consumer))
            {
                members.insert(p);
                self.grow(&mut members, shape_of);
            }
        }
        members
    }

    /// The value among the external inputs of `members` (or `v` itself when `members` is
    /// empty) that `is_head`'s node produces and only `members` (or `consumer`) read.
    fn head_of(
        &self,
        v: ValueId,
        members: &HashSet<NodeId>,
        consumer: NodeId,
        is_head: impl Fn(&Op) -> bool,
    ) -> Option<(ValueId, NodeId)> {
        let cands: Vec<ValueId> = if members.is_empty() {
            vec![v]
        } else {
            members
                .iter()
                .flat_map(|&m| self.g.node(m).inputs.iter().flatten().copied())
                .collect()
        };
        cands.into_iter().find_map(|c| {
            let p = self.producer(c)?;
            let ok = !members.contains(&p)
                && !self.taken.contains(&p)
                && is_head(&self.g.node(p).op)
                && self.private(c, members, members.is_empty().then_some(consumer));
            ok.then_some((c, p))
        })
    }

    /// A matrix operand `v` of `consumer`, read in place through a `Mul` by a constant
    /// scalar and, before it, a `Transpose`, when only this chain reads them: the value to
    /// read, how, and the nodes folded.
    fn operand(&self, v: ValueId, consumer: NodeId) -> (ValueId, Operand, Vec<NodeId>) {
        let g = self.g;
        let (mut x, mut reader) = (v, consumer);
        let mut op = Operand::plain();
        let mut folded = Vec::new();
        let only = |x: ValueId, r: NodeId| {
            !self.outputs.contains(&x) && self.readers.get(&x).is_some_and(|rs| rs == &[r])
        };
        if let Some(p) = self
            .producer(x)
            .filter(|p| !self.taken.contains(p) && only(x, reader))
        {
            if let (Op::Mul(_), [Some(a), Some(b)]) = (&g.node(p).op, &g.node(p).inputs[..]) {
                let pick = match (f32_scalar(g, *a), f32_scalar(g, *b)) {
                    (_, Some(s)) => Some((*a, s)),
                    (Some(s), None) => Some((*b, s)),
                    _ => None,
                };
                if let Some((other, s)) = pick.filter(|(o, _)| same_shape(g, *o, x)) {
                    op.scale = s as f32;
                    folded.push(p);
                    reader = p;
                    x = other;
                }
            }
        }
        if let Some(p) = self
            .producer(x)
            .filter(|p| !self.taken.contains(p) && only(x, reader))
        {
            if let (Op::Transpose(t), [Some(a)]) = (&g.node(p).op, &g.node(p).inputs[..]) {
                let perm: Option<Vec<usize>> = t
                    .perm
                    .as_ref()
                    .and_then(|p| p.iter().map(|&i| usize::try_from(i).ok()).collect());
                if let Some(perm) = perm {
                    op.perm = Some(perm);
                    folded.push(p);
                    x = *a;
                }
            }
        }
        (x, op, folded)
    }

    /// `MatMul → elementwise* → Softmax(last axis) → elementwise* → MatMul` ending at `mm2`,
    /// every intermediate value read only inside, the scores' shape throughout.
    fn attention(&self, mm2: NodeId) -> Option<Group> {
        let g = self.g;
        let n2 = g.node(mm2);
        let (Op::MatMul(_), [Some(p_val), Some(v_val)]) = (&n2.op, &n2.inputs[..]) else {
            return None;
        };
        let (p_val, v_val) = (*p_val, *v_val);
        let post = self.chain_into(p_val, mm2, p_val);
        let (s_val, sm) = self.head_of(p_val, &post, mm2, |op| matches!(op, Op::Softmax(_)))?;
        let Op::Softmax(so) = &g.node(sm).op else {
            return None;
        };
        let x_val = g.node(sm).inputs.first().copied().flatten()?;
        let r = rank(g, s_val)?;
        if !(so.axis == -1 || so.axis == r as i64 - 1)
            || !same_shape(g, x_val, s_val)
            || !same_shape(g, p_val, s_val)
        {
            return None;
        }
        let pre = self.chain_into(x_val, sm, s_val);
        let (y_val, mm1) = self.head_of(x_val, &pre, sm, |op| matches!(op, Op::MatMul(_)))?;
        let n1 = g.node(mm1);
        let [Some(q_val), Some(k_val)] = n1.inputs[..] else {
            return None;
        };
        // f32 matrices (MatMul of a 1-D operand means something else), the output batched
        // as the scores are.
        let f32s = [q_val, k_val, v_val, y_val, s_val, n2.outputs[0]];
        if f32s.iter().any(|&v| dtype(g, v) != Some(DType::F32))
            || [q_val, k_val, v_val]
                .iter()
                .any(|&v| rank(g, v).is_none_or(|r| r < 2))
            || !same_shape(g, y_val, s_val)
            || !same_batch(g, n2.outputs[0], s_val)
        {
            return None;
        }
        let (q_src, q_op, q_nodes) = self.operand(q_val, mm1);
        let (k_src, k_op, k_nodes) = self.operand(k_val, mm1);
        let (v_src, v_op, v_nodes) = self.operand(v_val, mm2);
        let prog = |members: &HashSet<NodeId>, first: ValueId| {
            if members.is_empty() {
                return None;
            }
            let mut nodes: Vec<NodeId> = members.iter().copied().collect();
            nodes.sort_by_key(|n| self.pos[n]);
            Some(program(g, nodes, &self.forms, Some(first)))
        };
        let pre_p = prog(&pre, y_val);
        let post_p = prog(&post, s_val);
        let mut inputs = vec![q_src, k_src, v_src];
        for (_, ins, _) in pre_p.iter().chain(&post_p) {
            inputs.extend_from_slice(&ins[1..]);
        }
        // The Transpose that merges the heads (`[B, H, S, D]` to `[B, S, H, D]`), when it
        // alone reads the output, through Reshapes that keep its shape (BERT's export has
        // one): folded, the core writes each row where it ends up.
        let only_reader = |x: ValueId| {
            self.readers.get(&x).and_then(|rs| match rs[..] {
                [r] if !self.outputs.contains(&x) && !self.taken.contains(&r) => Some(r),
                _ => None,
            })
        };
        let y2 = n2.outputs[0];
        let mut merge = Vec::new();
        let mut x = y2;
        while let Some(r) = only_reader(x) {
            let nr = g.node(r);
            match &nr.op {
                Op::Reshape(_) if same_shape(g, nr.outputs[0], y2) => {
                    merge.push(r);
                    x = nr.outputs[0];
                }
                Op::Transpose(t)
                    if t.perm.as_deref() == Some(&[0, 2, 1, 3][..]) && rank(g, y2) == Some(4) =>
                {
                    merge.push(r);
                    break;
                }
                _ => break,
            }
        }
        if !matches!(merge.last().map(|&t| &g.node(t).op), Some(Op::Transpose(_))) {
            merge.clear();
        }
        let core = AttentionCore::new(AttentionCore {
            q: q_op,
            k: k_op,
            v: v_op,
            pre: pre_p.map(|(_, _, p)| p),
            post: post_p.map(|(_, _, p)| p),
            heads_last: !merge.is_empty(),
        })
        .ok()?;
        let mut nodes: Vec<NodeId> = [mm1, sm, mm2]
            .into_iter()
            .chain(pre.iter().copied())
            .chain(post.iter().copied())
            .chain(q_nodes)
            .chain(k_nodes)
            .chain(v_nodes)
            .chain(merge)
            .collect();
        nodes.sort_by_key(|n| self.pos[n]);
        nodes.dedup();
        Some(Group {
            nodes,
            inputs,
            kernel: Fused::Attention(core),
        })
    }
}

fn rank(g: &Graph, v: ValueId) -> Option<usize> {
    shape(g, v).map(|s| s.len())
}

/// Whether `a` and `b` have the same rank and the same (known) dims but the last two.
fn same_batch(g: &Graph, a: ValueId, b: ValueId) -> bool {
    matches!((shape(g, a), shape(g, b)), (Some(x), Some(y))
        if x.len() == y.len() && x.len() >= 2 && x[..x.len() - 2] == y[..y.len() - 2])
}

/// The fused groups of `g` given its schedule: attention cores first, then elementwise
/// chains of two nodes or more among the nodes left.
pub(crate) fn groups(g: &Graph, order: &[NodeId], fusions: crate::Fusions) -> Vec<Group> {
    let mut readers: HashMap<ValueId, Vec<NodeId>> = HashMap::new();
    for &n in order {
        for v in g.node_reads(n) {
            readers.entry(v).or_default().push(n);
        }
    }
    let mut cx = Cx {
        g,
        pos: order.iter().enumerate().map(|(i, &n)| (n, i)).collect(),
        readers,
        outputs: g.outputs.iter().copied().collect(),
        forms: order
            .iter()
            .filter_map(|&n| form(g, n).map(|f| (n, f)))
            .collect(),
        taken: HashSet::new(),
    };
    let mut out = Vec::new();
    if fusions.attention {
        for &root in order {
            if let Some(grp) = cx.attention(root) {
                cx.taken.extend(grp.nodes.iter().copied());
                out.push(grp);
            }
        }
    }
    if fusions.rows {
        for &root in order.iter().rev() {
            if cx.taken.contains(&root) || !cx.forms.contains_key(&root) {
                continue;
            }
            if let Some(grp) = cx.row_group(root) {
                cx.taken.extend(grp.nodes.iter().copied());
                out.push(grp);
            }
        }
    }
    for &root in order.iter().rev() {
        if !fusions.elementwise || cx.taken.contains(&root) || !cx.forms.contains_key(&root) {
            continue;
        }
        let mut members: HashSet<NodeId> = HashSet::from([root]);
        cx.grow(&mut members, g.node(root).outputs[0]);
        if members.len() < 2 {
            continue;
        }
        let mut nodes: Vec<NodeId> = members.iter().copied().collect();
        nodes.sort_by_key(|n| cx.pos[n]);
        cx.taken.extend(nodes.iter().copied());
        let (nodes, inputs, prog) = program(g, nodes, &cx.forms, None);
        out.push(Group {
            nodes,
            inputs,
            kernel: Fused::Map(prog),
        });
    }
    if fusions.gemm_epilogue {
        for &root in order {
            if cx.taken.contains(&root) {
                continue;
            }
            if let Some(grp) = cx.matmul_act(root) {
                cx.taken.extend(grp.nodes.iter().copied());
                out.push(grp);
            }
        }
        for grp in &mut out {
            if let Some(fused) = cx.into_gemm(grp) {
                *grp = fused;
            }
        }
    }
    out
}

/// Whether node `n` is an f32 `ReduceMean` of a value of shape `s` over its last axis,
/// keeping it.
fn mean_row(g: &Graph, n: NodeId, s: &[Dim]) -> bool {
    let node = g.node(n);
    let Op::ReduceMean(o) = &node.op else {
        return false;
    };
    let (Some(Some(x)), Some(Some(axes))) = (node.inputs.first(), node.inputs.get(1)) else {
        return false;
    };
    let r = s.len() as i64;
    let last_axis = g
        .const_value(*axes)
        .and_then(|t| t.to_f64_vec())
        .is_some_and(|a| a.len() == 1 && (a[0] as i64 == -1 || a[0] as i64 == r - 1));
    o.keepdims
        && r > 0
        && last_axis
        && node.inputs.len() == 2
        && dtype(g, *x) == Some(DType::F32)
        && dtype(g, node.outputs[0]) == Some(DType::F32)
        && shape(g, *x).is_some_and(|xs| xs == s)
}

impl Cx<'_> {
    /// The group that ends in `root`, grown over element-wise ops and row means of the
    /// root's shape `[…, C]` or of one value per row `[…, 1]`, when it holds a row mean and
    /// its inputs are rows, values per row, one row `[C]` or one value (a LayerNorm spelled
    /// out, with the residual Add before it).
    fn row_group(&self, root: NodeId) -> Option<Group> {
        let g = self.g;
        let s = shape(g, g.node(root).outputs[0])?;
        let c = s.last()?.clone();
        let mut rs = s.clone();
        *rs.last_mut()? = Dim::from(1i64);
        let fits = |v: ValueId| shape(g, v).is_some_and(|x| x == s || x == rs);
        let row_form = |n: NodeId| match g.node(n).op {
            Op::Where(_) | Op::IsNaN(_) => None,
            _ if mean_row(g, n, &s) => Some(Form::MeanRow),
            _ => self.forms.get(&n).copied(),
        };
        if row_form(root).is_none() {
            return None;
        }
        let mut members: HashSet<NodeId> = HashSet::from([root]);
        loop {
            let mut grew = false;
            let cands: Vec<ValueId> = members
                .iter()
                .flat_map(|&m| g.node(m).inputs.iter().flatten().copied())
                .collect();
            for v in cands {
                let Some(p) = self.producer(v) else { continue };
                if members.contains(&p)
                    || self.taken.contains(&p)
                    || row_form(p).is_none()
                    || !fits(v)
                    || !self.private(v, &members, None)
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
        if !members.iter().any(|&n| mean_row(g, n, &s)) {
            return None;
        }
        let forms: HashMap<NodeId, Form> = members
            .iter()
            .map(|&n| (n, row_form(n).expect("members have a row form")))
            .collect();
        let mut nodes: Vec<NodeId> = members.into_iter().collect();
        nodes.sort_by_key(|n| self.pos[n]);
        let (nodes, inputs, prog) = program(g, nodes, &forms, None);
        let one = Dim::from(1i64);
        let mut per_row = Vec::with_capacity(inputs.len());
        for &v in &inputs {
            let vs = shape(g, v)?;
            if dtype(g, v) != Some(DType::F32) {
                return None;
            }
            let lead_ones =
                vs.len() <= s.len() && vs[..vs.len().saturating_sub(1)].iter().all(|d| *d == one);
            per_row.push(if vs == s {
                false
            } else if vs == rs || lead_ones && vs.last().is_none_or(|d| *d == one) {
                true
            } else if lead_ones && vs.last() == Some(&c) {
                false
            } else {
                return None;
            });
        }
        Some(Group {
            nodes,
            inputs,
            kernel: Fused::Rows(prog, per_row),
        })
    }

    /// `act(MatMul(x, W) + bias)` ending at `root`: a `BiasGelu(y, bias)`, `FastGelu(y[,
    /// bias])`, com.microsoft `Gelu(y)` or ONNX `Gelu(y)` whose `y` only it reads, `y` the f32
    /// product of `x` (rank ≥ 2) and a constant f32 matrix `W` (what the packed GEMM takes),
    /// `bias` a constant f32 vector of one value per column of `y` (so the result has `y`'s
    /// shape: a bias that broadcasts further stays apart).
    fn matmul_act(&self, root: NodeId) -> Option<Group> {
        let g = self.g;
        let node = g.node(root);
        let (act, bias_slot) = match &node.op {
            Op::BiasGelu(_) => (Activation::Gelu, Some(true)),
            Op::FastGelu(_) => (Activation::FastGelu, Some(false)),
            Op::MsGelu(_) => (Activation::Gelu, None),
            Op::Gelu(o) => match o.approximate.as_str() {
                "none" => (Activation::Gelu, None),
                "tanh" => (Activation::FastGelu, None),
                _ => return None,
            },
            _ => return None,
        };
        let y = node.inputs.first().copied().flatten()?;
        let out = *node.outputs.first()?;
        let bias_v = node.inputs.get(1).copied().flatten();
        match bias_slot {
            // BiasGelu needs its bias; Gelu takes none.
            Some(true) if bias_v.is_none() => return None,
            None if node.inputs.len() > 1 => return None,
            _ => {}
        }
        if node.outputs.len() != 1 || dtype(g, out) != Some(DType::F32) || !same_shape(g, y, out) {
            return None;
        }
        let mm = self.producer(y)?;
        if self.taken.contains(&mm) || !self.private(y, &HashSet::from([root]), None) {
            return None;
        }
        let mnode = g.node(mm);
        let (Op::MatMul(_), [Some(x), Some(w)]) = (&mnode.op, &mnode.inputs[..]) else {
            return None;
        };
        let wt = g.const_value(*w)?;
        let ws = wt.shape();
        if wt.dtype() != DType::F32
            || ws.len() != 2
            || dtype(g, *x) != Some(DType::F32)
            || rank(g, *x).is_none_or(|r| r < 2)
        {
            return None;
        }
        let bias = match bias_v {
            Some(b) => {
                let t = g.const_value(b)?;
                if t.dtype() != DType::F32 || t.shape() != [ws[1]] {
                    return None;
                }
                Some(t.as_slice::<f32>()?.to_vec())
            }
            None => None,
        };
        Some(Group {
            nodes: vec![mm, root],
            inputs: vec![*x, *w],
            kernel: Fused::MatMulAct {
                matmul: mm,
                bias,
                act,
            },
        })
    }

    /// An element-wise group whose one non-constant input is a `Gemm`'s result (directly or
    /// through a `Reshape`, which an element-wise chain commutes with) that nothing else reads,
    /// and whose other inputs are f32 scalar constants: the group as that GEMM's epilogue.
    fn into_gemm(&self, grp: &Group) -> Option<Group> {
        let g = self.g;
        if !matches!(grp.kernel, Fused::Map(_)) {
            return None;
        }
        let scalar = |v: ValueId| f32_scalar(g, v);
        let mut tensors = grp.inputs.iter().filter(|&&v| scalar(v).is_none());
        let x = *tensors.next()?;
        if tensors.next().is_some() {
            return None;
        }
        let root = *grp.nodes.last()?;
        let out = g.node(root).outputs[0];
        // A scalar of higher rank than `x` would broadcast the result to more dims.
        if !same_shape(g, x, out) {
            return None;
        }
        let members: HashSet<NodeId> = grp.nodes.iter().copied().collect();
        let p = self.producer(x)?;
        if !self.private(x, &members, None) || self.taken.contains(&p) {
            return None;
        }
        let (gemm, reshape) = match &g.node(p).op {
            Op::Reshape(_) => {
                let y = g.node(p).inputs.first().copied().flatten()?;
                let q = self.producer(y)?;
                if !self.private(y, &HashSet::from([p]), None) || self.taken.contains(&q) {
                    return None;
                }
                (q, Some(p))
            }
            _ => (p, None),
        };
        if !matches!(g.node(gemm).op, Op::Gemm(_) | Op::FusedGemm(_))
            || dtype(g, g.node(gemm).outputs[0]) != Some(DType::F32)
        {
            return None;
        }
        // The chain again, with the GEMM's result as register 0 and the scalars after it.
        let (nodes, inputs, prog) = program(g, grp.nodes.clone(), &self.forms, Some(x));
        let scalars: Vec<f32> = inputs[1..]
            .iter()
            .filter_map(|&v| scalar(v))
            .map(|s| s as f32)
            .collect();
        if scalars.len() + 1 != inputs.len() {
            return None;
        }
        let nodes = [gemm].into_iter().chain(reshape).chain(nodes).collect();
        Some(Group {
            nodes,
            inputs,
            kernel: Fused::GemmMap {
                gemm,
                reshape,
                prog,
                scalars,
            },
        })
    }
}

/// The group's program: external inputs first (in order of first use), then one register
/// per node.
fn program(
    g: &Graph,
    nodes: Vec<NodeId>,
    forms: &HashMap<NodeId, Form>,
    first: Option<ValueId>,
) -> (Vec<NodeId>, Vec<ValueId>, MapProgram) {
    let inner: HashSet<ValueId> = nodes.iter().map(|&n| g.node(n).outputs[0]).collect();
    let mut inputs: Vec<ValueId> = first.into_iter().collect();
    for &n in &nodes {
        let node = g.node(n);
        let used = match forms[&n] {
            Form::Pow(_) | Form::MeanRow => &node.inputs[..1],
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
            Form::MeanRow => MapOp::MeanRow(r(0)),
        };
        reg.insert(node.outputs[0], (inputs.len() + ops.len()) as u16);
        ops.push(op);
    }
    let prog = MapProgram {
        inputs: inputs.len(),
        ops,
    };
    (nodes, inputs, prog)
}
