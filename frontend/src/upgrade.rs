//! Opset normalization on import: every node becomes its op's newest form, so the rest of
//! kiln sees one meaning per op. Attributes that later versions turned into inputs become
//! constant inputs; legacy attributes with no effect are dropped; semantics that changed
//! (Softmax's 2-D coercion before opset 13, Resize-10's coordinate mode) are rewritten into
//! the new op's terms. [`crate::downgrade`] is the inverse, used on export.

use kiln_ir::op::{self, Opaque};
use kiln_ir::{Attr, AttrMap, DType, Graph, NodeId, Op, Tensor, ValueId};

/// Builds the typed op for a node of `domain`/`op_type` in a model importing `version` of
/// that domain. May add constant inputs (and, for old Softmax, helper nodes) to `g`.
pub fn typed_op(
    g: &mut Graph,
    node: NodeId,
    domain: &str,
    op_type: &str,
    version: i64,
    mut attrs: AttrMap,
    inputs: &mut Vec<Option<ValueId>>,
) -> Result<Op, String> {
    if domain.is_empty() {
        attrs.remove("consumed_inputs");
        upgrade_onnx(g, node, op_type, version, &mut attrs, inputs)?;
        if let Some(op) = special(g, node, op_type, version, &mut attrs, inputs)? {
            return Ok(op);
        }
    }
    match Op::from_attrs(domain, op_type, attrs.clone()).map_err(|e| e.to_string())? {
        Some(op) => Ok(op),
        None => Ok(Op::Opaque(Opaque {
            domain: domain.to_string(),
            op_type: op_type.to_string(),
            version,
            attrs,
        })),
    }
}

fn const_input(g: &mut Graph, node: NodeId, what: &str, t: Tensor) -> ValueId {
    let name = g.unique_name(&format!("{}/{what}", g.node(node).name));
    g.add_const(name, t)
}

fn ints_tensor(v: Vec<i64>) -> Tensor {
    let n = v.len();
    Tensor::from_vec(vec![n], v).expect("length matches")
}

/// A float constant of the element type of value `like` (declared or constant), f32 if unknown.
fn float_like(g: &Graph, like: Option<ValueId>, v: f32) -> Tensor {
    let dt = like
        .and_then(|x| g.value(x).ty.as_ref().and_then(|t| t.elem_dtype()))
        .unwrap_or(DType::F32);
    match dt {
        DType::F64 => Tensor::scalar(v as f64),
        DType::F16 => Tensor::scalar(half::f16::from_f32(v)),
        DType::BF16 => Tensor::scalar(half::bf16::from_f32(v)),
        DType::I8 => Tensor::scalar(v as i8),
        DType::U8 => Tensor::scalar(v as u8),
        DType::I16 => Tensor::scalar(v as i16),
        DType::U16 => Tensor::scalar(v as u16),
        DType::I32 => Tensor::scalar(v as i32),
        DType::U32 => Tensor::scalar(v as u32),
        DType::I64 => Tensor::scalar(v as i64),
        DType::U64 => Tensor::scalar(v as u64),
        _ => Tensor::scalar(v),
    }
}

fn take_ints(attrs: &mut AttrMap, name: &str) -> Result<Option<Vec<i64>>, String> {
    match attrs.remove(name) {
        None => Ok(None),
        Some(Attr::Ints(v)) => Ok(Some(v)),
        Some(Attr::Int(v)) => Ok(Some(vec![v])),
        Some(a) => Err(format!(
            "attribute `{name}` should be ints, is {}",
            a.kind()
        )),
    }
}

fn take_float(attrs: &mut AttrMap, name: &str) -> Result<Option<f32>, String> {
    match attrs.remove(name) {
        None => Ok(None),
        Some(Attr::Float(v)) => Ok(Some(v)),
        Some(Attr::Int(v)) => Ok(Some(v as f32)),
        Some(a) => Err(format!(
            "attribute `{name}` should be a float, is {}",
            a.kind()
        )),
    }
}

