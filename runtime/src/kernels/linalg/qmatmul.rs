//! Quantized matmuls: `MatMulInteger`, `QLinearMatMul`, and the ONNX Runtime contrib ops
//! `DynamicQuantizeMatMul` and `MatMulIntegerToFloat`. Products are exact in i64 (the
//! reference's i32 accumulation, without its overflow) before requantization.

use kiln_ir::{DType, Op, Tensor};

use super::gemm::batched_matmul;
use super::matmul::{matmul_views, Trans};
use super::quant::{decode_f32, dynamic_qparams, int_range, ints_tensor, quant_ints, round_to};
use super::KResult;
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::norm::reals_tensor;
use crate::kernels::util::{broadcast_strides, for_each_broadcast};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let k: Box<dyn Kernel> = match op {
        Op::MatMulInteger(_) => Box::new(MatMulIntegerK),
        Op::QLinearMatMul(_) => Box::new(QLinearMatMulK),
        Op::DynamicQuantizeMatMul(_) => Box::new(DynQuantMatMulK),
        Op::MatMulIntegerToFloat(_) => Box::new(MatMulIntToFloatK),
        _ => return None,
    };
    Some(Ok(k))
}

/// The integer values of a matmul operand minus its zero point: a scalar, per row of A /
/// per column of B (a vector), or any tensor broadcastable to the operand.
fn centered(t: &Tensor, zp: Option<&Tensor>, is_a: bool) -> KResult<Vec<i64>> {
    let mut v = quant_ints(t)?;
    let Some(zp) = zp else { return Ok(v) };
    let z = quant_ints(zp)?;
    let shape = t.shape();
    let r = shape.len();
    if z.len() == 1 {
        v.iter_mut().for_each(|x| *x -= z[0]);
    } else if zp.rank() == 1 && is_a && r >= 2 && z.len() == shape[r - 2] {
        let cols = shape[r - 1];
        let rows = shape[r - 2];
        for (i, x) in v.iter_mut().enumerate() {
            *x -= z[(i / cols.max(1)) % rows];
        }
    } else if zp.rank() == 1 && !is_a && r >= 2 && z.len() == shape[r - 1] {
        for (i, x) in v.iter_mut().enumerate() {
            *x -= z[i % z.len()];
        }
    } else {
        let zs = zp.shape();
        let ok = zs.len() <= r
            && zs
                .iter()
                .rev()
                .zip(shape.iter().rev())
                .all(|(&a, &b)| a == b || a == 1);
        if !ok {
            return Err(KernelError::Invalid(format!(
                "zero point of shape {zs:?} for an operand of shape {shape:?}"
            )));
        }
        let st = [broadcast_strides(zs, shape)];
        for_each_broadcast(shape, &st, |i, o| v[i] -= z[o[0]]);
    }
    Ok(v)
}

/// `(A - a_zp) @ (B - b_zp)` exactly, with the output shape.
fn int_product(
    a: &Tensor,
    azp: Option<&Tensor>,
    b: &Tensor,
    bzp: Option<&Tensor>,
) -> KResult<(Vec<usize>, Vec<i64>)> {
    let (av, bv, shape) = matmul_views(a.shape(), b.shape(), Trans::default())?;
    let (x, y) = (centered(a, azp, true)?, centered(b, bzp, false)?);
    let mut out = vec![0i64; shape.iter().product()];
    batched_matmul::<i64>(&x, &av, &y, &bv, &mut out)?;
    Ok((shape, out))
}

struct MatMulIntegerK;

impl Kernel for MatMulIntegerK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let (a, b) = (tensor_input(inputs, 0)?, tensor_input(inputs, 1)?);
        let (shape, p) = int_product(
            a,
            opt_tensor_input(inputs, 2)?,
            b,
            opt_tensor_input(inputs, 3)?,
        )?;
        let t = cx.tensor::<i32>(shape, |o| {
            o.iter_mut().zip(&p).for_each(|(o, &v)| *o = v as i32)
        })?;
        Ok(vec![t.into()])
    }
}

