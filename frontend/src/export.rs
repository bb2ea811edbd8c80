//! IR → ONNX. Writes each node in the form of the model's opset ([`crate::downgrade`]),
//! constants as initializers (inline, or appended to one external-data file), inferred
//! types as `value_info`, and subgraph references to outer values by the outer names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_ir::infer::FRESH_PREFIX;
use kiln_ir::{Attr, Graph, Model, Tensor, Type, ValueDef, ValueId};

use crate::downgrade;
use crate::error::FrontendError;
use crate::proto::{
    self, attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto,
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::tensor::{tensor_to_proto, ExternalWriter};

/// How to write a model.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Write tensors of at least `external_threshold` bytes to this file (a name relative to
    /// the model's directory) instead of inline.
    pub external_data: Option<String>,
    pub external_threshold: usize,
    /// Write inferred types of intermediate values as `value_info`. Off by default: ONNX
    /// Runtime fuses more when it knows every shape, so the same model with value_info can
    /// give results that differ in the last bits from the original.
    pub value_info: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            external_data: None,
            external_threshold: 1024,
            value_info: false,
        }
    }
}

/// What [`save_model`] wrote.
#[derive(Clone, Debug)]
pub struct SaveReport {
    pub path: PathBuf,
    pub external: Option<PathBuf>,
    pub bytes: u64,
}

/// Converts a model to its protobuf form with all tensors inline (`opts.external_data` is
/// ignored).
pub fn export_model(model: &Model, opts: &ExportOptions) -> Result<ModelProto, FrontendError> {
    export_with(model, &mut None, opts.value_info)
}

