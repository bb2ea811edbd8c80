//! Element traits of the elementwise family: [`Num`] (arithmetic every numeric dtype has,
//! ONNX/numpy semantics), [`Float`] (float dtypes and the precision they compute in) and
//! [`Calc`] (the math of f32/f64), [`Int`] (bitwise ops).
//!
//! f16/bf16 compute in f32 and round once at the end; f32 in f32; f64 in f64. Integer
//! arithmetic wraps, and division or remainder by zero gives 0 rather than trapping.

use std::ops::{Add, Div, Mul, Neg, Sub};

use half::{bf16, f16};
use kiln_ir::Element;

/// The math of a compute precision (f32 or f64).
pub(crate) trait Calc:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// A constant in this precision.
    fn c(v: f64) -> Self;
    fn widen(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn tan(self) -> Self;
    fn asin(self) -> Self;
    fn acos(self) -> Self;
    fn atan(self) -> Self;
    fn sinh(self) -> Self;
    fn cosh(self) -> Self;
    fn tanh(self) -> Self;
    fn asinh(self) -> Self;
    fn acosh(self) -> Self;
    fn atanh(self) -> Self;
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    /// Round half to even.
    fn round_even(self) -> Self;
    fn abs(self) -> Self;
    fn erf(self) -> Self;
    fn is_nan(self) -> bool;
    fn copysign(self, s: Self) -> Self;
    /// C `fmod`: the remainder with the sign of `self`.
    fn frem(self, d: Self) -> Self;
}

