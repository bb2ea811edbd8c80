//! The core of attention as a graph spells it out op by op — `MatMul(Q, K)`, elementwise
//! ops on the scores (scale, mask), `Softmax` along the last axis, elementwise ops on the
//! probabilities (the NaN scrub of SDPA exports), `MatMul(P, V)` — run as one loop over the
//! batch dims ([`AttentionCore`]). Unfused, each op is a pass over the whole `[B, H, S, T]`
//! score tensor (6 MB for BERT at 8×128, far beyond L2); fused, one `S × T` slice at a time
//! stays in cache from its GEMM to the next.
//!
//! This is loop fusion at lowering, not a graph rewrite: the compiler groups the nodes
//! (`kiln-codegen`), the IR is unchanged. The operands are read in place: a `Transpose` in
//! front of a `MatMul` becomes strides, a `Mul` by a constant scalar the GEMM's `alpha`.

use kiln_ir::{DType, Tensor};
use rayon::prelude::*;

use super::KResult;
use crate::error::KernelError;
use crate::gemm::{default_gemm, vmath, AOperand, BOperand, Epilogue, Gemm};
use crate::kernel::{Kernel, RunCx};
use crate::kernels::elementwise::fused::{eval_into, MapOp, MapProgram, Src};
use crate::kernels::elementwise::view;
use crate::kernels::par::OutPtr;
use crate::kernels::util::{broadcast_shapes, strides};
use crate::value::Value;

/// A matrix operand read in place: its tensor's dims permuted by `perm` (a folded
/// `Transpose`), times `scale` (a folded `Mul` by a constant scalar).
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    pub perm: Option<Vec<usize>>,
    pub scale: f32,
}

impl Operand {
    /// The tensor as it is, times 1.
    pub fn plain() -> Operand {
        Operand {
            perm: None,
            scale: 1.0,
        }
    }
}

/// `(pre(Q·K) |> softmax |> post) · V` over the batch dims of `Q·K`. Inputs: `q`, `k`, `v`,
/// then the extra inputs of `pre` (its register 0 is the scores), then those of `post` (its
/// register 0 is the probabilities).
#[derive(Clone, Debug)]
pub struct AttentionCore {
    pub q: Operand,
    pub k: Operand,
    pub v: Operand,
    pub pre: Option<MapProgram>,
    pub post: Option<MapProgram>,
    /// The output written as `[B, M, H, D]` instead of `[B, H, M, D]` (batch dims `[B, H]`):
    /// the graph's `Transpose(perm = [0, 2, 1, 3])` that merges the heads, folded.
    pub heads_last: bool,
}

impl AttentionCore {
    /// Checks the programs: each ends in an f32 value and reads at least the chain value.
    pub fn new(core: AttentionCore) -> Result<AttentionCore, KernelError> {
        for p in [&core.pre, &core.post].into_iter().flatten() {
            p.validate()?;
            // The scores are run through the programs in pieces of rows.
            p.no_row_means()?;
            if p.inputs == 0 || p.out_bool() {
                return Err(KernelError::Invalid(
                    "attention core: an elementwise program must read the chain value and end in f32".into(),
                ));
            }
        }
        Ok(core)
    }

    fn extras(p: &Option<MapProgram>) -> usize {
        p.as_ref().map_or(0, |p| p.inputs - 1)
    }
}

/// An operand's dims and element strides after its permutation.
struct View<'a> {
    data: &'a [f32],
    shape: Vec<usize>,
    strides: Vec<usize>,
}

fn operand_view<'a>(
    data: &'a [f32],
    shape: &[usize],
    op: &Operand,
    what: &str,
) -> KResult<View<'a>> {
    let st = strides(shape);
    let (shape, strides) = match &op.perm {
        None => (shape.to_vec(), st),
        Some(p) => {
            let mut seen = vec![false; shape.len()];
            if p.len() != shape.len()
                || p.iter()
                    .any(|&i| i >= shape.len() || std::mem::replace(&mut seen[i], true))
            {
                return Err(KernelError::Invalid(format!(
                    "attention core: {what} has shape {shape:?}, its permutation is {p:?}"
                )));
            }
            (
                p.iter().map(|&i| shape[i]).collect(),
                p.iter().map(|&i| st[i]).collect(),
            )
        }
    };
    if shape.len() < 2 {
        return Err(KernelError::Invalid(format!(
            "attention core: {what} has rank {}, a matrix needs 2",
            shape.len()
        )));
    }
    Ok(View {
        data,
        shape,
        strides,
    })
}

