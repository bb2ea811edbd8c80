//! Shape ops: kernels that move elements without computing on them (reshapes, transposes,
//! concatenation, slicing, gathers and scatters, padding …) and the small generators of this
//! family (`Shape`, `Range`, `ConstantOfShape`, `EyeLike`, …).
//!
//! Ops that do not look at values work on *lanes*: the element's bytes as an unsigned integer
//! of the element's size (`u8`, `u16`, `u32`, `u64`, `u128`), or `Vec<u8>` for strings. One
//! monomorphized code path then serves every fixed-size dtype. Sub-byte dtypes (int4 …) are
//! supported only by the ops that never split elements (`Reshape` and its kin, `BitCast`,
//! `Shape`, `Size`).

// Lane code is written once for `Copy` numbers and `Clone` strings; the `with_lane!` aliases
// make clippy see `.clone()` on the numbers.
#![allow(clippy::clone_on_copy)]

use std::borrow::Cow;

use kiln_ir::{DType, Op, Tensor};

use crate::error::KernelError;
use crate::kernel::{BuildCx, Kernel, RunCx};

mod generate;
mod index;
mod layout;
#[cfg(test)]
mod tests;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    if let Some(k) = layout::build(op, cx) {
        return Some(k);
    }
    if let Some(k) = index::build(op, cx) {
        return Some(k);
    }
    generate::build(op, cx)
}

type KResult<T> = Result<T, KernelError>;

/// The storage unit of one element, for kernels that only move elements.
pub(crate) trait Lane: Clone + Default + Send + Sync + 'static {
    /// The elements of `t` (borrowed when its bytes are aligned).
    fn view(t: &Tensor) -> KResult<Cow<'_, [Self]>>;
    /// A new tensor of `dtype` and `shape` whose elements `fill` writes (they start zeroed,
    /// or as empty strings).
    fn make(
        cx: &mut RunCx,
        dtype: DType,
        shape: Vec<usize>,
        fill: impl FnOnce(&mut [Self]),
    ) -> KResult<Tensor>;
}

macro_rules! pod_lane {
    ($($t:ty),*) => {$(
        impl Lane for $t {
            fn view(t: &Tensor) -> KResult<Cow<'_, [Self]>> {
                let b = t.bytes();
                if b.len() % std::mem::size_of::<$t>() != 0 || t.dtype() == DType::String {
                    return Err(KernelError::Invalid(format!("{} tensor viewed as {}-byte lanes", t.dtype(), std::mem::size_of::<$t>())));
                }
                Ok(match bytemuck::try_cast_slice(b) {
                    Ok(s) => Cow::Borrowed(s),
                    Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(b)),
                })
            }
            fn make(cx: &mut RunCx, dtype: DType, shape: Vec<usize>, fill: impl FnOnce(&mut [Self])) -> KResult<Tensor> {
                cx.tensor_bytes(dtype, shape, |b| fill(bytemuck::cast_slice_mut(b)))
            }
        }
    )*};
}
pod_lane!(u8, u16, u32, u64, u128);

impl Lane for Vec<u8> {
    fn view(t: &Tensor) -> KResult<Cow<'_, [Self]>> {
        t.strings()
            .map(Cow::Borrowed)
            .ok_or_else(|| KernelError::Invalid(format!("{} tensor viewed as strings", t.dtype())))
    }
    fn make(
        _cx: &mut RunCx,
        dtype: DType,
        shape: Vec<usize>,
        fill: impl FnOnce(&mut [Self]),
    ) -> KResult<Tensor> {
        if dtype != DType::String {
            return Err(KernelError::Invalid(format!(
                "{dtype} tensor made of strings"
            )));
        }
        let n = kiln_ir::tensor::checked_numel(&shape)?;
        let mut v = vec![Vec::new(); n];
        fill(&mut v);
        Ok(Tensor::from_strings(shape, v)?)
    }
}

/// Lane width of `dt`: 0 for strings, the byte size for byte-aligned types, `None` for
/// sub-byte types.
fn lane_bytes(dt: DType) -> Option<usize> {
    match dt {
        DType::String => Some(0),
        _ if dt.bits().is_multiple_of(8) && dt.bits() > 0 => Some(dt.bits() / 8),
        _ => None,
    }
}

