//! The `kiln` binary, run as a user runs it.
//!
//! Tests that need `../shared/models` or the venv's Python (`scripts/setup.sh`) print a skip
//! note and pass when those are missing, unless `KILN_CI` or `CI` is set: then they fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::env::setting;
use serde_json::Value;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn default_model() -> PathBuf {
    kiln::env::workspace_root().join("assets/bert_tiny_eager_opset14.onnx")
}

fn in_ci() -> bool {
    ["KILN_CI", "CI"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
}

/// The path in setting `key` if it exists; else `None` after a skip note (a panic in CI).
fn needed(key: &str) -> Option<PathBuf> {
    let problem = match setting(key) {
        Some(p) if Path::new(&p).exists() => return Some(PathBuf::from(p)),
        Some(p) => format!("{key}={p} does not exist"),
        None => format!("{key} is not set and .cache/env does not name it"),
    };
    if in_ci() {
        panic!("{problem}: CLI tests must not skip in CI (run scripts/setup.sh first)");
    }
    eprintln!("SKIPPED: {problem}; run scripts/setup.sh to enable this test");
    None
}

macro_rules! require {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

fn kiln(args: &[&str], cwd: &Path) -> Output {
    Command::new(KILN)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run kiln")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(args: &[&str], cwd: &Path) -> Output {
    let o = kiln(args, cwd);
    assert!(o.status.success(), "kiln {args:?} failed: {}", stderr(&o));
    o
}

/// `kiln args` must fail with exactly one line on stderr, `error: …`, nothing on stdout, and
/// no panic. Returns the line.
fn fails(args: &[&str], cwd: &Path) -> String {
    let o = kiln(args, cwd);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "kiln {args:?} succeeded; stderr: {err}"
    );
    assert_ne!(o.status.code(), Some(101), "kiln {args:?} panicked: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note: "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "kiln {args:?}: want one error line, got:\n{err}"
    );
    assert!(lines[0].starts_with("error: "), "kiln {args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "kiln {args:?}: {err}"
    );
    assert!(
        o.stdout.is_empty(),
        "kiln {args:?} printed on stdout: {}",
        stdout(&o)
    );
    lines[0].to_string()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// The op histogram of `model` as the `onnx` Python package sees it, subgraphs included:
/// `(domain, op_type) → count` with the default domain spelled "ai.onnx".
fn onnx_histogram(python: &Path, model: &Path) -> (usize, BTreeMap<(String, String), u64>) {
    const SCRIPT: &str = r#"
import collections, json, sys, onnx
m = onnx.load(sys.argv[1], load_external_data=False)
c = collections.Counter()
def walk(g):
    for n in g.node:
        c[(n.domain or "ai.onnx", n.op_type)] += 1
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                walk(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for s in a.graphs:
                    walk(s)
walk(m.graph)
print(json.dumps({"top_level": len(m.graph.node), "ops": [[d, t, n] for (d, t), n in sorted(c.items())]}))
"#;
    let o = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(model)
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "python with onnx failed: {}",
        stderr(&o)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("python printed JSON");
    let hist = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let k = (
                e[0].as_str().unwrap().to_string(),
                e[1].as_str().unwrap().to_string(),
            );
            (k, e[2].as_u64().unwrap())
        })
        .collect();
    (v["top_level"].as_u64().unwrap() as usize, hist)
}

fn kiln_histogram(doc: &Value) -> BTreeMap<(String, String), u64> {
    doc["ops"]
        .as_array()
        .expect("ops is an array")
        .iter()
        .map(|e| {
            let k = (
                e["domain"].as_str().unwrap().to_string(),
                e["op_type"].as_str().unwrap().to_string(),
            );
            (k, e["count"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn inspect_json_on_minilm_matches_the_onnx_package() {
    let shared = require!(needed("KILN_SHARED_MODELS"));
    let python = require!(needed("KILN_PYTHON"));
    let model = shared.join("minilm_l6_real_opset14.onnx");
    let o = ok(&["inspect", "--json", model.to_str().unwrap()], &shared);
    let doc = json(&o);

    assert_eq!(doc["format"], "kiln-inspect/1");
    assert_eq!(doc["nodes"]["total"], 803);
    assert_eq!(doc["nodes"]["in_subgraphs"], 0);
    let (top_level, want) = onnx_histogram(&python, &model);
    assert_eq!(top_level, 803);
    assert_eq!(
        kiln_histogram(&doc),
        want,
        "op histogram differs from the onnx package's"
    );
    // 251 Constant nodes become constants at import.
    assert_eq!(doc["nodes"]["after_import"], 803 - 251);

    assert_eq!(doc["ir_version"], 7);
    assert_eq!(doc["opsets"]["ai.onnx"], 14);
    assert_eq!(doc["producer"]["name"], "pytorch");
    let names = |k: &str| -> Vec<String> {
        doc[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("inputs"),
        ["input_ids", "attention_mask", "token_type_ids"]
    );
    assert_eq!(names("outputs"), ["last_hidden_state", "pooler_output"]);
    for i in doc["inputs"].as_array().unwrap() {
        assert_eq!(i["dtype"], "i64");
        assert_eq!(i["shape"], serde_json::json!(["batch", "sequence"]));
    }
    assert_eq!(doc["outputs"][0]["type"], "f32[batch,sequence,384]");
    assert_eq!(
        doc["outputs"][0]["shape"],
        serde_json::json!(["batch", "sequence", 384])
    );
    assert_eq!(doc["outputs"][1]["type"], "f32[batch,384]");

    // All weights are inline: ~22.7 M parameters, nothing mapped, no external files.
    let p = &doc["parameters"];
    let elements = p["elements"].as_u64().unwrap();
    assert!((22_000_000..23_000_000).contains(&elements), "{p}");
    assert!(p["bytes"].as_u64().unwrap() >= 4 * 22_000_000, "{p}");
    assert_eq!(p["mapped_tensors"], 0);
    assert_eq!(doc["external_data"], serde_json::json!([]));
    assert_eq!(doc["values"]["untyped"], 0);
}

#[test]
fn inspect_without_a_model_uses_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let o = ok(&["inspect", "--json"], dir.path());
    assert!(
        stderr(&o).contains("note: no MODEL given"),
        "{}",
        stderr(&o)
    );
    let doc = json(&o);
    assert_eq!(doc["model"]["embedded"], true);
    assert_eq!(doc["model"]["path"], Value::Null);
    assert_eq!(doc["nodes"]["total"], 286);
    assert_eq!(doc["outputs"][0]["type"], "f32[batch,sequence,64]");

    // The same document as for the file in assets/, except for where it came from.
    let file = ok(
        &["inspect", "--json", default_model().to_str().unwrap()],
        dir.path(),
    );
    let mut from_file = json(&file);
    assert!(!stderr(&file).contains("note:"));
    from_file["model"] = doc["model"].clone();
    assert_eq!(from_file, doc);

    // Text and IR forms.
    let text = stdout(&ok(&["inspect"], dir.path()));
    assert!(text.contains("nodes        286 in the file"), "{text}");
    let ir = stdout(&ok(&["inspect", "--ir"], dir.path()));
    assert!(ir.starts_with("graph "), "{ir}");
    assert!(ir.contains(": f32[batch,sequence,64]"), "{ir}");
}

#[test]
fn inspect_json_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let m = default_model();
    let a = ok(&["inspect", "--json", m.to_str().unwrap()], dir.path());
    let b = ok(&["inspect", "--json", m.to_str().unwrap()], dir.path());
    assert_eq!(a.stdout, b.stdout);
    // Top-level fields in their documented order (serde_json's Value would sort them).
    let text = stdout(&a);
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  \"")?.split_once("\":").map(|(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "format",
            "model",
            "ir_version",
            "producer",
            "opsets",
            "inputs",
            "outputs",
            "nodes",
            "ops",
            "parameters",
            "external_data",
            "values"
        ]
    );
}

#[test]
fn bad_inputs_fail_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Deterministic "random" bytes (xorshift).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(d.join("random.onnx"), &noise).unwrap();
    let good = std::fs::read(default_model()).unwrap();
    std::fs::write(d.join("truncated.onnx"), &good[..good.len() / 2]).unwrap();
    std::fs::write(d.join("empty.onnx"), b"").unwrap();

    for model in [
        "missing.onnx",
        "random.onnx",
        "truncated.onnx",
        "empty.onnx",
        ".",
    ] {
        let line = fails(&["inspect", model], d);
        assert!(line.contains(model), "{model}: {line}");
        fails(&["inspect", "--json", model], d);
        fails(&["optimize", model, "-o", "out.onnx"], d);
        assert!(!d.join("out.onnx").exists());
    }
    let line = fails(&["inspect", "missing.onnx"], d);
    assert!(
        line.contains("missing.onnx") && line.contains("No such file"),
        "{line}"
    );
    let line = fails(&["inspect", "truncated.onnx"], d);
    assert!(line.contains("truncated or corrupt"), "{line}");

    // Command-line mistakes.
    fails(&[], d);
    fails(&["frobnicate"], d);
    fails(&["inspect", "--json", "--ir"], d);
    fails(&["optimize"], d);
    fails(&["optimize", "-O9", "-o", "out.onnx"], d);
    fails(&["optimize", "-o", "no/such/dir/out.onnx"], d);
    fails(
        &[
            "optimize",
            "-o",
            "out.onnx",
            "--external-data=../escape.data",
        ],
        d,
    );
}

#[test]
fn optimize_rejects_levels_that_do_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    for level in ["-O4"] {
        let line = fails(&["optimize", level, "-o", "out.onnx"], dir.path());
        assert!(line.contains("is not implemented yet"), "{line}");
        assert!(!dir.path().join("out.onnx").exists());
    }
}

#[test]
fn optimize_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let original = std::fs::read(default_model()).unwrap();
    std::fs::write(d.join("in.onnx"), &original).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();

    for out in ["in.onnx", "./in.onnx", "sub/../in.onnx"] {
        let line = fails(&["optimize", "in.onnx", "-o", out], d);
        assert!(line.contains("refusing to overwrite"), "{line}");
    }
    let abs = d.join("in.onnx");
    fails(&["optimize", abs.to_str().unwrap(), "-o", "in.onnx"], d);
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("in.onnx", d.join("link.onnx")).unwrap();
        fails(&["optimize", "in.onnx", "-o", "link.onnx"], d);
        fails(&["optimize", "link.onnx", "-o", "in.onnx"], d);
        std::fs::hard_link(d.join("in.onnx"), d.join("hard.onnx")).unwrap();
        fails(&["optimize", "hard.onnx", "-o", "in.onnx"], d);
    }
    // The output's external-data file may not be the input either.
    let line = fails(
        &[
            "optimize",
            "in.onnx",
            "-o",
            "x.onnx",
            "--external-data=in.onnx",
        ],
        d,
    );
    assert!(line.contains("refusing to overwrite"), "{line}");
    assert_eq!(std::fs::read(d.join("in.onnx")).unwrap(), original);
    assert!(!d.join("x.onnx").exists());
}

