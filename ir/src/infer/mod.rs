//! Shape and type inference for every op, symbolic where the inputs are.
//!
//! Besides types, inference tracks the *symbolic contents* of small integer tensors (the
//! `Shape → Gather → Concat → Reshape` arithmetic of exported transformers), so that a
//! Reshape whose target is computed from `Shape(x)` still gets `[batch, seq, 12, 64]`.
//!
//! Each op family lives in its own module with a function
//! `fn infer(op: &Op, cx: &mut InferCx) -> Option<Result<Vec<Out>, InferError>>`
//! that answers `None` for ops outside the family.

use std::collections::HashMap;

use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::{Graph, Node, NodeId, ValueDef, ValueId};
use crate::op::Op;
use crate::shape::{fmt_shape, Dim, TensorType, Type};
use crate::tensor::Tensor;

mod control;
mod elementwise;
pub mod helpers;
mod linalg;
mod misc;
mod nn;
mod reduce;
mod sequence;
mod shape_ops;

/// Why an op's outputs could not be inferred.
#[derive(Debug)]
pub enum InferError {
    /// Not enough is known statically (the caller falls back to the model's declared type).
    Unknown,
    /// The inputs are invalid for the op: a real error in the model.
    Bad(String),
}

impl From<String> for InferError {
    fn from(s: String) -> InferError {
        InferError::Bad(s)
    }
}

impl From<&str> for InferError {
    fn from(s: &str) -> InferError {
        InferError::Bad(s.to_string())
    }
}

/// One inferred output: its type and, for small integer tensors, its symbolic contents.
#[derive(Clone, Debug)]
pub struct Out {
    pub ty: Type,
    pub sym: Option<Vec<Dim>>,
}

impl Out {
    pub fn tensor(dtype: DType, shape: Vec<Dim>) -> Out {
        Out {
            ty: Type::tensor(dtype, shape),
            sym: None,
        }
    }

    pub fn unranked(dtype: DType) -> Out {
        Out {
            ty: Type::tensor_unranked(dtype),
            sym: None,
        }
    }

    pub fn of(ty: Type) -> Out {
        Out { ty, sym: None }
    }

    /// A 1-D (or, with `scalar`, 0-D) i64 tensor whose elements are the dims `v`.
    pub fn sym_i64(v: Vec<Dim>, scalar: bool) -> Out {
        let shape = if scalar {
            vec![]
        } else {
            vec![Dim::from(v.len())]
        };
        Out {
            ty: Type::tensor(DType::I64, shape),
            sym: Some(v),
        }
    }
}

pub type InferResult = Result<Vec<Out>, InferError>;

/// What an op's inference sees of its node.
pub struct InferCx<'a> {
    pub node: &'a Node,
    inputs: Vec<Option<Type>>,
    consts: Vec<Option<&'a Tensor>>,
    syms: Vec<Option<Vec<Dim>>>,
    fresh: &'a mut dyn FnMut(&str) -> Dim,
}

