//! Unary maps: math functions, activations, `IsNaN`/`IsInf`, `Not`/`BitwiseNot`, and the
//! com.microsoft Gelu family (`Gelu`, `FastGelu`, `BiasGelu`, `QuickGelu`) and `BiasAdd`.

use kiln_ir::{DType, Op};

use super::broadcast::{binary_into, shape2, ternary_into};
use super::num::{Calc, Float, Int, Num};
use super::{new_tensor, unsupported, view};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, Kernel, RunCx};
use crate::kernels::par::for_chunks;
use crate::value::Value;

/// A unary op and its attributes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum U {
    // Float math.
    Acos,
    Acosh,
    Asin,
    Asinh,
    Atan,
    Atanh,
    Ceil,
    Cos,
    Cosh,
    Erf,
    Exp,
    Floor,
    Log,
    Reciprocal,
    Round,
    Sigmoid,
    Sin,
    Sinh,
    Sqrt,
    Tan,
    Tanh,
    // Float activations.
    LeakyRelu(f32),
    Elu(f32),
    Selu {
        alpha: f32,
        gamma: f32,
    },
    Celu(f32),
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    Softplus,
    Softsign,
    Mish,
    /// `x * sigmoid(alpha * x)` (Swish, com.microsoft.QuickGelu).
    Swish(f32),
    ThresholdedRelu(f32),
    Shrink {
        bias: f32,
        lambd: f32,
    },
    Gelu,
    GeluTanh,
    // Any numeric type.
    Abs,
    Neg,
    Sign,
    Relu,
    // Integers.
    BitwiseNot,
    // Bool.
    Not,
    // Float to bool.
    IsNaN,
    IsInf {
        negative: bool,
        positive: bool,
    },
}

pub(super) fn build(op: &Op) -> Option<Box<dyn Kernel>> {
    use Op as O;
    let u = match op {
        O::Acos(_) => U::Acos,
        O::Acosh(_) => U::Acosh,
        O::Asin(_) => U::Asin,
        O::Asinh(_) => U::Asinh,
        O::Atan(_) => U::Atan,
        O::Atanh(_) => U::Atanh,
        O::Ceil(_) => U::Ceil,
        O::Cos(_) => U::Cos,
        O::Cosh(_) => U::Cosh,
        O::Erf(_) => U::Erf,
        O::Exp(_) => U::Exp,
        O::Floor(_) => U::Floor,
        O::Log(_) => U::Log,
        O::Reciprocal(_) => U::Reciprocal,
        O::Round(_) => U::Round,
        O::Sigmoid(_) => U::Sigmoid,
        O::Sin(_) => U::Sin,
        O::Sinh(_) => U::Sinh,
        O::Sqrt(_) => U::Sqrt,
        O::Tan(_) => U::Tan,
        O::Tanh(_) => U::Tanh,
        O::LeakyRelu(o) => U::LeakyRelu(o.alpha),
        O::Elu(o) => U::Elu(o.alpha),
        O::Selu(o) => U::Selu {
            alpha: o.alpha,
            gamma: o.gamma,
        },
        O::Celu(o) => U::Celu(o.alpha),
        O::HardSigmoid(o) => U::HardSigmoid {
            alpha: o.alpha,
            beta: o.beta,
        },
        O::HardSwish(_) => U::HardSwish,
        O::Softplus(_) => U::Softplus,
        O::Softsign(_) => U::Softsign,
        O::Mish(_) => U::Mish,
        O::Swish(o) => U::Swish(o.alpha),
        O::QuickGelu(o) => U::Swish(o.alpha),
        O::ThresholdedRelu(o) => U::ThresholdedRelu(o.alpha),
        O::Shrink(o) => U::Shrink {
            bias: o.bias,
            lambd: o.lambd,
        },
        O::Gelu(o) => match o.approximate.as_str() {
            "tanh" => U::GeluTanh,
            _ => U::Gelu,
        },
        O::MsGelu(_) => U::Gelu,
        O::Abs(_) => U::Abs,
        O::Neg(_) => U::Neg,
        O::Sign(_) => U::Sign,
        O::Relu(_) => U::Relu,
        O::BitwiseNot(_) => U::BitwiseNot,
        O::Not(_) => U::Not,
        O::IsNaN(_) => U::IsNaN,
        O::IsInf(o) => U::IsInf {
            negative: o.detect_negative,
            positive: o.detect_positive,
        },
        O::FastGelu(_) => {
            return Some(Box::new(BiasAct {
                act: U::GeluTanh,
                name: "FastGelu",
            }))
        }
        O::BiasGelu(_) => {
            return Some(Box::new(BiasAct {
                act: U::Gelu,
                name: "BiasGelu",
            }))
        }
        O::BiasAdd(_) => return Some(Box::new(BiasAdd)),
        _ => return None,
    };
    Some(Box::new(Unary(u)))
}