impl View<'_> {
    fn rows(&self) -> usize {
        self.shape[self.shape.len() - 2]
    }
    fn cols(&self) -> usize {
        self.shape[self.shape.len() - 1]
    }
    fn batch(&self) -> &[usize] {
        &self.shape[..self.shape.len() - 2]
    }

    /// The matrix of batch index `idx` (over `out_batch`, which this operand's batch dims
    /// broadcast to) as `(data, ld, trans)` for the GEMM; copied into `scratch` when neither
    /// of its dims is contiguous.
    fn matrix<'s>(&'s self, idx: &[usize], scratch: &'s mut Vec<f32>) -> (&'s [f32], usize, bool) {
        let r = self.shape.len();
        let nb = r - 2;
        let mut off = 0;
        for d in 0..nb {
            if self.shape[d] != 1 {
                off += idx[idx.len() - nb + d] * self.strides[d];
            }
        }
        let (rows, cols) = (self.rows(), self.cols());
        let (rs, cs) = (self.strides[r - 2], self.strides[r - 1]);
        let data = &self.data[off.min(self.data.len())..];
        if cs == 1 || cols <= 1 {
            (data, if rows <= 1 { cols.max(1) } else { rs }, false)
        } else if rs == 1 || rows <= 1 {
            (data, cs, true)
        } else {
            scratch.clear();
            for i in 0..rows {
                scratch.extend((0..cols).map(|j| data[i * rs + j * cs]));
            }
            (scratch, cols.max(1), false)
        }
    }
}

/// An extra input of a program: its elements, and where batch index `idx` starts.
struct Extra<'a> {
    src: Src<'a>,
    /// `[rows, cols]`: each 1 (broadcast) or the scores' own.
    mat: [usize; 2],
    /// Per dim of the output batch, the stride (0 where broadcast).
    batch_strides: Vec<usize>,
}

fn extra<'a>(t: &'a Tensor, data: Src<'a>, full: &[usize], what: &str) -> KResult<Extra<'a>> {
    let s = t.shape();
    let fits = s.len() <= full.len()
        && s.iter()
            .zip(&full[full.len() - s.len()..])
            .all(|(&a, &b)| a == 1 || a == b);
    if !fits {
        return Err(KernelError::Invalid(format!(
            "attention core: {what} of shape {s:?} does not broadcast to the scores' {full:?}"
        )));
    }
    let mut padded = vec![1usize; full.len() - s.len()];
    padded.extend_from_slice(s);
    let st = strides(&padded);
    let nb = full.len() - 2;
    Ok(Extra {
        src: data,
        mat: [padded[nb], padded[nb + 1]],
        batch_strides: (0..nb)
            .map(|d| if padded[d] == 1 { 0 } else { st[d] })
            .collect(),
    })
}

impl Extra<'_> {
    /// Batch index `idx` as the argument of a row step over `· × n` scores (`None` for a
    /// bool input).
    fn row_arg(&self, idx: &[usize], n: usize) -> Option<vmath::RowArg<'_>> {
        let Src::F32(d) = self.at(idx) else {
            return None;
        };
        Some(match self.mat {
            [1, 1] => vmath::RowArg::Scalar(*d.first()?),
            [1, _] => vmath::RowArg::Rows { data: d, stride: 0 },
            [_, 1] => vmath::RowArg::PerRow(d),
            _ => vmath::RowArg::Rows { data: d, stride: n },
        })
    }

    fn at(&self, idx: &[usize]) -> Src<'_> {
        let off: usize = idx
            .iter()
            .zip(&self.batch_strides)
            .map(|(i, s)| i * s)
            .sum();
        let len = self.mat[0] * self.mat[1];
        match self.src {
            Src::F32(x) => Src::F32(&x[off..off + len]),
            Src::Bool(x) => Src::Bool(&x[off..off + len]),
        }
    }
}

/// The programs around the softmax as steps of [`vmath::softmax_rows_fused`]: `pre` a chain
/// of `Add`/`Sub`/`Mul`/`Div` of the scores, each with one extra input (the scale, the
/// mask), and `post` the NaN scrub `Where(IsNaN(p), c, p)`. Extras by index into the
/// program's own.
struct RowPlan {
    pre: Vec<(vmath::RowOp, usize)>,
    nan_to: Option<usize>,
}

