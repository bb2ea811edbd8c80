//! ONNX Runtime's fused normalizations: `SkipLayerNormalization`,
//! `SkipSimplifiedLayerNormalization`, `SimplifiedLayerNormalization` (RMSNorm, which ORT
//! registers in the default domain) and `EmbedLayerNormalization`. Statistics in f32 (f64
//! for f64 inputs); saved statistics are f32.

use std::borrow::Cow;

use kiln_ir::{DType, Op, Tensor};

use super::KResult;
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::norm::{
    affine_norm_rows, norm_param, norm_rows_f32, normalize_row, reals_tensor, stash_dtype,
};
use crate::kernels::reduce::num::{f32s, ints, to_reals, view, Float, Real};
use crate::kernels::util::norm_axis;
use crate::value::Value;

/// ORT's default epsilon of its fused layer norms.
const ORT_EPS: f32 = 1e-12;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let n_out = cx.output_types.len().max(1);
    let k: Box<dyn Kernel> = match op {
        Op::SkipLayerNormalization(o) => Box::new(SkipNorm {
            eps: o.epsilon.unwrap_or(ORT_EPS),
            rms: false,
            n_out,
        }),
        Op::SkipSimplifiedLayerNormalization(o) => Box::new(SkipNorm {
            eps: o.epsilon.unwrap_or(ORT_EPS),
            rms: true,
            n_out,
        }),
        Op::SimplifiedLayerNormalization(o) => match stash_dtype(o.stash_type) {
            Ok(stash) => Box::new(SimplifiedNorm {
                axis: o.axis,
                eps: o.epsilon,
                stash,
                n_out,
            }),
            Err(e) => return Some(Err(e)),
        },
        Op::EmbedLayerNormalization(o) => Box::new(EmbedNorm {
            eps: o.epsilon.unwrap_or(ORT_EPS),
            n_out,
        }),
        _ => return None,
    };
    Some(Ok(k))
}

// ---------------------------------------------------------------------------------------------
// SkipLayerNormalization / SkipSimplifiedLayerNormalization

struct SkipNorm {
    eps: f32,
    rms: bool,
    n_out: usize,
}

impl Kernel for SkipNorm {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        if dt == DType::F32 {
            return self.run_f32(inputs, cx);
        }
        crate::with_float!(dt, T => self.run_t::<T>(inputs, cx), else Err(KernelError::Unsupported(format!("skip layer norm of {dt}"))))
    }
}

/// Statistics of `rows` rows, shaped `shape` with the last dim 1, as f32 tensors.
fn stats_tensors(cx: &mut RunCx, shape: &[usize], stats: &[(f32, f32)]) -> KResult<(Value, Value)> {
    let mut sh = shape.to_vec();
    if let Some(l) = sh.last_mut() {
        *l = 1;
    }
    let m = cx.tensor_dirty::<f32>(sh.clone(), |o| {
        o.iter_mut().zip(stats).for_each(|(o, s)| *o = s.0)
    })?;
    let i = cx.tensor_dirty::<f32>(sh, |o| o.iter_mut().zip(stats).for_each(|(o, s)| *o = s.1))?;
    Ok((m.into(), i.into()))
}

/// SkipLayerNormalization's inputs, checked: `rows` rows of `h`, `skip` repeating every
/// `skip_rows` rows.
struct SkipArgs<'a> {
    x: &'a Tensor,
    skip: &'a Tensor,
    gamma: &'a Tensor,
    beta: Option<&'a Tensor>,
    bias: Option<&'a Tensor>,
    shape: Vec<usize>,
    h: usize,
    rows: usize,
    skip_rows: usize,
}

