//! ONNX → IR. Builds SSA graphs from `ModelProto`: initializers become constants (viewed
//! in place when they are external data), `Constant` nodes are folded into constants,
//! model-local functions are inlined, subgraph references to enclosing scopes become
//! [`ValueDef::Outer`] values, and every node is converted to its typed op in the form of the
//! op's newest version (see [`crate::upgrade`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use kiln_ir::infer::FRESH_PREFIX;
use kiln_ir::{Attr, AttrMap, DType, Dim, Graph, Model, Op, Tensor, Type, ValueDef, ValueId};

use crate::error::FrontendError;
use crate::external::ExternalData;
use crate::proto::{self, attribute_proto::AttributeType, type_proto, ModelProto};
use crate::tensor::tensor_from_proto;
use crate::upgrade;

/// Loads an ONNX model file. External data is resolved relative to the file's directory
/// and memory-mapped, not copied.
pub fn load_model(path: impl AsRef<Path>) -> Result<Model, FrontendError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| FrontendError::io("cannot read", path, e))?;
    let proto = proto::decode_model(&bytes, &path.display().to_string())?;
    drop(bytes);
    import_model(&proto, &ExternalData::for_model(path))
}

/// Loads an ONNX model from bytes; a model with external data is an error.
pub fn load_model_bytes(bytes: &[u8]) -> Result<Model, FrontendError> {
    let proto = proto::decode_model(bytes, "in-memory bytes")?;
    import_model(&proto, &ExternalData::none())
}

/// The default domain has two spellings.
pub(crate) fn norm_domain(d: &str) -> &str {
    if d == "ai.onnx" {
        ""
    } else {
        d
    }
}

/// Converts a decoded model.
pub fn import_model(m: &ModelProto, ext: &ExternalData) -> Result<Model, FrontendError> {
    let gp = m
        .graph
        .as_ref()
        .ok_or_else(|| FrontendError::Invalid("the model has no graph".into()))?;
    let mut opsets = BTreeMap::new();
    for o in &m.opset_import {
        opsets.insert(norm_domain(o.domain()).to_string(), o.version());
    }
    if m.opset_import.is_empty() {
        // IR version < 3 models had no opset_import: they are opset 1.
        opsets.insert(String::new(), 1);
    }
    let functions: HashMap<(String, String), &proto::FunctionProto> = m
        .functions
        .iter()
        .map(|f| {
            (
                (norm_domain(f.domain()).to_string(), f.name().to_string()),
                f,
            )
        })
        .collect();
    let mut b = Builder {
        ext,
        opsets: &opsets,
        functions,
        fresh: 0,
        inlined: std::cell::Cell::new(0),
    };
    let (graph, unresolved) = b.graph(gp, false)?;
    debug_assert!(unresolved.is_empty());
    Ok(Model {
        graph,
        opsets,
        ir_version: m.ir_version(),
        producer_name: m.producer_name().to_string(),
        producer_version: m.producer_version().to_string(),
        domain: m.domain().to_string(),
        model_version: m.model_version(),
        doc_string: m.doc_string().to_string(),
        metadata: m
            .metadata_props
            .iter()
            .map(|e| (e.key().to_string(), e.value().to_string()))
            .collect(),
    })
}

/// Bound on nodes created by inlining functions (each call may call others several times).
const MAX_INLINED_NODES: usize = 1_000_000;

struct Builder<'a> {
    ext: &'a ExternalData,
    opsets: &'a BTreeMap<String, i64>,
    functions: HashMap<(String, String), &'a proto::FunctionProto>,
    fresh: u64,
    /// Nodes produced by function inlining so far (bounded: calls can multiply).
    inlined: std::cell::Cell<usize>,
}

/// Outer placeholders a subgraph created: (its value, the name it refers to).
type Unresolved = Vec<(ValueId, String)>;

/// A node after function inlining, owning its fields.
struct FlatNode {
    name: String,
    op_type: String,
    domain: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: Vec<proto::AttributeProto>,
}

impl<'a> Builder<'a> {
    fn fresh_dim(&mut self) -> Dim {
        self.fresh += 1;
        Dim::sym(&format!("{FRESH_PREFIX}{}", self.fresh))
    }

