//! Sequence and optional ops: `Sequence*`, `SplitToSequence`, `ConcatFromSequence`,
//! `Optional*`.

use super::helpers::*;
use super::{InferCx, InferError, InferResult, Out};
use crate::dtype::DType;
use crate::op::Op;
use crate::shape::{Dim, TensorType, Type};

pub(super) fn infer(op: &Op, cx: &mut InferCx) -> Option<InferResult> {
    use Op::*;
    Some(match op {
        SequenceEmpty(s) => (|| {
            let dt = match s.dtype {
                Some(c) => dtype_code(c)?,
                None => DType::F32,
            };
            Ok(vec![Out::of(Type::Sequence(Box::new(
                Type::tensor_unranked(dt),
            )))])
        })(),
        SequenceConstruct(_) => (|| {
            if cx.num_inputs() == 0 {
                return Err(InferError::Bad(
                    "SequenceConstruct needs at least one input".into(),
                ));
            }
            let mut elem = cx.tensor(0).map(|t| Type::Tensor(t.clone()))?;
            for i in 1..cx.num_inputs() {
                let t = Type::Tensor(cx.tensor(i)?.clone());
                elem = join(&elem, &t, cx)?;
            }
            Ok(vec![Out::of(Type::Sequence(Box::new(elem)))])
        })(),
        SequenceAt(_) => (|| {
            check_position(cx, 1)?;
            Ok(vec![Out::of(seq_elem(cx, 0)?.clone())])
        })(),
        SequenceErase(_) => (|| {
            check_position(cx, 1)?;
            seq_elem(cx, 0)?;
            Ok(vec![Out::of(cx.ty(0).cloned().ok_or(InferError::Unknown)?)])
        })(),
        SequenceInsert(_) => (|| {
            check_position(cx, 2)?;
            let elem = seq_elem(cx, 0)?.clone();
            let t = Type::Tensor(cx.tensor(1)?.clone());
            Ok(vec![Out::of(Type::Sequence(Box::new(join(
                &elem, &t, cx,
            )?)))])
        })(),
        SequenceLength(_) => (|| {
            seq_elem(cx, 0)?;
            Ok(vec![Out::tensor(DType::I64, vec![])])
        })(),
        SequenceMap(_) => (|| {
            if cx.has(0) {
                if let Some(t) = cx.ty(0) {
                    if !matches!(t, Type::Sequence(_)) {
                        return Err(InferError::Bad(format!(
                            "input 0 must be a sequence, got {t}"
                        )));
                    }
                }
            }
            let body = cx.subgraph_outputs(0)?;
            Ok(body
                .into_iter()
                .map(|t| Out::of(Type::Sequence(Box::new(t))))
                .collect())
        })(),
        SplitToSequence(s) => split_to_sequence(cx, s.axis, s.keepdims),
        ConcatFromSequence(c) => concat_from_sequence(cx, c.axis, c.new_axis),
        Optional(o) => (|| {
            if cx.has(0) {
                let t = match (cx.ty(0), &o.type_) {
                    (Some(t), _) => t.clone(),
                    (None, Some(t)) => t.clone(),
                    (None, None) => return Err(InferError::Unknown),
                };
                if let (Some(a), Some(b)) = (&o.type_, cx.ty(0)) {
                    if a.elem_dtype().is_some()
                        && b.elem_dtype().is_some()
                        && a.elem_dtype() != b.elem_dtype()
                    {
                        return Err(InferError::Bad(format!(
                            "type attribute is {a}, input is {b}"
                        )));
                    }
                }
                Ok(vec![Out::of(Type::Optional(Box::new(t)))])
            } else {
                match &o.type_ {
                    Some(t) => Ok(vec![Out::of(Type::Optional(Box::new(t.clone())))]),
                    None => Err(InferError::Bad(
                        "Optional without input needs the type attribute".into(),
                    )),
                }
            }
        })(),
        OptionalGetElement(_) => (|| {
            if !cx.has(0) {
                return Err(InferError::Bad("input 0 is required".into()));
            }
            match cx.ty(0) {
                None => Err(InferError::Unknown),
                Some(Type::Optional(t)) => Ok(vec![Out::of((**t).clone())]),
                // A plain tensor or sequence is returned as it is.
                Some(t) => Ok(vec![Out::of(t.clone())]),
            }
        })(),
        OptionalHasElement(_) => Ok(vec![Out::tensor(DType::Bool, vec![])]),
        _ => return None,
    })
}

