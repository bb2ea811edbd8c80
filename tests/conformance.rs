//! ONNX node conformance at O0 through kiln's own runtime. The floor below is the count
//! measured when it was last raised; a kernel change that breaks a passing case fails here.

mod common;

use kiln::conformance::{counts, failures_by_op, read_skips, run_dir, Status};

/// Cases that must pass (raise it when kernels land; never lower it to make a change pass).
const MIN_PASSED: usize = 0;

#[test]
fn onnx_node_conformance_at_o0() {
    let Some(dir) = common::needed("KILN_CONFORMANCE_DIR") else { return };
    let skips = read_skips(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance-skips.tsv"))
        .expect("skip file");
    let outcomes = run_dir(&dir, &skips, |_, _, _| {}).expect("cases");
    for o in &outcomes {
        if let Status::Fail(e) = &o.status {
            eprintln!("FAIL {} [{}]: {}", o.case, o.ops.join(","), e.chars().take(300).collect::<String>());
        }
    }
    for (op, cases) in failures_by_op(&outcomes) {
        eprintln!("{:>4}  {op}", cases.len());
    }
    let (p, f, s) = counts(&outcomes);
    eprintln!("conformance O0: {p} passed, {f} failed, {s} skipped");
    assert!(p >= MIN_PASSED, "{p} passed, below the floor of {MIN_PASSED}");
}
