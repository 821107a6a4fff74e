"""``calibrate``: FP32 edgeseg model + real frames -> INT8 model and a report of what it cost and bought."""

from __future__ import annotations

import logging
import os
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeseg.calibration import _measure
from edgeseg.calibration._data import CalibrationSet, load_calibration_set
from edgeseg.calibration._quantize import (
    QuantizeOptions,
    RangeCollector,
    check_quantizable,
    make_session,
    preprocess_for_quantization,
    quantize,
    write_trt_table,
)
from edgeseg.runtime.contract import Contract, write_contract
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import atomic_path, write_json_atomic

log = logging.getLogger("edgeseg.calibration")

# Fewer frames than this and the ranges rest on too few scenes. Segmentation frames give H x W
# values per channel, so the pixel count is rarely short; what runs short is scene variety and,
# for the deepest (7x7) tensors of FCN-8, tail samples: at 32 frames a 99.999th percentile of a
# 7x7x4096 tensor still rests on ~64 values above it, at 8 frames on ~16. (TensorRT and the
# onnxruntime examples use 100-500 images for ImageNet classifiers, where a frame is one sample.)
MIN_SAMPLES = 32
MAX_CONTROL_STEPS = 16


@dataclass(frozen=True)
class Budget:
    """Accuracy control: return layers to float while the drop exceeds ``max_drop`` points."""

    max_drop: float
    max_steps: int = MAX_CONTROL_STEPS


