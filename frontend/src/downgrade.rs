//! The inverse of [`crate::upgrade`]: writes a node in the form its op had at the model's
//! opset, so an exported model keeps its opset (and ONNX Runtime's kernels for it).
//! Constant inputs that older versions took as attributes move back into attributes; a
//! non-constant one cannot, and is reported.

use kiln_ir::{Attr, Graph, Node, Op, ValueId};

/// Attributes and inputs of `node` as ONNX wants them at `version` of its domain.
pub fn node_form(
    g: &Graph,
    node: &Node,
    version: i64,
) -> Result<(Vec<(String, Attr)>, Vec<Option<ValueId>>), String> {
    let mut attrs: Vec<(String, Attr)> = node
        .op
        .attrs()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut inputs = node.inputs.clone();
    if !node.op.domain().is_empty() || matches!(node.op, Op::Opaque(_)) {
        return Ok((attrs, inputs));
    }
    let v = version;
    let input_ints =
        |inputs: &[Option<ValueId>], i: usize, what: &str| -> Result<Option<Vec<i64>>, String> {
            match inputs.get(i).copied().flatten() {
                None => Ok(None),
                Some(x) => match g.const_value(x).and_then(|t| t.to_i64_vec()) {
                    Some(v) => Ok(Some(v)),
                    None => Err(format!(
                        "`{what}` must be a constant to be written at opset {version}"
                    )),
                },
            }
        };
    let input_float =
        |inputs: &[Option<ValueId>], i: usize, what: &str| -> Result<Option<f32>, String> {
            match inputs.get(i).copied().flatten() {
                None => Ok(None),
                Some(x) => match g.const_value(x).and_then(|t| t.to_f64_vec()) {
                    Some(v) if v.len() == 1 => Ok(Some(v[0] as f32)),
                    _ => Err(format!(
                        "`{what}` must be a scalar constant to be written at opset {version}"
                    )),
                },
            }
        };
    let remove = |attrs: &mut Vec<(String, Attr)>, k: &str| attrs.retain(|(n, _)| n != k);
    match node.op.op_type() {
        "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceMax"
        | "ReduceMean" | "ReduceMin" | "ReduceProd" | "ReduceSumSquare" | "ReduceSum"
            if v < if node.op.op_type() == "ReduceSum" {
                13
            } else {
                18
            } =>
        {
            if attrs.iter().any(|(k, _)| k == "noop_with_empty_axes") {
                return Err(format!(
                    "noop_with_empty_axes cannot be written at opset {v}"
                ));
            }
            if let Some(axes) = input_ints(&inputs, 1, "axes")? {
                attrs.push(("axes".into(), Attr::Ints(axes)));
            }
            inputs.truncate(1);
        }
        "Squeeze" | "Unsqueeze" if v < 13 => {
            if let Some(axes) = input_ints(&inputs, 1, "axes")? {
                attrs.push(("axes".into(), Attr::Ints(axes)));
            }
            inputs.truncate(1);
        }
        "Split" if v < 18 => {
            remove(&mut attrs, "num_outputs");
            if v < 13 {
                if let Some(split) = input_ints(&inputs, 1, "split")? {
                    attrs.push(("split".into(), Attr::Ints(split)));
                }
                inputs.truncate(1);
            }
        }
        "Slice" if v < 10 => {
            if let Some(steps) = input_ints(&inputs, 4, "steps")? {
                if steps.iter().any(|&s| s != 1) {
                    return Err(format!(
                        "Slice steps other than 1 cannot be written at opset {v}"
                    ));
                }
            }
            let starts = input_ints(&inputs, 1, "starts")?.ok_or("Slice needs starts")?;
            let ends = input_ints(&inputs, 2, "ends")?.ok_or("Slice needs ends")?;
            attrs.push(("starts".into(), Attr::Ints(starts)));
            attrs.push(("ends".into(), Attr::Ints(ends)));
            if let Some(axes) = input_ints(&inputs, 3, "axes")? {
                attrs.push(("axes".into(), Attr::Ints(axes)));
            }
            inputs.truncate(1);
        }
        "Pad" if v < 11 => {
            if inputs.get(3).copied().flatten().is_some() {
                return Err(format!("Pad axes cannot be written at opset {v}"));
            }
            let pads = input_ints(&inputs, 1, "pads")?.ok_or("Pad needs pads")?;
            attrs.push((
                if v < 2 { "paddings" } else { "pads" }.into(),
                Attr::Ints(pads),
            ));
            if let Some(val) = input_float(&inputs, 2, "constant_value")? {
                attrs.push(("value".into(), Attr::Float(val)));
            }
            inputs.truncate(1);
        }
        "Clip" if v < 11 => {
            if let Some(lo) = input_float(&inputs, 1, "min")? {
                attrs.push(("min".into(), Attr::Float(lo)));
            }
            if let Some(hi) = input_float(&inputs, 2, "max")? {
                attrs.push(("max".into(), Attr::Float(hi)));
            }
            inputs.truncate(1);
        }
        "TopK" if v < 10 => {
            let k = input_ints(&inputs, 1, "K")?.ok_or("TopK needs K")?;
            attrs.push(("k".into(), Attr::Int(k.first().copied().unwrap_or(0))));
            inputs.truncate(1);
        }
        "Dropout" if v < 12 => {
            if inputs.get(2).copied().flatten().is_some() {
                return Err(format!(
                    "Dropout training_mode cannot be written at opset {v}"
                ));
            }
            if let Some(r) = input_float(&inputs, 1, "ratio")? {
                attrs.push(("ratio".into(), Attr::Float(r)));
            }
            remove(&mut attrs, "seed");
            if v < 7 {
                attrs.push(("is_test".into(), Attr::Int(1)));
            }
            inputs.truncate(1);
        }
        "BatchNormalization" if v < 7 => {
            attrs.push(("is_test".into(), Attr::Int(1)));
        }
        "Reshape" if v < 5 => {
            let shape = input_ints(&inputs, 1, "shape")?.ok_or("Reshape needs shape")?;
            remove(&mut attrs, "allowzero");
            attrs.push(("shape".into(), Attr::Ints(shape)));
            inputs.truncate(1);
        }
        "Upsample" if v < 9 => {
            let x = inputs
                .get(1)
                .copied()
                .flatten()
                .and_then(|s| g.const_value(s))
                .and_then(|t| t.to_f64_vec());
            let scales: Vec<f32> = x
                .ok_or_else(|| format!("Upsample scales must be a constant at opset {v}"))?
                .into_iter()
                .map(|s| s as f32)
                .collect();
            if v < 7 {
                let (h, w) = match scales.as_slice() {
                    [_, _, h, w] => (*h, *w),
                    _ => return Err("Upsample-1 needs 4-D scales".into()),
                };
                attrs.push(("height_scale".into(), Attr::Float(h)));
                attrs.push(("width_scale".into(), Attr::Float(w)));
            } else {
                attrs.push(("scales".into(), Attr::Floats(scales)));
            }
            inputs.truncate(1);
        }
        "Resize" if v < 11 => {
            if inputs.get(3).copied().flatten().is_some() {
                return Err(format!("Resize sizes cannot be written at opset {v}"));
            }
            for (k, a) in &attrs {
                let ok = match (k.as_str(), a) {
                    ("mode", _) => true,
                    ("coordinate_transformation_mode", Attr::String(s)) => s == b"asymmetric",
                    ("nearest_mode", Attr::String(s)) => s == b"floor",
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "Resize attribute `{k}` cannot be written at opset {v}"
                    ));
                }
            }
            attrs.retain(|(k, _)| k == "mode");
            let scales = inputs.get(2).copied().flatten();
            inputs.truncate(1);
            inputs.push(scales);
        }
        "DFT" if v < 20 => {
            if let Some(axis) = input_ints(&inputs, 2, "axis")? {
                attrs.push(("axis".into(), Attr::Int(axis.first().copied().unwrap_or(1))));
            }
            inputs.truncate(2);
        }
        "Softmax" | "LogSoftmax" | "Hardmax" if v < 13 => {
            let axis = match attrs.iter().find(|(k, _)| k == "axis") {
                Some((_, Attr::Int(a))) => *a,
                _ => -1,
            };
            if axis != -1 {
                return Err(format!(
                    "{} over axis {axis} cannot be written at opset {v}",
                    node.op.op_type()
                ));
            }
            remove(&mut attrs, "axis");
            attrs.push(("axis".into(), Attr::Int(-1)));
        }
        _ => {}
    }
    // Trailing omitted inputs are simply absent.
    while inputs.last().is_some_and(|i| i.is_none()) {
        inputs.pop();
    }
    Ok((attrs, inputs))
}
