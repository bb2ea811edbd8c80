//! `Einsum`: any equation (ellipses, repeated labels / diagonals, implicit outputs,
//! broadcasting). Operands are contracted pairwise, left to right; each pairwise
//! contraction is a batched GEMM over (batch, rows, inner, cols) label groups. Labels that
//! no later operand or the output needs are summed away first.

use kiln_ir::Op;

use super::gemm::{widen, Field};
use super::KResult;
use crate::error::KernelError;
use crate::kernel::{tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::num::{view, Num};
use crate::kernels::util::{for_each_broadcast, strides};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    match op {
        Op::Einsum(o) => Some(Ok(Box::new(EinsumK {
            equation: o.equation.clone(),
        }))),
        _ => None,
    }
}

struct EinsumK {
    equation: String,
}

/// Label ids: letters are their code points; ellipsis dims `ELL + position`.
const ELL: u32 = 1 << 16;

#[derive(Debug)]
struct Term {
    labels: Vec<u32>,
    /// Position of the ellipsis among `labels`, if any.
    ell: Option<usize>,
}

fn parse_term(s: &str) -> KResult<Term> {
    let mut labels = Vec::new();
    let mut ell = None;
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("...") {
            if ell.is_some() {
                return Err(KernelError::Invalid(format!(
                    "Einsum term `{s}` has two ellipses"
                )));
            }
            ell = Some(labels.len());
            rest = r;
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        if !c.is_ascii_alphabetic() {
            return Err(KernelError::Invalid(format!(
                "Einsum term `{s}` has an invalid label `{c}`"
            )));
        }
        labels.push(c as u32);
        rest = &rest[1..];
    }
    Ok(Term { labels, ell })
}

/// The parsed equation with ellipses expanded: labels of each operand and of the output.
pub(crate) fn plan(equation: &str, ranks: &[usize]) -> KResult<(Vec<Vec<u32>>, Vec<u32>)> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<Term> = lhs.split(',').map(parse_term).collect::<KResult<_>>()?;
    if terms.len() != ranks.len() {
        return Err(KernelError::Invalid(format!(
            "Einsum `{equation}` has {} operands, got {} inputs",
            terms.len(),
            ranks.len()
        )));
    }
    // Rank covered by the ellipsis in each operand, and overall.
    let mut ell_rank = 0;
    let mut ops = Vec::with_capacity(terms.len());
    for (t, &r) in terms.iter().zip(ranks) {
        let n = t.labels.len();
        let e = match t.ell {
            Some(_) if r >= n => r - n,
            None if r == n => 0,
            _ => {
                return Err(KernelError::Invalid(format!(
                    "Einsum `{equation}`: an operand of rank {r} does not fit its term"
                )))
            }
        };
        ell_rank = ell_rank.max(e);
        ops.push(e);
    }
    let expand = |t: &Term, e: usize| -> Vec<u32> {
        let mut v = Vec::with_capacity(t.labels.len() + e);
        let split = t.ell.unwrap_or(t.labels.len());
        v.extend_from_slice(&t.labels[..split]);
        v.extend((ell_rank - e..ell_rank).map(|i| ELL + i as u32));
        v.extend_from_slice(&t.labels[split..]);
        v
    };
    let inputs: Vec<Vec<u32>> = terms.iter().zip(&ops).map(|(t, &e)| expand(t, e)).collect();
    let output = match rhs {
        Some(r) => {
            let t = parse_term(r)?;
            let out = expand(&t, if t.ell.is_some() { ell_rank } else { 0 });
            for (i, l) in out.iter().enumerate() {
                if out[..i].contains(l) {
                    return Err(KernelError::Invalid(format!(
                        "Einsum output label repeated in `{equation}`"
                    )));
                }
                if !inputs.iter().any(|x| x.contains(l)) {
                    return Err(KernelError::Invalid(format!(
                        "Einsum output label not in the inputs of `{equation}`"
                    )));
                }
            }
            out
        }
        None => {
            let mut once: Vec<u32> = Vec::new();
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
            let mut out: Vec<u32> = (0..ell_rank).map(|i| ELL + i as u32).collect();
            out.extend(once);
            out
        }
    };
    Ok((inputs, output))
}

/// A strided view of owned data with one dim per distinct label.
struct LView<F> {
    data: Vec<F>,
    labels: Vec<u32>,
    dims: Vec<usize>,
    strides: Vec<usize>,
}

