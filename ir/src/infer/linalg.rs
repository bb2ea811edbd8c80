//! Linear algebra and attention: `MatMul`, `Gemm`, `Einsum`, `Det`, the quantized matmuls
//! and (de)quantizers, ONNX `Attention`/`RotaryEmbedding`/`LinearAttention`/`SwiGLU`/
//! `CausalConvWithState`, and the ONNX Runtime contrib ops kiln's fusions emit (attention,
//! `FusedMatMul`, the fused layer norms).

use super::helpers::*;
use super::reduce::{layer_norm, stash_dtype, stats_shape};
use super::{InferCx, InferError, InferResult, Out};
use crate::dtype::DType;
use crate::op::Op;
use crate::shape::{fmt_shape, Dim};

pub(super) fn infer(op: &Op, cx: &mut InferCx) -> Option<InferResult> {
    use Op::*;
    Some(match op {
        MatMul(_) => matmul_op(cx, 0, 1, None, Transposes::NONE),
        MatMulInteger(_) => matmul_op(cx, 0, 1, Some(DType::I32), Transposes::NONE),
        QLinearMatMul(_) => cx
            .dtype(7)
            .and_then(|dt| matmul_op(cx, 0, 3, Some(dt), Transposes::NONE)),
        DynamicQuantizeMatMul(_) => matmul_op(cx, 0, 1, None, Transposes::NONE),
        MatMulIntegerToFloat(_) => cx
            .dtype(2)
            .and_then(|dt| matmul_op(cx, 0, 1, Some(dt), Transposes::NONE)),
        FusedMatMul(o) => matmul_op(
            cx,
            0,
            1,
            None,
            Transposes {
                a: o.trans_a,
                b: o.trans_b,
                batch_a: o.trans_batch_a,
                batch_b: o.trans_batch_b,
            },
        ),
        Gemm(o) => gemm(cx, o.trans_a, o.trans_b),
        FusedGemm(o) => gemm(cx, o.trans_a, o.trans_b),
        Einsum(o) => einsum(cx, &o.equation),
        Det(_) => det(cx),
        QuantizeLinear(o) => (|| {
            let dt = if o.output_dtype != 0 {
                onnx_dtype(o.output_dtype)?
            } else if cx.has(2) {
                cx.dtype(2)?
            } else {
                DType::U8
            };
            Ok(vec![shape_as_input(cx, 0, dt)?])
        })(),
        DequantizeLinear(o) => (|| {
            let dt = if o.output_dtype != 0 {
                onnx_dtype(o.output_dtype)?
            } else {
                cx.dtype(1)?
            };
            Ok(vec![shape_as_input(cx, 0, dt)?])
        })(),
        DynamicQuantizeLinear(_) => (|| {
            Ok(vec![
                shape_as_input(cx, 0, DType::U8)?,
                Out::tensor(DType::F32, vec![]),
                Out::tensor(DType::U8, vec![]),
            ])
        })(),
        Attention(o) => attention(cx, o.q_num_heads, o.kv_num_heads),
        RotaryEmbedding(o) => rotary(cx, o.num_heads),
        LinearAttention(o) => linear_attention(cx, o.q_num_heads, o.kv_num_heads),
        SwiGLU(_) => swiglu(cx),
        CausalConvWithState(_) => causal_conv(cx),
        MsAttention(o) => ms_attention(
            cx,
            o.num_heads,
            o.qkv_hidden_sizes.as_deref(),
            o.past_present_share_buffer,
        ),
        MultiHeadAttention(o) => multi_head_attention(cx, o.num_heads),
        SkipLayerNormalization(_) => skip_layer_norm(cx),
        SkipSimplifiedLayerNormalization(_) => skip_layer_norm(cx),
        SimplifiedLayerNormalization(o) => simplified_layer_norm(cx, o.axis, o.stash_type),
        EmbedLayerNormalization(_) => embed_layer_norm(cx),
        _ => return None,
    })
}

fn onnx_dtype(code: i64) -> Result<DType, InferError> {
    DType::from_onnx(code as i32)
        .ok_or_else(|| InferError::Bad(format!("unknown element type code {code}")))
}

fn bad<T>(msg: String) -> Result<T, InferError> {
    Err(InferError::Bad(msg))
}

/// Fails when two dims that must be equal are known to differ.
fn check_eq(a: &Dim, b: &Dim, what: &str) -> Result<(), InferError> {
    match (a.known(), b.known()) {
        (Some(x), Some(y)) if x != y => bad(format!("{what}: {x} != {y}")),
        _ => Ok(()),
    }
}

/// The better description of two dims that must be equal: a known one, else a named one.
fn same_dim(a: &Dim, b: &Dim) -> Dim {
    if a.is_known() {
        a.clone()
    } else if b.is_known() {
        b.clone()
    } else {
        broadcast_dim(a, b).unwrap_or_else(|_| a.clone())
    }
}

/// `d / n` for a head count `n`; a fresh symbol when the quotient is not a polynomial.
fn div_heads(cx: &mut InferCx, d: &Dim, n: i64, what: &str) -> Result<Dim, InferError> {
    if n <= 0 {
        return bad(format!(
            "{what}: the number of heads must be positive, got {n}"
        ));
    }
    if let Some(v) = d.known() {
        if v % n != 0 {
            return bad(format!("{what}: {v} is not divisible by {n} heads"));
        }
        return Ok(Dim::from(v / n));
    }
    Ok(d.div_exact(&Dim::from(n))
        .unwrap_or_else(|| cx.fresh("head_size")))
}

/// Shape of input `i` with rank `rank` required; `Ok(None)` if the rank is unknown.
fn shape_of_rank(
    cx: &InferCx,
    i: usize,
    ranks: &[usize],
    what: &str,
) -> Result<Option<Vec<Dim>>, InferError> {
    match cx.shape(i) {
        Ok(s) if ranks.contains(&s.len()) => Ok(Some(s.to_vec())),
        Ok(s) => bad(format!(
            "{what} must have rank {ranks:?}, got {}",
            fmt_shape(s)
        )),
        Err(InferError::Unknown) => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Clone, Copy, Default)]
struct Transposes {
    a: bool,
    b: bool,
    batch_a: bool,
    batch_b: bool,
}

impl Transposes {
    const NONE: Transposes = Transposes {
        a: false,
        b: false,
        batch_a: false,
        batch_b: false,
    };
}

/// Applies FusedMatMul's transposes to an operand: `batch` moves dim 0 behind the batch dims
/// (`[M, b1.., K]` is read as `[b1.., M, K]`), `last` swaps the two last dims. Vectors are
/// never transposed.
fn transposed(s: &[Dim], batch: bool, last: bool) -> Vec<Dim> {
    let mut v = s.to_vec();
    let r = v.len();
    if r >= 3 && batch {
        let d0 = v.remove(0);
        v.insert(r - 2, d0);
    }
    if r >= 2 && last {
        v.swap(r - 2, r - 1);
    }
    v
}

