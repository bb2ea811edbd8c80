//! `MatMul` (numpy semantics, every numeric dtype), `Gemm`, `com.microsoft.FusedMatMul`, `Det`.

use kiln_ir::{DType, Op, Tensor};

use super::gemm::{batched_matmul, batched_shape, gemm_f32, widen, Field, MatView};
use super::KResult;
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::norm::broadcast_param;
use crate::kernels::reduce::num::{view, Acc, Float, Num, Real};
use crate::kernels::util::strides;
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let k: Box<dyn Kernel> = match op {
        Op::MatMul(_) => Box::new(MatMulK {
            t: Trans::default(),
            alpha: 1.0,
        }),
        Op::FusedMatMul(o) => Box::new(MatMulK {
            t: Trans {
                a: o.trans_a,
                b: o.trans_b,
                batch_a: o.trans_batch_a,
                batch_b: o.trans_batch_b,
            },
            alpha: o.alpha,
        }),
        Op::Gemm(o) => Box::new(GemmK {
            alpha: o.alpha,
            beta: o.beta,
            ta: o.trans_a,
            tb: o.trans_b,
        }),
        Op::Det(_) => Box::new(DetK),
        _ => return None,
    };
    Some(Ok(k))
}

#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Trans {
    pub a: bool,
    pub b: bool,
    pub batch_a: bool,
    pub batch_b: bool,
}

/// An operand of numpy matmul (FusedMatMul's transposes applied): its matrix view, and
/// whether it was a vector.
fn operand(shape: &[usize], is_a: bool, batch_t: bool, last_t: bool) -> KResult<(MatView, bool)> {
    match shape.len() {
        0 => Err("MatMul operands must have rank >= 1".into()),
        1 => {
            let k = shape[0];
            Ok((
                if is_a {
                    MatView {
                        batch: vec![],
                        bstrides: vec![],
                        rows: 1,
                        cols: k,
                        rs: k,
                        cs: 1,
                    }
                } else {
                    MatView {
                        batch: vec![],
                        bstrides: vec![],
                        rows: k,
                        cols: 1,
                        rs: 1,
                        cs: 1,
                    }
                },
                true,
            ))
        }
        r => {
            let mut v = MatView::of_shape(shape, false);
            if batch_t && r >= 3 {
                // [d0, d1.., d_{r-1}] read as [d1.., d0, d_{r-1}].
                let st = strides(shape);
                v = MatView {
                    batch: shape[1..r - 1].to_vec(),
                    bstrides: st[1..r - 1].to_vec(),
                    rows: shape[0],
                    cols: shape[r - 1],
                    rs: st[0],
                    cs: 1,
                };
            }
            if last_t {
                std::mem::swap(&mut v.rows, &mut v.cols);
                std::mem::swap(&mut v.rs, &mut v.cs);
            }
            Ok((v, false))
        }
    }
}

/// Views of both operands and the output shape of `A @ B` (numpy rules).
pub(crate) fn matmul_views(
    ash: &[usize],
    bsh: &[usize],
    t: Trans,
) -> KResult<(MatView, MatView, Vec<usize>)> {
    let (av, a_vec) = operand(ash, true, t.batch_a, t.a)?;
    let (bv, b_vec) = operand(bsh, false, t.batch_b, t.b)?;
    let full = batched_shape(&av, &bv)
        .map_err(|e| KernelError::Invalid(format!("MatMul of {ash:?} and {bsh:?}: {e}")))?;
    let r = full.len();
    let mut out = full[..r - 2].to_vec();
    if !a_vec {
        out.push(full[r - 2]);
    }
    if !b_vec {
        out.push(full[r - 1]);
    }
    Ok((av, bv, out))
}

/// `out = A @ B` for elements `T`, computed in `T::A`.
pub(crate) fn matmul_into<T: Num>(
    a: &[T],
    av: &MatView,
    b: &[T],
    bv: &MatView,
    out: &mut [T],
) -> KResult<()>
where
    T::A: Field,
{
    let (aw, bw) = (widen(a), widen(b));
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<T::A>() {
        batched_matmul::<T::A>(&aw, av, &bw, bv, bytemuck::cast_slice_mut(out))
    } else {
        let mut tmp = vec![<T::A as Acc>::ZERO; out.len()];
        batched_matmul::<T::A>(&aw, av, &bw, bv, &mut tmp)?;
        for (o, v) in out.iter_mut().zip(tmp) {
            *o = T::from_a(v);
        }
        Ok(())
    }
}

