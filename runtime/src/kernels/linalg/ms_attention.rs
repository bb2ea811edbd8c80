//! ONNX Runtime's contrib attention ops: `com.microsoft.Attention` (packed QKV projection +
//! multi-head attention, BERT/GPT-2 style masks, past/present) and
//! `com.microsoft.MultiHeadAttention` (already-projected Q/K/V, packed forms, key padding
//! masks, attention bias, past/present). Masked positions get `mask_filter_value`
//! (default -10000) added, as ONNX Runtime does. Computed in f32 (f64 for f64).
//!
//! The f32 computation ([`attend_f32`]) runs on the packed GEMM: per (batch, head), scores
//! `scale·Q·Kᵀ` read Q and K in place (strided heads of the projection), the masks are
//! added, the vectorized softmax runs in place, and `P·V` reads V in place; heads are spread
//! over threads, each with a single-threaded GEMM. `com.microsoft.Attention` on f32 also
//! projects through a QKV weight packed once at build time, with the bias in the GEMM's
//! epilogue. f16/bf16, which compute in f32, share the core; f64 keeps the straightforward
//! loops of [`attend`].

use kiln_ir::{DType, Op, Tensor};
use rayon::prelude::*;
use std::any::Any;

use super::gemm::Field;
use super::KResult;
use crate::error::KernelError;
use crate::gemm::vmath::{RowArg, RowOp};
use crate::gemm::{default_gemm, vmath, AOperand, BOperand, Epilogue, Gemm, PackedB};
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::par::OutPtr;
use crate::kernels::reduce::num::{f32s, ints, to_reals, view, Float, Real};
use crate::kernels::reduce::softmax::{softmax_row, Kind};
use crate::value::Value;

const DEFAULT_FILTER: f32 = -10000.0;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let n_out = cx.output_types.len().max(1);
    let k: Box<dyn Kernel> = match op {
        Op::MsAttention(o) => {
            if o.past_present_share_buffer {
                return Some(Err(KernelError::Unsupported(
                    "Attention with past_present_share_buffer".into(),
                )));
            }
            if o.do_rotary {
                return Some(Err(KernelError::Unsupported(
                    "Attention with do_rotary".into(),
                )));
            }
            Box::new(MsAttentionK {
                heads: o.num_heads,
                causal: o.unidirectional,
                qkv: o.qkv_hidden_sizes.clone(),
                filter: o.mask_filter_value.unwrap_or(DEFAULT_FILTER),
                scale: o.scale,
                n_out,
                packed: cx
                    .const_inputs
                    .get(1)
                    .copied()
                    .flatten()
                    .and_then(pack_weights),
            })
        }
        Op::MultiHeadAttention(o) => Box::new(MhaK {
            heads: o.num_heads,
            causal: o.unidirectional,
            filter: o.mask_filter_value.unwrap_or(DEFAULT_FILTER),
            scale: o.scale,
            n_out,
        }),
        _ => return None,
    };
    Some(Ok(k))
}

/// A constant f32 `[D, 3·hidden]` QKV weight, packed for the default GEMM.
fn pack_weights(w: &Tensor) -> Option<PackedB> {
    let [k, n] = w.shape()[..] else { return None };
    if w.dtype() != DType::F32 || k == 0 || n == 0 {
        return None;
    }
    let packed = PackedB::new(k, n, w.as_slice::<f32>()?, n, false);
    // The packed copy is what runs: a mapped weight's pages need not stay resident too.
    w.release_pages();
    Some(packed)
}

/// Heads laid out `[B, N, L, H]` contiguously.
struct Heads<R> {
    data: Vec<R>,
    len: usize,
    size: usize,
}

/// Additive masks of one attention: per (b, i, j) (key padding, causal …) and per
/// (b, n, i, j) (attention_bias, broadcast over batch and heads).
struct Bias<R> {
    /// `[B, S, T]`.
    mask: Option<Vec<R>>,
    /// Values and (batch, head) strides; rows are `[S, T]`.
    attn: Option<(Vec<R>, usize, usize)>,
}

