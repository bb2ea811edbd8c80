//! Layer normalizations:
//!
//! - **LayerNorm**: `(x − mean(x)) / √(mean((x − mean(x))²) + eps) · γ + β` over the last
//!   axis, written out as ReduceMean/Sub/Pow(2) (or Mul(d, d))/ReduceMean/Add(eps)/Sqrt/Div/
//!   Mul(γ)/Add(β) → `LayerNormalization {axis=-1}`. The opset-17 op is already that.
//! - **SkipLayerNorm**: `LayerNormalization(a + b)` with `a`, `b` of the same shape →
//!   `com.microsoft.SkipLayerNormalization(a, b, γ, β)`; **BiasSkipLayerNorm** when `a` is
//!   itself `a' + bias` with a 1-D constant bias (the MatMul bias of the projection before
//!   it). When the sum is also read elsewhere (the residual stream of a pre-LN model), the
//!   fused op's 4th output (`input_skip_bias_sum`) replaces it.

use kiln_ir::op::{LayerNormalization, SkipLayerNormalization};
use kiln_ir::{DType, Graph, IrError, NodeId, Op, Type, ValueId};

use crate::pattern::{
    is_float, is_vector_of, last_dim, other, out0, private, produced_by, readers, remove_dead,
    replace_with, scalar, shape, sole_reader, Uses,
};
use crate::{Level, Log, Pass};

pub(super) fn passes(_level: Level) -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(LayerNormFusion),
        Box::new(SkipLayerNormFusion),
        Box::new(EmbedLayerNormFusion),
    ]
}

/// The written-out LayerNorm chain → `LayerNormalization`.
pub struct LayerNormFusion;

const LN: &str = "layer-norm-fusion";
const SKIP: &str = "skip-layer-norm-fusion";

/// `axes` (a constant input of a reduction over a value of rank `rank`) is the last axis only.
fn last_axis_only(g: &Graph, axes: Option<&ValueId>, rank: usize) -> Result<(), String> {
    let Some(&axes) = axes else {
        return Err("ReduceMean has no axes (reduces every axis)".into());
    };
    let Some(v) = g.const_value(axes).and_then(|t| t.to_i64_vec()) else {
        return Err("ReduceMean axes are not a constant".into());
    };
    let norm: Vec<i64> = v
        .iter()
        .map(|&a| if a < 0 { a + rank as i64 } else { a })
        .collect();
    if norm != [rank as i64 - 1] {
        return Err(format!(
            "ReduceMean over axes {v:?} of a rank-{rank} tensor, not the last axis only"
        ));
    }
    Ok(())
}

/// A ReduceMean over the last axis, keeping dims: its input.
fn mean_last_axis(g: &Graph, n: NodeId) -> Result<ValueId, String> {
    let node = g.node(n);
    let Op::ReduceMean(r) = &node.op else {
        return Err("not a ReduceMean".into());
    };
    let Some(Some(x)) = node.inputs.first() else {
        return Err("ReduceMean without input".into());
    };
    if !r.keepdims {
        return Err("ReduceMean does not keep dims".into());
    }
    let rank = shape(g, *x)
        .map(|s| s.len())
        .ok_or("ReduceMean input of unknown rank")?;
    last_axis_only(g, node.inputs.get(1).and_then(|a| a.as_ref()), rank)?;
    Ok(*x)
}

struct LnMatch {
    x: ValueId,
    eps: f32,
    gamma: ValueId,
    beta: Option<ValueId>,
    out: ValueId,
    last: NodeId,
}

