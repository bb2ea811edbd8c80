//! Snapshot tests of the normalization, Gelu and linear fusions: the printed IR before and
//! after, the rewrites per pass, and the near misses (`kiln optimize --explain`).

use kiln_ir::op::*;
use kiln_ir::{DType, Dim, Graph, Model, Op, Tensor, Type, ValueId};
use kiln_transforms::{optimize, Level, Options};

fn model(g: Graph) -> Model {
    let mut m = Model {
        graph: g,
        ..Default::default()
    };
    m.opsets.insert(String::new(), 20);
    kiln_ir::infer::infer_graph(&mut m.graph).unwrap();
    m
}

fn run(g: Graph, level: Level) -> String {
    let mut m = model(g);
    let before = m.graph.to_string();
    let report = optimize(&mut m, &Options::level(level)).unwrap();
    kiln_ir::verify::verify(&m.graph).unwrap();
    kiln_ir::infer::check_types(&m.graph).unwrap();
    let misses: Vec<String> = report
        .near_misses
        .iter()
        .map(|n| format!("near miss: {} at `{}`: {}", n.pass, n.node, n.reason))
        .collect();
    format!(
        "{before}\n--- {:?}\n{}\n\n{}",
        report
            .rewrites
            .iter()
            .filter(|r| r.1 > 0)
            .collect::<Vec<_>>(),
        misses.join("\n"),
        m.graph
    )
}

fn input(g: &mut Graph, name: &str, dims: &[&str]) -> ValueId {
    let shape = dims
        .iter()
        .map(|d| {
            d.parse::<i64>()
                .map(Dim::from)
                .unwrap_or_else(|_| Dim::sym(d))
        })
        .collect();
    g.add_input(name, Some(Type::tensor(DType::F32, shape)))
}

fn scalar(g: &mut Graph, name: &str, v: f32) -> ValueId {
    g.add_const(name, Tensor::scalar(v))
}

fn vector(g: &mut Graph, name: &str, v: &[f32]) -> ValueId {
    g.add_const(name, Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap())
}

fn ints(g: &mut Graph, name: &str, v: &[i64]) -> ValueId {
    g.add_const(name, Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap())
}

/// Adds `op(inputs)` with one output named `out`; returns that output.
fn node(g: &mut Graph, op: Op, inputs: &[ValueId], out: &str) -> ValueId {
    let n = g.add_node(out, op, inputs.iter().map(|&v| Some(v)).collect(), &[out]);
    g.node(n).outputs[0]
}

fn add(g: &mut Graph, a: ValueId, b: ValueId, out: &str) -> ValueId {
    node(g, Op::Add(Add {}), &[a, b], out)
}

fn mul(g: &mut Graph, a: ValueId, b: ValueId, out: &str) -> ValueId {
    node(g, Op::Mul(Mul {}), &[a, b], out)
}

fn mean(g: &mut Graph, x: ValueId, axes: &[i64], out: &str) -> ValueId {
    let a = ints(g, &format!("{out}_axes"), axes);
    node(
        g,
        Op::ReduceMean(ReduceMean {
            keepdims: true,
            noop_with_empty_axes: false,
        }),
        &[x, a],
        out,
    )
}

const H: usize = 4;

fn gamma_beta(g: &mut Graph) -> (ValueId, ValueId) {
    (
        vector(g, "gamma", &[1.0, 2.0, 3.0, 4.0]),
        vector(g, "beta", &[0.1, 0.2, 0.3, 0.4]),
    )
}

/// The written-out LayerNorm of `x` (axis `axis`, `eps` a value, square by Pow or Mul).
fn layer_norm_chain(
    g: &mut Graph,
    x: ValueId,
    axis: i64,
    eps: ValueId,
    pow: bool,
) -> (ValueId, ValueId) {
    let m = mean(g, x, &[axis], "mean");
    let d = node(g, Op::Sub(Sub {}), &[x, m], "d");
    let sq = if pow {
        let two = scalar(g, "two", 2.0);
        node(g, Op::Pow(Pow {}), &[d, two], "sq")
    } else {
        mul(g, d, d, "sq")
    };
    let var = mean(g, sq, &[axis], "var");
    let ve = add(g, var, eps, "var_eps");
    let sd = node(g, Op::Sqrt(Sqrt {}), &[ve], "std");
    let n = node(g, Op::Div(Div {}), &[d, sd], "normed");
    let (gamma, beta) = gamma_beta(g);
    let s = mul(g, n, gamma, "scaled");
    (add(g, s, beta, "ln"), d)
}

