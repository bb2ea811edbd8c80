//! ConvTranspose over any number of spatial dims, as a scatter of each input element
//! through the kernel.

use kiln_ir::op::ConvTranspose;

use super::common::{attr_at, check_float, check_len, floats, from_f64};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, Kernel, RunCx};
use crate::value::Value;

pub(super) struct ConvTransposeK(pub ConvTranspose);

/// Output extent and begin padding per spatial dim, and the other per-dim parameters.
#[derive(Debug, PartialEq)]
pub(super) struct TGeom {
    pub out_sp: Vec<usize>,
    pub pad_begin: Vec<i64>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
}

/// ONNX ConvTranspose shape rules: explicit pads, auto_pad SAME_* (output = input * stride)
/// and output_shape (pads derived from it; SAME_UPPER puts the smaller half first).
pub(super) fn tgeom(
    c: &ConvTranspose,
    in_sp: &[usize],
    kernel: &[usize],
) -> Result<TGeom, KernelError> {
    let r = in_sp.len();
    check_len("strides", c.strides.as_ref(), r)?;
    check_len("dilations", c.dilations.as_ref(), r)?;
    check_len("pads", c.pads.as_ref(), 2 * r)?;
    check_len("output_padding", c.output_padding.as_ref(), r)?;
    // output_shape may name only the spatial dims or (older exporters) the whole shape.
    let out_shape: Option<&[i64]> = match c.output_shape.as_ref() {
        None => None,
        Some(v) if v.len() == r => Some(v),
        Some(v) if v.len() == r + 2 => Some(&v[2..]),
        Some(v) => {
            return Err(KernelError::Invalid(format!(
                "output_shape {v:?} does not fit {r} spatial dims"
            )))
        }
    };
    let same = matches!(c.auto_pad.as_str(), "SAME_UPPER" | "SAME_LOWER");
    if !matches!(
        c.auto_pad.as_str(),
        "NOTSET" | "" | "VALID" | "SAME_UPPER" | "SAME_LOWER"
    ) {
        return Err(KernelError::Invalid(format!(
            "unknown auto_pad {:?}",
            c.auto_pad
        )));
    }
    let mut g = TGeom {
        out_sp: vec![0; r],
        pad_begin: vec![0; r],
        strides: vec![1; r],
        dilations: vec![1; r],
    };
    for i in 0..r {
        let s = attr_at(c.strides.as_ref(), i, 1);
        let d = attr_at(c.dilations.as_ref(), i, 1);
        let op = attr_at(c.output_padding.as_ref(), i, 0);
        if s < 1 || d < 1 || kernel[i] == 0 || op < 0 {
            return Err(KernelError::Invalid(format!(
                "ConvTranspose dim {i}: stride {s}, dilation {d}, kernel {}, output_padding {op} out of range",
                kernel[i]
            )));
        }
        let inp = in_sp[i] as i64;
        let ek = (kernel[i] as i64 - 1) * d + 1;
        let full = s * (inp - 1) + op + ek;
        let (pb, out) = if out_shape.is_some() || same {
            let out = match out_shape {
                Some(o) => o[i],
                None => inp * s,
            };
            if out < 0 {
                return Err(KernelError::Invalid(format!("output_shape {out} < 0")));
            }
            let total = (full - out).max(0);
            let pb = if c.auto_pad == "SAME_UPPER" {
                total / 2
            } else {
                total - total / 2
            };
            (pb, out)
        } else if c.auto_pad == "VALID" {
            (0, full)
        } else {
            let (pb, pe) = (
                attr_at(c.pads.as_ref(), i, 0),
                attr_at(c.pads.as_ref(), i + r, 0),
            );
            if pb < 0 || pe < 0 {
                return Err(KernelError::Invalid(format!("negative pads {pb}, {pe}")));
            }
            (pb, full - pb - pe)
        };
        if out < 0 {
            return Err(KernelError::Invalid(format!(
                "ConvTranspose output extent {out} < 0 in dim {i}"
            )));
        }
        g.out_sp[i] = out as usize;
        g.pad_begin[i] = pb;
        g.strides[i] = s as usize;
        g.dilations[i] = d as usize;
    }
    Ok(g)
}

