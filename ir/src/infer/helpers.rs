//! Shared pieces of shape inference: broadcasting, axis normalization, symbolic arithmetic.

use super::{InferCx, InferError, Out};
use crate::dtype::DType;
use crate::shape::Dim;

/// Normalizes a possibly negative `axis` for a tensor of rank `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, InferError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) && !(r == 0 && a == 0) {
        return Err(InferError::Bad(format!(
            "axis {axis} is out of range for rank {rank}"
        )));
    }
    Ok(a as usize)
}

/// Normalizes axes (may be negative) for rank `rank`; rejects duplicates.
pub fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, InferError> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)?;
        if out.contains(&n) {
            return Err(InferError::Bad(format!("axis {a} is repeated")));
        }
        out.push(n);
    }
    Ok(out)
}

fn fresh_like(d: &Dim) -> bool {
    d.as_symbol()
        .is_some_and(|s| s.starts_with(super::FRESH_PREFIX))
}

/// One dim of a numpy-style multidirectional broadcast.
pub fn broadcast_dim(a: &Dim, b: &Dim) -> Result<Dim, InferError> {
    match (a.known(), b.known()) {
        (Some(1), _) => Ok(b.clone()),
        (_, Some(1)) => Ok(a.clone()),
        (Some(x), Some(y)) if x != y => Err(InferError::Bad(format!(
            "cannot broadcast dims {x} and {y}"
        ))),
        (Some(_), None) => Ok(a.clone()),
        (None, Some(_)) => Ok(b.clone()),
        _ if a == b => Ok(a.clone()),
        // Two different symbols: at run time they must be equal or one is 1; the named one
        // is the better description.
        _ if fresh_like(a) => Ok(b.clone()),
        _ => Ok(a.clone()),
    }
}

/// Numpy-style multidirectional broadcast of shapes.
pub fn broadcast(shapes: &[&[Dim]]) -> Result<Vec<Dim>, InferError> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::from(1i64); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            out[off + i] = broadcast_dim(&out[off + i], d)?;
        }
    }
    Ok(out)
}

/// Broadcast shape of the given inputs (omitted inputs skipped); `Unknown` if a rank is unknown.
pub fn broadcast_inputs(cx: &InferCx, inputs: &[usize]) -> Result<Vec<Dim>, InferError> {
    let mut shapes = Vec::new();
    for &i in inputs {
        if cx.has(i) {
            shapes.push(cx.shape(i)?.to_vec());
        }
    }
    let refs: Vec<&[Dim]> = shapes.iter().map(|s| s.as_slice()).collect();
    broadcast(&refs)
}

/// Output of an op whose single output has input 0's type.
pub fn same_as_input(cx: &InferCx, i: usize) -> Result<Vec<Out>, InferError> {
    let t = cx.tensor(i)?;
    Ok(vec![match &t.shape {
        Some(s) => Out::tensor(t.dtype, s.clone()),
        None => Out::unranked(t.dtype),
    }])
}

/// Output with dtype `dtype` and the shape of input `i` (unranked if unknown).
pub fn shape_as_input(cx: &InferCx, i: usize, dtype: DType) -> Result<Out, InferError> {
    Ok(match &cx.tensor(i)?.shape {
        Some(s) => Out::tensor(dtype, s.clone()),
        None => Out::unranked(dtype),
    })
}

/// Product of dims.
pub fn product(dims: &[Dim]) -> Dim {
    dims.iter().fold(Dim::from(1i64), |acc, d| &acc * d)
}
