//! Lowering of kiln's IR to an executable [`Plan`]: a schedule (topological order), one
//! slot per value, a free list per step from liveness (so buffers are recycled as soon as
//! a value is dead), and a kernel per node. Subgraphs compile to nested plans.

use std::collections::{BTreeMap, HashMap};

mod fuse;
mod layout;

use kiln_ir::{Attr, DType, Graph, Model, NodeId, Op, ValueDef, ValueId};
use kiln_runtime::kernels::control::{
    FlexAttentionKernel, IfKernel, LoopKernel, Scan8Kernel, ScanKernel, SequenceMapKernel, SubPlan,
};
use kiln_runtime::{BuildCx, Kernel, KernelError, Plan, PlanInput, Slot, Step, Value};
use thiserror::Error;

/// Why a model cannot be compiled.
#[derive(Debug, Error)]
pub enum CompileError {
    /// An op kiln's runtime cannot execute (named with its opset and node).
    #[error("node `{node}`: {op} (opset {opset}) is not supported by kiln's runtime: {msg}")]
    Unsupported {
        node: String,
        op: String,
        opset: i64,
        msg: String,
    },
    /// The graph is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// Compiles the model's main graph.
pub fn compile(model: &Model) -> Result<Plan, CompileError> {
    compile_graph(&model.graph, &model.opsets)
}

fn op_name(op: &Op) -> String {
    if op.domain().is_empty() {
        op.op_type().to_string()
    } else {
        format!("{}.{}", op.domain(), op.op_type())
    }
}

/// Compiles one graph. For a subgraph, the plan's inputs are its formal inputs followed by
/// the outer values it captures, in [`Graph::outer_refs`] order.
pub fn compile_graph(g: &Graph, opsets: &BTreeMap<String, i64>) -> Result<Plan, CompileError> {
    compile_graph_with(g, opsets, Fusions::from_env())
}

/// The loop fusions lowering does. They change the plan's steps, never the IR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fusions {
    /// Chains of f32 elementwise ops become one step each.
    pub elementwise: bool,
    /// `MatMul → elementwise → Softmax → elementwise → MatMul` (attention spelled out op by
    /// op) becomes one step that goes through the scores slice by slice.
    pub attention: bool,
    /// Element-wise ops around row means (`ReduceMean` over the last axis: a LayerNorm
    /// spelled out) become one step that goes row by row.
    pub rows: bool,
    /// A chain of f32 elementwise ops (with scalar constants) that alone reads a `Gemm`'s
    /// result runs in the GEMM's store, on each block while it is in cache.
    pub gemm_epilogue: bool,
    /// Chains of 2-D convolutions and pools run on channel-blocked images (NCHWc): direct
    /// convolutions with no im2col and no packing of the image.
    pub nchwc: bool,
}

impl Fusions {
    /// Every fusion on.
    pub const ALL: Fusions = Fusions {
        elementwise: true,
        attention: true,
        rows: true,
        gemm_epilogue: true,
        nchwc: true,
    };
    /// No fusion: one step per node.
    pub const NONE: Fusions = Fusions {
        elementwise: false,
        attention: false,
        rows: false,
        gemm_epilogue: false,
        nchwc: false,
    };

    /// [`Fusions::ALL`], less what the environment turns off (`KILN_FUSE_ELEMENTWISE=0`,
    /// `KILN_FUSE_ATTENTION=0`, `KILN_FUSE_ROWS=0`, `KILN_FUSE_GEMM_EPILOGUE=0`), to measure or
    /// bisect a fusion. NCHWc is on where its tiles run SIMD code, unless `KILN_NCHWC` says
    /// otherwise ([`kiln_runtime::kernels::nchwc::preferred`]).
    /// The GEMM epilogue fuses elementwise groups, so it needs `elementwise`.
    pub fn from_env() -> Fusions {
        let on = |k: &str| !std::env::var_os(k).is_some_and(|v| v == "0");
        Fusions {
            elementwise: on("KILN_FUSE_ELEMENTWISE"),
            attention: on("KILN_FUSE_ATTENTION"),
            rows: on("KILN_FUSE_ROWS"),
            gemm_epilogue: on("KILN_FUSE_GEMM_EPILOGUE"),
            nchwc: kiln_runtime::kernels::nchwc::preferred(),
        }
    }
}

