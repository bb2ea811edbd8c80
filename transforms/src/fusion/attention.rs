//! Multi-head self-attention → `com.microsoft.Attention` (packed QKV weight and bias).
//!
//! Anchored at the `Softmax` over the scores, the rule matches
//!
//! ```text
//! q|k|v = Add(MatMul(X, W*), b*)                       (BERT: three projections)
//!       | Split(Reshape(Gemm(Reshape(X, [-1, D]), W, b), [B, S, 3D]), axis=-1)   (GPT-2 Conv1D)
//! Qh = Transpose(Reshape(q, [B, S, N, H]), [0,2,1,3])
//! Kt = Transpose(Reshape(k, [B, S, N, H]), [0,2,3,1])
//! Vh = Transpose(Reshape(v, [B, S, N, H]), [0,2,1,3])
//! scores = MatMul(Qh, Kt) * c | / c                    (eager: c = 1/√H)
//!        | MatMul(Qh * c1, Kt * c2)                     (SDPA: c1 = c2 = H^-¼)
//! p = Softmax(scores [+ mask], axis=-1)
//! p = Where(IsNaN(p), 0, p)                             (SDPA, optional)
//! y = Reshape(Transpose([Reshape-identity](MatMul(p, Vh)), [0,2,1,3]), [B, S, N*H])
//! ```
//!
//! The additive mask goes to Attention in one of two ways:
//! * `(1 - Cast(Unsqueeze(attention_mask))) * c` with `attention_mask` a 2-D graph input
//!   `[B, T]` (the transformers 4.x eager form): input 3 `mask_index` = the raw 2-D mask as
//!   int32 and `mask_filter_value = c`. ORT and kiln add `c` where the mask is 0 and nothing
//!   where it is non-zero, which is what the graph computes for a 0/1 mask (the assumption
//!   ONNX Runtime's own fusion makes as well).
//! * anything else of shape `[B|1, 1|N, S, T]` (the transformers 5.x forms, including
//!   GPT-2's causal-and-padding mask, all built as `Where(mask, 0, -inf|finfo.min)`): the
//!   mask tensor itself becomes input 5 `attention_bias`, which both engines add to the
//!   scaled scores exactly as the graph does. No claim about where the mask comes from is
//!   needed, so no semantics are assumed. For GPT-2 the causal part is inside that bias, so
//!   `unidirectional` stays 0 (setting it too would only mask the same positions twice).
//!
//! Fully-masked rows (SDPA's `IsNaN` + `Where`). With a `-inf` bias a query row whose keys
//! are all masked has a NaN softmax, which the exported graph then zeroes, so its attention
//! output is exactly 0. ONNX Runtime's Attention kernel does not do that (depending on the
//! path the row is NaN or a uniform average of V). Rather than accept a difference on such
//! rows (a batch row whose attention_mask is all zeros is legal input), the fusion keeps the
//! graph's semantics with an explicit guard:
//! `y = Where(IsInf(Unsqueeze(ReduceMax(bias, axes=[1, 3]), 2), negative only), 0, Attention(..))`
//! — a row is dead exactly when the largest bias in it is -inf. That needs the bias not to
//! differ per head (dim 1 is 1), else the rule declines. The guard costs one reduction of the
//! `[B, 1, S, T]` bias per layer (shared by CSE when layers share the mask). NaN *inside*
//! Q/K/V (not from masking) is not zeroed by the fused form: the graph would zero NaN
//! probabilities of such rows too; kiln treats NaN inputs as outside the contract.
//! The eager `finfo.min` form needs no guard: the bias is finite, a fully-masked row is a
//! uniform distribution in the graph and in both kernels alike.

use kiln_ir::op::{Cast, IsInf, MsAttention, ReduceMax, Unsqueeze, Where};
use kiln_ir::{DType, Dim, Graph, IrError, NodeId, Op, Tensor, ValueDef, ValueId};

use crate::{Level, Log, Pass};

pub(super) fn passes(_level: Level) -> Vec<Box<dyn Pass>> {
    vec![Box::new(AttentionFusion)]
}

