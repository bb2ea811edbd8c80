//! `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss` (input [N, C, d1…], target
//! [N, d1…]). Computed in f64; the outputs have the input's type.

use kiln_ir::{DType, Op};

use super::{from_f64s, to_f64s, KResult};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let (reduction, ignore_index, softmax) = match op {
        Op::NegativeLogLikelihoodLoss(l) => (&l.reduction, l.ignore_index, false),
        Op::SoftmaxCrossEntropyLoss(l) => (&l.reduction, l.ignore_index, true),
        _ => return None,
    };
    let reduction = match reduction.as_str() {
        "none" => Reduction::None,
        "sum" => Reduction::Sum,
        "mean" => Reduction::Mean,
        other => {
            return Some(Err(KernelError::Invalid(format!(
                "unknown reduction `{other}`"
            ))))
        }
    };
    Some(Ok(Box::new(Loss {
        reduction,
        ignore_index,
        softmax,
    })))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Reduction {
    None,
    Sum,
    Mean,
}

struct Loss {
    reduction: Reduction,
    ignore_index: Option<i64>,
    /// SoftmaxCrossEntropyLoss: log-softmax over axis 1 first, and a second output.
    softmax: bool,
}

impl Kernel for Loss {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let target = tensor_input(inputs, 1)?;
        let weight = opt_tensor_input(inputs, 2)?;
        let dt = x.dtype();
        if !dt.is_float() {
            return Err(KernelError::Unsupported(format!("loss of {dt} inputs")));
        }
        let xs = x.shape();
        if xs.len() < 2 {
            return Err(KernelError::Invalid(format!(
                "input must be [N, C, …], got {xs:?}"
            )));
        }
        let (n, c) = (xs[0], xs[1]);
        let d: usize = xs[2..].iter().product();
        let mut want_t = vec![n];
        want_t.extend_from_slice(&xs[2..]);
        if target.shape() != want_t.as_slice() {
            return Err(KernelError::Invalid(format!(
                "target must have shape {want_t:?}, got {:?}",
                target.shape()
            )));
        }
        if !matches!(target.dtype(), DType::I32 | DType::I64) {
            return Err(KernelError::Invalid(format!(
                "target must be i32 or i64, got {}",
                target.dtype()
            )));
        }
        let t = target.to_i64_vec().ok_or("integer target")?;
        let w = match weight {
            Some(w) if w.shape() == [c] => Some(to_f64s(w)?),
            Some(w) => {
                return Err(KernelError::Invalid(format!(
                    "weight must have shape [{c}], got {:?}",
                    w.shape()
                )))
            }
            None => None,
        };
        let mut v = to_f64s(x)?;
        if self.softmax {
            // log_softmax over C, in place.
            for i in 0..n {
                for j in 0..d {
                    let at = |k: usize| (i * c + k) * d + j;
                    let max = (0..c).map(|k| v[at(k)]).fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = (0..c).map(|k| (v[at(k)] - max).exp()).sum();
                    let lse = max + sum.ln();
                    for k in 0..c {
                        v[at(k)] -= lse;
                    }
                }
            }
        }
        let mut loss = vec![0.0f64; n * d];
        let mut wsum = 0.0f64;
        for i in 0..n {
            for j in 0..d {
                let tk = t[i * d + j];
                if self.ignore_index == Some(tk) {
                    continue;
                }
                if tk < 0 || tk as usize >= c {
                    return Err(KernelError::Invalid(format!(
                        "target {tk} is out of range for {c} classes"
                    )));
                }
                let k = tk as usize;
                let wk = w.as_ref().map_or(1.0, |w| w[k]);
                loss[i * d + j] = -v[(i * c + k) * d + j] * wk;
                wsum += wk;
            }
        }
        let out = match self.reduction {
            Reduction::None => from_f64s(cx, dt, want_t, &loss)?,
            Reduction::Sum => from_f64s(cx, dt, vec![], &[loss.iter().sum()])?,
            Reduction::Mean => from_f64s(cx, dt, vec![], &[loss.iter().sum::<f64>() / wsum])?,
        };
        let mut outs = vec![Value::Tensor(out)];
        if self.softmax {
            outs.push(Value::Tensor(from_f64s(cx, dt, xs.to_vec(), &v)?));
        }
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::Tensor;

    fn run(
        k: &Loss,
        x: Vec<f32>,
        xs: &[usize],
        t: Vec<i64>,
        ts: &[usize],
        w: Option<Vec<f32>>,
    ) -> Vec<Vec<f32>> {
        let x = Value::Tensor(Tensor::from_vec(xs.to_vec(), x).unwrap());
        let t = Value::Tensor(Tensor::from_vec(ts.to_vec(), t).unwrap());
        let w = w.map(|w| Value::Tensor(Tensor::from_vec(vec![w.len()], w).unwrap()));
        k.run(&[Some(&x), Some(&t), w.as_ref()], &mut RunCx::new())
            .unwrap()
            .into_iter()
            .map(|v| v.into_tensor().unwrap().to_vec::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn nll_weights_ignore_index_and_mean() {
        // x [2, 3] (N=2, C=3), targets [2, 1], weights [1, 2, 3], ignore 1:
        // loss = [-x[0,2]·3, 0]; mean divides by the applied weights (3).
        let x = vec![0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6];
        let k = Loss {
            reduction: Reduction::None,
            ignore_index: Some(1),
            softmax: false,
        };
        let r = run(
            &k,
            x.clone(),
            &[2, 3],
            vec![2, 1],
            &[2],
            Some(vec![1.0, 2.0, 3.0]),
        );
        assert!((r[0][0] + 0.9).abs() < 1e-6 && r[0][1] == 0.0);
        let k = Loss {
            reduction: Reduction::Mean,
            ignore_index: Some(1),
            softmax: false,
        };
        let r = run(
            &k,
            x.clone(),
            &[2, 3],
            vec![2, 1],
            &[2],
            Some(vec![1.0, 2.0, 3.0]),
        );
        assert!((r[0][0] + 0.3).abs() < 1e-6);
        // No weights, no ignore: a plain mean of -x[n, t[n]].
        let k = Loss {
            reduction: Reduction::Mean,
            ignore_index: None,
            softmax: false,
        };
        let r = run(&k, x, &[2, 3], vec![0, 2], &[2], None);
        assert!((r[0][0] + 0.35).abs() < 1e-6);
    }

    #[test]
    fn softmax_cross_entropy_over_axis_1() {
        // N=1, C=2, d=2: x[:, :, 0] = [0, 0] → log p = ln 0.5; x[:, :, 1] = [0, ln 3] → log p1 = ln 0.75.
        let x = vec![0.0f32, 0.0, 0.0, 3f32.ln()];
        let k = Loss {
            reduction: Reduction::Sum,
            ignore_index: None,
            softmax: true,
        };
        let r = run(&k, x, &[1, 2, 2], vec![0, 1], &[1, 2], None);
        let want = -(0.5f64.ln() + 0.75f64.ln()) as f32;
        assert!((r[0][0] - want).abs() < 1e-6, "{} vs {want}", r[0][0]);
        assert!((r[1][3] - 0.75f32.ln()).abs() < 1e-6 && (r[1][1] - 0.25f32.ln()).abs() < 1e-6);
    }
}
