//! LpPool, InstanceNormalization, LRN and BatchNormalization in training mode.

use kiln_ir::op::{BatchNormalization, InstanceNormalization, LpPool, LRN};

use super::common::{check_float, floats, from_f64, window, WindowAttrs};
use crate::error::KernelError;
use crate::kernel::{tensor_input, Kernel, RunCx};
use crate::value::Value;

pub(super) struct LpPoolK(pub LpPool);

impl Kernel for LpPoolK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        check_float(x, "LpPool X")?;
        let xs = x.shape();
        let a = &self.0;
        if xs.len() < 3 || a.kernel_shape.len() != xs.len() - 2 {
            return Err(KernelError::Invalid(format!(
                "LpPool needs [N,C,...] matching kernel_shape {:?}, got {xs:?}",
                a.kernel_shape
            )));
        }
        if a.kernel_shape.iter().any(|&k| k < 1) {
            return Err(KernelError::Invalid(format!(
                "LpPool kernel_shape {:?} must be positive",
                a.kernel_shape
            )));
        }
        if a.p < 1 {
            return Err(KernelError::Invalid(format!("LpPool p = {} < 1", a.p)));
        }
        let kernel: Vec<usize> = a.kernel_shape.iter().map(|&k| k as usize).collect();
        let w = window(
            &xs[2..],
            &kernel,
            &WindowAttrs {
                strides: a.strides.as_ref(),
                dilations: a.dilations.as_ref(),
                pads: a.pads.as_ref(),
                auto_pad: &a.auto_pad,
                ceil_mode: a.ceil_mode,
            },
        )?;
        let p = a.p as f64;
        let xv = floats(x)?;
        let (nc, in_sz, out_sz, ksz) = (xs[0] * xs[1], w.in_size(), w.out_size(), w.kernel_size());
        let taps = w.taps();
        let mut out = vec![0f64; nc * out_sz];
        for pl in 0..nc {
            let src = &xv[pl * in_sz..(pl + 1) * in_sz];
            for o in 0..out_sz {
                let s: f64 = taps[o * ksz..(o + 1) * ksz]
                    .iter()
                    .flatten()
                    .map(|&i| src[i].abs().powf(p))
                    .sum();
                out[pl * out_sz + o] = s.powf(1.0 / p);
            }
        }
        let mut shape = xs[..2].to_vec();
        shape.extend(&w.out_sp);
        Ok(vec![Value::Tensor(from_f64(cx, x.dtype(), shape, &out)?)])
    }
}

/// Per-channel parameter vector of `c` elements.
fn channel_param(
    inputs: &[Option<&Value>],
    i: usize,
    c: usize,
    what: &str,
) -> Result<Vec<f64>, KernelError> {
    let v = floats(tensor_input(inputs, i)?)?;
    if v.len() != c {
        return Err(KernelError::Invalid(format!(
            "{what} has {} elements, expected {c}",
            v.len()
        )));
    }
    Ok(v)
}

pub(super) struct InstanceNormK(pub InstanceNormalization);

impl Kernel for InstanceNormK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        check_float(x, "InstanceNormalization X")?;
        let xs = x.shape();
        if xs.len() < 2 {
            return Err(KernelError::Invalid(format!(
                "InstanceNormalization needs [N,C,...], got {xs:?}"
            )));
        }
        let c = xs[1];
        let scale = channel_param(inputs, 1, c, "InstanceNormalization scale")?;
        let bias = channel_param(inputs, 2, c, "InstanceNormalization B")?;
        let sp: usize = xs[2..].iter().product();
        let xv = floats(x)?;
        let eps = self.0.epsilon as f64;
        let mut out = vec![0f64; xv.len()];
        if sp > 0 {
            for (pl, (src, dst)) in xv.chunks(sp).zip(out.chunks_mut(sp)).enumerate() {
                let ch = pl % c;
                let mean = src.iter().sum::<f64>() / sp as f64;
                let var = src.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / sp as f64;
                let inv = 1.0 / (var + eps).sqrt();
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = (s - mean) * inv * scale[ch] + bias[ch];
                }
            }
        }
        Ok(vec![Value::Tensor(from_f64(
            cx,
            x.dtype(),
            xs.to_vec(),
            &out,
        )?)])
    }
}

