//! Control flow: `If`, `Loop`, `Scan`, `SequenceMap`. Their bodies are compiled plans
//! whose inputs are the formal parameters followed by the outer values they capture.

use kiln_ir::{DType, Tensor};

use crate::error::KernelError;
use crate::kernel::{tensor_input, Kernel, RunCx};
use crate::plan::Plan;
use crate::value::Value;

/// A compiled subgraph and, for each outer value it captures, the index of that value
/// among the node's captured inputs.
pub struct SubPlan {
    pub plan: Plan,
    pub captures: Vec<usize>,
}

impl SubPlan {
    fn run(
        &self,
        mut formals: Vec<Option<Value>>,
        captured: &[Option<&Value>],
        cx: &mut RunCx,
    ) -> Result<Vec<Value>, KernelError> {
        for &c in &self.captures {
            formals.push(captured.get(c).copied().flatten().cloned());
        }
        self.plan
            .run_positional(formals, cx)
            .map_err(|e| KernelError::Invalid(format!("in subgraph: {e}")))
    }
}

fn scalar_bool(t: &Tensor, what: &str) -> Result<bool, KernelError> {
    if t.len() != 1 || t.dtype() != DType::Bool {
        return Err(KernelError::Invalid(format!(
            "{what} must be one bool, got {}{:?}",
            t.dtype(),
            t.shape()
        )));
    }
    Ok(t.bytes()[0] != 0)
}

pub struct IfKernel {
    pub then_branch: SubPlan,
    pub else_branch: SubPlan,
    pub n_explicit: usize,
}

impl Kernel for IfKernel {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let c = scalar_bool(tensor_input(inputs, 0)?, "If condition")?;
        let captured = &inputs[self.n_explicit.min(inputs.len())..];
        if c {
            self.then_branch.run(Vec::new(), captured, cx)
        } else {
            self.else_branch.run(Vec::new(), captured, cx)
        }
    }
}

pub struct LoopKernel {
    pub body: SubPlan,
    pub n_explicit: usize,
}

impl Kernel for LoopKernel {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let explicit = &inputs[..self.n_explicit.min(inputs.len())];
        let captured = &inputs[self.n_explicit.min(inputs.len())..];
        let max_trips = match explicit.first().copied().flatten() {
            Some(Value::Tensor(t)) if !t.is_empty() => Some(
                t.to_i64_vec()
                    .and_then(|v| v.first().copied())
                    .ok_or("Loop M must be an integer")?,
            ),
            _ => None,
        };
        let mut cond = match explicit.get(1).copied().flatten() {
            Some(Value::Tensor(t)) => scalar_bool(t, "Loop condition")?,
            _ => true,
        };
        let mut carried: Vec<Option<Value>> = explicit.iter().skip(2).map(|v| v.cloned()).collect();
        let n = carried.len();
        let mut scans: Vec<Vec<Value>> = Vec::new();
        let mut i: i64 = 0;
        while cond && max_trips.is_none_or(|m| i < m) {
            let mut formals = vec![
                Some(Value::Tensor(Tensor::scalar(i))),
                Some(Value::Tensor(Tensor::from_bools(vec![], &[cond])?)),
            ];
            formals.extend(carried.iter().cloned());
            let outs = self.body.run(formals, captured, cx)?;
            if outs.len() < 1 + n {
                return Err("Loop body returned too few outputs".into());
            }
            let mut it = outs.into_iter();
            cond = match it.next() {
                Some(Value::Tensor(t)) => scalar_bool(&t, "Loop body condition")?,
                _ => return Err("Loop body condition must be a tensor".into()),
            };
            carried = it.by_ref().take(n).map(Some).collect();
            let rest: Vec<Value> = it.collect();
            if scans.is_empty() {
                scans = vec![Vec::new(); rest.len()];
            }
            for (k, v) in rest.into_iter().enumerate() {
                scans[k].push(v);
            }
            i += 1;
        }
        let mut out: Vec<Value> = carried
            .into_iter()
            .map(|v| v.ok_or_else(|| KernelError::Invalid("Loop carried value is missing".into())))
            .collect::<Result<_, _>>()?;
        for s in scans {
            let ts: Vec<Tensor> = s
                .into_iter()
                .map(|v| v.into_tensor().ok_or("Loop scan outputs must be tensors"))
                .collect::<Result<_, _>>()?;
            out.push(Value::Tensor(stack(&ts, 0)?));
        }
        Ok(out)
    }
}

