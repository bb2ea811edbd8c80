//! ConvInteger (int8/uint8 in, int32 out) and QLinearConv (quantized in and out).
//! Zero points are subtracted before the convolution, so padding contributes nothing.
//! Sums of int8 products are exact in f64.

use kiln_ir::op::{ConvInteger, QLinearConv};
use kiln_ir::{DType, Tensor};

use super::common::{conv_f64, conv_shapes, floats, window, WindowAttrs};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, Kernel, RunCx};
use crate::value::Value;

fn check_q8(t: &Tensor, what: &str) -> Result<(), KernelError> {
    match t.dtype() {
        DType::I8 | DType::U8 => Ok(()),
        d => Err(KernelError::Unsupported(format!("{what} of type {d}"))),
    }
}

/// A zero point: a scalar (per tensor) or, where `per_channel` is `Some(m)`, `m` values.
fn zero_point(
    t: Option<&Tensor>,
    per_channel: Option<usize>,
    what: &str,
) -> Result<Vec<f64>, KernelError> {
    let Some(t) = t else {
        return Ok(vec![0.0]);
    };
    check_q8(t, what)?;
    let v = floats(t)?;
    match (v.len(), per_channel) {
        (1, _) => Ok(v),
        (k, Some(m)) if k == m => Ok(v),
        (k, _) => Err(KernelError::Invalid(format!(
            "{what} has {k} elements; expected 1{}",
            per_channel.map_or(String::new(), |m| format!(" or {m}"))
        ))),
    }
}

/// x - zp (per tensor) and w - zp (per tensor or per output channel), then the conv.
#[allow(clippy::too_many_arguments)]
fn int_conv(
    op: &str,
    x: &Tensor,
    xzp: Option<&Tensor>,
    w: &Tensor,
    wzp: Option<&Tensor>,
    bias: Option<&[f64]>,
    attrs: &WindowAttrs,
    group: i64,
    kernel_shape: Option<&Vec<i64>>,
) -> Result<(Vec<f64>, Vec<usize>), KernelError> {
    check_q8(x, &format!("{op} x"))?;
    check_q8(w, &format!("{op} w"))?;
    let (xs, ws) = (x.shape(), w.shape());
    let (n, c, m, g) = conv_shapes(op, xs, ws, group, kernel_shape)?;
    let win = window(&xs[2..], &ws[2..], attrs)?;
    let xz = zero_point(xzp, None, &format!("{op} x_zero_point"))?[0];
    let wz = zero_point(wzp, Some(m), &format!("{op} w_zero_point"))?;
    let xv: Vec<f64> = floats(x)?.into_iter().map(|v| v - xz).collect();
    let per_m = if m == 0 { 0 } else { w.len() / m };
    let wv: Vec<f64> = floats(w)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| v - if wz.len() == 1 { wz[0] } else { wz[i / per_m] })
        .collect();
    let out = conv_f64(&xv, n, c, &wv, m, g, bias, &win);
    let mut shape = vec![n, m];
    shape.extend(&win.out_sp);
    Ok((out, shape))
}

pub(super) struct ConvIntegerK(pub ConvInteger);

impl Kernel for ConvIntegerK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let a = &self.0;
        let (out, shape) = int_conv(
            "ConvInteger",
            tensor_input(inputs, 0)?,
            opt_tensor_input(inputs, 2)?,
            tensor_input(inputs, 1)?,
            opt_tensor_input(inputs, 3)?,
            None,
            &WindowAttrs {
                strides: a.strides.as_ref(),
                dilations: a.dilations.as_ref(),
                pads: a.pads.as_ref(),
                auto_pad: &a.auto_pad,
                ceil_mode: false,
            },
            a.group,
            a.kernel_shape.as_ref(),
        )?;
        let t = cx.tensor::<i32>(shape, |o| {
            o.iter_mut().zip(&out).for_each(|(o, v)| *o = *v as i32)
        })?;
        Ok(vec![Value::Tensor(t)])
    }
}

pub(super) struct QLinearConvK(pub QLinearConv);