pub(super) struct LrnK(pub LRN);

impl Kernel for LrnK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        check_float(x, "LRN X")?;
        let xs = x.shape();
        if xs.len() < 2 {
            return Err(KernelError::Invalid(format!(
                "LRN needs [N,C,...], got {xs:?}"
            )));
        }
        let size = self.0.size;
        if size < 1 {
            return Err(KernelError::Invalid(format!("LRN size {size} < 1")));
        }
        let (n, c) = (xs[0], xs[1]);
        let sp: usize = xs[2..].iter().product();
        let (before, after) = (((size - 1) / 2) as usize, (size / 2) as usize);
        let (alpha, beta, bias) = (self.0.alpha as f64, self.0.beta as f64, self.0.bias as f64);
        let xv = floats(x)?;
        let mut out = vec![0f64; xv.len()];
        for ni in 0..n {
            for ci in 0..c {
                let lo = ci.saturating_sub(before);
                let hi = (ci + after).min(c - 1);
                for s in 0..sp {
                    let sq: f64 = (lo..=hi)
                        .map(|k| {
                            let v = xv[(ni * c + k) * sp + s];
                            v * v
                        })
                        .sum();
                    let i = (ni * c + ci) * sp + s;
                    out[i] = xv[i] / (bias + alpha / size as f64 * sq).powf(beta);
                }
            }
        }
        Ok(vec![Value::Tensor(from_f64(
            cx,
            x.dtype(),
            xs.to_vec(),
            &out,
        )?)])
    }
}

/// BatchNormalization with training_mode = 1: normalizes with the batch statistics and
/// returns the updated running mean and variance.
pub(super) struct BatchNormTrainK(pub BatchNormalization);

