//! O1 fusions of linear ops with what follows them:
//!
//! - **Conv + BatchNormalization** (inference mode, all statistics constant) → one Conv with
//!   the normalization folded into its weights and bias:
//!   `W'[o] = W[o] · s[o]`, `b'[o] = (b[o] − mean[o]) · s[o] + β[o]`, `s = γ / √(var + eps)`.
//! - **MatMul + Add(bias)** with a 2-D `A`, a 2-D `B` and a 1-D constant bias of `B`'s column
//!   count → `Gemm(A, B, bias)`.
//! - The same with an `A` of rank ≥ 3 (a transformer's `[batch, seq, hidden]` activations)
//!   → `Reshape(Gemm(Reshape(A, [-1, K]), B, bias), shape(A)[:-1] ++ [N])`, as ONNX Runtime's
//!   MatMulAddFusion does: the bias is added in the GEMM's store instead of in another pass
//!   over the output. This one runs after the transformer fusions (see [`late_passes`]),
//!   which match the MatMul + Add pairs themselves.
//! - **Gemm + activation**: `act(Gemm(…))`, or `act(Reshape(Gemm(…)))` as the previous rule
//!   leaves it, for Relu, LeakyRelu, Sigmoid and Tanh → ONNX Runtime's
//!   `com.microsoft.FusedGemm` (then Reshape), the activation applied in the GEMM's store.

use kiln_ir::op::{Concat, Conv, FusedGemm, Gemm, Reshape, Shape, Slice};
use kiln_ir::{DType, Dim, Graph, IrError, NodeId, Op, Tensor, ValueId};

use crate::pattern::{
    const_vector_of, dtype, node_name, other, out0, private, produced_by, remove_dead,
    replace_with, shape, sole_reader, Uses,
};
use crate::{Log, Pass};

const CONV_BN: &str = "conv-bn-folding";
const GEMM: &str = "matmul-add-fusion";
const GEMM_ND: &str = "matmul-add-reshape-fusion";

/// `BatchNormalization(Conv(x, W[, b]))` → `Conv(x, W', b')`.
pub struct ConvBnFolding;

struct Folded {
    w: Tensor,
    b: Tensor,
}

fn fold_conv_bn(g: &Graph, conv: NodeId, bn: NodeId) -> Result<Folded, String> {
    let cnode = g.node(conv);
    let bnode = g.node(bn);
    let Op::BatchNormalization(bop) = &bnode.op else {
        return Err("not a BatchNormalization".into());
    };
    if bop.training_mode {
        return Err("BatchNormalization in training mode".into());
    }
    let w = cnode
        .inputs
        .get(1)
        .copied()
        .flatten()
        .and_then(|v| g.const_value(v))
        .ok_or("Conv weights are not constant")?;
    if w.dtype() != DType::F32 || w.rank() < 3 {
        return Err("Conv weights are not f32 of rank ≥ 3".into());
    }
    let oc = w.shape()[0];
    let vec = |k: usize, what: &str| -> Result<Vec<f64>, String> {
        let t = bnode
            .inputs
            .get(k)
            .copied()
            .flatten()
            .and_then(|v| g.const_value(v))
            .ok_or(format!("BatchNormalization {what} is not constant"))?;
        if t.dtype() != DType::F32 || t.shape() != [oc] {
            return Err(format!(
                "BatchNormalization {what} is not f32 of shape [{oc}] (the Conv's output channels)"
            ));
        }
        t.to_f64_vec().ok_or(format!("{what} unreadable"))
    };
    let (gamma, beta, mean, var) = (
        vec(1, "scale")?,
        vec(2, "bias")?,
        vec(3, "mean")?,
        vec(4, "variance")?,
    );
    let bias = match cnode.inputs.get(2).copied().flatten() {
        Some(b) => {
            let t = g.const_value(b).ok_or("Conv bias is not constant")?;
            if t.dtype() != DType::F32 || t.shape() != [oc] {
                return Err("Conv bias is not f32 of the output channels".into());
            }
            t.to_f64_vec().ok_or("Conv bias unreadable")?
        }
        None => vec![0.0; oc],
    };
    let eps = bop.epsilon as f64;
    let s: Vec<f64> = (0..oc).map(|o| gamma[o] / (var[o] + eps).sqrt()).collect();
    let wv = w.to_f64_vec().ok_or("weights unreadable")?;
    let per = wv.len() / oc.max(1);
    let nw: Vec<f32> = wv
        .iter()
        .enumerate()
        .map(|(i, &x)| (x * s[i / per]) as f32)
        .collect();
    let nb: Vec<f32> = (0..oc)
        .map(|o| ((bias[o] - mean[o]) * s[o] + beta[o]) as f32)
        .collect();
    Ok(Folded {
        w: Tensor::from_vec(w.shape().to_vec(), nw).map_err(|e| e.to_string())?,
        b: Tensor::from_vec(vec![oc], nb).map_err(|e| e.to_string())?,
    })
}

