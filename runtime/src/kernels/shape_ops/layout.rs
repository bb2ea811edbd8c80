//! Layout ops: views (`Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`) that share the input's
//! bytes, and copies through strided views (`Transpose`, `Concat`, `Split`, `Slice`, `Expand`,
//! `Tile`, `Pad`, `CenterCropPad`, `DepthToSpace`, `SpaceToDepth`, `Trilu`, `ReverseSequence`,
//! `Compress`).

use kiln_ir::{Op, Tensor};

use super::{
    copy_mapped, copy_strided, dim, gather_view, ints, istrides, norm_axes, with_lane, KResult,
    Lane,
};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::util::{broadcast_shapes, broadcast_strides, norm_axis, strides};
use crate::value::Value;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<KResult<Box<dyn Kernel>>> {
    let k: Box<dyn Kernel> = match op {
        Op::Reshape(o) => Box::new(Reshape {
            allowzero: o.allowzero,
        }),
        Op::Flatten(o) => Box::new(Flatten { axis: o.axis }),
        Op::Squeeze(_) => Box::new(Squeeze),
        Op::Unsqueeze(_) => Box::new(Unsqueeze),
        Op::Transpose(o) => Box::new(Transpose {
            perm: o.perm.clone(),
        }),
        Op::Concat(o) => Box::new(Concat { axis: o.axis }),
        Op::Split(o) => Box::new(Split {
            axis: o.axis,
            num_outputs: o.num_outputs,
            n_out: cx.output_types.len(),
        }),
        Op::Slice(_) => Box::new(Slice),
        Op::Expand(_) => Box::new(Expand),
        Op::Tile(_) => Box::new(Tile),
        Op::Pad(o) => {
            let mode = match o.mode.as_str() {
                "constant" => PadMode::Constant,
                "reflect" => PadMode::Reflect,
                "edge" => PadMode::Edge,
                "wrap" => PadMode::Wrap,
                m => return Some(Err(KernelError::Unsupported(format!("Pad mode {m:?}")))),
            };
            Box::new(Pad { mode })
        }
        Op::CenterCropPad(o) => Box::new(CenterCropPad {
            axes: o.axes.clone(),
        }),
        Op::DepthToSpace(o) => match block_op(o.blocksize, &o.mode, true) {
            Ok(k) => Box::new(k),
            Err(e) => return Some(Err(e)),
        },
        Op::SpaceToDepth(o) => match block_op(o.blocksize, &o.mode, false) {
            Ok(k) => Box::new(k),
            Err(e) => return Some(Err(e)),
        },
        Op::Trilu(o) => Box::new(Trilu { upper: o.upper }),
        Op::ReverseSequence(o) => Box::new(ReverseSequence {
            batch_axis: o.batch_axis,
            time_axis: o.time_axis,
        }),
        Op::Compress(o) => Box::new(Compress { axis: o.axis }),
        _ => return None,
    };
    Some(Ok(k))
}

fn one(t: Tensor) -> KResult<Vec<Value>> {
    Ok(vec![Value::Tensor(t)])
}

// ---------------------------------------------------------------------------------------------
// Views.

struct Reshape {
    allowzero: bool,
}

/// The output shape of `Reshape(data of in_shape, target)`.
pub(super) fn reshape_shape(
    in_shape: &[usize],
    target: &[i64],
    allowzero: bool,
) -> KResult<Vec<usize>> {
    let total: usize = in_shape.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &v) in target.iter().enumerate() {
        match v {
            -1 => {
                if infer.replace(i).is_some() {
                    return Err("Reshape: the shape has more than one -1".into());
                }
                out.push(1);
            }
            0 if !allowzero => match in_shape.get(i) {
                Some(&d) => out.push(d),
                None => {
                    return Err(KernelError::Invalid(format!(
                        "Reshape: shape[{i}] = 0 copies a dim the rank-{} input lacks",
                        in_shape.len()
                    )))
                }
            },
            v => out.push(dim(v, "Reshape: dim")?),
        }
    }
    if let Some(k) = infer {
        if allowzero && target.contains(&0) {
            return Err("Reshape: with allowzero=1 the shape cannot hold both 0 and -1".into());
        }
        let others: usize = out.iter().product();
        if others == 0 || !total.is_multiple_of(others) {
            return Err(KernelError::Invalid(format!(
                "Reshape: cannot infer -1 reshaping {in_shape:?} to {target:?}"
            )));
        }
        out[k] = total / others;
    }
    if out.iter().product::<usize>() != total {
        return Err(KernelError::Invalid(format!(
            "Reshape: cannot reshape {in_shape:?} to {target:?}"
        )));
    }
    Ok(out)
}

