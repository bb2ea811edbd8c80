//! The ONNX Runtime oracle (`kiln::oracle`, cargo feature `ort`) on ONNX conformance models.
//!
//! Needs `scripts/setup.sh` (ONNX Runtime, the conformance cases, the venv's python). Without it a
//! test prints a skip note and passes, unless `KILN_CI` or `CI` is set: then it fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::env::setting;
use kiln::oracle::{Oracle, OracleError, OracleOpt, OracleOptions};
use kiln_ir::{DType, Tensor};

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
        panic!("{problem}: oracle tests must not skip in CI (run scripts/setup.sh first)");
    }
    eprintln!("SKIPPED: {problem}; run scripts/setup.sh to enable the oracle tests");
    None
}

/// The setup an oracle test needs: ONNX Runtime and the conformance cases.
fn cases_dir() -> Option<PathBuf> {
    needed("ORT_DYLIB_PATH")?;
    needed("KILN_CONFORMANCE_DIR")
}

macro_rules! require {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().expect("f32 tensor")
}

#[test]
fn add_matches_arithmetic_at_every_level_from_file_and_bytes() {
    let cases = require!(cases_dir());
    let model = cases.join("test_add/model.onnx");
    let x: Vec<f32> = (0..60).map(|i| i as f32 * 0.5 - 7.0).collect();
    let y: Vec<f32> = (0..60).map(|i| (i * i) as f32 / 16.0).collect();
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let inputs = vec![
        ("x".to_string(), Tensor::from_vec(vec![3, 4, 5], x).unwrap()),
        ("y".to_string(), Tensor::from_vec(vec![3, 4, 5], y).unwrap()),
    ];

    for opt in [OracleOpt::Disabled, OracleOpt::All] {
        let options = OracleOptions {
            opt,
            ..OracleOptions::default()
        };
        let mut oracle = Oracle::with_options(&model, &options).unwrap();
        assert_eq!(oracle.input_names(), ["x", "y"]);
        assert_eq!(oracle.output_names(), ["sum"]);
        let out = oracle.run(&inputs).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "sum");
        assert_eq!(out[0].1.dtype(), DType::F32);
        assert_eq!(out[0].1.shape(), [3, 4, 5]);
        assert_eq!(f32s(&out[0].1), want, "{opt:?}");
        // A session is reusable.
        assert_eq!(oracle.run(&inputs).unwrap(), out);
    }

    let bytes = std::fs::read(&model).unwrap();
    let mut oracle = Oracle::from_bytes(&bytes, 2).unwrap();
    assert_eq!(f32s(&oracle.run(&inputs).unwrap()[0].1), want);
}

#[test]
fn strings_go_in_and_come_out_as_bytes() {
    let cases = require!(cases_dir());
    let strings = |v: &[&str]| {
        Tensor::from_strings(
            vec![v.len()],
            v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        )
        .unwrap()
    };

    // StringNormalizer without stop words or case change: the identity on strings.
    let mut oracle = Oracle::new(
        &cases.join("test_strnormalizer_nostopwords_nochangecase/model.onnx"),
        1,
    )
    .unwrap();
    let x = strings(&["", "naïve café 日本語"]);
    let out = oracle.run(&[("x".into(), x.clone())]).unwrap();
    assert_eq!(out, vec![("y".to_string(), x)]);

    let mut oracle = Oracle::new(&cases.join("test_string_concat/model.onnx"), 1).unwrap();
    let out = oracle
        .run(&[
            ("x".into(), strings(&["abc", "ü"])),
            ("y".into(), strings(&[".com", "ber"])),
        ])
        .unwrap();
    assert_eq!(out[0].1, strings(&["abc.com", "über"]));

    // Strings in, bool out.
    let mut oracle = Oracle::new(&cases.join("test_equal_string/model.onnx"), 1).unwrap();
    let out = oracle
        .run(&[
            ("x".into(), strings(&["a", "b"])),
            ("y".into(), strings(&["a", "c"])),
        ])
        .unwrap();
    assert_eq!(
        out[0].1,
        Tensor::from_bools(vec![2], &[true, false]).unwrap()
    );
}

/// Conformance cases whose inputs and outputs cover every common element type, among them
/// bf16 and float8, which ONNX Runtime's Python binding cannot feed.
const DTYPE_CASES: &[&str] = &[
    "test_add",                                    // f32
    "test_add_uint8",                              // u8
    "test_and2d",                                  // bool
    "test_bitwise_or_ui8_bcast_4v3d",              // u8, broadcast
    "test_mod_mixed_sign_int8",                    // i8
    "test_mod_mixed_sign_int16",                   // i16
    "test_mod_mixed_sign_int32",                   // i32
    "test_mod_mixed_sign_int64",                   // i64
    "test_mod_uint16",                             // u16
    "test_mod_uint32",                             // u32
    "test_mod_uint64",                             // u64
    "test_cast_FLOAT_to_FLOAT16",                  // f32 -> f16
    "test_cast_FLOAT16_to_DOUBLE",                 // f16 -> f64
    "test_cast_FLOAT_to_BFLOAT16",                 // f32 -> bf16
    "test_cast_BFLOAT16_to_FLOAT",                 // bf16 -> f32
    "test_cast_FLOAT8E4M3FN_to_FLOAT",             // f8e4m3fn -> f32
    "test_equal_string",                           // string -> bool
    "test_strnormalizer_nostopwords_nochangecase", // string -> string
];

