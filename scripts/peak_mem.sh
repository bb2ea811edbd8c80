#!/usr/bin/env bash
# Peak resident memory of one inference, kiln vs ONNX Runtime, on the same inputs.
#
# Usage: scripts/peak_mem.sh MODEL.onnx BATCH SEQ [LEVEL]
#   e.g. scripts/peak_mem.sh .cache/models/bert_base_opset14.onnx 8 128 1
#
# Writes text inputs (input_ids in [0, 1000), a padded attention_mask, zero token_type_ids)
# for a BERT-like model to a temporary .npz, then measures with GNU time's maximum resident
# set size: `kiln run` (release build), and a Python process that runs the model once in
# ONNX Runtime (ENABLE_ALL, 2 threads). The Python interpreter and numpy count against ONNX
# Runtime (~30 MB: measured separately below and printed, so it can be subtracted).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
model=$1 batch=$2 seq=$3 level=${4:-1}
py="$repo/.cache/venv/bin/python"
[ -x "$py" ] || { echo "peak_mem: run scripts/setup.sh first" >&2; exit 1; }
kiln="$repo/target/release/kiln"
[ -x "$kiln" ] || (cd "$repo" && cargo build --release --bin kiln)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" - "$model" "$batch" "$seq" "$tmp/in.npz" <<'PY'
import sys, numpy as np, onnx
model, b, s, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
names = [i.name for i in onnx.load(model, load_external_data=False).graph.input]
rng = np.random.default_rng(0)
mask = np.ones((b, s), np.int64); mask[-1, s - s // 4:] = 0
arrays = {"input_ids": rng.integers(0, 1000, (b, s), dtype=np.int64), "attention_mask": mask,
          "token_type_ids": np.zeros((b, s), np.int64)}
np.savez(out, **{k: v for k, v in arrays.items() if k in names})
PY
rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n1; }
k=$(rss "$kiln" run "$model" --inputs "$tmp/in.npz" -o "$tmp/out.npz" -O "$level")
o=$(rss "$py" -c "
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 2
s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])
f = np.load(sys.argv[2]); s.run(None, {k: f[k] for k in f.files})
" "$model" "$tmp/in.npz")
base=$(rss "$py" -c "import numpy, onnxruntime")
echo "peak RSS, $(basename "$model") ${batch}x${seq}: kiln -O$level ${k} KiB, onnxruntime ${o} KiB (python+numpy+onnxruntime import alone: ${base} KiB)"
