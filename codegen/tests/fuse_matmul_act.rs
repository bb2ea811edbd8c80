//! `MatMul(x, W)` followed by the `BiasGelu` / `FastGelu` / `Gelu` that alone reads it runs as
//! one packed GEMM with the bias and the activation in its store: which graphs fuse (and which
//! must not), and that the fused step computes `act(x·W + bias)` as the math says (an f64
//! reference with `erf` / `tanh`), within the vectorized activations' error.

use std::collections::BTreeMap;

mod common;

use common::{input, node};
use kiln_codegen::{compile_graph_with, Fusions};
use kiln_ir::op::*;
use kiln_ir::{Graph, Op, Tensor, ValueId};
use kiln_runtime::{Plan, Value};

const M: usize = 13;
const K: usize = 19;
const N: usize = 37;

fn w_vals() -> Vec<f32> {
    (0..K * N)
        .map(|i| ((i * 29) % 83) as f32 / 40.0 - 1.0)
        .collect()
}

fn b_vals(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - 15.0) / 11.0).collect()
}

fn x_vals() -> Vec<f32> {
    (0..M * K)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect()
}

/// What to build after the MatMul.
#[derive(Clone, Copy)]
enum Act {
    BiasGelu,
    FastGelu { bias: bool },
    MsGelu,
    Gelu { tanh: bool },
}

/// How to spoil the pattern.
#[derive(Clone, Copy, PartialEq)]
enum Spoil {
    None,
    /// The MatMul's result is also a graph output.
    ProductIsOutput,
    /// W is a graph input, not a constant.
    WeightIsInput,
    /// The bias is `[1, N]`: it broadcasts, and the result need not keep the product's shape.
    BiasOfRankTwo,
}

/// `act(x·W [+ bias])` with `x: [1, M, K]`.
fn graph(act: Act, spoil: Spoil) -> Graph {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[1, M as i64, K as i64]);
    let w = if spoil == Spoil::WeightIsInput {
        input(&mut g, "w", &[K as i64, N as i64])
    } else {
        g.add_const("w", Tensor::from_vec(vec![K, N], w_vals()).unwrap())
    };
    let y = node(&mut g, Op::MatMul(MatMul {}), &[x, w], "y");
    let bias = |g: &mut Graph| -> ValueId {
        let shape = if spoil == Spoil::BiasOfRankTwo {
            vec![1, N]
        } else {
            vec![N]
        };
        g.add_const("b", Tensor::from_vec(shape, b_vals(N)).unwrap())
    };
    let out = match act {
        Act::BiasGelu => {
            let b = bias(&mut g);
            node(&mut g, Op::BiasGelu(BiasGelu {}), &[y, b], "out")
        }
        Act::FastGelu { bias: true } => {
            let b = bias(&mut g);
            node(&mut g, Op::FastGelu(FastGelu {}), &[y, b], "out")
        }
        Act::FastGelu { bias: false } => node(&mut g, Op::FastGelu(FastGelu {}), &[y], "out"),
        Act::MsGelu => node(&mut g, Op::MsGelu(MsGelu {}), &[y], "out"),
        Act::Gelu { tanh } => node(
            &mut g,
            Op::Gelu(Gelu {
                approximate: if tanh { "tanh" } else { "none" }.into(),
            }),
            &[y],
            "out",
        ),
    };
    g.outputs.push(out);
    if spoil == Spoil::ProductIsOutput {
        g.outputs.push(y);
    }
    kiln_ir::infer::infer_graph(&mut g).unwrap();
    g
}

fn plan(g: &Graph, f: Fusions) -> Plan {
    let mut opsets = BTreeMap::new();
    opsets.insert(String::new(), 20);
    opsets.insert("com.microsoft".into(), 1);
    compile_graph_with(g, &opsets, f).unwrap()
}

fn ops(p: &Plan) -> Vec<String> {
    p.steps.iter().map(|s| s.op.clone()).collect()
}

