//! `kiln optimize -O0` is a faithful round trip: every ONNX conformance model and every
//! model in ../shared/models, imported and exported by kiln, gives ONNX Runtime outputs
//! bit-identical (max abs diff 0) to the original's, for every case ONNX Runtime can run.

mod common;

use std::path::Path;

use kiln::oracle::{Oracle, OracleOpt, OracleOptions};
use kiln_ir::Tensor;

fn opts() -> OracleOptions {
    // No graph optimizations: the comparison is of the two graphs' meaning, kernel for kernel.
    OracleOptions { threads: 1, opt: OracleOpt::Disabled, ..OracleOptions::default() }
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
        (Some(x), Some(y)) if a.dtype().is_float() => {
            x.iter().zip(&y).all(|(p, q)| p == q || (p.is_nan() && q.is_nan()))
        }
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
    let proto = kiln_frontend::export_model(&m).map_err(|e| format!("export: {e}"))?;
    let bytes = kiln_frontend::proto::encode(&proto);
    let run = |o: Result<Oracle, _>| -> Result<Vec<(String, Tensor)>, String> {
        let mut o = o.map_err(|e: kiln::oracle::OracleError| e.to_string())?;
        o.run(inputs).map_err(|e| e.to_string())
    };
    let Ok(a) = run(Oracle::with_options(model_path, &opts())) else {
        return Ok(Outcome::OrtCannotRunOriginal);
    };
    let b = run(Oracle::with_options(model_path, &opts())).map_err(|e| format!("second run: {e}"))?;
    if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| !same(&x.1, &y.1)) {
        return Ok(Outcome::Nondeterministic);
    }
    let c = match run(Oracle::from_bytes_with_options(&bytes, &opts())) {
        Ok(c) => c,
        Err(e) => return Ok(Outcome::Differs(format!("ONNX Runtime rejects the exported model: {e}"))),
    };
    if a.len() != c.len() {
        return Ok(Outcome::Differs(format!("{} outputs, exported has {}", a.len(), c.len())));
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
    let Some(_) = common::needed("ORT_DYLIB_PATH") else { return };
    let Some(dir) = common::needed("KILN_CONFORMANCE_DIR") else { return };
    let mut cases: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    let (mut identical, mut ort_fails, mut nondet, mut skipped) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let model = kiln_frontend::load_model(case.join("model.onnx"));
        let names: Vec<String> = match &model {
            Ok(m) => m.graph.inputs.iter().map(|&i| m.graph.value(i).name.clone()).collect(),
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
    assert!(identical > 1400, "only {identical} cases compared identical");
    assert!(failures.is_empty(), "{} cases do not round-trip", failures.len());
}
