//! `MatMul` (numpy semantics, every numeric dtype), `Gemm`, `com.microsoft.FusedMatMul`,
//! `com.microsoft.FusedGemm` (f32; the activation in the GEMM's store), `Det`.

use kiln_ir::{DType, Op, Tensor};

use rayon::prelude::*;

use super::gemm::{batch_strides, batched_matmul, batched_shape, ld_of, widen, Field, MatView};
use super::KResult;
use crate::error::KernelError;
use crate::gemm::{default_gemm, Activation, Epilogue, PackedB};
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::elementwise::fused::MapEpilogue;
use crate::kernels::reduce::norm::broadcast_param;
use crate::kernels::reduce::num::{view, Acc, Float, Num, Real};
use crate::kernels::util::{for_each_broadcast, strides};
use crate::value::Value;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let const_b = cx.const_inputs.get(1).copied().flatten();
    let k: Box<dyn Kernel> = match op {
        Op::MatMul(_) => Box::new(MatMulK {
            t: Trans::default(),
            alpha: 1.0,
            packed: const_b.and_then(|b| pack_const_b(b, false)),
            epi: None,
        }),
        Op::FusedMatMul(o) => Box::new(MatMulK {
            t: Trans {
                a: o.trans_a,
                b: o.trans_b,
                batch_a: o.trans_batch_a,
                batch_b: o.trans_batch_b,
            },
            alpha: o.alpha,
            packed: if o.trans_batch_b {
                None
            } else {
                const_b.and_then(|b| pack_const_b(b, o.trans_b))
            },
            epi: None,
        }),
        Op::Gemm(_) | Op::FusedGemm(_) => match gemm_kernel(op, cx, None)? {
            Ok(k) => Box::new(k),
            Err(e) => return Some(Err(e)),
        },
        Op::Det(_) => Box::new(DetK),
        _ => return None,
    };
    Some(Ok(k))
}

/// The kernel of a `Gemm` or `com.microsoft.FusedGemm` node that also runs `map` on its
/// (f32) result in the GEMM's store: lowering's fusion of a GEMM with the element-wise chain
/// that alone reads its output. `None` for any other op.
pub fn gemm_with_map(
    op: &Op,
    cx: &BuildCx,
    map: MapEpilogue,
) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    Some(gemm_kernel(op, cx, Some(map))?.map(|k| Box::new(k) as Box<dyn Kernel>))
}

/// The kernel of an f32 `MatMul` node whose store also adds `bias` (one per column of the
/// result) and then applies `act`: lowering's fusion of `MatMul(x, W)` with the
/// `BiasGelu` / `FastGelu` / `Gelu` that alone reads it, so the activation runs on each block
/// of the product while it is in cache rather than in another pass over the result. `None`
/// for any other op. A bias whose length is not the product's column count is an error when
/// the kernel runs.
pub fn matmul_with_epilogue(
    op: &Op,
    cx: &BuildCx,
    bias: Option<Vec<f32>>,
    act: Activation,
) -> Option<Box<dyn Kernel>> {
    let Op::MatMul(_) = op else { return None };
    let const_b = cx.const_inputs.get(1).copied().flatten();
    Some(Box::new(MatMulK {
        t: Trans::default(),
        alpha: 1.0,
        packed: const_b.and_then(|b| pack_const_b(b, false)),
        epi: Some(MatMulEpi { bias, act }),
    }))
}

/// What a fused `MatMul`'s store adds: `act(A·B + bias)`.
struct MatMulEpi {
    bias: Option<Vec<f32>>,
    act: Activation,
}

impl MatMulEpi {
    fn check(&self, n: usize) -> KResult<()> {
        match &self.bias {
            Some(b) if b.len() != n => Err(KernelError::Invalid(format!(
                "MatMul with a fused bias of {} values for a product of {n} columns",
                b.len()
            ))),
            _ => Ok(()),
        }
    }