impl RowPlan {
    fn of(pre: Option<&MapProgram>, post: Option<&MapProgram>) -> Option<RowPlan> {
        use vmath::RowOp;
        let mut steps = Vec::new();
        if let Some(p) = pre {
            let extra = |r: u16| {
                (1..p.inputs)
                    .contains(&(r as usize))
                    .then(|| r as usize - 1)
            };
            let mut chain = 0u16;
            for (i, op) in p.ops.iter().enumerate() {
                let (a, b, fwd, rev) = match *op {
                    MapOp::Add(a, b) => (a, b, RowOp::Add, RowOp::Add),
                    MapOp::Sub(a, b) => (a, b, RowOp::Sub, RowOp::SubFrom),
                    MapOp::Mul(a, b) => (a, b, RowOp::Mul, RowOp::Mul),
                    MapOp::Div(a, b) => (a, b, RowOp::Div, RowOp::DivInto),
                    _ => return None,
                };
                steps.push(if a == chain {
                    (fwd, extra(b)?)
                } else if b == chain {
                    (rev, extra(a)?)
                } else {
                    return None;
                });
                chain = (p.inputs + i) as u16;
            }
        }
        let nan_to = match post {
            None => None,
            Some(p) => match p.ops[..] {
                [MapOp::IsNaN(0), MapOp::Where(c, v, 0)]
                    if c as usize == p.inputs && (1..p.inputs).contains(&(v as usize)) =>
                {
                    Some(v as usize - 1)
                }
                _ => return None,
            },
        };
        Some(RowPlan { pre: steps, nan_to })
    }
}

enum Owned<'a> {
    F32(std::borrow::Cow<'a, [f32]>),
    Bool(std::borrow::Cow<'a, [u8]>),
}

fn owned<'a>(v: Option<&'a Value>, what: &str) -> KResult<(&'a Tensor, Owned<'a>)> {
    match v {
        Some(Value::Tensor(t)) if t.dtype() == DType::F32 => Ok((t, Owned::F32(view::<f32>(t)?))),
        Some(Value::Tensor(t)) if t.dtype() == DType::Bool => Ok((t, Owned::Bool(view::<u8>(t)?))),
        Some(Value::Tensor(t)) => Err(KernelError::Invalid(format!(
            "attention core: {what} is {}, not f32 or bool",
            t.dtype()
        ))),
        _ => Err(KernelError::Invalid(format!(
            "attention core: {what} is missing"
        ))),
    }
}

impl Kernel for AttentionCore {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let (npre, npost) = (Self::extras(&self.pre), Self::extras(&self.post));
        if inputs.len() != 3 + npre + npost {
            return Err(KernelError::Invalid(format!(
                "attention core: {} inputs, expected {}",
                inputs.len(),
                3 + npre + npost
            )));
        }
        let mut ins = Vec::with_capacity(inputs.len());
        for (i, v) in inputs.iter().enumerate() {
            let what = ["Q", "K", "V"]
                .get(i)
                .map_or(format!("input {i}"), |s| s.to_string());
            ins.push(owned(*v, &what)?);
        }
        let f32_of = |i: usize| -> KResult<&[f32]> {
            match &ins[i].1 {
                Owned::F32(x) => Ok(x),
                Owned::Bool(_) => Err(KernelError::Invalid(format!(
                    "attention core: input {i} is bool, not f32"
                ))),
            }
        };
        let q = operand_view(f32_of(0)?, ins[0].0.shape(), &self.q, "Q")?;
        let k = operand_view(f32_of(1)?, ins[1].0.shape(), &self.k, "K")?;
        let v = operand_view(f32_of(2)?, ins[2].0.shape(), &self.v, "V")?;
        let (m, kd, n, d) = (q.rows(), q.cols(), k.cols(), v.cols());
        if k.rows() != kd || v.rows() != n {
            return Err(KernelError::Invalid(format!(
                "attention core: Q {:?}, K {:?} and V {:?} do not chain as Q·K then ·V",
                q.shape, k.shape, v.shape
            )));
        }
        let batch = broadcast_shapes(&[q.batch(), k.batch()])?;
        if broadcast_shapes(&[&batch, v.batch()])? != batch {
            return Err(KernelError::Invalid(format!(
                "attention core: V's batch dims {:?} enlarge the scores' {batch:?}",
                v.batch()
            )));
        }
        let mut full = batch.clone();
        full.extend([m, n]);
        let extras: Vec<Extra> = (3..inputs.len())
            .map(|i| {
                let src = match &ins[i].1 {
                    Owned::F32(x) => Src::F32(x),
                    Owned::Bool(x) => Src::Bool(x),
                };
                extra(ins[i].0, src, &full, &format!("input {i}"))
            })
            .collect::<KResult<_>>()?;
        let (pre_x, post_x) = extras.split_at(npre);
        let slices: usize = batch.iter().product();
        let mut out_shape = batch.clone();
        out_shape.extend([m, d]);
        // Heads last: slice `bi` = (b, h) puts its row `i` at `((b·M + i)·H + h)·D`.
        let heads = match (self.heads_last, &batch[..]) {
            (false, _) => 0,
            (true, &[_, h]) => {
                out_shape.swap(1, 2);
                h
            }
            (true, _) => {
                return Err(KernelError::Invalid(format!(
                    "attention core: a heads-last output needs batch dims [B, H], not {batch:?}"
                )))
            }
        };
        let alpha = self.q.scale * self.k.scale;
        let (pre, post) = (self.pre.as_ref(), self.post.as_ref());
        let plan = RowPlan::of(pre, post);

