//! Index ops: `Gather`, `GatherElements`, `GatherND`, `Scatter`, `ScatterElements`,
//! `ScatterND`, `TensorScatter`, `OneHot`, `NonZero`, `Unique`.

use std::borrow::Cow;
use std::cmp::Ordering;

use kiln_ir::{DType, Element, Op, Tensor};

use super::{ints, with_lane, wrap_index, KResult, Lane};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::util::{norm_axis, strides};
use crate::value::Value;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<KResult<Box<dyn Kernel>>> {
    let k: Box<dyn Kernel> = match op {
        Op::Gather(o) => Box::new(Gather { axis: o.axis }),
        Op::GatherElements(o) => Box::new(GatherElements { axis: o.axis }),
        Op::GatherND(o) => Box::new(GatherND {
            batch_dims: o.batch_dims,
        }),
        Op::Scatter(o) => Box::new(ScatterElements {
            axis: o.axis,
            reduction: Reduction::None,
        }),
        Op::ScatterElements(o) => match Reduction::parse(&o.reduction) {
            Ok(reduction) => Box::new(ScatterElements {
                axis: o.axis,
                reduction,
            }),
            Err(e) => return Some(Err(e)),
        },
        Op::ScatterND(o) => match Reduction::parse(&o.reduction) {
            Ok(reduction) => Box::new(ScatterND { reduction }),
            Err(e) => return Some(Err(e)),
        },
        Op::TensorScatter(o) => {
            let circular = match o.mode.as_str() {
                "linear" => false,
                "circular" => true,
                m => {
                    return Some(Err(KernelError::Unsupported(format!(
                        "TensorScatter mode {m:?}"
                    ))))
                }
            };
            Box::new(TensorScatter {
                axis: o.axis,
                circular,
            })
        }
        Op::OneHot(o) => Box::new(OneHot { axis: o.axis }),
        Op::NonZero(_) => Box::new(NonZero),
        Op::Unique(o) => Box::new(Unique {
            axis: o.axis,
            sorted: o.sorted,
            n_out: cx.output_types.len().max(1),
        }),
        _ => return None,
    };
    Some(Ok(k))
}

fn one(t: Tensor) -> KResult<Vec<Value>> {
    Ok(vec![Value::Tensor(t)])
}

/// The elements of `t` as `T` (borrowed when aligned).
fn typed<T: Element>(t: &Tensor) -> KResult<Cow<'_, [T]>> {
    if let Some(s) = t.as_slice::<T>() {
        return Ok(Cow::Borrowed(s));
    }
    t.to_vec::<T>().map(Cow::Owned).ok_or_else(|| {
        KernelError::Invalid(format!("expected {} elements, got {}", T::DTYPE, t.dtype()))
    })
}

/// Indices normalized into `0..d` (negative ones wrap once).
fn norm_indices(t: &Tensor, d: usize, what: &str) -> KResult<Vec<usize>> {
    ints(t, what)?
        .into_iter()
        .map(|i| wrap_index(i, d, what))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Gathers.

struct Gather {
    axis: i64,
}

impl Kernel for Gather {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let q = tensor_input(inputs, 1)?;
        if x.rank() == 0 {
            return Err("Gather: cannot gather from a scalar".into());
        }
        let a = norm_axis(self.axis, x.rank())?;
        let s = x.shape();
        let d = s[a];
        let idx = norm_indices(q, d, "Gather index")?;
        let outer: usize = s[..a].iter().product();
        let inner: usize = s[a + 1..].iter().product();
        let mut out = s[..a].to_vec();
        out.extend_from_slice(q.shape());
        out.extend_from_slice(&s[a + 1..]);
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), out.clone(), |dst| {
                if inner == 0 {
                    return;
                }
                let mut o = 0;
                for p in 0..outer {
                    let base = p * d;
                    if inner == 1 {
                        for &i in &idx {
                            dst[o] = src[base + i].clone();
                            o += 1;
                        }
                    } else {
                        for &i in &idx {
                            let from = (base + i) * inner;
                            dst[o..o + inner].clone_from_slice(&src[from..from + inner]);
                            o += inner;
                        }
                    }
                }
            })
        })?;
        one(t)
    }
}