    fn epilogue(&self) -> Epilogue<'_> {
        match &self.bias {
            Some(b) => Epilogue::bias(b),
            None => Epilogue::NONE,
        }
        .with_activation(self.act)
    }

    /// The same on a finished product `out` of rows `n` long (the paths that do not run
    /// through the packed GEMM).
    fn apply(&self, out: &mut [f32], n: usize) {
        if n == 0 {
            return;
        }
        for row in out.chunks_mut(n) {
            if let Some(b) = &self.bias {
                row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
            }
            crate::gemm::scalar_activate(self.act, row);
        }
    }
}

fn gemm_kernel(
    op: &Op,
    cx: &BuildCx,
    map: Option<MapEpilogue>,
) -> Option<Result<GemmK, KernelError>> {
    let const_b = cx.const_inputs.get(1).copied().flatten();
    Some(Ok(match op {
        Op::Gemm(o) => GemmK {
            alpha: o.alpha,
            beta: o.beta,
            ta: o.trans_a,
            tb: o.trans_b,
            act: None,
            packed: gemm_packed_b(const_b, o.trans_b),
            map,
        },
        Op::FusedGemm(o) => {
            // ONNX Runtime hands every `activation_*` attribute to the activation; of the
            // ones FusedGemm takes, only LeakyRelu has a parameter (default slope 0.01).
            let params: Vec<f32> = match o.activation.as_deref() {
                Some("LeakyRelu") => vec![o.activation_alpha.unwrap_or(0.01)],
                _ => vec![],
            };
            let act = match Activation::from_onnx("FusedGemm", o.activation.as_deref(), &params) {
                Ok(a) => a,
                Err(e) => return Some(Err(e)),
            };
            GemmK {
                alpha: o.alpha,
                beta: o.beta,
                ta: o.trans_a,
                tb: o.trans_b,
                act: Some(act),
                packed: gemm_packed_b(const_b, o.trans_b),
                map,
            }
        }
        _ => return None,
    }))
}

/// Gemm's `B` packed at build time when it is a constant f32 matrix.
fn gemm_packed_b(b: Option<&Tensor>, trans: bool) -> Option<ConstB> {
    b.filter(|b| b.rank() == 2)
        .and_then(|b| pack_const_b(b, trans))
}

/// A constant f32 `B` of rank ≥ 2 whose batch dims are all 1, packed once for the default GEMM
/// (`op(B)` is the last two dims, transposed when `trans`), with the shape it was packed from.
struct ConstB {
    shape: Vec<usize>,
    b: PackedB,
}

fn pack_const_b(b: &Tensor, trans: bool) -> Option<ConstB> {
    let sh = b.shape();
    let r = sh.len();
    if b.dtype() != DType::F32 || r < 2 || sh[..r - 2].iter().any(|&d| d != 1) {
        return None;
    }
    let data = b.as_slice::<f32>()?;
    let (rows, cols) = (sh[r - 2], sh[r - 1]);
    let (k, n) = if trans { (cols, rows) } else { (rows, cols) };
    let packed = PackedB::new(k, n, data, cols, trans);
    // The packed copy is what runs: a mapped weight's pages need not stay resident too.
    b.release_pages();
    Some(ConstB {
        shape: sh.to_vec(),
        b: packed,
    })
}

