#!/usr/bin/env bash
# Fuzzes the ONNX importer (fuzz/fuzz_targets/load_model.rs) with cargo-fuzz / libFuzzer.
#
#   scripts/fuzz.sh [SECONDS]        # default 600
#
# Installs cargo-fuzz if missing, seeds fuzz/corpus/load_model/ with a few hundred ONNX
# conformance models and the small shared models, runs the target for SECONDS and prints the
# number of executions. Crashes land in fuzz/artifacts/load_model/ (reproduce one with
# `cargo +nightly fuzz run load_model fuzz/artifacts/load_model/crash-…`, shrink it with
# `cargo +nightly fuzz tmin load_model fuzz/artifacts/load_model/crash-…`).
# Extra arguments after SECONDS go to libFuzzer, e.g. `scripts/fuzz.sh 600 -max_len=131072`
# (about 10x the execs/s: the 750 KB BERT seeds are then cut, the rest fit).
set -euo pipefail

SECONDS_TO_RUN="${1:-600}"
shift || true
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz
fi

# Seed corpus: every 6th conformance model (~310 of ~1,900, sorted, so the same set each
# time) plus the small real models. libFuzzer adds what it finds to the same directory.
CORPUS="fuzz/corpus/load_model"
mkdir -p "$CORPUS"
CASES="${KILN_CONFORMANCE_DIR:-$ROOT/.cache/onnx-cases/node}"
MODELS="${KILN_MODELS_DIR:-$ROOT/../shared/models}"
[ -d "$MODELS" ] || MODELS=/work/shared/models
seeded=0
if [ -d "$CASES" ]; then
    i=0
    while IFS= read -r f; do
        if [ $((i % 6)) -eq 0 ]; then
            name="conf_$(basename "$(dirname "$f")").onnx"
            [ -e "$CORPUS/$name" ] || cp "$f" "$CORPUS/$name"
            seeded=$((seeded + 1))
        fi
        i=$((i + 1))
    done < <(find "$CASES" -mindepth 2 -maxdepth 2 -name model.onnx | LC_ALL=C sort)
else
    echo "fuzz.sh: no conformance cases at $CASES (run scripts/setup.sh); seeding without them" >&2
fi
for m in bert_tiny_sdpa_opset14.onnx bert_tiny_eager_opset14.onnx cnn_tiny_opset14.onnx; do
    if [ -f "$MODELS/$m" ]; then
        [ -e "$CORPUS/$m" ] || cp "$MODELS/$m" "$CORPUS/$m"
        seeded=$((seeded + 1))
    fi
done
# Hand-made seeds for import paths the conformance models rarely take: sparse initializers
# and sparse Constants, model-local functions, legacy opsets (attribute → input upgrades,
# opset < 7 broadcasting, old Softmax), external data (rejected from bytes), nested subgraphs.
PY="${KILN_PYTHON:-$ROOT/.cache/venv/bin/python}"
if [ -x "$PY" ] && "$PY" -c 'import onnx' 2>/dev/null; then
    "$PY" - "$CORPUS" <<'PYEOF' || echo "fuzz.sh: hand-made seeds failed (continuing without)" >&2
import sys, os
import numpy as np
import onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
out = sys.argv[1]
def save(name, g, opset=17, **kw):
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)] + kw.pop("extra_opsets", []), **kw)
    m.ir_version = 8 if opset >= 7 else 3
    with open(os.path.join(out, "hand_" + name + ".onnx"), "wb") as f:
        f.write(m.SerializeToString())
vi = h.make_tensor_value_info
x = vi("x", T.FLOAT, [2, 3]); y = vi("y", T.FLOAT, [2, 3])
# sparse initializer (linear and coordinate indices) and sparse Constant
sp = h.make_sparse_tensor(nh.from_array(np.array([1.0, 2.0], np.float32), "w"),
                          nh.from_array(np.array([1, 4], np.int64), "w_idx"), [2, 3])
sp2 = h.make_sparse_tensor(nh.from_array(np.array([5.0], np.float32), "v"),
                           nh.from_array(np.array([[1, 2]], np.int64), "v_idx"), [2, 3])
g = h.make_graph([h.make_node("Add", ["x", "w"], ["a"]), h.make_node("Add", ["a", "v"], ["b"]),
                  h.make_node("Constant", [], ["c"], sparse_value=sp2),
                  h.make_node("Mul", ["b", "c"], ["y"])], "sparse", [x], [y])
g.sparse_initializer.extend([sp, sp2]); g.sparse_initializer[1].values.name = "v"
save("sparse", g)
# model-local functions, one calling another, with attribute references
f1 = h.make_function("local", "inner", ["a"], ["b"],
                     [h.make_node("LeakyRelu", ["a"], ["b"], alpha=0.2)], [h.make_opsetid("", 17)])
f2 = h.make_function("local", "outer", ["a"], ["b"],
                     [h.make_node("inner", ["a"], ["t"], domain="local"), h.make_node("inner", ["t"], ["b"], domain="local")],
                     [h.make_opsetid("", 17), h.make_opsetid("local", 1)])
