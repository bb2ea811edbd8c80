//! ONNX `Attention` (opset 23-25): 3-D or 4-D Q/K/V, grouped-query heads, boolean or
//! additive masks, causal and sliding-window masking (offset-aligned), past/present KV,
//! external-cache `nonpad_kv_seqlen`, softcap, the four `qk_matmul_output` modes and
//! `softmax_precision`.
//!
//! The two products go through the GEMM in the element's compute type; the elementwise
//! steps between them round to the element type (or the softmax precision) after every
//! operation, as the ONNX reference does, so `f16` results match it.

use kiln_ir::{DType, Op, Tensor};

use super::gemm::Field;
use super::KResult;
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::num::{ints, to_f64s, view, Float, Real};
use crate::kernels::util::broadcast_strides;
use crate::value::Value;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    match op {
        Op::Attention(o) => Some(Ok(Box::new(AttentionK {
            is_causal: o.is_causal,
            q_heads: o.q_num_heads,
            kv_heads: o.kv_num_heads,
            mode: o.qk_matmul_output_mode,
            scale: o.scale,
            softcap: o.softcap,
            softmax_precision: o.softmax_precision,
            left: o.left_window_size,
            right: o.right_window_size,
            n_out: cx.output_types.len().max(1),
        }))),
        _ => None,
    }
}

struct AttentionK {
    is_causal: bool,
    q_heads: Option<i64>,
    kv_heads: Option<i64>,
    mode: i64,
    scale: Option<f32>,
    softcap: f32,
    softmax_precision: Option<i64>,
    left: i64,
    right: i64,
    n_out: usize,
}

/// A Q/K/V operand as `[batch, heads, seq, head_size]` over its own layout.
#[derive(Clone, Copy, Debug)]
struct Bhsd {
    b: usize,
    h: usize,
    s: usize,
    d: usize,
    /// Strides of b, h, s (d is contiguous).
    st: [usize; 3],
}

impl Bhsd {
    fn of(shape: &[usize], heads: Option<usize>, what: &str) -> KResult<Bhsd> {
        match *shape {
            [b, h, s, d] => Ok(Bhsd {
                b,
                h,
                s,
                d,
                st: [h * s * d, s * d, d],
            }),
            [b, s, hd] => {
                let h = heads.ok_or_else(|| {
                    KernelError::Invalid(format!("Attention with 3-D {what} needs the head counts"))
                })?;
                if h == 0 || hd % h != 0 {
                    return Err(KernelError::Invalid(format!(
                        "Attention {what} hidden size {hd} is not divisible by {h} heads"
                    )));
                }
                let d = hd / h;
                Ok(Bhsd {
                    b,
                    h,
                    s,
                    d,
                    st: [s * hd, d, hd],
                })
            }
            _ => Err(KernelError::Invalid(format!(
                "Attention {what} must be 3-D or 4-D, got {shape:?}"
            ))),
        }
    }

    #[inline]
    fn at(&self, b: usize, h: usize, s: usize) -> usize {
        b * self.st[0] + h * self.st[1] + s * self.st[2]
    }
}

/// Rounds to float `dt` (f64 stays).
fn rounder(dt: DType) -> fn(f64) -> f64 {
    match dt {
        DType::F32 => |v| v as f32 as f64,
        DType::F16 => |v| half::f16::from_f64(v).to_f64(),
        DType::BF16 => |v| half::bf16::from_f64(v).to_f64(),
        _ => |v| v,
    }
}

/// Concatenates past `[B, H, P, D]` and new (any layout) into `[B, H, P+L, D]`.
fn concat_kv<T: Copy + Default>(past: Option<(&[T], usize)>, new: &[T], nv: &Bhsd) -> Vec<T> {
    let p = past.map(|(_, p)| p).unwrap_or(0);
    let t = p + nv.s;
    let mut out = vec![T::default(); nv.b * nv.h * t * nv.d];
    for b in 0..nv.b {
        for h in 0..nv.h {
            let base = ((b * nv.h + h) * t) * nv.d;
            if let Some((pk, _)) = past {
                let src = ((b * nv.h + h) * p) * nv.d;
                out[base..base + p * nv.d].copy_from_slice(&pk[src..src + p * nv.d]);
            }
            for s in 0..nv.s {
                let src = nv.at(b, h, s);
                let dst = base + (p + s) * nv.d;
                out[dst..dst + nv.d].copy_from_slice(&new[src..src + nv.d]);
            }
        }
    }
    out
}

