//! Dtype dispatch: run one generic body for the Rust type matching a runtime dtype.

/// `with_dtype!(dt, T => body, [F32, I64, ...] ; else fallback)`: binds type alias `T` to the
/// Rust element type of `dt` for each listed dtype and evaluates `body`.
#[macro_export]
macro_rules! with_dtype {
    ($dt:expr, $T:ident => $body:expr, [$($d:ident),* $(,)?], else $other:expr) => {
        match $dt {
            $(kiln_ir::DType::$d => { type $T = $crate::dtype_rust!($d); $body })*
            #[allow(unreachable_patterns)]
            _ => $other,
        }
    };
}

/// The Rust element type of a (fixed-size, byte-aligned) dtype name.
#[macro_export]
macro_rules! dtype_rust {
    (F32) => {
        f32
    };
    (F64) => {
        f64
    };
    (F16) => {
        half::f16
    };
    (BF16) => {
        half::bf16
    };
    (I8) => {
        i8
    };
    (I16) => {
        i16
    };
    (I32) => {
        i32
    };
    (I64) => {
        i64
    };
    (U8) => {
        u8
    };
    (U16) => {
        u16
    };
    (U32) => {
        u32
    };
    (U64) => {
        u64
    };
    (Bool) => {
        u8
    };
}

/// Every numeric dtype with a native Rust type.
#[macro_export]
macro_rules! with_numeric {
    ($dt:expr, $T:ident => $body:expr, else $other:expr) => {
        $crate::with_dtype!($dt, $T => $body, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64], else $other)
    };
}

/// Float dtypes.
#[macro_export]
macro_rules! with_float {
    ($dt:expr, $T:ident => $body:expr, else $other:expr) => {
        $crate::with_dtype!($dt, $T => $body, [F32, F64, F16, BF16], else $other)
    };
}

/// Integer dtypes.
#[macro_export]
macro_rules! with_int {
    ($dt:expr, $T:ident => $body:expr, else $other:expr) => {
        $crate::with_dtype!($dt, $T => $body, [I8, I16, I32, I64, U8, U16, U32, U64], else $other)
    };
}