/// A scale input: one value, or (`per_channel`) `m` values.
fn scales(t: &Tensor, per_channel: Option<usize>, what: &str) -> Result<Vec<f32>, KernelError> {
    let v: Vec<f32> = match t.dtype() {
        DType::F32 => t.to_vec::<f32>().unwrap_or_default(),
        DType::F16 | DType::BF16 | DType::F64 => floats(t)?.into_iter().map(|v| v as f32).collect(),
        d => return Err(KernelError::Unsupported(format!("{what} of type {d}"))),
    };
    match (v.len(), per_channel) {
        (1, _) => Ok(v),
        (k, Some(m)) if k == m => Ok(v),
        (k, _) => Err(KernelError::Invalid(format!(
            "{what} has {k} elements; expected 1{}",
            per_channel.map_or(String::new(), |m| format!(" or {m}"))
        ))),
    }
}

impl Kernel for QLinearConvK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let a = &self.0;
        let x = tensor_input(inputs, 0)?;
        let w = tensor_input(inputs, 3)?;
        let m = w.shape().first().copied().unwrap_or(0);
        let x_scale = scales(tensor_input(inputs, 1)?, None, "QLinearConv x_scale")?[0];
        let w_scale = scales(tensor_input(inputs, 4)?, Some(m), "QLinearConv w_scale")?;
        let y_scale = scales(tensor_input(inputs, 6)?, None, "QLinearConv y_scale")?[0];
        let y_zp = opt_tensor_input(inputs, 7)?;
        let bias = match opt_tensor_input(inputs, 8)? {
            Some(b) => {
                if b.dtype() != DType::I32 || b.len() != m {
                    return Err(KernelError::Invalid(format!(
                        "QLinearConv B must be int32 with {m} elements, got {}{:?}",
                        b.dtype(),
                        b.shape()
                    )));
                }
                Some(floats(b)?)
            }
            None => None,
        };
        let (acc, shape) = int_conv(
            "QLinearConv",
            x,
            opt_tensor_input(inputs, 2)?,
            w,
            opt_tensor_input(inputs, 5)?,
            bias.as_deref(),
            &WindowAttrs {
                strides: a.strides.as_ref(),
                dilations: a.dilations.as_ref(),
                pads: a.pads.as_ref(),
                auto_pad: &a.auto_pad,
                ceil_mode: false,
            },
            a.group,
            a.kernel_shape.as_ref(),
        )?;
        let out_dt = y_zp.map_or(x.dtype(), |t| t.dtype());
        let yz = zero_point(y_zp, None, "QLinearConv y_zero_point")?[0];
        let (lo, hi) = match out_dt {
            DType::I8 => (-128.0, 127.0),
            _ => (0.0, 255.0),
        };
        let plane = if m == 0 {
            0
        } else {
            acc.len() / shape[0].max(1) / m
        };
        let q: Vec<f64> = acc
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = if plane == 0 { 0 } else { (i / plane) % m };
                let ws = if w_scale.len() == 1 {
                    w_scale[0]
                } else {
                    w_scale[ch]
                };
                let mult = (x_scale * ws / y_scale) as f64;
                (v * mult + yz).round_ties_even().clamp(lo, hi)
            })
            .collect();
        let t = match out_dt {
            DType::I8 => cx.tensor::<i8>(shape, |o| {
                o.iter_mut().zip(&q).for_each(|(o, v)| *o = *v as i8)
            })?,
            _ => cx.tensor::<u8>(shape, |o| {
                o.iter_mut().zip(&q).for_each(|(o, v)| *o = *v as u8)
            })?,
        };
        Ok(vec![Value::Tensor(t)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_integer_pads_with_zero_point() {
        // x = [5, 7] (u8), zp 5, w = [1, 1] (u8) zp 0, pads 1/1, kernel 2:
        // (x - zp) = [0, 2] padded → [0, 0, 2, 0] → outputs [0, 2, 2].
        let k = ConvIntegerK(ConvInteger {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: None,
            pads: Some(vec![1, 1]),
            strides: None,
        });
        let x = Tensor::from_vec(vec![1, 1, 2], vec![5u8, 7]).unwrap();
        let w = Tensor::from_vec(vec![1, 1, 2], vec![1u8, 1]).unwrap();
        let zp = Tensor::scalar(5u8);
        let vals: Vec<Value> = vec![x.into(), w.into(), zp.into()];
        let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
        let y = k.run(&refs, &mut RunCx::new()).unwrap();
        let y = y[0].as_tensor().unwrap();
        assert_eq!(y.to_vec::<i32>().unwrap(), vec![0, 2, 2]);
    }
}
