//! Sequence and optional ops: `SequenceConstruct`, `SequenceEmpty`, `SequenceAt`,
//! `SequenceInsert`, `SequenceErase`, `SequenceLength`, `SplitToSequence`,
//! `ConcatFromSequence`, `Optional`, `OptionalGetElement`, `OptionalHasElement`.
//! (`SequenceMap` is control flow, in [`super::control`].)
//!
//! Tensors in sequences are shared, not copied: inserting, erasing or reading an element
//! clones a `Tensor`, which is a reference to its storage.

use kiln_ir::{DType, Op, Tensor};

use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

use super::util::norm_axis;

type KResult<T> = Result<T, KernelError>;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let k: Box<dyn Kernel> = match op {
        Op::SequenceConstruct(_) => Box::new(SeqConstruct),
        Op::SequenceEmpty(_) => Box::new(SeqEmpty),
        Op::SequenceAt(_) => Box::new(SeqAt),
        Op::SequenceInsert(_) => Box::new(SeqInsert),
        Op::SequenceErase(_) => Box::new(SeqErase),
        Op::SequenceLength(_) => Box::new(SeqLength),
        Op::SplitToSequence(s) => Box::new(SplitToSeq {
            axis: s.axis,
            keepdims: s.keepdims,
        }),
        Op::ConcatFromSequence(c) => Box::new(ConcatFromSeq {
            axis: c.axis,
            new_axis: c.new_axis,
        }),
        Op::Optional(_) => Box::new(OptionalK),
        Op::OptionalGetElement(_) => Box::new(OptGet),
        Op::OptionalHasElement(_) => Box::new(OptHas),
        _ => return None,
    };
    Some(Ok(k))
}

/// Input `i` as a sequence.
fn seq_input<'a>(inputs: &[Option<&'a Value>], i: usize) -> KResult<&'a [Tensor]> {
    match inputs.get(i).copied().flatten() {
        Some(Value::Sequence(s)) => Ok(s),
        Some(v) => Err(KernelError::Invalid(format!(
            "input {i} must be a sequence, got {}",
            v.describe()
        ))),
        None => Err(KernelError::Invalid(format!("input {i} is required"))),
    }
}

/// A scalar (or one-element) integer position input, if given.
fn position(inputs: &[Option<&Value>], i: usize) -> KResult<Option<i64>> {
    let Some(t) = opt_tensor_input(inputs, i)? else {
        return Ok(None);
    };
    if !matches!(t.dtype(), DType::I32 | DType::I64) || t.len() != 1 {
        return Err(KernelError::Invalid(format!(
            "position must be one i32 or i64, got {}{:?}",
            t.dtype(),
            t.shape()
        )));
    }
    Ok(t.to_i64_vec().and_then(|v| v.first().copied()))
}

/// Normalizes `pos` (negative counts from the back) into `0..=max`, where the accepted
/// range is `-len..=max`.
fn norm_pos(pos: i64, len: usize, max: usize) -> KResult<usize> {
    let p = if pos < 0 { pos + len as i64 } else { pos };
    if p < 0 || p > max as i64 {
        return Err(KernelError::Invalid(format!(
            "position {pos} is out of range for a sequence of length {len}"
        )));
    }
    Ok(p as usize)
}

struct SeqConstruct;
impl Kernel for SeqConstruct {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let mut v = Vec::with_capacity(inputs.len());
        for i in 0..inputs.len() {
            let t = tensor_input(inputs, i)?;
            if let Some(f) = v.first().map(|f: &Tensor| f.dtype()) {
                if f != t.dtype() {
                    return Err(KernelError::Invalid(format!(
                        "sequence elements differ in type: {f} and {}",
                        t.dtype()
                    )));
                }
            }
            v.push(t.clone());
        }
        Ok(vec![Value::Sequence(v)])
    }
}

struct SeqEmpty;
impl Kernel for SeqEmpty {
    fn run(&self, _inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        Ok(vec![Value::Sequence(Vec::new())])
    }
}