impl SkipNorm {
    /// The inputs and their shared shape checks, for both the f32 and the generic path.
    fn args<'a>(&self, inputs: &[Option<&'a Value>]) -> KResult<SkipArgs<'a>> {
        let x = tensor_input(inputs, 0)?;
        let skip = tensor_input(inputs, 1)?;
        let gamma = tensor_input(inputs, 2)?;
        // SkipLayerNormalization: beta (3), bias (4); the simplified one: bias (3).
        let (beta, bias) = if self.rms {
            (None, opt_tensor_input(inputs, 3)?)
        } else {
            (opt_tensor_input(inputs, 3)?, opt_tensor_input(inputs, 4)?)
        };
        let shape = x.shape().to_vec();
        let h = *shape
            .last()
            .ok_or("skip layer norm input must have rank >= 1")?;
        let rows = x.len() / h.max(1);
        let skip_rows = skip.len() / h.max(1);
        if skip.shape().last() != Some(&h) || skip_rows == 0 || rows % skip_rows != 0 {
            return Err(KernelError::Invalid(format!(
                "skip of shape {:?} for input {shape:?}",
                skip.shape()
            )));
        }
        Ok(SkipArgs {
            x,
            skip,
            gamma,
            beta,
            bias,
            shape,
            h,
            rows,
            skip_rows,
        })
    }

    /// f32: one pass per row (sum, statistics, affine), rows over threads, parameters read
    /// in place.
    fn run_f32(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let SkipArgs {
            x,
            skip,
            gamma,
            beta,
            bias,
            shape,
            h,
            rows,
            skip_rows,
        } = self.args(inputs)?;
        fn vec1<'a>(
            t: Option<&'a Tensor>,
            h: usize,
            what: &str,
        ) -> KResult<Option<Cow<'a, [f32]>>> {
            match t {
                Some(t) if t.len() == h => Ok(Some(f32s(t)?)),
                Some(t) => Err(KernelError::Invalid(format!(
                    "{what} of shape {:?} for hidden size {h}",
                    t.shape()
                ))),
                None => Ok(None),
            }
        }
        let g = vec1(Some(gamma), h, "gamma")?.unwrap_or_default();
        let beta = vec1(beta, h, "beta")?;
        let bias = vec1(bias, h, "bias")?;
        let (xs, ss) = (view::<f32>(x)?, f32s(skip)?);
        // input + skip (+ bias).
        let add = |r: usize, dst: &mut [f32]| {
            let sr = r % skip_rows;
            let (xr, sk) = (&xs[r * h..(r + 1) * h], &ss[sr * h..(sr + 1) * h]);
            match &bias {
                Some(b) => {
                    for (((d, &a), &s), &b) in dst.iter_mut().zip(xr).zip(sk).zip(b.iter()) {
                        *d = a + s + b;
                    }
                }
                None => {
                    for ((d, &a), &s) in dst.iter_mut().zip(xr).zip(sk) {
                        *d = a + s;
                    }
                }
            }
        };
        // The sum is an output (with the statistics, as in the generic path); otherwise it
        // lives in the output row until normalized.
        let sum = if self.n_out > 1 {
            Some(cx.tensor_dirty::<f32>(shape.clone(), |o| {
                o.chunks_mut(h.max(1))
                    .enumerate()
                    .for_each(|(r, d)| add(r, d))
            })?)
        } else {
            None
        };
        let sum_vals = match &sum {
            Some(t) => Some(view::<f32>(t)?),
            None => None,
        };
        let mut stats = Vec::new();
        let y = cx.tensor_dirty::<f32>(shape.clone(), |o| {
            stats = norm_rows_f32(
                o,
                rows,
                h,
                &g,
                beta.as_deref(),
                self.eps,
                self.rms,
                |r, row| match &sum_vals {
                    Some(sv) => row.copy_from_slice(&sv[r * h..(r + 1) * h]),
                    None => add(r, row),
                },
            )
        })?;
        drop(sum_vals);
        let mut outs: Vec<Value> = vec![y.into()];
        if self.n_out > 1 {
            let (m, i) = stats_tensors(cx, &shape, &stats)?;
            outs.push(m);
            outs.push(i);
        }
        if let Some(t) = sum {
            outs.push(t.into());
        }
        Ok(outs)
    }

    fn run_t<T: Float>(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let SkipArgs {
            x,
            skip,
            gamma,
            beta,
            bias,
            shape,
            h,
            rows,
            skip_rows,
        } = self.args(inputs)?;
        let vec1 = |t: Option<&kiln_ir::Tensor>, what: &str| -> KResult<Option<Vec<T::R>>> {
            match t {
                Some(t) if t.len() == h => Ok(Some(to_reals::<T::R>(t)?)),
                Some(t) => Err(KernelError::Invalid(format!(
                    "{what} of shape {:?} for hidden size {h}",
                    t.shape()
                ))),
                None => Ok(None),
            }
        };
        let g = vec1(Some(gamma), "gamma")?.unwrap_or_default();
        let beta = vec1(beta, "beta")?;
        let bias = vec1(bias, "bias")?;
        let (xs, ss) = (view::<T>(x)?, view::<T>(skip)?);
        // input + skip (+ bias), rounded to T as ORT stores it.
        let mut sum = vec![T::default(); xs.len()];
        for r in 0..rows {
            let sr = r % skip_rows;
            for c in 0..h {
                let mut v = xs[r * h + c].to_r() + ss[sr * h + c].to_r();
                if let Some(b) = &bias {
                    v += b[c];
                }
                sum[r * h + c] = T::from_r(v);
            }
        }
        let eps = T::R::from_f64(self.eps as f64);
        let mut means = vec![T::R::ZERO; rows];
        let mut invs = vec![T::R::ZERO; rows];
        let y = cx.tensor::<T>(shape.clone(), |o| {
            affine_norm_rows::<T>(
                &sum,
                rows,
                h,
                &g,
                beta.as_deref(),
                eps,
                self.rms,
                o,
                &mut means,
                &mut invs,
            )
        })?;
        let mut outs: Vec<Value> = vec![y.into()];
        if self.n_out > 1 {
            let mut stats = shape.clone();
            if let Some(l) = stats.last_mut() {
                *l = 1;
            }
            outs.push(reals_tensor(cx, DType::F32, stats.clone(), &means)?.into());
            outs.push(reals_tensor(cx, DType::F32, stats, &invs)?.into());
            outs.push(cx.tensor::<T>(shape, |o| o.copy_from_slice(&sum))?.into());
        }
        Ok(outs)
    }
}