g = h.make_graph([h.make_node("outer", ["x"], ["y"], domain="local")], "funcs", [x], [y])
save("functions", g, functions=[f1, f2], extra_opsets=[h.make_opsetid("local", 1)])
# legacy opsets: attribute-to-input upgrades, broadcast=1 with axis, Softmax 2-D coercion
b = vi("b", T.FLOAT, [3])
g = h.make_graph([h.make_node("Add", ["x", "b"], ["a"], broadcast=1, axis=1),
                  h.make_node("Softmax", ["a"], ["s"], axis=0),
                  h.make_node("Reshape", ["s"], ["r"], shape=[3, 2]),
                  h.make_node("Slice", ["r"], ["sl"], starts=[0], ends=[2], axes=[0]),
                  h.make_node("Pad", ["sl"], ["p"], pads=[0, 0, 1, 1], value=1.0),
                  h.make_node("Unsqueeze", ["p"], ["u"], axes=[0]),
                  h.make_node("Squeeze", ["u"], ["q"], axes=[0]),
                  h.make_node("Split", ["q"], ["y1", "y2"], axis=1, split=[1, 2]),
                  h.make_node("Clip", ["y1"], ["y"], min=-1.0, max=1.0)],
                 "legacy", [x, b], [vi("y", T.FLOAT, None)])
save("legacy_opset4", g, opset=4)
g = h.make_graph([h.make_node("TopK", ["x"], ["v", "i"], k=2), h.make_node("Dropout", ["v"], ["y"], ratio=0.3),
                  h.make_node("Upsample", ["x"], ["u"], scales=[1.0, 2.0]),
                  h.make_node("Cast", ["u"], ["z"], to="DOUBLE")],
                 "legacy9", [x], [vi("y", T.FLOAT, None), vi("z", T.DOUBLE, None)])
save("legacy_opset8", g, opset=8)
# external data (an error from bytes), typed-field and sub-byte initializers
ext = nh.from_array(np.zeros((2, 3), np.float32), "e")
ext.data_location = T.EXTERNAL
ext.external_data.add(key="location", value="w.bin"); ext.external_data.add(key="offset", value="0")
ext.ClearField("raw_data")
g = h.make_graph([h.make_node("Add", ["x", "e"], ["y"])], "ext", [x], [y], initializer=[ext])
save("external", g)
i4 = h.make_tensor("q", T.INT4, [5], [1, -2, 3, -4, 5])
f16 = h.make_tensor("f", T.FLOAT16, [2], np.array([1.0, 2.0], np.float16).view(np.uint16).tolist())
st = h.make_tensor("st", T.STRING, [2], [b"a", b"bc"])
g = h.make_graph([h.make_node("Cast", ["q"], ["qf"], to=T.FLOAT), h.make_node("Identity", ["f"], ["ff"]),
                  h.make_node("Identity", ["st"], ["so"])], "typed", [],
                 [vi("qf", T.FLOAT, [5]), vi("ff", T.FLOAT16, [2]), vi("so", T.STRING, [2])], initializer=[i4, f16, st])
save("typed_fields", g, opset=21)
# nested subgraphs reading outer values
cond = vi("cond", T.BOOL, [])
then_g = h.make_graph([h.make_node("Add", ["x", "x"], ["t"])], "then", [], [vi("t", T.FLOAT, [2, 3])])
inner_if = h.make_graph([h.make_node("If", ["cond"], ["e"], then_branch=then_g, else_branch=then_g)],
                        "else", [], [vi("e", T.FLOAT, [2, 3])])
body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Add", ["acc", "x"], ["acc2"])],
                    "body", [vi("i", T.INT64, []), vi("c_in", T.BOOL, []), vi("acc", T.FLOAT, [2, 3])],
                    [vi("c_out", T.BOOL, []), vi("acc2", T.FLOAT, [2, 3])])
n = h.make_tensor_value_info("n", T.INT64, [])
g = h.make_graph([h.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=inner_if),
                  h.make_node("Loop", ["n", "cond", "z"], ["y"], body=body)],
                 "control", [x, cond, n], [y])
save("control_flow", g)
PYEOF
    seeded=$((seeded + $(ls "$CORPUS" | grep -c '^hand_')))
fi
echo "fuzz.sh: seeded $seeded files; corpus now holds $(ls "$CORPUS" | wc -l) files"

# The log goes under fuzz/target/ (git-ignored).
LOG="fuzz/target/fuzz-load_model.log"
mkdir -p fuzz/artifacts/load_model fuzz/target
set +e
cargo +nightly fuzz run load_model "$CORPUS" -- \
    -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=4096 -timeout=10 \
    -print_final_stats=1 "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e

# libFuzzer ends with "Done N runs in S second(s)" and, with -print_final_stats,
# "stat::number_of_executed_units: N".
execs=$(grep -h 'stat::number_of_executed_units' "$LOG" | tail -1 | awk '{print $2}')
[ -n "$execs" ] || execs=$(grep -hoE 'Done [0-9]+ runs' "$LOG" | tail -1 | awk '{print $2}')
[ -n "$execs" ] || execs=$(grep -hoE '^#[0-9]+' "$LOG" | tail -1 | tr -d '#')
echo "fuzz.sh: execs: $execs (in ${SECONDS_TO_RUN}s; exit status $rc)"
if ls fuzz/artifacts/load_model/ 2>/dev/null | grep -q .; then
    echo "fuzz.sh: artifacts (crashes/timeouts/OOMs) in fuzz/artifacts/load_model/:"
    ls -l fuzz/artifacts/load_model/
fi
exit "$rc"