struct SeqAt;
impl Kernel for SeqAt {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let s = seq_input(inputs, 0)?;
        let p = position(inputs, 1)?.ok_or("SequenceAt needs a position")?;
        if s.is_empty() {
            return Err("SequenceAt on an empty sequence".into());
        }
        let p = norm_pos(p, s.len(), s.len() - 1)?;
        Ok(vec![Value::Tensor(s[p].clone())])
    }
}

struct SeqInsert;
impl Kernel for SeqInsert {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let s = seq_input(inputs, 0)?;
        let t = tensor_input(inputs, 1)?;
        if let Some(f) = s.first() {
            if f.dtype() != t.dtype() {
                return Err(KernelError::Invalid(format!(
                    "cannot insert a {} tensor into a sequence of {}",
                    t.dtype(),
                    f.dtype()
                )));
            }
        }
        let p = match position(inputs, 2)? {
            Some(p) => norm_pos(p, s.len(), s.len())?,
            None => s.len(),
        };
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(&s[..p]);
        v.push(t.clone());
        v.extend_from_slice(&s[p..]);
        Ok(vec![Value::Sequence(v)])
    }
}

struct SeqErase;
impl Kernel for SeqErase {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let s = seq_input(inputs, 0)?;
        if s.is_empty() {
            return Err("SequenceErase on an empty sequence".into());
        }
        let p = match position(inputs, 1)? {
            Some(p) => norm_pos(p, s.len(), s.len() - 1)?,
            None => s.len() - 1,
        };
        let mut v = s.to_vec();
        v.remove(p);
        Ok(vec![Value::Sequence(v)])
    }
}

struct SeqLength;
impl Kernel for SeqLength {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let n = seq_input(inputs, 0)?.len() as i64;
        Ok(vec![Value::Tensor(cx.tensor::<i64>(vec![], |o| o[0] = n)?)])
    }
}

/// Bytes per element of a fixed-size dtype (0 for strings); error for sub-byte types.
fn elem_bytes(dt: DType) -> KResult<usize> {
    if dt == DType::String {
        return Ok(0);
    }
    let b = dt.bits();
    if b == 0 || b % 8 != 0 {
        return Err(KernelError::Unsupported(format!(
            "{dt} tensors in sequence ops"
        )));
    }
    Ok(b / 8)
}

/// The slab `start..start+len` of `t` along `axis`, with the output shape `shape`.
fn slab(
    t: &Tensor,
    axis: usize,
    start: usize,
    len: usize,
    shape: Vec<usize>,
    cx: &mut RunCx,
) -> KResult<Tensor> {
    let sh = t.shape();
    let outer: usize = sh[..axis].iter().product();
    let inner: usize = sh[axis + 1..].iter().product();
    let dim = sh[axis];
    let es = elem_bytes(t.dtype())?;
    if es == 0 {
        let s = t.strings().ok_or("string tensor without strings")?;
        let mut v = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let b = (o * dim + start) * inner;
            v.extend_from_slice(&s[b..b + len * inner]);
        }
        return Ok(Tensor::from_strings(shape, v)?);
    }
    let src = t.bytes();
    let row = len * inner * es;
    cx.tensor_bytes(t.dtype(), shape, |out| {
        for o in 0..outer {
            let b = (o * dim + start) * inner * es;
            out[o * row..(o + 1) * row].copy_from_slice(&src[b..b + row]);
        }
    })
}

struct SplitToSeq {
    axis: i64,
    keepdims: bool,
}