/// The scatter: `x` [N, C, in_sp], `w` [C, M/group, kernel], `bias` [M]; output
/// [N, M, out_sp].
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_transpose_f64(
    x: &[f64],
    n: usize,
    c: usize,
    in_sp: &[usize],
    w: &[f64],
    mg: usize,
    kernel: &[usize],
    group: usize,
    bias: Option<&[f64]>,
    g: &TGeom,
) -> Vec<f64> {
    let r = in_sp.len();
    let in_sz: usize = in_sp.iter().product();
    let ksz: usize = kernel.iter().product();
    let out_sz: usize = g.out_sp.iter().product();
    let (cg, m) = (c / group, mg * group);
    // For each input position and tap, the flat output offset it lands on (if inside).
    let mut land: Vec<Option<usize>> = Vec::with_capacity(in_sz * ksz);
    let (mut ii, mut ki) = (vec![0usize; r], vec![0usize; r]);
    for i in 0..in_sz {
        super::common::unravel(i, in_sp, &mut ii);
        for k in 0..ksz {
            super::common::unravel(k, kernel, &mut ki);
            let mut flat = 0usize;
            let mut inside = true;
            for d in 0..r {
                let pos = (ii[d] * g.strides[d] + ki[d] * g.dilations[d]) as i64 - g.pad_begin[d];
                if pos < 0 || pos >= g.out_sp[d] as i64 {
                    inside = false;
                    break;
                }
                flat = flat * g.out_sp[d] + pos as usize;
            }
            land.push(inside.then_some(flat));
        }
    }
    let mut out = vec![0f64; n * m * out_sz];
    for ni in 0..n {
        for ci in 0..c {
            let gi = ci / cg;
            let xrow = &x[(ni * c + ci) * in_sz..(ni * c + ci + 1) * in_sz];
            for mi in 0..mg {
                let oc = gi * mg + mi;
                let wk = &w[(ci * mg + mi) * ksz..(ci * mg + mi + 1) * ksz];
                let orow = &mut out[(ni * m + oc) * out_sz..(ni * m + oc + 1) * out_sz];
                for (i, &xv) in xrow.iter().enumerate() {
                    let l = &land[i * ksz..(i + 1) * ksz];
                    for (k, &wv) in wk.iter().enumerate() {
                        if let Some(o) = l[k] {
                            orow[o] += xv * wv;
                        }
                    }
                }
            }
        }
    }
    if let Some(b) = bias {
        for ni in 0..n {
            for oc in 0..m {
                out[(ni * m + oc) * out_sz..(ni * m + oc + 1) * out_sz]
                    .iter_mut()
                    .for_each(|v| *v += b[oc]);
            }
        }
    }
    out
}