struct MatMulK {
    t: Trans,
    alpha: f32,
}

impl Kernel for MatMulK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let a = tensor_input(inputs, 0)?;
        let b = tensor_input(inputs, 1)?;
        let dt = a.dtype();
        if b.dtype() != dt {
            return Err(KernelError::Invalid(format!(
                "MatMul of {dt} and {}",
                b.dtype()
            )));
        }
        let (av, bv, out_shape) = matmul_views(a.shape(), b.shape(), self.t)?;
        let alpha = self.alpha;
        let y = crate::with_numeric!(dt, T => {
            let (x, y) = (view::<T>(a)?, view::<T>(b)?);
            let mut res = Ok(());
            let t = cx.tensor::<T>(out_shape, |o| {
                res = matmul_into::<T>(&x, &av, &y, &bv, o);
                if alpha != 1.0 {
                    for v in o.iter_mut() {
                        *v = T::of_f64(v.as_f64() * alpha as f64);
                    }
                }
            })?;
            res?;
            t
        }, else return Err(KernelError::Unsupported(format!("MatMul of {dt} tensors"))));
        Ok(vec![y.into()])
    }
}

// ---------------------------------------------------------------------------------------------
// Gemm

struct GemmK {
    alpha: f32,
    beta: f32,
    ta: bool,
    tb: bool,
}

impl Kernel for GemmK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let a = tensor_input(inputs, 0)?;
        let b = tensor_input(inputs, 1)?;
        let c = opt_tensor_input(inputs, 2)?;
        if a.rank() != 2 || b.rank() != 2 {
            return Err(KernelError::Invalid(format!(
                "Gemm needs 2-D A and B, got {:?} and {:?}",
                a.shape(),
                b.shape()
            )));
        }
        let av = MatView::of_shape(a.shape(), self.ta);
        let bv = MatView::of_shape(b.shape(), self.tb);
        let shape = batched_shape(&av, &bv)?;
        let (m, n, k) = (av.rows, bv.cols, av.cols);
        let dt = a.dtype();
        if b.dtype() != dt {
            return Err(KernelError::Invalid(format!(
                "Gemm of {dt} and {}",
                b.dtype()
            )));
        }
        let (alpha, beta) = (self.alpha, self.beta);
        if dt == DType::F32 {
            // C broadcast (times beta) first, then the product accumulates onto it.
            let cb: Option<Vec<f32>> = match c {
                Some(c) if beta != 0.0 => Some(broadcast_param::<f32>(c, &shape, "Gemm C")?),
                _ => None,
            };
            let (x, y) = (view::<f32>(a)?, view::<f32>(b)?);
            let t = cx.tensor::<f32>(shape, |o| {
                let bt = match &cb {
                    Some(cb) => {
                        for (o, &v) in o.iter_mut().zip(cb) {
                            *o = beta * v;
                        }
                        1.0
                    }
                    None => 0.0,
                };
                gemm_f32(m, n, k, alpha, &x, av.rs, av.cs, &y, bv.rs, bv.cs, bt, o, n);
            })?;
            return Ok(vec![t.into()]);
        }
        let cb: Option<Vec<f64>> = match c {
            Some(c) if beta != 0.0 => Some(broadcast_c(c, &shape)?),
            _ => None,
        };
        let y = crate::with_numeric!(dt, T => {
            let (x, y) = (view::<T>(a)?, view::<T>(b)?);
            let mut res = Ok(());
            let t = cx.tensor::<T>(shape, |o| {
                let mut p = vec![<<T as Num>::A as Acc>::ZERO; m * n];
                res = batched_matmul(&widen(&x), &av, &widen(&y), &bv, &mut p);
                for (i, (o, v)) in o.iter_mut().zip(p).enumerate() {
                    let mut r = alpha as f64 * v.acc_f64();
                    if let Some(cb) = &cb {
                        r += beta as f64 * cb[i];
                    }
                    *o = T::of_f64(r);
                }
            })?;
            res?;
            t
        }, else return Err(KernelError::Unsupported(format!("Gemm of {dt} tensors"))));
        Ok(vec![y.into()])
    }
}

/// Gemm's C (any numeric dtype) broadcast to `[M, N]`, as f64.
fn broadcast_c(c: &Tensor, shape: &[usize]) -> KResult<Vec<f64>> {
    if c.dtype().is_float() {
        return broadcast_param::<f64>(c, shape, "Gemm C");
    }
    let v = crate::kernels::reduce::num::to_f64s(c)?;
    let t = Tensor::from_vec(c.shape().to_vec(), v)?;
    broadcast_param::<f64>(&t, shape, "Gemm C")
}

