"""Regenerate the ONNX node conformance cases from the installed `onnx` wheel.

The wheel no longer ships the generated `model.onnx` + `test_data_set_*` directories,
but it ships their generators (`onnx.backend.test.case.node`) and the writer
(`onnx.backend.test.cmd_tools.generate_data`). We feed the node cases to that writer,
so the layout and bytes are the ONNX project's own.
"""
import argparse
import os
import sys

import onnx.backend.test.case.model as model_test
import onnx.backend.test.case.node as node_test
from onnx.backend.test import cmd_tools


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("output")
    args = ap.parse_args()
    cases = node_test.collect_testcases(None)
    model_test.collect_testcases = lambda: cases
    cmd_tools.generate_data(argparse.Namespace(output=args.output))
    n = len(os.listdir(os.path.join(args.output, "node")))
    print(f"wrote {n} node cases to {os.path.join(args.output, 'node')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
