//! Gelu activations:
//!
//! - **Gelu** (erf): `0.5·x·(1 + erf(x/√2))` in any association of the three factors, with
//!   `x/√2` as `Div(x, 1.4142…)` or `Mul(x, 0.7071…)` → `com.microsoft.Gelu`.
//! - **FastGelu** (tanh): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, with `Pow(x, 3)` or
//!   `x·x·x` → `com.microsoft.FastGelu`.
//! - The opset-20 `Gelu` op (`approximate` none / tanh) → the same two.
//! - **BiasGelu**: Gelu / FastGelu of `y + bias` with a 1-D constant bias →
//!   `com.microsoft.BiasGelu(y, bias)` / `com.microsoft.FastGelu(y, bias)`.
//! - At O3 only, **Gelu → FastGelu approximation**: exact Gelu and BiasGelu become FastGelu,
//!   which changes results by at most [`GELU_TANH_MAX_ABS_ERROR`] per element.

use kiln_ir::op::{BiasGelu, FastGelu, MsGelu};
use kiln_ir::{DType, Graph, IrError, NodeId, Op, ValueId};

use crate::pattern::{
    const_vector_of, dtype, is_scalar, other, out0, private, produced_by, remove_dead,
    replace_with, scalar, shape, sole_reader, Uses,
};
use crate::{Level, Log, Pass};

/// `max over x of |gelu_erf(x) − gelu_tanh(x)|`, the error the O3 approximation introduces
/// (≈ 4.7e-4, reached near |x| ≈ 2.2; recomputed from the maths in this module's tests).
pub const GELU_TANH_MAX_ABS_ERROR: f64 = 4.73e-4;

pub(super) fn passes(level: Level) -> Vec<Box<dyn Pass>> {
    let mut v: Vec<Box<dyn Pass>> = vec![Box::new(GeluFusion)];
    if level >= Level::O3 {
        v.push(Box::new(GeluApproximation));
    }
    v
}

const GELU: &str = "gelu-fusion";
const APPROX: &str = "gelu-approximation";

const SQRT2: f64 = std::f64::consts::SQRT_2;
const FRAC_1_SQRT2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// √(2/π)
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const CUBIC: f64 = 0.044715;

fn is_mul(op: &Op) -> bool {
    matches!(op, Op::Mul(_))
}

fn is_add(op: &Op) -> bool {
    matches!(op, Op::Add(_))
}

/// A scalar constant with its value, or a description for a near miss.
fn const_desc(g: &Graph, v: ValueId) -> String {
    match scalar(g, v) {
        Some(c) => format!("{c}"),
        None => "a non-constant".into(),
    }
}

/// `p = 1 + core` times `x` times 0.5, in any association. Returns the product's node.
fn match_half_x_times(g: &Graph, uses: &Uses, x: ValueId, p: ValueId) -> Result<NodeId, String> {
    let Some(m1) = sole_reader(g, uses, p) else {
        return Err("1 + erf/tanh(…) is read outside the pattern".into());
    };
    let Some((_, ins)) = produced_by(g, out0(g, m1), is_mul) else {
        return Err("1 + erf/tanh(…) is not multiplied".into());
    };
    let o = other(&ins, p).ok_or("1 + erf/tanh(…) squared")?;
    let m1_out = out0(g, m1);
    if o == x {
        // (x · p) · 0.5
        let m2 = sole_reader(g, uses, m1_out).ok_or("x · (1 + …) is read outside the pattern")?;
        let (_, ins2) = produced_by(g, out0(g, m2), is_mul).ok_or("x · (1 + …) is not halved")?;
        let h = other(&ins2, m1_out).ok_or("x · (1 + …) squared")?;
        if !is_scalar(g, h, 0.5) {
            return Err(format!(
                "x · (1 + …) is multiplied by {}, not 0.5",
                const_desc(g, h)
            ));
        }
        return Ok(m2);
    }
    if g.const_value(o).is_some() {
        // x · (p · 0.5)
        if !is_scalar(g, o, 0.5) {
            return Err(format!(
                "1 + … is multiplied by {}, not 0.5",
                const_desc(g, o)
            ));
        }
        let m2 = sole_reader(g, uses, m1_out).ok_or("(1 + …) · 0.5 is read outside the pattern")?;
        let (_, ins2) =
            produced_by(g, out0(g, m2), is_mul).ok_or("(1 + …) · 0.5 is not multiplied by x")?;
        if other(&ins2, m1_out) != Some(x) {
            return Err("(1 + …) · 0.5 is not multiplied by x".into());
        }
        return Ok(m2);
    }
    // (x · 0.5) · p
    let Some((_, hins)) = produced_by(g, o, is_mul) else {
        return Err("1 + … is not multiplied by 0.5 · x".into());
    };
    let Some(h) = other(&hins, x) else {
        return Err("1 + … is multiplied by something else than 0.5 · x".into());
    };
    if !is_scalar(g, h, 0.5) {
        return Err(format!("x is multiplied by {}, not 0.5", const_desc(g, h)));
    }
    if !private(g, uses, o, 1) {
        return Err("0.5 · x is read outside the pattern".into());
    }
    Ok(m1)
}

