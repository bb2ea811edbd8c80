//! The ONNX Runtime contrib ops of this family checked against ONNX Runtime itself: each
//! test builds a one-node model in Python (`.cache/venv`, with `onnx` and `onnxruntime`),
//! runs it on the same inputs as kiln's kernel and compares. Skipped (with a note) when
//! the venv is missing, except under CI where that is a failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use kiln_ir::{DType, Element, Graph, Op, Tensor};

use crate::kernel::{BuildCx, RunCx};
use crate::value::Value;

fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    let ci = ["KILN_CI", "CI"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"));
    assert!(
        !ci,
        "{} is missing: ONNX Runtime comparison tests cannot run",
        p.display()
    );
    eprintln!("SKIPPED: {} is missing; run scripts/setup.sh", p.display());
    None
}

const SCRIPT: &str = r#"
import sys
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

lines = sys.stdin.read().split("\n")
op, domain, n_out = lines[0].split("|")
attrs = eval(lines[1])
out_types = [int(t) for t in lines[2].split()]
inputs = []
for line in lines[3:]:
    if not line.strip():
        continue
    if line.strip() == "-":
        inputs.append(None)
        continue
    name, dt, shape, data = line.split(";")
    shape = [int(d) for d in shape.split(",")] if shape else []
    dt = int(dt)
    vals = [float(v) for v in data.split()] if data else []
    inputs.append((name, dt, np.array(vals).astype(helper.tensor_dtype_to_np_dtype(dt)).reshape(shape)))
node = helper.make_node(op, [i[0] if i else "" for i in inputs], [f"y{k}" for k in range(int(n_out))], domain=domain, **attrs)
graph = helper.make_graph(
    [node], "g",
    [helper.make_tensor_value_info(i[0], i[1], list(i[2].shape)) for i in inputs if i],
    [helper.make_tensor_value_info(f"y{k}", t, None) for k, t in enumerate(out_types)],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
model.ir_version = 10
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
outs = sess.run(None, {i[0]: i[2] for i in inputs if i})
for o in outs:
    o = np.asarray(o)
    print(",".join(str(d) for d in o.shape) + ";" + " ".join(repr(float(v)) for v in o.astype(np.float64).ravel()))
"#;

/// Runs `op_type` (domain `domain`) in ONNX Runtime. `out_types` are ONNX type codes.
fn ort_run(
    op_type: &str,
    domain: &str,
    attrs: &str,
    out_types: &[DType],
    inputs: &[Option<Tensor>],
) -> Option<Vec<(Vec<usize>, Vec<f64>)>> {
    let py = python()?;
    let mut spec = format!("{op_type}|{domain}|{}\n{attrs}\n", out_types.len());
    spec += &out_types
        .iter()
        .map(|d| d.onnx_code().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    spec += "\n";
    for (i, t) in inputs.iter().enumerate() {
        match t {
            None => spec += "-\n",
            Some(t) => {
                let vals = t.to_f64_vec().expect("numeric input");
                let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
                let data: Vec<String> = vals.iter().map(|v| format!("{v:?}")).collect();
                spec += &format!(
                    "x{i};{};{};{}\n",
                    t.dtype().onnx_code(),
                    shape.join(","),
                    data.join(" ")
                );
            }
        }
    }
    let mut child = Command::new(py)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ONNX Runtime failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.lines()
            .map(|l| {
                let (s, d) = l.split_once(';').unwrap();
                let shape = if s.is_empty() {
                    vec![]
                } else {
                    s.split(',').map(|x| x.parse().unwrap()).collect()
                };
                let data = d.split_whitespace().map(|x| x.parse().unwrap()).collect();
                (shape, data)
            })
            .collect(),
    )
}

/// Runs kiln's kernel for `op` with `n_out` outputs.
fn kiln_run(op: &Op, n_out: usize, inputs: &[Option<Tensor>]) -> Vec<Tensor> {
    let g = Graph::new("t");
    let cx = BuildCx {
        input_types: vec![None; inputs.len()],
        const_inputs: vec![None; inputs.len()],
        output_types: vec![None; n_out],
        graph: &g,
    };
    let k = crate::kernels::build(op, &cx).unwrap();
    let vals: Vec<Option<Value>> = inputs
        .iter()
        .map(|t| t.clone().map(Value::Tensor))
        .collect();
    let refs: Vec<Option<&Value>> = vals.iter().map(|v| v.as_ref()).collect();
    let mut rcx = RunCx::new();
    k.run(&refs, &mut rcx)
        .unwrap()
        .into_iter()
        .map(|v| v.into_tensor().unwrap())
        .collect()
}

/// Compares kiln's outputs `which` with ONNX Runtime's.
fn check(
    op: &Op,
    attrs: &str,
    out_types: &[DType],
    which: &[usize],
    inputs: &[Option<Tensor>],
    tol: f64,
) {
    let Some(want) = ort_run(op.op_type(), op.domain(), attrs, out_types, inputs) else {
        return;
    };
    let got = kiln_run(op, out_types.len(), inputs);
    for &k in which {
        let (ws, wv) = &want[k];
        let g = &got[k];
        assert_eq!(g.shape(), &ws[..], "{} output {k} shape", op.op_type());
        let gv = g.to_f64_vec().unwrap();
        for (i, (a, b)) in gv.iter().zip(wv).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{} output {k} element {i}: kiln {a}, ORT {b}",
                op.op_type()
            );
        }
    }
}

