//! Broadcast iteration by contiguous runs: the output is walked along its innermost
//! (coalesced) dimension, and each input is either contiguous along that run or constant
//! on it. The inner loops are plain slice loops the compiler can vectorize.

use crate::error::KernelError;
use crate::kernels::par::for_chunks;
use crate::kernels::util::{broadcast_shapes, broadcast_strides};

/// How `K` inputs broadcast to an output, as runs: the output is walked along its innermost
/// (coalesced) dimension in runs of `len` elements, and each input is either contiguous
/// along a run (step 1) or constant on it (step 0).
pub(crate) struct Runs<const K: usize> {
    /// Outer dims (size-1 dims dropped, mergeable dims merged), innermost excluded.
    dims: Vec<usize>,
    /// Per outer dim, each input's stride.
    st: Vec<[usize; K]>,
    /// Elements per run.
    pub len: usize,
    steps: [usize; K],
    /// Number of runs.
    pub count: usize,
}

impl<const K: usize> Runs<K> {
    /// `None` when the output is empty.
    pub(crate) fn new(out: &[usize], shapes: [&[usize]; K]) -> Option<Runs<K>> {
        let n: usize = out.iter().product();
        if n == 0 {
            return None;
        }
        // Strides per input, dims of size 1 dropped, adjacent dims merged where every input
        // is laid out the same across both.
        let full: Vec<Vec<usize>> = shapes.iter().map(|s| broadcast_strides(s, out)).collect();
        let mut dims: Vec<usize> = Vec::with_capacity(out.len());
        let mut st: Vec<[usize; K]> = Vec::with_capacity(out.len());
        for (ax, &d) in out.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let s: [usize; K] = std::array::from_fn(|k| full[k][ax]);
            if let (Some(pd), Some(ps)) = (dims.last_mut(), st.last_mut()) {
                if (0..K).all(|k| ps[k] == s[k] * d) {
                    *pd *= d;
                    *ps = s;
                    continue;
                }
            }
            dims.push(d);
            st.push(s);
        }
        let (len, steps) = match (dims.pop(), st.pop()) {
            (Some(d), Some(s)) => (d, s),
            _ => (1, [0; K]),
        };
        Some(Runs {
            dims,
            st,
            len,
            steps,
            count: n / len,
        })
    }

    /// Calls `f(out_start, offsets, steps, len)` for runs `r0..r1`, where input `k` starts
    /// at `offsets[k]` and advances by `steps[k]` per element.
    pub(crate) fn walk(
        &self,
        r0: usize,
        r1: usize,
        mut f: impl FnMut(usize, [usize; K], [usize; K], usize),
    ) {
        let r = self.dims.len();
        let mut idx = vec![0usize; r];
        let mut offs = [0usize; K];
        let mut rem = r0;
        for ax in (0..r).rev() {
            idx[ax] = rem % self.dims[ax];
            rem /= self.dims[ax];
            for k in 0..K {
                offs[k] += idx[ax] * self.st[ax][k];
            }
        }
        for o in r0..r1 {
            f(o * self.len, offs, self.steps, self.len);
            for ax in (0..r).rev() {
                idx[ax] += 1;
                for k in 0..K {
                    offs[k] += self.st[ax][k];
                }
                if idx[ax] < self.dims[ax] {
                    break;
                }
                for k in 0..K {
                    offs[k] -= self.st[ax][k] * self.dims[ax];
                }
                idx[ax] = 0;
            }
        }
    }
}

/// Calls `f(out_start, offsets, steps, len)` for each run of the broadcast of `shapes` to
/// `out` (see [`Runs`]).
pub(crate) fn for_each_run<const K: usize>(
    out: &[usize],
    shapes: [&[usize]; K],
    f: impl FnMut(usize, [usize; K], [usize; K], usize),
) {
    if let Some(runs) = Runs::new(out, shapes) {
        runs.walk(0, runs.count, f);
    }
}

