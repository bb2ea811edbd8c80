//! `kiln optimize -O0` is a faithful round trip: every ONNX conformance model and every
//! model in ../shared/models, imported and exported by kiln, gives ONNX Runtime outputs
//! bit-identical (max abs diff 0) to the original's, for every case ONNX Runtime can run.

mod common;

use std::path::Path;

use kiln::oracle::{Oracle, OracleOpt, OracleOptions};
use kiln_ir::Tensor;

fn opts() -> OracleOptions {
    // No graph optimizations: the comparison is of the two graphs' meaning, kernel for kernel.
    OracleOptions {
        threads: 1,
        opt: OracleOpt::Disabled,
        ..OracleOptions::default()
    }
}

/// Bitwise equality, except that NaN equals NaN (same payload not required).
fn same(a: &Tensor, b: &Tensor) -> bool {
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return false;
    }
    if a.bytes() == b.bytes() && a.strings() == b.strings() {
        return true;
    }
    match (a.to_f64_vec(), b.to_f64_vec()) {
        (Some(x), Some(y)) if a.dtype().is_float() => x
            .iter()
            .zip(&y)
            .all(|(p, q)| p == q || (p.is_nan() && q.is_nan())),
        _ => false,
    }
}

enum Outcome {
    Identical,
    OrtCannotRunOriginal,
    Nondeterministic,
    Differs(String),
}

fn round_trip(model_path: &Path, inputs: &[(String, Tensor)]) -> Result<Outcome, String> {
    let mut m = kiln_frontend::load_model(model_path).map_err(|e| format!("import: {e}"))?;
    kiln_ir::infer::infer_graph(&mut m.graph).map_err(|e| format!("infer: {e}"))?;
    kiln_ir::verify::verify(&m.graph).map_err(|e| format!("verify: {e}"))?;
    // value_info on: ONNX Runtime also checks kiln's inferred types against its own.
    let export = kiln_frontend::ExportOptions {
        value_info: true,
        ..Default::default()
    };
    let proto = kiln_frontend::export_model(&m, &export).map_err(|e| format!("export: {e}"))?;
    let bytes = kiln_frontend::proto::encode(&proto);
    let run = |o: Result<Oracle, _>| -> Result<Vec<(String, Tensor)>, String> {
        let mut o = o.map_err(|e: kiln::oracle::OracleError| e.to_string())?;
        o.run(inputs).map_err(|e| e.to_string())
    };
    let Ok(a) = run(Oracle::with_options(model_path, &opts())) else {
        return Ok(Outcome::OrtCannotRunOriginal);
    };
    let b =
        run(Oracle::with_options(model_path, &opts())).map_err(|e| format!("second run: {e}"))?;
    if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| !same(&x.1, &y.1)) {
        return Ok(Outcome::Nondeterministic);
    }
    let c = match run(Oracle::from_bytes_with_options(&bytes, &opts())) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Outcome::Differs(format!(
                "ONNX Runtime rejects the exported model: {e}"
            )))
        }
    };
    if a.len() != c.len() {
        return Ok(Outcome::Differs(format!(
            "{} outputs, exported has {}",
            a.len(),
            c.len()
        )));
    }
    for ((name, x), (_, y)) in a.iter().zip(&c) {
        if !same(x, y) {
            return Ok(Outcome::Differs(format!("output `{name}`: {x:?} vs {y:?}")));
        }
    }
    Ok(Outcome::Identical)
}