impl Kernel for Reshape {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let target = ints(tensor_input(inputs, 1)?, "Reshape shape")?;
        one(x.reshaped(reshape_shape(x.shape(), &target, self.allowzero)?)?)
    }
}

struct Flatten {
    axis: i64,
}

impl Kernel for Flatten {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let r = x.rank() as i64;
        let a = if self.axis < 0 {
            self.axis + r
        } else {
            self.axis
        };
        if !(0..=r).contains(&a) {
            return Err(KernelError::Invalid(format!(
                "Flatten: axis {} is out of range for rank {r}",
                self.axis
            )));
        }
        let s = x.shape();
        let (a, b) = (
            s[..a as usize].iter().product(),
            s[a as usize..].iter().product(),
        );
        one(x.reshaped(vec![a, b])?)
    }
}

struct Squeeze;

impl Kernel for Squeeze {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let s = x.shape();
        let out: Vec<usize> = match opt_tensor_input(inputs, 1)? {
            Some(a) => {
                let axes = norm_axes(&ints(a, "Squeeze axes")?, s.len())?;
                for &a in &axes {
                    if s[a] != 1 {
                        return Err(KernelError::Invalid(format!(
                            "Squeeze: axis {a} has size {}",
                            s[a]
                        )));
                    }
                }
                s.iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect()
            }
            None => s.iter().copied().filter(|&d| d != 1).collect(),
        };
        one(x.reshaped(out)?)
    }
}

struct Unsqueeze;

impl Kernel for Unsqueeze {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let axes = ints(tensor_input(inputs, 1)?, "Unsqueeze axes")?;
        let rank = x.rank() + axes.len();
        let axes = norm_axes(&axes, rank)?;
        let mut it = x.shape().iter();
        let out: Vec<usize> = (0..rank)
            .map(|j| {
                if axes.contains(&j) {
                    1
                } else {
                    *it.next().unwrap_or(&1)
                }
            })
            .collect();
        one(x.reshaped(out)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Strided copies.

/// A tensor of `x`'s dtype and `shape` holding the strided view (`s0`, `ss`) of `x`: `x`
/// itself (sharing its bytes) when the view is the whole of it in order.
fn view_copy(
    x: &Tensor,
    s0: isize,
    ss: &[isize],
    shape: Vec<usize>,
    cx: &mut RunCx,
) -> KResult<Tensor> {
    if shape == x.shape() && s0 == 0 && (x.is_empty() || ss == istrides(&shape)) {
        return Ok(x.clone());
    }
    with_lane!(x.dtype(), T => {
        let src = T::view(x)?;
        T::make(cx, x.dtype(), shape.clone(), |dst| gather_view(&src, s0, ss, &shape, dst))
    })
}

struct Transpose {
    perm: Option<Vec<i64>>,
}

impl Kernel for Transpose {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let r = x.rank();
        let perm: Vec<usize> = match &self.perm {
            Some(p) if p.len() != r => {
                return Err(KernelError::Invalid(format!(
                    "Transpose: perm {p:?} for rank {r}"
                )));
            }
            Some(p) => norm_axes(p, r)?,
            None => (0..r).rev().collect(),
        };
        let st = istrides(x.shape());
        let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
        let ss: Vec<isize> = perm.iter().map(|&p| st[p]).collect();
        one(view_copy(x, 0, &ss, shape, cx)?)
    }
}

struct Concat {
    axis: i64,
}

impl Kernel for Concat {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let mut xs = Vec::with_capacity(inputs.len());
        for i in 0..inputs.len() {
            if let Some(t) = opt_tensor_input(inputs, i)? {
                xs.push(t);
            }
        }
        let first = *xs.first().ok_or("Concat has no inputs")?;
        let r = first.rank();
        if r == 0 {
            return Err("Concat: inputs must have rank >= 1".into());
        }
        let a = norm_axis(self.axis, r)?;
        let mut out = first.shape().to_vec();
        out[a] = 0;
        for x in &xs {
            if x.dtype() != first.dtype() || x.rank() != r {
                return Err(KernelError::Invalid(format!(
                    "Concat: inputs {first:?} and {x:?} differ"
                )));
            }
            for (j, (&d, &o)) in x.shape().iter().zip(&out).enumerate() {
                if j != a && d != o {
                    return Err(KernelError::Invalid(format!(
                        "Concat: shapes {:?} and {:?} differ",
                        first.shape(),
                        x.shape()
                    )));
                }
            }
            out[a] += x.shape()[a];
        }
        let ds = istrides(&out);
        let t = with_lane!(first.dtype(), T => {
            let srcs = xs.iter().map(|x| T::view(x)).collect::<KResult<Vec<_>>>()?;
            T::make(cx, first.dtype(), out.clone(), |dst| {
                let mut off = 0isize;
                for (x, src) in xs.iter().zip(&srcs) {
                    copy_strided(src, 0, &istrides(x.shape()), dst, off * ds[a], &ds, x.shape());
                    off += x.shape()[a] as isize;
                }
            })
        })?;
        one(t)
    }
}