/// Calls `f(position, offset)` for each position of `shape` (row-major), with `offset` the
/// position's offset under `st` leaving out `skip`'s term.
fn for_each_offset(shape: &[usize], st: &[usize], skip: usize, mut f: impl FnMut(usize, usize)) {
    let n: usize = shape.iter().product();
    if n == 0 {
        return;
    }
    let r = shape.len();
    let mut idx = vec![0usize; r];
    let mut off = 0usize;
    for pos in 0..n {
        f(pos, off);
        for k in (0..r).rev() {
            idx[k] += 1;
            if k != skip {
                off += st[k];
            }
            if idx[k] < shape[k] {
                break;
            }
            if k != skip {
                off -= st[k] * shape[k];
            }
            idx[k] = 0;
        }
    }
}

/// Checks that `q`'s shape fits inside `data`'s except along `axis`.
fn check_elementwise_shapes(data: &[usize], q: &[usize], axis: usize, op: &str) -> KResult<()> {
    if data.len() != q.len() {
        return Err(KernelError::Invalid(format!(
            "{op}: data {data:?} and indices {q:?} differ in rank"
        )));
    }
    for k in 0..data.len() {
        if k != axis && q[k] > data[k] {
            return Err(KernelError::Invalid(format!(
                "{op}: indices {q:?} exceed data {data:?}"
            )));
        }
    }
    Ok(())
}

struct GatherElements {
    axis: i64,
}

impl Kernel for GatherElements {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let q = tensor_input(inputs, 1)?;
        if x.rank() == 0 {
            return Err("GatherElements: cannot gather from a scalar".into());
        }
        let a = norm_axis(self.axis, x.rank())?;
        check_elementwise_shapes(x.shape(), q.shape(), a, "GatherElements")?;
        let idx = norm_indices(q, x.shape()[a], "GatherElements index")?;
        let st = strides(x.shape());
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), q.shape().to_vec(), |dst| {
                for_each_offset(q.shape(), &st, a, |pos, off| dst[pos] = src[off + idx[pos] * st[a]].clone());
            })
        })?;
        one(t)
    }
}

/// Flat element offsets into `data` of the index tuples of ND-indices `q` (last dim k), for
/// `batch_dims` leading batch dims: one offset per tuple, and the size of the block each
/// tuple addresses.
fn nd_offsets(
    data: &[usize],
    q: &Tensor,
    batch_dims: usize,
    op: &str,
) -> KResult<(Vec<usize>, usize)> {
    let qs = q.shape();
    let (r, m) = (data.len(), qs.len());
    if m == 0 || r == 0 {
        return Err(KernelError::Invalid(format!(
            "{op}: data and indices need rank >= 1"
        )));
    }
    let k = qs[m - 1];
    if batch_dims >= r.min(m) || k < 1 || batch_dims + k > r {
        return Err(KernelError::Invalid(format!(
            "{op}: indices {qs:?} with batch_dims {batch_dims} do not fit data {data:?}"
        )));
    }
    if data[..batch_dims] != qs[..batch_dims] {
        return Err(KernelError::Invalid(format!(
            "{op}: batch dims of {data:?} and {qs:?} differ"
        )));
    }
    let raw = ints(q, &format!("{op} indices"))?;
    let st = strides(data);
    let block: usize = data[batch_dims + k..].iter().product();
    let batch_size: usize = data[batch_dims..].iter().product();
    let per_batch: usize = qs[batch_dims..m - 1].iter().product();
    let n_tuples = raw.len() / k;
    let mut offs = Vec::with_capacity(n_tuples);
    for j in 0..n_tuples {
        let b = j.checked_div(per_batch).unwrap_or(0);
        let mut off = b * batch_size;
        for (c, &i) in raw[j * k..(j + 1) * k].iter().enumerate() {
            let ax = batch_dims + c;
            off += wrap_index(i, data[ax], &format!("{op} index"))? * st[ax];
        }
        offs.push(off);
    }
    Ok((offs, block))
}

struct GatherND {
    batch_dims: i64,
}

impl Kernel for GatherND {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let q = tensor_input(inputs, 1)?;
        let b = usize::try_from(self.batch_dims).map_err(|_| "GatherND: negative batch_dims")?;
        let (offs, block) = nd_offsets(x.shape(), q, b, "GatherND")?;
        let qs = q.shape();
        let k = qs[qs.len() - 1];
        let mut out = qs[..qs.len() - 1].to_vec();
        out.extend_from_slice(&x.shape()[b + k..]);
        let t = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), out.clone(), |dst| {
                for (j, &off) in offs.iter().enumerate() {
                    dst[j * block..(j + 1) * block].clone_from_slice(&src[off..off + block]);
                }
            })
        })?;
        one(t)
    }
}