/// `1 + core`: the Add reading `core`.
fn match_one_plus(g: &Graph, uses: &Uses, core: ValueId) -> Result<ValueId, String> {
    let add = sole_reader(g, uses, core).ok_or("erf/tanh output is read outside the pattern")?;
    let (_, ins) =
        produced_by(g, out0(g, add), is_add).ok_or("erf/tanh output is not followed by Add(1)")?;
    let one = other(&ins, core).ok_or("erf/tanh doubled")?;
    if !is_scalar(g, one, 1.0) {
        return Err(format!(
            "erf/tanh output plus {}, not 1",
            const_desc(g, one)
        ));
    }
    Ok(out0(g, add))
}

struct GeluMatch {
    x: ValueId,
    out: ValueId,
    last: NodeId,
    tanh: bool,
}

/// `Erf(x / √2)` anchored at the Erf node.
fn match_erf(g: &Graph, uses: &Uses, erf: NodeId) -> Result<Option<GeluMatch>, String> {
    let Some(Some(u)) = g.node(erf).inputs.first().copied() else {
        return Ok(None);
    };
    let x = if let Some((_, ins)) = produced_by(g, u, |o| matches!(o, Op::Div(_))) {
        if !is_scalar(g, ins[1], SQRT2) {
            return Err(format!("Erf of x / {}, not x / √2", const_desc(g, ins[1])));
        }
        ins[0]
    } else if let Some((_, ins)) = produced_by(g, u, is_mul) {
        let Some(k) = ins.iter().position(|&v| g.const_value(v).is_some()) else {
            return Ok(None);
        };
        if !is_scalar(g, ins[k], FRAC_1_SQRT2) {
            return Err(format!(
                "Erf of x · {}, not x · (1/√2)",
                const_desc(g, ins[k])
            ));
        }
        ins[1 - k]
    } else {
        return Ok(None);
    };
    if !private(g, uses, u, 1) {
        return Err("x / √2 is read outside the pattern".into());
    }
    let p = match_one_plus(g, uses, out0(g, erf))?;
    let last = match_half_x_times(g, uses, x, p)?;
    Ok(Some(GeluMatch {
        x,
        out: out0(g, last),
        last,
        tanh: false,
    }))
}

/// `x³` as `Pow(x, 3)`, `(x·x)·x` or `x·(x·x)`: returns x.
fn match_cube(g: &Graph, uses: &Uses, c: ValueId) -> Option<ValueId> {
    if let Some((_, ins)) = produced_by(g, c, |o| matches!(o, Op::Pow(_))) {
        return (scalar(g, ins[1]) == Some(3.0)).then_some(ins[0]);
    }
    let (_, ins) = produced_by(g, c, is_mul)?;
    for (sq, x) in [(ins[0], ins[1]), (ins[1], ins[0])] {
        if let Some((_, s)) = produced_by(g, sq, is_mul) {
            if s[0] == x && s[1] == x && private(g, uses, sq, 1) {
                return Some(x);
            }
        }
    }
    None
}

