//! The ONNX node conformance runner: runs every case of a directory in the ONNX node-test
//! layout (`CASE/model.onnx`, `CASE/test_data_set_N/{input,output}_K.pb`) through kiln's
//! runtime and compares with the expected outputs.
//!
//! The comparison is the rule `../shared/conformance/peer-status.tsv` was made with, so the
//! counts compare with ONNX Runtime's and tract's: only `test_data_set_0`; float outputs
//! pass if |got − expected| ≤ 1e-5 + 1e-3·|expected| (NaN equals NaN, infinities must match,
//! shapes equal); other types exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_frontend::DataValue;
use kiln_ir::{Op, Tensor};
use kiln_runtime::Value;

/// Result of one case.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Pass,
    /// The case ran and an output differs, or a stage failed (the message says which).
    Fail(String),
    /// Listed in the skip file, with its reason.
    Skip(String),
}

/// One case's outcome.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub case: String,
    /// Op types in the case's model (for the failure table by op).
    pub ops: Vec<String>,
    pub status: Status,
}

/// Absolute and relative tolerance of the comparison rule.
pub const ATOL: f64 = 1e-5;
pub const RTOL: f64 = 1e-3;

/// Compares one output with its expected value.
pub fn compare(expected: &Tensor, got: &Tensor) -> Result<(), String> {
    if expected.dtype() != got.dtype() {
        return Err(format!(
            "dtype {} expected, got {}",
            expected.dtype(),
            got.dtype()
        ));
    }
    if expected.shape() != got.shape() {
        return Err(format!(
            "shape {:?} expected, got {:?}",
            expected.shape(),
            got.shape()
        ));
    }
    if let (Some(a), Some(b)) = (expected.strings(), got.strings()) {
        return if a == b {
            Ok(())
        } else {
            Err("strings differ".into())
        };
    }
    if !expected.dtype().is_float() || expected.dtype().bits() < 16 {
        return if expected.bytes() == got.bytes() {
            Ok(())
        } else {
            Err(format!("values differ: expected {expected:?}, got {got:?}"))
        };
    }
    let (Some(e), Some(g)) = (expected.to_f64_vec(), got.to_f64_vec()) else {
        return Err(format!("cannot compare {} values", expected.dtype()));
    };
    for (i, (x, y)) in e.iter().zip(&g).enumerate() {
        let ok = if x.is_nan() {
            y.is_nan()
        } else if x.is_infinite() {
            x == y
        } else {
            (x - y).abs() <= ATOL + RTOL * x.abs()
        };
        if !ok {
            return Err(format!("element {i}: expected {x}, got {y}"));
        }
    }
    Ok(())
}

fn op_types(g: &kiln_ir::Graph, out: &mut Vec<String>) {
    for n in g.node_ids() {
        let op: &Op = &g.node(n).op;
        out.push(op.op_type().to_string());
        for sg in op.subgraphs() {
            op_types(sg, out);
        }
    }
}

/// Runs one case directory, optimized at `level` first.
pub fn run_case(dir: &Path, level: u8) -> Outcome {
    let case = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut ops = Vec::new();
    let status = (|| -> Result<(), String> {
        let mut model = crate::load(dir.join("model.onnx")).map_err(|e| format!("load: {e}"))?;
        op_types(&model.graph, &mut ops);
        crate::optimize(&mut model, level, &[]).map_err(|e| format!("optimize: {e}"))?;
        ops.sort();
        ops.dedup();
        let plan = kiln_codegen::compile(&model).map_err(|e| format!("compile: {e}"))?;
        let data = dir.join("test_data_set_0");
        let g = &model.graph;
        let mut inputs = Vec::new();
        for (k, &i) in g.inputs.iter().enumerate() {
            let p = data.join(format!("input_{k}.pb"));
            if p.exists() {
                inputs.push((
                    g.value(i).name.clone(),
                    read_value(&p, g.value(i).ty.as_ref())?,
                ));
            }
        }
        let outs = plan.run(inputs).map_err(|e| format!("run: {e}"))?;
        for (k, ((name, v), &o)) in outs.iter().zip(&g.outputs).enumerate() {
            let p = data.join(format!("output_{k}.pb"));
            let expected = read_value(&p, g.value(o).ty.as_ref())?;
            compare_values(&expected, v).map_err(|e| format!("output `{name}`: {e}"))?;
        }
        Ok(())
    })();
    Outcome {
        case,
        ops,
        status: match status {
            Ok(()) => Status::Pass,
            Err(e) => Status::Fail(e),
        },
    }
}