/// Deterministic pseudo-random values in [-1, 1).
pub(super) fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn t<T: Element>(shape: &[usize], v: Vec<T>) -> Option<Tensor> {
    Some(Tensor::from_vec(shape.to_vec(), v).unwrap())
}

fn rt(shape: &[usize], seed: u64) -> Option<Tensor> {
    t(shape, rand(shape.iter().product(), seed))
}

use kiln_ir::op::*;

#[test]
fn skip_layer_norms_match_ort() {
    let op = Op::SkipLayerNormalization(SkipLayerNormalization {
        epsilon: Some(1e-5),
    });
    let ins = [
        rt(&[2, 3, 8], 1),
        rt(&[2, 3, 8], 2),
        rt(&[8], 3),
        rt(&[8], 4),
        rt(&[8], 5),
    ];
    let f = DType::F32;
    check(
        &op,
        "{'epsilon': 1e-5}",
        &[f, f, f, f],
        &[0, 1, 2, 3],
        &ins,
        1e-5,
    );
    // Skip broadcast over the batch; no beta, no bias.
    let ins = [rt(&[2, 3, 8], 6), rt(&[3, 8], 7), rt(&[8], 8)];
    let op = Op::SkipLayerNormalization(SkipLayerNormalization { epsilon: None });
    check(&op, "{}", &[f], &[0], &ins, 1e-5);
    let op = Op::SkipSimplifiedLayerNormalization(SkipSimplifiedLayerNormalization {
        epsilon: Some(1e-6),
    });
    let ins = [
        rt(&[2, 3, 8], 9),
        rt(&[2, 3, 8], 10),
        rt(&[8], 11),
        rt(&[8], 12),
    ];
    check(
        &op,
        "{'epsilon': 1e-6}",
        &[f, f, f, f],
        &[0, 2, 3],
        &ins,
        1e-5,
    );
    let op = Op::SimplifiedLayerNormalization(SimplifiedLayerNormalization {
        axis: -1,
        epsilon: 1e-5,
        stash_type: 1,
    });
    check(
        &op,
        "{}",
        &[f, f],
        &[0, 1],
        &[rt(&[2, 3, 8], 13), rt(&[8], 14)],
        1e-5,
    );
}

#[test]
fn embed_layer_norm_matches_ort() {
    let op = Op::EmbedLayerNormalization(EmbedLayerNormalization {
        epsilon: Some(1e-5),
        mask_index_type: None,
    });
    let ins = [
        t(&[2, 4], vec![1i32, 5, 9, 0, 3, 3, 7, 2]),
        t(&[2, 4], vec![0i32, 0, 1, 1, 0, 1, 0, 1]),
        rt(&[10, 8], 1),
        rt(&[6, 8], 2),
        rt(&[2, 8], 3),
        rt(&[8], 4),
        rt(&[8], 5),
        t(&[2, 4], vec![1i32, 1, 1, 0, 1, 1, 0, 0]),
    ];
    check(
        &op,
        "{'epsilon': 1e-5}",
        &[DType::F32, DType::I32, DType::F32],
        &[0, 1, 2],
        &ins,
        1e-5,
    );
}