/// Types the body of a `SequenceMap` receives, given the node's input types: the element
/// type of each sequence input, the type itself of each tensor input. (For the driver's
/// `formal_types`.)
pub(super) fn sequence_map_formals(inputs: &[Option<Type>]) -> Vec<Option<Type>> {
    inputs
        .iter()
        .map(|t| match t {
            Some(Type::Sequence(e)) => Some((**e).clone()),
            other => other.clone(),
        })
        .collect()
}

pub(super) fn dtype_code(c: i64) -> Result<DType, InferError> {
    i32::try_from(c)
        .ok()
        .and_then(DType::from_onnx)
        .ok_or_else(|| InferError::Bad(format!("unknown element type code {c}")))
}

/// Element type of sequence input `i`.
fn seq_elem<'c>(cx: &'c InferCx, i: usize) -> Result<&'c Type, InferError> {
    if !cx.has(i) {
        return Err(InferError::Bad(format!("input {i} is required")));
    }
    match cx.ty(i) {
        None => Err(InferError::Unknown),
        Some(Type::Sequence(e)) => Ok(e),
        Some(t) => Err(InferError::Bad(format!(
            "input {i} must be a sequence, got {t}"
        ))),
    }
}

/// An optional `position` input must be a scalar integer.
fn check_position(cx: &InferCx, i: usize) -> Result<(), InferError> {
    if !cx.has(i) {
        return Ok(());
    }
    if let Ok(t) = cx.tensor(i) {
        if !matches!(t.dtype, DType::I32 | DType::I64) {
            return Err(InferError::Bad(format!(
                "position must be i32 or i64, got {}",
                t.dtype
            )));
        }
        if let Some(s) = &t.shape {
            if !(s.is_empty() || s.len() == 1 && s[0].known() == Some(1)) {
                return Err(InferError::Bad("position must be a scalar".into()));
            }
        }
    }
    Ok(())
}

/// A type describing values of type `a` and of type `b` (dims that differ become fresh).
fn join(a: &Type, b: &Type, cx: &mut InferCx) -> Result<Type, InferError> {
    Ok(match (a, b) {
        (Type::Tensor(x), Type::Tensor(y)) => {
            if x.dtype != y.dtype {
                return Err(InferError::Bad(format!(
                    "element types differ: {} and {}",
                    x.dtype, y.dtype
                )));
            }
            match (&x.shape, &y.shape) {
                (Some(p), Some(q)) if p.len() == q.len() => Type::tensor(
                    x.dtype,
                    p.iter()
                        .zip(q)
                        .map(|(d, e)| if d == e { d.clone() } else { cx.fresh("seq") })
                        .collect(),
                ),
                _ => Type::tensor_unranked(x.dtype),
            }
        }
        (Type::Sequence(x), Type::Sequence(y)) => Type::Sequence(Box::new(join(x, y, cx)?)),
        (Type::Optional(x), Type::Optional(y)) => Type::Optional(Box::new(join(x, y, cx)?)),
        (a, b) => return Err(InferError::Bad(format!("cannot mix {a} and {b}"))),
    })
}

