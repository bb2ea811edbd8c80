//! Sequence-model building blocks: `RotaryEmbedding`, `SwiGLU`, `LinearAttention`,
//! `CausalConvWithState`. Elementwise steps round to the element type after each operation
//! (as the ONNX reference does); the recurrent and convolution state is kept in f32.

use kiln_ir::{DType, Op};

use super::KResult;
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::num::{ints, to_reals, view, Float, Real};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let k: Box<dyn Kernel> = match op {
        Op::RotaryEmbedding(o) => Box::new(Rotary {
            interleaved: o.interleaved,
            num_heads: o.num_heads,
            rdim: o.rotary_embedding_dim,
        }),
        Op::SwiGLU(o) => Box::new(SwiGlu { alpha: o.alpha }),
        Op::LinearAttention(o) => {
            let rule = match o.update_rule.as_str() {
                "linear" => (false, false),
                "gated" => (true, false),
                "delta" => (false, true),
                "gated_delta" => (true, true),
                r => {
                    return Some(Err(KernelError::Unsupported(format!(
                        "LinearAttention update_rule `{r}`"
                    ))))
                }
            };
            Box::new(LinearAttn {
                q_heads: o.q_num_heads,
                kv_heads: o.kv_num_heads,
                scale: o.scale,
                gating: rule.0,
                delta: rule.1,
            })
        }
        Op::CausalConvWithState(o) => {
            let silu = match o.activation.as_str() {
                "none" => false,
                "silu" | "swish" => true,
                a => {
                    return Some(Err(KernelError::Unsupported(format!(
                        "CausalConvWithState activation `{a}`"
                    ))))
                }
            };
            Box::new(CausalConv { silu })
        }
        _ => return None,
    };
    Some(Ok(k))
}

/// Rounding to the precision of `T` (identity for f32/f64 computed in themselves).
#[inline]
fn rt<T: Float>(v: T::R) -> T::R {
    T::from_r(v).to_r()
}

// ---------------------------------------------------------------------------------------------
// RotaryEmbedding

struct Rotary {
    interleaved: bool,
    num_heads: Option<i64>,
    rdim: i64,
}

impl Kernel for Rotary {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        crate::with_float!(dt, T => self.run_t::<T>(inputs, cx), else Err(KernelError::Unsupported(format!("RotaryEmbedding of {dt}"))))
    }
}