/// [`compile_graph`] with the given loop fusions (`compile_graph` takes
/// [`Fusions::from_env`]).
pub fn compile_graph_with(
    g: &Graph,
    opsets: &BTreeMap<String, i64>,
    fusions: Fusions,
) -> Result<Plan, CompileError> {
    let order = g
        .topo_order()
        .map_err(|e| CompileError::Invalid(e.to_string()))?;
    let slot = |v: ValueId| v.index() as Slot;

    // Fused groups, each one step run where its last node is.
    let groups = if fusions.elementwise || fusions.attention || fusions.rows {
        fuse::groups(g, &order, fusions)
    } else {
        Vec::new()
    };
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut runs_at: HashMap<NodeId, usize> = HashMap::new();
    let mut group_of: HashMap<NodeId, usize> = HashMap::new();
    for (gi, grp) in groups.iter().enumerate() {
        let root = *grp.nodes.last().expect("a group has nodes");
        for &n in &grp.nodes {
            runs_at.insert(n, pos[&root]);
            group_of.insert(n, gi);
        }
    }
    let at = |i: usize, n: NodeId| runs_at.get(&n).copied().unwrap_or(i);
    let blocked = if fusions.nchwc {
        layout::blocked_values(g, &order, &runs_at.keys().copied().collect())
    } else {
        Default::default()
    };

    // Last reader of each value, to free it right after.
    let mut last_use: HashMap<ValueId, usize> = HashMap::new();
    for (i, &n) in order.iter().enumerate() {
        for v in g.node_reads(n) {
            let p = at(i, n);
            let e = last_use.entry(v).or_insert(p);
            *e = (*e).max(p);
        }
    }
    let is_output = |v: ValueId| g.outputs.contains(&v);

    let mut inputs = Vec::new();
    let mut consts = Vec::new();
    for &i in &g.inputs {
        let val = g.value(i);
        let default = match &val.def {
            ValueDef::InputWithDefault(t) => Some(t.clone()),
            _ => None,
        };
        inputs.push(PlanInput {
            name: val.name.clone(),
            slot: slot(i),
            ty: val.ty.clone(),
            default,
        });
    }
    for o in g.outer_refs() {
        let inner = g
            .value_ids()
            .find(|&v| g.value(v).def == ValueDef::Outer(o))
            .expect("outer_refs come from Outer values");
        inputs.push(PlanInput {
            name: g.value(inner).name.clone(),
            slot: slot(inner),
            ty: None,
            default: None,
        });
    }
    for v in g.value_ids() {
        if let ValueDef::Const(t) = &g.value(v).def {
            consts.push((slot(v), Value::Tensor(t.clone())));
        }
    }

    let mut steps = Vec::with_capacity(order.len());
    for (i, &n) in order.iter().enumerate() {
        let node = g.node(n);
        if let Some(&gi) = group_of.get(&n) {
            let grp = &groups[gi];
            if grp.nodes.last() != Some(&n) {
                continue;
            }
            if let fuse::Fused::GemmMap { .. } = grp.kernel {
                steps.extend(gemm_map_steps(g, grp, i, &last_use, &is_output)?);
            } else {
                steps.push(fused_step(g, grp, i, &last_use, &is_output)?);
            }
            continue;
        }
        let opset = opsets.get(node.op.domain()).copied().unwrap_or(1);
        let unsupported = |msg: String| CompileError::Unsupported {
            node: node.name.clone(),
            op: op_name(&node.op),
            opset,
            msg,
        };
        let captures: Vec<ValueId> = {
            let mut c: Vec<ValueId> = node
                .op
                .subgraphs()
                .iter()
                .flat_map(|sg| sg.outer_refs())
                .collect();
            c.sort();
            c.dedup();
            c
        };
        let kernel: Box<dyn Kernel> = match &node.op {
            op if matches!(
                op,
                Op::If(_) | Op::Loop(_) | Op::Scan(_) | Op::SequenceMap(_)
            ) || is_scan8(op)
                || is_flex(op) =>
            {
                control_kernel(&node.op, node.inputs.len(), &captures, opsets).map_err(
                    |e| match e {
                        CompileError::Unsupported { .. } | CompileError::Invalid(_) => e,
                    },
                )?
            }
            op => {
                let cx = build_cx(g, n);
                let x_blocked = node
                    .inputs
                    .first()
                    .copied()
                    .flatten()
                    .is_some_and(|x| blocked.contains(&x));
                let built =
                    if x_blocked || node.outputs.first().is_some_and(|o| blocked.contains(o)) {
                        kiln_runtime::kernels::nchwc::build(op, &cx, x_blocked)
                    } else {
                        kiln_runtime::kernels::build(op, &cx)
                    };
                built.map_err(|e| match (e, op) {
                    // An op outside every kernel family: say kiln does not know it.
                    (KernelError::Unsupported(m), Op::Opaque(o)) if m.starts_with("no kernel") => {
                        unsupported(format!(
                            "kiln does not know the op {}{} (version {})",
                            if o.domain.is_empty() {
                                String::new()
                            } else {
                                format!("{}.", o.domain)
                            },
                            o.op_type,
                            o.version
                        ))
                    }
                    (KernelError::Unsupported(m), _) => unsupported(m),
                    (KernelError::Invalid(m), _) => {
                        CompileError::Invalid(format!("node `{}`: {m}", node.name))
                    }
                })?
            }
        };
        let mut step_inputs: Vec<Option<Slot>> = node.inputs.iter().map(|i| i.map(slot)).collect();
        step_inputs.extend(captures.iter().map(|&c| Some(slot(c))));
        let outputs = node
            .outputs
            .iter()
            .map(|&o| (last_use.contains_key(&o) || is_output(o)).then(|| slot(o)))
            .collect();
        let mut frees: Vec<Slot> = g
            .node_reads(n)
            .into_iter()
            .filter(|&v| last_use.get(&v) == Some(&i) && !is_output(v))
            .map(slot)
            .collect();
        frees.sort();
        frees.dedup();
        steps.push(Step {
            kernel,
            inputs: step_inputs,
            outputs,
            frees,
            node: node.name.clone(),
            op: op_name(&node.op),
        });
    }
    let outputs = g
        .outputs
        .iter()
        .map(|&o| (g.value(o).name.clone(), slot(o)))
        .collect();
    Ok(Plan {
        steps,
        n_slots: g.num_values(),
        consts,
        inputs,
        outputs,
        buffers: Default::default(),
    })
}

