//! Every ONNX node conformance model imports, passes the verifier, and gets a type on every
//! value; inferred types agree with the types the models declare.

use std::path::PathBuf;

use kiln_ir::infer::infer_graph;
use kiln_ir::verify::verify;

fn cases_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/onnx-cases/node")
        });
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        panic!(
            "conformance cases not found at {} (run scripts/setup.sh)",
            dir.display()
        );
    } else {
        eprintln!(
            "SKIPPED: no conformance cases at {} (run scripts/setup.sh)",
            dir.display()
        );
        None
    }
}

#[test]
fn every_conformance_model_imports_verifies_and_is_typed() {
    let Some(dir) = cases_dir() else { return };
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() > 1800,
        "expected ~1,884 cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    let mut untyped = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let result = (|| -> Result<usize, String> {
            let mut m =
                kiln_frontend::load_model(case.join("model.onnx")).map_err(|e| e.to_string())?;
            verify(&m.graph).map_err(|e| e.to_string())?;
            let stats = infer_graph(&mut m.graph).map_err(|e| e.to_string())?;
            verify(&m.graph).map_err(|e| e.to_string())?;
            Ok(stats.untyped)
        })();
        match result {
            Ok(0) => {}
            Ok(n) => untyped.push(format!("{name}: {n} values without a type")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    for u in &untyped {
        eprintln!("UNTYPED {u}");
    }
    eprintln!(
        "{} cases: {} failed to import/verify/infer, {} with untyped values",
        cases.len(),
        failures.len(),
        untyped.len()
    );
    assert!(failures.is_empty() && untyped.is_empty());
}