/// Prints `case, input|output, name, ONNX type code, dims, hex bytes` (strings: hex per element)
/// for `test_data_set_0` of each case directory given, with the `onnx` package's own reader.
const DUMP_PY: &str = r#"
import glob, os, sys
import numpy as np
import onnx
from onnx import numpy_helper
for d in sys.argv[1:]:
    case = os.path.basename(d)
    g = onnx.load(os.path.join(d, "model.onnx")).graph
    for kind, names in (("input", [i.name for i in g.input]), ("output", [o.name for o in g.output])):
        files = glob.glob(os.path.join(d, "test_data_set_0", kind + "_*.pb"))
        files.sort(key=lambda f: int(f.rsplit("_", 1)[1][:-3]))
        for name, f in zip(names, files):
            t = onnx.TensorProto()
            with open(f, "rb") as fh:
                t.ParseFromString(fh.read())
            a = numpy_helper.to_array(t)
            if t.data_type == onnx.TensorProto.STRING:
                data = ",".join((x if isinstance(x, bytes) else x.encode()).hex() for x in a.flatten())
            else:
                data = np.ascontiguousarray(a).tobytes().hex()
            print(case, kind, name, t.data_type, ",".join(map(str, t.dims)), data or "-", sep="\t")
"#;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

type Named = Vec<(String, Tensor)>;

/// Each case's (inputs, expected outputs) from `test_data_set_0`, read by `$KILN_PYTHON`.
fn read_cases(python: &Path, dirs: &[PathBuf]) -> HashMap<String, (Named, Named)> {
    let out = Command::new(python)
        .arg("-c")
        .arg(DUMP_PY)
        .args(dirs)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cases: HashMap<String, (Named, Named)> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [case, kind, name, code, dims, data] = f[..] else {
            panic!("bad line {line:?}")
        };
        let dtype = DType::from_onnx(code.parse().unwrap()).unwrap();
        let shape: Vec<usize> = dims
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.parse().unwrap())
            .collect();
        let data = if data == "-" { "" } else { data };
        let t = if dtype == DType::String {
            let n: usize = shape.iter().product();
            let items: Vec<Vec<u8>> = data.split(',').map(unhex).take(n).collect();
            Tensor::from_strings(shape, items).unwrap()
        } else {
            Tensor::from_bytes(dtype, shape, &unhex(data)).unwrap()
        };
        let entry = cases.entry(case.to_string()).or_default();
        let list = if kind == "input" {
            &mut entry.0
        } else {
            &mut entry.1
        };
        list.push((name.to_string(), t));
    }
    cases
}

/// The conformance comparison rule (`../shared/conformance/README.md`): floats within
/// 1e-5 + 1e-3·|expected| with NaN equal to NaN and infinities exact, everything else bitwise.
fn assert_close(case: &str, name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(
        (got.dtype(), got.shape()),
        (want.dtype(), want.shape()),
        "{case}: output {name}"
    );
    if !want.dtype().is_float() || want.dtype().bits() < 16 {
        assert_eq!(got, want, "{case}: output {name}");
        return;
    }
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    for (i, (&g, &w)) in g.iter().zip(&w).enumerate() {
        let ok = (g.is_nan() && w.is_nan())
            || g == w
            || (w.is_finite() && (g - w).abs() <= 1e-5 + 1e-3 * w.abs());
        assert!(ok, "{case}: output {name}[{i}] = {g}, expected {w}");
    }
}

#[test]
fn conformance_cases_of_every_common_dtype_match_their_expected_outputs() {
    let cases = require!(cases_dir());
    let python = require!(needed("KILN_PYTHON"));
    let dirs: Vec<PathBuf> = DTYPE_CASES.iter().map(|c| cases.join(c)).collect();
    let data = read_cases(&python, &dirs);
    for (case, dir) in DTYPE_CASES.iter().zip(&dirs) {
        let (inputs, expected) = &data[*case];
        let mut oracle = Oracle::new(&dir.join("model.onnx"), 1).unwrap();
        let got = oracle.run(inputs).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(got.len(), expected.len(), "{case}");
        for ((gn, g), (wn, w)) in got.iter().zip(expected) {
            assert_eq!(gn, wn, "{case}");
            assert_close(case, gn, g, w);
        }
    }
}

