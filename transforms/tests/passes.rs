//! Snapshot tests of the O1 passes: the printed IR before and after, reviewed as a diff.

use kiln_ir::op::{Add, Concat, Gather, Identity, Reshape, Shape, Transpose, Unsqueeze};
use kiln_ir::{DType, Dim, Graph, Model, Op, Tensor, Type};
use kiln_transforms::{optimize, Level, Options};

fn model(g: Graph) -> Model {
    let mut m = Model {
        graph: g,
        ..Default::default()
    };
    m.opsets.insert(String::new(), 17);
    kiln_ir::infer::infer_graph(&mut m.graph).unwrap();
    m
}

fn before_after(mut m: Model, opts: &Options) -> String {
    let before = m.graph.to_string();
    let report = optimize(&mut m, opts).unwrap();
    kiln_ir::verify::verify(&m.graph).unwrap();
    format!(
        "{before}\n--- {:?}\n\n{}",
        report
            .rewrites
            .iter()
            .filter(|r| r.1 > 0)
            .collect::<Vec<_>>(),
        m.graph
    )
}

fn f32_input(g: &mut Graph, name: &str, dims: &[&str]) -> kiln_ir::ValueId {
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

#[test]
fn identity_chains_and_dead_nodes_go() {
    let mut g = Graph::new("main");
    let x = f32_input(&mut g, "x", &["batch", "8"]);
    let a = g.add_node("id1", Op::Identity(Identity {}), vec![Some(x)], &["a"]);
    let a = g.node(a).outputs[0];
    let b = g.add_node(
        "t",
        Op::Transpose(Transpose { perm: None }),
        vec![Some(a)],
        &["b"],
    );
    let b = g.node(b).outputs[0];
    // Dead: nobody reads `d`.
    g.add_node(
        "dead",
        Op::Transpose(Transpose {
            perm: Some(vec![1, 0]),
        }),
        vec![Some(x)],
        &["d"],
    );
    // Kept: its output is a graph output (the name is the model's interface).
    let y = g.add_node("id2", Op::Identity(Identity {}), vec![Some(b)], &["y"]);
    g.outputs = vec![g.node(y).outputs[0]];
    insta::assert_snapshot!(before_after(model(g), &Options::level(Level::O1)));
}

#[test]
fn duplicate_nodes_merge() {
    let mut g = Graph::new("main");
    let x = f32_input(&mut g, "x", &["2", "3"]);
    let t1 = g.add_node(
        "t1",
        Op::Transpose(Transpose { perm: None }),
        vec![Some(x)],
        &["t1"],
    );
    let t2 = g.add_node(
        "t2",
        Op::Transpose(Transpose { perm: None }),
        vec![Some(x)],
        &["t2"],
    );
    // Same meaning, spelled with another attribute: CSE compares ops as written, so it stays.
    let t3 = g.add_node(
        "t3",
        Op::Transpose(Transpose {
            perm: Some(vec![1, 0]),
        }),
        vec![Some(x)],
        &["t3"],
    );
    let (t1, t2, t3) = (
        g.node(t1).outputs[0],
        g.node(t2).outputs[0],
        g.node(t3).outputs[0],
    );
    let c = g.add_node(
        "c",
        Op::Concat(Concat { axis: 0 }),
        vec![Some(t1), Some(t2), Some(t3)],
        &["y"],
    );
    g.outputs = vec![g.node(c).outputs[0]];
    insta::assert_snapshot!(before_after(model(g), &Options::level(Level::O1)));
}

#[test]
fn duplicate_nodes_reading_equal_small_constants_merge() {
    // x + 2 twice (two copies of the constant 2) merge; x + 3 stays; x + w with two equal
    // constants of 1100 floats (over the 4 KiB compared by content) stays twice.
    let mut g = Graph::new("main");
    let x = f32_input(&mut g, "x", &["1100"]);
    let two_a = g.add_const("two_a", Tensor::scalar(2.0f32));
    let two_b = g.add_const("two_b", Tensor::scalar(2.0f32));
    let three = g.add_const("three", Tensor::scalar(3.0f32));
    let big = |g: &mut Graph, n: &str| {
        g.add_const(n, Tensor::from_vec(vec![1100], vec![0.5f32; 1100]).unwrap())
    };
    let (w_a, w_b) = (big(&mut g, "w_a"), big(&mut g, "w_b"));
    let outs: Vec<_> = [two_a, two_b, three, w_a, w_b]
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let n = g.add_node(
                &format!("add{i}"),
                Op::Add(Add {}),
                vec![Some(x), Some(c)],
                &[format!("s{i}").as_str()],
            );
            Some(g.node(n).outputs[0])
        })
        .collect();
    let c = g.add_node("c", Op::Concat(Concat { axis: 0 }), outs, &["y"]);
    g.outputs = vec![g.node(c).outputs[0]];
    insta::assert_snapshot!(before_after(model(g), &Options::level(Level::O1)));
}