// ---------------------------------------------------------------------------------------------
// Scatters.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl Reduction {
    fn parse(s: &str) -> KResult<Reduction> {
        Ok(match s {
            "none" => Reduction::None,
            "add" => Reduction::Add,
            "mul" => Reduction::Mul,
            "max" => Reduction::Max,
            "min" => Reduction::Min,
            r => return Err(KernelError::Unsupported(format!("scatter reduction {r:?}"))),
        })
    }
}

/// Numbers a scatter can reduce into.
trait Reduce: Element + PartialOrd {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
}

macro_rules! reduce_int {
    ($($t:ty),*) => {$(impl Reduce for $t {
        fn add(self, o: Self) -> Self { self.wrapping_add(o) }
        fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
    })*};
}
reduce_int!(i8, i16, i32, i64, u8, u16, u32, u64);

macro_rules! reduce_float {
    ($($t:ty),*) => {$(impl Reduce for $t {
        fn add(self, o: Self) -> Self { self + o }
        fn mul(self, o: Self) -> Self { self * o }
    })*};
}
reduce_float!(f32, f64);

macro_rules! reduce_half {
    ($($t:ty),*) => {$(impl Reduce for $t {
        fn add(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() + o.to_f32()) }
        fn mul(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() * o.to_f32()) }
    })*};
}
reduce_half!(half::f16, half::bf16);

/// Combines `upd` into `dst` along `walk` with reduction `r` (one monomorphized loop each).
fn reduce_into<T: Reduce>(dst: &mut [T], upd: &[T], r: Reduction, walk: &impl ScatterWalk) {
    match r {
        Reduction::None => walk.walk(|d, u| dst[d] = upd[u]),
        Reduction::Add => walk.walk(|d, u| dst[d] = dst[d].add(upd[u])),
        Reduction::Mul => walk.walk(|d, u| dst[d] = dst[d].mul(upd[u])),
        Reduction::Max => walk.walk(|d, u| {
            if upd[u] > dst[d] {
                dst[d] = upd[u]
            }
        }),
        Reduction::Min => walk.walk(|d, u| {
            if upd[u] < dst[d] {
                dst[d] = upd[u]
            }
        }),
    }
}

/// A scatter's walk over its updates.
trait ScatterWalk {
    /// Calls `put(data offset, update offset)` for each update element, in order.
    fn walk(&self, put: impl FnMut(usize, usize));
}

/// `ScatterElements`: each update lands at its own position with the axis index replaced.
struct ElementsWalk<'a> {
    shape: &'a [usize],
    strides: &'a [usize],
    axis: usize,
    idx: &'a [usize],
}

impl ScatterWalk for ElementsWalk<'_> {
    fn walk(&self, mut put: impl FnMut(usize, usize)) {
        let sa = self.strides[self.axis];
        for_each_offset(self.shape, self.strides, self.axis, |pos, off| {
            put(off + self.idx[pos] * sa, pos)
        });
    }
}

/// `ScatterND`: update block `j` lands at data offset `offs[j]`.
struct NdWalk<'a> {
    offs: &'a [usize],
    block: usize,
}

impl ScatterWalk for NdWalk<'_> {
    fn walk(&self, mut put: impl FnMut(usize, usize)) {
        for (j, &off) in self.offs.iter().enumerate() {
            for e in 0..self.block {
                put(off + e, j * self.block + e);
            }
        }
    }
}

/// A copy of `data` with `updates` combined in along `walk`: plain element moves for
/// reduction `none` (any dtype), typed reductions otherwise.
fn scatter_into(
    data: &Tensor,
    updates: &Tensor,
    reduction: Reduction,
    cx: &mut RunCx,
    walk: &impl ScatterWalk,
) -> KResult<Tensor> {
    if updates.dtype() != data.dtype() {
        return Err(KernelError::Invalid(format!(
            "scatter: updates are {} for {} data",
            updates.dtype(),
            data.dtype()
        )));
    }
    if reduction == Reduction::None {
        return with_lane!(data.dtype(), T => {
            let src = T::view(data)?;
            let upd = T::view(updates)?;
            T::make(cx, data.dtype(), data.shape().to_vec(), |dst| {
                dst.clone_from_slice(&src);
                walk.walk(|d, u| dst[d] = upd[u].clone());
            })
        });
    }
    crate::with_numeric!(data.dtype(), T => {
        let src = typed::<T>(data)?;
        let upd = typed::<T>(updates)?;
        cx.tensor::<T>(data.shape().to_vec(), |dst| {
            dst.copy_from_slice(&src);
            reduce_into(dst, &upd, reduction, walk);
        })
    }, else Err(KernelError::Unsupported(format!("scatter reduction {reduction:?} on {}", data.dtype()))))
}