fn compare_values(expected: &Value, got: &Value) -> Result<(), String> {
    match (expected, got) {
        (Value::Tensor(a), Value::Tensor(b)) => compare(a, b),
        (Value::Sequence(a), Value::Sequence(b)) => {
            if a.len() != b.len() {
                return Err(format!("sequence of {} expected, got {}", a.len(), b.len()));
            }
            a.iter().zip(b).try_for_each(|(x, y)| compare(x, y))
        }
        (Value::Optional(None), Value::Optional(None)) => Ok(()),
        (Value::Optional(Some(a)), Value::Optional(Some(b))) => compare_values(a, b),
        (Value::Optional(Some(a)), b) => compare_values(a, b),
        (a, b) => Err(format!("{} expected, got {}", a.describe(), b.describe())),
    }
}

/// Reads an input or output file of type `ty`.
fn read_value(p: &Path, ty: Option<&kiln_ir::Type>) -> Result<Value, String> {
    let v = kiln_frontend::read_data_file(p, ty).map_err(|e| format!("{}: {e}", p.display()))?;
    to_value(v)
}

fn to_value(v: DataValue) -> Result<Value, String> {
    Ok(match v {
        DataValue::Tensor(t) => Value::Tensor(t),
        DataValue::Sequence(s) => Value::Sequence(
            s.into_iter()
                .map(|x| match x {
                    DataValue::Tensor(t) => Ok(t),
                    _ => Err("nested sequences are not supported".to_string()),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataValue::Optional(o) => Value::Optional(match o {
            Some(x) => Some(Box::new(to_value(*x)?)),
            None => None,
        }),
    })
}

/// Case → reason, from a skip file (`case<TAB>reason` lines, `#` comments).
pub fn read_skips(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (case, reason) = line
            .split_once('\t')
            .ok_or_else(|| format!("skip file line without a tab: {line}"))?;
        m.insert(case.to_string(), reason.to_string());
    }
    Ok(m)
}

/// The cases of `dir`, sorted.
pub fn list_cases(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// Runs every case of `dir` at optimization `level`; `skips` are reported as skipped without running. `progress`
/// is called after each case with (done, total).
pub fn run_dir(
    dir: &Path,
    level: u8,
    skips: &BTreeMap<String, String>,
    mut progress: impl FnMut(usize, usize, &Outcome),
) -> Result<Vec<Outcome>, String> {
    let cases = list_cases(dir)?;
    let total = cases.len();
    let mut out = Vec::with_capacity(total);
    for (i, c) in cases.iter().enumerate() {
        let name = c
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let o = match skips.get(&name) {
            Some(r) => Outcome {
                case: name,
                ops: Vec::new(),
                status: Status::Skip(r.clone()),
            },
            None => {
                // A kernel bug must not take the whole run down.
                std::panic::catch_unwind(|| run_case(c, level)).unwrap_or_else(|p| Outcome {
                    case: name,
                    ops: Vec::new(),
                    status: Status::Fail(format!(
                        "panic: {}",
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    )),
                })
            }
        };
        progress(i + 1, total, &o);
        out.push(o);
    }
    Ok(out)
}

/// `passed, failed, skipped`.
pub fn counts(outcomes: &[Outcome]) -> (usize, usize, usize) {
    let p = outcomes.iter().filter(|o| o.status == Status::Pass).count();
    let s = outcomes
        .iter()
        .filter(|o| matches!(o.status, Status::Skip(_)))
        .count();
    (p, outcomes.len() - p - s, s)
}

/// Failures grouped by op type: op → failing cases.
pub fn failures_by_op(outcomes: &[Outcome]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in outcomes {
        if let Status::Fail(_) = o.status {
            let key = if o.ops.is_empty() {
                "(load)".to_string()
            } else {
                o.ops.join("+")
            };
            m.entry(key).or_default().push(o.case.clone());
        }
    }
    m
}
