//! Numeric element traits shared by the reduction and linear-algebra families.
//!
//! * [`Real`]: the compute type of float kernels (`f32` or `f64`).
//! * [`Float`]: a float element stored as itself and computed as its [`Real`] (`f16` and
//!   `bf16` compute in `f32`, as ONNX Runtime does).
//! * [`Num`]: any numeric element, with a wide accumulator ([`Acc`]: `f32`/`f64` for floats,
//!   `i64`/`u64` for integers, where wrapping arithmetic in the wide type then truncation
//!   gives the same result as wrapping arithmetic in the narrow one).

use std::borrow::Cow;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use kiln_ir::{Element, Tensor};

use crate::error::KernelError;

/// `f32` or `f64`.
pub(crate) trait Real:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn is_nan(self) -> bool;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    #[inline]
    fn from_usize(n: usize) -> Self {
        Self::from_f64(n as f64)
    }
}

macro_rules! real {
    ($t:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INF: Self = $t::NEG_INFINITY;
            #[inline]
            fn exp(self) -> Self {
                $t::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline]
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
real!(f32);
real!(f64);

/// A float element type and the type it computes in.
pub(crate) trait Float: Element + Copy + Default {
    type R: Real;
    fn to_r(self) -> Self::R;
    fn from_r(r: Self::R) -> Self;
}

impl Float for f32 {
    type R = f32;
    #[inline]
    fn to_r(self) -> f32 {
        self
    }
    #[inline]
    fn from_r(r: f32) -> f32 {
        r
    }
}

impl Float for f64 {
    type R = f64;
    #[inline]
    fn to_r(self) -> f64 {
        self
    }
    #[inline]
    fn from_r(r: f64) -> f64 {
        r
    }
}

impl Float for half::f16 {
    type R = f32;
    #[inline]
    fn to_r(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn from_r(r: f32) -> Self {
        half::f16::from_f32(r)
    }
}

impl Float for half::bf16 {
    type R = f32;
    #[inline]
    fn to_r(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn from_r(r: f32) -> Self {
        half::bf16::from_f32(r)
    }
}

/// Accumulator of a [`Num`]: `f32`, `f64`, `i64` or `u64`. Integer arithmetic wraps.
pub(crate) trait Acc: Copy + PartialOrd + Send + Sync + Debug + 'static {
    const ZERO: Self;
    const ONE: Self;
    fn wadd(self, o: Self) -> Self;
    fn wmul(self, o: Self) -> Self;
    fn wabs(self) -> Self;
    fn acc_f64(self) -> f64;
    /// `self / n` (integer division truncates toward zero).
    fn div_count(self, n: usize) -> Self;
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline]
    fn wadd(self, o: Self) -> Self {
        self + o
    }
    #[inline]
    fn wmul(self, o: Self) -> Self {
        self * o
    }
    #[inline]
    fn wabs(self) -> Self {
        f32::abs(self)
    }
    #[inline]
    fn acc_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn div_count(self, n: usize) -> Self {
        self / n as f32
    }
}

impl Acc for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline]
    fn wadd(self, o: Self) -> Self {
        self + o
    }
    #[inline]
    fn wmul(self, o: Self) -> Self {
        self * o
    }
    #[inline]
    fn wabs(self) -> Self {
        f64::abs(self)
    }
    #[inline]
    fn acc_f64(self) -> f64 {
        self
    }
    #[inline]
    fn div_count(self, n: usize) -> Self {
        self / n as f64
    }
}

impl Acc for i64 {
    const ZERO: Self = 0;
    const ONE: Self = 1;
    #[inline]
    fn wadd(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline]
    fn wmul(self, o: Self) -> Self {
        self.wrapping_mul(o)
    }
    #[inline]
    fn wabs(self) -> Self {
        self.wrapping_abs()
    }
    #[inline]
    fn acc_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn div_count(self, n: usize) -> Self {
        if n == 0 {
            0
        } else {
            self / n as i64
        }
    }
}

impl Acc for u64 {
    const ZERO: Self = 0;
    const ONE: Self = 1;
    #[inline]
    fn wadd(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline]
    fn wmul(self, o: Self) -> Self {
        self.wrapping_mul(o)
    }
    #[inline]
    fn wabs(self) -> Self {
        self
    }
    #[inline]
    fn acc_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn div_count(self, n: usize) -> Self {
        if n == 0 {
            0
        } else {
            self / n as u64
        }
    }
}

