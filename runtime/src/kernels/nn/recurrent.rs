//! The recurrent layers RNN, GRU and LSTM (ONNX semantics: forward / reverse /
//! bidirectional, per-batch `sequence_lens`, layout 0 and 1, clip, peepholes,
//! linear_before_reset, input_forget and the activations attribute with alpha/beta).
//! Each (direction, batch entry) pair is an independent recurrence; computed in f64.

use kiln_ir::{DType, Op, Tensor};

use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

mod act;

use act::Act;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let (cell, alpha, beta, acts, clip, direction, hidden, layout) = match op {
        Op::RNN(r) => (
            Cell::Rnn,
            &r.activation_alpha,
            &r.activation_beta,
            Some(&r.activations),
            r.clip,
            &r.direction,
            r.hidden_size,
            r.layout,
        ),
        Op::GRU(r) => (
            Cell::Gru {
                linear_before_reset: r.linear_before_reset,
            },
            &r.activation_alpha,
            &r.activation_beta,
            r.activations.as_ref(),
            r.clip,
            &r.direction,
            r.hidden_size,
            r.layout,
        ),
        Op::LSTM(r) => (
            Cell::Lstm {
                input_forget: r.input_forget,
            },
            &r.activation_alpha,
            &r.activation_beta,
            r.activations.as_ref(),
            r.clip,
            &r.direction,
            r.hidden_size,
            r.layout,
        ),
        _ => return None,
    };
    Some((|| {
        let dirs = match direction.as_str() {
            "forward" => vec![false],
            "reverse" => vec![true],
            "bidirectional" => vec![false, true],
            d => return Err(KernelError::Invalid(format!("unknown direction {d:?}"))),
        };
        if layout != 0 && layout != 1 {
            return Err(KernelError::Invalid(format!(
                "layout {layout} is not 0 or 1"
            )));
        }
        if let Some(c) = clip {
            if c.is_nan() || c < 0.0 {
                return Err(KernelError::Invalid(format!("clip {c} must be >= 0")));
            }
        }
        let per_dir = cell.n_acts();
        let names: Vec<String> = match acts {
            Some(a) => a.clone(),
            None => cell.default_acts().iter().map(|s| s.to_string()).collect(),
        };
        let parsed = act::parse(&names, alpha.as_deref(), beta.as_deref())?;
        let nd = dirs.len();
        let acts: Vec<Vec<Act>> = if parsed.len() >= per_dir * nd {
            // RNN's schema default lists two activations even for one direction.
            (0..nd)
                .map(|d| parsed[d * per_dir..(d + 1) * per_dir].to_vec())
                .collect()
        } else if parsed.len() == per_dir {
            vec![parsed; nd]
        } else {
            return Err(KernelError::Invalid(format!(
                "{} activations given, {} needed per direction for {nd} direction(s)",
                parsed.len(),
                per_dir
            )));
        };
        Ok(Box::new(RecurrentK {
            cell,
            acts,
            clip: clip.map(f64::from),
            reverse: dirs,
            hidden_size: hidden,
            layout1: layout == 1,
        }) as Box<dyn Kernel>)
    })())
}

#[derive(Clone, Copy, Debug)]
enum Cell {
    Rnn,
    Gru { linear_before_reset: bool },
    Lstm { input_forget: bool },
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru { .. } => 3,
            Cell::Lstm { .. } => 4,
        }
    }
    fn n_acts(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru { .. } => 2,
            Cell::Lstm { .. } => 3,
        }
    }
    fn default_acts(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Gru { .. } => &["Sigmoid", "Tanh"],
            Cell::Lstm { .. } => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
    fn name(self) -> &'static str {
        match self {
            Cell::Rnn => "RNN",
            Cell::Gru { .. } => "GRU",
            Cell::Lstm { .. } => "LSTM",
        }
    }
}

struct RecurrentK {
    cell: Cell,
    /// Activations per direction (f / f,g / f,g,h).
    acts: Vec<Vec<Act>>,
    clip: Option<f64>,
    /// One entry per direction: true where it runs backwards in time.
    reverse: Vec<bool>,
    hidden_size: Option<i64>,
    layout1: bool,
}

