//! `kiln inspect`: what a model is, without touching its weights.
//!
//! Everything reported comes from the model's protobuf (op histogram, node counts, external-data
//! references) or from the IR after import and inference (inputs and outputs with their
//! symbolic shapes, constants, untyped values). Tensor sizes are computed from dtype × shape:
//! no weight byte is read, so an external-data file stays mapped but untouched.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use kiln::ir::infer::FRESH_PREFIX;
use kiln::ir::{Dim, Graph, Tensor, Type, ValueDef, ValueId};
use serde::Serialize;

use super::{domain_name, emit, human_bytes, load, Loaded, Source};

/// Version of the `--json` document; bumped when a field changes meaning or disappears.
pub const FORMAT: &str = "kiln-inspect/1";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (default: the embedded BERT-tiny model).
    pub model: Option<PathBuf>,
    /// Print a JSON document (stable field names, see README) instead of text.
    #[arg(long, conflicts_with = "ir")]
    pub json: bool,
    /// Print the IR text form of the imported graph (types inferred) instead of the summary.
    #[arg(long)]
    pub ir: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let src = Source::new(args.model);
    let loaded = load(&src)?;
    if args.ir {
        return emit(&loaded.model.graph.to_string());
    }
    let report = Report::new(&src, &loaded);
    if args.json {
        let mut s = serde_json::to_string_pretty(&report)?;
        s.push('\n');
        emit(&s)
    } else {
        emit(&report.text())
    }
}

/// The `--json` document. Field order is fixed; maps are sorted by key.
#[derive(Debug, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub model: ModelFile,
    pub ir_version: i64,
    pub producer: Producer,
    /// Opset version per domain (`"ai.onnx"` is ONNX's default domain).
    pub opsets: BTreeMap<String, i64>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub nodes: Nodes,
    /// Nodes of the file per domain and op_type, subgraph nodes included, sorted by
    /// (domain, op_type).
    pub ops: Vec<OpCount>,
    pub parameters: Parameters,
    pub external_data: Vec<ExternalFile>,
    pub values: Values,
}

#[derive(Debug, Serialize)]
pub struct ModelFile {
    /// The path as given, or `null` for the embedded default.
    pub path: Option<String>,
    pub embedded: bool,
    /// Size of the `.onnx` file, external data not included.
    pub file_bytes: u64,
    /// Model-local functions (inlined at import).
    pub functions: usize,
}

#[derive(Debug, Serialize)]
pub struct Producer {
    pub name: String,
    pub version: String,
}

/// A graph input or output.
#[derive(Debug, Serialize)]
pub struct Io {
    pub name: String,
    /// The type in IR text form (`i64[batch,sequence]`, `f32[*]` for unknown rank,
    /// `null` when unknown).
    #[serde(rename = "type")]
    pub ty: Option<String>,
    /// Element type of a tensor (`f32`, `i64` …), else `null`.
    pub dtype: Option<String>,
    /// Dims of a tensor: numbers, or strings for symbolic dims (`"batch"`, `"batch*sequence"`);
    /// `null` when the rank is unknown or the value is not a tensor.
    pub shape: Option<Vec<DimJson>>,
    /// An input with a default value (an initializer that is also listed as an input).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub has_default: bool,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum DimJson {
    Known(i64),
    Symbolic(String),
}

#[derive(Debug, Serialize)]
pub struct Nodes {
    /// Nodes in the file, subgraph nodes included (`Constant` nodes included).
    pub total: usize,
    /// Of `total`, the nodes inside subgraphs.
    pub in_subgraphs: usize,
    /// Subgraphs (`If` branches, `Loop`/`Scan` bodies …).
    pub subgraphs: usize,
    /// Nodes of the IR after import, all graphs: `Constant` nodes are folded into constants
    /// and functions inlined, so this can differ from `total`.
    pub after_import: usize,
}

#[derive(Debug, Serialize)]
pub struct OpCount {
    pub domain: String,
    pub op_type: String,
    pub count: usize,
}