/// Matches the chain anchored at the first ReduceMean `m1`. `Ok(None)`: not a LayerNorm
/// at all; `Err`: a near miss.
fn match_ln(g: &Graph, uses: &Uses, m1: NodeId) -> Result<Option<LnMatch>, String> {
    let Some(Some(x)) = g.node(m1).inputs.first().copied() else {
        return Ok(None);
    };
    let mean = out0(g, m1);
    // d = x - mean
    let Some(sub) = readers(g, mean)
        .into_iter()
        .find(|&n| matches!(g.node(n).op, Op::Sub(_)) && g.node(n).inputs == [Some(x), Some(mean)])
    else {
        return Ok(None);
    };
    mean_last_axis(g, m1)?;
    if !private(g, uses, mean, 1) {
        return Err("the mean is read outside the pattern".into());
    }
    if !is_float(g, x) {
        return Err("input is not a floating-point tensor".into());
    }
    let d = out0(g, sub);
    // d² as Pow(d, 2) or Mul(d, d), and d / std: d is read by exactly those.
    let rd = readers(g, d);
    let sq = rd.iter().copied().find(|&n| match &g.node(n).op {
        Op::Pow(_) => g.node(n).inputs.first() == Some(&Some(d)),
        Op::Mul(_) => g.node(n).inputs == [Some(d), Some(d)],
        _ => false,
    });
    let Some(sq) = sq else {
        return Err("x - mean is not squared (Pow(d, 2) or Mul(d, d))".into());
    };
    if let Op::Pow(_) = g.node(sq).op {
        let e = g.node(sq).inputs.get(1).copied().flatten();
        if !e.is_some_and(|e| scalar(g, e) == Some(2.0)) {
            return Err("Pow exponent is not the constant 2".into());
        }
    }
    let div = rd.iter().copied().find(|&n| {
        matches!(g.node(n).op, Op::Div(_)) && g.node(n).inputs.first() == Some(&Some(d))
    });
    let Some(div) = div else {
        return Err("x - mean is not divided by the standard deviation".into());
    };
    let d_uses = if matches!(g.node(sq).op, Op::Mul(_)) {
        3
    } else {
        2
    };
    if !private(g, uses, d, d_uses) {
        return Err("x - mean is read outside the pattern".into());
    }
    let sq_out = out0(g, sq);
    let Some(m2) = sole_reader(g, uses, sq_out) else {
        return Err("the squared deviation is read outside the pattern".into());
    };
    match mean_last_axis(g, m2) {
        Ok(v) if v == sq_out => {}
        Ok(_) => return Err("variance is not a ReduceMean of the squares".into()),
        Err(e) => return Err(format!("variance: {e}")),
    }
    let var = out0(g, m2);
    let Some(add_eps) = sole_reader(g, uses, var) else {
        return Err("the variance is read outside the pattern".into());
    };
    let eps = match produced_by(g, out0(g, add_eps), |o| matches!(o, Op::Add(_))) {
        Some((_, ins)) => other(&ins, var).and_then(|e| scalar(g, e)),
        None => return Err("the variance is not followed by Add(eps)".into()),
    };
    let Some(eps) = eps.filter(|e| *e > 0.0) else {
        return Err("epsilon is not a positive scalar constant".into());
    };
    let Some(sqrt) = sole_reader(g, uses, out0(g, add_eps)) else {
        return Err("variance + eps is read outside the pattern".into());
    };
    if !matches!(g.node(sqrt).op, Op::Sqrt(_)) {
        return Err("variance + eps is not followed by Sqrt".into());
    }
    if g.node(div).inputs != [Some(d), Some(out0(g, sqrt))] {
        return Err("x - mean is divided by something else than √(var + eps)".into());
    }
    if !private(g, uses, out0(g, sqrt), 1) {
        return Err("the standard deviation is read outside the pattern".into());
    }
    let hidden = last_dim(g, x).ok_or("input of unknown shape")?;
    let normed = out0(g, div);
    let Some(mul) = sole_reader(g, uses, normed) else {
        return Err("the normalized value is read outside the pattern (or has no scale)".into());
    };
    let gamma = match produced_by(g, out0(g, mul), |o| matches!(o, Op::Mul(_))) {
        Some((_, ins)) => other(&ins, normed).ok_or("Mul(γ) reads the value twice")?,
        None => return Err("the normalized value is not scaled by Mul(γ)".into()),
    };
    if !is_vector_of(g, gamma, &hidden) {
        return Err("γ is not 1-D of the hidden size (broadcast scale)".into());
    }
    let scaled = out0(g, mul);
    let mut beta = None;
    let mut last = mul;
    if let Some(add) = sole_reader(g, uses, scaled) {
        if let Some((_, ins)) = produced_by(g, out0(g, add), |o| matches!(o, Op::Add(_))) {
            let b = other(&ins, scaled).filter(|&b| b != scaled);
            match b {
                Some(b) if is_vector_of(g, b, &hidden) => {
                    beta = Some(b);
                    last = add;
                }
                Some(b) if g.const_value(b).is_some() => {
                    return Err("β is not 1-D of the hidden size (broadcast bias)".into())
                }
                _ => {}
            }
        }
    }
    Ok(Some(LnMatch {
        x,
        eps: eps as f32,
        gamma,
        beta,
        out: out0(g, last),
        last,
    }))
}

