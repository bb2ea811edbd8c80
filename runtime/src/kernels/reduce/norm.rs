//! Normalizations: `LpNormalization`, `MeanVarianceNormalization`, `LayerNormalization`,
//! `RMSNormalization`, `GroupNormalization`. Statistics are computed in the element's
//! [`Real`] (`f32` for `f16`/`bf16`/`f32`), two-pass (mean, then squared deviations).

use kiln_ir::{DType, Op, Tensor};

use rayon::prelude::*;

use super::num::{to_reals, view, Float, Real};
use super::{split_at_axis, KResult};
use crate::error::KernelError;
use crate::gemm::vmath;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::par::PAR_MIN;
use crate::kernels::util::{broadcast_strides, for_each_broadcast, norm_axis, strides};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let k: Box<dyn Kernel> = match op {
        Op::LpNormalization(o) => {
            if o.p != 1 && o.p != 2 {
                return Some(Err(KernelError::Unsupported(format!(
                    "LpNormalization with p = {}",
                    o.p
                ))));
            }
            Box::new(LpNorm {
                axis: o.axis,
                p: o.p,
            })
        }
        Op::MeanVarianceNormalization(o) => Box::new(Mvn {
            axes: o.axes.clone(),
        }),
        Op::LayerNormalization(o) => match stash_dtype(o.stash_type) {
            Ok(stash) => Box::new(LayerNorm {
                axis: o.axis,
                eps: o.epsilon,
                stash,
            }),
            Err(e) => return Some(Err(e)),
        },
        Op::RMSNormalization(o) => Box::new(RmsNorm {
            axis: o.axis,
            eps: o.epsilon,
        }),
        Op::GroupNormalization(o) => Box::new(GroupNorm {
            eps: o.epsilon,
            groups: o.num_groups,
        }),
        _ => return None,
    };
    Some(Ok(k))
}

/// The float dtype named by a `stash_type` attribute.
pub(crate) fn stash_dtype(code: i64) -> KResult<DType> {
    i32::try_from(code)
        .ok()
        .and_then(DType::from_onnx)
        .filter(|d| matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16))
        .ok_or_else(|| KernelError::Unsupported(format!("stash_type {code}")))
}

/// A tensor of float `dtype` holding `vals`.
pub(crate) fn reals_tensor<R: Real>(
    cx: &mut RunCx,
    dtype: DType,
    shape: Vec<usize>,
    vals: &[R],
) -> KResult<Tensor> {
    crate::with_float!(dtype, U => cx.tensor::<U>(shape, |o| {
        for (o, &v) in o.iter_mut().zip(vals) {
            *o = U::from_r(<U as Float>::R::from_f64(v.to_f64()));
        }
    }), else Err(KernelError::Unsupported(format!("{dtype} statistics"))))
}

/// `t` (a scale or bias) broadcast unidirectionally to `target`, as `R`.
pub(crate) fn broadcast_param<R: Real>(
    t: &Tensor,
    target: &[usize],
    what: &str,
) -> KResult<Vec<R>> {
    let vals = to_reals::<R>(t)?;
    let s = t.shape();
    if s == target {
        return Ok(vals);
    }
    let ok = s.len() <= target.len()
        && s.iter()
            .rev()
            .zip(target.iter().rev())
            .all(|(&a, &b)| a == b || a == 1);
    if !ok {
        return Err(KernelError::Invalid(format!(
            "{what} of shape {s:?} does not broadcast to {target:?}"
        )));
    }
    let n: usize = target.iter().product();
    let mut out = Vec::with_capacity(n);
    let st = [broadcast_strides(s, target)];
    for_each_broadcast(target, &st, |_, o| out.push(vals[o[0]]));
    Ok(out)
}

/// A scale or bias of a normalization over `shape[axis..]`: broadcast to the normalized
/// dims when its rank allows, else to the whole shape. Index it with
/// `(row * cols + col) % len`.
pub(crate) fn norm_param<R: Real>(
    t: &Tensor,
    shape: &[usize],
    axis: usize,
    what: &str,
) -> KResult<Vec<R>> {
    if t.rank() <= shape.len() - axis {
        broadcast_param(t, &shape[axis..], what)
    } else {
        broadcast_param(t, shape, what)
    }
}

