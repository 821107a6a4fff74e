"""One benchmark run in its own process: ``python -m edgeseg._bench_worker JOB.json RESULT.json``.

Each runner runs in a fresh interpreter so that its peak memory is its own and no library's
thread pool or cache carries over to the next runner. Every runner except ``edgeseg*`` shares
one loop — decode, preprocess (the contract's), infer, argmax + restore to the frame's size,
write the class-id mask as a PNG — and differs only in the engine that runs the model. The
``edgeseg*`` runners run the runtime as users run it (``edgeseg.runtime.segment``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("decode", "preprocess", "infer", "postprocess", "write")

# Runners that need TensorFlow; the orchestrator skips them where it is absent.
KERAS_RUNNERS = ("keras-predict", "keras-call")
EDGESEG_RUNNERS = ("edgeseg", "edgeseg-int8", "edgeseg-fast")
ENGINE_RUNNERS = ("ort-plain", "opencv-dnn", "openvino", "openvino-f32", "openvino-int8")


class Skip(Exception):
    """The runner cannot run here (a missing package or API); the message says why."""


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    started = time.time()
    try:
        result = run_job(job)
    except Skip as reason:
        result = {"skipped": str(reason)}
    result["peak_mb"] = peak_rss_mb()
    result["started"] = started  # wall clock, so a report shows the order the runs really ran in
    Path(argv[1]).write_text(json.dumps(result))
    return 0


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MB.

    ``/proc/self/status`` VmHWM, not ``getrusage``: Linux carries ``ru_maxrss`` over from the parent
    across fork + exec, so every worker would report at least the orchestrator's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # other systems: the best there is


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job: ``{"runner", "model", "keras", "int8", "source", "frames", "threads", "out"}``."""
    runner = job["runner"]
    if runner == "ceiling":
        from edgeseg._bench_ceiling import measure_ceiling

        return measure_ceiling(threads=job.get("threads_list") or (1, 2))
    if runner in EDGESEG_RUNNERS:
        return _run_edgeseg(job)
    contract = read_contract(job["model"])
    infer, precision = _open_engine(runner, job, contract)
    return {**run_loop(job, contract, infer), "precision": precision}


def read_contract(path: str):
    """The contract stored in an ONNX file (the benchmark needs it for identical preprocessing)."""
    import onnx

    from edgeseg.runtime import EdgesegError, contract_from_metadata
    from edgeseg.runtime._contract import metadata_of

    proto = onnx.load(path, load_external_data=False)
    contract = contract_from_metadata(metadata_of(proto), origin=path)
    if contract is None:
        raise EdgesegError(
            f"Model `{path}` has no edgeseg contract in its metadata: the benchmark needs it to preprocess "
            "every runner's frames identically. Export it with `edgeseg export`."
        )
    return contract


def run_loop(job: dict[str, Any], contract, infer: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """The shared read -> preprocess -> run -> argmax -> write loop, timed per stage."""
    from edgeseg.runtime import open_source, preprocess, restore

    masks = Path(job["out"]) / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    first = next((f for f in open_source(job["source"], max_frames=job["frames"]) if f.ok), None)
    if first is None:
        raise Skip(f"source `{job['source']}` yields no readable frame")
    infer(preprocess(first.image, contract.input)[0])  # warm-up: first-run allocations are not throughput

    times = {stage: [] for stage in STAGES}
    frames, failed = 0, 0
    clock = time.perf_counter
    source = iter(open_source(job["source"], max_frames=job["frames"]))
    start = clock()
    while True:
        t0 = clock()
        frame = next(source, None)
        t1 = clock()
        if frame is None:
            break
        if not frame.ok:
            failed += 1
            continue
        batch, geometry = preprocess(frame.image, contract.input)
        t2 = clock()
        output = infer(batch)
        t3 = clock()
        mask = restore(class_ids(output, contract.num_classes), geometry, nearest=True)
        t4 = clock()
        write_mask(masks / f"{mask_name(frame.name)}.png", mask, contract.output.palette)
        t5 = clock()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[stage].append(seconds * 1000.0)
        frames += 1
    total = clock() - start
    if frames == 0:
        raise Skip(f"source `{job['source']}` yields no readable frame")
    stage_ms = {stage: float(np.median(v)) for stage, v in times.items()}
    return {
        "frames": frames,
        "frames_failed": failed,
        "fps": frames / total,
        "infer_fps": 1000.0 / float(np.mean(times["infer"])),
        "stage_ms": stage_ms,
        "masks": str(masks),
    }


def class_ids(output: np.ndarray, classes: int) -> np.ndarray:
    """(1, H, W, C) or (1, C, H, W) scores -> (H, W) uint8 class ids (a 1-channel output thresholds at 0.5)."""
    scores = np.asarray(output)[0]
    axis = 0 if scores.shape[-1] != classes and scores.shape[0] == classes else -1
    if scores.shape[axis] == 1:
        return (np.take(scores, 0, axis=axis) > 0.5).astype(np.uint8)
    return np.argmax(scores, axis=axis).astype(np.uint8)


def mask_name(frame_name: str) -> str:
    return frame_name.replace("/", "__")


def _open_engine(runner: str, job: dict[str, Any], contract) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """``(infer, precision)``: the engine as a function of a batch, and the precision it computes in."""
    threads = job.get("threads")
    if runner in KERAS_RUNNERS:
        return _open_keras(runner, job["keras"], threads), "fp32"
    if runner == "ort-plain":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})[0], "fp32"
    if runner == "opencv-dnn":
        import cv2

        if threads:
            cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromONNX(job["model"])

        def forward(batch: np.ndarray) -> np.ndarray:
            net.setInput(batch)
            return net.forward()

        return forward, "fp32"
    if runner in ("openvino", "openvino-f32", "openvino-int8"):
        model_path = job["int8"] if runner == "openvino-int8" else job["model"]
        if not model_path:
            raise Skip("no INT8 model given (pass --int8 M.int8.onnx)")
        try:
            import openvino as ov
        except ImportError:
            raise Skip("openvino is not installed (pip install 'edgeseg[bench]')") from None
        config: dict[str, Any] = {}
        if runner == "openvino-f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(model_path, "CPU", config)
        request = compiled.create_infer_request()
        from edgeseg._bench_ceiling import precision_name

        precision = "int8" if runner == "openvino-int8" else precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        return lambda batch: request.infer({0: batch})[0], precision
    raise Skip(f"unknown runner `{runner}`")