/// Scaled dot-product attention of every head; returns `[B, S, N*Hv]` and, when asked, the
/// scaled scores `[B, N, S, T]`.
#[allow(clippy::too_many_arguments)]
fn attend<R: Real + Field>(
    b: usize,
    n: usize,
    s: usize,
    q: &Heads<R>,
    k: &Heads<R>,
    v: &Heads<R>,
    scale: R,
    bias: &Bias<R>,
    want_qk: bool,
) -> (Vec<R>, Vec<R>) {
    let (t, h, hv) = (k.len, q.size, v.size);
    let mut out = vec![<R as Real>::ZERO; b * s * n * hv];
    let mut qk = if want_qk {
        vec![<R as Real>::ZERO; b * n * s * t]
    } else {
        Vec::new()
    };
    let mut scores = vec![<R as Real>::ZERO; s * t];
    let mut y = vec![<R as Real>::ZERO; s * hv];
    for bi in 0..b {
        for ni in 0..n {
            let bn = bi * n + ni;
            let qm = &q.data[bn * s * h..(bn + 1) * s * h];
            let km = &k.data[bn * t * h..(bn + 1) * t * h];
            <R as Field>::gemm(s, t, h, qm, h, 1, km, 1, h, &mut scores, t);
            for i in 0..s {
                let row = &mut scores[i * t..(i + 1) * t];
                for v in row.iter_mut() {
                    *v *= scale;
                }
                if want_qk {
                    qk[(bn * s + i) * t..(bn * s + i + 1) * t].copy_from_slice(row);
                }
                if let Some(m) = &bias.mask {
                    let mr = &m[(bi * s + i) * t..(bi * s + i + 1) * t];
                    row.iter_mut().zip(mr).for_each(|(v, &m)| *v += m);
                }
                if let Some((a, sb, sn)) = &bias.attn {
                    let off = bi * sb + ni * sn + i * t;
                    row.iter_mut()
                        .zip(&a[off..off + t])
                        .for_each(|(v, &m)| *v += m);
                }
                softmax_row(row, Kind::Softmax);
            }
            let vm = &v.data[bn * t * hv..(bn + 1) * t * hv];
            <R as Field>::gemm(s, hv, t, &scores, t, 1, vm, hv, 1, &mut y, hv);
            for i in 0..s {
                let dst = (bi * s + i) * n * hv + ni * hv;
                out[dst..dst + hv].copy_from_slice(&y[i * hv..(i + 1) * hv]);
            }
        }
    }
    (out, qk)
}

/// The `[L, H]` matrices of the heads of a batch, wherever they lie: row `l` of head
/// `(bi, ni)` starts at `data[bi·batch + ni·head + l·ld]`.
#[derive(Clone, Copy)]
struct HeadsView<'a> {
    data: &'a [f32],
    batch: usize,
    head: usize,
    ld: usize,
    len: usize,
    size: usize,
}

impl<'a> HeadsView<'a> {
    /// Contiguous `[B, N, L, H]` heads.
    fn dense(data: &'a [f32], n: usize, len: usize, size: usize) -> Self {
        HeadsView {
            data,
            batch: n * len * size,
            head: len * size,
            ld: size.max(1),
            len,
            size,
        }
    }

    /// Heads `[B, L, N, H]` at `offset` within the rows (`stride` long) of a `[B, L, ·]`
    /// projection.
    fn rows(data: &'a [f32], offset: usize, stride: usize, len: usize, size: usize) -> Self {
        HeadsView {
            data: &data[offset.min(data.len())..],
            batch: len * stride,
            head: size,
            ld: stride.max(1),
            len,
            size,
        }
    }

    fn at(&self, bi: usize, ni: usize) -> &'a [f32] {
        &self.data[(bi * self.batch + ni * self.head).min(self.data.len())..]
    }

    /// The heads copied out as `[B, N, L, H]` into `out`.
    fn copy_to(&self, b: usize, n: usize, out: &mut [f32]) {
        let (l, h) = (self.len, self.size);
        for bi in 0..b {
            for ni in 0..n {
                let src = self.at(bi, ni);
                for li in 0..l {
                    let dst = ((bi * n + ni) * l + li) * h;
                    out[dst..dst + h].copy_from_slice(&src[li * self.ld..li * self.ld + h]);
                }
            }
        }
    }
}

/// The additive masks of [`Bias`] borrowed as f32.
struct BiasF32<'a> {
    mask: Option<&'a [f32]>,
    attn: Option<(&'a [f32], usize, usize)>,
}

