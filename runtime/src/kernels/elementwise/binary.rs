//! Broadcasting binary ops (arithmetic, `Pow`, `Mod`, bitwise, `BitShift`, logic,
//! comparisons, `PRelu`), the variadic `Max`/`Min`/`Sum`/`Mean`, `Where` and `Clip`.

use kiln_ir::{DType, Op, Tensor};

use super::broadcast::{accumulate, binary_into, shape2, ternary_into};
use super::num::{Float, Int, Num};
use super::{new_tensor, tensors, unsupported, view};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, Kernel, RunCx};
use crate::kernels::par::for_chunks;
use crate::kernels::util::broadcast_shapes;
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
enum B {
    Add,
    Sub,
    Mul,
    Div,
    Mod { fmod: bool },
    Pow,
    PRelu,
    BitShift { left: bool },
    BitwiseAnd,
    BitwiseOr,
    BitwiseXor,
    And,
    Or,
    Xor,
    Equal,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum V {
    Max,
    Min,
    Sum,
    Mean,
}

pub(super) fn build(op: &Op) -> Option<Box<dyn Kernel>> {
    use Op as O;
    let b = match op {
        O::Add(_) => B::Add,
        O::Sub(_) => B::Sub,
        O::Mul(_) => B::Mul,
        O::Div(_) => B::Div,
        O::Mod(o) => B::Mod { fmod: o.fmod != 0 },
        O::Pow(_) => B::Pow,
        O::PRelu(_) => B::PRelu,
        O::BitShift(o) => B::BitShift {
            left: o.direction.eq_ignore_ascii_case("LEFT"),
        },
        O::BitwiseAnd(_) => B::BitwiseAnd,
        O::BitwiseOr(_) => B::BitwiseOr,
        O::BitwiseXor(_) => B::BitwiseXor,
        O::And(_) => B::And,
        O::Or(_) => B::Or,
        O::Xor(_) => B::Xor,
        O::Equal(_) => B::Equal,
        O::Greater(_) => B::Greater,
        O::GreaterOrEqual(_) => B::GreaterOrEqual,
        O::Less(_) => B::Less,
        O::LessOrEqual(_) => B::LessOrEqual,
        O::Max(_) => return Some(Box::new(Variadic(V::Max))),
        O::Min(_) => return Some(Box::new(Variadic(V::Min))),
        O::Sum(_) => return Some(Box::new(Variadic(V::Sum))),
        O::Mean(_) => return Some(Box::new(Variadic(V::Mean))),
        O::Where(_) => return Some(Box::new(Where)),
        O::Clip(_) => return Some(Box::new(Clip)),
        _ => return None,
    };
    Some(Box::new(Binary(b)))
}

struct Binary(B);

impl Kernel for Binary {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let ts = tensors(inputs, 2)?;
        let (a, b) = (ts[0], ts[1]);
        let op = self.0;
        if op == B::Pow {
            return Ok(vec![Value::Tensor(pow(a, b, cx)?)]);
        }
        let dt = a.dtype();
        if b.dtype() != dt {
            return Err(KernelError::Invalid(format!(
                "{op:?} inputs differ in type: {dt} and {}",
                b.dtype()
            )));
        }
        let shape = shape2(a.shape(), b.shape())?;
        let name = || format!("{op:?}");
        let out = match op {
            B::Add | B::Sub | B::Mul | B::Div | B::Mod { .. } | B::PRelu => {
                with_numeric!(dt, T => {
                arith::<T>(op, a, b, shape, cx)?
            }, else return Err(unsupported(&name(), dt)))
            }
            B::BitShift { .. } | B::BitwiseAnd | B::BitwiseOr | B::BitwiseXor => {
                with_int!(dt, T => {
                bitwise::<T>(op, a, b, shape, cx)?
            }, else return Err(unsupported(&name(), dt)))
            }
            B::And | B::Or | B::Xor => {
                if dt != DType::Bool {
                    return Err(unsupported(&name(), dt));
                }
                let (x, y) = (view::<u8>(a)?, view::<u8>(b)?);
                let (ash, bsh) = (a.shape(), b.shape());
                new_tensor::<u8>(cx, DType::Bool, shape.clone(), |o| match op {
                    B::And => binary_into(&x, ash, &y, bsh, &shape, o, |&p, &q| {
                        ((p != 0) & (q != 0)) as u8
                    }),
                    B::Or => binary_into(&x, ash, &y, bsh, &shape, o, |&p, &q| {
                        ((p != 0) | (q != 0)) as u8
                    }),
                    _ => binary_into(&x, ash, &y, bsh, &shape, o, |&p, &q| {
                        ((p != 0) ^ (q != 0)) as u8
                    }),
                })?
            }
            B::Equal if dt == DType::String => {
                let (x, y) = (
                    a.strings().unwrap_or_default(),
                    b.strings().unwrap_or_default(),
                );
                let (ash, bsh) = (a.shape(), b.shape());
                new_tensor::<u8>(cx, DType::Bool, shape.clone(), |o| {
                    binary_into(x, ash, y, bsh, &shape, o, |p, q| (p == q) as u8)
                })?
            }
            B::Equal if dt == DType::Bool => {
                let (x, y) = (view::<u8>(a)?, view::<u8>(b)?);
                let (ash, bsh) = (a.shape(), b.shape());
                new_tensor::<u8>(cx, DType::Bool, shape.clone(), |o| {
                    binary_into(&x, ash, &y, bsh, &shape, o, |&p, &q| {
                        ((p != 0) == (q != 0)) as u8
                    })
                })?
            }
            _ => with_numeric!(dt, T => {
                compare::<T>(op, a, b, shape, cx)?
            }, else return Err(unsupported(&name(), dt))),
        };
        Ok(vec![Value::Tensor(out)])
    }
}