// ---------------------------------------------------------------------------------------------
// Det

struct DetK;

impl Kernel for DetK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let s = x.shape();
        let r = s.len();
        if r < 2 || s[r - 1] != s[r - 2] {
            return Err(KernelError::Invalid(format!(
                "Det needs square matrices, got shape {s:?}"
            )));
        }
        let n = s[r - 1];
        let dt = x.dtype();
        crate::with_float!(dt, T => {
            let xs = view::<T>(x)?;
            let t = cx.tensor::<T>(s[..r - 2].to_vec(), |o| {
                let mut m = vec![0f64; n * n];
                for (bi, o) in o.iter_mut().enumerate() {
                    for (d, v) in m.iter_mut().zip(&xs[bi * n * n..(bi + 1) * n * n]) {
                        *d = Real::to_f64(v.to_r());
                    }
                    *o = T::from_r(<T as Float>::R::from_f64(det(&mut m, n)));
                }
            })?;
            Ok(vec![t.into()])
        }, else Err(KernelError::Unsupported(format!("Det of {dt} tensors"))))
    }
}

/// Determinant by LU decomposition with partial pivoting (destroys `m`).
pub(crate) fn det(m: &mut [f64], n: usize) -> f64 {
    let mut d = 1.0;
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| {
                m[i * n + c]
                    .abs()
                    .partial_cmp(&m[j * n + c].abs())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .unwrap_or(c);
        if m[p * n + c] == 0.0 {
            return 0.0;
        }
        if p != c {
            for j in 0..n {
                m.swap(p * n + j, c * n + j);
            }
            d = -d;
        }
        let piv = m[c * n + c];
        d *= piv;
        for i in c + 1..n {
            let f = m[i * n + c] / piv;
            if f != 0.0 {
                for j in c..n {
                    m[i * n + j] -= f * m[c * n + j];
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_shapes_for_vectors_and_batches() {
        let t = Trans::default();
        assert_eq!(matmul_views(&[3], &[3], t).unwrap().2, Vec::<usize>::new());
        assert_eq!(matmul_views(&[3], &[2, 3, 4], t).unwrap().2, [2, 4]);
        assert_eq!(matmul_views(&[2, 5, 3], &[3], t).unwrap().2, [2, 5]);
        assert_eq!(
            matmul_views(&[1, 2, 5, 3], &[4, 1, 3, 6], t).unwrap().2,
            [4, 2, 5, 6]
        );
        assert!(matmul_views(&[2, 3], &[4, 5], t).is_err());
        // FusedMatMul: transBatchA reads [M, b, K] as [b, M, K]; transB swaps B's last dims.
        let t = Trans {
            a: false,
            b: true,
            batch_a: true,
            batch_b: false,
        };
        assert_eq!(
            matmul_views(&[5, 2, 3], &[2, 7, 3], t).unwrap().2,
            [2, 5, 7]
        );
    }

    #[test]
    fn vector_products_and_int_wraparound() {
        let (av, bv, _) = matmul_views(&[3], &[3], Trans::default()).unwrap();
        let mut o = [0i32];
        matmul_into::<i32>(&[1, 2, 3], &av, &[4, 5, 6], &bv, &mut o).unwrap();
        assert_eq!(o, [32]);
        let (av, bv, _) = matmul_views(&[1, 2], &[2, 1], Trans::default()).unwrap();
        let mut o = [0i8];
        matmul_into::<i8>(&[100, 100], &av, &[2, 1], &bv, &mut o).unwrap();
        assert_eq!(o, [(300i32 as i8)]);
        let mut o = [half::f16::ZERO];
        let h = |v: f32| half::f16::from_f32(v);
        matmul_into::<half::f16>(&[h(0.5), h(2.0)], &av, &[h(4.0), h(0.25)], &bv, &mut o).unwrap();
        assert_eq!(o[0].to_f32(), 2.5);
    }

    #[test]
    fn determinants() {
        let mut m = [1.0, 2.0, 3.0, 4.0];
        assert!((det(&mut m, 2) + 2.0).abs() < 1e-12);
        let mut m = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        assert!((det(&mut m, 3) + 3.0).abs() < 1e-12);
        let mut m: [f64; 0] = [];
        assert_eq!(det(&mut m, 0), 1.0);
    }
}