#[test]
fn layer_norm_chain_with_pow() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let eps = scalar(&mut g, "eps", 1e-12);
    let (y, _) = layer_norm_chain(&mut g, x, -1, eps, true);
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn layer_norm_chain_with_mul_square() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let eps = scalar(&mut g, "eps", 1e-5);
    let (y, _) = layer_norm_chain(&mut g, x, 2, eps, false);
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn near_miss_layer_norm_over_wrong_axis() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "4", "4"]);
    let eps = scalar(&mut g, "eps", 1e-5);
    let (y, _) = layer_norm_chain(&mut g, x, 1, eps, true);
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn near_miss_layer_norm_intermediate_used_twice() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let eps = scalar(&mut g, "eps", 1e-5);
    let (y, d) = layer_norm_chain(&mut g, x, -1, eps, true);
    // x - mean is also returned: the chain must stay.
    g.outputs = vec![y, d];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn near_miss_layer_norm_eps_not_a_constant() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let eps = input(&mut g, "eps", &[]);
    let (y, _) = layer_norm_chain(&mut g, x, -1, eps, true);
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O2));
}

fn ln_op(g: &mut Graph, x: ValueId, out: &str) -> ValueId {
    let (gamma, beta) = gamma_beta(g);
    node(
        g,
        Op::LayerNormalization(LayerNormalization {
            axis: -1,
            epsilon: 1e-12,
            stash_type: 1,
        }),
        &[x, gamma, beta],
        out,
    )
}