/// [`attend`] in f32 on the packed GEMM (see the module doc), into `out` (`[B, S, N·Hv]`)
/// and, when given, `qk` (the scaled scores, `[B, N, S, T]`).
#[allow(clippy::too_many_arguments)]
fn attend_f32(
    b: usize,
    n: usize,
    s: usize,
    q: HeadsView,
    k: HeadsView,
    v: HeadsView,
    scale: f32,
    bias: &BiasF32,
    out: &mut [f32],
    qk: Option<&mut [f32]>,
) {
    let (t, h, hv) = (k.len, q.size, v.size);
    let ld_out = n * hv;
    assert!(
        out.len() >= b * s * ld_out,
        "attention: output of {} elements for [{b}, {s}, {ld_out}]",
        out.len()
    );
    if let Some(qk) = qk.as_deref() {
        assert!(
            qk.len() >= b * n * s * t,
            "attention: scores buffer too small"
        );
    }
    // Each head writes its `[S, Hv]` result straight into its columns of `out` (rows
    // `n·Hv` apart) and its scaled scores into its block of `qk`: the heads' rows
    // interleave, so they are written through pointers (disjoint by construction).
    let (out_p, qk_p) = (OutPtr(out.as_mut_ptr()), qk.map(|q| OutPtr(q.as_mut_ptr())));
    // One head: scores, masks, softmax, times V. `scores` is the caller's scratch.
    let head = |g: &Gemm, bn: usize, scores: &mut Vec<f32>| {
        let (bi, ni) = (bn / n, bn % n);
        let y0 = bi * s * ld_out + ni * hv;
        if t == 0 || s == 0 || hv == 0 {
            // No keys: every weighted sum is empty.
            for i in 0..s {
                // SAFETY: row `i` of this head's block of `out`, in bounds (checked above)
                // and written by this head only.
                unsafe { std::ptr::write_bytes(out_p.at(y0 + i * ld_out), 0, hv) };
            }
            return;
        }
        // Not cleared: the GEMM (beta = 0) overwrites every score.
        scores.resize(s * t, 0.0);
        g.sgemm(
            s,
            t,
            h,
            scale,
            q.at(bi, ni),
            q.ld,
            false,
            k.at(bi, ni),
            k.ld,
            true,
            0.0,
            scores,
            t,
            Epilogue::NONE,
        );
        if let Some(qk) = qk_p {
            // SAFETY: this head's contiguous block of `qk`, in bounds (checked above) and
            // written by this head only.
            unsafe { std::ptr::copy_nonoverlapping(scores.as_ptr(), qk.at(bn * s * t), s * t) };
        }
        // The masks are added row by row in the softmax's loop, while each row is in L1.
        let mut adds = Vec::with_capacity(2);
        if let Some(m) = bias.mask {
            let m = &m[bi * s * t..(bi + 1) * s * t];
            adds.push((RowOp::Add, RowArg::Rows { data: m, stride: t }));
        }
        if let Some((a, sb, sn)) = bias.attn {
            let off = bi * sb + ni * sn;
            let a = &a[off..off + s * t];
            adds.push((RowOp::Add, RowArg::Rows { data: a, stride: t }));
        }
        vmath::softmax_rows_fused(scores, t, &adds, None);
        // SAFETY: the `s × hv` block at `y0` with rows `ld_out` apart lies in `out` (checked
        // above: `y0 + (s-1)·ld_out + hv <= b·s·ld_out`) and is this head's alone.
        unsafe {
            g.sgemm_ops_raw(
                s,
                hv,
                t,
                1.0,
                AOperand::Matrix {
                    a: scores,
                    lda: t,
                    trans: false,
                },
                BOperand::Matrix {
                    b: v.at(bi, ni),
                    ldb: v.ld,
                    trans: false,
                },
                0.0,
                out_p.at(y0),
                ld_out,
                Epilogue::NONE,
            )
        };
    };
    let g = default_gemm();
    let threads = rayon::current_num_threads();
    // Enough heads for every thread: heads in parallel, each GEMM on one thread (a GEMM
    // that splits itself inside a parallel loop only adds overhead). Otherwise heads in
    // turn, each GEMM on every thread.
    if threads > 1 && b * n >= threads {
        let g1 = g.with_threads(1);
        (0..b * n)
            .into_par_iter()
            .with_max_len(1)
            .for_each_init(Vec::new, |scores, bn| head(&g1, bn, scores));
    } else {
        let mut scores = Vec::new();
        (0..b * n).for_each(|bn| head(g, bn, &mut scores));
    }
}

/// `v` as `Vec<f32>` when `R` is f32.
#[allow(clippy::ptr_arg)]
fn as_f32<R: 'static>(v: &Vec<R>) -> Option<&Vec<f32>> {
    (v as &dyn Any).downcast_ref::<Vec<f32>>()
}

/// [`attend`], through [`attend_f32`] when `R` is f32.
#[allow(clippy::too_many_arguments)]
fn attend_any<R: Real + Field>(
    b: usize,
    n: usize,
    s: usize,
    q: &Heads<R>,
    k: &Heads<R>,
    v: &Heads<R>,
    scale: R,
    bias: &Bias<R>,
    want_qk: bool,
) -> (Vec<R>, Vec<R>) {
    let (Some(qd), Some(kd), Some(vd)) = (as_f32(&q.data), as_f32(&k.data), as_f32(&v.data)) else {
        return attend(b, n, s, q, k, v, scale, bias, want_qk);
    };
    let bf = BiasF32 {
        mask: bias.mask.as_ref().and_then(as_f32).map(|m| &m[..]),
        attn: bias
            .attn
            .as_ref()
            .and_then(|(a, sb, sn)| as_f32(a).map(|a| (&a[..], *sb, *sn))),
    };
    let t = k.len;
    let mut out = vec![0f32; b * s * n * v.size];
    let mut qk = vec![0f32; if want_qk { b * n * s * t } else { 0 }];
    attend_f32(
        b,
        n,
        s,
        HeadsView::dense(qd, n, s, q.size),
        HeadsView::dense(kd, n, t, k.size),
        HeadsView::dense(vd, n, t, v.size),
        scale.to_f64() as f32,
        &bf,
        &mut out,
        want_qk.then_some(&mut qk[..]),
    );
    let back = |x: Vec<f32>| x.into_iter().map(|v| R::from_f64(v as f64)).collect();
    (back(out), back(qk))
}