/// `Tanh(√(2/π) · (x + 0.044715 · x³))` anchored at the Tanh node.
fn match_tanh(g: &Graph, uses: &Uses, tanh: NodeId) -> Result<Option<GeluMatch>, String> {
    let Some(Some(v)) = g.node(tanh).inputs.first().copied() else {
        return Ok(None);
    };
    let Some((_, ins)) = produced_by(g, v, is_mul) else {
        return Ok(None);
    };
    let Some(k) = ins.iter().position(|&i| g.const_value(i).is_some()) else {
        return Ok(None);
    };
    let w = ins[1 - k];
    let Some((_, wins)) = produced_by(g, w, is_add) else {
        return Ok(None);
    };
    // x + 0.044715 · x³, either order.
    let mut found = None;
    for (x, kk) in [(wins[0], wins[1]), (wins[1], wins[0])] {
        let Some((_, kins)) = produced_by(g, kk, is_mul) else {
            continue;
        };
        for (cube, c) in [(kins[0], kins[1]), (kins[1], kins[0])] {
            if match_cube(g, uses, cube) == Some(x) && g.const_value(c).is_some() {
                found = Some((x, kk, cube, c));
            }
        }
    }
    let Some((x, kk, cube, c)) = found else {
        return Ok(None);
    };
    if !is_scalar(g, c, CUBIC) {
        return Err(format!(
            "x³ is multiplied by {}, not 0.044715",
            const_desc(g, c)
        ));
    }
    if !is_scalar(g, ins[k], SQRT_2_OVER_PI) {
        return Err(format!(
            "x + 0.044715·x³ is multiplied by {}, not √(2/π)",
            const_desc(g, ins[k])
        ));
    }
    for (val, what) in [
        (v, "√(2/π)·(…)"),
        (w, "x + 0.044715·x³"),
        (kk, "0.044715·x³"),
        (cube, "x³"),
    ] {
        if !private(g, uses, val, 1) {
            return Err(format!("{what} is read outside the pattern"));
        }
    }
    let p = match_one_plus(g, uses, out0(g, tanh))?;
    let last = match_half_x_times(g, uses, x, p)?;
    Ok(Some(GeluMatch {
        x,
        out: out0(g, last),
        last,
        tanh: true,
    }))
}

/// The written-out Gelu forms and the opset-20 op → contrib Gelu / FastGelu, then the bias
/// Add before them folded in (BiasGelu, FastGelu with bias).
pub struct GeluFusion;

impl GeluFusion {
    fn bias_rule(g: &mut Graph, uses: &Uses, n: NodeId, log: &mut Log) -> bool {
        let node = g.node(n);
        let tanh = match node.op {
            Op::MsGelu(_) => false,
            Op::FastGelu(_) if node.inputs.len() == 1 => true,
            _ => return false,
        };
        let Some(Some(x)) = node.inputs.first().copied() else {
            return false;
        };
        let Some((_, ins)) = produced_by(g, x, is_add) else {
            return false;
        };
        let Some(k) = ins.iter().position(|&v| g.const_value(v).is_some()) else {
            return false;
        };
        let (y, bias) = (ins[1 - k], ins[k]);
        let name = node.name.clone();
        let Some(hidden) = shape(g, x).and_then(|s| s.last().cloned()) else {
            return false;
        };
        if const_vector_of(g, bias, &hidden).is_none() {
            log.near_miss(
                GELU,
                name,
                "bias is not 1-D of the last dim (broadcast bias)",
            );
            return false;
        }
        if shape(g, y) != shape(g, x) || dtype(g, bias) != dtype(g, x) {
            log.near_miss(GELU, name, "the biased input broadcasts");
            return false;
        }
        if !private(g, uses, x, 1) {
            log.near_miss(GELU, name, "x + bias is read outside the pattern");
            return false;
        }
        let out = g.node(n).outputs[0];
        let op = if tanh {
            Op::FastGelu(FastGelu {})
        } else {
            Op::BiasGelu(BiasGelu {})
        };
        let base = if tanh { "FastGelu" } else { "BiasGelu" };
        replace_with(
            g,
            out,
            &format!("{name}_{base}"),
            op,
            vec![Some(y), Some(bias)],
            &[],
        );
        remove_dead(g, &[n]);
        true
    }
}

