//! Fused op counts at -O2 on the real models, read back from the exported ONNX file (what
//! ONNX Runtime would load), as the optimization-levels issue asks.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use kiln::frontend::export::{save_model, ExportOptions};

/// `domain.op_type` (default domain without prefix) → count, in the exported file.
fn o2_counts(model_path: &Path) -> BTreeMap<String, usize> {
    let mut model = kiln::load(model_path).expect("load");
    kiln::optimize(&mut model, 2, &[]).expect("optimize -O2");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("o2.onnx");
    let opts = ExportOptions {
        external_data: Some("o2.onnx.data".into()),
        external_threshold: 1024,
        ..ExportOptions::default()
    };
    save_model(&model, &out, &opts).expect("export");
    let back = kiln::load(&out).expect("reload the export");
    let mut counts = BTreeMap::new();
    for n in back.graph.node_ids() {
        let op = &back.graph.node(n).op;
        let key = if op.domain().is_empty() {
            op.op_type().to_string()
        } else {
            format!("{}.{}", op.domain(), op.op_type())
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn count(c: &BTreeMap<String, usize>, k: &str) -> usize {
    c.get(k).copied().unwrap_or(0)
}

fn check_bert(path: &Path, layers: usize) {
    let c = o2_counts(path);
    let name = path.display();
    assert_eq!(
        count(&c, "com.microsoft.Attention"),
        layers,
        "{name}: {c:?}"
    );
    assert_eq!(
        count(&c, "com.microsoft.SkipLayerNormalization"),
        2 * layers,
        "{name}: {c:?}"
    );
    assert_eq!(
        count(&c, "com.microsoft.EmbedLayerNormalization"),
        1,
        "{name}: {c:?}"
    );
    assert_eq!(
        count(&c, "com.microsoft.BiasGelu") + count(&c, "com.microsoft.Gelu"),
        layers,
        "{name}: {c:?}"
    );
    assert_eq!(count(&c, "Softmax"), 0, "{name}: {c:?}");
}

#[test]
fn bert_base_sdpa_eager_and_opset17() {
    let Some(dir) = common::needed("KILN_MODELS_DIR") else {
        return;
    };
    for m in [
        "bert_base_opset14.onnx",
        "bert_base_eager_opset14.onnx",
        "bert_base_opset17.onnx",
    ] {
        check_bert(&dir.join(m), 12);
    }
}

#[test]
fn minilm_and_tiny_berts() {
    let Some(dir) = common::needed("KILN_SHARED_MODELS") else {
        return;
    };
    check_bert(&dir.join("minilm_l6_real_opset14.onnx"), 6);
    check_bert(&dir.join("bert_tiny_sdpa_opset14.onnx"), 2);
    check_bert(&dir.join("bert_tiny_eager_opset14.onnx"), 2);
}

#[test]
fn gpt2() {
    let Some(dir) = common::needed("KILN_MODELS_DIR") else {
        return;
    };
    let c = o2_counts(&dir.join("gpt2_opset14.onnx"));
    assert_eq!(count(&c, "com.microsoft.Attention"), 12, "{c:?}");
    assert_eq!(count(&c, "com.microsoft.FastGelu"), 12, "{c:?}");
    assert!(
        count(&c, "com.microsoft.SkipLayerNormalization") >= 23,
        "{c:?}"
    );
}