/// `[B, L, N*H]` rows (at `offset` within rows of `stride`) split into heads `[B, N, L, H]`,
/// plus `bias[offset..]` when given.
#[allow(clippy::too_many_arguments)]
fn split_heads<R: Real>(
    src: &[R],
    b: usize,
    l: usize,
    n: usize,
    h: usize,
    stride: usize,
    offset: usize,
    bias: Option<&[R]>,
) -> Vec<R> {
    let mut out = vec![<R as Real>::ZERO; b * n * l * h];
    for bi in 0..b {
        for li in 0..l {
            let row = &src[(bi * l + li) * stride + offset..];
            for ni in 0..n {
                let dst = ((bi * n + ni) * l + li) * h;
                for e in 0..h {
                    let mut v = row[ni * h + e];
                    if let Some(bs) = bias {
                        v += bs[offset + ni * h + e];
                    }
                    out[dst + e] = v;
                }
            }
        }
    }
    out
}

/// Past `[B, N, P, H]` followed by new `[B, N, L, H]`.
fn concat_heads<R: Real>(
    past: Option<&[R]>,
    p: usize,
    new: &Heads<R>,
    b: usize,
    n: usize,
) -> Heads<R> {
    let Some(past) = past else {
        return Heads {
            data: new.data.clone(),
            len: new.len,
            size: new.size,
        };
    };
    let (l, h) = (new.len, new.size);
    let t = p + l;
    let mut data = vec![<R as Real>::ZERO; b * n * t * h];
    for bn in 0..b * n {
        data[bn * t * h..bn * t * h + p * h].copy_from_slice(&past[bn * p * h..(bn + 1) * p * h]);
        data[bn * t * h + p * h..(bn + 1) * t * h]
            .copy_from_slice(&new.data[bn * l * h..(bn + 1) * l * h]);
    }
    Heads {
        data,
        len: t,
        size: h,
    }
}

/// Builds the `[B, S, T]` additive mask from an ORT mask (index or raw form) and the causal flag.
#[allow(clippy::too_many_arguments)]
fn build_mask<R: Real>(
    mask: Option<&Tensor>,
    b: usize,
    s: usize,
    t: usize,
    past: usize,
    causal: bool,
    filter: f32,
) -> KResult<Option<Vec<R>>> {
    if mask.is_none() && !causal {
        return Ok(None);
    }
    let fv = R::from_f64(filter as f64);
    let mut m = vec![<R as Real>::ZERO; b * s * t];
    if let Some(mt) = mask {
        let v = ints(mt, "mask")?;
        let sh = mt.shape();
        match sh.len() {
            1 if v.len() == b => {
                for bi in 0..b {
                    for i in 0..s {
                        for j in (v[bi].max(0) as usize).min(t)..t {
                            m[(bi * s + i) * t + j] = fv;
                        }
                    }
                }
            }
            1 if v.len() == 2 * b => {
                for bi in 0..b {
                    let (end, start) = (v[bi], v[b + bi]);
                    for i in 0..s {
                        for j in 0..t {
                            if j as i64 >= end || (j as i64) < start {
                                m[(bi * s + i) * t + j] = fv;
                            }
                        }
                    }
                }
            }
            2 if sh == [b, t] => {
                for bi in 0..b {
                    for i in 0..s {
                        for j in 0..t {
                            if v[bi * t + j] == 0 {
                                m[(bi * s + i) * t + j] = fv;
                            }
                        }
                    }
                }
            }
            3 if sh == [b, s, t] => {
                for (mv, &x) in m.iter_mut().zip(&v) {
                    if x == 0 {
                        *mv = fv;
                    }
                }
            }
            4 if sh[0] == b && sh[1] == 1 && sh[2] >= past + s && sh[3] >= t => {
                let mx = sh[3];
                for bi in 0..b {
                    for i in 0..s {
                        for j in 0..t {
                            if v[(bi * sh[2] + past + i) * mx + j] == 0 {
                                m[(bi * s + i) * t + j] = fv;
                            }
                        }
                    }
                }
            }
            _ => {
                return Err(KernelError::Unsupported(format!(
                    "attention mask of shape {sh:?}"
                )))
            }
        }
    }
    if causal {
        for bi in 0..b {
            for i in 0..s {
                for j in past + i + 1..t {
                    m[(bi * s + i) * t + j] += fv;
                }
            }
        }
    }
    Ok(Some(m))
}

/// `attention_bias` `[B|1, N|1, S, T]` as values and (batch, head) strides.
fn attn_bias<R: Real>(
    t: Option<&Tensor>,
    b: usize,
    n: usize,
    s: usize,
    tl: usize,
) -> KResult<Option<(Vec<R>, usize, usize)>> {
    let Some(t) = t else { return Ok(None) };
    let (sb, sn) = attn_bias_strides(t, b, n, s, tl)?;
    Ok(Some((to_reals::<R>(t)?, sb, sn)))
}

