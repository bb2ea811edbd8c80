//! The GEMM entry points and strided batched matmul.
//!
//! [`gemm_f32`] / [`gemm_f64`] are the one place a matrix product is computed for floats
//! (a packed SIMD GEMM replaces their bodies later, keeping the signature): operands are
//! described by row and column strides, so transposed operands need no copies.
//! Integers go through [`Field::gemm`] on their wide accumulator type (`i64`/`u64`),
//! `f16`/`bf16` through `f32`.

use std::borrow::Cow;

use crate::error::KernelError;
use crate::kernels::reduce::num::{Acc, Num, Real};
use crate::kernels::util::{broadcast_shapes, for_each_broadcast, strides};

/// Block sizes of the reference loops: a `KC × NC` panel of B (128 KiB of f32) stays in L2
/// while the rows of A stream past it.
const KC: usize = 128;
const NC: usize = 256;

/// `C = alpha · A · B + beta · C` for `m × k` A (element `(i, p)` at `a[i*rsa + p*csa]`),
/// `k × n` B (element `(p, j)` at `b[p*rsb + j*csb]`) and row-major C with leading
/// dimension `ldc`. With `beta == 0`, C is overwritten (NaNs in it do not propagate).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        if let (Some((lda, ta)), Some((ldb, tb))) = (
            ld_of(m, k, rsa, csa, a.len()),
            ld_of(k, n, rsb, csb, b.len()),
        ) {
            crate::gemm::sgemm(
                m,
                n,
                k,
                alpha,
                a,
                lda,
                ta,
                b,
                ldb,
                tb,
                beta,
                c,
                ldc,
                crate::gemm::Epilogue::NONE,
            );
            return;
        }
    }
    gemm_real(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc)
}

/// The packed GEMM's `(ld, trans)` for a `rows × cols` matrix with element `(i, j)` at
/// `i·rs + j·cs` held in a slice of `len` elements, or `None` when neither stride is unit (or
/// a stride is too small for the layout, e.g. 0 for broadcast rows).
pub(crate) fn ld_of(
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    len: usize,
) -> Option<(usize, bool)> {
    let fits = |r: usize, c: usize, ld: usize| r == 0 || c == 0 || (r - 1) * ld + c <= len;
    if (cs == 1 || cols <= 1) && (rows <= 1 || rs >= cols) {
        let ld = if rows <= 1 { cols.max(1) } else { rs };
        return fits(rows, cols, ld).then_some((ld, false));
    }
    if (rs == 1 || rows <= 1) && (cols <= 1 || cs >= rows) {
        let ld = if cols <= 1 { rows.max(1) } else { cs };
        return fits(cols, rows, ld).then_some((ld, true));
    }
    None
}

/// [`gemm_f32`] for f64.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f64(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    rsa: usize,
    csa: usize,
    b: &[f64],
    rsb: usize,
    csb: usize,
    beta: f64,
    c: &mut [f64],
    ldc: usize,
) {
    gemm_real(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc)
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn gemm_real<R: Real>(
    m: usize,
    n: usize,
    k: usize,
    alpha: R,
    a: &[R],
    rsa: usize,
    csa: usize,
    b: &[R],
    rsb: usize,
    csb: usize,
    beta: R,
    c: &mut [R],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        if beta == R::ZERO {
            row.fill(R::ZERO);
        } else if beta != R::ONE {
            row.iter_mut().for_each(|v| *v *= beta);
        }
    }
    if k == 0 {
        return;
    }
    if csb != 1 && rsb == 1 && csa == 1 {
        // B transposed (each column contiguous), A row-major: dot products.
        for i in 0..m {
            let ar = &a[i * rsa..i * rsa + k];
            for j in 0..n {
                c[i * ldc + j] += alpha * dot(ar, &b[j * csb..j * csb + k]);
            }
        }
        return;
    }
    // i-k-j over blocks of B; the inner loop runs along a row of B and of C.
    for j0 in (0..n).step_by(NC) {
        let nb = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kb = KC.min(k - p0);
            for i in 0..m {
                let crow = &mut c[i * ldc + j0..i * ldc + j0 + nb];
                for p in p0..p0 + kb {
                    let av = alpha * a[i * rsa + p * csa];
                    if csb == 1 {
                        let brow = &b[p * rsb + j0..p * rsb + j0 + nb];
                        for (cv, &bv) in crow.iter_mut().zip(brow) {
                            *cv += av * bv;
                        }
                    } else {
                        for (j, cv) in crow.iter_mut().enumerate() {
                            *cv += av * b[p * rsb + (j0 + j) * csb];
                        }
                    }
                }
            }
        }
    }
}