// ---------------------------------------------------------------------------------------------
// SimplifiedLayerNormalization

struct SimplifiedNorm {
    axis: i64,
    eps: f32,
    stash: DType,
    n_out: usize,
}

impl Kernel for SimplifiedNorm {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let scale = tensor_input(inputs, 1)?;
        let shape = x.shape().to_vec();
        if shape.is_empty() {
            return Err("SimplifiedLayerNormalization needs an input of rank >= 1".into());
        }
        let axis = norm_axis(self.axis, shape.len())?;
        let rows: usize = shape[..axis].iter().product();
        let cols: usize = shape[axis..].iter().product();
        let dt = x.dtype();
        if dt == DType::F32 {
            let g = norm_param::<f32>(scale, &shape, axis, "scale")?;
            // A scale over the normalized dims (not the whole shape): the row kernel.
            if g.len() == cols {
                let xs = view::<f32>(x)?;
                let mut stats = Vec::new();
                let y = cx.tensor_dirty::<f32>(shape.clone(), |o| {
                    stats = norm_rows_f32(o, rows, cols, &g, None, self.eps, true, |r, row| {
                        row.copy_from_slice(&xs[r * cols..(r + 1) * cols])
                    });
                })?;
                let mut outs: Vec<Value> = vec![y.into()];
                if self.n_out > 1 {
                    let stats_shape: Vec<usize> = shape
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| if i < axis { d } else { 1 })
                        .collect();
                    let invs: Vec<f32> = stats.iter().map(|s| s.1).collect();
                    outs.push(reals_tensor(cx, self.stash, stats_shape, &invs)?.into());
                }
                return Ok(outs);
            }
        }
        crate::with_float!(dt, T => {
            let xs = view::<T>(x)?;
            let g = norm_param::<<T as Float>::R>(scale, &shape, axis, "scale")?;
            let eps = <T as Float>::R::from_f64(self.eps as f64);
            let mut means = vec![<T as Float>::R::ZERO; rows];
            let mut invs = vec![<T as Float>::R::ZERO; rows];
            let y = cx.tensor::<T>(shape.clone(), |o| {
                affine_norm_rows::<T>(&xs, rows, cols, &g, None, eps, true, o, &mut means, &mut invs)
            })?;
            let mut outs: Vec<Value> = vec![y.into()];
            if self.n_out > 1 {
                let stats: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if i < axis { d } else { 1 }).collect();
                outs.push(reals_tensor(cx, self.stash, stats, &invs)?.into());
            }
            Ok(outs)
        }, else Err(KernelError::Unsupported(format!("SimplifiedLayerNormalization of {dt}"))))
    }
}

