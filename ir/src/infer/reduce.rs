//! Reductions and ops that normalize along axes: `ReduceX`, `ArgMax`/`ArgMin`, `TopK`,
//! `CumSum`/`CumProd`, `Softmax`/`LogSoftmax`/`Hardmax`, and the normalizations
//! (`LpNormalization`, `MeanVarianceNormalization`, `LayerNormalization`,
//! `RMSNormalization`, `GroupNormalization`).

use super::helpers::*;
use super::{InferCx, InferError, InferResult, Out};
use crate::dtype::DType;
use crate::op::Op;
use crate::shape::Dim;

pub(super) fn infer(op: &Op, cx: &mut InferCx) -> Option<InferResult> {
    use Op::*;
    Some(match op {
        ReduceL1(o) => reduce(cx, Kind::Other, o.keepdims, o.noop_with_empty_axes),
        ReduceL2(o) => reduce(cx, Kind::Other, o.keepdims, o.noop_with_empty_axes),
        ReduceLogSum(o) => reduce(cx, Kind::Other, o.keepdims, o.noop_with_empty_axes),
        ReduceLogSumExp(o) => reduce(cx, Kind::Other, o.keepdims, o.noop_with_empty_axes),
        ReduceMean(o) => reduce(cx, Kind::Other, o.keepdims, o.noop_with_empty_axes),
        ReduceSumSquare(o) => reduce(cx, Kind::Other, o.keepdims, o.noop_with_empty_axes),
        ReduceMax(o) => reduce(cx, Kind::Max, o.keepdims, o.noop_with_empty_axes),
        ReduceMin(o) => reduce(cx, Kind::Min, o.keepdims, o.noop_with_empty_axes),
        ReduceProd(o) => reduce(cx, Kind::Prod, o.keepdims, o.noop_with_empty_axes),
        ReduceSum(o) => reduce(cx, Kind::Sum, o.keepdims, o.noop_with_empty_axes),
        ArgMax(o) => arg_reduce(cx, o.axis, o.keepdims),
        ArgMin(o) => arg_reduce(cx, o.axis, o.keepdims),
        TopK(o) => topk(cx, o.axis),
        CumSum(o) => cumulative(cx, false, o.exclusive, o.reverse),
        CumProd(o) => cumulative(cx, true, o.exclusive, o.reverse),
        Softmax(o) => along_axis(cx, o.axis),
        LogSoftmax(o) => along_axis(cx, o.axis),
        Hardmax(o) => along_axis(cx, o.axis),
        LpNormalization(o) => {
            if o.p != 1 && o.p != 2 {
                Err(InferError::Bad(format!(
                    "LpNormalization p must be 1 or 2, got {}",
                    o.p
                )))
            } else {
                along_axis(cx, o.axis)
            }
        }
        MeanVarianceNormalization(o) => (|| {
            if let Ok(s) = cx.shape(0) {
                norm_axes(&o.axes, s.len())?;
            }
            same_as_input(cx, 0)
        })(),
        LayerNormalization(o) => layer_norm(cx, o.axis, o.stash_type, true),
        RMSNormalization(o) => rms_norm(cx, o.axis),
        GroupNormalization(o) => group_norm(cx, o.num_groups),
        _ => return None,
    })
}

/// What a `ReduceX` computes, for the symbolic contents of shape tensors.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sum,
    Prod,
    Max,
    Min,
    Other,
}

/// Which axes a `ReduceX` reduces, as far as is known statically.
enum Axes {
    /// The op is the identity (empty axes with `noop_with_empty_axes`).
    Noop,
    /// Every axis.
    All,
    /// These axes (not yet normalized).
    Given(Vec<i64>),
    /// `n` axes (when known), which ones only at run time.
    Unknown(Option<usize>),
}