/// Output shape of numpy's matmul.
pub(super) fn matmul_shape(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, InferError> {
    if a.is_empty() || b.is_empty() {
        return bad("MatMul operands must have rank >= 1".into());
    }
    let (ra, rb) = (a.len(), b.len());
    let ka = &a[ra - 1];
    let kb = if rb == 1 { &b[0] } else { &b[rb - 2] };
    check_eq(
        ka,
        kb,
        &format!(
            "MatMul of {} and {}: inner dims differ",
            fmt_shape(a),
            fmt_shape(b)
        ),
    )?;
    let ba = if ra > 2 { &a[..ra - 2] } else { &[][..] };
    let bb = if rb > 2 { &b[..rb - 2] } else { &[][..] };
    let mut out = broadcast(&[ba, bb]).map_err(|e| match e {
        InferError::Bad(m) => InferError::Bad(format!(
            "MatMul of {} and {}: {m}",
            fmt_shape(a),
            fmt_shape(b)
        )),
        e => e,
    })?;
    if ra >= 2 {
        out.push(a[ra - 2].clone());
    }
    if rb >= 2 {
        out.push(b[rb - 1].clone());
    }
    Ok(out)
}

fn matmul_op(
    cx: &InferCx,
    ia: usize,
    ib: usize,
    dtype: Option<DType>,
    t: Transposes,
) -> InferResult {
    let dt = match dtype {
        Some(d) => d,
        None => cx.dtype(ia)?,
    };
    let a = cx.tensor(ia)?;
    let b = cx.tensor(ib)?;
    let (Some(sa), Some(sb)) = (&a.shape, &b.shape) else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let sa = transposed(sa, t.batch_a, t.a);
    let sb = transposed(sb, t.batch_b, t.b);
    Ok(vec![Out::tensor(dt, matmul_shape(&sa, &sb)?)])
}

fn gemm(cx: &mut InferCx, trans_a: bool, trans_b: bool) -> InferResult {
    let dt = cx.dtype(0)?;
    let a = shape_of_rank(cx, 0, &[2], "Gemm A")?;
    let b = shape_of_rank(cx, 1, &[2], "Gemm B")?;
    let (m, ka) = match &a {
        Some(s) if trans_a => (s[1].clone(), Some(s[0].clone())),
        Some(s) => (s[0].clone(), Some(s[1].clone())),
        None => (cx.fresh("gemm_m"), None),
    };
    let (n, kb) = match &b {
        Some(s) if trans_b => (s[0].clone(), Some(s[1].clone())),
        Some(s) => (s[1].clone(), Some(s[0].clone())),
        None => (cx.fresh("gemm_n"), None),
    };
    if let (Some(ka), Some(kb)) = (&ka, &kb) {
        check_eq(ka, kb, "Gemm inner dims differ")?;
    }
    if cx.has(2) {
        if let Ok(c) = cx.shape(2) {
            if c.len() > 2 {
                return bad(format!("Gemm C must have rank <= 2, got {}", fmt_shape(c)));
            }
            let target = [m.clone(), n.clone()];
            let off = 2 - c.len();
            for (j, d) in c.iter().enumerate() {
                if let (Some(x), Some(y)) = (d.known(), target[off + j].known()) {
                    if x != 1 && x != y {
                        return bad(format!(
                            "Gemm C {} does not broadcast to [{m},{n}]",
                            fmt_shape(c)
                        ));
                    }
                }
            }
        }
    }
    Ok(vec![Out::tensor(dt, vec![m, n])])
}

fn det(cx: &InferCx) -> InferResult {
    let t = cx.tensor(0)?;
    let Some(s) = &t.shape else {
        return Ok(vec![Out::unranked(t.dtype)]);
    };
    let r = s.len();
    if r < 2 {
        return bad(format!(
            "Det needs a tensor of rank >= 2, got {}",
            fmt_shape(s)
        ));
    }
    check_eq(&s[r - 2], &s[r - 1], "Det of a non-square matrix")?;
    Ok(vec![Out::tensor(t.dtype, s[..r - 2].to_vec())])
}

/// One operand (or the output) of an einsum equation: labels, with the ellipsis at `ell`.
struct Term {
    labels: Vec<char>,
    ell: Option<usize>,
}

fn parse_term(s: &str) -> Result<Term, InferError> {
    let mut labels = Vec::new();
    let mut ell = None;
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("...") {
            if ell.is_some() {
                return bad(format!("Einsum term `{s}` has two ellipses"));
            }
            ell = Some(labels.len());
            rest = r;
            continue;
        }
        let c = rest.chars().next().unwrap();
        if !c.is_ascii_alphabetic() {
            return bad(format!("Einsum term `{s}` has an invalid label `{c}`"));
        }
        labels.push(c);
        rest = &rest[1..];
    }
    Ok(Term { labels, ell })
}

fn einsum(cx: &mut InferCx, equation: &str) -> InferResult {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<Term> = lhs.split(',').map(parse_term).collect::<Result<_, _>>()?;
    let ninputs = cx.num_inputs();
    if terms.len() != ninputs {
        return bad(format!(
            "Einsum equation `{equation}` has {} operands but the node has {ninputs} inputs",
            terms.len()
        ));
    }
    let dt = cx.dtype(0)?;
    let out_term = match rhs {
        Some(r) => {
            let t = parse_term(r)?;
            for (i, c) in t.labels.iter().enumerate() {
                if t.labels[..i].contains(c) {
                    return bad(format!("Einsum output label `{c}` is repeated"));
                }
                if !terms.iter().any(|x| x.labels.contains(c)) {
                    return bad(format!(
                        "Einsum output label `{c}` does not appear in the inputs"
                    ));
                }
            }
            t
        }
        None => {
            // Implicit output: the labels used exactly once, in alphabetical order, after
            // the broadcast dims of the ellipsis.
            let mut once: Vec<char> = Vec::new();
            for t in &terms {
                for &c in &t.labels {
                    let n: usize = terms
                        .iter()
                        .map(|x| x.labels.iter().filter(|&&y| y == c).count())
                        .sum();
                    if n == 1 {
                        once.push(c);
                    }
                }
            }
            once.sort_unstable();
            let any_ell = terms.iter().any(|t| t.ell.is_some());
            Term {
                labels: once,
                ell: any_ell.then_some(0),
            }
        }
    };
    // Dims of each label, and the broadcast dims of the ellipsis.
    let mut dims: Vec<(char, Dim)> = Vec::new();
    let mut ell_dims: Option<Vec<Dim>> = Some(Vec::new());
    for (i, t) in terms.iter().enumerate() {
        let Ok(s) = cx.shape(i) else {
            if t.ell.is_some() {
                ell_dims = None;
            }
            continue;
        };
        let s = s.to_vec();
        let n = t.labels.len();
        let ell_rank = match t.ell {
            Some(_) if s.len() >= n => s.len() - n,
            None if s.len() == n => 0,
            _ => {
                return bad(format!(
                    "Einsum operand {i} has shape {} but its term has {n} labels{}",
                    fmt_shape(&s),
                    if t.ell.is_some() {
                        " and an ellipsis"
                    } else {
                        ""
                    }
                ))
            }
        };
        let split = t.ell.unwrap_or(n);
        for (j, &c) in t.labels.iter().enumerate() {
            let d = &s[if j < split { j } else { j + ell_rank }];
            match dims.iter_mut().find(|(x, _)| *x == c) {
                Some((_, e)) => {
                    *e = broadcast_dim(e, d).map_err(|_| {
                        InferError::Bad(format!("Einsum label `{c}` has sizes {e} and {d}"))
                    })?
                }
                None => dims.push((c, d.clone())),
            }
        }
        if let (Some(acc), Some(_)) = (&mut ell_dims, t.ell) {
            let part = &s[split..split + ell_rank];
            *acc = broadcast(&[acc.as_slice(), part])?;
        }
    }
    let mut out = Vec::new();
    let split = out_term.ell.unwrap_or(out_term.labels.len());
    for (j, c) in out_term.labels.iter().enumerate() {
        if j == split {
            match &ell_dims {
                Some(e) => out.extend(e.iter().cloned()),
                None => return Ok(vec![Out::unranked(dt)]),
            }
        }
        let d = match dims.iter().find(|(x, _)| x == c) {
            Some((_, d)) => d.clone(),
            None => cx.fresh("einsum"),
        };
        out.push(d);
    }
    if out_term.ell.is_some() && split == out_term.labels.len() {
        match &ell_dims {
            Some(e) => out.extend(e.iter().cloned()),
            None => return Ok(vec![Out::unranked(dt)]),
        }
    }
    Ok(vec![Out::tensor(dt, out)])
}

