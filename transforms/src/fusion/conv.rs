//! O1: what follows a convolution, folded into it as ONNX Runtime's `com.microsoft.FusedConv`
//! (`activation(Conv(X, W, B) + Z)`), which kiln's runtime computes in the GEMM's store and
//! ONNX Runtime's CPU provider runs as well. Two rules, applied to a fixpoint, so that
//! ResNet's `Relu(Add(Conv(…), shortcut))` becomes one node:
//!
//! - **Conv + Add**: `Add(Conv(x, W, B), z)` with `z` of exactly the Conv's output shape (no
//!   broadcast) → `FusedConv(x, W, B, z)`.
//! - **Conv + activation**: `act(Conv(x, W, B))` or `act(FusedConv(x, W, B, z))` without an
//!   activation yet, for `act` in Relu, LeakyRelu, Sigmoid, Tanh and Clip with constant bounds
//!   → `FusedConv(x, W, B[, z], activation = act)`.
//!
//! Both need the Conv's output to be read by the matched node alone, and f32 (the only type
//! ONNX Runtime's FusedConv takes).

use kiln_ir::op::{Conv, FusedConv};
use kiln_ir::{DType, Dim, Graph, IrError, NodeId, Op, ValueId};

use crate::pattern::{
    dtype, other, out0, private, readers, remove_dead, replace_with, scalar, shape, Uses,
};
use crate::{Log, Pass};

const CONV_ACT: &str = "conv-activation-fusion";

/// A Conv, or a FusedConv that takes more: its attributes, inputs `[x, W, B, Z]` and
/// activation so far.
struct Base {
    op: FusedConv,
    inputs: Vec<Option<ValueId>>,
}

fn base(g: &Graph, n: NodeId) -> Option<Base> {
    let node = g.node(n);
    let mut inputs = node.inputs.clone();
    inputs.resize(4, None);
    let op = match &node.op {
        Op::Conv(c) => fused_from(c),
        Op::FusedConv(f) => f.clone(),
        _ => return None,
    };
    Some(Base { op, inputs })
}

fn fused_from(c: &Conv) -> FusedConv {
    FusedConv {
        auto_pad: c.auto_pad.clone(),
        dilations: c.dilations.clone(),
        group: c.group,
        kernel_shape: c.kernel_shape.clone(),
        pads: c.pads.clone(),
        strides: c.strides.clone(),
        activation: None,
        activation_params: None,
    }
}

/// The ONNX Runtime fused-op activation (name, params) that `node` computes, or why it cannot
/// be one: Relu, Sigmoid, Tanh, LeakyRelu (`[alpha]`) and Clip with constant bounds
/// (`[min, max]`). FusedConv takes them all; FusedGemm all but Clip.
pub(crate) fn activation(
    g: &Graph,
    node: NodeId,
) -> Result<(&'static str, Option<Vec<f32>>), String> {
    let n = g.node(node);
    Ok(match &n.op {
        Op::Relu(_) => ("Relu", None),
        Op::Sigmoid(_) => ("Sigmoid", None),
        Op::Tanh(_) => ("Tanh", None),
        Op::LeakyRelu(l) => ("LeakyRelu", Some(vec![l.alpha])),
        Op::Clip(_) => {
            let bound = |i: usize, none: f32| match n.inputs.get(i).copied().flatten() {
                None => Ok(none),
                Some(v) => scalar(g, v)
                    .map(|x| x as f32)
                    .ok_or_else(|| format!("Clip bound {i} is not a constant scalar")),
            };
            (
                "Clip",
                Some(vec![bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?]),
            )
        }
        _ => return Err("not an activation FusedConv takes".into()),
    })
}

pub struct ConvActivationFusion;

impl Pass for ConvActivationFusion {
    fn name(&self) -> &'static str {
        CONV_ACT
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for conv in g.topo_order()? {
            if !g.is_live(conv) {
                continue;
            }
            let Some(mut b) = base(g, conv) else {
                continue;
            };
            let y = out0(g, conv);
            let Some(next) = readers(g, y).into_iter().find(|&r| {
                matches!(
                    g.node(r).op,
                    Op::Add(_)
                        | Op::Relu(_)
                        | Op::Sigmoid(_)
                        | Op::Tanh(_)
                        | Op::LeakyRelu(_)
                        | Op::Clip(_)
                )
            }) else {
                continue;
            };
            let is_add = matches!(g.node(next).op, Op::Add(_));
            let name = g.node(conv).name.clone();
            if !private(g, &uses, y, 1) {
                log.near_miss(
                    CONV_ACT,
                    name,
                    "the Conv output is read outside the pattern",
                );
                continue;
            }
            if dtype(g, y) != Some(DType::F32) {
                log.near_miss(CONV_ACT, name, "not f32 (FusedConv is f32 only)");
                continue;
            }
            if b.op.activation.is_some() {
                log.near_miss(CONV_ACT, name, "the FusedConv already has an activation");
                continue;
            }
            if is_add {
                if b.inputs[3].is_some() {
                    log.near_miss(CONV_ACT, name, "the FusedConv already adds a Z");
                    continue;
                }
                let ins: Vec<ValueId> = g.node(next).inputs.iter().flatten().copied().collect();
                let Some(z) = other(&ins, y) else {
                    continue;
                };
                let (sy, sz) = (shape(g, y), shape(g, z));
                if sy.is_none() || sy != sz {
                    let show = |s: Option<Vec<Dim>>| match s {
                        Some(d) => format!(
                            "[{}]",
                            d.iter()
                                .map(|d| d.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                        None => "an unknown shape".into(),
                    };
                    log.near_miss(
                        CONV_ACT,
                        name,
                        format!(
                            "the added value would broadcast ({} onto {})",
                            show(sz),
                            show(sy)
                        ),
                    );
                    continue;
                }
                if dtype(g, z) != Some(DType::F32) {
                    log.near_miss(CONV_ACT, name, "the added value is not f32");
                    continue;
                }
                b.inputs[3] = Some(z);
            } else {
                let (act, params) = match activation(g, next) {
                    Ok(a) => a,
                    Err(reason) => {
                        log.near_miss(CONV_ACT, name, reason);
                        continue;
                    }
                };
                b.op.activation = Some(act.to_string());
                b.op.activation_params = params;
            }
            // Trailing omitted inputs are dropped; a missing B before a Z stays empty.
            while b.inputs.last() == Some(&None) {
                b.inputs.pop();
            }
            let out = out0(g, next);
            replace_with(g, out, &name, Op::FusedConv(b.op), b.inputs, &[]);
            remove_dead(g, &[next]);
            uses = Uses::of(g);
            n += 1;
        }
        Ok(n)
    }
}
