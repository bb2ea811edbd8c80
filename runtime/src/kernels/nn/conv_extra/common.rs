//! Helpers shared by the conv_extra kernels: f64 conversion at the boundary, sliding-window
//! geometry over any number of spatial dims, and a direct grouped convolution in f64.

use kiln_ir::{DType, Tensor};

use crate::error::KernelError;
use crate::kernel::RunCx;

/// Elements as f64 (exact for f16/bf16/f32/f64 and every integer type these ops take).
pub(super) fn floats(t: &Tensor) -> Result<Vec<f64>, KernelError> {
    if !t.dtype().is_float() && !t.dtype().is_int() {
        return Err(KernelError::Unsupported(format!("{} input", t.dtype())));
    }
    t.to_f64_vec()
        .ok_or_else(|| KernelError::Unsupported(format!("{} input", t.dtype())))
}

/// Checks that a float input has one of the float types these kernels write back.
pub(super) fn check_float(t: &Tensor, what: &str) -> Result<(), KernelError> {
    match t.dtype() {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => Ok(()),
        d => Err(KernelError::Unsupported(format!("{what} of type {d}"))),
    }
}

/// A float tensor of `dtype` from f64 values.
pub(super) fn from_f64(
    cx: &mut RunCx,
    dtype: DType,
    shape: Vec<usize>,
    v: &[f64],
) -> Result<Tensor, KernelError> {
    Ok(match dtype {
        DType::F32 => cx.tensor::<f32>(shape, |o| {
            o.iter_mut().zip(v).for_each(|(o, x)| *o = *x as f32)
        })?,
        DType::F64 => {
            cx.tensor::<f64>(shape, |o| o.iter_mut().zip(v).for_each(|(o, x)| *o = *x))?
        }
        DType::F16 => cx.tensor::<half::f16>(shape, |o| {
            o.iter_mut()
                .zip(v)
                .for_each(|(o, x)| *o = half::f16::from_f64(*x))
        })?,
        DType::BF16 => cx.tensor::<half::bf16>(shape, |o| {
            o.iter_mut()
                .zip(v)
                .for_each(|(o, x)| *o = half::bf16::from_f64(*x))
        })?,
        d => return Err(KernelError::Unsupported(format!("{d} output"))),
    })
}

/// Value `i` of an optional per-dim attribute, or `default`.
pub(super) fn attr_at(v: Option<&Vec<i64>>, i: usize, default: i64) -> i64 {
    v.and_then(|v| v.get(i).copied()).unwrap_or(default)
}

/// Checks that a per-dim attribute has `want` entries.
pub(super) fn check_len(name: &str, v: Option<&Vec<i64>>, want: usize) -> Result<(), KernelError> {
    match v {
        Some(v) if v.len() != want => Err(KernelError::Invalid(format!(
            "{name} has {} entries, expected {want}",
            v.len()
        ))),
        _ => Ok(()),
    }
}

/// Geometry of a sliding window over the spatial dims.
#[derive(Clone, Debug)]
pub(super) struct Window {
    pub in_sp: Vec<usize>,
    pub out_sp: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_begin: Vec<usize>,
}

/// Window attributes as the ops carry them.
pub(super) struct WindowAttrs<'a> {
    pub strides: Option<&'a Vec<i64>>,
    pub dilations: Option<&'a Vec<i64>>,
    pub pads: Option<&'a Vec<i64>>,
    pub auto_pad: &'a str,
    pub ceil_mode: bool,
}

