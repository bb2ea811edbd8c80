//! A compiled plan and its executor.

use std::collections::HashMap;
use std::sync::Mutex;

use kiln_ir::{AlignedBuf, Tensor, Type};

use crate::error::RuntimeError;
use crate::kernel::{Kernel, RunCx};
use crate::value::Value;

/// Index of a value's slot in a plan.
pub type Slot = u32;

/// One step: a kernel, where its inputs come from and where its outputs go.
pub struct Step {
    pub kernel: Box<dyn Kernel>,
    /// Node inputs (`None` where omitted), then captured outer values.
    pub inputs: Vec<Option<Slot>>,
    /// `None` for outputs nothing reads (the value is dropped at once).
    pub outputs: Vec<Option<Slot>>,
    /// Slots whose last reader is this step: emptied after it runs.
    pub frees: Vec<Slot>,
    pub node: String,
    pub op: String,
}

/// A graph input of a plan.
#[derive(Clone, Debug)]
pub struct PlanInput {
    pub name: String,
    pub slot: Slot,
    /// Declared type, checked against what the caller passes.
    pub ty: Option<Type>,
    /// Value used when the caller passes none (an initializer listed as an input).
    pub default: Option<Tensor>,
}

/// An executable plan for one graph.
pub struct Plan {
    pub steps: Vec<Step>,
    pub n_slots: usize,
    /// Constants, placed in their slots at the start of every run.
    pub consts: Vec<(Slot, Value)>,
    pub inputs: Vec<PlanInput>,
    pub outputs: Vec<(String, Slot)>,
    /// Buffers earlier runs freed, for the next runs.
    pub buffers: BufferCache,
}

/// The buffers a plan's runs freed, kept for its next runs: a stream of runs then allocates
/// (and the OS maps and zeroes) no fresh pages — on MiniLM 8×128 page faults were ~6 % of
/// the samples. One pool per run in flight, so concurrent runs never share one; a few at
/// most are kept.
#[derive(Default)]
pub struct BufferCache(Mutex<Vec<Vec<AlignedBuf>>>);

/// Pools kept for runs in flight at once (more concurrent runs start with an empty pool).
const CACHED_POOLS: usize = 4;

impl BufferCache {
    fn take(&self) -> Vec<AlignedBuf> {
        self.0
            .lock()
            .map(|mut v| v.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn keep(&self, pool: Vec<AlignedBuf>) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() < CACHED_POOLS {
                v.push(pool);
            }
        }
    }
}

impl Plan {
    /// Runs the plan on named inputs; returns the named outputs in graph order.
    pub fn run(&self, inputs: Vec<(String, Value)>) -> Result<Vec<(String, Value)>, RuntimeError> {
        self.run_with(inputs, &mut RunCx::new())
    }