fn arith<T: Num>(
    op: B,
    a: &Tensor,
    b: &Tensor,
    shape: Vec<usize>,
    cx: &mut RunCx,
) -> Result<Tensor, KernelError> {
    let (x, y) = (view::<T>(a)?, view::<T>(b)?);
    let (ash, bsh) = (a.shape(), b.shape());
    let s = shape.clone();
    new_tensor::<T>(cx, T::DTYPE, shape, |o| {
        macro_rules! go {
            (|$p:ident, $q:ident| $e:expr) => {
                binary_into(&x, ash, &y, bsh, &s, o, |&$p: &T, &$q: &T| $e)
            };
        }
        match op {
            B::Add => go!(|p, q| p.add(q)),
            B::Sub => go!(|p, q| p.sub(q)),
            B::Mul => go!(|p, q| p.mul(q)),
            B::Div => go!(|p, q| p.div(q)),
            B::Mod { fmod: false } => go!(|p, q| p.modulo(q)),
            B::Mod { fmod: true } => go!(|p, q| p.fmod(q)),
            B::PRelu => go!(|p, q| if p < T::zero() { p.mul(q) } else { p }),
            _ => unreachable!(),
        }
    })
}

fn bitwise<T: Int>(
    op: B,
    a: &Tensor,
    b: &Tensor,
    shape: Vec<usize>,
    cx: &mut RunCx,
) -> Result<Tensor, KernelError> {
    let (x, y) = (view::<T>(a)?, view::<T>(b)?);
    let (ash, bsh) = (a.shape(), b.shape());
    let s = shape.clone();
    new_tensor::<T>(cx, T::DTYPE, shape, |o| {
        macro_rules! go {
            (|$p:ident, $q:ident| $e:expr) => {
                binary_into(&x, ash, &y, bsh, &s, o, |&$p: &T, &$q: &T| $e)
            };
        }
        match op {
            B::BitShift { left: true } => go!(|p, q| p.shift(q, true)),
            B::BitShift { left: false } => go!(|p, q| p.shift(q, false)),
            B::BitwiseAnd => go!(|p, q| p.band(q)),
            B::BitwiseOr => go!(|p, q| p.bor(q)),
            B::BitwiseXor => go!(|p, q| p.bxor(q)),
            _ => unreachable!(),
        }
    })
}

fn compare<T: Num>(
    op: B,
    a: &Tensor,
    b: &Tensor,
    shape: Vec<usize>,
    cx: &mut RunCx,
) -> Result<Tensor, KernelError> {
    let (x, y) = (view::<T>(a)?, view::<T>(b)?);
    let (ash, bsh) = (a.shape(), b.shape());
    let s = shape.clone();
    new_tensor::<u8>(cx, DType::Bool, shape, |o| {
        macro_rules! go {
            (|$p:ident, $q:ident| $e:expr) => {
                binary_into(&x, ash, &y, bsh, &s, o, |&$p: &T, &$q: &T| ($e) as u8)
            };
        }
        match op {
            B::Equal => go!(|p, q| p == q),
            B::Greater => go!(|p, q| p > q),
            B::GreaterOrEqual => go!(|p, q| p >= q),
            B::Less => go!(|p, q| p < q),
            B::LessOrEqual => go!(|p, q| p <= q),
            _ => unreachable!(),
        }
    })
}