/// ONNX `Attention` (opset 23+): Q/K/V either 4-D `[B, heads, S, head_size]` or 3-D
/// `[B, S, heads*head_size]` (then `q_num_heads`/`kv_num_heads` are required). Outputs Y,
/// present_key, present_value (`[B, kv_heads, past+S_kv, …]`), qk_matmul_output
/// (`[B, q_heads, S_q, past+S_kv]`).
fn attention(cx: &mut InferCx, q_heads: Option<i64>, kv_heads: Option<i64>) -> InferResult {
    let t1 = cx.dtype(0)?;
    let t2 = cx.dtype(2)?;
    let q = shape_of_rank(cx, 0, &[3, 4], "Attention Q")?;
    let k = shape_of_rank(cx, 1, &[3, 4], "Attention K")?;
    let v = shape_of_rank(cx, 2, &[3, 4], "Attention V")?;
    let rank = [&q, &k, &v]
        .iter()
        .find_map(|s| s.as_ref().map(|s| s.len()));
    let Some(rank) = rank else {
        return Ok(vec![
            Out::unranked(t1),
            Out::unranked(t1),
            Out::unranked(t2),
            Out::unranked(t1),
        ]);
    };
    for (s, name) in [(&q, "Q"), (&k, "K"), (&v, "V")] {
        if let Some(s) = s {
            if s.len() != rank {
                return bad(format!(
                    "Attention Q, K and V must have the same rank; {name} is {}",
                    fmt_shape(s)
                ));
            }
        }
    }
    // Per-tensor [batch, heads, seq, head_size], with None where unknown.
    type Dims4 = [Option<Dim>; 4];
    let unpack = |cx: &mut InferCx,
                  s: &Option<Vec<Dim>>,
                  heads: Option<i64>,
                  what: &str|
     -> Result<Dims4, InferError> {
        let Some(s) = s else {
            return Ok([None, heads.map(Dim::from), None, None]);
        };
        if s.len() == 4 {
            if let Some(h) = heads {
                check_eq(&s[1], &Dim::from(h), &format!("Attention {what} heads"))?;
            }
            return Ok([
                Some(s[0].clone()),
                Some(s[1].clone()),
                Some(s[2].clone()),
                Some(s[3].clone()),
            ]);
        }
        let Some(h) = heads else {
            return bad(format!(
                "Attention with 3-D {what} needs q_num_heads and kv_num_heads"
            ));
        };
        let hs = div_heads(cx, &s[2], h, &format!("Attention {what} hidden size"))?;
        Ok([
            Some(s[0].clone()),
            Some(Dim::from(h)),
            Some(s[1].clone()),
            Some(hs),
        ])
    };
    let [qb, qh, qs, qd] = unpack(cx, &q, q_heads, "Q")?;
    let [kb, kh, ks, kd] = unpack(cx, &k, kv_heads, "K")?;
    let [vb, vh, vs, vd] = unpack(cx, &v, kv_heads, "V")?;
    if let (Some(a), Some(b)) = (&qd, &kd) {
        check_eq(a, b, "Attention Q and K head sizes differ")?;
    }
    if let (Some(a), Some(b)) = (&ks, &vs) {
        check_eq(a, b, "Attention K and V sequence lengths differ")?;
    }
    if let (Some(a), Some(b)) = (&kh, &vh) {
        check_eq(a, b, "Attention K and V head counts differ")?;
    }
    if let (Some(qh), Some(kh)) = (
        qh.as_ref().and_then(|d| d.known()),
        kh.as_ref().and_then(|d| d.known()),
    ) {
        if kh == 0 || qh % kh != 0 {
            return bad(format!(
                "Attention: {qh} query heads are not a multiple of {kh} kv heads"
            ));
        }
    }
    let pick = |cx: &mut InferCx, ds: &[&Option<Dim>], hint: &str| -> Dim {
        let mut best: Option<Dim> = None;
        for d in ds.iter().copied().flatten() {
            best = Some(match best {
                None => d.clone(),
                Some(b) => same_dim(&b, d),
            });
        }
        best.unwrap_or_else(|| cx.fresh(hint))
    };
    let batch = pick(cx, &[&qb, &kb, &vb], "batch");
    let q_h = pick(cx, &[&qh], "q_heads");
    let kv_h = pick(cx, &[&kh, &vh], "kv_heads");
    let q_s = pick(cx, &[&qs], "q_seq");
    let kv_s = pick(cx, &[&ks, &vs], "kv_seq");
    let head = pick(cx, &[&qd, &kd], "head_size");
    let v_head = pick(cx, &[&vd], "v_head_size");
    // Past key/value: [B, kv_heads, past, head_size].
    let past_k = if cx.has(4) {
        shape_of_rank(cx, 4, &[4], "Attention past_key")?
    } else {
        None
    };
    let past_v = if cx.has(5) {
        shape_of_rank(cx, 5, &[4], "Attention past_value")?
    } else {
        None
    };
    if cx.has(4) != cx.has(5) {
        return bad("Attention: past_key and past_value must be given together".into());
    }
    let total = if cx.has(4) {
        let p = past_k.as_ref().or(past_v.as_ref()).map(|s| s[2].clone());
        if let (Some(a), Some(b)) = (&past_k, &past_v) {
            check_eq(
                &a[2],
                &b[2],
                "Attention past_key and past_value lengths differ",
            )?;
        }
        let p = p.unwrap_or_else(|| cx.fresh("past_seq"));
        &p + &kv_s
    } else {
        kv_s.clone()
    };
    let y = if rank == 4 {
        vec![batch.clone(), q_h.clone(), q_s.clone(), v_head.clone()]
    } else {
        vec![batch.clone(), q_s.clone(), &q_h * &v_head]
    };
    Ok(vec![
        Out::tensor(t1, y),
        Out::tensor(t1, vec![batch.clone(), kv_h.clone(), total.clone(), head]),
        Out::tensor(t2, vec![batch.clone(), kv_h, total.clone(), v_head]),
        Out::tensor(t1, vec![batch, q_h, q_s, total]),
    ])
}

fn rotary(cx: &mut InferCx, num_heads: Option<i64>) -> InferResult {
    if let Some(s) = shape_of_rank(cx, 0, &[3, 4], "RotaryEmbedding X")? {
        if s.len() == 3 {
            match num_heads {
                Some(h) => {
                    div_heads(cx, &s[2], h, "RotaryEmbedding hidden size")?;
                }
                None => return bad("RotaryEmbedding with 3-D input needs num_heads".into()),
            }
        }
    }
    same_as_input(cx, 0)
}