fn float_input(
    inputs: &[Option<&Value>],
    i: usize,
    dtype: DType,
    shape: &[usize],
    what: &str,
) -> Result<Option<Vec<f64>>, KernelError> {
    let Some(t) = opt_tensor_input(inputs, i)? else {
        return Ok(None);
    };
    if t.dtype() != dtype {
        return Err(KernelError::Invalid(format!(
            "{what} is {}, expected {dtype} like X",
            t.dtype()
        )));
    }
    if t.shape() != shape {
        return Err(KernelError::Invalid(format!(
            "{what} has shape {:?}, expected {shape:?}",
            t.shape()
        )));
    }
    Ok(Some(to_f64(t)?))
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>, KernelError> {
    t.to_f64_vec()
        .ok_or_else(|| KernelError::Unsupported(format!("{} input", t.dtype())))
}

fn from_f64(
    cx: &mut RunCx,
    dtype: DType,
    shape: Vec<usize>,
    v: &[f64],
) -> Result<Tensor, KernelError> {
    Ok(match dtype {
        DType::F32 => cx.tensor::<f32>(shape, |o| {
            o.iter_mut().zip(v).for_each(|(o, x)| *o = *x as f32)
        })?,
        DType::F64 => {
            cx.tensor::<f64>(shape, |o| o.iter_mut().zip(v).for_each(|(o, x)| *o = *x))?
        }
        DType::F16 => cx.tensor::<half::f16>(shape, |o| {
            o.iter_mut()
                .zip(v)
                .for_each(|(o, x)| *o = half::f16::from_f64(*x))
        })?,
        DType::BF16 => cx.tensor::<half::bf16>(shape, |o| {
            o.iter_mut()
                .zip(v)
                .for_each(|(o, x)| *o = half::bf16::from_f64(*x))
        })?,
        d => return Err(KernelError::Unsupported(format!("{d} output"))),
    })
}

/// `out[j] = bias[j] + sum_i m[j, i] * v[i]` for a row-major `m` of `out.len()` rows.
fn matvec_add(out: &mut [f64], m: &[f64], v: &[f64]) {
    let cols = v.len();
    for (j, o) in out.iter_mut().enumerate() {
        let row = &m[j * cols..(j + 1) * cols];
        *o += row.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
    }
}

/// Weights of one direction.
struct DirWeights<'a> {
    w: &'a [f64],
    r: &'a [f64],
    /// W bias then R bias, `gates * H` each.
    wb: &'a [f64],
    rb: &'a [f64],
    /// Peepholes i, o, f (LSTM).
    p: Option<&'a [f64]>,
    acts: &'a [Act],
}

impl RecurrentK {
    fn clip(&self, v: f64) -> f64 {
        match self.clip {
            Some(c) => v.clamp(-c, c),
            None => v,
        }
    }