struct ScatterElements {
    axis: i64,
    reduction: Reduction,
}

impl Kernel for ScatterElements {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let q = tensor_input(inputs, 1)?;
        let u = tensor_input(inputs, 2)?;
        if x.rank() == 0 {
            return Err("ScatterElements: cannot scatter into a scalar".into());
        }
        let a = norm_axis(self.axis, x.rank())?;
        check_elementwise_shapes(x.shape(), q.shape(), a, "ScatterElements")?;
        if u.shape() != q.shape() {
            return Err(KernelError::Invalid(format!(
                "ScatterElements: updates {:?} for indices {:?}",
                u.shape(),
                q.shape()
            )));
        }
        let idx = norm_indices(q, x.shape()[a], "ScatterElements index")?;
        let st = strides(x.shape());
        let walk = ElementsWalk {
            shape: q.shape(),
            strides: &st,
            axis: a,
            idx: &idx,
        };
        let t = scatter_into(x, u, self.reduction, cx, &walk)?;
        one(t)
    }
}

struct ScatterND {
    reduction: Reduction,
}

impl Kernel for ScatterND {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let q = tensor_input(inputs, 1)?;
        let u = tensor_input(inputs, 2)?;
        let (offs, block) = nd_offsets(x.shape(), q, 0, "ScatterND")?;
        let qs = q.shape();
        let k = qs[qs.len() - 1];
        let mut want = qs[..qs.len() - 1].to_vec();
        want.extend_from_slice(&x.shape()[k..]);
        if u.shape() != want {
            return Err(KernelError::Invalid(format!(
                "ScatterND: updates {:?}, expected {want:?}",
                u.shape()
            )));
        }
        let t = scatter_into(x, u, self.reduction, cx, &NdWalk { offs: &offs, block })?;
        one(t)
    }
}

struct TensorScatter {
    axis: i64,
    circular: bool,
}

impl Kernel for TensorScatter {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let cache = tensor_input(inputs, 0)?;
        let upd = tensor_input(inputs, 1)?;
        let r = cache.rank();
        if r == 0 {
            return Err("TensorScatter: the cache must have rank >= 1".into());
        }
        let a = norm_axis(self.axis, r)?;
        let (cs, us) = (cache.shape(), upd.shape());
        if us.len() != r
            || (0..r).any(|k| {
                if k == a {
                    us[k] > cs[k]
                } else {
                    us[k] != cs[k]
                }
            })
        {
            return Err(KernelError::Invalid(format!(
                "TensorScatter: update {us:?} does not fit cache {cs:?}"
            )));
        }
        if upd.dtype() != cache.dtype() {
            return Err("TensorScatter: cache and update types differ".into());
        }
        let batch = if a == 0 { 1 } else { cs[0] };
        let wi = match opt_tensor_input(inputs, 2)? {
            Some(t) => ints(t, "TensorScatter write_indices")?,
            None => vec![0; batch],
        };
        if wi.len() < batch {
            return Err(KernelError::Invalid(format!(
                "TensorScatter: {} write indices for batch {batch}",
                wi.len()
            )));
        }
        let (max, seq) = (cs[a], us[a]);
        let prefix: usize = cs[..a].iter().product();
        let per_batch: usize = if a == 0 { 1 } else { cs[1..a].iter().product() };
        let inner: usize = cs[a + 1..].iter().product();
        // Destination index along the axis for each (batch, step), checked up front.
        let mut pos = Vec::with_capacity(batch * seq);
        for &w in &wi[..batch] {
            for s in 0..seq as i64 {
                let p = w + s;
                let p = if self.circular && max > 0 {
                    p.rem_euclid(max as i64)
                } else {
                    p
                };
                if p < 0 || p as usize >= max {
                    return Err(KernelError::Invalid(format!(
                        "TensorScatter: write position {p} outside {max}"
                    )));
                }
                pos.push(p as usize);
            }
        }
        let t = with_lane!(cache.dtype(), T => {
            let src = T::view(cache)?;
            let u = T::view(upd)?;
            T::make(cx, cache.dtype(), cs.to_vec(), |dst| {
                dst.clone_from_slice(&src);
                for p in 0..prefix {
                    let b = p.checked_div(per_batch).unwrap_or(0);
                    for s in 0..seq {
                        let d = (p * max + pos[b * seq + s]) * inner;
                        let f = (p * seq + s) * inner;
                        dst[d..d + inner].clone_from_slice(&u[f..f + inner]);
                    }
                }
            })
        })?;
        one(t)
    }
}