const NAME: &str = "attention-fusion";

/// Multi-head self-attention → `com.microsoft.Attention`.
pub struct AttentionFusion;

impl Pass for AttentionFusion {
    fn name(&self) -> &'static str {
        NAME
    }
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError> {
        let mut n = 0;
        for id in g.node_ids().collect::<Vec<_>>() {
            if !g.is_live(id) || !matches!(g.node(id).op, Op::Softmax(_)) {
                continue;
            }
            let gr: &Graph = g;
            let m = Matcher {
                g: gr,
                uses: gr.use_counts(),
                nodes: Vec::new(),
            };
            match m.attention(id) {
                Ok(Some(found)) => {
                    apply(g, found)?;
                    n += 1;
                }
                Ok(None) => {}
                Err(reason) => log.near_miss(NAME, g.node(id).name.clone(), reason),
            }
        }
        if n > 0 {
            kiln_ir::infer::infer_graph(g)?;
        }
        Ok(n)
    }
}

/// The projection feeding the heads.
enum Proj {
    /// Three `Add(MatMul(X, W), b)`: the (MatMul, Add) outputs' weights and biases.
    Separate([(ValueId, ValueId); 3]),
    /// `Gemm(Reshape(X, [-1, D]), W, b)` split in three.
    Packed { w: ValueId, b: ValueId },
}

enum Mask {
    None,
    /// Raw 2-D 0/1 mask (a graph input) and the value added where it is 0.
    Index(ValueId, f32),
    /// Additive `[B|1, 1|N, S, T]` bias; `dead_rows`: add the fully-masked-row guard.
    Bias {
        bias: ValueId,
        dead_rows: bool,
    },
}

struct Found {
    x: ValueId,
    proj: Proj,
    heads: i64,
    mask: Mask,
    /// The pattern's result and the nodes to remove once it is redirected.
    y: ValueId,
    nodes: Vec<NodeId>,
    anchor: String,
}

struct Matcher<'a> {
    g: &'a Graph,
    uses: Vec<u32>,
    nodes: Vec<NodeId>,
}

type R<T> = Result<T, String>;

fn shape(g: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    g.value(v)
        .ty
        .as_ref()
        .and_then(|t| t.as_tensor())
        .and_then(|t| t.shape.clone())
}

fn dtype(g: &Graph, v: ValueId) -> Option<DType> {
    g.value(v).ty.as_ref().and_then(|t| t.elem_dtype())
}

/// A constant with one element, as f64.
fn scalar(g: &Graph, v: ValueId) -> Option<f64> {
    let t = g.const_value(v)?;
    if t.len() != 1 {
        return None;
    }
    t.to_f64_vec()?.first().copied()
}

fn perm_of(op: &Op) -> Option<Vec<i64>> {
    match op {
        Op::Transpose(t) => t.perm.clone(),
        _ => None,
    }
}