fn split_to_sequence(cx: &mut InferCx, axis: i64, keepdims: bool) -> InferResult {
    let t = cx.tensor(0)?;
    let dt = t.dtype;
    let Some(s) = t.shape.clone() else {
        return Ok(vec![Out::of(Type::Sequence(Box::new(
            Type::tensor_unranked(dt),
        )))]);
    };
    let a = norm_axis(axis, s.len())?;
    let mut elem = s.clone();
    if !cx.has(1) {
        // Chunks of 1.
        if keepdims {
            elem[a] = Dim::from(1i64);
        } else {
            elem.remove(a);
        }
        return Ok(vec![Out::of(Type::Sequence(Box::new(Type::tensor(
            dt, elem,
        ))))]);
    }
    let split_rank = cx.shape(1).ok().map(|s| s.len());
    let dim = s[a].clone();
    elem[a] = match (cx.known_ints(1), split_rank) {
        (Some(v), Some(0)) if v.len() == 1 => {
            let k = v[0];
            if k <= 0 {
                return Err(InferError::Bad(format!("split must be positive, got {k}")));
            }
            match dim.known() {
                Some(n) if n % k == 0 => Dim::from(k),
                _ => cx.fresh("split"),
            }
        }
        (Some(v), Some(1)) => {
            if v.iter().any(|&x| x < 0) {
                return Err(InferError::Bad(format!(
                    "split values must be >= 0, got {v:?}"
                )));
            }
            if let Some(n) = dim.known() {
                if v.iter().sum::<i64>() != n {
                    return Err(InferError::Bad(format!(
                        "split {v:?} does not sum to the axis length {n}"
                    )));
                }
            }
            if !v.is_empty() && v.iter().all(|&x| x == v[0]) {
                Dim::from(v[0])
            } else {
                cx.fresh("split")
            }
        }
        _ => cx.fresh("split"),
    };
    Ok(vec![Out::of(Type::Sequence(Box::new(Type::tensor(
        dt, elem,
    ))))])
}

fn concat_from_sequence(cx: &mut InferCx, axis: i64, new_axis: bool) -> InferResult {
    let elem = seq_elem(cx, 0)?.clone();
    let Type::Tensor(TensorType { dtype, shape }) = elem else {
        return Err(InferError::Bad(format!(
            "sequence elements must be tensors, got {elem}"
        )));
    };
    let Some(mut s) = shape else {
        return Ok(vec![Out::unranked(dtype)]);
    };
    if new_axis {
        let a = norm_axis(axis, s.len() + 1)?;
        s.insert(a, cx.fresh("seq_len"));
    } else {
        let a = norm_axis(axis, s.len())?;
        s[a] = cx.fresh("concat");
    }
    Ok(vec![Out::tensor(dtype, s)])
}

#[cfg(test)]
mod tests {
    use crate::dtype::DType;
    use crate::graph::Graph;
    use crate::infer::infer_graph;
    use crate::op::*;
    use crate::shape::{Dim, Type};
    use crate::tensor::Tensor;

    fn ty(dt: DType, dims: &[&str]) -> Type {
        Type::tensor(
            dt,
            dims.iter()
                .map(|s| {
                    s.parse::<i64>()
                        .map(Dim::from)
                        .unwrap_or_else(|_| Dim::sym(s))
                })
                .collect(),
        )
    }

