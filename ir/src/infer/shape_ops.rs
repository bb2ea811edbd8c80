//! Shape-manipulating ops: reshapes, transposes, concatenation and splitting, slicing and
//! gathering, padding, `Shape`/`Size`, constants and index generators.
//!
//! These ops carry most of the symbolic shape arithmetic of exported models: `Shape`,
//! `Gather`, `Slice`, `Concat`, `Squeeze`/`Unsqueeze`, `Range`, `ConstantOfShape` propagate the
//! symbolic *contents* of small integer tensors, and `Reshape`/`Expand`/`Tile`/`Pad` turn those
//! contents back into symbolic output shapes.

use super::helpers::*;
use super::{InferCx, InferError, InferResult, Out, FRESH_PREFIX};
use crate::dtype::DType;
use crate::op::Op;
use crate::shape::{shape_of, Dim, Type};
use crate::tensor::Tensor;

type R<T> = Result<T, InferError>;

/// Largest number of elements for which symbolic contents are tracked.
const MAX_SYM: usize = 64;

/// Slice bounds at or beyond this magnitude mean "to the end" / "from the start" whatever the
/// (symbolic) dim is: exporters write `INT_MAX` / `INT64_MAX` there.
const BIG: i64 = i32::MAX as i64;

pub(super) fn infer(op: &Op, cx: &mut InferCx) -> Option<InferResult> {
    Some(match op {
        Op::Reshape(o) => reshape(cx, o.allowzero),
        Op::Transpose(o) => transpose(cx, o.perm.as_deref()),
        Op::Concat(o) => concat(cx, o.axis),
        Op::Split(o) => split(cx, o.axis, o.num_outputs),
        Op::Slice(_) => slice(cx),
        Op::Squeeze(_) => squeeze(cx),
        Op::Unsqueeze(_) => unsqueeze(cx),
        Op::Expand(_) => expand(cx),
        Op::Tile(_) => tile(cx),
        Op::Gather(o) => gather(cx, o.axis),
        Op::GatherElements(o) => gather_elements(cx, o.axis),
        Op::GatherND(o) => gather_nd(cx, o.batch_dims),
        Op::Scatter(o) => scatter_elements(cx, o.axis),
        Op::ScatterElements(o) => scatter_elements(cx, o.axis),
        Op::ScatterND(_) => scatter_nd(cx),
        Op::TensorScatter(o) => tensor_scatter(cx, o.axis),
        Op::Pad(_) => pad(cx),
        Op::Shape(o) => shape_op(cx, o.start, o.end),
        Op::Size(_) => size(cx),
        Op::Flatten(o) => flatten(cx, o.axis),
        Op::ConstantOfShape(o) => constant_of_shape(cx, o.value.as_ref()),
        Op::Range(_) => range(cx),
        Op::OneHot(o) => one_hot(cx, o.axis),
        Op::NonZero(_) => nonzero(cx),
        Op::Compress(o) => compress(cx, o.axis),
        Op::DepthToSpace(o) => depth_to_space(cx, o.blocksize),
        Op::SpaceToDepth(o) => space_to_depth(cx, o.blocksize),
        Op::Trilu(_) => same_min_rank(cx, 2, "Trilu"),
        Op::ReverseSequence(o) => reverse_sequence(cx, o.batch_axis, o.time_axis),
        Op::EyeLike(o) => eye_like(cx, o.dtype),
        Op::Constant(o) => constant(o),
        Op::CenterCropPad(o) => center_crop_pad(cx, o.axes.as_deref()),
        Op::Unique(o) => unique(cx, o.axis),
        Op::BitCast(o) => bitcast(cx, o.to),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn bad<T>(msg: impl Into<String>) -> R<T> {
    Err(InferError::Bad(msg.into()))
}

fn is_fresh(d: &Dim) -> bool {
    d.as_symbol().is_some_and(|s| s.starts_with(FRESH_PREFIX))
}

/// Elements of integer input `i` as dims: tracked symbolically, or a constant of any size.
fn dims_of(cx: &InferCx, i: usize) -> Option<Vec<Dim>> {
    if !cx.has(i) {
        return None;
    }
    if let Some(s) = cx.sym(i) {
        return Some(s.to_vec());
    }
    cx.const_ints(i)
        .map(|v| v.into_iter().map(Dim::from).collect())
}

/// Elements of integer input `i` when they are all known numbers.
fn ints_of(cx: &InferCx, i: usize) -> Option<Vec<i64>> {
    dims_of(cx, i)?.iter().map(|d| d.known()).collect()
}

/// Number of elements of the 1-D (or scalar) input `i`, when its contents or its shape tell.
fn static_len(cx: &InferCx, i: usize) -> Option<usize> {
    if let Some(v) = dims_of(cx, i) {
        return Some(v.len());
    }
    match cx.shape(i).ok()? {
        [] => Some(1),
        [d] => d.known().and_then(|v| usize::try_from(v).ok()),
        _ => None,
    }
}

fn fresh_dims(cx: &mut InferCx, n: usize, hint: &str) -> Vec<Dim> {
    (0..n).map(|_| cx.fresh(hint)).collect()
}

/// Input `i`'s dtype and shape (`None` when its rank is unknown).
fn input(cx: &InferCx, i: usize) -> R<(DType, Option<Vec<Dim>>)> {
    let t = cx.tensor(i)?;
    Ok((t.dtype, t.shape.clone()))
}

/// The dim two inputs must agree on: a known number beats a symbol, a named symbol beats an
/// invented one.
fn unify(a: &Dim, b: &Dim, what: &str) -> R<Dim> {
    Ok(match (a.known(), b.known()) {
        (Some(x), Some(y)) if x != y => return bad(format!("{what}: dims {x} and {y} differ")),
        (Some(_), _) => a.clone(),
        (_, Some(_)) => b.clone(),
        _ if is_fresh(a) => b.clone(),
        _ => a.clone(),
    })
}

/// Rejects dims that are known to be negative.
fn check_nonneg(dims: &[Dim], what: &str) -> R<()> {
    match dims.iter().find_map(|d| d.known().filter(|v| *v < 0)) {
        Some(v) => bad(format!("{what} has negative size {v}")),
        None => Ok(()),
    }
}

/// Whether a symbolic value looks negative (a polynomial negative for large symbol values:
/// `-seq`, `1-seq`). Known values are tested exactly.
fn looks_negative(d: &Dim) -> bool {
    match d.known() {
        Some(v) => v < 0,
        None => d.eval(&|_| Some(1 << 16)).is_some_and(|v| v < 0),
    }
}

/// Ceiling division for a positive divisor.
fn ceil_div(a: i64, b: i64) -> i64 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) != 0 {
        q + 1
    } else {
        q
    }
}

/// Sym contents for a constant integer tensor that is small enough to be a shape.
fn tensor_sym(t: &Tensor) -> Option<Vec<Dim>> {
    if t.rank() <= 1 && t.len() <= MAX_SYM && t.dtype().is_int() {
        Some(t.to_i64_vec()?.into_iter().map(Dim::from).collect())
    } else {
        None
    }
}

/// Sym contents of input `i` re-used for an output of shape `shape` (same elements in the same
/// order), when that output is small enough to be tracked.
fn pass_sym(cx: &InferCx, i: usize, shape: &[Dim]) -> Option<Vec<Dim>> {
    let s = cx.sym(i)?;
    let ok = match shape {
        [] => s.len() == 1,
        [d] => d.known() == Some(s.len() as i64),
        _ => false,
    };
    ok.then(|| s.to_vec())
}

// ---------------------------------------------------------------------------------------------
// Reshape family.

fn reshape(cx: &mut InferCx, allowzero: bool) -> InferResult {
    let (dt, in_shape) = input(cx, 0)?;
    let Some(target) = dims_of(cx, 1) else {
        // Only the output rank may be known.
        return Ok(vec![match static_len(cx, 1) {
            Some(n) if cx.shape(1).is_ok_and(|s| s.len() == 1) => {
                Out::tensor(dt, fresh_dims(cx, n, "reshape"))
            }
            _ => Out::unranked(dt),
        }]);
    };
    if cx.shape(1).is_ok_and(|s| s.len() != 1) {
        return bad("the shape input must be 1-D");
    }
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, d) in target.iter().enumerate() {
        match d.known() {
            Some(-1) => {
                if infer_at.replace(i).is_some() {
                    return bad("the shape has more than one -1");
                }
                out.push(Dim::from(1i64));
            }
            Some(0) if !allowzero => match &in_shape {
                Some(s) => match s.get(i) {
                    Some(d) => out.push(d.clone()),
                    None => {
                        return bad(format!(
                            "shape[{i}] = 0 copies a dim the rank-{} input lacks",
                            s.len()
                        ))
                    }
                },
                None => out.push(cx.fresh("reshape")),
            },
            Some(v) if v < -1 => return bad(format!("invalid dim {v} in the shape")),
            _ => out.push(d.clone()),
        }
    }
    if allowzero && infer_at.is_some() && target.iter().any(|d| d.known() == Some(0)) {
        return bad("with allowzero=1 the shape cannot contain both 0 and -1");
    }
    let total = in_shape.as_ref().map(|s| product(s));
    if let Some(k) = infer_at {
        let others = product(&out);
        out[k] = match &total {
            Some(tot) => match (tot.known(), others.known()) {
                (Some(a), Some(b)) if b != 0 => {
                    if a % b != 0 {
                        return bad(format!(
                            "cannot reshape {a} elements into a multiple of {b}"
                        ));
                    }
                    Dim::from(a / b)
                }
                (Some(_), Some(_)) => cx.fresh("reshape"),
                _ => match tot.div_exact(&others) {
                    Some(q) => q,
                    None => cx.fresh("reshape"),
                },
            },
            None => cx.fresh("reshape"),
        };
    } else if let (Some(a), Some(b)) = (total.as_ref().and_then(Dim::known), product(&out).known())
    {
        if a != b {
            return bad(format!("cannot reshape {a} elements into {b}"));
        }
    }
    let sym = pass_sym(cx, 0, &out);
    Ok(vec![Out {
        ty: Type::tensor(dt, out),
        sym,
    }])
}

fn flatten(cx: &mut InferCx, axis: i64) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::tensor(dt, fresh_dims(cx, 2, "flatten"))]);
    };
    let r = s.len() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&a) {
        return bad(format!("axis {axis} is out of range for rank {r}"));
    }
    let a = a as usize;
    Ok(vec![Out::tensor(
        dt,
        vec![product(&s[..a]), product(&s[a..])],
    )])
}

