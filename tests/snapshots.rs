//! Snapshots of the IR text form of the small models in `../shared/models`, after import and
//! type inference (`kiln::load`). A change in the importer, the inference or the printer shows
//! up here as a diff to review (`cargo insta review`, or `INSTA_UPDATE=always` then `git diff`).
//!
//! Needs `../shared/models` (found through `kiln::env::setting("KILN_SHARED_MODELS")`); without
//! it a test prints a skip note and passes, unless `KILN_CI` or `CI` is set: then it fails.

use std::path::{Path, PathBuf};

fn in_ci() -> bool {
    ["KILN_CI", "CI"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
}

fn shared_model(file: &str) -> Option<PathBuf> {
    let problem = match kiln::env::setting("KILN_SHARED_MODELS") {
        Some(dir) if Path::new(&dir).join(file).is_file() => {
            return Some(Path::new(&dir).join(file))
        }
        Some(dir) => format!("{dir}/{file} does not exist"),
        None => "KILN_SHARED_MODELS is not set and .cache/env does not name it".to_string(),
    };
    if in_ci() {
        panic!("{problem}: snapshot tests must not skip in CI (run scripts/setup.sh first)");
    }
    eprintln!("SKIPPED: {problem}; run scripts/setup.sh to enable this test");
    None
}

fn ir_text(file: &str) -> Option<String> {
    let path = shared_model(file)?;
    let model = kiln::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(model.graph.to_string())
}

macro_rules! snapshot {
    ($test:ident, $file:literal) => {
        #[test]
        fn $test() {
            let Some(text) = ir_text(concat!($file, ".onnx")) else {
                return;
            };
            insta::assert_snapshot!($file, text);
        }
    };
}

snapshot!(bert_tiny_sdpa, "bert_tiny_sdpa_opset14");
snapshot!(bert_tiny_eager, "bert_tiny_eager_opset14");
snapshot!(cnn_tiny, "cnn_tiny_opset14");

/// The embedded default model in `assets/` is the shared eager BERT-tiny, byte for byte.
#[test]
fn embedded_default_is_the_shared_eager_model() {
    let Some(shared) = shared_model("bert_tiny_eager_opset14.onnx") else {
        return;
    };
    let asset = kiln::env::workspace_root().join("assets/bert_tiny_eager_opset14.onnx");
    assert!(std::fs::read(asset).unwrap() == std::fs::read(shared).unwrap());
}