/// `Σ a[p]·b[p]` with 8 independent partial sums (so that it vectorizes).
#[inline]
fn dot<R: Real>(a: &[R], b: &[R]) -> R {
    let mut acc = [R::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = R::ZERO;
    for v in acc {
        s += v;
    }
    for (&x, &y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// A type matrix products are computed in: `f32`, `f64`, `i64`, `u64`.
pub(crate) trait Field: Acc + bytemuck::Pod {
    /// `C = A · B` (C overwritten), strides as in [`gemm_f32`].
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[Self],
        rsa: usize,
        csa: usize,
        b: &[Self],
        rsb: usize,
        csb: usize,
        c: &mut [Self],
        ldc: usize,
    );
}

impl Field for f32 {
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        rsa: usize,
        csa: usize,
        b: &[f32],
        rsb: usize,
        csb: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        gemm_f32(m, n, k, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, ldc)
    }
}

impl Field for f64 {
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[f64],
        rsa: usize,
        csa: usize,
        b: &[f64],
        rsb: usize,
        csb: usize,
        c: &mut [f64],
        ldc: usize,
    ) {
        gemm_f64(m, n, k, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, ldc)
    }
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn gemm(m: usize, n: usize, k: usize, a: &[$t], rsa: usize, csa: usize, b: &[$t], rsb: usize, csb: usize, c: &mut [$t], ldc: usize) {
                for i in 0..m {
                    let crow = &mut c[i * ldc..i * ldc + n];
                    crow.fill(0);
                    for p in 0..k {
                        let av = a[i * rsa + p * csa];
                        for (j, cv) in crow.iter_mut().enumerate() {
                            *cv = cv.wrapping_add(av.wrapping_mul(b[p * rsb + j * csb]));
                        }
                    }
                }
            }
        }
    )*};
}
int_field!(i64, u64);

/// The elements of `s` in their accumulator type (no copy when they already are).
pub(crate) fn widen<T: Num>(s: &[T]) -> Cow<'_, [T::A]>
where
    T::A: Field,
{
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<T::A>() {
        Cow::Borrowed(bytemuck::cast_slice(s))
    } else {
        Cow::Owned(s.iter().map(|v| v.to_a()).collect())
    }
}