#[test]
fn ms_attention_matches_ort() {
    let f = DType::F32;
    let att = |causal: bool| {
        Op::MsAttention(MsAttention {
            num_heads: 2,
            unidirectional: causal,
            qkv_hidden_sizes: None,
            mask_filter_value: None,
            scale: None,
            past_present_share_buffer: false,
            do_rotary: false,
            rotary_embedding_dim: None,
        })
    };
    // Raw 2-D mask with padding.
    let mask = t(&[2, 4], vec![1i32, 1, 1, 0, 1, 1, 0, 0]);
    let ins = [rt(&[2, 4, 8], 1), rt(&[8, 24], 2), rt(&[24], 3), mask];
    check(
        &att(false),
        "{'num_heads': 2}",
        &[f, f],
        &[0, 1],
        &ins,
        1e-4,
    );
    // Right-padding lengths, causal.
    let ins = [
        rt(&[2, 4, 8], 4),
        rt(&[8, 24], 5),
        rt(&[24], 6),
        t(&[2], vec![3i32, 4]),
    ];
    check(
        &att(true),
        "{'num_heads': 2, 'unidirectional': 1}",
        &[f, f],
        &[0, 1],
        &ins,
        1e-4,
    );
    // Past state, causal, no mask.
    let ins = [
        rt(&[2, 3, 8], 7),
        rt(&[8, 24], 8),
        rt(&[24], 9),
        None,
        rt(&[2, 2, 2, 2, 4], 10),
    ];
    check(
        &att(true),
        "{'num_heads': 2, 'unidirectional': 1}",
        &[f, f],
        &[0, 1],
        &ins,
        1e-4,
    );
}

#[test]
fn multi_head_attention_matches_ort() {
    let f = DType::F32;
    let mha = |causal: bool| {
        Op::MultiHeadAttention(MultiHeadAttention {
            num_heads: 2,
            unidirectional: causal,
            mask_filter_value: None,
            scale: None,
        })
    };
    // Cross attention with projection bias, a raw key padding mask and an attention bias.
    let ins = [
        rt(&[2, 3, 8], 1),
        rt(&[2, 5, 8], 2),
        rt(&[2, 5, 8], 3),
        rt(&[24], 4),
        t(&[2, 5], vec![1i32, 1, 1, 1, 0, 1, 1, 0, 0, 0]),
        rt(&[1, 2, 3, 5], 5),
    ];
    check(
        &mha(false),
        "{'num_heads': 2}",
        &[f, f, f],
        &[0, 1, 2],
        &ins,
        1e-4,
    );
    // Self attention with past key/value.
    let ins = [
        rt(&[2, 3, 8], 6),
        rt(&[2, 3, 8], 7),
        rt(&[2, 3, 8], 8),
        None,
        None,
        None,
        rt(&[2, 2, 4, 4], 9),
        rt(&[2, 2, 4, 4], 10),
    ];
    check(
        &mha(false),
        "{'num_heads': 2}",
        &[f, f, f],
        &[0, 1, 2],
        &ins,
        1e-4,
    );
    // Causal self attention with a key-length mask.
    let ins = [
        rt(&[2, 3, 8], 11),
        rt(&[2, 3, 8], 15),
        rt(&[2, 3, 8], 16),
        None,
        t(&[2], vec![2i32, 3]),
    ];
    check(
        &mha(true),
        "{'num_heads': 2, 'unidirectional': 1}",
        &[f],
        &[0],
        &ins,
        1e-4,
    );
    // Key/value already per head (BNSH).
    let ins = [
        rt(&[2, 3, 8], 12),
        rt(&[2, 2, 5, 4], 13),
        rt(&[2, 2, 5, 4], 14),
    ];
    check(&mha(false), "{'num_heads': 2}", &[f], &[0], &ins, 1e-4);
}