/// `Pow`: the result has the base's type. Float bases compute in their precision when the
/// exponent has the same type, else in f64 (as numpy's promotion does); integer bases
/// with integer exponents use wrapping integer powers.
fn pow(a: &Tensor, b: &Tensor, cx: &mut RunCx) -> Result<Tensor, KernelError> {
    let shape = shape2(a.shape(), b.shape())?;
    let (ash, bsh) = (a.shape(), b.shape());
    let (da, db) = (a.dtype(), b.dtype());
    let s = shape.clone();
    if da == DType::F32 && db == DType::F32 && b.len() == 1 {
        let (x, e) = (view::<f32>(a)?, view::<f32>(b)?[0]);
        // x² (LayerNorm's variance) is exact in one multiply, x³ (FastGelu's, spelled out)
        // within an ulp in two, as ONNX Runtime computes both: powf is ~20× slower.
        return new_tensor::<f32>(cx, da, shape, |o| {
            for_chunks(o, 1, |s, o| {
                let x = &x[s..s + o.len()];
                if e == 2.0 {
                    o.iter_mut().zip(x).for_each(|(o, &v)| *o = v * v);
                } else if e == 3.0 {
                    o.iter_mut().zip(x).for_each(|(o, &v)| *o = v * v * v);
                } else {
                    o.iter_mut().zip(x).for_each(|(o, &v)| *o = v.powf(e));
                }
            })
        });
    }
    if da == db && da.is_float() {
        return with_float!(da, T => {
            let (x, y) = (view::<T>(a)?, view::<T>(b)?);
            new_tensor::<T>(cx, da, shape, |o| {
                binary_into(&x, ash, &y, bsh, &s, o, |&p: &T, &q: &T| T::from_c(p.to_c().powf(q.to_c())))
            })
        }, else Err(unsupported("Pow", da)));
    }
    let exp_is_int = db.is_int();
    if !(db.is_float() || exp_is_int) || !(da.is_float() || da.is_int()) {
        return Err(KernelError::Unsupported(format!("Pow of {da} by {db}")));
    }
    with_numeric!(da, T => {
        let x = view::<T>(a)?;
        if T::FLOAT || !exp_is_int {
            let y = b.to_f64_vec().ok_or_else(|| unsupported("Pow", db))?;
            new_tensor::<T>(cx, da, shape, |o| {
                binary_into(&x, ash, &y, bsh, &s, o, |&p: &T, &q: &f64| T::from_f64(p.to_f64().powf(q)))
            })
        } else {
            let y = b.to_i64_vec().ok_or_else(|| unsupported("Pow", db))?;
            new_tensor::<T>(cx, da, shape, |o| {
                binary_into(&x, ash, &y, bsh, &s, o, |&p: &T, &q: &i64| T::from_i64(ipow(p.to_i64(), q)))
            })
        }
    }, else Err(unsupported("Pow", da)))
}

/// Integer power with wrapping; negative exponents give 0 except for bases ±1.
fn ipow(mut base: i64, mut e: i64) -> i64 {
    if e < 0 {
        return match base {
            1 => 1,
            -1 => {
                if e % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        };
    }
    let mut r: i64 = 1;
    while e > 0 {
        if e & 1 == 1 {
            r = r.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    r
}

/// `Max`/`Min`/`Sum`/`Mean` of one or more inputs, broadcast together.
struct Variadic(V);

impl Kernel for Variadic {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let ts: Vec<&Tensor> = inputs
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|_| tensor_input(inputs, i)))
            .collect::<Result<_, _>>()?;
        let first = *ts
            .first()
            .ok_or_else(|| KernelError::Invalid(format!("{:?} needs an input", self.0)))?;
        let dt = first.dtype();
        if let Some(t) = ts.iter().find(|t| t.dtype() != dt) {
            return Err(KernelError::Invalid(format!(
                "{:?} inputs differ in type: {dt} and {}",
                self.0,
                t.dtype()
            )));
        }
        let shapes: Vec<&[usize]> = ts.iter().map(|t| t.shape()).collect();
        let shape = broadcast_shapes(&shapes)?;
        let op = self.0;
        let out = with_numeric!(dt, T => variadic::<T>(op, &ts, shape, cx)?,
            else return Err(unsupported(&format!("{op:?}"), dt)));
        Ok(vec![Value::Tensor(out)])
    }
}