fn reduce_axes(cx: &InferCx, noop: bool) -> Axes {
    let empty = if noop { Axes::Noop } else { Axes::All };
    if !cx.has(1) {
        return empty;
    }
    let vals = cx.known_ints(1).or_else(|| cx.const_ints(1));
    match vals {
        Some(v) if v.is_empty() => empty,
        Some(v) => Axes::Given(v),
        None => {
            // The number of axes may still be known from the axes tensor's shape.
            let n = match cx.shape(1) {
                Ok([d]) => d.known().map(|n| n as usize),
                Ok([]) => Some(1),
                _ => None,
            };
            match n {
                Some(0) => empty,
                n => Axes::Unknown(n),
            }
        }
    }
}

fn reduce(cx: &mut InferCx, kind: Kind, keepdims: bool, noop: bool) -> InferResult {
    let t = cx.tensor(0)?;
    let dt = t.dtype;
    let shape = t.shape.clone();
    if cx.has(1) {
        if let Ok(d) = cx.dtype(1) {
            if d != DType::I64 {
                return Err(InferError::Bad(format!("axes must be i64, got {d}")));
            }
        }
    }
    let axes = reduce_axes(cx, noop);
    let Some(shape) = shape else {
        // Rank unknown: only a full reduction without keepdims has a known shape.
        return Ok(vec![match axes {
            Axes::All if !keepdims => Out::tensor(dt, vec![]),
            _ => Out::unranked(dt),
        }]);
    };
    let rank = shape.len();
    let reduced: Vec<bool> = match &axes {
        Axes::Noop => {
            let mut o = Out::tensor(dt, shape.clone());
            o.sym = cx.sym(0).map(|s| s.to_vec());
            return Ok(vec![o]);
        }
        Axes::All => vec![true; rank],
        Axes::Given(a) => {
            let a = norm_axes(a, rank)?;
            (0..rank).map(|i| a.contains(&i)).collect()
        }
        Axes::Unknown(n) => {
            if keepdims {
                let mut out = Vec::with_capacity(rank);
                for d in &shape {
                    out.push(if d.known() == Some(1) {
                        d.clone()
                    } else {
                        cx.fresh("reduce")
                    });
                }
                return Ok(vec![Out::tensor(dt, out)]);
            }
            return Ok(vec![match n {
                Some(n) if *n <= rank => {
                    let out = (0..rank - n).map(|_| cx.fresh("reduce")).collect();
                    Out::tensor(dt, out)
                }
                Some(n) => {
                    return Err(InferError::Bad(format!(
                        "{n} axes to reduce but the input has rank {rank}"
                    )))
                }
                None => Out::unranked(dt),
            }]);
        }
    };
    let mut out = Vec::with_capacity(rank);
    for (d, &r) in shape.iter().zip(&reduced) {
        if !r {
            out.push(d.clone());
        } else if keepdims {
            out.push(Dim::from(1i64));
        }
    }
    let mut o = Out::tensor(dt, out);
    // Reducing a shape tensor (`ReduceProd(Shape(x))` is the element count).
    if dt.is_int() && rank <= 1 && reduced.iter().all(|&r| r) {
        if let Some(s) = cx.sym(0) {
            let v = match kind {
                Kind::Sum => Some(s.iter().fold(Dim::from(0i64), |a, d| &a + d)),
                Kind::Prod => Some(product(s)),
                Kind::Max | Kind::Min => {
                    let k: Option<Vec<i64>> = s.iter().map(|d| d.known()).collect();
                    k.and_then(|k| {
                        if kind == Kind::Max {
                            k.into_iter().max()
                        } else {
                            k.into_iter().min()
                        }
                    })
                    .map(Dim::from)
                }
                Kind::Other => None,
            };
            o.sym = v.map(|v| vec![v]);
        }
    }
    Ok(vec![o])
}

fn arg_reduce(cx: &InferCx, axis: i64, keepdims: bool) -> InferResult {
    let t = cx.tensor(0)?;
    let Some(s) = &t.shape else {
        return Ok(vec![Out::unranked(DType::I64)]);
    };
    let a = norm_axis(axis, s.len())?;
    if s.is_empty() {
        return Err("ArgMax/ArgMin need an input of rank >= 1".into());
    }
    let mut out = s.clone();
    if keepdims {
        out[a] = Dim::from(1i64);
    } else {
        out.remove(a);
    }
    Ok(vec![Out::tensor(DType::I64, out)])
}