fn squeeze(cx: &mut InferCx) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = s.len();
    let out: Vec<Dim> = if cx.has(1) {
        match ints_of(cx, 1) {
            Some(axes) => {
                let axes = norm_axes(&axes, r)?;
                for &a in &axes {
                    if let Some(v) = s[a].known().filter(|&v| v != 1) {
                        return bad(format!("cannot squeeze axis {a} of size {v}"));
                    }
                }
                s.iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, d)| d.clone())
                    .collect()
            }
            None => match static_len(cx, 1) {
                Some(k) if k <= r => fresh_dims(cx, r - k, "squeeze"),
                Some(k) => return bad(format!("{k} axes to squeeze for rank {r}")),
                None => return Ok(vec![Out::unranked(dt)]),
            },
        }
    } else {
        // Without axes every dim of size 1 goes: the rank is unknown while a dim is symbolic.
        if s.iter().any(|d| !d.is_known()) {
            return Ok(vec![Out::unranked(dt)]);
        }
        s.iter().filter(|d| d.known() != Some(1)).cloned().collect()
    };
    let sym = pass_sym(cx, 0, &out);
    Ok(vec![Out {
        ty: Type::tensor(dt, out),
        sym,
    }])
}

fn unsqueeze(cx: &mut InferCx) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let out = match ints_of(cx, 1) {
        Some(axes) => {
            let rank = s.len() + axes.len();
            let axes = norm_axes(&axes, rank)?;
            let mut it = s.iter();
            (0..rank)
                .map(|j| {
                    if axes.contains(&j) {
                        Dim::from(1i64)
                    } else {
                        it.next().cloned().unwrap_or(Dim::from(1i64))
                    }
                })
                .collect::<Vec<_>>()
        }
        None => match static_len(cx, 1) {
            Some(k) => fresh_dims(cx, s.len() + k, "unsqueeze"),
            None => return Ok(vec![Out::unranked(dt)]),
        },
    };
    let sym = pass_sym(cx, 0, &out);
    Ok(vec![Out {
        ty: Type::tensor(dt, out),
        sym,
    }])
}

fn transpose(cx: &mut InferCx, perm: Option<&[i64]>) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = s.len();
    let perm: Vec<usize> = match perm {
        Some(p) => {
            if p.len() != r {
                return bad(format!("perm has {} entries for rank {r}", p.len()));
            }
            norm_axes(p, r)?
        }
        None => (0..r).rev().collect(),
    };
    let out: Vec<Dim> = perm.iter().map(|&p| s[p].clone()).collect();
    let sym = pass_sym(cx, 0, &out);
    Ok(vec![Out {
        ty: Type::tensor(dt, out),
        sym,
    }])
}

fn depth_to_space(cx: &mut InferCx, b: i64) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    if s.len() != 4 {
        return bad(format!("input must be 4-D, got rank {}", s.len()));
    }
    if b < 1 {
        return bad(format!("blocksize {b} must be positive"));
    }
    let bb = Dim::from(b * b);
    let c = match s[1].div_exact(&bb) {
        Some(c) => c,
        None if s[1].is_known() => {
            return bad(format!("channels {} are not divisible by {b}*{b}", s[1]))
        }
        None => cx.fresh("depth_to_space"),
    };
    let b = Dim::from(b);
    Ok(vec![Out::tensor(
        dt,
        vec![s[0].clone(), c, &s[2] * &b, &s[3] * &b],
    )])
}

fn space_to_depth(cx: &mut InferCx, b: i64) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    if s.len() != 4 {
        return bad(format!("input must be 4-D, got rank {}", s.len()));
    }
    if b < 1 {
        return bad(format!("blocksize {b} must be positive"));
    }
    let bd = Dim::from(b);
    let mut spatial = Vec::new();
    for d in &s[2..] {
        spatial.push(match d.div_exact(&bd) {
            Some(q) => q,
            None if d.is_known() => return bad(format!("spatial dim {d} is not divisible by {b}")),
            None => cx.fresh("space_to_depth"),
        });
    }
    Ok(vec![Out::tensor(
        dt,
        vec![
            s[0].clone(),
            &s[1] * &Dim::from(b * b),
            spatial[0].clone(),
            spatial[1].clone(),
        ],
    )])
}

// ---------------------------------------------------------------------------------------------
// Concat / Split.

fn concat(cx: &mut InferCx, axis: i64) -> InferResult {
    let mut dt = None;
    let mut shapes = Vec::new();
    let mut syms = Vec::new();
    let mut partial = false;
    for i in 0..cx.num_inputs() {
        if !cx.has(i) {
            continue;
        }
        match cx.ty(i) {
            Some(Type::Tensor(t)) => {
                match dt {
                    None => dt = Some(t.dtype),
                    Some(d) if d != t.dtype => {
                        return bad(format!("inputs mix {d} and {}", t.dtype))
                    }
                    _ => {}
                }
                match &t.shape {
                    Some(s) => shapes.push(s.clone()),
                    None => partial = true,
                }
                syms.push(cx.sym(i).map(|s| s.to_vec()));
            }
            Some(t) => return bad(format!("input {i} must be a tensor, got {t}")),
            None => {
                partial = true;
                syms.push(None);
            }
        }
    }
    let dt = dt.ok_or(InferError::Unknown)?;
    let Some(first) = shapes.first() else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = first.len();
    if r == 0 {
        return bad("cannot concatenate scalars");
    }
    if let Some(s) = shapes.iter().find(|s| s.len() != r) {
        return bad(format!("inputs have ranks {r} and {}", s.len()));
    }
    let a = norm_axis(axis, r)?;
    let mut out = first.clone();
    for s in &shapes[1..] {
        for j in 0..r {
            out[j] = if j == a {
                &out[j] + &s[j]
            } else {
                unify(&out[j], &s[j], "non-axis dims")?
            };
        }
    }
    if partial {
        out[a] = cx.fresh("concat");
    }
    let mut o = Out::tensor(dt, out);
    if !partial && r == 1 && dt.is_int() {
        o.sym = syms
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat());
    }
    Ok(vec![o])
}

/// Sizes of an equal split of `d` into `n` parts, the last one smaller when `d` does not
/// divide (opset 18).
fn equal_split(cx: &mut InferCx, d: &Dim, n: usize) -> Vec<Dim> {
    let ni = n as i64;
    if let Some(v) = d.known() {
        let div = ceil_div(v, ni);
        return (0..ni)
            .map(|k| {
                let start = (k * div).min(v);
                let end = if k == ni - 1 {
                    v
                } else {
                    ((k + 1) * div).min(v)
                };
                Dim::from((end - start).max(0))
            })
            .collect();
    }
    match d.div_exact(&Dim::from(ni)) {
        Some(q) => vec![q; n],
        None => fresh_dims(cx, n, "split"),
    }
}

fn split(cx: &mut InferCx, axis: i64, num_outputs: Option<i64>) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let n_out = cx.node.outputs.len();
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt); n_out]);
    };
    if s.is_empty() {
        return bad("cannot split a scalar");
    }
    let a = norm_axis(axis, s.len())?;
    let d = s[a].clone();
    let sizes = if cx.has(1) {
        if num_outputs.is_some() {
            return bad("both the split input and num_outputs are given");
        }
        match dims_of(cx, 1) {
            Some(v) => {
                if v.len() != n_out {
                    return bad(format!("split has {} sizes for {n_out} outputs", v.len()));
                }
                check_nonneg(&v, "split")?;
                if let (Some(sum), Some(dv)) = (dim_sum(&v).known(), d.known()) {
                    if sum != dv {
                        return bad(format!("split sizes sum to {sum}, the axis has {dv}"));
                    }
                }
                v
            }
            None if n_out == 1 => vec![d.clone()],
            None => fresh_dims(cx, n_out, "split"),
        }
    } else {
        let n = match num_outputs {
            Some(k) if k < 1 => return bad(format!("num_outputs {k} must be positive")),
            Some(k) if k as usize != n_out => {
                return bad(format!(
                    "num_outputs is {k} but the node has {n_out} outputs"
                ))
            }
            _ => n_out,
        };
        if n == 0 {
            return bad("Split has no outputs");
        }
        equal_split(cx, &d, n)
    };
    let whole_sym = if s.len() == 1 {
        cx.sym(0).map(|v| v.to_vec())
    } else {
        None
    };
    let mut pos = 0usize;
    let mut outs = Vec::with_capacity(n_out);
    for size in sizes {
        let mut sh = s.clone();
        sh[a] = size.clone();
        let mut o = Out::tensor(dt, sh);
        if let (Some(w), Some(k)) = (&whole_sym, size.known()) {
            let k = k as usize;
            if pos + k <= w.len() {
                o.sym = Some(w[pos..pos + k].to_vec());
            }
            pos += k;
        }
        outs.push(o);
    }
    Ok(outs)
}

fn dim_sum(v: &[Dim]) -> Dim {
    v.iter().fold(Dim::from(0i64), |acc, d| &acc + d)
}

// ---------------------------------------------------------------------------------------------
// Slice.

/// Concrete slice indices per the ONNX spec (negative bounds wrap once, then clamp).
fn slice_range(d: i64, start: i64, end: i64, step: i64) -> (i64, i64, i64) {
    let wrap = |x: i64| if x < 0 { x.saturating_add(d) } else { x };
    let (s, e) = (wrap(start), wrap(end));
    let (s, e) = if step > 0 {
        (s.clamp(0, d), e.clamp(0, d))
    } else {
        (s.max(0).min(d - 1), e.max(-1).min(d - 1))
    };
    let n = if step > 0 {
        ceil_div(e - s, step)
    } else {
        ceil_div(s - e, -step)
    };
    (s, n.max(0), step)
}

/// Length of a slice of a dim `d` (symbolic where needed). For symbolic operands the usual
/// assumptions of exported models hold: a non-negative bound is within the dim, a negative
/// one counts from its end. `None` when nothing sensible can be said.
fn slice_len(d: &Dim, start: &Dim, end: &Dim, step: i64) -> Option<Dim> {
    if let (Some(dv), Some(s), Some(e)) = (d.known(), start.known(), end.known()) {
        return Some(Dim::from(slice_range(dv, s, e, step).1));
    }
    let one = Dim::from(1i64);
    let norm = |x: &Dim, is_end: bool| -> Dim {
        match x.known() {
            Some(v) if v >= BIG => {
                if step > 0 {
                    d.clone()
                } else {
                    d - &one
                }
            }
            Some(v) if v <= -BIG => {
                if step > 0 || !is_end {
                    Dim::from(0i64)
                } else {
                    Dim::from(-1i64)
                }
            }
            Some(v) if v < 0 => match d.known() {
                Some(dv) => Dim::from((dv + v).max(if is_end && step < 0 { -1 } else { 0 })),
                None => d + x,
            },
            Some(v) => match d.known() {
                Some(dv) => Dim::from(v.min(if step < 0 { dv - 1 } else { dv })),
                None => x.clone(),
            },
            None if looks_negative(x) => d + x,
            None => x.clone(),
        }
    };
    let (s, e) = (norm(start, false), norm(end, true));
    let diff = if step > 0 { &e - &s } else { &s - &e };
    let k = step.abs();
    let len = match diff.known() {
        Some(v) => Dim::from(ceil_div(v, k)),
        None => diff.div_exact(&Dim::from(k))?,
    };
    Some(match len.known() {
        Some(v) if v < 0 => Dim::from(0i64),
        _ => len,
    })
}