    /// One time step: updates `h` (and `c` for LSTM) from input `x`. `scratch` holds
    /// `gates * H` values.
    fn step(
        &self,
        dw: &DirWeights,
        x: &[f64],
        h: &mut [f64],
        c: &mut [f64],
        scratch: &mut [f64],
        tmp: &mut [f64],
    ) {
        let hs = h.len();
        let f = dw.acts[0];
        match self.cell {
            Cell::Rnn => {
                scratch.copy_from_slice(&dw.wb[..hs]);
                matvec_add(scratch, dw.w, x);
                matvec_add(scratch, dw.r, h);
                for j in 0..hs {
                    h[j] = f.apply(self.clip(scratch[j] + dw.rb[j]));
                }
            }
            Cell::Gru {
                linear_before_reset,
            } => {
                let g = dw.acts[1];
                // x-part of all three gates plus W bias.
                scratch.copy_from_slice(&dw.wb[..3 * hs]);
                matvec_add(scratch, dw.w, x);
                // z and r take R·h + Rb.
                let (zr, hpart) = scratch.split_at_mut(2 * hs);
                let rzr = &dw.r[..2 * hs * hs];
                matvec_add(zr, rzr, h);
                for j in 0..2 * hs {
                    zr[j] = f.apply(self.clip(zr[j] + dw.rb[j]));
                }
                let (z, r) = zr.split_at(hs);
                let rh = &dw.r[2 * hs * hs..3 * hs * hs];
                let rbh = &dw.rb[2 * hs..3 * hs];
                // tmp = candidate's recurrent part.
                if linear_before_reset {
                    tmp.copy_from_slice(rbh);
                    matvec_add(tmp, rh, h);
                    for j in 0..hs {
                        tmp[j] *= r[j];
                    }
                } else {
                    let gated: Vec<f64> = (0..hs).map(|j| r[j] * h[j]).collect();
                    tmp.copy_from_slice(rbh);
                    matvec_add(tmp, rh, &gated);
                }
                for j in 0..hs {
                    let cand = g.apply(self.clip(hpart[j] + tmp[j]));
                    h[j] = (1.0 - z[j]) * cand + z[j] * h[j];
                }
            }
            Cell::Lstm { input_forget } => {
                let (g, hh) = (dw.acts[1], dw.acts[2]);
                scratch.copy_from_slice(&dw.wb[..4 * hs]);
                matvec_add(scratch, dw.w, x);
                matvec_add(scratch, dw.r, h);
                for (s, b) in scratch.iter_mut().zip(dw.rb) {
                    *s += b;
                }
                let peep = |k: usize, j: usize| dw.p.map_or(0.0, |p| p[k * hs + j]);
                for j in 0..hs {
                    let i_g = f.apply(self.clip(scratch[j] + peep(0, j) * c[j]));
                    let f_g = if input_forget {
                        1.0 - i_g
                    } else {
                        f.apply(self.clip(scratch[2 * hs + j] + peep(2, j) * c[j]))
                    };
                    let cand = g.apply(self.clip(scratch[3 * hs + j]));
                    let c_new = f_g * c[j] + i_g * cand;
                    let o_g = f.apply(self.clip(scratch[hs + j] + peep(1, j) * c_new));
                    c[j] = c_new;
                    h[j] = o_g * hh.apply(c_new);
                }
            }
        }
    }
}