/// Writes `model` to `path` (atomically: a temporary file renamed into place). Refuses to
/// write a model larger than protobuf's 2 GB limit inline: use external data for those.
pub fn save_model(
    model: &Model,
    path: &Path,
    opts: &ExportOptions,
) -> Result<SaveReport, FrontendError> {
    let mut writer = match &opts.external_data {
        Some(loc) => Some(ExternalWriter::new(path, loc, opts.external_threshold)?),
        None => None,
    };
    let proto = export_with(model, &mut writer, opts.value_info)?;
    let bytes = proto::encode(&proto);
    if bytes.len() as u64 > i32::MAX as u64 {
        return Err(FrontendError::Unsupported(format!(
            "the model is {} bytes, over protobuf's 2 GB limit: write its weights as external data",
            bytes.len()
        )));
    }
    let external = match writer {
        Some(w) => w.finish()?,
        None => None,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model.onnx".into());
    let tmp = dir.join(format!(".{file_name}.{}.kiln-tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(FrontendError::io("cannot write", path, e));
    }
    Ok(SaveReport {
        path: path.to_path_buf(),
        external,
        bytes: bytes.len() as u64,
    })
}

fn export_with(
    model: &Model,
    writer: &mut Option<ExternalWriter>,
    value_info: bool,
) -> Result<ModelProto, FrontendError> {
    let mut opsets = model.opsets.clone();
    let mut domains = HashSet::new();
    collect_domains(&model.graph, &mut domains);
    for d in domains {
        opsets.entry(d).or_insert(1);
    }
    let mut ex = Exporter {
        opsets: &opsets,
        writer,
        value_info,
    };
    let graph = ex.graph(&model.graph, &HashMap::new())?;
    Ok(ModelProto {
        ir_version: Some(model.ir_version.max(3)),
        opset_import: opsets
            .iter()
            .map(|(d, v)| OperatorSetIdProto {
                domain: Some(d.clone()),
                version: Some(*v),
            })
            .collect(),
        producer_name: Some(if model.producer_name.is_empty() {
            "kiln".into()
        } else {
            model.producer_name.clone()
        }),
        producer_version: Some(model.producer_version.clone()),
        domain: Some(model.domain.clone()),
        model_version: Some(model.model_version),
        doc_string: (!model.doc_string.is_empty()).then(|| model.doc_string.clone()),
        graph: Some(graph),
        metadata_props: model
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    })
}

fn collect_domains(g: &Graph, out: &mut HashSet<String>) {
    for n in g.node_ids() {
        let op = &g.node(n).op;
        out.insert(op.domain().to_string());
        for sg in op.subgraphs() {
            collect_domains(sg, out);
        }
    }
}

struct Exporter<'a> {
    opsets: &'a BTreeMap<String, i64>,
    writer: &'a mut Option<ExternalWriter>,
    value_info: bool,
}

impl Exporter<'_> {
    fn tensor(&mut self, name: &str, t: &Tensor) -> Result<TensorProto, FrontendError> {
        match self.writer {
            Some(w) => w.tensor_to_proto(name, t),
            None => Ok(tensor_to_proto(name, t)),
        }
    }

    /// `outer`: exported names of the enclosing graph's values.
    fn graph(
        &mut self,
        g: &Graph,
        outer: &HashMap<ValueId, String>,
    ) -> Result<GraphProto, FrontendError> {
        let uses = g.use_counts();
        // Exported names: the value's own name, or a generated one when it has none and is read.
        let mut taken: HashSet<String> = g.value_ids().map(|v| g.value(v).name.clone()).collect();
        let mut names: HashMap<ValueId, String> = HashMap::new();
        for v in g.value_ids() {
            let val = g.value(v);
            let name = match &val.def {
                ValueDef::Outer(o) => outer.get(o).cloned().ok_or_else(|| {
                    FrontendError::Invalid(format!(
                        "graph `{}` refers to an outer value that has no name",
                        g.name
                    ))
                })?,
                _ if !val.name.is_empty() => val.name.clone(),
                _ if uses[v.index()] > 0 || g.outputs.contains(&v) => {
                    let mut i = v.index();
                    loop {
                        let n = format!("_kiln_{i}");
                        if taken.insert(n.clone()) {
                            break n;
                        }
                        i += 1;
                    }
                }
                _ => String::new(),
            };
            names.insert(v, name);
        }
        let name = |v: ValueId| names.get(&v).cloned().unwrap_or_default();
        let order = g.topo_order()?;
        let mut nodes = Vec::with_capacity(order.len());
        let mut read: HashSet<ValueId> = g.outputs.iter().copied().collect();
        for nid in order {
            let node = g.node(nid);
            let version = self.opsets.get(node.op.domain()).copied().unwrap_or(1);
            let (attrs, inputs) = downgrade::node_form(g, node, version).map_err(|e| {
                FrontendError::Unsupported(format!(
                    "node `{}` ({}): {e}",
                    node.name,
                    node.op.op_type()
                ))
            })?;
            // What the written node reads: its (downgraded) inputs and its subgraphs' captures.
            // Constants a downgrade turned back into attributes are not written.
            read.extend(inputs.iter().flatten().copied());
            read.extend(node.op.subgraphs().iter().flat_map(|sg| sg.outer_refs()));
            let mut attribute = Vec::with_capacity(attrs.len());
            for (k, a) in attrs {
                attribute.push(self.attr(&k, &a, &names)?);
            }
            nodes.push(NodeProto {
                input: inputs
                    .iter()
                    .map(|i| i.map(name).unwrap_or_default())
                    .collect(),
                output: node.outputs.iter().map(|&o| name(o)).collect(),
                name: Some(node.name.clone()),
                op_type: Some(node.op.op_type().to_string()),
                domain: Some(node.op.domain().to_string()),
                attribute,
                ..Default::default()
            });
            // Trailing unnamed outputs can be dropped.
            let last = nodes.last_mut().expect("just pushed");
            while last.output.last().is_some_and(|o| o.is_empty()) {
                last.output.pop();
            }
        }
        let mut initializer = Vec::new();
        let mut input = Vec::new();
        for &i in &g.inputs {
            input.push(value_info(&name(i), g.value(i).ty.as_ref()));
            if let ValueDef::InputWithDefault(t) = &g.value(i).def {
                initializer.push(self.tensor(&name(i), t)?);
            }
        }
        for v in g.value_ids() {
            if let ValueDef::Const(t) = &g.value(v).def {
                if read.contains(&v) {
                    initializer.push(self.tensor(&name(v), t)?);
                }
            }
        }
        let output = g
            .outputs
            .iter()
            .map(|&o| value_info(&name(o), g.value(o).ty.as_ref()))
            .collect();
        let mut vinfo = Vec::new();
        if self.value_info {
            let io: HashSet<ValueId> = g.inputs.iter().chain(g.outputs.iter()).copied().collect();
            for n in g.node_ids() {
                for &o in &g.node(n).outputs {
                    if !io.contains(&o) && !name(o).is_empty() {
                        if let Some(t) = g.value(o).ty.as_ref() {
                            vinfo.push(value_info(&name(o), Some(t)));
                        }
                    }
                }
            }
        }
        Ok(GraphProto {
            node: nodes,
            name: Some(g.name.clone()),
            initializer,
            input,
            output,
            value_info: vinfo,
            ..Default::default()
        })
    }

    fn attr(
        &mut self,
        k: &str,
        a: &Attr,
        names: &HashMap<ValueId, String>,
    ) -> Result<AttributeProto, FrontendError> {
        let mut p = AttributeProto {
            name: Some(k.to_string()),
            ..Default::default()
        };
        let ty = match a {
            Attr::Float(v) => {
                p.f = Some(*v);
                AttributeType::Float
            }
            Attr::Int(v) => {
                p.i = Some(*v);
                AttributeType::Int
            }
            Attr::String(s) => {
                p.s = Some(s.clone());
                AttributeType::String
            }
            Attr::Tensor(t) => {
                p.t = Some(tensor_to_proto("", t));
                AttributeType::Tensor
            }
            Attr::Graph(g) => {
                p.g = Some(self.graph(g, names)?);
                AttributeType::Graph
            }
            Attr::Type(t) => {
                p.tp = Some(type_proto(Some(t)));
                AttributeType::TypeProto
            }
            Attr::Floats(v) => {
                p.floats = v.clone();
                AttributeType::Floats
            }
            Attr::Ints(v) => {
                p.ints = v.clone();
                AttributeType::Ints
            }
            Attr::Strings(v) => {
                p.strings = v.clone();
                AttributeType::Strings
            }
            Attr::Tensors(v) => {
                p.tensors = v.iter().map(|t| tensor_to_proto("", t)).collect();
                AttributeType::Tensors
            }
            Attr::Graphs(v) => {
                for g in v {
                    p.graphs.push(self.graph(g, names)?);
                }
                AttributeType::Graphs
            }
            Attr::Types(v) => {
                p.type_protos = v.iter().map(|t| type_proto(Some(t))).collect();
                AttributeType::TypeProtos
            }
        };
        p.r#type = Some(ty as i32);
        Ok(p)
    }
}