/// `with_lane!(dtype, T => body)`: evaluates `body` (a `KResult`) with `T` the lane type of `dtype`.
macro_rules! with_lane {
    ($dt:expr, $T:ident => $body:expr) => {{
        let dt: kiln_ir::DType = $dt;
        match $crate::kernels::shape_ops::lane_bytes(dt) {
            Some(0) => {
                type $T = Vec<u8>;
                $body
            }
            Some(1) => {
                type $T = u8;
                $body
            }
            Some(2) => {
                type $T = u16;
                $body
            }
            Some(4) => {
                type $T = u32;
                $body
            }
            Some(8) => {
                type $T = u64;
                $body
            }
            Some(16) => {
                type $T = u128;
                $body
            }
            _ => Err($crate::error::KernelError::Unsupported(format!(
                "{dt} tensors in this op"
            ))),
        }
    }};
}
pub(crate) use with_lane;

/// A lane holding the value of the first element of `t` (which must have `T`'s dtype).
fn first_lane<T: Lane>(t: &Tensor) -> KResult<T> {
    let v = T::view(t)?;
    v.first().cloned().ok_or_else(|| {
        KernelError::Invalid("expected a one-element tensor, got an empty one".into())
    })
}

// ---------------------------------------------------------------------------------------------
// Shapes and indices.

/// Row-major strides of `shape` as signed integers.
fn istrides(shape: &[usize]) -> Vec<isize> {
    super::util::strides(shape)
        .into_iter()
        .map(|s| s as isize)
        .collect()
}

/// Integer elements of `t` (any integer dtype).
fn ints(t: &Tensor, what: &str) -> KResult<Vec<i64>> {
    t.to_i64_vec().ok_or_else(|| {
        KernelError::Invalid(format!(
            "{what} must be an integer tensor, got {}",
            t.dtype()
        ))
    })
}

/// Normalizes `axes` (possibly negative) for `rank`, rejecting duplicates.
fn norm_axes(axes: &[i64], rank: usize) -> KResult<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = super::util::norm_axis(a, rank)?;
        if out.contains(&n) {
            return Err(KernelError::Invalid(format!(
                "axis {a} appears twice in {axes:?}"
            )));
        }
        out.push(n);
    }
    Ok(out)
}

/// A dimension from an i64, rejecting negative values.
fn dim(v: i64, what: &str) -> KResult<usize> {
    usize::try_from(v).map_err(|_| KernelError::Invalid(format!("{what} {v} must not be negative")))
}

/// Index `i` into a dim of size `d`, wrapping negative values once.
#[inline]
fn wrap_index(i: i64, d: usize, what: &str) -> KResult<usize> {
    let di = d as i64;
    let j = if i < 0 { i + di } else { i };
    if j < 0 || j >= di {
        return Err(KernelError::Invalid(format!(
            "{what} {i} is out of range for a dim of {d}"
        )));
    }
    Ok(j as usize)
}

// ---------------------------------------------------------------------------------------------
// Strided copies: the engine behind every layout op.

