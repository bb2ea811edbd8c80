//! ONNX node conformance at O0 through kiln's own runtime. The floor below is the count
//! measured when it was last raised; a kernel change that breaks a passing case fails here.

mod common;

use kiln::conformance::{counts, failures_by_op, read_skips, run_dir, Status};

/// Cases that must pass (raise it when kernels land; never lower it to make a change pass).
const MIN_PASSED: usize = 1865;

fn conformance_at(level: u8, min_passed: usize) {
    let Some(dir) = common::needed("KILN_CONFORMANCE_DIR") else {
        return;
    };
    let skips = read_skips(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance-skips.tsv"),
    )
    .expect("skip file");
    // KILN_CONFORMANCE_FILTER=abs,acos runs only cases whose name contains one of the parts
    // (for working on one family; the floor is then not checked).
    let filter: Option<Vec<String>> = std::env::var("KILN_CONFORMANCE_FILTER").ok().map(|f| {
        f.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let mut skips = skips;
    if let Some(f) = &filter {
        for c in kiln::conformance::list_cases(&dir).expect("cases") {
            let name = c.file_name().unwrap().to_string_lossy().to_string();
            if !f.iter().any(|p| name.contains(p.as_str())) {
                skips.insert(name, "filtered out".into());
            }
        }
    }
    let outcomes = run_dir(&dir, level, &skips, |_, _, _| {}).expect("cases");
    for o in &outcomes {
        if let Status::Fail(e) = &o.status {
            eprintln!(
                "FAIL {} [{}]: {}",
                o.case,
                o.ops.join(","),
                e.chars().take(300).collect::<String>()
            );
        }
    }
    for (op, cases) in failures_by_op(&outcomes) {
        eprintln!("{:>4}  {op}", cases.len());
    }
    let (p, f, s) = counts(&outcomes);
    eprintln!("conformance O{level}: {p} passed, {f} failed, {s} skipped");
    if filter.is_none() {
        assert!(
            p >= min_passed,
            "{p} passed, below the floor of {min_passed}"
        );
    }
}

#[test]
fn onnx_node_conformance_at_o0() {
    conformance_at(0, MIN_PASSED);
}

/// Optimization must not lose a case: O1 passes at least as many as O0's floor.
#[test]
fn onnx_node_conformance_at_o1() {
    conformance_at(1, MIN_PASSED);
}

/// The transformer fusions must not lose a case either.
#[test]
fn onnx_node_conformance_at_o2() {
    conformance_at(2, MIN_PASSED);
}
