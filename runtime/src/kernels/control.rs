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