/// Normalizes one row in place: `(x - mean) * inv_std` (or `x * inv_rms` when `rms`).
/// Returns (mean, inv_std) (mean is 0 when `rms`).
#[inline]
pub(crate) fn normalize_row<R: Real>(row: &mut [R], eps: R, rms: bool) -> (R, R) {
    let n = R::from_usize(row.len());
    if rms {
        let mut ss = R::ZERO;
        for &v in row.iter() {
            ss += v * v;
        }
        let inv = R::ONE / (ss / n + eps).sqrt();
        for v in row.iter_mut() {
            *v *= inv;
        }
        return (R::ZERO, inv);
    }
    let mut s = R::ZERO;
    for &v in row.iter() {
        s += v;
    }
    let mean = s / n;
    let mut ss = R::ZERO;
    for v in row.iter_mut() {
        *v -= mean;
        ss += *v * *v;
    }
    let inv = R::ONE / (ss / n + eps).sqrt();
    for v in row.iter_mut() {
        *v *= inv;
    }
    (mean, inv)
}

// ---------------------------------------------------------------------------------------------
// LayerNormalization

struct LayerNorm {
    axis: i64,
    eps: f32,
    stash: DType,
}

impl Kernel for LayerNorm {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let scale = tensor_input(inputs, 1)?;
        let bias = opt_tensor_input(inputs, 2)?;
        let shape = x.shape().to_vec();
        if shape.is_empty() {
            return Err("LayerNormalization needs an input of rank >= 1".into());
        }
        let axis = norm_axis(self.axis, shape.len())?;
        let rows: usize = shape[..axis].iter().product();
        let cols: usize = shape[axis..].iter().product();
        let stats_shape: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if i < axis { d } else { 1 })
            .collect();
        let dt = x.dtype();
        if dt == DType::F32 {
            let g = norm_param::<f32>(scale, &shape, axis, "Scale")?;
            let b = match bias {
                Some(b) => Some(norm_param::<f32>(b, &shape, axis, "B")?),
                None => None,
            };
            // Parameters over the normalized dims (not the whole shape): the row kernel.
            if g.len() == cols && b.as_ref().is_none_or(|b| b.len() == cols) {
                let xs = view::<f32>(x)?;
                let mut stats = Vec::new();
                let y = cx.tensor_dirty::<f32>(shape.clone(), |o| {
                    stats = norm_rows_f32(
                        o,
                        rows,
                        cols,
                        &g,
                        b.as_deref(),
                        self.eps,
                        false,
                        |r, row| row.copy_from_slice(&xs[r * cols..(r + 1) * cols]),
                    );
                })?;
                let (means, invs): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
                let m = reals_tensor(cx, self.stash, stats_shape.clone(), &means)?;
                let s = reals_tensor(cx, self.stash, stats_shape, &invs)?;
                return Ok(vec![y.into(), m.into(), s.into()]);
            }
        }
        crate::with_float!(dt, T => {
            let xs = view::<T>(x)?;
            let g = norm_param::<<T as Float>::R>(scale, &shape, axis, "Scale")?;
            let b = match bias {
                Some(b) => Some(norm_param::<<T as Float>::R>(b, &shape, axis, "B")?),
                None => None,
            };
            let mut means = vec![<T as Float>::R::ZERO; rows];
            let mut invs = vec![<T as Float>::R::ZERO; rows];
            let eps = <T as Float>::R::from_f64(self.eps as f64);
            let y = cx.tensor::<T>(shape.clone(), |o| {
                affine_norm_rows::<T>(&xs, rows, cols, &g, b.as_deref(), eps, false, o, &mut means, &mut invs)
            })?;
            let m = reals_tensor(cx, self.stash, stats_shape.clone(), &means)?;
            let s = reals_tensor(cx, self.stash, stats_shape, &invs)?;
            Ok(vec![y.into(), m.into(), s.into()])
        }, else Err(KernelError::Unsupported(format!("LayerNormalization of {dt} tensors"))))
    }
}