impl Kernel for SplitToSeq {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let axis = norm_axis(self.axis, x.rank())?;
        if x.rank() == 0 {
            return Err("SplitToSequence input must have rank >= 1".into());
        }
        let dim = x.shape()[axis];
        let split = opt_tensor_input(inputs, 1)?;
        let (sizes, squeeze) = match split {
            None => (vec![1usize; dim], !self.keepdims),
            Some(s) => {
                let v = s.to_i64_vec().ok_or("split must be an integer tensor")?;
                if s.rank() == 0 {
                    let k = v[0];
                    if k <= 0 {
                        return Err(KernelError::Invalid(format!(
                            "split must be positive, got {k}"
                        )));
                    }
                    let k = k as usize;
                    let mut sizes = vec![k; dim / k];
                    if dim % k != 0 {
                        sizes.push(dim % k);
                    }
                    (sizes, false)
                } else if s.rank() == 1 {
                    if v.iter().any(|&x| x < 0) || v.iter().sum::<i64>() != dim as i64 {
                        return Err(KernelError::Invalid(format!(
                            "split {v:?} does not add up to the axis length {dim}"
                        )));
                    }
                    (v.iter().map(|&x| x as usize).collect(), false)
                } else {
                    return Err("split must be a scalar or a 1-D tensor".into());
                }
            }
        };
        let mut out = Vec::with_capacity(sizes.len());
        let mut pos = 0;
        for len in sizes {
            let mut shape = x.shape().to_vec();
            if squeeze {
                shape.remove(axis);
            } else {
                shape[axis] = len;
            }
            out.push(slab(x, axis, pos, len, shape, cx)?);
            pos += len;
        }
        Ok(vec![Value::Sequence(out)])
    }
}

struct ConcatFromSeq {
    axis: i64,
    new_axis: bool,
}

impl Kernel for ConcatFromSeq {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let s = seq_input(inputs, 0)?;
        let first = s.first().ok_or("ConcatFromSequence of an empty sequence")?;
        let rank = first.rank();
        let dt = first.dtype();
        // With `new_axis`, each element is viewed with a 1 inserted at `axis`.
        let (axis, shapes): (usize, Vec<Vec<usize>>) = if self.new_axis {
            let a = norm_axis(self.axis, rank + 1)?;
            (
                a,
                s.iter()
                    .map(|t| {
                        let mut sh = t.shape().to_vec();
                        sh.insert(a.min(sh.len()), 1);
                        sh
                    })
                    .collect(),
            )
        } else {
            if rank == 0 {
                return Err("ConcatFromSequence of scalars needs new_axis".into());
            }
            (
                norm_axis(self.axis, rank)?,
                s.iter().map(|t| t.shape().to_vec()).collect(),
            )
        };
        let r = shapes[0].len();
        let mut out_shape = shapes[0].clone();
        out_shape[axis] = 0;
        for (t, sh) in s.iter().zip(&shapes) {
            if t.dtype() != dt {
                return Err(KernelError::Invalid(format!(
                    "sequence elements differ in type: {dt} and {}",
                    t.dtype()
                )));
            }
            if sh.len() != r || (0..r).any(|d| d != axis && sh[d] != shapes[0][d]) {
                return Err(KernelError::Invalid(format!(
                    "cannot concatenate shapes {:?} and {:?} along axis {axis}",
                    shapes[0], sh
                )));
            }
            out_shape[axis] += sh[axis];
        }
        let outer: usize = out_shape[..axis].iter().product();
        let inner: usize = out_shape[axis + 1..].iter().product();
        let es = elem_bytes(dt)?;
        if es == 0 {
            let n: usize = out_shape.iter().product();
            let mut v = Vec::with_capacity(n);
            for o in 0..outer {
                for (t, sh) in s.iter().zip(&shapes) {
                    let w = sh[axis] * inner;
                    let st = t.strings().ok_or("string tensor without strings")?;
                    v.extend_from_slice(&st[o * w..(o + 1) * w]);
                }
            }
            return Ok(vec![Value::Tensor(Tensor::from_strings(out_shape, v)?)]);
        }
        let t = cx.tensor_bytes(dt, out_shape, |out| {
            let mut off = 0;
            for o in 0..outer {
                for (t, sh) in s.iter().zip(&shapes) {
                    let w = sh[axis] * inner * es;
                    out[off..off + w].copy_from_slice(&t.bytes()[o * w..(o + 1) * w]);
                    off += w;
                }
            }
        })?;
        Ok(vec![Value::Tensor(t)])
    }
}