pub struct ScanKernel {
    pub body: SubPlan,
    pub n_explicit: usize,
    pub num_scan_inputs: usize,
    pub input_axes: Vec<i64>,
    pub input_reverse: Vec<bool>,
    pub output_axes: Vec<i64>,
    pub output_reverse: Vec<bool>,
}

impl Kernel for ScanKernel {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let explicit = &inputs[..self.n_explicit.min(inputs.len())];
        let captured = &inputs[self.n_explicit.min(inputs.len())..];
        let m = self.num_scan_inputs;
        let n = explicit
            .len()
            .checked_sub(m)
            .ok_or("Scan has fewer inputs than num_scan_inputs")?;
        let mut state: Vec<Option<Value>> = explicit[..n].iter().map(|v| v.cloned()).collect();
        let mut seqs = Vec::with_capacity(m);
        let mut len = None;
        for j in 0..m {
            let t = tensor_input(explicit, n + j)?;
            let axis =
                super::util::norm_axis(self.input_axes.get(j).copied().unwrap_or(0), t.rank())?;
            let l = t.shape()[axis];
            if len.is_some_and(|x| x != l) {
                return Err("Scan inputs have different sequence lengths".into());
            }
            len = Some(l);
            seqs.push((t, axis));
        }
        let len = len.unwrap_or(0);
        let mut scans: Vec<Vec<Tensor>> = Vec::new();
        for step in 0..len {
            let mut formals = state.clone();
            for (j, (t, axis)) in seqs.iter().enumerate() {
                let i = if self.input_reverse.get(j).copied().unwrap_or(false) {
                    len - 1 - step
                } else {
                    step
                };
                formals.push(Some(Value::Tensor(take(t, *axis, i)?)));
            }
            let outs = self.body.run(formals, captured, cx)?;
            if outs.len() < n {
                return Err("Scan body returned too few outputs".into());
            }
            let mut it = outs.into_iter();
            state = it.by_ref().take(n).map(Some).collect();
            let rest: Vec<Value> = it.collect();
            if scans.is_empty() {
                scans = vec![Vec::new(); rest.len()];
            }
            for (k, v) in rest.into_iter().enumerate() {
                scans[k].push(v.into_tensor().ok_or("Scan outputs must be tensors")?);
            }
        }
        let mut out: Vec<Value> = state
            .into_iter()
            .map(|v| v.ok_or_else(|| KernelError::Invalid("Scan state is missing".into())))
            .collect::<Result<_, _>>()?;
        for (k, mut ts) in scans.into_iter().enumerate() {
            if self.output_reverse.get(k).copied().unwrap_or(false) {
                ts.reverse();
            }
            let rank = ts.first().map(|t| t.rank()).unwrap_or(0) + 1;
            let axis = super::util::norm_axis(self.output_axes.get(k).copied().unwrap_or(0), rank)?;
            out.push(Value::Tensor(stack(&ts, axis)?));
        }
        Ok(out)
    }
}

/// `Scan` before opset 9: every state and scan input has a leading batch axis, the scan
/// axis is axis 1, and an optional first input `sequence_lens` gives each batch entry's
/// length. Runs `inner` (the opset-9 kernel, scan axes 0, built without `sequence_lens`)
/// once per batch entry and stacks the results; scan outputs shorter than the longest
/// sequence are padded with zeros.
pub struct Scan8Kernel {
    pub inner: ScanKernel,
}