/// Rows (`cols` wide) of an f32 normalization: each row of `out` is written by
/// `fill(row_index, row)`, then normalized in place by [`vmath::norm_row`] with `g` and `b`
/// (`cols` long). Rows are spread over threads when there are many elements. Returns each
/// row's `(mean, inv_std)` (`(0, 0)` for each of the `rows` rows when `cols` is 0).
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_rows_f32(
    out: &mut [f32],
    rows: usize,
    cols: usize,
    g: &[f32],
    b: Option<&[f32]>,
    eps: f32,
    rms: bool,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<(f32, f32)> {
    if cols == 0 {
        return vec![(0.0, 0.0); rows];
    }
    let one = |(r, row): (usize, &mut [f32])| {
        fill(r, row);
        vmath::norm_row(row, g, b, eps, rms)
    };
    if out.len() >= PAR_MIN {
        // At least ~PAR_MIN / 4 elements per task: a row is too little work to hand out.
        let per = (PAR_MIN / 4).div_ceil(cols).max(1);
        out.par_chunks_mut(cols)
            .enumerate()
            .with_min_len(per)
            .map(one)
            .collect()
    } else {
        out.chunks_mut(cols).enumerate().map(one).collect()
    }
}

/// Normalizes each of `rows` rows of `cols` elements, then `* g + b` (parameters indexed
/// `(row*cols + col) % len`). Saves per-row mean and inverse std.
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_norm_rows<T: Float>(
    x: &[T],
    rows: usize,
    cols: usize,
    g: &[T::R],
    b: Option<&[T::R]>,
    eps: T::R,
    rms: bool,
    out: &mut [T],
    means: &mut [T::R],
    invs: &mut [T::R],
) {
    if cols == 0 {
        return;
    }
    let mut buf = vec![T::R::ZERO; cols];
    for r in 0..rows {
        let src = &x[r * cols..(r + 1) * cols];
        for (d, &s) in buf.iter_mut().zip(src) {
            *d = s.to_r();
        }
        let (m, inv) = normalize_row(&mut buf, eps, rms);
        means[r] = m;
        invs[r] = inv;
        let off = (r * cols) % g.len().max(1);
        let gr = &g[off..off + cols];
        let dst = &mut out[r * cols..(r + 1) * cols];
        match b {
            Some(b) => {
                let off = (r * cols) % b.len().max(1);
                let br = &b[off..off + cols];
                for c in 0..cols {
                    dst[c] = T::from_r(buf[c] * gr[c] + br[c]);
                }
            }
            None => {
                for c in 0..cols {
                    dst[c] = T::from_r(buf[c] * gr[c]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNormalization

struct RmsNorm {
    axis: i64,
    eps: f32,
}

impl Kernel for RmsNorm {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let scale = tensor_input(inputs, 1)?;
        let shape = x.shape().to_vec();
        if shape.is_empty() {
            return Err("RMSNormalization needs an input of rank >= 1".into());
        }
        let axis = norm_axis(self.axis, shape.len())?;
        let rows: usize = shape[..axis].iter().product();
        let cols: usize = shape[axis..].iter().product();
        let (dt, vt) = (x.dtype(), scale.dtype());
        crate::with_float!(dt, T => {
            let xs = view::<T>(x)?;
            let g = norm_param::<<T as Float>::R>(scale, &shape, axis, "scale")?;
            let eps = <T as Float>::R::from_f64(self.eps as f64);
            crate::with_float!(vt, V => {
                let y = cx.tensor::<V>(shape.clone(), |o| rms_rows::<T, V>(&xs, rows, cols, &g, eps, o))?;
                Ok(vec![y.into()])
            }, else Err(KernelError::Unsupported(format!("RMSNormalization with a {vt} scale"))))
        }, else Err(KernelError::Unsupported(format!("RMSNormalization of {dt} tensors"))))
    }
}

fn rms_rows<T: Float, V: Float>(
    x: &[T],
    rows: usize,
    cols: usize,
    g: &[T::R],
    eps: T::R,
    out: &mut [V],
) {
    if cols == 0 {
        return;
    }
    let mut buf = vec![T::R::ZERO; cols];
    for r in 0..rows {
        for (d, &s) in buf.iter_mut().zip(&x[r * cols..(r + 1) * cols]) {
            *d = s.to_r();
        }
        normalize_row(&mut buf, eps, true);
        let off = (r * cols) % g.len().max(1);
        for (c, o) in out[r * cols..(r + 1) * cols].iter_mut().enumerate() {
            *o = V::from_r(<V as Float>::R::from_f64((buf[c] * g[off + c]).to_f64()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNormalization

struct GroupNorm {
    eps: f32,
    groups: i64,
}

impl Kernel for GroupNorm {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let scale = tensor_input(inputs, 1)?;
        let bias = tensor_input(inputs, 2)?;
        let shape = x.shape().to_vec();
        if shape.len() < 2 {
            return Err("GroupNormalization needs an input of rank >= 2 (N, C, ...)".into());
        }
        let (n, c) = (shape[0], shape[1]);
        let spatial: usize = shape[2..].iter().product();
        if self.groups <= 0 || c % self.groups as usize != 0 {
            return Err(KernelError::Invalid(format!(
                "{c} channels do not divide into {} groups",
                self.groups
            )));
        }
        let groups = self.groups as usize;
        let dt = x.dtype();
        crate::with_float!(dt, T => {
            type R = <T as Float>::R;
            let xs = view::<T>(x)?;
            let g = to_reals::<R>(scale)?;
            let b = to_reals::<R>(bias)?;
            // Per-channel parameters (opset 21); per-group ones (opset 18) are expanded.
            let expand = |v: Vec<R>, what: &str| -> KResult<Vec<R>> {
                if v.len() == c {
                    Ok(v)
                } else if v.len() == groups {
                    Ok((0..c).map(|ch| v[ch / (c / groups)]).collect())
                } else {
                    Err(KernelError::Invalid(format!("GroupNormalization {what} has {} elements for {c} channels", v.len())))
                }
            };
            let (g, b) = (expand(g, "scale")?, expand(b, "bias")?);
            let eps = R::from_f64(self.eps as f64);
            let cpg = c / groups;
            let len = cpg * spatial;
            let y = cx.tensor::<T>(shape, |o| {
                let mut buf = vec![R::ZERO; len];
                for blk in 0..n * groups {
                    let src = &xs[blk * len..(blk + 1) * len];
                    for (d, &s) in buf.iter_mut().zip(src) {
                        *d = s.to_r();
                    }
                    if len > 0 {
                        normalize_row(&mut buf, eps, false);
                    }
                    let ch0 = (blk % groups) * cpg;
                    for (k, o) in o[blk * len..(blk + 1) * len].iter_mut().enumerate() {
                        let ch = ch0 + k / spatial.max(1);
                        *o = T::from_r(buf[k] * g[ch] + b[ch]);
                    }
                }
            })?;
            Ok(vec![y.into()])
        }, else Err(KernelError::Unsupported(format!("GroupNormalization of {dt} tensors"))))
    }
}

// ---------------------------------------------------------------------------------------------
// LpNormalization

struct LpNorm {
    axis: i64,
    p: i64,
}

impl Kernel for LpNorm {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let shape = x.shape().to_vec();
        let axis = norm_axis(self.axis, shape.len())?;
        let (outer, n, inner) = if shape.is_empty() {
            (1, 1, 1)
        } else {
            split_at_axis(&shape, axis)
        };
        let dt = x.dtype();
        let p = self.p;
        crate::with_float!(dt, T => {
            type R = <T as Float>::R;
            let xs = view::<T>(x)?;
            let y = cx.tensor::<T>(shape, |o| {
                let mut norm = vec![R::ZERO; inner];
                for ob in 0..outer {
                    norm.fill(R::ZERO);
                    let base = ob * n * inner;
                    for j in 0..n {
                        for (i, nv) in norm.iter_mut().enumerate() {
                            let v = xs[base + j * inner + i].to_r();
                            *nv += if p == 1 { v.abs() } else { v * v };
                        }
                    }
                    if p == 2 {
                        norm.iter_mut().for_each(|v| *v = v.sqrt());
                    }
                    for j in 0..n {
                        for (i, &nv) in norm.iter().enumerate() {
                            let k = base + j * inner + i;
                            o[k] = if nv == R::ZERO { T::from_r(R::ZERO) } else { T::from_r(xs[k].to_r() / nv) };
                        }
                    }
                }
            })?;
            Ok(vec![y.into()])
        }, else Err(KernelError::Unsupported(format!("LpNormalization of {dt} tensors"))))
    }
}

// ---------------------------------------------------------------------------------------------
// MeanVarianceNormalization

struct Mvn {
    axes: Vec<i64>,
}

impl Kernel for Mvn {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let shape = x.shape().to_vec();
        let rank = shape.len();
        let mut mask = vec![false; rank];
        for &a in &self.axes {
            mask[norm_axis(a, rank)?] = true;
        }
        // Output strides of the statistics: 0 along the reduced axes.
        let kept: Vec<usize> = shape
            .iter()
            .zip(&mask)
            .filter(|(_, &r)| !r)
            .map(|(&d, _)| d)
            .collect();
        let ks = strides(&kept);
        let mut k = 0;
        let st: Vec<usize> = mask
            .iter()
            .map(|&r| {
                if r {
                    0
                } else {
                    k += 1;
                    ks[k - 1]
                }
            })
            .collect();
        let nstat: usize = kept.iter().product();
        let count: usize = shape
            .iter()
            .zip(&mask)
            .filter(|(_, &r)| r)
            .map(|(&d, _)| d)
            .product();
        let dt = x.dtype();
        crate::with_float!(dt, T => {
            type R = <T as Float>::R;
            let xs = view::<T>(x)?;
            let mut s = vec![R::ZERO; nstat];
            let mut ss = vec![R::ZERO; nstat];
            let sts = [st];
            for_each_broadcast(&shape, &sts, |i, o| {
                let v = xs[i].to_r();
                s[o[0]] += v;
                ss[o[0]] += v * v;
            });
            let cnt = R::from_usize(count);
            let eps = R::from_f64(1e-9);
            for (m, q) in s.iter_mut().zip(ss.iter_mut()) {
                *m /= cnt;
                let var = *q / cnt - *m * *m;
                *q = var.sqrt() + eps;
            }
            let y = cx.tensor::<T>(shape.clone(), |o| {
                for_each_broadcast(&shape, &sts, |i, off| {
                    o[i] = T::from_r((xs[i].to_r() - s[off[0]]) / ss[off[0]]);
                });
            })?;
            Ok(vec![y.into()])
        }, else Err(KernelError::Unsupported(format!("MeanVarianceNormalization of {dt} tensors"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_rows_match_hand_computation() {
        // Row [1, 2, 3]: mean 2, var 2/3.
        let x = [1f32, 2., 3.];
        let (mut o, mut m, mut s) = ([0f32; 3], [0f32; 1], [0f32; 1]);
        affine_norm_rows::<f32>(
            &x,
            1,
            3,
            &[1., 2., 1.],
            Some(&[0., 0., 1.]),
            0.0,
            false,
            &mut o,
            &mut m,
            &mut s,
        );
        let inv = 1.0 / (2f32 / 3.).sqrt();
        assert!((m[0] - 2.).abs() < 1e-6 && (s[0] - inv).abs() < 1e-5);
        for (g, w) in o.iter().zip([-inv, 0., inv + 1.]) {
            assert!((g - w).abs() < 1e-5, "{o:?}");
        }
        // RMS of [3, 4] is sqrt(12.5).
        let mut r = [3f64, 4.];
        let (_, inv) = normalize_row(&mut r, 0.0, true);
        assert!((inv - 1.0 / 12.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn params_broadcast_to_normalized_dims() {
        let t = Tensor::from_vec(vec![1, 3], vec![1f32, 2., 3.]).unwrap();
        assert_eq!(
            broadcast_param::<f32>(&t, &[2, 3], "s").unwrap(),
            [1., 2., 3., 1., 2., 3.]
        );
        let t = Tensor::from_vec(vec![2, 1], vec![1f32, 2.]).unwrap();
        assert_eq!(
            broadcast_param::<f32>(&t, &[2, 3], "s").unwrap(),
            [1., 1., 1., 2., 2., 2.]
        );
        assert!(broadcast_param::<f32>(&t, &[3, 3], "s").is_err());
    }
}