impl Kernel for RecurrentK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let name = self.cell.name();
        let x = tensor_input(inputs, 0)?;
        let w = tensor_input(inputs, 1)?;
        let r = tensor_input(inputs, 2)?;
        let dt = x.dtype();
        if !matches!(dt, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            return Err(KernelError::Unsupported(format!("{name} on {dt}")));
        }
        let (xs, ws, rs) = (x.shape(), w.shape(), r.shape());
        let nd = self.reverse.len();
        let gates = self.cell.gates();
        if xs.len() != 3 || ws.len() != 3 || rs.len() != 3 {
            return Err(KernelError::Invalid(format!(
                "{name} needs X, W, R of rank 3, got {xs:?}, {ws:?}, {rs:?}"
            )));
        }
        let hs = rs[2];
        let (t_len, batch, isz) = if self.layout1 {
            (xs[1], xs[0], xs[2])
        } else {
            (xs[0], xs[1], xs[2])
        };
        if let Some(h) = self.hidden_size {
            if h != hs as i64 {
                return Err(KernelError::Invalid(format!(
                    "{name} hidden_size {h} does not match R {rs:?}"
                )));
            }
        }
        if ws != [nd, gates * hs, isz] || rs != [nd, gates * hs, hs] {
            return Err(KernelError::Invalid(format!(
                "{name}: W {ws:?} / R {rs:?} do not fit {nd} direction(s), {gates} gate(s), \
                 hidden {hs}, input {isz}"
            )));
        }
        if w.dtype() != dt || r.dtype() != dt {
            return Err(KernelError::Invalid(format!(
                "{name}: W and R must have X's type {dt}"
            )));
        }
        let wv = to_f64(w)?;
        let rv = to_f64(r)?;
        let bv = float_input(inputs, 3, dt, &[nd, 2 * gates * hs], "B")?
            .unwrap_or_else(|| vec![0.0; nd * 2 * gates * hs]);
        let seq_lens: Vec<usize> = match opt_tensor_input(inputs, 4)? {
            None => vec![t_len; batch],
            Some(t) => {
                let v = t
                    .to_i64_vec()
                    .filter(|_| t.dtype().is_int())
                    .ok_or_else(|| {
                        KernelError::Invalid(format!(
                            "sequence_lens must be int32, got {}",
                            t.dtype()
                        ))
                    })?;
                if v.len() != batch {
                    return Err(KernelError::Invalid(format!(
                        "sequence_lens has {} entries, batch is {batch}",
                        v.len()
                    )));
                }
                v.iter()
                    .map(|&l| {
                        if l < 0 || l as usize > t_len {
                            Err(KernelError::Invalid(format!(
                                "sequence_lens entry {l} is outside [0, {t_len}]"
                            )))
                        } else {
                            Ok(l as usize)
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let state_shape = if self.layout1 {
            [batch, nd, hs]
        } else {
            [nd, batch, hs]
        };
        let init_h = float_input(inputs, 5, dt, &state_shape, "initial_h")?;
        let is_lstm = matches!(self.cell, Cell::Lstm { .. });
        let (init_c, pv) = if is_lstm {
            (
                float_input(inputs, 6, dt, &state_shape, "initial_c")?,
                float_input(inputs, 7, dt, &[nd, 3 * hs], "P")?,
            )
        } else {
            (None, None)
        };
        // Offsets by (direction, batch entry) in the state layout, (time, batch) in X and
        // (time, direction, batch) in Y.
        let st_at = |d: usize, b: usize| {
            if self.layout1 {
                (b * nd + d) * hs
            } else {
                (d * batch + b) * hs
            }
        };
        let x_at = |t: usize, b: usize| {
            if self.layout1 {
                (b * t_len + t) * isz
            } else {
                (t * batch + b) * isz
            }
        };
        let y_at = |t: usize, d: usize, b: usize| {
            if self.layout1 {
                ((b * t_len + t) * nd + d) * hs
            } else {
                ((t * nd + d) * batch + b) * hs
            }
        };
        let xv = to_f64(x)?;
        let mut y = vec![0f64; t_len * nd * batch * hs];
        let mut yh = vec![0f64; nd * batch * hs];
        let mut yc = vec![0f64; nd * batch * hs];
        let mut scratch = vec![0f64; gates * hs];
        let mut tmp = vec![0f64; hs];
        let gh = gates * hs;
        for (d, &rev) in self.reverse.iter().enumerate() {
            let dw = DirWeights {
                w: &wv[d * gh * isz..(d + 1) * gh * isz],
                r: &rv[d * gh * hs..(d + 1) * gh * hs],
                wb: &bv[d * 2 * gh..d * 2 * gh + gh],
                rb: &bv[d * 2 * gh + gh..(d + 1) * 2 * gh],
                p: pv.as_ref().map(|p| &p[d * 3 * hs..(d + 1) * 3 * hs]),
                acts: &self.acts[d],
            };
            for (b, &len) in seq_lens.iter().enumerate() {
                let s = st_at(d, b);
                let mut h: Vec<f64> = init_h
                    .as_ref()
                    .map_or(vec![0.0; hs], |v| v[s..s + hs].to_vec());
                let mut c: Vec<f64> = init_c
                    .as_ref()
                    .map_or(vec![0.0; hs], |v| v[s..s + hs].to_vec());
                for k in 0..len {
                    let t = if rev { len - 1 - k } else { k };
                    let xt = &xv[x_at(t, b)..x_at(t, b) + isz];
                    self.step(&dw, xt, &mut h, &mut c, &mut scratch, &mut tmp);
                    let o = y_at(t, d, b);
                    y[o..o + hs].copy_from_slice(&h);
                }
                yh[s..s + hs].copy_from_slice(&h);
                yc[s..s + hs].copy_from_slice(&c);
            }
        }
        let y_shape = if self.layout1 {
            vec![batch, t_len, nd, hs]
        } else {
            vec![t_len, nd, batch, hs]
        };
        let mut outs = vec![
            Value::Tensor(from_f64(cx, dt, y_shape, &y)?),
            Value::Tensor(from_f64(cx, dt, state_shape.to_vec(), &yh)?),
        ];
        if is_lstm {
            outs.push(Value::Tensor(from_f64(cx, dt, state_shape.to_vec(), &yc)?));
        }
        Ok(outs)
    }
}

#[cfg(test)]
mod tests;
