//! Elementwise ops: unary maps, broadcasting binary/variadic ops, comparisons, casts.

use super::helpers::*;
use super::{InferCx, InferError, InferResult, Out};
use crate::dtype::DType;
use crate::op::Op;
use crate::shape::Dim;

pub(super) fn infer(op: &Op, cx: &mut InferCx) -> Option<InferResult> {
    use Op::*;
    Some(match op {
        // Unary maps: output has input 0's type.
        Abs(_) | Acos(_) | Acosh(_) | Asin(_) | Asinh(_) | Atan(_) | Atanh(_) | Ceil(_)
        | Cos(_) | Cosh(_) | Erf(_) | Exp(_) | Floor(_) | Log(_) | Reciprocal(_) | Round(_)
        | Sigmoid(_) | Sign(_) | Sin(_) | Sinh(_) | Sqrt(_) | Tan(_) | Tanh(_) | Relu(_)
        | LeakyRelu(_) | Elu(_) | Selu(_) | Celu(_) | HardSigmoid(_) | HardSwish(_)
        | Softplus(_) | Softsign(_) | Mish(_) | Swish(_) | ThresholdedRelu(_) | Shrink(_)
        | Gelu(_) | BitwiseNot(_) | Not(_) | Clip(_) | MsGelu(_) | QuickGelu(_) => {
            same_as_input(cx, 0)
        }
        // Identity passes any value through: tensors, sequences, optionals.
        Identity(_) => cx
            .ty(0)
            .cloned()
            .map(|t| {
                vec![Out {
                    ty: t,
                    sym: cx.sym(0).map(|s| s.to_vec()),
                }]
            })
            .ok_or(InferError::Unknown),
        // X + optional bias.
        FastGelu(_) => same_as_input(cx, 0),
        PRelu(_) => binary(cx, None),
        Add(_) | Sub(_) | Mul(_) | Div(_) | Pow(_) | Mod(_) | BitShift(_) | BitwiseAnd(_)
        | BitwiseOr(_) | BitwiseXor(_) | And(_) | Or(_) | Xor(_) | BiasGelu(_) => binary(cx, None),
        Equal(_) | Greater(_) | GreaterOrEqual(_) | Less(_) | LessOrEqual(_) => {
            binary(cx, Some(DType::Bool))
        }
        IsNaN(_) | IsInf(_) => shape_as_input(cx, 0, DType::Bool).map(|o| vec![o]),
        Max(_) | Min(_) | Mean(_) | Sum(_) => variadic(cx),
        Where(_) => (|| {
            let dt = cx.dtype(1)?;
            let mut o = out_of(dt, broadcast_or_unranked(cx, &[0, 1, 2])?);
            if let (Some(c), Some(x), Some(y)) = (cx.sym(0), cx.sym(1), cx.sym(2)) {
                let n = c.len().max(x.len()).max(y.len());
                let at = |v: &[Dim], i: usize| v.get(if v.len() == 1 { 0 } else { i }).cloned();
                o.sym = (0..n)
                    .map(|i| match at(c, i)?.known()? {
                        0 => at(y, i),
                        _ => at(x, i),
                    })
                    .collect();
            }
            Ok(vec![o])
        })(),
        // Shape arithmetic: keep the symbolic contents.
        Neg(_) => same_as_input(cx, 0).map(|mut o| {
            if let Some(s) = cx.sym(0) {
                o[0].sym = Some(s.iter().map(|d| -d).collect());
            }
            o
        }),
        Cast(c) => cast(cx, c.to),
        CastLike(_) => cx.dtype(1).and_then(|d| cast(cx, d)),
        BiasAdd(_) => same_as_input(cx, 0),
        _ => return None,
    })
}

/// Broadcast shape of the inputs, `None` when some input's rank is unknown (the output's
/// dtype is still known).
fn broadcast_or_unranked(
    cx: &InferCx,
    inputs: &[usize],
) -> Result<Option<Vec<crate::shape::Dim>>, InferError> {
    match broadcast_inputs(cx, inputs) {
        Ok(s) => Ok(Some(s)),
        Err(InferError::Unknown) => Ok(None),
        Err(e) => Err(e),
    }
}

fn out_of(dtype: DType, shape: Option<Vec<crate::shape::Dim>>) -> Out {
    match shape {
        Some(s) => Out::tensor(dtype, s),
        None => Out::unranked(dtype),
    }
}

fn binary(cx: &InferCx, out: Option<DType>) -> InferResult {
    let dt = cx.dtype(0)?;
    let shape = broadcast_or_unranked(cx, &[0, 1])?;
    let mut o = out_of(out.unwrap_or(dt), shape);
    // Shape arithmetic on integer tensors (`batch * seq`, `hidden / heads`), and the
    // `Equal(shape, -1)` tests exporters emit before Expand.
    if dt.is_int() {
        if let (Some(a), Some(b)) = (cx.sym(0), cx.sym(1)) {
            o.sym = sym_binary(cx.node.op.kind(), a, b);
        }
    }
    Ok(vec![o])
}

/// Whether dims `x` and `y` are equal, when that is decidable: equal polynomials are; two
/// numbers are compared; a negative number never equals a dim with non-negative coefficients.
fn sym_equal(x: &Dim, y: &Dim) -> Option<bool> {
    if x == y {
        return Some(true);
    }
    let nonneg = |d: &Dim| {
        d.known()
            .map_or_else(|| !d.to_string().contains('-'), |v| v >= 0)
    };
    match (x.known(), y.known()) {
        (Some(_), Some(_)) => Some(false),
        (Some(v), None) if v < 0 && nonneg(y) => Some(false),
        (None, Some(v)) if v < 0 && nonneg(x) => Some(false),
        _ => None,
    }
}

fn sym_binary(kind: &str, a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
        return None;
    }
    (0..n)
        .map(|i| {
            let x = &a[if a.len() == 1 { 0 } else { i }];
            let y = &b[if b.len() == 1 { 0 } else { i }];
            match kind {
                "Add" => Some(x + y),
                "Sub" => Some(x - y),
                "Mul" => Some(x * y),
                "Div" => match (x.known(), y.known()) {
                    (Some(p), Some(q)) if q != 0 => Some(Dim::from(p.div_euclid(q))),
                    _ => x.div_exact(y),
                },
                "Equal" => sym_equal(x, y).map(|e| Dim::from(e as i64)),
                _ => None,
            }
        })
        .collect()
}

fn variadic(cx: &InferCx) -> InferResult {
    let dt = cx.dtype(0)?;
    let all: Vec<usize> = (0..cx.num_inputs()).collect();
    let shape = broadcast_or_unranked(cx, &all)?;
    let mut o = out_of(dt, shape);
    if cx.node.op.kind() == "Sum" && cx.num_inputs() == 2 {
        if let (Some(a), Some(b)) = (cx.sym(0), cx.sym(1)) {
            o.sym = sym_binary("Add", a, b);
        }
    }
    Ok(vec![o])
}

fn cast(cx: &InferCx, to: DType) -> InferResult {
    let mut o = shape_as_input(cx, 0, to)?;
    if to.is_int() {
        o.sym = cx.sym(0).map(|s| s.to_vec());
    }
    Ok(vec![o])
}