impl Rotary {
    fn run_t<T: Float>(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let cos = tensor_input(inputs, 1)?;
        let sin = tensor_input(inputs, 2)?;
        let pos = opt_tensor_input(inputs, 3)?;
        let shape = x.shape().to_vec();
        // (batch, seq, heads, head_size) and the element strides of b, s, h.
        let (b, s, h, d, st) = match shape[..] {
            [b, h, s, d] => (b, s, h, d, [h * s * d, d, s * d]),
            [b, s, hd] => {
                let h = self
                    .num_heads
                    .filter(|&n| n > 0)
                    .ok_or("RotaryEmbedding with a 3-D input needs num_heads")?
                    as usize;
                if hd % h != 0 {
                    return Err(KernelError::Invalid(format!(
                        "RotaryEmbedding hidden size {hd} is not divisible by {h} heads"
                    )));
                }
                (b, s, h, hd / h, [s * hd, hd, hd / h])
            }
            _ => {
                return Err(KernelError::Invalid(format!(
                    "RotaryEmbedding input must be 3-D or 4-D, got {shape:?}"
                )))
            }
        };
        let rdim = if self.rdim > 0 { self.rdim as usize } else { d };
        if rdim > d || rdim % 2 != 0 {
            return Err(KernelError::Invalid(format!(
                "rotary_embedding_dim {rdim} does not fit head size {d}"
            )));
        }
        let half = rdim / 2;
        let cv = to_reals::<T::R>(cos)?;
        let sv = to_reals::<T::R>(sin)?;
        if cos.shape().last() != Some(&half) || sin.shape() != cos.shape() {
            return Err(KernelError::Invalid(format!(
                "RotaryEmbedding caches of shapes {:?}/{:?} do not match rotary dim {rdim}",
                cos.shape(),
                sin.shape()
            )));
        }
        // Row of the caches for (batch, position).
        let rows = cv.len() / half.max(1);
        let positions: Option<Vec<i64>> = match pos {
            Some(p) => {
                let v = ints(p, "position_ids")?;
                if v.len() != b * s && v.len() != s {
                    return Err(KernelError::Invalid(format!(
                        "position_ids of shape {:?} for batch {b}, sequence {s}",
                        p.shape()
                    )));
                }
                Some(v)
            }
            None => None,
        };
        let row_of = |bi: usize, si: usize| -> KResult<usize> {
            let r = match &positions {
                Some(p) => {
                    let v = if p.len() == b * s {
                        p[bi * s + si]
                    } else {
                        p[si]
                    };
                    usize::try_from(v)
                        .map_err(|_| KernelError::Invalid(format!("position id {v} is negative")))?
                }
                None if rows == b * s => bi * s + si,
                None if rows == s => si,
                None => {
                    return Err(KernelError::Invalid(format!(
                        "RotaryEmbedding caches of shape {:?}",
                        cos.shape()
                    )))
                }
            };
            if r >= rows {
                return Err(KernelError::Invalid(format!(
                    "position {r} is beyond the {rows} cached positions"
                )));
            }
            Ok(r)
        };
        let xs = view::<T>(x)?;
        let mut out = xs.to_vec();
        for bi in 0..b {
            for si in 0..s {
                let r = row_of(bi, si)? * half;
                let (c, sn) = (&cv[r..r + half], &sv[r..r + half]);
                for hi in 0..h {
                    let base = bi * st[0] + si * st[1] + hi * st[2];
                    for i in 0..half {
                        let (i1, i2) = if self.interleaved {
                            (base + 2 * i, base + 2 * i + 1)
                        } else {
                            (base + i, base + half + i)
                        };
                        let (x1, x2) = (xs[i1].to_r(), xs[i2].to_r());
                        let re = rt::<T>(rt::<T>(c[i] * x1) - rt::<T>(sn[i] * x2));
                        let im = rt::<T>(rt::<T>(sn[i] * x1) + rt::<T>(c[i] * x2));
                        out[i1] = T::from_r(re);
                        out[i2] = T::from_r(im);
                    }
                }
            }
        }
        let t = cx.tensor::<T>(shape, |o| o.copy_from_slice(&out))?;
        Ok(vec![t.into()])
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

struct SwiGlu {
    alpha: f32,
}

impl Kernel for SwiGlu {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let a = tensor_input(inputs, 0)?;
        let b = tensor_input(inputs, 1)?;
        if a.shape() != b.shape() || a.dtype() != b.dtype() {
            return Err(KernelError::Invalid(format!(
                "SwiGLU inputs must have one type and shape, got {}{:?} and {}{:?}",
                a.dtype(),
                a.shape(),
                b.dtype(),
                b.shape()
            )));
        }
        let dt = a.dtype();
        let alpha = self.alpha as f64;
        crate::with_float!(dt, T => {
            let (xa, xb) = (view::<T>(a)?, view::<T>(b)?);
            let t = cx.tensor::<T>(a.shape().to_vec(), |o| {
                let al = <T as Float>::R::from_f64(alpha);
                let one = <T as Float>::R::ONE;
                for ((o, &x), &y) in o.iter_mut().zip(xa.iter()).zip(xb.iter()) {
                    let x = x.to_r();
                    let e = rt::<T>((-rt::<T>(al * x)).exp());
                    let sig = rt::<T>(one / rt::<T>(one + e));
                    *o = T::from_r(rt::<T>(x * sig) * y.to_r());
                }
            })?;
            Ok(vec![t.into()])
        }, else Err(KernelError::Unsupported(format!("SwiGLU of {dt}"))))
    }
}

// ---------------------------------------------------------------------------------------------
// LinearAttention

struct LinearAttn {
    q_heads: i64,
    kv_heads: i64,
    scale: f32,
    gating: bool,
    delta: bool,
}

impl Kernel for LinearAttn {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let (q, k, v) = (
            tensor_input(inputs, 0)?,
            tensor_input(inputs, 1)?,
            tensor_input(inputs, 2)?,
        );
        let past = opt_tensor_input(inputs, 3)?;
        let decay = opt_tensor_input(inputs, 4)?;
        let beta = opt_tensor_input(inputs, 5)?;
        if self.gating != decay.is_some() {
            return Err(KernelError::Invalid(
                "LinearAttention: decay is required exactly by the gated rules".into(),
            ));
        }
        if self.delta != beta.is_some() {
            return Err(KernelError::Invalid(
                "LinearAttention: beta is required exactly by the delta rules".into(),
            ));
        }
        let (hq, hk) = (self.q_heads, self.kv_heads);
        if hq <= 0 || hk <= 0 || hq % hk != 0 {
            return Err(KernelError::Invalid(format!(
                "LinearAttention: q_num_heads {hq} must be a positive multiple of kv_num_heads {hk}"
            )));
        }
        let (hq, hk) = (hq as usize, hk as usize);
        for t in [q, k, v] {
            if t.rank() != 3 {
                return Err(KernelError::Invalid(format!(
                    "LinearAttention inputs must be 3-D, got {:?}",
                    t.shape()
                )));
            }
        }
        let (b, tlen) = (q.shape()[0], q.shape()[1]);
        let dk = q.shape()[2] / hq;
        let dv = v.shape()[2] / hk;
        if k.shape() != [b, tlen, hk * dk]
            || v.shape()[..2] != [b, tlen]
            || dv * hk != v.shape()[2]
            || dk * hq != q.shape()[2]
        {
            return Err(KernelError::Invalid(format!(
                "LinearAttention shapes {:?}, {:?}, {:?} do not agree",
                q.shape(),
                k.shape(),
                v.shape()
            )));
        }
        let qs = to_reals::<f32>(q)?;
        let ks = to_reals::<f32>(k)?;
        let vs = to_reals::<f32>(v)?;
        let mut state = match past {
            Some(p) => {
                if p.shape() != [b, hk, dk, dv] {
                    return Err(KernelError::Invalid(format!(
                        "past_state of shape {:?}, expected {:?}",
                        p.shape(),
                        [b, hk, dk, dv]
                    )));
                }
                to_reals::<f32>(p)?
            }
            None => vec![0f32; b * hk * dk * dv],
        };
        let state_dt = past.map(|p| p.dtype()).unwrap_or(q.dtype());
        let decay = match decay {
            Some(d) => {
                let last = d.shape().last().copied().unwrap_or(0);
                if d.rank() != 3 || d.shape()[..2] != [b, tlen] || (last != hk && last != hk * dk) {
                    return Err(KernelError::Invalid(format!(
                        "decay of shape {:?}",
                        d.shape()
                    )));
                }
                Some((to_reals::<f32>(d)?, last / hk))
            }
            None => None,
        };
        let beta = match beta {
            Some(t) => {
                let last = t.shape().last().copied().unwrap_or(0);
                if t.rank() != 3 || t.shape()[..2] != [b, tlen] || (last != hk && last != 1) {
                    return Err(KernelError::Invalid(format!(
                        "beta of shape {:?}",
                        t.shape()
                    )));
                }
                Some((to_reals::<f32>(t)?, last))
            }
            None => None,
        };
        let scale = if self.scale == 0.0 {
            1.0 / (dk as f32).sqrt()
        } else {
            self.scale
        };
        let group = hq / hk;
        let mut out = vec![0f32; b * tlen * hq * dv];
        let mut vt = vec![0f32; dv];
        for bi in 0..b {
            for t in 0..tlen {
                for kh in 0..hk {
                    let st = &mut state[((bi * hk + kh) * dk) * dv..((bi * hk + kh + 1) * dk) * dv];
                    let kt = &ks[(bi * tlen + t) * hk * dk + kh * dk..][..dk];
                    vt.copy_from_slice(&vs[(bi * tlen + t) * hk * dv + kh * dv..][..dv]);
                    if let Some((g, per)) = &decay {
                        let row = &g[(bi * tlen + t) * hk * per + kh * per..][..*per];
                        for (di, srow) in st.chunks_exact_mut(dv).enumerate() {
                            let f = row[if *per == 1 { 0 } else { di }].exp();
                            srow.iter_mut().for_each(|x| *x *= f);
                        }
                    }
                    if let Some((bt, last)) = &beta {
                        let bv = bt[(bi * tlen + t) * last + if *last == 1 { 0 } else { kh }];
                        for (m, vm) in vt.iter_mut().enumerate() {
                            let mut r = 0f32;
                            for di in 0..dk {
                                r += st[di * dv + m] * kt[di];
                            }
                            *vm = bv * (*vm - r);
                        }
                    }
                    for di in 0..dk {
                        let kd = kt[di];
                        for (sv, &vm) in st[di * dv..(di + 1) * dv].iter_mut().zip(&vt) {
                            *sv += kd * vm;
                        }
                    }
                    for h in kh * group..(kh + 1) * group {
                        let qt = &qs[(bi * tlen + t) * hq * dk + h * dk..][..dk];
                        let o = &mut out[(bi * tlen + t) * hq * dv + h * dv..][..dv];
                        for (m, ov) in o.iter_mut().enumerate() {
                            let mut acc = 0f32;
                            for di in 0..dk {
                                acc += qt[di] * st[di * dv + m];
                            }
                            *ov = scale * acc;
                        }
                    }
                }
            }
        }
        let y = f32s_tensor(cx, q.dtype(), vec![b, tlen, hq * dv], &out)?;
        let s = f32s_tensor(cx, state_dt, vec![b, hk, dk, dv], &state)?;
        Ok(vec![y.into(), s.into()])
    }
}