/// `out[i] = f(a[..], b[..])` over `a` and `b` broadcast to `out_shape`; large outputs are
/// split across threads.
#[inline]
pub(crate) fn binary_into<A: Sync, B: Sync, O: Send>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    out_shape: &[usize],
    out: &mut [O],
    f: impl Fn(&A, &B) -> O + Sync,
) {
    if ash == bsh {
        for_chunks(out, 1, |s, out| {
            let n = out.len();
            for ((o, x), y) in out.iter_mut().zip(&a[s..s + n]).zip(&b[s..s + n]) {
                *o = f(x, y);
            }
        });
        return;
    }
    let Some(runs) = Runs::new(out_shape, [ash, bsh]) else {
        return;
    };
    let len = runs.len;
    for_chunks(out, len, |s, chunk| {
        let r0 = s / len;
        runs.walk(r0, r0 + chunk.len() / len, |o, [ia, ib], [sa, sb], len| {
            let out = &mut chunk[o - s..o - s + len];
            match (sa, sb) {
                (1, 1) => {
                    for ((o, x), y) in out.iter_mut().zip(&a[ia..ia + len]).zip(&b[ib..ib + len]) {
                        *o = f(x, y);
                    }
                }
                (1, _) => {
                    let y = &b[ib];
                    for (o, x) in out.iter_mut().zip(&a[ia..ia + len]) {
                        *o = f(x, y);
                    }
                }
                (_, 1) => {
                    let x = &a[ia];
                    for (o, y) in out.iter_mut().zip(&b[ib..ib + len]) {
                        *o = f(x, y);
                    }
                }
                _ => {
                    let x = &a[ia];
                    let y = &b[ib];
                    for o in out.iter_mut() {
                        *o = f(x, y);
                    }
                }
            }
        });
    });
}

/// `acc[i] = f(acc[i], b[..])` with `b` broadcast to `acc`'s shape `shape`.
#[inline]
pub(crate) fn accumulate<A, B>(
    acc: &mut [A],
    shape: &[usize],
    b: &[B],
    bsh: &[usize],
    f: impl Fn(&A, &B) -> A,
) {
    if shape == bsh {
        for (o, y) in acc.iter_mut().zip(b) {
            *o = f(o, y);
        }
        return;
    }
    for_each_run(shape, [bsh], |o, [ib], [sb], len| {
        let acc = &mut acc[o..o + len];
        if sb == 1 {
            for (o, y) in acc.iter_mut().zip(&b[ib..ib + len]) {
                *o = f(o, y);
            }
        } else {
            let y = &b[ib];
            for o in acc.iter_mut() {
                *o = f(o, y);
            }
        }
    });
}

/// `out[i] = f(a[..], b[..], c[..])` over three inputs broadcast to `out_shape`; large
/// outputs are split across threads.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn ternary_into<A: Sync, B: Sync, C: Sync, O: Send>(
    (a, ash): (&[A], &[usize]),
    (b, bsh): (&[B], &[usize]),
    (c, csh): (&[C], &[usize]),
    out_shape: &[usize],
    out: &mut [O],
    f: impl Fn(&A, &B, &C) -> O + Sync,
) {
    if ash == bsh && bsh == csh {
        for_chunks(out, 1, |s, out| {
            let n = out.len();
            for (((o, x), y), z) in out
                .iter_mut()
                .zip(&a[s..s + n])
                .zip(&b[s..s + n])
                .zip(&c[s..s + n])
            {
                *o = f(x, y, z);
            }
        });
        return;
    }
    let Some(runs) = Runs::new(out_shape, [ash, bsh, csh]) else {
        return;
    };
    let len = runs.len;
    for_chunks(out, len, |s, chunk| {
        let r0 = s / len;
        runs.walk(
            r0,
            r0 + chunk.len() / len,
            |o, [ia, ib, ic], [sa, sb, sc], len| {
                let out = &mut chunk[o - s..o - s + len];
                match (sa, sb, sc) {
                    // Where(cond, x, y) with a scalar x or y: the common masking shapes.
                    (1, 1, 1) => {
                        for (j, o) in out.iter_mut().enumerate() {
                            *o = f(&a[ia + j], &b[ib + j], &c[ic + j]);
                        }
                    }
                    (1, 0, 0) => {
                        let (y, z) = (&b[ib], &c[ic]);
                        for (o, x) in out.iter_mut().zip(&a[ia..ia + len]) {
                            *o = f(x, y, z);
                        }
                    }
                    (1, 0, 1) => {
                        let y = &b[ib];
                        for ((o, x), z) in
                            out.iter_mut().zip(&a[ia..ia + len]).zip(&c[ic..ic + len])
                        {
                            *o = f(x, y, z);
                        }
                    }
                    (1, 1, 0) => {
                        let z = &c[ic];
                        for ((o, x), y) in
                            out.iter_mut().zip(&a[ia..ia + len]).zip(&b[ib..ib + len])
                        {
                            *o = f(x, y, z);
                        }
                    }
                    // A condition fixed along the run (a per-row mask): one operand streams.
                    (0, 0, 1) => {
                        let (x, y) = (&a[ia], &b[ib]);
                        for (o, z) in out.iter_mut().zip(&c[ic..ic + len]) {
                            *o = f(x, y, z);
                        }
                    }
                    (0, 1, 0) => {
                        let (x, z) = (&a[ia], &c[ic]);
                        for (o, y) in out.iter_mut().zip(&b[ib..ib + len]) {
                            *o = f(x, y, z);
                        }
                    }
                    (0, 1, 1) => {
                        let x = &a[ia];
                        for ((o, y), z) in
                            out.iter_mut().zip(&b[ib..ib + len]).zip(&c[ic..ic + len])
                        {
                            *o = f(x, y, z);
                        }
                    }
                    _ => {
                        for (j, o) in out.iter_mut().enumerate() {
                            *o = f(&a[ia + j * sa], &b[ib + j * sb], &c[ic + j * sc]);
                        }
                    }
                }
            },
        );
    });
}