def calibrate(model: str | os.PathLike, data: str | os.PathLike, *, output: str | os.PathLike,
              masks: str | os.PathLike | None = None, options: QuantizeOptions = QuantizeOptions(),
              samples: int = 128, every: int | None = None, chunk: int = 8, budget: Budget | None = None,
              report: str | os.PathLike | None = None, chart: str | os.PathLike | None = None,
              trt_table: str | os.PathLike | None = None, threads: int | None = None, timing_rounds: int = 20,
              sqnr_frames: int = 8) -> dict:
    """Quantize ``model`` to INT8 from calibration frames in ``data``; write ``output`` and return the report.

    The FP32 and INT8 models are compared on the calibration frames (against ``masks`` when
    given), timed side by side, and compared layer by layer (SQNR). With ``budget``, the layers
    with the lowest SQNR return to float until the accuracy drop fits.

    Example::

        report = calibrate("fcn8.onnx", "clips/street.mp4", output="fcn8.int8.onnx",
                           options=QuantizeOptions(method="entropy"), samples=64)
        print(report["speedup"], report["miou_drop"])
    """
    import onnx

    model, output = Path(model), Path(output)
    if chunk < 1 or timing_rounds < 1:
        raise EdgesegError(f"--chunk and --rounds must be at least 1, got {chunk} and {timing_rounds}.")
    if output.resolve() == model.resolve():
        raise EdgesegError(f"-o `{output}` would overwrite the FP32 model; pick another file name.")
    for flag, path in (("-o", output), ("--report", report), ("--chart", chart)):
        if path is not None and not Path(path).parent.is_dir():
            raise EdgesegError(f"{flag} `{path}`: folder `{Path(path).parent}` does not exist; create it first.")
    if budget is not None and budget.max_drop < 0:
        raise EdgesegError(f"--max-drop must be >= 0 points, got {budget.max_drop}.")
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
    check_quantizable(proto)
    del proto

    warnings: list[str] = []
    # The process peak after each stage (it only grows): says which stage set the peak.
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgeseg-quant-") as tmp, \
            load_calibration_set(data, contract, samples=samples, every=every, masks=masks) as frames:
        work = Path(tmp)
        stats = frames.stats
        if stats.skipped:
            warnings.append(f"{stats.skipped} calibration frame(s) were unreadable and skipped "
                            f"(first: {stats.skipped_reasons[0]}).")
        if len(frames) < MIN_SAMPLES:
            warnings.append(f"only {len(frames)} calibration frames (fewer than {MIN_SAMPLES}): ranges may miss "
                            "scenes the model will see; pass more with --samples and more data.")
        if stats.distinct_frames * 4 < len(frames):
            warnings.append(f"only {stats.distinct_frames} distinct-looking frames among {len(frames)}: "
                            "sample a longer stretch of video or more images.")
        prepared = work / "prepared.onnx"
        preprocess_for_quantization(model, prepared)
        peaks["prepare"] = _peak_mb()

        collector = RangeCollector(prepared, work, options)
        input_name = _input_name(prepared, contract.input.name)
        for _, batch in frames.chunks(chunk):
            collector.add(input_name, batch)
        cache = work / "ranges.json"
        ranges = collector.save(cache)
        peaks["calibrate"] = _peak_mb()
        del collector

        candidate = work / "int8.onnx"
        quantize(prepared, candidate, cache=cache, options=options)
        peaks["quantize"] = _peak_mb()
        comparison = _compare(model, candidate, frames, contract, chunk)
        peaks["compare"] = _peak_mb()
        layers = _measure.layer_sqnr(prepared, candidate, frames, work, max_frames=sqnr_frames)
        peaks["sqnr"] = _peak_mb()
        control = None
        if budget is not None:
            control, candidate, comparison = _accuracy_control(
                budget, model, prepared, candidate, cache, options, frames, contract, chunk, layers, comparison, work)
        if control and control["returned"]:
            layers = _measure.layer_sqnr(prepared, candidate, frames, work, max_frames=sqnr_frames)

        timed = {"fp32": model, "int8": candidate}
        if control and control["returned"]:
            timed["int8_default"] = control.pop("_default_path")
        timings = _measure.time_side_by_side(timed, frames, rounds=timing_rounds, threads=threads)
        peaks["timing"] = _peak_mb()
        if control:
            control.pop("_default_path", None)
            if "int8_default" in timings:
                control["ms_per_frame_before"] = timings["int8_default"].ms_per_frame
                control["ms_per_frame_after"] = timings["int8"].ms_per_frame
                control["speed_cost"] = timings["int8"].ms_per_frame / timings["int8_default"].ms_per_frame

        candidate_proto = onnx.load(str(candidate))
        flops = _measure.compute_flops(onnx.load(str(prepared)))
        kernels = _measure.optimized_kernels(candidate, work)
        left = _measure.float_compute(candidate_proto, flops, kernels)
        total = sum(f for _, f in flops.values()) or 1
        float_share = sum(entry["flops"] for entry in left.values()) / total
        excluded = list(options.float_nodes) + list(control["returned"] if control else [])

        has_dot, cpu_flags = _measure.cpu_int8_support()
        if not has_dot:
            warnings.append(f"this CPU has no int8 dot-product instructions ({cpu_flags}): INT8 may be slower "
                            "than FP32 here; measure on the target device.")
        by_reason: dict[str, int] = {}
        for entry in left.values():
            by_reason.setdefault(f"{entry['op']} ({entry['reason']})", 0)
            by_reason[f"{entry['op']} ({entry['reason']})"] += entry["flops"]
        if left:
            detail = ", ".join(f"{k}: {100 * v / total:.2f}%" for k, v in sorted(by_reason.items(), key=lambda i: -i[1]))
            hint = ""
            if any(e["reason"].startswith("not fused") for e in left.values()) and options.activations == "int8":
                hint = " With int8 activations the x86 CPU provider leaves Convs after MaxPool in float: try --activations uint8."
            warnings.append(f"{len(left)} compute node(s) run in float, {100 * float_share:.2f}% of the model's FLOPs "
                            f"({detail}).{hint}")
        speedup = timings["fp32"].ms_per_frame / timings["int8"].ms_per_frame
        if speedup < 1.0:
            warnings.append(f"INT8 is slower than FP32 here ({speedup:.2f}x).")

        calibration = {
            "method": options.method, "samples": len(frames), "excluded_nodes": excluded,
            "float_nodes": sorted(left), **options.summary(),
        }
        final = onnx.load(str(candidate))
        write_contract(final, contract.replace(calibration=calibration))
        _save_atomically(final, output)
        trt_files = write_trt_table(ranges, Path(trt_table)) if trt_table else None

    result = _report(contract, options, frames_stats=stats, samples=len(frames), comparison=comparison,
                     timings=timings, layers=layers, left=left, float_share=float_share, total_flops=total,
                     kernels=kernels, excluded=excluded, control=control, warnings=warnings,
                     cpu=(has_dot, cpu_flags), output=output, trt_files=trt_files, threads=threads, peaks=peaks)
    if chart:
        result["chart"] = str(write_chart(result["layers"], Path(chart)))
    if report:
        write_json_atomic(report, result)
    return result


def _compare(model: Path, candidate: Path, frames: CalibrationSet, contract: Contract, chunk: int):
    return _measure.compare(make_session(model), make_session(candidate), frames, contract, chunk=chunk)