/// The (batch, head) strides of an `attention_bias` `[B|1, N|1, S, T]`, checked.
fn attn_bias_strides(
    t: &Tensor,
    b: usize,
    n: usize,
    s: usize,
    tl: usize,
) -> KResult<(usize, usize)> {
    let sh = t.shape();
    if sh.len() != 4
        || (sh[0] != b && sh[0] != 1)
        || (sh[1] != n && sh[1] != 1)
        || sh[2] != s
        || sh[3] != tl
    {
        return Err(KernelError::Invalid(format!(
            "attention_bias of shape {sh:?}, expected [{b}|1, {n}|1, {s}, {tl}]"
        )));
    }
    let sn = if sh[1] == 1 { 0 } else { s * tl };
    let sb = if sh[0] == 1 { 0 } else { sh[1] * s * tl };
    Ok((sb, sn))
}

fn out_tensor<T: Float>(cx: &mut RunCx, shape: Vec<usize>, vals: &[T::R]) -> KResult<Value> {
    Ok(cx
        .tensor::<T>(shape, |o| {
            o.iter_mut().zip(vals).for_each(|(o, &v)| *o = T::from_r(v))
        })?
        .into())
}

// ---------------------------------------------------------------------------------------------
// com.microsoft.Attention

struct MsAttentionK {
    heads: i64,
    causal: bool,
    qkv: Option<Vec<i64>>,
    filter: f32,
    scale: Option<f32>,
    n_out: usize,
    /// The QKV weight when it is a constant f32 matrix, packed at build time.
    packed: Option<PackedB>,
}

impl Kernel for MsAttentionK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        if dt == DType::F32 {
            return self.run_f32(inputs, cx);
        }
        crate::with_float!(dt, T => self.run_t::<T>(inputs, cx), else Err(KernelError::Unsupported(format!("Attention of {dt}"))))
    }
}

/// Sizes of one `com.microsoft.Attention`.
struct Dims {
    b: usize,
    s: usize,
    din: usize,
    /// Weight columns: `dq + dk + dv`.
    wc: usize,
    dq: usize,
    dk: usize,
    dv: usize,
    n: usize,
}

impl MsAttentionK {
    fn dims(&self, x: &Tensor, w: &Tensor) -> KResult<Dims> {
        let [b, s, din] = x.shape()[..] else {
            return Err(KernelError::Invalid(format!(
                "Attention input must be 3-D, got {:?}",
                x.shape()
            )));
        };
        let [wr, wc] = w.shape()[..] else {
            return Err(KernelError::Invalid(format!(
                "Attention weights must be 2-D, got {:?}",
                w.shape()
            )));
        };
        if wr != din {
            return Err(KernelError::Invalid(format!(
                "Attention weights {:?} for input {:?}",
                w.shape(),
                x.shape()
            )));
        }
        let (dq, dk, dv) = match self.qkv.as_deref() {
            Some(&[q, k, v]) => (q as usize, k as usize, v as usize),
            Some(o) => return Err(KernelError::Invalid(format!("qkv_hidden_sizes {o:?}"))),
            None => (wc / 3, wc / 3, wc / 3),
        };
        let n = self.heads.max(1) as usize;
        if dq + dk + dv != wc || dq != dk || dq % n != 0 || dv % n != 0 {
            return Err(KernelError::Invalid(format!(
                "Attention hidden sizes {dq}/{dk}/{dv} for {wc} weight columns and {n} heads"
            )));
        }
        Ok(Dims {
            b,
            s,
            din,
            wc,
            dq,
            dk,
            dv,
            n,
        })
    }

    /// The softmax scale: the attribute, else `1/√head_size`.
    fn scale_for(&self, h: usize) -> f64 {
        self.scale
            .map(|s| s as f64)
            .unwrap_or(1.0 / (h as f64).sqrt())
    }

