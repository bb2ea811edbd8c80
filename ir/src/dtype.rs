//! Element types. The discriminants are ONNX's `TensorProto.DataType` codes, so the
//! frontend converts with [`DType::from_onnx`] / [`DType::onnx_code`] and nothing else.

use std::fmt;

macro_rules! dtypes {
    ($($v:ident = $code:literal, $name:literal, $bits:literal;)*) => {
        /// Element type of a tensor.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DType { $($v = $code,)* }

        impl DType {
            /// Every element type kiln knows, in ONNX code order.
            pub const ALL: &'static [DType] = &[$(DType::$v,)*];

            /// The type with ONNX `TensorProto.DataType` code `code`, if kiln knows it.
            pub fn from_onnx(code: i32) -> Option<DType> {
                match code { $($code => Some(DType::$v),)* _ => None }
            }

            /// The short name used by the text printer (`f32`, `i64`, `f8e4m3fn` …).
            pub fn name(self) -> &'static str {
                match self { $(DType::$v => $name,)* }
            }

            /// Parses a name printed by [`DType::name`].
            pub fn from_name(s: &str) -> Option<DType> {
                match s { $($name => Some(DType::$v),)* _ => None }
            }

            /// Storage bits per element (0 for strings, whose storage is not fixed-size).
            pub fn bits(self) -> usize {
                match self { $(DType::$v => $bits,)* }
            }
        }
    };
}

dtypes! {
    F32 = 1, "f32", 32;
    U8 = 2, "u8", 8;
    I8 = 3, "i8", 8;
    U16 = 4, "u16", 16;
    I16 = 5, "i16", 16;
    I32 = 6, "i32", 32;
    I64 = 7, "i64", 64;
    String = 8, "string", 0;
    Bool = 9, "bool", 8;
    F16 = 10, "f16", 16;
    F64 = 11, "f64", 64;
    U32 = 12, "u32", 32;
    U64 = 13, "u64", 64;
    C64 = 14, "c64", 64;
    C128 = 15, "c128", 128;
    BF16 = 16, "bf16", 16;
    F8E4M3FN = 17, "f8e4m3fn", 8;
    F8E4M3FNUZ = 18, "f8e4m3fnuz", 8;
    F8E5M2 = 19, "f8e5m2", 8;
    F8E5M2FNUZ = 20, "f8e5m2fnuz", 8;
    U4 = 21, "u4", 4;
    I4 = 22, "i4", 4;
    F4E2M1 = 23, "f4e2m1", 4;
    F8E8M0 = 24, "f8e8m0", 8;
    U2 = 25, "u2", 2;
    I2 = 26, "i2", 2;
}

impl DType {
    /// ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        self as i32
    }

    /// Bytes needed to store `n` elements (sub-byte types are packed, rounded up).
    /// `None` on overflow. Strings have no fixed size and report `Some(0)`.
    pub fn storage_bytes(self, n: usize) -> Option<usize> {
        let bits = self.bits();
        if bits % 8 == 0 {
            n.checked_mul(bits / 8)
        } else {
            Some(n.checked_mul(bits)?.div_ceil(8))
        }
    }

    pub fn is_float(self) -> bool {
        use DType::*;
        matches!(
            self,
            F32 | F16 | F64 | BF16 | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F4E2M1 | F8E8M0
        )
    }

    pub fn is_int(self) -> bool {
        use DType::*;
        matches!(
            self,
            U8 | I8 | U16 | I16 | I32 | I64 | U32 | U64 | U4 | I4 | U2 | I2
        )
    }

    pub fn is_signed_int(self) -> bool {
        use DType::*;
        matches!(self, I8 | I16 | I32 | I64 | I4 | I2)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for &d in DType::ALL {
            assert_eq!(DType::from_onnx(d.onnx_code()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_onnx(0), None);
        assert_eq!(DType::from_onnx(99), None);
    }

    #[test]
    fn storage_bytes_packs_sub_byte_types() {
        assert_eq!(DType::I4.storage_bytes(3), Some(2));
        assert_eq!(DType::U2.storage_bytes(5), Some(2));
        assert_eq!(DType::F32.storage_bytes(3), Some(12));
        assert_eq!(DType::F64.storage_bytes(usize::MAX), None);
    }
}
