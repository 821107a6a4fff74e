"""Which engine configuration is fastest here? Inference only, interleaved, agreement with Keras FP32.

Raw onnxruntime sessions and OpenVINO on the files ``make_models.py`` writes: intra-op threads,
graph optimization level, NHWC vs NCHW input, INT8 QDQ, OpenVINO's precisions (its default is
bf16 where the CPU has it), batch 4. Every configuration runs the same preprocessed frames;
rounds are interleaved (A B C ... A B C) and medians reported. Agreement is the share of argmax
pixels equal to Keras FP32's (``model(x, training=False)``) on the same frames.

    python benchmarks/sweep_engines.py --models /tmp/benchx --frames 20 --rounds 3 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, type=Path, help="folder written by make_models.py")
    parser.add_argument("--frames", type=int, default=20, help="frames from the folder's video.mp4 (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--only", default=None, help="comma-separated substrings: run matching configs only")
    parser.add_argument("--out", required=True, type=Path, help="write the results JSON here")
    args = parser.parse_args(argv)

    from edgeseg.runtime import Contract
    from edgeseg.runtime import open_source, preprocess

    d = args.models
    contract = Contract.from_onnx(str(d / "fcn8.onnx"))
    frames = [f.image for f in open_source(str(d / "video.mp4"), max_frames=args.frames) if f.ok]
    nhwc = np.concatenate([preprocess(image, contract.input)[0] for image in frames])
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    reference = keras_reference(d / "fcn8.keras", nhwc)

    configs = build_configs(d)
    if args.only:
        wanted = args.only.split(",")
        configs = {k: v for k, v in configs.items() if any(w in k for w in wanted)}
    engines, opened = {}, {}
    for name, (opener, layout, batch) in configs.items():
        print(f"opening {name}", flush=True)
        try:
            if id(opener) not in opened:
                opened[id(opener)] = opener()
            engines[name] = (opened[id(opener)], layout, batch)
        except Exception as error:  # noqa: BLE001 - a configuration this machine cannot build is a finding
            print(f"{name}: cannot build: {type(error).__name__}: {str(error).splitlines()[0]}", flush=True)
    results = {name: {"fps": [], "agreement": None, "layout": layout, "batch": batch}
               for name, (_, layout, batch) in engines.items()}
    for name, (run, layout, batch) in engines.items():  # warm-up and agreement, untimed
        inputs = nhwc if layout == "NHWC" else nchw
        outputs = np.concatenate([run(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
        results[name]["agreement"] = float(np.mean(outputs.argmax(-1) == reference))
    for round_ in range(args.rounds):
        for name, (run, layout, batch) in engines.items():
            inputs = nhwc if layout == "NHWC" else nchw
            start = time.perf_counter()
            for i in range(0, len(inputs), batch):
                run(inputs[i:i + batch])
            fps = len(inputs) / (time.perf_counter() - start)
            results[name]["fps"].append(fps)
            print(f"round {round_} {name}: {fps:.2f} fps", flush=True)
    for r in results.values():
        r["fps_median"] = statistics.median(r["fps"])
    args.out.write_text(json.dumps({"load_average": os.getloadavg(), "frames": len(nhwc), "results": results}, indent=2))
    print("\n| configuration | layout | batch | fps (median) | min-max | agreement vs Keras |\n|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["fps_median"]):
        print(f"| {name} | {r['layout']} | {r['batch']} | {r['fps_median']:.2f} | {min(r['fps']):.2f}-{max(r['fps']):.2f} "
              f"| {100 * r['agreement']:.2f}% |")
    return 0


def keras_reference(path: Path, nhwc: np.ndarray) -> np.ndarray:
    cache = path.with_suffix(f".ref{len(nhwc)}.npy")
    if cache.exists():
        return np.load(cache)
    from edgeseg.export import load_model

    model, _ = load_model(path)
    ids = np.concatenate([np.asarray(model(nhwc[i:i + 1], training=False)).argmax(-1) for i in range(len(nhwc))])
    np.save(cache, ids)
    return ids


def build_configs(d: Path) -> dict[str, tuple[Callable[[], Callable], str, int]]:
    """name -> (opener, input layout, batch size). Configurations that share an engine share its opener
    (one session serves batch 1 and batch 4), because every open engine holds its own copy of the
    weights: 30 engines of this 166 MB model did not fit beside the other work on this machine."""
    files = {"fp32": d / "fcn8.onnx", "fp32-nchw": d / "fcn8.nchw.onnx",
             "int8": d / "fcn8.int8.onnx", "int8-nchw": d / "fcn8.nchw.int8.onnx"}
    configs = {}
    for model in ("fp32", "int8"):
        for threads in (None, 1, 2):
            label = f"t{threads}" if threads else "default"
            configs[f"ort {model} {label}"] = (_ort(files[model], threads, "all"), "NHWC", 1)
        configs[f"ort {model}-nchw t2"] = (_ort(files[f"{model}-nchw"], 2, "all"), "NCHW", 1)
        configs[f"ort {model} t2 batch4"] = (configs[f"ort {model} t2"][0], "NHWC", 4)
    configs["ort fp32 t2 opt-basic"] = (_ort(files["fp32"], 2, "basic"), "NHWC", 1)
    for model in ("fp32", "int8"):
        configs[f"openvino {model} default"] = (_openvino(files[model], {}), "NHWC", 1)
        configs[f"openvino {model} f32"] = (_openvino(files[model], {"INFERENCE_PRECISION_HINT": "f32"}), "NHWC", 1)
        configs[f"openvino {model}-nchw default"] = (_openvino(files[f"{model}-nchw"], {}), "NCHW", 1)
        configs[f"openvino {model} t1"] = (_openvino(files[model], {"INFERENCE_NUM_THREADS": 1}), "NHWC", 1)
        configs[f"openvino {model} default batch4"] = (configs[f"openvino {model} default"][0], "NHWC", 4)
    return configs


def _ort(path: Path, threads: int | None, level: str):
    def open_():
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[level]
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"image": x})[0]

    return open_


def _openvino(path: Path, config: dict):
    def open_():
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})[0]

    return open_


if __name__ == "__main__":
    sys.exit(main())