#[test]
fn optimize_o0_writes_a_model_that_reimports_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = ok(&["optimize", "-O0", "-o", "out.onnx"], d);
    assert!(stderr(&o).contains("note: no MODEL given"));
    assert!(stdout(&o).starts_with("wrote out.onnx"), "{}", stdout(&o));
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["out.onnx"]);

    let before = json(&ok(&["inspect", "--json"], d));
    let after = json(&ok(&["inspect", "--json", "out.onnx"], d));
    for k in ["inputs", "outputs", "opsets"] {
        assert_eq!(before[k], after[k], "{k} changed by -O0");
    }
    assert_eq!(
        before["nodes"]["after_import"],
        after["nodes"]["after_import"]
    );

    // With external data: the weights go to the file, the output refers to it, and inspect
    // reports it.
    ok(&["optimize", "-O0", "-o", "ext.onnx", "--external-data"], d);
    let doc = json(&ok(&["inspect", "--json", "ext.onnx"], d));
    let files = doc["external_data"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{doc}");
    assert_eq!(files[0]["location"], "ext.onnx.data");
    let n = files[0]["tensors"].as_u64().unwrap();
    assert!(n > 0);
    assert_eq!(doc["parameters"]["mapped_tensors"].as_u64().unwrap(), n);
    assert_eq!(
        files[0]["file_bytes"].as_u64().unwrap(),
        std::fs::metadata(d.join("ext.onnx.data")).unwrap().len()
    );
    // Re-exporting over the model whose weights are mapped is refused.
    let line = fails(
        &[
            "optimize",
            "ext.onnx",
            "-o",
            "again.onnx",
            "--external-data=ext.onnx.data",
        ],
        d,
    );
    assert!(line.contains("external data of the input model"), "{line}");

    // The onnx package accepts what kiln wrote.
    let python = require!(needed("KILN_PYTHON"));
    for f in ["out.onnx", "ext.onnx"] {
        let o = Command::new(&python)
            .arg("-c")
            .arg("import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)")
            .arg(d.join(f))
            .output()
            .expect("run python");
        assert!(
            o.status.success(),
            "onnx.checker rejects {f}: {}",
            stderr(&o)
        );
    }
}