fn slice(cx: &mut InferCx) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = s.len();
    if r == 0 {
        return bad("cannot slice a scalar");
    }
    let starts = dims_of(cx, 1);
    let ends = dims_of(cx, 2);
    let n = starts
        .as_ref()
        .map(|v| v.len())
        .or(ends.as_ref().map(|v| v.len()))
        .or_else(|| static_len(cx, 1));
    let axes: Option<Vec<usize>> = if cx.has(3) {
        match ints_of(cx, 3) {
            Some(a) => Some(norm_axes(&a, r)?),
            None => None,
        }
    } else {
        n.map(|n| (0..n).collect())
    };
    if let Some(ax) = &axes {
        if ax.len() > r {
            return bad(format!("{} axes to slice for rank {r}", ax.len()));
        }
        if ax.iter().any(|&a| a >= r) {
            return bad(format!("slice axes {ax:?} out of range for rank {r}"));
        }
    }
    let steps: Option<Vec<i64>> = if cx.has(4) {
        ints_of(cx, 4)
    } else {
        n.map(|n| vec![1; n])
    };
    for (name, len) in [
        ("starts", starts.as_ref().map(|v| v.len())),
        ("ends", ends.as_ref().map(|v| v.len())),
        ("axes", axes.as_ref().map(|v| v.len())),
        ("steps", steps.as_ref().map(|v| v.len())),
    ] {
        if let (Some(l), Some(n)) = (len, n) {
            if l != n {
                return bad(format!("{name} has {l} entries, starts {n}"));
            }
        }
    }
    if steps.as_ref().is_some_and(|v| v.contains(&0)) {
        return bad("slice step cannot be 0");
    }
    let mut out = s.clone();
    let mut sym = None;
    match (&starts, &ends, &axes, &steps) {
        (Some(st), Some(en), Some(ax), Some(sp)) => {
            for i in 0..ax.len() {
                let a = ax[i];
                out[a] = match slice_len(&s[a], &st[i], &en[i], sp[i]) {
                    Some(l) => l,
                    None => cx.fresh("slice"),
                };
            }
            // Slicing a tracked 1-D shape tensor.
            if let (Some(data), [0]) = (cx.sym(0), ax.as_slice()) {
                if let (Some(b), Some(e)) = (st[0].known(), en[0].known()) {
                    let (first, len, step) = slice_range(data.len() as i64, b, e, sp[0]);
                    sym = Some(
                        (0..len)
                            .map(|k| data[(first + k * step) as usize].clone())
                            .collect(),
                    );
                }
            }
        }
        (_, _, Some(ax), _) => {
            for &a in ax {
                out[a] = cx.fresh("slice");
            }
        }
        _ => out = fresh_dims(cx, r, "slice"),
    }
    Ok(vec![Out {
        ty: Type::tensor(dt, out),
        sym,
    }])
}

// ---------------------------------------------------------------------------------------------
// Expand / Tile / Pad / CenterCropPad.

fn expand(cx: &mut InferCx) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    if cx.shape(1).is_ok_and(|s| s.len() != 1) {
        return bad("the shape input must be 1-D");
    }
    let out = match (&s, dims_of(cx, 1)) {
        (Some(s), Some(t)) => {
            check_nonneg(&t, "the target shape")?;
            broadcast(&[s, &t])?
        }
        (Some(s), None) => match static_len(cx, 1) {
            Some(n) => {
                let rank = n.max(s.len());
                let off = rank - s.len();
                let mut out = Vec::with_capacity(rank);
                for j in 0..rank {
                    out.push(match j.checked_sub(off).map(|k| &s[k]) {
                        Some(d) if d.known().is_some_and(|v| v != 1) => d.clone(),
                        _ => cx.fresh("expand"),
                    });
                }
                out
            }
            None => return Ok(vec![Out::unranked(dt)]),
        },
        (None, _) => return Ok(vec![Out::unranked(dt)]),
    };
    let mut sym = pass_sym(cx, 0, &out);
    if sym.is_none() && dt.is_int() {
        // A one-element tensor broadcast to a 1-D shape.
        if let (Some(v), [d]) = (cx.sym(0), out.as_slice()) {
            if v.len() == 1 {
                sym = d
                    .known()
                    .filter(|&n| n >= 0 && n as usize <= MAX_SYM)
                    .map(|n| vec![v[0].clone(); n as usize]);
            }
        }
    }
    Ok(vec![Out {
        ty: Type::tensor(dt, out),
        sym,
    }])
}

fn tile(cx: &mut InferCx) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = s.len();
    let (out, sym) = match dims_of(cx, 1) {
        Some(rep) => {
            if rep.len() != r {
                return bad(format!("repeats has {} entries for rank {r}", rep.len()));
            }
            check_nonneg(&rep, "repeats")?;
            let out: Vec<Dim> = s.iter().zip(&rep).map(|(d, k)| d * k).collect();
            let sym = match (cx.sym(0), rep.first().and_then(Dim::known)) {
                (Some(v), Some(k)) if r == 1 && v.len().saturating_mul(k as usize) <= MAX_SYM => {
                    Some(
                        v.iter()
                            .cycle()
                            .take(v.len() * k as usize)
                            .cloned()
                            .collect(),
                    )
                }
                _ => None,
            };
            (out, sym)
        }
        None => {
            if static_len(cx, 1).is_some_and(|n| n != r) {
                return bad(format!("repeats length differs from rank {r}"));
            }
            (fresh_dims(cx, r, "tile"), None)
        }
    };
    Ok(vec![Out {
        ty: Type::tensor(dt, out),
        sym,
    }])
}

fn pad(cx: &mut InferCx) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = s.len();
    let axes: Option<Vec<usize>> = if cx.has(3) {
        match ints_of(cx, 3) {
            Some(a) => Some(norm_axes(&a, r)?),
            None => None,
        }
    } else {
        Some((0..r).collect())
    };
    let Some(axes) = axes else {
        return Ok(vec![Out::tensor(dt, fresh_dims(cx, r, "pad"))]);
    };
    let k = axes.len();
    let mut out = s.clone();
    match dims_of(cx, 1) {
        Some(p) => {
            if p.len() != 2 * k {
                return bad(format!("pads has {} entries for {k} axes", p.len()));
            }
            for (i, &a) in axes.iter().enumerate() {
                let d = &(&s[a] + &p[i]) + &p[i + k];
                if let Some(v) = d.known().filter(|v| *v < 0) {
                    return bad(format!("padding makes axis {a} negative ({v})"));
                }
                out[a] = d;
            }
        }
        None => {
            if static_len(cx, 1).is_some_and(|n| n != 2 * k) {
                return bad(format!("pads length must be {}", 2 * k));
            }
            for &a in &axes {
                out[a] = cx.fresh("pad");
            }
        }
    }
    Ok(vec![Out::tensor(dt, out)])
}

fn center_crop_pad(cx: &mut InferCx, axes: Option<&[i64]>) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let Some(s) = s else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = s.len();
    let axes = match axes {
        Some(a) => norm_axes(a, r)?,
        None => (0..r).collect(),
    };
    let mut out = s.clone();
    match dims_of(cx, 1) {
        Some(t) => {
            if t.len() != axes.len() {
                return bad(format!(
                    "shape has {} entries for {} axes",
                    t.len(),
                    axes.len()
                ));
            }
            check_nonneg(&t, "the target shape")?;
            for (d, &a) in t.into_iter().zip(&axes) {
                out[a] = d;
            }
        }
        None => {
            for &a in &axes {
                out[a] = cx.fresh("center_crop_pad");
            }
        }
    }
    Ok(vec![Out::tensor(dt, out)])
}

// ---------------------------------------------------------------------------------------------
// Gather / Scatter.

fn gather(cx: &mut InferCx, axis: i64) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let (_, q) = input(cx, 1)?;
    let (Some(s), Some(q)) = (s, q) else {
        return Ok(vec![Out::unranked(dt)]);
    };
    if s.is_empty() {
        return bad("cannot gather from a scalar");
    }
    let a = norm_axis(axis, s.len())?;
    let mut out = s[..a].to_vec();
    out.extend(q.iter().cloned());
    out.extend(s[a + 1..].iter().cloned());
    let mut sym = None;
    if let Some(data) = cx.sym(0).filter(|_| s.len() == 1 && q.len() <= 1) {
        if let Some(idx) = ints_of(cx, 1) {
            let n = data.len() as i64;
            let mut v = Vec::with_capacity(idx.len());
            for i in idx {
                if i < -n || i >= n {
                    return bad(format!("index {i} is out of range for a dim of {n}"));
                }
                v.push(data[if i < 0 { i + n } else { i } as usize].clone());
            }
            sym = Some(v);
        }
    }
    Ok(vec![Out {
        ty: Type::tensor(dt, out),
        sym,
    }])
}

fn gather_elements(cx: &mut InferCx, axis: i64) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let (_, q) = input(cx, 1)?;
    if let Some(s) = &s {
        norm_axis(axis, s.len())?;
        if s.is_empty() {
            return bad("cannot gather from a scalar");
        }
    }
    match (s, q) {
        (Some(s), Some(q)) if s.len() != q.len() => bad(format!(
            "data has rank {} but indices rank {}",
            s.len(),
            q.len()
        )),
        (_, Some(q)) => Ok(vec![Out::tensor(dt, q)]),
        (Some(s), None) => Ok(vec![Out::tensor(dt, fresh_dims(cx, s.len(), "gather"))]),
        (None, None) => Ok(vec![Out::unranked(dt)]),
    }
}

fn gather_nd(cx: &mut InferCx, b: i64) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let (_, q) = input(cx, 1)?;
    let (Some(s), Some(q)) = (s, q) else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let (r, m) = (s.len(), q.len());
    if r == 0 || m == 0 {
        return bad("data and indices must have rank >= 1");
    }
    if b < 0 || b as usize >= r.min(m) {
        return bad(format!(
            "batch_dims {b} must be less than both ranks ({r}, {m})"
        ));
    }
    let b = b as usize;
    for i in 0..b {
        unify(&s[i], &q[i], "batch dims")?;
    }
    let Some(last) = q[m - 1].known() else {
        return Ok(vec![Out::unranked(dt)]);
    };
    if last < 1 || last as usize > r - b {
        return bad(format!(
            "indices.shape[-1] = {last} must be in 1..={}",
            r - b
        ));
    }
    let mut out = q[..m - 1].to_vec();
    out.extend(s[b + last as usize..].iter().cloned());
    Ok(vec![Out::tensor(dt, out)])
}

fn scatter_elements(cx: &mut InferCx, axis: i64) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    if let Some(s) = &s {
        if s.is_empty() {
            return bad("cannot scatter into a scalar");
        }
        norm_axis(axis, s.len())?;
        for i in [1, 2] {
            if let Ok(q) = cx.shape(i) {
                if q.len() != s.len() {
                    return bad(format!(
                        "data has rank {} but input {i} rank {}",
                        s.len(),
                        q.len()
                    ));
                }
            }
        }
    }
    Ok(vec![match s {
        Some(s) => Out::tensor(dt, s),
        None => Out::unranked(dt),
    }])
}