fn topk(cx: &mut InferCx, axis: i64) -> InferResult {
    let t = cx.tensor(0)?;
    let dt = t.dtype;
    let shape = t.shape.clone();
    if let Ok(ks) = cx.shape(1) {
        if !(ks.len() == 1 && ks[0].known().is_none_or(|n| n == 1) || ks.is_empty()) {
            return Err("TopK: K must be a 1-D tensor with one element".into());
        }
    }
    let k = match cx.sym(1) {
        Some([k]) => Some(k.clone()),
        Some(_) => return Err("TopK: K must have exactly one element".into()),
        None => cx
            .const_ints(1)
            .and_then(|v| (v.len() == 1).then(|| Dim::from(v[0]))),
    };
    let Some(mut out) = shape else {
        return Ok(vec![Out::unranked(dt), Out::unranked(DType::I64)]);
    };
    if out.is_empty() {
        return Err("TopK needs an input of rank >= 1".into());
    }
    let a = norm_axis(axis, out.len())?;
    let k = match k {
        Some(k) => {
            if let Some(kv) = k.known() {
                if kv < 0 {
                    return Err(InferError::Bad(format!("TopK: K = {kv} is negative")));
                }
                if let Some(n) = out[a].known() {
                    if kv > n {
                        return Err(InferError::Bad(format!(
                            "TopK: K = {kv} exceeds the axis size {n}"
                        )));
                    }
                }
            }
            k
        }
        None => cx.fresh("topk"),
    };
    out[a] = k;
    Ok(vec![
        Out::tensor(dt, out.clone()),
        Out::tensor(DType::I64, out),
    ])
}

fn cumulative(cx: &InferCx, prod: bool, exclusive: bool, reverse: bool) -> InferResult {
    if let Ok(s) = cx.shape(1) {
        if !(s.is_empty() || s.len() == 1 && s[0].known().is_none_or(|n| n == 1)) {
            return Err("the axis input must be a scalar".into());
        }
    }
    let t = cx.tensor(0)?;
    if let (Some(s), Some(a)) = (&t.shape, cx.const_ints(1)) {
        if let [a] = a[..] {
            norm_axis(a, s.len())?;
        }
    }
    let mut o = same_as_input(cx, 0)?;
    // Prefix sums/products of a 1-D shape tensor.
    if t.dtype.is_int() && t.shape.as_ref().is_some_and(|s| s.len() == 1) {
        if let Some(s) = cx.sym(0) {
            let mut v: Vec<Dim> = s.to_vec();
            if reverse {
                v.reverse();
            }
            let mut acc = Dim::from(if prod { 1i64 } else { 0 });
            let mut res = Vec::with_capacity(v.len());
            for d in &v {
                let next = if prod { &acc * d } else { &acc + d };
                res.push(if exclusive { acc.clone() } else { next.clone() });
                acc = next;
            }
            if reverse {
                res.reverse();
            }
            o[0].sym = Some(res);
        }
    }
    Ok(o)
}

/// Ops whose output has the input's type and that work along one axis.
fn along_axis(cx: &InferCx, axis: i64) -> InferResult {
    if let Ok(s) = cx.shape(0) {
        norm_axis(axis, s.len())?;
    }
    same_as_input(cx, 0)
}

/// Element type named by a `stash_type` attribute.
pub(super) fn stash_dtype(code: i64) -> Result<DType, InferError> {
    DType::from_onnx(code as i32)
        .filter(|d| d.is_float())
        .ok_or_else(|| InferError::Bad(format!("stash_type {code} is not a float type")))
}