struct Split {
    axis: i64,
    num_outputs: Option<i64>,
    n_out: usize,
}

/// Sizes of an equal split of `d` into `n` parts: ceil(d/n) each, the last one smaller.
fn equal_split(d: usize, n: usize) -> Vec<usize> {
    let step = d.div_ceil(n.max(1));
    (0..n)
        .map(|k| (d.min((k + 1) * step)).saturating_sub(d.min(k * step)))
        .collect()
}

impl Kernel for Split {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        if x.rank() == 0 {
            return Err("Split: cannot split a scalar".into());
        }
        let a = norm_axis(self.axis, x.rank())?;
        let d = x.shape()[a];
        // An empty split input (older exporters) means no sizes were given.
        let sizes: Vec<usize> = match opt_tensor_input(inputs, 1)?.filter(|s| !s.is_empty()) {
            Some(s) => {
                let v = ints(s, "Split sizes")?;
                let v: Vec<usize> = v
                    .iter()
                    .map(|&k| dim(k, "Split size"))
                    .collect::<KResult<_>>()?;
                if v.iter().sum::<usize>() != d {
                    return Err(KernelError::Invalid(format!(
                        "Split: sizes {v:?} do not sum to {d}"
                    )));
                }
                v
            }
            None => {
                let n = match self.num_outputs {
                    Some(k) if k >= 1 => k as usize,
                    Some(k) => return Err(KernelError::Invalid(format!("Split: num_outputs {k}"))),
                    None => self.n_out.max(1),
                };
                equal_split(d, n)
            }
        };
        let st = istrides(x.shape());
        let mut outs = Vec::with_capacity(sizes.len());
        let mut start = 0usize;
        for size in sizes {
            let mut shape = x.shape().to_vec();
            shape[a] = size;
            outs.push(Value::Tensor(view_copy(
                x,
                start as isize * st[a],
                &st,
                shape,
                cx,
            )?));
            start += size;
        }
        Ok(outs)
    }
}

struct Slice;

/// First index and length of `start:end:step` over a dim of `d` (ONNX rules: negative bounds
/// count from the end once, then clamp).
pub(super) fn slice_range(d: usize, start: i64, end: i64, step: i64) -> (usize, usize) {
    if d == 0 || step == 0 {
        return (0, 0);
    }
    let (d, step) = (d as i128, step as i128);
    let wrap = |x: i64| if x < 0 { x as i128 + d } else { x as i128 };
    let (s, e) = (wrap(start), wrap(end));
    let (s, len) = if step > 0 {
        let (s, e) = (s.clamp(0, d), e.clamp(0, d));
        (s, if e > s { (e - s + step - 1) / step } else { 0 })
    } else {
        let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
        (s, if s > e { (s - e - step - 1) / -step } else { 0 })
    };
    if len <= 0 {
        (0, 0)
    } else {
        (s as usize, len as usize)
    }
}

