//! Elementwise chains fused into one plan step: which nodes join a group (and which must
//! not), and that the fused plan computes bit for bit what the unfused one does.

use std::collections::BTreeMap;

mod common;

use common::{input, node};
use kiln_codegen::{compile_graph_with, Fusions};
use kiln_ir::op::*;
use kiln_ir::{Graph, Op, Tensor};
use kiln_runtime::{Plan, Value};

/// `y = x·0.5·(1 + erf(x/√2))` after a MatMul, as the exporters write Gelu; `extra` adds a
/// reader of the `erf` value outside the chain (a Relu that is a graph output).
fn gelu_graph(extra: bool, erf_is_output: bool) -> Graph {
    let mut g = Graph::default();
    let a = input(&mut g, "a", &[3, 5, 8]);
    let w = g.add_const(
        "w",
        Tensor::from_vec(
            vec![8, 7],
            (0..56).map(|i| (i as f32 - 28.0) / 17.0).collect(),
        )
        .unwrap(),
    );
    let x = node(&mut g, Op::MatMul(MatMul {}), &[a, w], "x");
    let c = |g: &mut Graph, n: &str, v: f32| g.add_const(n, Tensor::scalar(v));
    let s2 = c(&mut g, "sqrt2", std::f32::consts::SQRT_2);
    let one = c(&mut g, "one", 1.0);
    let half = c(&mut g, "half", 0.5);
    let d = node(&mut g, Op::Div(Div {}), &[x, s2], "d");
    let e = node(&mut g, Op::Erf(Erf {}), &[d], "e");
    let p = node(&mut g, Op::Add(Add {}), &[e, one], "p");
    let m = node(&mut g, Op::Mul(Mul {}), &[x, p], "m");
    let y = node(&mut g, Op::Mul(Mul {}), &[m, half], "y");
    g.outputs.push(y);
    if extra {
        let r = node(&mut g, Op::Relu(Relu {}), &[e], "r");
        let t = node(&mut g, Op::Transpose(Transpose { perm: None }), &[r], "t");
        g.outputs.push(t);
    }
    if erf_is_output {
        g.outputs.push(e);
    }
    kiln_ir::infer::infer_graph(&mut g).unwrap();
    g
}

fn plan(g: &Graph, fuse: bool) -> Plan {
    let mut opsets = BTreeMap::new();
    opsets.insert(String::new(), 20);
    let f = if fuse { Fusions::ALL } else { Fusions::NONE };
    compile_graph_with(g, &opsets, f).unwrap()
}

fn ops(p: &Plan) -> Vec<String> {
    p.steps.iter().map(|s| s.op.clone()).collect()
}

fn run(p: &Plan) -> Vec<Vec<u8>> {
    let a: Vec<f32> = (0..120)
        .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
        .collect();
    let a = Tensor::from_vec(vec![3, 5, 8], a).unwrap();
    p.run(vec![("a".into(), Value::Tensor(a))])
        .unwrap()
        .into_iter()
        .map(|(_, v)| v.into_tensor().unwrap().bytes().to_vec())
        .collect()
}

#[test]
fn gelu_chain_becomes_one_step_with_the_same_bits() {
    let g = gelu_graph(false, false);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(ops(&fused), ["MatMul", "Fused(Div+Erf+Add+Mul+Mul)"]);
    assert_eq!(ops(&plain), ["MatMul", "Div", "Erf", "Add", "Mul", "Mul"]);
    assert_eq!(run(&fused), run(&plain));
}

#[test]
fn a_value_read_outside_the_chain_is_not_fused_away() {
    // `e` is also read by a Relu → Transpose: the Relu joins nothing (its reader is not
    // fusible), so `e` must stay a value, and the chain splits around it.
    let g = gelu_graph(true, false);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(
        ops(&fused),
        [
            "MatMul",
            "Fused(Div+Erf)",
            "Fused(Add+Mul+Mul)",
            "Relu",
            "Transpose"
        ]
    );
    assert_eq!(run(&fused), run(&plain));
    // A graph output in the middle of the chain splits it the same way.
    let g = gelu_graph(false, true);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(
        ops(&fused),
        ["MatMul", "Fused(Div+Erf)", "Fused(Add+Mul+Mul)"]
    );
    assert_eq!(run(&fused), run(&plain));
}

#[test]
fn a_producer_broadcast_into_the_chain_stays_outside() {
    // `sqrt(v)` is [3, 5, 1], the Div's result [3, 5, 7]: fused, the square root would run
    // once per element of the result instead of once per row. Only Div → Mul fuse.
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[3, 5, 7]);
    let v = input(&mut g, "v", &[3, 5, 1]);
    let s = node(&mut g, Op::Sqrt(Sqrt {}), &[v], "s");
    let d = node(&mut g, Op::Div(Div {}), &[x, s], "d");
    let y = node(&mut g, Op::Mul(Mul {}), &[d, x], "y");
    g.outputs.push(y);
    kiln_ir::infer::infer_graph(&mut g).unwrap();
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(ops(&fused), ["Sqrt", "Fused(Div+Mul)"]);
    let xs = Tensor::from_vec(
        vec![3, 5, 7],
        (0..105).map(|i| i as f32 * 0.37 - 9.0).collect(),
    )
    .unwrap();
    let vs = Tensor::from_vec(
        vec![3, 5, 1],
        (0..15).map(|i| i as f32 * 1.3 + 0.1).collect(),
    )
    .unwrap();
    let go = |p: &Plan| {
        p.run(vec![
            ("x".into(), Value::Tensor(xs.clone())),
            ("v".into(), Value::Tensor(vs.clone())),
        ])
        .unwrap()
        .into_iter()
        .map(|(_, v)| v.into_tensor().unwrap().bytes().to_vec())
        .collect::<Vec<_>>()
    };
    assert_eq!(go(&fused), go(&plain));
}
