//! ONNX Runtime's contrib attention ops: `com.microsoft.Attention` (packed QKV projection +
//! multi-head attention, BERT/GPT-2 style masks, past/present) and
//! `com.microsoft.MultiHeadAttention` (already-projected Q/K/V, packed forms, key padding
//! masks, attention bias, past/present). Masked positions get `mask_filter_value`
//! (default -10000) added, as ONNX Runtime does. Computed in f32 (f64 for f64).

use kiln_ir::{Op, Tensor};

use super::gemm::Field;
use super::KResult;
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::num::{ints, to_reals, Float, Real};
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
    Ok(Some((to_reals::<R>(t)?, sb, sn)))
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
}

impl Kernel for MsAttentionK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        crate::with_float!(dt, T => self.run_t::<T>(inputs, cx), else Err(KernelError::Unsupported(format!("Attention of {dt}"))))
    }
}

impl MsAttentionK {
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
        let (out, _) = attend(b, n, s, &q, &k, &v, T::R::from_f64(scale), &bias, false);
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
        let (out, qk) = attend(b, n, s, &q, &k, &v, T::R::from_f64(scale), &bias, want_qk);
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
