//! Typed ops. Each op is a struct whose fields are its attributes with their ONNX defaults
//! applied; [`Op`] is the enum of all of them. The attribute set of each struct is that of
//! the op's newest ONNX version: the frontend upgrades older forms (attributes that became
//! inputs, changed semantics) on import and downgrades them on export, so that passes and
//! kernels see one meaning per op.

use crate::attr::{Attr, AttrMap};
use crate::error::IrError;
use crate::graph::Graph;

mod catalog;
mod opaque;

pub use catalog::*;
pub use opaque::Opaque;

/// Domain of ONNX's standard ops.
pub const ONNX_DOMAIN: &str = "";
/// Domain of ONNX Runtime's contrib ops, which kiln's fusions emit.
pub const MS_DOMAIN: &str = "com.microsoft";

/// Graphs held by an attribute field (If branches, Loop/Scan bodies).
pub trait HasGraphs {
    fn graphs(&self) -> Vec<&Graph> {
        Vec::new()
    }
    fn graphs_mut(&mut self) -> Vec<&mut Graph> {
        Vec::new()
    }
}

macro_rules! no_graphs {
    ($($t:ty),*) => { $(impl HasGraphs for $t {})* };
}
no_graphs!(
    i64,
    bool,
    f32,
    String,
    Vec<i64>,
    Vec<f32>,
    Vec<String>,
    crate::tensor::Tensor,
    Vec<crate::tensor::Tensor>,
    crate::shape::Type,
    Vec<crate::shape::Type>,
    crate::dtype::DType
);

impl HasGraphs for Graph {
    fn graphs(&self) -> Vec<&Graph> {
        vec![self]
    }
    fn graphs_mut(&mut self) -> Vec<&mut Graph> {
        vec![self]
    }
}

impl HasGraphs for Vec<Graph> {
    fn graphs(&self) -> Vec<&Graph> {
        self.iter().collect()
    }
    fn graphs_mut(&mut self) -> Vec<&mut Graph> {
        self.iter_mut().collect()
    }
}

impl<T: HasGraphs> HasGraphs for Option<T> {
    fn graphs(&self) -> Vec<&Graph> {
        self.as_ref().map(|g| g.graphs()).unwrap_or_default()
    }
    fn graphs_mut(&mut self) -> Vec<&mut Graph> {
        self.as_mut().map(|g| g.graphs_mut()).unwrap_or_default()
    }
}

macro_rules! attr_name {
    ($f:ident) => {
        stringify!($f)
    };
    ($f:ident $n:literal) => {
        $n
    };
}

macro_rules! attr_default {
    ($t:ty;) => {
        None
    };
    ($t:ty; $d:expr) => {{
        let d: $t = $d;
        Some(d)
    }};
}

macro_rules! is_default {
    ($t:ty; $v:expr,) => {
        false
    };
    ($t:ty; $v:expr, $d:expr) => {{
        let d: $t = $d;
        *$v == d
    }};
}

/// Declares the op structs and the [`Op`] enum. Each entry:
/// `Variant: "domain" "OpType" { field [@ "onnxName"]: Type [= default], … }`.
/// A field without a default is required unless its type is `Option<_>`.
macro_rules! ops {
    ($(
        $(#[$m:meta])*
        $v:ident : $dom:literal $ty:literal {
            $($f:ident $(@ $an:literal)? : $t:ty $(= $d:expr)?),* $(,)?
        }
    ),* $(,)?) => {
        $(
            $(#[$m])*
            #[derive(Clone, Debug, PartialEq)]
            pub struct $v { $(pub $f: $t),* }

            impl $v {
                pub const OP_TYPE: &'static str = $ty;
                pub const DOMAIN: &'static str = $dom;

                /// Reads the fields from `map`, removing what it reads; what remains was not understood.
                #[allow(unused_variables)]
                pub fn from_attrs(map: &mut AttrMap) -> Result<Self, IrError> {
                    Ok($v { $($f: crate::attr::take::<$t>(map, $ty, attr_name!($f $($an)?), attr_default!($t; $($d)?))?),* })
                }

                /// Attributes that differ from their defaults, in ONNX form.
                #[allow(unused_mut)]
                pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
                    let mut out = Vec::new();
                    $(
                        if !is_default!($t; &self.$f, $($d)?) {
                            if let Some(a) = crate::attr::AttrValue::to_attr(&self.$f) {
                                out.push((attr_name!($f $($an)?), a));
                            }
                        }
                    )*
                    out
                }

                #[allow(unused_mut)]
                fn graphs(&self) -> Vec<&Graph> {
                    let mut out = Vec::new();
                    $(out.extend(HasGraphs::graphs(&self.$f));)*
                    out
                }

                #[allow(unused_mut)]
                fn graphs_mut(&mut self) -> Vec<&mut Graph> {
                    let mut out = Vec::new();
                    $(out.extend(HasGraphs::graphs_mut(&mut self.$f));)*
                    out
                }
            }
        )*

        /// An operation with its typed attributes.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $($v($v),)*
            /// An op kiln does not know: kept with its raw attributes so it can be exported.
            Opaque(Opaque),
        }

        impl Op {
            /// The ONNX op type (`"LayerNormalization"`, `"SkipLayerNormalization"` …).
            pub fn op_type(&self) -> &str {
                match self { $(Op::$v(_) => $ty,)* Op::Opaque(o) => &o.op_type }
            }

            /// The ONNX domain (`""` for the standard ops, `"com.microsoft"` for contrib ops).
            pub fn domain(&self) -> &str {
                match self { $(Op::$v(_) => $dom,)* Op::Opaque(o) => &o.domain }
            }

            /// The Rust variant name, used by the printer (`Gelu` vs `MsGelu`).
            pub fn kind(&self) -> &str {
                match self { $(Op::$v(_) => stringify!($v),)* Op::Opaque(o) => &o.op_type }
            }

            /// Attributes that differ from their defaults, in ONNX form.
            pub fn attrs(&self) -> Vec<(&str, Attr)> {
                match self {
                    $(Op::$v(o) => o.attrs(),)*
                    Op::Opaque(o) => o.attrs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(),
                }
            }

            /// Subgraphs held by this op.
            pub fn subgraphs(&self) -> Vec<&Graph> {
                match self {
                    $(Op::$v(o) => o.graphs(),)*
                    Op::Opaque(o) => o.graphs(),
                }
            }

            pub fn subgraphs_mut(&mut self) -> Vec<&mut Graph> {
                match self {
                    $(Op::$v(o) => o.graphs_mut(),)*
                    Op::Opaque(o) => o.graphs_mut(),
                }
            }

            /// Builds the typed op for `domain`/`op_type` from attributes in their newest
            /// ONNX form. `Ok(None)` when kiln has no such op (the caller keeps it opaque).
            /// An attribute the op does not have is an error, so nothing is silently dropped.
            pub fn from_attrs(domain: &str, op_type: &str, mut map: AttrMap) -> Result<Option<Op>, IrError> {
                let op = match (domain, op_type) {
                    $(($dom, $ty) => Op::$v($v::from_attrs(&mut map)?),)*
                    _ => return Ok(None),
                };
                if let Some(k) = map.keys().next() {
                    return Err(IrError::Invalid(format!("{op_type} has no attribute `{k}`")));
                }
                Ok(Some(op))
            }

            /// Every (domain, op type) kiln knows.
            pub const KNOWN: &'static [(&'static str, &'static str)] = &[$(($dom, $ty)),*];
        }
    };
}

pub(crate) use {attr_default, attr_name, is_default, ops};