        // One slice: scores, programs, softmax, times V into the `m × d` block at `y` (rows
        // `ldy` apart). The caller has checked that the block lies in the output and that no
        // other slice writes it.
        let slice = |g: &Gemm, bi: usize, y: OutPtr, ldy: usize, s: &mut Scratch| {
            let mut idx = vec![0usize; batch.len()];
            let mut r = bi;
            for ax in (0..batch.len()).rev() {
                idx[ax] = r % batch[ax];
                r /= batch[ax];
            }
            s.a.resize(m * n, 0.0);
            s.b.resize(m * n, 0.0);
            let (qa, lq, tq) = q.matrix(&idx, &mut s.qs);
            let (kb, lk, tk) = k.matrix(&idx, &mut s.ks);
            if kd == 0 {
                s.a.fill(0.0);
            } else {
                g.sgemm(
                    m,
                    n,
                    kd,
                    alpha,
                    qa,
                    lq,
                    tq,
                    kb,
                    lk,
                    tk,
                    0.0,
                    &mut s.a,
                    n.max(1),
                    Epilogue::NONE,
                );
            }
            // The chain value lives in `a` or `b`; each program writes the other.
            let step = |p: &MapProgram, xs: &[Extra], from: &[f32], to: &mut [f32]| {
                let mut srcs = vec![Src::F32(from)];
                srcs.extend(xs.iter().map(|x| x.at(&idx)));
                let mn = [m, n];
                let mut shapes: Vec<&[usize]> = vec![&mn[..]];
                shapes.extend(xs.iter().map(|x| &x.mat[..]));
                eval_into(p, &srcs, &shapes, &mn, to);
            };
            let mut in_a = true;
            // The programs fused into the softmax's row loop when they are steps it knows;
            // otherwise each is a pass over the slice.
            let fused = plan.as_ref().and_then(|plan| {
                let pre: Option<Vec<_>> = plan
                    .pre
                    .iter()
                    .map(|&(op, x)| Some((op, pre_x[x].row_arg(&idx, n)?)))
                    .collect();
                let nan_to = match plan.nan_to {
                    Some(x) => Some(post_x[x].row_arg(&idx, n)?),
                    None => None,
                };
                Some((pre?, nan_to))
            });
            if let Some((pre_steps, nan_to)) = fused {
                vmath::softmax_rows_fused(&mut s.a, n, &pre_steps, nan_to);
            } else {
                if let Some(p) = pre {
                    step(p, pre_x, &s.a, &mut s.b);
                    in_a = false;
                }
                vmath::softmax_rows_in_place(if in_a { &mut s.a } else { &mut s.b }, n);
                if let Some(p) = post {
                    if in_a {
                        step(p, post_x, &s.a, &mut s.b);
                    } else {
                        step(p, post_x, &s.b, &mut s.a);
                    }
                    in_a = !in_a;
                }
            }
            let cur = if in_a { &s.a } else { &s.b };
            let (vb, lv, tv) = v.matrix(&idx, &mut s.vs);
            if n == 0 {
                for i in 0..m {
                    // SAFETY: row `i` of this slice's block (see above).
                    unsafe { std::ptr::write_bytes(y.at(i * ldy), 0, d) };
                }
            } else {
                // SAFETY: this slice's block (see above).
                unsafe {
                    g.sgemm_ops_raw(
                        m,
                        d,
                        n,
                        self.v.scale,
                        AOperand::Matrix {
                            a: cur,
                            lda: n,
                            trans: false,
                        },
                        BOperand::Matrix {
                            b: vb,
                            ldb: lv,
                            trans: tv,
                        },
                        0.0,
                        y.at(0),
                        ldy,
                        Epilogue::NONE,
                    )
                };
            }
        };