/// Copies `src` into `dst` over the index space `shape`: for every index `i`,
/// `dst[d0 + Σ i_k·ds_k] = src[s0 + Σ i_k·ss_k]`. Strides may be zero (broadcast) or
/// negative (reversal). Adjacent dims that are contiguous in both are merged first, and the
/// innermost dim becomes a slice copy when both of its strides are 1.
fn copy_strided<T: Clone>(
    src: &[T],
    s0: isize,
    ss: &[isize],
    dst: &mut [T],
    d0: isize,
    ds: &[isize],
    shape: &[usize],
) {
    if shape.contains(&0) {
        return;
    }
    // Drop unit dims, then merge contiguous neighbours.
    let mut dims: Vec<(usize, isize, isize)> = Vec::with_capacity(shape.len());
    for k in 0..shape.len() {
        if shape[k] == 1 {
            continue;
        }
        if let Some(last) = dims.last_mut() {
            let (n, a, b) = (shape[k], ss[k], ds[k]);
            if last.1 == a * n as isize && last.2 == b * n as isize {
                last.0 *= n;
                last.1 = a;
                last.2 = b;
                continue;
            }
        }
        dims.push((shape[k], ss[k], ds[k]));
    }
    let Some(&(n, a, b)) = dims.last() else {
        dst[d0 as usize] = src[s0 as usize].clone();
        return;
    };
    let outer = &dims[..dims.len() - 1];
    // A transpose: the inner run strided in the source while the next dim is contiguous there.
    // Element by element, each step of the inner run would touch a new source cache line;
    // in tiles of TILE lines of that next dim, each source line serves TILE elements.
    const TILE: usize = 8;
    if let Some(&(m, 1, b2)) = outer.last().filter(|_| a != 1 && n >= TILE) {
        return for_each_offset(&outer[..outer.len() - 1], s0, d0, |s, d| {
            for i0 in (0..m).step_by(TILE) {
                let h = TILE.min(m - i0) as isize;
                let (s, d) = (s + i0 as isize, d + i0 as isize * b2);
                for j in 0..n as isize {
                    for i in 0..h {
                        dst[(d + i * b2 + j * b) as usize] = src[(s + i + j * a) as usize].clone();
                    }
                }
            }
        });
    }
    for_each_offset(outer, s0, d0, |s, d| {
        if a == 1 && b == 1 {
            dst[d as usize..d as usize + n].clone_from_slice(&src[s as usize..s as usize + n]);
        } else if a == 0 && b == 1 {
            dst[d as usize..d as usize + n].fill(src[s as usize].clone());
        } else {
            let (mut si, mut di) = (s, d);
            for _ in 0..n {
                dst[di as usize] = src[si as usize].clone();
                si += a;
                di += b;
            }
        }
    })
}

/// Calls `f(s, d)` with the source and destination offsets of every index of `dims`
/// (`(len, source stride, destination stride)`), the last dim fastest.
fn for_each_offset(
    dims: &[(usize, isize, isize)],
    s0: isize,
    d0: isize,
    mut f: impl FnMut(isize, isize),
) {
    let mut idx = vec![0usize; dims.len()];
    let (mut s, mut d) = (s0, d0);
    loop {
        f(s, d);
        let mut k = dims.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            s += dims[k].1;
            d += dims[k].2;
            if idx[k] < dims[k].0 {
                break;
            }
            s -= dims[k].1 * dims[k].0 as isize;
            d -= dims[k].2 * dims[k].0 as isize;
            idx[k] = 0;
        }
    }
}

/// A strided view of `src` (`shape`, offset `s0`, strides `ss`) copied out contiguously; a
/// large copy is split across threads along its first dim longer than 1.
fn gather_view<T: Clone + Send + Sync>(
    src: &[T],
    s0: isize,
    ss: &[isize],
    shape: &[usize],
    dst: &mut [T],
) {
    let Some(ax) = shape.iter().position(|&d| d > 1) else {
        return copy_strided(src, s0, ss, dst, 0, &istrides(shape), shape);
    };
    // At least 1, so that a copy with an empty inner dim (nothing to write) divides safely.
    let inner = shape[ax + 1..].iter().product::<usize>().max(1);
    crate::kernels::par::for_chunks(dst, inner, |start, chunk| {
        let i0 = start / inner;
        let mut part = shape.to_vec();
        part[ax] = chunk.len() / inner;
        let s = s0 + i0 as isize * ss[ax];
        copy_strided(src, s, ss, chunk, 0, &istrides(&part), &part);
    });
}

/// `dst` (contiguous, shape = the maps' lengths) gets `src[Σ_k maps[k][i_k]]`: each map holds,
/// per output index along its axis, the input offset (index times stride) along that axis.
fn copy_mapped<T: Clone>(src: &[T], maps: &[Vec<usize>], dst: &mut [T]) {
    if maps.iter().any(|m| m.is_empty()) {
        return;
    }
    let Some((inner, outer)) = maps.split_last() else {
        dst[0] = src[0].clone();
        return;
    };
    let mut idx = vec![0usize; outer.len()];
    let mut base: usize = outer.iter().map(|m| m[0]).sum();
    let mut o = 0;
    loop {
        for &off in inner {
            dst[o] = src[base + off].clone();
            o += 1;
        }
        let mut k = outer.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            base -= outer[k][idx[k]];
            idx[k] += 1;
            if idx[k] < outer[k].len() {
                base += outer[k][idx[k]];
                break;
            }
            idx[k] = 0;
            base += outer[k][0];
        }
    }
}