    /// f32: the projection through the packed weight (bias in the epilogue), Q/K/V read in
    /// place from it unless there is a past state to prepend.
    fn run_f32(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let w = tensor_input(inputs, 1)?;
        let bias = opt_tensor_input(inputs, 2)?;
        let mask = opt_tensor_input(inputs, 3)?;
        let past = opt_tensor_input(inputs, 4)?;
        let ab = opt_tensor_input(inputs, 5)?;
        let Dims {
            b,
            s,
            din,
            wc,
            dq,
            dk,
            dv,
            n,
        } = self.dims(x, w)?;
        let (h, hv) = (dq / n, dv / n);
        let bs = match bias {
            Some(t) if t.len() == wc => Some(f32s(t)?),
            Some(t) => {
                return Err(KernelError::Invalid(format!(
                    "Attention bias of shape {:?}",
                    t.shape()
                )))
            }
            None => None,
        };
        let xs = view::<f32>(x)?;
        let rows = b * s;
        let packed = self
            .packed
            .as_ref()
            .filter(|p| w.dtype() == DType::F32 && p.k() == din && p.n() == wc);
        let ws = if packed.is_none() {
            Some(f32s(w)?)
        } else {
            None
        };
        // On a pooled buffer, not a fresh zeroed one: the GEMM (beta = 0) writes every element.
        let qkv_t = cx.tensor_dirty::<f32>(vec![rows, wc], |qkv| {
            if rows == 0 || wc == 0 {
                return;
            }
            let epi = bs.as_deref().map_or(Epilogue::NONE, Epilogue::bias);
            match packed {
                Some(p) => default_gemm().sgemm_packed(
                    rows,
                    1.0,
                    &xs,
                    din.max(1),
                    false,
                    p,
                    0.0,
                    qkv,
                    wc,
                    epi,
                ),
                None => {
                    if let Some(ws) = &ws {
                        default_gemm().sgemm(
                            rows,
                            wc,
                            din,
                            1.0,
                            &xs,
                            din.max(1),
                            false,
                            ws,
                            wc,
                            false,
                            0.0,
                            qkv,
                            wc,
                            epi,
                        )
                    }
                }
            }
        })?;
        let qkv = qkv_t.as_slice::<f32>().unwrap_or_default();
        // With a past state K and V are [past; new] per head, copied; else views of qkv.
        let (kv, p) = match past {
            Some(t) => {
                let sh = t.shape();
                if sh.len() != 5 || sh[0] != 2 || sh[1] != b || sh[2] != n || sh[4] != h || h != hv
                {
                    return Err(KernelError::Invalid(format!(
                        "Attention past of shape {sh:?}"
                    )));
                }
                let pvals = f32s(t)?;
                let half = pvals.len() / 2;
                let new = |off: usize, size: usize| Heads {
                    data: split_heads(&qkv, b, s, n, size, wc, off, None),
                    len: s,
                    size,
                };
                let k = concat_heads(Some(&pvals[..half]), sh[3], &new(dq, h), b, n);
                let v = concat_heads(Some(&pvals[half..]), sh[3], &new(dq + dk, hv), b, n);
                (Some((k, v)), sh[3])
            }
            None => (None, 0),
        };
        let (kview, vview) = match &kv {
            Some((k, v)) => (
                HeadsView::dense(&k.data, n, k.len, h),
                HeadsView::dense(&v.data, n, v.len, hv),
            ),
            None => (
                HeadsView::rows(&qkv, dq, wc, s, h),
                HeadsView::rows(&qkv, dq + dk, wc, s, hv),
            ),
        };
        let qview = HeadsView::rows(&qkv, 0, wc, s, h);
        let t = p + s;
        let mask = build_mask::<f32>(mask, b, s, t, p, self.causal, self.filter)?;
        let attn = match ab {
            Some(a) => {
                let (sb, sn) = attn_bias_strides(a, b, n, s, t)?;
                Some((f32s(a)?, sb, sn))
            }
            None => None,
        };
        let bias = BiasF32 {
            mask: mask.as_deref(),
            attn: attn.as_ref().map(|(a, sb, sn)| (&a[..], *sb, *sn)),
        };
        let scale = self.scale_for(h) as f32;
        let y = cx.tensor_dirty::<f32>(vec![b, s, dv], |o| {
            attend_f32(b, n, s, qview, kview, vview, scale, &bias, o, None)
        })?;
        let mut outs: Vec<Value> = vec![y.into()];
        if self.n_out > 1 {
            if h != hv {
                return Err(KernelError::Unsupported(format!(
                    "Attention present state with key head size {h} and value head size {hv}"
                )));
            }
            let present = cx.tensor_dirty::<f32>(vec![2, b, n, t, h], |o| {
                let (ko, vo) = o.split_at_mut(o.len() / 2);
                kview.copy_to(b, n, ko);
                vview.copy_to(b, n, vo);
            })?;
            outs.push(present.into());
        }
        cx.recycle(qkv_t.into());
        Ok(outs)
    }