        let g = default_gemm();
        let threads = rayon::current_num_threads();
        let out = cx.tensor_dirty::<f32>(out_shape, |o| {
            let per = m * d;
            if per == 0 {
                return;
            }
            // Slice `bi` writes its `m × d` block at `at`, rows `ldy` apart: contiguous, or
            // with heads last, row `i` of (b, h) at `((b·M + i)·H + h)·D`, interleaved with
            // the other heads' rows (so written through a pointer, not a `&mut` part).
            let ldy = if heads > 0 { heads * d } else { d };
            let (dst, len) = (OutPtr(o.as_mut_ptr()), o.len());
            let one = |g: &Gemm, bi: usize, s: &mut Scratch| {
                let at = if heads > 0 {
                    let (b, h) = (bi / heads, bi % heads);
                    (b * m * heads + h) * d
                } else {
                    bi * per
                };
                assert!(
                    at + (m - 1) * ldy + d <= len,
                    "attention core: slice {bi} out of bounds"
                );
                slice(g, bi, OutPtr(dst.at(at)), ldy, s);
            };
            if threads > 1 && slices >= threads {
                // Slices in parallel, each GEMM on one thread.
                let g1 = g.with_threads(1);
                (0..slices)
                    .into_par_iter()
                    .with_max_len(1)
                    .for_each_init(Scratch::default, |s, bi| one(&g1, bi, s));
            } else {
                let mut s = Scratch::default();
                for bi in 0..slices {
                    one(g, bi, &mut s);
                }
            }
        })?;
        Ok(vec![out.into()])
    }
}