// ---------------------------------------------------------------------------------------------
// EmbedLayerNormalization

struct EmbedNorm {
    eps: f32,
    n_out: usize,
}

impl Kernel for EmbedNorm {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let w = tensor_input(inputs, 2)?;
        let dt = w.dtype();
        if dt == DType::F32 {
            return self.run_f32(inputs, cx);
        }
        crate::with_float!(dt, T => self.run_t::<T>(inputs, cx), else Err(KernelError::Unsupported(format!("EmbedLayerNormalization of {dt}"))))
    }
}

/// Row `i` of an embedding table of `rows` rows of `h`.
fn lookup<'a, R>(table: &'a [R], rows: usize, h: usize, i: i64, what: &str) -> KResult<&'a [R]> {
    let r = usize::try_from(i)
        .ok()
        .filter(|&r| r < rows)
        .ok_or_else(|| {
            KernelError::Invalid(format!("{what} index {i} is out of range for {rows} rows"))
        })?;
    Ok(&table[r * h..(r + 1) * h])
}

/// The table rows of every token: (word, position, segment).
type EmbedRows = Vec<(usize, usize, Option<usize>)>;

/// The row index `i` of a table of `rows` rows, checked.
fn row_index(rows: usize, i: i64, what: &str) -> KResult<usize> {
    usize::try_from(i)
        .ok()
        .filter(|&r| r < rows)
        .ok_or_else(|| {
            KernelError::Invalid(format!("{what} index {i} is out of range for {rows} rows"))
        })
}