impl Kernel for Slice {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let r = x.rank();
        let starts = ints(tensor_input(inputs, 1)?, "Slice starts")?;
        let ends = ints(tensor_input(inputs, 2)?, "Slice ends")?;
        let n = starts.len();
        let axes = match opt_tensor_input(inputs, 3)? {
            Some(a) => norm_axes(&ints(a, "Slice axes")?, r)?,
            None => (0..n).collect(),
        };
        let steps = match opt_tensor_input(inputs, 4)? {
            Some(s) => ints(s, "Slice steps")?,
            None => vec![1; n],
        };
        if ends.len() != n || axes.len() != n || steps.len() != n {
            return Err("Slice: starts, ends, axes and steps differ in length".into());
        }
        if axes.iter().any(|&a| a >= r) {
            return Err(KernelError::Invalid(format!(
                "Slice: axes out of range for rank {r}"
            )));
        }
        let st = istrides(x.shape());
        let mut shape = x.shape().to_vec();
        let mut ss = st.clone();
        let mut s0 = 0isize;
        for i in 0..n {
            let a = axes[i];
            if steps[i] == 0 {
                return Err("Slice: step cannot be 0".into());
            }
            let (first, len) = slice_range(shape[a], starts[i], ends[i], steps[i]);
            shape[a] = len;
            if len > 0 {
                s0 += first as isize * st[a];
            }
            ss[a] = st[a] * steps[i].clamp(isize::MIN as i64, isize::MAX as i64) as isize;
        }
        one(view_copy(x, s0, &ss, shape, cx)?)
    }
}

struct Expand;

impl Kernel for Expand {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let target: Vec<usize> = ints(tensor_input(inputs, 1)?, "Expand shape")?
            .into_iter()
            .map(|v| dim(v, "Expand: dim"))
            .collect::<KResult<_>>()?;
        let out = broadcast_shapes(&[x.shape(), &target])?;
        let ss: Vec<isize> = broadcast_strides(x.shape(), &out)
            .into_iter()
            .map(|s| s as isize)
            .collect();
        one(view_copy(x, 0, &ss, out, cx)?)
    }
}

struct Tile;

impl Kernel for Tile {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let reps = ints(tensor_input(inputs, 1)?, "Tile repeats")?;
        if reps.len() != x.rank() {
            return Err(KernelError::Invalid(format!(
                "Tile: {} repeats for rank {}",
                reps.len(),
                x.rank()
            )));
        }
        // The output as a view of rank 2r: (repeat, dim) pairs, the repeat with stride 0.
        let st = istrides(x.shape());
        let mut view = Vec::with_capacity(2 * reps.len());
        let mut ss = Vec::with_capacity(2 * reps.len());
        let mut out = Vec::with_capacity(reps.len());
        for (k, &r) in reps.iter().enumerate() {
            let r = dim(r, "Tile: repeat")?;
            view.extend([r, x.shape()[k]]);
            ss.extend([0, st[k]]);
            out.push(r * x.shape()[k]);
        }
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), out.clone(), |dst| gather_view(&src, 0, &ss, &view, dst))
        })?;
        one(t)
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

struct Pad {
    mode: PadMode,
}

/// Per-axis pads (begin, end) for `rank` from the pads and optional axes inputs.
fn pad_widths(pads: &[i64], axes: Option<&[i64]>, rank: usize) -> KResult<Vec<(i64, i64)>> {
    let axes: Vec<usize> = match axes {
        Some(a) => norm_axes(a, rank)?,
        None => (0..rank).collect(),
    };
    let k = axes.len();
    if pads.len() != 2 * k {
        return Err(KernelError::Invalid(format!(
            "Pad: {} pads for {k} axes",
            pads.len()
        )));
    }
    let mut w = vec![(0i64, 0i64); rank];
    for (i, &a) in axes.iter().enumerate() {
        w[a] = (pads[i], pads[i + k]);
    }
    Ok(w)
}