/// Scale values (f32 or f16 …) as f64, with their dtype.
fn scale_vals(t: &Tensor) -> KResult<Vec<f64>> {
    Ok(decode_f32(t)?.into_iter().map(f64::from).collect())
}

/// Per-column (or per-tensor) parameter `j` of a vector of 1 or `n` values.
#[inline]
fn col(v: &[f64], j: usize) -> f64 {
    if v.len() == 1 {
        v[0]
    } else {
        v[j]
    }
}

struct QLinearMatMulK;

impl Kernel for QLinearMatMulK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let a = tensor_input(inputs, 0)?;
        let a_scale = tensor_input(inputs, 1)?;
        let azp = opt_tensor_input(inputs, 2)?;
        let b = tensor_input(inputs, 3)?;
        let b_scale = tensor_input(inputs, 4)?;
        let bzp = opt_tensor_input(inputs, 5)?;
        let y_scale = tensor_input(inputs, 6)?;
        let yzp = opt_tensor_input(inputs, 7)?;
        let (shape, p) = int_product(a, azp, b, bzp)?;
        let n = shape.last().copied().unwrap_or(1).max(1);
        let (sa, sb, sy) = (
            scale_vals(a_scale)?,
            scale_vals(b_scale)?,
            scale_vals(y_scale)?,
        );
        if sa.len() != 1 || sy.len() != 1 || (sb.len() != 1 && sb.len() != n) {
            return Err(KernelError::Invalid(format!(
                "QLinearMatMul scales of shapes {:?}, {:?}, {:?}",
                a_scale.shape(),
                b_scale.shape(),
                y_scale.shape()
            )));
        }
        // The multiplier is computed in the scales' type, then applied in f64.
        let sdt = a_scale.dtype();
        let mult: Vec<f64> = sb
            .iter()
            .map(|&s| round_to(sdt, round_to(sdt, sa[0] * s) / sy[0]))
            .collect();
        let out_dt = yzp.map(|z| z.dtype()).unwrap_or(a.dtype());
        let (lo, hi) = int_range(out_dt)
            .ok_or_else(|| KernelError::Unsupported(format!("QLinearMatMul to {out_dt}")))?;
        let zy = match yzp {
            Some(z) => quant_ints(z)?.first().copied().unwrap_or(0),
            None => 0,
        };
        let vals: Vec<i64> = p
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let d = (c as f64 * col(&mult, i % n) + zy as f64).round_ties_even();
                (d.clamp(lo as f64, hi as f64)) as i64
            })
            .collect();
        Ok(vec![ints_tensor(cx, out_dt, shape, &vals)?.into()])
    }
}

/// `acc · a_scale · b_scale[col] (+ bias[col])` in f32, into a tensor of float `dt`.
fn dequant_output(
    cx: &mut RunCx,
    dt: DType,
    shape: Vec<usize>,
    p: &[i64],
    a_scale: f32,
    b_scale: &[f32],
    bias: Option<&[f32]>,
) -> KResult<Tensor> {
    let n = shape.last().copied().unwrap_or(1).max(1);
    if b_scale.len() != 1 && b_scale.len() != n {
        return Err(KernelError::Invalid(format!(
            "{} scales for {n} columns",
            b_scale.len()
        )));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(KernelError::Invalid(format!(
                "bias of {} values for {n} columns",
                b.len()
            )));
        }
    }
    let vals: Vec<f32> = p
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let j = i % n;
            let s = a_scale
                * if b_scale.len() == 1 {
                    b_scale[0]
                } else {
                    b_scale[j]
                };
            let y = c as f32 * s;
            match bias {
                Some(b) => y + b[j],
                None => y,
            }
        })
        .collect();
    reals_tensor(cx, dt, shape, &vals)
}

