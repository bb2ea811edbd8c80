//! DeformConv: a grouped convolution whose kernel taps are displaced by learned offsets
//! and sampled with (multi)linear interpolation, zero outside the input; an optional mask
//! scales each tap.

use kiln_ir::op::DeformConv;

use super::common::{check_float, conv_shapes, floats, from_f64, unravel, window, WindowAttrs};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, Kernel, RunCx};
use crate::value::Value;

pub(super) struct DeformConvK(pub DeformConv);

/// Multilinear sample of `img` (dims `sp`) at fractional position `pos`; zero outside.
fn sample(img: &[f64], sp: &[usize], pos: &[f64]) -> f64 {
    let r = sp.len();
    let mut acc = 0.0;
    'corner: for corner in 0..(1usize << r) {
        let mut weight = 1.0;
        let mut flat = 0usize;
        for d in 0..r {
            let lo = pos[d].floor();
            let frac = pos[d] - lo;
            let (idx, wgt) = if corner >> d & 1 == 1 {
                (lo + 1.0, frac)
            } else {
                (lo, 1.0 - frac)
            };
            if !(idx >= 0.0 && idx < sp[d] as f64) || wgt == 0.0 {
                continue 'corner;
            }
            weight *= wgt;
            flat = flat * sp[d] + idx as usize;
        }
        acc += weight * img[flat];
    }
    acc
}

impl Kernel for DeformConvK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let wt = tensor_input(inputs, 1)?;
        let off = tensor_input(inputs, 2)?;
        let b = opt_tensor_input(inputs, 3)?;
        let mask = opt_tensor_input(inputs, 4)?;
        check_float(x, "DeformConv X")?;
        let a = &self.0;
        let (xs, ws) = (x.shape(), wt.shape());
        let (n, c, m, g) = conv_shapes("DeformConv", xs, ws, a.group, a.kernel_shape.as_ref())?;
        let r = xs.len() - 2;
        let kernel = &ws[2..];
        let win = window(
            &xs[2..],
            kernel,
            &WindowAttrs {
                strides: a.strides.as_ref(),
                dilations: a.dilations.as_ref(),
                pads: a.pads.as_ref(),
                auto_pad: "NOTSET",
                ceil_mode: false,
            },
        )?;
        let og = a.offset_group;
        if og < 1 || c as i64 % og != 0 {
            return Err(KernelError::Invalid(format!(
                "DeformConv offset_group {og} must divide the {c} input channels"
            )));
        }
        let og = og as usize;
        let ksz = win.kernel_size();
        let out_sz = win.out_size();
        let mut want_off = vec![n, og * ksz * r];
        want_off.extend(&win.out_sp);
        if off.shape() != want_off.as_slice() {
            return Err(KernelError::Invalid(format!(
                "DeformConv offset shape {:?}, expected {want_off:?}",
                off.shape()
            )));
        }
        let maskv = match mask {
            Some(t) => {
                let mut want = vec![n, og * ksz];
                want.extend(&win.out_sp);
                if t.shape() != want.as_slice() {
                    return Err(KernelError::Invalid(format!(
                        "DeformConv mask shape {:?}, expected {want:?}",
                        t.shape()
                    )));
                }
                Some(floats(t)?)
            }
            None => None,
        };
        let bv = b.map(floats).transpose()?;
        if bv.as_ref().is_some_and(|b| b.len() != m) {
            return Err(KernelError::Invalid(format!(
                "DeformConv B must have {m} elements"
            )));
        }
        let (xv, wv, ov) = (floats(x)?, floats(wt)?, floats(off)?);
        let (cg, mg, c_per_og) = (c / g, m / g, c / og);
        let in_sz = win.in_size();
        let mut out = vec![0f64; n * m * out_sz];
        let (mut oi, mut ki) = (vec![0usize; r], vec![0usize; r]);
        let mut pos = vec![0f64; r];
        // Sampled input columns for one output position: [C/group * taps].
        let mut col = vec![0f64; cg * ksz];
        for ni in 0..n {
            for o in 0..out_sz {
                unravel(o, &win.out_sp, &mut oi);
                for gi in 0..g {
                    for cc in 0..cg {
                        let ci = gi * cg + cc;
                        let ogi = ci / c_per_og;
                        let img = &xv[(ni * c + ci) * in_sz..(ni * c + ci + 1) * in_sz];
                        for k in 0..ksz {
                            unravel(k, kernel, &mut ki);
                            for d in 0..r {
                                let oc = ((ni * og + ogi) * ksz + k) * r + d;
                                pos[d] = (oi[d] * win.strides[d] + ki[d] * win.dilations[d]) as f64
                                    - win.pad_begin[d] as f64
                                    + ov[oc * out_sz + o];
                            }
                            let mut v = sample(img, &xs[2..], &pos);
                            if let Some(mv) = &maskv {
                                v *= mv[((ni * og + ogi) * ksz + k) * out_sz + o];
                            }
                            col[cc * ksz + k] = v;
                        }
                    }
                    for mi in 0..mg {
                        let oc = gi * mg + mi;
                        let wrow = &wv[oc * cg * ksz..(oc + 1) * cg * ksz];
                        let acc: f64 = wrow.iter().zip(&col).map(|(a, b)| a * b).sum();
                        out[(ni * m + oc) * out_sz + o] = acc + bv.as_ref().map_or(0.0, |b| b[oc]);
                    }
                }
            }
        }
        let mut shape = vec![n, m];
        shape.extend(&win.out_sp);
        Ok(vec![Value::Tensor(from_f64(cx, x.dtype(), shape, &out)?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_sample() {
        // 2x2 image [[1,2],[3,4]]: centre is the mean, beyond an edge fades to zero.
        let img = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(sample(&img, &[2, 2], &[0.5, 0.5]), 2.5);
        assert_eq!(sample(&img, &[2, 2], &[1.0, 1.0]), 4.0);
        assert_eq!(sample(&img, &[2, 2], &[1.5, 0.0]), 1.5);
        assert_eq!(sample(&img, &[2, 2], &[-1.0, 0.0]), 0.0);
        assert_eq!(sample(&img, &[2, 2], &[0.0, -0.25]), 0.75);
    }
}