    fn show(g: &Graph, v: crate::graph::ValueId) -> String {
        g.value(v)
            .ty
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into())
    }

    #[test]
    fn construct_at_insert_erase_length() {
        let mut g = Graph::new("t");
        let a = g.add_input("a", Some(ty(DType::F32, &["B", "3"])));
        let b = g.add_input("b", Some(ty(DType::F32, &["B", "4"])));
        let pos = g.add_input("pos", Some(ty(DType::I64, &[])));
        let n = g.add_node(
            "c",
            Op::SequenceConstruct(SequenceConstruct {}),
            vec![Some(a), Some(a)],
            &["s"],
        );
        let s = g.node(n).outputs[0];
        let n = g.add_node(
            "c2",
            Op::SequenceConstruct(SequenceConstruct {}),
            vec![Some(a), Some(b)],
            &["s2"],
        );
        let s2 = g.node(n).outputs[0];
        let n = g.add_node(
            "at",
            Op::SequenceAt(SequenceAt {}),
            vec![Some(s), Some(pos)],
            &["e"],
        );
        let e = g.node(n).outputs[0];
        let n = g.add_node(
            "ins",
            Op::SequenceInsert(SequenceInsert {}),
            vec![Some(s), Some(b), None],
            &["s3"],
        );
        let s3 = g.node(n).outputs[0];
        let n = g.add_node(
            "er",
            Op::SequenceErase(SequenceErase {}),
            vec![Some(s), None],
            &["s4"],
        );
        let s4 = g.node(n).outputs[0];
        let n = g.add_node(
            "len",
            Op::SequenceLength(SequenceLength {}),
            vec![Some(s)],
            &["l"],
        );
        let l = g.node(n).outputs[0];
        let n = g.add_node(
            "em",
            Op::SequenceEmpty(SequenceEmpty { dtype: None }),
            vec![],
            &["em"],
        );
        let em = g.node(n).outputs[0];
        let n = g.add_node(
            "em16",
            Op::SequenceEmpty(SequenceEmpty { dtype: Some(10) }),
            vec![],
            &["em16"],
        );
        let em16 = g.node(n).outputs[0];
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, s), "seq<f32[B,3]>");
        assert!(
            show(&g, s2).starts_with("seq<f32[B,unk__seq"),
            "{}",
            show(&g, s2)
        );
        assert_eq!(show(&g, e), "f32[B,3]");
        assert!(
            show(&g, s3).starts_with("seq<f32[B,unk__seq"),
            "{}",
            show(&g, s3)
        );
        assert_eq!(show(&g, s4), "seq<f32[B,3]>");
        assert_eq!(show(&g, l), "i64[]");
        assert_eq!(show(&g, em), "seq<f32[*]>");
        assert_eq!(show(&g, em16), "seq<f16[*]>");
    }

    #[test]
    fn mixed_element_types_are_an_error() {
        let mut g = Graph::new("t");
        let a = g.add_input("a", Some(ty(DType::F32, &["3"])));
        let b = g.add_input("b", Some(ty(DType::I64, &["3"])));
        g.add_node(
            "c",
            Op::SequenceConstruct(SequenceConstruct {}),
            vec![Some(a), Some(b)],
            &["s"],
        );
        let e = infer_graph(&mut g).unwrap_err().to_string();
        assert!(e.contains("element types differ"), "{e}");
        // SequenceAt on a tensor.
        let mut g = Graph::new("t");
        let a = g.add_input("a", Some(ty(DType::F32, &["3"])));
        let p = g.add_input("p", Some(ty(DType::I64, &[])));
        g.add_node(
            "at",
            Op::SequenceAt(SequenceAt {}),
            vec![Some(a), Some(p)],
            &["e"],
        );
        let e = infer_graph(&mut g).unwrap_err().to_string();
        assert!(e.contains("must be a sequence"), "{e}");
    }

    #[test]
    fn split_and_concat() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F32, &["6", "B"])));
        let n = g.add_node(
            "s0",
            Op::SplitToSequence(SplitToSequence {
                axis: 0,
                keepdims: false,
            }),
            vec![Some(x)],
            &["s0"],
        );
        let s0 = g.node(n).outputs[0];
        let n = g.add_node(
            "s1",
            Op::SplitToSequence(SplitToSequence {
                axis: 0,
                keepdims: true,
            }),
            vec![Some(x)],
            &["s1"],
        );
        let s1 = g.node(n).outputs[0];
        let two = g.add_const("two", Tensor::scalar(2i64));
        let n = g.add_node(
            "s2",
            Op::SplitToSequence(SplitToSequence {
                axis: 0,
                keepdims: false,
            }),
            vec![Some(x), Some(two)],
            &["s2"],
        );
        let s2 = g.node(n).outputs[0];
        let four = g.add_const("four", Tensor::scalar(4i64));
        let n = g.add_node(
            "s3",
            Op::SplitToSequence(SplitToSequence {
                axis: 0,
                keepdims: true,
            }),
            vec![Some(x), Some(four)],
            &["s3"],
        );
        let s3 = g.node(n).outputs[0];
        let sizes = g.add_const(
            "sizes",
            Tensor::from_vec(vec![3], vec![2i64, 2, 2]).unwrap(),
        );
        let n = g.add_node(
            "s4",
            Op::SplitToSequence(SplitToSequence {
                axis: -2,
                keepdims: true,
            }),
            vec![Some(x), Some(sizes)],
            &["s4"],
        );
        let s4 = g.node(n).outputs[0];
        let n = g.add_node(
            "c0",
            Op::ConcatFromSequence(ConcatFromSequence {
                axis: 1,
                new_axis: false,
            }),
            vec![Some(s2)],
            &["c0"],
        );
        let c0 = g.node(n).outputs[0];
        let n = g.add_node(
            "c1",
            Op::ConcatFromSequence(ConcatFromSequence {
                axis: -1,
                new_axis: true,
            }),
            vec![Some(s0)],
            &["c1"],
        );
        let c1 = g.node(n).outputs[0];
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, s0), "seq<f32[B]>");
        assert_eq!(show(&g, s1), "seq<f32[1,B]>");
        assert_eq!(show(&g, s2), "seq<f32[2,B]>");
        assert!(
            show(&g, s3).starts_with("seq<f32[unk__split"),
            "{}",
            show(&g, s3)
        );
        assert_eq!(show(&g, s4), "seq<f32[2,B]>");
        assert!(
            show(&g, c0).starts_with("f32[2,unk__concat"),
            "{}",
            show(&g, c0)
        );
        assert!(
            show(&g, c1).starts_with("f32[B,unk__seq_len"),
            "{}",
            show(&g, c1)
        );
        // Sizes that do not add up.
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F32, &["6"])));
        let sizes = g.add_const("sizes", Tensor::from_vec(vec![2], vec![2i64, 2]).unwrap());
        g.add_node(
            "s",
            Op::SplitToSequence(SplitToSequence {
                axis: 0,
                keepdims: true,
            }),
            vec![Some(x), Some(sizes)],
            &["s"],
        );
        assert!(infer_graph(&mut g)
            .unwrap_err()
            .to_string()
            .contains("does not sum"));
    }

    #[test]
    fn optionals() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F32, &["B"])));
        let n = g.add_node(
            "o",
            Op::Optional(Optional { type_: None }),
            vec![Some(x)],
            &["o"],
        );
        let o = g.node(n).outputs[0];
        let n = g.add_node(
            "o2",
            Op::Optional(Optional {
                type_: Some(Type::Sequence(Box::new(ty(DType::I32, &["2"])))),
            }),
            vec![],
            &["o2"],
        );
        let o2 = g.node(n).outputs[0];
        let n = g.add_node(
            "get",
            Op::OptionalGetElement(OptionalGetElement {}),
            vec![Some(o)],
            &["e"],
        );
        let e = g.node(n).outputs[0];
        let n = g.add_node(
            "get2",
            Op::OptionalGetElement(OptionalGetElement {}),
            vec![Some(x)],
            &["e2"],
        );
        let e2 = g.node(n).outputs[0];
        let n = g.add_node(
            "has",
            Op::OptionalHasElement(OptionalHasElement {}),
            vec![Some(o2)],
            &["h"],
        );
        let h = g.node(n).outputs[0];
        let n = g.add_node(
            "has0",
            Op::OptionalHasElement(OptionalHasElement {}),
            vec![None],
            &["h0"],
        );
        let h0 = g.node(n).outputs[0];
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, o), "opt<f32[B]>");
        assert_eq!(show(&g, o2), "opt<seq<i32[2]>>");
        assert_eq!(show(&g, e), "f32[B]");
        assert_eq!(show(&g, e2), "f32[B]");
        assert_eq!(show(&g, h), "bool[]");
        assert_eq!(show(&g, h0), "bool[]");
        // No input and no type.
        let mut g = Graph::new("t");
        g.add_node("o", Op::Optional(Optional { type_: None }), vec![], &["o"]);
        assert!(infer_graph(&mut g).is_err());
    }

    #[test]
    fn sequence_map_from_declared_body() {
        // Body: x -> Shape(x); its input is declared, so the body infers on its own.
        let mut body = Graph::new("body");
        let bx = body.add_input("bx", Some(ty(DType::F32, &["N"])));
        let n = body.add_node(
            "sh",
            Op::Shape(Shape {
                end: None,
                start: 0,
            }),
            vec![Some(bx)],
            &["bs"],
        );
        let bs = body.node(n).outputs[0];
        body.value_mut(bs).ty = Some(ty(DType::I64, &["1"]));
        body.outputs.push(bs);
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(Type::Sequence(Box::new(ty(DType::F32, &["N"])))));
        let n = g.add_node(
            "m",
            Op::SequenceMap(SequenceMap { body }),
            vec![Some(x)],
            &["y"],
        );
        let y = g.node(n).outputs[0];
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, y), "seq<i64[1]>");
        assert_eq!(
            super::sequence_map_formals(&[
                Some(Type::Sequence(Box::new(ty(DType::F32, &["2"])))),
                Some(ty(DType::I64, &[]))
            ]),
            vec![Some(ty(DType::F32, &["2"])), Some(ty(DType::I64, &[]))]
        );
    }
}