/// For a dim of `d` padded by (`b`, `e`) in a non-constant mode: the input index of every
/// output index. Negative pads crop first; the positive ones pad the cropped range.
fn pad_map(d: usize, b: i64, e: i64, mode: PadMode) -> KResult<Vec<usize>> {
    let d = d as i64;
    let lo = (-b).max(0);
    let hi = d - (-e).max(0);
    let len = hi - lo;
    let (pb, pe) = (b.max(0), e.max(0));
    if len < 0 {
        return Err(KernelError::Invalid(format!(
            "Pad: pads ({b}, {e}) crop a dim of {d} below zero"
        )));
    }
    let n = pb + len + pe;
    if n > 0 && len == 0 {
        return Err(KernelError::Invalid(format!(
            "Pad: cannot pad an empty dim in {mode:?} mode"
        )));
    }
    Ok((0..n)
        .map(|o| {
            let p = o - pb;
            let q = match mode {
                PadMode::Edge | PadMode::Constant => p.clamp(0, len - 1),
                PadMode::Wrap => p.rem_euclid(len),
                PadMode::Reflect => {
                    if len == 1 {
                        0
                    } else {
                        let period = 2 * (len - 1);
                        let m = p.rem_euclid(period);
                        if m >= len {
                            period - m
                        } else {
                            m
                        }
                    }
                }
            };
            (lo + q) as usize
        })
        .collect())
}

impl Kernel for Pad {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let pads = ints(tensor_input(inputs, 1)?, "Pad pads")?;
        let axes = opt_tensor_input(inputs, 3)?
            .map(|a| ints(a, "Pad axes"))
            .transpose()?;
        let w = pad_widths(&pads, axes.as_deref(), x.rank())?;
        let value = opt_tensor_input(inputs, 2)?.filter(|v| !v.is_empty());
        if let Some(v) = value {
            if v.dtype() != x.dtype() {
                return Err(KernelError::Invalid(format!(
                    "Pad: constant_value is {} for {} data",
                    v.dtype(),
                    x.dtype()
                )));
            }
        }
        let mut out = Vec::with_capacity(x.rank());
        for (k, &(b, e)) in w.iter().enumerate() {
            let n = x.shape()[k] as i64 + b + e;
            out.push(dim(n, "Pad: padded dim")?);
        }
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            if self.mode == PadMode::Constant {
                let fill = match value {
                    Some(v) => super::first_lane::<T>(v)?,
                    None => T::default(),
                };
                // The part of the input that survives (negative pads crop) and where it lands.
                let st = istrides(x.shape());
                let ds = istrides(&out);
                let (mut s0, mut d0) = (0isize, 0isize);
                let mut region = Vec::with_capacity(x.rank());
                for (k, &(b, e)) in w.iter().enumerate() {
                    let lo = (-b).max(0);
                    let hi = x.shape()[k] as i64 - (-e).max(0);
                    region.push((hi - lo).max(0) as usize);
                    s0 += lo as isize * st[k];
                    d0 += b.max(0) as isize * ds[k];
                }
                T::make(cx, x.dtype(), out.clone(), |dst| {
                    dst.fill(fill);
                    copy_strided(&src, s0, &st, dst, d0, &ds, &region);
                })
            } else {
                let st = strides(x.shape());
                let mut maps = Vec::with_capacity(x.rank());
                for (k, &(b, e)) in w.iter().enumerate() {
                    let mut m = pad_map(x.shape()[k], b, e, self.mode)?;
                    m.iter_mut().for_each(|i| *i *= st[k]);
                    maps.push(m);
                }
                T::make(cx, x.dtype(), out.clone(), |dst| copy_mapped(&src, &maps, dst))
            }
        })?;
        one(t)
    }
}

struct CenterCropPad {
    axes: Option<Vec<i64>>,
}