impl Pass for LayerNormFusion {
    fn name(&self) -> &'static str {
        LN
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for m1 in g.topo_order()? {
            if !g.is_live(m1) || !matches!(g.node(m1).op, Op::ReduceMean(_)) {
                continue;
            }
            let m = match match_ln(g, &uses, m1) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(reason) => {
                    log.near_miss(LN, g.node(m1).name.clone(), reason);
                    continue;
                }
            };
            let name = format!("{}_LayerNorm", g.node(m1).name);
            let op = Op::LayerNormalization(LayerNormalization {
                axis: -1,
                epsilon: m.eps,
                stash_type: 1,
            });
            replace_with(
                g,
                m.out,
                &name,
                op,
                vec![Some(m.x), Some(m.gamma), m.beta],
                &[],
            );
            remove_dead(g, &[m.last]);
            uses = Uses::of(g);
            n += 1;
        }
        Ok(n)
    }
}

/// `LayerNormalization(a + b)` → `SkipLayerNormalization(a, b, γ, β[, bias])`.
pub struct SkipLayerNormFusion;

struct SkipMatch {
    input: ValueId,
    skip: ValueId,
    bias: Option<ValueId>,
    sum: ValueId,
    /// The sum is read outside the pattern: emit output 3.
    sum_shared: bool,
}

fn match_skip(g: &Graph, uses: &Uses, ln: NodeId) -> Result<Option<SkipMatch>, String> {
    let node = g.node(ln);
    let Op::LayerNormalization(op) = &node.op else {
        return Ok(None);
    };
    let Some(Some(sum)) = node.inputs.first().copied() else {
        return Ok(None);
    };
    let Some((add, ins)) = produced_by(g, sum, |o| matches!(o, Op::Add(_))) else {
        return Ok(None);
    };
    let _ = add;
    let [a, b] = ins[..] else { return Ok(None) };
    if g.const_value(a).is_some() || g.const_value(b).is_some() {
        return Ok(None);
    }
    let s = shape(g, sum).ok_or("sum of unknown shape")?;
    if !(2..=3).contains(&s.len()) {
        return Err(format!(
            "input of rank {} (SkipLayerNormalization takes 2-D or 3-D)",
            s.len()
        ));
    }
    let axis = if op.axis < 0 {
        op.axis + s.len() as i64
    } else {
        op.axis
    };
    if axis != s.len() as i64 - 1 {
        return Err(format!(
            "LayerNormalization over axis {} is not the last axis",
            op.axis
        ));
    }
    if op.stash_type != 1 {
        return Err("LayerNormalization stash_type is not float".into());
    }
    if !matches!(crate::pattern::dtype(g, sum), Some(DType::F32 | DType::F16)) {
        return Err("input is not f32 or f16".into());
    }
    if node
        .outputs
        .iter()
        .skip(1)
        .any(|&o| uses.count(o) > 0 || g.outputs.contains(&o))
    {
        return Err("the mean / inverse std-dev outputs are read".into());
    }
    if shape(g, a).as_ref() != Some(&s) || shape(g, b).as_ref() != Some(&s) {
        return Err("the two addends have different shapes (broadcast Add)".into());
    }
    let hidden = s.last().cloned().ok_or("scalar input")?;
    for (k, what) in [(1, "γ"), (2, "β")] {
        if let Some(Some(p)) = node.inputs.get(k) {
            if !is_vector_of(g, *p, &hidden) {
                return Err(format!("{what} is not 1-D of the hidden size"));
            }
        }
    }
    // A 1-D constant bias added to one addend just before (the projection's MatMul bias).
    let mut m = SkipMatch {
        input: a,
        skip: b,
        bias: None,
        sum,
        sum_shared: !private(g, uses, sum, 1),
    };
    for (x, y) in [(a, b), (b, a)] {
        let Some((_, bins)) = produced_by(g, x, |o| matches!(o, Op::Add(_))) else {
            continue;
        };
        if !private(g, uses, x, 1) {
            continue;
        }
        let found = bins.iter().position(|&v| {
            crate::pattern::const_vector_of(g, v, &hidden).is_some()
                && crate::pattern::dtype(g, v) == crate::pattern::dtype(g, sum)
        });
        if let (Some(i), [_, _]) = (found, bins.as_slice()) {
            let p = bins[1 - i];
            if shape(g, p).as_ref() == Some(&s) {
                m.input = p;
                m.skip = y;
                m.bias = Some(bins[i]);
                break;
            }
        }
    }
    Ok(Some(m))
}