fn scatter_nd(cx: &mut InferCx) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    if let (Some(s), Ok(q)) = (&s, cx.shape(1)) {
        if let Some(last) = q.last().and_then(Dim::known) {
            if last < 1 || last as usize > s.len() {
                return bad(format!(
                    "indices.shape[-1] = {last} must be in 1..={}",
                    s.len()
                ));
            }
        }
    }
    Ok(vec![match s {
        Some(s) => Out::tensor(dt, s),
        None => Out::unranked(dt),
    }])
}

fn tensor_scatter(cx: &mut InferCx, axis: i64) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    if let Some(s) = &s {
        let a = norm_axis(axis, s.len())?;
        if let Ok(u) = cx.shape(1) {
            if u.len() != s.len() {
                return bad(format!(
                    "update has rank {} but the cache rank {}",
                    u.len(),
                    s.len()
                ));
            }
            for (j, (x, y)) in s.iter().zip(u).enumerate() {
                if j != a {
                    unify(x, y, "cache and update")?;
                }
            }
        }
    }
    Ok(vec![match s {
        Some(s) => Out::tensor(dt, s),
        None => Out::unranked(dt),
    }])
}

// ---------------------------------------------------------------------------------------------
// Shape / Size / constants / generators.

fn shape_op(cx: &mut InferCx, start: i64, end: Option<i64>) -> InferResult {
    let s = cx.tensor(0)?.shape.clone();
    let Some(s) = s else {
        return Ok(vec![Out::tensor(DType::I64, vec![cx.fresh("rank")])]);
    };
    let r = s.len() as i64;
    let clamp = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
    let (b, e) = (clamp(start), clamp(end.unwrap_or(r)));
    let v = if b < e { s[b..e].to_vec() } else { Vec::new() };
    Ok(vec![Out::sym_i64(v, false)])
}

fn size(cx: &mut InferCx) -> InferResult {
    let s = cx.tensor(0)?.shape.clone();
    Ok(vec![match s {
        Some(s) => Out::sym_i64(vec![product(&s)], true),
        None => Out::tensor(DType::I64, vec![]),
    }])
}

fn constant_of_shape(cx: &mut InferCx, value: Option<&Tensor>) -> InferResult {
    let dt = value.map(|t| t.dtype()).unwrap_or(DType::F32);
    if let Some(t) = value {
        if t.len() != 1 {
            return bad(format!("value must have one element, has {}", t.len()));
        }
    }
    if cx.shape(0).is_ok_and(|s| s.len() != 1) {
        return bad("the shape input must be 1-D");
    }
    let Some(shape) = dims_of(cx, 0) else {
        return Ok(vec![match static_len(cx, 0) {
            Some(n) => Out::tensor(dt, fresh_dims(cx, n, "constant_of_shape")),
            None => Out::unranked(dt),
        }]);
    };
    check_nonneg(&shape, "the shape")?;
    let mut sym = None;
    if dt.is_int() && shape.len() <= 1 {
        let v = value
            .and_then(|t| t.to_i64_vec())
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        let n = shape.first().map_or(Some(1), Dim::known);
        if let Some(n) = n.filter(|&n| n as usize <= MAX_SYM) {
            sym = Some(vec![Dim::from(v); n as usize]);
        }
    }
    Ok(vec![Out {
        ty: Type::tensor(dt, shape),
        sym,
    }])
}

fn constant(c: &crate::op::Constant) -> InferResult {
    let mut outs: Vec<Out> = Vec::new();
    if let Some(t) = c.value.as_ref().or(c.sparse_value.as_ref()) {
        outs.push(Out {
            ty: Type::tensor(t.dtype(), shape_of(t.shape())),
            sym: tensor_sym(t),
        });
    }
    if c.sparse_value.is_some() && c.value.is_some() {
        outs.push(Out::unranked(DType::F32));
    }
    if c.value_float.is_some() {
        outs.push(Out::tensor(DType::F32, vec![]));
    }
    if let Some(v) = &c.value_floats {
        outs.push(Out::tensor(DType::F32, vec![Dim::from(v.len())]));
    }
    if let Some(v) = c.value_int {
        outs.push(Out::sym_i64(vec![Dim::from(v)], true));
    }
    if let Some(v) = &c.value_ints {
        let mut o = Out::tensor(DType::I64, vec![Dim::from(v.len())]);
        if v.len() <= MAX_SYM {
            o.sym = Some(v.iter().map(|&x| Dim::from(x)).collect());
        }
        outs.push(o);
    }
    if c.value_string.is_some() {
        outs.push(Out::tensor(DType::String, vec![]));
    }
    if let Some(v) = &c.value_strings {
        outs.push(Out::tensor(DType::String, vec![Dim::from(v.len())]));
    }
    match outs.len() {
        1 => Ok(outs),
        0 => bad("Constant has no value attribute"),
        _ => bad("Constant has more than one value attribute"),
    }
}

/// The single number of a scalar input, as f64, when it is a constant (any numeric type).
fn const_scalar_f64(cx: &InferCx, i: usize) -> Option<f64> {
    let v = cx.const_tensor(i)?.to_f64_vec()?;
    (v.len() == 1).then(|| v[0])
}

fn range(cx: &mut InferCx) -> InferResult {
    let dt = cx.dtype(0)?;
    for i in 1..3 {
        let d = cx.dtype(i)?;
        if d != dt {
            return bad(format!("start is {dt} but input {i} is {d}"));
        }
    }
    // Scalars by the spec; runtimes also take one-element tensors (expanded functions pass them).
    for i in 0..3 {
        if cx
            .shape(i)
            .is_ok_and(|s| s.iter().any(|d| d.known().is_some_and(|v| v != 1)))
        {
            return bad(format!("input {i} must be a scalar"));
        }
    }
    let scalar = |cx: &InferCx, i: usize| {
        dims_of(cx, i)
            .filter(|v| v.len() == 1)
            .map(|mut v| v.remove(0))
    };
    let (start, limit, delta) = (scalar(&*cx, 0), scalar(&*cx, 1), scalar(&*cx, 2));
    let mut len = None;
    if dt.is_int() {
        if let (Some(s), Some(l), Some(k)) = (&start, &limit, delta.as_ref().and_then(Dim::known)) {
            if k == 0 {
                return bad("delta cannot be 0");
            }
            let diff = if k > 0 { l - s } else { s - l };
            len = match diff.known() {
                Some(v) => Some(Dim::from(ceil_div(v, k.abs()).max(0))),
                None => diff.div_exact(&Dim::from(k.abs())),
            };
        }
    } else if let (Some(s), Some(l), Some(k)) = (
        const_scalar_f64(cx, 0),
        const_scalar_f64(cx, 1),
        const_scalar_f64(cx, 2),
    ) {
        if k == 0.0 {
            return bad("delta cannot be 0");
        }
        let n = if dt == DType::F64 {
            ((l - s) / k).ceil()
        } else {
            ((l as f32 - s as f32) / k as f32).ceil() as f64
        };
        len = Some(Dim::from(n.max(0.0) as i64));
    }
    let len = match len {
        Some(l) => l,
        None => cx.fresh("range"),
    };
    let mut sym = None;
    if let (Some(n), Some(s), Some(k)) = (
        len.known(),
        start.as_ref(),
        delta.as_ref().and_then(Dim::known),
    ) {
        if dt.is_int() && n as usize <= MAX_SYM {
            sym = Some((0..n).map(|i| s + &Dim::from(i * k)).collect());
        }
    }
    Ok(vec![Out {
        ty: Type::tensor(dt, vec![len]),
        sym,
    }])
}

fn one_hot(cx: &mut InferCx, axis: i64) -> InferResult {
    let dt = cx.dtype(2)?;
    let q = cx.tensor(0)?.shape.clone();
    let Some(q) = q else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = q.len() as i64 + 1;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&a) {
        return bad(format!("axis {axis} is out of range for output rank {r}"));
    }
    let depth = match dims_of(cx, 1).filter(|v| v.len() == 1) {
        Some(mut v) => v.remove(0),
        None => match const_scalar_f64(cx, 1) {
            Some(f) => Dim::from(f as i64),
            None => cx.fresh("one_hot"),
        },
    };
    if let Some(v) = depth.known().filter(|v| *v < 1) {
        return bad(format!("depth {v} must be positive"));
    }
    let mut out = q;
    out.insert(a as usize, depth);
    Ok(vec![Out::tensor(dt, out)])
}

fn nonzero(cx: &mut InferCx) -> InferResult {
    let s = cx.tensor(0)?.shape.clone();
    let r = match s {
        Some(s) => Dim::from(s.len()),
        None => cx.fresh("rank"),
    };
    let n = cx.fresh("nonzero");
    Ok(vec![Out::tensor(DType::I64, vec![r, n])])
}

fn compress(cx: &mut InferCx, axis: Option<i64>) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    if cx.shape(1).is_ok_and(|c| c.len() != 1) {
        return bad("condition must be 1-D");
    }
    let cond = cx.const_tensor(1).and_then(|t| t.to_i64_vec());
    // numpy.compress: a condition shorter than the axis selects only among its first entries.
    let count = |limit: Option<i64>| -> Option<Dim> {
        let c = cond.as_ref()?;
        let n = limit.map_or(c.len(), |l| c.len().min(l.max(0) as usize));
        Some(Dim::from(c[..n].iter().filter(|&&x| x != 0).count()))
    };
    let out = match (axis, s) {
        (None, s) => {
            let total = s.as_ref().and_then(|s| product(s).known());
            vec![match count(total) {
                Some(d) => d,
                None => cx.fresh("compress"),
            }]
        }
        (Some(a), Some(mut s)) => {
            if s.is_empty() {
                return bad("cannot compress a scalar along an axis");
            }
            let a = norm_axis(a, s.len())?;
            s[a] = match count(s[a].known()) {
                Some(d) => d,
                None => cx.fresh("compress"),
            };
            s
        }
        (Some(_), None) => return Ok(vec![Out::unranked(dt)]),
    };
    Ok(vec![Out::tensor(dt, out)])
}

fn same_min_rank(cx: &mut InferCx, min: usize, op: &str) -> InferResult {
    if let Ok(s) = cx.shape(0) {
        if s.len() < min {
            return bad(format!("{op} needs rank >= {min}, got {}", s.len()));
        }
    }
    same_as_input(cx, 0)
}

fn reverse_sequence(cx: &mut InferCx, batch_axis: i64, time_axis: i64) -> InferResult {
    if let Ok(s) = cx.shape(0) {
        if s.len() < 2 {
            return bad(format!("input needs rank >= 2, got {}", s.len()));
        }
        let b = norm_axis(batch_axis, s.len())?;
        let t = norm_axis(time_axis, s.len())?;
        if b == t || b > 1 || t > 1 {
            return bad("batch_axis and time_axis must be 0 and 1 in some order");
        }
        if let Ok([n]) = cx.shape(1) {
            unify(&s[b], n, "sequence_lens and the batch dim")?;
        }
    }
    same_as_input(cx, 0)
}

fn eye_like(cx: &mut InferCx, dtype: Option<i64>) -> InferResult {
    let (idt, s) = input(cx, 0)?;
    let dt = match dtype {
        Some(code) => match i32::try_from(code).ok().and_then(DType::from_onnx) {
            Some(d) => d,
            None => return bad(format!("unknown dtype code {code}")),
        },
        None => idt,
    };
    match s {
        Some(s) if s.len() != 2 => bad(format!("input must be 2-D, got rank {}", s.len())),
        Some(s) => Ok(vec![Out::tensor(dt, s)]),
        None => Ok(vec![Out::tensor(dt, fresh_dims(cx, 2, "eye_like"))]),
    }
}