impl Kernel for Scan8Kernel {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let n_explicit = self.inner.n_explicit + 1;
        let explicit = &inputs[..n_explicit.min(inputs.len())];
        let captured = &inputs[n_explicit.min(inputs.len())..];
        let lens = crate::kernel::opt_tensor_input(explicit, 0)?;
        let args: Vec<&Tensor> = (1..explicit.len())
            .map(|i| tensor_input(explicit, i))
            .collect::<Result<_, _>>()?;
        let m = self.inner.num_scan_inputs;
        let n = args
            .len()
            .checked_sub(m)
            .ok_or("Scan has fewer inputs than num_scan_inputs")?;
        let Some(first) = args.first() else {
            return Err("Scan has no inputs".into());
        };
        let batch = *first
            .shape()
            .first()
            .ok_or("Scan-8 inputs need a batch axis")?;
        let mut max_len = None;
        for t in &args {
            if t.shape().first() != Some(&batch) {
                return Err("Scan-8 inputs have different batch sizes".into());
            }
        }
        for t in &args[n..] {
            let l = *t
                .shape()
                .get(1)
                .ok_or("Scan-8 scan inputs need a sequence axis")?;
            if max_len.is_some_and(|x| x != l) {
                return Err("Scan inputs have different sequence lengths".into());
            }
            max_len = Some(l);
        }
        let max_len = max_len.unwrap_or(0);
        if batch == 0 {
            return Err(KernelError::Unsupported(
                "Scan-8 over an empty batch".into(),
            ));
        }
        let lens: Vec<usize> = match lens {
            None => vec![max_len; batch],
            Some(l) => {
                let v = l.to_i64_vec().ok_or("sequence_lens must be integers")?;
                if v.len() != batch {
                    return Err("sequence_lens must have one length per batch entry".into());
                }
                v.into_iter()
                    .map(|x| {
                        usize::try_from(x)
                            .ok()
                            .filter(|&x| x > 0 && x <= max_len)
                            .ok_or_else(|| {
                                KernelError::Invalid(format!(
                                    "sequence length {x} is out of range 1..={max_len}"
                                ))
                            })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let mut per_batch: Vec<Vec<Tensor>> = Vec::with_capacity(batch);
        for (b, &len) in lens.iter().enumerate() {
            let mut vals = Vec::with_capacity(args.len());
            for (j, t) in args.iter().enumerate() {
                let tb = take(t, 0, b)?;
                if j >= n && len < max_len {
                    let steps = (0..len)
                        .map(|i| take(&tb, 0, i))
                        .collect::<Result<Vec<_>, _>>()?;
                    vals.push(stack(&steps, 0)?);
                } else {
                    vals.push(tb);
                }
            }
            let vals: Vec<Value> = vals.into_iter().map(Value::Tensor).collect();
            let mut refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
            refs.extend_from_slice(captured);
            let outs = self.inner.run(&refs, cx)?;
            let mut outs: Vec<Tensor> = outs
                .into_iter()
                .map(|v| v.into_tensor().ok_or("Scan outputs must be tensors"))
                .collect::<Result<_, _>>()?;
            // Pad the scan outputs to the longest sequence.
            for t in outs.iter_mut().skip(n) {
                if t.shape().first().is_some_and(|&l| l < max_len) {
                    let l = t.shape()[0];
                    let mut steps = (0..l)
                        .map(|i| take(t, 0, i))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut zshape = t.shape().to_vec();
                    zshape.remove(0);
                    let z = Tensor::zeros(t.dtype(), zshape)?;
                    steps.resize(max_len, z);
                    *t = stack(&steps, 0)?;
                }
            }
            per_batch.push(outs);
        }
        let n_out = per_batch.first().map_or(0, |o| o.len());
        (0..n_out)
            .map(|k| {
                let ts: Vec<Tensor> = per_batch.iter().map(|o| o[k].clone()).collect();
                Ok(Value::Tensor(stack(&ts, 0)?))
            })
            .collect()
    }
}

/// `FlexAttention` (`ai.onnx.preview`): attention over Q `[B, Hq, L, E]`, K `[B, Hkv, S, E]`,
/// V `[B, Hkv, S, Ev]` (query heads share key/value heads in groups when `Hq > Hkv`), with
/// optional `score_mod` and `prob_mod` subgraphs applied to the whole `[B, Hq, L, S]`
/// score and probability tensors. As in the ONNX reference: Q and K are each pre-scaled by
/// `sqrt(scale)` in their own type, the scores are rounded to that type, then softmax,
/// the mods and the product with V run in the softmax precision (f32 for f16/bf16/f32
/// inputs, unless `softmax_precision` says otherwise), and the output has V's type.
pub struct FlexAttentionKernel {
    pub n_explicit: usize,
    pub scale: Option<f32>,
    pub score_mod: Option<SubPlan>,
    pub prob_mod: Option<SubPlan>,
    /// The softmax precision, `None` for the default.
    pub softmax_precision: Option<DType>,
}

/// `x` rounded to `dt` (identity for f64 and non-float types).
fn round_to(dt: DType, x: f64) -> f64 {
    match dt {
        DType::F32 => x as f32 as f64,
        DType::F16 => f64::from(half::f16::from_f64(x)),
        DType::BF16 => f64::from(half::bf16::from_f64(x)),
        _ => x,
    }
}

/// A tensor of float type `dt` holding `v`.
fn float_tensor(dt: DType, shape: Vec<usize>, v: &[f64]) -> Result<Tensor, KernelError> {
    Ok(match dt {
        DType::F32 => Tensor::from_vec(shape, v.iter().map(|&x| x as f32).collect())?,
        DType::F64 => Tensor::from_vec(shape, v.to_vec())?,
        DType::F16 => Tensor::from_vec(shape, v.iter().map(|&x| half::f16::from_f64(x)).collect())?,
        DType::BF16 => {
            Tensor::from_vec(shape, v.iter().map(|&x| half::bf16::from_f64(x)).collect())?
        }
        dt => return Err(KernelError::Unsupported(format!("FlexAttention in {dt}"))),
    })
}

impl FlexAttentionKernel {
    /// Runs a mod subgraph on `x` (`[B, Hq, L, S]` in `cdt`) and reads its one output back.
    fn apply_mod(
        &self,
        m: &SubPlan,
        what: &str,
        x: Vec<f64>,
        shape: &[usize],
        cdt: DType,
        captured: &[Option<&Value>],
        cx: &mut RunCx,
    ) -> Result<Vec<f64>, KernelError> {
        let t = float_tensor(cdt, shape.to_vec(), &x)?;
        let outs = m.run(vec![Some(Value::Tensor(t))], captured, cx)?;
        let [Value::Tensor(o)] = outs.as_slice() else {
            return Err(KernelError::Invalid(format!(
                "FlexAttention {what} must return one tensor"
            )));
        };
        if o.shape() != shape {
            return Err(KernelError::Invalid(format!(
                "FlexAttention {what} returned shape {:?}, expected {shape:?}",
                o.shape()
            )));
        }
        let v = o.to_f64_vec().ok_or_else(|| {
            KernelError::Invalid(format!("FlexAttention {what} must return numbers"))
        })?;
        Ok(v.into_iter().map(|x| round_to(cdt, x)).collect())
    }
}

impl Kernel for FlexAttentionKernel {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let explicit = &inputs[..self.n_explicit.min(inputs.len())];
        let captured = &inputs[self.n_explicit.min(inputs.len())..];
        let (q, k, v) = (
            tensor_input(explicit, 0)?,
            tensor_input(explicit, 1)?,
            tensor_input(explicit, 2)?,
        );
        let dt = q.dtype();
        if !dt.is_float() || k.dtype() != dt || v.dtype() != dt {
            return Err(KernelError::Unsupported(format!(
                "FlexAttention of {}, {}, {}",
                dt,
                k.dtype(),
                v.dtype()
            )));
        }
        let (&[b, hq, l, e], &[bk, hkv, s, ek], &[bv, hv, sv, ev]) =
            (q.shape(), k.shape(), v.shape())
        else {
            return Err("FlexAttention needs rank-4 Q, K and V".into());
        };
        if bk != b || bv != b || hv != hkv || sv != s || ek != e {
            return Err(KernelError::Invalid(format!(
                "FlexAttention shapes do not agree: Q {:?}, K {:?}, V {:?}",
                q.shape(),
                k.shape(),
                v.shape()
            )));
        }
        if hkv == 0 || hq % hkv != 0 {
            return Err(KernelError::Invalid(format!(
                "FlexAttention: {hq} query heads are not a multiple of {hkv} key/value heads"
            )));
        }
        let group = hq / hkv;
        let cdt = match self.softmax_precision {
            Some(p) => p,
            None if dt == DType::F64 => DType::F64,
            None => DType::F32,
        };
        let scale = self.scale.unwrap_or_else(|| 1.0 / (e as f32).sqrt());
        let sq = round_to(dt, f64::from(scale.sqrt()));
        let pre = |t: &Tensor| -> Result<Vec<f64>, KernelError> {
            Ok(t.to_f64_vec()
                .ok_or("FlexAttention inputs must be floats")?
                .into_iter()
                .map(|x| round_to(dt, x * sq))
                .collect())
        };
        let (qs, ks) = (pre(q)?, pre(k)?);
        let vv: Vec<f64> = v
            .to_f64_vec()
            .ok_or("FlexAttention inputs must be floats")?
            .into_iter()
            .map(|x| round_to(cdt, x))
            .collect();
        let sshape = [b, hq, l, s];
        let mut scores = vec![0.0f64; b * hq * l * s];
        for bi in 0..b {
            for h in 0..hq {
                let kh = h / group;
                for i in 0..l {
                    let qrow = &qs[((bi * hq + h) * l + i) * e..][..e];
                    for j in 0..s {
                        let krow = &ks[((bi * hkv + kh) * s + j) * e..][..e];
                        let dot: f64 = qrow.iter().zip(krow).map(|(a, c)| a * c).sum();
                        scores[((bi * hq + h) * l + i) * s + j] = round_to(cdt, round_to(dt, dot));
                    }
                }
            }
        }
        if let Some(m) = &self.score_mod {
            scores = self.apply_mod(m, "score_mod", scores, &sshape, cdt, captured, cx)?;
        }
        for row in scores.chunks_mut(s.max(1)) {
            let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for x in row.iter_mut() {
                *x = (*x - mx).exp();
                sum += *x;
            }
            for x in row.iter_mut() {
                *x = round_to(cdt, *x / sum);
            }
        }
        if let Some(m) = &self.prob_mod {
            scores = self.apply_mod(m, "prob_mod", scores, &sshape, cdt, captured, cx)?;
        }
        let mut out = vec![0.0f64; b * hq * l * ev];
        for bi in 0..b {
            for h in 0..hq {
                let kh = h / group;
                for i in 0..l {
                    let p = &scores[((bi * hq + h) * l + i) * s..][..s];
                    let o = &mut out[((bi * hq + h) * l + i) * ev..][..ev];
                    for (j, &pj) in p.iter().enumerate() {
                        let vrow = &vv[((bi * hkv + kh) * s + j) * ev..][..ev];
                        for (o, &x) in o.iter_mut().zip(vrow) {
                            *o += pj * x;
                        }
                    }
                }
            }
        }
        let out: Vec<f64> = out.into_iter().map(|x| round_to(cdt, x)).collect();
        Ok(vec![Value::Tensor(float_tensor(
            dt,
            vec![b, hq, l, ev],
            &out,
        )?)])
    }
}

pub struct SequenceMapKernel {
    pub body: SubPlan,
    pub n_explicit: usize,
}

impl Kernel for SequenceMapKernel {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let explicit = &inputs[..self.n_explicit.min(inputs.len())];
        let captured = &inputs[self.n_explicit.min(inputs.len())..];
        let Some(Value::Sequence(first)) = explicit.first().copied().flatten() else {
            return Err("SequenceMap input 0 must be a sequence".into());
        };
        let mut results: Vec<Vec<Tensor>> = Vec::new();
        for i in 0..first.len() {
            let mut formals = Vec::with_capacity(explicit.len());
            for v in explicit {
                formals.push(match v {
                    Some(Value::Sequence(s)) => Some(Value::Tensor(
                        s.get(i)
                            .cloned()
                            .ok_or("SequenceMap sequences have different lengths")?,
                    )),
                    Some(v) => Some((*v).clone()),
                    None => None,
                });
            }
            let outs = self.body.run(formals, captured, cx)?;
            if results.is_empty() {
                results = vec![Vec::new(); outs.len()];
            }
            for (k, v) in outs.into_iter().enumerate() {
                results[k].push(
                    v.into_tensor()
                        .ok_or("SequenceMap body outputs must be tensors")?,
                );
            }
        }
        Ok(results.into_iter().map(Value::Sequence).collect())
    }
}

/// Slice `i` of `t` along `axis` (the axis removed).
pub fn take(t: &Tensor, axis: usize, i: usize) -> Result<Tensor, KernelError> {
    let shape = t.shape();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape.remove(axis);
    if let Some(s) = t.strings() {
        let mut v = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            let base = (o * shape[axis] + i) * inner;
            v.extend_from_slice(&s[base..base + inner]);
        }
        return Ok(Tensor::from_strings(out_shape, v)?);
    }
    let es = t.dtype().bits() / 8;
    if es == 0 {
        return Err(KernelError::Unsupported(format!(
            "slicing {} tensors",
            t.dtype()
        )));
    }
    let b = t.bytes();
    let mut v = Vec::with_capacity(outer * inner * es);
    for o in 0..outer {
        let base = ((o * shape[axis] + i) * inner) * es;
        v.extend_from_slice(&b[base..base + inner * es]);
    }
    Ok(Tensor::from_bytes(t.dtype(), out_shape, &v)?)
}