impl Kernel for BatchNormTrainK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        check_float(x, "BatchNormalization X")?;
        let xs = x.shape();
        if xs.len() < 2 {
            return Err(KernelError::Invalid(format!(
                "BatchNormalization needs [N,C,...], got {xs:?}"
            )));
        }
        let c = xs[1];
        let scale = channel_param(inputs, 1, c, "BatchNormalization scale")?;
        let bias = channel_param(inputs, 2, c, "BatchNormalization B")?;
        let in_mean = channel_param(inputs, 3, c, "BatchNormalization input_mean")?;
        let in_var = channel_param(inputs, 4, c, "BatchNormalization input_var")?;
        let sp: usize = xs[2..].iter().product();
        let count = xs[0] * sp;
        if count == 0 {
            return Err(KernelError::Invalid(
                "BatchNormalization in training mode needs a non-empty batch".into(),
            ));
        }
        let xv = floats(x)?;
        let mut mean = vec![0f64; c];
        let mut var = vec![0f64; c];
        for (i, v) in xv.iter().enumerate() {
            mean[(i / sp) % c] += v;
        }
        mean.iter_mut().for_each(|m| *m /= count as f64);
        for (i, v) in xv.iter().enumerate() {
            let ch = (i / sp) % c;
            var[ch] += (v - mean[ch]) * (v - mean[ch]);
        }
        var.iter_mut().for_each(|m| *m /= count as f64);
        let eps = self.0.epsilon as f64;
        let out: Vec<f64> = xv
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = (i / sp) % c;
                (v - mean[ch]) / (var[ch] + eps).sqrt() * scale[ch] + bias[ch]
            })
            .collect();
        let mom = self.0.momentum as f64;
        let run_mean: Vec<f64> = (0..c)
            .map(|i| in_mean[i] * mom + mean[i] * (1.0 - mom))
            .collect();
        let run_var: Vec<f64> = (0..c)
            .map(|i| in_var[i] * mom + var[i] * (1.0 - mom))
            .collect();
        let mean_t = tensor_input(inputs, 3)?;
        let var_t = tensor_input(inputs, 4)?;
        Ok(vec![
            Value::Tensor(from_f64(cx, x.dtype(), xs.to_vec(), &out)?),
            Value::Tensor(from_f64(
                cx,
                mean_t.dtype(),
                mean_t.shape().to_vec(),
                &run_mean,
            )?),
            Value::Tensor(from_f64(
                cx,
                var_t.dtype(),
                var_t.shape().to_vec(),
                &run_var,
            )?),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::Tensor;

    fn run1(k: &dyn Kernel, ins: Vec<Tensor>) -> Vec<Tensor> {
        let vals: Vec<Value> = ins.into_iter().map(Value::Tensor).collect();
        let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
        k.run(&refs, &mut RunCx::new())
            .unwrap()
            .into_iter()
            .map(|v| v.into_tensor().unwrap())
            .collect()
    }

    #[test]
    fn lppool_p1_with_pads_sums_abs() {
        // 1-D, kernel 2, stride 1, pads 1/1, p = 1: padded taps add nothing.
        let k = LpPoolK(LpPool {
            auto_pad: "NOTSET".into(),
            ceil_mode: false,
            dilations: None,
            kernel_shape: vec![2],
            p: 1,
            pads: Some(vec![1, 1]),
            strides: None,
        });
        let x = Tensor::from_vec(vec![1, 1, 3], vec![1f32, -2.0, 3.0]).unwrap();
        let y = run1(&k, vec![x]);
        assert_eq!(y[0].shape(), &[1, 1, 4]);
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![1.0, 3.0, 5.0, 3.0]);
    }

    #[test]
    fn lrn_size_one_and_window() {
        // size 2: window is [c, c+1]; alpha 1, beta 1, bias 1 → x / (1 + sumsq / 2).
        let k = LrnK(LRN {
            alpha: 1.0,
            beta: 1.0,
            bias: 1.0,
            size: 2,
        });
        let x = Tensor::from_vec(vec![1, 3], vec![1f64, 2.0, 3.0]).unwrap();
        let y = run1(&k, vec![x]);
        let want = [1.0 / (1.0 + 5.0 / 2.0), 2.0 / (1.0 + 13.0 / 2.0), 3.0 / 5.5];
        let got = y[0].to_vec::<f64>().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn batchnorm_training_stats() {
        let k = BatchNormTrainK(BatchNormalization {
            epsilon: 0.0,
            momentum: 0.5,
            training_mode: true,
        });
        // C = 1, values 1, 3: mean 2, var 1.
        let x = Tensor::from_vec(vec![2, 1], vec![1f32, 3.0]).unwrap();
        let one = |v: f32| Tensor::from_vec(vec![1], vec![v]).unwrap();
        let y = run1(&k, vec![x, one(2.0), one(1.0), one(0.0), one(3.0)]);
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![-1.0, 3.0]);
        assert_eq!(y[1].to_vec::<f32>().unwrap(), vec![1.0]);
        assert_eq!(y[2].to_vec::<f32>().unwrap(), vec![2.0]);
    }

    #[test]
    fn instancenorm_bad_scale_errors() {
        let k = InstanceNormK(InstanceNormalization { epsilon: 1e-5 });
        let x = Tensor::from_vec(vec![1, 2, 2], vec![1f32, 2.0, 3.0, 4.0]).unwrap();
        let s = Tensor::from_vec(vec![1], vec![1f32]).unwrap();
        let vals: Vec<Value> = vec![x.into(), s.clone().into(), s.into()];
        let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
        assert!(k.run(&refs, &mut RunCx::new()).is_err());
    }
}