/// `out = alpha · A @ B` over broadcast batches for f32, through the packed GEMM: one tall
/// GEMM when A's batches stack, else one GEMM per batch (spread over threads when there are
/// enough of them).
pub(crate) fn matmul_f32(
    a: &[f32],
    av: &MatView,
    b: &[f32],
    bv: &MatView,
    alpha: f32,
    out: &mut [f32],
) -> KResult<()> {
    let shape = batched_shape(av, bv)?;
    let (m, n, k) = (av.rows, bv.cols, av.cols);
    let out_batch = &shape[..shape.len() - 2];
    let nb: usize = out_batch.iter().product();
    if nb == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    let mat = m * n;
    if k == 0 {
        out[..nb * mat].fill(0.0);
        return Ok(());
    }
    let (Some((lda, ta)), Some((ldb, tb))) = (
        ld_of(m, k, av.rs, av.cs, usize::MAX),
        ld_of(k, n, bv.rs, bv.cs, usize::MAX),
    ) else {
        // Neither stride unit (not produced by MatMul's own views): the reference loops,
        // which accumulate into `out`.
        out.fill(0.0);
        batched_matmul::<f32>(a, av, b, bv, out)?;
        if alpha != 1.0 {
            out.iter_mut().for_each(|v| *v *= alpha);
        }
        return Ok(());
    };
    let g = default_gemm();
    let b_single = bv.batch.iter().product::<usize>() == 1;
    let a_full = av.batch.iter().product::<usize>() == nb;
    if b_single && a_full && av.is_dense() {
        g.sgemm(
            nb * m,
            n,
            k,
            alpha,
            a,
            k,
            false,
            b,
            ldb,
            tb,
            0.0,
            out,
            n,
            Epilogue::NONE,
        );
        return Ok(());
    }
    let mut offs = Vec::with_capacity(nb);
    if out_batch.is_empty() {
        offs.push((0, 0));
    } else {
        let st = [batch_strides(av, out_batch), batch_strides(bv, out_batch)];
        for_each_broadcast(out_batch, &st, |_, o| offs.push((o[0], o[1])));
    }
    let threads = rayon::current_num_threads();
    let one = |g: &crate::gemm::Gemm, c: &mut [f32], (oa, ob): (usize, usize)| {
        g.sgemm(
            m,
            n,
            k,
            alpha,
            &a[oa..],
            lda,
            ta,
            &b[ob..],
            ldb,
            tb,
            0.0,
            c,
            n,
            Epilogue::NONE,
        )
    };
    if threads > 1 && nb >= threads && 2 * m * n * k * nb >= 1 << 18 {
        let g1 = g.with_threads(1);
        out[..nb * mat]
            .par_chunks_mut(mat)
            .zip(offs.par_iter())
            .with_max_len(1)
            .for_each(|(c, &o)| one(&g1, c, o));
    } else {
        for (c, &o) in out[..nb * mat].chunks_mut(mat).zip(&offs) {
            one(g, c, o);
        }
    }
    Ok(())
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
    /// B when it is a constant f32 matrix, packed at build time.
    packed: Option<ConstB>,
    /// Bias and activation fused into the store (f32 only).
    epi: Option<MatMulEpi>,
}