struct OptionalK;
impl Kernel for OptionalK {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        Ok(vec![Value::Optional(
            inputs
                .first()
                .copied()
                .flatten()
                .map(|v| Box::new(v.clone())),
        )])
    }
}

struct OptGet;
impl Kernel for OptGet {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        match inputs.first().copied().flatten() {
            None => Err("OptionalGetElement needs an input".into()),
            Some(Value::Optional(None)) => Err("OptionalGetElement of an empty optional".into()),
            Some(Value::Optional(Some(v))) => Ok(vec![(**v).clone()]),
            Some(v) => Ok(vec![v.clone()]),
        }
    }
}

struct OptHas;
impl Kernel for OptHas {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let has = match inputs.first().copied().flatten() {
            None | Some(Value::Optional(None)) => false,
            Some(_) => true,
        };
        Ok(vec![Value::Tensor(cx.tensor_bytes(
            DType::Bool,
            vec![],
            |b| b[0] = has as u8,
        )?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(k: &dyn Kernel, inputs: &[Option<&Value>]) -> KResult<Vec<Value>> {
        k.run(inputs, &mut RunCx::new())
    }

    fn t(shape: &[usize], v: Vec<f32>) -> Value {
        Value::Tensor(Tensor::from_vec(shape.to_vec(), v).unwrap())
    }

    fn seq(v: &Value) -> Vec<(Vec<usize>, Vec<f32>)> {
        match v {
            Value::Sequence(s) => s
                .iter()
                .map(|t| (t.shape().to_vec(), t.to_vec::<f32>().unwrap()))
                .collect(),
            _ => panic!("not a sequence"),
        }
    }

    #[test]
    fn insert_erase_at_with_negative_positions() {
        let a = t(&[1], vec![1.0]);
        let b = t(&[1], vec![2.0]);
        let c = t(&[1], vec![3.0]);
        let s = run(&SeqConstruct, &[Some(&a), Some(&b)]).unwrap().remove(0);
        // Insert at -1 = before the last element.
        let p = Value::Tensor(Tensor::scalar(-1i64));
        let s2 = run(&SeqInsert, &[Some(&s), Some(&c), Some(&p)])
            .unwrap()
            .remove(0);
        assert_eq!(
            seq(&s2).iter().map(|x| x.1[0]).collect::<Vec<_>>(),
            vec![1.0, 3.0, 2.0]
        );
        // Insert at len = append; no position = append.
        let p2 = Value::Tensor(Tensor::scalar(2i32));
        let s3 = run(&SeqInsert, &[Some(&s), Some(&c), Some(&p2)])
            .unwrap()
            .remove(0);
        assert_eq!(
            seq(&s3).iter().map(|x| x.1[0]).collect::<Vec<_>>(),
            vec![1.0, 2.0, 3.0]
        );
        let p3 = Value::Tensor(Tensor::scalar(3i64));
        assert!(run(&SeqInsert, &[Some(&s), Some(&c), Some(&p3)]).is_err());
        // Erase default = last; at -3 = first.
        let e = run(&SeqErase, &[Some(&s2), None]).unwrap().remove(0);
        assert_eq!(
            seq(&e).iter().map(|x| x.1[0]).collect::<Vec<_>>(),
            vec![1.0, 3.0]
        );
        let m3 = Value::Tensor(Tensor::scalar(-3i64));
        let e = run(&SeqErase, &[Some(&s2), Some(&m3)]).unwrap().remove(0);
        assert_eq!(
            seq(&e).iter().map(|x| x.1[0]).collect::<Vec<_>>(),
            vec![3.0, 2.0]
        );
        let at = run(&SeqAt, &[Some(&s2), Some(&m3)]).unwrap().remove(0);
        assert_eq!(at.as_tensor().unwrap().to_vec::<f32>().unwrap(), vec![1.0]);
        assert!(run(&SeqAt, &[Some(&s2), Some(&p3)]).is_err());
        let n = run(&SeqLength, &[Some(&s2)]).unwrap().remove(0);
        assert_eq!(n.as_tensor().unwrap().to_vec::<i64>().unwrap(), vec![3]);
    }

    #[test]
    fn split_scalar_uneven_and_list_and_keepdims() {
        // [[0,1,2],[3,4,5],[6,7,8],[9,10,11],[12,13,14]] split by 2 along axis 0 → 2,2,1 rows.
        let x = t(&[5, 3], (0..15).map(|v| v as f32).collect());
        let k = SplitToSeq {
            axis: 0,
            keepdims: true,
        };
        let two = Value::Tensor(Tensor::scalar(2i64));
        let r = seq(&run(&k, &[Some(&x), Some(&two)]).unwrap()[0]);
        assert_eq!(
            r.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
            vec![vec![2, 3], vec![2, 3], vec![1, 3]]
        );
        assert_eq!(r[2].1, vec![12.0, 13.0, 14.0]);
        // Along axis -1 with sizes [1, 2].
        let k = SplitToSeq {
            axis: -1,
            keepdims: false,
        };
        let sizes = Value::Tensor(Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap());
        let r = seq(&run(&k, &[Some(&x), Some(&sizes)]).unwrap()[0]);
        assert_eq!(r[0].0, vec![5, 1]);
        assert_eq!(
            r[1].1,
            vec![1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 10.0, 11.0, 13.0, 14.0]
        );
        // No split, keepdims=0: chunks of one with the axis removed.
        let r = seq(&run(&k, &[Some(&x), None]).unwrap()[0]);
        assert_eq!(r.len(), 3);
        assert_eq!(r[1], (vec![5], vec![1.0, 4.0, 7.0, 10.0, 13.0]));
    }

    #[test]
    fn concat_and_stack() {
        let a = t(&[2, 1], vec![1.0, 2.0]);
        let b = t(&[2, 2], vec![3.0, 4.0, 5.0, 6.0]);
        let s = Value::Sequence(vec![
            a.as_tensor().unwrap().clone(),
            b.as_tensor().unwrap().clone(),
        ]);
        let r = run(
            &ConcatFromSeq {
                axis: -1,
                new_axis: false,
            },
            &[Some(&s)],
        )
        .unwrap()
        .remove(0);
        let r = r.as_tensor().unwrap();
        assert_eq!(r.shape(), &[2, 3]);
        assert_eq!(
            r.to_vec::<f32>().unwrap(),
            vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]
        );
        // new_axis with axis -1 stacks at the end.
        let s = Value::Sequence(vec![
            a.as_tensor().unwrap().clone(),
            a.as_tensor().unwrap().clone(),
        ]);
        let r = run(
            &ConcatFromSeq {
                axis: -1,
                new_axis: true,
            },
            &[Some(&s)],
        )
        .unwrap()
        .remove(0);
        let r = r.as_tensor().unwrap();
        assert_eq!(r.shape(), &[2, 1, 2]);
        assert_eq!(r.to_vec::<f32>().unwrap(), vec![1.0, 1.0, 2.0, 2.0]);
        let r = run(
            &ConcatFromSeq {
                axis: 0,
                new_axis: true,
            },
            &[Some(&s)],
        )
        .unwrap()
        .remove(0);
        assert_eq!(r.as_tensor().unwrap().shape(), &[2, 2, 1]);
    }

    #[test]
    fn optionals() {
        let a = t(&[1], vec![1.0]);
        let o = run(&OptionalK, &[Some(&a)]).unwrap().remove(0);
        let e = run(&OptionalK, &[]).unwrap().remove(0);
        let has =
            |v: Option<&Value>| run(&OptHas, &[v]).unwrap()[0].as_tensor().unwrap().bytes()[0];
        assert_eq!(has(Some(&o)), 1);
        assert_eq!(has(Some(&e)), 0);
        assert_eq!(has(None), 0);
        assert_eq!(has(Some(&a)), 1);
        assert!(run(&OptGet, &[Some(&e)]).is_err());
        let g = run(&OptGet, &[Some(&o)]).unwrap().remove(0);
        assert_eq!(g.as_tensor().unwrap().to_vec::<f32>().unwrap(), vec![1.0]);
    }
}