    fn run_t<T: Float>(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>>
    where
        T::R: Field,
    {
        let x = tensor_input(inputs, 0)?;
        let w = tensor_input(inputs, 1)?;
        let bias = opt_tensor_input(inputs, 2)?;
        let mask = opt_tensor_input(inputs, 3)?;
        let past = opt_tensor_input(inputs, 4)?;
        let ab = opt_tensor_input(inputs, 5)?;
        let Dims {
            b,
            s,
            din,
            wc,
            dq,
            dk,
            dv,
            n,
        } = self.dims(x, w)?;
        let (h, hv) = (dq / n, dv / n);
        // QKV projection.
        let xs = to_reals::<T::R>(x)?;
        let ws = to_reals::<T::R>(w)?;
        let mut qkv = vec![T::R::ZERO; b * s * wc];
        <T::R as Field>::gemm(b * s, wc, din, &xs, din, 1, &ws, wc, 1, &mut qkv, wc);
        let bs = match bias {
            Some(t) if t.len() == wc => Some(to_reals::<T::R>(t)?),
            Some(t) => {
                return Err(KernelError::Invalid(format!(
                    "Attention bias of shape {:?}",
                    t.shape()
                )))
            }
            None => None,
        };
        let q = Heads {
            data: split_heads(&qkv, b, s, n, h, wc, 0, bs.as_deref()),
            len: s,
            size: h,
        };
        let k = Heads {
            data: split_heads(&qkv, b, s, n, h, wc, dq, bs.as_deref()),
            len: s,
            size: h,
        };
        let v = Heads {
            data: split_heads(&qkv, b, s, n, hv, wc, dq + dk, bs.as_deref()),
            len: s,
            size: hv,
        };
        let (pk, pv, p) = match past {
            Some(t) => {
                let sh = t.shape();
                if sh.len() != 5 || sh[0] != 2 || sh[1] != b || sh[2] != n || sh[4] != h || h != hv
                {
                    return Err(KernelError::Invalid(format!(
                        "Attention past of shape {sh:?}"
                    )));
                }
                let pvals = to_reals::<T::R>(t)?;
                let half = pvals.len() / 2;
                (
                    Some(pvals[..half].to_vec()),
                    Some(pvals[half..].to_vec()),
                    sh[3],
                )
            }
            None => (None, None, 0),
        };
        let k = concat_heads(pk.as_deref(), p, &k, b, n);
        let v = concat_heads(pv.as_deref(), p, &v, b, n);
        let t = k.len;
        let scale = self
            .scale
            .map(|s| s as f64)
            .unwrap_or(1.0 / (h as f64).sqrt());
        let bias = Bias {
            mask: build_mask(mask, b, s, t, p, self.causal, self.filter)?,
            attn: attn_bias(ab, b, n, s, t)?,
        };
        let (out, _) = attend_any(b, n, s, &q, &k, &v, T::R::from_f64(scale), &bias, false);
        let mut outs = vec![out_tensor::<T>(cx, vec![b, s, dv], &out)?];
        if self.n_out > 1 {
            let mut present = k.data.clone();
            present.extend_from_slice(&v.data);
            outs.push(out_tensor::<T>(cx, vec![2, b, n, t, h], &present)?);
        }
        Ok(outs)
    }
}

// ---------------------------------------------------------------------------------------------
// com.microsoft.MultiHeadAttention

struct MhaK {
    heads: i64,
    causal: bool,
    filter: f32,
    scale: Option<f32>,
    n_out: usize,
}

impl Kernel for MhaK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        crate::with_float!(dt, T => self.run_t::<T>(inputs, cx), else Err(KernelError::Unsupported(format!("MultiHeadAttention of {dt}"))))
    }
}

/// Heads from a 4-D `[B, N, L, H]` tensor.
fn bnsh<R: Real>(t: &Tensor, b: usize, n: usize, what: &str) -> KResult<Heads<R>> {
    let sh = t.shape();
    if sh.len() != 4 || sh[0] != b || sh[1] != n {
        return Err(KernelError::Invalid(format!(
            "{what} of shape {sh:?}, expected [{b}, {n}, L, H]"
        )));
    }
    Ok(Heads {
        data: to_reals::<R>(t)?,
        len: sh[2],
        size: sh[3],
    })
}

/// Heads from a packed `[B, L, N, P, H]` tensor, slot `k` of `P`.
fn unpack<R: Real>(vals: &[R], sh: &[usize], k: usize, bias: Option<(&[R], usize)>) -> Heads<R> {
    let (b, l, n, p, h) = (sh[0], sh[1], sh[2], sh[3], sh[4]);
    let mut data = vec![<R as Real>::ZERO; b * n * l * h];
    for bi in 0..b {
        for li in 0..l {
            for ni in 0..n {
                let src = (((bi * l + li) * n + ni) * p + k) * h;
                let dst = ((bi * n + ni) * l + li) * h;
                for e in 0..h {
                    let mut v = vals[src + e];
                    if let Some((bs, off)) = bias {
                        v += bs[off + ni * h + e];
                    }
                    data[dst + e] = v;
                }
            }
        }
    }
    Heads {
        data,
        len: l,
        size: h,
    }
}

