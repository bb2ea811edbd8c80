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

/// `Gemm(a, w, bias)` of `[15, 8] × [8, 7]`, then (when `reshape`) a Reshape to `[3, 5, 7]`,
/// then Gelu spelled out, as -O1 leaves a transformer's feed-forward layer. `chain_const`
/// replaces the `0.5` by a `[7]` vector (not a scalar); `gemm_is_output` makes the Gemm's
/// result a graph output.
fn gemm_gelu_graph(reshape: bool, chain_const: bool, gemm_is_output: bool) -> Graph {
    let mut g = Graph::default();
    let a = input(&mut g, "a", &[15, 8]);
    let w = g.add_const(
        "w",
        Tensor::from_vec(
            vec![8, 7],
            (0..56).map(|i| (i as f32 - 28.0) / 17.0).collect(),
        )
        .unwrap(),
    );
    let b = g.add_const(
        "b",
        Tensor::from_vec(vec![7], (0..7).map(|i| i as f32 / 9.0 - 0.3).collect()).unwrap(),
    );
    let gemm = Op::Gemm(Gemm {
        alpha: 1.0,
        beta: 1.0,
        trans_a: false,
        trans_b: false,
    });
    let y = node(&mut g, gemm, &[a, w, b], "y");
    let x = if reshape {
        let to = g.add_const("to", Tensor::from_vec(vec![3], vec![3i64, 5, -1]).unwrap());
        node(
            &mut g,
            Op::Reshape(Reshape { allowzero: false }),
            &[y, to],
            "x",
        )
    } else {
        y
    };
    let c = |g: &mut Graph, n: &str, v: f32| g.add_const(n, Tensor::scalar(v));
    let s2 = c(&mut g, "sqrt2", std::f32::consts::SQRT_2);
    let one = c(&mut g, "one", 1.0);
    let half = if chain_const {
        g.add_const("half", Tensor::from_vec(vec![7], vec![0.5f32; 7]).unwrap())
    } else {
        c(&mut g, "half", 0.5)
    };
    let d = node(&mut g, Op::Div(Div {}), &[x, s2], "d");
    let e = node(&mut g, Op::Erf(Erf {}), &[d], "e");
    let p = node(&mut g, Op::Add(Add {}), &[e, one], "p");
    let m = node(&mut g, Op::Mul(Mul {}), &[x, p], "m");
    let out = node(&mut g, Op::Mul(Mul {}), &[m, half], "out");
    g.outputs.push(out);
    if gemm_is_output {
        g.outputs.push(y);
    }
    kiln_ir::infer::infer_graph(&mut g).unwrap();
    g
}

fn run_a(p: &Plan) -> Vec<Vec<u8>> {
    let a: Vec<f32> = (0..120)
        .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
        .collect();
    let a = Tensor::from_vec(vec![15, 8], a).unwrap();
    p.run(vec![("a".into(), Value::Tensor(a))])
        .unwrap()
        .into_iter()
        .map(|(_, v)| v.into_tensor().unwrap().bytes().to_vec())
        .collect()
}

fn plan_with(g: &Graph, f: Fusions) -> Plan {
    let mut opsets = BTreeMap::new();
    opsets.insert(String::new(), 20);
    compile_graph_with(g, &opsets, f).unwrap()
}

const NO_EPILOGUE: Fusions = Fusions {
    gemm_epilogue: false,
    ..Fusions::ALL
};

#[test]
fn a_chain_that_alone_reads_a_gemm_runs_in_its_store_with_the_same_bits() {
    const CHAIN: &str = "Gemm+Fused(Div+Erf+Add+Mul+Mul)";
    // Directly on the Gemm's result.
    let g = gemm_gelu_graph(false, false, false);
    let (fused, apart, plain) = (plan(&g, true), plan_with(&g, NO_EPILOGUE), plan(&g, false));
    assert_eq!(ops(&fused), [CHAIN]);
    assert_eq!(ops(&apart), ["Gemm", "Fused(Div+Erf+Add+Mul+Mul)"]);
    assert_eq!(run_a(&fused), run_a(&plain));
    assert_eq!(run_a(&apart), run_a(&plain));
    // Through the Reshape back to 3-D that -O1's MatMul + Add → Gemm leaves.
    let g = gemm_gelu_graph(true, false, false);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(ops(&fused), [CHAIN, "Reshape"]);
    assert_eq!(
        ops(&plan_with(&g, NO_EPILOGUE)),
        ["Gemm", "Reshape", "Fused(Div+Erf+Add+Mul+Mul)"]
    );
    let out = run_a(&fused);
    assert_eq!(out, run_a(&plain));
    assert_eq!(out[0].len(), 3 * 5 * 7 * 4);
}

#[test]
fn a_chain_stays_out_of_the_gemm_when_it_needs_more_than_scalars_or_the_gemm_result_is_read_elsewhere(
) {
    // A [7] vector operand: not a scalar the epilogue can hold.
    let g = gemm_gelu_graph(true, true, false);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(
        ops(&fused),
        ["Gemm", "Reshape", "Fused(Div+Erf+Add+Mul+Mul)"]
    );
    assert_eq!(run_a(&fused), run_a(&plain));
    // The Gemm's result is also a graph output: it must keep its own value.
    let g = gemm_gelu_graph(true, false, true);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(
        ops(&fused),
        ["Gemm", "Reshape", "Fused(Div+Erf+Add+Mul+Mul)"]
    );
    assert_eq!(run_a(&fused), run_a(&plain));
    let g = gemm_gelu_graph(false, false, true);
    assert_eq!(ops(&plan(&g, true)), ["Gemm", "Fused(Div+Erf+Add+Mul+Mul)"]);
}