struct Unary(U);

impl Kernel for Unary {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        let shape = x.shape().to_vec();
        let op = self.0;
        let name = || format!("{op:?}");
        let out = match op {
            U::Abs | U::Neg | U::Sign | U::Relu => with_numeric!(dt, T => {
                let x = view::<T>(x)?;
                new_tensor::<T>(cx, dt, shape, |o| {
                    for_chunks(o, 1, |s, o| num_map(op, &x[s..s + o.len()], o))
                })?
            }, else return Err(unsupported(&name(), dt))),
            U::BitwiseNot => with_int!(dt, T => {
                let x = view::<T>(x)?;
                new_tensor::<T>(cx, dt, shape, |o| map(&x, o, |v| v.bnot()))?
            }, else return Err(unsupported(&name(), dt))),
            U::Not => {
                if dt != DType::Bool {
                    return Err(unsupported("Not", dt));
                }
                let x = view::<u8>(x)?;
                new_tensor::<u8>(cx, dt, shape, |o| map(&x, o, |v| (v == 0) as u8))?
            }
            U::IsNaN | U::IsInf { .. } => with_float!(dt, T => {
                let x = view::<T>(x)?;
                new_tensor::<u8>(cx, DType::Bool, shape, |o| match op {
                    U::IsInf { negative, positive } => map(&x, o, |v| {
                        let c = v.to_c();
                        (c.is_infinite() && if c.is_sign_negative() { negative } else { positive }) as u8
                    }),
                    _ => map(&x, o, |v| v.to_c().is_nan() as u8),
                })?
            }, else return Err(unsupported(&name(), dt))),
            // f32 Erf / Tanh / Sigmoid / Gelu: vectorized polynomial approximations
            // (gemm::vmath).
            U::Erf | U::Tanh | U::Sigmoid | U::Gelu if dt == DType::F32 => {
                use crate::gemm::vmath;
                let x = view::<f32>(x)?;
                new_tensor::<f32>(cx, dt, shape, |o| {
                    for_chunks(o, 1, |s, o| {
                        let x = &x[s..s + o.len()];
                        match op {
                            U::Erf => vmath::erf_slice(x, o),
                            U::Tanh => vmath::tanh_slice(x, o),
                            U::Sigmoid => vmath::sigmoid_slice(x, o),
                            _ => vmath::gelu_slice(x, o),
                        }
                    })
                })?
            }
            _ => with_float!(dt, T => {
                let x = view::<T>(x)?;
                new_tensor::<T>(cx, dt, shape, |o| {
                    for_chunks(o, 1, |s, o| float_map(op, &x[s..s + o.len()], o))
                })?
            }, else return Err(unsupported(&name(), dt))),
        };
        Ok(vec![Value::Tensor(out)])
    }
}

#[inline(always)]
fn map<A: Copy, O>(x: &[A], out: &mut [O], f: impl Fn(A) -> O) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f(v);
    }
}

fn num_map<T: Num>(op: U, x: &[T], out: &mut [T]) {
    match op {
        U::Abs => map(x, out, |v| v.abs()),
        U::Neg => map(x, out, |v| v.neg()),
        U::Sign => map(x, out, |v| v.sign()),
        U::Relu => map(x, out, |v| if v < T::zero() { T::zero() } else { v }),
        _ => unreachable!("{op:?} is not a numeric map"),
    }
}