impl Pass for SkipLayerNormFusion {
    fn name(&self) -> &'static str {
        SKIP
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for ln in g.topo_order()? {
            if !g.is_live(ln) || !matches!(g.node(ln).op, Op::LayerNormalization(_)) {
                continue;
            }
            let m = match match_skip(g, &uses, ln) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(reason) => {
                    log.near_miss(SKIP, g.node(ln).name.clone(), reason);
                    continue;
                }
            };
            let node = g.node(ln);
            let Op::LayerNormalization(op) = &node.op else {
                continue;
            };
            let epsilon = Some(op.epsilon);
            let gamma = node.inputs.get(1).copied().flatten();
            let beta = node.inputs.get(2).copied().flatten();
            let out = node.outputs[0];
            let name = format!("{}_Skip", node.name);
            let mut inputs = vec![Some(m.input), Some(m.skip), gamma, beta];
            if m.bias.is_some() {
                inputs.push(m.bias);
            }
            let op = Op::SkipLayerNormalization(SkipLayerNormalization { epsilon });
            let extra: Vec<(String, Option<Type>)> = if m.sum_shared {
                let stats = None;
                vec![
                    (String::new(), stats.clone()),
                    (String::new(), stats),
                    (
                        g.unique_name(&format!("{}__skip_sum", g.value(m.sum).name)),
                        g.value(m.sum).ty.clone(),
                    ),
                ]
            } else {
                Vec::new()
            };
            let extra_refs: Vec<(&str, Option<Type>)> =
                extra.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            let fused = replace_with(g, out, &name, op, inputs, &extra_refs);
            if m.sum_shared {
                let sum_out = g.node(fused).outputs[3];
                g.replace_all_uses(m.sum, sum_out);
                let old_name = std::mem::take(&mut g.value_mut(m.sum).name);
                g.value_mut(sum_out).name = old_name;
            }
            let mut roots = vec![ln];
            roots.extend(crate::pattern::producer(g, m.sum));
            remove_dead(g, &roots);
            uses = Uses::of(g);
            n += 1;
        }
        Ok(n)
    }
}

/// **EmbedLayerNorm**: `LayerNormalization(word[input_ids] + position[0..seq] (+
/// segment[token_type_ids]))` → `com.microsoft.EmbedLayerNormalization`. ONNX Runtime's op
/// takes int32 ids (Casts are inserted) and looks positions up as `0..seq` when no
/// position_ids are given, so the position lookup must provably be that: a Gather of
/// `Slice(arange, 0, seq, axis 1)` whose result is `[1, seq]`.
pub struct EmbedLayerNormFusion;

const EMBED: &str = "embed-layer-norm-fusion";

/// One embedding lookup `Gather(table, ids)` feeding the sum.
#[derive(Clone, Copy)]
struct Lookup {
    table: ValueId,
    ids: ValueId,
    rows: usize,
}

struct EmbedMatch {
    word: Lookup,
    pos: Lookup,
    seg: Option<Lookup>,
}