    fn type_from_proto(
        &mut self,
        t: &proto::TypeProto,
        what: &str,
    ) -> Result<Option<Type>, FrontendError> {
        let dtype = |code: i32| {
            DType::from_onnx(code).ok_or_else(|| {
                FrontendError::Unsupported(format!(
                    "{what}: element type {code} ({})",
                    proto::data_type_name(code)
                ))
            })
        };
        Ok(match &t.value {
            None => None,
            Some(type_proto::Value::SparseTensorType(st)) => {
                let tt = type_proto::Tensor {
                    elem_type: st.elem_type,
                    shape: st.shape.clone(),
                };
                let inner = proto::TypeProto {
                    value: Some(type_proto::Value::TensorType(tt)),
                    ..Default::default()
                };
                return self.type_from_proto(&inner, what);
            }
            Some(type_proto::Value::TensorType(tt)) => {
                if tt.elem_type() == 0 {
                    return Ok(None);
                }
                let dt = dtype(tt.elem_type())?;
                match &tt.shape {
                    None => Some(Type::tensor_unranked(dt)),
                    Some(s) => {
                        let mut dims = Vec::with_capacity(s.dim.len());
                        for d in &s.dim {
                            use proto::tensor_shape_proto::dimension::Value as V;
                            dims.push(match &d.value {
                                Some(V::DimValue(v)) if *v >= 0 => Dim::from(*v),
                                Some(V::DimParam(p)) if !p.is_empty() => Dim::sym(p),
                                _ => self.fresh_dim(),
                            });
                        }
                        Some(Type::tensor(dt, dims))
                    }
                }
            }
            Some(type_proto::Value::SequenceType(s)) => match s.elem_type.as_deref() {
                Some(e) => self
                    .type_from_proto(e, what)?
                    .map(|t| Type::Sequence(Box::new(t))),
                None => None,
            },
            Some(type_proto::Value::OptionalType(s)) => match s.elem_type.as_deref() {
                Some(e) => self
                    .type_from_proto(e, what)?
                    .map(|t| Type::Optional(Box::new(t))),
                None => None,
            },
            Some(type_proto::Value::MapType(mt)) => {
                let k = dtype(mt.key_type())?;
                match mt.value_type.as_deref() {
                    Some(v) => self
                        .type_from_proto(v, what)?
                        .map(|t| Type::Map(k, Box::new(t))),
                    None => None,
                }
            }
            Some(type_proto::Value::OpaqueType(_)) => None,
        })
    }

    /// Expands calls of model-local functions, recursively.
    fn flatten_nodes(
        &self,
        nodes: &[proto::NodeProto],
        out: &mut Vec<FlatNode>,
        depth: usize,
    ) -> Result<(), FrontendError> {
        if depth > 32 {
            return Err(FrontendError::Invalid(
                "model-local functions nest deeper than 32 (recursive?)".into(),
            ));
        }
        if depth > 0 {
            self.inlined.set(self.inlined.get() + nodes.len());
            if self.inlined.get() > MAX_INLINED_NODES {
                return Err(FrontendError::Invalid(format!(
                    "inlining model-local functions makes over {MAX_INLINED_NODES} nodes"
                )));
            }
        }
        for n in nodes {
            let key = (norm_domain(n.domain()).to_string(), n.op_type().to_string());
            let Some(f) = self.functions.get(&key) else {
                out.push(FlatNode {
                    name: n.name().to_string(),
                    op_type: n.op_type().to_string(),
                    domain: norm_domain(n.domain()).to_string(),
                    inputs: n.input.clone(),
                    outputs: n.output.clone(),
                    attrs: n.attribute.clone(),
                });
                continue;
            };
            let prefix = format!(
                "{}/{}/",
                if n.name().is_empty() {
                    n.op_type()
                } else {
                    n.name()
                },
                f.name()
            );
            let mut rename: HashMap<&str, String> = HashMap::new();
            for (i, formal) in f.input.iter().enumerate() {
                rename.insert(formal, n.input.get(i).cloned().unwrap_or_default());
            }
            for (i, formal) in f.output.iter().enumerate() {
                rename.insert(formal, n.output.get(i).cloned().unwrap_or_default());
            }
            let actual: HashMap<&str, &proto::AttributeProto> =
                n.attribute.iter().map(|a| (a.name(), a)).collect();
            let defaults: HashMap<&str, &proto::AttributeProto> =
                f.attribute_proto.iter().map(|a| (a.name(), a)).collect();
            let mut body = Vec::new();
            for bn in &f.node {
                let map_name = |s: &String| -> String {
                    if s.is_empty() {
                        return String::new();
                    }
                    rename
                        .get(s.as_str())
                        .cloned()
                        .unwrap_or_else(|| format!("{prefix}{s}"))
                };
                let mut attrs = Vec::new();
                for a in &bn.attribute {
                    if a.ref_attr_name.as_deref().is_some_and(|r| !r.is_empty()) {
                        let r = a.ref_attr_name();
                        if let Some(v) = actual.get(r).or_else(|| defaults.get(r)) {
                            let mut v = (*v).clone();
                            v.name = a.name.clone();
                            attrs.push(v);
                        }
                    } else {
                        attrs.push(a.clone());
                    }
                }
                body.push(proto::NodeProto {
                    input: bn.input.iter().map(map_name).collect(),
                    output: bn.output.iter().map(map_name).collect(),
                    name: Some(format!("{prefix}{}", bn.name())),
                    op_type: bn.op_type.clone(),
                    domain: bn.domain.clone(),
                    attribute: attrs,
                    ..Default::default()
                });
            }
            self.flatten_nodes(&body, out, depth + 1)?;
        }
        Ok(())
    }

