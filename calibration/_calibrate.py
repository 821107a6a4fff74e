"""``calibrate``: FP32 edgeseg model + real frames -> INT8 model and a report of what it cost and bought."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.calibration import _measure
from edgeseg.calibration._data import CalibrationSet, FrameStats, load_calibration_set
from edgeseg.calibration._quantize import (
    QuantizeOptions,
    RangeCollector,
    check_quantizable,
    make_session,
    preprocess_for_quantization,
    quantize,
    write_trt_table,
)
from edgeseg.runtime import default_threads
from edgeseg.runtime.contract import Contract, write_contract
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import atomic_path, write_json_atomic
from edgeseg.runtime.progress import Progress

log = logging.getLogger("edgeseg.calibration")

# Fewer frames than this and the ranges rest on too few scenes. Segmentation frames give H x W
# values per channel, so the pixel count is rarely short; what runs short is scene variety and,
# for the deepest (7x7) tensors of FCN-8, tail samples: at 32 frames a 99.999th percentile of a
# 7x7x4096 tensor still rests on ~64 values above it, at 8 frames on ~16. (TensorRT and the
# onnxruntime examples use 100-500 images for ImageNet classifiers, where a frame is one sample.)
MIN_SAMPLES = 32
MAX_CONTROL_STEPS = 16
# Accuracy control holds out this share of the frames: the ranges come from the rest, and the drop it
# controls and reports is measured on frames the ranges never saw (issue 24: on the calibration frames
# themselves the figures flatter the file).
HOLDOUT = 0.25
# Below this FP32/INT8 agreement (without masks) the report warns: edgeseg's INT8 files are meant to keep it.
MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class Budget:
    """Accuracy control: return layers to float while the drop exceeds ``max_drop`` points."""

    max_drop: float
    max_steps: int = MAX_CONTROL_STEPS

    def __post_init__(self) -> None:
        if not (isinstance(self.max_drop, (int, float)) and math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise EdgesegError(f"--max-drop must be a number of points >= 0, got {self.max_drop!r}.")
        if self.max_steps < 1:
            raise EdgesegError(f"accuracy control needs max_steps >= 1, got {self.max_steps}.")


@dataclass(frozen=True)
class CalibrateOptions:
    """How :func:`calibrate` works, beside where it reads and writes the model.

    ``quantize``: how to quantize (:class:`QuantizeOptions`). ``samples``: calibration frames, at most;
    ``every``: take every K-th frame (None: spread ``samples`` over the whole source); ``chunk``: frames
    per calibration step (memory grows with it, not with ``samples``). ``budget``: accuracy control
    (None: off). ``report``/``chart``/``trt_table``: also write the JSON report, the SQNR chart PNG, a
    TensorRT calibration table folder (None: not). ``threads``: intra-op threads of FP32 and INT8 alike
    (None: the runtime's default). ``timing_rounds``: timed runs per model; ``sqnr_frames``: frames per
    layer SQNR. ``progress``: a bar over the stages on a terminal, a line now and then when piped.
    ``holdout``: the share of frames kept out of the ranges and used for the accuracy figures and accuracy
    control (None: :data:`HOLDOUT` with a ``budget``, else 0: all frames calibrate and are measured).
    ``trt_table``: the INT8 file's contract records where the table is, and ``--provider tensorrt`` uses it
    (:mod:`edgeseg.runtime._tensorrt`).

    Example::

        CalibrateOptions(quantize=QuantizeOptions(method="entropy"), samples=64, budget=Budget(0.5))
    """

    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    samples: int = 128
    every: int | None = None
    chunk: int = 8
    budget: Budget | None = None
    report: Path | None = None
    chart: Path | None = None
    trt_table: Path | None = None
    threads: int | None = None
    timing_rounds: int = 20
    sqnr_frames: int = 8
    progress: bool = False
    holdout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.quantize, QuantizeOptions):
            raise EdgesegError(f"CalibrateOptions.quantize takes a QuantizeOptions, got {type(self.quantize).__name__}.")
        for name in ("samples", "chunk", "timing_rounds", "sqnr_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                flag = {"samples": "--samples", "chunk": "--chunk", "timing_rounds": "--rounds"}.get(name, name)
                raise EdgesegError(f"{flag} must be an integer >= 1, got {value!r}.")
        if self.every is not None and (isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1):
            raise EdgesegError(f"--every must be an integer >= 1, got {self.every!r}.")
        if self.holdout is not None and (isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float))
                                         or not 0.0 <= self.holdout < 1.0):
            raise EdgesegError(f"--holdout must be a share in [0, 1), got {self.holdout!r}.")
        for name in ("report", "chart", "trt_table"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))


def calibrate(model: str | os.PathLike, data: str | os.PathLike, *, output: str | os.PathLike,
              masks: str | os.PathLike | None = None, options: CalibrateOptions = CalibrateOptions()) -> dict:
    """Quantize ``model`` to INT8 from calibration frames in ``data``; write ``output`` and return the report.

    Stages, each a function with typed results: collect ranges -> quantize -> measure (FP32 vs
    INT8 on the frames, against ``masks`` when given, and per-layer SQNR) -> accuracy control
    (with ``options.budget``: lowest-SQNR layers back to float until the drop fits) -> time side by
    side -> report. :class:`CalibrateOptions` holds every knob.

    With ``options.holdout`` (by default a quarter of the frames under a ``budget``) the accuracy figures and
    the control are measured on frames the ranges never saw.

    Example::

        report = calibrate("fcn8.onnx", "clips/street.mp4", output="fcn8.int8.onnx",
                           options=CalibrateOptions(quantize=QuantizeOptions(method="entropy"), samples=64))
        print(report["speedup"], report["miou_drop"])
    """
    if not isinstance(options, CalibrateOptions):
        raise EdgesegError(f"calibrate(options=...) takes a CalibrateOptions, got {type(options).__name__}: "
                           "pass CalibrateOptions(quantize=QuantizeOptions(...)).")
    model, output = Path(model), Path(output)
    budget = options.budget
    holdout = options.holdout if options.holdout is not None else HOLDOUT if budget is not None else 0.0
    _check_request(model=model, output=output, report=options.report, chart=options.chart)
    contract = _read_contract(model)
    with _Progress(enabled=options.progress, stages=9 + (budget is not None)) as bar, \
            tempfile.TemporaryDirectory(prefix="edgeseg-quant-") as tmp, \
            _read_frames(bar, data, contract, samples=options.samples, every=options.every, masks=masks) as everything:
        frames, held_out = everything.split(holdout) if holdout > 0 else (everything, everything)
        run = _Run(model=model, prepared=Path(tmp) / "prepared.onnx", work=Path(tmp), contract=contract,
                   frames=frames, evaluation=held_out, options=options.quantize, chunk=options.chunk,
                   sqnr_frames=options.sqnr_frames, bar=bar)
        outcome = _stages(run, options, output=output)
        stats = everything.stats
        evaluated_on = (f"{len(held_out)} held-out frames ({holdout:g} of {len(everything)}, spread evenly), "
                        "not used for the ranges" if holdout > 0 else "the calibration frames")
    result = build_report(outcome, contract=contract, options=options, output=output, stats=stats,
                          evaluated_on=evaluated_on, calibrated_on=len(frames))
    if options.chart:
        result["chart"] = str(write_chart(result["layers"], options.chart))
    if options.report:
        write_json_atomic(options.report, result)
    return result


# ---------------------------------------------------------------- what flows between the stages


@dataclass(frozen=True)
class _Run:
    """What every stage reads: the model, its prepared graph, the frames and the options. Built once."""

    model: Path
    prepared: Path
    work: Path
    contract: Contract
    frames: CalibrationSet  # the frames the ranges come from
    evaluation: CalibrationSet  # the frames accuracy is measured and controlled on (held out, or the same)
    options: QuantizeOptions
    chunk: int
    sqnr_frames: int
    bar: _Progress


@dataclass(frozen=True)
class Ranges:
    """Stage 1: the calibrated range of each tensor, and the cache file every quantization reuses."""

    cache: Path
    tensors: Mapping[str, tuple[float, float]]  # tensor -> (lowest, highest)


@dataclass(frozen=True)
class Candidate:
    """Stage 2: one INT8 model, and the nodes accuracy control returned to float in it."""

    path: Path
    returned: tuple[str, ...] = ()


@dataclass(frozen=True)
class Measurement:
    """Stage 3: FP32 vs INT8 on the frames, and per-layer SQNR of the candidate."""

    comparison: _measure.Comparison
    layers: Mapping[str, dict]


@dataclass(frozen=True)
class Control:
    """Stage 4: what accuracy control did; the report shows :meth:`to_report`."""

    max_drop: float
    drop_before: float
    drop_after: float
    returned: tuple[str, ...]
    steps: tuple[tuple[str, float], ...]  # (node returned, drop after it)

    @property
    def within_budget(self) -> bool:
        return self.drop_after <= self.max_drop

    def to_report(self, timings: Mapping[str, _measure.Timing]) -> dict:
        entry = {"max_drop": self.max_drop, "drop_before": self.drop_before, "returned": list(self.returned),
                 "steps": [{"returned": name, "drop": drop} for name, drop in self.steps],
                 "drop_after": self.drop_after, "within_budget": self.within_budget}
        if "int8_default" in timings:
            before, after = timings["int8_default"].ms_per_frame, timings["int8"].ms_per_frame
            entry.update(ms_per_frame_before=before, ms_per_frame_after=after, speed_cost=after / before)
        return entry


@dataclass(frozen=True)
class FloatCompute:
    """Stage 5: the INT8 model's compute nodes that still run in float, and their share of the FLOPs."""

    nodes: Mapping[str, dict]
    share: float
    total_flops: int
    kernels: _measure.Kernels


@dataclass(frozen=True)
class Outcome:
    """All stages: what the report is made of, beside the frames read."""

    measured: Measurement
    timings: Mapping[str, _measure.Timing]
    floats: FloatCompute
    control: Control | None
    trt_files: list[str] | None
    peaks: Mapping[str, float]  # the process peak (MB) after each stage


# ---------------------------------------------------------------- the stages


def _read_frames(bar: _Progress, data, contract: Contract, *, samples: int, every: int | None, masks
                 ) -> CalibrationSet:
    with bar.stage("reading frames"):
        return load_calibration_set(data, contract, samples=samples, every=every, masks=masks)


def _stages(run: _Run, options: CalibrateOptions, *, output: Path) -> Outcome:
    """The stages of :func:`calibrate` in order, each under its progress stage, noting the peak memory after each."""
    bar = run.bar
    peaks: dict[str, float] = {}  # the process peak after each stage (it only grows): which stage set it
    with bar.stage("preparing the graph"):
        preprocess_for_quantization(run.model, run.prepared)
    peaks["prepare"] = _peak_mb()
    ranges = collect_ranges(run)
    peaks["calibrate"] = _peak_mb()
    with bar.stage("quantizing"):
        default = quantize_candidate(run, ranges=ranges, name="int8.onnx")
    peaks["quantize"] = _peak_mb()
    measured = measure(run, default)
    peaks["measure"] = _peak_mb()
    control, candidate = None, default
    if options.budget is not None:
        control, candidate, measured = control_accuracy(run, ranges=ranges, default=default, measured=measured,
                                                          budget=options.budget)
    with bar.stage("timing FP32 and INT8 side by side"):
        timings = _time(run, candidate=candidate, default=default, rounds=options.timing_rounds,
                        threads=options.threads)
    peaks["timing"] = _peak_mb()
    with bar.stage("finding compute left in float"):
        floats = float_compute_of(run, candidate)
    with bar.stage("writing the INT8 model"):
        trt_files = write_trt_table(ranges.tensors, options.trt_table) if options.trt_table else None
        _write_model(candidate, run.contract, output,
                     calibration=_calibration_section(options.quantize, samples=len(run.frames), floats=floats,
                                                         returned=candidate.returned,
                                                         trt_table=_table_entry(options.trt_table, output)))
    return Outcome(measured=measured, timings=timings, floats=floats, control=control, trt_files=trt_files,
                   peaks=peaks)


def collect_ranges(run: _Run) -> Ranges:
    """Feed every calibration frame, chunk by chunk, and save the ranges to a cache file."""
    collector = RangeCollector(run.prepared, run.work, run.options)
    input_name = _input_name(run.prepared, run.contract.input.name)
    with run.bar.stage("collecting ranges"), run.bar.frames(len(run.frames), "ranges") as frames_bar:
        for _, batch in run.frames.chunks(run.chunk):
            collector.add(input_name, batch)
            frames_bar.update(len(batch))
        cache = run.work / "ranges.json"
        data = collector.save(cache)
    # onnxruntime stores each end as a numpy array (shape () or (1,)): plain floats from here on.
    tensors = {name: (float(np.min(data[name].range_value[0])), float(np.max(data[name].range_value[1])))
               for name in data.keys()}
    return Ranges(cache=cache, tensors=tensors)


def quantize_candidate(run: _Run, *, ranges: Ranges, name: str, returned: tuple[str, ...] = ()) -> Candidate:
    """Write one INT8 model from the cached ranges, with ``returned`` nodes kept in float."""
    path = run.work / name
    quantize(run.prepared, path, cache=ranges.cache, options=run.options, exclude=returned)
    return Candidate(path=path, returned=returned)


def measure(run: _Run, candidate: Candidate) -> Measurement:
    """Compare FP32 and ``candidate`` on the frames, and measure its per-layer SQNR."""
    with run.bar.stage("comparing FP32 and INT8"):
        comparison = _compare(run, candidate)
    with run.bar.stage("per-layer SQNR"):
        layers = _measure.layer_sqnr(run.prepared, candidate.path, run.frames, run.work, max_frames=run.sqnr_frames)
    return Measurement(comparison=comparison, layers=layers)


def _compare(run: _Run, candidate: Candidate) -> _measure.Comparison:
    return _measure.compare(make_session(run.model), make_session(candidate.path), run.evaluation, run.contract,
                            chunk=run.chunk)


def control_accuracy(run: _Run, *, ranges: Ranges, default: Candidate, measured: Measurement, budget: Budget
                     ) -> tuple[Control, Candidate, Measurement]:
    """Return the layers that add the most noise to float, one at a time, until the drop fits ``budget``."""
    start = drop = measured.comparison.drop()
    ranking = [name for name, _ in _measure.worst_first(measured.layers, key="added_db")
               if name not in run.options.float_nodes and measured.layers[name]["op"] not in _measure.DATA_MOVEMENT]
    candidate, steps = default, []
    with run.bar.stage("accuracy control"):
        for step, name in enumerate(ranking[: budget.max_steps]):
            if drop <= budget.max_drop:
                break
            candidate = quantize_candidate(run, ranges=ranges, name=f"int8_step{step + 1}.onnx",
                                           returned=candidate.returned + (name,))
            comparison = _compare(run, candidate)
            drop = comparison.drop()
            steps.append((name, drop))
            log.info("accuracy control: %s back to float -> drop %.3f", name, drop)
            measured = Measurement(comparison=comparison, layers=measured.layers)
    if candidate.returned:
        measured = Measurement(comparison=measured.comparison,
                               layers=_measure.layer_sqnr(run.prepared, candidate.path, run.frames, run.work,
                                                          max_frames=run.sqnr_frames))
    control = Control(max_drop=budget.max_drop, drop_before=start, drop_after=drop, returned=candidate.returned,
                      steps=tuple(steps))
    return control, candidate, measured


def _time(run: _Run, *, candidate: Candidate, default: Candidate, rounds: int, threads: int | None
          ) -> dict[str, _measure.Timing]:
    timed = {"fp32": run.model, "int8": candidate.path}
    if candidate.returned:
        timed["int8_default"] = default.path
    return _measure.time_side_by_side(timed, run.frames, rounds=rounds, threads=threads)


def float_compute_of(run: _Run, candidate: Candidate) -> FloatCompute:
    """Which compute nodes of ``candidate`` the CPU provider runs in float, and their FLOPs."""
    import onnx

    flops = _measure.compute_flops(onnx.load(str(run.prepared)))
    kernels = _measure.optimized_kernels(candidate.path, run.work)
    left = _measure.float_compute(onnx.load(str(candidate.path)), flops, kernels)
    total = sum(f for _, f in flops.values()) or 1
    share = sum(entry["flops"] for entry in left.values()) / total
    return FloatCompute(nodes=left, share=share, total_flops=total, kernels=kernels)


def _calibration_section(options: QuantizeOptions, *, samples: int, floats: FloatCompute,
                         returned: tuple[str, ...] = (), trt_table: dict | None = None) -> dict:
    section = {"method": options.method, "samples": samples, "excluded_nodes": [*options.float_nodes, *returned],
               "float_nodes": sorted(floats.nodes), **options.summary()}
    if trt_table:
        section["trt_table"] = trt_table
    return section


def _table_entry(trt_table: str | os.PathLike | None, output: Path) -> dict | None:
    """Where the INT8 file finds its TensorRT table: relative to the file (they move together), and its hash."""
    from edgeseg.runtime.files import sha256_of

    if not trt_table:
        return None
    folder = Path(trt_table)
    return {"path": os.path.relpath(folder.resolve(), output.resolve().parent),
            "sha256": sha256_of(folder / "calibration.flatbuffers")}


def _write_model(candidate: Candidate, contract: Contract, output: Path, *, calibration: dict) -> None:
    # The contract is copied whole (latent, verified, source...): only `calibration` is added.
    import onnx

    final = onnx.load(str(candidate.path))
    write_contract(final, contract.replace(calibration=calibration))
    _save_atomically(final, output)


# ---------------------------------------------------------------- the report


def build_report(outcome: Outcome, *, contract: Contract, options: CalibrateOptions, output: Path, stats: FrameStats,
                 evaluated_on: str = "the calibration frames", calibrated_on: int | None = None) -> dict:
    """The report dict (the calibrate report's fields): JSON values only, no paths as objects and no private keys."""
    measured, timings, floats, control = outcome.measured, outcome.timings, outcome.floats, outcome.control
    threads, quantize = options.threads, options.quantize
    comparison = measured.comparison
    fp32, int8 = _side(comparison.fp32, timings["fp32"]), _side(comparison.int8, timings["int8"])
    ranked = _measure.worst_first(measured.layers)
    returned = list(control.returned) if control else []
    return {
        "model": contract.kind, "output": str(output),
        "method": quantize.method, "samples": stats.read, "options": quantize.summary(),
        "target": {"cpu": quantize.target, "reduce_range": quantize.reduce_range, "rule": quantize.rule},
        "fp32": fp32, "int8": int8,
        "miou_drop": _difference(fp32["miou"], int8["miou"]),
        "per_class_iou_drop": ({k: _difference(v, int8["per_class_iou"][k]) for k, v in fp32["per_class_iou"].items()}
                               if fp32["per_class_iou"] else None),
        "pixel_acc_drop": _difference(fp32["pixel_acc"], int8["pixel_acc"]),
        "agreement": comparison.agreement,
        "mean_abs_prob_diff": comparison.mean_abs_prob_diff,
        "reconstruction_mse": comparison.reconstruction_mse,
        "speedup": timings["fp32"].ms_per_frame / timings["int8"].ms_per_frame,
        "timing": {"threads": default_threads() if threads is None else threads, "runs": timings["fp32"].runs, "interleaved": True,
                   "note": "median ms per frame, batch 1, FP32 and INT8 alternating with the same session options"},
        "sqnr_db": {name: db for name, db in ranked},
        "layers": [{"name": name, **measured.layers[name]} for name, _ in ranked],
        "float_nodes": sorted(floats.nodes),
        "float_compute": {"share": floats.share, "total_gflops": floats.total_flops / 1e9,
                          "nodes": dict(floats.nodes), "ep_kernels": floats.kernels.counts()},
        "excluded_nodes": [*quantize.float_nodes, *returned],
        "accuracy_control": control.to_report(timings) if control else None,
        "frames": {"source": stats.source, "kind": stats.kind, "read": stats.read, "skipped": stats.skipped,
                   "masks": stats.masks, "thresholded_masks": stats.thresholded_masks,
                   "median_autocorrelation": stats.median_autocorrelation, "evaluated_on": evaluated_on,
                   "calibrated_on": stats.read if calibrated_on is None else calibrated_on},
        "cpu": dict(zip(("int8_dot_product", "flags"), _measure.cpu_int8_support())),
        "peak_mb": _peak_mb(),
        "peak_mb_after": dict(outcome.peaks),
        "trt_table": outcome.trt_files,
        "warnings": report_warnings(stats=stats, floats=floats, options=quantize, timings=timings,
                                    agreement=comparison.agreement, masks=bool(comparison.fp32)),
    }


def _side(scores: Mapping, timing: _measure.Timing) -> dict:
    return {"miou": scores.get("miou"), "pixel_acc": scores.get("pixel_acc"),
            "per_class_iou": scores.get("per_class_iou"), "ms_per_frame": timing.ms_per_frame, "fps": timing.fps}


def _difference(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else before - after


def report_warnings(*, stats: FrameStats, floats: FloatCompute, options: QuantizeOptions,
                    timings: Mapping[str, _measure.Timing], agreement: float | None = None,
                    masks: bool = False) -> list[str]:
    """What limits the result: too few or too alike frames, masks thresholded, CPU, float compute, speed,
    and an agreement with FP32 below :data:`MIN_AGREEMENT` where there are no masks to judge by."""
    warnings = []
    if agreement is not None and not masks and agreement < MIN_AGREEMENT:
        warnings.append(f"FP32/INT8 pixel agreement is {100 * agreement:.2f}%, below {100 * MIN_AGREEMENT:g}%: "
                        "return the worst layers to float with --max-drop 1, or calibrate on more varied frames.")
    if stats.skipped:
        warnings.append(f"{stats.skipped} calibration frame(s) were unreadable and skipped "
                        f"(first: {stats.skipped_reasons[0]}).")
    if stats.read < MIN_SAMPLES:
        warnings.append(f"only {stats.read} calibration frames (fewer than {MIN_SAMPLES}): ranges may miss "
                        "scenes the model will see; pass more with --samples and more data.")
    if stats.distinct_frames * 4 < stats.read:
        warnings.append(f"only {stats.distinct_frames} distinct-looking frames among {stats.read}: "
                        "sample a longer stretch of video or more images.")
    if stats.thresholded_masks:
        warnings.append(f"{stats.thresholded_masks} binary mask(s) had values between 0 and 255 (JPEG edges?): "
                        "thresholded at 128, as training does.")
    has_dot, cpu_flags = _measure.cpu_int8_support()
    if not has_dot:
        warnings.append(f"this CPU has no int8 dot-product instructions ({cpu_flags}): INT8 may be slower "
                        "than FP32 here; measure on the target device.")
    if floats.nodes:
        warnings.append(_float_warning(floats, options))
    speedup = timings["fp32"].ms_per_frame / timings["int8"].ms_per_frame
    if speedup < 1.0:
        warnings.append(f"INT8 is slower than FP32 here ({speedup:.2f}x).")
    return warnings


def _float_warning(floats: FloatCompute, options: QuantizeOptions) -> str:
    by_reason: dict[str, int] = {}
    for entry in floats.nodes.values():
        key = f"{entry['op']} ({entry['reason']})"
        by_reason[key] = by_reason.get(key, 0) + entry["flops"]
    detail = ", ".join(f"{k}: {100 * v / floats.total_flops:.2f}%"
                       for k, v in sorted(by_reason.items(), key=lambda i: -i[1]))
    hint = ""
    if any(e["reason"].startswith("not fused") for e in floats.nodes.values()) and options.activations == "int8":
        hint = " With int8 activations the x86 CPU provider leaves Convs after MaxPool in float: try --activations uint8."
    return (f"{len(floats.nodes)} compute node(s) run in float, {100 * floats.share:.2f}% of the model's FLOPs "
            f"({detail}).{hint}")


# ---------------------------------------------------------------- checks before any work


def _check_request(*, model: Path, output: Path, report: Path | None, chart: Path | None) -> None:
    if output.resolve() == model.resolve():
        raise EdgesegError(f"-o `{output}` would overwrite the FP32 model; pick another file name.")
    for flag, path in (("-o", output), ("--report", report), ("--chart", chart)):
        if path is not None and not Path(path).parent.is_dir():
            raise EdgesegError(f"{flag} `{path}`: folder `{Path(path).parent}` does not exist; create it first.")


def _read_contract(model: Path) -> Contract:
    proto = _load(model)
    contract = Contract.from_onnx(proto, origin=str(model))
    if contract is None:
        raise EdgesegError(
            f"Model `{model}` has no edgeseg contract (metadata key `edgeseg`): calibration needs its preprocessing. "
            "Export it with `edgeseg export`."
        )
    if contract.calibration:
        raise EdgesegError(f"Model `{model}` is already quantized (its contract has a `calibration` section). "
                           "Calibrate the FP32 parent model instead.")
    if contract.kind == "decoder":
        raise EdgesegError(f"Model `{model}` is a decoder half: its input is a latent code, not an image, so "
                           "calibration frames cannot feed it. Calibrate the whole autoencoder or its encoder.")
    check_quantizable(proto)
    return contract


class _Progress:
    """The stages as one :class:`edgeseg.runtime.progress.Progress` (and one over frames in the long ones)."""

    def __init__(self, *, enabled: bool, stages: int):
        self.enabled = enabled
        self._stages = Progress(stages, desc="calibrate", unit="stage", enabled=enabled)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._stages.note(name)
        yield
        self._stages.update(1, note=name)

    def frames(self, total: int, name: str) -> Progress:
        return Progress(total, desc=f"calibrate: {name}", unit="frame", enabled=self.enabled, leave=False)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stages.close()


def write_chart(layers: list[dict], path: Path, *, limit: int = 40) -> Path:
    """Bar chart of per-layer SQNR (weights and activations), worst layers first."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    shown = layers[:limit]
    names = [entry["name"] for entry in shown]
    act = [entry["activation_db"] if entry["activation_db"] is not None else 0.0 for entry in shown]
    wts = [entry["weights_db"] if entry["weights_db"] is not None else 0.0 for entry in shown]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(shown) + 1.0)))
    y = range(len(shown))
    ax.barh([i - 0.2 for i in y], act, height=0.4, label="activation")
    ax.barh([i + 0.2 for i in y], wts, height=0.4, label="weights")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB), higher is better")
    ax.set_title(f"Per-layer SQNR, worst {len(shown)} first")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(report: dict) -> str:
    """The headline numbers as a short terminal table."""
    def pct(value):
        return "-" if value is None else f"{100 * value:.2f}"

    rows = [("", "FP32", "INT8")]
    if report["fp32"]["miou"] is not None:
        rows.append(("mIoU %", pct(report["fp32"]["miou"]), pct(report["int8"]["miou"])))
        rows.append(("pixel acc %", pct(report["fp32"]["pixel_acc"]), pct(report["int8"]["pixel_acc"])))
        for name, value in report["fp32"]["per_class_iou"].items():
            rows.append((f"IoU {name} %", pct(value), pct(report["int8"]["per_class_iou"][name])))
    mse = report["reconstruction_mse"] or {}
    if "fp32" in mse:
        rows.append(("recon MSE", f"{mse['fp32']:.5f}", f"{mse['int8']:.5f}"))
    elif mse:
        rows.append(("code MSE vs FP32", "-", f"{mse['fp32_vs_int8']:.5f}"))
    rows.append(("ms/frame", _ms(report["fp32"]["ms_per_frame"]), _ms(report["int8"]["ms_per_frame"])))
    rows.append(("frames/s", f"{report['fp32']['fps']:.1f}", f"{report['int8']['fps']:.1f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>9}  {c:>9}" for a, b, c in rows]
    lines.append(f"speedup {report['speedup']:.2f}x   method {report['method']}   samples {report['samples']}")
    lines.append(f"INT8 rule: {report['target']['rule']}")
    if report["frames"]["evaluated_on"] != "the calibration frames":
        lines.append(f"accuracy measured on {report['frames']['evaluated_on']}")
    if report["agreement"] is not None:
        lines.append(f"pixel class agreement {pct(report['agreement'])}%   "
                     f"mean |p32-p8| {report['mean_abs_prob_diff']:.4f}")
    if report["miou_drop"] is not None:
        lines.append(f"mIoU drop {100 * report['miou_drop']:.2f} points")
    worst = list(report["sqnr_db"].items())[:3]
    if worst:
        lines.append("worst layers (SQNR dB): " + ", ".join(f"{n} {v:.1f}" for n, v in worst))
    lines.append(f"float FLOPs {100 * report['float_compute']['share']:.1f}%   peak {report['peak_mb']:.0f} MB")
    control = report.get("accuracy_control")
    if control:
        lines.append(f"accuracy control: {len(control['returned'])} layer(s) back to float, drop "
                     f"{control['drop_before']:.2f} -> {control['drop_after']:.2f} (budget {control['max_drop']})")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3f}"


def _peak_mb() -> float:
    # Linux reports ru_maxrss in KiB: the whole process's peak resident memory so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load(path: Path):
    import onnx

    if not path.is_file():
        raise EdgesegError(f"Model `{path}`: no such file.")
    try:
        return onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError, ValueError, google.protobuf errors
        raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file ({type(error).__name__}).") from None


def _input_name(path: Path, preferred: str) -> str:
    # The contract names the input; an older export may name it differently: take the graph's first.
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    names = [i.name for i in graph.input if i.name not in weights]
    return preferred if preferred in names else names[0]


def _save_atomically(model, output: Path) -> None:
    import onnx

    try:
        with atomic_path(output) as tmp:
            onnx.save(model, str(tmp))
    except OSError as error:
        raise EdgesegError(f"Cannot write `{output}`: {error.strerror or error}.") from None
