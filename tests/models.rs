//! kiln's runtime on the real models of ../shared/models (and the materialized large ones):
//! against ONNX Runtime on padded inputs, against the PyTorch goldens, from many threads,
//! and with bad inputs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln::oracle::{Oracle, OracleOptions};
use kiln::validate::compare_outputs;
use kiln::{random_inputs, Session};
use kiln_ir::Tensor;

fn models() -> Option<Vec<PathBuf>> {
    common::needed("ORT_DYLIB_PATH")?;
    let shared = common::needed("KILN_SHARED_MODELS")?;
    let big = common::needed("KILN_MODELS_DIR")?;
    let mut v: Vec<PathBuf> = [shared, big]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "onnx")
                && !p.to_string_lossy().ends_with(".skel.onnx")
        })
        .collect();
    v.sort();
    assert!(
        v.len() >= 9,
        "expected 4 shared and 5 materialized models, found {v:?}"
    );
    Some(v)
}

fn dims() -> HashMap<String, i64> {
    HashMap::from([("batch".to_string(), 2), ("sequence".to_string(), 16)])
}

/// Tolerance: 1e-4 absolute, scaled by the output's magnitude when that exceeds 1 (deep
/// models' hidden states reach tens; f32 accumulation error grows with them).
fn atol_for(expected: &Tensor) -> f64 {
    let mag = expected
        .to_f64_vec()
        .unwrap_or_default()
        .iter()
        .fold(0f64, |m, x| m.max(x.abs()));
    1e-4 * mag.max(1.0)
}

