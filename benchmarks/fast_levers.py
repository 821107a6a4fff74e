"""Fast-mode levers (issue 14 item 2), measured side by side in one run, interleaved rounds.

On one model and the same preprocessed frames, each variant produces class-id masks at model size:

- ``ort``: onnxruntime FP32, batch 1, numpy argmax (the plain baseline);
- ``ov-sync``: OpenVINO at its defaults (bf16 on AMX CPUs), one request, batch 1, numpy argmax;
- ``ov-sync-argmax``: the same with ArgMax + Cast(uint8) fused into the graph (uint8 ids out);
- ``ov-b4-throughput``: what edgeseg-fast ran before (batch 4 split over throughput streams), numpy argmax;
- ``ov-b4-throughput-argmax``: the same with the fused ArgMax;
- ``ov-async-N``: N infer requests in flight (OpenVINO's AsyncInferQueue), batch 1, throughput hint;
- ``ov-async-N-argmax``: the same with the fused ArgMax.

    python benchmarks/fast_levers.py samples/models/fcn8/model.onnx --source samples/scenes.avi \
        --json benchmarks/results/fast_levers.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def fused_argmax(path: Path, out: Path) -> Path:
    """The model with ArgMax over the class axis and a Cast to uint8 after its first output."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    scores = model.graph.output[0].name
    model.graph.node.extend([
        helper.make_node("ArgMax", [scores], ["ids64"], axis=-1, keepdims=0),
        helper.make_node("Cast", ["ids64"], ["ids"], to=TensorProto.UINT8),
    ])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("ids", TensorProto.UINT8, None))
    onnx.save(model, str(out))
    return out


def variants(model: Path, fused: Path):
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def ort_run(batches):
        return [np.argmax(session.run(None, {name: b})[0], axis=-1).astype(np.uint8) for b in batches]

    def sync(path, argmax_in_graph, hint=None):
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": hint} if hint else {})
        request = compiled.create_infer_request()

        def run(batches):
            out = []
            for b in batches:
                y = request.infer({0: b})[0]
                out.append(y.copy() if argmax_in_graph else np.argmax(y, axis=-1).astype(np.uint8))
            return out
        return run

    def async_queue(path, argmax_in_graph, jobs):
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
        queue = ov.AsyncInferQueue(compiled, jobs)

        def run(batches):
            out = [None] * len(batches)

            def done(request, index):
                y = request.get_output_tensor(0).data
                out[index] = y.copy() if argmax_in_graph else np.argmax(y, axis=-1).astype(np.uint8)
            queue.set_callback(done)
            for i, b in enumerate(batches):
                queue.start_async({0: b}, i)
            queue.wait_all()
            return out
        return run

    def batched(path, batch, argmax_in_graph=False):
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
        streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        requests = [compiled.create_infer_request() for _ in range(streams)]

        def run(batches):
            out = []
            for start in range(0, len(batches), batch):  # as the runtime does: one batch split over the streams
                parts = np.array_split(np.concatenate(batches[start:start + batch]), streams)
                for r, p in zip(requests, parts):
                    r.start_async({0: p})
                for r, p in zip(requests, parts):
                    r.wait()
                    y = r.get_output_tensor(0).data
                    ids = y.copy() if argmax_in_graph else np.argmax(y, axis=-1).astype(np.uint8)
                    out.extend(ids[i:i + 1] for i in range(len(p)))
            return out
        return run

    jobs = max(2, len(os.sched_getaffinity(0)))
    return {
        "ort": ort_run,
        "ov-sync": sync(model, False),
        "ov-sync-argmax": sync(fused, True),
        "ov-b4-throughput": batched(model, 4),
        "ov-b4-throughput-argmax": batched(fused, 4, True),
        f"ov-async-{jobs}": async_queue(model, False, jobs),
        f"ov-async-{jobs}-argmax": async_queue(fused, True, jobs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--source", default="samples/scenes.avi")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    from edgeseg.runtime import Contract, machine_fingerprint, open_source, preprocess, write_json_atomic

    contract = Contract.from_onnx(args.model)
    frames = [preprocess(f.image, contract.input)[0] for f in open_source(args.source, max_frames=args.frames) if f.ok]
    fused = fused_argmax(args.model, args.json.with_suffix(".argmax.onnx"))
    runs = variants(args.model, fused)
    reference = runs["ort"](frames)
    fps: dict[str, list[float]] = {name: [] for name in runs}
    agreement = {}
    for name, run in runs.items():
        run(frames[:4])  # warm-up: compile for the shape
    for _ in range(args.repeats):  # interleaved rounds: a drifting machine penalizes every variant alike
        for name, run in runs.items():
            start = time.perf_counter()
            masks = run(frames)
            fps[name].append(len(frames) / (time.perf_counter() - start))
            agreement[name] = float(np.mean([np.mean(a.reshape(b.shape) == b) for a, b in zip(masks, reference)]))
    median = {name: float(np.median(v)) for name, v in fps.items()}
    report = {
        "machine": machine_fingerprint(), "load_average": list(os.getloadavg()),
        "note": "a 2-vCPU machine shared with other helpers' work; ratios are from one run, interleaved",
        "model": str(args.model), "source": args.source, "frames": len(frames), "repeats": args.repeats,
        "fps_median": median, "fps_runs": fps, "agreement_vs_ort": agreement,
        "ratio_vs_ort": {name: median[name] / median["ort"] for name in median},
        "ratio_vs_ov_b4_throughput": {name: median[name] / median["ov-b4-throughput"] for name in median},
    }
    write_json_atomic(args.json, report)
    fused.unlink()
    for name in runs:
        print(f"{name:22s} {median[name]:8.1f} fps  x{report['ratio_vs_ort'][name]:.2f} ort  "
              f"x{report['ratio_vs_ov_b4_throughput'][name]:.2f} b4  agreement {agreement[name]:.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