// ---------------------------------------------------------------------------------------------
// OneHot, NonZero, Unique.

struct OneHot {
    axis: i64,
}

impl Kernel for OneHot {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let q = tensor_input(inputs, 0)?;
        let depth = tensor_input(inputs, 1)?;
        let values = tensor_input(inputs, 2)?;
        let idx = q.to_f64_vec().ok_or("OneHot: indices must be numeric")?;
        let depth = *depth
            .to_f64_vec()
            .ok_or("OneHot: depth must be numeric")?
            .first()
            .ok_or("OneHot: depth is empty")?;
        if depth.is_nan() || depth < 1.0 {
            return Err(KernelError::Invalid(format!(
                "OneHot: depth {depth} must be positive"
            )));
        }
        let depth = depth as usize;
        if values.len() != 2 {
            return Err(KernelError::Invalid(format!(
                "OneHot: values must hold [off, on], got {:?}",
                values.shape()
            )));
        }
        let r = q.rank() as i64 + 1;
        let a = if self.axis < 0 {
            self.axis + r
        } else {
            self.axis
        };
        if !(0..r).contains(&a) {
            return Err(KernelError::Invalid(format!(
                "OneHot: axis {} for output rank {r}",
                self.axis
            )));
        }
        let a = a as usize;
        let mut out = q.shape().to_vec();
        out.insert(a, depth);
        let inner: usize = q.shape()[a..].iter().product();
        let t = with_lane!(values.dtype(), T => {
            let v = T::view(values)?;
            let (off, on) = (v[0].clone(), v[1].clone());
            T::make(cx, values.dtype(), out.clone(), |dst| {
                dst.fill(off);
                for (pos, &i) in idx.iter().enumerate() {
                    let i = i.trunc();
                    let i = if i < 0.0 { i + depth as f64 } else { i };
                    if i >= 0.0 && i < depth as f64 {
                        let (o, n) = (pos / inner.max(1), pos % inner.max(1));
                        dst[(o * depth + i as usize) * inner + n] = on.clone();
                    }
                }
            })
        })?;
        one(t)
    }
}

struct NonZero;

/// Flat positions of the non-zero elements of `x` (NaN counts as non-zero; strings: non-empty).
fn nonzero_positions(x: &Tensor) -> KResult<Vec<usize>> {
    if let Some(s) = x.strings() {
        return Ok(s
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, _)| i)
            .collect());
    }
    crate::with_dtype!(x.dtype(), T => {
        let v = typed::<T>(x)?;
        let zero = T::default();
        Ok(v.iter().enumerate().filter(|(_, e)| **e != zero).map(|(i, _)| i).collect())
    }, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64], else {
        if x.dtype() == DType::Bool {
            Ok(x.bytes().iter().enumerate().filter(|(_, &b)| b != 0).map(|(i, _)| i).collect())
        } else {
            Err(KernelError::Unsupported(format!("NonZero on {}", x.dtype())))
        }
    })
}

impl Kernel for NonZero {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let pos = nonzero_positions(x)?;
        let st = strides(x.shape());
        let (r, n) = (x.rank(), pos.len());
        let t = cx.tensor::<i64>(vec![r, n], |dst| {
            for k in 0..r {
                for (j, &p) in pos.iter().enumerate() {
                    dst[k * n + j] = ((p / st[k]) % x.shape()[k]) as i64;
                }
            }
        })?;
        one(t)
    }
}

struct Unique {
    axis: Option<i64>,
    sorted: bool,
    n_out: usize,
}

/// Total order for sorting that puts NaN last and treats NaNs as equal (numpy's `unique`).
#[inline]
fn cmp_nan_last<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    match a.partial_cmp(b) {
        Some(o) => o,
        #[allow(clippy::eq_op)]
        None => (a != a).cmp(&(b != b)),
    }
}