impl<'a> InferCx<'a> {
    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }

    /// Whether input `i` is given (not omitted).
    pub fn has(&self, i: usize) -> bool {
        self.node.inputs.get(i).is_some_and(|x| x.is_some())
    }

    /// Type of input `i`, if given and known.
    pub fn ty(&self, i: usize) -> Option<&Type> {
        self.inputs.get(i).and_then(|t| t.as_ref())
    }

    /// Input `i` as a tensor type; `Unknown` if its type is not known, `Bad` if it is omitted
    /// or not a tensor.
    pub fn tensor(&self, i: usize) -> Result<&TensorType, InferError> {
        if !self.has(i) {
            return Err(InferError::Bad(format!("input {i} is required")));
        }
        match self.ty(i) {
            None => Err(InferError::Unknown),
            Some(Type::Tensor(t)) => Ok(t),
            Some(t) => Err(InferError::Bad(format!(
                "input {i} must be a tensor, got {t}"
            ))),
        }
    }

    pub fn dtype(&self, i: usize) -> Result<DType, InferError> {
        Ok(self.tensor(i)?.dtype)
    }

    /// Shape of input `i`; `Unknown` if its rank is unknown.
    pub fn shape(&self, i: usize) -> Result<&[Dim], InferError> {
        self.tensor(i)?.shape.as_deref().ok_or(InferError::Unknown)
    }

    pub fn rank(&self, i: usize) -> Result<usize, InferError> {
        Ok(self.shape(i)?.len())
    }

    /// Value of input `i` when it is a constant.
    pub fn const_tensor(&self, i: usize) -> Option<&'a Tensor> {
        self.consts.get(i).copied().flatten()
    }

    /// Integer elements of input `i` when it is a constant.
    pub fn const_ints(&self, i: usize) -> Option<Vec<i64>> {
        self.const_tensor(i)?.to_i64_vec()
    }

    /// Elements of integer input `i` as dims, when known (constant or symbolically tracked).
    pub fn sym(&self, i: usize) -> Option<&[Dim]> {
        self.syms.get(i).and_then(|s| s.as_deref())
    }

    /// Like [`InferCx::sym`], but only when every element is a known number.
    pub fn known_ints(&self, i: usize) -> Option<Vec<i64>> {
        self.sym(i)?.iter().map(|d| d.known()).collect()
    }

    /// A new symbol for a size that is only known at run time.
    pub fn fresh(&mut self, hint: &str) -> Dim {
        (self.fresh)(hint)
    }

    /// Output types of subgraph `k` of this node (its outputs must have been inferred).
    pub fn subgraph_outputs(&self, k: usize) -> Result<Vec<Type>, InferError> {
        let g = self
            .node
            .op
            .subgraphs()
            .get(k)
            .copied()
            .ok_or("missing subgraph")?;
        g.outputs
            .iter()
            .map(|&o| g.value(o).ty.clone().ok_or(InferError::Unknown))
            .collect()
    }
}

/// Name prefix of symbols kiln invents for sizes it cannot name (ONNX Runtime uses the same).
pub const FRESH_PREFIX: &str = "unk__";

fn is_fresh(d: &Dim) -> bool {
    d.as_symbol().is_some_and(|s| s.starts_with(FRESH_PREFIX))
}

/// Symbolic contents of a constant integer tensor small enough to be a shape.
fn const_sym(t: &Tensor) -> Option<Vec<Dim>> {
    if t.rank() <= 1 && t.len() <= 64 && t.dtype().is_int() {
        Some(t.to_i64_vec()?.into_iter().map(Dim::from).collect())
    } else {
        None
    }
}

/// Infers the outputs of one op. Control-flow ops expect their subgraphs already inferred.
pub fn infer_op(op: &Op, cx: &mut InferCx) -> InferResult {
    let families: [fn(&Op, &mut InferCx) -> Option<InferResult>; 8] = [
        elementwise::infer,
        shape_ops::infer,
        reduce::infer,
        linalg::infer,
        nn::infer,
        control::infer,
        sequence::infer,
        misc::infer,
    ];
    for f in families {
        if let Some(r) = f(op, cx) {
            return r;
        }
    }
    Err(InferError::Unknown)
}