impl Pass for ConvBnFolding {
    fn name(&self) -> &'static str {
        CONV_BN
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for conv in g.topo_order()? {
            if !g.is_live(conv) {
                continue;
            }
            let Op::Conv(cop) = &g.node(conv).op else {
                continue;
            };
            let cop: Conv = cop.clone();
            let y = out0(g, conv);
            let Some(bn) = crate::pattern::readers(g, y)
                .into_iter()
                .find(|&r| matches!(g.node(r).op, Op::BatchNormalization(_)))
            else {
                continue;
            };
            let name = g.node(conv).name.clone();
            if !private(g, &uses, y, 1) {
                log.near_miss(CONV_BN, name, "the Conv output is read outside the pattern");
                continue;
            }
            if g.node(bn).outputs.len() > 1 {
                log.near_miss(
                    CONV_BN,
                    name,
                    "BatchNormalization has running-statistics outputs",
                );
                continue;
            }
            let f = match fold_conv_bn(g, conv, bn) {
                Ok(f) => f,
                Err(reason) => {
                    log.near_miss(CONV_BN, name, reason);
                    continue;
                }
            };
            let x = g.node(conv).inputs[0];
            let wname = g.unique_name(&format!("{name}_bn_weight"));
            let bname = g.unique_name(&format!("{name}_bn_bias"));
            let w = g.add_const(wname, f.w);
            let b = g.add_const(bname, f.b);
            let out = out0(g, bn);
            replace_with(g, out, &name, Op::Conv(cop), vec![x, Some(w), Some(b)], &[]);
            remove_dead(g, &[bn]);
            uses = Uses::of(g);
            n += 1;
        }
        Ok(n)
    }
}

/// A matched `Add(MatMul(A, B), bias)`: the operands, the Add, and A's and B's shapes.
struct MatMulAdd {
    a: ValueId,
    b: ValueId,
    bias: ValueId,
    add: NodeId,
    sa: Vec<Dim>,
    sb: Vec<Dim>,
}

/// `Add(MatMul(A, B), bias)` with a 2-D B, float operands of one type and a constant bias
/// of B's column count; `a_2d` says which ranks of A the caller takes (2, or ≥ 3).
fn match_matmul_add(
    g: &Graph,
    uses: &Uses,
    mm: NodeId,
    a_2d: bool,
    pass: &'static str,
    log: &mut Log,
) -> Option<MatMulAdd> {
    if !g.is_live(mm) || !matches!(g.node(mm).op, Op::MatMul(_)) {
        return None;
    }
    let y = out0(g, mm);
    let (a, b) = match g.node(mm).inputs.as_slice() {
        [Some(a), Some(b)] => (*a, *b),
        _ => return None,
    };
    let add = sole_reader(g, uses, y).filter(|&r| matches!(g.node(r).op, Op::Add(_)))?;
    let (_, ins) = produced_by(g, out0(g, add), |o| matches!(o, Op::Add(_)))?;
    let bias = other(&ins, y).filter(|&v| g.const_value(v).is_some())?;
    let name = g.node(mm).name.clone();
    let (sa, sb) = (shape(g, a)?, shape(g, b)?);
    if (sa.len() == 2) != a_2d || sa.len() < 2 {
        return None;
    }
    if sb.len() != 2 {
        log.near_miss(pass, name, "B is not 2-D (Gemm's B is a matrix)");
        return None;
    }
    let floats = [a, b, bias]
        .iter()
        .all(|&v| matches!(dtype(g, v), Some(DType::F32 | DType::F16 | DType::F64)));
    if !floats || dtype(g, a) != dtype(g, b) || dtype(g, a) != dtype(g, bias) {
        log.near_miss(pass, name, "operands are not all of one float type");
        return None;
    }
    if const_vector_of(g, bias, &sb[1]).is_none() {
        log.near_miss(
            pass,
            name,
            "bias is not 1-D of B's column count (broadcast bias)",
        );
        return None;
    }
    Some(MatMulAdd {
        a,
        b,
        bias,
        add,
        sa,
        sb,
    })
}