impl Kernel for ConvTransposeK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let wt = tensor_input(inputs, 1)?;
        let b = opt_tensor_input(inputs, 2)?;
        check_float(x, "ConvTranspose X")?;
        let (xs, ws) = (x.shape(), wt.shape());
        if xs.len() < 3 || ws.len() != xs.len() {
            return Err(KernelError::Invalid(format!(
                "ConvTranspose needs X [N,C,...] and W of the same rank, got {xs:?} and {ws:?}"
            )));
        }
        let group = self.0.group;
        if group < 1 || xs[1] as i64 % group != 0 || ws[0] != xs[1] {
            return Err(KernelError::Invalid(format!(
                "ConvTranspose group {group}: X {xs:?} and W {ws:?} do not match"
            )));
        }
        let kernel = &ws[2..];
        if let Some(k) = &self.0.kernel_shape {
            if k.len() != kernel.len() || k.iter().zip(kernel).any(|(&a, &b)| a != b as i64) {
                return Err(KernelError::Invalid(format!(
                    "ConvTranspose kernel_shape {k:?} does not match W {ws:?}"
                )));
            }
        }
        let g = tgeom(&self.0, &xs[2..], kernel)?;
        let (group, mg) = (group as usize, ws[1]);
        let m = mg * group;
        let bv = b.map(floats).transpose()?;
        if let Some(bv) = &bv {
            if bv.len() != m {
                return Err(KernelError::Invalid(format!(
                    "ConvTranspose B has {} elements, expected {m}",
                    bv.len()
                )));
            }
        }
        let out = conv_transpose_f64(
            &floats(x)?,
            xs[0],
            xs[1],
            &xs[2..],
            &floats(wt)?,
            mg,
            kernel,
            group,
            bv.as_deref(),
            &g,
        );
        let mut shape = vec![xs[0], m];
        shape.extend(&g.out_sp);
        Ok(vec![Value::Tensor(from_f64(cx, x.dtype(), shape, &out)?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gather form, written independently: out[o] = sum over (i, k) with i*s + k*d - pb == o.
    #[allow(clippy::too_many_arguments)]
    fn naive_2d(
        x: &[f64],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f64],
        (mg, kh, kw): (usize, usize, usize),
        group: usize,
        s: (usize, usize),
        d: (usize, usize),
        pb: (i64, i64),
        (oh, ow): (usize, usize),
    ) -> Vec<f64> {
        let cg = c / group;
        let m = mg * group;
        let mut out = vec![0.0; n * m * oh * ow];
        for ni in 0..n {
            for oc in 0..m {
                let gi = oc / mg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for cc in 0..cg {
                            let ci = gi * cg + cc;
                            for iy in 0..h {
                                for ix in 0..w {
                                    for ky in 0..kh {
                                        for kx in 0..kw {
                                            let py = (iy * s.0 + ky * d.0) as i64 - pb.0;
                                            let px = (ix * s.1 + kx * d.1) as i64 - pb.1;
                                            if py == oy as i64 && px == ox as i64 {
                                                acc += x[((ni * c + ci) * h + iy) * w + ix]
                                                    * wt[((ci * mg + oc % mg) * kh + ky) * kw + kx];
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        out[((ni * m + oc) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn attrs() -> ConvTranspose {
        ConvTranspose {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: None,
            output_padding: None,
            output_shape: None,
            pads: None,
            strides: None,
        }
    }

    #[test]
    fn group_stride2_pads_matches_gather() {
        let (n, c, h, w) = (2, 4, 3, 2);
        let (group, mg, kh, kw) = (2, 3, 3, 2);
        let x: Vec<f64> = (0..n * c * h * w).map(|i| (i % 7) as f64 - 3.0).collect();
        let wt: Vec<f64> = (0..c * mg * kh * kw)
            .map(|i| (i % 5) as f64 * 0.5 - 1.0)
            .collect();
        let mut a = attrs();
        a.group = group as i64;
        a.strides = Some(vec![2, 2]);
        a.dilations = Some(vec![1, 2]);
        a.pads = Some(vec![1, 0, 0, 1]);
        a.output_padding = Some(vec![1, 0]);
        let g = tgeom(&a, &[h, w], &[kh, kw]).unwrap();
        // 2*(3-1)+1+3-1 = 7; 2*(2-1)+0+3-1 = 4
        assert_eq!(g.out_sp, vec![7, 4]);
        let got = conv_transpose_f64(&x, n, c, &[h, w], &wt, mg, &[kh, kw], group, None, &g);
        let want = naive_2d(
            &x,
            (n, c, h, w),
            &wt,
            (mg, kh, kw),
            group,
            (2, 2),
            (1, 2),
            (1, 0),
            (7, 4),
        );
        assert_eq!(got, want);
    }

    #[test]
    fn output_shape_and_same() {
        let mut a = attrs();
        a.strides = Some(vec![3, 2]);
        a.output_shape = Some(vec![10, 8]);
        let g = tgeom(&a, &[3, 3], &[3, 3]).unwrap();
        assert_eq!(g.out_sp, vec![10, 8]);
        assert_eq!(g.pad_begin, vec![0, 0]);
        let mut a = attrs();
        a.strides = Some(vec![2, 2]);
        a.auto_pad = "SAME_UPPER".into();
        let g = tgeom(&a, &[3, 3], &[3, 3]).unwrap();
        // full = 2*2+3 = 7, out = 6, total 1: SAME_UPPER puts 0 first.
        assert_eq!(g.out_sp, vec![6, 6]);
        assert_eq!(g.pad_begin, vec![0, 0]);
        a.auto_pad = "SAME_LOWER".into();
        assert_eq!(tgeom(&a, &[3, 3], &[3, 3]).unwrap().pad_begin, vec![1, 1]);
    }

    #[test]
    fn bad_attrs_error() {
        let mut a = attrs();
        a.strides = Some(vec![0]);
        assert!(tgeom(&a, &[3], &[2]).is_err());
        let mut a = attrs();
        a.pads = Some(vec![3, 3]);
        assert!(tgeom(&a, &[1], &[1]).is_err());
    }
}