#[test]
fn skip_layer_norm_of_opset17_layer_norm() {
    let mut g = Graph::new("main");
    let a = input(&mut g, "a", &["batch", "seq", "4"]);
    let b = input(&mut g, "b", &["batch", "seq", "4"]);
    let s = add(&mut g, a, b, "sum");
    let y = ln_op(&mut g, s, "y");
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn bias_skip_layer_norm_of_written_out_layer_norm() {
    // LayerNorm((h + bias) + residual): BERT's output projection and residual.
    let mut g = Graph::new("main");
    let h = input(&mut g, "h", &["batch", "seq", "4"]);
    let r = input(&mut g, "residual", &["batch", "seq", "4"]);
    let bias = vector(&mut g, "bias", &[0.5, -0.5, 1.0, -1.0]);
    let hb = add(&mut g, h, bias, "h_bias");
    let s = add(&mut g, r, hb, "sum");
    let eps = scalar(&mut g, "eps", 1e-12);
    let (y, _) = layer_norm_chain(&mut g, s, -1, eps, true);
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn skip_layer_norm_keeps_shared_sum_as_fourth_output() {
    // Pre-LN residual stream (GPT-2): the sum feeds the LayerNorm and the next residual Add.
    let mut g = Graph::new("main");
    let a = input(&mut g, "a", &["batch", "seq", "4"]);
    let b = input(&mut g, "b", &["batch", "seq", "4"]);
    let s = add(&mut g, a, b, "sum");
    let y = ln_op(&mut g, s, "y");
    let next = add(&mut g, y, s, "next_residual");
    g.outputs = vec![next];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn near_miss_skip_layer_norm_broadcast_add() {
    let mut g = Graph::new("main");
    let a = input(&mut g, "a", &["batch", "seq", "4"]);
    let b = input(&mut g, "b", &["1", "seq", "4"]);
    let s = add(&mut g, a, b, "sum");
    let y = ln_op(&mut g, s, "y");
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn near_miss_skip_layer_norm_broadcast_bias() {
    // The bias is [seq, 4], not 1-D: it stays a separate Add (the skip still fuses).
    let mut g = Graph::new("main");
    let h = input(&mut g, "h", &["batch", "2", "4"]);
    let r = input(&mut g, "residual", &["batch", "2", "4"]);
    let bias = g.add_const(
        "bias2d",
        Tensor::from_vec(vec![2, H], vec![0.5f32; 2 * H]).unwrap(),
    );
    let hb = add(&mut g, h, bias, "h_bias");
    let s = add(&mut g, hb, r, "sum");
    let y = ln_op(&mut g, s, "y");
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O2));
}

/// `x · 0.5 · (1 + erf(x / √2))` as BERT exports it.
fn gelu_erf_bert(g: &mut Graph, x: ValueId, half: f32) -> ValueId {
    let c = scalar(g, "sqrt2", std::f32::consts::SQRT_2);
    let u = node(g, Op::Div(Div {}), &[x, c], "u");
    let e = node(g, Op::Erf(Erf {}), &[u], "erf");
    let one = scalar(g, "one", 1.0);
    let p = add(g, e, one, "p");
    let h = scalar(g, "half", half);
    let xh = mul(g, x, h, "xh");
    mul(g, xh, p, "gelu")
}

#[test]
fn bias_gelu_erf_div_form() {
    let mut g = Graph::new("main");
    let y = input(&mut g, "y", &["batch", "seq", "4"]);
    let bias = vector(&mut g, "bias", &[0.1, 0.2, 0.3, 0.4]);
    let x = add(&mut g, y, bias, "x");
    let out = gelu_erf_bert(&mut g, x, 0.5);
    g.outputs = vec![out];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn gelu_erf_mul_form_halved_last() {
    // (x · (1 + erf(x · 0.7071…))) · 0.5
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let c = scalar(&mut g, "inv_sqrt2", std::f32::consts::FRAC_1_SQRT_2);
    let u = mul(&mut g, c, x, "u");
    let e = node(&mut g, Op::Erf(Erf {}), &[u], "erf");
    let one = scalar(&mut g, "one", 1.0);
    let p = add(&mut g, one, e, "p");
    let xp = mul(&mut g, x, p, "xp");
    let h = scalar(&mut g, "half", 0.5);
    let out = mul(&mut g, xp, h, "gelu");
    g.outputs = vec![out];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn gelu_erf_x_times_halved_sum() {
    // x · ((1 + erf(x / √2)) · 0.5)
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let c = scalar(&mut g, "sqrt2", std::f32::consts::SQRT_2);
    let u = node(&mut g, Op::Div(Div {}), &[x, c], "u");
    let e = node(&mut g, Op::Erf(Erf {}), &[u], "erf");
    let one = scalar(&mut g, "one", 1.0);
    let p = add(&mut g, e, one, "p");
    let h = scalar(&mut g, "half", 0.5);
    let ph = mul(&mut g, p, h, "ph");
    let out = mul(&mut g, x, ph, "gelu");
    g.outputs = vec![out];
    insta::assert_snapshot!(run(g, Level::O2));
}

/// GPT-2's `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
fn fast_gelu_chain(g: &mut Graph, x: ValueId, pow: bool) -> ValueId {
    let h = scalar(g, "half", 0.5);
    let xh = mul(g, x, h, "xh");
    let cube = if pow {
        let three = scalar(g, "three", 3.0);
        node(g, Op::Pow(Pow {}), &[x, three], "cube")
    } else {
        let sq = mul(g, x, x, "square");
        mul(g, sq, x, "cube")
    };
    let k = scalar(g, "k", 0.044715);
    let kc = mul(g, cube, k, "kc");
    let w = add(g, x, kc, "w");
    let s = scalar(g, "s", 0.797_884_6);
    let v = mul(g, w, s, "v");
    let t = node(g, Op::Tanh(Tanh {}), &[v], "tanh");
    let one = scalar(g, "one", 1.0);
    let p = add(g, t, one, "p");
    mul(g, xh, p, "fast_gelu")
}

#[test]
fn fast_gelu_pow_form_with_bias() {
    let mut g = Graph::new("main");
    let y = input(&mut g, "y", &["batch", "seq", "4"]);
    let bias = vector(&mut g, "bias", &[0.1, 0.2, 0.3, 0.4]);
    let x = add(&mut g, bias, y, "x");
    let out = fast_gelu_chain(&mut g, x, true);
    g.outputs = vec![out];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn fast_gelu_cube_as_products() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let out = fast_gelu_chain(&mut g, x, false);
    g.outputs = vec![out];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn opset20_gelu_ops() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "4"]);
    let a = node(
        &mut g,
        Op::Gelu(Gelu {
            approximate: "none".into(),
        }),
        &[x],
        "exact",
    );
    let b = node(
        &mut g,
        Op::Gelu(Gelu {
            approximate: "tanh".into(),
        }),
        &[x],
        "tanh",
    );
    g.outputs = vec![a, b];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn near_miss_gelu_wrong_constant() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let out = gelu_erf_bert(&mut g, x, 0.6);
    g.outputs = vec![out];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn near_miss_gelu_intermediate_used_twice() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "seq", "4"]);
    let out = gelu_erf_bert(&mut g, x, 0.5);
    let e = g.value_ids().find(|&v| g.value(v).name == "erf").unwrap();
    let also = add(&mut g, e, out, "also");
    g.outputs = vec![also];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn near_miss_gelu_broadcast_bias() {
    // The bias is [2, 4] over [batch, 2, 4]: Gelu fuses, the bias Add stays.
    let mut g = Graph::new("main");
    let y = input(&mut g, "y", &["batch", "2", "4"]);
    let bias = g.add_const(
        "bias2d",
        Tensor::from_vec(vec![2, H], vec![0.5f32; 2 * H]).unwrap(),
    );
    let x = add(&mut g, y, bias, "x");
    let out = gelu_erf_bert(&mut g, x, 0.5);
    g.outputs = vec![out];
    insta::assert_snapshot!(run(g, Level::O2));
}

#[test]
fn o3_approximates_gelu_with_fast_gelu() {
    let mut g = Graph::new("main");
    let y = input(&mut g, "y", &["batch", "seq", "4"]);
    let bias = vector(&mut g, "bias", &[0.1, 0.2, 0.3, 0.4]);
    let x = add(&mut g, y, bias, "x");
    let a = gelu_erf_bert(&mut g, x, 0.5);
    let b = node(
        &mut g,
        Op::Gelu(Gelu {
            approximate: "none".into(),
        }),
        &[y],
        "exact",
    );
    g.outputs = vec![a, b];
    insta::assert_snapshot!(run(g, Level::O3));
}

#[test]
fn conv_batch_norm_folds() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "1", "3", "3"]);
    let w = g.add_const(
        "w",
        Tensor::from_vec(vec![2, 1, 1, 1], vec![1.0f32, 2.0]).unwrap(),
    );
    let c = node(
        &mut g,
        Op::Conv(Conv {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: Some(vec![1, 1]),
            pads: None,
            strides: None,
        }),
        &[x, w],
        "conv",
    );
    let scale = vector(&mut g, "scale", &[2.0, 0.5]);
    let b = vector(&mut g, "b", &[1.0, -1.0]);
    let m = vector(&mut g, "mean", &[0.5, 1.0]);
    let v = vector(&mut g, "var", &[4.0, 0.25]);
    let y = node(
        &mut g,
        Op::BatchNormalization(BatchNormalization {
            epsilon: 0.0,
            momentum: 0.9,
            training_mode: false,
        }),
        &[c, scale, b, m, v],
        "bn",
    );
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O1));
}

