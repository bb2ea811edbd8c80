//! Property tests of the f32 fast paths of the ONNX Runtime fused transformer ops
//! (`com.microsoft.Attention` with its weight packed at build time or not,
//! `MultiHeadAttention`, `SkipLayerNormalization`, `SkipSimplifiedLayerNormalization`,
//! `LayerNormalization`, `EmbedLayerNormalization`, `BiasGelu`, `FastGelu`) against
//! straightforward f64 references written here: odd head counts and sizes, sequence lengths
//! 1..40, every mask form with padded rows, causal masks, past state, hidden sizes that are
//! not multiples of 8, and tensors large enough for the threaded paths. The attention
//! reference is also checked against kiln's f64 path (the loops the f32 path replaced).
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 64).

use kiln_ir::op::{
    BiasGelu, EmbedLayerNormalization, FastGelu, LayerNormalization, MsAttention,
    MultiHeadAttention, SkipLayerNormalization, SkipSimplifiedLayerNormalization,
};
use kiln_ir::{Element, Graph, Op, Tensor};
use kiln_runtime::{BuildCx, KernelError, RunCx, Value};
use proptest::prelude::*;

const FILTER: f64 = -10000.0;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Deterministic values in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Deterministic integers in `0..n`.
fn idx(len: usize, n: usize, seed: u64) -> Vec<i32> {
    data(len, seed)
        .iter()
        .map(|&v| (((v + 1.0) * 0.5 * n as f32) as usize).min(n.saturating_sub(1)) as i32)
        .collect()
}

fn t<T: Element>(shape: &[usize], v: Vec<T>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

/// Runs `op`'s kernel with `n_out` outputs; inputs flagged in `consts` are constants at build
/// time (the packed-weight path).
fn run(
    op: &Op,
    inputs: &[Option<Tensor>],
    consts: &[bool],
    n_out: usize,
) -> Result<Vec<Tensor>, KernelError> {
    let g = Graph::new("t");
    let cx = BuildCx {
        input_types: vec![None; inputs.len()],
        const_inputs: inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if consts.get(i).copied().unwrap_or(false) {
                    t.as_ref()
                } else {
                    None
                }
            })
            .collect(),
        output_types: vec![None; n_out],
        graph: &g,
    };
    let k = kiln_runtime::kernels::build(op, &cx)?;
    let vals: Vec<Option<Value>> = inputs
        .iter()
        .map(|t| t.clone().map(Value::Tensor))
        .collect();
    let refs: Vec<Option<&Value>> = vals.iter().map(|v| v.as_ref()).collect();
    let mut rcx = RunCx::new();
    Ok(k.run(&refs, &mut rcx)?
        .into_iter()
        .map(|v| v.into_tensor().unwrap())
        .collect())
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

/// `|got − want| ≤ tol·(1 + |want|)` element-wise, `tol` per element.
fn close(
    got: &Tensor,
    shape: &[usize],
    want: &[f64],
    tol: impl Fn(usize) -> f64,
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), shape, "{} shape", what);
    let g = f64s(got);
    prop_assert_eq!(g.len(), want.len(), "{} length", what);
    for (i, (&a, &b)) in g.iter().zip(want).enumerate() {
        prop_assert!(
            (a - b).abs() <= tol(i) * (1.0 + b.abs()),
            "{} element {}: got {}, want {}",
            what,
            i,
            a,
            b
        );
    }
    Ok(())
}