/// The leaves of the Add tree summing into `v` (intermediate sums private to the tree).
fn add_leaves(g: &Graph, uses: &Uses, v: ValueId, top: bool, out: &mut Vec<ValueId>) {
    match produced_by(g, v, |o| matches!(o, Op::Add(_))) {
        Some((_, ins)) if top || private(g, uses, v, 1) => {
            for i in ins {
                add_leaves(g, uses, i, false, out);
            }
        }
        _ => out.push(v),
    }
}

/// `ids` is `Slice(arange(N) of shape [1, N], 0, e, axis 1[, step 1])` of shape `[1, seq]`.
fn is_position_range(g: &Graph, ids: ValueId, seq: &kiln_ir::Dim) -> Result<(), String> {
    let Some((_, ins)) = produced_by(g, ids, |o| matches!(o, Op::Slice(_))) else {
        return Err("position ids are not a Slice of a constant range".into());
    };
    let data = g
        .const_value(ins[0])
        .ok_or("position ids are sliced from a non-constant")?;
    let vals = data.to_i64_vec().ok_or("position ids are not integers")?;
    if data.rank() != 2
        || data.shape()[0] != 1
        || vals.iter().enumerate().any(|(i, &v)| v != i as i64)
    {
        return Err("position ids are not sliced from [0, 1, 2, …] of shape [1, N]".into());
    }
    let int = |k: usize| {
        ins.get(k)
            .and_then(|&v| g.const_value(v))
            .and_then(|t| t.to_i64_vec())
    };
    if int(1) != Some(vec![0]) {
        return Err("position ids do not start at 0".into());
    }
    if !matches!(int(3).as_deref(), Some([1]) | Some([-1])) {
        return Err("position ids are not sliced along axis 1".into());
    }
    if ins.len() > 4 && int(4) != Some(vec![1]) {
        return Err("position ids are sliced with a step other than 1".into());
    }
    if shape(g, ids) != Some(vec![kiln_ir::Dim::from(1i64), seq.clone()]) {
        return Err("position ids are not [1, seq] for the input ids' seq".into());
    }
    Ok(())
}

fn match_embed(g: &Graph, uses: &Uses, ln: NodeId) -> Result<Option<EmbedMatch>, String> {
    let node = g.node(ln);
    let Op::LayerNormalization(op) = &node.op else {
        return Ok(None);
    };
    let Some(Some(sum)) = node.inputs.first().copied() else {
        return Ok(None);
    };
    let mut leaves = Vec::new();
    add_leaves(g, uses, sum, true, &mut leaves);
    if leaves.len() < 2 {
        return Ok(None);
    }
    let mut lookups = Vec::new();
    for &l in &leaves {
        let Some((_, ins)) = produced_by(g, l, |o| matches!(o, Op::Gather(x) if x.axis == 0))
        else {
            return Ok(None);
        };
        let Some(t) = g.const_value(ins[0]) else {
            return Ok(None);
        };
        if t.rank() != 2 {
            return Ok(None);
        }
        if !private(g, uses, l, 1) {
            return Err("an embedding lookup is read outside the pattern".into());
        }
        lookups.push(Lookup {
            table: ins[0],
            ids: ins[1],
            rows: t.shape()[0],
        });
    }
    if lookups.len() > 3 {
        return Err(format!("a sum of {} embedding lookups", lookups.len()));
    }
    let is_input = |v: ValueId| g.inputs.contains(&v) && g.const_value(v).is_none();
    let (by_input, other): (Vec<Lookup>, Vec<Lookup>) =
        lookups.iter().copied().partition(|l| is_input(l.ids));
    let ([pos], 1..=2) = (other.as_slice(), by_input.len()) else {
        return Err("not one position lookup plus word (and segment) lookups of input ids".into());
    };
    let mut by_input = by_input;
    by_input.sort_by_key(|l| std::cmp::Reverse(l.rows));
    let word = by_input[0];
    let seg = by_input.get(1).copied();
    let hidden = last_dim(g, word.table).ok_or("word table of unknown shape")?;
    let ids_shape = shape(g, word.ids).ok_or("input ids of unknown shape")?;
    let [_, seq] = ids_shape.as_slice() else {
        return Err("input ids are not 2-D".into());
    };
    if !matches!(
        crate::pattern::dtype(g, word.ids),
        Some(DType::I64 | DType::I32)
    ) {
        return Err("input ids are not int64/int32".into());
    }
    if let Some(s) = seg {
        if shape(g, s.ids).as_ref() != Some(&ids_shape) {
            return Err("segment ids have another shape than input ids".into());
        }
    }
    for l in lookups.iter() {
        if last_dim(g, l.table).as_ref() != Some(&hidden)
            || crate::pattern::dtype(g, l.table) != Some(DType::F32)
        {
            return Err("embedding tables differ in hidden size or are not f32".into());
        }
    }
    is_position_range(g, pos.ids, seq)?;
    if op.stash_type != 1 || (op.axis != -1 && op.axis != 2) {
        return Err("LayerNormalization is not over the last axis in float".into());
    }
    if node
        .outputs
        .iter()
        .skip(1)
        .any(|&o| uses.count(o) > 0 || g.outputs.contains(&o))
    {
        return Err("the mean / inverse std-dev outputs are read".into());
    }
    for k in [1, 2] {
        match node.inputs.get(k).copied().flatten() {
            Some(p) if is_vector_of(g, p, &hidden) => {}
            _ => return Err("γ / β missing or not 1-D of the hidden size".into()),
        }
    }
    Ok(Some(EmbedMatch {
        word,
        pos: *pos,
        seg,
    }))
}

