//! Channel-blocked lowering (NCHWc): which convolutions and pools run blocked (a chain whose
//! values nothing else reads; graph outputs and other readers keep NCHW), and that the plan
//! computes what the NCHW plan does.

use std::collections::BTreeMap;

mod common;

use common::{input, node};
use kiln_codegen::{compile_graph_with, Fusions};
use kiln_ir::op::*;
use kiln_ir::{Graph, Op, Tensor, ValueId};
use kiln_runtime::{Plan, Value};

fn weights(g: &mut Graph, name: &str, shape: [usize; 4], seed: usize) -> ValueId {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 - 0.5) * 0.4)
        .collect();
    g.add_const(name, Tensor::from_vec(shape.to_vec(), v).unwrap())
}

fn bias(g: &mut Graph, name: &str, m: usize) -> ValueId {
    let v = (0..m).map(|i| (i as f32 - 5.0) / 7.0).collect();
    g.add_const(name, Tensor::from_vec(vec![m], v).unwrap())
}

fn fused(k: i64, s: i64, p: i64, relu: bool) -> Op {
    Op::FusedConv(FusedConv {
        auto_pad: "NOTSET".into(),
        dilations: None,
        group: 1,
        kernel_shape: Some(vec![k, k]),
        pads: Some(vec![p; 4]),
        strides: Some(vec![s, s]),
        activation: relu.then(|| "Relu".into()),
        activation_params: None,
    })
}

/// A ResNet in small: stem (3 → 16, 7×7 stride 2, Relu), max pool, 3×3 (16 → 24), 1×1
/// (24 → 16) with the pool's output as residual `Z` and Relu, a plain 3×3 stride-2 Conv,
/// global average pool. `pool_out`: the pool's output is also a graph output; `relu_reader`:
/// a Relu outside the chain also reads the 3×3 convolution's output.
fn resnet_like(pool_out: bool, relu_reader: bool) -> Graph {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[2, 3, 23, 19]);
    let w1 = weights(&mut g, "w1", [16, 3, 7, 7], 1);
    let b1 = bias(&mut g, "b1", 16);
    let stem = node(&mut g, fused(7, 2, 3, true), &[x, w1, b1], "stem");
    let pool = node(
        &mut g,
        Op::MaxPool(MaxPool {
            auto_pad: "NOTSET".into(),
            ceil_mode: false,
            dilations: None,
            kernel_shape: vec![3, 3],
            pads: Some(vec![1; 4]),
            storage_order: 0,
            strides: Some(vec![2, 2]),
        }),
        &[stem],
        "pool",
    );
    let w2 = weights(&mut g, "w2", [24, 16, 3, 3], 2);
    let b2 = bias(&mut g, "b2", 24);
    let c2 = node(&mut g, fused(3, 1, 1, true), &[pool, w2, b2], "c2");
    let w3 = weights(&mut g, "w3", [16, 24, 1, 1], 3);
    let b3 = bias(&mut g, "b3", 16);
    let n = g.add_node(
        "c3",
        fused(1, 1, 0, true),
        vec![Some(c2), Some(w3), Some(b3), Some(pool)],
        &["c3"],
    );
    let c3 = g.node(n).outputs[0];
    let w4 = weights(&mut g, "w4", [32, 16, 3, 3], 4);
    let c4 = node(
        &mut g,
        Op::Conv(Conv {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: Some(vec![3, 3]),
            pads: Some(vec![1; 4]),
            strides: Some(vec![2, 2]),
        }),
        &[c3, w4],
        "c4",
    );
    let y = node(
        &mut g,
        Op::GlobalAveragePool(GlobalAveragePool {}),
        &[c4],
        "y",
    );
    g.outputs.push(y);
    if pool_out {
        g.outputs.push(pool);
    }
    if relu_reader {
        let r = node(&mut g, Op::Relu(Relu {}), &[c2], "r");
        g.outputs.push(r);
    }
    kiln_ir::infer::infer_graph(&mut g).unwrap();
    g
}

fn plan(g: &Graph, nchwc: bool) -> Plan {
    let mut opsets = BTreeMap::new();
    opsets.insert(String::new(), 20);
    opsets.insert("com.microsoft".into(), 1);
    let f = Fusions {
        nchwc,
        ..Fusions::NONE
    };
    compile_graph_with(g, &opsets, f).unwrap()
}

/// Each step's node and algorithm.
fn algorithms(p: &Plan) -> Vec<(String, &'static str)> {
    p.steps
        .iter()
        .map(|s| (s.node.clone(), s.kernel.algorithm().unwrap_or("-")))
        .collect()
}

fn run(p: &Plan) -> Vec<(Vec<usize>, Vec<f32>)> {
    let x: Vec<f32> = (0..2 * 3 * 23 * 19)
        .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
        .collect();
    let x = Tensor::from_vec(vec![2, 3, 23, 19], x).unwrap();
    p.run(vec![("x".into(), Value::Tensor(x))])
        .unwrap()
        .into_iter()
        .map(|(_, v)| {
            let t = v.into_tensor().unwrap();
            (t.shape().to_vec(), t.as_slice::<f32>().unwrap().to_vec())
        })
        .collect()
}