impl MhaK {
    fn run_t<T: Float>(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>>
    where
        T::R: Field,
    {
        let q_t = tensor_input(inputs, 0)?;
        let k_t = opt_tensor_input(inputs, 1)?;
        let v_t = opt_tensor_input(inputs, 2)?;
        let bias_t = opt_tensor_input(inputs, 3)?;
        let kpm = opt_tensor_input(inputs, 4)?;
        let ab = opt_tensor_input(inputs, 5)?;
        let past_k = opt_tensor_input(inputs, 6)?;
        let past_v = opt_tensor_input(inputs, 7)?;
        let n = self.heads.max(1) as usize;
        let qs = q_t.shape().to_vec();
        let (b, s) = (
            qs[0],
            *qs.get(1)
                .ok_or("MultiHeadAttention query must be 3-D or 5-D")?,
        );
        let bias = match bias_t {
            Some(t) => Some(to_reals::<T::R>(t)?),
            None => None,
        };
        let qv = to_reals::<T::R>(q_t)?;
        let (q, k, v, kv_bnsh) = if qs.len() == 5 {
            // Packed QKV [B, S, N, 3, H].
            if qs[2] != n || qs[3] != 3 {
                return Err(KernelError::Invalid(format!("packed QKV of shape {qs:?}")));
            }
            let h = qs[4];
            let bq = bias.as_deref();
            (
                unpack(&qv, &qs, 0, bq.map(|b| (b, 0))),
                unpack(&qv, &qs, 1, bq.map(|b| (b, n * h))),
                unpack(&qv, &qs, 2, bq.map(|b| (b, 2 * n * h))),
                false,
            )
        } else if qs.len() == 3 {
            let d = qs[2];
            if d % n != 0 {
                return Err(KernelError::Invalid(format!(
                    "query hidden size {d} for {n} heads"
                )));
            }
            let h = d / n;
            let q = Heads {
                data: split_heads(&qv, b, s, n, h, d, 0, bias.as_deref()),
                len: s,
                size: h,
            };
            let k_t = k_t.ok_or("MultiHeadAttention needs a key unless the query is packed")?;
            let ks = k_t.shape();
            match ks.len() {
                5 => {
                    if ks[0] != b || ks[2] != n || ks[3] != 2 || ks[4] != h {
                        return Err(KernelError::Invalid(format!("packed KV of shape {ks:?}")));
                    }
                    let kv = to_reals::<T::R>(k_t)?;
                    let bk = bias.as_deref();
                    (
                        q,
                        unpack(&kv, ks, 0, bk.map(|b| (b, d))),
                        unpack(&kv, ks, 1, bk.map(|b| (b, 2 * d))),
                        false,
                    )
                }
                4 => {
                    let v_t = v_t.ok_or("MultiHeadAttention needs a value")?;
                    (q, bnsh(k_t, b, n, "key")?, bnsh(v_t, b, n, "value")?, true)
                }
                3 => {
                    let v_t = v_t.ok_or("MultiHeadAttention needs a value")?;
                    let (l, dk) = (ks[1], ks[2]);
                    let vs = v_t.shape();
                    if ks[0] != b
                        || dk != d
                        || vs.len() != 3
                        || vs[0] != b
                        || vs[1] != l
                        || vs[2] % n != 0
                    {
                        return Err(KernelError::Invalid(format!(
                            "key {ks:?} / value {vs:?} for query {qs:?}"
                        )));
                    }
                    let hv = vs[2] / n;
                    let kd = to_reals::<T::R>(k_t)?;
                    let vd = to_reals::<T::R>(v_t)?;
                    let k = Heads {
                        data: split_heads(&kd, b, l, n, h, d, 0, bias.as_deref().map(|x| &x[d..])),
                        len: l,
                        size: h,
                    };
                    let v = Heads {
                        data: split_heads(
                            &vd,
                            b,
                            l,
                            n,
                            hv,
                            vs[2],
                            0,
                            bias.as_deref().map(|x| &x[2 * d..]),
                        ),
                        len: l,
                        size: hv,
                    };
                    (q, k, v, false)
                }
                _ => {
                    return Err(KernelError::Invalid(format!(
                        "MultiHeadAttention key of shape {ks:?}"
                    )))
                }
            }
        } else {
            return Err(KernelError::Invalid(format!(
                "MultiHeadAttention query of shape {qs:?}"
            )));
        };
        if k.size != q.size || k.len != v.len {
            return Err("MultiHeadAttention key does not match query or value".into());
        }
        let (pk, pv, p) = match (past_k, past_v, kv_bnsh) {
            (Some(a), Some(c), false) => {
                let pk = bnsh::<T::R>(a, b, n, "past_key")?;
                let pv = bnsh::<T::R>(c, b, n, "past_value")?;
                if pk.len != pv.len || pk.size != k.size || pv.size != v.size {
                    return Err("MultiHeadAttention past_key and past_value do not agree".into());
                }
                let p = pk.len;
                (Some(pk.data), Some(pv.data), p)
            }
            _ => (None, None, 0),
        };
        let k = concat_heads(pk.as_deref(), p, &k, b, n);
        let v = concat_heads(pv.as_deref(), p, &v, b, n);
        let t = k.len;
        let (h, hv) = (q.size, v.size);
        let scale = self
            .scale
            .map(|s| s as f64)
            .unwrap_or(1.0 / (h as f64).sqrt());
        let bias = Bias {
            mask: build_mask(kpm, b, s, t, p, self.causal, self.filter)?,
            attn: attn_bias(ab, b, n, s, t)?,
        };
        let want_qk = self.n_out > 3;
        let (out, qk) = attend_any(b, n, s, &q, &k, &v, T::R::from_f64(scale), &bias, want_qk);
        let mut outs = vec![out_tensor::<T>(cx, vec![b, s, n * hv], &out)?];
        if self.n_out > 1 {
            outs.push(out_tensor::<T>(cx, vec![b, n, t, h], &k.data)?);
            outs.push(out_tensor::<T>(cx, vec![b, n, t, hv], &v.data)?);
        }
        if want_qk {
            outs.push(out_tensor::<T>(cx, vec![b, n, s, t], &qk)?);
        }
        Ok(outs)
    }
}