    /// [`Plan::run`] with a caller-provided context (e.g. one that collects a profile). A
    /// context whose pool is empty starts with the buffers of an earlier run; the buffers
    /// this run frees are kept for a later one.
    pub fn run_with(
        &self,
        inputs: Vec<(String, Value)>,
        cx: &mut RunCx,
    ) -> Result<Vec<(String, Value)>, RuntimeError> {
        let mut by_name: HashMap<String, Value> = HashMap::with_capacity(inputs.len());
        for (n, v) in inputs {
            if !self.inputs.iter().any(|i| i.name == n) {
                let known: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(RuntimeError::Input(format!(
                    "the model has no input `{n}` (its inputs: {known:?})"
                )));
            }
            if by_name.insert(n.clone(), v).is_some() {
                return Err(RuntimeError::Input(format!("input `{n}` is given twice")));
            }
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for i in &self.inputs {
            match by_name.remove(&i.name) {
                Some(v) => ordered.push(Some(v)),
                None if i.default.is_some() => ordered.push(None),
                None => {
                    return Err(RuntimeError::Input(format!(
                        "input `{}` is missing",
                        i.name
                    )))
                }
            }
        }
        check_inputs(&self.inputs, &ordered)?;
        if !cx.has_pool() {
            cx.set_pool(self.buffers.take());
        }
        let outs = on_pool(|| self.run_positional(ordered, &mut *cx));
        self.buffers.keep(cx.take_pool());
        let outs = outs?;
        Ok(self
            .outputs
            .iter()
            .map(|(n, _)| n.clone())
            .zip(outs)
            .collect())
    }

    /// Runs with inputs in plan order (`None` takes the input's default). Used for
    /// subgraphs, whose inputs are their formal parameters followed by captured values.
    pub fn run_positional(
        &self,
        inputs: Vec<Option<Value>>,
        cx: &mut RunCx,
    ) -> Result<Vec<Value>, RuntimeError> {
        let mut slots: Vec<Option<Value>> = vec![None; self.n_slots];
        for (slot, v) in &self.consts {
            slots[*slot as usize] = Some(v.clone());
        }
        for (i, v) in self.inputs.iter().zip(inputs) {
            slots[i.slot as usize] = match v {
                Some(v) => Some(v),
                None => i.default.clone().map(Value::Tensor),
            };
        }
        for step in &self.steps {
            let outs = {
                let ins: Vec<Option<&Value>> = step
                    .inputs
                    .iter()
                    .map(|s| s.and_then(|s| slots[s as usize].as_ref()))
                    .collect();
                let t0 = cx.profile.as_ref().map(|_| std::time::Instant::now());
                let outs = step
                    .kernel
                    .run(&ins, cx)
                    .map_err(|source| RuntimeError::Kernel {
                        node: step.node.clone(),
                        op: step.op.clone(),
                        source,
                    })?;
                if let (Some(t0), Some(p)) = (t0, cx.profile.as_mut()) {
                    let key = if p.by_shape {
                        let shapes: Vec<String> = ins
                            .iter()
                            .map(|v| match v {
                                Some(Value::Tensor(t)) => format!("{:?}", t.shape()),
                                Some(_) => "seq".into(),
                                None => "-".into(),
                            })
                            .collect();
                        format!("{} {}", step.op, shapes.join(" "))
                    } else {
                        step.op.clone()
                    };
                    let e = p.by_op.entry(key).or_default();
                    e.0 += t0.elapsed().as_secs_f64();
                    e.1 += 1;
                }
                outs
            };
            for (k, v) in outs.into_iter().enumerate() {
                match step.outputs.get(k).copied().flatten() {
                    Some(s) => slots[s as usize] = Some(v),
                    None => cx.recycle(v),
                }
            }
            for &s in &step.frees {
                if let Some(v) = slots[s as usize].take() {
                    cx.recycle(v);
                }
            }
        }
        self.outputs
            .iter()
            .map(|(name, s)| {
                slots[*s as usize]
                    .clone()
                    .ok_or_else(|| RuntimeError::Kernel {
                        node: name.clone(),
                        op: "output".into(),
                        source: crate::error::KernelError::Invalid(format!(
                            "output `{name}` was not produced"
                        )),
                    })
            })
            .collect()
    }
}

/// Checks dtypes, ranks and dims of the caller's inputs against the declared types; a
/// symbolic dim must have one value across all inputs (`batch` in ids and mask).
fn check_inputs(decl: &[PlanInput], given: &[Option<Value>]) -> Result<(), RuntimeError> {
    let mut env: HashMap<String, i64> = HashMap::new();
    for (i, v) in decl.iter().zip(given) {
        let (Some(ty), Some(v)) = (&i.ty, v) else {
            continue;
        };
        let (Type::Tensor(tt), Value::Tensor(t)) = (ty, v) else {
            match (ty, v) {
                (Type::Tensor(_), _) => {
                    return Err(RuntimeError::Input(format!(
                        "input `{}` must be a tensor, got {}",
                        i.name,
                        v.describe()
                    )))
                }
                _ => continue,
            }
        };
        if tt.dtype != t.dtype() {
            return Err(RuntimeError::Input(format!(
                "input `{}` must be {}, got {}",
                i.name,
                tt.dtype,
                t.dtype()
            )));
        }
        let Some(shape) = &tt.shape else { continue };
        if shape.len() != t.rank() {
            return Err(RuntimeError::Input(format!(
                "input `{}` must have rank {} ({ty}), got shape {:?}",
                i.name,
                shape.len(),
                t.shape()
            )));
        }
        for (k, (d, &n)) in shape.iter().zip(t.shape()).enumerate() {
            let n = n as i64;
            if let Some(want) = d.known() {
                if want != n {
                    return Err(RuntimeError::Input(format!(
                        "input `{}` dim {k} must be {want} ({ty}), got shape {:?}",
                        i.name,
                        t.shape()
                    )));
                }
            } else if let Some(sym) = d.as_symbol() {
                if sym.starts_with(kiln_ir::infer::FRESH_PREFIX) {
                    continue;
                }
                match env.get(sym) {
                    Some(&prev) if prev != n => {
                        return Err(RuntimeError::Input(format!(
                            "input `{}` dim {k} is `{sym}`, which is {prev} in an earlier input, got {n}",
                            i.name
                        )))
                    }
                    _ => {
                        env.insert(sym.to_string(), n);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs `f` on one of rayon's worker threads (the caller waits). A parallel loop started from
/// a worker runs its first part on that worker and hands the rest to the others; started from
/// outside the pool, the caller sleeps while two workers are woken, and each loop ends with a
/// wake-up of the caller: per step, two sleeps and wake-ups instead of at most one. MiniLM at
/// batch 1, -O1, 2 threads: 39–40.5 ms per run from the caller's thread, 32.5–33 ms on the pool.
/// This holds for a pool of one thread too: run from the caller, each parallel kernel was a
/// hand-off to the worker and back (90 futex calls per MiniLM run; 39.9 → 36.3 ms at -O2).
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}