impl MatMulK {
    /// `A @ packed B` when A is f32, not transposed within its batch, and stacks into one
    /// row-major matrix; `None` when the packed B does not apply.
    fn run_packed(
        &self,
        a: &Tensor,
        b: &Tensor,
        (av, bv, out_shape): (&MatView, &MatView, &[usize]),
        cx: &mut RunCx,
    ) -> Option<KResult<Tensor>> {
        let pb = self.packed.as_ref()?;
        if a.dtype() != DType::F32 || b.dtype() != DType::F32 || b.shape() != pb.shape {
            return None;
        }
        if self.t.a || !av.is_dense() || bv.rows != pb.b.k() || bv.cols != pb.b.n() {
            return None;
        }
        let x = a.as_slice::<f32>()?;
        let rows: usize = av.rows * av.batch.iter().product::<usize>();
        let (alpha, k) = (self.alpha, av.cols);
        let epi = self
            .epi
            .as_ref()
            .map_or(Epilogue::NONE, MatMulEpi::epilogue);
        // beta = 0: the GEMM writes every element without reading it.
        Some(cx.tensor_dirty::<f32>(out_shape.to_vec(), |o| {
            default_gemm().sgemm_packed(
                rows,
                alpha,
                x,
                k.max(1),
                false,
                &pb.b,
                0.0,
                o,
                pb.b.n().max(1),
                epi,
            )
        }))
    }
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
        if let Some(epi) = &self.epi {
            if dt != DType::F32 {
                return Err(KernelError::Unsupported(format!(
                    "MatMul with a fused bias or activation of {dt} tensors (f32 only)"
                )));
            }
            epi.check(bv.cols)?;
        }
        if let Some(r) = self.run_packed(a, b, (&av, &bv, &out_shape), cx) {
            return Ok(vec![r?.into()]);
        }
        let alpha = self.alpha;
        if dt == DType::F32 {
            let (x, y) = (view::<f32>(a)?, view::<f32>(b)?);
            let mut res = Ok(());
            // matmul_f32 writes every element.
            let t = cx.tensor_dirty::<f32>(out_shape, |o| {
                res = matmul_f32(&x, &av, &y, &bv, alpha, o);
                if let (Ok(()), Some(epi)) = (&res, &self.epi) {
                    epi.apply(o, bv.cols);
                }
            })?;
            res?;
            return Ok(vec![t.into()]);
        }
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
    /// `FusedGemm`'s activation (`None` for Gemm).
    act: Option<Activation>,
    /// B when it is a constant f32 matrix, packed at build time.
    packed: Option<ConstB>,
    /// An element-wise chain fused into the store (f32 only).
    map: Option<MapEpilogue>,
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
            let c = c.filter(|_| beta != 0.0);
            // A C that is one row (`[N]`, `[1, N]`) is the epilogue's bias (times beta);
            // any other C is broadcast into the output first and accumulated with beta.
            let row_c = c.filter(|c| {
                c.shape().iter().product::<usize>() == n && {
                    let s = c.shape();
                    s.len() <= 1 && s.first().is_none_or(|&d| d == n)
                        || s.len() == 2 && s[0] == 1 && s[1] == n
                }
            });
            let bias: Option<Vec<f32>> = match row_c {
                Some(c) if n > 0 && c.rank() > 0 => {
                    let v = view::<f32>(c)?;
                    Some(v.iter().map(|&x| beta * x).collect())
                }
                _ => None,
            };
            let cb: Option<Vec<f32>> = match c {
                Some(c) if bias.is_none() => Some(broadcast_param::<f32>(c, &shape, "Gemm C")?),
                _ => None,
            };
            let epi = match &bias {
                Some(b) => Epilogue::bias(b),
                None => Epilogue::NONE,
            }
            .with_activation(self.act.unwrap_or_default());
            let epi = match &self.map {
                Some(map) => epi.with_map(map),
                None => epi,
            };
            let x = view::<f32>(a)?;
            let (lda, ldn) = (a.shape()[1].max(1), n.max(1));
            let packed = self
                .packed
                .as_ref()
                .filter(|p| p.shape == b.shape() && p.b.k() == k && p.b.n() == n);
            let y = if packed.is_none() {
                Some(view::<f32>(b)?)
            } else {
                None
            };
            // Either C is copied in first or beta = 0: every element is written.
            let t = cx.tensor_dirty::<f32>(shape, |o| {
                let bt = match &cb {
                    Some(cb) => {
                        o.copy_from_slice(cb);
                        beta
                    }
                    None => 0.0,
                };
                if m == 0 || n == 0 {
                    return;
                }
                if let Some(p) = packed {
                    default_gemm().sgemm_packed(m, alpha, &x, lda, self.ta, &p.b, bt, o, ldn, epi);
                } else if let Some(y) = &y {
                    let ldb = b.shape()[1].max(1);
                    default_gemm().sgemm(
                        m, n, k, alpha, &x, lda, self.ta, y, ldb, self.tb, bt, o, ldn, epi,
                    );
                }
            })?;
            return Ok(vec![t.into()]);
        }
        if self.act.is_some() || self.map.is_some() {
            return Err(KernelError::Unsupported(format!(
                "FusedGemm or a GEMM with a fused epilogue of {dt} tensors (f32 only)"
            )));
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