#[test]
fn constant_subgraphs_fold() {
    let mut g = Graph::new("main");
    let x = f32_input(&mut g, "x", &["2", "3"]);
    let w = g.add_const(
        "w",
        Tensor::from_vec(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
    );
    let wt = g.add_node(
        "wt",
        Op::Transpose(Transpose { perm: None }),
        vec![Some(w)],
        &["wt"],
    );
    let wt = g.node(wt).outputs[0];
    let c = g.add_node(
        "c",
        Op::Concat(Concat { axis: 0 }),
        vec![Some(x), Some(wt)],
        &["y"],
    );
    g.outputs = vec![g.node(c).outputs[0]];
    insta::assert_snapshot!(before_after(model(g), &Options::level(Level::O1)));
}

#[test]
fn reshape_targets_computed_from_shapes_become_constants() {
    // x: [batch, seq, 768] → Reshape(x, Concat(Shape(x)[0], Shape(x)[1], 12, 64))
    let mut g = Graph::new("main");
    let x = f32_input(&mut g, "x", &["batch", "seq", "768"]);
    let s = g.add_node(
        "shape",
        Op::Shape(Shape {
            start: 0,
            end: None,
        }),
        vec![Some(x)],
        &["s"],
    );
    let s = g.node(s).outputs[0];
    let i0 = g.add_const("i0", Tensor::scalar(0i64));
    let i1 = g.add_const("i1", Tensor::scalar(1i64));
    let ax = g.add_const("ax", Tensor::from_vec(vec![1], vec![0i64]).unwrap());
    let mut dims = Vec::new();
    for (k, i) in [i0, i1].into_iter().enumerate() {
        let d = g.add_node(
            format!("g{k}"),
            Op::Gather(Gather { axis: 0 }),
            vec![Some(s), Some(i)],
            &[&format!("d{k}")],
        );
        let d = g.node(d).outputs[0];
        let u = g.add_node(
            format!("u{k}"),
            Op::Unsqueeze(Unsqueeze {}),
            vec![Some(d), Some(ax)],
            &[&format!("u{k}")],
        );
        dims.push(Some(g.node(u).outputs[0]));
    }
    dims.push(Some(g.add_const(
        "heads",
        Tensor::from_vec(vec![1], vec![12i64]).unwrap(),
    )));
    dims.push(Some(g.add_const(
        "head",
        Tensor::from_vec(vec![1], vec![64i64]).unwrap(),
    )));
    let cat = g.add_node("cat", Op::Concat(Concat { axis: 0 }), dims, &["target"]);
    let cat = g.node(cat).outputs[0];
    let r = g.add_node(
        "reshape",
        Op::Reshape(Reshape { allowzero: false }),
        vec![Some(x), Some(cat)],
        &["y"],
    );
    g.outputs = vec![g.node(r).outputs[0]];
    insta::assert_snapshot!(before_after(model(g), &Options::level(Level::O1)));
}

#[test]
fn disabled_passes_do_not_run_and_unknown_names_are_errors() {
    let mut g = Graph::new("main");
    let x = f32_input(&mut g, "x", &["2"]);
    let a = g.add_node("id", Op::Identity(Identity {}), vec![Some(x)], &["a"]);
    let a = g.node(a).outputs[0];
    let t = g.add_node(
        "t",
        Op::Transpose(Transpose { perm: None }),
        vec![Some(a)],
        &["y"],
    );
    g.outputs = vec![g.node(t).outputs[0]];
    let mut opts = Options::level(Level::O1);
    opts.disabled.insert("identity-elimination".into());
    let mut m = model(g);
    optimize(&mut m, &opts).unwrap();
    assert_eq!(m.graph.num_nodes(), 2);
    opts.disabled.insert("no-such-pass".into());
    let e = optimize(&mut m, &opts).unwrap_err().to_string();
    assert!(e.contains("unknown pass `no-such-pass`"), "{e}");
}