/// Shape of the saved statistics of a normalization over the axes `axis..rank`:
/// the input's shape with those dims set to 1.
pub(super) fn stats_shape(shape: &[Dim], axis: usize) -> Vec<Dim> {
    shape
        .iter()
        .enumerate()
        .map(|(i, d)| if i < axis { d.clone() } else { Dim::from(1i64) })
        .collect()
}

/// `LayerNormalization` (Y, Mean, InvStdDev) and its relatives with `mean` outputs.
pub(super) fn layer_norm(cx: &InferCx, axis: i64, stash_type: i64, with_mean: bool) -> InferResult {
    let t = cx.tensor(0)?;
    let u = stash_dtype(stash_type)?;
    let Some(s) = &t.shape else {
        let mut outs = vec![Out::unranked(t.dtype), Out::unranked(u)];
        if with_mean {
            outs.push(Out::unranked(u));
        }
        return Ok(outs);
    };
    let a = norm_axis(axis, s.len())?;
    if s.is_empty() {
        return Err("normalization needs an input of rank >= 1".into());
    }
    check_trailing(cx, 1, s, a, "Scale")?;
    if cx.has(2) {
        check_trailing(cx, 2, s, a, "B")?;
    }
    let stats = stats_shape(s, a);
    let mut outs = vec![
        Out::tensor(t.dtype, s.clone()),
        Out::tensor(u, stats.clone()),
    ];
    if with_mean {
        outs.push(Out::tensor(u, stats));
    }
    Ok(outs)
}

/// Checks that input `i` (a scale or bias) is unidirectionally broadcastable to the
/// normalized dims `shape[axis..]`.
fn check_trailing(
    cx: &InferCx,
    i: usize,
    shape: &[Dim],
    axis: usize,
    what: &str,
) -> Result<(), InferError> {
    let Ok(p) = cx.shape(i) else { return Ok(()) };
    let norm = &shape[axis..];
    if p.len() > norm.len() {
        return Err(InferError::Bad(format!(
            "{what} has rank {} but only {} dims are normalized",
            p.len(),
            norm.len()
        )));
    }
    let off = norm.len() - p.len();
    for (j, d) in p.iter().enumerate() {
        if let (Some(x), Some(y)) = (d.known(), norm[off + j].known()) {
            if x != y && x != 1 {
                return Err(InferError::Bad(format!(
                    "{what} dim {x} does not match the normalized dim {y}"
                )));
            }
        }
    }
    Ok(())
}

fn rms_norm(cx: &InferCx, axis: i64) -> InferResult {
    let t = cx.tensor(0)?;
    // Y has the scale's element type (V); fall back to X's when it is not known.
    let dt = cx.dtype(1).unwrap_or(t.dtype);
    let Some(s) = &t.shape else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let a = norm_axis(axis, s.len())?;
    if s.is_empty() {
        return Err("RMSNormalization needs an input of rank >= 1".into());
    }
    check_trailing(cx, 1, s, a, "scale")?;
    Ok(vec![Out::tensor(dt, s.clone())])
}

fn group_norm(cx: &InferCx, num_groups: i64) -> InferResult {
    let t = cx.tensor(0)?;
    if let Some(s) = &t.shape {
        if s.len() < 2 {
            return Err("GroupNormalization needs an input of rank >= 2 (N, C, ...)".into());
        }
        if num_groups <= 0 {
            return Err(InferError::Bad(format!(
                "num_groups must be positive, got {num_groups}"
            )));
        }
        if let Some(c) = s[1].known() {
            if c % num_groups != 0 {
                return Err(InferError::Bad(format!(
                    "{c} channels do not divide into {num_groups} groups"
                )));
            }
        }
    }
    same_as_input(cx, 0)
}

#[cfg(test)]
mod tests {
    use crate::dtype::DType;
    use crate::graph::{Graph, ValueId};
    use crate::infer::infer_graph;
    use crate::op::*;
    use crate::shape::{Dim, Type};
    use crate::tensor::Tensor;