impl Pass for GeluFusion {
    fn name(&self) -> &'static str {
        GELU
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for id in g.topo_order()? {
            if !g.is_live(id) {
                continue;
            }
            let node = g.node(id);
            let name = node.name.clone();
            let m = match &node.op {
                Op::Erf(_) => match_erf(g, &uses, id),
                Op::Tanh(_) => match_tanh(g, &uses, id),
                Op::Gelu(op) => {
                    let Some(Some(x)) = node.inputs.first().copied() else {
                        continue;
                    };
                    let tanh = match op.approximate.as_str() {
                        "none" => false,
                        "tanh" => true,
                        _ => continue,
                    };
                    Ok(Some(GeluMatch {
                        x,
                        out: node.outputs[0],
                        last: id,
                        tanh,
                    }))
                }
                _ => continue,
            };
            let m = match m {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(reason) => {
                    log.near_miss(GELU, name, reason);
                    continue;
                }
            };
            // ONNX Runtime's contrib Gelu kernels are float32 on CPU.
            if dtype(g, m.x) != Some(DType::F32) {
                log.near_miss(GELU, name, "input is not f32");
                continue;
            }
            let (op, base) = if m.tanh {
                (Op::FastGelu(FastGelu {}), "FastGelu")
            } else {
                (Op::MsGelu(MsGelu {}), "Gelu")
            };
            replace_with(
                g,
                m.out,
                &format!("{name}_{base}"),
                op,
                vec![Some(m.x)],
                &[],
            );
            remove_dead(g, &[m.last]);
            uses = Uses::of(g);
            n += 1;
        }
        // Then the bias Add before each contrib Gelu (just fused, or in the input model).
        for id in g.node_ids().collect::<Vec<_>>() {
            if g.is_live(id) && Self::bias_rule(g, &uses, id, log) {
                uses = Uses::of(g);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// O3: exact Gelu → FastGelu (tanh approximation). Changes each element by at most
/// [`GELU_TANH_MAX_ABS_ERROR`].
pub struct GeluApproximation;

impl Pass for GeluApproximation {
    fn name(&self) -> &'static str {
        APPROX
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        for id in g.node_ids().collect::<Vec<_>>() {
            let node = g.node(id);
            if !matches!(node.op, Op::MsGelu(_) | Op::BiasGelu(_)) {
                continue;
            }
            let node = g.node_mut(id);
            node.op = Op::FastGelu(FastGelu {});
            if n == 0 {
                log.near_miss(
                    APPROX,
                    node.name.clone(),
                    format!(
                        "applied (not a miss): exact Gelu replaced by the tanh approximation, \
                         max |error| {GELU_TANH_MAX_ABS_ERROR:.2e} per element"
                    ),
                );
            }
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its everywhere-positive series `2/√π · e^{-x²} · Σ 2ⁿ x^{2n+1} / (1·3·…·(2n+1))`
    /// (no cancellation, so accurate to f64 rounding for |x| ≤ 6).
    fn erf(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    #[test]
    fn erf_series_is_right() {
        // Reference values (Abramowitz & Stegun table 7.1).
        assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 1e-15);
        assert!((erf(1.0) - 0.842_700_792_949_714_9).abs() < 1e-15);
        assert!((erf(2.0) - 0.995_322_265_018_952_7).abs() < 1e-15);
    }

    #[test]
    fn tanh_approximation_error_bound() {
        let gelu = |x: f64| 0.5 * x * (1.0 + erf(x / SQRT2));
        let fast = |x: f64| 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + CUBIC * x * x * x)).tanh());
        let (mut worst, mut at) = (0.0f64, 0.0);
        for i in -60_000..=60_000 {
            let x = i as f64 * 1e-4;
            let e = (gelu(x) - fast(x)).abs();
            if e > worst {
                (worst, at) = (e, x);
            }
        }
        // Beyond |x| = 6 both are x or 0 to within 1e-9.
        assert!(
            (worst - GELU_TANH_MAX_ABS_ERROR).abs() < 0.01e-4,
            "max |gelu - fast_gelu| = {worst:e} at x = {at}"
        );
    }
}