impl EmbedLayerNormFusion {
    /// `Cast(ids, int32)` unless `ids` already is int32.
    fn int32(g: &mut Graph, ids: ValueId) -> ValueId {
        if crate::pattern::dtype(g, ids) == Some(DType::I32) {
            return ids;
        }
        let name = g.unique_name(&format!("{}_int32", g.value(ids).name));
        let nname = crate::pattern::node_name(g, &name);
        let n = g.add_node(
            nname,
            Op::Cast(kiln_ir::op::Cast {
                round_mode: "up".into(),
                saturate: true,
                to: DType::I32,
            }),
            vec![Some(ids)],
            &[&name],
        );
        let v = out0(g, n);
        g.value_mut(v).ty = shape(g, ids).map(|s| Type::tensor(DType::I32, s));
        v
    }
}

impl Pass for EmbedLayerNormFusion {
    fn name(&self) -> &'static str {
        EMBED
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        let mut uses = Uses::of(g);
        for ln in g.topo_order()? {
            if !g.is_live(ln) || !matches!(g.node(ln).op, Op::LayerNormalization(_)) {
                continue;
            }
            let m = match match_embed(g, &uses, ln) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(reason) => {
                    log.near_miss(EMBED, g.node(ln).name.clone(), reason);
                    continue;
                }
            };
            let node = g.node(ln);
            let Op::LayerNormalization(op) = &node.op else {
                continue;
            };
            let epsilon = Some(op.epsilon);
            let (gamma, beta) = (node.inputs[1], node.inputs[2]);
            let out = node.outputs[0];
            let name = format!("{}_Embed", node.name);
            let batch = shape(g, m.word.ids).map(|s| s[0].clone());
            let ids = Self::int32(g, m.word.ids);
            let seg_ids = m.seg.map(|s| Self::int32(g, s.ids));
            let inputs = vec![
                Some(ids),
                seg_ids,
                Some(m.word.table),
                Some(m.pos.table),
                m.seg.map(|s| s.table),
                gamma,
                beta,
            ];
            let mask_name = g.unique_name(&format!("{name}_mask_index"));
            let mask_ty = batch.map(|b| Type::tensor(DType::I32, vec![b]));
            let op = Op::EmbedLayerNormalization(kiln_ir::op::EmbedLayerNormalization {
                epsilon,
                mask_index_type: None,
            });
            replace_with(g, out, &name, op, inputs, &[(mask_name.as_str(), mask_ty)]);
            remove_dead(g, &[ln]);
            uses = Uses::of(g);
            n += 1;
        }
        Ok(n)
    }
}