/// What building node `n`'s kernel may know of its inputs and outputs.
fn build_cx(g: &Graph, n: NodeId) -> BuildCx<'_> {
    let node = g.node(n);
    BuildCx {
        input_types: node
            .inputs
            .iter()
            .map(|i| i.and_then(|v| g.value(v).ty.as_ref()))
            .collect(),
        const_inputs: node
            .inputs
            .iter()
            .map(|i| i.and_then(|v| g.const_value(v)))
            .collect(),
        output_types: node
            .outputs
            .iter()
            .map(|&o| g.value(o).ty.as_ref())
            .collect(),
        graph: g,
    }
}

fn sub_plan(
    sg: &Graph,
    node_captures: &[ValueId],
    opsets: &BTreeMap<String, i64>,
) -> Result<SubPlan, CompileError> {
    let plan = compile_graph(sg, opsets)?;
    let captures = sg
        .outer_refs()
        .iter()
        .map(|o| {
            node_captures
                .iter()
                .position(|c| c == o)
                .expect("node captures include the subgraph's")
        })
        .collect();
    Ok(SubPlan { plan, captures })
}

/// `ai.onnx.preview.FlexAttention`, which needs its mod subgraphs compiled.
fn is_flex(op: &Op) -> bool {
    matches!(op, Op::Opaque(o) if o.domain == "ai.onnx.preview" && o.op_type == "FlexAttention")
}