/// A float tensor of `dt` holding f32 values.
fn f32s_tensor(
    cx: &mut RunCx,
    dt: DType,
    shape: Vec<usize>,
    vals: &[f32],
) -> KResult<kiln_ir::Tensor> {
    crate::kernels::reduce::norm::reals_tensor(cx, dt, shape, vals)
}

// ---------------------------------------------------------------------------------------------
// CausalConvWithState

struct CausalConv {
    silu: bool,
}

impl Kernel for CausalConv {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let w = tensor_input(inputs, 1)?;
        let bias = opt_tensor_input(inputs, 2)?;
        let past = opt_tensor_input(inputs, 3)?;
        let [b, c, l] = x.shape()[..] else {
            return Err(KernelError::Invalid(format!(
                "CausalConvWithState input must be 3-D, got {:?}",
                x.shape()
            )));
        };
        let [wc, 1, k] = w.shape()[..] else {
            return Err(KernelError::Invalid(format!(
                "CausalConvWithState weight must be [C, 1, k], got {:?}",
                w.shape()
            )));
        };
        if wc != c || k == 0 {
            return Err(KernelError::Invalid(format!(
                "weight {:?} for {c} channels",
                w.shape()
            )));
        }
        let xs = to_reals::<f32>(x)?;
        let ws = to_reals::<f32>(w)?;
        let bs = match bias {
            Some(t) if t.len() == c => to_reals::<f32>(t)?,
            Some(t) => {
                return Err(KernelError::Invalid(format!(
                    "bias of shape {:?} for {c} channels",
                    t.shape()
                )))
            }
            None => vec![0f32; c],
        };
        let ps = match past {
            Some(p) if p.shape() == [b, c, k - 1] => to_reals::<f32>(p)?,
            Some(p) => {
                return Err(KernelError::Invalid(format!(
                    "past_state of shape {:?}, expected {:?}",
                    p.shape(),
                    [b, c, k - 1]
                )))
            }
            None => vec![0f32; b * c * (k - 1)],
        };
        let plen = l + k - 1;
        let mut padded = vec![0f32; plen];
        let mut y = vec![0f32; b * c * l];
        let mut state = vec![0f32; b * c * (k - 1)];
        let round = rounder_of(x.dtype());
        for bc in 0..b * c {
            let ch = bc % c;
            padded[..k - 1].copy_from_slice(&ps[bc * (k - 1)..(bc + 1) * (k - 1)]);
            padded[k - 1..].copy_from_slice(&xs[bc * l..(bc + 1) * l]);
            let wr = &ws[ch * k..(ch + 1) * k];
            for t in 0..l {
                let mut acc = bs[ch];
                for (i, &wv) in wr.iter().enumerate() {
                    acc += wv * padded[t + i];
                }
                let acc = round(acc);
                y[bc * l + t] = if self.silu {
                    acc / (1.0 + (-acc).exp())
                } else {
                    acc
                };
            }
            state[bc * (k - 1)..(bc + 1) * (k - 1)].copy_from_slice(&padded[plen - (k - 1)..]);
        }
        let yt = f32s_tensor(cx, x.dtype(), vec![b, c, l], &y)?;
        let st = f32s_tensor(cx, x.dtype(), vec![b, c, k - 1], &state)?;
        Ok(vec![yt.into(), st.into()])
    }
}