fn conv3x3(g: &mut Graph, x: ValueId, c: usize, out: &str) -> ValueId {
    let w = g.add_const(
        &format!("{out}_w"),
        Tensor::from_vec(vec![c, c, 3, 3], vec![0.5f32; c * c * 9]).unwrap(),
    );
    let b = vector(g, &format!("{out}_b"), &vec![0.25; c]);
    node(
        g,
        Op::Conv(Conv {
            auto_pad: "NOTSET".into(),
            dilations: None,
            group: 1,
            kernel_shape: Some(vec![3, 3]),
            pads: Some(vec![1, 1, 1, 1]),
            strides: None,
        }),
        &[x, w, b],
        out,
    )
}

/// ResNet's basic block: Relu(Conv) then Relu(Add(Conv, shortcut)) → two FusedConv, the
/// second with the shortcut as Z.
#[test]
fn conv_add_relu_becomes_fused_conv() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["batch", "2", "5", "5"]);
    let c1 = conv3x3(&mut g, x, 2, "conv1");
    let r1 = node(&mut g, Op::Relu(Relu {}), &[c1], "relu1");
    let c2 = conv3x3(&mut g, r1, 2, "conv2");
    let s = add(&mut g, c2, x, "sum");
    let y = node(&mut g, Op::Relu(Relu {}), &[s], "relu2");
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O1));
}