/// `DynamicQuantizeMatMul(A, B, b_scale, b_zero_point?, bias?)`: A quantized to u8 per
/// tensor (as `DynamicQuantizeLinear`), then an integer product, then dequantized.
struct DynQuantMatMulK;

impl Kernel for DynQuantMatMulK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let a = tensor_input(inputs, 0)?;
        let b = tensor_input(inputs, 1)?;
        let b_scale = decode_f32(tensor_input(inputs, 2)?)?;
        let bzp = opt_tensor_input(inputs, 3)?;
        let bias = match opt_tensor_input(inputs, 4)? {
            Some(t) => Some(decode_f32(t)?),
            None => None,
        };
        let xs = decode_f32(a)?;
        let (mut mn, mut mx) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in &xs {
            mn = mn.min(v);
            mx = mx.max(v);
        }
        let (scale, zp) = dynamic_qparams(mn, mx);
        let q: Vec<u8> = xs
            .iter()
            .map(|&v| ((v / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8)
            .collect();
        let qa = Tensor::from_vec(a.shape().to_vec(), q)?;
        let zpt = Tensor::scalar(zp);
        let (shape, p) = int_product(&qa, Some(&zpt), b, bzp)?;
        Ok(vec![dequant_output(
            cx,
            a.dtype(),
            shape,
            &p,
            scale,
            &b_scale,
            bias.as_deref(),
        )?
        .into()])
    }
}

/// `MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point?, b_zero_point?, bias?)`.
struct MatMulIntToFloatK;

impl Kernel for MatMulIntToFloatK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let a = tensor_input(inputs, 0)?;
        let b = tensor_input(inputs, 1)?;
        let a_scale_t = tensor_input(inputs, 2)?;
        let a_scale = decode_f32(a_scale_t)?;
        let b_scale = decode_f32(tensor_input(inputs, 3)?)?;
        let azp = opt_tensor_input(inputs, 4)?;
        let bzp = opt_tensor_input(inputs, 5)?;
        let bias = match opt_tensor_input(inputs, 6)? {
            Some(t) => Some(decode_f32(t)?),
            None => None,
        };
        if a_scale.len() != 1 {
            return Err(KernelError::Unsupported(format!(
                "MatMulIntegerToFloat with a_scale of shape {:?}",
                a_scale_t.shape()
            )));
        }
        let (shape, p) = int_product(a, azp, b, bzp)?;
        Ok(vec![dequant_output(
            cx,
            a_scale_t.dtype(),
            shape,
            &p,
            a_scale[0],
            &b_scale,
            bias.as_deref(),
        )?
        .into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_points_per_row_and_column() {
        let a = Tensor::from_vec(vec![2, 2], vec![10u8, 11, 20, 22]).unwrap();
        let azp = Tensor::from_vec(vec![2], vec![10u8, 20]).unwrap();
        assert_eq!(centered(&a, Some(&azp), true).unwrap(), [0, 1, 0, 2]);
        let bzp = Tensor::from_vec(vec![2], vec![10u8, 11]).unwrap();
        assert_eq!(centered(&a, Some(&bzp), false).unwrap(), [0, 0, 10, 11]);
        // [M, 1]-shaped zero point broadcasts along rows too.
        let azp2 = Tensor::from_vec(vec![2, 1], vec![10u8, 20]).unwrap();
        assert_eq!(centered(&a, Some(&azp2), true).unwrap(), [0, 1, 0, 2]);
    }

    #[test]
    fn int_product_exact() {
        let a = Tensor::from_vec(vec![1, 2], vec![-128i8, 127]).unwrap();
        let b = Tensor::from_vec(vec![2, 1], vec![255u8, 0]).unwrap();
        let bzp = Tensor::scalar(128u8);
        let (s, p) = int_product(&a, None, &b, Some(&bzp)).unwrap();
        assert_eq!(s, [1, 1]);
        assert_eq!(p, [-128 * 127 + 127 * -128]);
    }
}