#[test]
fn ort_errors_are_reported_not_panicked() {
    let cases = require!(cases_dir());
    let missing_model = Oracle::new(&cases.join("no_such_case/model.onnx"), 1).unwrap_err();
    assert!(
        matches!(missing_model, OracleError::Model { .. }),
        "{missing_model}"
    );
    assert!(
        missing_model.to_string().contains("no_such_case"),
        "{missing_model}"
    );

    assert!(matches!(
        Oracle::from_bytes(b"not a model", 1),
        Err(OracleError::Model { .. })
    ));

    let mut oracle = Oracle::new(&cases.join("test_add/model.onnx"), 1).unwrap();
    let x = Tensor::from_vec(vec![3, 4, 5], vec![0f32; 60]).unwrap();
    let e = oracle.run(&[("x".into(), x.clone())]).unwrap_err();
    assert!(matches!(e, OracleError::Ort(_)), "missing input: {e}");
    let e = oracle
        .run(&[("x".into(), x.clone()), ("nope".into(), x.clone())])
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "unknown input: {e}");
    let wrong_type = Tensor::from_vec(vec![3, 4, 5], vec![0i32; 60]).unwrap();
    assert!(oracle
        .run(&[("x".into(), x), ("y".into(), wrong_type)])
        .is_err());

    // A sequence output is refused by name, not mangled.
    let mut oracle = Oracle::new(&cases.join("test_split_to_sequence_1/model.onnx"), 1).unwrap();
    let data = Tensor::from_vec(vec![3, 6], vec![1f32; 18]).unwrap();
    let e = oracle
        .run(&[
            ("data".into(), data),
            ("split".into(), Tensor::scalar(2i64)),
        ])
        .unwrap_err();
    assert!(
        matches!(&e, OracleError::UnsupportedOutput { name, .. } if name == "seq"),
        "{e}"
    );
}

#[test]
fn a_second_library_in_one_process_is_refused() {
    let cases = require!(cases_dir());
    Oracle::new(&cases.join("test_add/model.onnx"), 1).unwrap();
    let other = OracleOptions {
        dylib: Some(kiln::env::workspace_root().join("Cargo.toml")),
        ..OracleOptions::default()
    };
    let e = Oracle::with_options(&cases.join("test_add/model.onnx"), &other).unwrap_err();
    assert!(matches!(e, OracleError::DylibConflict { .. }), "{e}");
    // `ort` refuses libraries older than the API level it was built with (31).
    let version = kiln::oracle::ort_version().unwrap();
    let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
    assert!(version.starts_with("1.") && minor >= 31, "{version}");
}

#[test]
fn a_missing_library_is_a_clear_error() {
    // Needs no ONNX Runtime: the path is checked before anything is loaded.
    let options = OracleOptions {
        dylib: Some("/nonexistent/libonnxruntime.so.1.32.0".into()),
        ..OracleOptions::default()
    };
    let e = Oracle::with_options(Path::new("model.onnx"), &options).unwrap_err();
    assert!(matches!(e, OracleError::DylibMissing { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/libonnxruntime.so.1.32.0"),
        "{msg}"
    );
    assert!(msg.contains("scripts/setup.sh"), "{msg}");
}

/// Runs `child_reports_bad_ort_dylib_path` in a fresh process with `ORT_DYLIB_PATH` set to `path`.
fn run_child(path: &Path, expect: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_reports_bad_ort_dylib_path",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("ORT_DYLIB_PATH", path)
        .env("KILN_ORACLE_CHILD", expect)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child with ORT_DYLIB_PATH={}:\n{text}",
        path.display()
    );
    assert!(
        text.contains("1 passed"),
        "the child test did not run:\n{text}"
    );
}

#[test]
fn a_bad_ort_dylib_path_variable_is_a_clear_error() {
    // A fresh process, so that the variable is read by the first oracle (and no other test sees it).
    run_child(
        Path::new("/nonexistent/libonnxruntime.so.1.32.0"),
        "missing",
    );
    // An existing file that is not a library.
    run_child(
        &kiln::env::workspace_root().join("Cargo.toml"),
        "not-a-library",
    );
}

#[test]
#[ignore = "run by a_bad_ort_dylib_path_variable_is_a_clear_error in a child process"]
fn child_reports_bad_ort_dylib_path() {
    let expect = std::env::var("KILN_ORACLE_CHILD").expect("only run as a child process");
    let path = std::env::var("ORT_DYLIB_PATH").unwrap();
    let e = Oracle::new(Path::new("model.onnx"), 1).unwrap_err();
    let msg = e.to_string();
    eprintln!("error: {msg}");
    assert!(msg.contains(&path), "{msg}");
    match expect.as_str() {
        "missing" => {
            assert!(matches!(e, OracleError::DylibMissing { .. }), "{e:?}");
            assert!(msg.contains("setting ORT_DYLIB_PATH"), "{msg}");
        }
        "not-a-library" => assert!(matches!(e, OracleError::DylibLoad { .. }), "{e:?}"),
        other => panic!("unknown expectation {other}"),
    }
}