fn assert_close(a: &[(Vec<usize>, Vec<f32>)], b: &[(Vec<usize>, Vec<f32>)]) {
    assert_eq!(a.len(), b.len());
    for ((sa, va), (sb, vb)) in a.iter().zip(b) {
        assert_eq!(sa, sb);
        for (x, y) in va.iter().zip(vb) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}

fn step(a: &[(String, &'static str)], node: &str) -> &'static str {
    a.iter().find(|(n, _)| n == node).map(|(_, a)| *a).unwrap()
}

#[test]
fn a_chain_runs_blocked_from_the_stem_to_the_global_pool() {
    let g = resnet_like(false, false);
    let (blocked, plain) = (plan(&g, true), plan(&g, false));
    let a = algorithms(&blocked);
    assert_eq!(step(&a, "stem"), "nchw→nchwc");
    for n in ["c2", "c3", "c4"] {
        assert_eq!(step(&a, n), "nchwc", "{n}");
    }
    assert!(algorithms(&plain)
        .iter()
        .all(|(_, a)| !a.starts_with("nchw")));
    let (rb, rp) = (run(&blocked), run(&plain));
    assert_eq!(rb[0].0, [2, 32, 1, 1]);
    assert_close(&rb, &rp);
}

#[test]
fn values_read_outside_the_chain_stay_nchw() {
    // The pool's output is a graph output: the pool runs NCHW, so the stem writes NCHW; c3
    // adds the pool's output as Z, so it writes NCHW, and so does c2, which only c3 reads;
    // c4 reads c3's output in place and writes blocked for the global pool.
    let g = resnet_like(true, false);
    let a = algorithms(&plan(&g, true));
    assert_eq!(step(&a, "stem"), "gemm");
    assert_eq!(step(&a, "c3"), "gemm");
    assert_eq!(step(&a, "c4"), "nchw→nchwc");
    assert_close(&run(&plan(&g, true)), &run(&plan(&g, false)));

    // A Relu outside the chain reads c2's output: c2 writes NCHW, so the pool (read only by
    // c2) does too and so does the stem; c3 adds the pool's NCHW output as Z, so it writes
    // NCHW; c4 reads that in place and writes blocked for the global pool.
    let g = resnet_like(false, true);
    let a = algorithms(&plan(&g, true));
    for n in ["stem", "c2", "c3"] {
        assert_eq!(step(&a, n), "gemm", "{n}");
    }
    assert_eq!(step(&a, "c4"), "nchw→nchwc");
    assert_close(&run(&plan(&g, true)), &run(&plan(&g, false)));
}

#[test]
fn three_by_three_stride_one_layers_of_a_chain_run_winograd_on_blocked_images() {
    // 16 channels at 16² have 16 tiles of 4×4 outputs: enough for Winograd.
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[2, 16, 16, 16]);
    let w1 = weights(&mut g, "w1", [16, 16, 1, 1], 5);
    let b1 = bias(&mut g, "b1", 16);
    let c1 = node(&mut g, fused(1, 1, 0, true), &[x, w1, b1], "c1");
    let w2 = weights(&mut g, "w2", [24, 16, 3, 3], 6);
    let b2 = bias(&mut g, "b2", 24);
    let c2 = node(&mut g, fused(3, 1, 1, true), &[c1, w2, b2], "c2");
    let y = node(
        &mut g,
        Op::GlobalAveragePool(GlobalAveragePool {}),
        &[c2],
        "y",
    );
    g.outputs.push(y);
    kiln_ir::infer::infer_graph(&mut g).unwrap();
    let (blocked, plain) = (plan(&g, true), plan(&g, false));
    let a = algorithms(&blocked);
    assert_eq!(step(&a, "c1"), "nchw→nchwc");
    assert_eq!(step(&a, "c2"), "nchwc-winograd");
    let xv: Vec<f32> = (0..2 * 16 * 16 * 16)
        .map(|i| ((i * 53) % 97) as f32 / 24.0 - 2.0)
        .collect();
    let run = |p: &Plan| {
        let x = Tensor::from_vec(vec![2, 16, 16, 16], xv.clone()).unwrap();
        p.run(vec![("x".into(), Value::Tensor(x))])
            .unwrap()
            .into_iter()
            .map(|(_, v)| {
                let t = v.into_tensor().unwrap();
                (t.shape().to_vec(), t.as_slice::<f32>().unwrap().to_vec())
            })
            .collect::<Vec<_>>()
    };
    let (rb, rp) = (run(&blocked), run(&plain));
    assert_eq!(rb[0].0, [2, 24, 1, 1]);
    assert_close(&rb, &rp);
}