    fn ty(dt: DType, dims: &[&str]) -> Option<Type> {
        Some(Type::tensor(
            dt,
            dims.iter()
                .map(|d| {
                    d.parse::<i64>()
                        .map(Dim::from)
                        .unwrap_or_else(|_| Dim::sym(d))
                })
                .collect(),
        ))
    }

    fn f32in(g: &mut Graph, name: &str, dims: &[&str]) -> ValueId {
        g.add_input(name, ty(DType::F32, dims))
    }

    fn i64s(g: &mut Graph, name: &str, v: &[i64]) -> ValueId {
        g.add_const(name, Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap())
    }

    /// Runs inference on a one-node graph and returns the output types as strings.
    fn run(
        g: &mut Graph,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        nout: usize,
    ) -> Result<Vec<String>, String> {
        let names: Vec<String> = (0..nout).map(|i| format!("out{i}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let n = g.add_node("n", op, inputs, &refs);
        infer_graph(g).map_err(|e| e.to_string())?;
        Ok(g.node(n)
            .outputs
            .clone()
            .into_iter()
            .map(|o| {
                g.value(o)
                    .ty
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into())
            })
            .collect())
    }

    fn red(keepdims: bool, noop: bool) -> Op {
        Op::ReduceMean(ReduceMean {
            keepdims,
            noop_with_empty_axes: noop,
        })
    }

    #[test]
    fn reduce_with_constant_axes() {
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["batch", "seq", "768"]);
        let a = i64s(&mut g, "a", &[-1]);
        assert_eq!(
            run(&mut g, red(true, false), vec![Some(x), Some(a)], 1).unwrap(),
            ["f32[batch,seq,1]"]
        );

        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["batch", "seq", "768"]);
        let a = i64s(&mut g, "a", &[0, 2]);
        assert_eq!(
            run(&mut g, red(false, false), vec![Some(x), Some(a)], 1).unwrap(),
            ["f32[seq]"]
        );
    }

    #[test]
    fn reduce_without_axes() {
        // All axes reduced by default.
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3"]);
        assert_eq!(
            run(&mut g, red(true, false), vec![Some(x)], 1).unwrap(),
            ["f32[1,1]"]
        );
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3"]);
        let op = Op::ReduceL1(ReduceL1 {
            keepdims: false,
            noop_with_empty_axes: false,
        });
        assert_eq!(run(&mut g, op, vec![Some(x)], 1).unwrap(), ["f32[]"]);
        // Empty axes with noop: identity.
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "n"]);
        let a = i64s(&mut g, "a", &[]);
        let op = Op::ReduceL2(ReduceL2 {
            keepdims: true,
            noop_with_empty_axes: true,
        });
        assert_eq!(
            run(&mut g, op, vec![Some(x), Some(a)], 1).unwrap(),
            ["f32[2,n]"]
        );
        // Unknown rank, full reduction without keepdims: a scalar.
        let mut g = Graph::new("g");
        let x = g.add_input("x", Some(Type::tensor_unranked(DType::F32)));
        let op = Op::ReduceLogSumExp(ReduceLogSumExp {
            keepdims: false,
            noop_with_empty_axes: false,
        });
        assert_eq!(run(&mut g, op, vec![Some(x)], 1).unwrap(), ["f32[]"]);
    }

    #[test]
    fn reduce_with_runtime_axes() {
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["b", "1", "4"]);
        let a = g.add_input("a", ty(DType::I64, &["n"]));
        let r = run(&mut g, red(true, false), vec![Some(x), Some(a)], 1).unwrap();
        assert!(
            r[0].starts_with("f32[unk__") && r[0].contains(",1,unk__"),
            "{}",
            r[0]
        );
        // Two axes, not kept: rank 1.
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["b", "1", "4"]);
        let a = g.add_input("a", ty(DType::I64, &["2"]));
        let op = Op::ReduceMax(ReduceMax {
            keepdims: false,
            noop_with_empty_axes: false,
        });
        let r = run(&mut g, op, vec![Some(x), Some(a)], 1).unwrap();
        assert!(
            r[0].starts_with("f32[unk__") && !r[0].contains(','),
            "{}",
            r[0]
        );
        // Unknown count, not kept: unranked.
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["b", "1", "4"]);
        let a = g.add_input("a", ty(DType::I64, &["n"]));
        let op = Op::ReduceMin(ReduceMin {
            keepdims: false,
            noop_with_empty_axes: false,
        });
        assert_eq!(
            run(&mut g, op, vec![Some(x), Some(a)], 1).unwrap(),
            ["f32[*]"]
        );
    }

    #[test]
    fn reduce_errors() {
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3"]);
        let a = i64s(&mut g, "a", &[2]);
        assert!(run(&mut g, red(true, false), vec![Some(x), Some(a)], 1).is_err());
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3"]);
        let a = i64s(&mut g, "a", &[1, -1]);
        assert!(run(&mut g, red(true, false), vec![Some(x), Some(a)], 1)
            .unwrap_err()
            .contains("repeated"));
    }

    /// Infers `op` directly, with symbolic contents for its inputs.
    fn infer_with_syms(
        op: Op,
        inputs: Vec<Type>,
        syms: Vec<Option<Vec<Dim>>>,
    ) -> Vec<crate::infer::Out> {
        let mut g = Graph::new("g");
        let ins: Vec<Option<ValueId>> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| Some(g.add_input(format!("i{i}"), Some(t.clone()))))
            .collect();
        let n = g.add_node("n", op.clone(), ins, &["y"]);
        let mut fresh = |h: &str| Dim::sym(&format!("unk__{h}"));
        let mut cx = crate::infer::InferCx {
            node: g.node(n),
            inputs: inputs.into_iter().map(Some).collect(),
            consts: vec![None; syms.len()],
            syms,
            fresh: &mut fresh,
        };
        crate::infer::infer_op(&op, &mut cx).unwrap()
    }

    #[test]
    fn reductions_of_shape_tensors_are_symbolic() {
        let s = vec![Dim::sym("batch"), Dim::sym("seq"), Dim::from(4i64)];
        let t = Type::tensor(DType::I64, vec![Dim::from(3i64)]);
        let prod = Op::ReduceProd(ReduceProd {
            keepdims: false,
            noop_with_empty_axes: false,
        });
        let o = infer_with_syms(prod, vec![t.clone()], vec![Some(s.clone())]);
        assert_eq!(o[0].ty.to_string(), "i64[]");
        assert_eq!(o[0].sym.as_ref().unwrap()[0].to_string(), "4*batch*seq");
        let sum = Op::ReduceSum(ReduceSum {
            keepdims: true,
            noop_with_empty_axes: false,
        });
        let o = infer_with_syms(sum, vec![t.clone()], vec![Some(s.clone())]);
        assert_eq!(o[0].ty.to_string(), "i64[1]");
        assert_eq!(o[0].sym.as_ref().unwrap()[0].to_string(), "batch+seq+4");
        let max = Op::ReduceMax(ReduceMax {
            keepdims: false,
            noop_with_empty_axes: false,
        });
        let o = infer_with_syms(max, vec![t.clone()], vec![Some(s.clone())]);
        assert!(o[0].sym.is_none());
        let o = infer_with_syms(
            Op::ReduceMax(ReduceMax {
                keepdims: false,
                noop_with_empty_axes: false,
            }),
            vec![t.clone()],
            vec![Some(vec![
                Dim::from(2i64),
                Dim::from(7i64),
                Dim::from(3i64),
            ])],
        );
        assert_eq!(o[0].sym, Some(vec![Dim::from(7i64)]));
        let cs = Op::CumSum(CumSum {
            exclusive: true,
            reverse: false,
        });
        let o = infer_with_syms(
            cs,
            vec![t.clone(), Type::tensor(DType::I64, vec![])],
            vec![Some(s.clone()), Some(vec![Dim::from(0i64)])],
        );
        let v: Vec<String> = o[0]
            .sym
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(v, ["0", "batch", "batch+seq"]);
        let cp = Op::CumProd(CumProd {
            exclusive: false,
            reverse: true,
        });
        let o = infer_with_syms(
            cp,
            vec![t, Type::tensor(DType::I64, vec![])],
            vec![Some(s), Some(vec![Dim::from(0i64)])],
        );
        let v: Vec<String> = o[0]
            .sym
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(v, ["4*batch*seq", "4*seq", "4"]);
    }

    #[test]
    fn sum_square_log_sum_and_l1_keep_dims() {
        for op in [
            Op::ReduceSumSquare(ReduceSumSquare {
                keepdims: true,
                noop_with_empty_axes: false,
            }),
            Op::ReduceLogSum(ReduceLogSum {
                keepdims: true,
                noop_with_empty_axes: false,
            }),
            Op::ReduceSum(ReduceSum {
                keepdims: true,
                noop_with_empty_axes: false,
            }),
        ] {
            let mut g = Graph::new("g");
            let x = f32in(&mut g, "x", &["3", "4", "5"]);
            let a = i64s(&mut g, "a", &[1]);
            assert_eq!(
                run(&mut g, op, vec![Some(x), Some(a)], 1).unwrap(),
                ["f32[3,1,5]"]
            );
        }
    }

    #[test]
    fn argmax_and_argmin() {
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3", "4"]);
        let op = Op::ArgMax(ArgMax {
            axis: 1,
            keepdims: true,
            select_last_index: false,
        });
        assert_eq!(run(&mut g, op, vec![Some(x)], 1).unwrap(), ["i64[2,1,4]"]);
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3", "4"]);
        let op = Op::ArgMin(ArgMin {
            axis: -1,
            keepdims: false,
            select_last_index: true,
        });
        assert_eq!(run(&mut g, op, vec![Some(x)], 1).unwrap(), ["i64[2,3]"]);
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3"]);
        let op = Op::ArgMin(ArgMin {
            axis: 2,
            keepdims: false,
            select_last_index: true,
        });
        assert!(run(&mut g, op, vec![Some(x)], 1).is_err());
    }

    #[test]
    fn topk_k_constant_symbolic_or_fresh() {
        let op = || {
            Op::TopK(TopK {
                axis: 1,
                largest: true,
                sorted: true,
            })
        };
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["3", "4"]);
        let k = i64s(&mut g, "k", &[3]);
        assert_eq!(
            run(&mut g, op(), vec![Some(x), Some(k)], 2).unwrap(),
            ["f32[3,3]", "i64[3,3]"]
        );
        // K from a graph input: a fresh symbol shared by both outputs.
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["3", "4"]);
        let k = g.add_input("k", ty(DType::I64, &["1"]));
        let r = run(&mut g, op(), vec![Some(x), Some(k)], 2).unwrap();
        assert!(r[0].starts_with("f32[3,unk__topk"), "{}", r[0]);
        assert_eq!(r[0][3..], r[1][3..]);
        // K larger than the axis.
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["3", "4"]);
        let k = i64s(&mut g, "k", &[5]);
        assert!(run(&mut g, op(), vec![Some(x), Some(k)], 2).is_err());
    }

    #[test]
    fn cumulative_ops() {
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3"]);
        let a = g.add_const("a", Tensor::scalar(1i64));
        let op = Op::CumSum(CumSum {
            exclusive: false,
            reverse: false,
        });
        assert_eq!(
            run(&mut g, op, vec![Some(x), Some(a)], 1).unwrap(),
            ["f32[2,3]"]
        );
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3"]);
        let a = g.add_const("a", Tensor::scalar(2i64));
        let op = Op::CumProd(CumProd {
            exclusive: true,
            reverse: true,
        });
        assert!(run(&mut g, op, vec![Some(x), Some(a)], 1).is_err());
    }

    #[test]
    fn softmax_family_checks_axis() {
        for op in [
            Op::Softmax(Softmax { axis: -1 }),
            Op::LogSoftmax(LogSoftmax { axis: 0 }),
            Op::Hardmax(Hardmax { axis: 1 }),
            Op::LpNormalization(LpNormalization { axis: -1, p: 2 }),
        ] {
            let mut g = Graph::new("g");
            let x = f32in(&mut g, "x", &["batch", "10"]);
            assert_eq!(
                run(&mut g, op, vec![Some(x)], 1).unwrap(),
                ["f32[batch,10]"]
            );
        }
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["batch", "10"]);
        assert!(run(&mut g, Op::Softmax(Softmax { axis: 2 }), vec![Some(x)], 1).is_err());
    }

    #[test]
    fn mean_variance_normalization() {
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["1", "3", "4", "4"]);
        let op = Op::MeanVarianceNormalization(MeanVarianceNormalization {
            axes: vec![0, 2, 3],
        });
        assert_eq!(run(&mut g, op, vec![Some(x)], 1).unwrap(), ["f32[1,3,4,4]"]);
    }

    #[test]
    fn layer_norm_outputs() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", ty(DType::F16, &["batch", "seq", "768"]));
        let s = g.add_input("s", ty(DType::F16, &["768"]));
        let op = Op::LayerNormalization(LayerNormalization {
            axis: -1,
            epsilon: 1e-5,
            stash_type: 1,
        });
        assert_eq!(
            run(&mut g, op, vec![Some(x), Some(s)], 3).unwrap(),
            ["f16[batch,seq,768]", "f32[batch,seq,1]", "f32[batch,seq,1]"]
        );
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "3", "4", "5"]);
        let s = f32in(&mut g, "s", &["4", "5"]);
        let b = f32in(&mut g, "b", &["4", "5"]);
        let op = Op::LayerNormalization(LayerNormalization {
            axis: 2,
            epsilon: 1e-5,
            stash_type: 1,
        });
        assert_eq!(
            run(&mut g, op, vec![Some(x), Some(s), Some(b)], 2).unwrap(),
            ["f32[2,3,4,5]", "f32[2,3,1,1]"]
        );
        // Scale of the wrong size.
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["2", "8"]);
        let s = f32in(&mut g, "s", &["4"]);
        let op = Op::LayerNormalization(LayerNormalization {
            axis: -1,
            epsilon: 1e-5,
            stash_type: 1,
        });
        assert!(run(&mut g, op, vec![Some(x), Some(s)], 1).is_err());
    }

    #[test]
    fn rms_and_group_norm() {
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["b", "s", "64"]);
        let s = g.add_input("s", ty(DType::F16, &["64"]));
        let op = Op::RMSNormalization(RMSNormalization {
            axis: -1,
            epsilon: 1e-5,
            stash_type: 1,
        });
        assert_eq!(
            run(&mut g, op, vec![Some(x), Some(s)], 1).unwrap(),
            ["f16[b,s,64]"]
        );
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["n", "6", "8", "8"]);
        let s = f32in(&mut g, "s", &["6"]);
        let b = f32in(&mut g, "b", &["6"]);
        let op = Op::GroupNormalization(GroupNormalization {
            epsilon: 1e-5,
            num_groups: 3,
            stash_type: 1,
        });
        assert_eq!(
            run(&mut g, op, vec![Some(x), Some(s), Some(b)], 1).unwrap(),
            ["f32[n,6,8,8]"]
        );
        let mut g = Graph::new("g");
        let x = f32in(&mut g, "x", &["n", "6", "8", "8"]);
        let s = f32in(&mut g, "s", &["6"]);
        let b = f32in(&mut g, "b", &["6"]);
        let op = Op::GroupNormalization(GroupNormalization {
            epsilon: 1e-5,
            num_groups: 4,
            stash_type: 1,
        });
        assert!(run(&mut g, op, vec![Some(x), Some(s), Some(b)], 1).is_err());
    }
}