/// The first output, as f32.
fn run(p: &Plan, spoil: Spoil) -> Vec<f32> {
    let mut feeds = vec![(
        "x".to_string(),
        Value::Tensor(Tensor::from_vec(vec![1, M, K], x_vals()).unwrap()),
    )];
    if spoil == Spoil::WeightIsInput {
        feeds.push((
            "w".into(),
            Value::Tensor(Tensor::from_vec(vec![K, N], w_vals()).unwrap()),
        ));
    }
    let out = p.run(feeds).unwrap();
    let t = out.into_iter().next().unwrap().1.into_tensor().unwrap();
    assert_eq!(t.shape(), [1, M, N]);
    t.as_slice::<f32>().unwrap().to_vec()
}

/// `act(x·W + bias)` in f64.
fn reference(act: Act) -> Vec<f64> {
    let (x, w) = (x_vals(), w_vals());
    let bias = match act {
        Act::BiasGelu | Act::FastGelu { bias: true } => b_vals(N),
        _ => vec![0.0; N],
    };
    let tanh = matches!(act, Act::FastGelu { .. } | Act::Gelu { tanh: true });
    let mut out = Vec::with_capacity(M * N);
    for i in 0..M {
        for j in 0..N {
            let v: f64 = (0..K)
                .map(|k| x[i * K + k] as f64 * w[k * N + j] as f64)
                .sum::<f64>()
                + bias[j] as f64;
            out.push(if tanh {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
            } else {
                0.5 * v * (1.0 + libm_erf(v / std::f64::consts::SQRT_2))
            });
        }
    }
    out
}

/// erf to ~1e-7 (Abramowitz–Stegun 7.1.26 is 1.5e-7): the test's tolerance is 2e-5.
fn libm_erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()),
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

const ALL_ACTS: [(Act, &str); 6] = [
    (Act::BiasGelu, "MatMul+com.microsoft.BiasGelu"),
    (
        Act::FastGelu { bias: true },
        "MatMul+com.microsoft.FastGelu",
    ),
    (
        Act::FastGelu { bias: false },
        "MatMul+com.microsoft.FastGelu",
    ),
    (Act::MsGelu, "MatMul+com.microsoft.Gelu"),
    (Act::Gelu { tanh: false }, "MatMul+Gelu"),
    (Act::Gelu { tanh: true }, "MatMul+Gelu"),
];

#[test]
fn matmul_and_the_gelu_that_alone_reads_it_become_one_gemm_that_matches_the_math() {
    for (act, name) in ALL_ACTS {
        let g = graph(act, Spoil::None);
        let fused = plan(&g, Fusions::ALL);
        assert_eq!(ops(&fused), [name]);
        let apart = plan(&g, Fusions::NONE);
        assert_eq!(ops(&apart).len(), 2, "{name}: unfused {:?}", ops(&apart));
        let want = reference(act);
        assert_close(&run(&fused, Spoil::None), &want, name);
        assert_close(&run(&apart, Spoil::None), &want, &format!("{name} unfused"));
    }
}

#[test]
fn a_product_read_elsewhere_a_weight_that_is_no_constant_or_a_broadcasting_bias_stay_apart() {
    for spoil in [
        Spoil::ProductIsOutput,
        Spoil::WeightIsInput,
        Spoil::BiasOfRankTwo,
    ] {
        for (act, name) in [ALL_ACTS[0], ALL_ACTS[1], ALL_ACTS[4]] {
            if spoil == Spoil::BiasOfRankTwo && matches!(act, Act::Gelu { .. }) {
                continue;
            }
            let g = graph(act, spoil);
            let fused = plan(&g, Fusions::ALL);
            assert!(
                !ops(&fused).iter().any(|o| o.starts_with("MatMul+")),
                "{name} fused although spoiled: {:?}",
                ops(&fused)
            );
            assert_eq!(ops(&fused).len(), 2);
            assert_close(&run(&fused, spoil), &reference(act), name);
        }
    }
}