/// Rounding of f32 values to float `dt`.
fn rounder_of(dt: DType) -> fn(f32) -> f32 {
    match dt {
        DType::F16 => |v| half::f16::from_f32(v).to_f32(),
        DType::BF16 => |v| half::bf16::from_f32(v).to_f32(),
        _ => |v| v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::Tensor;

    fn run(k: &dyn Kernel, ins: &[Option<Tensor>]) -> Vec<Tensor> {
        let vals: Vec<Option<Value>> = ins.iter().map(|t| t.clone().map(Value::Tensor)).collect();
        let refs: Vec<Option<&Value>> = vals.iter().map(|v| v.as_ref()).collect();
        let mut cx = RunCx::new();
        k.run(&refs, &mut cx)
            .unwrap()
            .into_iter()
            .map(|v| v.into_tensor().unwrap())
            .collect()
    }

    fn f(shape: &[usize], v: &[f32]) -> Option<Tensor> {
        Some(Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap())
    }

    #[test]
    fn rotary_halves_and_interleaved() {
        // One head of size 4, one position with angle a: cos/sin caches [1, 2].
        let (c, s) = (0.6f32, 0.8f32);
        let x = f(&[1, 1, 1, 4], &[1., 2., 3., 4.]);
        let cache = |v: f32| f(&[1, 1, 2], &[v, v]);
        let k = Rotary {
            interleaved: false,
            num_heads: None,
            rdim: 0,
        };
        let y = run(&k, &[x.clone(), cache(c), cache(s)])
            .remove(0)
            .to_vec::<f32>()
            .unwrap();
        // Halves (1,2) and (3,4): real = c*x1 - s*x2, imag = s*x1 + c*x2.
        let want = [
            c * 1. - s * 3.,
            c * 2. - s * 4.,
            s * 1. + c * 3.,
            s * 2. + c * 4.,
        ];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?}");
        }
        let k = Rotary {
            interleaved: true,
            num_heads: None,
            rdim: 0,
        };
        let y = run(&k, &[x, cache(c), cache(s)])
            .remove(0)
            .to_vec::<f32>()
            .unwrap();
        let want = [
            c * 1. - s * 2.,
            s * 1. + c * 2.,
            c * 3. - s * 4.,
            s * 3. + c * 4.,
        ];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn causal_conv_state_and_silu() {
        // One channel, kernel [1, 2, 3], past [10, 20], input [1, 2].
        let k = CausalConv { silu: false };
        let out = run(
            &k,
            &[
                f(&[1, 1, 2], &[1., 2.]),
                f(&[1, 1, 3], &[1., 2., 3.]),
                None,
                f(&[1, 1, 2], &[10., 20.]),
            ],
        );
        assert_eq!(
            out[0].to_vec::<f32>().unwrap(),
            [10. + 40. + 3., 20. + 2. + 6.]
        );
        assert_eq!(out[1].to_vec::<f32>().unwrap(), [1., 2.]);
        let k = CausalConv { silu: true };
        let out = run(
            &k,
            &[f(&[1, 1, 1], &[2.]), f(&[1, 1, 1], &[1.]), None, None],
        );
        let want = 2.0 / (1.0 + (-2f32).exp());
        assert!((out[0].to_vec::<f32>().unwrap()[0] - want).abs() < 1e-6);
    }

    #[test]
    fn linear_attention_linear_rule_by_hand() {
        // One head, d_k = d_v = 1, two steps: S1 = k1 v1, S2 = S1 + k2 v2; o_t = scale q_t S_t.
        let k = LinearAttn {
            q_heads: 1,
            kv_heads: 1,
            scale: 0.5,
            gating: false,
            delta: false,
        };
        let out = run(
            &k,
            &[
                f(&[1, 2, 1], &[1., 2.]),
                f(&[1, 2, 1], &[3., 4.]),
                f(&[1, 2, 1], &[5., 6.]),
            ],
        );
        assert_eq!(out[0].to_vec::<f32>().unwrap(), [0.5 * 15., 0.5 * 2. * 39.]);
        assert_eq!(out[1].to_vec::<f32>().unwrap(), [39.]);
    }
}
