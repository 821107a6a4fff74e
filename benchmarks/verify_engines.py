"""Verify one model's files on every engine and precision this machine runs, timed, side by side.

For each (file, engine, precision): ``verify_files`` (Keras vs the engine's own tensors, layer by layer),
its wall time (Keras load and tracing included, as `edgeseg verify` pays them), the verdict, and every
layer's SQNR, so the INT8 file's per-layer SQNR on onnxruntime and on OpenVINO sit next to each other.

    python benchmarks/verify_engines.py MODEL.keras M.onnx M.int8.onnx --images DIR --json out.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

COMBOS = (("fp32", "onnxruntime", "fp32"), ("fp32", "openvino", "fp32"), ("fp32", "openvino", "bf16"),
          ("int8", "onnxruntime", "int8"), ("int8", "openvino", "int8"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keras", type=Path)
    parser.add_argument("fp32", type=Path)
    parser.add_argument("int8", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    from edgeseg.export import _patches

    _patches.import_tensorflow_quietly()
    from edgeseg.export import VerifyRequest, verify_files
    from edgeseg.runtime import EdgesegError, write_json_atomic

    runs = []
    for which, engine, precision in COMBOS:
        path = args.fp32 if which == "fp32" else args.int8
        start = time.perf_counter()
        try:
            report = verify_files(args.keras, path, request=VerifyRequest(images=args.images), engine=engine,
                                  precision=precision).to_dict()
        except EdgesegError as error:
            runs.append({"file": which, "engine": engine, "precision": precision, "refused": str(error)})
            print(f"{which:5} {engine:11} {precision:5} refused: {error}")
            continue
        seconds = time.perf_counter() - start
        layers = {layer["name"]: layer["sqnr_db"] for layer in report["layers"]}
        worst = min(layers, key=layers.get)
        runs.append({"file": which, "engine": engine, "precision": precision, "seconds": seconds, "ok": report["ok"],
                     "first_failure": report["first_failure"], "ran": report["engine"], "sqnr_db": layers,
                     "output": report["output"], "instrumentation": report["instrumentation"]})
        print(f"{which:5} {engine:11} {precision:5} {seconds:6.1f} s  ok={report['ok']}  worst {worst} "
              f"{layers[worst]:.1f} dB  argmax agreement {report['output']['argmax_agreement']}  "
              f"probed==deployed {report['instrumentation']['same_as_deployed']}", flush=True)
    load = os.getloadavg()
    write_json_atomic(args.json, {"keras": str(args.keras), "images": str(args.images), "load_average": load,
                                  "cpu": _cpu(), "runs": runs})
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; wrote {args.json}")
    return 0


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