const GEMM_OP: Op = Op::Gemm(Gemm {
    alpha: 1.0,
    beta: 1.0,
    trans_a: false,
    trans_b: false,
});

/// `Add(MatMul(A, B), bias)` with 2-D A and B and a 1-D constant bias → `Gemm(A, B, bias)`.
pub struct MatMulAddFusion;

impl Pass for MatMulAddFusion {
    fn name(&self) -> &'static str {
        GEMM
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for mm in g.topo_order()? {
            let Some(m) = match_matmul_add(g, &uses, mm, true, GEMM, log) else {
                continue;
            };
            let name = g.node(mm).name.clone();
            let out = out0(g, m.add);
            let ins = vec![Some(m.a), Some(m.b), Some(m.bias)];
            replace_with(g, out, &name, GEMM_OP, ins, &[]);
            remove_dead(g, &[m.add]);
            uses = Uses::of(g);
            n += 1;
        }
        Ok(n)
    }
}

/// `Add(MatMul(A, B), bias)` with A of rank ≥ 3 → Reshape to 2-D, Gemm, Reshape back.
pub struct MatMulAddReshapeFusion;

impl Pass for MatMulAddReshapeFusion {
    fn name(&self) -> &'static str {
        GEMM_ND
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for mm in g.topo_order()? {
            let Some(m) = match_matmul_add(g, &uses, mm, false, GEMM_ND, log) else {
                continue;
            };
            let name = g.node(mm).name.clone();
            let (Some(k), Some(cols)) = (m.sb[0].known(), m.sb[1].known()) else {
                log.near_miss(GEMM_ND, name, "B's dims are not known numbers");
                continue;
            };
            if m.sa.last().and_then(|d| d.known()) != Some(k) {
                log.near_miss(GEMM_ND, name, "A's last dim is not B's row count");
                continue;
            }
            let i64s = |g: &mut Graph, what: &str, v: Vec<i64>| {
                let cname = g.unique_name(&format!("{name}/{what}"));
                let len = v.len();
                g.add_const(cname, Tensor::from_vec(vec![len], v).expect("1-D"))
            };
            let flat = i64s(g, "rows_k", vec![-1, k]);
            let (zero, minus1, n_dim) = (
                i64s(g, "zero", vec![0]),
                i64s(g, "minus_one", vec![-1]),
                i64s(g, "cols", vec![cols]),
            );
            let a2 = node(
                g,
                &name,
                "a_2d",
                Op::Reshape(Reshape { allowzero: false }),
                vec![Some(m.a), Some(flat)],
            );
            let sh = node(
                g,
                &name,
                "shape",
                Op::Shape(Shape {
                    start: 0,
                    end: None,
                }),
                vec![Some(m.a)],
            );
            let lead = node(
                g,
                &name,
                "lead",
                Op::Slice(Slice {}),
                vec![Some(sh), Some(zero), Some(minus1), Some(zero)],
            );
            let to = node(
                g,
                &name,
                "out_shape",
                Op::Concat(Concat { axis: 0 }),
                vec![Some(lead), Some(n_dim)],
            );
            let y2 = node(
                g,
                &name,
                "gemm",
                GEMM_OP,
                vec![Some(a2), Some(m.b), Some(m.bias)],
            );
            let out = out0(g, m.add);
            replace_with(
                g,
                out,
                &format!("{name}/reshape_back"),
                Op::Reshape(Reshape { allowzero: false }),
                vec![Some(y2), Some(to)],
                &[],
            );
            remove_dead(g, &[m.add]);
            uses = Uses::of(g);
            n += 1;
        }
        if n > 0 {
            // Types of the new values, for the passes and the export that follow.
            kiln_ir::infer::infer_graph(g)?;
        }
        Ok(n)
    }
}

