#!/usr/bin/env bash
# The README's speed table: kiln vs ONNX Runtime (ENABLE_ALL) with `kiln bench`, 2 threads,
# 20 timed runs each after 3 warm-ups, on MiniLM-L6 and BERT-base (batch 1 and 8, seq 128,
# -O1 and -O2) and ResNet-50 (batch 1, -O1). Needs scripts/setup.sh (models, ORT) and a
# release build with the `ort` feature.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
[ -x target/release/kiln ] || cargo build --release --features ort --bin kiln
# Materialized large models are in .cache/models, the small ones in ../shared/models.
model() {
    if [ -f ".cache/models/$1.onnx" ]; then echo ".cache/models/$1.onnx"
    else echo "${KILN_SHARED:-$repo/../shared}/models/$1.onnx"; fi
}
run() {
    echo "== $*"
    ./target/release/kiln bench "$@" --vs-ort --runs 20 2>/dev/null | grep -E "^kiln|^onnx|ratio|^turns"
}
for m in minilm_l6_real_opset14 bert_base_opset14; do
    for b in 1 8; do
        for o in 1 2; do
            run "$(model $m)" -O$o --batch $b --seq 128
        done
    done
done
run "$(model resnet50_opset14)" -O1 --batch 1