/// ONNX `LinearAttention`: Q/K/V `[B, T, heads*d]`; output `[B, T, q_heads*d_v]`, present
/// state `[B, kv_heads, d_k, d_v]`.
fn linear_attention(cx: &mut InferCx, q_heads: i64, kv_heads: i64) -> InferResult {
    let dt = cx.dtype(0)?;
    let state_dt = if cx.has(3) { cx.dtype(3)? } else { dt };
    if q_heads <= 0 || kv_heads <= 0 || q_heads % kv_heads != 0 {
        return bad(format!(
            "LinearAttention: q_num_heads {q_heads} must be a positive multiple of kv_num_heads {kv_heads}"
        ));
    }
    let q = shape_of_rank(cx, 0, &[3], "LinearAttention query")?;
    let k = shape_of_rank(cx, 1, &[3], "LinearAttention key")?;
    let v = shape_of_rank(cx, 2, &[3], "LinearAttention value")?;
    let batch = q
        .as_ref()
        .or(k.as_ref())
        .or(v.as_ref())
        .map(|s| s[0].clone());
    let seq = q
        .as_ref()
        .or(k.as_ref())
        .or(v.as_ref())
        .map(|s| s[1].clone());
    let batch = batch.unwrap_or_else(|| cx.fresh("batch"));
    let seq = seq.unwrap_or_else(|| cx.fresh("seq"));
    let d_k = match (&q, &k) {
        (Some(q), _) => div_heads(cx, &q[2], q_heads, "LinearAttention query hidden size")?,
        (None, Some(k)) => div_heads(cx, &k[2], kv_heads, "LinearAttention key hidden size")?,
        _ => cx.fresh("d_k"),
    };
    let d_v = match &v {
        Some(v) => div_heads(cx, &v[2], kv_heads, "LinearAttention value hidden size")?,
        None => cx.fresh("d_v"),
    };
    Ok(vec![
        Out::tensor(dt, vec![batch.clone(), seq, &Dim::from(q_heads) * &d_v]),
        Out::tensor(state_dt, vec![batch, Dim::from(kv_heads), d_k, d_v]),
    ])
}

fn swiglu(cx: &InferCx) -> InferResult {
    let dt = cx.dtype(0)?;
    match (cx.shape(0), cx.shape(1)) {
        (Ok(a), Ok(b)) => {
            if a.len() != b.len() {
                return bad(format!(
                    "SwiGLU inputs must have the same shape, got {} and {}",
                    fmt_shape(a),
                    fmt_shape(b)
                ));
            }
            let mut out = Vec::with_capacity(a.len());
            for (x, y) in a.iter().zip(b) {
                check_eq(x, y, "SwiGLU inputs must have the same shape")?;
                out.push(same_dim(x, y));
            }
            Ok(vec![Out::tensor(dt, out)])
        }
        (Ok(a), _) => Ok(vec![Out::tensor(dt, a.to_vec())]),
        (_, Ok(b)) => Ok(vec![Out::tensor(dt, b.to_vec())]),
        _ => Ok(vec![Out::unranked(dt)]),
    }
}

/// `CausalConvWithState`: input `[B, C, L]`, weight `[C, 1, k]`; output `[B, C, L]` and
/// present state `[B, C, k-1]`.
fn causal_conv(cx: &mut InferCx) -> InferResult {
    let dt = cx.dtype(0)?;
    let x = shape_of_rank(cx, 0, &[3], "CausalConvWithState input")?;
    let w = shape_of_rank(cx, 1, &[3], "CausalConvWithState weight")?;
    let past = if cx.has(3) {
        shape_of_rank(cx, 3, &[3], "CausalConvWithState past_state")?
    } else {
        None
    };
    if let (Some(x), Some(w)) = (&x, &w) {
        check_eq(
            &x[1],
            &w[0],
            "CausalConvWithState channels of input and weight differ",
        )?;
    }
    let Some(x) = x else {
        return Ok(vec![Out::unranked(dt), Out::unranked(dt)]);
    };
    let state_len = match (&w, &past) {
        (Some(w), _) => &w[2] - &Dim::from(1i64),
        (None, Some(p)) => p[2].clone(),
        (None, None) => cx.fresh("conv_state"),
    };
    if let (Some(p), Some(_)) = (&past, &w) {
        check_eq(
            &p[2],
            &state_len,
            "CausalConvWithState past_state length must be k-1",
        )?;
    }
    Ok(vec![
        Out::tensor(dt, x.clone()),
        Out::tensor(dt, vec![x[0].clone(), x[1].clone(), state_len]),
    ])
}

/// `com.microsoft.Attention`: input `[B, S, D_in]`, weights `[D_in, D_q+D_k+D_v]`; output
/// `[B, S, D_v]` and present `[2, B, heads, past+S, head_size]`.
fn ms_attention(
    cx: &mut InferCx,
    num_heads: i64,
    qkv: Option<&[i64]>,
    share_buffer: bool,
) -> InferResult {
    let dt = cx.dtype(0)?;
    let x = shape_of_rank(cx, 0, &[3], "Attention input")?;
    let w = if cx.has(1) {
        shape_of_rank(cx, 1, &[2], "Attention weights")?
    } else {
        None
    };
    if let (Some(x), Some(w)) = (&x, &w) {
        check_eq(
            &x[2],
            &w[0],
            "Attention input hidden size and weights rows differ",
        )?;
    }
    let (hidden, v_hidden) = match qkv {
        Some(&[q, k, v]) => {
            if q != k {
                return bad(format!(
                    "Attention qkv_hidden_sizes: Q ({q}) and K ({k}) must be equal"
                ));
            }
            if let Some(w) = &w {
                check_eq(
                    &w[1],
                    &Dim::from(q + k + v),
                    "Attention weights columns and qkv_hidden_sizes differ",
                )?;
            }
            (Dim::from(q), Dim::from(v))
        }
        Some(s) => {
            return bad(format!(
                "Attention qkv_hidden_sizes must have 3 elements, got {s:?}"
            ))
        }
        None => match &w {
            Some(w) => {
                let h = match w[1].known() {
                    Some(c) if c % 3 != 0 => {
                        return bad(format!("Attention weights have {c} columns, not 3*hidden"))
                    }
                    _ => w[1]
                        .div_exact(&Dim::from(3i64))
                        .unwrap_or_else(|| cx.fresh("hidden")),
                };
                (h.clone(), h)
            }
            None => {
                let h = cx.fresh("hidden");
                (h.clone(), h)
            }
        },
    };
    let head = div_heads(cx, &hidden, num_heads, "Attention hidden size")?;
    let Some(x) = x else {
        return Ok(vec![Out::unranked(dt), Out::unranked(dt)]);
    };
    let (b, s) = (x[0].clone(), x[1].clone());
    let present = if cx.has(4) {
        match shape_of_rank(cx, 4, &[5], "Attention past")? {
            Some(p) if share_buffer => p,
            Some(p) => vec![
                Dim::from(2i64),
                b.clone(),
                Dim::from(num_heads),
                &p[3] + &s,
                head,
            ],
            None => Vec::new(),
        }
    } else {
        vec![
            Dim::from(2i64),
            b.clone(),
            Dim::from(num_heads),
            s.clone(),
            head,
        ]
    };
    let present = if present.is_empty() {
        Out::unranked(dt)
    } else {
        Out::tensor(dt, present)
    };
    Ok(vec![Out::tensor(dt, vec![b, s, v_hidden]), present])
}