/// The broadcast of two shapes.
pub(crate) fn shape2(a: &[usize], b: &[usize]) -> Result<Vec<usize>, KernelError> {
    if a == b {
        return Ok(a.to_vec());
    }
    broadcast_shapes(&[a, b])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[usize], b: &[usize]) -> (Vec<usize>, Vec<(usize, usize)>) {
        let out = broadcast_shapes(&[a, b]).unwrap();
        let (sa, sb) = (broadcast_strides(a, &out), broadcast_strides(b, &out));
        let n: usize = out.iter().product();
        let mut v = Vec::new();
        for i in 0..n {
            let mut rem = i;
            let (mut oa, mut ob) = (0, 0);
            for ax in (0..out.len()).rev() {
                let x = rem % out[ax];
                rem /= out[ax];
                oa += x * sa[ax];
                ob += x * sb[ax];
            }
            v.push((oa, ob));
        }
        (out, v)
    }

    #[test]
    fn runs_match_naive_indexing() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[4]),
            (&[2, 3, 4], &[3, 1]),
            (&[2, 1, 4], &[1, 3, 1]),
            (&[1], &[5, 1, 2]),
            (&[], &[3, 2]),
            (&[3, 1, 1, 2], &[1, 4, 5, 1]),
            (&[2, 0, 3], &[1, 3]),
            (&[1, 1], &[1]),
        ];
        for (a, b) in cases {
            let (out, want) = naive(a, b);
            let na: usize = a.iter().product();
            let nb: usize = b.iter().product();
            let av: Vec<usize> = (0..na).collect();
            let bv: Vec<usize> = (0..nb).collect();
            let mut got = vec![(0, 0); want.len()];
            binary_into(&av, a, &bv, b, &out, &mut got, |&x, &y| (x, y));
            assert_eq!(got, want, "{a:?} with {b:?}");
            // walking from any run gives the same offsets as walking from the start
            if let Some(runs) = Runs::new(&out, [*a, *b]) {
                for r0 in 0..runs.count {
                    runs.walk(r0, runs.count, |o, [ia, ib], [sa, sb], len| {
                        for j in 0..len {
                            assert_eq!(
                                (ia + j * sa, ib + j * sb),
                                want[o + j],
                                "{a:?} {b:?} from {r0}"
                            );
                        }
                    });
                }
            }
            // accumulate agrees too
            if out == a.to_vec() {
                let mut acc: Vec<(usize, usize)> = av.iter().map(|&x| (x, usize::MAX)).collect();
                accumulate(&mut acc, &out, &bv, b, |&(x, _), &y| (x, y));
                assert_eq!(acc, want);
            }
        }
    }
}