impl Matcher<'_> {
    /// The node defining `v` if it is a live node's output.
    fn def(&self, v: ValueId) -> Option<NodeId> {
        self.g.producer(v).filter(|&n| self.g.is_live(n))
    }

    /// The node defining `v`, which must be read only by the pattern (`reads` times) and
    /// not be a graph output; recorded for removal.
    fn inner(&mut self, v: ValueId, reads: u32, what: &str) -> R<NodeId> {
        let n = self
            .def(v)
            .ok_or_else(|| format!("{what} is not computed by a node"))?;
        if self.g.outputs.contains(&v) || self.uses[v.index()] != reads {
            return Err(format!(
                "{what} (`{}`) is also used outside the attention pattern",
                self.g.value(v).name
            ));
        }
        if !self.nodes.contains(&n) {
            self.nodes.push(n);
        }
        Ok(n)
    }

    fn input(&self, n: NodeId, i: usize) -> R<ValueId> {
        self.g
            .node(n)
            .inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("node `{}` lacks input {i}", self.g.node(n).name))
    }

    /// `Transpose(Reshape(x, [B, S, N, H]), perm)` → (x, N, H).
    fn heads(&mut self, v: ValueId, perm: &[i64], what: &str) -> R<(ValueId, i64, i64)> {
        let g = self.g;
        let t = self.inner(v, 1, what)?;
        if perm_of(&g.node(t).op).as_deref() != Some(perm) {
            return Err(format!(
                "{what} is not a Transpose with perm {perm:?} (got {:?})",
                perm_of(&self.g.node(t).op)
            ));
        }
        let r_out = self.input(t, 0)?;
        let r = self.inner(r_out, 1, what)?;
        if !matches!(self.g.node(r).op, Op::Reshape(_)) {
            return Err(format!("{what}: no Reshape to heads before the Transpose"));
        }
        let x = self.input(r, 0)?;
        let (Some(xs), Some(rs)) = (shape(self.g, x), shape(self.g, r_out)) else {
            return Err(format!("{what}: shapes not known"));
        };
        let (Some(n), Some(h)) = (
            rs.get(2).and_then(Dim::known),
            rs.get(3).and_then(Dim::known),
        ) else {
            return Err(format!(
                "{what}: num_heads not derivable (head reshape to {rs:?})"
            ));
        };
        if xs.len() != 3 || rs.len() != 4 || xs[..2] != rs[..2] || xs[2].known() != Some(n * h) {
            return Err(format!(
                "{what}: Reshape {xs:?} → {rs:?} is not a split into heads"
            ));
        }
        Ok((x, n, h))
    }

    /// The scaled scores `[B, N, S, T]`: (Qh, Kt, scale).
    fn scores(&mut self, v: ValueId) -> R<(ValueId, ValueId, f64)> {
        let g = self.g;
        let n = self.inner(v, 1, "the scores")?;
        let node = g.node(n);
        match &node.op {
            Op::Mul(_) | Op::Div(_) => {
                let (a, b) = (self.input(n, 0)?, self.input(n, 1)?);
                let div = matches!(node.op, Op::Div(_));
                let (mm, c) = match (scalar(self.g, a), scalar(self.g, b)) {
                    (_, Some(c)) => (a, c),
                    (Some(c), None) if !div => (b, c),
                    _ => return Err("the scores are not scaled by a scalar constant".into()),
                };
                let m = self.inner(mm, 1, "the QKᵀ product")?;
                if !matches!(self.g.node(m).op, Op::MatMul(_)) {
                    return Err("the scaled value is not a MatMul".into());
                }
                let scale = if div { 1.0 / c } else { c };
                Ok((self.input(m, 0)?, self.input(m, 1)?, scale))
            }
            Op::MatMul(_) => {
                let (q, c1) = self.scaled_side(self.input(n, 0)?)?;
                let (k, c2) = self.scaled_side(self.input(n, 1)?)?;
                Ok((q, k, c1 * c2))
            }
            _ => Err(format!(
                "the softmax input is a {} rather than scaled scores",
                node.op.op_type()
            )),
        }
    }

    /// `Mul(t, c)` with a scalar constant `c` → (t, c); anything else → (v, 1).
    fn scaled_side(&mut self, v: ValueId) -> R<(ValueId, f64)> {
        let g = self.g;
        let Some(p) = self.def(v) else {
            return Ok((v, 1.0));
        };
        if !matches!(g.node(p).op, Op::Mul(_)) {
            return Ok((v, 1.0));
        }
        let (a, b) = (self.input(p, 0)?, self.input(p, 1)?);
        let (t, c) = match (scalar(g, a), scalar(g, b)) {
            (_, Some(c)) => (a, c),
            (Some(c), None) => (b, c),
            _ => return Ok((v, 1.0)),
        };
        self.inner(v, 1, "a scaled Q or K")?;
        Ok((t, c))
    }

    /// Recognizes the additive mask.
    fn mask(&self, bias: ValueId, s: &Dim, t: &Dim, heads: i64, nan_guard: bool) -> R<Mask> {
        if let Some(m) = self.legacy_mask(bias, t) {
            return Ok(m);
        }
        if dtype(self.g, bias) != Some(DType::F32) {
            return Err("the mask is not f32".into());
        }
        let Some(bs) = shape(self.g, bias) else {
            return Err("the mask's shape is not known".into());
        };
        let ok = bs.len() == 4
            && &bs[2] == s
            && &bs[3] == t
            && (bs[1].known() == Some(1) || bs[1].known() == Some(heads));
        if !ok {
            return Err(format!(
                "the mask of shape {bs:?} is neither a 2-D attention_mask expanded as \
                 (1 - mask) * c nor an attention bias [B|1, 1|N, S, T]"
            ));
        }
        let dead_rows = nan_guard && self.can_be_neg_inf(bias);
        if dead_rows && bs[1].known() != Some(1) {
            return Err(
                "the -inf mask differs per head: fully-masked rows cannot be guarded".into(),
            );
        }
        Ok(Mask::Bias { bias, dead_rows })
    }

    /// Whether the bias may hold -inf (a constant without -inf, or a `Where` between finite
    /// constants, cannot).
    fn can_be_neg_inf(&self, v: ValueId) -> bool {
        let finite = |v: Option<ValueId>| {
            v.and_then(|v| self.g.const_value(v))
                .and_then(|t| t.to_f64_vec())
                .is_some_and(|x| x.iter().all(|x| x.is_finite()))
        };
        if finite(Some(v)) {
            return false;
        }
        match self.def(v).map(|n| self.g.node(n)) {
            Some(n) if matches!(n.op, Op::Where(_)) => {
                !(finite(n.inputs.get(1).copied().flatten())
                    && finite(n.inputs.get(2).copied().flatten()))
            }
            _ => true,
        }
    }

    /// `Mul(Sub(1, Cast|Unsqueeze…(attention_mask)), c)` with a `[B, T]` graph input.
    fn legacy_mask(&self, v: ValueId, t: &Dim) -> Option<Mask> {
        let mul = self.g.node(self.def(v)?);
        if !matches!(mul.op, Op::Mul(_)) {
            return None;
        }
        let (a, b) = (mul.inputs.first()?.as_ref()?, mul.inputs.get(1)?.as_ref()?);
        let (sub, c) = match (scalar(self.g, *a), scalar(self.g, *b)) {
            (_, Some(c)) => (*a, c),
            (Some(c), None) => (*b, c),
            _ => return None,
        };
        let sn = self.g.node(self.def(sub)?);
        if !matches!(sn.op, Op::Sub(_)) || scalar(self.g, (*sn.inputs.first()?)?) != Some(1.0) {
            return None;
        }
        let mut m = (*sn.inputs.get(1)?)?;
        let ms = shape(self.g, m)?;
        loop {
            match self.g.value(m).def {
                ValueDef::Input => break,
                ValueDef::Node { node, .. } => {
                    let n = self.g.node(node);
                    if !matches!(n.op, Op::Cast(_) | Op::Unsqueeze(_)) {
                        return None;
                    }
                    m = (*n.inputs.first()?)?;
                }
                _ => return None,
            }
        }
        let is = shape(self.g, m)?;
        let want = [
            is.first()?.clone(),
            Dim::from(1i64),
            Dim::from(1i64),
            is.get(1)?.clone(),
        ];
        (is.len() == 2 && ms[..] == want[..] && &is[1] == t && c.is_finite())
            .then_some(Mask::Index(m, c as f32))
    }

    fn attention(mut self, sm: NodeId) -> R<Option<Found>> {
        let g = self.g;
        let node = g.node(sm);
        let Op::Softmax(s) = &node.op else {
            return Ok(None);
        };
        let sc = self.input(sm, 0)?;
        let Some(scs) = shape(g, sc) else {
            return Ok(None);
        };
        if scs.len() != 4 {
            return Ok(None);
        }
        // Only softmaxes over a MatMul-derived 4-D tensor are candidates worth explaining.
        if s.axis != -1 && s.axis != 3 {
            return Err(format!("softmax over axis {} rather than the keys", s.axis));
        }
        let Some(sc_node) = self.def(sc) else {
            return Ok(None);
        };
        let p = node.outputs[0];
        self.nodes.push(sm);
        // Mask.
        let (scores, bias) = match &g.node(sc_node).op {
            Op::Add(_) => {
                let (a, b) = (self.input(sc_node, 0)?, self.input(sc_node, 1)?);
                self.inner(sc, 1, "the masked scores")?;
                let from_mm = |v: ValueId| {
                    self.def(v).is_some_and(|n| {
                        let op = &g.node(n).op;
                        matches!(op, Op::MatMul(_) | Op::Div(_))
                            || (matches!(op, Op::Mul(_))
                                && g.node(n).inputs.iter().flatten().any(|&i| {
                                    self.def(i)
                                        .is_some_and(|m| matches!(g.node(m).op, Op::MatMul(_)))
                                }))
                    })
                };
                if from_mm(a) {
                    (a, Some(b))
                } else if from_mm(b) {
                    (b, Some(a))
                } else {
                    return Ok(None);
                }
            }
            Op::MatMul(_) | Op::Mul(_) | Op::Div(_) => (sc, None),
            _ => return Ok(None),
        };
        let (qh, kt, scale) = self.scores(scores)?;
        let (q, nq, h) = self.heads(qh, &[0, 2, 1, 3], "Q")?;
        let (k, nk, hk) = self.heads(kt, &[0, 2, 3, 1], "Kᵀ")?;
        if (nq, h) != (nk, hk) {
            return Err(format!("Q has {nq}×{h} heads, K {nk}×{hk}"));
        }
        let want = 1.0 / (h as f64).sqrt();
        if ((scale - want) / want).abs() > 1e-5 {
            return Err(format!(
                "scale {scale} is not 1/sqrt(head_size {h}) = {want}"
            ));
        }
        // Softmax → [Where(IsNaN)] → MatMul V.
        let users = g.users();
        let pu = users.get(&p).cloned().unwrap_or_default();
        let (probs, nan_guard) = if pu.len() == 2 && self.uses[p.index()] == 2 {
            let (isnan, wh) = match (&g.node(pu[0]).op, &g.node(pu[1]).op) {
                (Op::IsNaN(_), Op::Where(_)) => (pu[0], pu[1]),
                (Op::Where(_), Op::IsNaN(_)) => (pu[1], pu[0]),
                _ => return Err("the probabilities are used outside the pattern".into()),
            };
            let isn = g.node(isnan).outputs[0];
            let wn = g.node(wh);
            let zero = wn.inputs.get(1).copied().flatten();
            if wn.inputs.first().copied().flatten() != Some(isn)
                || wn.inputs.get(2).copied().flatten() != Some(p)
                || zero.and_then(|z| scalar(g, z)) != Some(0.0)
                || self.uses[isn.index()] != 1
                || g.outputs.contains(&p)
            {
                return Err("the probabilities are used outside Where(IsNaN(p), 0, p)".into());
            }
            self.nodes.push(isnan);
            self.nodes.push(wh);
            (wn.outputs[0], true)
        } else {
            if self.uses[p.index()] != 1 || g.outputs.contains(&p) {
                return Err("the probabilities are used outside the attention pattern".into());
            }
            (p, false)
        };
        let pv = match users.get(&probs).map(Vec::as_slice) {
            Some([n]) if matches!(g.node(*n).op, Op::MatMul(_)) => *n,
            _ => return Err("the probabilities are not multiplied by V".into()),
        };
        if self.input(pv, 0)? != probs || self.uses[probs.index()] != 1 {
            return Err("the probabilities are used outside the attention pattern".into());
        }
        self.nodes.push(pv);
        let vh = self.input(pv, 1)?;
        let (v, nv, hv) = self.heads(vh, &[0, 2, 1, 3], "V")?;
        if (nv, hv) != (nq, h) {
            return Err(format!("V has {nv}×{hv} heads, Q {nq}×{h}"));
        }
        // Merge heads: [Reshape-identity] → Transpose [0,2,1,3] → Reshape [B, S, N*H].
        let mut ctx = g.node(pv).outputs[0];
        let users_of = |m: &mut Self, v: ValueId| -> R<NodeId> {
            match users.get(&v).map(Vec::as_slice) {
                Some([n]) if m.uses[v.index()] == 1 && !g.outputs.contains(&v) => {
                    m.nodes.push(*n);
                    Ok(*n)
                }
                _ => Err(format!(
                    "the context `{}` is used outside the attention pattern",
                    g.value(v).name
                )),
            }
        };
        let mut t = users_of(&mut self, ctx)?;
        if matches!(g.node(t).op, Op::Reshape(_)) {
            let o = g.node(t).outputs[0];
            if shape(g, o).is_none() || shape(g, o) != shape(g, ctx) {
                return Err("the context is reshaped other than to itself".into());
            }
            ctx = o;
            t = users_of(&mut self, ctx)?;
        }
        if perm_of(&g.node(t).op).as_deref() != Some(&[0, 2, 1, 3]) {
            return Err("the context is not transposed back with perm [0, 2, 1, 3]".into());
        }
        let r = users_of(&mut self, g.node(t).outputs[0])?;
        let y = g.node(r).outputs[0];
        let (Some(ys), Some(qs)) = (shape(g, y), shape(g, q)) else {
            return Err("the output's shape is not known".into());
        };
        if !matches!(g.node(r).op, Op::Reshape(_)) || ys != qs {
            return Err(format!("the heads are not merged back to {qs:?}"));
        }
        if g.outputs.contains(&y) {
            return Err("the attention output is a graph output".into());
        }
        // Projections.
        let (x, proj) = self.projections(q, k, v, nq * h)?;
        let xs = shape(g, x).unwrap_or_default();
        if xs.len() != 3 || dtype(g, x) != Some(DType::F32) {
            return Err("the attention input is not a 3-D f32 tensor".into());
        }
        let mask = match bias {
            None => Mask::None,
            Some(b) => self.mask(b, &xs[1], &xs[1], nq, nan_guard)?,
        };
        Ok(Some(Found {
            x,
            proj,
            heads: nq,
            mask,
            y,
            nodes: self.nodes,
            anchor: node.name.clone(),
        }))
    }

    /// `Add(MatMul(X, W), b)` → (X, W, b).
    fn linear(&mut self, v: ValueId, d: i64, what: &str) -> R<(ValueId, ValueId, ValueId)> {
        let add = self.inner(v, 1, what)?;
        if !matches!(self.g.node(add).op, Op::Add(_)) {
            return Err(format!("{what} is not MatMul + bias"));
        }
        let (a, b) = (self.input(add, 0)?, self.input(add, 1)?);
        let (mm, bias) = if self.g.const_value(b).is_some() {
            (a, b)
        } else {
            (b, a)
        };
        let m = self.inner(mm, 1, what)?;
        if !matches!(self.g.node(m).op, Op::MatMul(_)) {
            return Err(format!("{what} is not MatMul + bias"));
        }
        let (x, w) = (self.input(m, 0)?, self.input(m, 1)?);
        let (Some(wt), Some(bt)) = (self.g.const_value(w), self.g.const_value(bias)) else {
            return Err(format!("{what}: weight or bias is not a constant"));
        };
        if wt.dtype() != DType::F32
            || bt.dtype() != DType::F32
            || wt.rank() != 2
            || wt.shape()[1] as i64 != d
            || bt.shape() != [d as usize]
        {
            return Err(format!(
                "{what}: weight {:?} / bias {:?} are not f32 [D, {d}] / [{d}]",
                wt.shape(),
                bt.shape()
            ));
        }
        Ok((x, w, bias))
    }

    fn projections(&mut self, q: ValueId, k: ValueId, v: ValueId, d: i64) -> R<(ValueId, Proj)> {
        let g = self.g;
        // GPT-2: one Split.
        let split = |v: ValueId| match g.value(v).def {
            ValueDef::Node { node, index } if matches!(g.node(node).op, Op::Split(_)) => {
                Some((node, index))
            }
            _ => None,
        };
        if let (Some((sq, 0)), Some((sk, 1)), Some((sv, 2))) = (split(q), split(k), split(v)) {
            if sq != sk || sq != sv || g.node(sq).outputs.len() != 3 {
                return Err("Q, K and V are not the three outputs of one Split".into());
            }
            for (o, w) in [(q, "Q"), (k, "K"), (v, "V")] {
                if self.uses[o.index()] != 1 || g.outputs.contains(&o) {
                    return Err(format!("the split {w} is used outside the pattern"));
                }
            }
            self.nodes.push(sq);
            let Op::Split(sp) = &g.node(sq).op else {
                unreachable!()
            };
            let packed = self.input(sq, 0)?;
            let ps = shape(g, packed).unwrap_or_default();
            let axis_ok = ps.len() == 3 && (sp.axis == 2 || sp.axis == -1);
            let sizes = g.node(sq).inputs.get(1).copied().flatten();
            let even = match sizes {
                Some(s) => g
                    .const_value(s)
                    .and_then(|t| t.to_i64_vec())
                    .is_some_and(|s| s == [d, d, d]),
                None => ps.get(2).and_then(Dim::known) == Some(3 * d),
            };
            if !axis_ok || !even {
                return Err("the Split is not three equal parts of the last axis".into());
            }
            let r = self.inner(packed, 1, "the packed QKV")?;
            if !matches!(g.node(r).op, Op::Reshape(_)) {
                return Err("the packed QKV is not reshaped from a Gemm".into());
            }
            let gemm_out = self.input(r, 0)?;
            let gm = self.inner(gemm_out, 1, "the QKV Gemm")?;
            let Op::Gemm(gp) = &g.node(gm).op else {
                return Err("the packed QKV is not a Gemm".into());
            };
            if gp.alpha != 1.0 || gp.beta != 1.0 || gp.trans_a || gp.trans_b {
                return Err("the QKV Gemm has alpha/beta/transposes".into());
            }
            let (x2, w, b) = (
                self.input(gm, 0)?,
                self.input(gm, 1)?,
                g.node(gm)
                    .inputs
                    .get(2)
                    .copied()
                    .flatten()
                    .ok_or("the QKV Gemm has no bias")?,
            );
            let (Some(wt), Some(bt)) = (g.const_value(w), g.const_value(b)) else {
                return Err("the QKV Gemm's weight or bias is not a constant".into());
            };
            if wt.dtype() != DType::F32
                || bt.dtype() != DType::F32
                || wt.rank() != 2
                || wt.shape()[1] as i64 != 3 * d
                || bt.shape() != [3 * d as usize]
            {
                return Err("the QKV Gemm's weight or bias has the wrong shape".into());
            }
            let r0 = self.inner(x2, 1, "the flattened input")?;
            if !matches!(g.node(r0).op, Op::Reshape(_)) {
                return Err("the QKV Gemm's input is not a flattened 3-D tensor".into());
            }
            let x = self.input(r0, 0)?;
            let xs = shape(g, x).unwrap_or_default();
            if xs.len() != 3 || ps[..2] != xs[..2] || xs[2].known() != Some(wt.shape()[0] as i64) {
                return Err(format!(
                    "the packed QKV {ps:?} is not the input {xs:?} projected"
                ));
            }
            return Ok((x, Proj::Packed { w, b }));
        }
        let (xq, wq, bq) = self.linear(q, d, "Q")?;
        let (xk, wk, bk) = self.linear(k, d, "K")?;
        let (xv, wv, bv) = self.linear(v, d, "V")?;
        if xq != xk || xq != xv {
            return Err("Q, K and V are projections of different inputs".into());
        }
        Ok((xq, Proj::Separate([(wq, bq), (wk, bk), (wv, bv)])))
    }
}

