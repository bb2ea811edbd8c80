//! The deterministic text form used by snapshot tests, `kiln inspect --ir` and `--explain`:
//!
//! ```text
//! graph main(%0: i64[batch,sequence] "input_ids") {
//!   %1 = const f32[1000,64] "word_embeddings"
//!   %2 = Gather(%1, %0) {axis=0} : f32[batch,sequence,64]
//!   return %2 "embeddings"
//! }
//! ```
//!
//! Values are numbered in print order (inputs, constants, then node outputs in topological
//! order), so the text does not depend on arena ids and diffs stay readable.

use std::collections::HashMap;
use std::fmt::{self, Write};

use crate::attr::Attr;
use crate::graph::{Graph, ValueDef, ValueId};
use crate::tensor::Tensor;

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut p = Printer {
            out: String::new(),
            names: HashMap::new(),
            next: 0,
            graphs: 0,
        };
        p.graph(self, 0, None);
        f.write_str(&p.out)
    }
}

struct Printer {
    out: String,
    names: HashMap<(usize, ValueId), usize>,
    next: usize,
    /// Graphs printed so far: each graph's ids are keyed by its own number.
    graphs: usize,
}

fn fmt_f32(v: f32) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v:?}")
    }
}

fn fmt_tensor_inline(t: &Tensor) -> String {
    let mut s = format!(
        "{}{}",
        t.dtype(),
        crate::shape::fmt_shape(&crate::shape::shape_of(t.shape()))
    );
    if t.len() <= 8 {
        if let Some(st) = t.strings() {
            let v: Vec<String> = st
                .iter()
                .map(|x| format!("{:?}", String::from_utf8_lossy(x)))
                .collect();
            let _ = write!(s, " [{}]", v.join(", "));
        } else if let Some(v) = t.to_f64_vec() {
            let v: Vec<String> = v
                .iter()
                .map(|x| {
                    if t.dtype().is_float() {
                        fmt_f32(*x as f32)
                    } else {
                        format!("{x}")
                    }
                })
                .collect();
            let _ = write!(s, " [{}]", v.join(", "));
        }
    }
    s
}

impl Printer {
    /// `parent` is the enclosing graph's number, for resolving outer references.
    fn graph(&mut self, g: &Graph, indent: usize, parent: Option<usize>) {
        let depth = self.graphs;
        self.graphs += 1;
        let pad = "  ".repeat(indent);
        let mut ins = Vec::new();
        for &i in &g.inputs {
            let n = self.name(depth, i);
            let v = g.value(i);
            let ty =
                v.ty.as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into());
            let dflt = if matches!(v.def, ValueDef::InputWithDefault(_)) {
                " = default"
            } else {
                ""
            };
            ins.push(format!("%{n}: {ty} {:?}{dflt}", v.name));
        }
        let _ = writeln!(self.out, "{pad}graph {}({}) {{", g.name, ins.join(", "));
        let inner = "  ".repeat(indent + 1);
        for v in g.value_ids() {
            let val = g.value(v);
            match &val.def {
                ValueDef::Const(t) => {
                    let n = self.name(depth, v);
                    let _ = writeln!(
                        self.out,
                        "{inner}%{n} = const {} {:?}",
                        fmt_tensor_inline(t),
                        val.name
                    );
                }
                ValueDef::Outer(o) => {
                    let n = self.name(depth, v);
                    let on = parent.and_then(|p| self.names.get(&(p, *o)).copied());
                    let on = on.map(|x| format!("%{x}")).unwrap_or_else(|| "?".into());
                    let _ = writeln!(self.out, "{inner}%{n} = outer {on}");
                }
                _ => {}
            }
        }
        let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
        for nid in order {
            let node = g.node(nid);
            let outs: Vec<String> = node
                .outputs
                .iter()
                .map(|&o| format!("%{}", self.name(depth, o)))
                .collect();
            let ins: Vec<String> = node
                .inputs
                .iter()
                .map(|i| match i {
                    Some(v) => format!("%{}", self.name(depth, *v)),
                    None => "_".into(),
                })
                .collect();
            let mut line = format!(
                "{inner}{} = {}({})",
                outs.join(", "),
                node.op.kind(),
                ins.join(", ")
            );
            let mut graphs = Vec::new();
            let attrs: Vec<String> = node
                .op
                .attrs()
                .into_iter()
                .filter_map(|(k, a)| match a {
                    Attr::Graph(gr) => {
                        graphs.push((k.to_string(), gr));
                        None
                    }
                    Attr::Graphs(gs) => {
                        for (i, gr) in gs.into_iter().enumerate() {
                            graphs.push((format!("{k}[{i}]"), gr));
                        }
                        None
                    }
                    a => Some(format!("{k}={}", fmt_attr(&a))),
                })
                .collect();
            if !attrs.is_empty() {
                let _ = write!(line, " {{{}}}", attrs.join(", "));
            }
            let tys: Vec<String> = node
                .outputs
                .iter()
                .map(|&o| {
                    g.value(o)
                        .ty
                        .as_ref()
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "?".into())
                })
                .collect();
            let _ = writeln!(self.out, "{line} : {}", tys.join(", "));
            for (k, gr) in graphs {
                let _ = writeln!(self.out, "{inner}  {k}:");
                self.graph(&gr, indent + 2, Some(depth));
            }
        }
        let outs: Vec<String> = g
            .outputs
            .iter()
            .map(|&o| format!("%{} {:?}", self.name(depth, o), g.value(o).name))
            .collect();
        let _ = writeln!(self.out, "{inner}return {}", outs.join(", "));
        let _ = writeln!(self.out, "{pad}}}");
    }

    fn name(&mut self, depth: usize, v: ValueId) -> usize {
        let next = &mut self.next;
        *self.names.entry((depth, v)).or_insert_with(|| {
            *next += 1;
            *next - 1
        })
    }
}

/// Formats an attribute value the way the printer shows it.
pub fn fmt_attr(a: &Attr) -> String {
    let list = |v: Vec<String>| format!("[{}]", v.join(","));
    match a {
        Attr::Float(v) => fmt_f32(*v),
        Attr::Int(v) => v.to_string(),
        Attr::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
        Attr::Tensor(t) => format!("tensor {}", fmt_tensor_inline(t)),
        Attr::Graph(g) => format!("graph {}", g.name),
        Attr::Type(t) => t.to_string(),
        Attr::Floats(v) => list(v.iter().map(|x| fmt_f32(*x)).collect()),
        Attr::Ints(v) => list(v.iter().map(|x| x.to_string()).collect()),
        Attr::Strings(v) => list(
            v.iter()
                .map(|x| format!("{:?}", String::from_utf8_lossy(x)))
                .collect(),
        ),
        Attr::Tensors(v) => list(v.iter().map(fmt_tensor_inline).collect()),
        Attr::Graphs(v) => list(v.iter().map(|g| g.name.clone()).collect()),
        Attr::Types(v) => list(v.iter().map(|t| t.to_string()).collect()),
    }
}
