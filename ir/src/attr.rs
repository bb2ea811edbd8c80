//! Untyped attribute values: what ONNX nodes carry, before the op's typed struct reads them
//! (and what an opaque op keeps so that it can be exported unchanged).

use std::collections::BTreeMap;

use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::Graph;
use crate::shape::Type;
use crate::tensor::Tensor;

/// One attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(Tensor),
    Graph(Graph),
    Type(Type),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    Tensors(Vec<Tensor>),
    Graphs(Vec<Graph>),
    Types(Vec<Type>),
}

impl Attr {
    pub fn kind(&self) -> &'static str {
        match self {
            Attr::Float(_) => "float",
            Attr::Int(_) => "int",
            Attr::String(_) => "string",
            Attr::Tensor(_) => "tensor",
            Attr::Graph(_) => "graph",
            Attr::Type(_) => "type",
            Attr::Floats(_) => "floats",
            Attr::Ints(_) => "ints",
            Attr::Strings(_) => "strings",
            Attr::Tensors(_) => "tensors",
            Attr::Graphs(_) => "graphs",
            Attr::Types(_) => "types",
        }
    }
}

/// Attributes of one node, by name, as read from the file.
pub type AttrMap = BTreeMap<String, Attr>;

/// A Rust type that an op struct field can have, read from and written to an [`Attr`].
pub trait AttrValue: Sized {
    /// Reads the attribute.
    fn from_attr(a: Attr) -> Result<Self, String>;
    /// Value when the attribute is absent and the field has no default: an error,
    /// except for `Option<T>`, which is `None`.
    fn missing() -> Result<Self, String> {
        Err("required attribute is missing".into())
    }
    /// The attribute to write, `None` to omit it.
    fn to_attr(&self) -> Option<Attr>;
}

fn wrong(want: &str, got: &Attr) -> String {
    format!("expected {want}, found {}", got.kind())
}

impl AttrValue for i64 {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Int(v) => Ok(v),
            a => Err(wrong("int", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Int(*self))
    }
}

impl AttrValue for bool {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Int(0) => Ok(false),
            Attr::Int(1) => Ok(true),
            Attr::Int(v) => Err(format!("expected 0 or 1, found {v}")),
            a => Err(wrong("int", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Int(*self as i64))
    }
}

impl AttrValue for f32 {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Float(v) => Ok(v),
            // Some exporters write integral floats as ints.
            Attr::Int(v) => Ok(v as f32),
            a => Err(wrong("float", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Float(*self))
    }
}

impl AttrValue for String {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::String(v) => String::from_utf8(v).map_err(|_| "string is not UTF-8".into()),
            a => Err(wrong("string", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::String(self.as_bytes().to_vec()))
    }
}

impl AttrValue for Vec<i64> {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Ints(v) => Ok(v),
            a => Err(wrong("ints", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Ints(self.clone()))
    }
}

impl AttrValue for Vec<f32> {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Floats(v) => Ok(v),
            a => Err(wrong("floats", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Floats(self.clone()))
    }
}

impl AttrValue for Vec<String> {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Strings(v) => v
                .into_iter()
                .map(|s| String::from_utf8(s).map_err(|_| "string is not UTF-8".to_string()))
                .collect(),
            a => Err(wrong("strings", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Strings(
            self.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ))
    }
}

impl AttrValue for Tensor {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Tensor(t) => Ok(t),
            a => Err(wrong("tensor", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Tensor(self.clone()))
    }
}

impl AttrValue for Graph {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Graph(g) => Ok(g),
            a => Err(wrong("graph", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Graph(self.clone()))
    }
}

impl AttrValue for Type {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Type(t) => Ok(t),
            a => Err(wrong("type", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Type(self.clone()))
    }
}

impl AttrValue for DType {
    fn from_attr(a: Attr) -> Result<Self, String> {
        match a {
            Attr::Int(v) => i32::try_from(v)
                .ok()
                .and_then(DType::from_onnx)
                .ok_or_else(|| format!("unknown element type code {v}")),
            a => Err(wrong("int (element type)", &a)),
        }
    }
    fn to_attr(&self) -> Option<Attr> {
        Some(Attr::Int(self.onnx_code() as i64))
    }
}

impl<T: AttrValue> AttrValue for Option<T> {
    fn from_attr(a: Attr) -> Result<Self, String> {
        T::from_attr(a).map(Some)
    }
    fn missing() -> Result<Self, String> {
        Ok(None)
    }
    fn to_attr(&self) -> Option<Attr> {
        self.as_ref().and_then(|v| v.to_attr())
    }
}

/// Defines a string-valued attribute as a Rust enum: `attr_enum!(AutoPad { NotSet = "NOTSET", … })`.
#[macro_export]
macro_rules! attr_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($v),* }
        impl $name {
            pub fn as_str(self) -> &'static str { match self { $($name::$v => $s),* } }
        }
        impl $crate::attr::AttrValue for $name {
            fn from_attr(a: $crate::attr::Attr) -> Result<Self, String> {
                match a {
                    $crate::attr::Attr::String(s) => match s.as_slice() {
                        $(x if x == $s.as_bytes() => Ok($name::$v),)*
                        other => Err(format!("unknown value {:?}", String::from_utf8_lossy(other))),
                    },
                    a => Err(format!("expected string, found {}", a.kind())),
                }
            }
            fn to_attr(&self) -> Option<$crate::attr::Attr> {
                Some($crate::attr::Attr::String(self.as_str().as_bytes().to_vec()))
            }
        }
    };
}

/// Takes attribute `name` out of `map` for a field of op `op`, applying the default.
pub fn take<T: AttrValue>(
    map: &mut AttrMap,
    op: &'static str,
    name: &'static str,
    default: Option<T>,
) -> Result<T, IrError> {
    let err = |msg| IrError::Attr {
        op,
        attr: name,
        msg,
    };
    match map.remove(name) {
        Some(a) => T::from_attr(a).map_err(err),
        None => match default {
            Some(d) => Ok(d),
            None => T::missing().map_err(err),
        },
    }
}