/// A `Scan` of opset 8 or older, which import keeps opaque.
fn is_scan8(op: &Op) -> bool {
    matches!(op, Op::Opaque(o) if o.domain.is_empty() && o.op_type == "Scan")
}

fn control_kernel(
    op: &Op,
    n_explicit: usize,
    captures: &[ValueId],
    opsets: &BTreeMap<String, i64>,
) -> Result<Box<dyn Kernel>, CompileError> {
    Ok(match op {
        Op::If(o) => Box::new(IfKernel {
            then_branch: sub_plan(&o.then_branch, captures, opsets)?,
            else_branch: sub_plan(&o.else_branch, captures, opsets)?,
            n_explicit,
        }),
        Op::Loop(o) => Box::new(LoopKernel {
            body: sub_plan(&o.body, captures, opsets)?,
            n_explicit,
        }),
        Op::Scan(o) => {
            let m = o.num_scan_inputs.max(0) as usize;
            let n_out = o.body.outputs.len();
            let n_state = n_explicit.saturating_sub(m);
            let k = n_out.saturating_sub(n_state);
            Box::new(ScanKernel {
                body: sub_plan(&o.body, captures, opsets)?,
                n_explicit,
                num_scan_inputs: m,
                input_axes: o.scan_input_axes.clone().unwrap_or_else(|| vec![0; m]),
                input_reverse: o
                    .scan_input_directions
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .map(|&d| d != 0)
                    .collect(),
                output_axes: o.scan_output_axes.clone().unwrap_or_else(|| vec![0; k]),
                output_reverse: o
                    .scan_output_directions
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .map(|&d| d != 0)
                    .collect(),
            })
        }
        Op::SequenceMap(o) => Box::new(SequenceMapKernel {
            body: sub_plan(&o.body, captures, opsets)?,
            n_explicit,
        }),
        Op::Opaque(o) if is_flex(op) => {
            let bad = |m: &str| CompileError::Invalid(format!("FlexAttention: {m}"));
            let known = ["scale", "score_mod", "prob_mod", "softmax_precision"];
            if let Some(k) = o.attrs.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(bad(&format!("unknown attribute `{k}`")));
            }
            let graph = |name: &str| match o.attrs.get(name) {
                None => Ok(None),
                Some(Attr::Graph(g)) => sub_plan(g, captures, opsets).map(Some),
                Some(_) => Err(bad(&format!("`{name}` must be a graph"))),
            };
            let scale = match o.attrs.get("scale") {
                None => None,
                Some(Attr::Float(v)) => Some(*v),
                Some(_) => return Err(bad("`scale` must be a float")),
            };
            let softmax_precision = match o.attrs.get("softmax_precision") {
                None => None,
                Some(Attr::Int(v)) => match i32::try_from(*v).ok().and_then(DType::from_onnx) {
                    Some(d @ (DType::F32 | DType::F64)) => Some(d),
                    _ => {
                        return Err(CompileError::Unsupported {
                            node: String::new(),
                            op: "FlexAttention".into(),
                            opset: o.version,
                            msg: format!("softmax_precision {v}"),
                        })
                    }
                },
                Some(_) => return Err(bad("`softmax_precision` must be an int")),
            };
            Box::new(FlexAttentionKernel {
                n_explicit,
                scale,
                score_mod: graph("score_mod")?,
                prob_mod: graph("prob_mod")?,
                softmax_precision,
            })
        }
        // Scan before opset 9 (kept opaque on import): batch axis and `sequence_lens`.
        Op::Opaque(o) if is_scan8(op) => {
            let bad = |m: &str| CompileError::Invalid(format!("Scan (opset {}): {m}", o.version));
            if let Some(k) = o
                .attrs
                .keys()
                .find(|k| !["body", "num_scan_inputs", "directions"].contains(&k.as_str()))
            {
                return Err(bad(&format!("unknown attribute `{k}`")));
            }
            let Some(Attr::Graph(body)) = o.attrs.get("body") else {
                return Err(bad("a `body` graph is required"));
            };
            let m = match o.attrs.get("num_scan_inputs") {
                Some(Attr::Int(v)) if *v >= 0 => *v as usize,
                _ => return Err(bad("`num_scan_inputs` must be a non-negative int")),
            };
            let input_reverse = match o.attrs.get("directions") {
                None => Vec::new(),
                Some(Attr::Ints(d)) => d.iter().map(|&d| d != 0).collect(),
                Some(_) => return Err(bad("`directions` must be ints")),
            };
            // The inner (opset-9 style) kernel sees the inputs after `sequence_lens`.
            let n_explicit = n_explicit.saturating_sub(1);
            let k = body
                .outputs
                .len()
                .saturating_sub(n_explicit.saturating_sub(m));
            Box::new(Scan8Kernel {
                inner: ScanKernel {
                    body: sub_plan(body, captures, opsets)?,
                    n_explicit,
                    num_scan_inputs: m,
                    input_axes: vec![0; m],
                    input_reverse,
                    output_axes: vec![0; k],
                    output_reverse: Vec::new(),
                },
            })
        }
        _ => unreachable!("only control-flow ops reach here"),
    })
}

