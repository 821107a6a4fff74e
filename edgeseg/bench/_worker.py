"""One benchmark run in its own process: ``python -m edgeseg.bench._worker JOB.json RESULT.json``.

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

from edgeseg.runtime.extras import installed, missing_message

STAGES = ("decode", "preprocess", "infer", "postprocess", "write")

# Runners that need TensorFlow; the orchestrator skips them where it is absent.
KERAS_RUNNERS = ("keras-predict", "keras-predict-1", "keras-call")
EDGESEG_RUNNERS = ("edgeseg", "edgeseg-int8", "edgeseg-fast", "edgeseg-fp16")


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
        from edgeseg.bench._ceiling import measure_ceiling

        return measure_ceiling(threads=job.get("threads_list") or (1, 2))
    if runner in EDGESEG_RUNNERS:
        return _run_edgeseg(job)
    contract = read_contract(job["model"])
    if contract.kind == "autoencoder":
        return _run_autoencoder_peer(runner, job, contract)
    if runner == "keras-predict-1":
        raise Skip("segmentation's keras-predict already runs one frame at a time")
    infer, precision = _open_engine(runner, job)
    return {**run_loop(job, contract, infer), "precision": precision}


# Autoencoders (a folder of digits): peers run batches of Keras' default predict batch, 32 images,
# except keras-predict-1 (one image per call), which is capped because it runs ~12 images/s.
AUTOENCODER_BATCH = 32
ONE_AT_A_TIME_CAP = 100
KERAS_PREDICT_CHUNK = 1024


def _run_autoencoder_peer(runner: str, job: dict[str, Any], contract) -> dict[str, Any]:
    if runner in ("edgeseg-int8", "openvino-int8") and not job.get("int8"):
        raise Skip("no INT8 model given (pass --int8 M.int8.onnx)")
    # keras-predict gets 1024 images per predict() call, which batches them by its default 32: per-call
    # overhead (~50 ms) would otherwise dominate, and users hand predict() whole arrays.
    batch = {"keras-predict-1": 1, "keras-predict": KERAS_PREDICT_CHUNK}.get(runner, AUTOENCODER_BATCH)
    frames = min(job["frames"], ONE_AT_A_TIME_CAP) if runner == "keras-predict-1" else job["frames"]
    infer, precision = _open_engine("keras-predict" if runner == "keras-predict-1" else runner, job)
    return {**run_loop_batched(job, contract, infer, batch=batch, frames=frames), "precision": precision,
            "batch": batch}


def run_loop_batched(job: dict[str, Any], contract, infer: Callable[[np.ndarray], np.ndarray], *, batch: int,
                     frames: int) -> dict[str, Any]:
    """An autoencoder's read -> preprocess -> run -> reconstruct -> write loop over batches, timed per stage.

    The reconstruction is the runtime's (the contract's normalization inverted, back to 8-bit pixels at
    the image's own size) and is written as ``reconstruction/<name>.png``, as ``segment`` writes it.
    """
    import cv2

    from edgeseg.runtime import open_source, preprocess_batch

    folder = Path(job["out"]) / "reconstruction"
    folder.mkdir(parents=True, exist_ok=True)
    first = next((f for f in open_source(job["source"], max_frames=frames) if f.ok), None)
    if first is None:
        raise Skip(f"source `{job['source']}` yields no readable frame")
    infer(preprocess_batch([first.image] * batch, contract.input)[0])  # warm-up at the batch size used

    times = {stage: 0.0 for stage in STAGES}
    done, failed = 0, 0
    clock = time.perf_counter
    source = iter(open_source(job["source"], max_frames=frames))
    start = clock()
    ended = False
    while not ended:
        t0 = clock()
        chunk, unreadable, ended = _read_chunk(source, batch)
        failed += unreadable
        if not chunk:
            break
        t1 = clock()
        tensors, geometries = preprocess_batch([f.image for f in chunk], contract.input)
        t2 = clock()
        outputs = np.asarray(infer(tensors)).reshape(tensors.shape)
        t3 = clock()
        pictures = [reconstruction_pixels(outputs[i], geometries[i], contract.input) for i in range(len(chunk))]
        t4 = clock()
        for frame, picture in zip(chunk, pictures):
            target = folder / f"{frame.name}.png"
            target.parent.mkdir(parents=True, exist_ok=True) if "/" in frame.name else None
            cv2.imwrite(str(target), picture)
        t5 = clock()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[stage] += seconds * 1000.0
        done += len(chunk)
    total = clock() - start
    if done == 0:
        raise Skip(f"source `{job['source']}` yields no readable frame")
    return {
        "frames": done,
        "frames_failed": failed,
        "fps": done / total,
        "infer_fps": done / (times["infer"] / 1000.0) if times["infer"] > 0 else None,
        "stage_ms": {stage: value / done for stage, value in times.items()},  # per image
        "masks": str(folder),
    }


def _read_chunk(source: Any, batch: int) -> tuple[list[Any], int, bool]:
    """Up to ``batch`` readable frames from ``source``: (frames, unreadable ones passed over, source ended)."""
    chunk, unreadable = [], 0
    while len(chunk) < batch:
        frame = next(source, None)
        if frame is None:
            return chunk, unreadable, True
        if frame.ok:
            chunk.append(frame)
        else:
            unreadable += 1
    return chunk, unreadable, False


def reconstruction_pixels(output: np.ndarray, geometry, spec) -> np.ndarray:
    """One (H, W, C) model-unit reconstruction -> 8-bit BGR/gray pixels at the image's size (the runtime's)."""
    from edgeseg.runtime import denormalize, restore

    return restore(denormalize(output, spec), geometry, nearest=False)


def read_contract(path: str):
    """The contract stored in an ONNX file (the benchmark needs it for identical preprocessing)."""
    from edgeseg.runtime import Contract, EdgesegError

    contract = Contract.from_onnx(path)
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
        mask = restore(class_ids(output, contract), geometry, nearest=True)
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


def class_ids(output: np.ndarray, contract) -> np.ndarray:
    """(1, H, W, C) or (1, C, H, W) raw output -> (H, W) class ids by the runtime's one rule
    (:mod:`edgeseg.runtime.postprocess`: argmax, or a one-channel output's threshold by its activation)."""
    from edgeseg.runtime import postprocess

    return postprocess.class_ids(postprocess.channels_last(np.asarray(output)[0], contract), contract)


def mask_name(frame_name: str) -> str:
    return frame_name.replace("/", "__")


def _open_engine(runner: str, job: dict[str, Any]) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
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
            raise Skip(missing_message("openvino", purpose=runner, among=("bench",))) from None
        config: dict[str, Any] = {}
        if runner == "openvino-f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(model_path, "CPU", config)
        request = compiled.create_infer_request()
        from edgeseg.bench._ceiling import precision_name

        precision = "int8" if runner == "openvino-int8" else precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        return lambda batch: request.infer({0: batch})[0], precision
    raise Skip(f"unknown runner `{runner}`")


def _open_keras(runner: str, keras_path: str | None, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    if not keras_path:
        raise Skip("no Keras model given (pass --keras M.keras)")
    if threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    if not installed("keras"):  # looked up, not imported: load_model below imports it the one way export does
        raise Skip(missing_message("keras", purpose=runner, among=("export",)))
    from edgeseg.export import load_model

    model, _ = load_model(keras_path)
    if runner == "keras-predict":
        return lambda batch: model.predict(batch, verbose=0)  # Keras' default batch_size: 32
    return lambda batch: np.asarray(model(batch, training=False))


# `edgeseg-fast`: the fastest configuration the runtime offers here whose masks agree with FP32 Keras on
# >= 99% of pixels. Measured with benchmarks/fast_candidates.py and `edgeseg bench` (FCN-8 classic 224):
# OpenVINO at its default precision (bf16 on this AMX CPU), compiled for throughput, is the fastest on
# the FP32 file (40.8-47 fps end to end, 99.97-99.99% agreement); on the INT8 file it is faster still
# (52-68 fps), at 99.61% agreement for the FCN-8 trained on the membrane images but 98.92% for a barely
# trained one. So the INT8 file is used when one is given, and the report flags an agreement under 99%
# (`edgeseg_fast.below_bar`): then run without --int8 to get the bf16 configuration, or calibrate with
# --max-drop (the bench does, when it calibrates a .keras itself).
# The fast levers, end to end through segment (benchmarks/fast_mode.py, sample FCN-8, INT8 and FP32 files,
# paired interleaved rounds on the loaded 2-vCPU machine): the class-id rule fused into the graph
# (fuse_class_ids: uint8 ids out, no host argmax, the same masks) plus a call in flight per OpenVINO stream
# (segment's default inflight) ran 1.16-1.45x batch 4 without them; batch 1 with calls in flight lost
# (0.87-1.06x), so the batch stays 4.
FAST = {"file": "int8", "engine": "openvino", "precision": "auto", "batch": 4, "throughput": True, "fused": True}
# Autoencoders (the 4.4 MFLOP CAE): onnxruntime FP32 at batch 32 inferred 6,200-8,100 images/s inside
# segment, OpenVINO 3,300-5,100 (latency hint) and 1,200-3,200 (throughput), batches 32/64/256 alike
# or worse (2,000 digits, 2 rounds, load 1-4.5): for a model this small the per-call cost rules, so
# the fastest configuration is the plain one, and edgeseg-fast equals edgeseg here: onnxruntime at
# segment's own batch for autoencoders (batch None: segment's choice, 64).
FAST_AUTOENCODER = {"file": "fp32", "engine": "onnxruntime", "precision": "auto", "batch": None, "throughput": False,
                    "fused": False}


def _run_edgeseg(job: dict[str, Any]) -> dict[str, Any]:
    """The runtime as users run it: ``segment(source, model=..., out=...)``, timed from its summary.

    Only the ``masks`` output is asked for (``reconstruction`` for autoencoders), so it does the same
    output work as the other runners.
    """
    from edgeseg.runtime import segment

    runner = job["runner"]
    autoencoder = job.get("kind") == "autoencoder"
    model, batch, config = _edgeseg_model(job, autoencoder=autoencoder)
    out = Path(job["out"])
    output = "reconstruction" if autoencoder else "masks"
    # Outside the clock, as run_loop's warm-up (segment warms up too; this covers short runs).
    model.warmup(batch or model.config.batch)
    summary = segment(job["source"], model=model, out=out, batch=batch, max_frames=job["frames"], outputs=(output,),
                      overwrite=True)  # scratch outputs: a reused --work-dir is replaced
    stage_ms = {stage: float(summary.get("stage_ms", {}).get(stage, float("nan"))) for stage in STAGES}
    ran = int(summary.get("batch", batch or 1))
    infer_fps = summary.get("infer_fps") or (1000.0 / stage_ms["infer"] if stage_ms["infer"] > 0 else None)
    return {
        "frames": int(summary["frames"]),
        "frames_failed": int(summary.get("frames_failed", 0)),
        "fps": float(summary["fps"]),
        "infer_fps": float(infer_fps) if infer_fps else None,
        "stage_ms": stage_ms,
        "masks": str(out / output),
        "engine": summary.get("engine", "onnxruntime"),
        "precision": summary.get("precision", "fp32"),
        "batch": ran,
        "inflight": int(summary.get("inflight", 1)),
        "config": {**config, "batch": ran} if config else {"file": "int8" if runner == "edgeseg-int8" else model.config.file, "engine": model.engine,
                             "precision": model.precision, "batch": ran, "threads": job.get("threads"),
                             "choice": model.choice_reason},
    }


def _edgeseg_model(job: dict[str, Any], *, autoencoder: bool) -> tuple[Any, int | None, dict[str, Any]]:
    """The runner's model as a user opens it, the batch to run (None: segment's own choice) and, for
    edgeseg-fast, the configuration it was opened with; a runner this machine cannot run is a Skip."""
    from edgeseg.runtime import Model

    runner = job["runner"]
    model_path = job["int8"] if runner == "edgeseg-int8" else job["model"]
    if runner == "edgeseg-int8" and not model_path:
        raise Skip("no INT8 model given (pass --int8 M.int8.onnx, or a .keras --model to calibrate one)")
    # None: segment's own choice, as a user gets it (the `edgeseg tune` record's batch under engine auto, else 1;
    # 64 for autoencoders).
    batch: int | None = None
    config: dict[str, Any] = {}
    if runner == "edgeseg-fast":
        config = dict(FAST_AUTOENCODER if autoencoder else FAST)
        if config["file"] == "int8" and job.get("int8"):
            model_path = job["int8"]
        else:
            config["file"] = "fp32"
        try:
            if config["fused"]:
                from edgeseg.runtime import fuse_class_ids

                model_path = str(fuse_class_ids(model_path, Path(job["out"]).parent / f"{Path(job['out']).name}.fast.onnx"))
            model = Model(model_path, engine=config["engine"], precision=config["precision"],
                          throughput=config["throughput"], threads=job.get("threads"))
        except Exception as error:  # noqa: BLE001 - e.g. openvino missing: the runner is skipped, saying why
            raise Skip(str(error)) from None
        batch = config["batch"]
    elif runner == "edgeseg-fp16":  # onnxruntime's CUDA provider in fp16 (the contract's I/O stays float32)
        try:
            model = Model(model_path, precision="fp16", threads=job.get("threads"))
        except Exception as error:  # noqa: BLE001 - no GPU here: the runner is skipped, saying why
            raise Skip(str(error)) from None
    else:
        model = Model(model_path, threads=job.get("threads"))
    return model, batch, config


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
