//! O1 fusions of linear ops with what follows them:
//!
//! - **Conv + BatchNormalization** (inference mode, all statistics constant) → one Conv with
//!   the normalization folded into its weights and bias:
//!   `W'[o] = W[o] · s[o]`, `b'[o] = (b[o] − mean[o]) · s[o] + β[o]`, `s = γ / √(var + eps)`.
//! - **MatMul + Add(bias)** with a 2-D `A`, a 2-D `B` and a 1-D constant bias of `B`'s column
//!   count → `Gemm(A, B, bias)`. (ONNX Runtime's FusedMatMul takes no bias, and a 3-D `A`
//!   would need Reshapes around a Gemm, so only the 2-D case is fused.)

use kiln_ir::op::{Conv, Gemm};
use kiln_ir::{DType, Graph, IrError, NodeId, Op, Tensor};

use crate::pattern::{
    const_vector_of, dtype, other, out0, private, produced_by, remove_dead, replace_with, shape,
    sole_reader, Uses,
};
use crate::{Log, Pass};

const CONV_BN: &str = "conv-bn-folding";
const GEMM: &str = "matmul-add-fusion";

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
            if !g.is_live(mm) || !matches!(g.node(mm).op, Op::MatMul(_)) {
                continue;
            }
            let y = out0(g, mm);
            let Some((a, b)) = (match g.node(mm).inputs.as_slice() {
                [Some(a), Some(b)] => Some((*a, *b)),
                _ => None,
            }) else {
                continue;
            };
            let Some(add) =
                sole_reader(g, &uses, y).filter(|&r| matches!(g.node(r).op, Op::Add(_)))
            else {
                continue;
            };
            let Some((_, ins)) = produced_by(g, out0(g, add), |o| matches!(o, Op::Add(_))) else {
                continue;
            };
            let Some(bias) = other(&ins, y).filter(|&v| g.const_value(v).is_some()) else {
                continue;
            };
            let name = g.node(mm).name.clone();
            let (Some(sa), Some(sb)) = (shape(g, a), shape(g, b)) else {
                continue;
            };
            if sa.len() != 2 || sb.len() != 2 {
                log.near_miss(GEMM, name, "A or B is not 2-D (Gemm is 2-D only)");
                continue;
            }
            let floats = [a, b, bias]
                .iter()
                .all(|&v| matches!(dtype(g, v), Some(DType::F32 | DType::F16 | DType::F64)));
            if !floats || dtype(g, a) != dtype(g, b) || dtype(g, a) != dtype(g, bias) {
                log.near_miss(GEMM, name, "operands are not all of one float type");
                continue;
            }
            if const_vector_of(g, bias, &sb[1]).is_none() {
                log.near_miss(
                    GEMM,
                    name,
                    "bias is not 1-D of B's column count (broadcast bias)",
                );
                continue;
            }
            let out = out0(g, add);
            let op = Op::Gemm(Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: false,
            });
            replace_with(g, out, &name, op, vec![Some(a), Some(b), Some(bias)], &[]);
            remove_dead(g, &[add]);
            uses = Uses::of(g);
            n += 1;
        }
        Ok(n)
    }
}