def _accuracy_control(budget, model, prepared, default_int8, cache, options, frames, contract, chunk, layers,
                      comparison, work):
    kind = contract.kind
    start_drop = comparison.drop(kind)
    control = {"max_drop": budget.max_drop, "drop_before": start_drop, "returned": [], "steps": [],
               "_default_path": default_int8}
    ranking = [name for name, _ in _measure.worst_first(layers, key="added_db")
               if name not in options.float_nodes and layers[name]["op"] not in _measure.DATA_MOVEMENT]
    candidate = default_int8
    drop = start_drop
    for step, name in enumerate(ranking):
        if drop <= budget.max_drop or step >= budget.max_steps:
            break
        control["returned"].append(name)
        candidate = work / f"int8_step{step + 1}.onnx"
        quantize(prepared, candidate, cache=cache, options=options, exclude=control["returned"])
        comparison = _compare(model, candidate, frames, contract, chunk)
        drop = comparison.drop(kind)
        control["steps"].append({"returned": name, "drop": drop})
        log.info("accuracy control: %s back to float -> drop %.3f", name, drop)
    control["drop_after"] = drop
    control["within_budget"] = drop <= budget.max_drop
    return control, candidate, comparison


def _report(contract, options, *, frames_stats, samples, comparison, timings, layers, left, float_share,
            total_flops, kernels, excluded, control, warnings, cpu, output, trt_files, threads, peaks) -> dict:
    def side(name: str, scores: dict) -> dict:
        timing = timings[name]
        return {"miou": scores.get("miou"), "pixel_acc": scores.get("pixel_acc"),
                "per_class_iou": scores.get("per_class_iou"), "ms_per_frame": timing.ms_per_frame, "fps": timing.fps}

    fp32, int8 = side("fp32", comparison.fp32), side("int8", comparison.int8)
    miou_drop = (fp32["miou"] - int8["miou"]) if fp32["miou"] is not None and int8["miou"] is not None else None
    ranked = _measure.worst_first(layers)
    return {
        "model": contract.kind, "output": str(output),
        "method": options.method, "samples": samples, "options": options.summary(),
        "fp32": fp32, "int8": int8,
        "miou_drop": miou_drop,
        "per_class_iou_drop": ({k: (fp32["per_class_iou"][k] - int8["per_class_iou"][k])
                                if fp32["per_class_iou"][k] is not None and int8["per_class_iou"][k] is not None
                                else None for k in fp32["per_class_iou"]} if fp32["per_class_iou"] else None),
        "pixel_acc_drop": (fp32["pixel_acc"] - int8["pixel_acc"]) if fp32["pixel_acc"] is not None else None,
        "agreement": comparison.agreement,
        "mean_abs_prob_diff": comparison.mean_abs_prob_diff,
        "reconstruction_mse": comparison.reconstruction_mse,
        "speedup": timings["fp32"].ms_per_frame / timings["int8"].ms_per_frame,
        "timing": {"threads": threads, "runs": timings["fp32"].runs, "interleaved": True,
                   "note": "median ms per frame, batch 1, FP32 and INT8 alternating with the same session options"},
        "sqnr_db": {name: db for name, db in ranked},
        "layers": [{"name": name, **layers[name]} for name, _ in ranked],
        "float_nodes": sorted(left),
        "float_compute": {"share": float_share, "total_gflops": total_flops / 1e9,
                          "nodes": left, "ep_kernels": kernels.counts()},
        "excluded_nodes": excluded,
        "accuracy_control": control,
        "frames": {"source": frames_stats.source, "kind": frames_stats.kind, "read": frames_stats.read,
                   "skipped": frames_stats.skipped, "masks": frames_stats.masks,
                   "median_autocorrelation": frames_stats.median_autocorrelation,
                   "evaluated_on": "the calibration frames"},
        "cpu": {"int8_dot_product": cpu[0], "flags": cpu[1]},
        "peak_mb": _peak_mb(),
        "peak_mb_after": peaks,
        "trt_table": trt_files,
        "warnings": warnings,
    }


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
    if report["reconstruction_mse"]:
        mse = report["reconstruction_mse"]
        rows.append(("recon MSE", f"{mse['fp32']:.5f}", f"{mse['int8']:.5f}"))
    rows.append(("ms/frame", _ms(report["fp32"]["ms_per_frame"]), _ms(report["int8"]["ms_per_frame"])))
    rows.append(("frames/s", f"{report['fp32']['fps']:.1f}", f"{report['int8']['fps']:.1f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>9}  {c:>9}" for a, b, c in rows]
    lines.append(f"speedup {report['speedup']:.2f}x   method {report['method']}   samples {report['samples']}")
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