/// A new single-output node named `{base}/{what}`; returns its output.
fn node(g: &mut Graph, base: &str, what: &str, op: Op, inputs: Vec<Option<ValueId>>) -> ValueId {
    let name = node_name(g, &format!("{base}/{what}"));
    let out = g.unique_name(&name);
    let n = g.add_node(name, op, inputs, &[out.as_str()]);
    g.node(n).outputs[0]
}

const GEMM_ACT: &str = "gemm-activation-fusion";

/// `act(Gemm(A, B, C))` → `com.microsoft.FusedGemm(A, B, C, activation = act)`, and
/// `act(Reshape(Gemm(…), shape))` → `Reshape(FusedGemm(…), shape)` (the form
/// [`MatMulAddReshapeFusion`] leaves for activations of rank ≥ 3: an element-wise op commutes
/// with the Reshape), for `act` in Relu, LeakyRelu, Sigmoid and Tanh. The activation is
/// then applied in the GEMM's store. The Gemm output (and the Reshape's) must be read by the
/// pattern alone, and f32 (the only type FusedGemm takes).
pub struct GemmActivationFusion;

impl Pass for GemmActivationFusion {
    fn name(&self) -> &'static str {
        GEMM_ACT
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for act in g.topo_order()? {
            if !g.is_live(act) {
                continue;
            }
            let Some(x) = g.node(act).inputs.first().copied().flatten() else {
                continue;
            };
            if matches!(g.node(act).op, Op::Clip(_)) {
                if let Some((gemm, _)) = produced_by(g, x, |o| matches!(o, Op::Gemm(_))) {
                    let gname = g.node(gemm).name.clone();
                    log.near_miss(GEMM_ACT, gname, "FusedGemm takes no Clip activation");
                }
                continue;
            }
            let Ok((name, params)) = super::conv::activation(g, act) else {
                continue;
            };
            // LeakyRelu's slope is FusedGemm's `activation_alpha`.
            let alpha = params.and_then(|p| p.first().copied());
            // Through at most one Reshape to the Gemm.
            let reshape = produced_by(g, x, |o| matches!(o, Op::Reshape(_)));
            let y = match &reshape {
                Some((_, ins)) => ins[0],
                None => x,
            };
            let Some((gemm, _)) = produced_by(g, y, |o| matches!(o, Op::Gemm(_))) else {
                continue;
            };
            let gname = g.node(gemm).name.clone();
            if !private(g, &uses, y, 1) || reshape.is_some() && !private(g, &uses, x, 1) {
                log.near_miss(
                    GEMM_ACT,
                    gname,
                    "the Gemm output is read outside the pattern",
                );
                continue;
            }
            if dtype(g, y) != Some(DType::F32) {
                log.near_miss(GEMM_ACT, gname, "not f32 (FusedGemm is f32 only)");
                continue;
            }
            let Op::Gemm(o) = &g.node(gemm).op else {
                continue;
            };
            let fused = Op::FusedGemm(FusedGemm {
                alpha: o.alpha,
                beta: o.beta,
                trans_a: o.trans_a,
                trans_b: o.trans_b,
                activation: Some(name.to_string()),
                activation_alpha: alpha,
            });
            let gins = g.node(gemm).inputs.clone();
            let out = out0(g, act);
            match reshape {
                None => {
                    replace_with(g, out, &gname, fused, gins, &[]);
                }
                Some((r, mut rins)) => {
                    // The FusedGemm feeds the Reshape, which takes over the activation's output.
                    let f = replace_with(g, y, &gname, fused, gins, &[]);
                    rins[0] = out0(g, f);
                    let (rop, rname) = (g.node(r).op.clone(), g.node(r).name.clone());
                    replace_with(
                        g,
                        out,
                        &rname,
                        rop,
                        rins.into_iter().map(Some).collect(),
                        &[],
                    );
                }
            }
            remove_dead(g, &[act]);
            uses = Uses::of(g);
            n += 1;
        }
        Ok(n)
    }
}
