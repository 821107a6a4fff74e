"""Measure candidate engine configurations of one model on this machine and write a tuning record.

Each candidate (engine x precision x threads x batch x latency/throughput, on the FP32 file and
on an INT8 file when given) runs the same frames through :class:`edgeseg.runtime.Model` as
``segment`` does (preprocess, infer, post-process), first the FP32 onnxruntime reference; its
masks are compared with the reference's (agreement: the share of equal class ids; autoencoders:
reconstruction pixels within one 8-bit level). The time budget is shared out among the
candidates still to run; each gets at least one pass over the frames, so agreement is always known.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime import (
    BARS,
    ENGINES,
    RECORD_VERSION,
    Contract,
    EdgesegError,
    EngineConfig,
    Model,
    ModelFile,
    cpu_flags,
    heuristic_config,
    machine_fingerprint,
    open_source,
    pick,
    record_path,
    require_gpu_fp16,
    write_json_atomic,
)
from edgeseg.runtime.progress import Progress

log = logging.getLogger("edgeseg.tune")


@dataclass(frozen=True)
class TuneOptions:
    """What ``tune`` measures. ``seconds``: the whole budget (each candidate still gets one pass).

    ``source``: frames to measure on (None: generated scenes at the model's size). ``threads``:
    thread counts to try (None: 1 and every core). ``cache``: the record folder (None: XDG cache).
    """

    int8: Path | None = None
    source: str | None = None
    seconds: float = 60.0
    cache: Path | None = None
    frames: int = 8
    batches: tuple[int, ...] = (1, 4)
    threads: tuple[int, ...] | None = None
    engines: tuple[str, ...] = tuple(ENGINES)
    progress: bool = True
    precision: str = "auto"  # "fp16": the candidates are onnxruntime fp16 on the GPU (refused without CUDA)

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp16"):
            raise EdgesegError(f"--precision must be auto or fp16, got {self.precision!r}.")
        if self.precision == "fp16":
            require_gpu_fp16("tune --precision fp16")
        if self.seconds <= 0 or self.frames < 1:
            raise EdgesegError(f"--seconds must be > 0 and frames >= 1, got {self.seconds} and {self.frames}.")
        unknown = [engine for engine in self.engines if engine not in ENGINES]
        if unknown:
            raise EdgesegError(f"Unknown engine(s) {', '.join(unknown)}: expected some of {', '.join(ENGINES)}.")
        if self.int8 is not None and not Path(self.int8).is_file():
            raise EdgesegError(f"--int8 `{self.int8}`: no such file. Pass a model made by `edgeseg calibrate`.")


REFERENCE = EngineConfig()  # onnxruntime FP32, default threads, batch 1: what every mask is compared with


def candidate_configs(options: TuneOptions, *, cores: int, bf16: bool, openvino: bool,
                      fused: bool = False, first: str = "onnxruntime") -> list[EngineConfig]:
    """The configurations to try: the reference first, then ``first``'s (the engine the heuristic would pick
    here, the likeliest winner), then the other engines' (the budget may end before the last ones).

    Each engine of :data:`edgeseg.runtime.ENGINES` contributes its precisions (bf16 only where the CPU has it)
    x batches x threads; an engine with streams of its own (OpenVINO) runs batches in throughput mode and
    tries other thread counts at batch 1. ``fused``: also the file with the class-id rule in its graph, for
    engines where it pays (segmentation models; benchmarks/fast_mode.py measured it 1.0-1.45x on OpenVINO).

    Example::

        candidate_configs(TuneOptions(), cores=2, bf16=True, openvino=True, first="openvino")[:2]
        # [the FP32 onnxruntime reference, openvino bf16 batch 1]
    """
    threads: tuple[int | None, ...] = (None, *sorted({t for t in options.threads or (1, cores) if t != cores}))
    files = ("fp32", "int8") if options.int8 else ("fp32",)
    found: dict[str, list[EngineConfig]] = {}
    for name, engine in ENGINES.items():
        if name not in options.engines or (name == "openvino" and not openvino):
            continue
        configs = found.setdefault(name, [])
        for file in files:
            for precision in engine.measured_precisions(bf16=bf16) if file == "fp32" else ("auto",):
                if engine.throughput:
                    for batch in options.batches:
                        configs.append(EngineConfig(name, precision, None, batch, batch > 1, file))
                        if fused and engine.fused and batch > 1:
                            configs.append(EngineConfig(name, precision, None, batch, True, file, fused=True))
                    configs += [EngineConfig(name, precision, t, 1, False, file) for t in threads if t is not None]
                else:
                    configs += [EngineConfig(name, precision, t, b, False, file) for t in threads for b in options.batches]
    order = sorted(found, key=lambda name: name != first)
    unique: list[EngineConfig] = [REFERENCE]
    for config in (config for name in order for config in found[name]):
        if config not in unique:
            unique.append(config)
    if options.precision != "auto":  # a GPU precision (fp16) on the FP32 file, next to the GPU's fp32 configurations
        gpu = [EngineConfig(name, options.precision, None, b, False, "fp32") for name, engine in ENGINES.items()
               if name in options.engines and options.precision in engine.gpu_precisions for b in options.batches]
        unique = [REFERENCE, *gpu, *(c for c in unique[1:] if ENGINES[c.engine].gpu_precisions)]
    return unique


def tune(model: str | os.PathLike, options: TuneOptions = TuneOptions()) -> dict[str, Any]:
    """Measure the candidates on this machine, write the record, return it (``record["path"]``).

    Example::

        record = tune("fcn8.onnx", TuneOptions(seconds=20))
        record["choice"]["exact"]   # e.g. {"engine": "openvino", "precision": "bf16", ...}
    """
    model = Path(model)
    reference = Model(model, engine="onnxruntime")
    images = _frames(options, reference.contract)

    fingerprint = machine_fingerprint()
    segmentation = reference.kind == "segmentation"
    likely = heuristic_config(kind=reference.kind)[0].engine  # what engine="auto" runs without a record
    configs = candidate_configs(options, cores=fingerprint["cores"], bf16=bool(cpu_flags() & {"amx_bf16", "avx512_bf16"}),
                                openvino=ENGINES["openvino"].available(), fused=segmentation, first=likely)
    path = record_path(reference.file.sha256, fingerprint, options.cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = _files(model, options, path, fused=segmentation and any(c.fused for c in configs))
    results = _measure_all(files, options, configs, images, masks=segmentation)
    fused = {file: {"path": str(where.resolve()), "sha256": ModelFile.read(where).sha256}
             for (file, is_fused), where in files.items() if is_fused}
    record = _record(reference.file, options, fingerprint, results, len(images), fused=fused)
    write_json_atomic(path, record)
    return {**record, "path": str(path)}


def _files(model: Path, options: TuneOptions, record: Path, *, fused: bool) -> dict[tuple[str, bool], Path]:
    """``(file, fused) -> path``: the model, its INT8 file, and their fused copies beside the record."""
    from edgeseg.runtime import fuse_class_ids

    files = {("fp32", False): model}
    if options.int8:
        files[("int8", False)] = Path(options.int8)
    if fused:
        for file, path in list(files.items()):
            files[(file[0], True)] = fuse_class_ids(path, record.with_name(f"{record.stem}.{file[0]}.fast.onnx"))
    return files


def _measure_all(files: dict[tuple[str, bool], Path], options: TuneOptions, configs: Sequence[EngineConfig],
                 images: list[np.ndarray], *, masks: bool) -> list[dict[str, Any]]:
    deadline = time.perf_counter() + options.seconds
    # Each engine logs what it compiled; here that is one line per candidate across the bar: keep warnings only.
    runtime_log = logging.getLogger("edgeseg.runtime")
    level = runtime_log.level
    runtime_log.setLevel(max(level, logging.WARNING))
    try:
        with Progress(len(configs), desc="edgeseg tune", unit="config", enabled=options.progress) as progress:
            return _measure_each(files, configs, images, masks=masks, deadline=deadline, progress=progress)
    finally:
        runtime_log.setLevel(level)


def _measure_each(files: dict[tuple[str, bool], Path], configs: Sequence[EngineConfig], images: list[np.ndarray], *,
                  masks: bool, deadline: float, progress: Progress) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    reference_outputs = None
    for index, config in enumerate(configs):
        left = deadline - time.perf_counter()
        if index > 0 and left <= 0:
            results.append({"config": asdict(config), "fps": None, "agreement": None,
                            "skipped": "the time budget was spent (raise --seconds)"})
        else:
            slice_s = max(left, 0.0) / (len(configs) - index)
            result, outputs = _measure(files[(config.file, config.fused)], config, images, slice_s)
            if reference_outputs is None:
                reference_outputs = outputs
            if outputs is not None:
                result["agreement"] = _agreement(outputs, reference_outputs, masks=masks)
            results.append(result)
        progress.update(note=config.describe())
    return results


def _measure(path: Path, config: EngineConfig, images: list[np.ndarray],
             slice_s: float) -> tuple[dict[str, Any], list[np.ndarray] | None]:
    result: dict[str, Any] = {"config": asdict(config), "fps": None, "agreement": None}
    try:
        runner = Model(path, engine=config.engine, precision=config.precision, threads=config.threads,
                       throughput=config.throughput)
        runner.warmup(config.batch)
        outputs, done, started = None, 0, time.perf_counter()
        while outputs is None or time.perf_counter() - started < slice_s:
            pass_outputs = _one_pass(runner, images, config.batch)
            outputs = outputs or pass_outputs
            done += len(images)
        result.update(fps=done / (time.perf_counter() - started), frames=done, precision=runner.precision)
        return result, outputs
    except EdgesegError as error:  # e.g. bf16 asked of a CPU without it: this candidate cannot run here
        result["skipped"] = str(error)
        return result, None


def _one_pass(model: Model, images: list[np.ndarray], batch: int) -> list[np.ndarray]:
    outputs = []
    for start in range(0, len(images), batch):
        for result in model.predict_batch(images[start:start + batch]):
            outputs.append(result.mask if hasattr(result, "mask") else result.reconstruction)
    return outputs


def _agreement(outputs: list[np.ndarray], reference: list[np.ndarray], *, masks: bool) -> float:
    """Share of equal class ids (masks), or of reconstruction pixels within one 8-bit level."""
    same = total = 0
    for a, b in zip(outputs, reference):
        equal = a == b if masks else np.abs(a.astype(np.int16) - b.astype(np.int16)) <= 1
        same += int(np.count_nonzero(equal))
        total += equal.size
    return same / total if total else 0.0


def _record(model: ModelFile, options: TuneOptions, fingerprint: dict[str, Any], results: list[dict[str, Any]],
            frames: int, *, fused: dict[str, dict[str, str]]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": str(model.path.resolve()),
        "model_sha256": model.sha256,
        "model_bytes": model.size,  # lets Model(engine="auto") skip hashing files no record here can be for
        "int8": ({"path": str(Path(options.int8).resolve()), "sha256": ModelFile.read(options.int8).sha256}
                 if options.int8 else None),
        "fingerprint": fingerprint,
        "seconds": options.seconds,
        "frames": frames,
        "source": options.source,
        "reference": REFERENCE.describe(),
        "bars": BARS,
        "candidates": sorted(results, key=lambda r: -(r["fps"] or 0.0)),
        "measured": sum(1 for r in results if r["fps"] is not None),  # of len(candidates); the rest: skipped, why
        "fused": fused,  # file -> the fused copy tune made and measured beside this record
    }
    record["choice"] = {}
    for bar in BARS:
        picked = pick(record, bar)
        record["choice"][bar] = picked[0]["config"] if picked else None
    return record


def _frames(options: TuneOptions, contract: Contract) -> list[np.ndarray]:
    if options.source is None:
        return _generated_frames(options.frames, contract)
    images = [frame.image for frame in open_source(options.source, max_frames=options.frames) if frame.ok]
    if not images:
        raise EdgesegError(f"--source `{options.source}` gave no readable frame; pass a video, a folder of images, "
                           "or leave --source out to measure on generated scenes.")
    return images


def _generated_frames(count: int, contract: Contract) -> list[np.ndarray]:
    # Scenes at the model's own input size: the engines' speed depends on the tensor, not the content.
    import cv2

    from edgeseg.sampledata import make_scene_set

    with tempfile.TemporaryDirectory(prefix="edgeseg-tune-") as folder:
        paths = make_scene_set(Path(folder) / "images", Path(folder) / "masks", count=count,
                               size=max(contract.input.height, contract.input.width),
                               classes=max(2, contract.num_classes), seed=0)
        return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]

