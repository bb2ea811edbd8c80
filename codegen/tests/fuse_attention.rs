//! Attention spelled out op by op (`MatMul → Add → Softmax → IsNaN/Where → MatMul`, with
//! the Transposes and scalar Muls in front of the MatMuls) lowered to one `AttentionCore`
//! step: which chains fuse (and which must not), and that the fused plan computes what the
//! unfused one does.

use std::collections::BTreeMap;

mod common;

use common::{input, node};
use kiln_codegen::{compile_graph_with, Fusions};
use kiln_ir::op::*;
use kiln_ir::{Graph, Op, Tensor, ValueId};
use kiln_runtime::{Plan, Value};

fn transpose(g: &mut Graph, x: ValueId, perm: &[i64], out: &str) -> ValueId {
    let op = Op::Transpose(Transpose {
        perm: Some(perm.to_vec()),
    });
    node(g, op, &[x], out)
}

/// How a test graph departs from the SDPA export's pattern.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Sdpa,
    ScoresAreAnOutput,
    SoftmaxOnAxis2,
    ProbabilitiesAsRightOperand,
    /// The heads' output before the Transpose that merges them is an output too.
    HeadsAreAnOutput,
    /// A Reshape that keeps the heads' shape before that Transpose (BERT's export).
    ReshapeBeforeMerge,
}

/// The SDPA export's attention on `[B=2, S=5, H=3, D=4]` heads: Q and K scaled separately,
/// an additive `[B, 1, 1, S]` mask, the NaN scrub after Softmax, the result transposed back.
fn attention_graph(v: Variant) -> Graph {
    let mut g = Graph::default();
    let qx = input(&mut g, "q", &[2, 5, 3, 4]);
    let kx = input(&mut g, "k", &[2, 5, 3, 4]);
    let vx = input(&mut g, "v", &[2, 5, 3, 4]);
    let mask = input(&mut g, "mask", &[2, 1, 1, 5]);
    let sq = g.add_const("sq", Tensor::scalar(0.7f32));
    let sk = g.add_const("sk", Tensor::scalar(0.6f32));
    let zero = g.add_const("zero", Tensor::scalar(0f32));
    let q = transpose(&mut g, qx, &[0, 2, 1, 3], "qt");
    let q = node(&mut g, Op::Mul(Mul {}), &[q, sq], "qs");
    let k = transpose(&mut g, kx, &[0, 2, 3, 1], "kt");
    let k = node(&mut g, Op::Mul(Mul {}), &[k, sk], "ks");
    let s = node(&mut g, Op::MatMul(MatMul {}), &[q, k], "scores");
    let a = node(&mut g, Op::Add(Add {}), &[s, mask], "masked");
    let axis = if v == Variant::SoftmaxOnAxis2 { 2 } else { -1 };
    let p = node(&mut g, Op::Softmax(Softmax { axis }), &[a], "probs");
    let nan = node(&mut g, Op::IsNaN(IsNaN {}), &[p], "nan");
    let w = node(&mut g, Op::Where(Where {}), &[nan, zero, p], "scrubbed");
    let o = if v == Variant::ProbabilitiesAsRightOperand {
        let vt = transpose(&mut g, vx, &[0, 2, 3, 1], "vt");
        node(&mut g, Op::MatMul(MatMul {}), &[vt, w], "o")
    } else {
        let vt = transpose(&mut g, vx, &[0, 2, 1, 3], "vt");
        node(&mut g, Op::MatMul(MatMul {}), &[w, vt], "o")
    };
    let o = if v == Variant::ReshapeBeforeMerge {
        let dims = g.add_const(
            "dims",
            Tensor::from_vec(vec![4], vec![2i64, 3, 5, 4]).unwrap(),
        );
        node(
            &mut g,
            Op::Reshape(Reshape { allowzero: false }),
            &[o, dims],
            "o2",
        )
    } else {
        o
    };
    let y = transpose(&mut g, o, &[0, 2, 1, 3], "y");
    g.outputs.push(y);
    if v == Variant::ScoresAreAnOutput {
        g.outputs.push(a);
    }
    if v == Variant::HeadsAreAnOutput {
        g.outputs.push(o);
    }
    kiln_ir::infer::infer_graph(&mut g).unwrap();
    g
}

fn plan(g: &Graph, f: Fusions) -> Plan {
    let mut opsets = BTreeMap::new();
    opsets.insert(String::new(), 20);
    compile_graph_with(g, &opsets, f).unwrap()
}