fn variadic<T: Num>(
    op: V,
    ts: &[&Tensor],
    shape: Vec<usize>,
    cx: &mut RunCx,
) -> Result<Tensor, KernelError> {
    let views = ts
        .iter()
        .map(|t| view::<T>(t))
        .collect::<Result<Vec<_>, _>>()?;
    let s = shape.clone();
    new_tensor::<T>(cx, T::DTYPE, shape, |o| {
        macro_rules! fold {
            (|$p:ident, $q:ident| $e:expr) => {{
                // out = input 0 broadcast, then folded with each further input.
                accumulate(o, &s, &views[0], ts[0].shape(), |_, &v: &T| v);
                for (v, t) in views.iter().zip(ts).skip(1) {
                    accumulate(o, &s, v, t.shape(), |&$p: &T, &$q: &T| $e);
                }
            }};
        }
        match op {
            V::Max => fold!(|p, q| p.maxn(q)),
            V::Min => fold!(|p, q| p.minn(q)),
            V::Sum | V::Mean => fold!(|p, q| p.add(q)),
        }
        if op == V::Mean && ts.len() > 1 {
            let n = T::from_i64(ts.len() as i64);
            for v in o.iter_mut() {
                *v = v.div(n);
            }
        }
    })
}

/// `Where(cond, X, Y)` for any dtype: fixed-size elements are moved as same-size words.
struct Where;

impl Kernel for Where {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let ts = tensors(inputs, 3)?;
        let (c, x, y) = (ts[0], ts[1], ts[2]);
        let dt = x.dtype();
        if y.dtype() != dt {
            return Err(KernelError::Invalid(format!(
                "Where X and Y differ in type: {dt} and {}",
                y.dtype()
            )));
        }
        if c.dtype() != DType::Bool {
            return Err(KernelError::Invalid(format!(
                "Where condition must be bool, got {}",
                c.dtype()
            )));
        }
        let shape = broadcast_shapes(&[c.shape(), x.shape(), y.shape()])?;
        let cv = view::<u8>(c)?;
        let out = if dt == DType::String {
            let (xs, ys) = (
                x.strings().unwrap_or_default(),
                y.strings().unwrap_or_default(),
            );
            let n: usize = shape.iter().product();
            let mut v: Vec<Vec<u8>> = vec![Vec::new(); n];
            ternary_into(
                (&cv, c.shape()),
                (xs, x.shape()),
                (ys, y.shape()),
                &shape,
                &mut v,
                |&k, p, q| {
                    if k != 0 {
                        p.clone()
                    } else {
                        q.clone()
                    }
                },
            );
            Tensor::from_strings(shape, v)?
        } else {
            macro_rules! sel {
                ($w:ty) => {{
                    let (xs, ys) = (words::<$w>(x), words::<$w>(y));
                    let s = shape.clone();
                    new_tensor::<$w>(cx, dt, shape, |o| {
                        ternary_into(
                            (&cv, c.shape()),
                            (&xs, x.shape()),
                            (&ys, y.shape()),
                            &s,
                            o,
                            |&k, &p, &q| {
                                if k != 0 {
                                    p
                                } else {
                                    q
                                }
                            },
                        )
                    })?
                }};
            }
            match dt.bits() {
                8 => sel!(u8),
                16 => sel!(u16),
                32 => sel!(u32),
                64 => sel!(u64),
                _ => return Err(unsupported("Where", dt)),
            }
        };
        Ok(vec![Value::Tensor(out)])
    }
}

/// A tensor's bytes as words of `W` (its element size).
fn words<W: bytemuck::Pod>(t: &Tensor) -> std::borrow::Cow<'_, [W]> {
    match bytemuck::try_cast_slice::<u8, W>(t.bytes()) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec(t.bytes())),
    }
}

/// `Clip(X, min?, max?)`: `min(max(x, lo), hi)` (so `hi` wins when `lo > hi`); NaN stays NaN.
struct Clip;