/// Combines the model's declared type with the inferred one. Known facts must agree;
/// inferred facts win, except that a declared name beats an invented symbol.
pub fn merge_types(declared: Option<&Type>, inferred: Type) -> Result<Type, String> {
    let Some(d) = declared else {
        return Ok(inferred);
    };
    match (d, inferred) {
        (Type::Tensor(a), Type::Tensor(b)) => {
            if a.dtype != b.dtype {
                return Err(format!(
                    "inferred element type {} but the model declares {}",
                    b.dtype, a.dtype
                ));
            }
            let shape = match (&a.shape, b.shape) {
                (None, s) => s,
                (Some(s), None) => Some(s.clone()),
                (Some(sa), Some(sb)) => {
                    if sa.len() != sb.len() {
                        return Err(format!(
                            "inferred shape {} but the model declares {}",
                            fmt_shape(&sb),
                            fmt_shape(sa)
                        ));
                    }
                    let mut out = Vec::with_capacity(sa.len());
                    for (da, db) in sa.iter().zip(sb.iter()) {
                        out.push(match (da.known(), db.known()) {
                            (Some(x), Some(y)) if x != y => {
                                return Err(format!(
                                    "inferred shape {} but the model declares {}",
                                    fmt_shape(&sb),
                                    fmt_shape(sa)
                                ))
                            }
                            _ if is_fresh(db) && !is_fresh(da) => da.clone(),
                            _ => db.clone(),
                        });
                    }
                    Some(out)
                }
            };
            Ok(Type::Tensor(TensorType {
                dtype: a.dtype,
                shape,
            }))
        }
        (Type::Sequence(a), Type::Sequence(b)) => {
            Ok(Type::Sequence(Box::new(merge_types(Some(a), *b)?)))
        }
        (Type::Optional(a), Type::Optional(b)) => {
            Ok(Type::Optional(Box::new(merge_types(Some(a), *b)?)))
        }
        (a, b) if a.elem_dtype().is_none() || b.elem_dtype().is_none() => Ok(b),
        (a, b) => Err(format!("inferred {b} but the model declares {a}")),
    }
}

/// Statistics of one inference run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InferStats {
    /// Values (all graphs) that still have no type.
    pub untyped: usize,
    /// Nodes whose outputs fell back to declared types (or stayed unknown).
    pub fallbacks: usize,
}

/// Infers the type of every value of `g` (and its subgraphs), merging with declared types.
pub fn infer_graph(g: &mut Graph) -> Result<InferStats, IrError> {
    infer_graph_with(g, &HashMap::new()).map(|(s, _)| s)
}

/// Like [`infer_graph`], also returning the symbolic contents found for small integer
/// values of the main graph (what `Shape → Gather → Concat` chains compute).
pub fn infer_graph_symbols(
    g: &mut Graph,
) -> Result<(InferStats, HashMap<ValueId, Vec<Dim>>), IrError> {
    infer_graph_with(g, &HashMap::new())
}

fn infer_graph_with(
    g: &mut Graph,
    outer_syms: &HashMap<ValueId, Vec<Dim>>,
) -> Result<(InferStats, HashMap<ValueId, Vec<Dim>>), IrError> {
    let mut stats = InferStats::default();
    let mut syms: HashMap<ValueId, Vec<Dim>> = HashMap::new();
    for v in g.value_ids() {
        match &g.value(v).def {
            ValueDef::Const(t) => {
                if let Some(s) = const_sym(t) {
                    syms.insert(v, s);
                }
            }
            ValueDef::Outer(o) => {
                if let Some(s) = outer_syms.get(o) {
                    syms.insert(v, s.clone());
                }
            }
            _ => {}
        }
    }
    for n in g.topo_order()? {
        infer_subgraphs(g, n, &syms, &mut stats)?;
        let node = g.node(n);
        let inputs: Vec<Option<Type>> = node
            .inputs
            .iter()
            .map(|i| i.and_then(|v| g.value(v).ty.clone()))
            .collect();
        let consts: Vec<Option<&Tensor>> = node
            .inputs
            .iter()
            .map(|i| i.and_then(|v| g.const_value(v)))
            .collect();
        let isyms: Vec<Option<Vec<Dim>>> = node
            .inputs
            .iter()
            .map(|i| i.and_then(|v| syms.get(&v).cloned()))
            .collect();
        let mut counter = 0u32;
        let node_name = node.name.clone();
        let base = g.num_values();
        let mut fresh = |hint: &str| {
            counter += 1;
            Dim::sym(&format!("{FRESH_PREFIX}{hint}_{base}_{counter}"))
        };
        let mut cx = InferCx {
            node,
            inputs,
            consts,
            syms: isyms,
            fresh: &mut fresh,
        };
        let result = infer_op(&node.op, &mut cx);
        let op_type = node.op.op_type().to_string();
        let outputs = node.outputs.clone();
        let err = |msg: String| IrError::Infer {
            node: node_name.clone(),
            op: op_type.clone(),
            msg,
        };
        match result {
            Ok(outs) => {
                for (k, &o) in outputs.iter().enumerate() {
                    let Some(out) = outs.get(k) else {
                        if g.value(o).ty.is_none() {
                            stats.fallbacks += 1;
                        }
                        continue;
                    };
                    let merged = merge_types(g.value(o).ty.as_ref(), out.ty.clone())
                        .map_err(|m| err(format!("output {k} (`{}`): {m}", g.value(o).name)))?;
                    g.value_mut(o).ty = Some(merged);
                    if let Some(s) = &out.sym {
                        syms.insert(o, s.clone());
                    }
                }
            }
            Err(InferError::Bad(m)) => return Err(err(m)),
            Err(InferError::Unknown) => stats.fallbacks += 1,
        }
    }
    stats.untyped += g
        .value_ids()
        .filter(|&v| g.value(v).ty.is_none() && is_live_value(g, v))
        .count();
    Ok((stats, syms))
}