/// Constants of the IR (initializers and folded `Constant` nodes, all graphs).
#[derive(Debug, Serialize)]
pub struct Parameters {
    pub tensors: usize,
    /// Total number of elements.
    pub elements: u64,
    /// Total storage, from dtype × shape (string tensors: the string lengths).
    pub bytes: u64,
    /// Of `tensors`, those viewed in place in a memory-mapped external-data file.
    pub mapped_tensors: usize,
    pub mapped_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ExternalFile {
    /// The `location` as written in the model.
    pub location: String,
    /// Where it resolves (relative to the model's directory).
    pub path: String,
    /// Size of the file on disk (`null` if it cannot be stat'ed).
    pub file_bytes: Option<u64>,
    /// Tensors that refer to this file.
    pub tensors: usize,
    /// Bytes those tensors occupy in it.
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Values {
    /// Values of the IR (all graphs).
    pub total: usize,
    /// Values whose type is still unknown after inference.
    pub untyped: usize,
    /// Values whose shape uses a dim inference had to invent (`unk__…`).
    pub with_invented_dims: usize,
    /// Nodes whose output types inference could not work out (they keep the types the model
    /// declares, if any).
    pub inference_fallbacks: usize,
}

fn dim_json(d: &Dim) -> DimJson {
    match d.known() {
        Some(v) => DimJson::Known(v),
        None => DimJson::Symbolic(d.to_string()),
    }
}

fn io(g: &Graph, v: ValueId) -> Io {
    let val = g.value(v);
    let tensor = val.ty.as_ref().and_then(Type::as_tensor);
    Io {
        name: val.name.clone(),
        ty: val.ty.as_ref().map(|t| t.to_string()),
        dtype: tensor.map(|t| t.dtype.name().to_string()),
        shape: tensor
            .and_then(|t| t.shape.as_ref())
            .map(|s| s.iter().map(dim_json).collect()),
        has_default: matches!(val.def, ValueDef::InputWithDefault(_)),
    }
}

/// Totals over the IR, subgraphs included.
#[derive(Default)]
struct IrTotals {
    nodes: usize,
    values: usize,
    invented: usize,
    consts: usize,
    elements: u64,
    bytes: u64,
    mapped: usize,
    mapped_bytes: u64,
}

/// Storage of a tensor, computed from its dtype and shape: never reads the bytes.
fn tensor_bytes(t: &Tensor) -> u64 {
    match t.strings() {
        Some(s) => s.iter().map(|x| x.len() as u64).sum(),
        None => t.dtype().storage_bytes(t.len()).unwrap_or(0) as u64,
    }
}

fn invented(ty: &Type) -> bool {
    match ty {
        Type::Tensor(t) => t
            .shape
            .iter()
            .flatten()
            .any(|d| d.symbols().iter().any(|s| s.starts_with(FRESH_PREFIX))),
        Type::Sequence(t) | Type::Optional(t) | Type::Map(_, t) => invented(t),
    }
}

impl IrTotals {
    fn graph(&mut self, g: &Graph) {
        self.nodes += g.num_nodes();
        for v in g.value_ids() {
            let val = g.value(v);
            let live = match val.def {
                ValueDef::Node { node, .. } => g.is_live(node),
                _ => true,
            };
            if !live {
                continue;
            }
            self.values += 1;
            if val.ty.as_ref().is_some_and(invented) {
                self.invented += 1;
            }
            if let ValueDef::Const(t) | ValueDef::InputWithDefault(t) = &val.def {
                let b = tensor_bytes(t);
                self.consts += 1;
                self.elements += t.len() as u64;
                self.bytes += b;
                if t.is_mapped() {
                    self.mapped += 1;
                    self.mapped_bytes += b;
                }
            }
        }
        for n in g.node_ids() {
            for sg in g.node(n).op.subgraphs() {
                self.graph(sg);
            }
        }
    }
}

impl Report {
    pub fn new(src: &Source, l: &Loaded) -> Report {
        let m = &l.model;
        let g = &m.graph;
        let mut t = IrTotals::default();
        t.graph(g);
        let base = src.base_dir();
        let external_data = l
            .file
            .external
            .iter()
            .map(|(loc, r)| {
                let path = base.as_ref().map(|b| b.join(loc));
                ExternalFile {
                    location: loc.clone(),
                    path: path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    file_bytes: path
                        .and_then(|p| std::fs::metadata(p).ok())
                        .map(|md| md.len()),
                    tensors: r.tensors,
                    bytes: r.bytes,
                }
            })
            .collect();
        Report {
            format: FORMAT,
            model: ModelFile {
                path: src.path().map(|p| p.display().to_string()),
                embedded: src.path().is_none(),
                file_bytes: l.file.file_bytes,
                functions: l.file.functions,
            },
            ir_version: m.ir_version,
            producer: Producer {
                name: m.producer_name.clone(),
                version: m.producer_version.clone(),
            },
            opsets: m
                .opsets
                .iter()
                .map(|(d, v)| (domain_name(d).to_string(), *v))
                .collect(),
            inputs: g.inputs.iter().map(|&v| io(g, v)).collect(),
            outputs: g.outputs.iter().map(|&v| io(g, v)).collect(),
            nodes: Nodes {
                total: l.file.nodes,
                in_subgraphs: l.file.nodes_in_subgraphs,
                subgraphs: l.file.subgraphs,
                after_import: t.nodes,
            },
            ops: l
                .file
                .ops
                .iter()
                .map(|((d, o), &count)| OpCount {
                    domain: d.clone(),
                    op_type: o.clone(),
                    count,
                })
                .collect(),
            parameters: Parameters {
                tensors: t.consts,
                elements: t.elements,
                bytes: t.bytes,
                mapped_tensors: t.mapped,
                mapped_bytes: t.mapped_bytes,
            },
            external_data,
            values: Values {
                total: t.values,
                untyped: l.stats.untyped,
                with_invented_dims: t.invented,
                inference_fallbacks: l.stats.fallbacks,
            },
        }
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let name = self
            .model
            .path
            .clone()
            .unwrap_or_else(|| format!("<embedded {}>", super::DEFAULT_MODEL_NAME));
        let _ = writeln!(
            s,
            "model        {name} ({})",
            human_bytes(self.model.file_bytes)
        );
        let producer = format!("{} {}", self.producer.name, self.producer.version);
        let _ = writeln!(s, "producer     {}", producer.trim());
        let _ = writeln!(s, "ir_version   {}", self.ir_version);
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{d} {v}"))
            .collect();
        let _ = writeln!(s, "opsets       {}", opsets.join(", "));
        for (title, list) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            let _ = writeln!(s, "{title:<12} {}", list.len());
            let w = list.iter().map(|i| i.name.len()).max().unwrap_or(0);
            for i in list {
                let dflt = if i.has_default {
                    "  (has a default)"
                } else {
                    ""
                };
                let _ = writeln!(
                    s,
                    "  {:<w$}  {}{dflt}",
                    i.name,
                    i.ty.as_deref().unwrap_or("?")
                );
            }
        }
        let n = &self.nodes;
        let inside = match n.in_subgraphs {
            0 => String::new(),
            k => format!(", {k} of them inside {} subgraphs", n.subgraphs),
        };
        let _ = writeln!(
            s,
            "nodes        {} in the file{inside}; {} in the IR after import",
            n.total, n.after_import
        );
        if self.model.functions > 0 {
            let _ = writeln!(
                s,
                "functions    {} (inlined at import)",
                self.model.functions
            );
        }
        let p = &self.parameters;
        let _ = writeln!(
            s,
            "parameters   {} elements in {} constants, {} ({} tensors, {} memory-mapped)",
            p.elements,
            p.tensors,
            human_bytes(p.bytes),
            p.mapped_tensors,
            human_bytes(p.mapped_bytes)
        );
        if self.external_data.is_empty() {
            let _ = writeln!(s, "external     none");
        } else {
            let _ = writeln!(s, "external     {} file(s)", self.external_data.len());
            for e in &self.external_data {
                let size = e
                    .file_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "missing".into());
                let _ = writeln!(
                    s,
                    "  {} ({size}): {} tensors, {}",
                    e.path,
                    e.tensors,
                    human_bytes(e.bytes)
                );
            }
        }
        let v = &self.values;
        let _ = writeln!(
            s,
            "values       {} ({} untyped after inference, {} with invented dims; {} nodes not inferred)",
            v.total, v.untyped, v.with_invented_dims, v.inference_fallbacks
        );
        let mut ops: Vec<&OpCount> = self.ops.iter().collect();
        ops.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| (&a.domain, &a.op_type).cmp(&(&b.domain, &b.op_type)))
        });
        let label = |o: &OpCount| {
            if o.domain == "ai.onnx" {
                o.op_type.clone()
            } else {
                format!("{}::{}", o.domain, o.op_type)
            }
        };
        let w = ops.iter().map(|o| label(o).len()).max().unwrap_or(0);
        let sub = if n.in_subgraphs > 0 {
            ", subgraph nodes included"
        } else {
            ""
        };
        let _ = writeln!(s, "ops          {} kinds{sub}", ops.len());
        for o in ops {
            let _ = writeln!(s, "  {:<w$}  {}", label(o), o.count);
        }
        s
    }
}