/// `com.microsoft.MultiHeadAttention`: query `[B, S, D]` (or packed QKV `[B, S, N, 3, H]`),
/// key `[B, L, D]` / packed KV `[B, L, N, 2, H]` / `[B, N, L, H]`, value `[B, L, D_v]` /
/// `[B, N, L, H_v]`. Outputs `[B, S, D_v]`, present key/value `[B, N, past+L, H(_v)]`, qk.
fn multi_head_attention(cx: &mut InferCx, num_heads: i64) -> InferResult {
    let dt = cx.dtype(0)?;
    let n = Dim::from(num_heads);
    let unranked = || {
        Ok(vec![
            Out::unranked(dt),
            Out::unranked(dt),
            Out::unranked(dt),
            Out::unranked(dt),
        ])
    };
    let Some(q) = shape_of_rank(cx, 0, &[3, 5], "MultiHeadAttention query")? else {
        return unranked();
    };
    let (b, s) = (q[0].clone(), q[1].clone());
    // (kv length, head size, v head size, whether key/value are already per-head past-like).
    let (hidden, mut kv_len, mut v_hidden, mut kv_is_bnsh) = if q.len() == 5 {
        check_eq(&q[2], &n, "MultiHeadAttention packed QKV heads")?;
        check_eq(&q[3], &Dim::from(3i64), "MultiHeadAttention packed QKV")?;
        let d = &n * &q[4];
        (d.clone(), Some(s.clone()), Some(d), false)
    } else {
        (q[2].clone(), None, None, false)
    };
    if q.len() == 3 {
        if !cx.has(1) {
            return bad("MultiHeadAttention: key is required unless query is packed QKV".into());
        }
        match shape_of_rank(cx, 1, &[3, 4, 5], "MultiHeadAttention key")? {
            Some(k) if k.len() == 3 => kv_len = Some(k[1].clone()),
            Some(k) if k.len() == 5 => {
                check_eq(&k[2], &n, "MultiHeadAttention packed KV heads")?;
                check_eq(&k[3], &Dim::from(2i64), "MultiHeadAttention packed KV")?;
                kv_len = Some(k[1].clone());
                v_hidden = Some(&n * &k[4]);
            }
            Some(k) => {
                check_eq(&k[1], &n, "MultiHeadAttention key heads")?;
                kv_len = Some(k[2].clone());
                kv_is_bnsh = true;
            }
            None => {}
        }
        if cx.has(2) {
            match shape_of_rank(cx, 2, &[3, 4], "MultiHeadAttention value")? {
                Some(v) if v.len() == 3 => {
                    v_hidden = Some(v[2].clone());
                    if let Some(l) = &kv_len {
                        check_eq(l, &v[1], "MultiHeadAttention key and value lengths differ")?;
                    }
                }
                Some(v) => {
                    v_hidden = Some(&n * &v[3]);
                    kv_len = kv_len.or(Some(v[2].clone()));
                }
                None => {}
            }
        }
    }
    let head = div_heads(cx, &hidden, num_heads, "MultiHeadAttention hidden size")?;
    let v_hidden = v_hidden.unwrap_or_else(|| cx.fresh("v_hidden"));
    let v_head = div_heads(
        cx,
        &v_hidden,
        num_heads,
        "MultiHeadAttention value hidden size",
    )?;
    let kv_len = kv_len.unwrap_or_else(|| cx.fresh("kv_seq"));
    let past = if cx.has(6) && !kv_is_bnsh {
        shape_of_rank(cx, 6, &[4], "MultiHeadAttention past_key")?
    } else {
        None
    };
    let share_buffer = cx.has(8);
    let total = match &past {
        Some(p) if share_buffer => p[2].clone(),
        Some(p) => &p[2] + &kv_len,
        None if cx.has(6) && !kv_is_bnsh => cx.fresh("total_seq"),
        None => kv_len,
    };
    Ok(vec![
        Out::tensor(dt, vec![b.clone(), s.clone(), v_hidden]),
        Out::tensor(dt, vec![b.clone(), n.clone(), total.clone(), head]),
        Out::tensor(dt, vec![b.clone(), n.clone(), total.clone(), v_head]),
        Out::tensor(dt, vec![b, n, s, total]),
    ])
}

/// `SkipLayerNormalization` / `SkipSimplifiedLayerNormalization`: output, mean and
/// inv_std_var (f32, `[.., 1]`), input_skip_bias_sum.
fn skip_layer_norm(cx: &InferCx) -> InferResult {
    let t = cx.tensor(0)?;
    let dt = t.dtype;
    let Some(s) = t.shape.clone() else {
        return Ok(vec![
            Out::unranked(dt),
            Out::unranked(DType::F32),
            Out::unranked(DType::F32),
            Out::unranked(dt),
        ]);
    };
    if s.len() < 2 {
        return bad(format!(
            "skip layer norm input must have rank >= 2, got {}",
            fmt_shape(&s)
        ));
    }
    let hidden = &s[s.len() - 1];
    if let Ok(skip) = cx.shape(1) {
        if let Some(last) = skip.last() {
            check_eq(hidden, last, "skip layer norm: skip hidden size differs")?;
        }
    }
    for (i, what) in [(2, "gamma"), (3, "beta/bias"), (4, "bias")] {
        if cx.has(i) {
            if let Ok(p) = cx.shape(i) {
                match p {
                    [d] => check_eq(hidden, d, &format!("skip layer norm: {what} size differs"))?,
                    _ => {
                        return bad(format!(
                            "skip layer norm: {what} must be 1-D, got {}",
                            fmt_shape(p)
                        ))
                    }
                }
            }
        }
    }
    let stats = stats_shape(&s, s.len() - 1);
    Ok(vec![
        Out::tensor(dt, s.clone()),
        Out::tensor(DType::F32, stats.clone()),
        Out::tensor(DType::F32, stats),
        Out::tensor(dt, s),
    ])
}

/// `SimplifiedLayerNormalization` (RMSNorm, ONNX Runtime): Y and inv_std_var.
fn simplified_layer_norm(cx: &InferCx, axis: i64, stash_type: i64) -> InferResult {
    stash_dtype(stash_type)?;
    let outs = layer_norm(cx, axis, stash_type, false)?;
    Ok(outs)
}

/// `EmbedLayerNormalization`: input_ids `[B, S]`, word_embedding `[V, H]`; output `[B, S, H]`,
/// mask_index `[B]` (i32), embedding_sum `[B, S, H]`.
fn embed_layer_norm(cx: &mut InferCx) -> InferResult {
    let dt = cx.dtype(2)?;
    let ids = shape_of_rank(cx, 0, &[2], "EmbedLayerNormalization input_ids")?;
    let hidden = match shape_of_rank(cx, 2, &[2], "EmbedLayerNormalization word_embedding")? {
        Some(w) => w[1].clone(),
        None => match cx.shape(5) {
            Ok([h]) => h.clone(),
            _ => cx.fresh("hidden"),
        },
    };
    let (b, s) = match ids {
        Some(ids) => (ids[0].clone(), ids[1].clone()),
        None => (cx.fresh("batch"), cx.fresh("seq")),
    };
    Ok(vec![
        Out::tensor(dt, vec![b.clone(), s.clone(), hidden.clone()]),
        Out::tensor(DType::I32, vec![b.clone()]),
        Out::tensor(dt, vec![b, s, hidden]),
    ])
}

#[cfg(test)]
mod tests {
    use crate::dtype::DType;
    use crate::graph::{Graph, ValueId};
    use crate::infer::infer_graph;
    use crate::op::*;
    use crate::shape::{Dim, Type};
    use crate::tensor::Tensor;

    fn ty(dt: DType, dims: &[&str]) -> Option<Type> {
        Some(Type::tensor(
            dt,
            dims.iter()
                .map(|d| {
                    d.parse::<i64>()
                        .map(Dim::from)
                        .unwrap_or_else(|_| Dim::sym(d))
                })
                .collect(),
        ))
    }