impl Kernel for CenterCropPad {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let target = ints(tensor_input(inputs, 1)?, "CenterCropPad shape")?;
        let r = x.rank();
        let axes = match &self.axes {
            Some(a) => norm_axes(a, r)?,
            None => (0..r).collect(),
        };
        if target.len() != axes.len() {
            return Err(KernelError::Invalid(format!(
                "CenterCropPad: {} sizes for {} axes",
                target.len(),
                axes.len()
            )));
        }
        let mut out = x.shape().to_vec();
        let mut src_start = vec![0usize; r];
        let mut dst_start = vec![0usize; r];
        for (&a, &t) in axes.iter().zip(&target) {
            let t = dim(t, "CenterCropPad: size")?;
            let d = x.shape()[a];
            if t < d {
                src_start[a] = (d - t) / 2;
            } else {
                dst_start[a] = (t - d) / 2;
            }
            out[a] = t;
        }
        let region: Vec<usize> = (0..r).map(|k| x.shape()[k].min(out[k])).collect();
        let st = istrides(x.shape());
        let ds = istrides(&out);
        let s0: isize = (0..r).map(|k| src_start[k] as isize * st[k]).sum();
        let d0: isize = (0..r).map(|k| dst_start[k] as isize * ds[k]).sum();
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), out.clone(), |dst| copy_strided(&src, s0, &st, dst, d0, &ds, &region))
        })?;
        one(t)
    }
}

/// `DepthToSpace` (`to_space`) or `SpaceToDepth` with its block size and mode.
struct BlockOp {
    b: usize,
    crd: bool,
    to_space: bool,
}

fn block_op(blocksize: i64, mode: &str, to_space: bool) -> KResult<BlockOp> {
    let crd = match mode {
        "DCR" => false,
        "CRD" => true,
        m => return Err(KernelError::Unsupported(format!("block mode {m:?}"))),
    };
    if blocksize < 1 {
        return Err(KernelError::Invalid(format!(
            "blocksize {blocksize} must be positive"
        )));
    }
    Ok(BlockOp {
        b: blocksize as usize,
        crd,
        to_space,
    })
}

impl Kernel for BlockOp {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let &[n, c, h, w] = x.shape() else {
            return Err(KernelError::Invalid(format!(
                "{} needs a 4-D input, got {:?}",
                self.name(),
                x.shape()
            )));
        };
        let b = self.b;
        let (ih, iw, ic) = ((h * w) as isize, w as isize, (c * h * w) as isize);
        let bi = b as isize;
        let (view, ss, out): (Vec<usize>, Vec<isize>, Vec<usize>) = if self.to_space {
            if c % (b * b) != 0 {
                return Err(KernelError::Invalid(format!(
                    "DepthToSpace: {c} channels for blocksize {b}"
                )));
            }
            let c2 = c / (b * b);
            let c2i = c2 as isize;
            // Output viewed as [n, c2, h, b1, w, b2].
            let view = vec![n, c2, h, b, w, b];
            let ss = if self.crd {
                vec![ic, bi * bi * ih, iw, bi * ih, 1, ih]
            } else {
                vec![ic, ih, iw, bi * c2i * ih, 1, c2i * ih]
            };
            (view, ss, vec![n, c2, h * b, w * b])
        } else {
            if h % b != 0 || w % b != 0 {
                return Err(KernelError::Invalid(format!(
                    "SpaceToDepth: spatial dims {h}x{w} for blocksize {b}"
                )));
            }
            let (h2, w2) = (h / b, w / b);
            // Input viewed as [n, c, h2, b1, w2, b2]; output as a permutation of it.
            let (view, ss) = if self.crd {
                (vec![n, c, b, b, h2, w2], vec![ic, ih, iw, 1, bi * iw, bi])
            } else {
                (vec![n, b, b, c, h2, w2], vec![ic, iw, 1, ih, bi * iw, bi])
            };
            (view, ss, vec![n, c * b * b, h2, w2])
        };
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), out.clone(), |dst| gather_view(&src, 0, &ss, &view, dst))
        })?;
        one(t)
    }
}

impl BlockOp {
    fn name(&self) -> &'static str {
        if self.to_space {
            "DepthToSpace"
        } else {
            "SpaceToDepth"
        }
    }
}

struct Trilu {
    upper: bool,
}

