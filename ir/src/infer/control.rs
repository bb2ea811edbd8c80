//! Control flow: `If`, `Loop`, `Scan`. Their subgraphs are inferred first (by the
//! driver, with the formal parameter types computed here); the node's outputs follow
//! from the subgraphs' outputs.

use super::helpers::*;
use super::{InferCx, InferError, InferResult, Out};
use crate::dtype::DType;
use crate::op::Op;
use crate::shape::{Dim, TensorType, Type};

/// Types each subgraph of `op` receives as inputs, given the node's input types.
pub(super) fn formal_types(op: &Op, inputs: &[Option<Type>]) -> Vec<Vec<Option<Type>>> {
    match op {
        Op::Loop(_) => {
            let mut f = vec![
                Some(Type::tensor(DType::I64, vec![])),
                Some(Type::tensor(DType::Bool, vec![])),
            ];
            f.extend(inputs.iter().skip(2).cloned());
            vec![f]
        }
        Op::Scan(s) => {
            let m = s.num_scan_inputs.max(0) as usize;
            let n = inputs.len().saturating_sub(m);
            let mut f: Vec<Option<Type>> = inputs[..n].to_vec();
            for (j, t) in inputs[n..].iter().enumerate() {
                let axis = s
                    .scan_input_axes
                    .as_ref()
                    .and_then(|a| a.get(j))
                    .copied()
                    .unwrap_or(0);
                f.push(t.as_ref().and_then(|t| drop_axis(t, axis)));
            }
            vec![f]
        }
        Op::SequenceMap(_) => vec![super::sequence::sequence_map_formals(inputs)],
        _ => Vec::new(),
    }
}

fn drop_axis(t: &Type, axis: i64) -> Option<Type> {
    let tt = t.as_tensor()?;
    let Some(s) = &tt.shape else {
        return Some(Type::tensor_unranked(tt.dtype));
    };
    let a = norm_axis(axis, s.len()).ok()?;
    let mut s = s.clone();
    s.remove(a);
    Some(Type::tensor(tt.dtype, s))
}

/// A type that describes both `a` and `b` (dims that differ become unknown).
fn join(a: &Type, b: &Type, cx: &mut InferCx) -> Type {
    match (a, b) {
        (Type::Tensor(x), Type::Tensor(y)) if x.dtype == y.dtype => match (&x.shape, &y.shape) {
            (Some(p), Some(q)) if p.len() == q.len() => Type::tensor(
                x.dtype,
                p.iter()
                    .zip(q)
                    .map(|(d, e)| if d == e { d.clone() } else { cx.fresh("if") })
                    .collect(),
            ),
            _ => Type::tensor_unranked(x.dtype),
        },
        (Type::Sequence(x), Type::Sequence(y)) => Type::Sequence(Box::new(join(x, y, cx))),
        (Type::Optional(x), Type::Optional(y)) => Type::Optional(Box::new(join(x, y, cx))),
        _ => a.clone(),
    }
}

pub(super) fn infer(op: &Op, cx: &mut InferCx) -> Option<InferResult> {
    Some(match op {
        Op::If(_) => (|| {
            let t = cx.subgraph_outputs(0)?;
            let e = cx.subgraph_outputs(1)?;
            if t.len() != e.len() {
                return Err(InferError::Bad(format!(
                    "then_branch has {} outputs, else_branch {}",
                    t.len(),
                    e.len()
                )));
            }
            Ok(t.iter()
                .zip(&e)
                .map(|(a, b)| Out::of(join(a, b, cx)))
                .collect())
        })(),
        Op::Loop(_) => (|| {
            let body = cx.subgraph_outputs(0)?;
            let n_carried = cx.num_inputs().saturating_sub(2);
            if body.len() < 1 + n_carried {
                return Err("Loop body has fewer outputs than cond + carried values".into());
            }
            let mut outs = Vec::new();
            for (k, t) in body[1..1 + n_carried].iter().enumerate() {
                // The initial value may be looser (an optional the body fills): the body's
                // type describes every value after the first iteration.
                outs.push(Out::of(match cx.ty(2 + k).cloned() {
                    Some(init) if std::mem::discriminant(&init) == std::mem::discriminant(t) => {
                        join(&init, t, cx)
                    }
                    _ => t.clone(),
                }));
            }
            let iters = match cx.const_ints(0) {
                Some(v) if v.len() == 1 && !cx.has(1) => Dim::from(v[0].max(0)),
                _ => cx.fresh("loop"),
            };
            for t in &body[1 + n_carried..] {
                outs.push(Out::of(stack(t, 0, &iters)));
            }
            Ok(outs)
        })(),
        Op::Scan(s) => (|| {
            let body = cx.subgraph_outputs(0)?;
            let m = s.num_scan_inputs.max(0) as usize;
            let n = cx
                .num_inputs()
                .checked_sub(m)
                .ok_or("Scan has fewer inputs than num_scan_inputs")?;
            if body.len() < n {
                return Err("Scan body has fewer outputs than state values".into());
            }
            let len = if m > 0 {
                let axis = s
                    .scan_input_axes
                    .as_ref()
                    .and_then(|a| a.first())
                    .copied()
                    .unwrap_or(0);
                let sh = cx.shape(n)?;
                sh[norm_axis(axis, sh.len())?].clone()
            } else {
                cx.fresh("scan")
            };
            let mut outs: Vec<Out> = body[..n].iter().map(|t| Out::of(t.clone())).collect();
            for (j, t) in body[n..].iter().enumerate() {
                let axis = s
                    .scan_output_axes
                    .as_ref()
                    .and_then(|a| a.get(j))
                    .copied()
                    .unwrap_or(0);
                outs.push(Out::of(stack(t, axis, &len)));
            }
            Ok(outs)
        })(),
        _ => return None,
    })
}

/// Type of values of type `t` stacked along a new axis of length `len`.
fn stack(t: &Type, axis: i64, len: &Dim) -> Type {
    match t {
        Type::Tensor(TensorType {
            dtype,
            shape: Some(s),
        }) => {
            let r = s.len() as i64 + 1;
            let a = if axis < 0 { axis + r } else { axis }.clamp(0, r - 1) as usize;
            let mut s = s.clone();
            s.insert(a, len.clone());
            Type::tensor(*dtype, s)
        }
        Type::Tensor(TensorType { dtype, shape: None }) => Type::tensor_unranked(*dtype),
        other => other.clone(),
    }
}