#[inline(always)]
fn sigmoid<C: Calc>(v: C) -> C {
    C::ONE / (C::ONE + (-v).exp())
}

#[inline(always)]
fn softplus<C: Calc>(v: C) -> C {
    // log(1 + e^v) without overflow for large v.
    if v > C::ZERO {
        v + (-v).exp().ln_1p()
    } else {
        v.exp().ln_1p()
    }
}

#[inline(always)]
pub(super) fn gelu<C: Calc>(v: C) -> C {
    C::c(0.5) * v * (C::ONE + (v * C::c(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

#[inline(always)]
pub(super) fn gelu_tanh<C: Calc>(v: C) -> C {
    let k = C::c((2.0 / std::f64::consts::PI).sqrt());
    C::c(0.5) * v * (C::ONE + (k * (v + C::c(0.044715) * v * v * v)).tanh())
}

fn float_map<T: Float>(op: U, x: &[T], out: &mut [T]) {
    let c = |a: f32| <T::C as Calc>::c(a as f64);
    let zero = <T::C as Calc>::ZERO;
    let one = <T::C as Calc>::ONE;
    macro_rules! m {
        (|$v:ident| $e:expr) => {{
            for (o, &xi) in out.iter_mut().zip(x) {
                let $v = xi.to_c();
                *o = T::from_c($e);
            }
        }};
    }
    match op {
        U::Acos => m!(|v| v.acos()),
        U::Acosh => m!(|v| v.acosh()),
        U::Asin => m!(|v| v.asin()),
        U::Asinh => m!(|v| v.asinh()),
        U::Atan => m!(|v| v.atan()),
        U::Atanh => m!(|v| v.atanh()),
        U::Ceil => m!(|v| v.ceil()),
        U::Cos => m!(|v| v.cos()),
        U::Cosh => m!(|v| v.cosh()),
        U::Erf => m!(|v| v.erf()),
        U::Exp => m!(|v| v.exp()),
        U::Floor => m!(|v| v.floor()),
        U::Log => m!(|v| v.ln()),
        U::Reciprocal => m!(|v| one / v),
        U::Round => m!(|v| v.round_even()),
        U::Sigmoid => m!(|v| sigmoid(v)),
        U::Sin => m!(|v| v.sin()),
        U::Sinh => m!(|v| v.sinh()),
        U::Sqrt => m!(|v| v.sqrt()),
        U::Tan => m!(|v| v.tan()),
        U::Tanh => m!(|v| v.tanh()),
        U::LeakyRelu(a) => {
            let a = c(a);
            m!(|v| if v < zero { a * v } else { v })
        }
        U::Elu(a) => {
            let a = c(a);
            m!(|v| if v < zero { a * (v.exp() - one) } else { v })
        }
        U::Selu { alpha, gamma } => {
            let (a, g) = (c(alpha), c(gamma));
            m!(|v| if v > zero {
                g * v
            } else {
                g * (a * v.exp() - a)
            })
        }
        U::Celu(a) => {
            let a = c(a);
            m!(|v| if v > zero {
                v
            } else {
                a * ((v / a).exp() - one)
            })
        }
        U::HardSigmoid { alpha, beta } => {
            let (a, b) = (c(alpha), c(beta));
            m!(|v| clamp01(a * v + b))
        }
        U::HardSwish => {
            let (a, b) = (c(1.0 / 6.0), c(0.5));
            m!(|v| v * clamp01(a * v + b))
        }
        U::Softplus => m!(|v| softplus(v)),
        U::Softsign => m!(|v| v / (one + v.abs())),
        U::Mish => m!(|v| v * softplus(v).tanh()),
        U::Swish(a) => {
            let a = c(a);
            m!(|v| v * sigmoid(a * v))
        }
        U::ThresholdedRelu(a) => {
            let a = c(a);
            m!(|v| if v > a { v } else { zero })
        }
        U::Shrink { bias, lambd } => {
            let (b, l) = (c(bias), c(lambd));
            m!(|v| if v < -l {
                v + b
            } else if v > l {
                v - b
            } else {
                zero
            })
        }
        U::Gelu => m!(|v| gelu(v)),
        U::GeluTanh => m!(|v| gelu_tanh(v)),
        _ => unreachable!("{op:?} is not a float map"),
    }
}

/// `min(max(v, 0), 1)`, NaN kept.
#[inline(always)]
fn clamp01<C: Calc>(v: C) -> C {
    if v < C::ZERO {
        C::ZERO
    } else if v > C::ONE {
        C::ONE
    } else {
        v
    }
}

/// `act(X + bias)` with `bias` optional and broadcast (com.microsoft FastGelu, BiasGelu).
struct BiasAct {
    act: U,
    name: &'static str,
}

impl Kernel for BiasAct {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let bias = opt_tensor_input(inputs, 1)?;
        let dt = x.dtype();
        let tanh = self.act == U::GeluTanh;
        // f32 with no bias or a bias along the last axis (what the fusions produce): one
        // vectorized pass, rows over threads.
        let last = x.shape().last().copied();
        if dt == DType::F32
            && bias
                .is_none_or(|b| b.dtype() == DType::F32 && b.rank() == 1 && Some(b.len()) == last)
        {
            use crate::gemm::vmath;
            let xs = view::<f32>(x)?;
            let bs = match bias {
                Some(b) => view::<f32>(b)?,
                None => std::borrow::Cow::Borrowed(&[][..]),
            };
            let out = cx.tensor_dirty::<f32>(x.shape().to_vec(), |o| {
                if tanh {
                    vmath::bias_fast_gelu(&xs, &bs, o)
                } else {
                    vmath::bias_gelu(&xs, &bs, o)
                }
            })?;
            return Ok(vec![Value::Tensor(out)]);
        }
        let out = with_float!(dt, T => {
            let xs = view::<T>(x)?;
            match bias {
                None => new_tensor::<T>(cx, dt, x.shape().to_vec(), |o| float_map(self.act, &xs, o))?,
                Some(b) => {
                    let bs = view::<T>(b)?;
                    let shape = shape2(x.shape(), b.shape())?;
                    new_tensor::<T>(cx, dt, shape.clone(), |o| {
                        binary_into(&xs, x.shape(), &bs, b.shape(), &shape, o, |&p, &q| {
                            let v = p.to_c() + q.to_c();
                            T::from_c(if tanh { gelu_tanh(v) } else { gelu(v) })
                        })
                    })?
                }
            }
        }, else return Err(unsupported(self.name, dt)));
        Ok(vec![Value::Tensor(out)])
    }
}

/// com.microsoft `BiasAdd`: `X + bias + skip`.
struct BiasAdd;

impl Kernel for BiasAdd {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let b = tensor_input(inputs, 1)?;
        let s = tensor_input(inputs, 2)?;
        let dt = x.dtype();
        let shape = crate::kernels::util::broadcast_shapes(&[x.shape(), b.shape(), s.shape()])?;
        let out = with_float!(dt, T => {
            let (xs, bs, ss) = (view::<T>(x)?, view::<T>(b)?, view::<T>(s)?);
            new_tensor::<T>(cx, dt, shape.clone(), |o| {
                ternary_into((&xs, x.shape()), (&bs, b.shape()), (&ss, s.shape()), &shape, o, |&p, &q, &r| {
                    T::from_c(p.to_c() + q.to_c() + r.to_c())
                })
            })?
        }, else return Err(unsupported("BiasAdd", dt)));
        Ok(vec![Value::Tensor(out)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use half::{bf16, f16};
    use kiln_ir::op;
    use kiln_ir::{Op, Tensor};

    fn f32s(t: &Tensor) -> Vec<f64> {
        t.to_f64_vec().unwrap()
    }

    const XS: &str = "[-5.0, -2.5, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 1.5, 2.5, 3.0, 7.0]";

    fn xs() -> Vec<f32> {
        vec![
            -5.0, -2.5, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 1.5, 2.5, 3.0, 7.0,
        ]
    }

    fn check(op: Op, np: &str) {
        let x = xs();
        let got = f32s(&run1(op.clone(), &[t(&[x.len()], x.clone())]));
        let Some(want) = numpy(&format!(
            "(lambda x: {np})(np.array({XS}, dtype=np.float32))"
        )) else {
            return;
        };
        close(&got, &want, &format!("{op:?}"));
        // f64 computes in f64.
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let got = f32s(&run1(op.clone(), &[t(&[x.len()], x64)]));
        let want = numpy(&format!(
            "(lambda x: {np})(np.array({XS}, dtype=np.float64))"
        ))
        .unwrap();
        close(&got, &want, &format!("{op:?} f64"));
    }

    #[test]
    fn activations_match_numpy() {
        check(
            Op::Erf(op::Erf {}),
            "np.vectorize(math.erf)(x.astype(np.float64)).astype(x.dtype)",
        );
        check(Op::Round(op::Round {}), "np.round(x)");
        check(Op::Sigmoid(op::Sigmoid {}), "1/(1+np.exp(-x))");
        check(Op::Softplus(op::Softplus {}), "np.log1p(np.exp(x))");
        check(Op::Mish(op::Mish {}), "x*np.tanh(np.log1p(np.exp(x)))");
        check(Op::HardSwish(op::HardSwish {}), "x*np.clip(x/6+0.5, 0, 1)");
        check(
            Op::Celu(op::Celu { alpha: 2.0 }),
            "np.maximum(0,x)+np.minimum(0,2.0*(np.exp(x/2.0)-1))",
        );
        check(
            Op::Selu(op::Selu {
                alpha: 2.0,
                gamma: 3.0,
            }),
            "np.where(x > 0, x, np.exp(x) * 2.0 - 2.0) * 3.0",
        );
        check(
            Op::Elu(op::Elu { alpha: 0.5 }),
            "np.where(x >= 0, x, 0.5*(np.exp(x)-1))",
        );
        check(
            Op::Shrink(op::Shrink {
                bias: 1.5,
                lambd: 1.0,
            }),
            "np.where(x < -1, x + 1.5, np.where(x > 1, x - 1.5, 0))",
        );
        check(
            Op::ThresholdedRelu(op::ThresholdedRelu { alpha: 1.0 }),
            "np.where(x > 1, x, 0)",
        );
        check(Op::Softsign(op::Softsign {}), "x/(1+np.abs(x))");
        check(Op::Swish(op::Swish { alpha: 0.7 }), "x/(1+np.exp(-0.7*x))");
        check(
            Op::Gelu(op::Gelu {
                approximate: "none".into(),
            }),
            "0.5*x*(1+np.vectorize(math.erf)(x.astype(np.float64)/math.sqrt(2)))",
        );
        check(
            Op::Gelu(op::Gelu {
                approximate: "tanh".into(),
            }),
            "0.5*x*(1+np.tanh(math.sqrt(2/math.pi)*(x+0.044715*x**3)))",
        );
        check(
            Op::HardSigmoid(op::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            }),
            "np.clip(np.float32(0.2)*x+0.5, 0, 1)",
        );
    }

    #[test]
    fn round_is_half_to_even() {
        let x = t(&[6], vec![0.5f32, 1.5, 2.5, -0.5, -2.5, 2.4999998]);
        assert_eq!(
            f32s(&run1(Op::Round(op::Round {}), &[x])),
            vec![0.0, 2.0, 2.0, -0.0, -2.0, 2.0]
        );
    }

    #[test]
    fn half_types_compute_in_f32() {
        let x = t(
            &[3],
            vec![f16::from_f32(-1.0), f16::from_f32(0.5), f16::from_f32(2.0)],
        );
        let y = run1(Op::Exp(op::Exp {}), &[x]);
        assert_eq!(y.dtype(), kiln_ir::DType::F16);
        let want: Vec<f64> = [-1.0f32, 0.5, 2.0]
            .iter()
            .map(|v| f16::from_f32(v.exp()).to_f64())
            .collect();
        assert_eq!(f32s(&y), want);
        let x = t(&[2], vec![bf16::from_f32(-3.0), bf16::from_f32(3.0)]);
        assert_eq!(f32s(&run1(Op::Relu(op::Relu {}), &[x])), vec![0.0, 3.0]);
    }

    #[test]
    fn integer_maps_and_logic() {
        let x = t(&[4], vec![-128i8, -3, 0, 5]);
        assert_eq!(
            run1(Op::Abs(op::Abs {}), std::slice::from_ref(&x))
                .to_vec::<i8>()
                .unwrap(),
            vec![-128, 3, 0, 5]
        );
        assert_eq!(
            run1(Op::Neg(op::Neg {}), std::slice::from_ref(&x))
                .to_vec::<i8>()
                .unwrap(),
            vec![-128, 3, 0, -5]
        );
        assert_eq!(
            run1(Op::Sign(op::Sign {}), std::slice::from_ref(&x))
                .to_vec::<i8>()
                .unwrap(),
            vec![-1, -1, 0, 1]
        );
        assert_eq!(
            run1(Op::BitwiseNot(op::BitwiseNot {}), &[x])
                .to_vec::<i8>()
                .unwrap(),
            vec![127, 2, -1, -6]
        );
        let b = Tensor::from_bools(vec![3], &[true, false, true]).unwrap();
        let y = run1(Op::Not(op::Not {}), &[b]);
        assert_eq!(y.dtype(), kiln_ir::DType::Bool);
        assert_eq!(y.bytes(), &[0, 1, 0]);
    }

    #[test]
    fn isinf_and_isnan() {
        let x = t(
            &[5],
            vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0, -0.0],
        );
        let r = |o| run1(o, std::slice::from_ref(&x)).bytes().to_vec();
        assert_eq!(r(Op::IsNaN(op::IsNaN {})), vec![1, 0, 0, 0, 0]);
        assert_eq!(
            r(Op::IsInf(op::IsInf {
                detect_negative: true,
                detect_positive: true
            })),
            vec![0, 1, 1, 0, 0]
        );
        assert_eq!(
            r(Op::IsInf(op::IsInf {
                detect_negative: false,
                detect_positive: true
            })),
            vec![0, 1, 0, 0, 0]
        );
        assert_eq!(
            r(Op::IsInf(op::IsInf {
                detect_negative: true,
                detect_positive: false
            })),
            vec![0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn contrib_gelus_add_bias() {
        let x = t(&[2, 3], vec![-1.0f32, 0.0, 1.0, 2.0, -2.0, 0.5]);
        let b = t(&[3], vec![0.5f32, -0.5, 0.25]);
        let fast = f32s(&run1(
            Op::FastGelu(op::FastGelu {}),
            &[x.clone(), b.clone()],
        ));
        let bg = f32s(&run1(
            Op::BiasGelu(op::BiasGelu {}),
            &[x.clone(), b.clone()],
        ));
        let Some(want_fast) = numpy(
            "(lambda v: 0.5*v*(1+np.tanh(math.sqrt(2/math.pi)*(v+0.044715*v**3))))(np.array([[-1,0,1],[2,-2,0.5]])+np.array([0.5,-0.5,0.25]))",
        ) else {
            return;
        };
        close(&fast, &want_fast, "FastGelu");
        let want_bg = numpy(
            "(lambda v: 0.5*v*(1+np.vectorize(math.erf)(v/math.sqrt(2))))(np.array([[-1,0,1],[2,-2,0.5]])+np.array([0.5,-0.5,0.25]))",
        )
        .unwrap();
        close(&bg, &want_bg, "BiasGelu");
        let skip = t(&[2, 3], vec![1.0f32; 6]);
        let ba = f32s(&run1(Op::BiasAdd(op::BiasAdd {}), &[x, b, skip]));
        assert_eq!(ba, vec![0.5, 0.5, 2.25, 3.5, -1.5, 1.75]);
    }
}