fn unique(cx: &mut InferCx, axis: Option<i64>) -> InferResult {
    let (dt, s) = input(cx, 0)?;
    let u = cx.fresh("unique");
    let (y, inverse) = match (axis, s) {
        (None, s) => {
            let n = match s {
                Some(s) => product(&s),
                None => cx.fresh("numel"),
            };
            (Out::tensor(dt, vec![u.clone()]), n)
        }
        (Some(a), Some(mut s)) => {
            if s.is_empty() {
                return bad("cannot take unique slices of a scalar along an axis");
            }
            let a = norm_axis(a, s.len())?;
            let n = std::mem::replace(&mut s[a], u.clone());
            (Out::tensor(dt, s), n)
        }
        (Some(_), None) => (Out::unranked(dt), cx.fresh("unique_axis")),
    };
    let mut outs = vec![
        y,
        Out::tensor(DType::I64, vec![u.clone()]),
        Out::tensor(DType::I64, vec![inverse]),
        Out::tensor(DType::I64, vec![u]),
    ];
    outs.truncate(cx.node.outputs.len().max(1));
    Ok(outs)
}

fn bitcast(cx: &mut InferCx, to: DType) -> InferResult {
    let from = cx.dtype(0)?;
    if from == DType::String || to == DType::String {
        return bad("BitCast does not take strings");
    }
    if from.bits() != to.bits() {
        return bad(format!(
            "BitCast needs types of the same bit width: {from} has {}, {to} has {}",
            from.bits(),
            to.bits()
        ));
    }
    Ok(vec![shape_as_input(cx, 0, to)?])
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use crate::dtype::DType;
    use crate::graph::{Graph, ValueId};
    use crate::infer::infer_graph;
    use crate::op::{self, Op};
    use crate::shape::{Dim, Type};
    use crate::tensor::Tensor;

    fn dims(s: &str) -> Vec<Dim> {
        if s.is_empty() {
            return vec![];
        }
        s.split(',')
            .map(|p| match p.trim().parse::<i64>() {
                Ok(v) => Dim::from(v),
                Err(_) => Dim::sym(p.trim()),
            })
            .collect()
    }

    fn inp(g: &mut Graph, name: &str, dt: DType, shape: &str) -> ValueId {
        g.add_input(name, Some(Type::tensor(dt, dims(shape))))
    }

    fn ints(g: &mut Graph, name: &str, v: &[i64]) -> ValueId {
        g.add_const(name, Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap())
    }

    fn scalar_i64(g: &mut Graph, name: &str, v: i64) -> ValueId {
        g.add_const(name, Tensor::scalar(v))
    }

    fn node(g: &mut Graph, op: Op, inputs: Vec<Option<ValueId>>, n_out: usize) -> Vec<ValueId> {
        let names: Vec<String> = (0..n_out)
            .map(|k| format!("{}_{}_{k}", op.op_type(), g.num_values()))
            .collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let n = g.add_node(format!("n{}", g.num_nodes()), op, inputs, &refs);
        g.node(n).outputs.clone()
    }

    fn node1(g: &mut Graph, op: Op, inputs: Vec<Option<ValueId>>) -> ValueId {
        node(g, op, inputs, 1)[0]
    }

    fn ty(g: &Graph, v: ValueId) -> String {
        g.value(v)
            .ty
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into())
    }

    /// Runs inference; the returned string is the type of `v` (symbols kiln invents print as
    /// `unk__…`: those are normalized to `?`).
    fn infer(g: &mut Graph, v: ValueId) -> String {
        infer_graph(g).unwrap();
        normalize(&ty(g, v))
    }

    fn normalize(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("unk__") {
            out.push_str(&rest[..i]);
            out.push('?');
            rest = &rest[i..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    fn fails(mut g: Graph) -> String {
        match infer_graph(&mut g) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("inference should fail"),
        }
    }

    fn reshape() -> Op {
        Op::Reshape(op::Reshape { allowzero: false })
    }
    fn shape() -> Op {
        Op::Shape(op::Shape {
            start: 0,
            end: None,
        })
    }
    fn gather(axis: i64) -> Op {
        Op::Gather(op::Gather { axis })
    }
    fn unsqueeze() -> Op {
        Op::Unsqueeze(op::Unsqueeze {})
    }
    fn concat(axis: i64) -> Op {
        Op::Concat(op::Concat { axis })
    }

    #[test]
    fn shape_gather_concat_reshape_chain_is_symbolic() {
        // The multi-head split of an exported transformer: x[batch,seq,768] -> [batch,seq,12,64].
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let sh = node1(&mut g, shape(), vec![Some(x)]);
        let i0 = scalar_i64(&mut g, "i0", 0);
        let i1 = scalar_i64(&mut g, "i1", 1);
        let b = node1(&mut g, gather(0), vec![Some(sh), Some(i0)]);
        let s = node1(&mut g, gather(0), vec![Some(sh), Some(i1)]);
        let ax = ints(&mut g, "ax", &[0]);
        let b1 = node1(&mut g, unsqueeze(), vec![Some(b), Some(ax)]);
        let s1 = node1(&mut g, unsqueeze(), vec![Some(s), Some(ax)]);
        let heads = ints(&mut g, "heads", &[12, 64]);
        let target = node1(&mut g, concat(0), vec![Some(b1), Some(s1), Some(heads)]);
        let y = node1(&mut g, reshape(), vec![Some(x), Some(target)]);
        assert_eq!(infer(&mut g, y), "f32[batch,seq,12,64]");
        assert_eq!(ty(&g, sh), "i64[3]");
        assert_eq!(ty(&g, b), "i64[]");
        assert_eq!(ty(&g, b1), "i64[1]");
        assert_eq!(ty(&g, target), "i64[4]");
    }

    #[test]
    fn reshape_zero_minus_one_and_symbolic_division() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let t1 = ints(&mut g, "t1", &[0, -1, 64]);
        let y1 = node1(&mut g, reshape(), vec![Some(x), Some(t1)]);
        let t2 = ints(&mut g, "t2", &[-1, 768]);
        let y2 = node1(&mut g, reshape(), vec![Some(x), Some(t2)]);
        let t3 = ints(&mut g, "t3", &[0, 0, 7, -1]);
        let y3 = node1(&mut g, reshape(), vec![Some(x), Some(t3)]);
        infer_graph(&mut g).unwrap();
        // batch*seq*768 / (batch*64) = 12*seq.
        assert_eq!(normalize(&ty(&g, y1)), "f32[batch,12*seq,64]");
        assert_eq!(normalize(&ty(&g, y2)), "f32[batch*seq,768]");
        // 768 / 7 is not exact: a fresh dim.
        assert_eq!(normalize(&ty(&g, y3)), "f32[batch,seq,7,?]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3,4");
        let t = ints(&mut g, "t", &[4, 0, -1]);
        let y = node1(&mut g, reshape(), vec![Some(x), Some(t)]);
        assert_eq!(infer(&mut g, y), "f32[4,3,2]");

        // allowzero: 0 is a real zero.
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "0,3,4");
        let t = ints(&mut g, "t", &[3, 4, 0]);
        let y = node1(
            &mut g,
            Op::Reshape(op::Reshape { allowzero: true }),
            vec![Some(x), Some(t)],
        );
        assert_eq!(infer(&mut g, y), "f32[3,4,0]");
    }

    #[test]
    fn reshape_errors() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3");
        let t = ints(&mut g, "t", &[4, -1]);
        node1(&mut g, reshape(), vec![Some(x), Some(t)]);
        assert!(fails(g).contains("cannot reshape"));

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3");
        let t = ints(&mut g, "t", &[-1, -1]);
        node1(&mut g, reshape(), vec![Some(x), Some(t)]);
        assert!(fails(g).contains("more than one -1"));

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3");
        let t = ints(&mut g, "t", &[5]);
        node1(&mut g, reshape(), vec![Some(x), Some(t)]);
        assert!(fails(g).contains("cannot reshape 6 elements into 5"));
    }

    #[test]
    fn reshape_with_unknown_target_keeps_rank() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3");
        let t = inp(&mut g, "t", DType::I64, "3");
        let y = node1(&mut g, reshape(), vec![Some(x), Some(t)]);
        assert_eq!(infer(&mut g, y), "f32[?,?,?]");
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3");
        let t = inp(&mut g, "t", DType::I64, "n");
        let y = node1(&mut g, reshape(), vec![Some(x), Some(t)]);
        assert_eq!(infer(&mut g, y), "f32[*]");
    }

    #[test]
    fn transpose_flatten_depth_space() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F16, "batch,seq,12,64");
        let y = node1(
            &mut g,
            Op::Transpose(op::Transpose {
                perm: Some(vec![0, 2, 1, 3]),
            }),
            vec![Some(x)],
        );
        let z = node1(
            &mut g,
            Op::Transpose(op::Transpose { perm: None }),
            vec![Some(x)],
        );
        let f = node1(&mut g, Op::Flatten(op::Flatten { axis: 2 }), vec![Some(x)]);
        let f0 = node1(&mut g, Op::Flatten(op::Flatten { axis: 0 }), vec![Some(x)]);
        let fneg = node1(&mut g, Op::Flatten(op::Flatten { axis: -1 }), vec![Some(x)]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, y), "f16[batch,12,seq,64]");
        assert_eq!(ty(&g, z), "f16[64,12,seq,batch]");
        assert_eq!(ty(&g, f), "f16[batch*seq,768]");
        assert_eq!(ty(&g, f0), "f16[1,768*batch*seq]");
        assert_eq!(ty(&g, fneg), "f16[12*batch*seq,64]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "n,8,h,3");
        let d2s = node1(
            &mut g,
            Op::DepthToSpace(op::DepthToSpace {
                blocksize: 2,
                mode: "DCR".into(),
            }),
            vec![Some(x)],
        );
        let s2d = node1(
            &mut g,
            Op::SpaceToDepth(op::SpaceToDepth {
                blocksize: 3,
                mode: "DCR".into(),
            }),
            vec![Some(x)],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, d2s), "f32[n,2,2*h,6]");
        assert_eq!(normalize(&ty(&g, s2d)), "f32[n,72,?,1]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "1,6,2,2");
        node1(
            &mut g,
            Op::DepthToSpace(op::DepthToSpace {
                blocksize: 2,
                mode: "CRD".into(),
            }),
            vec![Some(x)],
        );
        assert!(fails(g).contains("not divisible"));

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3");
        node1(
            &mut g,
            Op::Transpose(op::Transpose {
                perm: Some(vec![0, 0]),
            }),
            vec![Some(x)],
        );
        assert!(fails(g).contains("repeated"));
    }

    #[test]
    fn concat_symbolic_and_errors() {
        let mut g = Graph::new("t");
        let past = inp(&mut g, "past", DType::F32, "batch,12,past,64");
        let cur = inp(&mut g, "cur", DType::F32, "batch,12,seq,64");
        let y = node1(&mut g, concat(-2), vec![Some(past), Some(cur)]);
        assert_eq!(infer(&mut g, y), "f32[batch,12,past+seq,64]");

        let mut g = Graph::new("t");
        let a = inp(&mut g, "a", DType::F32, "2,3");
        let b = inp(&mut g, "b", DType::F32, "2,4");
        node1(&mut g, concat(0), vec![Some(a), Some(b)]);
        assert!(fails(g).contains("dims 3 and 4 differ"));

        let mut g = Graph::new("t");
        let a = inp(&mut g, "a", DType::F32, "2,3");
        let b = inp(&mut g, "b", DType::F32, "2");
        node1(&mut g, concat(0), vec![Some(a), Some(b)]);
        assert!(fails(g).contains("ranks"));

        // A named dim beats a symbol invented elsewhere; an unranked input gives a fresh axis dim.
        let mut g = Graph::new("t");
        let a = inp(&mut g, "a", DType::F32, "n,3");
        let b = g.add_input("b", Some(Type::tensor_unranked(DType::F32)));
        let y = node1(&mut g, concat(1), vec![Some(a), Some(b)]);
        assert_eq!(infer(&mut g, y), "f32[n,?]");
    }

    #[test]
    fn split_forms() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq,2304");
        let outs = node(
            &mut g,
            Op::Split(op::Split {
                axis: -1,
                num_outputs: Some(3),
            }),
            vec![Some(x)],
            3,
        );
        infer_graph(&mut g).unwrap();
        for o in &outs {
            assert_eq!(ty(&g, *o), "f32[batch,seq,768]");
        }

        // Uneven num_outputs split (opset 18): 7 into 3 is 3, 3, 1.
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "7");
        let outs = node(
            &mut g,
            Op::Split(op::Split {
                axis: 0,
                num_outputs: Some(3),
            }),
            vec![Some(x)],
            3,
        );
        infer_graph(&mut g).unwrap();
        let got: Vec<String> = outs.iter().map(|o| ty(&g, *o)).collect();
        assert_eq!(got, ["f32[3]", "f32[3]", "f32[1]"]);

        // Explicit sizes, and the output count without num_outputs.
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,6");
        let sp = ints(&mut g, "sp", &[2, 4]);
        let a = node(
            &mut g,
            Op::Split(op::Split {
                axis: 1,
                num_outputs: None,
            }),
            vec![Some(x), Some(sp)],
            2,
        );
        let b = node(
            &mut g,
            Op::Split(op::Split {
                axis: 1,
                num_outputs: None,
            }),
            vec![Some(x)],
            2,
        );
        let c = node(
            &mut g,
            Op::Split(op::Split {
                axis: 1,
                num_outputs: None,
            }),
            vec![Some(x)],
            4,
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(
            (ty(&g, a[0]), ty(&g, a[1])),
            ("f32[2,2]".into(), "f32[2,4]".into())
        );
        assert_eq!(
            (ty(&g, b[0]), ty(&g, b[1])),
            ("f32[2,3]".into(), "f32[2,3]".into())
        );
        let got: Vec<String> = c.iter().map(|o| ty(&g, *o)).collect();
        assert_eq!(got, ["f32[2,2]", "f32[2,2]", "f32[2,2]", "f32[2,0]"]);

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,6");
        let sp = ints(&mut g, "sp", &[2, 3]);
        node(
            &mut g,
            Op::Split(op::Split {
                axis: 1,
                num_outputs: None,
            }),
            vec![Some(x), Some(sp)],
            2,
        );
        assert!(fails(g).contains("sum to 5"));
    }

    #[test]
    fn split_of_a_shape_tensor_keeps_contents() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let sh = node1(&mut g, shape(), vec![Some(x)]);
        let sp = ints(&mut g, "sp", &[2, 1]);
        let parts = node(
            &mut g,
            Op::Split(op::Split {
                axis: 0,
                num_outputs: None,
            }),
            vec![Some(sh), Some(sp)],
            2,
        );
        let last = ints(&mut g, "last", &[-1]);
        let t = node1(&mut g, concat(0), vec![Some(parts[0]), Some(last)]);
        let y = node1(&mut g, reshape(), vec![Some(x), Some(t)]);
        assert_eq!(infer(&mut g, y), "f32[batch,seq,768]");
    }

    #[test]
    fn contents_survive_squeeze_tile_expand_and_size() {
        // x[batch,seq,768] -> Reshape(x, Tile(Squeeze(Shape(x)[0:1]) as [1], [2]) * ...) chains.
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let sh = node1(&mut g, shape(), vec![Some(x)]);
        let b1 = slice_op(&mut g, sh, &[0], &[1], None, None);
        let ax = ints(&mut g, "ax", &[0]);
        let b = node1(
            &mut g,
            Op::Squeeze(op::Squeeze {}),
            vec![Some(b1), Some(ax)],
        );
        let b_again = node1(&mut g, unsqueeze(), vec![Some(b), Some(ax)]);
        let reps = ints(&mut g, "reps", &[2]);
        let bb = node1(
            &mut g,
            Op::Tile(op::Tile {}),
            vec![Some(b_again), Some(reps)],
        );
        let three = ints(&mut g, "three", &[3]);
        let bbb = node1(
            &mut g,
            Op::Expand(op::Expand {}),
            vec![Some(b_again), Some(three)],
        );
        let z = inp(&mut g, "z", DType::F32, "batch,batch");
        let y1 = node1(&mut g, reshape(), vec![Some(z), Some(bb)]);
        let w = inp(&mut g, "w", DType::F32, "batch,batch,batch");
        let y2 = node1(&mut g, reshape(), vec![Some(w), Some(bbb)]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, b), "i64[]");
        assert_eq!(ty(&g, y1), "f32[batch,batch]");
        assert_eq!(ty(&g, y2), "f32[batch,batch,batch]");
    }

    fn slice_op(
        g: &mut Graph,
        x: ValueId,
        s: &[i64],
        e: &[i64],
        axes: Option<&[i64]>,
        steps: Option<&[i64]>,
    ) -> ValueId {
        let s = ints(g, &format!("s{}", g.num_values()), s);
        let e = ints(g, &format!("e{}", g.num_values()), e);
        let a = axes.map(|a| ints(g, &format!("a{}", g.num_values()), a));
        let st = steps.map(|a| ints(g, &format!("st{}", g.num_values()), a));
        node1(
            g,
            Op::Slice(op::Slice {}),
            vec![Some(x), Some(s), Some(e), a, st],
        )
    }

    #[test]
    fn slice_known_dims_follow_the_clamp_rules() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "20,10,5");
        let a = slice_op(&mut g, x, &[0, 0], &[3, 10], Some(&[0, 1]), Some(&[1, 1]));
        let b = slice_op(&mut g, x, &[1], &[1000], Some(&[1]), None);
        let c = slice_op(
            &mut g,
            x,
            &[20, 10, 4],
            &[0, 0, 1],
            None,
            Some(&[-1, -3, -1]),
        );
        let d = slice_op(&mut g, x, &[-1], &[i64::MIN], Some(&[0]), Some(&[-1]));
        let e = slice_op(&mut g, x, &[0, 0, 3], &[20, 10, 4], None, None);
        let f = slice_op(&mut g, x, &[1000], &[1000], Some(&[1]), None);
        let h = slice_op(&mut g, x, &[0], &[-1], Some(&[1]), Some(&[3]));
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, a), "f32[3,10,5]");
        assert_eq!(ty(&g, b), "f32[20,9,5]");
        // start 20 clamps to 19 for a negative step: 19..0 by -1 is 19 items; 9..0 by -3 is 3.
        assert_eq!(ty(&g, c), "f32[19,3,3]");
        assert_eq!(ty(&g, d), "f32[20,10,5]");
        assert_eq!(ty(&g, e), "f32[20,10,1]");
        assert_eq!(ty(&g, f), "f32[20,0,5]");
        // 0..9 by 3: 0, 3, 6.
        assert_eq!(ty(&g, h), "f32[20,3,5]");
    }

    #[test]
    fn slice_symbolic_dims() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let all = slice_op(&mut g, x, &[0], &[i64::MAX], Some(&[1]), None);
        let tail = slice_op(&mut g, x, &[1], &[i64::MAX], Some(&[1]), None);
        let last = slice_op(&mut g, x, &[-1], &[i64::MAX], Some(&[-2]), None);
        let rev = slice_op(&mut g, x, &[-1], &[i64::MIN], Some(&[1]), Some(&[-1]));
        let head = slice_op(&mut g, x, &[0], &[384], Some(&[2]), None);
        let odd = slice_op(&mut g, x, &[1], &[i64::MAX], Some(&[1]), Some(&[2]));
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, all), "f32[batch,seq,768]");
        assert_eq!(ty(&g, tail), "f32[batch,seq-1,768]");
        assert_eq!(ty(&g, last), "f32[batch,1,768]");
        assert_eq!(ty(&g, rev), "f32[batch,seq,768]");
        assert_eq!(ty(&g, head), "f32[batch,seq,384]");
        assert_eq!(normalize(&ty(&g, odd)), "f32[batch,?,768]");
    }

    #[test]
    fn slice_with_symbolic_ends_from_shape() {
        // position_ids[:, :seq] where seq comes from Shape(input_ids).
        let mut g = Graph::new("t");
        let ids = inp(&mut g, "ids", DType::I64, "batch,seq");
        let pos = inp(&mut g, "pos", DType::I64, "1,512");
        let sh = node1(&mut g, shape(), vec![Some(ids)]);
        let s1 = slice_op(&mut g, sh, &[1], &[2], None, None);
        let zero = ints(&mut g, "zero", &[0]);
        let one = ints(&mut g, "one", &[1]);
        let y = node1(
            &mut g,
            Op::Slice(op::Slice {}),
            vec![Some(pos), Some(zero), Some(s1), Some(one), None],
        );
        assert_eq!(infer(&mut g, y), "i64[1,seq]");
        assert_eq!(ty(&g, s1), "i64[1]");

        // Unknown starts: fresh dims on the sliced axes only.
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "4,5");
        let s = inp(&mut g, "s", DType::I64, "1");
        let e = ints(&mut g, "e", &[3]);
        let ax = ints(&mut g, "ax", &[1]);
        let y = node1(
            &mut g,
            Op::Slice(op::Slice {}),
            vec![Some(x), Some(s), Some(e), Some(ax), None],
        );
        assert_eq!(infer(&mut g, y), "f32[4,?]");
    }

    #[test]
    fn slice_errors() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "4,5");
        slice_op(&mut g, x, &[0], &[1], Some(&[0]), Some(&[0]));
        assert!(fails(g).contains("step cannot be 0"));
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "4,5");
        slice_op(&mut g, x, &[0], &[1], Some(&[2]), None);
        assert!(fails(g).contains("out of range"));
    }

    #[test]
    fn squeeze_unsqueeze() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "1,seq,1,4");
        let ax = ints(&mut g, "ax", &[0, -2]);
        let s = node1(&mut g, Op::Squeeze(op::Squeeze {}), vec![Some(x), Some(ax)]);
        let s_all = node1(&mut g, Op::Squeeze(op::Squeeze {}), vec![Some(x)]);
        let ax2 = ints(&mut g, "ax2", &[-1, 1]);
        let u = node1(&mut g, unsqueeze(), vec![Some(s), Some(ax2)]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, s), "f32[seq,4]");
        // Without axes a symbolic dim might be 1: the rank is unknown.
        assert_eq!(ty(&g, s_all), "f32[*]");
        assert_eq!(ty(&g, u), "f32[seq,1,4,1]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "1,3,1");
        let s = node1(&mut g, Op::Squeeze(op::Squeeze {}), vec![Some(x)]);
        assert_eq!(infer(&mut g, s), "f32[3]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3");
        let ax = ints(&mut g, "ax", &[0]);
        node1(&mut g, Op::Squeeze(op::Squeeze {}), vec![Some(x), Some(ax)]);
        assert!(fails(g).contains("cannot squeeze axis 0 of size 2"));
    }

    #[test]
    fn expand_and_tile() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,1,1,seq");
        let sh = ints(&mut g, "sh", &[1, 12, 5, 1]);
        let y = node1(&mut g, Op::Expand(op::Expand {}), vec![Some(x), Some(sh)]);
        let big = ints(&mut g, "big", &[2, 1, 1, 1, 1]);
        let z = node1(&mut g, Op::Expand(op::Expand {}), vec![Some(x), Some(big)]);
        let reps = ints(&mut g, "reps", &[2, 3, 1, 1]);
        let t = node1(&mut g, Op::Tile(op::Tile {}), vec![Some(x), Some(reps)]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, y), "f32[batch,12,5,seq]");
        assert_eq!(ty(&g, z), "f32[2,batch,1,1,seq]");
        assert_eq!(ty(&g, t), "f32[2*batch,3,1,seq]");

        // Expand to a shape computed from Shape().
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let b = inp(&mut g, "b", DType::F32, "768");
        let sh = node1(&mut g, shape(), vec![Some(x)]);
        let y = node1(&mut g, Op::Expand(op::Expand {}), vec![Some(b), Some(sh)]);
        assert_eq!(infer(&mut g, y), "f32[batch,seq,768]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "3,4");
        let sh = ints(&mut g, "sh", &[2, 4]);
        node1(&mut g, Op::Expand(op::Expand {}), vec![Some(x), Some(sh)]);
        assert!(fails(g).contains("cannot broadcast"));
    }

    #[test]
    fn gathers() {
        let mut g = Graph::new("t");
        let emb = inp(&mut g, "emb", DType::F32, "30522,768");
        let ids = inp(&mut g, "ids", DType::I64, "batch,seq");
        let y = node1(&mut g, gather(0), vec![Some(emb), Some(ids)]);
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let i = scalar_i64(&mut g, "i", -1);
        let last = node1(&mut g, gather(1), vec![Some(x), Some(i)]);
        let ge = node1(
            &mut g,
            Op::GatherElements(op::GatherElements { axis: 1 }),
            vec![Some(emb), Some(ids)],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, y), "f32[batch,seq,768]");
        assert_eq!(ty(&g, last), "f32[batch,768]");
        assert_eq!(ty(&g, ge), "f32[batch,seq]");

        // GatherND with batch_dims (spec examples).
        let mut g = Graph::new("t");
        let d = inp(&mut g, "d", DType::F32, "2,2,2");
        let i1 = inp(&mut g, "i1", DType::I64, "2,1");
        let i2 = inp(&mut g, "i2", DType::I64, "2,1,1");
        let i3 = inp(&mut g, "i3", DType::I64, "2,2");
        let a = node1(
            &mut g,
            Op::GatherND(op::GatherND { batch_dims: 1 }),
            vec![Some(d), Some(i1)],
        );
        let b = node1(
            &mut g,
            Op::GatherND(op::GatherND { batch_dims: 0 }),
            vec![Some(d), Some(i2)],
        );
        let c = node1(
            &mut g,
            Op::GatherND(op::GatherND { batch_dims: 0 }),
            vec![Some(d), Some(i3)],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, a), "f32[2,2]");
        assert_eq!(ty(&g, b), "f32[2,1,2,2]");
        assert_eq!(ty(&g, c), "f32[2,2]");

        let mut g = Graph::new("t");
        let d = inp(&mut g, "d", DType::F32, "2,2");
        let i = inp(&mut g, "i", DType::I64, "1,3");
        node1(
            &mut g,
            Op::GatherND(op::GatherND { batch_dims: 0 }),
            vec![Some(d), Some(i)],
        );
        assert!(fails(g).contains("indices.shape[-1] = 3"));

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::I64, "3");
        let i = ints(&mut g, "i", &[3]);
        node1(&mut g, gather(0), vec![Some(x), Some(i)]);
        // Not a tracked tensor: no contents check, only shapes.
        infer_graph(&mut g).unwrap();
    }

    #[test]
    fn gather_of_a_shape_checks_constant_indices() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq");
        let sh = node1(&mut g, shape(), vec![Some(x)]);
        let i = ints(&mut g, "i", &[1, 0, -1]);
        let y = node1(&mut g, gather(0), vec![Some(sh), Some(i)]);
        let c = node1(
            &mut g,
            Op::ConstantOfShape(op::ConstantOfShape { value: None }),
            vec![Some(y)],
        );
        assert_eq!(infer(&mut g, c), "f32[seq,batch,seq]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq");
        let sh = node1(&mut g, shape(), vec![Some(x)]);
        let i = scalar_i64(&mut g, "i", 2);
        node1(&mut g, gather(0), vec![Some(sh), Some(i)]);
        assert!(fails(g).contains("index 2 is out of range"));
    }

    #[test]
    fn scatters_keep_the_data_type() {
        let mut g = Graph::new("t");
        let d = inp(&mut g, "d", DType::F32, "n,3");
        let i = inp(&mut g, "i", DType::I64, "1,2");
        let u = inp(&mut g, "u", DType::F32, "1,2");
        let a = node1(
            &mut g,
            Op::ScatterElements(op::ScatterElements {
                axis: 1,
                reduction: "none".into(),
            }),
            vec![Some(d), Some(i), Some(u)],
        );
        let b = node1(
            &mut g,
            Op::Scatter(op::Scatter { axis: 0 }),
            vec![Some(d), Some(i), Some(u)],
        );
        let ind = inp(&mut g, "ind", DType::I64, "2,1");
        let upd = inp(&mut g, "upd", DType::F32, "2,3");
        let c = node1(
            &mut g,
            Op::ScatterND(op::ScatterND {
                reduction: "add".into(),
            }),
            vec![Some(d), Some(ind), Some(upd)],
        );
        let cache = inp(&mut g, "cache", DType::F16, "batch,8,max,64");
        let new = inp(&mut g, "new", DType::F16, "batch,8,seq,64");
        let e = node1(
            &mut g,
            Op::TensorScatter(op::TensorScatter {
                axis: -2,
                mode: "linear".into(),
            }),
            vec![Some(cache), Some(new), None],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, a), "f32[n,3]");
        assert_eq!(ty(&g, b), "f32[n,3]");
        assert_eq!(ty(&g, c), "f32[n,3]");
        assert_eq!(ty(&g, e), "f16[batch,8,max,64]");
    }

    #[test]
    fn pad_and_center_crop_pad() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "n,3,h,w");
        let p = ints(&mut g, "p", &[0, 0, 1, 2, 0, 0, 1, -1]);
        let y = node1(
            &mut g,
            Op::Pad(op::Pad {
                mode: "constant".into(),
            }),
            vec![Some(x), Some(p)],
        );
        let p2 = ints(&mut g, "p2", &[1, 2, 3, 4]);
        let ax = ints(&mut g, "ax", &[-1, 1]);
        let z = node1(
            &mut g,
            Op::Pad(op::Pad {
                mode: "reflect".into(),
            }),
            vec![Some(x), Some(p2), None, Some(ax)],
        );
        let unk = inp(&mut g, "unk", DType::I64, "8");
        let u = node1(
            &mut g,
            Op::Pad(op::Pad {
                mode: "edge".into(),
            }),
            vec![Some(x), Some(unk)],
        );
        let shp = ints(&mut g, "shp", &[10, 7]);
        let c = node1(
            &mut g,
            Op::CenterCropPad(op::CenterCropPad {
                axes: Some(vec![-2, -1]),
            }),
            vec![Some(x), Some(shp)],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, y), "f32[n,3,h+2,w+1]");
        assert_eq!(ty(&g, z), "f32[n,9,h,w+4]");
        assert_eq!(normalize(&ty(&g, u)), "f32[?,?,?,?]");
        assert_eq!(ty(&g, c), "f32[n,3,10,7]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "2,3");
        let p = ints(&mut g, "p", &[0, 0, -3, 0]);
        node1(
            &mut g,
            Op::Pad(op::Pad {
                mode: "constant".into(),
            }),
            vec![Some(x), Some(p)],
        );
        assert!(fails(g).contains("negative"));
    }

    #[test]
    fn shape_size_constant_of_shape() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let sh = node1(
            &mut g,
            Op::Shape(op::Shape {
                start: -2,
                end: None,
            }),
            vec![Some(x)],
        );
        let sh2 = node1(
            &mut g,
            Op::Shape(op::Shape {
                start: 1,
                end: Some(-5),
            }),
            vec![Some(x)],
        );
        let sz = node1(&mut g, Op::Size(op::Size {}), vec![Some(x)]);
        let one = Tensor::from_vec(vec![1], vec![1i64]).unwrap();
        let c = node1(
            &mut g,
            Op::ConstantOfShape(op::ConstantOfShape { value: Some(one) }),
            vec![Some(sh)],
        );
        let ax = ints(&mut g, "ax", &[0]);
        let un = node1(&mut g, unsqueeze(), vec![Some(sz), Some(ax)]);
        let flat = node1(&mut g, reshape(), vec![Some(x), Some(un)]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, sh), "i64[2]");
        assert_eq!(ty(&g, sh2), "i64[0]");
        assert_eq!(ty(&g, sz), "i64[]");
        assert_eq!(ty(&g, c), "i64[seq,768]");
        assert_eq!(ty(&g, flat), "f32[768*batch*seq]");

        // ConstantOfShape of a tracked 1-element shape carries its contents: Expand by ones.
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "a,b");
        let two = ints(&mut g, "two", &[2]);
        let one = Tensor::from_vec(vec![1], vec![1i64]).unwrap();
        let ones = node1(
            &mut g,
            Op::ConstantOfShape(op::ConstantOfShape { value: Some(one) }),
            vec![Some(two)],
        );
        let y = node1(&mut g, Op::Expand(op::Expand {}), vec![Some(x), Some(ones)]);
        assert_eq!(infer(&mut g, y), "f32[a,b]");
        assert_eq!(ty(&g, ones), "i64[2]");
    }

    #[test]
    fn range_lengths() {
        let mut g = Graph::new("t");
        let s = scalar_i64(&mut g, "s", 10);
        let l = scalar_i64(&mut g, "l", 4);
        let d = scalar_i64(&mut g, "d", -2);
        let a = node1(
            &mut g,
            Op::Range(op::Range { stash_type: 1 }),
            vec![Some(s), Some(l), Some(d)],
        );
        let fs = g.add_const("fs", Tensor::scalar(1.0f32));
        let fl = g.add_const("fl", Tensor::scalar(5.5f32));
        let fd = g.add_const("fd", Tensor::scalar(1.5f32));
        let b = node1(
            &mut g,
            Op::Range(op::Range { stash_type: 1 }),
            vec![Some(fs), Some(fl), Some(fd)],
        );
        // Range(0, seq, 1) is seq long; Range(past, past+seq, 1) too.
        let x = inp(&mut g, "x", DType::F32, "batch,past,seq");
        let sh = node1(&mut g, shape(), vec![Some(x)]);
        let i1 = scalar_i64(&mut g, "i1", 1);
        let i2 = scalar_i64(&mut g, "i2", 2);
        let past = node1(&mut g, gather(0), vec![Some(sh), Some(i1)]);
        let seq = node1(&mut g, gather(0), vec![Some(sh), Some(i2)]);
        let zero = scalar_i64(&mut g, "zero", 0);
        let one = scalar_i64(&mut g, "one", 1);
        let c = node1(
            &mut g,
            Op::Range(op::Range { stash_type: 1 }),
            vec![Some(zero), Some(seq), Some(one)],
        );
        let total = node1(&mut g, Op::Add(op::Add {}), vec![Some(past), Some(seq)]);
        let e = node1(
            &mut g,
            Op::Range(op::Range { stash_type: 1 }),
            vec![Some(past), Some(total), Some(one)],
        );
        let unk = g.add_input("unk", Some(Type::tensor(DType::I64, vec![])));
        let f = node1(
            &mut g,
            Op::Range(op::Range { stash_type: 1 }),
            vec![Some(zero), Some(unk), Some(one)],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, a), "i64[3]");
        assert_eq!(ty(&g, b), "f32[3]");
        assert_eq!(ty(&g, c), "i64[seq]");
        assert_eq!(ty(&g, e), "i64[seq]");
        assert_eq!(normalize(&ty(&g, f)), "i64[?]");
    }

    #[test]
    fn range_contents_are_tracked() {
        // Range(0, 3, 1) = [0, 1, 2] used as Unsqueeze axes.
        let mut g = Graph::new("t");
        let zero = scalar_i64(&mut g, "zero", 0);
        let three = scalar_i64(&mut g, "three", 3);
        let one = scalar_i64(&mut g, "one", 1);
        let r = node1(
            &mut g,
            Op::Range(op::Range { stash_type: 1 }),
            vec![Some(zero), Some(three), Some(one)],
        );
        let x = inp(&mut g, "x", DType::F32, "n");
        let y = node1(&mut g, unsqueeze(), vec![Some(x), Some(r)]);
        assert_eq!(infer(&mut g, y), "f32[1,1,1,n]");
    }

    #[test]
    fn one_hot_nonzero_compress_unique() {
        let mut g = Graph::new("t");
        let idx = inp(&mut g, "idx", DType::I64, "batch,seq");
        let depth = g.add_const("depth", Tensor::scalar(10.0f32));
        let vals = inp(&mut g, "vals", DType::F16, "2");
        let a = node1(
            &mut g,
            Op::OneHot(op::OneHot { axis: -1 }),
            vec![Some(idx), Some(depth), Some(vals)],
        );
        let b = node1(
            &mut g,
            Op::OneHot(op::OneHot { axis: 1 }),
            vec![Some(idx), Some(depth), Some(vals)],
        );
        let nz = node1(&mut g, Op::NonZero(op::NonZero {}), vec![Some(idx)]);
        let x = inp(&mut g, "x", DType::F32, "3,2");
        let cond = g.add_const(
            "cond",
            Tensor::from_bools(vec![3], &[false, true, true]).unwrap(),
        );
        let c0 = node1(
            &mut g,
            Op::Compress(op::Compress { axis: Some(0) }),
            vec![Some(x), Some(cond)],
        );
        let cn = node1(
            &mut g,
            Op::Compress(op::Compress { axis: None }),
            vec![Some(x), Some(cond)],
        );
        let dyn_cond = inp(&mut g, "dc", DType::Bool, "2");
        let cd = node1(
            &mut g,
            Op::Compress(op::Compress { axis: Some(-1) }),
            vec![Some(x), Some(dyn_cond)],
        );
        let u = node(
            &mut g,
            Op::Unique(op::Unique {
                axis: None,
                sorted: true,
            }),
            vec![Some(x)],
            4,
        );
        let ua = node(
            &mut g,
            Op::Unique(op::Unique {
                axis: Some(1),
                sorted: false,
            }),
            vec![Some(x)],
            3,
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, a), "f16[batch,seq,10]");
        assert_eq!(ty(&g, b), "f16[batch,10,seq]");
        assert_eq!(normalize(&ty(&g, nz)), "i64[2,?]");
        assert_eq!(ty(&g, c0), "f32[2,2]");
        assert_eq!(ty(&g, cn), "f32[2]");
        assert_eq!(normalize(&ty(&g, cd)), "f32[3,?]");
        let got: Vec<String> = u.iter().map(|v| normalize(&ty(&g, *v))).collect();
        assert_eq!(got, ["f32[?]", "i64[?]", "i64[6]", "i64[?]"]);
        // The unique count is one symbol shared by Y, indices and counts.
        assert_eq!(
            g.value(u[0]).ty,
            g.value(u[3]).ty.as_ref().map(|t| match t {
                Type::Tensor(t) => Type::tensor(DType::F32, t.shape.clone().unwrap()),
                t => t.clone(),
            })
        );
        let got: Vec<String> = ua.iter().map(|v| normalize(&ty(&g, *v))).collect();
        assert_eq!(got, ["f32[3,?]", "i64[?]", "i64[2]"]);
    }

    #[test]
    fn elementwise_like_ops() {
        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "b,4,4");
        let t = node1(&mut g, Op::Trilu(op::Trilu { upper: false }), vec![Some(x)]);
        let m = inp(&mut g, "m", DType::I32, "n,k");
        let e = node1(
            &mut g,
            Op::EyeLike(op::EyeLike {
                dtype: Some(1),
                k: 1,
            }),
            vec![Some(m)],
        );
        let e2 = node1(
            &mut g,
            Op::EyeLike(op::EyeLike { dtype: None, k: 0 }),
            vec![Some(m)],
        );
        let seq = inp(&mut g, "seq", DType::F32, "4,b,3");
        let lens = inp(&mut g, "lens", DType::I64, "b");
        let r = node1(
            &mut g,
            Op::ReverseSequence(op::ReverseSequence {
                batch_axis: 1,
                time_axis: 0,
            }),
            vec![Some(seq), Some(lens)],
        );
        let bc = node1(
            &mut g,
            Op::BitCast(op::BitCast { to: DType::I32 }),
            vec![Some(x)],
        );
        let bb = inp(&mut g, "bb", DType::Bool, "3");
        let bc2 = node1(
            &mut g,
            Op::BitCast(op::BitCast { to: DType::U8 }),
            vec![Some(bb)],
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, t), "f32[b,4,4]");
        assert_eq!(ty(&g, e), "f32[n,k]");
        assert_eq!(ty(&g, e2), "i32[n,k]");
        assert_eq!(ty(&g, r), "f32[4,b,3]");
        assert_eq!(ty(&g, bc), "i32[b,4,4]");
        assert_eq!(ty(&g, bc2), "u8[3]");

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "4");
        node1(
            &mut g,
            Op::BitCast(op::BitCast { to: DType::F64 }),
            vec![Some(x)],
        );
        assert!(fails(g).contains("same bit width"));

        let mut g = Graph::new("t");
        let x = inp(&mut g, "x", DType::F32, "4");
        node1(&mut g, Op::Trilu(op::Trilu { upper: true }), vec![Some(x)]);
        assert!(fails(g).contains("rank >= 2"));
    }

    fn constant(c: op::Constant) -> Op {
        Op::Constant(c)
    }

    fn empty_constant() -> op::Constant {
        op::Constant {
            sparse_value: None,
            value: None,
            value_float: None,
            value_floats: None,
            value_int: None,
            value_ints: None,
            value_string: None,
            value_strings: None,
        }
    }

    #[test]
    fn constants() {
        let mut g = Graph::new("t");
        let a = node1(
            &mut g,
            constant(op::Constant {
                value_ints: Some(vec![0, -1, 64]),
                ..empty_constant()
            }),
            vec![],
        );
        let b = node1(
            &mut g,
            constant(op::Constant {
                value_float: Some(1.0),
                ..empty_constant()
            }),
            vec![],
        );
        let c = node1(
            &mut g,
            constant(op::Constant {
                value_strings: Some(vec!["a".into(), "b".into()]),
                ..empty_constant()
            }),
            vec![],
        );
        let t = Tensor::from_vec(vec![2, 3], vec![0i32; 6]).unwrap();
        let d = node1(
            &mut g,
            constant(op::Constant {
                value: Some(t),
                ..empty_constant()
            }),
            vec![],
        );
        let e = node1(
            &mut g,
            constant(op::Constant {
                value_int: Some(7),
                ..empty_constant()
            }),
            vec![],
        );
        let x = inp(&mut g, "x", DType::F32, "batch,seq,768");
        let y = node1(&mut g, reshape(), vec![Some(x), Some(a)]);
        infer_graph(&mut g).unwrap();
        assert_eq!(ty(&g, a), "i64[3]");
        assert_eq!(ty(&g, b), "f32[]");
        assert_eq!(ty(&g, c), "string[2]");
        assert_eq!(ty(&g, d), "i32[2,3]");
        assert_eq!(ty(&g, e), "i64[]");
        assert_eq!(ty(&g, y), "f32[batch,12*seq,64]");

        let mut g = Graph::new("t");
        node1(&mut g, constant(empty_constant()), vec![]);
        assert!(fails(g).contains("no value"));
    }

    #[test]
    fn unknown_ranks_give_unranked_outputs() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(Type::tensor_unranked(DType::F32)));
        let sh = node1(&mut g, shape(), vec![Some(x)]);
        let t = node1(
            &mut g,
            Op::Transpose(op::Transpose { perm: None }),
            vec![Some(x)],
        );
        let f = node1(&mut g, Op::Flatten(op::Flatten { axis: 1 }), vec![Some(x)]);
        let nz = node1(&mut g, Op::NonZero(op::NonZero {}), vec![Some(x)]);
        let sz = node1(&mut g, Op::Size(op::Size {}), vec![Some(x)]);
        infer_graph(&mut g).unwrap();
        assert_eq!(normalize(&ty(&g, sh)), "i64[?]");
        assert_eq!(ty(&g, t), "f32[*]");
        assert_eq!(normalize(&ty(&g, f)), "f32[?,?]");
        assert_eq!(normalize(&ty(&g, nz)), "i64[?,?]");
        assert_eq!(ty(&g, sz), "i64[]");
    }
}