#[test]
fn fused_matmul_matches_ort() {
    let f = DType::F32;
    let op = |a, b, ba, bb| {
        Op::FusedMatMul(FusedMatMul {
            alpha: 0.5,
            trans_a: a,
            trans_b: b,
            trans_batch_a: ba,
            trans_batch_b: bb,
        })
    };
    check(
        &op(true, true, false, false),
        "{'alpha': 0.5, 'transA': 1, 'transB': 1}",
        &[f],
        &[0],
        &[rt(&[2, 4, 3], 1), rt(&[5, 4], 2)],
        1e-5,
    );
    check(
        &op(false, false, true, false),
        "{'alpha': 0.5, 'transBatchA': 1}",
        &[f],
        &[0],
        &[rt(&[3, 2, 4], 3), rt(&[2, 4, 5], 4)],
        1e-5,
    );
    check(
        &op(false, true, false, true),
        "{'alpha': 0.5, 'transB': 1, 'transBatchB': 1}",
        &[f],
        &[0],
        &[rt(&[2, 3, 4], 5), rt(&[5, 2, 4], 6)],
        1e-5,
    );
}

#[test]
fn quantized_matmuls_match_ort() {
    let f = DType::F32;
    let b: Vec<i8> = rand(20, 1).iter().map(|v| (v * 127.0) as i8).collect();
    let ins = [
        rt(&[3, 4], 2),
        t(&[4, 5], b.clone()),
        t(&[5], vec![0.01f32, 0.02, 0.015, 0.03, 0.005]),
        t(&[5], vec![0i8, 1, -2, 3, 0]),
        rt(&[5], 3),
    ];
    check(
        &Op::DynamicQuantizeMatMul(DynamicQuantizeMatMul {}),
        "{}",
        &[f],
        &[0],
        &ins,
        1e-5,
    );
    let a: Vec<u8> = rand(12, 4)
        .iter()
        .map(|v| ((v + 1.0) * 127.0) as u8)
        .collect();
    let ins = [
        t(&[3, 4], a),
        t(&[4, 5], b),
        t(&[], vec![0.02f32]),
        t(&[5], vec![0.01f32, 0.02, 0.015, 0.03, 0.005]),
        t(&[], vec![128u8]),
        t(&[5], vec![0i8, 1, -2, 3, 0]),
        rt(&[5], 5),
    ];
    check(
        &Op::MatMulIntegerToFloat(MatMulIntegerToFloat {}),
        "{}",
        &[f],
        &[0],
        &ins,
        1e-5,
    );
}

/// Packed QKV (which ONNX Runtime's CPU provider does not implement) gives what the same
/// query, key and value give unpacked.
#[test]
fn multi_head_attention_packed_qkv_equals_unpacked() {
    let op = Op::MultiHeadAttention(MultiHeadAttention {
        num_heads: 2,
        unidirectional: false,
        mask_filter_value: None,
        scale: None,
    });
    let (b, s, n, h) = (2, 3, 2, 4);
    let packed = rand(b * s * n * 3 * h, 17);
    let mut parts = vec![vec![0f32; b * s * n * h]; 3];
    for bs in 0..b * s {
        for ni in 0..n {
            for k in 0..3 {
                for e in 0..h {
                    parts[k][(bs * n + ni) * h + e] = packed[((bs * n + ni) * 3 + k) * h + e];
                }
            }
        }
    }
    let bias = rand(3 * n * h, 18);
    let a = kiln_run(
        &op,
        1,
        &[
            t(&[b, s, n, 3, h], packed),
            None,
            None,
            t(&[3 * n * h], bias.clone()),
        ],
    );
    let sep: Vec<Option<Tensor>> = parts.into_iter().map(|p| t(&[b, s, n * h], p)).collect();
    let c = kiln_run(
        &op,
        1,
        &[
            sep[0].clone(),
            sep[1].clone(),
            sep[2].clone(),
            t(&[3 * n * h], bias),
        ],
    );
    assert_eq!(a[0].to_vec::<f32>().unwrap(), c[0].to_vec::<f32>().unwrap());
}