impl<F: Field> LView<F> {
    /// Sums the labels not in `keep` and lays the rest out contiguously in `order`
    /// (which must list exactly the kept labels).
    fn reduce_to(&self, order: &[u32]) -> LView<F> {
        let out_dims: Vec<usize> = order.iter().map(|l| self.dims[self.pos(*l)]).collect();
        let ost = strides(&out_dims);
        let mut dst_st = vec![0usize; self.labels.len()];
        for (k, l) in order.iter().enumerate() {
            dst_st[self.pos(*l)] = ost[k];
        }
        let n: usize = out_dims.iter().product();
        let mut data = vec![F::ZERO; n];
        let st = [self.strides.clone(), dst_st];
        for_each_broadcast(&self.dims, &st, |_, o| {
            data[o[1]] = data[o[1]].wadd(self.data[o[0]])
        });
        LView {
            data,
            labels: order.to_vec(),
            dims: out_dims,
            strides: ost,
        }
    }

    fn pos(&self, l: u32) -> usize {
        self.labels.iter().position(|&x| x == l).unwrap_or(0)
    }

    fn dim(&self, l: u32) -> usize {
        self.dims[self.pos(l)]
    }
}

/// Contracts `a` and `b`, keeping the labels in `keep` (and summing the others).
fn contract<F: Field>(a: &LView<F>, b: &LView<F>, keep: &[u32]) -> LView<F> {
    let in_b = |l: &u32| b.labels.contains(l);
    let in_a = |l: &u32| a.labels.contains(l);
    let kept = |l: &u32| keep.contains(l);
    let batch: Vec<u32> = a
        .labels
        .iter()
        .copied()
        .filter(|l| in_b(l) && kept(l))
        .collect();
    let inner: Vec<u32> = a
        .labels
        .iter()
        .copied()
        .filter(|l| in_b(l) && !kept(l))
        .collect();
    let rows: Vec<u32> = a
        .labels
        .iter()
        .copied()
        .filter(|l| !in_b(l) && kept(l))
        .collect();
    let cols: Vec<u32> = b
        .labels
        .iter()
        .copied()
        .filter(|l| !in_a(l) && kept(l))
        .collect();
    let order_a: Vec<u32> = batch.iter().chain(&rows).chain(&inner).copied().collect();
    let order_b: Vec<u32> = batch.iter().chain(&inner).chain(&cols).copied().collect();
    let ra = a.reduce_to(&order_a);
    let rb = b.reduce_to(&order_b);
    let size = |v: &LView<F>, ls: &[u32]| ls.iter().map(|&l| v.dim(l)).product::<usize>();
    let (nb, m, k, n) = (
        size(&ra, &batch),
        size(&ra, &rows),
        size(&ra, &inner),
        size(&rb, &cols),
    );
    let mut data = vec![F::ZERO; nb * m * n];
    if m * n > 0 {
        for bi in 0..nb {
            F::gemm(
                m,
                n,
                k,
                &ra.data[bi * m * k..],
                k,
                1,
                &rb.data[bi * k * n..],
                n,
                1,
                &mut data[bi * m * n..],
                n,
            );
        }
    }
    let labels: Vec<u32> = batch.iter().chain(&rows).chain(&cols).copied().collect();
    let dims: Vec<usize> = batch
        .iter()
        .chain(&rows)
        .map(|&l| ra.dim(l))
        .chain(cols.iter().map(|&l| rb.dim(l)))
        .collect();
    let st = strides(&dims);
    LView {
        data,
        labels,
        dims,
        strides: st,
    }
}

/// Evaluates the einsum on operands already in the compute type.
pub(crate) fn einsum<F: Field>(
    ops: Vec<(Vec<F>, Vec<usize>)>,
    equation: &str,
) -> KResult<(Vec<usize>, Vec<F>)> {
    let ranks: Vec<usize> = ops.iter().map(|(_, s)| s.len()).collect();
    let (terms, output) = plan(equation, &ranks)?;
    // Size of every label (broadcasting 1s).
    let mut sizes: Vec<(u32, usize)> = Vec::new();
    for ((_, shape), t) in ops.iter().zip(&terms) {
        for (&l, &d) in t.iter().zip(shape) {
            match sizes.iter_mut().find(|(x, _)| *x == l) {
                Some((_, s)) if *s == d || d == 1 => {}
                Some((_, s)) if *s == 1 => *s = d,
                Some((_, s)) => {
                    return Err(KernelError::Invalid(format!(
                        "Einsum `{equation}`: a label has sizes {s} and {d}"
                    )))
                }
                None => sizes.push((l, d)),
            }
        }
    }
    let size_of = |l: u32| {
        sizes
            .iter()
            .find(|(x, _)| *x == l)
            .map(|(_, s)| *s)
            .unwrap_or(1)
    };
    // Views with repeated labels merged (diagonals) and size-1 dims broadcast.
    let mut views: Vec<LView<F>> = Vec::with_capacity(ops.len());
    for ((data, shape), t) in ops.into_iter().zip(&terms) {
        let st = strides(&shape);
        let mut v = LView {
            data,
            labels: Vec::new(),
            dims: Vec::new(),
            strides: Vec::new(),
        };
        for (i, &l) in t.iter().enumerate() {
            let full = size_of(l);
            let s = if shape[i] == 1 && full != 1 { 0 } else { st[i] };
            match v.labels.iter().position(|&x| x == l) {
                Some(p) => v.strides[p] += s,
                None => {
                    v.labels.push(l);
                    v.dims.push(full);
                    v.strides.push(s);
                }
            }
        }
        views.push(v);
    }
    let mut it = views.into_iter();
    let mut cur = it.next().ok_or("Einsum needs at least one operand")?;
    let rest: Vec<LView<F>> = it.collect();
    for (i, next) in rest.iter().enumerate() {
        let mut keep: Vec<u32> = output.clone();
        for later in &rest[i + 1..] {
            keep.extend(later.labels.iter().copied());
        }
        cur = contract(&cur, next, &keep);
    }
    let res = cur.reduce_to(&output);
    Ok((res.dims, res.data))
}

