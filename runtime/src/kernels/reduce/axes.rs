//! `ReduceX`, `ArgMax`/`ArgMin`, `TopK`, `CumSum`/`CumProd`.

use std::cmp::Ordering;

use kiln_ir::{DType, Op, Tensor};

use super::num::{ints, view, Acc, Num};
use super::{split_at_axis, KResult};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::par::for_chunks_weighted;
use crate::kernels::util::{for_each_broadcast, norm_axis, strides};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    use RKind::*;
    let red = |kind, keepdims, noop| -> Box<dyn Kernel> {
        Box::new(Reduce {
            kind,
            keepdims,
            noop,
        })
    };
    let k: Box<dyn Kernel> = match op {
        Op::ReduceL1(o) => red(L1, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceL2(o) => red(L2, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceLogSum(o) => red(LogSum, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceLogSumExp(o) => red(LogSumExp, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceMax(o) => red(Max, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceMin(o) => red(Min, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceMean(o) => red(Mean, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceProd(o) => red(Prod, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceSum(o) => red(Sum, o.keepdims, o.noop_with_empty_axes),
        Op::ReduceSumSquare(o) => red(SumSquare, o.keepdims, o.noop_with_empty_axes),
        Op::ArgMax(o) => Box::new(ArgReduce {
            max: true,
            axis: o.axis,
            keepdims: o.keepdims,
            last: o.select_last_index,
        }),
        Op::ArgMin(o) => Box::new(ArgReduce {
            max: false,
            axis: o.axis,
            keepdims: o.keepdims,
            last: o.select_last_index,
        }),
        Op::TopK(o) => Box::new(TopK {
            axis: o.axis,
            largest: o.largest,
        }),
        Op::CumSum(o) => Box::new(Cumulative {
            prod: false,
            exclusive: o.exclusive,
            reverse: o.reverse,
        }),
        Op::CumProd(o) => Box::new(Cumulative {
            prod: true,
            exclusive: o.exclusive,
            reverse: o.reverse,
        }),
        _ => return None,
    };
    Some(Ok(k))
}

// ---------------------------------------------------------------------------------------------
// ReduceX

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RKind {
    L1,
    L2,
    LogSum,
    LogSumExp,
    Max,
    Min,
    Mean,
    Prod,
    Sum,
    SumSquare,
}

struct Reduce {
    kind: RKind,
    keepdims: bool,
    noop: bool,
}

/// Which axes of a rank-`rank` tensor a reduction with `axes` reduces.
fn reduced_mask(axes: &[i64], rank: usize, noop: bool) -> KResult<Vec<bool>> {
    if axes.is_empty() {
        return Ok(vec![!noop; rank]);
    }
    let mut mask = vec![false; rank];
    for &a in axes {
        let n = norm_axis(a, rank)?;
        if rank == 0 {
            continue;
        }
        if mask[n] {
            return Err(KernelError::Invalid(format!(
                "axis {a} is repeated in {axes:?}"
            )));
        }
        mask[n] = true;
    }
    Ok(mask)
}

impl Kernel for Reduce {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let axes = match opt_tensor_input(inputs, 1)? {
            Some(t) => ints(t, "axes")?,
            None => Vec::new(),
        };
        let shape = x.shape();
        let mask = reduced_mask(&axes, shape.len(), self.noop)?;
        let mut out_shape = Vec::with_capacity(shape.len());
        for (&d, &r) in shape.iter().zip(&mask) {
            if !r {
                out_shape.push(d);
            } else if self.keepdims {
                out_shape.push(1);
            }
        }
        let dt = x.dtype();
        let kind = self.kind;
        let t = if dt == DType::Bool {
            if !matches!(kind, RKind::Max | RKind::Min) {
                return Err(KernelError::Unsupported(format!(
                    "{kind:?} reduction of bool tensors"
                )));
            }
            let count: usize = shape
                .iter()
                .zip(&mask)
                .filter(|(_, &r)| r)
                .map(|(&d, _)| d)
                .product();
            let xs = x.bytes();
            cx.tensor_bytes(DType::Bool, out_shape, |o| {
                reduce_into::<u8>(xs, shape, &mask, kind, o);
                if count == 0 {
                    // The identity of max over bools is false, of min true.
                    o.fill((kind == RKind::Min) as u8);
                }
            })?
        } else if let Some(t) = f32_row_sums(x, &mask, kind, &out_shape, cx) {
            t?
        } else {
            crate::with_numeric!(dt, T => {
                let xs = view::<T>(x)?;
                cx.tensor::<T>(out_shape, |o| reduce_into::<T>(&xs, shape, &mask, kind, o))?
            }, else return Err(KernelError::Unsupported(format!("{kind:?} reduction of {dt} tensors"))))
        };
        Ok(vec![t.into()])
    }
}

/// f32 `ReduceSum`/`ReduceMean` over trailing axes (LayerNorm's mean and variance):
/// vectorizable row sums, rows over threads. `None` for anything else.
fn f32_row_sums(
    x: &Tensor,
    mask: &[bool],
    kind: RKind,
    out_shape: &[usize],
    cx: &mut RunCx,
) -> Option<KResult<Tensor>> {
    if x.dtype() != DType::F32 || !matches!(kind, RKind::Sum | RKind::Mean) {
        return None;
    }
    if !matches!(layout(x.shape(), mask), Layout::Rows) {
        return None;
    }
    let count: usize = x
        .shape()
        .iter()
        .zip(mask)
        .filter(|(_, &r)| r)
        .map(|(&d, _)| d)
        .product();
    if count == 0 {
        return None;
    }
    let xs = x.as_slice::<f32>()?;
    let mean = kind == RKind::Mean;
    Some(cx.tensor_dirty::<f32>(out_shape.to_vec(), |o| {
        for_chunks_weighted(o, 1, count, |s, o| {
            for (i, o) in o.iter_mut().enumerate() {
                let row = &xs[(s + i) * count..(s + i + 1) * count];
                let sum = sum_f32(row);
                *o = if mean { sum / count as f32 } else { sum };
            }
        })
    }))
}

/// Sum in eight interleaved partial sums (the loop vectorizes; the rounding error grows
/// with n/8 rather than n).
pub(crate) fn sum_f32(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            acc[j] += c[j];
        }
    }
    chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}

/// How the elements of the input map to the elements of the output.
enum Layout {
    /// The reduced axes are the trailing ones: output `i` reduces `x[i*count..(i+1)*count]`.
    Rows,
    /// Anything else: output offsets of the input elements, in input order, by odometer.
    General(Vec<usize>),
}

fn layout(shape: &[usize], mask: &[bool]) -> Layout {
    let first_reduced = mask.iter().position(|&r| r).unwrap_or(mask.len());
    if mask[first_reduced..].iter().all(|&r| r) {
        return Layout::Rows;
    }
    // Output strides of the input axes: 0 along reduced axes.
    let kept: Vec<usize> = shape
        .iter()
        .zip(mask)
        .filter(|(_, &r)| !r)
        .map(|(&d, _)| d)
        .collect();
    let ks = strides(&kept);
    let mut k = 0;
    let mut st = Vec::with_capacity(shape.len());
    for &r in mask {
        if r {
            st.push(0);
        } else {
            st.push(ks[k]);
            k += 1;
        }
    }
    Layout::General(st)
}

/// Calls `f(out_index, x)` for every input element.
#[inline]
fn visit<T: Copy>(
    x: &[T],
    shape: &[usize],
    lay: &Layout,
    count: usize,
    mut f: impl FnMut(usize, T),
) {
    match lay {
        Layout::Rows => {
            if count == 0 {
                return;
            }
            for (o, row) in x.chunks_exact(count).enumerate() {
                for &v in row {
                    f(o, v);
                }
            }
        }
        Layout::General(st) => {
            for_each_broadcast(shape, std::slice::from_ref(st), |i, offs| f(offs[0], x[i]))
        }
    }
}

/// Reduces `x` (of `shape`) over the axes in `mask` into `out`.
pub(crate) fn reduce_into<T: Num>(
    x: &[T],
    shape: &[usize],
    mask: &[bool],
    kind: RKind,
    out: &mut [T],
) {
    let count: usize = shape
        .iter()
        .zip(mask)
        .filter(|(_, &r)| r)
        .map(|(&d, _)| d)
        .product();
    let lay = layout(shape, mask);
    match kind {
        RKind::Max | RKind::Min => {
            let max = kind == RKind::Max;
            out.fill(if max { T::LOWEST } else { T::HIGHEST });
            visit(x, shape, &lay, count, |o, v| {
                let a = out[o];
                if !a.is_nan() && (v.is_nan() || (max && v > a) || (!max && v < a)) {
                    out[o] = v;
                }
            });
        }
        RKind::LogSumExp => {
            // Shift by the largest finite value for stability.
            let mut m = vec![f64::NEG_INFINITY; out.len()];
            visit(x, shape, &lay, count, |o, v| {
                let v = v.as_f64();
                if v.is_finite() && v > m[o] {
                    m[o] = v;
                }
            });
            for v in m.iter_mut() {
                if *v == f64::NEG_INFINITY {
                    *v = 0.0;
                }
            }
            let mut s = vec![0f64; out.len()];
            visit(x, shape, &lay, count, |o, v| {
                s[o] += (v.as_f64() - m[o]).exp()
            });
            for ((o, s), m) in out.iter_mut().zip(s).zip(m) {
                *o = T::of_f64(s.ln() + m);
            }
        }
        _ => {
            let init = if kind == RKind::Prod {
                T::A::ONE
            } else {
                T::A::ZERO
            };
            let mut acc = vec![init; out.len()];
            match kind {
                RKind::Prod => visit(x, shape, &lay, count, |o, v| acc[o] = acc[o].wmul(v.to_a())),
                RKind::L1 => visit(x, shape, &lay, count, |o, v| {
                    acc[o] = acc[o].wadd(v.to_a().wabs())
                }),
                RKind::L2 | RKind::SumSquare => visit(x, shape, &lay, count, |o, v| {
                    let a = v.to_a();
                    acc[o] = acc[o].wadd(a.wmul(a))
                }),
                _ => visit(x, shape, &lay, count, |o, v| acc[o] = acc[o].wadd(v.to_a())),
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o = match kind {
                    RKind::L2 => T::of_f64(a.acc_f64().sqrt()),
                    RKind::LogSum => T::of_f64(a.acc_f64().ln()),
                    RKind::Mean => T::from_a(a.div_count(count)),
                    _ => T::from_a(a),
                };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ArgMax / ArgMin

struct ArgReduce {
    max: bool,
    axis: i64,
    keepdims: bool,
    last: bool,
}

impl Kernel for ArgReduce {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let shape = x.shape();
        if shape.is_empty() {
            return Err("ArgMax/ArgMin need an input of rank >= 1".into());
        }
        let axis = norm_axis(self.axis, shape.len())?;
        let (outer, n, inner) = split_at_axis(shape, axis);
        if n == 0 && outer * inner > 0 {
            return Err(KernelError::Invalid(format!(
                "ArgMax/ArgMin over an empty axis of shape {shape:?}"
            )));
        }
        let mut out_shape = shape.to_vec();
        if self.keepdims {
            out_shape[axis] = 1;
        } else {
            out_shape.remove(axis);
        }
        let dt = x.dtype();
        let (max, last) = (self.max, self.last);
        let t = if dt == DType::Bool {
            let xs = x.bytes();
            cx.tensor::<i64>(out_shape, |o| {
                arg_reduce::<u8>(xs, outer, n, inner, max, last, o)
            })?
        } else {
            crate::with_numeric!(dt, T => {
                let xs = view::<T>(x)?;
                cx.tensor::<i64>(out_shape, |o| arg_reduce::<T>(&xs, outer, n, inner, max, last, o))?
            }, else return Err(KernelError::Unsupported(format!("ArgMax/ArgMin of {dt} tensors"))))
        };
        Ok(vec![t.into()])
    }
}

/// Index of the extreme along the middle axis of `(outer, n, inner)`. NaN counts as the
/// extreme (its first occurrence, like numpy).
fn arg_reduce<T: Num>(
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
    max: bool,
    last: bool,
    out: &mut [i64],
) {
    let mut best: Vec<T> = vec![T::default(); inner];
    for o in 0..outer {
        let base = o * n * inner;
        let res = &mut out[o * inner..(o + 1) * inner];
        res.fill(0);
        best.copy_from_slice(&x[base..base + inner]);
        for j in 1..n {
            let row = &x[base + j * inner..base + (j + 1) * inner];
            for i in 0..inner {
                let (v, b) = (row[i], best[i]);
                if b.is_nan() {
                    continue;
                }
                let better = v.is_nan()
                    || if max {
                        v > b || (last && v == b)
                    } else {
                        v < b || (last && v == b)
                    };
                if better {
                    best[i] = v;
                    res[i] = j as i64;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TopK

struct TopK {
    axis: i64,
    largest: bool,
}

impl Kernel for TopK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let kt = ints(tensor_input(inputs, 1)?, "K")?;
        let [k] = kt[..] else {
            return Err("TopK: K must have exactly one element".into());
        };
        let shape = x.shape();
        if shape.is_empty() {
            return Err("TopK needs an input of rank >= 1".into());
        }
        let axis = norm_axis(self.axis, shape.len())?;
        let (outer, n, inner) = split_at_axis(shape, axis);
        if k < 0 || k as usize > n {
            return Err(KernelError::Invalid(format!(
                "TopK: K = {k} is out of range for an axis of {n}"
            )));
        }
        let k = k as usize;
        let mut out_shape = shape.to_vec();
        out_shape[axis] = k;
        let dt = x.dtype();
        let largest = self.largest;
        crate::with_numeric!(dt, T => {
            let xs = view::<T>(x)?;
            let mut idx = vec![0i64; outer * k * inner];
            let vals = cx.tensor::<T>(out_shape.clone(), |o| topk::<T>(&xs, outer, n, inner, k, largest, o, &mut idx))?;
            let idx = cx.tensor::<i64>(out_shape, |o| o.copy_from_slice(&idx))?;
            Ok(vec![vals.into(), idx.into()])
        }, else Err(KernelError::Unsupported(format!("TopK of {dt} tensors"))))
    }
}

/// Total order with NaN above everything (numpy's sort order).
#[inline]
fn cmp_nan_last<T: Num>(a: T, b: T) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

#[allow(clippy::too_many_arguments)]
fn topk<T: Num>(
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
    k: usize,
    largest: bool,
    vals: &mut [T],
    idx: &mut [i64],
) {
    if k == 0 {
        return;
    }
    let mut cand: Vec<(T, usize)> = Vec::with_capacity(n);
    // Ties go to the lower index for both directions.
    let order = |a: &(T, usize), b: &(T, usize)| {
        let c = cmp_nan_last(a.0, b.0);
        let c = if largest { c.reverse() } else { c };
        c.then(a.1.cmp(&b.1))
    };
    for o in 0..outer {
        for i in 0..inner {
            cand.clear();
            let base = o * n * inner + i;
            cand.extend((0..n).map(|j| (x[base + j * inner], j)));
            if k < n {
                cand.select_nth_unstable_by(k - 1, order);
            }
            cand[..k].sort_unstable_by(order);
            for (j, &(v, src)) in cand[..k].iter().enumerate() {
                let p = o * k * inner + j * inner + i;
                vals[p] = v;
                idx[p] = src as i64;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CumSum / CumProd

struct Cumulative {
    prod: bool,
    exclusive: bool,
    reverse: bool,
}

impl Kernel for Cumulative {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let at = ints(tensor_input(inputs, 1)?, "axis")?;
        let [a] = at[..] else {
            return Err("the axis input must be a scalar".into());
        };
        let shape = x.shape().to_vec();
        if shape.is_empty() {
            return Err("CumSum/CumProd need an input of rank >= 1".into());
        }
        let axis = norm_axis(a, shape.len())?;
        let (outer, n, inner) = split_at_axis(&shape, axis);
        let dt = x.dtype();
        let (prod, exclusive, reverse) = (self.prod, self.exclusive, self.reverse);
        crate::with_numeric!(dt, T => {
            let xs = view::<T>(x)?;
            let t = cx.tensor::<T>(shape, |o| cumulate::<T>(&xs, outer, n, inner, prod, exclusive, reverse, o))?;
            Ok(vec![t.into()])
        }, else Err(KernelError::Unsupported(format!("cumulative ops on {dt} tensors"))))
    }
}

#[allow(clippy::too_many_arguments)]
fn cumulate<T: Num>(
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
    prod: bool,
    exclusive: bool,
    reverse: bool,
    out: &mut [T],
) {
    let init = if prod { T::A::ONE } else { T::A::ZERO };
    let mut acc = vec![init; inner];
    for o in 0..outer {
        acc.fill(init);
        for step in 0..n {
            let j = if reverse { n - 1 - step } else { step };
            let p = (o * n + j) * inner;
            let (src, dst) = (&x[p..p + inner], &mut out[p..p + inner]);
            for i in 0..inner {
                let v = src[i].to_a();
                let next = if prod { acc[i].wmul(v) } else { acc[i].wadd(v) };
                dst[i] = T::from_a(if exclusive { acc[i] } else { next });
                acc[i] = next;
            }
        }
    }
}

/// `ReduceX` over `axes` with `keepdims` of a float tensor, for other kernels of the crate
/// (tests and fused ops).
#[allow(dead_code)]
pub(crate) fn reduce_tensor(
    x: &Tensor,
    kind: RKind,
    axes: &[i64],
    keepdims: bool,
) -> KResult<Tensor> {
    let shape = x.shape();
    let mask = reduced_mask(axes, shape.len(), false)?;
    let out_shape: Vec<usize> = shape
        .iter()
        .zip(&mask)
        .filter_map(|(&d, &r)| {
            if !r {
                Some(d)
            } else if keepdims {
                Some(1)
            } else {
                None
            }
        })
        .collect();
    let dt = x.dtype();
    crate::with_numeric!(dt, T => {
        let xs = view::<T>(x)?;
        let n: usize = out_shape.iter().product();
        let mut o = vec![T::default(); n];
        reduce_into::<T>(&xs, shape, &mask, kind, &mut o);
        Ok(Tensor::from_vec(out_shape, o)?)
    }, else Err(KernelError::Unsupported(format!("{dt} reduction"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red(x: &[f32], shape: &[usize], mask: &[bool], kind: RKind) -> Vec<f32> {
        let n: usize = shape
            .iter()
            .zip(mask)
            .filter(|(_, &r)| !r)
            .map(|(&d, _)| d)
            .product();
        let mut o = vec![0f32; n];
        reduce_into::<f32>(x, shape, mask, kind, &mut o);
        o
    }

    #[test]
    fn reductions_over_middle_and_outer_axes() {
        // x = [[[1,2],[3,4]],[[5,6],[7,8]]]
        let x: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        assert_eq!(
            red(&x, &[2, 2, 2], &[false, true, false], RKind::Sum),
            [4., 6., 12., 14.]
        );
        assert_eq!(
            red(&x, &[2, 2, 2], &[true, false, true], RKind::Max),
            [6., 8.]
        );
        assert_eq!(
            red(&x, &[2, 2, 2], &[false, false, true], RKind::Prod),
            [2., 12., 30., 56.]
        );
        assert_eq!(red(&x, &[2, 2, 2], &[true, true, true], RKind::Mean), [4.5]);
        let l2 = red(&x, &[2, 2, 2], &[true, false, false], RKind::L2);
        assert!((l2[0] - (1f32 + 25.).sqrt()).abs() < 1e-6);
        let lse = red(&[1000., 1000.], &[2], &[true], RKind::LogSumExp);
        assert!((lse[0] - (1000. + 2f32.ln())).abs() < 1e-3);
    }

    #[test]
    fn empty_reductions_give_identities() {
        let x: [f32; 0] = [];
        for (k, want) in [
            (RKind::Sum, 0.0),
            (RKind::Prod, 1.0),
            (RKind::Max, f32::NEG_INFINITY),
            (RKind::Min, f32::INFINITY),
            (RKind::LogSum, f32::NEG_INFINITY),
            (RKind::LogSumExp, f32::NEG_INFINITY),
            (RKind::SumSquare, 0.0),
            (RKind::L1, 0.0),
            (RKind::L2, 0.0),
        ] {
            assert_eq!(
                red(&x, &[2, 0, 4], &[false, true, false], k),
                vec![want; 8],
                "{k:?}"
            );
        }
        let mut o = [0i32; 1];
        reduce_into::<i32>(&[], &[0], &[true], RKind::Min, &mut o);
        assert_eq!(o, [i32::MAX]);
    }

    #[test]
    fn noop_reduction_keeps_elementwise_part() {
        let x = [-2f32, 3.];
        assert_eq!(red(&x, &[2], &[false], RKind::SumSquare), [4., 9.]);
        assert_eq!(red(&x, &[2], &[false], RKind::L1), [2., 3.]);
        assert_eq!(reduced_mask(&[], 2, true).unwrap(), [false, false]);
        assert_eq!(reduced_mask(&[], 2, false).unwrap(), [true, true]);
        assert!(reduced_mask(&[0, -2], 2, false).is_err());
    }

    #[test]
    fn argmax_ties_and_last_index() {
        let x = [2f32, 2., 1., 5., 5., 0.];
        let mut o = [0i64; 2];
        arg_reduce::<f32>(&x, 2, 3, 1, true, false, &mut o);
        assert_eq!(o, [0, 0]);
        arg_reduce::<f32>(&x, 2, 3, 1, true, true, &mut o);
        assert_eq!(o, [1, 1]);
        arg_reduce::<f32>(&x, 2, 3, 1, false, false, &mut o);
        assert_eq!(o, [2, 2]);
        // Along the outer axis of a [2, 3] matrix.
        let mut o = [0i64; 3];
        arg_reduce::<f32>(&x, 1, 2, 3, true, false, &mut o);
        assert_eq!(o, [1, 1, 0]);
    }

    #[test]
    fn topk_ties_prefer_lower_index() {
        let x = [1i64, 3, 3, 2, 3];
        let (mut v, mut i) = ([0i64; 3], [0i64; 3]);
        topk::<i64>(&x, 1, 5, 1, 3, true, &mut v, &mut i);
        assert_eq!((v, i), ([3, 3, 3], [1, 2, 4]));
        let (mut v, mut i) = ([0i64; 2], [0i64; 2]);
        topk::<i64>(&x, 1, 5, 1, 2, false, &mut v, &mut i);
        assert_eq!((v, i), ([1, 2], [0, 3]));
    }

    #[test]
    fn cumulative_exclusive_reverse() {
        let x = [1f64, 2., 3., 4.];
        let mut o = [0f64; 4];
        cumulate::<f64>(&x, 1, 4, 1, false, true, true, &mut o);
        assert_eq!(o, [9., 7., 4., 0.]);
        cumulate::<f64>(&x, 1, 4, 1, true, true, false, &mut o);
        assert_eq!(o, [1., 1., 2., 6.]);
        // axis 0 of [[1,2],[3,4]]
        cumulate::<f64>(&x, 1, 2, 2, false, false, false, &mut o);
        assert_eq!(o, [1., 2., 4., 6.]);
    }
}