    /// Builds one graph. For a subgraph, names not defined inside become `Outer`
    /// placeholders, returned for the caller to resolve.
    fn graph(
        &mut self,
        gp: &proto::GraphProto,
        is_sub: bool,
    ) -> Result<(Graph, Unresolved), FrontendError> {
        let mut g = Graph::new(gp.name());
        let mut names: HashMap<String, ValueId> = HashMap::new();
        let mut unresolved: Unresolved = Vec::new();
        let dup = |n: &str| {
            FrontendError::Invalid(format!(
                "value `{n}` is defined twice in graph `{}`",
                gp.name()
            ))
        };

        let mut inits: HashMap<&str, Tensor> = HashMap::new();
        let mut init_order = Vec::new();
        for t in &gp.initializer {
            let tensor = tensor_from_proto(t, self.ext)?;
            if inits.insert(t.name(), tensor).is_some() {
                return Err(dup(t.name()));
            }
            init_order.push(t.name());
        }
        for st in &gp.sparse_initializer {
            let name = st.values.as_ref().map(|v| v.name()).unwrap_or_default();
            let tensor = crate::sparse::densify(st, self.ext)?;
            if inits.insert(name, tensor).is_some() {
                return Err(dup(name));
            }
            init_order.push(name);
        }
        for vi in &gp.input {
            let name = vi.name();
            if names.contains_key(name) {
                return Err(dup(name));
            }
            let ty = match vi.r#type.as_ref() {
                Some(t) => self.type_from_proto(t, &format!("input `{name}`"))?,
                None => None,
            };
            let v = match inits.remove(name) {
                Some(t) => g.add_input_with_default(name, t),
                None => g.add_input(name, ty),
            };
            names.insert(name.to_string(), v);
        }
        for name in init_order {
            if let Some(t) = inits.remove(name) {
                if names.contains_key(name) {
                    return Err(dup(name));
                }
                let v = g.add_const(name, t);
                names.insert(name.to_string(), v);
            }
        }

        let mut flat = Vec::new();
        self.flatten_nodes(&gp.node, &mut flat, 0)?;

        // Pass 1: every node and its outputs, so inputs can be resolved in any order.
        let mut created = Vec::with_capacity(flat.len());
        for (idx, n) in flat.iter().enumerate() {
            if n.op_type == "Constant" && n.domain.is_empty() && n.outputs.len() == 1 {
                let t = self.constant_value(n)?;
                let out = &n.outputs[0];
                if names.contains_key(out) {
                    return Err(dup(out));
                }
                let v = g.add_const(out.as_str(), t);
                names.insert(out.clone(), v);
                created.push(None);
                continue;
            }
            let name = if n.name.is_empty() {
                format!("{}_{idx}", n.op_type)
            } else {
                n.name.clone()
            };
            let outs: Vec<&str> = n.outputs.iter().map(|s| s.as_str()).collect();
            let placeholder = Op::Identity(kiln_ir::op::Identity {});
            let id = g.add_node(name, placeholder, Vec::new(), &outs);
            for (k, o) in n.outputs.iter().enumerate() {
                if o.is_empty() {
                    continue;
                }
                if names.contains_key(o) {
                    return Err(dup(o));
                }
                names.insert(o.clone(), g.node(id).outputs[k]);
            }
            created.push(Some(id));
        }