/// The inputs of one EmbedLayerNormalization with the checks both paths share: 2-D ids,
/// tables of the hidden size (with their row counts), enough segment ids, position ids per row
/// or per position, gamma and beta of the hidden size.
struct EmbedArgs<'a> {
    b: usize,
    s: usize,
    h: usize,
    ids: Vec<i64>,
    pids: Option<Vec<i64>>,
    /// (table, rows)
    word: (&'a Tensor, usize),
    pos: (&'a Tensor, usize),
    /// (segment ids, table, rows)
    segs: Option<(Vec<i64>, &'a Tensor, usize)>,
    gamma: &'a Tensor,
    beta: &'a Tensor,
    mask: Option<&'a Tensor>,
}

impl<'a> EmbedArgs<'a> {
    fn new(inputs: &[Option<&'a Value>]) -> KResult<EmbedArgs<'a>> {
        let ids_t = tensor_input(inputs, 0)?;
        let seg_t = opt_tensor_input(inputs, 1)?;
        let word = tensor_input(inputs, 2)?;
        let pos = tensor_input(inputs, 3)?;
        let seg_emb = opt_tensor_input(inputs, 4)?;
        let gamma = tensor_input(inputs, 5)?;
        let beta = tensor_input(inputs, 6)?;
        let mask = opt_tensor_input(inputs, 7)?;
        let pos_ids = opt_tensor_input(inputs, 8)?;
        let [b, s] = ids_t.shape()[..] else {
            return Err(KernelError::Invalid(format!(
                "input_ids must be 2-D, got {:?}",
                ids_t.shape()
            )));
        };
        let h = *word.shape().last().ok_or("word_embedding must be 2-D")?;
        let table = |t: &'a Tensor, what: &str| -> KResult<(&'a Tensor, usize)> {
            if t.rank() != 2 || t.shape()[1] != h {
                return Err(KernelError::Invalid(format!(
                    "{what} of shape {:?} for hidden size {h}",
                    t.shape()
                )));
            }
            Ok((t, t.shape()[0]))
        };
        let word = table(word, "word_embedding")?;
        let pos = table(pos, "position_embedding")?;
        let segs = match (seg_t, seg_emb) {
            (Some(ids), Some(e)) => {
                let sids = ints(ids, "segment_ids")?;
                if sids.len() < b * s {
                    return Err("segment_ids too short".into());
                }
                let (e, rows) = table(e, "segment_embedding")?;
                Some((sids, e, rows))
            }
            _ => None,
        };
        let ids = ints(ids_t, "input_ids")?;
        let pids = match pos_ids {
            Some(p) => {
                let v = ints(p, "position_ids")?;
                if v.len() != b * s && v.len() != s {
                    return Err(KernelError::Invalid(format!(
                        "position_ids of shape {:?}",
                        p.shape()
                    )));
                }
                Some(v)
            }
            None => None,
        };
        if gamma.len() != h || beta.len() != h {
            return Err(KernelError::Invalid(format!(
                "gamma/beta of {}/{} values for hidden size {h}",
                gamma.len(),
                beta.len()
            )));
        }
        Ok(EmbedArgs {
            b,
            s,
            h,
            ids,
            pids,
            word,
            pos,
            segs,
            gamma,
            beta,
            mask,
        })
    }
}

impl EmbedNorm {
    /// f32: the embedding rows are gathered from the tables in place (the word table is
    /// large, and constant), summed into the output row and normalized there, rows over
    /// threads.
    fn run_f32(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let a = EmbedArgs::new(inputs)?;
        let (b, s, h, ids, pids, mask) = (a.b, a.s, a.h, a.ids, a.pids, a.mask);
        let (wv, wr) = (f32s(a.word.0)?, a.word.1);
        let (pv, pr) = (f32s(a.pos.0)?, a.pos.1);
        let segs = match a.segs {
            Some((sids, e, sr)) => Some((sids, f32s(e)?, sr)),
            None => None,
        };
        let (g, bt) = (f32s(a.gamma)?, f32s(a.beta)?);
        // Every index checked up front (in the generic path's order), so that the parallel
        // row pass cannot fail.
        let mut at: EmbedRows = Vec::with_capacity(b * s);
        for r in 0..b * s {
            let p = match &pids {
                Some(v) if v.len() == b * s => v[r],
                Some(v) => v[r % s],
                None => (r % s) as i64,
            };
            let w = row_index(wr, *ids.get(r).ok_or("input_ids too short")?, "input_ids")?;
            let p = row_index(pr, p, "position_ids")?;
            let sg = match &segs {
                Some((sids, _, sr)) => Some(row_index(
                    *sr,
                    *sids.get(r).ok_or("segment_ids too short")?,
                    "segment_ids",
                )?),
                None => None,
            };
            at.push((w, p, sg));
        }
        let sum_row = |r: usize, dst: &mut [f32]| {
            let (w, p, sg) = at[r];
            let (we, pe) = (&wv[w * h..(w + 1) * h], &pv[p * h..(p + 1) * h]);
            for ((d, &a), &c) in dst.iter_mut().zip(we).zip(pe) {
                *d = a + c;
            }
            if let (Some(sg), Some((_, sv, _))) = (sg, &segs) {
                for (d, &e) in dst.iter_mut().zip(&sv[sg * h..(sg + 1) * h]) {
                    *d += e;
                }
            }
        };
        let sum = if self.n_out > 2 {
            Some(cx.tensor_dirty::<f32>(vec![b, s, h], |o| {
                o.chunks_mut(h.max(1))
                    .enumerate()
                    .for_each(|(r, d)| sum_row(r, d))
            })?)
        } else {
            None
        };
        let sum_vals = match &sum {
            Some(t) => Some(view::<f32>(t)?),
            None => None,
        };
        let y = cx.tensor_dirty::<f32>(vec![b, s, h], |o| {
            norm_rows_f32(
                o,
                b * s,
                h,
                &g,
                Some(&bt),
                self.eps,
                false,
                |r, row| match &sum_vals {
                    Some(sv) => row.copy_from_slice(&sv[r * h..(r + 1) * h]),
                    None => sum_row(r, row),
                },
            );
        })?;
        drop(sum_vals);
        let counts = mask_counts(mask, b, s)?;
        let mut outs: Vec<Value> = vec![y.into()];
        if self.n_out > 1 {
            outs.push(
                cx.tensor_dirty::<i32>(vec![b], |o| o.copy_from_slice(&counts))?
                    .into(),
            );
        }
        if let Some(t) = sum {
            outs.push(t.into());
        }
        Ok(outs)
    }

    fn run_t<T: Float>(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let a = EmbedArgs::new(inputs)?;
        let (b, s, h, ids, pids, mask) = (a.b, a.s, a.h, a.ids, a.pids, a.mask);
        let (wv, wr) = (to_reals::<T::R>(a.word.0)?, a.word.1);
        let (pv, pr) = (to_reals::<T::R>(a.pos.0)?, a.pos.1);
        let segs = match a.segs {
            Some((sids, e, sr)) => Some((sids, (to_reals::<T::R>(e)?, sr))),
            None => None,
        };
        let g = to_reals::<T::R>(a.gamma)?;
        let bt = to_reals::<T::R>(a.beta)?;
        let mut sum = vec![T::R::ZERO; b * s * h];
        for bi in 0..b {
            for si in 0..s {
                let r = bi * s + si;
                let p = match &pids {
                    Some(v) if v.len() == b * s => v[r],
                    Some(v) => v[si],
                    None => si as i64,
                };
                let dst = &mut sum[r * h..(r + 1) * h];
                let we = lookup(&wv, wr, h, ids[r], "input_ids")?;
                let pe = lookup(&pv, pr, h, p, "position_ids")?;
                for c in 0..h {
                    dst[c] = we[c] + pe[c];
                }
                if let Some((sids, (sv, sr))) = &segs {
                    let se = lookup(sv, *sr, h, sids[r], "segment_ids")?;
                    for c in 0..h {
                        dst[c] += se[c];
                    }
                }
            }
        }
        let eps = T::R::from_f64(self.eps as f64);
        let y = cx.tensor::<T>(vec![b, s, h], |o| {
            let mut buf = vec![T::R::ZERO; h];
            for r in 0..b * s {
                buf.copy_from_slice(&sum[r * h..(r + 1) * h]);
                if h > 0 {
                    normalize_row(&mut buf, eps, false);
                }
                for c in 0..h {
                    o[r * h + c] = T::from_r(buf[c] * g[c] + bt[c]);
                }
            }
        })?;
        let counts = mask_counts(mask, b, s)?;
        let mut outs: Vec<Value> = vec![y.into()];
        if self.n_out > 1 {
            outs.push(
                cx.tensor::<i32>(vec![b], |o| o.copy_from_slice(&counts))?
                    .into(),
            );
        }
        if self.n_out > 2 {
            outs.push(
                cx.tensor::<T>(vec![b, s, h], |o| {
                    for (o, &v) in o.iter_mut().zip(&sum) {
                        *o = T::from_r(v);
                    }
                })?
                .into(),
            );
        }
        Ok(outs)
    }
}

/// mask_index: the number of non-zero mask entries per sequence (0 without a mask).
fn mask_counts(mask: Option<&Tensor>, b: usize, s: usize) -> KResult<Vec<i32>> {
    Ok(match mask {
        Some(m) => {
            let v = ints(m, "mask")?;
            if v.len() != b * s {
                return Err(KernelError::Invalid(format!(
                    "mask of shape {:?}",
                    m.shape()
                )));
            }
            (0..b)
                .map(|bi| v[bi * s..(bi + 1) * s].iter().filter(|&&x| x != 0).count() as i32)
                .collect()
        }
        None => vec![0; b],
    })
}