/// `LayerNorm(a + b)` spelled out as the exporters write it (opset-18 ReduceMean, axes an
/// input), over `[2, 5, 6]`; `axis` is the ReduceMeans' axis, `sub_is_output` makes the
/// centred value a graph output.
fn layer_norm_graph(axis: i64, sub_is_output: bool) -> Graph {
    let mut g = Graph::default();
    let a = input(&mut g, "a", &[2, 5, 6]);
    let b = input(&mut g, "b", &[2, 5, 6]);
    let axes = g.add_const("axes", Tensor::from_vec(vec![1], vec![axis]).unwrap());
    let c = |g: &mut Graph, n: &str, v: f32| g.add_const(n, Tensor::scalar(v));
    let two = c(&mut g, "two", 2.0);
    let eps = c(&mut g, "eps", 1e-5);
    let gamma = g.add_const(
        "gamma",
        Tensor::from_vec(vec![6], (0..6).map(|i| 0.5 + i as f32 / 7.0).collect()).unwrap(),
    );
    let beta = g.add_const(
        "beta",
        Tensor::from_vec(vec![6], (0..6).map(|i| i as f32 / 3.0 - 1.0).collect()).unwrap(),
    );
    let mean = || {
        Op::ReduceMean(ReduceMean {
            keepdims: true,
            noop_with_empty_axes: false,
        })
    };
    let x = node(&mut g, Op::Add(Add {}), &[a, b], "x");
    let mu = node(&mut g, mean(), &[x, axes], "mu");
    let d = node(&mut g, Op::Sub(Sub {}), &[x, mu], "d");
    let p = node(&mut g, Op::Pow(Pow {}), &[d, two], "p");
    let var = node(&mut g, mean(), &[p, axes], "var");
    let ve = node(&mut g, Op::Add(Add {}), &[var, eps], "ve");
    let sd = node(&mut g, Op::Sqrt(Sqrt {}), &[ve], "sd");
    let n = node(&mut g, Op::Div(Div {}), &[d, sd], "n");
    let sc = node(&mut g, Op::Mul(Mul {}), &[n, gamma], "sc");
    let y = node(&mut g, Op::Add(Add {}), &[sc, beta], "y");
    g.outputs.push(y);
    if sub_is_output {
        g.outputs.push(d);
    }
    kiln_ir::infer::infer_graph(&mut g).unwrap();
    g
}

fn run_ab(p: &Plan) -> Vec<Vec<u8>> {
    let t = |s: usize| {
        let v = (0..60)
            .map(|i| (((i * 37 + s) % 101) as f32 / 25.0 - 2.0) * (1.0 + s as f32))
            .collect();
        Value::Tensor(Tensor::from_vec(vec![2, 5, 6], v).unwrap())
    };
    p.run(vec![("a".into(), t(0)), ("b".into(), t(3))])
        .unwrap()
        .into_iter()
        .map(|(_, v)| v.into_tensor().unwrap().bytes().to_vec())
        .collect()
}

#[test]
fn a_layer_norm_spelled_out_runs_row_by_row_with_the_same_bits() {
    let g = layer_norm_graph(-1, false);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(
        ops(&fused),
        ["Fused(Add+ReduceMean+Sub+Pow+ReduceMean+Add+Sqrt+Div+Mul+Add)"]
    );
    assert_eq!(run_ab(&fused), run_ab(&plain));
    // The last axis by its number.
    let g = layer_norm_graph(2, false);
    assert_eq!(ops(&plan(&g, true)).len(), 1);
    // Without row fusion, only the element-wise chains fuse.
    let apart = plan_with(
        &layer_norm_graph(-1, false),
        Fusions {
            rows: false,
            ..Fusions::ALL
        },
    );
    assert!(ops(&apart).contains(&"ReduceMean".to_string()));
    assert_eq!(run_ab(&apart), run_ab(&plain));
}

#[test]
fn row_fusion_needs_last_axis_means_and_private_values() {
    // Means over axis 1: not rows of the last axis.
    let g = layer_norm_graph(1, false);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(
        ops(&fused),
        [
            "Add",
            "ReduceMean",
            "Sub",
            "Pow",
            "ReduceMean",
            "Fused(Add+Sqrt)",
            "Fused(Div+Mul+Add)"
        ]
    );
    assert_eq!(run_ab(&fused), run_ab(&plain));
    // The centred value is a graph output: it stays a value, so the row group ending in `y`
    // stops at it, and the one computing it is a row group of its own.
    let g = layer_norm_graph(-1, true);
    let (fused, plain) = (plan(&g, true), plan(&g, false));
    assert_eq!(
        ops(&fused),
        [
            "Fused(Add+ReduceMean+Sub)",
            "Fused(Pow+ReduceMean+Add+Sqrt+Div+Mul+Add)"
        ]
    );
    assert_eq!(run_ab(&fused), run_ab(&plain));
}