fn value_info(name: &str, ty: Option<&Type>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: ty.map(|t| type_proto(Some(t))),
        ..Default::default()
    }
}

/// The `TypeProto` of a type. Invented symbols are written as unknown dims.
pub fn type_proto(t: Option<&Type>) -> TypeProto {
    let value = t.map(|t| match t {
        Type::Tensor(tt) => type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(tt.dtype.onnx_code()),
            shape: tt.shape.as_ref().map(|s| TensorShapeProto {
                dim: s
                    .iter()
                    .map(|d| tensor_shape_proto::Dimension {
                        value: match d.known() {
                            Some(v) => Some(tensor_shape_proto::dimension::Value::DimValue(v)),
                            None => {
                                let p = d.to_string();
                                (!p.starts_with(FRESH_PREFIX))
                                    .then_some(tensor_shape_proto::dimension::Value::DimParam(p))
                            }
                        },
                        ..Default::default()
                    })
                    .collect(),
            }),
        }),
        Type::Sequence(e) => type_proto::Value::SequenceType(Box::new(type_proto::Sequence {
            elem_type: Some(Box::new(type_proto(Some(e)))),
        })),
        Type::Optional(e) => type_proto::Value::OptionalType(Box::new(type_proto::Optional {
            elem_type: Some(Box::new(type_proto(Some(e)))),
        })),
        Type::Map(k, v) => type_proto::Value::MapType(Box::new(type_proto::Map {
            key_type: Some(k.onnx_code()),
            value_type: Some(Box::new(type_proto(Some(v)))),
        })),
    });
    TypeProto {
        value,
        ..Default::default()
    }
}