    /// A graph with inputs of the given dtypes/shapes (`None` for an omitted input).
    fn graph(inputs: &[Option<(DType, &[&str])>]) -> (Graph, Vec<Option<ValueId>>) {
        let mut g = Graph::new("g");
        let ids = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| t.map(|(dt, dims)| g.add_input(format!("i{i}"), ty(dt, dims))))
            .collect();
        (g, ids)
    }

    fn run_on(
        mut g: Graph,
        ins: Vec<Option<ValueId>>,
        op: Op,
        nout: usize,
    ) -> Result<Vec<String>, String> {
        let names: Vec<String> = (0..nout).map(|i| format!("out{i}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let n = g.add_node("n", op, ins, &refs);
        infer_graph(&mut g).map_err(|e| e.to_string())?;
        Ok(g.node(n)
            .outputs
            .iter()
            .map(|&o| {
                g.value(o)
                    .ty
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into())
            })
            .collect())
    }

    fn run(
        inputs: &[Option<(DType, &[&str])>],
        op: Op,
        nout: usize,
    ) -> Result<Vec<String>, String> {
        let (g, ins) = graph(inputs);
        run_on(g, ins, op, nout)
    }

    const F: DType = DType::F32;

    fn mm() -> Op {
        Op::MatMul(MatMul {})
    }

    #[test]
    fn matmul_numpy_semantics() {
        let r = |a: &[&str], b: &[&str]| {
            run(&[Some((F, a)), Some((F, b))], mm(), 1).map(|v| v[0].clone())
        };
        assert_eq!(
            r(&["batch", "seq", "768"], &["768", "3072"]).unwrap(),
            "f32[batch,seq,3072]"
        );
        assert_eq!(
            r(&["b", "12", "seq", "64"], &["b", "12", "64", "seq"]).unwrap(),
            "f32[b,12,seq,seq]"
        );
        assert_eq!(r(&["3"], &["3"]).unwrap(), "f32[]");
        assert_eq!(r(&["3"], &["2", "3", "4"]).unwrap(), "f32[2,4]");
        assert_eq!(r(&["2", "5", "3"], &["3"]).unwrap(), "f32[2,5]");
        assert_eq!(
            r(&["1", "5", "2", "3"], &["7", "1", "3", "4"]).unwrap(),
            "f32[7,5,2,4]"
        );
        assert!(r(&["2", "3"], &["4", "5"]).is_err());
        assert!(r(&["2", "2", "3"], &["4", "3", "5"]).is_err());
        assert!(r(&[], &["3"]).is_err());
        // Unknown rank: unranked.
        let mut g = Graph::new("g");
        let a = g.add_input("a", Some(Type::tensor_unranked(F)));
        let b = g.add_input("b", ty(F, &["3", "4"]));
        assert_eq!(
            run_on(g, vec![Some(a), Some(b)], mm(), 1).unwrap(),
            ["f32[*]"]
        );
    }

    #[test]
    fn quantized_matmuls() {
        let u8s = |d: &'static [&'static str]| Some((DType::U8, d));
        let op = Op::MatMulInteger(MatMulInteger {});
        assert_eq!(
            run(
                &[
                    u8s(&["4", "3"]),
                    Some((DType::I8, &["3", "2"])),
                    u8s(&[]),
                    Some((DType::I8, &[]))
                ],
                op,
                1
            )
            .unwrap(),
            ["i32[4,2]"]
        );
        let op = Op::QLinearMatMul(QLinearMatMul {});
        let ins = [
            u8s(&["2", "4"]),
            Some((F, &[])),
            u8s(&[]),
            u8s(&["4", "3"]),
            Some((F, &[])),
            u8s(&[]),
            Some((F, &[])),
            Some((DType::I8, &[])),
        ];
        assert_eq!(run(&ins, op, 1).unwrap(), ["i8[2,3]"]);
        let op = Op::DynamicQuantizeMatMul(DynamicQuantizeMatMul {});
        assert_eq!(
            run(
                &[
                    Some((F, &["b", "s", "8"])),
                    Some((DType::I8, &["8", "16"])),
                    Some((F, &[]))
                ],
                op,
                1
            )
            .unwrap(),
            ["f32[b,s,16]"]
        );
        let op = Op::MatMulIntegerToFloat(MatMulIntegerToFloat {});
        assert_eq!(
            run(
                &[
                    u8s(&["b", "s", "8"]),
                    Some((DType::I8, &["8", "16"])),
                    Some((DType::F16, &[])),
                    Some((DType::F16, &[]))
                ],
                op,
                1
            )
            .unwrap(),
            ["f16[b,s,16]"]
        );
    }

    #[test]
    fn fused_matmul_transposes() {
        let op = |a, b, ba, bb| {
            Op::FusedMatMul(FusedMatMul {
                alpha: 1.0,
                trans_a: a,
                trans_b: b,
                trans_batch_a: ba,
                trans_batch_b: bb,
            })
        };
        let r = |o, a: &[&str], b: &[&str]| {
            run(&[Some((F, a)), Some((F, b))], o, 1).map(|v| v[0].clone())
        };
        assert_eq!(
            r(
                op(false, true, false, false),
                &["b", "s", "64"],
                &["b", "t", "64"]
            )
            .unwrap(),
            "f32[b,s,t]"
        );
        assert_eq!(
            r(op(true, false, false, false), &["64", "s"], &["64", "t"]).unwrap(),
            "f32[s,t]"
        );
        // transBatchA: A is [M, batch, K].
        assert_eq!(
            r(
                op(false, false, true, false),
                &["5", "2", "3"],
                &["2", "3", "4"]
            )
            .unwrap(),
            "f32[2,5,4]"
        );
        // Vectors are not transposed.
        assert_eq!(
            r(op(true, true, false, false), &["3"], &["3"]).unwrap(),
            "f32[]"
        );
    }

    #[test]
    fn gemm_shapes_and_checks() {
        let op = |ta, tb| {
            Op::Gemm(Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: ta,
                trans_b: tb,
            })
        };
        assert_eq!(
            run(
                &[
                    Some((F, &["batch", "256"])),
                    Some((F, &["10", "256"])),
                    Some((F, &["10"]))
                ],
                op(false, true),
                1
            )
            .unwrap(),
            ["f32[batch,10]"]
        );
        assert_eq!(
            run(
                &[Some((F, &["3", "5"])), Some((F, &["3", "4"]))],
                op(true, false),
                1
            )
            .unwrap(),
            ["f32[5,4]"]
        );
        assert_eq!(
            run(
                &[
                    Some((F, &["5", "3"])),
                    Some((F, &["3", "4"])),
                    Some((F, &["5", "1"]))
                ],
                op(false, false),
                1
            )
            .unwrap(),
            ["f32[5,4]"]
        );
        assert!(run(
            &[
                Some((F, &["5", "3"])),
                Some((F, &["3", "4"])),
                Some((F, &["3"]))
            ],
            op(false, false),
            1
        )
        .is_err());
        assert!(run(
            &[Some((F, &["5", "3"])), Some((F, &["2", "4"]))],
            op(false, false),
            1
        )
        .is_err());
        assert!(run(
            &[Some((F, &["2", "5", "3"])), Some((F, &["3", "4"]))],
            op(false, false),
            1
        )
        .is_err());
        // Unknown rank of A: rank 2 all the same.
        let mut g = Graph::new("g");
        let a = g.add_input("a", Some(Type::tensor_unranked(F)));
        let b = g.add_input("b", ty(F, &["3", "4"]));
        let r = run_on(g, vec![Some(a), Some(b)], op(false, false), 1).unwrap();
        assert!(
            r[0].starts_with("f32[unk__gemm_m") && r[0].ends_with(",4]"),
            "{}",
            r[0]
        );
    }

    fn einsum(eq: &str) -> Op {
        Op::Einsum(Einsum {
            equation: eq.into(),
        })
    }

    #[test]
    fn einsum_equations() {
        let r = |eq: &str, ins: &[&[&str]]| {
            let ins: Vec<Option<(DType, &[&str])>> = ins.iter().map(|s| Some((F, *s))).collect();
            run(&ins, einsum(eq), 1).map(|v| v[0].clone())
        };
        assert_eq!(
            r("ij,jk->ik", &[&["2", "3"], &["3", "4"]]).unwrap(),
            "f32[2,4]"
        );
        assert_eq!(r("ij,jk", &[&["2", "3"], &["3", "4"]]).unwrap(), "f32[2,4]");
        assert_eq!(r("ji", &[&["2", "3"]]).unwrap(), "f32[3,2]");
        assert_eq!(r("ii", &[&["3", "3"]]).unwrap(), "f32[]");
        assert_eq!(r("ii->i", &[&["3", "3"]]).unwrap(), "f32[3]");
        assert_eq!(r("i,i", &[&["5"], &["5"]]).unwrap(), "f32[]");
        assert_eq!(
            r(
                "bhqd,bhkd->bhqk",
                &[&["b", "12", "s", "64"], &["b", "12", "t", "64"]]
            )
            .unwrap(),
            "f32[b,12,s,t]"
        );
        assert_eq!(
            r(
                "...ij,...jk->...ik",
                &[&["b", "2", "3"], &["7", "1", "3", "4"]]
            )
            .unwrap(),
            "f32[7,b,2,4]"
        );
        assert_eq!(r("...ii->...i", &[&["4", "3", "3"]]).unwrap(), "f32[4,3]");
        assert_eq!(
            r("i...j", &[&["2", "5", "6", "3"]]).unwrap(),
            "f32[5,6,2,3]"
        );
        assert_eq!(
            r("ij...->...ji", &[&["2", "3", "4"]]).unwrap(),
            "f32[4,3,2]"
        );
        assert_eq!(
            r(" ij , jk -> ik ", &[&["2", "3"], &["3", "4"]]).unwrap(),
            "f32[2,4]"
        );
        assert!(r("ij,jk->ik", &[&["2", "3"], &["4", "5"]]).is_err());
        assert!(r("ijk", &[&["2", "3"]]).is_err());
        assert!(r("ij->ix", &[&["2", "3"]]).is_err());
        assert!(r("ij,jk->ik", &[&["2", "3"]]).is_err());
    }

    #[test]
    fn det_and_quantizers() {
        assert_eq!(
            run(&[Some((F, &["b", "3", "3"]))], Op::Det(Det {}), 1).unwrap(),
            ["f32[b]"]
        );
        assert_eq!(
            run(&[Some((F, &["3", "3"]))], Op::Det(Det {}), 1).unwrap(),
            ["f32[]"]
        );
        assert!(run(&[Some((F, &["3", "4"]))], Op::Det(Det {}), 1).is_err());

        let q = |od| {
            Op::QuantizeLinear(QuantizeLinear {
                axis: 1,
                block_size: 0,
                output_dtype: od,
                precision: 0,
                saturate: true,
            })
        };
        assert_eq!(
            run(&[Some((F, &["n", "4"])), Some((F, &[]))], q(0), 1).unwrap(),
            ["u8[n,4]"]
        );
        assert_eq!(
            run(
                &[
                    Some((F, &["n", "4"])),
                    Some((F, &[])),
                    Some((DType::I8, &[]))
                ],
                q(0),
                1
            )
            .unwrap(),
            ["i8[n,4]"]
        );
        assert_eq!(
            run(&[Some((F, &["n", "4"])), Some((F, &[]))], q(22), 1).unwrap(),
            ["i4[n,4]"]
        );
        let dq = |od| {
            Op::DequantizeLinear(DequantizeLinear {
                axis: 1,
                block_size: 0,
                output_dtype: od,
            })
        };
        assert_eq!(
            run(
                &[Some((DType::U8, &["n", "4"])), Some((DType::F16, &[]))],
                dq(0),
                1
            )
            .unwrap(),
            ["f16[n,4]"]
        );
        assert_eq!(
            run(
                &[Some((DType::U8, &["n", "4"])), Some((DType::F16, &[]))],
                dq(1),
                1
            )
            .unwrap(),
            ["f32[n,4]"]
        );
        assert_eq!(
            run(
                &[Some((F, &["n", "4"]))],
                Op::DynamicQuantizeLinear(DynamicQuantizeLinear {}),
                3
            )
            .unwrap(),
            ["u8[n,4]", "f32[]", "u8[]"]
        );
    }

    fn attn(q: Option<i64>, kv: Option<i64>) -> Op {
        Op::Attention(Attention {
            is_causal: false,
            kv_num_heads: kv,
            left_window_size: -1,
            q_num_heads: q,
            qk_matmul_output_mode: 0,
            right_window_size: -1,
            scale: None,
            softcap: 0.0,
            softmax_precision: None,
        })
    }

    #[test]
    fn onnx_attention_4d_and_3d() {
        let r = run(
            &[
                Some((F, &["b", "8", "s", "64"])),
                Some((F, &["b", "2", "t", "64"])),
                Some((F, &["b", "2", "t", "32"])),
                None,
                Some((F, &["b", "2", "p", "64"])),
                Some((F, &["b", "2", "p", "32"])),
            ],
            attn(None, None),
            4,
        )
        .unwrap();
        assert_eq!(
            r,
            [
                "f32[b,8,s,32]",
                "f32[b,2,p+t,64]",
                "f32[b,2,p+t,32]",
                "f32[b,8,s,p+t]"
            ]
        );
        let r = run(
            &[
                Some((F, &["2", "4", "48"])),
                Some((F, &["2", "6", "16"])),
                Some((F, &["2", "6", "10"])),
            ],
            attn(Some(3), Some(1)),
            4,
        )
        .unwrap();
        assert_eq!(
            r,
            [
                "f32[2,4,30]",
                "f32[2,1,6,16]",
                "f32[2,1,6,10]",
                "f32[2,3,4,6]"
            ]
        );
        // 3-D without head counts; Q/K head size mismatch; GQA with non-multiple heads.
        assert!(run(
            &[
                Some((F, &["2", "4", "48"])),
                Some((F, &["2", "6", "48"])),
                Some((F, &["2", "6", "48"]))
            ],
            attn(None, None),
            1
        )
        .is_err());
        assert!(run(
            &[
                Some((F, &["2", "4", "3", "8"])),
                Some((F, &["2", "4", "3", "16"])),
                Some((F, &["2", "4", "3", "8"]))
            ],
            attn(None, None),
            1
        )
        .is_err());
        assert!(run(
            &[
                Some((F, &["2", "3", "3", "8"])),
                Some((F, &["2", "2", "3", "8"])),
                Some((F, &["2", "2", "3", "8"]))
            ],
            attn(None, None),
            1
        )
        .is_err());
    }

    #[test]
    fn rotary_linear_attention_swiglu_causal_conv() {
        let rope = |h| {
            Op::RotaryEmbedding(RotaryEmbedding {
                interleaved: false,
                num_heads: h,
                rotary_embedding_dim: 0,
            })
        };
        assert_eq!(
            run(
                &[
                    Some((F, &["b", "s", "64"])),
                    Some((F, &["s", "16"])),
                    Some((F, &["s", "16"]))
                ],
                rope(Some(2)),
                1
            )
            .unwrap(),
            ["f32[b,s,64]"]
        );
        assert!(run(
            &[
                Some((F, &["b", "s", "64"])),
                Some((F, &["s", "16"])),
                Some((F, &["s", "16"]))
            ],
            rope(None),
            1
        )
        .is_err());

        let la = Op::LinearAttention(LinearAttention {
            chunk_size: 64,
            kv_num_heads: 2,
            q_num_heads: 4,
            scale: 0.0,
            update_rule: "linear".into(),
        });
        assert_eq!(
            run(
                &[
                    Some((F, &["b", "t", "32"])),
                    Some((F, &["b", "t", "16"])),
                    Some((F, &["b", "t", "24"]))
                ],
                la,
                2
            )
            .unwrap(),
            ["f32[b,t,48]", "f32[b,2,8,12]"]
        );

        let sw = Op::SwiGLU(SwiGLU { alpha: 1.0 });
        assert_eq!(
            run(
                &[Some((F, &["b", "11"])), Some((F, &["b", "11"]))],
                sw.clone(),
                1
            )
            .unwrap(),
            ["f32[b,11]"]
        );
        assert!(run(&[Some((F, &["b", "11"])), Some((F, &["b", "1"]))], sw, 1).is_err());

        let cc = Op::CausalConvWithState(CausalConvWithState {
            activation: "none".into(),
        });
        assert_eq!(
            run(
                &[Some((F, &["b", "8", "l"])), Some((F, &["8", "1", "4"]))],
                cc.clone(),
                2
            )
            .unwrap(),
            ["f32[b,8,l]", "f32[b,8,3]"]
        );
        assert!(run(
            &[
                Some((F, &["b", "8", "l"])),
                Some((F, &["8", "1", "4"])),
                None,
                Some((F, &["b", "8", "2"]))
            ],
            cc,
            2
        )
        .is_err());
    }

    #[test]
    fn contrib_attention() {
        let op = |qkv: Option<Vec<i64>>| {
            Op::MsAttention(MsAttention {
                num_heads: 12,
                unidirectional: false,
                qkv_hidden_sizes: qkv,
                mask_filter_value: None,
                scale: None,
                past_present_share_buffer: false,
                do_rotary: false,
                rotary_embedding_dim: None,
            })
        };
        assert_eq!(
            run(
                &[
                    Some((F, &["batch", "seq", "768"])),
                    Some((F, &["768", "2304"])),
                    Some((F, &["2304"]))
                ],
                op(None),
                2
            )
            .unwrap(),
            ["f32[batch,seq,768]", "f32[2,batch,12,seq,64]"]
        );
        let r = run(
            &[
                Some((F, &["batch", "seq", "768"])),
                Some((F, &["768", "2304"])),
                Some((F, &["2304"])),
                Some((DType::I32, &["batch", "total"])),
                Some((F, &["2", "batch", "12", "past", "64"])),
            ],
            op(None),
            2,
        )
        .unwrap();
        assert_eq!(r, ["f32[batch,seq,768]", "f32[2,batch,12,past+seq,64]"]);
        assert_eq!(
            run(
                &[Some((F, &["b", "s", "64"])), Some((F, &["64", "624"]))],
                op(Some(vec![192, 192, 240])),
                1
            )
            .unwrap(),
            ["f32[b,s,240]"]
        );
        assert!(run(
            &[Some((F, &["b", "s", "64"])), Some((F, &["64", "100"]))],
            op(None),
            1
        )
        .is_err());

        let mha = Op::MultiHeadAttention(MultiHeadAttention {
            num_heads: 8,
            unidirectional: false,
            mask_filter_value: None,
            scale: None,
        });
        assert_eq!(
            run(
                &[
                    Some((F, &["b", "s", "512"])),
                    Some((F, &["b", "l", "512"])),
                    Some((F, &["b", "l", "256"]))
                ],
                mha.clone(),
                4
            )
            .unwrap(),
            [
                "f32[b,s,256]",
                "f32[b,8,l,64]",
                "f32[b,8,l,32]",
                "f32[b,8,s,l]"
            ]
        );
        assert_eq!(
            run(&[Some((F, &["b", "s", "8", "3", "64"]))], mha.clone(), 1).unwrap(),
            ["f32[b,s,512]"]
        );
        assert_eq!(
            run(
                &[
                    Some((F, &["b", "s", "512"])),
                    Some((F, &["b", "l", "8", "2", "64"]))
                ],
                mha.clone(),
                1
            )
            .unwrap(),
            ["f32[b,s,512]"]
        );
        let r = run(
            &[
                Some((F, &["b", "s", "512"])),
                Some((F, &["b", "s", "512"])),
                Some((F, &["b", "s", "512"])),
                None,
                None,
                None,
                Some((F, &["b", "8", "p", "64"])),
                Some((F, &["b", "8", "p", "64"])),
            ],
            mha,
            3,
        )
        .unwrap();
        assert_eq!(r, ["f32[b,s,512]", "f32[b,8,p+s,64]", "f32[b,8,p+s,64]"]);
    }

    #[test]
    fn contrib_layer_norms() {
        let skip = Op::SkipLayerNormalization(SkipLayerNormalization {
            epsilon: Some(1e-12),
        });
        let ins = [
            Some((DType::F16, &["b", "s", "768"][..])),
            Some((DType::F16, &["b", "s", "768"][..])),
            Some((DType::F16, &["768"][..])),
            Some((DType::F16, &["768"][..])),
        ];
        assert_eq!(
            run(&ins, skip.clone(), 4).unwrap(),
            ["f16[b,s,768]", "f32[b,s,1]", "f32[b,s,1]", "f16[b,s,768]"]
        );
        assert!(run(
            &[
                Some((F, &["b", "s", "768"])),
                Some((F, &["b", "s", "768"])),
                Some((F, &["512"]))
            ],
            skip,
            1
        )
        .is_err());
        let sskip = Op::SkipSimplifiedLayerNormalization(SkipSimplifiedLayerNormalization {
            epsilon: None,
        });
        assert_eq!(
            run(
                &[
                    Some((F, &["t", "64"])),
                    Some((F, &["t", "64"])),
                    Some((F, &["64"]))
                ],
                sskip,
                4
            )
            .unwrap(),
            ["f32[t,64]", "f32[t,1]", "f32[t,1]", "f32[t,64]"]
        );
        let sln = Op::SimplifiedLayerNormalization(SimplifiedLayerNormalization {
            axis: -1,
            epsilon: 1e-5,
            stash_type: 1,
        });
        assert_eq!(
            run(
                &[
                    Some((DType::F16, &["b", "s", "64"])),
                    Some((DType::F16, &["64"]))
                ],
                sln,
                2
            )
            .unwrap(),
            ["f16[b,s,64]", "f32[b,s,1]"]
        );
        let emb = Op::EmbedLayerNormalization(EmbedLayerNormalization {
            epsilon: None,
            mask_index_type: None,
        });
        let ins = [
            Some((DType::I32, &["batch", "seq"][..])),
            Some((DType::I32, &["batch", "seq"][..])),
            Some((F, &["30522", "768"][..])),
            Some((F, &["512", "768"][..])),
            Some((F, &["2", "768"][..])),
            Some((F, &["768"][..])),
            Some((F, &["768"][..])),
            Some((DType::I32, &["batch", "seq"][..])),
        ];
        assert_eq!(
            run(&ins, emb, 3).unwrap(),
            ["f32[batch,seq,768]", "i32[batch]", "f32[batch,seq,768]"]
        );
    }

    #[test]
    fn constant_inputs_are_used() {
        // A MatMul against an initializer.
        let mut g = Graph::new("g");
        let a = g.add_input("a", ty(F, &["n", "2"]));
        let w = g.add_const("w", Tensor::from_vec(vec![2, 3], vec![0f32; 6]).unwrap());
        assert_eq!(
            run_on(g, vec![Some(a), Some(w)], mm(), 1).unwrap(),
            ["f32[n,3]"]
        );
    }
}