/// The slots of the values from outside a group that are dead once it has run at position
/// `i` (unsorted, maybe repeated).
fn group_frees(
    g: &Graph,
    grp: &fuse::Group,
    i: usize,
    last_use: &HashMap<ValueId, usize>,
    is_output: &dyn Fn(ValueId) -> bool,
) -> Vec<Slot> {
    let inner: Vec<ValueId> = grp.nodes.iter().map(|&n| g.node(n).outputs[0]).collect();
    grp.nodes
        .iter()
        .flat_map(|&n| g.node_reads(n))
        .filter(|v| !inner.contains(v) && last_use.get(v) == Some(&i) && !is_output(*v))
        .map(|v| v.index() as Slot)
        .collect()
}

/// The steps of a GEMM with an element-wise chain in its store ([`fuse::Fused::GemmMap`]), at
/// the position `i` of the chain's last node: the GEMM, writing the chain's result, then the
/// `Reshape` it went through, if any, writing the chain's output value.
fn gemm_map_steps(
    g: &Graph,
    grp: &fuse::Group,
    i: usize,
    last_use: &HashMap<ValueId, usize>,
    is_output: &dyn Fn(ValueId) -> bool,
) -> Result<Vec<Step>, CompileError> {
    let fuse::Fused::GemmMap {
        gemm,
        reshape,
        prog,
        scalars,
    } = &grp.kernel
    else {
        unreachable!("only GEMM epilogue groups come here")
    };
    let slot = |v: ValueId| v.index() as Slot;
    let root = g.node(*grp.nodes.last().expect("a group has nodes"));
    let out = root.outputs[0];
    let gnode = g.node(*gemm);
    let invalid = |e: KernelError| CompileError::Invalid(format!("node `{}`: {e}", gnode.name));
    let map =
        kiln_runtime::kernels::MapEpilogue::new(prog.clone(), scalars.clone()).map_err(invalid)?;
    let kernel = kiln_runtime::kernels::gemm_with_map(&gnode.op, &build_cx(g, *gemm), map)
        .ok_or_else(|| CompileError::Invalid(format!("node `{}` is no Gemm", gnode.name)))?
        .map_err(invalid)?;
    let mut frees = group_frees(g, grp, i, last_use, is_output);
    let out_slot = (last_use.contains_key(&out) || is_output(out)).then(|| slot(out));
    let chain: Vec<String> = grp.nodes[1 + reshape.is_some() as usize..]
        .iter()
        .map(|&n| op_name(&g.node(n).op))
        .collect();
    let gemm_op = format!("{}+Fused({})", op_name(&gnode.op), chain.join("+"));
    let gemm_inputs: Vec<Option<Slot>> = gnode.inputs.iter().map(|i| i.map(slot)).collect();
    let Some(r) = reshape else {
        frees.sort();
        frees.dedup();
        return Ok(vec![Step {
            kernel,
            inputs: gemm_inputs,
            outputs: vec![out_slot],
            frees,
            node: root.name.clone(),
            op: gemm_op,
        }]);
    };
    // The GEMM writes its own (2-D) value; the Reshape turns it into the chain's output.
    let y = gnode.outputs[0];
    let rnode = g.node(*r);
    let rkernel = kiln_runtime::kernels::build(&rnode.op, &build_cx(g, *r))
        .map_err(|e| CompileError::Invalid(format!("node `{}`: {e}", rnode.name)))?;
    frees.push(slot(y));
    frees.sort();
    frees.dedup();
    Ok(vec![
        Step {
            kernel,
            inputs: gemm_inputs,
            outputs: vec![Some(slot(y))],
            frees: Vec::new(),
            node: gnode.name.clone(),
            op: gemm_op,
        },
        Step {
            kernel: rkernel,
            inputs: rnode.inputs.iter().map(|i| i.map(slot)).collect(),
            outputs: vec![out_slot],
            frees,
            node: root.name.clone(),
            op: op_name(&rnode.op),
        },
    ])
}