/// Softmax of `row` in f64.
fn softmax(row: &mut [f64]) {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in row.iter_mut() {
        *v /= s;
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

/// The mask input of an Attention case.
#[derive(Clone, Copy, Debug)]
enum MaskKind {
    None,
    /// `[B]` valid lengths.
    Lengths,
    /// `[B, T]` key padding.
    Raw2,
    /// `[B, S, T]`.
    Raw3,
    /// `[B, 1, M, M]` (GPT-2 style, M ≥ P + S).
    Raw4,
}

/// One attention problem in f64, heads given per (b, n, position, e).
struct AttRef {
    b: usize,
    n: usize,
    s: usize,
    t: usize,
    h: usize,
    hv: usize,
    /// `[B, N, S, H]`.
    q: Vec<f64>,
    /// `[B, N, T, H]`.
    k: Vec<f64>,
    /// `[B, N, T, Hv]`.
    v: Vec<f64>,
    /// Additive term per (b, n, i, j).
    add: Vec<f64>,
    scale: f64,
}

impl AttRef {
    /// `([B, S, N·Hv]` output, `[B, N, S, T]` scaled scores, whether each (b, i) row has
    /// every key pushed down by a mask in some head).
    fn run(&self) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
        let (b, n, s, t, h, hv) = (self.b, self.n, self.s, self.t, self.h, self.hv);
        let mut out = vec![0.0; b * s * n * hv];
        let mut qk = vec![0.0; b * n * s * t];
        let mut saturated = vec![false; b * s];
        for bi in 0..b {
            for ni in 0..n {
                let bn = bi * n + ni;
                for i in 0..s {
                    let mut row = vec![0.0; t];
                    for (j, r) in row.iter_mut().enumerate() {
                        let mut d = 0.0;
                        for e in 0..h {
                            d += self.q[(bn * s + i) * h + e] * self.k[(bn * t + j) * h + e];
                        }
                        *r = self.scale * d;
                        qk[(bn * s + i) * t + j] = *r;
                    }
                    let adds = &self.add[(bn * s + i) * t..(bn * s + i + 1) * t];
                    if t > 0 && adds.iter().all(|&a| a <= FILTER / 2.0) {
                        saturated[bi * s + i] = true;
                    }
                    for (r, &a) in row.iter_mut().zip(adds) {
                        *r += a;
                    }
                    softmax(&mut row);
                    for e in 0..hv {
                        let mut acc = 0.0;
                        for (j, &p) in row.iter().enumerate() {
                            acc += p * self.v[(bn * t + j) * hv + e];
                        }
                        out[(bi * s + i) * n * hv + ni * hv + e] = acc;
                    }
                }
            }
        }
        (out, qk, saturated)
    }
}

/// The tolerance of an attention output element: f32 rounding, except in rows where every
/// key is masked, whose scores sit near −10000 where f32 keeps only ~3 decimals.
fn att_tol(saturated: &[bool], row_len: usize) -> impl Fn(usize) -> f64 + '_ {
    move |i| {
        if saturated[i / row_len.max(1)] {
            5e-3
        } else {
            1e-4
        }
    }
}

#[derive(Debug, Clone)]
struct AttCase {
    b: usize,
    n: usize,
    h: usize,
    hv: usize,
    s: usize,
    din: usize,
    past: usize,
    mask: MaskKind,
    attn_bias: Option<(bool, bool)>,
    causal: bool,
    scale: Option<f32>,
    const_w: bool,
    present: bool,
    seed: u64,
}

fn att_case() -> impl Strategy<Value = AttCase> {
    (
        (1usize..=3, 1usize..=4, 1usize..=9, 1usize..=9, 1usize..=40),
        (
            1usize..=20,
            0usize..=4,
            0u8..5,
            any::<bool>(),
            any::<(bool, bool)>(),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (b, n, h, hv, s),
                (din, past, mk, has_ab, ab_b),
                (causal, scaled, cw, pr, wp, seed),
            )| {
                // A past state needs equal key and value head sizes (and so does present).
                let with_past = wp && past > 0;
                let hv = if with_past || pr { h } else { hv };
                AttCase {
                    b,
                    n,
                    h,
                    hv,
                    s,
                    din,
                    past: if with_past { past } else { 0 },
                    mask: match mk {
                        0 => MaskKind::None,
                        1 => MaskKind::Lengths,
                        2 => MaskKind::Raw2,
                        3 => MaskKind::Raw3,
                        _ => MaskKind::Raw4,
                    },
                    attn_bias: has_ab.then_some(ab_b),
                    causal,
                    scale: scaled.then_some(0.3),
                    const_w: cw,
                    present: pr,
                    seed,
                }
            },
        )
}