/// One operand of a batched matmul: batch dims with their strides, then a `rows × cols`
/// matrix with row and column strides (all in elements).
#[derive(Clone, Debug)]
pub(crate) struct MatView {
    pub batch: Vec<usize>,
    pub bstrides: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl MatView {
    /// A row-major tensor of `shape` (rank >= 2) as a batch of matrices, optionally
    /// with the last two dims swapped.
    pub fn of_shape(shape: &[usize], trans: bool) -> MatView {
        let r = shape.len();
        let st = strides(shape);
        let (mut rows, mut cols, mut rs, mut cs) =
            (shape[r - 2], shape[r - 1], st[r - 2], st[r - 1]);
        if trans {
            std::mem::swap(&mut rows, &mut cols);
            std::mem::swap(&mut rs, &mut cs);
        }
        MatView {
            batch: shape[..r - 2].to_vec(),
            bstrides: st[..r - 2].to_vec(),
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// True when the batch is laid out row-major, matrix after matrix, each row-major.
    pub(crate) fn is_dense(&self) -> bool {
        let mat = self.rows * self.cols;
        self.cs == 1 && self.rs == self.cols && {
            let bs = strides(&self.batch);
            self.batch
                .iter()
                .zip(&self.bstrides)
                .zip(&bs)
                .all(|((&d, &s), &w)| d == 1 || s == w * mat)
        }
    }
}

/// Output shape (batch dims, rows, cols) of a batched product of `a` and `b`.
pub(crate) fn batched_shape(a: &MatView, b: &MatView) -> Result<Vec<usize>, KernelError> {
    if a.cols != b.rows {
        return Err(KernelError::Invalid(format!(
            "matmul inner dims differ: {}x{} times {}x{}",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    let mut out = broadcast_shapes(&[&a.batch, &b.batch])?;
    out.push(a.rows);
    out.push(b.cols);
    Ok(out)
}

/// Strides of `v`'s batch dims broadcast to `out_batch` (0 along broadcast dims).
pub(crate) fn batch_strides(v: &MatView, out_batch: &[usize]) -> Vec<usize> {
    let off = out_batch.len() - v.batch.len();
    (0..out_batch.len())
        .map(|i| {
            if i < off || v.batch[i - off] == 1 {
                0
            } else {
                v.bstrides[i - off]
            }
        })
        .collect()
}

/// `out = A · B` over broadcast batches; `out` is row-major `[batch.., a.rows, b.cols]`.
pub(crate) fn batched_matmul<F: Field>(
    a: &[F],
    av: &MatView,
    b: &[F],
    bv: &MatView,
    out: &mut [F],
) -> Result<(), KernelError> {
    let shape = batched_shape(av, bv)?;
    let (m, n, k) = (av.rows, bv.cols, av.cols);
    let out_batch = &shape[..shape.len() - 2];
    let nb: usize = out_batch.iter().product();
    if nb == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    let b_single = bv.batch.iter().product::<usize>() == 1;
    let a_full = av.batch.iter().product::<usize>() == nb;
    if b_single && a_full && av.is_dense() {
        // A's batches stack into one tall matrix.
        F::gemm(nb * m, n, k, a, av.rs, av.cs, b, bv.rs, bv.cs, out, n);
        return Ok(());
    }
    let st = [batch_strides(av, out_batch), batch_strides(bv, out_batch)];
    let mat = m * n;
    let mut run = |bi: usize, oa: usize, ob: usize| {
        F::gemm(
            m,
            n,
            k,
            &a[oa..],
            av.rs,
            av.cs,
            &b[ob..],
            bv.rs,
            bv.cs,
            &mut out[bi * mat..(bi + 1) * mat],
            n,
        );
    };
    if out_batch.is_empty() {
        run(0, 0, 0);
    } else {
        for_each_broadcast(out_batch, &st, |bi, o| run(bi, o[0], o[1]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn gemm_strides_alpha_beta_and_blocking() {
        let (m, n, k) = (3, 300, 140);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5) % 13) as f64 - 6.0).collect();
        let want = naive(m, n, k, &a, &b);
        let mut c = vec![1.0; m * n];
        gemm_f64(m, n, k, 2.0, &a, k, 1, &b, n, 1, 3.0, &mut c, n);
        for (g, w) in c.iter().zip(&want) {
            assert_eq!(*g, 2.0 * w + 3.0);
        }
        // Transposed B (stored n × k).
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c = vec![f64::NAN; m * n];
        gemm_f64(m, n, k, 1.0, &a, k, 1, &bt, 1, k, 0.0, &mut c, n);
        assert_eq!(c, want);
        // Transposed A (stored k × m).
        let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let mut c = vec![0.0; m * n];
        gemm_f64(m, n, k, 1.0, &at, 1, m, &b, n, 1, 0.0, &mut c, n);
        assert_eq!(c, want);
    }

    #[test]
    fn batched_matmul_broadcasts_batches() {
        // A: [2, 1, 2, 2], B: [3, 2, 1]
        let a: Vec<i64> = (0..8).collect();
        let b: Vec<i64> = (0..6).collect();
        let av = MatView::of_shape(&[2, 1, 2, 2], false);
        let bv = MatView::of_shape(&[3, 2, 1], false);
        assert_eq!(batched_shape(&av, &bv).unwrap(), [2, 3, 2, 1]);
        let mut out = vec![0i64; 12];
        batched_matmul(&a, &av, &b, &bv, &mut out).unwrap();
        let mut want = Vec::new();
        for i in 0..2 {
            for j in 0..3 {
                for r in 0..2 {
                    let ai = &a[i * 4 + r * 2..i * 4 + r * 2 + 2];
                    want.push(ai[0] * b[j * 2] + ai[1] * b[j * 2 + 1]);
                }
            }
        }
        assert_eq!(out, want);
    }
}