#[test]
fn conformance_models_round_trip_exactly_through_onnx_runtime() {
    let Some(_) = common::needed("ORT_DYLIB_PATH") else {
        return;
    };
    let Some(dir) = common::needed("KILN_CONFORMANCE_DIR") else {
        return;
    };
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let (mut identical, mut ort_fails, mut nondet, mut skipped) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let model = kiln_frontend::load_model(case.join("model.onnx"));
        let names: Vec<String> = match &model {
            Ok(m) => m
                .graph
                .inputs
                .iter()
                .map(|&i| m.graph.value(i).name.clone())
                .collect(),
            Err(e) => {
                failures.push(format!("{name}: import: {e}"));
                continue;
            }
        };
        // Inputs from test_data_set_0; sequence/optional inputs are not tensors: skip those cases.
        let mut inputs = Vec::new();
        let mut ok = true;
        for (k, n) in names.iter().enumerate() {
            let p = case.join("test_data_set_0").join(format!("input_{k}.pb"));
            if !p.exists() {
                continue;
            }
            match kiln_frontend::read_tensor_file(&p) {
                Ok(t) => inputs.push((n.clone(), t)),
                Err(_) => ok = false,
            }
        }
        if !ok {
            skipped += 1;
            continue;
        }
        match round_trip(&case.join("model.onnx"), &inputs) {
            Ok(Outcome::Identical) => identical += 1,
            Ok(Outcome::OrtCannotRunOriginal) => ort_fails += 1,
            Ok(Outcome::Nondeterministic) => nondet += 1,
            Ok(Outcome::Differs(d)) => failures.push(format!("{name}: {d}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    eprintln!(
        "round trip: {identical} identical, {} failed, {ort_fails} not runnable by ONNX Runtime, \
         {nondet} nondeterministic (random ops), {skipped} with non-tensor inputs",
        failures.len()
    );
    assert!(
        identical > 1400,
        "only {identical} cases compared identical"
    );
    assert!(
        failures.is_empty(),
        "{} cases do not round-trip",
        failures.len()
    );
}

#[test]
fn real_models_round_trip_exactly_through_onnx_runtime() {
    let Some(_) = common::needed("ORT_DYLIB_PATH") else {
        return;
    };
    let Some(shared) = common::needed("KILN_SHARED_MODELS") else {
        return;
    };
    let Some(big) = common::needed("KILN_MODELS_DIR") else {
        return;
    };
    let mut models: Vec<_> = [shared, big]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "onnx")
                && !p.to_string_lossy().ends_with(".skel.onnx")
        })
        .collect();
    models.sort();
    assert!(
        models.len() >= 9,
        "expected the 4 shared and 5 materialized models, found {models:?}"
    );
    let tmp = std::env::temp_dir().join(format!("kiln-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut failures = Vec::new();
    for path in &models {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let result = (|| -> Result<(), String> {
            let mut m = kiln_frontend::load_model(path).map_err(|e| format!("import: {e}"))?;
            let stats =
                kiln_ir::infer::infer_graph(&mut m.graph).map_err(|e| format!("infer: {e}"))?;
            kiln_ir::verify::verify(&m.graph).map_err(|e| format!("verify: {e}"))?;
            if stats.untyped > 0 {
                return Err(format!("{} values without a type", stats.untyped));
            }
            let dims = std::collections::HashMap::from([
                ("batch".to_string(), 2),
                ("sequence".to_string(), 16),
            ]);
            let inputs = kiln::random_inputs(&m, &dims, 7)?;
            // Two ways: as `kiln optimize -O0` writes it, under ONNX Runtime's default
            // optimizations; and with kiln's inferred shapes as value_info, kernel for kernel
            // (with shapes ONNX Runtime fuses more, so only unoptimized runs compare bitwise).
            for (value_info, ort) in [(false, opts_all()), (true, opts())] {
                let out = tmp.join(format!("{name}-{value_info}.onnx"));
                let opts = kiln_frontend::ExportOptions {
                    external_data: Some(format!("{name}-{value_info}.onnx.data")),
                    value_info,
                    ..Default::default()
                };
                kiln_frontend::save_model(&m, &out, &opts).map_err(|e| format!("export: {e}"))?;
                let mut a = Oracle::with_options(path, &ort).map_err(|e| e.to_string())?;
                let mut b =
                    Oracle::with_options(&out, &ort).map_err(|e| format!("exported: {e}"))?;
                let x = a.run(&inputs).map_err(|e| e.to_string())?;
                let y = b.run(&inputs).map_err(|e| format!("exported: {e}"))?;
                for ((n, p), (_, q)) in x.iter().zip(&y) {
                    if !same(p, q) {
                        return Err(format!("output `{n}` differs (value_info: {value_info})"));
                    }
                }
            }
            eprintln!("{name}: outputs identical");
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{name}: {e}"));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{failures:#?}");
}

fn opts_all() -> OracleOptions {
    // ONNX Runtime's default optimizations; single-threaded so reductions happen in the same
    // order in both sessions.
    OracleOptions {
        threads: 1,
        opt: OracleOpt::All,
        ..OracleOptions::default()
    }
}

/// `kiln optimize -O1` output still runs in ONNX Runtime and gives the original's outputs
/// (within 1e-5 relative to the output's magnitude: constant folding evaluates with kiln's
/// kernels, whose last bits may differ from ONNX Runtime's).
#[test]
fn o1_models_run_in_onnx_runtime_and_match() {
    exports_run_in_onnx_runtime_and_match(1, 1e-5);
}

/// `kiln optimize -O2` output (fused into `com.microsoft` ops) runs in ONNX Runtime and gives
/// the original's outputs within atol 1e-4 (relative to the output's magnitude where it
/// exceeds 1), on inputs with a padded attention-mask row.
#[test]
fn o2_models_run_in_onnx_runtime_and_match() {
    exports_run_in_onnx_runtime_and_match(2, 1e-4);
}

fn exports_run_in_onnx_runtime_and_match(level: u8, tol: f64) {
    let Some(_) = common::needed("ORT_DYLIB_PATH") else {
        return;
    };
    let Some(shared) = common::needed("KILN_SHARED_MODELS") else {
        return;
    };
    let Some(big) = common::needed("KILN_MODELS_DIR") else {
        return;
    };
    let mut models: Vec<_> = [shared, big]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "onnx")
                && !p.to_string_lossy().ends_with(".skel.onnx")
        })
        .collect();
    models.sort();
    let tmp = std::env::temp_dir().join(format!("kiln-o{level}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut failures = Vec::new();
    for path in &models {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let r = (|| -> Result<String, String> {
            let mut m = kiln::load(path).map_err(|e| e.to_string())?;
            let before = m.graph.num_nodes();
            let report = kiln::optimize(&mut m, level, &[]).map_err(|e| e.to_string())?;
            let after = m.graph.num_nodes();
            let dims = std::collections::HashMap::from([
                ("batch".to_string(), 2),
                ("sequence".to_string(), 16),
            ]);
            let inputs = kiln::random_inputs(&m, &dims, 5)?;
            let out = tmp.join(format!("{name}.onnx"));
            let opts = kiln_frontend::ExportOptions {
                external_data: Some(format!("{name}.onnx.data")),
                ..Default::default()
            };
            kiln_frontend::save_model(&m, &out, &opts).map_err(|e| format!("export: {e}"))?;
            let mut a = Oracle::with_options(path, &opts_all()).map_err(|e| e.to_string())?;
            let mut b =
                Oracle::with_options(&out, &opts_all()).map_err(|e| format!("exported: {e}"))?;
            let x = a.run(&inputs).map_err(|e| e.to_string())?;
            let y = b.run(&inputs).map_err(|e| format!("exported: {e}"))?;
            for ((n, p), (_, q)) in x.iter().zip(&y) {
                let (pv, qv) = (
                    p.to_f64_vec().unwrap_or_default(),
                    q.to_f64_vec().unwrap_or_default(),
                );
                let mag = pv.iter().fold(1f64, |m, v| m.max(v.abs()));
                let d = pv
                    .iter()
                    .zip(&qv)
                    .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                if p.shape() != q.shape() || d > tol * mag {
                    return Err(format!("output `{n}` differs by {d:e}"));
                }
            }
            Ok(format!(
                "{name}: {before} → {after} nodes, {:?}",
                report
                    .rewrites
                    .iter()
                    .filter(|r| r.1 > 0)
                    .collect::<Vec<_>>()
            ))
        })();
        match r {
            Ok(l) => eprintln!("{l}"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Gemm + activation → `com.microsoft.FusedGemm` (each activation FusedGemm takes, on a 2-D
/// Gemm and on a 3-D MatMul + Add): `kiln optimize -O1` writes FusedGemm nodes that ONNX
/// Runtime runs, with the original's outputs, and kiln's runtime gives them too.
#[test]
fn fused_gemm_export_runs_in_onnx_runtime_and_matches() {
    use kiln_ir::op::{Add, Gemm, LeakyRelu, MatMul, Relu, Sigmoid, Tanh};
    use kiln_ir::{DType, Dim, Graph, Model, Op, Type};
    let Some(_) = common::needed("ORT_DYLIB_PATH") else {
        return;
    };
    let mut g = Graph::new("main");
    let a = g.add_input(
        "a",
        Some(Type::tensor(
            DType::F32,
            vec![Dim::sym("batch"), Dim::from(8i64)],
        )),
    );
    let a3 = g.add_input(
        "a3",
        Some(Type::tensor(
            DType::F32,
            vec![Dim::sym("batch"), Dim::sym("sequence"), Dim::from(8i64)],
        )),
    );
    let w = g.add_const(
        "w",
        Tensor::from_vec(
            vec![8, 8],
            (0..64)
                .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
                .collect(),
        )
        .unwrap(),
    );
    let bias = g.add_const(
        "bias",
        Tensor::from_vec(vec![8], (0..8).map(|i| i as f32 / 4.0 - 1.0).collect()).unwrap(),
    );
    let mut node = |op: Op, ins: &[kiln_ir::ValueId], out: &str| {
        let n = g.add_node(out, op, ins.iter().map(|&v| Some(v)).collect(), &[out]);
        g.node(n).outputs[0]
    };
    let gemm = |tb: bool| {
        Op::Gemm(Gemm {
            alpha: 0.5,
            beta: 1.0,
            trans_a: false,
            trans_b: tb,
        })
    };
    let h1 = node(gemm(true), &[a, w, bias], "fc1");
    let r1 = node(Op::Relu(Relu {}), &[h1], "relu");
    let h2 = node(gemm(false), &[r1, w, bias], "fc2");
    let r2 = node(Op::Sigmoid(Sigmoid {}), &[h2], "sigmoid");
    let h3 = node(gemm(false), &[r2, w], "fc3");
    let y = node(Op::Tanh(Tanh {}), &[h3], "y");
    let m3 = node(Op::MatMul(MatMul {}), &[a3, w], "mm3");
    let s3 = node(Op::Add(Add {}), &[m3, bias], "biased3");
    let y3 = node(Op::LeakyRelu(LeakyRelu { alpha: 0.2 }), &[s3], "y3");
    g.outputs = vec![y, y3];
    let mut m = Model {
        graph: g,
        ir_version: 8,
        ..Default::default()
    };
    m.opsets.insert(String::new(), 14);
    kiln_ir::infer::infer_graph(&mut m.graph).unwrap();

    let tmp = std::env::temp_dir().join(format!("kiln-fused-gemm-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (orig, opt) = (tmp.join("orig.onnx"), tmp.join("o1.onnx"));
    let save = |m: &Model, p: &Path| {
        kiln_frontend::save_model(m, p, &kiln_frontend::ExportOptions::default()).unwrap()
    };
    save(&m, &orig);
    let inputs = kiln::random_inputs(
        &m,
        &std::collections::HashMap::from([("batch".to_string(), 3), ("sequence".to_string(), 5)]),
        7,
    )
    .unwrap();
    kiln::optimize(&mut m, 1, &[]).unwrap();
    let fused = m
        .graph
        .node_ids()
        .filter(|&n| matches!(m.graph.node(n).op, Op::FusedGemm(_)))
        .count();
    assert_eq!(fused, 4, "{}", m.graph);
    save(&m, &opt);
    let want = Oracle::with_options(&orig, &opts_all())
        .unwrap()
        .run(&inputs)
        .unwrap();
    let got_ort = Oracle::with_options(&opt, &opts_all())
        .unwrap()
        .run(&inputs)
        .unwrap();
    let got_kiln = kiln::Session::new(m).unwrap().run(inputs.clone()).unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    for got in [&got_ort, &got_kiln] {
        for ((n, p), (_, q)) in want.iter().zip(got.iter()) {
            assert_eq!(p.shape(), q.shape(), "{n}");
            let (p, q) = (p.to_f64_vec().unwrap(), q.to_f64_vec().unwrap());
            let d = p
                .iter()
                .zip(&q)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(d <= 1e-5, "output `{n}` differs by {d:e}");
        }
    }
}