/// `-O0` writes the imported graph back as is, so importing the output gives the same IR text.
#[test]
fn optimize_o0_round_trips_the_ir_text_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["optimize", "-O0", "-o", "out.onnx"], d);
    let before = stdout(&ok(&["inspect", "--ir"], d));
    let after = stdout(&ok(&["inspect", "--ir", "out.onnx"], d));
    if let Some((i, (a, b))) = before
        .lines()
        .zip(after.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        panic!(
            "-O0 must round-trip the IR exactly; first difference at line {}:\n- {a}\n+ {b}",
            i + 1
        );
    }
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "-O0 must round-trip the IR exactly"
    );
    let before = json(&ok(&["inspect", "--json"], d));
    let after = json(&ok(&["inspect", "--json", "out.onnx"], d));
    assert_eq!(before["values"], after["values"]);
    assert_eq!(
        before["parameters"]["elements"],
        after["parameters"]["elements"]
    );
}

#[test]
fn bench_times_kiln_and_onnx_runtime_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let o = ok(
        &["bench", "--runs", "3", "--warmup", "1", "--seq", "8"],
        dir.path(),
    );
    let out = stdout(&o);
    assert!(out.contains("kiln"), "{out}");
    assert!(!out.contains("onnxruntime"), "{out}");
    require!(needed("ORT_DYLIB_PATH"));
    let o = ok(
        &[
            "bench", "--runs", "3", "--warmup", "1", "--batch", "2", "--seq", "8", "--vs-ort",
        ],
        dir.path(),
    );
    let out = stdout(&o);
    let ratio = out
        .lines()
        .find_map(|l| l.strip_prefix("ratio (kiln/ORT throughput = ORT median / kiln median): "))
        .unwrap_or_else(|| panic!("no ratio line in {out}"));
    let r: f64 = ratio.split_whitespace().next().unwrap().parse().unwrap();
    assert!(r.is_finite() && r > 0.0, "{out}");
    // Both engines ran the same inputs: their outputs agree.
    let diff = out
        .lines()
        .find_map(|l| l.strip_prefix("max abs diff between the engines' outputs: "))
        .unwrap_or_else(|| panic!("no diff line in {out}"));
    let d: f64 = diff.trim().parse().unwrap();
    assert!(d < 1e-4, "{out}");
    // Turns of --block runs (the last one shorter), ONNX Runtime at its defaults or not.
    assert!(out.contains("turns of 5 runs per engine"), "{out}");
    assert!(out.contains("(it spin-waits, its default)"), "{out}");
    let o = ok(
        &[
            "bench",
            "--runs",
            "3",
            "--warmup",
            "0",
            "--seq",
            "8",
            "--vs-ort",
            "--block",
            "2",
            "--ort-no-spinning",
        ],
        dir.path(),
    );
    let out = stdout(&o);
    assert!(out.contains("turns of 2 runs per engine"), "{out}");
    assert!(out.contains("(its spin-waiting off)"), "{out}");
    assert!(out.contains("(3 runs each, medians)"), "{out}");
    let line = fails(&["bench", "--runs", "0"], dir.path());
    assert!(line.contains("--runs"), "{line}");
    let line = fails(&["bench", "--block", "0", "--vs-ort"], dir.path());
    assert!(line.contains("--block"), "{line}");
}

#[test]
fn optimize_explain_reports_every_pass() {
    let dir = tempfile::tempdir().unwrap();
    let o = ok(
        &["optimize", "-O1", "-o", "out.onnx", "--explain"],
        dir.path(),
    );
    let err = stderr(&o);
    for pass in kiln::transforms::pass_names()
        .into_iter()
        .filter(|p| ["cse", "dce", "constant-folding"].contains(p))
    {
        assert!(err.contains(pass), "{pass} missing in {err}");
    }
    assert!(err.contains("explain: 199 → "), "{err}");
}