/// Clip with constant bounds (ReLU6) and LeakyRelu carry their parameters.
#[test]
fn conv_clip_and_leaky_relu_become_fused_conv() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["1", "2", "4", "4"]);
    let c1 = conv3x3(&mut g, x, 2, "conv1");
    let lo = scalar(&mut g, "lo", 0.0);
    let hi = scalar(&mut g, "hi", 6.0);
    let r1 = node(&mut g, Op::Clip(Clip {}), &[c1, lo, hi], "relu6");
    let c2 = conv3x3(&mut g, r1, 2, "conv2");
    let y = node(
        &mut g,
        Op::LeakyRelu(LeakyRelu { alpha: 0.125 }),
        &[c2],
        "leaky",
    );
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O1));
}

/// Must not fuse: a broadcast Add (per-channel bias), a Conv output read twice, an Add after
/// the activation (Z is added before it), and a Clip whose bound is not a constant.
#[test]
fn near_miss_conv_fusions() {
    let mut g = Graph::new("main");
    let x = input(&mut g, "x", &["1", "2", "4", "4"]);
    let c1 = conv3x3(&mut g, x, 2, "conv1");
    let per_channel = g.add_const(
        "per_channel",
        Tensor::from_vec(vec![2, 1, 1], vec![1.0f32, 2.0]).unwrap(),
    );
    let a1 = add(&mut g, c1, per_channel, "broadcast_add");
    let c2 = conv3x3(&mut g, a1, 2, "conv2");
    let r2 = node(&mut g, Op::Relu(Relu {}), &[c2], "relu2");
    let twice = add(&mut g, r2, c2, "reads_conv2_again");
    let c3 = conv3x3(&mut g, twice, 2, "conv3");
    let lo = input(&mut g, "lo", &[]);
    let y = node(&mut g, Op::Clip(Clip {}), &[c3, lo], "clip_not_const");
    g.outputs = vec![y];
    insta::assert_snapshot!(run(g, Level::O1));
}