/// Per-thread buffers: the scores and their successor, and copies of operands that cannot
/// be read in place.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    qs: Vec<f32>,
    ks: Vec<f32>,
    vs: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::MapOp;

    /// How Q, K and V are stored: heads-major as the core reads them, or in the projection's
    /// `[B, S, H, D]` layout with the permutation the graph's Transpose has.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        b: usize,
        h: usize,
        m: usize,
        n: usize,
        kd: usize,
        d: usize,
        q_t: bool,
        k_t: bool,
        v_t: bool,
        k_bcast: bool,
        mask: u8,
        scrub: bool,
        /// A `· 1` after the programs (exact), which keeps them off the softmax's fused row
        /// steps: the passes of the general program path.
        generic: bool,
        /// The output as `[B, M, H, D]`.
        heads_last: bool,
        seed: u64,
    }

    /// Deterministic values in [-2, 2).
    fn vals(n: usize, seed: u64) -> Vec<f32> {
        super::super::ort_tests::rand(n, seed)
            .into_iter()
            .map(|x| 2.0 * x)
            .collect()
    }

    /// Element `(bi, hi, r, c)` of an operand stored heads-major (`[B, H, R, C]`) or, when
    /// `projected`, as `[B, R, H, C]` (`transposed_k`: `[B, C, H, R]`, K's layout).
    fn at(
        x: &[f32],
        dims: (usize, usize, usize, usize),
        projected: bool,
        k_layout: bool,
        i: (usize, usize, usize, usize),
    ) -> f64 {
        let (_, h, r, c) = dims;
        let (bi, hi, ri, ci) = i;
        let off = match (projected, k_layout) {
            (false, _) => ((bi * h + hi) * r + ri) * c + ci,
            (true, false) => ((bi * r + ri) * h + hi) * c + ci,
            (true, true) => ((bi * c + ci) * h + hi) * r + ri,
        };
        x[off] as f64
    }

    fn run_case(c: Case) -> Result<(), TestCaseError> {
        let Case {
            b, h, m, n, kd, d, ..
        } = c;
        let kb = if c.k_bcast { 1 } else { b };
        let q = vals(b * h * m * kd, c.seed);
        let k = vals(kb * h * kd * n, c.seed + 1);
        let v = vals(b * h * n * d, c.seed + 2);
        // Mask: none, per key `[B, 1, 1, N]`, or per query and key `[B, 1, M, N]`; some −∞,
        // and with the scrub a whole row of −∞ (NaN out of Softmax, 0 after the scrub).
        let mask_shape = match c.mask {
            1 => Some(vec![b, 1, 1, n]),
            2 => Some(vec![b, 1, m, n]),
            _ => None,
        };
        let mask: Option<Vec<f32>> = mask_shape.as_ref().map(|s| {
            let len: usize = s.iter().product();
            vals(len, c.seed + 3)
                .into_iter()
                .enumerate()
                .map(|(i, x)| {
                    let whole_row = c.scrub && i < s[3];
                    if whole_row || x > 1.5 {
                        f32::NEG_INFINITY
                    } else {
                        x
                    }
                })
                .collect()
        });
        let (sq, sk, sv) = (0.5f32, 0.75f32, 1.25f32);
        let shape_of = |t: bool, k_layout: bool, bb: usize, r: usize, cc: usize| match (t, k_layout)
        {
            (false, _) => vec![bb, h, r, cc],
            (true, false) => vec![bb, r, h, cc],
            (true, true) => vec![bb, cc, h, r],
        };
        let perm = |t: bool, k_layout: bool| {
            t.then(|| {
                if k_layout {
                    vec![0, 2, 3, 1]
                } else {
                    vec![0, 2, 1, 3]
                }
            })
        };
        // K in projected layout is `[B, N, H, Kd]` read as `[B, H, Kd, N]`.
        let k_proj = c.k_t && !c.k_bcast;
        let tq = Tensor::from_vec(shape_of(c.q_t, false, b, m, kd), q.clone()).unwrap();
        let tk = Tensor::from_vec(shape_of(k_proj, true, kb, kd, n), k.clone()).unwrap();
        let tv = Tensor::from_vec(shape_of(c.v_t, false, b, n, d), v.clone()).unwrap();
        let core = AttentionCore::new(AttentionCore {
            q: Operand {
                perm: perm(c.q_t, false),
                scale: sq,
            },
            k: Operand {
                perm: perm(k_proj, true),
                scale: sk,
            },
            v: Operand {
                perm: perm(c.v_t, false),
                scale: sv,
            },
            pre: mask.as_ref().map(|_| MapProgram {
                inputs: 2,
                ops: vec![MapOp::Add(0, 1)],
            }),
            post: match (c.scrub, c.generic) {
                (true, false) => Some(MapProgram {
                    inputs: 2,
                    ops: vec![MapOp::IsNaN(0), MapOp::Where(2, 1, 0)],
                }),
                (true, true) => Some(MapProgram {
                    inputs: 3,
                    ops: vec![MapOp::IsNaN(0), MapOp::Where(3, 1, 0), MapOp::Mul(4, 2)],
                }),
                (false, true) => Some(MapProgram {
                    inputs: 2,
                    ops: vec![MapOp::Mul(0, 1)],
                }),
                (false, false) => None,
            },
            heads_last: c.heads_last,
        })
        .unwrap();
        prop_assert_eq!(
            RowPlan::of(core.pre.as_ref(), core.post.as_ref()).is_some(),
            !c.generic
        );
        let mut vals_in = vec![Value::Tensor(tq), Value::Tensor(tk), Value::Tensor(tv)];
        if let (Some(s), Some(mv)) = (&mask_shape, &mask) {
            vals_in.push(Value::Tensor(
                Tensor::from_vec(s.clone(), mv.clone()).unwrap(),
            ));
        }
        if c.scrub {
            vals_in.push(Value::Tensor(Tensor::scalar(0f32)));
        }
        if c.generic {
            vals_in.push(Value::Tensor(Tensor::scalar(1f32)));
        }
        let refs: Vec<Option<&Value>> = vals_in.iter().map(Some).collect();
        let out = core
            .run(&refs, &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        let want_shape = if c.heads_last {
            [b, m, h, d]
        } else {
            [b, h, m, d]
        };
        prop_assert_eq!(out.shape(), &want_shape[..]);
        let got = view::<f32>(&out).unwrap();
        // The definition, in f64.
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..m {
                    let mut s: Vec<f64> = (0..n)
                        .map(|j| {
                            let dot: f64 = (0..kd)
                                .map(|p| {
                                    at(&q, (b, h, m, kd), c.q_t, false, (bi, hi, i, p))
                                        * sq as f64
                                        * at(
                                            &k,
                                            (kb, h, kd, n),
                                            k_proj,
                                            true,
                                            (if c.k_bcast { 0 } else { bi }, hi, p, j),
                                        )
                                        * sk as f64
                                })
                                .sum();
                            let mk = match c.mask {
                                1 => mask.as_ref().unwrap()[bi * n + j] as f64,
                                2 => mask.as_ref().unwrap()[(bi * m + i) * n + j] as f64,
                                _ => 0.0,
                            };
                            dot + mk
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for x in s.iter_mut() {
                        *x = (*x - mx).exp();
                        sum += *x;
                    }
                    for x in s.iter_mut() {
                        *x /= sum;
                        if c.scrub && x.is_nan() {
                            *x = 0.0;
                        }
                    }
                    for e in 0..d {
                        let want: f64 = (0..n)
                            .map(|j| {
                                s[j] * at(&v, (b, h, n, d), c.v_t, false, (bi, hi, j, e))
                                    * sv as f64
                            })
                            .sum();
                        let at_out = if c.heads_last {
                            ((bi * m + i) * h + hi) * d + e
                        } else {
                            ((bi * h + hi) * m + i) * d + e
                        };
                        let g = got[at_out] as f64;
                        let ok = (g.is_nan() && want.is_nan())
                            || (g - want).abs() <= 1e-4 * (1.0 + want.abs());
                        prop_assert!(ok, "{c:?} at ({bi},{hi},{i},{e}): {g} vs {want}");
                    }
                }
            }
        }
        Ok(())
    }

    /// See `fused_row_steps_are_bit_identical_to_the_program_passes`. A step is `(op,
    /// chain on the left, argument shape)`; shapes 0..4 are `[1, 1]`, `[1, n]`, `[m, 1]`,
    /// `[m, n]`.
    fn fused_matches_passes(
        m: usize,
        n: usize,
        steps: &[(u8, bool, u8)],
        scrub: Option<u8>,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let dims = |shape: u8| match shape {
            0 => [1, 1],
            1 => [1, n],
            2 => [m, 1],
            _ => [m, n],
        };
        // Scores with −∞ (a whole row of them in row 0) and a NaN.
        let mut x = vals(m * n, seed);
        for (i, v) in x.iter_mut().enumerate() {
            if i < n || *v > 1.7 {
                *v = f32::NEG_INFINITY;
            } else if *v < -1.95 {
                *v = f32::NAN;
            }
        }
        let mut args: Vec<(Vec<f32>, [usize; 2])> = Vec::new();
        let mut ops = Vec::new();
        for (k, &(op, left, shape)) in steps.iter().enumerate() {
            let (chain, arg) = (
                (if k == 0 { 0 } else { 1 + steps.len() + k - 1 }) as u16,
                (1 + k) as u16,
            );
            let (a, b) = if left { (chain, arg) } else { (arg, chain) };
            ops.push(match op {
                0 => MapOp::Add(a, b),
                1 => MapOp::Sub(a, b),
                2 => MapOp::Mul(a, b),
                _ => MapOp::Div(a, b),
            });
            let d = dims(shape);
            // Away from 0, so that no division makes every score infinite.
            let v = vals(d[0] * d[1], seed + 1 + k as u64)
                .into_iter()
                .map(|v| v + 3.0f32.copysign(v))
                .collect();
            args.push((v, d));
        }
        let pre = (!steps.is_empty()).then(|| MapProgram {
            inputs: 1 + steps.len(),
            ops,
        });
        let post = scrub.map(|_| MapProgram {
            inputs: 2,
            ops: vec![MapOp::IsNaN(0), MapOp::Where(2, 1, 0)],
        });
        let c = scrub.map(|shape| {
            let d = dims(shape);
            (vals(d[0] * d[1], seed + 99), d)
        });
        let plan = RowPlan::of(pre.as_ref(), post.as_ref());
        prop_assert!(plan.is_some());
        let plan = plan.unwrap();
        let full = [m, n];
        fn as_extra((v, d): &(Vec<f32>, [usize; 2])) -> Extra<'_> {
            Extra {
                src: Src::F32(v),
                mat: *d,
                batch_strides: Vec::new(),
            }
        }
        let pre_x: Vec<Extra> = args.iter().map(as_extra).collect();
        let post_x: Vec<Extra> = c.iter().map(as_extra).collect();
        // The fused row steps.
        let mut got = x.clone();
        let pre_steps: Vec<_> = plan
            .pre
            .iter()
            .map(|&(op, i)| (op, pre_x[i].row_arg(&[], n).unwrap()))
            .collect();
        let nan_to = plan.nan_to.map(|i| post_x[i].row_arg(&[], n).unwrap());
        vmath::softmax_rows_fused(&mut got, n, &pre_steps, nan_to);
        // The programs' passes.
        let pass = |p: &MapProgram, xs: &[Extra], from: &[f32]| {
            let mut srcs = vec![Src::F32(from)];
            srcs.extend(xs.iter().map(|x| x.src));
            let mut shapes: Vec<&[usize]> = vec![&full[..]];
            shapes.extend(xs.iter().map(|x| &x.mat[..]));
            let mut to = vec![0f32; from.len()];
            eval_into(p, &srcs, &shapes, &full, &mut to);
            to
        };
        let mut want = match &pre {
            Some(p) => pass(p, &pre_x, &x),
            None => x.clone(),
        };
        vmath::softmax_rows_in_place(&mut want, n);
        if let Some(p) = &post {
            want = pass(p, &post_x, &want);
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "element {i}: {g} vs {w} ({steps:?}, scrub {scrub:?})"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// Odd sizes (one included), every operand layout, K broadcast over the batch,
        /// both mask shapes, the NaN scrub, against the definition in f64.
        #[test]
        fn attention_core_matches_the_definition(
            b in 1usize..4, h in 1usize..4, m in 1usize..20, n in 1usize..20,
            kd in 1usize..12, d in 1usize..12,
            q_t: bool, k_t: bool, v_t: bool, k_bcast: bool,
            mask in 0u8..3, scrub: bool, generic: bool, heads_last: bool, seed: u64,
        ) {
            run_case(Case {
                b, h, m, n, kd, d, q_t, k_t, v_t, k_bcast, mask, scrub, generic, heads_last,
                seed,
            })?;
        }

        /// The programs run as the softmax's fused row steps give the same bits as the
        /// programs' own passes around the softmax: every step op, the chain value on
        /// either side, arguments of every broadcast shape, −∞ and NaN in the scores.
        #[test]
        fn fused_row_steps_are_bit_identical_to_the_program_passes(
            m in 1usize..6, n in 0usize..40,
            steps in proptest::collection::vec((0u8..4, any::<bool>(), 0u8..4), 0..4),
            scrub in proptest::option::of(0u8..4), seed: u64,
        ) {
            fused_matches_passes(m, n, &steps, scrub, seed)?;
        }
    }

    #[test]
    fn many_slices_run_in_parallel_and_agree() {
        // 2 × 12 slices of 64 × 64: the threaded path, both output layouts.
        for heads_last in [false, true] {
            run_case(Case {
                b: 2,
                h: 12,
                m: 64,
                n: 64,
                kd: 16,
                d: 16,
                q_t: true,
                k_t: true,
                v_t: true,
                k_bcast: false,
                mask: 1,
                scrub: true,
                generic: false,
                heads_last,
                seed: 7,
            })
            .unwrap();
        }
    }

    #[test]
    fn mismatched_operands_are_an_error_not_a_panic() {
        let core = AttentionCore::new(AttentionCore {
            q: Operand::plain(),
            k: Operand::plain(),
            v: Operand::plain(),
            pre: None,
            post: None,
            heads_last: false,
        })
        .unwrap();
        let t = |s: &[usize]| {
            Value::Tensor(Tensor::from_vec(s.to_vec(), vec![0f32; s.iter().product()]).unwrap())
        };
        let (q, k, v) = (t(&[2, 3, 4]), t(&[2, 5, 6]), t(&[2, 6, 2]));
        let e = core
            .run(&[Some(&q), Some(&k), Some(&v)], &mut RunCx::new())
            .unwrap_err();
        assert!(e.to_string().contains("do not chain"), "{e}");
        let bad_perm = AttentionCore {
            q: Operand {
                perm: Some(vec![0, 0, 1]),
                scale: 1.0,
            },
            ..core.clone()
        };
        let k = t(&[2, 4, 6]);
        let e = bad_perm
            .run(&[Some(&q), Some(&k), Some(&v)], &mut RunCx::new())
            .unwrap_err();
        assert!(e.to_string().contains("permutation"), "{e}");
        // Heads last needs batch dims [B, H]; these scores have one batch dim.
        let heads_last = AttentionCore {
            heads_last: true,
            ..core.clone()
        };
        let (q, k, v) = (t(&[2, 3, 4]), t(&[2, 4, 5]), t(&[2, 5, 2]));
        let e = heads_last
            .run(&[Some(&q), Some(&k), Some(&v)], &mut RunCx::new())
            .unwrap_err();
        assert!(e.to_string().contains("heads-last"), "{e}");
    }
}
