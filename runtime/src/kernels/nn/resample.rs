//! Resampling and geometry kernels: Resize / Upsample (`resize`), GridSample / AffineGrid
//! (`grid`), RoiAlign / NonMaxSuppression (`boxes`), Col2Im / MaxUnpool (`scatter`).
//!
//! Arithmetic is done in f64; inputs of other float (and, where the spec allows, integer)
//! types are converted at the boundary.

use kiln_ir::{DType, Op, Tensor};

use crate::error::KernelError;
use crate::kernel::{BuildCx, Kernel, RunCx};

mod boxes;
mod grid;
mod resize;
mod scatter;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    Some(match op {
        Op::Resize(r) => resize::build_resize(r),
        Op::Upsample(u) => resize::build_upsample(u),
        Op::GridSample(g) => grid::build_grid_sample(g),
        Op::AffineGrid(a) => Ok(Box::new(grid::AffineGridK(a.align_corners)) as Box<dyn Kernel>),
        Op::RoiAlign(r) => boxes::build_roi_align(r),
        Op::NonMaxSuppression(n) => Ok(Box::new(boxes::NmsK {
            center_point_box: n.center_point_box,
        }) as Box<dyn Kernel>),
        Op::Col2Im(c) => Ok(Box::new(scatter::Col2ImK(c.clone())) as Box<dyn Kernel>),
        Op::MaxUnpool(m) => Ok(Box::new(scatter::MaxUnpoolK(m.clone())) as Box<dyn Kernel>),
        _ => return None,
    })
}

/// The elements of a float (or, with `ints`, integer) tensor as f64.
fn floats(t: &Tensor, what: &str, ints: bool) -> Result<Vec<f64>, KernelError> {
    let d = t.dtype();
    let ok = matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
        || (ints && d.is_int() && !matches!(d, DType::U4 | DType::I4 | DType::U2 | DType::I2));
    if !ok {
        return Err(KernelError::Unsupported(format!("{d} {what}")));
    }
    t.to_f64_vec()
        .ok_or_else(|| KernelError::Unsupported(format!("{d} {what}")))
}

/// The elements of an integer tensor as i64.
fn ints(t: &Tensor, what: &str) -> Result<Vec<i64>, KernelError> {
    if !t.dtype().is_int() {
        return Err(KernelError::Invalid(format!(
            "{what} must be an integer tensor, got {}",
            t.dtype()
        )));
    }
    t.to_i64_vec()
        .ok_or_else(|| KernelError::Unsupported(format!("{} {what}", t.dtype())))
}

/// A tensor of `dtype` from f64 values (integers are rounded toward zero and saturated,
/// as a C cast of the reference would).
fn from_f64(
    cx: &mut RunCx,
    dtype: DType,
    shape: Vec<usize>,
    v: &[f64],
) -> Result<Tensor, KernelError> {
    macro_rules! cast {
        ($t:ty, $f:expr) => {
            cx.tensor::<$t>(shape, |o| {
                o.iter_mut().zip(v).for_each(|(o, x)| *o = $f(*x))
            })?
        };
    }
    Ok(match dtype {
        DType::F32 => cast!(f32, |x: f64| x as f32),
        DType::F64 => cast!(f64, |x: f64| x),
        DType::F16 => cast!(half::f16, half::f16::from_f64),
        DType::BF16 => cast!(half::bf16, half::bf16::from_f64),
        DType::I8 => cast!(i8, |x: f64| x as i8),
        DType::U8 => cast!(u8, |x: f64| x as u8),
        DType::I16 => cast!(i16, |x: f64| x as i16),
        DType::U16 => cast!(u16, |x: f64| x as u16),
        DType::I32 => cast!(i32, |x: f64| x as i32),
        DType::U32 => cast!(u32, |x: f64| x as u32),
        DType::I64 => cast!(i64, |x: f64| x as i64),
        DType::U64 => cast!(u64, |x: f64| x as u64),
        d => return Err(KernelError::Unsupported(format!("{d} output"))),
    })
}

/// Keys' cubic convolution weights of the four taps around a point at fraction `t`
/// (in `[0, 1]`) past the second tap.
fn cubic_coeffs(t: f64, a: f64) -> [f64; 4] {
    let near = |x: f64| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Row-major multi-index iteration helper: advances `idx` within `shape`.
fn next_index(idx: &mut [usize], shape: &[usize]) {
    for d in (0..shape.len()).rev() {
        idx[d] += 1;
        if idx[d] < shape[d] {
            return;
        }
        idx[d] = 0;
    }
}