fn is_live_value(g: &Graph, v: ValueId) -> bool {
    match g.value(v).def {
        ValueDef::Node { node, .. } => g.is_live(node),
        _ => true,
    }
}

/// Gives the subgraphs of node `n` the types of what they receive, then infers them.
fn infer_subgraphs(
    g: &mut Graph,
    n: NodeId,
    syms: &HashMap<ValueId, Vec<Dim>>,
    stats: &mut InferStats,
) -> Result<(), IrError> {
    if g.node(n).op.subgraphs().is_empty() {
        return Ok(());
    }
    let outer_types: Vec<Option<Type>> = g.value_ids().map(|v| g.value(v).ty.clone()).collect();
    let input_types: Vec<Option<Type>> = g
        .node(n)
        .inputs
        .iter()
        .map(|i| i.and_then(|v| g.value(v).ty.clone()))
        .collect();
    let node = g.node_mut(n);
    let formals = control::formal_types(&node.op, &input_types);
    for (k, sg) in node.op.subgraphs_mut().into_iter().enumerate() {
        for v in sg.value_ids().collect::<Vec<_>>() {
            if let ValueDef::Outer(o) = sg.value(v).def {
                if sg.value(v).ty.is_none() {
                    sg.value_mut(v).ty = outer_types.get(o.index()).cloned().flatten();
                }
            }
        }
        if let Some(f) = formals.get(k) {
            for (&i, t) in sg.inputs.clone().iter().zip(f) {
                if let Some(t) = t {
                    let merged = merge_types(sg.value(i).ty.as_ref(), t.clone())
                        .unwrap_or_else(|_| t.clone());
                    // A loop-carried value may change shape across iterations: keep the
                    // declared (looser) type when the formal one contradicts it.
                    sg.value_mut(i).ty = Some(match sg.value(i).ty.as_ref() {
                        Some(d) if merge_types(Some(d), t.clone()).is_err() => d.clone(),
                        _ => merged,
                    });
                }
            }
        }
        let (s, _) = infer_graph_with(sg, syms)?;
        stats.untyped += s.untyped;
        stats.fallbacks += s.fallbacks;
    }
    Ok(())
}

/// Re-infers every node and checks that the stored types agree (for the verifier in
/// debug builds and after passes).
pub fn check_types(g: &Graph) -> Result<(), IrError> {
    let mut copy = g.clone();
    infer_graph(&mut copy)?;
    Ok(())
}