/// Any numeric element type.
pub(crate) trait Num: Element + Copy + PartialOrd + Default {
    type A: Acc;
    /// The smallest value (`-inf` for floats).
    const LOWEST: Self;
    /// The largest value (`+inf` for floats).
    const HIGHEST: Self;
    fn to_a(self) -> Self::A;
    /// Back from the accumulator (integers truncate, i.e. wrap).
    fn from_a(a: Self::A) -> Self;
    fn as_f64(self) -> f64;
    /// From f64 (integers: Rust's saturating `as`).
    fn of_f64(v: f64) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! num_int {
    ($($t:ty => $a:ty),*) => {$(
        impl Num for $t {
            type A = $a;
            const LOWEST: Self = <$t>::MIN;
            const HIGHEST: Self = <$t>::MAX;
            #[inline]
            fn to_a(self) -> $a {
                self as $a
            }
            #[inline]
            fn from_a(a: $a) -> Self {
                a as $t
            }
            #[inline]
            fn as_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn of_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn is_nan(self) -> bool {
                false
            }
        }
    )*};
}
num_int!(i8 => i64, i16 => i64, i32 => i64, i64 => i64, u8 => u64, u16 => u64, u32 => u64, u64 => u64);

macro_rules! num_float {
    ($($t:ty => $a:ty),*) => {$(
        impl Num for $t {
            type A = $a;
            const LOWEST: Self = <$t>::NEG_INFINITY;
            const HIGHEST: Self = <$t>::INFINITY;
            #[inline]
            fn to_a(self) -> $a {
                Float::to_r(self)
            }
            #[inline]
            fn from_a(a: $a) -> Self {
                <$t as Float>::from_r(a)
            }
            #[inline]
            fn as_f64(self) -> f64 {
                Float::to_r(self) as f64
            }
            #[inline]
            fn of_f64(v: f64) -> Self {
                <$t as Float>::from_r(v as $a)
            }
            #[inline]
            fn is_nan(self) -> bool {
                Real::is_nan(Float::to_r(self))
            }
        }
    )*};
}
num_float!(f32 => f32, f64 => f64, half::f16 => f32, half::bf16 => f32);

/// The elements of `t` as `T` (borrowed when aligned, which runtime tensors always are).
pub(crate) fn view<T: Element>(t: &Tensor) -> Result<Cow<'_, [T]>, KernelError> {
    if let Some(s) = t.as_slice::<T>() {
        return Ok(Cow::Borrowed(s));
    }
    t.to_vec::<T>().map(Cow::Owned).ok_or_else(|| {
        KernelError::Invalid(format!("expected a {} tensor, got {}", T::DTYPE, t.dtype()))
    })
}

/// The elements of a float tensor (any float dtype with a Rust type) as `R`.
pub(crate) fn to_reals<R: Real>(t: &Tensor) -> Result<Vec<R>, KernelError> {
    let dt = t.dtype();
    crate::with_float!(dt, T => {
        let v = view::<T>(t)?;
        Ok(v.iter().map(|&x| R::from_f64(Real::to_f64(x.to_r()))).collect())
    }, else Err(KernelError::Unsupported(format!("{dt} input where a float tensor is expected"))))
}

/// The elements of a float tensor as f32: borrowed when it is f32 (constant weights and
/// tables are not copied), converted otherwise.
pub(crate) fn f32s(t: &Tensor) -> Result<Cow<'_, [f32]>, KernelError> {
    if t.dtype() == kiln_ir::DType::F32 {
        view::<f32>(t)
    } else {
        Ok(Cow::Owned(to_reals::<f32>(t)?))
    }
}

/// The elements of a numeric tensor as f64 (bool as 0/1).
pub(crate) fn to_f64s(t: &Tensor) -> Result<Vec<f64>, KernelError> {
    let dt = t.dtype();
    if dt == kiln_ir::DType::Bool {
        return Ok(t.bytes().iter().map(|&b| b as f64).collect());
    }
    crate::with_numeric!(dt, T => {
        let v = view::<T>(t)?;
        Ok(v.iter().map(|&x| x.as_f64()).collect())
    }, else Err(KernelError::Unsupported(format!("{dt} input where a number is expected"))))
}

/// Integer elements of `t` (any integer dtype).
pub(crate) fn ints(t: &Tensor, what: &str) -> Result<Vec<i64>, KernelError> {
    t.to_i64_vec().ok_or_else(|| {
        KernelError::Invalid(format!(
            "{what} must be an integer tensor, got {}",
            t.dtype()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulators_wrap_like_the_narrow_type() {
        let a: i8 = 100;
        let s = <i8 as Num>::from_a(a.to_a().wadd(a.to_a()));
        assert_eq!(s, 100i8.wrapping_add(100));
        let p = <u8 as Num>::from_a(200u8.to_a().wmul(3u8.to_a()));
        assert_eq!(p, 200u8.wrapping_mul(3));
        assert_eq!(<half::f16 as Num>::LOWEST, half::f16::NEG_INFINITY);
        assert_eq!(5i64.div_count(2), 2);
        assert_eq!((-5i64).div_count(2), -2);
    }
}