/// Sets input `i` (padding omitted inputs with `None`).
fn set_input(inputs: &mut Vec<Option<ValueId>>, i: usize, v: ValueId) {
    if inputs.len() <= i {
        inputs.resize(i + 1, None);
    }
    inputs[i] = Some(v);
}

fn upgrade_onnx(
    g: &mut Graph,
    node: NodeId,
    op_type: &str,
    v: i64,
    attrs: &mut AttrMap,
    inputs: &mut Vec<Option<ValueId>>,
) -> Result<(), String> {
    match op_type {
        // Before opset 7, broadcasting was opt-in and could be aligned at `axis`.
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "And" | "Or" | "Xor" | "Equal" | "Greater"
        | "Less"
            if v < 7 =>
        {
            let axis = attrs.remove("axis");
            let bcast = attrs.remove("broadcast");
            if let (Some(Attr::Int(1)), Some(Attr::Int(a))) = (&bcast, &axis) {
                let rank = inputs.first().copied().flatten().and_then(|x| {
                    g.value(x)
                        .ty
                        .as_ref()?
                        .as_tensor()?
                        .shape
                        .as_ref()
                        .map(|s| s.len())
                });
                let brank = inputs.get(1).copied().flatten().and_then(|x| {
                    g.value(x)
                        .ty
                        .as_ref()?
                        .as_tensor()?
                        .shape
                        .as_ref()
                        .map(|s| s.len())
                });
                match (rank, brank) {
                    (Some(r), Some(b))
                        if (*a < 0 && *a + r as i64 + b as i64 == r as i64)
                            || (*a >= 0 && *a as usize + b == r) => {}
                    _ => return Err(format!("legacy broadcast with axis={a} is not supported")),
                }
            }
        }
        "Gemm" if v < 7 => {
            attrs.remove("broadcast");
        }
        "BatchNormalization" => {
            attrs.remove("is_test");
            if let Some(Attr::Int(0)) = attrs.remove("spatial") {
                return Err("BatchNormalization with spatial=0 is not supported".into());
            }
            if v < 14 && g.node(node).outputs.len() > 1 {
                return Err(
                    "training-mode BatchNormalization before opset 14 is not supported".into(),
                );
            }
        }
        "Dropout" if v < 12 => {
            attrs.remove("is_test");
            let ratio = take_float(attrs, "ratio")?.unwrap_or(0.5);
            let t = Tensor::scalar(ratio);
            let c = const_input(g, node, "ratio", t);
            set_input(inputs, 1, c);
        }
        "Clip" if v < 11 => {
            let x = inputs.first().copied().flatten();
            if let Some(lo) = take_float(attrs, "min")? {
                let t = float_like(g, x, lo);
                let c = const_input(g, node, "min", t);
                set_input(inputs, 1, c);
            }
            if let Some(hi) = take_float(attrs, "max")? {
                let t = float_like(g, x, hi);
                let c = const_input(g, node, "max", t);
                set_input(inputs, 2, c);
            }
        }
        "Pad" if v < 11 => {
            let pads = take_ints(attrs, "pads")?
                .or(take_ints(attrs, "paddings")?)
                .ok_or("Pad needs `pads`")?;
            let c = const_input(g, node, "pads", ints_tensor(pads));
            set_input(inputs, 1, c);
            if let Some(val) = take_float(attrs, "value")? {
                let x = inputs.first().copied().flatten();
                let t = float_like(g, x, val);
                let c = const_input(g, node, "value", t);
                set_input(inputs, 2, c);
            }
        }
        "Reshape" if v < 5 => {
            let shape = take_ints(attrs, "shape")?.ok_or("Reshape needs `shape`")?;
            let c = const_input(g, node, "shape", ints_tensor(shape));
            set_input(inputs, 1, c);
        }
        "Slice" if v < 10 => {
            let starts = take_ints(attrs, "starts")?.ok_or("Slice needs `starts`")?;
            let ends = take_ints(attrs, "ends")?.ok_or("Slice needs `ends`")?;
            let c = const_input(g, node, "starts", ints_tensor(starts));
            set_input(inputs, 1, c);
            let c = const_input(g, node, "ends", ints_tensor(ends));
            set_input(inputs, 2, c);
            if let Some(axes) = take_ints(attrs, "axes")? {
                let c = const_input(g, node, "axes", ints_tensor(axes));
                set_input(inputs, 3, c);
            }
        }
        "Squeeze" | "Unsqueeze" if v < 13 => {
            if let Some(axes) = take_ints(attrs, "axes")? {
                let c = const_input(g, node, "axes", ints_tensor(axes));
                set_input(inputs, 1, c);
            }
        }
        "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceMax"
        | "ReduceMean" | "ReduceMin" | "ReduceProd" | "ReduceSumSquare"
            if v < 18 =>
        {
            if let Some(axes) = take_ints(attrs, "axes")? {
                let c = const_input(g, node, "axes", ints_tensor(axes));
                set_input(inputs, 1, c);
            }
        }
        "ReduceSum" if v < 13 => {
            if let Some(axes) = take_ints(attrs, "axes")? {
                let c = const_input(g, node, "axes", ints_tensor(axes));
                set_input(inputs, 1, c);
            }
        }
        "Split" => {
            if v < 13 {
                if let Some(split) = take_ints(attrs, "split")? {
                    let c = const_input(g, node, "split", ints_tensor(split));
                    set_input(inputs, 1, c);
                }
            }
            // Before 18, no `split` meant equal parts, one per output.
            if v < 18 && inputs.get(1).copied().flatten().is_none() {
                let n = g.node(node).outputs.len() as i64;
                attrs.insert("num_outputs".into(), Attr::Int(n));
            }
        }
        "TopK" if v < 10 => {
            let k = match attrs.remove("k") {
                Some(Attr::Int(k)) => k,
                _ => return Err("TopK needs `k`".into()),
            };
            let c = const_input(g, node, "k", ints_tensor(vec![k]));
            set_input(inputs, 1, c);
        }
        "Upsample" if v < 9 => {
            let scales = if let Some(Attr::Floats(s)) = attrs.remove("scales") {
                s
            } else {
                let h = take_float(attrs, "height_scale")?.ok_or("Upsample needs `scales`")?;
                let w = take_float(attrs, "width_scale")?.ok_or("Upsample needs `scales`")?;
                vec![1.0, 1.0, h, w]
            };
            let n = scales.len();
            let c = const_input(
                g,
                node,
                "scales",
                Tensor::from_vec(vec![n], scales).expect("length"),
            );
            set_input(inputs, 1, c);
        }
        "Resize" if v < 11 => {
            // Resize-10 is Resize-11 with the asymmetric transform and (for nearest) floor.
            let scales = inputs.get(1).copied().flatten();
            inputs.truncate(1);
            inputs.push(None);
            if let Some(s) = scales {
                inputs.push(Some(s));
            }
            attrs.insert(
                "coordinate_transformation_mode".into(),
                Attr::String(b"asymmetric".to_vec()),
            );
            let nearest = !matches!(attrs.get("mode"), Some(Attr::String(m)) if m != b"nearest");
            if nearest {
                attrs.insert("nearest_mode".into(), Attr::String(b"floor".to_vec()));
            }
        }
        "Cast" => {
            // Opset 1 named the target type.
            if let Some(Attr::String(s)) = attrs.get("to").cloned() {
                let name = String::from_utf8_lossy(&s).to_uppercase();
                let code = [
                    ("FLOAT", 1),
                    ("UINT8", 2),
                    ("INT8", 3),
                    ("UINT16", 4),
                    ("INT16", 5),
                    ("INT32", 6),
                    ("INT64", 7),
                    ("STRING", 8),
                    ("BOOL", 9),
                    ("FLOAT16", 10),
                    ("DOUBLE", 11),
                    ("UINT32", 12),
                    ("UINT64", 13),
                ]
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| *c)
                .ok_or_else(|| format!("unknown Cast target `{name}`"))?;
                attrs.insert("to".into(), Attr::Int(code));
            }
        }
        "Concat" if v < 4 && !attrs.contains_key("axis") => {
            attrs.insert("axis".into(), Attr::Int(1));
        }
        "LpPool" if v < 2 => {
            if let Some(p) = take_float(attrs, "p")? {
                attrs.insert("p".into(), Attr::Int(p as i64));
            }
        }
        "DFT" if v < 20 => {
            let axis = match attrs.remove("axis") {
                None => 1,
                Some(Attr::Int(a)) => a,
                Some(a) => {
                    return Err(format!(
                        "attribute `axis` should be an int, is {}",
                        a.kind()
                    ))
                }
            };
            let c = const_input(g, node, "axis", Tensor::scalar(axis));
            set_input(inputs, 2, c);
        }
        "RNN" | "GRU" | "LSTM" if v < 7 => {
            attrs.remove("output_sequence");
        }
        _ => {}
    }
    Ok(())
}