/// The attention mask: values (0 / -inf for booleans) and how to index them.
struct Mask {
    vals: Vec<f64>,
    /// Strides against `[B, Hq, Sq, Tm]`.
    st: Vec<usize>,
    /// Length of the mask's last dim (positions beyond are masked).
    tm: usize,
}

impl Mask {
    fn new(
        t: &Tensor,
        b: usize,
        hq: usize,
        sq: usize,
        total: usize,
        round: fn(f64) -> f64,
    ) -> KResult<Mask> {
        let s = t.shape();
        if s.is_empty() || s.len() > 4 {
            return Err(KernelError::Invalid(format!(
                "Attention mask must have rank 1 to 4, got {s:?}"
            )));
        }
        let tm = s[s.len() - 1];
        if tm > total {
            return Err(KernelError::Invalid(format!(
                "Attention mask is {tm} long but there are only {total} keys"
            )));
        }
        let target = [b, hq, sq, tm];
        let off = 4 - s.len();
        for (i, &d) in s.iter().enumerate() {
            if d != 1 && d != target[off + i] {
                return Err(KernelError::Invalid(format!(
                    "Attention mask {s:?} does not broadcast to {target:?}"
                )));
            }
        }
        let vals = if t.dtype() == DType::Bool {
            t.bytes()
                .iter()
                .map(|&v| if v != 0 { 0.0 } else { f64::NEG_INFINITY })
                .collect()
        } else {
            to_f64s(t)?.into_iter().map(round).collect()
        };
        Ok(Mask {
            vals,
            st: broadcast_strides(s, &target),
            tm,
        })
    }

    #[inline]
    fn get(&self, b: usize, h: usize, i: usize, j: usize) -> f64 {
        if j >= self.tm {
            return f64::NEG_INFINITY;
        }
        self.vals[b * self.st[0] + h * self.st[1] + i * self.st[2] + j * self.st[3]]
    }
}

impl Kernel for AttentionK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let q = tensor_input(inputs, 0)?;
        let dt = q.dtype();
        crate::with_float!(dt, T => self.run_t::<T>(inputs, cx),
            else Err(KernelError::Unsupported(format!("Attention of {dt} tensors"))))
    }
}

