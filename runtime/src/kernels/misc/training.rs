//! `ai.onnx.preview.training` optimizers: `Adagrad`, `Adam` and `Momentum` (standard and
//! Nesterov). Inputs are `R` (learning rate), `T` (update count), then the tensors to
//! optimize, their gradients and their accumulated state, each group `n` long; outputs are
//! the updated tensors followed by the updated state. Computed in f64; each output has the
//! type of the tensor it updates.

use kiln_ir::op::Opaque;
use kiln_ir::{Attr, Op};

use super::{from_f64s, opt_scalar, scalar_int, to_f64s, KResult};
use crate::error::KernelError;
use crate::kernel::{tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

const TRAINING_DOMAIN: &str = "ai.onnx.preview.training";

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let Op::Opaque(o) = op else { return None };
    if o.domain != TRAINING_DOMAIN {
        return None;
    }
    let rule = match o.op_type.as_str() {
        "Adagrad" => Rule::build_adagrad(o),
        "Adam" => Rule::build_adam(o),
        "Momentum" => Rule::build_momentum(o),
        _ => return None,
    };
    Some(
        rule.map(|rule| Box::new(Optimizer { rule }) as Box<dyn Kernel>)
            .map_err(|e| match e {
                KernelError::Invalid(m) => KernelError::Invalid(format!("{}: {m}", o.op_type)),
                e => e,
            }),
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Adagrad {
        decay_factor: f64,
        epsilon: f64,
        norm_coefficient: f64,
    },
    Adam {
        alpha: f64,
        beta: f64,
        epsilon: f64,
        norm_coefficient: f64,
        norm_coefficient_post: f64,
    },
    Momentum {
        alpha: f64,
        beta: f64,
        nesterov: bool,
        norm_coefficient: f64,
    },
}

/// Reads float attributes: `(name, default)`, `None` meaning required. Errors on an
/// attribute not listed (other than `also`).
fn floats(o: &Opaque, spec: &[(&str, Option<f32>)], also: &[&str]) -> KResult<Vec<f64>> {
    if let Some(k) = o
        .attrs
        .keys()
        .find(|k| !spec.iter().any(|(n, _)| n == k) && !also.contains(&k.as_str()))
    {
        return Err(KernelError::Invalid(format!("unknown attribute `{k}`")));
    }
    spec.iter()
        .map(|&(name, default)| match (o.attrs.get(name), default) {
            (Some(Attr::Float(v)), _) => Ok(*v as f64),
            (Some(a), _) => Err(KernelError::Invalid(format!(
                "attribute `{name}` must be a float, got {}",
                a.kind()
            ))),
            (None, Some(d)) => Ok(d as f64),
            (None, None) => Err(KernelError::Invalid(format!("`{name}` is required"))),
        })
        .collect()
}

impl Rule {
    fn build_adagrad(o: &Opaque) -> KResult<Rule> {
        let v = floats(
            o,
            &[
                ("decay_factor", Some(0.0)),
                ("epsilon", Some(1e-6)),
                ("norm_coefficient", Some(0.0)),
            ],
            &[],
        )?;
        Ok(Rule::Adagrad {
            decay_factor: v[0],
            epsilon: v[1],
            norm_coefficient: v[2],
        })
    }

    fn build_adam(o: &Opaque) -> KResult<Rule> {
        let v = floats(
            o,
            &[
                ("alpha", Some(0.9)),
                ("beta", Some(0.999)),
                ("epsilon", Some(1e-6)),
                ("norm_coefficient", Some(0.0)),
                ("norm_coefficient_post", Some(0.0)),
            ],
            &[],
        )?;
        Ok(Rule::Adam {
            alpha: v[0],
            beta: v[1],
            epsilon: v[2],
            norm_coefficient: v[3],
            norm_coefficient_post: v[4],
        })
    }

    fn build_momentum(o: &Opaque) -> KResult<Rule> {
        let v = floats(
            o,
            &[("alpha", None), ("beta", None), ("norm_coefficient", None)],
            &["mode"],
        )?;
        let nesterov = match o.attrs.get("mode") {
            Some(Attr::String(s)) if s == b"standard" => false,
            Some(Attr::String(s)) if s == b"nesterov" => true,
            Some(Attr::String(s)) => {
                return Err(KernelError::Invalid(format!(
                    "unknown mode `{}`",
                    String::from_utf8_lossy(s)
                )))
            }
            Some(a) => {
                return Err(KernelError::Invalid(format!(
                    "attribute `mode` must be a string, got {}",
                    a.kind()
                )))
            }
            None => return Err("`mode` is required".into()),
        };
        Ok(Rule::Momentum {
            alpha: v[0],
            beta: v[1],
            nesterov,
            norm_coefficient: v[2],
        })
    }

    /// Tensors per optimized tensor: X, G and the state tensors.
    fn group(&self) -> usize {
        match self {
            Rule::Adagrad { .. } | Rule::Momentum { .. } => 3,
            Rule::Adam { .. } => 4,
        }
    }

    /// Updates one element: `x` its value, `g` its gradient, `s` its state (in, out).
    /// Returns the new value.
    fn step(&self, r: f64, t: i64, x: f64, g: f64, s: &mut [f64; 2]) -> f64 {
        match *self {
            Rule::Adagrad {
                decay_factor,
                epsilon,
                norm_coefficient,
            } => {
                let r = r / (1.0 + t as f64 * decay_factor);
                let g = norm_coefficient * x + g;
                let h = s[0] + g * g;
                s[0] = h;
                x - r * g / (h.sqrt() + epsilon)
            }
            Rule::Adam {
                alpha,
                beta,
                epsilon,
                norm_coefficient,
                norm_coefficient_post,
            } => {
                let g = norm_coefficient * x + g;
                let v = alpha * s[0] + (1.0 - alpha) * g;
                let h = beta * s[1] + (1.0 - beta) * g * g;
                s[0] = v;
                s[1] = h;
                let r = if t > 0 {
                    // Bias correction of both moments.
                    let t = t as f64;
                    r * (1.0 - beta.powf(t)).sqrt() / (1.0 - alpha.powf(t))
                } else {
                    r
                };
                (1.0 - norm_coefficient_post) * (x - r * v / (h.sqrt() + epsilon))
            }
            Rule::Momentum {
                alpha,
                beta,
                nesterov,
                norm_coefficient,
            } => {
                let g = norm_coefficient * x + g;
                // The gradient's coefficient is 1 on the first update.
                let beta = if t > 0 { beta } else { 1.0 };
                let v = alpha * s[0] + beta * g;
                s[0] = v;
                if nesterov {
                    x - r * (g + alpha * v)
                } else {
                    x - r * v
                }
            }
        }
    }
}

struct Optimizer {
    rule: Rule,
}

impl Kernel for Optimizer {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let k = self.rule.group();
        let rest = inputs.len().saturating_sub(2);
        if rest == 0 || rest % k != 0 {
            return Err(KernelError::Invalid(format!(
                "expected R, T and {k} groups of tensors, got {} inputs",
                inputs.len()
            )));
        }
        let n = rest / k;
        let r = opt_scalar(inputs, 0, "R")?.ok_or("R is required")?;
        let t = scalar_int(inputs, 1, "T")?;
        let states = k - 2;
        let mut new_x = Vec::with_capacity(n);
        let mut new_s: Vec<Vec<Value>> = vec![Vec::with_capacity(n); states];
        for i in 0..n {
            let x = tensor_input(inputs, 2 + i)?;
            let g = tensor_input(inputs, 2 + n + i)?;
            let s: Vec<_> = (0..states)
                .map(|j| tensor_input(inputs, 2 + (2 + j) * n + i))
                .collect::<KResult<_>>()?;
            for other in std::iter::once(g).chain(s.iter().copied()) {
                if other.shape() != x.shape() {
                    return Err(KernelError::Invalid(format!(
                        "tensor {i}: shapes {:?} and {:?} differ",
                        x.shape(),
                        other.shape()
                    )));
                }
            }
            for t in std::iter::once(x).chain(s.iter().copied()) {
                if !t.dtype().is_float() {
                    return Err(KernelError::Unsupported(format!(
                        "optimizing {} tensors",
                        t.dtype()
                    )));
                }
            }
            let xv = to_f64s(x)?;
            let gv = to_f64s(g)?;
            let mut sv: Vec<Vec<f64>> = s.iter().map(|t| to_f64s(t)).collect::<KResult<_>>()?;
            let mut out = vec![0.0; xv.len()];
            for e in 0..xv.len() {
                let mut st = [0.0; 2];
                for j in 0..states {
                    st[j] = sv[j][e];
                }
                out[e] = self.rule.step(r, t, xv[e], gv[e], &mut st);
                for j in 0..states {
                    sv[j][e] = st[j];
                }
            }
            new_x.push(from_f64s(cx, x.dtype(), x.shape().to_vec(), &out)?.into());
            for j in 0..states {
                new_s[j].push(from_f64s(cx, s[j].dtype(), s[j].shape().to_vec(), &sv[j])?.into());
            }
        }
        new_x.extend(new_s.into_iter().flatten());
        Ok(new_x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::Tensor;

    fn run(rule: Rule, r: f32, t: i64, groups: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
        let mut vals = vec![
            Value::Tensor(Tensor::scalar(r)),
            Value::Tensor(Tensor::scalar(t)),
        ];
        vals.extend(
            groups
                .into_iter()
                .map(|g| Value::Tensor(Tensor::from_vec(vec![g.len()], g).unwrap())),
        );
        let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
        Optimizer { rule }
            .run(&refs, &mut RunCx::new())
            .unwrap()
            .into_iter()
            .map(|v| v.into_tensor().unwrap().to_vec::<f32>().unwrap())
            .collect()
    }

    fn close(a: f32, b: f64) -> bool {
        (a as f64 - b).abs() < 1e-5
    }

    #[test]
    fn adagrad_step() {
        // r = 0.5 / (1 + 2 * 0.25) = 1/3; g = 0.1 * 2 + 1 = 1.2; h = 0.56 + 1.44 = 2;
        // x = 2 - (1/3) * 1.2 / (sqrt 2 + 0).
        let rule = Rule::Adagrad {
            decay_factor: 0.25,
            epsilon: 0.0,
            norm_coefficient: 0.1,
        };
        let o = run(rule, 0.5, 2, vec![vec![2.0], vec![1.0], vec![0.56]]);
        assert!(close(o[0][0], 2.0 - 0.4 / 2f64.sqrt()));
        assert!(close(o[1][0], 2.0));
    }

    #[test]
    fn adam_bias_correction() {
        // g = 1; v = 0.5*0 + 0.5*1 = 0.5; h = 0.75*0 + 0.25*1 = 0.25;
        // t = 1: r' = 0.1 * sqrt(1 - 0.75) / (1 - 0.5) = 0.1; x = 1 - 0.1 * 0.5 / 0.5 = 0.9,
        // then times (1 - 0.5) = 0.45.
        let rule = Rule::Adam {
            alpha: 0.5,
            beta: 0.75,
            epsilon: 0.0,
            norm_coefficient: 0.0,
            norm_coefficient_post: 0.5,
        };
        let o = run(
            rule,
            0.1,
            1,
            vec![vec![1.0], vec![1.0], vec![0.0], vec![0.0]],
        );
        assert!(close(o[0][0], 0.45));
        assert!(close(o[1][0], 0.5));
        assert!(close(o[2][0], 0.25));
    }

    #[test]
    fn momentum_standard_nesterov_and_first_step() {
        let m = |nesterov| Rule::Momentum {
            alpha: 0.5,
            beta: 0.25,
            nesterov,
            norm_coefficient: 0.0,
        };
        // t = 1: v = 0.5 * 2 + 0.25 * 4 = 2; x = 1 - 0.1 * 2 = 0.8.
        let o = run(m(false), 0.1, 1, vec![vec![1.0], vec![4.0], vec![2.0]]);
        assert!(close(o[0][0], 0.8) && close(o[1][0], 2.0));
        // Nesterov: x = 1 - 0.1 * (4 + 0.5 * 2) = 0.5.
        let o = run(m(true), 0.1, 1, vec![vec![1.0], vec![4.0], vec![2.0]]);
        assert!(close(o[0][0], 0.5));
        // t = 0: beta counts as 1, v = 1 + 4 = 5.
        let o = run(m(false), 0.1, 0, vec![vec![1.0], vec![4.0], vec![2.0]]);
        assert!(close(o[1][0], 5.0));
    }

    #[test]
    fn two_tensors_and_bad_arity() {
        let rule = Rule::Momentum {
            alpha: 0.0,
            beta: 1.0,
            nesterov: false,
            norm_coefficient: 0.0,
        };
        // X1, X2, G1, G2, V1, V2: outputs X1', X2', V1', V2'.
        let o = run(
            rule,
            1.0,
            1,
            vec![
                vec![1.0],
                vec![2.0, 3.0],
                vec![0.5],
                vec![1.0, 1.0],
                vec![0.0],
                vec![0.0, 0.0],
            ],
        );
        assert_eq!(
            o,
            vec![vec![0.5], vec![1.0, 2.0], vec![0.5], vec![1.0, 1.0]]
        );
        let vals = [
            Value::Tensor(Tensor::scalar(1.0f32)),
            Value::Tensor(Tensor::scalar(1i64)),
            Value::Tensor(Tensor::scalar(1.0f32)),
        ];
        let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
        assert!(Optimizer { rule }.run(&refs, &mut RunCx::new()).is_err());
    }
}
