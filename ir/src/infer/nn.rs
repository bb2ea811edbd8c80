//! Neural-network ops: convolutions, pooling, normalization, resampling, recurrent layers,
//! detection ops.
//!
//! Window arithmetic (kernel, strides, dilations, pads, `auto_pad`, `ceil_mode`) follows the
//! ONNX spec; symbolic spatial dims stay symbolic where the division is exact in polynomial
//! terms, and become fresh symbols otherwise.

use super::helpers::*;
use super::{InferCx, InferError, InferResult, Out};
use crate::dtype::DType;
use crate::op::Op;
use crate::shape::{Dim, Type};

/// The window attributes of any op with Conv's (Conv, FusedConv, ConvInteger, …).
macro_rules! conv_attrs {
    ($c:expr) => {
        ConvAttrs {
            auto_pad: &$c.auto_pad,
            dilations: $c.dilations.as_deref(),
            group: $c.group,
            kernel_shape: $c.kernel_shape.as_deref(),
            pads: $c.pads.as_deref(),
            strides: $c.strides.as_deref(),
        }
    };
}

pub(super) fn infer(op: &Op, cx: &mut InferCx) -> Option<InferResult> {
    use Op::*;
    Some(match op {
        Conv(c) => conv(cx, &conv_attrs!(c), 0, 1, None),
        FusedConv(c) => conv(cx, &conv_attrs!(c), 0, 1, None),
        ConvInteger(c) => conv(cx, &conv_attrs!(c), 0, 1, Some(DType::I32)),
        QLinearConv(c) => (|| {
            // x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B.
            let out_dt = if cx.has(7) {
                cx.dtype(7)?
            } else {
                cx.dtype(0)?
            };
            conv(cx, &conv_attrs!(c), 0, 3, Some(out_dt))
        })(),
        DeformConv(c) => conv(
            cx,
            &ConvAttrs {
                auto_pad: "NOTSET",
                dilations: c.dilations.as_deref(),
                group: c.group,
                kernel_shape: c.kernel_shape.as_deref(),
                pads: c.pads.as_deref(),
                strides: c.strides.as_deref(),
            },
            0,
            1,
            None,
        ),
        ConvTranspose(c) => conv_transpose(cx, c),
        AveragePool(p) => pool(
            cx,
            &PoolAttrs {
                auto_pad: &p.auto_pad,
                ceil_mode: p.ceil_mode,
                dilations: p.dilations.as_deref(),
                kernel_shape: &p.kernel_shape,
                pads: p.pads.as_deref(),
                strides: p.strides.as_deref(),
            },
            false,
        ),
        LpPool(p) => pool(
            cx,
            &PoolAttrs {
                auto_pad: &p.auto_pad,
                ceil_mode: p.ceil_mode,
                dilations: p.dilations.as_deref(),
                kernel_shape: &p.kernel_shape,
                pads: p.pads.as_deref(),
                strides: p.strides.as_deref(),
            },
            false,
        ),
        MaxPool(p) => pool(
            cx,
            &PoolAttrs {
                auto_pad: &p.auto_pad,
                ceil_mode: p.ceil_mode,
                dilations: p.dilations.as_deref(),
                kernel_shape: &p.kernel_shape,
                pads: p.pads.as_deref(),
                strides: p.strides.as_deref(),
            },
            true,
        ),
        MaxRoiPool(p) => (|| {
            if p.pooled_shape.len() != 2 {
                return Err(InferError::Bad("pooled_shape must have 2 values".into()));
            }
            let dt = cx.dtype(0)?;
            let c = channel_dim(cx, 0, 4)?;
            let r = leading_dim(cx, 1, 2, "rois")?;
            Ok(vec![Out::tensor(
                dt,
                vec![
                    r,
                    c,
                    Dim::from(p.pooled_shape[0]),
                    Dim::from(p.pooled_shape[1]),
                ],
            )])
        })(),
        GlobalAveragePool(_) | GlobalMaxPool(_) | GlobalLpPool(_) => (|| {
            let t = cx.tensor(0)?;
            let dt = t.dtype;
            let Some(s) = &t.shape else {
                return Ok(vec![Out::unranked(dt)]);
            };
            if s.len() < 2 {
                return Err(InferError::Bad(format!(
                    "input must have rank >= 2, got {}",
                    s.len()
                )));
            }
            let mut o = s[..2].to_vec();
            o.resize(s.len(), Dim::from(1i64));
            Ok(vec![Out::tensor(dt, o)])
        })(),
        MaxUnpool(p) => max_unpool(cx, p),
        Col2Im(p) => col2im(cx, p),
        BatchNormalization(_) => (|| {
            let y = same_as_input(cx, 0)?.remove(0);
            let dt = cx.dtype(0)?;
            let stat = |cx: &InferCx, i: usize| -> Out {
                match cx.ty(i) {
                    Some(t @ Type::Tensor(_)) => Out::of(t.clone()),
                    _ => match cx.shape(0).ok().filter(|s| s.len() >= 2) {
                        Some(s) => Out::tensor(dt, vec![s[1].clone()]),
                        None => Out::unranked(dt),
                    },
                }
            };
            let m = stat(cx, 3);
            let v = stat(cx, 4);
            // Older forms had saved_mean / saved_var as outputs 3, 4 (same shape [C]).
            Ok(vec![y, m.clone(), v.clone(), m, v])
        })(),
        InstanceNormalization(_) | LRN(_) => same_as_input(cx, 0),
        Dropout(_) => (|| {
            let y = same_as_input(cx, 0)?.remove(0);
            let mask = shape_as_input(cx, 0, DType::Bool)?;
            Ok(vec![y, mask])
        })(),
        Resize(r) => resize(cx, r),
        Upsample(_) => upsample(cx),
        GridSample(_) => grid_sample(cx),
        AffineGrid(_) => affine_grid(cx),
        RoiAlign(r) => (|| {
            let dt = cx.dtype(0)?;
            let c = channel_dim(cx, 0, 4)?;
            let n = leading_dim(cx, 1, 2, "rois")?;
            Ok(vec![Out::tensor(
                dt,
                vec![n, c, Dim::from(r.output_height), Dim::from(r.output_width)],
            )])
        })(),
        RNN(r) => recurrent(cx, 1, r.hidden_size, &r.direction, r.layout, false),
        GRU(r) => recurrent(cx, 3, r.hidden_size, &r.direction, r.layout, false),
        LSTM(r) => recurrent(cx, 4, r.hidden_size, &r.direction, r.layout, true),
        NonMaxSuppression(_) => Ok(vec![Out::tensor(
            DType::I64,
            vec![cx.fresh("nms"), Dim::from(3i64)],
        )]),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Integer arithmetic on dims.

/// `floor(n / d)` for `d > 0`, when it can be written as a polynomial: known `n`, or `n`
/// whose non-constant part is divisible by `d` (`(2*seq+3) / 2 = seq+1`).
pub(super) fn floor_div(n: &Dim, d: i64) -> Option<Dim> {
    if d <= 0 {
        return None;
    }
    if let Some(v) = n.known() {
        return Some(Dim::from(v.div_euclid(d)));
    }
    if d == 1 {
        return Some(n.clone());
    }
    // Split off the constant term: n = p + c.
    let c = const_term(n);
    let p = n - &Dim::from(c);
    let q = p.div_exact(&Dim::from(d))?;
    Some(&q + &Dim::from(c.div_euclid(d)))
}

/// `ceil(n / d)` for `d > 0`, when it is a polynomial.
pub(super) fn ceil_div(n: &Dim, d: i64) -> Option<Dim> {
    floor_div(&(n + &Dim::from(d - 1)), d)
}

/// The constant term of a polynomial dim.
fn const_term(n: &Dim) -> i64 {
    // Evaluating with every symbol at 0 gives the constant term.
    n.eval(&|_| Some(0)).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Convolution and pooling windows.

struct ConvAttrs<'a> {
    auto_pad: &'a str,
    dilations: Option<&'a [i64]>,
    group: i64,
    kernel_shape: Option<&'a [i64]>,
    pads: Option<&'a [i64]>,
    strides: Option<&'a [i64]>,
}

struct PoolAttrs<'a> {
    auto_pad: &'a str,
    ceil_mode: bool,
    dilations: Option<&'a [i64]>,
    kernel_shape: &'a [i64],
    pads: Option<&'a [i64]>,
    strides: Option<&'a [i64]>,
}

/// Per-axis window parameters, validated.
struct Window {
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pads: Vec<i64>,
}

fn window(
    n: usize,
    strides: Option<&[i64]>,
    dilations: Option<&[i64]>,
    pads: Option<&[i64]>,
    auto_pad: &str,
) -> Result<Window, InferError> {
    let strides = strides.map(|s| s.to_vec()).unwrap_or_else(|| vec![1; n]);
    let dilations = dilations.map(|s| s.to_vec()).unwrap_or_else(|| vec![1; n]);
    if strides.len() != n {
        return Err(InferError::Bad(format!(
            "strides has {} values for {n} spatial axes",
            strides.len()
        )));
    }
    if dilations.len() != n {
        return Err(InferError::Bad(format!(
            "dilations has {} values for {n} spatial axes",
            dilations.len()
        )));
    }
    if strides.iter().any(|&s| s < 1) {
        return Err(InferError::Bad(format!(
            "strides must be positive, got {strides:?}"
        )));
    }
    if dilations.iter().any(|&s| s < 1) {
        return Err(InferError::Bad(format!(
            "dilations must be positive, got {dilations:?}"
        )));
    }
    let pads = match auto_pad {
        "NOTSET" | "" => {
            let p = pads.map(|s| s.to_vec()).unwrap_or_else(|| vec![0; 2 * n]);
            if p.len() != 2 * n {
                return Err(InferError::Bad(format!(
                    "pads has {} values for {n} spatial axes",
                    p.len()
                )));
            }
            if p.iter().any(|&x| x < 0) {
                return Err(InferError::Bad(format!(
                    "pads must be non-negative, got {p:?}"
                )));
            }
            p
        }
        "VALID" | "SAME_UPPER" | "SAME_LOWER" => vec![0; 2 * n],
        other => return Err(InferError::Bad(format!("unknown auto_pad `{other}`"))),
    };
    Ok(Window {
        strides,
        dilations,
        pads,
    })
}

/// Output length of a sliding window along one axis. `kernel` is `None` when it is not
/// known (only SAME padding can do without it).
#[allow(clippy::too_many_arguments)]
fn window_out(
    cx: &mut InferCx,
    input: &Dim,
    kernel: Option<i64>,
    w: &Window,
    i: usize,
    n: usize,
    auto_pad: &str,
    ceil_mode: bool,
) -> Result<Dim, InferError> {
    let s = w.strides[i];
    if matches!(auto_pad, "SAME_UPPER" | "SAME_LOWER") {
        // ceil(in / stride), whatever the kernel and ceil_mode.
        return Ok(ceil_div(input, s).unwrap_or_else(|| cx.fresh("conv")));
    }
    let Some(k) = kernel else {
        return Ok(cx.fresh("conv"));
    };
    let (pb, pe) = (w.pads[i], w.pads[i + n]);
    let ek = w.dilations[i] * (k - 1) + 1;
    let num = &(input + &Dim::from(pb + pe)) - &Dim::from(ek);
    let q = if ceil_mode {
        ceil_div(&num, s)
    } else {
        floor_div(&num, s)
    };
    let Some(q) = q else {
        return Ok(cx.fresh("conv"));
    };
    let mut out = &q + &Dim::from(1i64);
    if ceil_mode {
        // A window that would start in the right padding is dropped.
        let start_excess = &(&q * &Dim::from(s)) - &(input + &Dim::from(pb));
        match start_excess.known() {
            Some(e) if e >= 0 => out = q,
            Some(_) => {}
            None => return Ok(cx.fresh("conv")),
        }
    }
    if let Some(v) = out.known() {
        if v < 0 {
            return Err(InferError::Bad(format!(
                "window of {ek} (kernel {k}) does not fit input of {input} with pads {pb}+{pe}"
            )));
        }
    }
    Ok(out)
}

/// Shape of input `i` with rank `rank`: its own if known, fresh dims otherwise.
fn shape_or_fresh(
    cx: &mut InferCx,
    i: usize,
    rank: Option<usize>,
    hint: &str,
) -> Result<Option<Vec<Dim>>, InferError> {
    let t = cx.tensor(i)?;
    match (&t.shape, rank) {
        (Some(s), Some(r)) if s.len() != r => Err(InferError::Bad(format!(
            "input {i} must have rank {r}, got {}",
            s.len()
        ))),
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(r)) => Ok(Some((0..r).map(|_| cx.fresh(hint)).collect())),
        (None, None) => Ok(None),
    }
}

/// Conv, ConvInteger, QLinearConv, DeformConv: `x` is input `xi`, the weights input `wi`.
fn conv(
    cx: &mut InferCx,
    a: &ConvAttrs,
    xi: usize,
    wi: usize,
    out_dt: Option<DType>,
) -> InferResult {
    let dt = match out_dt {
        Some(d) => d,
        None => cx.dtype(xi)?,
    };
    let w_shape = cx.tensor(wi).ok().and_then(|t| t.shape.clone());
    let rank_hint = w_shape
        .as_ref()
        .map(|s| s.len())
        .or_else(|| a.kernel_shape.map(|k| k.len() + 2));
    let Some(x) = shape_or_fresh(cx, xi, rank_hint, "conv")? else {
        return Ok(vec![Out::unranked(dt)]);
    };
    if x.len() < 3 {
        return Err(InferError::Bad(format!(
            "input must have rank >= 3 (N, C, spatial…), got {}",
            x.len()
        )));
    }
    let n = x.len() - 2;
    if let Some(w) = &w_shape {
        if w.len() != x.len() {
            return Err(InferError::Bad(format!(
                "weights have rank {}, input rank {}",
                w.len(),
                x.len()
            )));
        }
        if let (Some(c), Some(wc)) = (x[1].known(), w[1].known()) {
            if c != wc * a.group {
                return Err(InferError::Bad(format!(
                    "input has {c} channels, weights expect {wc} x group {}",
                    a.group
                )));
            }
        }
    }
    if a.group < 1 {
        return Err(InferError::Bad(format!(
            "group must be positive, got {}",
            a.group
        )));
    }
    let kernel: Vec<Option<i64>> = match a.kernel_shape {
        Some(k) => {
            if k.len() != n {
                return Err(InferError::Bad(format!(
                    "kernel_shape has {} values for {n} spatial axes",
                    k.len()
                )));
            }
            k.iter().map(|&v| Some(v)).collect()
        }
        None => match &w_shape {
            Some(w) => w[2..].iter().map(|d| d.known()).collect(),
            None => vec![None; n],
        },
    };
    let win = window(n, a.strides, a.dilations, a.pads, a.auto_pad)?;
    let m = match &w_shape {
        Some(w) => w[0].clone(),
        None => cx.fresh("conv"),
    };
    let mut out = vec![x[0].clone(), m];
    for i in 0..n {
        out.push(window_out(
            cx,
            &x[2 + i],
            kernel[i],
            &win,
            i,
            n,
            a.auto_pad,
            false,
        )?);
    }
    Ok(vec![Out::tensor(dt, out)])
}

fn conv_transpose(cx: &mut InferCx, c: &crate::op::ConvTranspose) -> InferResult {
    let dt = cx.dtype(0)?;
    let w_shape = cx.tensor(1).ok().and_then(|t| t.shape.clone());
    let rank_hint = w_shape
        .as_ref()
        .map(|s| s.len())
        .or_else(|| c.kernel_shape.as_ref().map(|k| k.len() + 2));
    let Some(x) = shape_or_fresh(cx, 0, rank_hint, "convt")? else {
        return Ok(vec![Out::unranked(dt)]);
    };
    if x.len() < 3 {
        return Err(InferError::Bad(format!(
            "input must have rank >= 3 (N, C, spatial…), got {}",
            x.len()
        )));
    }
    let n = x.len() - 2;
    if c.group < 1 {
        return Err(InferError::Bad(format!(
            "group must be positive, got {}",
            c.group
        )));
    }
    if let Some(w) = &w_shape {
        if w.len() != x.len() {
            return Err(InferError::Bad(format!(
                "weights have rank {}, input rank {}",
                w.len(),
                x.len()
            )));
        }
        if let (Some(ch), Some(wc)) = (x[1].known(), w[0].known()) {
            if ch != wc {
                return Err(InferError::Bad(format!(
                    "input has {ch} channels, weights {wc}"
                )));
            }
        }
    }
    let kernel: Vec<Option<i64>> = match &c.kernel_shape {
        Some(k) => {
            if k.len() != n {
                return Err(InferError::Bad(format!(
                    "kernel_shape has {} values for {n} spatial axes",
                    k.len()
                )));
            }
            k.iter().map(|&v| Some(v)).collect()
        }
        None => match &w_shape {
            Some(w) => w[2..].iter().map(|d| d.known()).collect(),
            None => vec![None; n],
        },
    };
    let win = window(
        n,
        c.strides.as_deref(),
        c.dilations.as_deref(),
        c.pads.as_deref(),
        &c.auto_pad,
    )?;
    let out_pad = c.output_padding.clone().unwrap_or_else(|| vec![0; n]);
    if out_pad.len() != n {
        return Err(InferError::Bad(format!(
            "output_padding has {} values for {n} spatial axes",
            out_pad.len()
        )));
    }
    let m = match &w_shape {
        Some(w) => &w[1] * &Dim::from(c.group),
        None => cx.fresh("convt"),
    };
    let mut out = vec![x[0].clone(), m];
    if let Some(os) = &c.output_shape {
        // Spatial dims only; a full-rank shape is accepted too.
        let os = if os.len() == x.len() {
            &os[2..]
        } else {
            &os[..]
        };
        if os.len() != n {
            return Err(InferError::Bad(format!(
                "output_shape has {} values for {n} spatial axes",
                os.len()
            )));
        }
        out.extend(os.iter().map(|&v| Dim::from(v)));
        return Ok(vec![Out::tensor(dt, out)]);
    }
    for i in 0..n {
        let s = Dim::from(win.strides[i]);
        let d = if matches!(c.auto_pad.as_str(), "SAME_UPPER" | "SAME_LOWER") {
            &x[2 + i] * &s
        } else {
            match kernel[i] {
                Some(k) => {
                    let ek = win.dilations[i] * (k - 1) + 1;
                    let base = &s * &(&x[2 + i] - &Dim::from(1i64));
                    &base + &Dim::from(out_pad[i] + ek - win.pads[i] - win.pads[i + n])
                }
                None => cx.fresh("convt"),
            }
        };
        out.push(d);
    }
    Ok(vec![Out::tensor(dt, out)])
}

fn pool(cx: &mut InferCx, a: &PoolAttrs, indices: bool) -> InferResult {
    let dt = cx.dtype(0)?;
    let n = a.kernel_shape.len();
    let Some(x) = shape_or_fresh(cx, 0, Some(n + 2), "pool")? else {
        unreachable!()
    };
    let win = window(n, a.strides, a.dilations, a.pads, a.auto_pad)?;
    let mut out = x[..2].to_vec();
    for i in 0..n {
        out.push(window_out(
            cx,
            &x[2 + i],
            Some(a.kernel_shape[i]),
            &win,
            i,
            n,
            a.auto_pad,
            a.ceil_mode,
        )?);
    }
    let mut outs = vec![Out::tensor(dt, out.clone())];
    if indices {
        outs.push(Out::tensor(DType::I64, out));
    }
    Ok(outs)
}

fn max_unpool(cx: &mut InferCx, p: &crate::op::MaxUnpool) -> InferResult {
    let dt = cx.dtype(0)?;
    let n = p.kernel_shape.len();
    if cx.has(2) {
        if let Some(s) = cx.sym(2) {
            return Ok(vec![Out::tensor(dt, s.to_vec())]);
        }
        // Only the rank is known: batch and channels are kept.
        let rank = cx
            .shape(2)
            .ok()
            .and_then(|s| s.first().and_then(|d| d.known()));
        return Ok(vec![match rank {
            Some(r) => {
                let x = shape_or_fresh(cx, 0, Some(n + 2), "unpool")?.unwrap();
                let mut o = x[..2.min(r as usize)].to_vec();
                while o.len() < r as usize {
                    o.push(cx.fresh("unpool"));
                }
                Out::tensor(dt, o)
            }
            None => Out::unranked(dt),
        }]);
    }
    let x = shape_or_fresh(cx, 0, Some(n + 2), "unpool")?.unwrap();
    let win = window(n, p.strides.as_deref(), None, p.pads.as_deref(), "NOTSET")?;
    let mut out = x[..2].to_vec();
    for i in 0..n {
        let base = &(&x[2 + i] - &Dim::from(1i64)) * &Dim::from(win.strides[i]);
        out.push(&base + &Dim::from(p.kernel_shape[i] - win.pads[i] - win.pads[i + n]));
    }
    Ok(vec![Out::tensor(dt, out)])
}

fn col2im(cx: &mut InferCx, _p: &crate::op::Col2Im) -> InferResult {
    let dt = cx.dtype(0)?;
    let x = shape_or_fresh(cx, 0, Some(3), "col2im")?.unwrap();
    let image: Vec<Dim> = match cx.sym(1) {
        Some(s) => s.to_vec(),
        None => match cx
            .shape(1)
            .ok()
            .and_then(|s| s.first().and_then(|d| d.known()))
        {
            Some(k) => (0..k).map(|_| cx.fresh("col2im")).collect(),
            None => return Ok(vec![Out::unranked(dt)]),
        },
    };
    let c = match cx.sym(2) {
        Some(b) => {
            if b.len() != image.len() {
                return Err(InferError::Bad(format!(
                    "block_shape has {} values, image_shape {}",
                    b.len(),
                    image.len()
                )));
            }
            match x[1].div_exact(&product(b)) {
                Some(c) => c,
                None if x[1].is_known() && product(b).is_known() => {
                    return Err(InferError::Bad(format!(
                        "input dim 1 ({}) is not a multiple of the block size {}",
                        x[1],
                        product(b)
                    )))
                }
                None => cx.fresh("col2im"),
            }
        }
        None => cx.fresh("col2im"),
    };
    let mut out = vec![x[0].clone(), c];
    out.extend(image);
    Ok(vec![Out::tensor(dt, out)])
}

// ---------------------------------------------------------------------------------------
// Resampling.

/// Resolves `axes` (default: all) for rank `rank`.
fn resize_axes(axes: Option<&[i64]>, rank: usize) -> Result<Vec<usize>, InferError> {
    match axes {
        Some(a) => norm_axes(a, rank),
        None => Ok((0..rank).collect()),
    }
}

/// `floor(d * scale)` where it can be said exactly.
fn scale_dim(cx: &mut InferCx, d: &Dim, scale: f64) -> Dim {
    if let Some(v) = d.known() {
        return Dim::from((v as f64 * scale).floor() as i64);
    }
    if scale == scale.round() && scale >= 1.0 {
        return d * &Dim::from(scale as i64);
    }
    // 1/k: floor(d / k).
    let inv = 1.0 / scale;
    if inv == inv.round() && inv >= 1.0 {
        if let Some(q) = floor_div(d, inv as i64) {
            return q;
        }
    }
    cx.fresh("resize")
}

fn is_empty_input(cx: &InferCx, i: usize) -> bool {
    if !cx.has(i) {
        return true;
    }
    if let Some(t) = cx.const_tensor(i) {
        return t.is_empty();
    }
    matches!(cx.shape(i), Ok(s) if s.iter().any(|d| d.known() == Some(0)))
}

fn resize(cx: &mut InferCx, r: &crate::op::Resize) -> InferResult {
    let dt = cx.dtype(0)?;
    let x = match cx.shape(0) {
        Ok(s) => s.to_vec(),
        Err(InferError::Unknown) => {
            // The rank follows from sizes / scales when they are known.
            let len = [3usize, 2]
                .into_iter()
                .filter(|&i| !is_empty_input(cx, i))
                .find_map(|i| {
                    cx.shape(i)
                        .ok()
                        .and_then(|s| s.first().and_then(|d| d.known()))
                });
            match (len, &r.axes) {
                (Some(l), None) => (0..l).map(|_| cx.fresh("resize")).collect(),
                _ => return Ok(vec![Out::unranked(dt)]),
            }
        }
        Err(e) => return Err(e),
    };
    let axes = resize_axes(r.axes.as_deref(), x.len())?;
    let mut out = x.clone();
    if !is_empty_input(cx, 3) {
        let Some(sizes) = cx.sym(3).map(|s| s.to_vec()) else {
            for &a in &axes {
                out[a] = cx.fresh("resize");
            }
            return Ok(vec![Out::tensor(dt, out)]);
        };
        if sizes.len() != axes.len() {
            return Err(InferError::Bad(format!(
                "sizes has {} values for {} axes",
                sizes.len(),
                axes.len()
            )));
        }
        match r.keep_aspect_ratio_policy.as_str() {
            "stretch" => {
                for (&a, s) in axes.iter().zip(&sizes) {
                    out[a] = s.clone();
                }
            }
            policy @ ("not_larger" | "not_smaller") => {
                let ratios: Option<Vec<f64>> = axes
                    .iter()
                    .zip(&sizes)
                    .map(|(&a, s)| Some(s.known()? as f64 / x[a].known()? as f64))
                    .collect();
                match ratios {
                    Some(rs) => {
                        let scale = if policy == "not_larger" {
                            rs.iter().copied().fold(f64::INFINITY, f64::min)
                        } else {
                            rs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                        };
                        for &a in &axes {
                            let v = x[a].known().unwrap() as f64;
                            out[a] = Dim::from((scale * v + 0.5).floor() as i64);
                        }
                    }
                    None => {
                        for &a in &axes {
                            out[a] = cx.fresh("resize");
                        }
                    }
                }
            }
            other => {
                return Err(InferError::Bad(format!(
                    "unknown keep_aspect_ratio_policy `{other}`"
                )))
            }
        }
        return Ok(vec![Out::tensor(dt, out)]);
    }
    if is_empty_input(cx, 2) {
        return Err(InferError::Bad(
            "Resize needs either scales or sizes".into(),
        ));
    }
    match cx.const_tensor(2).and_then(|t| t.to_f64_vec()) {
        Some(scales) => {
            if scales.len() != axes.len() {
                return Err(InferError::Bad(format!(
                    "scales has {} values for {} axes",
                    scales.len(),
                    axes.len()
                )));
            }
            for (&a, &s) in axes.iter().zip(&scales) {
                if s <= 0.0 {
                    return Err(InferError::Bad(format!("scales must be positive, got {s}")));
                }
                out[a] = scale_dim(cx, &x[a], s);
            }
        }
        None => {
            for &a in &axes {
                out[a] = cx.fresh("resize");
            }
        }
    }
    Ok(vec![Out::tensor(dt, out)])
}

fn upsample(cx: &mut InferCx) -> InferResult {
    let dt = cx.dtype(0)?;
    let scales = cx.const_tensor(1).and_then(|t| t.to_f64_vec());
    let x = match cx.shape(0) {
        Ok(s) => s.to_vec(),
        Err(InferError::Unknown) => match &scales {
            Some(s) => (0..s.len()).map(|_| cx.fresh("upsample")).collect(),
            None => return Ok(vec![Out::unranked(dt)]),
        },
        Err(e) => return Err(e),
    };
    let out = match scales {
        Some(s) => {
            if s.len() != x.len() {
                return Err(InferError::Bad(format!(
                    "scales has {} values for rank {}",
                    s.len(),
                    x.len()
                )));
            }
            x.iter()
                .zip(&s)
                .map(|(d, &k)| scale_dim(cx, d, k))
                .collect()
        }
        None => x.iter().map(|_| cx.fresh("upsample")).collect(),
    };
    Ok(vec![Out::tensor(dt, out)])
}

fn grid_sample(cx: &mut InferCx) -> InferResult {
    let dt = cx.dtype(0)?;
    let grid = cx.tensor(1).ok().and_then(|t| t.shape.clone());
    let x = shape_or_fresh(cx, 0, grid.as_ref().map(|g| g.len()), "grid")?;
    let (Some(x), Some(g)) = (x, grid) else {
        return Ok(vec![Out::unranked(dt)]);
    };
    if x.len() < 3 || g.len() != x.len() {
        return Err(InferError::Bad(format!(
            "input rank {} and grid rank {} do not match",
            x.len(),
            g.len()
        )));
    }
    let r = x.len() - 2;
    if let Some(k) = g[g.len() - 1].known() {
        if k != r as i64 {
            return Err(InferError::Bad(format!(
                "grid's last dim is {k}, expected {r}"
            )));
        }
    }
    let mut out = vec![broadcast_dim(&x[0], &g[0])?, x[1].clone()];
    out.extend(g[1..g.len() - 1].iter().cloned());
    Ok(vec![Out::tensor(dt, out)])
}

fn affine_grid(cx: &mut InferCx) -> InferResult {
    let dt = cx.dtype(0)?;
    let theta = cx.tensor(0)?.shape.clone();
    if let Some(t) = &theta {
        if t.len() != 3 {
            return Err(InferError::Bad(format!(
                "theta must have rank 3, got {}",
                t.len()
            )));
        }
    }
    // Spatial rank: from `size`'s length or theta's [N, 2, 3] / [N, 3, 4].
    let size: Option<Vec<Dim>> = cx.sym(1).map(|s| s.to_vec());
    let size_len = size.as_ref().map(|s| s.len() as i64).or_else(|| {
        cx.shape(1)
            .ok()
            .and_then(|s| s.first().and_then(|d| d.known()))
    });
    let r = match size_len {
        Some(l) => l - 2,
        None => match theta.as_ref().and_then(|t| t[1].known()) {
            Some(k) => k,
            None => return Ok(vec![Out::unranked(dt)]),
        },
    };
    if r != 2 && r != 3 {
        return Err(InferError::Bad(format!(
            "AffineGrid supports 2-D and 3-D grids, got {r}-D"
        )));
    }
    let r = r as usize;
    let n = match (&size, &theta) {
        (Some(s), Some(t)) => broadcast_dim(&s[0], &t[0])?,
        (Some(s), None) => s[0].clone(),
        (None, Some(t)) => t[0].clone(),
        (None, None) => cx.fresh("affine_grid"),
    };
    let mut out = vec![n];
    for i in 0..r {
        out.push(match &size {
            Some(s) => s[2 + i].clone(),
            None => cx.fresh("affine_grid"),
        });
    }
    out.push(Dim::from(r));
    Ok(vec![Out::tensor(dt, out)])
}

/// Dim 1 (channels) of input `i`, which must have rank `rank`.
fn channel_dim(cx: &mut InferCx, i: usize, rank: usize) -> Result<Dim, InferError> {
    let s = shape_or_fresh(cx, i, Some(rank), "channels")?.unwrap();
    Ok(s[1].clone())
}

/// Dim 0 of input `i`, which must have rank `rank`; fresh if unknown.
fn leading_dim(cx: &mut InferCx, i: usize, rank: usize, what: &str) -> Result<Dim, InferError> {
    if !cx.has(i) || cx.ty(i).is_none() {
        return Ok(cx.fresh(what));
    }
    let s = shape_or_fresh(cx, i, Some(rank), what)?.unwrap();
    Ok(s[0].clone())
}

// ---------------------------------------------------------------------------------------
// Recurrent layers.

/// RNN (`gates` = 1), GRU (3), LSTM (4): outputs Y, Y_h (and Y_c for LSTM).
fn recurrent(
    cx: &mut InferCx,
    gates: i64,
    hidden_size: Option<i64>,
    direction: &str,
    layout: i64,
    cell: bool,
) -> InferResult {
    let dt = cx.dtype(0)?;
    let dirs: i64 = match direction {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        other => return Err(InferError::Bad(format!("unknown direction `{other}`"))),
    };
    if layout != 0 && layout != 1 {
        return Err(InferError::Bad(format!(
            "layout must be 0 or 1, got {layout}"
        )));
    }
    let x = shape_or_fresh(cx, 0, Some(3), "rnn")?.unwrap();
    let (seq, batch) = if layout == 0 {
        (x[0].clone(), x[1].clone())
    } else {
        (x[1].clone(), x[0].clone())
    };
    let w = cx.tensor(1).ok().and_then(|t| t.shape.clone());
    let r = cx.tensor(2).ok().and_then(|t| t.shape.clone());
    for (name, s) in [("W", &w), ("R", &r)] {
        if let Some(s) = s {
            if s.len() != 3 {
                return Err(InferError::Bad(format!(
                    "{name} must have rank 3, got {}",
                    s.len()
                )));
            }
            if let Some(d) = s[0].known() {
                if d != dirs {
                    return Err(InferError::Bad(format!(
                        "{name} has {d} directions, direction `{direction}` needs {dirs}"
                    )));
                }
            }
        }
    }
    let hidden = match hidden_size {
        Some(h) => Dim::from(h),
        None => r
            .as_ref()
            .map(|r| r[2].clone())
            .or_else(|| w.as_ref().and_then(|w| w[1].div_exact(&Dim::from(gates))))
            .unwrap_or_else(|| cx.fresh("hidden")),
    };
    let nd = Dim::from(dirs);
    let y = if layout == 0 {
        vec![seq, nd.clone(), batch.clone(), hidden.clone()]
    } else {
        vec![batch.clone(), seq, nd.clone(), hidden.clone()]
    };
    let yh = if layout == 0 {
        vec![nd, batch, hidden]
    } else {
        vec![batch, nd, hidden]
    };
    let mut outs = vec![Out::tensor(dt, y), Out::tensor(dt, yh.clone())];
    if cell {
        outs.push(Out::tensor(dt, yh));
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use crate::dtype::DType;
    use crate::graph::{Graph, ValueId};
    use crate::infer::infer_graph;
    use crate::op::*;
    use crate::shape::{Dim, Type};
    use crate::tensor::Tensor;

    fn d(s: &str) -> Dim {
        match s.parse::<i64>() {
            Ok(v) => Dim::from(v),
            Err(_) => Dim::sym(s),
        }
    }

    fn t(dt: DType, dims: &[&str]) -> Option<Type> {
        Some(Type::tensor(dt, dims.iter().map(|s| d(s)).collect()))
    }

    fn f32t(dims: &[&str]) -> Option<Type> {
        t(DType::F32, dims)
    }

    /// Runs inference and returns the printed types of `outs`.
    fn run(g: &mut Graph, outs: &[ValueId]) -> Vec<String> {
        infer_graph(g).unwrap();
        outs.iter()
            .map(|&o| {
                g.value(o)
                    .ty
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into())
            })
            .collect()
    }

    fn outputs(g: &Graph, n: crate::graph::NodeId) -> Vec<ValueId> {
        g.node(n).outputs.clone()
    }

    fn one(op: Op, inputs: Vec<Option<Type>>, nout: usize) -> Vec<String> {
        let mut g = Graph::new("t");
        let ins: Vec<Option<ValueId>> = inputs
            .into_iter()
            .enumerate()
            .map(|(i, ty)| ty.map(|ty| g.add_input(format!("in{i}"), Some(ty))))
            .collect();
        let names: Vec<String> = (0..nout).map(|i| format!("out{i}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let n = g.add_node("n", op, ins, &refs);
        let o = outputs(&g, n);
        run(&mut g, &o)
    }

    fn one_err(op: Op, inputs: Vec<Option<Type>>) -> String {
        let mut g = Graph::new("t");
        let ins: Vec<Option<ValueId>> = inputs
            .into_iter()
            .enumerate()
            .map(|(i, ty)| ty.map(|ty| g.add_input(format!("in{i}"), Some(ty))))
            .collect();
        g.add_node("n", op, ins, &["out"]);
        infer_graph(&mut g).unwrap_err().to_string()
    }

    fn conv_op() -> Conv {
        Conv {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: None,
            pads: None,
            strides: None,
        }
    }

    fn maxpool(k: &[i64]) -> MaxPool {
        MaxPool {
            auto_pad: "NOTSET".into(),
            ceil_mode: false,
            dilations: None,
            kernel_shape: k.to_vec(),
            pads: None,
            storage_order: 0,
            strides: None,
        }
    }

    #[test]
    fn dim_division() {
        use super::{ceil_div, floor_div};
        let s = Dim::sym("s");
        let two_s = &s * &Dim::from(2i64);
        assert_eq!(floor_div(&Dim::from(7i64), 2), Some(Dim::from(3i64)));
        assert_eq!(floor_div(&Dim::from(-1i64), 2), Some(Dim::from(-1i64)));
        assert_eq!(
            floor_div(&(&two_s + &Dim::from(3i64)), 2)
                .unwrap()
                .to_string(),
            "s+1"
        );
        assert_eq!(
            floor_div(&(&two_s - &Dim::from(1i64)), 2)
                .unwrap()
                .to_string(),
            "s-1"
        );
        assert_eq!(
            ceil_div(&(&two_s - &Dim::from(1i64)), 2)
                .unwrap()
                .to_string(),
            "s"
        );
        assert_eq!(floor_div(&s, 2), None);
        assert_eq!(floor_div(&s, 1), Some(s.clone()));
    }

    #[test]
    fn conv_shapes() {
        // 5x5 input, 3x3 kernel, pads 1, stride 2: floor((5+2-3)/2)+1 = 3.
        let mut c = conv_op();
        c.pads = Some(vec![1, 1, 1, 1]);
        c.strides = Some(vec![2, 2]);
        assert_eq!(
            one(
                Op::Conv(c.clone()),
                vec![f32t(&["1", "1", "7", "5"]), f32t(&["2", "1", "3", "3"])],
                1
            ),
            ["f32[1,2,4,3]"]
        );
        // Asymmetric pads [1,0,1,0] on 7x5, stride 2: h = floor((7+2-3)/2)+1 = 4, w = floor((5+0-3)/2)+1 = 2.
        c.pads = Some(vec![1, 0, 1, 0]);
        assert_eq!(
            one(
                Op::Conv(c.clone()),
                vec![f32t(&["1", "1", "7", "5"]), f32t(&["2", "1", "3", "3"])],
                1
            ),
            ["f32[1,2,4,2]"]
        );
        // Symbolic: stride 1, pads 1, kernel 3 keeps the size; dilation 2 shrinks by 2.
        let mut c = conv_op();
        c.pads = Some(vec![1, 1, 1, 1]);
        c.dilations = Some(vec![1, 2]);
        assert_eq!(
            one(
                Op::Conv(c),
                vec![f32t(&["N", "3", "H", "W"]), f32t(&["8", "3", "3", "3"])],
                1
            ),
            ["f32[N,8,H,W-2]"]
        );
        // SAME_UPPER with stride 2: ceil(H/2) is not a polynomial → fresh; 2*H → H.
        let mut c = conv_op();
        c.auto_pad = "SAME_UPPER".into();
        c.strides = Some(vec![2]);
        let r = one(
            Op::Conv(c.clone()),
            vec![f32t(&["N", "2", "H"]), f32t(&["8", "2", "3"])],
            1,
        );
        assert!(r[0].starts_with("f32[N,8,unk__conv"), "{r:?}");
        // Group 2: 4 channels, weights [8, 2, 3].
        c.group = 2;
        assert_eq!(
            one(
                Op::Conv(c.clone()),
                vec![f32t(&["N", "4", "9"]), f32t(&["8", "2", "3"])],
                1
            ),
            ["f32[N,8,5]"]
        );
        c.group = 1;
        // VALID: floor((9-3)/2)+1 = 4.
        c.auto_pad = "VALID".into();
        assert_eq!(
            one(
                Op::Conv(c),
                vec![f32t(&["N", "2", "9"]), f32t(&["8", "2", "3"])],
                1
            ),
            ["f32[N,8,4]"]
        );
        // Channel mismatch is an error.
        let e = one_err(
            Op::Conv(conv_op()),
            vec![f32t(&["1", "3", "5", "5"]), f32t(&["2", "2", "3", "3"])],
        );
        assert!(e.contains("channels"), "{e}");
        // Rank mismatch is an error.
        let e = one_err(
            Op::Conv(conv_op()),
            vec![f32t(&["1", "3", "5"]), f32t(&["2", "3", "3", "3"])],
        );
        assert!(e.contains("rank"), "{e}");
        // Unranked input with ranked weights: rank known, batch fresh.
        let r = one(
            Op::Conv(conv_op()),
            vec![
                Some(Type::tensor_unranked(DType::F32)),
                f32t(&["8", "3", "3"]),
            ],
            1,
        );
        assert!(
            r[0].starts_with("f32[unk__conv") && r[0].contains(",8,"),
            "{r:?}"
        );
    }

    #[test]
    fn conv_integer_and_qlinear_and_deform() {
        let ci = ConvInteger {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: None,
            pads: Some(vec![1, 1, 1, 1]),
            strides: None,
        };
        assert_eq!(
            one(
                Op::ConvInteger(ci),
                vec![
                    t(DType::U8, &["1", "1", "3", "3"]),
                    t(DType::U8, &["1", "1", "2", "2"])
                ],
                1
            ),
            ["i32[1,1,4,4]"]
        );
        let q = QLinearConv {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: None,
            pads: None,
            strides: None,
        };
        let sc = f32t(&[]);
        assert_eq!(
            one(
                Op::QLinearConv(q),
                vec![
                    t(DType::U8, &["1", "1", "7", "7"]),
                    sc.clone(),
                    t(DType::U8, &[]),
                    t(DType::I8, &["1", "1", "1", "1"]),
                    sc.clone(),
                    t(DType::I8, &[]),
                    sc,
                    t(DType::I8, &[]),
                ],
                1
            ),
            ["i8[1,1,7,7]"]
        );
        let dc = DeformConv {
            dilations: None,
            group: 1,
            kernel_shape: Some(vec![2, 2]),
            offset_group: 1,
            pads: Some(vec![1, 1, 1, 1]),
            strides: None,
        };
        assert_eq!(
            one(
                Op::DeformConv(dc),
                vec![
                    f32t(&["1", "1", "3", "3"]),
                    f32t(&["1", "1", "2", "2"]),
                    f32t(&["1", "8", "4", "4"])
                ],
                1
            ),
            ["f32[1,1,4,4]"]
        );
    }

    #[test]
    fn conv_transpose_shapes() {
        let base = ConvTranspose {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: None,
            output_padding: None,
            output_shape: None,
            pads: None,
            strides: None,
        };
        let x = f32t(&["1", "1", "3", "3"]);
        let w = f32t(&["1", "2", "3", "3"]);
        // 1*(3-1) + 3 = 5.
        assert_eq!(
            one(
                Op::ConvTranspose(base.clone()),
                vec![x.clone(), w.clone()],
                1
            ),
            ["f32[1,2,5,5]"]
        );
        // Strides [3,2], output_padding [1,1]: 3*2+1+3 = 10, 2*2+1+3 = 8.
        let mut c = base.clone();
        c.strides = Some(vec![3, 2]);
        c.output_padding = Some(vec![1, 1]);
        assert_eq!(
            one(Op::ConvTranspose(c.clone()), vec![x.clone(), w.clone()], 1),
            ["f32[1,2,10,8]"]
        );
        // Pads [1,2,1,2] with strides [3,2]: 3*2+3-2 = 7, 2*2+3-4 = 3.
        c.output_padding = None;
        c.pads = Some(vec![1, 2, 1, 2]);
        assert_eq!(
            one(Op::ConvTranspose(c.clone()), vec![x.clone(), w.clone()], 1),
            ["f32[1,2,7,3]"]
        );
        // output_shape wins over pads.
        c.output_shape = Some(vec![10, 8]);
        assert_eq!(
            one(Op::ConvTranspose(c), vec![x.clone(), w.clone()], 1),
            ["f32[1,2,10,8]"]
        );
        // SAME_UPPER: in * stride, symbolic.
        let mut c = base.clone();
        c.auto_pad = "SAME_UPPER".into();
        c.strides = Some(vec![2, 2]);
        assert_eq!(
            one(
                Op::ConvTranspose(c),
                vec![f32t(&["N", "1", "H", "W"]), w.clone()],
                1
            ),
            ["f32[N,2,2*H,2*W]"]
        );
        // Dilations 2: (3-1)*2+1 = 5 effective kernel: 2 + 5 = 7; group 2 doubles M.
        let mut c = base;
        c.dilations = Some(vec![2, 2]);
        c.group = 2;
        assert_eq!(
            one(
                Op::ConvTranspose(c),
                vec![f32t(&["N", "2", "S", "3"]), f32t(&["2", "2", "3", "3"])],
                1
            ),
            ["f32[N,4,S+4,7]"]
        );
    }

    #[test]
    fn pooling_shapes() {
        // Default 2x2 on 32x32: 31.
        assert_eq!(
            one(
                Op::MaxPool(maxpool(&[2, 2])),
                vec![f32t(&["1", "3", "32", "32"])],
                2
            ),
            ["f32[1,3,31,31]", "i64[1,3,31,31]"]
        );
        // Ceil mode: 4x4, kernel 3, stride 2: ceil((4-3)/2)+1 = 2.
        let mut p = maxpool(&[3, 3]);
        p.ceil_mode = true;
        p.strides = Some(vec![2, 2]);
        assert_eq!(
            one(Op::MaxPool(p.clone()), vec![f32t(&["1", "1", "4", "4"])], 1),
            ["f32[1,1,2,2]"]
        );
        // Ceil mode, last window would start in the padding: in 2, k 1, s 2, pads [1,1]:
        // ceil((2+2-1)/2)+1 = 3, but (3-1)*2 = 4 >= 2+1, so 2.
        let mut p = maxpool(&[1]);
        p.ceil_mode = true;
        p.strides = Some(vec![2]);
        p.pads = Some(vec![1, 1]);
        assert_eq!(
            one(Op::MaxPool(p), vec![f32t(&["1", "1", "2"])], 1),
            ["f32[1,1,2]"]
        );
        // SAME_LOWER, stride 1: same size, symbolic.
        let mut p = maxpool(&[3, 3]);
        p.auto_pad = "SAME_LOWER".into();
        assert_eq!(
            one(Op::MaxPool(p), vec![f32t(&["N", "C", "H", "W"])], 1),
            ["f32[N,C,H,W]"]
        );
        // Dilations 2 on 4x4 kernel 2: 4 - 3 + 1 = 2.
        let mut p = maxpool(&[2, 2]);
        p.dilations = Some(vec![2, 2]);
        assert_eq!(
            one(Op::MaxPool(p), vec![f32t(&["1", "1", "4", "4"])], 1),
            ["f32[1,1,2,2]"]
        );
        // Stride 2 over a symbolic 2*H+1 input with kernel 3: floor((2H+1-3)/2)+1 = H.
        let mut g = Graph::new("t");
        let h = Dim::sym("H");
        let x = g.add_input(
            "x",
            Some(Type::tensor(
                DType::F32,
                vec![
                    Dim::from(1i64),
                    Dim::from(1i64),
                    &(&h * &Dim::from(2i64)) + &Dim::from(1i64),
                ],
            )),
        );
        let mut p = maxpool(&[3]);
        p.strides = Some(vec![2]);
        let n = g.add_node("n", Op::MaxPool(p), vec![Some(x)], &["y"]);
        let o = outputs(&g, n);
        assert_eq!(run(&mut g, &o), ["f32[1,1,H]"]);

        // Ceil mode over a symbolic 2*H input, kernel 2, stride 2: ceil((2H-2)/2)+1 = H, and
        // the last window starts at 2H-2 < 2H, so it stays. SAME with stride 2 on 2*H: H.
        let mut g = Graph::new("t");
        let h2 = &h * &Dim::from(2i64);
        let x = g.add_input(
            "x",
            Some(Type::tensor(
                DType::F32,
                vec![Dim::from(1i64), Dim::from(1i64), h2.clone()],
            )),
        );
        let mut p = maxpool(&[2]);
        p.strides = Some(vec![2]);
        p.ceil_mode = true;
        let n1 = g.add_node("n1", Op::MaxPool(p.clone()), vec![Some(x)], &["y1"]);
        p.auto_pad = "SAME_UPPER".into();
        let n2 = g.add_node("n2", Op::MaxPool(p), vec![Some(x)], &["y2"]);
        let o = vec![outputs(&g, n1)[0], outputs(&g, n2)[0]];
        assert_eq!(run(&mut g, &o), ["f32[1,1,H]", "f32[1,1,H]"]);

        let ap = AveragePool {
            auto_pad: "SAME_UPPER".into(),
            ceil_mode: false,
            count_include_pad: false,
            dilations: None,
            kernel_shape: vec![2, 2],
            pads: None,
            strides: Some(vec![2, 2]),
        };
        assert_eq!(
            one(Op::AveragePool(ap), vec![f32t(&["1", "3", "5", "6"])], 1),
            ["f32[1,3,3,3]"]
        );
        let lp = LpPool {
            auto_pad: "NOTSET".into(),
            ceil_mode: false,
            dilations: None,
            kernel_shape: vec![3],
            p: 2,
            pads: Some(vec![1, 1]),
            strides: None,
        };
        assert_eq!(
            one(Op::LpPool(lp), vec![f32t(&["B", "3", "T"])], 1),
            ["f32[B,3,T]"]
        );
        // Unranked input: rank from the kernel.
        let r = one(
            Op::MaxPool(maxpool(&[2, 2])),
            vec![Some(Type::tensor_unranked(DType::F16))],
            1,
        );
        assert!(r[0].starts_with("f16[unk__pool"), "{r:?}");
        // Kernel bigger than padded input.
        let e = one_err(Op::MaxPool(maxpool(&[5])), vec![f32t(&["1", "1", "2"])]);
        assert!(e.contains("does not fit"), "{e}");
        // Wrong rank for kernel.
        let e = one_err(Op::MaxPool(maxpool(&[2, 2])), vec![f32t(&["1", "1", "2"])]);
        assert!(e.contains("rank"), "{e}");
    }

    #[test]
    fn global_pools_and_roi_pools() {
        for op in [
            Op::GlobalAveragePool(GlobalAveragePool {}),
            Op::GlobalMaxPool(GlobalMaxPool {}),
            Op::GlobalLpPool(GlobalLpPool { p: 2 }),
        ] {
            assert_eq!(
                one(op, vec![f32t(&["N", "C", "H", "W"])], 1),
                ["f32[N,C,1,1]"]
            );
        }
        let mrp = MaxRoiPool {
            pooled_shape: vec![2, 3],
            spatial_scale: 1.0,
        };
        assert_eq!(
            one(
                Op::MaxRoiPool(mrp),
                vec![f32t(&["1", "8", "16", "16"]), f32t(&["R", "5"])],
                1
            ),
            ["f32[R,8,2,3]"]
        );
        let ra = RoiAlign {
            coordinate_transformation_mode: "half_pixel".into(),
            mode: "avg".into(),
            output_height: 5,
            output_width: 5,
            sampling_ratio: 2,
            spatial_scale: 1.0,
        };
        assert_eq!(
            one(
                Op::RoiAlign(ra),
                vec![
                    f32t(&["1", "1", "10", "10"]),
                    f32t(&["3", "4"]),
                    t(DType::I64, &["3"])
                ],
                1
            ),
            ["f32[3,1,5,5]"]
        );
    }

    #[test]
    fn max_unpool_and_col2im() {
        let p = MaxUnpool {
            kernel_shape: vec![2, 2],
            pads: None,
            strides: Some(vec![2, 2]),
        };
        // (2-1)*2 + 2 = 4.
        assert_eq!(
            one(
                Op::MaxUnpool(p.clone()),
                vec![
                    f32t(&["1", "1", "2", "2"]),
                    t(DType::I64, &["1", "1", "2", "2"])
                ],
                1
            ),
            ["f32[1,1,4,4]"]
        );
        let mut g = Graph::new("t");
        let x = g.add_input("x", f32t(&["1", "1", "2", "2"]));
        let i = g.add_input("i", t(DType::I64, &["1", "1", "2", "2"]));
        let s = g.add_const("s", Tensor::from_vec(vec![4], vec![1i64, 1, 5, 5]).unwrap());
        let n = g.add_node(
            "n",
            Op::MaxUnpool(p),
            vec![Some(x), Some(i), Some(s)],
            &["y"],
        );
        let o = outputs(&g, n);
        assert_eq!(run(&mut g, &o), ["f32[1,1,5,5]"]);

        let mut g = Graph::new("t");
        let x = g.add_input("x", f32t(&["N", "5", "L"]));
        let img = g.add_const("img", Tensor::from_vec(vec![2], vec![5i64, 5]).unwrap());
        let blk = g.add_const("blk", Tensor::from_vec(vec![2], vec![1i64, 5]).unwrap());
        let n = g.add_node(
            "n",
            Op::Col2Im(Col2Im {
                dilations: None,
                pads: None,
                strides: None,
            }),
            vec![Some(x), Some(img), Some(blk)],
            &["y"],
        );
        let o = outputs(&g, n);
        assert_eq!(run(&mut g, &o), ["f32[N,1,5,5]"]);
    }

    #[test]
    fn normalization_and_dropout() {
        let bn = BatchNormalization {
            epsilon: 1e-5,
            momentum: 0.9,
            training_mode: true,
        };
        let c = f32t(&["3"]);
        assert_eq!(
            one(
                Op::BatchNormalization(bn),
                vec![
                    f32t(&["N", "3", "H"]),
                    c.clone(),
                    c.clone(),
                    c.clone(),
                    c.clone()
                ],
                3
            ),
            ["f32[N,3,H]", "f32[3]", "f32[3]"]
        );
        assert_eq!(
            one(
                Op::InstanceNormalization(InstanceNormalization { epsilon: 1e-5 }),
                vec![f32t(&["N", "3", "H"]), c.clone(), c],
                1
            ),
            ["f32[N,3,H]"]
        );
        let lrn = LRN {
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0,
            size: 3,
        };
        assert_eq!(
            one(Op::LRN(lrn), vec![f32t(&["N", "3", "H", "W"])], 1),
            ["f32[N,3,H,W]"]
        );
        assert_eq!(
            one(
                Op::Dropout(Dropout { seed: None }),
                vec![t(DType::F16, &["B", "S"])],
                2
            ),
            ["f16[B,S]", "bool[B,S]"]
        );
    }

    fn resize_op() -> Resize {
        Resize {
            antialias: false,
            axes: None,
            coordinate_transformation_mode: "half_pixel".into(),
            cubic_coeff_a: -0.75,
            exclude_outside: false,
            extrapolation_value: 0.0,
            keep_aspect_ratio_policy: "stretch".into(),
            mode: "nearest".into(),
            nearest_mode: "round_prefer_floor".into(),
        }
    }

    #[test]
    fn resize_scales_and_sizes() {
        // Scales [1,1,0.6,0.6] on 2x4 → floor(1.2)=1, floor(2.4)=2.
        let mut g = Graph::new("t");
        let x = g.add_input("x", f32t(&["1", "1", "2", "4"]));
        let sc = g.add_const(
            "sc",
            Tensor::from_vec(vec![4], vec![1f32, 1.0, 0.6, 0.6]).unwrap(),
        );
        let n = g.add_node(
            "n",
            Op::Resize(resize_op()),
            vec![Some(x), None, Some(sc)],
            &["y"],
        );
        let o = outputs(&g, n);
        assert_eq!(run(&mut g, &o), ["f32[1,1,1,2]"]);
        // Symbolic with scale 2 and 0.5 on a 2*W dim.
        let mut g = Graph::new("t");
        let w2 = &Dim::sym("W") * &Dim::from(2i64);
        let x = g.add_input(
            "x",
            Some(Type::tensor(
                DType::F32,
                vec![Dim::sym("N"), Dim::from(3i64), Dim::sym("H"), w2],
            )),
        );
        let sc = g.add_const(
            "sc",
            Tensor::from_vec(vec![4], vec![1f32, 1.0, 2.0, 0.5]).unwrap(),
        );
        let roi = g.add_const("roi", Tensor::from_vec(vec![0], Vec::<f32>::new()).unwrap());
        let n = g.add_node(
            "n",
            Op::Resize(resize_op()),
            vec![Some(x), Some(roi), Some(sc)],
            &["y"],
        );
        let o = outputs(&g, n);
        assert_eq!(run(&mut g, &o), ["f32[N,3,2*H,W]"]);
        // Sizes with axes [3, 2] (reordered), symbolic sizes taken as they are.
        let mut g = Graph::new("t");
        let x = g.add_input("x", f32t(&["N", "3", "H", "W"]));
        let sizes = g.add_const("sz", Tensor::from_vec(vec![2], vec![8i64, 7]).unwrap());
        let mut r = resize_op();
        r.axes = Some(vec![3, 2]);
        let n = g.add_node(
            "n",
            Op::Resize(r),
            vec![Some(x), None, None, Some(sizes)],
            &["y"],
        );
        let o = outputs(&g, n);
        assert_eq!(run(&mut g, &o), ["f32[N,3,7,8]"]);
        // not_larger: 4x4 → sizes [3, 2] → scale min(0.75, 0.5) = 0.5 → 2x2.
        // not_smaller: scale 0.75 → round(3.0) = 3 → 3x3.
        for (policy, want) in [
            ("not_larger", "f32[1,1,2,2]"),
            ("not_smaller", "f32[1,1,3,3]"),
        ] {
            let mut g = Graph::new("t");
            let x = g.add_input("x", f32t(&["1", "1", "4", "4"]));
            let sizes = g.add_const("sz", Tensor::from_vec(vec![2], vec![3i64, 2]).unwrap());
            let mut r = resize_op();
            r.axes = Some(vec![2, 3]);
            r.keep_aspect_ratio_policy = policy.into();
            let n = g.add_node(
                "n",
                Op::Resize(r),
                vec![Some(x), None, None, Some(sizes)],
                &["y"],
            );
            let o = outputs(&g, n);
            assert_eq!(run(&mut g, &o), [want]);
        }
        // Runtime sizes: resized axes get fresh dims, the rest is kept.
        let mut g = Graph::new("t");
        let x = g.add_input("x", f32t(&["N", "3", "H", "W"]));
        let sizes = g.add_input("sz", t(DType::I64, &["2"]));
        let mut r = resize_op();
        r.axes = Some(vec![2, 3]);
        let n = g.add_node(
            "n",
            Op::Resize(r),
            vec![Some(x), None, None, Some(sizes)],
            &["y"],
        );
        let o = outputs(&g, n);
        let got = run(&mut g, &o);
        assert!(got[0].starts_with("f32[N,3,unk__resize"), "{got:?}");
        // Upsample with scales [1,1,2,3].
        let mut g = Graph::new("t");
        let x = g.add_input("x", f32t(&["1", "1", "2", "2"]));
        let sc = g.add_const(
            "sc",
            Tensor::from_vec(vec![4], vec![1f32, 1.0, 2.0, 3.0]).unwrap(),
        );
        let n = g.add_node(
            "n",
            Op::Upsample(Upsample {
                mode: "nearest".into(),
            }),
            vec![Some(x), Some(sc)],
            &["y"],
        );
        let o = outputs(&g, n);
        assert_eq!(run(&mut g, &o), ["f32[1,1,4,6]"]);
    }

    #[test]
    fn grid_ops() {
        let gs = GridSample {
            align_corners: false,
            mode: "linear".into(),
            padding_mode: "zeros".into(),
        };
        assert_eq!(
            one(
                Op::GridSample(gs),
                vec![f32t(&["N", "C", "H", "W"]), f32t(&["N", "6", "7", "2"])],
                1
            ),
            ["f32[N,C,6,7]"]
        );
        let mut g = Graph::new("t");
        let th = g.add_input("th", f32t(&["2", "2", "3"]));
        let size = g.add_const(
            "size",
            Tensor::from_vec(vec![4], vec![2i64, 3, 5, 6]).unwrap(),
        );
        let n = g.add_node(
            "n",
            Op::AffineGrid(AffineGrid {
                align_corners: false,
            }),
            vec![Some(th), Some(size)],
            &["y"],
        );
        let o = outputs(&g, n);
        assert_eq!(run(&mut g, &o), ["f32[2,5,6,2]"]);
        let mut g = Graph::new("t");
        let th = g.add_input("th", f32t(&["N", "3", "4"]));
        let size = g.add_input("size", t(DType::I64, &["5"]));
        let n = g.add_node(
            "n",
            Op::AffineGrid(AffineGrid {
                align_corners: false,
            }),
            vec![Some(th), Some(size)],
            &["y"],
        );
        let o = outputs(&g, n);
        let got = run(&mut g, &o);
        assert!(
            got[0].starts_with("f32[N,unk__") && got[0].ends_with(",3]"),
            "{got:?}"
        );
    }

    #[test]
    fn recurrent_layers() {
        let lstm = LSTM {
            activation_alpha: None,
            activation_beta: None,
            activations: None,
            clip: None,
            direction: "bidirectional".into(),
            hidden_size: None,
            input_forget: false,
            layout: 0,
        };
        assert_eq!(
            one(
                Op::LSTM(lstm.clone()),
                vec![
                    f32t(&["S", "B", "10"]),
                    f32t(&["2", "28", "10"]),
                    f32t(&["2", "28", "7"])
                ],
                3
            ),
            ["f32[S,2,B,7]", "f32[2,B,7]", "f32[2,B,7]"]
        );
        let mut l1 = lstm;
        l1.layout = 1;
        l1.direction = "forward".into();
        l1.hidden_size = Some(7);
        assert_eq!(
            one(
                Op::LSTM(l1),
                vec![
                    f32t(&["B", "S", "10"]),
                    f32t(&["1", "28", "10"]),
                    f32t(&["1", "28", "7"])
                ],
                3
            ),
            ["f32[B,S,1,7]", "f32[B,1,7]", "f32[B,1,7]"]
        );
        let gru = GRU {
            activation_alpha: None,
            activation_beta: None,
            activations: None,
            clip: None,
            direction: "reverse".into(),
            hidden_size: None,
            layout: 0,
            linear_before_reset: false,
        };
        // Hidden size from W: 15 / 3 gates = 5 (R omitted from the type).
        assert_eq!(
            one(
                Op::GRU(gru),
                vec![f32t(&["S", "B", "2"]), f32t(&["1", "15", "2"]), None],
                2
            ),
            ["f32[S,1,B,5]", "f32[1,B,5]"]
        );
        let rnn = RNN {
            activation_alpha: None,
            activation_beta: None,
            activations: vec!["Tanh".into()],
            clip: None,
            direction: "forward".into(),
            hidden_size: Some(4),
            layout: 0,
        };
        assert_eq!(
            one(
                Op::RNN(rnn.clone()),
                vec![
                    f32t(&["S", "B", "2"]),
                    f32t(&["1", "4", "2"]),
                    f32t(&["1", "4", "4"])
                ],
                2
            ),
            ["f32[S,1,B,4]", "f32[1,B,4]"]
        );
        // Direction count mismatch.
        let mut bad = rnn;
        bad.direction = "bidirectional".into();
        let e = one_err(
            Op::RNN(bad),
            vec![
                f32t(&["S", "B", "2"]),
                f32t(&["1", "4", "2"]),
                f32t(&["1", "4", "4"]),
            ],
        );
        assert!(e.contains("directions"), "{e}");
    }

    #[test]
    fn non_max_suppression() {
        let r = one(
            Op::NonMaxSuppression(NonMaxSuppression {
                center_point_box: false,
            }),
            vec![f32t(&["1", "6", "4"]), f32t(&["1", "1", "6"])],
            1,
        );
        assert!(
            r[0].starts_with("i64[unk__nms") && r[0].ends_with(",3]"),
            "{r:?}"
        );
    }
}