#[test]
fn every_model_matches_onnx_runtime_on_padded_inputs() {
    let Some(models) = models() else { return };
    let mut failures = Vec::new();
    for path in &models {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let r = (|| -> Result<String, String> {
            let model = kiln::load(path).map_err(|e| e.to_string())?;
            let inputs = random_inputs(&model, &dims(), 7)?;
            let session = Session::new(model).map_err(|e| e.to_string())?;
            let got = session.run(inputs.clone()).map_err(|e| e.to_string())?;
            let mut ort = Oracle::with_options(
                path,
                &OracleOptions {
                    threads: 2,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let want = ort.run(&inputs).map_err(|e| e.to_string())?;
            let mut line = name.clone();
            for (n, w) in &want {
                let rep = &compare_outputs(
                    &[(n.clone(), w.clone())],
                    &got.iter()
                        .filter(|(g, _)| g == n)
                        .cloned()
                        .collect::<Vec<_>>(),
                    atol_for(w),
                    0.0,
                )[0];
                line += &format!("  {n}: max|d| {:.2e} cos {:.6}", rep.max_abs, rep.cosine);
                if !rep.pass {
                    return Err(format!(
                        "{line} — FAIL at atol {:.1e} {:?}",
                        atol_for(w),
                        rep.problem
                    ));
                }
            }
            Ok(line)
        })();
        match r {
            Ok(l) => eprintln!("{l}"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// (model, golden, free the input dims): the CNN was exported with a fixed 32×32 input
/// and its golden is 40×40, which the model as declared rejects (ONNX Runtime does too).
fn golden_pairs() -> Option<Vec<(PathBuf, PathBuf, bool)>> {
    let shared = common::needed("KILN_SHARED_MODELS")?;
    Some(vec![
        (
            shared.join("bert_tiny_eager_opset14.onnx"),
            shared.join("bert_tiny_eager_opset14.golden.npz"),
            false,
        ),
        (
            shared.join("bert_tiny_sdpa_opset14.onnx"),
            shared.join("bert_tiny_sdpa_opset14.golden.npz"),
            false,
        ),
        (
            shared.join("minilm_l6_real_opset14.onnx"),
            shared.join("golden_minilm_l6_real_opset14.npz"),
            false,
        ),
        (
            shared.join("cnn_tiny_opset14.onnx"),
            shared.join("cnn_tiny_opset14.golden.npz"),
            true,
        ),
    ])
}

fn run_golden(model: &Path, golden: &Path, free: bool) -> Result<String, String> {
    let arrays = kiln::npz::read_npz(golden).map_err(|e| e.to_string())?;
    let mut m = kiln::load(model).map_err(|e| e.to_string())?;
    if free {
        kiln::free_input_dims(&mut m).map_err(|e| e.to_string())?;
    }
    let input_names: Vec<String> = m
        .graph
        .inputs
        .iter()
        .map(|&i| m.graph.value(i).name.clone())
        .collect();
    let (inputs, expected): (Vec<_>, Vec<_>) = arrays
        .into_iter()
        .partition(|(n, _)| input_names.contains(n));
    let session = Session::new(m).map_err(|e| e.to_string())?;
    let got = session.run(inputs).map_err(|e| e.to_string())?;
    let mut line = String::new();
    for (n, e) in &expected {
        let g: Vec<_> = got.iter().filter(|(x, _)| x == n).cloned().collect();
        let rep = &compare_outputs(&[(n.clone(), e.clone())], &g, atol_for(e), 0.0)[0];
        line += &format!("  {n}: max|d| {:.2e}", rep.max_abs);
        if !rep.pass {
            return Err(format!("{line} FAIL {:?}", rep.problem));
        }
    }
    Ok(line)
}

#[test]
fn goldens_match() {
    let Some(pairs) = golden_pairs() else { return };
    let mut failures = Vec::new();
    for (m, g, free) in pairs {
        match run_golden(&m, &g, free) {
            Ok(l) => eprintln!("{}:{l}", g.display()),
            Err(e) => failures.push(format!("{}: {e}", g.display())),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn fixed_input_dims_are_enforced_unless_freed() {
    let Some(shared) = common::needed("KILN_SHARED_MODELS") else {
        return;
    };
    let arrays = kiln::npz::read_npz(shared.join("cnn_tiny_opset14.golden.npz")).unwrap();
    let input: Vec<_> = arrays
        .into_iter()
        .filter(|(n, _)| n == "pixel_values")
        .collect();
    let m = kiln::load(shared.join("cnn_tiny_opset14.onnx")).unwrap();
    let e = Session::new(m).unwrap().run(input).unwrap_err().to_string();
    assert!(e.contains("dim 2 must be 32"), "{e}");
}

#[test]
fn one_session_from_eight_threads_gives_identical_outputs() {
    let Some(shared) = common::needed("KILN_SHARED_MODELS") else {
        return;
    };
    let model = kiln::load(shared.join("bert_tiny_sdpa_opset14.onnx")).unwrap();
    let inputs = random_inputs(&model, &dims(), 3).unwrap();
    let session = Session::new(model).unwrap();
    let reference = session.run(inputs.clone()).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..5)
                        .map(|_| session.run(inputs.clone()).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for out in h.join().unwrap() {
                for ((n, a), (_, b)) in reference.iter().zip(&out) {
                    assert_eq!(a.bytes(), b.bytes(), "output {n} differs between threads");
                }
            }
        }
    });
}

#[test]
fn bad_inputs_get_clear_errors() {
    let Some(shared) = common::needed("KILN_SHARED_MODELS") else {
        return;
    };
    let model = kiln::load(shared.join("bert_tiny_eager_opset14.onnx")).unwrap();
    let good = random_inputs(&model, &dims(), 1).unwrap();
    let session = Session::new(model).unwrap();
    let err = |inputs: Vec<(String, Tensor)>| session.run(inputs).unwrap_err().to_string();

    let mut wrong_name = good.clone();
    wrong_name[0].0 = "input_idz".into();
    assert!(err(wrong_name).contains("no input `input_idz`"));

    let missing = good[1..].to_vec();
    assert!(err(missing).contains("input `input_ids` is missing"));

    let mut wrong_dtype = good.clone();
    wrong_dtype[0].1 = Tensor::from_vec(vec![2, 16], vec![0i32; 32]).unwrap();
    assert!(err(wrong_dtype).contains("must be i64, got i32"));

    let mut wrong_rank = good.clone();
    wrong_rank[0].1 = Tensor::from_vec(vec![32], vec![0i64; 32]).unwrap();
    assert!(err(wrong_rank).contains("must have rank 2"));

    // `sequence` is 16 in input_ids but 15 in attention_mask.
    let mut contradiction = good.clone();
    contradiction[1].1 = Tensor::from_vec(vec![2, 15], vec![1i64; 30]).unwrap();
    let e = err(contradiction);
    assert!(
        e.contains("`sequence`") && e.contains("16") && e.contains("15"),
        "{e}"
    );
}