fn ops(p: &Plan) -> Vec<String> {
    p.steps.iter().map(|s| s.op.clone()).collect()
}

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + seed * 11) % 101) as f32 / 25.0 - 2.0)
        .collect()
}

/// The plan's outputs on fixed inputs; batch 1's mask hides every key (all −∞), so its
/// rows go through Softmax as NaN and come out of the scrub as 0.
fn run(p: &Plan) -> Vec<Tensor> {
    let heads = |seed| Tensor::from_vec(vec![2, 5, 3, 4], data(120, seed)).unwrap();
    let mut m = vec![0f32, -1.5, 0.0, f32::NEG_INFINITY, 0.25];
    m.extend([f32::NEG_INFINITY; 5]);
    let mask = Tensor::from_vec(vec![2, 1, 1, 5], m).unwrap();
    p.run(vec![
        ("q".into(), Value::Tensor(heads(1))),
        ("k".into(), Value::Tensor(heads(2))),
        ("v".into(), Value::Tensor(heads(3))),
        ("mask".into(), Value::Tensor(mask)),
    ])
    .unwrap()
    .into_iter()
    .map(|(_, v)| v.into_tensor().unwrap())
    .collect()
}

fn assert_close(a: &[Tensor], b: &[Tensor]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape());
        let (x, y) = (x.to_f64_vec().unwrap(), y.to_f64_vec().unwrap());
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            let ok =
                (p.is_nan() && q.is_nan()) || p == q || (p - q).abs() <= 1e-5 * (1.0 + q.abs());
            assert!(ok, "element {i}: {p} vs {q}");
        }
    }
}

#[test]
fn sdpa_attention_becomes_one_step() {
    for v in [Variant::Sdpa, Variant::ReshapeBeforeMerge] {
        sdpa_becomes_one_step(v);
    }
}

fn sdpa_becomes_one_step(v: Variant) {
    let g = attention_graph(v);
    let (fused, plain) = (plan(&g, Fusions::ALL), plan(&g, Fusions::NONE));
    let f = ops(&fused);
    assert_eq!(f.len(), 1, "{f:?}");
    // Every node, the Transpose that merges the heads included.
    let mut inner: Vec<&str> = f[0]
        .strip_prefix("Fused(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap()
        .split('+')
        .collect();
    inner.sort();
    let mut want = [
        "Transpose",
        "Mul",
        "Transpose",
        "Mul",
        "MatMul",
        "Add",
        "Softmax",
        "IsNaN",
        "Where",
        "Transpose",
        "MatMul",
        "Transpose",
    ]
    .to_vec();
    if v == Variant::ReshapeBeforeMerge {
        want.push("Reshape");
    }
    want.sort();
    assert_eq!(inner, want);
    let (a, b) = (run(&fused), run(&plain));
    assert_close(&a, &b);
    // Batch 1 saw no key: the scrub made its output exactly 0.
    let y = a[0].to_f64_vec().unwrap();
    assert!(y[60..].iter().all(|&v| v == 0.0));
    assert!(y[..60].iter().any(|&v| v != 0.0));
}

#[test]
fn heads_read_elsewhere_keep_their_transpose() {
    let g = attention_graph(Variant::HeadsAreAnOutput);
    let (fused, plain) = (plan(&g, Fusions::ALL), plan(&g, Fusions::NONE));
    let f = ops(&fused);
    // The core (writing the heads' layout, which is an output) and the Transpose after it.
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f[0].starts_with("Fused(") && f[0].ends_with("MatMul)"),
        "{f:?}"
    );
    assert_eq!(f[1], "Transpose");
    assert_close(&run(&fused), &run(&plain));
}

#[test]
fn near_misses_do_not_fuse_the_attention() {
    for v in [
        Variant::ScoresAreAnOutput,
        Variant::SoftmaxOnAxis2,
        Variant::ProbabilitiesAsRightOperand,
    ] {
        let g = attention_graph(v);
        let (fused, plain) = (plan(&g, Fusions::ALL), plan(&g, Fusions::NONE));
        let f = ops(&fused);
        assert!(
            f.iter().any(|o| o == "Softmax") && f.iter().filter(|o| *o == "MatMul").count() == 2,
            "{f:?}"
        );
        assert_close(&run(&fused), &run(&plain));
    }
}