impl Kernel for Trilu {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let k = match opt_tensor_input(inputs, 1)? {
            Some(t) => *ints(t, "Trilu k")?.first().ok_or("Trilu: k is empty")?,
            None => 0,
        };
        let r = x.rank();
        if r < 2 {
            return Err(KernelError::Invalid(format!(
                "Trilu needs rank >= 2, got {:?}",
                x.shape()
            )));
        }
        let (rows, cols) = (x.shape()[r - 2], x.shape()[r - 1]);
        let upper = self.upper;
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), x.shape().to_vec(), |dst| {
                if rows * cols == 0 {
                    return;
                }
                for (s, d) in src.chunks(rows * cols).zip(dst.chunks_mut(rows * cols)) {
                    for i in 0..rows {
                        // Kept columns: j - i >= k (upper) or j - i <= k (lower).
                        let edge = i as i64 + k;
                        let (lo, hi) = if upper {
                            (edge.clamp(0, cols as i64) as usize, cols)
                        } else {
                            (0, (edge + 1).clamp(0, cols as i64) as usize)
                        };
                        let row = i * cols;
                        d[row + lo..row + hi].clone_from_slice(&s[row + lo..row + hi]);
                    }
                }
            })
        })?;
        one(t)
    }
}

struct ReverseSequence {
    batch_axis: i64,
    time_axis: i64,
}

impl Kernel for ReverseSequence {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let lens = ints(tensor_input(inputs, 1)?, "ReverseSequence sequence_lens")?;
        let r = x.rank();
        if r < 2 {
            return Err("ReverseSequence: input needs rank >= 2".into());
        }
        let ba = norm_axis(self.batch_axis, r)?;
        let ta = norm_axis(self.time_axis, r)?;
        if ba == ta || ba > 1 || ta > 1 {
            return Err("ReverseSequence: batch_axis and time_axis must be 0 and 1".into());
        }
        let (nb, nt) = (x.shape()[ba], x.shape()[ta]);
        if lens.len() != nb {
            return Err(KernelError::Invalid(format!(
                "ReverseSequence: {} lengths for batch {nb}",
                lens.len()
            )));
        }
        let lens: Vec<usize> = lens
            .iter()
            .map(|&l| match usize::try_from(l) {
                Ok(l) if l <= nt => Ok(l),
                _ => Err(KernelError::Invalid(format!(
                    "ReverseSequence: length {l} for {nt} steps"
                ))),
            })
            .collect::<KResult<_>>()?;
        let inner: usize = x.shape()[2..].iter().product();
        let off = |b: usize, t: usize| {
            if ta == 0 {
                (t * nb + b) * inner
            } else {
                (b * nt + t) * inner
            }
        };
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), x.shape().to_vec(), |dst| {
                for (b, &l) in lens.iter().enumerate() {
                    for t in 0..nt {
                        let from = if t < l { l - 1 - t } else { t };
                        let (d, s) = (off(b, t), off(b, from));
                        dst[d..d + inner].clone_from_slice(&src[s..s + inner]);
                    }
                }
            })
        })?;
        one(t)
    }
}

struct Compress {
    axis: Option<i64>,
}

impl Kernel for Compress {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let c = tensor_input(inputs, 1)?;
        let cond = c.to_f64_vec().ok_or_else(|| {
            KernelError::Invalid(format!("Compress: condition of type {}", c.dtype()))
        })?;
        // Viewed as [outer, d, inner] along the axis (axis None: the flattened input).
        let (outer, d, inner, mut out) = match self.axis {
            None => (1, x.len(), 1, vec![0]),
            Some(a) => {
                if x.rank() == 0 {
                    return Err("Compress: cannot compress a scalar along an axis".into());
                }
                let a = norm_axis(a, x.rank())?;
                let s = x.shape();
                (
                    s[..a].iter().product::<usize>(),
                    s[a],
                    s[a + 1..].iter().product::<usize>(),
                    s.to_vec(),
                )
            }
        };
        if cond.len() > d && cond[d..].iter().any(|&v| v != 0.0) {
            return Err(KernelError::Invalid(format!(
                "Compress: condition selects beyond the axis of {d}"
            )));
        }
        let keep: Vec<usize> = (0..d.min(cond.len())).filter(|&i| cond[i] != 0.0).collect();
        let ax = match self.axis {
            None => 0,
            Some(a) => norm_axis(a, x.rank())?,
        };
        out[ax] = keep.len();
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), out.clone(), |dst| {
                let mut o = 0;
                for p in 0..outer {
                    for &i in &keep {
                        let s = (p * d + i) * inner;
                        dst[o..o + inner].clone_from_slice(&src[s..s + inner]);
                        o += inner;
                    }
                }
            })
        })?;
        one(t)
    }
}
