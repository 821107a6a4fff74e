"""Which INT8 settings buy the most speed on this CPU: one calibration, several quantizations, timed side by side.

Calibrates once (minmax) on ``--data``, writes one INT8 model per variant from those ranges, and
times FP32 and every variant interleaved run by run with the runtime's session options, so load
from other processes hits them alike. For each variant it also counts the compute nodes that
onnxruntime's optimized graph runs in int8 and in float.

    python benchmarks/calibration_variants.py fcn8.onnx --data ../shared/data/membrane --threads 1 \\
        --json benchmarks/results/calibration_variants_2vcpu.json

Run it on a quiet machine; the JSON records the machine and every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import onnx

from edgeseg.calibration import _measure
from edgeseg.calibration import (QuantizeOptions, RangeCollector, load_calibration_set, preprocess_for_quantization,
                                 quantize)
from edgeseg.runtime.contract import Contract

VARIANTS = {
    "qdq_uint8_per_channel (default)": QuantizeOptions(activations="uint8"),
    "qdq_int8_per_channel": QuantizeOptions(activations="int8"),
    "qdq_uint8_per_tensor": QuantizeOptions(activations="uint8", per_channel=False),
    "qdq_uint8_convtranspose_quantized": QuantizeOptions(activations="uint8", float_op_types=()),
    "qdq_uint8_reduce_range": QuantizeOptions(activations="uint8", reduce_range=True),
    "qoperator_uint8_per_channel": QuantizeOptions(activations="uint8", format="qoperator"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="FP32 edgeseg ONNX model")
    parser.add_argument("--data", required=True, help="calibration frames (as for edgeseg calibrate)")
    parser.add_argument("--samples", type=int, default=16, help="calibration frames (default: 16)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    parser.add_argument("--rounds", type=int, default=20, help="timed runs per model (default: 20)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    model = Path(args.model)
    contract = Contract.from_onnx(onnx.load(str(model), load_external_data=False))
    with tempfile.TemporaryDirectory() as tmp, load_calibration_set(args.data, contract, samples=args.samples) as frames:
        work = Path(tmp)
        prepared = work / "prepared.onnx"
        preprocess_for_quantization(model, prepared)
        collector = RangeCollector(prepared, work, QuantizeOptions())
        for _, batch in frames.chunks(4):
            collector.add(contract.input.name, batch)
        cache = work / "ranges.json"
        collector.save(cache)
        paths = {"fp32": model}
        for name, options in VARIANTS.items():
            paths[name] = work / f"{len(paths)}.onnx"
            quantize(prepared, paths[name], cache=cache, options=options)
        timings = _measure.time_side_by_side(paths, frames, rounds=args.rounds, threads=args.threads)
        base = timings["fp32"].ms_per_frame
        results = {}
        for name, timing in timings.items():
            kernels = _measure.optimized_kernels(paths[name], work).counts() if name != "fp32" else None
            results[name] = {"ms_per_frame": timing.ms_per_frame, "speedup": base / timing.ms_per_frame,
                             "ep_kernels": kernels}
            print(f"{name:36s} {timing.ms_per_frame:8.1f} ms  {base / timing.ms_per_frame:5.2f}x  {kernels or ''}")
    if args.json:
        record = {"machine": platform.processor() or platform.machine(), "cpu_int8": _measure.cpu_int8_support(),
                  "model": str(model), "threads": args.threads, "rounds": args.rounds, "results": results}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