#[test]
fn matmul_add_becomes_gemm_with_reshapes_beyond_2d() {
    let mut g = Graph::new("main");
    let a = input(&mut g, "a", &["batch", "4"]);
    let a3 = input(&mut g, "a3", &["batch", "seq", "4"]);
    let w = g.add_const(
        "w",
        Tensor::from_vec(vec![4, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap(),
    );
    let bias = vector(&mut g, "bias", &[0.5, -0.5]);
    let m = node(&mut g, Op::MatMul(MatMul {}), &[a, w], "mm");
    let y = add(&mut g, m, bias, "y");
    let m3 = node(&mut g, Op::MatMul(MatMul {}), &[a3, w], "mm3");
    let y3 = add(&mut g, m3, bias, "y3");
    g.outputs = vec![y, y3];
    insta::assert_snapshot!(run(g, Level::O1));
}

/// An MLP head: Relu(Gemm) → FusedGemm; LeakyRelu after MatMul + Add on a 3-D input →
/// Reshape(FusedGemm(Reshape)) with the slope carried over.
#[test]
fn gemm_activations_become_fused_gemm() {
    let mut g = Graph::new("main");
    let a = input(&mut g, "a", &["batch", "4"]);
    let a3 = input(&mut g, "a3", &["batch", "seq", "4"]);
    let w = g.add_const(
        "w",
        Tensor::from_vec(vec![4, 4], (0..16).map(|i| i as f32 * 0.25).collect()).unwrap(),
    );
    let bias = vector(&mut g, "bias", &[0.5, -0.5, 1.0, -1.0]);
    let gemm = Op::Gemm(Gemm {
        alpha: 1.0,
        beta: 1.0,
        trans_a: false,
        trans_b: true,
    });
    let h = node(&mut g, gemm, &[a, w, bias], "fc1");
    let r = node(&mut g, Op::Relu(Relu {}), &[h], "relu");
    let m3 = node(&mut g, Op::MatMul(MatMul {}), &[a3, w], "mm3");
    let y3 = add(&mut g, m3, bias, "biased3");
    let l = node(
        &mut g,
        Op::LeakyRelu(LeakyRelu { alpha: 0.125 }),
        &[y3],
        "leaky3",
    );
    g.outputs = vec![r, l];
    insta::assert_snapshot!(run(g, Level::O1));
}

/// Must not fuse: a Gemm output that is also a graph output, one read by the activation and
/// another node, and an activation FusedGemm does not take (Clip).
#[test]
fn near_miss_gemm_activation_fusions() {
    let mut g = Graph::new("main");
    let a = input(&mut g, "a", &["batch", "2"]);
    let w = g.add_const(
        "w",
        Tensor::from_vec(vec![2, 2], vec![1.0f32, -2.0, 3.0, -4.0]).unwrap(),
    );
    let gemm = || {
        Op::Gemm(Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
        })
    };
    let h1 = node(&mut g, gemm(), &[a, w], "gemm_is_output");
    let r1 = node(&mut g, Op::Sigmoid(Sigmoid {}), &[h1], "sigmoid");
    let h2 = node(&mut g, gemm(), &[r1, w], "gemm_read_twice");
    let r2 = node(&mut g, Op::Tanh(Tanh {}), &[h2], "tanh");
    let both = add(&mut g, r2, h2, "reads_gemm_again");
    let h3 = node(&mut g, gemm(), &[both, w], "gemm_then_clip");
    let lo = scalar(&mut g, "lo", 0.0);
    let y = node(&mut g, Op::Clip(Clip {}), &[h3, lo], "clip");
    g.outputs = vec![h1, y];
    insta::assert_snapshot!(run(g, Level::O1));
}

/// word[ids] + segment[type_ids] + position[Slice(arange, start, start + seq)] → LayerNorm.
fn embeddings(start: i64) -> Graph {
    let mut g = Graph::new("main");
    let i64_input = |g: &mut Graph, name: &str| {
        g.add_input(
            name,
            Some(Type::tensor(
                DType::I64,
                vec![Dim::sym("batch"), Dim::sym("seq")],
            )),
        )
    };
    let ids = i64_input(&mut g, "input_ids");
    let types = i64_input(&mut g, "token_type_ids");
    let table = |g: &mut Graph, name: &str, rows: usize| {
        let v: Vec<f32> = (0..rows * H).map(|i| i as f32 * 0.01).collect();
        g.add_const(name, Tensor::from_vec(vec![rows, H], v).unwrap())
    };
    let word = table(&mut g, "word", 10);
    let seg = table(&mut g, "segment", 2);
    let pos = table(&mut g, "position", 8);
    let gather = |g: &mut Graph, t: ValueId, i: ValueId, out: &str| {
        node(g, Op::Gather(Gather { axis: 0 }), &[t, i], out)
    };
    let w = gather(&mut g, word, ids, "w");
    let s = gather(&mut g, seg, types, "s");
    let ws = add(&mut g, w, s, "ws");
    let range = g.add_const(
        "range",
        Tensor::from_vec(vec![1, 8], (0..8i64).collect::<Vec<_>>()).unwrap(),
    );
    let starts = ints(&mut g, "starts", &[start]);
    let seq = node(
        &mut g,
        Op::Shape(Shape {
            start: 1,
            end: Some(2),
        }),
        &[ids],
        "seq",
    );
    let ends = if start == 0 {
        seq
    } else {
        let k = ints(&mut g, "start", &[start]);
        add(&mut g, seq, k, "ends")
    };
    let axes = ints(&mut g, "axes", &[1]);
    let pids = node(
        &mut g,
        Op::Slice(Slice {}),
        &[range, starts, ends, axes],
        "pids",
    );
    let p = gather(&mut g, pos, pids, "p");
    let e = add(&mut g, ws, p, "emb");
    let y = ln_op(&mut g, e, "y");
    g.outputs = vec![y];
    g
}

#[test]
fn embed_layer_norm() {
    insta::assert_snapshot!(run(embeddings(0), Level::O2));
}

#[test]
fn near_miss_embed_layer_norm_positions_not_from_zero() {
    insta::assert_snapshot!(run(embeddings(1), Level::O2));
}