impl Kernel for EinsumK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let first = tensor_input(inputs, 0)?;
        let dt = first.dtype();
        crate::with_numeric!(dt, T => {
            let mut ops = Vec::with_capacity(inputs.len());
            for i in 0..inputs.len() {
                let t = tensor_input(inputs, i)?;
                if t.dtype() != dt {
                    return Err(KernelError::Invalid(format!("Einsum operands of {dt} and {}", t.dtype())));
                }
                let v = view::<T>(t)?;
                ops.push((widen(&v).into_owned(), t.shape().to_vec()));
            }
            let (shape, data) = einsum::<<T as Num>::A>(ops, &self.equation)?;
            let t = cx.tensor::<T>(shape, |o| {
                for (o, v) in o.iter_mut().zip(data) {
                    *o = T::from_a(v);
                }
            })?;
            Ok(vec![t.into()])
        }, else Err(KernelError::Unsupported(format!("Einsum of {dt} tensors"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ein(eq: &str, ops: Vec<(Vec<f64>, Vec<usize>)>) -> (Vec<usize>, Vec<f64>) {
        einsum::<f64>(ops, eq).unwrap()
    }

    #[test]
    fn matmul_transpose_trace_and_diagonal() {
        let a = (vec![1., 2., 3., 4., 5., 6.], vec![2, 3]);
        let b = (vec![1., 0., 0., 1., 1., 1.], vec![3, 2]);
        assert_eq!(
            ein("ij,jk->ik", vec![a.clone(), b.clone()]),
            (vec![2, 2], vec![4., 5., 10., 11.])
        );
        assert_eq!(
            ein("ij,jk", vec![a.clone(), b.clone()]),
            (vec![2, 2], vec![4., 5., 10., 11.])
        );
        assert_eq!(
            ein("ij->ji", vec![a.clone()]),
            (vec![3, 2], vec![1., 4., 2., 5., 3., 6.])
        );
        assert_eq!(ein("ij->", vec![a.clone()]), (vec![], vec![21.]));
        let sq = (vec![1., 2., 3., 4.], vec![2, 2]);
        assert_eq!(ein("ii", vec![sq.clone()]), (vec![], vec![5.]));
        assert_eq!(ein("ii->i", vec![sq.clone()]), (vec![2], vec![1., 4.]));
        // Implicit output: labels once, alphabetical ("ba" -> "ab" is a transpose).
        assert_eq!(
            ein("ba", vec![a.clone()]),
            (vec![3, 2], vec![1., 4., 2., 5., 3., 6.])
        );
    }

    #[test]
    fn ellipsis_broadcast_and_three_operands() {
        // Batch matmul with a broadcast batch dim.
        let a = (vec![1., 2., 3., 4.], vec![2, 1, 2]);
        let b = (vec![1., 1.], vec![1, 2, 1]);
        assert_eq!(
            ein("...ij,...jk->...ik", vec![a, b]),
            (vec![2, 1, 1], vec![3., 7.])
        );
        // Outer product then contraction: sum_i x_i y_i z_i.
        let x = (vec![1., 2.], vec![2]);
        let y = (vec![3., 4.], vec![2]);
        let z = (vec![5., 6.], vec![2]);
        assert_eq!(
            ein("i,i,i->", vec![x.clone(), y.clone(), z]),
            (vec![], vec![63.])
        );
        assert_eq!(
            ein("i,j->ij", vec![x, y]),
            (vec![2, 2], vec![3., 4., 6., 8.])
        );
        // Batch diagonal: "...ii->...i".
        let d = (vec![1., 2., 3., 4., 5., 6., 7., 8.], vec![2, 2, 2]);
        assert_eq!(
            ein("...ii->...i", vec![d]),
            (vec![2, 2], vec![1., 4., 5., 8.])
        );
    }
}