/// Output extent and begin padding of a Conv/pool-style window (ONNX rules for explicit
/// pads, auto_pad SAME_UPPER / SAME_LOWER / VALID and ceil_mode).
pub(super) fn window(
    in_sp: &[usize],
    kernel: &[usize],
    a: &WindowAttrs,
) -> Result<Window, KernelError> {
    let r = in_sp.len();
    if kernel.len() != r {
        return Err(KernelError::Invalid(format!(
            "kernel {kernel:?} does not fit {r} spatial dims"
        )));
    }
    check_len("strides", a.strides, r)?;
    check_len("dilations", a.dilations, r)?;
    check_len("pads", a.pads, 2 * r)?;
    let mut w = Window {
        in_sp: in_sp.to_vec(),
        out_sp: vec![0; r],
        kernel: kernel.to_vec(),
        strides: vec![1; r],
        dilations: vec![1; r],
        pad_begin: vec![0; r],
    };
    for i in 0..r {
        let s = attr_at(a.strides, i, 1);
        let d = attr_at(a.dilations, i, 1);
        if s < 1 || d < 1 || kernel[i] == 0 {
            return Err(KernelError::Invalid(format!(
                "strides, dilations and kernel must be positive (dim {i}: {s}, {d}, {})",
                kernel[i]
            )));
        }
        let inp = in_sp[i] as i64;
        let ek = (kernel[i] as i64 - 1) * d + 1;
        let (pb, pe) = match a.auto_pad {
            "SAME_UPPER" | "SAME_LOWER" => {
                let out = (inp + s - 1) / s;
                let total = ((out - 1) * s + ek - inp).max(0);
                let small = total / 2;
                if a.auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            "VALID" => (0, 0),
            "NOTSET" | "" => (attr_at(a.pads, i, 0), attr_at(a.pads, i + r, 0)),
            other => {
                return Err(KernelError::Invalid(format!("unknown auto_pad {other:?}")));
            }
        };
        if pb < 0 || pe < 0 {
            return Err(KernelError::Invalid(format!("negative pads {pb}, {pe}")));
        }
        let span = inp + pb + pe - ek;
        if span < 0 {
            return Err(KernelError::Invalid(format!(
                "window {ek} is larger than the padded input {}",
                inp + pb + pe
            )));
        }
        let mut out = if a.ceil_mode {
            (span + s - 1) / s + 1
        } else {
            span / s + 1
        };
        // A last window that would start in the right padding is dropped.
        if a.ceil_mode && (out - 1) * s >= inp + pb {
            out -= 1;
        }
        w.out_sp[i] = out as usize;
        w.pad_begin[i] = pb as usize;
        w.strides[i] = s as usize;
        w.dilations[i] = d as usize;
    }
    Ok(w)
}

/// Row-major multi-index of `flat` in `dims`.
pub(super) fn unravel(mut flat: usize, dims: &[usize], idx: &mut [usize]) {
    for d in (0..dims.len()).rev() {
        idx[d] = flat % dims[d].max(1);
        flat /= dims[d].max(1);
    }
}

impl Window {
    pub fn out_size(&self) -> usize {
        self.out_sp.iter().product()
    }
    pub fn in_size(&self) -> usize {
        self.in_sp.iter().product()
    }
    pub fn kernel_size(&self) -> usize {
        self.kernel.iter().product()
    }

    /// For each output position and kernel tap (row-major), the flat input offset, or
    /// `None` where the tap falls in the padding. Indexed `o * kernel_size + k`.
    pub fn taps(&self) -> Vec<Option<usize>> {
        let r = self.in_sp.len();
        let (n_out, n_k) = (self.out_size(), self.kernel_size());
        let mut taps = Vec::with_capacity(n_out * n_k);
        let mut o_idx = vec![0usize; r];
        let mut k_idx = vec![0usize; r];
        for o in 0..n_out {
            unravel(o, &self.out_sp, &mut o_idx);
            for k in 0..n_k {
                unravel(k, &self.kernel, &mut k_idx);
                let mut flat = 0usize;
                let mut inside = true;
                for d in 0..r {
                    let pos = (o_idx[d] * self.strides[d] + k_idx[d] * self.dilations[d]) as isize
                        - self.pad_begin[d] as isize;
                    if pos < 0 || pos as usize >= self.in_sp[d] {
                        inside = false;
                        break;
                    }
                    flat = flat * self.in_sp[d] + pos as usize;
                }
                taps.push(inside.then_some(flat));
            }
        }
        taps
    }
}

/// Direct grouped convolution in f64: `x` is [N, C, in_sp...], `w` is [M, C/group, kernel...],
/// `bias` has M entries. Padding taps read zero. Returns [N, M, out_sp...] row-major.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_f64(
    x: &[f64],
    n: usize,
    c: usize,
    w: &[f64],
    m: usize,
    group: usize,
    bias: Option<&[f64]>,
    win: &Window,
) -> Vec<f64> {
    let (cg, mg) = (c / group, m / group);
    let (in_sz, out_sz, ksz) = (win.in_size(), win.out_size(), win.kernel_size());
    let taps = win.taps();
    let mut out = vec![0f64; n * m * out_sz];
    let mut col = vec![0f64; cg * ksz];
    for ni in 0..n {
        for gi in 0..group {
            for o in 0..out_sz {
                let t = &taps[o * ksz..(o + 1) * ksz];
                for ci in 0..cg {
                    let base = (ni * c + gi * cg + ci) * in_sz;
                    for (k, tap) in t.iter().enumerate() {
                        col[ci * ksz + k] = tap.map_or(0.0, |i| x[base + i]);
                    }
                }
                for mi in 0..mg {
                    let oc = gi * mg + mi;
                    let wrow = &w[oc * cg * ksz..(oc + 1) * cg * ksz];
                    let mut acc = bias.map_or(0.0, |b| b[oc]);
                    for (a, b) in wrow.iter().zip(&col) {
                        acc += a * b;
                    }
                    out[(ni * m + oc) * out_sz + o] = acc;
                }
            }
        }
    }
    out
}

/// Checks Conv-style X [N, C, ...] / W [M, C/group, k...] shapes; returns (N, C, M, group).
pub(super) fn conv_shapes(
    op: &str,
    xs: &[usize],
    ws: &[usize],
    group: i64,
    kernel_shape: Option<&Vec<i64>>,
) -> Result<(usize, usize, usize, usize), KernelError> {
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(KernelError::Invalid(format!(
            "{op} needs X [N,C,...] and W of the same rank, got {xs:?} and {ws:?}"
        )));
    }
    if group < 1 {
        return Err(KernelError::Invalid(format!("{op} group {group} < 1")));
    }
    let g = group as usize;
    let (n, c, m) = (xs[0], xs[1], ws[0]);
    if c % g != 0 || m % g != 0 || ws[1] * g != c {
        return Err(KernelError::Invalid(format!(
            "{op} group {g}: X channels {c}, W {ws:?} do not match"
        )));
    }
    if let Some(k) = kernel_shape {
        if k.len() != ws.len() - 2 || k.iter().zip(&ws[2..]).any(|(&a, &b)| a != b as i64) {
            return Err(KernelError::Invalid(format!(
                "{op} kernel_shape {k:?} does not match W {ws:?}"
            )));
        }
    }
    Ok((n, c, m, g))
}