        // Declared types of intermediate values and outputs.
        for vi in gp.value_info.iter().chain(gp.output.iter()) {
            if let (Some(&v), Some(t)) = (names.get(vi.name()), vi.r#type.as_ref()) {
                if g.value(v).ty.is_none() {
                    g.value_mut(v).ty =
                        self.type_from_proto(t, &format!("value `{}`", vi.name()))?;
                }
            }
        }

        // Pass 2: inputs and typed ops.
        for (n, id) in flat.iter().zip(created) {
            let Some(id) = id else { continue };
            let mut inputs = Vec::with_capacity(n.inputs.len());
            for i in &n.inputs {
                inputs.push(if i.is_empty() {
                    None
                } else {
                    Some(resolve(
                        &mut g,
                        &mut names,
                        &mut unresolved,
                        i,
                        is_sub,
                        &n.name,
                    )?)
                });
            }
            let mut attrs = AttrMap::new();
            for a in &n.attrs {
                let (name, value) = self.attr(a, &mut g, &mut names, &mut unresolved, is_sub)?;
                attrs.insert(name, value);
            }
            let version = self.opsets.get(n.domain.as_str()).copied().unwrap_or(1);
            let node_name = g.node(id).name.clone();
            let op = upgrade::typed_op(
                &mut g,
                id,
                &n.domain,
                &n.op_type,
                version,
                attrs,
                &mut inputs,
            )
            .map_err(|e| {
                FrontendError::Invalid(format!("node `{node_name}` ({}): {e}", n.op_type))
            })?;
            let node = g.node_mut(id);
            node.op = op;
            node.inputs = inputs;
        }