/// Tensors of equal type and shape stacked along a new `axis`.
pub fn stack(ts: &[Tensor], axis: usize) -> Result<Tensor, KernelError> {
    let Some(first) = ts.first() else {
        return Ok(Tensor::zeros(DType::F32, vec![0])?);
    };
    let shape = first.shape();
    if ts
        .iter()
        .any(|t| t.shape() != shape || t.dtype() != first.dtype())
    {
        return Err("values to stack differ in type or shape".into());
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape.insert(axis, ts.len());
    if first.dtype() == DType::String {
        let mut v = Vec::with_capacity(outer * inner * ts.len());
        for o in 0..outer {
            for t in ts {
                let s = t.strings().unwrap_or_default();
                v.extend_from_slice(&s[o * inner..(o + 1) * inner]);
            }
        }
        return Ok(Tensor::from_strings(out_shape, v)?);
    }
    let es = first.dtype().bits() / 8;
    if es == 0 {
        return Err(KernelError::Unsupported(format!(
            "stacking {} tensors",
            first.dtype()
        )));
    }
    let mut v = Vec::with_capacity(outer * inner * ts.len() * es);
    for o in 0..outer {
        for t in ts {
            v.extend_from_slice(&t.bytes()[o * inner * es..(o + 1) * inner * es]);
        }
    }
    Ok(Tensor::from_bytes(first.dtype(), out_shape, &v)?)
}