/// Runs an Attention case through kiln (f32, and f64 for `f64 = true`) and the reference.
fn check_attention(c: &AttCase) -> Result<(), TestCaseError> {
    let AttCase {
        b,
        n,
        h,
        hv,
        s,
        din,
        past: p,
        ..
    } = *c;
    let (dq, dv) = (n * h, n * hv);
    let wc = 2 * dq + dv;
    let tl = p + s;
    let seed = c.seed;
    let x = data(b * s * din, seed);
    // Weights scaled so that scores stay O(1).
    let ws = 1.0 / (din as f32).sqrt();
    let w: Vec<f32> = data(din * wc, seed ^ 1).iter().map(|v| v * ws).collect();
    let bias = data(wc, seed ^ 2);
    let past = data(2 * b * n * p * h, seed ^ 3);
    // Masks: padding at the end of each sequence (at least one valid key unless
    // `(seed >> 8) % 5 == 0`, which makes the last batch fully padded).
    let fully_padded = (seed >> 8) % 5 == 0;
    let lens: Vec<i32> = (0..b)
        .map(|bi| {
            if fully_padded && bi == b - 1 {
                0
            } else {
                1 + idx(1, tl, seed ^ (10 + bi as u64))[0]
            }
        })
        .collect();
    let raw2: Vec<i32> = (0..b * tl)
        .map(|r| ((r % tl) < lens[r / tl] as usize) as i32)
        .collect();
    let raw3: Vec<i32> = idx(b * s * tl, 4, seed ^ 4)
        .iter()
        .map(|&v| (v != 0) as i32)
        .collect();
    let m4 = tl + (seed % 3) as usize;
    let raw4: Vec<i32> = idx(b * m4 * m4, 3, seed ^ 5)
        .iter()
        .map(|&v| (v != 0) as i32)
        .collect();
    let (abb, abn) = match c.attn_bias {
        Some((per_b, per_n)) => (if per_b { b } else { 1 }, if per_n { n } else { 1 }),
        None => (0, 0),
    };
    let ab: Vec<f32> = data(abb * abn * s * tl, seed ^ 6)
        .iter()
        .zip(idx(abb * abn * s * tl, 4, seed ^ 7))
        .map(|(&v, m)| if m == 0 { -10000.0 } else { v })
        .collect();

    // Reference.
    let mut proj = vec![0.0f64; b * s * wc];
    for r in 0..b * s {
        for col in 0..wc {
            let mut acc = bias[col] as f64;
            for kk in 0..din {
                acc += x[r * din + kk] as f64 * w[kk * wc + col] as f64;
            }
            proj[r * wc + col] = acc;
        }
    }
    let heads = |off: usize, size: usize, past_slot: Option<usize>| {
        let len = if past_slot.is_some() { tl } else { s };
        let mut out = vec![0.0; b * n * len * size];
        for bi in 0..b {
            for ni in 0..n {
                for j in 0..len {
                    for e in 0..size {
                        let v = match past_slot {
                            Some(slot) if j < p => {
                                past[(((slot * b + bi) * n + ni) * p + j) * h + e] as f64
                            }
                            Some(_) => proj[(bi * s + j - p) * wc + off + ni * size + e],
                            None => proj[(bi * s + j) * wc + off + ni * size + e],
                        };
                        out[((bi * n + ni) * len + j) * size + e] = v;
                    }
                }
            }
        }
        out
    };
    let mut add = vec![0.0; b * n * s * tl];
    for bi in 0..b {
        for ni in 0..n {
            for i in 0..s {
                for j in 0..tl {
                    let masked = match c.mask {
                        MaskKind::None => false,
                        MaskKind::Lengths => j as i32 >= lens[bi],
                        MaskKind::Raw2 => raw2[bi * tl + j] == 0,
                        MaskKind::Raw3 => raw3[(bi * s + i) * tl + j] == 0,
                        MaskKind::Raw4 => raw4[(bi * m4 + p + i) * m4 + j] == 0,
                    };
                    let mut a = 0.0;
                    if masked {
                        a += FILTER;
                    }
                    if c.causal && j > p + i {
                        a += FILTER;
                    }
                    if c.attn_bias.is_some() {
                        let (sb, sn) = (
                            if abb == 1 { 0 } else { abn * s * tl },
                            if abn == 1 { 0 } else { s * tl },
                        );
                        a += ab[bi * sb + ni * sn + i * tl + j] as f64;
                    }
                    add[((bi * n + ni) * s + i) * tl + j] = a;
                }
            }
        }
    }
    let r = AttRef {
        b,
        n,
        s,
        t: tl,
        h,
        hv,
        q: heads(0, h, None),
        k: heads(dq, h, (p > 0).then_some(0)),
        v: heads(2 * dq, hv, (p > 0).then_some(1)),
        add,
        scale: c.scale.map_or(1.0 / (h as f64).sqrt(), |v| v as f64),
    };
    let (want, _, saturated) = r.run();

    // kiln, f32 and f64.
    let op = Op::MsAttention(MsAttention {
        num_heads: n as i64,
        unidirectional: c.causal,
        qkv_hidden_sizes: (hv != h).then(|| vec![dq as i64, dq as i64, dv as i64]),
        mask_filter_value: None,
        scale: c.scale,
        past_present_share_buffer: false,
        do_rotary: false,
        rotary_embedding_dim: None,
    });
    let mask_t = match c.mask {
        MaskKind::None => None,
        MaskKind::Lengths => Some(t(&[b], lens.clone())),
        MaskKind::Raw2 => Some(t(&[b, tl], raw2.clone())),
        MaskKind::Raw3 => Some(t(&[b, s, tl], raw3.clone())),
        MaskKind::Raw4 => Some(t(&[b, 1, m4, m4], raw4.clone())),
    };
    let n_out = if c.present { 2 } else { 1 };
    for wide in [false, true] {
        let f = |sh: &[usize], v: &[f32]| {
            if wide {
                t(sh, v.iter().map(|&x| x as f64).collect::<Vec<f64>>())
            } else {
                t(sh, v.to_vec())
            }
        };
        let mut inputs = vec![
            Some(f(&[b, s, din], &x)),
            Some(f(&[din, wc], &w)),
            Some(f(&[wc], &bias)),
            mask_t.clone(),
            (p > 0).then(|| f(&[2, b, n, p, h], &past)),
        ];
        if c.attn_bias.is_some() {
            inputs.push(Some(f(&[abb, abn, s, tl], &ab)));
        }
        let got = run(&op, &inputs, &[false, c.const_w, c.const_w], n_out)
            .map_err(|e| TestCaseError::fail(format!("Attention failed: {e}")))?;
        let what = if wide {
            "f64 Attention"
        } else {
            "f32 Attention"
        };
        if wide {
            close(&got[0], &[b, s, dv], &want, |_| 1e-9, what)?;
        } else {
            close(&got[0], &[b, s, dv], &want, att_tol(&saturated, dv), what)?;
        }
        if c.present {
            let mut pres = r.k.clone();
            pres.extend_from_slice(&r.v);
            close(&got[1], &[2, b, n, tl, h], &pres, |_| 1e-5, "present")?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MultiHeadAttention

#[derive(Debug, Clone)]
struct MhaCase {
    b: usize,
    n: usize,
    h: usize,
    hv: usize,
    s: usize,
    tl: usize,
    bias: bool,
    kpm: bool,
    attn_bias: bool,
    causal: bool,
    seed: u64,
}

fn check_mha(c: &MhaCase) -> Result<(), TestCaseError> {
    let MhaCase {
        b, n, h, hv, s, tl, ..
    } = *c;
    let (d, dv) = (n * h, n * hv);
    let seed = c.seed;
    let q = data(b * s * d, seed);
    let k = data(b * tl * d, seed ^ 1);
    let v = data(b * tl * dv, seed ^ 2);
    let bias = data(2 * d + dv, seed ^ 3);
    let lens: Vec<usize> = (0..b)
        .map(|bi| 1 + idx(1, tl, seed ^ (10 + bi as u64))[0] as usize)
        .collect();
    let kpm: Vec<i32> = (0..b * tl)
        .map(|r| ((r % tl) < lens[r / tl]) as i32)
        .collect();
    let ab = data(b * s * tl, seed ^ 4);
    let bias_at = |i: usize| if c.bias { bias[i] as f64 } else { 0.0 };
    let heads = |src: &[f32], len: usize, size: usize, off: usize| {
        let mut out = vec![0.0; b * n * len * size];
        for bi in 0..b {
            for ni in 0..n {
                for j in 0..len {
                    for e in 0..size {
                        out[((bi * n + ni) * len + j) * size + e] =
                            src[(bi * len + j) * n * size + ni * size + e] as f64
                                + bias_at(off + ni * size + e);
                    }
                }
            }
        }
        out
    };
    let mut add = vec![0.0; b * n * s * tl];
    for bi in 0..b {
        for ni in 0..n {
            for i in 0..s {
                for j in 0..tl {
                    let mut a = 0.0;
                    if c.kpm && j >= lens[bi] {
                        a += FILTER;
                    }
                    if c.causal && j > i {
                        a += FILTER;
                    }
                    if c.attn_bias {
                        a += ab[(bi * s + i) * tl + j] as f64;
                    }
                    add[((bi * n + ni) * s + i) * tl + j] = a;
                }
            }
        }
    }
    let r = AttRef {
        b,
        n,
        s,
        t: tl,
        h,
        hv,
        q: heads(&q, s, h, 0),
        k: heads(&k, tl, h, d),
        v: heads(&v, tl, hv, 2 * d),
        add,
        scale: 1.0 / (h as f64).sqrt(),
    };
    let (want, qk, saturated) = r.run();
    let op = Op::MultiHeadAttention(MultiHeadAttention {
        num_heads: n as i64,
        unidirectional: c.causal,
        mask_filter_value: None,
        scale: None,
    });
    let inputs = vec![
        Some(t(&[b, s, d], q)),
        Some(t(&[b, tl, d], k)),
        Some(t(&[b, tl, dv], v)),
        c.bias.then(|| t(&[2 * d + dv], bias.clone())),
        c.kpm.then(|| t(&[b, tl], kpm.clone())),
        c.attn_bias.then(|| t(&[b, 1, s, tl], ab.clone())),
    ];
    let got = run(&op, &inputs, &[], 4)
        .map_err(|e| TestCaseError::fail(format!("MultiHeadAttention failed: {e}")))?;
    close(
        &got[0],
        &[b, s, dv],
        &want,
        att_tol(&saturated, dv),
        "MHA output",
    )?;
    close(&got[1], &[b, n, tl, h], &r.k, |_| 1e-6, "MHA present_key")?;
    close(
        &got[2],
        &[b, n, tl, hv],
        &r.v,
        |_| 1e-6,
        "MHA present_value",
    )?;
    close(&got[3], &[b, n, s, tl], &qk, |_| 1e-5, "MHA qk")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Normalizations

/// `(normalized row · g + b, mean, inv)` in f64; `rms`: no mean subtracted.
fn ln_ref(row: &[f64], g: &[f32], b: Option<&[f32]>, eps: f64, rms: bool) -> (Vec<f64>, f64, f64) {
    let n = row.len() as f64;
    let mean = if rms {
        0.0
    } else {
        row.iter().sum::<f64>() / n
    };
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    let y = row
        .iter()
        .enumerate()
        .map(|(c, v)| (v - mean) * inv * g[c] as f64 + b.map_or(0.0, |b| b[c] as f64))
        .collect();
    (y, mean, inv)
}

/// Tolerance of normalized outputs: f32 rounding of the inputs, amplified by `inv`.
const NORM_TOL: f64 = 3e-5;

/// Tolerance of one normalized output element of a row whose values (before normalization) are
/// at most `scale` in magnitude: [`NORM_TOL`], plus four ulps of `scale` amplified by the
/// row's `inv` and the element's `|g|`. In f32 the deviation `x − mean` is known only to ulps
/// of the mean (and of `x + skip + bias`), which matters when the deviations are tiny against
/// the values and `eps` does not bound `inv` (values near 3 that differ by 5e-4: `inv` ≈ 300,
/// an error of 3.5e-5 on an output of 0.17).
fn norm_tol(scale: f64, inv: f64, g: f32) -> f64 {
    NORM_TOL + 4.0 * f32::EPSILON as f64 * scale * inv * g.abs() as f64
}

#[allow(clippy::too_many_arguments)]
fn check_skip(
    rows: usize,
    h: usize,
    skip_rows: usize,
    beta: bool,
    bias: bool,
    rms: bool,
    eps: Option<f32>,
    n_out: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let x = data(rows * h, seed);
    let skip = data(skip_rows * h, seed ^ 1);
    let g = data(h, seed ^ 2);
    let gains = g.clone();
    let bt = data(h, seed ^ 3);
    let bs = data(h, seed ^ 4);
    let eps64 = eps.map_or(1e-12, |e| e as f64);
    let (mut y, mut means, mut invs, mut sums) = (vec![], vec![], vec![], vec![]);
    let mut scales = vec![];
    for r in 0..rows {
        let row: Vec<f64> = (0..h)
            .map(|c| {
                let mut v = x[r * h + c] as f64 + skip[(r % skip_rows) * h + c] as f64;
                if bias {
                    v += bs[c] as f64;
                }
                v
            })
            .collect();
        let (yr, m, i) = ln_ref(&row, &g, (beta && !rms).then_some(&bt[..]), eps64, rms);
        y.extend(yr);
        means.push(m);
        invs.push(i);
        // The f32 sum x + skip (+ bias) is rounded to ulps of its terms.
        let terms = |c: usize| {
            let t = x[r * h + c].abs() + skip[(r % skip_rows) * h + c].abs();
            (if bias { t + bs[c].abs() } else { t }) as f64
        };
        scales.push((0..h).map(terms).fold(0.0, f64::max));
        sums.extend(row);
    }
    let op = if rms {
        Op::SkipSimplifiedLayerNormalization(SkipSimplifiedLayerNormalization { epsilon: eps })
    } else {
        Op::SkipLayerNormalization(SkipLayerNormalization { epsilon: eps })
    };
    let shape = [rows, h];
    let mut inputs = vec![
        Some(t(&shape, x)),
        Some(t(&[skip_rows, h], skip)),
        Some(t(&[h], g)),
    ];
    if !rms {
        inputs.push(beta.then(|| t(&[h], bt)));
    }
    inputs.push(bias.then(|| t(&[h], bs)));
    let got = run(&op, &inputs, &[false, false, true, true, true], n_out)
        .map_err(|e| TestCaseError::fail(format!("skip norm failed: {e}")))?;
    let tol = |i: usize| norm_tol(scales[i / h], invs[i / h], gains[i % h]);
    close(&got[0], &shape, &y, tol, "skip norm output")?;
    if n_out > 1 {
        close(&got[1], &[rows, 1], &means, |_| 1e-6, "skip norm mean")?;
        close(&got[2], &[rows, 1], &invs, |_| 1e-5, "skip norm inv_std")?;
        close(&got[3], &shape, &sums, |_| 1e-6, "skip norm sum")?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_embed(
    b: usize,
    s: usize,
    h: usize,
    vocab: usize,
    segments: bool,
    pos_ids: u8,
    mask: bool,
    n_out: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let pr = s + (seed % 4) as usize;
    let ids = idx(b * s, vocab, seed);
    let seg = idx(b * s, 2, seed ^ 1);
    let word = data(vocab * h, seed ^ 2);
    let pos = data(pr * h, seed ^ 3);
    let sege = data(2 * h, seed ^ 4);
    let g = data(h, seed ^ 5);
    let gains = g.clone();
    let bt = data(h, seed ^ 6);
    let m = idx(b * s, 3, seed ^ 7);
    let pids: Vec<i32> = match pos_ids {
        1 => idx(s, pr, seed ^ 8),
        2 => idx(b * s, pr, seed ^ 8),
        _ => vec![],
    };
    let (mut y, mut sums, mut invs, mut scales) = (vec![], vec![], vec![], vec![]);
    for r in 0..b * s {
        let p = match pos_ids {
            1 => pids[r % s] as usize,
            2 => pids[r] as usize,
            _ => r % s,
        };
        let row: Vec<f64> = (0..h)
            .map(|c| {
                let mut v = word[ids[r] as usize * h + c] as f64 + pos[p * h + c] as f64;
                if segments {
                    v += sege[seg[r] as usize * h + c] as f64;
                }
                v
            })
            .collect();
        let (yr, _, inv) = ln_ref(&row, &g, Some(&bt), 1e-12, false);
        y.extend(yr);
        invs.push(inv);
        // The f32 sum of the embeddings is rounded to ulps of its terms.
        let terms = |c: usize| {
            let mut t = word[ids[r] as usize * h + c].abs() + pos[p * h + c].abs();
            if segments {
                t += sege[seg[r] as usize * h + c].abs();
            }
            t as f64
        };
        scales.push((0..h).map(terms).fold(0.0, f64::max));
        sums.extend(row);
    }
    let counts: Vec<f64> = (0..b)
        .map(|bi| {
            if mask {
                m[bi * s..(bi + 1) * s].iter().filter(|&&v| v != 0).count() as f64
            } else {
                0.0
            }
        })
        .collect();
    let op = Op::EmbedLayerNormalization(EmbedLayerNormalization {
        epsilon: None,
        mask_index_type: None,
    });
    let inputs = vec![
        Some(t(&[b, s], ids)),
        segments.then(|| t(&[b, s], seg)),
        Some(t(&[vocab, h], word)),
        Some(t(&[pr, h], pos)),
        segments.then(|| t(&[2, h], sege)),
        Some(t(&[h], g)),
        Some(t(&[h], bt)),
        mask.then(|| t(&[b, s], m)),
        match pos_ids {
            1 => Some(t(&[1, s], pids)),
            2 => Some(t(&[b, s], pids)),
            _ => None,
        },
    ];
    let got = run(
        &op,
        &inputs,
        &[false, false, true, true, true, true, true],
        n_out,
    )
    .map_err(|e| TestCaseError::fail(format!("EmbedLayerNormalization failed: {e}")))?;
    let tol = |i: usize| norm_tol(scales[i / h], invs[i / h], gains[i % h]);
    close(&got[0], &[b, s, h], &y, tol, "embed norm output")?;
    if n_out > 1 {
        close(&got[1], &[b], &counts, |_| 0.0, "embed norm mask_index")?;
    }
    if n_out > 2 {
        close(&got[2], &[b, s, h], &sums, |_| 1e-6, "embed norm sum")?;
    }
    Ok(())
}

fn gelu(v: f64) -> f64 {
    0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
}

fn fast_gelu(v: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// com.microsoft.Attention: packed or per-call weights, every mask form, attention bias,
    /// causal, past state, present output, qkv_hidden_sizes with a different value size.
    #[test]
    fn attention_matches_reference(c in att_case()) {
        check_attention(&c)?;
    }

    /// MultiHeadAttention with separate Q/K/V (key length ≠ query length), bias, key padding,
    /// attention bias, causal, and the present and QK outputs.
    #[test]
    fn multi_head_attention_matches_reference(
        (b, n, h, hv) in (1usize..=2, 1usize..=3, 1usize..=8, 1usize..=8),
        (s, tl) in (1usize..=20, 1usize..=20),
        (bias, kpm, attn_bias, causal) in any::<(bool, bool, bool, bool)>(),
        seed in any::<u64>(),
    ) {
        check_mha(&MhaCase { b, n, h, hv, s, tl, bias, kpm, attn_bias, causal, seed })?;
    }

    /// SkipLayerNormalization / SkipSimplifiedLayerNormalization: hidden sizes 1..100, skip
    /// broadcast over the batch or not, optional beta and bias, every output, and enough rows
    /// for the threaded path.
    #[test]
    fn skip_norms_match_reference(
        (rows, h, big) in (1usize..=40, 1usize..=100, any::<bool>()),
        (bcast, beta, bias, rms) in any::<(bool, bool, bool, bool)>(),
        (eps, all_out) in (any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let rows = if big { rows * 24 } else { rows };
        let skip_rows = if bcast && rows % 2 == 0 { rows / 2 } else { rows };
        check_skip(rows, h, skip_rows, beta, bias, rms, eps.then_some(1e-5),
                   if all_out { 4 } else { 1 }, seed)?;
    }

    /// LayerNormalization (ONNX, the -O1 graph's op): f32 rows against f64, with statistics.
    #[test]
    fn layer_norm_matches_reference(
        (rows, h, big) in (1usize..=40, 1usize..=100, any::<bool>()),
        (bias, offset) in (any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let rows = if big { rows * 24 } else { rows };
        // An offset makes the mean large against the deviations (the two-pass case).
        let off = if offset { 3.0 } else { 0.0 };
        let x: Vec<f32> = data(rows * h, seed).iter().map(|v| v + off).collect();
        let g = data(h, seed ^ 1);
        let gains = g.clone();
        let bt = data(h, seed ^ 2);
        let (mut y, mut means, mut invs, mut scales) = (vec![], vec![], vec![], vec![]);
        for r in 0..rows {
            let row: Vec<f64> = x[r * h..(r + 1) * h].iter().map(|&v| v as f64).collect();
            let (yr, m, i) = ln_ref(&row, &g, bias.then_some(&bt[..]), 1e-5, false);
            y.extend(yr);
            means.push(m);
            invs.push(i);
            scales.push(row.iter().fold(0.0f64, |a, v| a.max(v.abs())));
        }
        let op = Op::LayerNormalization(LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 });
        let inputs = vec![Some(t(&[rows, h], x)), Some(t(&[h], g)), bias.then(|| t(&[h], bt))];
        let got = run(&op, &inputs, &[], 3)
            .map_err(|e| TestCaseError::fail(format!("LayerNormalization failed: {e}")))?;
        let tol = |i: usize| norm_tol(scales[i / h], invs[i / h], gains[i % h]);
        close(&got[0], &[rows, h], &y, tol, "layer norm output")?;
        close(&got[1], &[rows, 1], &means, |_| 1e-6, "layer norm mean")?;
        close(&got[2], &[rows, 1], &invs, |_| 1e-5, "layer norm inv_std")?;
    }

    /// EmbedLayerNormalization: tables read in place, segments, position ids of both shapes,
    /// mask index, the embedding sum output.
    #[test]
    fn embed_norm_matches_reference(
        (b, s, h, vocab) in (1usize..=3, 1usize..=40, 1usize..=70, 1usize..=30),
        (segments, pos_ids, mask) in (any::<bool>(), 0u8..3, any::<bool>()),
        n_out in 1usize..=3,
        seed in any::<u64>(),
    ) {
        check_embed(b, s, h, vocab, segments, pos_ids, mask, n_out, seed)?;
    }

    /// BiasGelu and FastGelu with a bias along the last axis or none, odd widths, and large
    /// tensors (threaded).
    #[test]
    fn bias_gelus_match_reference(
        (rows, h, big) in (1usize..=50, 1usize..=70, any::<bool>()),
        (bias, fast) in any::<(bool, bool)>(),
        seed in any::<u64>(),
    ) {
        let rows = if big { rows * 64 } else { rows };
        let x: Vec<f32> = data(rows * h, seed).iter().map(|v| v * 8.0).collect();
        let bs = data(h, seed ^ 1);
        let want: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let v = v as f64 + if bias { bs[i % h] as f64 } else { 0.0 };
                if fast { fast_gelu(v) } else { gelu(v) }
            })
            .collect();
        let op = if fast { Op::FastGelu(FastGelu {}) } else { Op::BiasGelu(BiasGelu {}) };
        let inputs = vec![Some(t(&[rows, h], x)), bias.then(|| t(&[h], bs))];
        let got = run(&op, &inputs, &[false, true], 1)
            .map_err(|e| TestCaseError::fail(format!("Gelu failed: {e}")))?;
        close(&got[0], &[rows, h], &want, |_| 2e-6, "gelu")?;
    }
}

/// Out-of-range embedding ids are errors, not panics (they are checked before the threaded
/// row pass).
#[test]
fn embed_norm_rejects_bad_ids() {
    let op = Op::EmbedLayerNormalization(EmbedLayerNormalization {
        epsilon: None,
        mask_index_type: None,
    });
    for (ids, pids) in [(vec![0i32, 7], None), (vec![0, 1], Some(vec![0i32, 9]))] {
        let inputs = vec![
            Some(t(&[1, 2], ids)),
            None,
            Some(t(&[4, 3], data(12, 1))),
            Some(t(&[2, 3], data(6, 2))),
            None,
            Some(t(&[3], data(3, 3))),
            Some(t(&[3], data(3, 4))),
            None,
            pids.map(|p| t(&[1, 2], p)),
        ];
        let e = run(&op, &inputs, &[], 1).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}

/// A BERT-base-sized Attention (packed weight, attention bias) against the reference: the
/// sizes where the heads run in parallel with their single-threaded GEMMs.
#[test]
fn attention_bert_sized() {
    check_attention(&AttCase {
        b: 2,
        n: 12,
        h: 64,
        hv: 64,
        s: 33,
        din: 768,
        past: 0,
        mask: MaskKind::Raw2,
        attn_bias: Some((false, false)),
        causal: false,
        scale: None,
        const_w: true,
        present: false,
        seed: 7,
    })
    .unwrap();
}