/// Upgrades that are not a change of attributes: old ops whose meaning differs.
fn special(
    g: &mut Graph,
    node: NodeId,
    op_type: &str,
    v: i64,
    attrs: &mut AttrMap,
    inputs: &mut Vec<Option<ValueId>>,
) -> Result<Option<Op>, String> {
    match op_type {
        // Before opset 13, Softmax/LogSoftmax/Hardmax coerced the input to 2-D at `axis`
        // (default 1). With axis -1 that is the new meaning; otherwise it is
        // Reshape(op(Flatten(x, axis), axis=-1), Shape(x)).
        "Softmax" | "LogSoftmax" | "Hardmax" if v < 13 => {
            let axis = match attrs.remove("axis") {
                None => 1,
                Some(Attr::Int(a)) => a,
                Some(a) => {
                    return Err(format!(
                        "attribute `axis` should be an int, is {}",
                        a.kind()
                    ))
                }
            };
            if !attrs.is_empty() {
                return Err(format!(
                    "unexpected attributes {:?}",
                    attrs.keys().collect::<Vec<_>>()
                ));
            }
            let inner = |axis| match op_type {
                "Softmax" => Op::Softmax(op::Softmax { axis }),
                "LogSoftmax" => Op::LogSoftmax(op::LogSoftmax { axis }),
                _ => Op::Hardmax(op::Hardmax { axis }),
            };
            let x = inputs.first().copied().flatten().ok_or("missing input")?;
            let rank = g
                .value(x)
                .ty
                .as_ref()
                .and_then(|t| t.as_tensor()?.shape.as_ref().map(|s| s.len() as i64));
            if axis == -1 || rank.is_some_and(|r| axis == r - 1) {
                return Ok(Some(inner(-1)));
            }
            let base = g.node(node).name.clone();
            let shape_name = g.unique_name(&format!("{base}/shape"));
            let shape = g.add_node(
                format!("{base}/Shape"),
                Op::Shape(op::Shape {
                    start: 0,
                    end: None,
                }),
                vec![Some(x)],
                &[&shape_name],
            );
            let flat_name = g.unique_name(&format!("{base}/flat"));
            let flat = g.add_node(
                format!("{base}/Flatten"),
                Op::Flatten(op::Flatten { axis }),
                vec![Some(x)],
                &[&flat_name],
            );
            let flat_out = g.node(flat).outputs[0];
            let sm_name = g.unique_name(&format!("{base}/{op_type}2d"));
            let sm = g.add_node(
                format!("{base}/{op_type}2d"),
                inner(-1),
                vec![Some(flat_out)],
                &[&sm_name],
            );
            let sm_out = g.node(sm).outputs[0];
            let shape_out = g.node(shape).outputs[0];
            *inputs = vec![Some(sm_out), Some(shape_out)];
            Ok(Some(Op::Reshape(op::Reshape { allowzero: false })))
        }
        // Scan-8 has a batch axis and sequence lengths: a different op, kept opaque.
        "Scan" if v < 9 => Ok(Some(Op::Opaque(Opaque {
            domain: String::new(),
            op_type: "Scan".into(),
            version: v,
            attrs: std::mem::take(attrs),
        }))),
        _ => Ok(None),
    }
}