def _open_keras(runner: str, keras_path: str | None, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    if not keras_path:
        raise Skip("no Keras model given (pass --keras M.keras)")
    if threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    try:
        import keras  # noqa: F401
    except ImportError:
        raise Skip("TensorFlow/Keras is not installed (pip install 'edgeseg[export]')") from None
    from edgeseg.export._keras_file import load_model

    model, _ = load_model(keras_path)
    if runner == "keras-predict":
        return lambda batch: model.predict(batch, verbose=0)
    return lambda batch: np.asarray(model(batch, training=False))


def _run_edgeseg(job: dict[str, Any]) -> dict[str, Any]:
    """The runtime as users run it: ``segment(source, model=..., out=...)``, timed from its summary.

    Only the ``masks`` output is asked for, so it does the same output work as the other runners.
    """
    from edgeseg.runtime import segment

    runner = job["runner"]
    model_path = job["int8"] if runner == "edgeseg-int8" else job["model"]
    if runner == "edgeseg-int8" and not model_path:
        raise Skip("no INT8 model given (pass --int8 M.int8.onnx, or a .keras --model to calibrate one)")
    if runner == "edgeseg-fast":
        # The measured choice (benchmarks/FINDINGS.md) is OpenVINO on the INT8 QDQ file; the runtime
        # has no such engine yet, and this runner must not run a private fast path.
        raise Skip("the runtime offers no configuration faster than `edgeseg`/`edgeseg-int8` yet "
                   "(benchmarks/FINDINGS.md: OpenVINO on the INT8 model; see the openvino-int8 runner)")
    out = Path(job["out"])
    summary = segment(job["source"], model=model_path, out=out, threads=job.get("threads"),
                      max_frames=job["frames"], outputs=("masks",))
    stage_ms = {stage: float(summary.get("stage_ms", {}).get(stage, float("nan"))) for stage in STAGES}
    infer_fps = summary.get("infer_fps") or (1000.0 / stage_ms["infer"] if stage_ms["infer"] > 0 else None)
    return {
        "frames": int(summary["frames"]),
        "frames_failed": int(summary.get("frames_failed", 0)),
        "fps": float(summary["fps"]),
        "infer_fps": float(infer_fps) if infer_fps else None,
        "stage_ms": stage_ms,
        "masks": str(out / "masks"),
    }


def write_mask(path: Path, mask: np.ndarray, palette) -> None:
    """The runtime's own mask writer (palette PNG), so every runner writes the same bytes as ``segment``."""
    from edgeseg.runtime import write_mask_png

    write_mask_png(path, mask, palette)


def read_mask(path: Path) -> np.ndarray:
    """Class ids from a mask PNG written by :func:`write_mask` or by ``edgeseg segment``."""
    from edgeseg.runtime import read_mask_png

    return read_mask_png(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