/// Groups the `d` slices of `x` viewed as [outer, d, inner] into equal ones. Returns the
/// groups in output order (sorted by value, or by first occurrence): each group's first slice
/// index and size, and for each slice its group's position.
fn unique_groups<T: PartialOrd>(
    x: &[T],
    outer: usize,
    d: usize,
    inner: usize,
    sorted: bool,
) -> (Vec<(usize, usize)>, Vec<usize>) {
    let cmp = |i: usize, j: usize| -> Ordering {
        for o in 0..outer {
            let (a, b) = ((o * d + i) * inner, (o * d + j) * inner);
            for e in 0..inner {
                let c = cmp_nan_last(&x[a + e], &x[b + e]);
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
        Ordering::Equal
    };
    let mut order: Vec<usize> = (0..d).collect();
    // Stable: the first slice of each run of equal ones is the first occurrence.
    order.sort_by(|&i, &j| cmp(i, j));
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut group_of = vec![0usize; d];
    for (k, &i) in order.iter().enumerate() {
        if k == 0 || cmp(order[k - 1], i) != Ordering::Equal {
            groups.push((i, 0));
        }
        let g = groups.len() - 1;
        groups[g].1 += 1;
        group_of[i] = g;
    }
    if !sorted {
        let mut by_first: Vec<usize> = (0..groups.len()).collect();
        by_first.sort_by_key(|&g| groups[g].0);
        let mut rank = vec![0usize; groups.len()];
        for (p, &g) in by_first.iter().enumerate() {
            rank[g] = p;
        }
        group_of.iter_mut().for_each(|g| *g = rank[*g]);
        groups = by_first.iter().map(|&g| groups[g]).collect();
    }
    (groups, group_of)
}

impl Kernel for Unique {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let (outer, d, inner, axis) = match self.axis {
            None => (1, x.len(), 1, None),
            Some(a) => {
                if x.rank() == 0 {
                    return Err("Unique: cannot take slices of a scalar along an axis".into());
                }
                let a = norm_axis(a, x.rank())?;
                let s = x.shape();
                (
                    s[..a].iter().product(),
                    s[a],
                    s[a + 1..].iter().product(),
                    Some(a),
                )
            }
        };
        let sorted = self.sorted;
        let (groups, inverse) = if let Some(s) = x.strings() {
            unique_groups(s, outer, d, inner, sorted)
        } else {
            crate::with_dtype!(x.dtype(), T => {
                let v = typed::<T>(x)?;
                unique_groups(&v, outer, d, inner, sorted)
            }, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64], else {
                if x.dtype() == DType::Bool {
                    unique_groups(x.bytes(), outer, d, inner, sorted)
                } else {
                    return Err(KernelError::Unsupported(format!("Unique on {}", x.dtype())));
                }
            })
        };
        let u = groups.len();
        let y_shape = match axis {
            None => vec![u],
            Some(a) => {
                let mut s = x.shape().to_vec();
                s[a] = u;
                s
            }
        };
        let y = with_lane!(x.dtype(), T => {
            let src = T::view(x)?;
            T::make(cx, x.dtype(), y_shape.clone(), |dst| {
                let mut o = 0;
                for p in 0..outer {
                    for &(first, _) in &groups {
                        let s = (p * d + first) * inner;
                        dst[o..o + inner].clone_from_slice(&src[s..s + inner]);
                        o += inner;
                    }
                }
            })
        })?;
        let mut outs = vec![Value::Tensor(y)];
        if self.n_out > 1 {
            outs.push(Value::Tensor(cx.tensor::<i64>(vec![u], |o| {
                for (k, g) in groups.iter().enumerate() {
                    o[k] = g.0 as i64;
                }
            })?));
        }
        if self.n_out > 2 {
            outs.push(Value::Tensor(cx.tensor::<i64>(vec![d], |o| {
                for (k, &g) in inverse.iter().enumerate() {
                    o[k] = g as i64;
                }
            })?));
        }
        if self.n_out > 3 {
            outs.push(Value::Tensor(cx.tensor::<i64>(vec![u], |o| {
                for (k, g) in groups.iter().enumerate() {
                    o[k] = g.1 as i64;
                }
            })?));
        }
        Ok(outs)
    }
}