impl Kernel for Clip {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let bound = |i: usize| -> Result<Option<&Tensor>, KernelError> {
            Ok(opt_tensor_input(inputs, i)?.filter(|t| !t.is_empty()))
        };
        let (lo, hi) = (bound(1)?, bound(2)?);
        let dt = x.dtype();
        let out = with_numeric!(dt, T => {
            let scalar = |t: Option<&Tensor>| -> Result<Option<T>, KernelError> {
                match t {
                    None => Ok(None),
                    Some(t) if t.len() == 1 => Ok(Some(view::<T>(t)?[0])),
                    Some(t) => Err(KernelError::Invalid(format!("Clip bounds must be scalars, got shape {:?}", t.shape()))),
                }
            };
            let (lo, hi) = (scalar(lo)?, scalar(hi)?);
            let xs = view::<T>(x)?;
            new_tensor::<T>(cx, dt, x.shape().to_vec(), |o| clip(&xs, o, lo, hi))?
        }, else return Err(unsupported("Clip", dt)));
        Ok(vec![Value::Tensor(out)])
    }
}

fn clip<T: Num>(x: &[T], out: &mut [T], lo: Option<T>, hi: Option<T>) {
    match (lo, hi) {
        (Some(l), Some(h)) => {
            for (o, &v) in out.iter_mut().zip(x) {
                let v = if v < l { l } else { v };
                *o = if v > h { h } else { v };
            }
        }
        (Some(l), None) => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = if v < l { l } else { v };
            }
        }
        (None, Some(h)) => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = if v > h { h } else { v };
            }
        }
        (None, None) => out.copy_from_slice(x),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_ir::op;
    use kiln_ir::{DType, Op, Tensor};

    #[test]
    fn integer_div_truncates_and_mod_follows_divisor() {
        let a = t(&[6], vec![7i32, -7, 7, -7, i32::MIN, 5]);
        let b = t(&[6], vec![2i32, 2, -2, -2, -1, 0]);
        let d = run1(Op::Div(op::Div {}), &[a.clone(), b.clone()])
            .to_vec::<i32>()
            .unwrap();
        assert_eq!(d, vec![3, -3, -3, 3, i32::MIN, 0]);
        let m = run1(Op::Mod(op::Mod { fmod: 0 }), &[a.clone(), b.clone()])
            .to_vec::<i32>()
            .unwrap();
        let Some(want) = numpy("np.mod(np.array([7,-7,7,-7,-2**31,5], dtype=np.int32), np.array([2,2,-2,-2,-1,1], dtype=np.int32)) * np.array([1,1,1,1,1,0])") else { return };
        assert_eq!(m.iter().map(|&v| v as f64).collect::<Vec<_>>(), want);
        let f = run1(Op::Mod(op::Mod { fmod: 1 }), &[a, b])
            .to_vec::<i32>()
            .unwrap();
        assert_eq!(f, vec![1, -1, 1, -1, 0, 0]);
    }

    #[test]
    fn float_mod_matches_numpy() {
        let a = vec![
            -4.3f32,
            7.2,
            5.0,
            4.3,
            -7.2,
            8.0,
            0.0,
            -3.0,
            3.0,
            1.0,
            f32::INFINITY,
        ];
        let b = vec![
            2.1f32,
            -3.4,
            8.0,
            -2.1,
            3.4,
            5.0,
            -2.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            2.0,
        ];
        let got = run1(
            Op::Mod(op::Mod { fmod: 0 }),
            &[t(&[11], a.clone()), t(&[11], b.clone())],
        );
        let want = numpy(
            &format!(
                "np.mod(np.array({a:?}, dtype=np.float32), np.array({b:?}, dtype=np.float32))"
            )
            .replace("inf", "np.inf"),
        );
        let Some(want) = want else { return };
        close(&got.to_f64_vec().unwrap(), &want, "mod");
    }

    #[test]
    fn pow_mixed_types() {
        let a = t(&[3], vec![1i32, 2, 3]);
        let b = t(&[3], vec![4.0f32, 5.0, 0.5]);
        assert_eq!(
            run1(Op::Pow(op::Pow {}), &[a.clone(), b])
                .to_vec::<i32>()
                .unwrap(),
            vec![1, 32, 1]
        );
        let e = t(&[3], vec![3i64, 0, 2]);
        assert_eq!(
            run1(Op::Pow(op::Pow {}), &[a, e.clone()])
                .to_vec::<i32>()
                .unwrap(),
            vec![1, 1, 9]
        );
        let f = t(&[3], vec![1.5f32, 2.0, -3.0]);
        assert_eq!(
            run1(Op::Pow(op::Pow {}), &[f, e]).to_vec::<f32>().unwrap(),
            vec![3.375, 1.0, 9.0]
        );
    }

    #[test]
    fn bitshift_edge_cases() {
        let x = t(&[3], vec![-8i8, 4, -1]);
        let s = t(&[3], vec![8i8, 9, 127]);
        let r = run1(
            Op::BitShift(op::BitShift {
                direction: "RIGHT".into(),
            }),
            &[x.clone(), s.clone()],
        );
        assert_eq!(r.to_vec::<i8>().unwrap(), vec![-1, 0, -1]);
        let l = run1(
            Op::BitShift(op::BitShift {
                direction: "LEFT".into(),
            }),
            &[x, s],
        );
        assert_eq!(l.to_vec::<i8>().unwrap(), vec![0, 0, 0]);
        let x = t(&[3], vec![64i8, 1, -64]);
        let s = t(&[3], vec![1i8, 7, -1]);
        let l = run1(
            Op::BitShift(op::BitShift {
                direction: "LEFT".into(),
            }),
            &[x, s],
        );
        assert_eq!(l.to_vec::<i8>().unwrap(), vec![-128, -128, 0]);
    }

    #[test]
    fn max_min_propagate_nan_and_broadcast() {
        let a = t(&[2, 1], vec![1.0f32, f32::NAN]);
        let b = t(&[3], vec![0.0f32, 2.0, f32::NAN]);
        let c = t(&[], vec![1.5f32]);
        let mx = run1(Op::Max(op::Max {}), &[a.clone(), b.clone(), c.clone()]);
        assert_eq!(mx.shape(), &[2, 3]);
        let v = mx.to_vec::<f32>().unwrap();
        assert_eq!(&v[..2], &[1.5, 2.0]);
        assert!(v[2].is_nan() && v[3..].iter().all(|x| x.is_nan()));
        let mean = run1(
            Op::Mean(op::Mean {}),
            &[t(&[2], vec![1.0f32, 2.0]), t(&[1], vec![4.0f32])],
        );
        assert_eq!(mean.to_vec::<f32>().unwrap(), vec![2.5, 3.0]);
        let one = run1(Op::Sum(op::Sum {}), &[t(&[2], vec![1u16, 2])]);
        assert_eq!(one.to_vec::<u16>().unwrap(), vec![1, 2]);
    }

    /// A condition fixed along the last axis (a per-row mask) with X and Y scalar, streamed
    /// or broadcast: every combination against the elementwise definition.
    #[test]
    fn where_with_per_row_condition_matches_definition() {
        let out = [2usize, 3, 5];
        let cond = [true, false, false, true, true, false];
        let c = Tensor::from_bools(vec![2, 3, 1], &cond).unwrap();
        // Scalar, full, broadcast over the batch or the rows, and fixed along the row (a
        // fill per row).
        let shapes: [&[usize]; 5] = [&[], &[2, 3, 5], &[3, 5], &[2, 1, 5], &[3, 1]];
        // Element of a tensor of shape `sh` (broadcast to `out`) at `(i, j, k)`.
        let at = |v: &[f32], sh: &[usize], i: usize, j: usize, k: usize| {
            let full = [i, j, k];
            let mut off = 0;
            for (ax, &d) in sh.iter().enumerate() {
                let idx = full[3 - sh.len() + ax];
                off = off * d + if d == 1 { 0 } else { idx };
            }
            v[off]
        };
        for xs in shapes {
            for ys in shapes {
                if xs.last() != Some(&5) && ys.last() != Some(&5) {
                    continue; // the output would be [2, 3, 1]
                }
                let xv: Vec<f32> = (0..xs.iter().product()).map(|i| i as f32).collect();
                let yv: Vec<f32> = (0..ys.iter().product()).map(|i| -1.0 - i as f32).collect();
                let w = run1(
                    Op::Where(op::Where {}),
                    &[c.clone(), t(xs, xv.clone()), t(ys, yv.clone())],
                );
                assert_eq!(w.shape(), &out);
                let got = w.to_vec::<f32>().unwrap();
                for i in 0..2 {
                    for j in 0..3 {
                        for k in 0..5 {
                            let want = if cond[i * 3 + j] {
                                at(&xv, xs, i, j, k)
                            } else {
                                at(&yv, ys, i, j, k)
                            };
                            assert_eq!(got[(i * 3 + j) * 5 + k], want, "{xs:?} {ys:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn where_strings_and_comparisons() {
        let c = Tensor::from_bools(vec![2], &[true, false]).unwrap();
        let x = Tensor::from_strings(vec![2, 1], vec![b"a".to_vec(), b"b".to_vec()]).unwrap();
        let y = Tensor::from_strings(vec![], vec![b"z".to_vec()]).unwrap();
        let w = run1(Op::Where(op::Where {}), &[c.clone(), x.clone(), y.clone()]);
        assert_eq!(w.shape(), &[2, 2]);
        assert_eq!(
            w.strings().unwrap(),
            &[b"a".to_vec(), b"z".to_vec(), b"b".to_vec(), b"z".to_vec()]
        );
        let e = run1(Op::Equal(op::Equal {}), &[x, y]);
        assert_eq!(e.bytes(), &[0, 0]);
        let w = run1(
            Op::Where(op::Where {}),
            &[c, t(&[2], vec![1i64, 2]), t(&[1], vec![9i64])],
        );
        assert_eq!(w.to_vec::<i64>().unwrap(), vec![1, 9]);
        let g = run1(
            Op::Greater(op::Greater {}),
            &[t(&[3], vec![1u64, 5, 3]), t(&[1], vec![3u64])],
        );
        assert_eq!(g.dtype(), DType::Bool);
        assert_eq!(g.bytes(), &[0, 1, 0]);
    }

    #[test]
    fn clip_bounds_are_optional_and_max_wins() {
        let x = t(&[4], vec![-2.0f32, 0.0, 6.0, f32::NAN]);
        let r = run_op(
            Op::Clip(op::Clip {}),
            &[
                Some(x.clone()),
                Some(t(&[], vec![2.0f32])),
                Some(t(&[], vec![1.0f32])),
            ],
        )
        .unwrap();
        let v = r[0].to_vec::<f32>().unwrap();
        assert_eq!(&v[..3], &[1.0, 1.0, 1.0]);
        assert!(v[3].is_nan());
        let r = run_op(
            Op::Clip(op::Clip {}),
            &[Some(x), None, Some(t(&[], vec![1.0f32]))],
        )
        .unwrap();
        assert_eq!(&r[0].to_vec::<f32>().unwrap()[..3], &[-2.0, 0.0, 1.0]);
        let xi = t(&[3], vec![-128i8, 0, 127]);
        let r = run_op(Op::Clip(op::Clip {}), &[Some(xi), Some(t(&[], vec![-1i8]))]).unwrap();
        assert_eq!(r[0].to_vec::<i8>().unwrap(), vec![-1, 0, 127]);
    }

    #[test]
    fn empty_and_scalar_broadcasts() {
        let a = t(&[0, 3], Vec::<f32>::new());
        let b = t(&[3], vec![1.0f32, 2.0, 3.0]);
        let y = run1(Op::Add(op::Add {}), &[a.clone(), b.clone()]);
        assert_eq!(y.shape(), &[0, 3]);
        assert!(run_op(
            Op::Add(op::Add {}),
            &[Some(t(&[2, 0], Vec::<f32>::new())), Some(b.clone())]
        )
        .is_err());
        let y = run1(Op::Sub(op::Sub {}), &[t(&[], vec![10.0f32]), b]);
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![9.0, 8.0, 7.0]);
        let y = run1(
            Op::Mul(op::Mul {}),
            &[
                t(&[2, 1, 2], vec![1u8, 2, 3, 4]),
                t(&[3, 1], vec![1u8, 10, 100]),
            ],
        );
        assert_eq!(y.shape(), &[2, 3, 2]);
        assert_eq!(
            y.to_vec::<u8>().unwrap(),
            vec![1, 2, 10, 20, 100, 200, 3, 4, 30, 40, 44, 144]
        );
    }

    #[test]
    fn prelu_broadcasts_slope() {
        let x = t(&[2, 2], vec![-1.0f32, 2.0, -3.0, 4.0]);
        let s = t(&[2], vec![0.5f32, 0.1]);
        assert_eq!(
            run1(Op::PRelu(op::PRelu {}), &[x, s])
                .to_vec::<f32>()
                .unwrap(),
            vec![-0.5, 2.0, -1.5, 4.0]
        );
    }
}