fn f32s(g: &Graph, v: ValueId) -> Vec<f32> {
    g.const_value(v)
        .and_then(|t| t.to_vec::<f32>())
        .expect("checked f32 constant")
}

fn add(g: &mut Graph, name: &str, op: Op, inputs: Vec<Option<ValueId>>) -> ValueId {
    let out = g.unique_name(name);
    let n = g.add_node(name, op, inputs, &[out.as_str()]);
    g.node(n).outputs[0]
}

fn apply(g: &mut Graph, f: Found) -> Result<(), IrError> {
    let base = f.anchor.trim_end_matches("/Softmax").to_string();
    let (w, b) = match f.proj {
        Proj::Packed { w, b } => (w, b),
        Proj::Separate(parts) => {
            let ws: Vec<Vec<f32>> = parts.iter().map(|(w, _)| f32s(g, *w)).collect();
            let rows = g.const_value(parts[0].0).expect("checked").shape()[0];
            let d: usize = ws[0].len() / rows;
            let mut packed = Vec::with_capacity(rows * 3 * d);
            for r in 0..rows {
                for w in &ws {
                    packed.extend_from_slice(&w[r * d..(r + 1) * d]);
                }
            }
            let mut bias = Vec::with_capacity(3 * d);
            for (_, b) in &parts {
                bias.extend(f32s(g, *b));
            }
            let wn = g.unique_name(&format!("{base}/qkv_weight"));
            let bn = g.unique_name(&format!("{base}/qkv_bias"));
            (
                g.add_const(wn, Tensor::from_vec(vec![rows, 3 * d], packed)?),
                g.add_const(bn, Tensor::from_vec(vec![3 * d], bias)?),
            )
        }
    };
    let mut attr = MsAttention {
        num_heads: f.heads,
        unidirectional: false,
        qkv_hidden_sizes: None,
        mask_filter_value: None,
        scale: None,
        past_present_share_buffer: false,
        do_rotary: false,
        rotary_embedding_dim: None,
    };
    let mut inputs = vec![Some(f.x), Some(w), Some(b)];
    let mut guard = None;
    match f.mask {
        Mask::None => {}
        Mask::Index(m, c) => {
            let mi = add(
                g,
                &format!("{base}/mask_index"),
                Op::Cast(Cast {
                    round_mode: "up".into(),
                    saturate: true,
                    to: DType::I32,
                }),
                vec![Some(m)],
            );
            inputs.push(Some(mi));
            attr.mask_filter_value = Some(c);
        }
        Mask::Bias { bias, dead_rows } => {
            inputs.extend([None, None, Some(bias)]);
            if dead_rows {
                guard = Some(bias);
            }
        }
    }
    let att = add(
        g,
        &format!("{base}/Attention"),
        Op::MsAttention(attr),
        inputs,
    );
    let mut out = att;
    if let Some(bias) = guard {
        let axes = g.add_const(
            g.unique_name(&format!("{base}/row_axes")),
            Tensor::from_vec(vec![2], vec![1i64, 3])?,
        );
        let mx = add(
            g,
            &format!("{base}/row_max"),
            Op::ReduceMax(ReduceMax {
                keepdims: false,
                noop_with_empty_axes: false,
            }),
            vec![Some(bias), Some(axes)],
        );
        let ax = g.add_const(
            g.unique_name(&format!("{base}/last_axis")),
            Tensor::from_vec(vec![1], vec![2i64])?,
        );
        let mx = add(
            g,
            &format!("{base}/row_max_3d"),
            Op::Unsqueeze(Unsqueeze {}),
            vec![Some(mx), Some(ax)],
        );
        let dead = add(
            g,
            &format!("{base}/dead_rows"),
            Op::IsInf(IsInf {
                detect_negative: true,
                detect_positive: false,
            }),
            vec![Some(mx)],
        );
        let zero = g.add_const(g.unique_name(&format!("{base}/zero")), Tensor::scalar(0f32));
        out = add(
            g,
            &format!("{base}/zero_dead_rows"),
            Op::Where(Where {}),
            vec![Some(dead), Some(zero), Some(att)],
        );
    }
    g.replace_all_uses(f.y, out);
    for n in f.nodes {
        if g.is_live(n) {
            g.remove_node(n);
        }
    }
    Ok(())
}