impl AttentionK {
    fn run_t<T: Float>(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>>
    where
        T::R: Field,
    {
        let (q, k, v) = (
            tensor_input(inputs, 0)?,
            tensor_input(inputs, 1)?,
            tensor_input(inputs, 2)?,
        );
        let mask = opt_tensor_input(inputs, 3)?;
        let past_k = opt_tensor_input(inputs, 4)?;
        let past_v = opt_tensor_input(inputs, 5)?;
        let nonpad = opt_tensor_input(inputs, 6)?;
        if past_k.is_some() != past_v.is_some() {
            return Err("Attention: past_key and past_value must be given together".into());
        }
        for (t, n) in [(k, "K"), (v, "V")] {
            if t.dtype() != q.dtype() {
                return Err(KernelError::Unsupported(format!(
                    "Attention with Q of {} and {n} of {}",
                    q.dtype(),
                    t.dtype()
                )));
            }
        }
        let three_d = q.rank() == 3;
        let heads = |h: Option<i64>| h.map(|h| h.max(0) as usize);
        let qv = Bhsd::of(q.shape(), heads(self.q_heads), "Q")?;
        let kv = Bhsd::of(k.shape(), heads(self.kv_heads), "K")?;
        let vv = Bhsd::of(v.shape(), heads(self.kv_heads), "V")?;
        let (bsz, hq, sq, d) = (qv.b, qv.h, qv.s, qv.d);
        let (hkv, l, dv) = (kv.h, kv.s, vv.d);
        if kv.b != bsz || vv.b != bsz || vv.h != hkv || vv.s != l || kv.d != d {
            return Err(KernelError::Invalid(format!(
                "Attention Q {:?}, K {:?} and V {:?} do not agree",
                q.shape(),
                k.shape(),
                v.shape()
            )));
        }
        if hkv == 0 || hq % hkv != 0 {
            return Err(KernelError::Invalid(format!(
                "Attention: {hq} query heads are not a multiple of {hkv} kv heads"
            )));
        }
        let past_len = match past_k {
            Some(p) => {
                let s = p.shape();
                if s.len() != 4 || s[0] != bsz || s[1] != hkv || s[3] != d {
                    return Err(KernelError::Invalid(format!(
                        "Attention past_key of shape {s:?}"
                    )));
                }
                s[2]
            }
            None => 0,
        };
        if let Some(p) = past_v {
            let s = p.shape();
            if s.len() != 4 || s[0] != bsz || s[1] != hkv || s[2] != past_len || s[3] != dv {
                return Err(KernelError::Invalid(format!(
                    "Attention past_value of shape {s:?}"
                )));
            }
        }
        let total = past_len + l;
        let nonpad: Option<Vec<i64>> = match nonpad {
            Some(t) => {
                let v = ints(t, "nonpad_kv_seqlen")?;
                if v.len() != bsz {
                    return Err(KernelError::Invalid(format!(
                        "nonpad_kv_seqlen has {} values for batch {bsz}",
                        v.len()
                    )));
                }
                Some(v)
            }
            None => None,
        };
        let rt = rounder(T::DTYPE);
        let rp = match self.softmax_precision {
            Some(c) => rounder(
                DType::from_onnx(c as i32)
                    .ok_or_else(|| KernelError::Invalid(format!("softmax_precision {c}")))?,
            ),
            None => rt,
        };
        // numpy sums bfloat16 sequentially in bfloat16 (native floats pairwise in f32).
        let seq_sum = match self.softmax_precision {
            Some(c) => c == DType::BF16.onnx_code() as i64,
            None => T::DTYPE == DType::BF16,
        };
        let mask = match mask {
            Some(m) => Some(Mask::new(m, bsz, hq, sq, total, rt)?),
            None => None,
        };

        let (qs, ks, vs) = (view::<T>(q)?, view::<T>(k)?, view::<T>(v)?);
        let pk = match past_k {
            Some(t) => Some(view::<T>(t)?),
            None => None,
        };
        let pv = match past_v {
            Some(t) => Some(view::<T>(t)?),
            None => None,
        };
        let present_k = concat_kv(pk.as_deref().map(|p| (p, past_len)), &ks, &kv);
        let present_v = concat_kv(pv.as_deref().map(|p| (p, past_len)), &vs, &vv);

        // Q and K each scaled by sqrt(scale), rounded to T.
        let scale = match self.scale {
            Some(s) => s as f64,
            None => 1.0 / (d as f64).sqrt(),
        };
        let ss = rt(scale.sqrt());
        let to_r = |x: f64| <T::R as Real>::from_f64(x);
        let mut qbuf = vec![<T::R as Real>::ZERO; bsz * hq * sq * d];
        for b in 0..bsz {
            for h in 0..hq {
                for s in 0..sq {
                    let src = qv.at(b, h, s);
                    let dst = ((b * hq + h) * sq + s) * d;
                    for e in 0..d {
                        qbuf[dst + e] = to_r(rt(Real::to_f64(qs[src + e].to_r()) * ss));
                    }
                }
            }
        }
        let kbuf: Vec<T::R> = present_k
            .iter()
            .map(|x| to_r(rt(Real::to_f64(x.to_r()) * ss)))
            .collect();
        let vbuf: Vec<T::R> = present_v.iter().map(|x| x.to_r()).collect();

        let offset = |b: usize| -> i64 {
            match (&nonpad, past_k) {
                (Some(np), None) => np[b] - sq as i64,
                _ => past_len as i64,
            }
        };
        let windowed = self.left >= 0 || self.right >= 0;
        let softcap = if self.softcap > 0.0 {
            Some(self.softcap as f64)
        } else {
            None
        };
        let mut y = vec![<T::R as Real>::ZERO; bsz * hq * sq * dv];
        let want_qk = self.n_out >= 4;
        let mut qk_out = if want_qk {
            vec![0f64; bsz * hq * sq * total]
        } else {
            Vec::new()
        };
        let mut scores = vec![<T::R as Real>::ZERO; sq * total];
        let mut probs = vec![<T::R as Real>::ZERO; sq * total];
        let mut bias = vec![0f64; total];
        let mut row = vec![0f64; total];
        let group = hq / hkv;
        for b in 0..bsz {
            let off = offset(b);
            for h in 0..hq {
                let kh = h / group;
                let qm = &qbuf[((b * hq + h) * sq) * d..((b * hq + h) * sq + sq) * d];
                let km = &kbuf[((b * hkv + kh) * total) * d..((b * hkv + kh) * total + total) * d];
                // scores = Q · Kᵀ
                <T::R as Field>::gemm(sq, total, d, qm, d, 1, km, 1, d, &mut scores, total);
                for i in 0..sq {
                    // The additive bias of this row.
                    let mut all_masked = true;
                    for (j, bj) in bias.iter_mut().enumerate() {
                        let mut x = match &mask {
                            Some(m) => m.get(b, h, i, j),
                            None => 0.0,
                        };
                        let pos = i as i64 + off;
                        let jj = j as i64;
                        if self.is_causal && jj > pos {
                            x = f64::NEG_INFINITY;
                        }
                        if windowed {
                            let diff = pos - jj;
                            if (self.left >= 0 && diff > self.left)
                                || (self.right >= 0 && -diff > self.right)
                            {
                                x = f64::NEG_INFINITY;
                            }
                        }
                        if let Some(np) = &nonpad {
                            if jj >= np[b] {
                                x = f64::NEG_INFINITY;
                            }
                        }
                        *bj = x;
                        all_masked &= x == f64::NEG_INFINITY;
                    }
                    let qk_row = if want_qk {
                        Some(((b * hq + h) * sq + i) * total)
                    } else {
                        None
                    };
                    for j in 0..total {
                        let mut s = rt(Real::to_f64(scores[i * total + j]));
                        if let (Some(o), 0) = (qk_row, self.mode) {
                            qk_out[o + j] = s;
                        }
                        if let Some(c) = softcap {
                            s = rt(c * rt(rt(s / c).tanh()));
                        }
                        if let (Some(o), 1) = (qk_row, self.mode) {
                            qk_out[o + j] = s;
                        }
                        s = rt(s + bias[j]);
                        if let (Some(o), 2) = (qk_row, self.mode) {
                            qk_out[o + j] = s;
                        }
                        row[j] = rp(s);
                    }
                    // Softmax in the softmax precision; a fully masked row is all zeros.
                    let prow = &mut probs[i * total..(i + 1) * total];
                    if all_masked {
                        prow.iter_mut().for_each(|p| *p = <T::R as Real>::ZERO);
                        row.iter_mut().for_each(|p| *p = 0.0);
                    } else {
                        let mut m = f64::NEG_INFINITY;
                        for &x in row.iter() {
                            m = if x.is_nan() || m.is_nan() {
                                f64::NAN
                            } else {
                                m.max(x)
                            };
                        }
                        let m = if m == f64::NEG_INFINITY { 0.0 } else { m };
                        let mut sum = 0.0;
                        for x in row.iter_mut() {
                            *x = rp(rp(*x - m).exp());
                            sum += *x;
                            if seq_sum {
                                sum = rp(sum);
                            }
                        }
                        let sum = rp(sum);
                        let sum = if sum == 0.0 { 1.0 } else { sum };
                        for (x, p) in row.iter_mut().zip(prow.iter_mut()) {
                            *x = rp(*x / sum);
                            *p = to_r(rt(*x));
                        }
                    }
                    if let (Some(o), 3) = (qk_row, self.mode) {
                        qk_out[o..o + total].copy_from_slice(&row);
                    }
                }
                // Y = P · V
                let vm =
                    &vbuf[((b * hkv + kh) * total) * dv..((b * hkv + kh) * total + total) * dv];
                let ym = &mut y[((b * hq + h) * sq) * dv..((b * hq + h) * sq + sq) * dv];
                <T::R as Field>::gemm(sq, dv, total, &probs, total, 1, vm, dv, 1, ym, dv);
            }
        }
        let y_shape = if three_d {
            vec![bsz, sq, hq * dv]
        } else {
            vec![bsz, hq, sq, dv]
        };
        let yt = cx.tensor::<T>(y_shape, |o| {
            for b in 0..bsz {
                for h in 0..hq {
                    for s in 0..sq {
                        let src = ((b * hq + h) * sq + s) * dv;
                        let dst = if three_d {
                            (b * sq + s) * hq * dv + h * dv
                        } else {
                            src
                        };
                        for e in 0..dv {
                            o[dst + e] = T::from_r(y[src + e]);
                        }
                    }
                }
            }
        })?;
        let mut outs: Vec<Value> = vec![yt.into()];
        if self.n_out >= 2 {
            outs.push(
                cx.tensor::<T>(vec![bsz, hkv, total, d], |o| o.copy_from_slice(&present_k))?
                    .into(),
            );
            outs.push(
                cx.tensor::<T>(vec![bsz, hkv, total, dv], |o| o.copy_from_slice(&present_v))?
                    .into(),
            );
        }
        if want_qk {
            let t = cx.tensor::<T>(vec![bsz, hq, sq, total], |o| {
                for (o, &v) in o.iter_mut().zip(&qk_out) {
                    *o = T::from_r(to_r(v));
                }
            })?;
            outs.push(t.into());
        }
        Ok(outs)
    }
}
