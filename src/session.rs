//! Compile once, run many times: a loaded model with its executable plan.

use std::collections::HashMap;

use kiln_ir::{DType, Model, Tensor, ValueDef};
use kiln_runtime::{Plan, Value};

/// A model compiled for kiln's runtime. `run` takes `&self` and is safe to call from many
/// threads at once: the plan is immutable and each run has its own buffers.
pub struct Session {
    model: Model,
    plan: Plan,
}

/// Errors of compiling or running a model.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Compile(#[from] kiln_codegen::CompileError),
    #[error(transparent)]
    Run(#[from] kiln_runtime::RuntimeError),
    /// An output is a sequence or optional, which [`Session::run`] does not return.
    #[error("output `{0}` is not a tensor (use run_values)")]
    NotATensor(String),
}

impl Session {
    /// Compiles a loaded model (see [`crate::load`]).
    pub fn new(model: Model) -> Result<Session, SessionError> {
        let plan = kiln_codegen::compile(&model)?;
        Ok(Session { model, plan })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs on named tensor inputs; returns the named outputs in graph order.
    pub fn run(
        &self,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, SessionError> {
        let outs = self.run_values(
            inputs
                .into_iter()
                .map(|(n, t)| (n, Value::Tensor(t)))
                .collect(),
        )?;
        outs.into_iter()
            .map(|(n, v)| match v {
                Value::Tensor(t) => Ok((n, t)),
                _ => Err(SessionError::NotATensor(n)),
            })
            .collect()
    }

    /// Runs on named values (tensors, sequences, optionals).
    pub fn run_values(
        &self,
        inputs: Vec<(String, Value)>,
    ) -> Result<Vec<(String, Value)>, SessionError> {
        Ok(self.plan.run(inputs)?)
    }

    /// [`Session::run`] that also adds each op type's wall time to `profile`.
    pub fn run_profiled(
        &self,
        inputs: Vec<(String, Tensor)>,
        profile: &mut kiln_runtime::Profile,
    ) -> Result<Vec<(String, Tensor)>, SessionError> {
        let mut cx = kiln_runtime::RunCx::new();
        cx.profile = Some(std::mem::take(profile));
        let outs = self.plan.run_with(
            inputs
                .into_iter()
                .map(|(n, t)| (n, Value::Tensor(t)))
                .collect(),
            &mut cx,
        );
        *profile = cx.profile.take().unwrap_or_default();
        outs?
            .into_iter()
            .map(|(n, v)| match v {
                Value::Tensor(t) => Ok((n, t)),
                _ => Err(SessionError::NotATensor(n)),
            })
            .collect()
    }
}

/// Deterministic random inputs for `model`'s graph inputs (those without defaults).
/// Symbolic dims take their value from `dims` (by symbol name); a dim not given there is an
/// error naming it. Integer inputs named like `*mask*` are all ones except the last quarter of
/// the last row (a padded row); `*token_type*` (segment ids) are zeros; other integers are
/// uniform in `[0, 100)`; floats uniform in `[-1, 1)`; bools random.
pub fn random_inputs(
    model: &Model,
    dims: &HashMap<String, i64>,
    seed: u64,
) -> Result<Vec<(String, Tensor)>, String> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let g = &model.graph;
    let mut out = Vec::new();
    for &i in &g.inputs {
        let v = g.value(i);
        if matches!(v.def, ValueDef::InputWithDefault(_)) {
            continue;
        }
        let tt =
            v.ty.as_ref()
                .and_then(|t| t.as_tensor())
                .ok_or_else(|| format!("input `{}` is not a tensor of known type", v.name))?;
        let sh = tt
            .shape
            .as_ref()
            .ok_or_else(|| format!("input `{}` has unknown rank", v.name))?;
        let mut shape = Vec::with_capacity(sh.len());
        for d in sh {
            let n = d.eval(&|s| dims.get(s).copied()).ok_or_else(|| {
                format!(
                    "input `{}`: give a value for dim `{d}` (--dim {d}=N)",
                    v.name
                )
            })?;
            shape.push(usize::try_from(n).map_err(|_| format!("dim `{d}` is negative"))?);
        }
        let n: usize = shape.iter().product();
        let cols = shape.last().copied().unwrap_or(1).max(1);
        let rows = n / cols;
        let t = match tt.dtype {
            DType::I64 | DType::I32 if v.name.contains("mask") => {
                let pad = cols / 4;
                let data: Vec<i64> = (0..n)
                    .map(|k| {
                        if rows > 1 && k / cols == rows - 1 && k % cols >= cols - pad {
                            0
                        } else {
                            1
                        }
                    })
                    .collect();
                cast_i64(tt.dtype, shape, data)
            }
            DType::I64 | DType::I32 if v.name.contains("token_type") => {
                cast_i64(tt.dtype, shape, vec![0; n])
            }
            DType::I64
            | DType::I32
            | DType::I16
            | DType::I8
            | DType::U8
            | DType::U16
            | DType::U32
            | DType::U64 => {
                let data: Vec<i64> = (0..n).map(|_| (next() % 100) as i64).collect();
                cast_i64(tt.dtype, shape, data)
            }
            DType::F32 => {
                Tensor::from_vec(shape, (0..n).map(|_| unit(next())).collect::<Vec<f32>>())
            }
            DType::F64 => Tensor::from_vec(
                shape,
                (0..n).map(|_| unit(next()) as f64).collect::<Vec<f64>>(),
            ),
            DType::F16 => Tensor::from_vec(
                shape,
                (0..n)
                    .map(|_| half::f16::from_f32(unit(next())))
                    .collect::<Vec<_>>(),
            ),
            DType::Bool => {
                Tensor::from_bools(shape, &(0..n).map(|_| next() % 2 == 1).collect::<Vec<_>>())
            }
            d => {
                return Err(format!(
                    "input `{}`: cannot generate random {d} data",
                    v.name
                ))
            }
        }
        .map_err(|e| e.to_string())?;
        out.push((v.name.clone(), t));
    }
    Ok(out)
}

fn unit(r: u64) -> f32 {
    (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

fn cast_i64(d: DType, shape: Vec<usize>, v: Vec<i64>) -> Result<Tensor, kiln_ir::IrError> {
    match d {
        DType::I64 => Tensor::from_vec(shape, v),
        DType::I32 => Tensor::from_vec(shape, v.into_iter().map(|x| x as i32).collect::<Vec<_>>()),
        DType::I16 => Tensor::from_vec(shape, v.into_iter().map(|x| x as i16).collect::<Vec<_>>()),
        DType::I8 => Tensor::from_vec(shape, v.into_iter().map(|x| x as i8).collect::<Vec<_>>()),
        DType::U8 => Tensor::from_vec(shape, v.into_iter().map(|x| x as u8).collect::<Vec<_>>()),
        DType::U16 => Tensor::from_vec(shape, v.into_iter().map(|x| x as u16).collect::<Vec<_>>()),
        DType::U32 => Tensor::from_vec(shape, v.into_iter().map(|x| x as u32).collect::<Vec<_>>()),
        _ => Tensor::from_vec(shape, v.into_iter().map(|x| x as u64).collect::<Vec<_>>()),
    }
}