        for vi in &gp.output {
            let v = resolve(
                &mut g,
                &mut names,
                &mut unresolved,
                vi.name(),
                is_sub,
                "graph outputs",
            )?;
            g.outputs.push(v);
        }
        Ok((g, unresolved))
    }

    fn constant_value(&mut self, n: &FlatNode) -> Result<Tensor, FrontendError> {
        let bad = |m: &str| FrontendError::Invalid(format!("Constant node `{}`: {m}", n.name));
        let [a] = n.attrs.as_slice() else {
            return Err(bad("needs exactly one value attribute"));
        };
        let t = match a.name() {
            "value" => tensor_from_proto(
                a.t.as_ref().ok_or_else(|| bad("`value` holds no tensor"))?,
                self.ext,
            )?,
            "sparse_value" => crate::sparse::densify(
                a.sparse_tensor
                    .as_ref()
                    .ok_or_else(|| bad("`sparse_value` holds no tensor"))?,
                self.ext,
            )?,
            "value_float" => Tensor::scalar(a.f()),
            "value_floats" => Tensor::from_vec(vec![a.floats.len()], a.floats.clone())?,
            "value_int" => Tensor::scalar(a.i()),
            "value_ints" => Tensor::from_vec(vec![a.ints.len()], a.ints.clone())?,
            "value_string" => Tensor::from_strings(vec![], vec![a.s().to_vec()])?,
            "value_strings" => Tensor::from_strings(vec![a.strings.len()], a.strings.clone())?,
            other => return Err(bad(&format!("unknown attribute `{other}`"))),
        };
        Ok(t)
    }

    fn attr(
        &mut self,
        a: &proto::AttributeProto,
        g: &mut Graph,
        names: &mut HashMap<String, ValueId>,
        unresolved: &mut Unresolved,
        is_sub: bool,
    ) -> Result<(String, Attr), FrontendError> {
        let name = a.name().to_string();
        let bad = |m: String| FrontendError::Invalid(format!("attribute `{}`: {m}", a.name()));
        let ty = match a.r#type.and_then(|t| AttributeType::try_from(t).ok()) {
            Some(t) if t != AttributeType::Undefined => t,
            // Files from before IR version 2 have no type tag: tell by the field that is set.
            _ => {
                if a.f.is_some() {
                    AttributeType::Float
                } else if a.i.is_some() {
                    AttributeType::Int
                } else if a.s.is_some() {
                    AttributeType::String
                } else if a.t.is_some() {
                    AttributeType::Tensor
                } else if a.g.is_some() {
                    AttributeType::Graph
                } else if !a.floats.is_empty() {
                    AttributeType::Floats
                } else if !a.ints.is_empty() {
                    AttributeType::Ints
                } else if !a.strings.is_empty() {
                    AttributeType::Strings
                } else {
                    return Err(bad("has no type and no value".into()));
                }
            }
        };
        let value = match ty {
            AttributeType::Float => Attr::Float(a.f()),
            AttributeType::Int => Attr::Int(a.i()),
            AttributeType::String => Attr::String(a.s().to_vec()),
            AttributeType::Floats => Attr::Floats(a.floats.clone()),
            AttributeType::Ints => Attr::Ints(a.ints.clone()),
            AttributeType::Strings => Attr::Strings(a.strings.clone()),
            AttributeType::Tensor => Attr::Tensor(tensor_from_proto(
                a.t.as_ref().ok_or_else(|| bad("no tensor".into()))?,
                self.ext,
            )?),
            AttributeType::Tensors => Attr::Tensors(
                a.tensors
                    .iter()
                    .map(|t| tensor_from_proto(t, self.ext))
                    .collect::<Result<_, _>>()?,
            ),
            AttributeType::SparseTensor => Attr::Tensor(crate::sparse::densify(
                a.sparse_tensor
                    .as_ref()
                    .ok_or_else(|| bad("no sparse tensor".into()))?,
                self.ext,
            )?),
            AttributeType::SparseTensors => Attr::Tensors(
                a.sparse_tensors
                    .iter()
                    .map(|t| crate::sparse::densify(t, self.ext))
                    .collect::<Result<_, _>>()?,
            ),
            AttributeType::Graph => {
                let gp = a.g.as_ref().ok_or_else(|| bad("no graph".into()))?;
                Attr::Graph(self.subgraph(gp, g, names, unresolved, is_sub)?)
            }
            AttributeType::Graphs => {
                let mut gs = Vec::new();
                for gp in &a.graphs {
                    gs.push(self.subgraph(gp, g, names, unresolved, is_sub)?);
                }
                Attr::Graphs(gs)
            }
            AttributeType::TypeProto => {
                let t = a.tp.as_ref().ok_or_else(|| bad("no type".into()))?;
                Attr::Type(
                    self.type_from_proto(t, "attribute")?
                        .ok_or_else(|| bad("incomplete type".into()))?,
                )
            }
            AttributeType::TypeProtos => {
                let mut ts = Vec::new();
                for t in &a.type_protos {
                    ts.push(
                        self.type_from_proto(t, "attribute")?
                            .ok_or_else(|| bad("incomplete type".into()))?,
                    );
                }
                Attr::Types(ts)
            }
            AttributeType::Undefined => return Err(bad("undefined type".into())),
        };
        Ok((name, value))
    }

    fn subgraph(
        &mut self,
        gp: &proto::GraphProto,
        parent: &mut Graph,
        names: &mut HashMap<String, ValueId>,
        unresolved: &mut Unresolved,
        parent_is_sub: bool,
    ) -> Result<Graph, FrontendError> {
        let (mut sg, wanted) = self.graph(gp, true)?;
        for (inner, name) in wanted {
            let outer = resolve(parent, names, unresolved, &name, parent_is_sub, gp.name())?;
            sg.value_mut(inner).def = ValueDef::Outer(outer);
            if sg.value(inner).ty.is_none() {
                sg.value_mut(inner).ty = parent.value(outer).ty.clone();
            }
        }
        Ok(sg)
    }
}

/// The value called `name` in graph `g`; in a subgraph, an unknown name becomes an `Outer`
/// placeholder (to be resolved by the enclosing graph).
fn resolve(
    g: &mut Graph,
    names: &mut HashMap<String, ValueId>,
    unresolved: &mut Unresolved,
    name: &str,
    is_sub: bool,
    reader: &str,
) -> Result<ValueId, FrontendError> {
    if let Some(&v) = names.get(name) {
        return Ok(v);
    }
    if !is_sub {
        return Err(FrontendError::Invalid(format!(
            "`{reader}` reads `{name}`, which nothing in graph `{}` defines",
            g.name
        )));
    }
    // Placeholder id: fixed up by `Builder::subgraph` once the parent resolves the name.
    let v = g.add_outer(name, ValueId::from_index(0), None);
    names.insert(name.to_string(), v);
    unresolved.push((v, name.to_string()));
    Ok(v)
}