macro_rules! calc {
    ($t:ident, $erf:path) => {
        impl Calc for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn c(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn widen(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $t::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                $t::ln_1p(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                $t::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                $t::cos(self)
            }
            #[inline(always)]
            fn tan(self) -> Self {
                $t::tan(self)
            }
            #[inline(always)]
            fn asin(self) -> Self {
                $t::asin(self)
            }
            #[inline(always)]
            fn acos(self) -> Self {
                $t::acos(self)
            }
            #[inline(always)]
            fn atan(self) -> Self {
                $t::atan(self)
            }
            #[inline(always)]
            fn sinh(self) -> Self {
                $t::sinh(self)
            }
            #[inline(always)]
            fn cosh(self) -> Self {
                $t::cosh(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $t::tanh(self)
            }
            #[inline(always)]
            fn asinh(self) -> Self {
                $t::asinh(self)
            }
            #[inline(always)]
            fn acosh(self) -> Self {
                $t::acosh(self)
            }
            #[inline(always)]
            fn atanh(self) -> Self {
                $t::atanh(self)
            }
            #[inline(always)]
            fn floor(self) -> Self {
                $t::floor(self)
            }
            #[inline(always)]
            fn ceil(self) -> Self {
                $t::ceil(self)
            }
            #[inline(always)]
            fn round_even(self) -> Self {
                $t::round_ties_even(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $t::abs(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            #[inline(always)]
            fn copysign(self, s: Self) -> Self {
                $t::copysign(self, s)
            }
            #[inline(always)]
            fn frem(self, d: Self) -> Self {
                self % d
            }
        }
    };
}
calc!(f32, libm::erff);
calc!(f64, libm::erf);

/// Arithmetic of a numeric element type with ONNX semantics.
pub(crate) trait Num: Element + Copy + PartialOrd + Default {
    const FLOAT: bool;
    const SIGNED: bool;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Float division; integer division truncating toward zero (0 when dividing by 0).
    fn div(self, o: Self) -> Self;
    /// numpy `mod`: the remainder takes the divisor's sign.
    fn modulo(self, o: Self) -> Self;
    /// C `fmod`: the remainder takes the dividend's sign.
    fn fmod(self, o: Self) -> Self;
    /// numpy `maximum` / `minimum`: NaN propagates.
    fn maxn(self, o: Self) -> Self;
    fn minn(self, o: Self) -> Self;
    fn abs(self) -> Self;
    fn neg(self) -> Self;
    fn sign(self) -> Self;
    fn to_f64(self) -> f64;
    /// Floats round to nearest; integers truncate toward zero and wrap (NaN gives 0).
    fn from_f64(v: f64) -> Self;
    /// Integers wrap; floats convert.
    fn to_i64(self) -> i64;
    fn from_i64(v: i64) -> Self;
    fn zero() -> Self {
        Self::default()
    }
}

/// A float element type and the precision it computes in.
pub(crate) trait Float: Num {
    type C: Calc;
    fn to_c(self) -> Self::C;
    fn from_c(c: Self::C) -> Self;
    /// f64 to this type with one rounding.
    fn round_f64(v: f64) -> Self;
}

impl Float for f32 {
    type C = f32;
    #[inline(always)]
    fn to_c(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_c(c: f32) -> f32 {
        c
    }
    #[inline(always)]
    fn round_f64(v: f64) -> f32 {
        v as f32
    }
}
impl Float for f64 {
    type C = f64;
    #[inline(always)]
    fn to_c(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_c(c: f64) -> f64 {
        c
    }
    #[inline(always)]
    fn round_f64(v: f64) -> f64 {
        v
    }
}
impl Float for f16 {
    type C = f32;
    #[inline(always)]
    fn to_c(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_c(c: f32) -> f16 {
        f16::from_f32(c)
    }
    #[inline(always)]
    fn round_f64(v: f64) -> f16 {
        f16::from_f64(v)
    }
}
impl Float for bf16 {
    type C = f32;
    #[inline(always)]
    fn to_c(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_c(c: f32) -> bf16 {
        bf16::from_f32(c)
    }
    #[inline(always)]
    fn round_f64(v: f64) -> bf16 {
        bf16::from_f64(v)
    }
}

/// numpy's float `mod`: `fmod`, moved into the divisor's sign; a zero result takes the
/// divisor's sign too.
#[inline(always)]
pub(crate) fn float_mod<C: Calc>(a: C, b: C) -> C {
    let m = a.frem(b);
    if m.is_nan() {
        return m;
    }
    if m == C::ZERO {
        C::ZERO.copysign(b)
    } else if (b < C::ZERO) != (m < C::ZERO) {
        m + b
    } else {
        m
    }
}

macro_rules! num_float {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const FLOAT: bool = true;
            const SIGNED: bool = true;
            #[inline(always)]
            fn add(self, o: Self) -> Self { Self::from_c(self.to_c() + o.to_c()) }
            #[inline(always)]
            fn sub(self, o: Self) -> Self { Self::from_c(self.to_c() - o.to_c()) }
            #[inline(always)]
            fn mul(self, o: Self) -> Self { Self::from_c(self.to_c() * o.to_c()) }
            #[inline(always)]
            fn div(self, o: Self) -> Self { Self::from_c(self.to_c() / o.to_c()) }
            #[inline(always)]
            fn modulo(self, o: Self) -> Self { Self::from_c(float_mod(self.to_c(), o.to_c())) }
            #[inline(always)]
            fn fmod(self, o: Self) -> Self { Self::from_c(self.to_c().frem(o.to_c())) }
            #[inline(always)]
            fn maxn(self, o: Self) -> Self {
                let (a, b) = (self.to_c(), o.to_c());
                if a > b || a.is_nan() { self } else { o }
            }
            #[inline(always)]
            fn minn(self, o: Self) -> Self {
                let (a, b) = (self.to_c(), o.to_c());
                if a < b || a.is_nan() { self } else { o }
            }
            #[inline(always)]
            fn abs(self) -> Self { Self::from_c(self.to_c().abs()) }
            #[inline(always)]
            fn neg(self) -> Self { Self::from_c(-self.to_c()) }
            #[inline(always)]
            fn sign(self) -> Self {
                let a = self.to_c();
                let one = <Self as Float>::C::ONE;
                Self::from_c(if a > <Self as Float>::C::ZERO { one } else if a < <Self as Float>::C::ZERO { -one } else { a })
            }
            #[inline(always)]
            fn to_f64(self) -> f64 { self.to_c().widen() }
            #[inline(always)]
            fn from_f64(v: f64) -> Self { Self::round_f64(v) }
            #[inline(always)]
            fn to_i64(self) -> i64 { self.to_f64() as i64 }
            #[inline(always)]
            fn from_i64(v: i64) -> Self { Self::round_f64(v as f64) }
        }
    )*};
}
num_float!(f32, f64, f16, bf16);

macro_rules! num_int {
    ($signed:expr; $($t:ty),*) => {$(
        impl Num for $t {
            const FLOAT: bool = false;
            const SIGNED: bool = $signed;
            #[inline(always)]
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline(always)]
            fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            #[inline(always)]
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline(always)]
            fn div(self, o: Self) -> Self { if o == 0 { 0 } else { self.wrapping_div(o) } }
            #[inline(always)]
            fn modulo(self, o: Self) -> Self {
                if o == 0 {
                    return 0;
                }
                let r = self.wrapping_rem(o);
                #[allow(unused_comparisons)]
                if r != 0 && ((r < 0) != (o < 0)) { r.wrapping_add(o) } else { r }
            }
            #[inline(always)]
            fn fmod(self, o: Self) -> Self { if o == 0 { 0 } else { self.wrapping_rem(o) } }
            #[inline(always)]
            fn maxn(self, o: Self) -> Self { if self > o { self } else { o } }
            #[inline(always)]
            fn minn(self, o: Self) -> Self { if self < o { self } else { o } }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn abs(self) -> Self { if self < 0 { (0 as $t).wrapping_sub(self) } else { self } }
            #[inline(always)]
            fn neg(self) -> Self { (0 as $t).wrapping_sub(self) }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn sign(self) -> Self {
                if self > 0 { 1 } else if self < 0 { (0 as $t).wrapping_sub(1) } else { 0 }
            }
            #[inline(always)]
            fn to_f64(self) -> f64 { self as f64 }
            #[inline(always)]
            fn from_f64(v: f64) -> Self { if v.is_nan() { 0 } else { v as i128 as $t } }
            #[inline(always)]
            fn to_i64(self) -> i64 { self as i64 }
            #[inline(always)]
            fn from_i64(v: i64) -> Self { v as $t }
        }
    )*};
}
num_int!(true; i8, i16, i32, i64);
num_int!(false; u8, u16, u32, u64);

/// Integer element types: bitwise ops and shifts.
pub(crate) trait Int: Num {
    fn bnot(self) -> Self;
    fn band(self, o: Self) -> Self;
    fn bor(self, o: Self) -> Self;
    fn bxor(self, o: Self) -> Self;
    /// ONNX `BitShift`: a shift by a negative amount or by at least the width gives what
    /// the sign extension alone gives (-1 for a right shift of a negative value, else 0).
    fn shift(self, by: Self, left: bool) -> Self;
}

macro_rules! int_ops {
    ($($t:ty),*) => {$(
        impl Int for $t {
            #[inline(always)]
            fn bnot(self) -> Self { !self }
            #[inline(always)]
            fn band(self, o: Self) -> Self { self & o }
            #[inline(always)]
            fn bor(self, o: Self) -> Self { self | o }
            #[inline(always)]
            fn bxor(self, o: Self) -> Self { self ^ o }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn shift(self, by: Self, left: bool) -> Self {
                if by < 0 || (by as u64) >= <$t>::BITS as u64 {
                    return if !left && self < 0 { (0 as $t).wrapping_sub(1) } else { 0 };
                }
                if left { self << (by as u32) } else { self >> (by as u32) }
            }
        }
    )*};
}
int_ops!(i8, i16, i32, i64, u8, u16, u32, u64);