/// The step of a fused group (elementwise, attention, rows, or a `MatMul` with its activation
/// in the store), at the position `i` of its last node.
fn fused_step(
    g: &Graph,
    grp: &fuse::Group,
    i: usize,
    last_use: &HashMap<ValueId, usize>,
    is_output: &dyn Fn(ValueId) -> bool,
) -> Result<Step, CompileError> {
    let root = g.node(*grp.nodes.last().expect("a group has nodes"));
    let kernel: Box<dyn Kernel> = match &grp.kernel {
        fuse::Fused::Map(p) => Box::new(
            kiln_runtime::kernels::FusedMap::new(p.clone())
                .map_err(|e| CompileError::Invalid(format!("node `{}`: {e}", root.name)))?,
        ),
        fuse::Fused::Attention(a) => Box::new(a.clone()),
        fuse::Fused::Rows(p, per_row) => Box::new(
            kiln_runtime::kernels::RowMap::new(p.clone(), per_row)
                .map_err(|e| CompileError::Invalid(format!("node `{}`: {e}", root.name)))?,
        ),
        fuse::Fused::MatMulAct { matmul, bias, act } => {
            let mnode = g.node(*matmul);
            kiln_runtime::kernels::matmul_with_epilogue(
                &mnode.op,
                &build_cx(g, *matmul),
                bias.clone(),
                *act,
            )
            .ok_or_else(|| CompileError::Invalid(format!("node `{}` is no MatMul", mnode.name)))?
        }
        fuse::Fused::GemmMap { .. } => unreachable!("GEMM epilogues have their own steps"),
    };
    let slot = |v: ValueId| v.index() as Slot;
    let out = root.outputs[0];
    let mut frees = group_frees(g, grp, i, last_use, is_output);
    frees.sort();
    frees.dedup();
    let ops: Vec<String> = grp.nodes.iter().map(|&n| op_name(&g.node(n).op)).collect();
    let op = match grp.kernel {
        // The MatMul, then its activation: `MatMul+com.microsoft.BiasGelu`.
        fuse::Fused::MatMulAct { .. } => ops.join("+"),
        _ => format!("Fused({})", ops.join("+")),
    };
    Ok(Step {
        kernel,
        inputs: grp.inputs.iter().map(|&v| Some(slot(v))).collect(),
        outputs: vec![(last_use.contains_key(&out) || is_output(out)).then(|| slot(out))],
        frees,
        node: root.name.clone(),
        op,
    })
}
