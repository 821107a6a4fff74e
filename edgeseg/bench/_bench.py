"""``edgeseg bench``: every way to run the same model, side by side, on the same frames.

Each runner does the same work per frame (decode, the contract's preprocessing, inference,
argmax, restore to the frame's size, write a class-id PNG) in a fresh subprocess of its own, so
its peak memory is its own. Repeats are interleaved (A B C ... A B C) so that a machine whose
speed drifts penalizes every runner alike; medians and spread are reported, and ratios between
runners are the headline. The machine's matmul ceiling is measured in the same run.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bench._worker import KERAS_RUNNERS
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.progress import Progress

log = logging.getLogger("edgeseg.bench")

RUNNERS = (
    "keras-predict", "keras-predict-1", "keras-call", "ort-plain", "opencv-dnn", "openvino", "openvino-f32",
    "openvino-int8", "edgeseg", "edgeseg-int8", "edgeseg-fast", "edgeseg-fp16",
)
GPU_RUNNERS = ("edgeseg-fp16",)  # the runtime in fp16 on onnxruntime's CUDA provider: --precision fp16 adds it
# What runs when no --runners are given, by the model's kind. Segmentation's keras-predict is one
# frame per call already; an autoencoder's runs Keras' default batch (32) and keras-predict-1 one image per call.
DEFAULT_RUNNERS = {
    "segmentation": tuple(r for r in RUNNERS if r != "keras-predict-1" and r not in GPU_RUNNERS),
    "autoencoder": tuple(r for r in RUNNERS if r not in GPU_RUNNERS),
}
# Runners whose efficiency is measured against the INT8 ceiling rather than the FP32 one.
INT8_RUNNERS = ("edgeseg-int8", "openvino-int8")
BASELINE = "ort-plain"
FAST_AGREEMENT_BAR = 0.99  # edgeseg-fast may trade exactness for speed only down to this share of agreeing pixels
FAST_MAX_DROP = 100 * (1 - FAST_AGREEMENT_BAR) / 2  # points of disagreement calibration may spend (see prepare_models)
STAGES = ("decode", "preprocess", "infer", "postprocess", "write")
# Said before a run that loads TensorFlow in its own process: otherwise that is a silent 10-40 s.
_LOADS_TF = " - loads TensorFlow, 10-40 s"


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark. ``model`` is an FP32 ONNX file carrying the edgeseg contract.

    ``reference`` is the runner whose masks the others are compared with; None picks
    ``keras-call`` when a Keras model is given, else an FP32 onnxruntime pass (``ort-plain``).
    """

    model: Path
    source: str
    keras: Path | None = None
    int8: Path | None = None
    runners: tuple[str, ...] | None = None  # None: DEFAULT_RUNNERS for the model's kind
    frames: int = 30
    repeats: int = 3
    threads: int | None = None
    work_dir: Path | None = None
    measure_ceiling: bool = True
    progress: bool = True  # a bar on a terminal, a line every 15 s when piped (edgeseg.runtime.progress)
    precision: str = "auto"  # "fp16": also run edgeseg-fp16 (the GPU path); refused where onnxruntime has no CUDA

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp16"):
            raise EdgesegError(f"--precision must be auto or fp16, got {self.precision!r}.")
        if self.precision == "fp16":
            from edgeseg.runtime import require_gpu_fp16

            require_gpu_fp16("bench --precision fp16")
        unknown = [r for r in self.runners or () if r not in RUNNERS]
        if unknown:
            raise EdgesegError(
                f"Unknown runner(s) {', '.join(unknown)}: expected a comma-separated subset of {', '.join(RUNNERS)}."
            )
        if self.frames < 1 or self.repeats < 1:
            raise EdgesegError(f"--frames and --repeats must be at least 1, got {self.frames} and {self.repeats}.")
        if self.threads is not None and self.threads < 1:
            raise EdgesegError(f"--threads must be at least 1, got {self.threads}.")


def schedule(runners: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """The interleaved run order: every runner once per round, ``repeats`` rounds (A B C A B C).

    Example::

        schedule(["a", "b"], 2)  # [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    """
    return [(repeat, runner) for repeat in range(repeats) for runner in runners]


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; returns the report (the bench report's fields, plus the details).

    Example::

        report = run_bench(BenchConfig(model=Path("fcn8.onnx"), source="clip.mp4",
                                       keras=Path("fcn8.keras"), runners=("ort-plain", "opencv-dnn")))
        report["runners"]["opencv-dnn"]["fps"]
    """
    from edgeseg.calibration import count_flops
    from edgeseg.bench._worker import read_contract

    work = Path(config.work_dir or tempfile.mkdtemp(prefix="edgeseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    kind = read_contract(str(config.model)).kind
    selected = _selected_runners(config, kind)
    flops = count_flops(config.model)["total"]
    if config.measure_ceiling:
        log.info("bench: measuring this machine's matmul ceiling")
    ceiling = run_worker({"runner": "ceiling"}, work / "ceiling") if config.measure_ceiling else {}
    reference_runner, reference = _reference_run(config, work, kind)
    runs = _rounds(config, selected, work, kind, reference=reference)

    runners = {name: summarize(name, results, flops=flops, ceiling=ceiling) for name, results in runs.items()}
    return {
        "machine": machine_info(),
        "model": str(config.model),
        "kind": kind,
        "unit": "images" if kind == "autoencoder" else "frames",
        "edgeseg_fast": _edgeseg_fast(runs, runners),
        "source": config.source,
        "frames": config.frames,
        "repeats": config.repeats,
        "threads": config.threads,
        "flops_per_frame": flops,
        "ceiling_gflops": {k: ceiling.get(k) for k in ("fp32", "bf16", "int8")},
        "ceiling_details": ceiling.get("details", []),
        "agreement_reference": reference_runner,
        "baseline": BASELINE,
        "runners": runners,
        "ratios": ratios(runners),
    }


def _selected_runners(config: BenchConfig, kind: str) -> tuple[str, ...]:
    """The runners asked for (default: the kind's), with edgeseg-fp16 added for --precision fp16."""
    if kind not in DEFAULT_RUNNERS:
        raise EdgesegError(f"bench runs segmentation and autoencoder models; `{config.model}` is an {kind!r} model "
                           "(its contract's kind). Pass the whole model.")
    selected = config.runners or DEFAULT_RUNNERS[kind]
    if config.precision == "fp16" and "edgeseg-fp16" not in selected:
        selected = (*selected, "edgeseg-fp16")
    return selected


def _reference_run(config: BenchConfig, work: Path, kind: str) -> tuple[str, dict[str, Any]]:
    """The run every runner's masks are compared with: Keras when given and runnable, else FP32 onnxruntime."""
    reference_runner = "keras-call" if config.keras else "ort-plain"
    log.info("bench: the reference run (%s)%s", reference_runner, _LOADS_TF if reference_runner in KERAS_RUNNERS else "")
    reference = run_worker(_job(config, reference_runner, work / "reference", kind), work / "reference")
    if "skipped" in reference and reference_runner == "keras-call":
        log.warning("bench: the Keras reference cannot run (%s); comparing masks with FP32 onnxruntime instead",
                    reference["skipped"])
        reference_runner = "ort-plain"
        reference = run_worker(_job(config, reference_runner, work / "reference", kind), work / "reference")
    if "skipped" in reference:
        raise EdgesegError(f"bench: the reference run ({reference_runner}) could not run: {reference['skipped']}.")
    return reference_runner, reference


def _rounds(config: BenchConfig, selected: tuple[str, ...], work: Path, kind: str, *,
            reference: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each runner ``config.repeats`` times, interleaved (:func:`schedule`), each compared with the reference."""
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in selected}
    order = schedule(selected, config.repeats)
    with Progress(len(order), desc="edgeseg bench", unit="run", enabled=config.progress) as progress:
        for repeat, runner in order:
            if runs[runner] and "skipped" in runs[runner][0]:
                progress.update(note=f"{runner} skipped")
                continue  # a runner that cannot run here will not run on the next round either
            out = work / f"{runner}.{repeat}"
            progress.note(f"round {repeat + 1}/{config.repeats} {runner}"
                          + (_LOADS_TF if runner in KERAS_RUNNERS and not runs[runner] else ""))
            result = run_worker(_job(config, runner, out, kind), out)
            if "skipped" in result:
                log.warning("bench: %s skipped: %s", runner, result["skipped"])
            elif kind == "autoencoder":
                result.update(reconstruction_agreement(Path(result["masks"]), Path(reference["masks"])))
            else:
                result["agreement"] = mask_agreement(Path(result["masks"]), Path(reference["masks"]))
            runs[runner].append(result)
            progress.update(note=f"round {repeat + 1}/{config.repeats} {runner}")
    return runs


def _edgeseg_fast(runs: dict[str, list[dict[str, Any]]], runners: dict[str, Any]) -> dict[str, Any]:
    """What edgeseg-fast chose here, how close it came to the reference, and why it is the fast mode."""
    fast = runners.get("edgeseg-fast", {})
    return {"config": next((r.get("config") for r in runs.get("edgeseg-fast", []) if "config" in r), None),
            "agreement": fast.get("agreement"),
            "below_bar": (fast.get("agreement") or 1.0) < FAST_AGREEMENT_BAR,
            "recon_max_abs": fast.get("recon_max_abs"),
            "chosen_by": "the fastest configuration measured here (benchmarks/FINDINGS.md, "
                         "benchmarks/fast_mode.py): OpenVINO compiled for throughput, batch 4, the class-id "
                         "rule fused into the graph, a call in flight per stream, "
                         "on the INT8 file when given, else on the FP32 file in bf16; the bar is "
                         ">= 99% mask agreement with FP32 Keras"}


def _job(config: BenchConfig, runner: str, out: Path, kind: str = "segmentation") -> dict[str, Any]:
    return {
        "runner": runner,
        "kind": kind,
        "model": str(config.model),
        "keras": str(config.keras) if config.keras else None,
        "int8": str(config.int8) if config.int8 else None,
        "source": config.source,
        "frames": config.frames,
        "threads": config.threads,
        "out": str(out),
    }


def run_worker(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one job in a fresh interpreter; a crash becomes a skipped result carrying the error's last line.

    The job and its result are typed JSON files (the worker calls the runtime's Python functions, not
    commands). One process per run is kept for the measurement, not for convenience: peak memory is
    read as the process's own high-water mark (VmHWM), which never goes down, and onnxruntime,
    OpenVINO and TensorFlow keep thread pools, arenas and caches for the life of a process, so in one
    process every runner would inherit the earlier runners' peak memory and warm state.
    """
    out.mkdir(parents=True, exist_ok=True)
    job = {**job, "out": str(out)}
    job_path, result_path = out / "job.json", out / "result.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "edgeseg.bench._worker", str(job_path), str(result_path)],
        capture_output=True, text=True, env=env,
    )
    if done.returncode != 0 or not result_path.exists():
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return {"skipped": f"crashed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"}
    return json.loads(result_path.read_text())


def mask_agreement(masks: Path, reference: Path) -> float | None:
    """Share of pixels whose class id matches the reference's, over the frames both wrote."""
    from edgeseg.bench._worker import read_mask

    same = total = 0
    for ref_path in sorted(reference.glob("*.png")):
        path = masks / ref_path.name
        if not path.exists():
            continue
        try:
            a, b = read_mask(path), read_mask(ref_path)
        except ValueError:  # an unreadable mask counts as not written
            continue
        if a is None or b is None or a.shape != b.shape:
            continue
        same += int(np.count_nonzero(a == b))
        total += a.size
    return same / total if total else None


def reconstruction_agreement(folder: Path, reference: Path) -> dict[str, Any]:
    """An autoencoder's reconstructions against the reference's, in [0, 1] pixel units: the largest
    absolute difference and the mean squared error over the images both wrote (8-bit PNGs)."""
    import cv2

    worst, squared, pixels = 0.0, 0.0, 0
    for ref_path in sorted(reference.rglob("*.png")):
        path = folder / ref_path.relative_to(reference)
        a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.exists() else None
        b = cv2.imread(str(ref_path), cv2.IMREAD_UNCHANGED)
        if a is None or b is None or a.shape != b.shape:
            continue
        diff = (a.astype(np.float32) - b.astype(np.float32)) / 255.0
        worst = max(worst, float(np.abs(diff).max()))
        squared += float(np.square(diff).sum())
        pixels += diff.size
    if not pixels:
        return {"recon_max_abs": None, "recon_mse": None, "agreement": None}
    return {"recon_max_abs": worst, "recon_mse": squared / pixels, "agreement": None}


def summarize(name: str, results: list[dict[str, Any]], *, flops: int, ceiling: dict[str, Any]) -> dict[str, Any]:
    """Medians and spread over a runner's repeats, achieved GFLOP/s and efficiency."""
    done = [r for r in results if "skipped" not in r]
    if not done:
        reason = results[0]["skipped"] if results else "not run"
        return {"skipped": reason, "fps": None, "infer_fps": None, "stage_ms": {}, "agreement": None,
                "gflops": None, "efficiency": None, "peak_mb": None, "runs": results}
    fps = [r["fps"] for r in done]
    infer_fps = [r["infer_fps"] for r in done]
    infer_median = float(np.median(infer_fps))
    gflops = flops * infer_median / 1e9
    # Each runner is held to the ceiling of the precision it computes in (OpenVINO at its defaults
    # runs bf16 on CPUs that have it; INT8 runners run int8 kernels).
    precisions = {r.get("precision") for r in done}
    if name in INT8_RUNNERS or any("int8" in str(p) for p in precisions):
        ceiling_kind = "int8"
    else:
        ceiling_kind = "bf16" if any("bf16" in str(p) for p in precisions) else "fp32"
    top = ceiling.get(ceiling_kind)
    agreements = [r["agreement"] for r in done if r.get("agreement") is not None]
    max_abs = [r["recon_max_abs"] for r in done if r.get("recon_max_abs") is not None]
    mse = [r["recon_mse"] for r in done if r.get("recon_mse") is not None]
    extra: dict[str, Any] = {}
    if max_abs:
        extra = {"recon_max_abs": float(max(max_abs)), "recon_mse": float(max(mse))}
    if done[0].get("config"):
        extra["config"] = done[0]["config"]
    if done[0].get("batch"):
        extra["batch"] = done[0]["batch"]
    return {
        **extra,
        "fps": float(np.median(fps)),
        "fps_spread": [float(min(fps)), float(max(fps))],
        "infer_fps": infer_median,
        "infer_fps_spread": [float(min(infer_fps)), float(max(infer_fps))],
        "stage_ms": {s: float(np.median([r["stage_ms"][s] for r in done])) for s in STAGES},
        "agreement": float(min(agreements)) if agreements else None,
        "gflops": gflops,
        "efficiency": gflops / top if top else None,
        "efficiency_vs": ceiling_kind,
        "peak_mb": float(max(r["peak_mb"] for r in done)),
        "runs": results,
    }


def ratios(runners: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """End-to-end fps of every runner over the baseline's (``ort-plain``), the headline numbers."""
    base = runners.get(BASELINE, {}).get("fps")
    if not base:
        measured = [r["fps"] for r in runners.values() if r.get("fps")]
        base = measured[0] if measured else None
    return {name: (r["fps"] / base if r.get("fps") and base else None) for name, r in runners.items()}


def machine_info() -> dict[str, Any]:
    from edgeseg.runtime import machine_fingerprint

    here = machine_fingerprint()  # the tuning cache's own description of this machine: one reader of cpuinfo
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": here["cpu"],
        "cpu_flags": here["flags"],  # which kernels the engines can use here (AMX, AVX512-VNNI, bf16...)
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for module in ("onnxruntime", "cv2", "openvino", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - an absent or broken peer is just not listed
            info[module] = None
    return info


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: one row per runner, the ratio to the baseline first."""
    ceiling = report.get("ceiling_gflops") or {}
    lines = [
        f"Model `{Path(report['model']).name}`, {report['flops_per_frame'] / 1e9:.4g} GFLOP/frame; "
        f"source `{Path(report['source']).name}`, {report['frames']} {_unit(report)} x {report['repeats']} interleaved repeats; "
        f"ceiling FP32 {_num(ceiling.get('fp32'), '.0f')} / BF16 {_num(ceiling.get('bf16'), '.0f')} / "
        f"INT8 {_num(ceiling.get('int8'), '.0f')} GFLOP/s (efficiency: against the runner's own precision); "
        f"agreement vs `{report['agreement_reference']}`.",
        "",
        f"| runner | {_unit(report)}/s (e2e) | min-max | x {report['baseline']} | infer {_unit(report)}/s | decode / pre / infer / post / write ms "
        "| agreement | GFLOP/s | efficiency | precision | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["runners"].items():
        if r.get("skipped"):
            lines.append(f"| {name} | skipped: {r['skipped']} |  |  |  |  |  |  |  |  |  |")
            continue
        stages = " / ".join(_num(r["stage_ms"].get(s), ".1f") for s in STAGES)
        spread = r.get("fps_spread") or [None, None]
        lines.append(
            f"| {name} | {_num(r['fps'], '.2f')} | {_num(spread[0], '.2f')}-{_num(spread[1], '.2f')} "
            f"| {_num(report['ratios'].get(name), '.2f')} | {_num(r['infer_fps'], '.2f')} | {stages} "
            f"| {_agreement(r)} | {_num(r['gflops'], '.0f')} | {_pct(r['efficiency'])} | {r['efficiency_vs']} "
            f"| {_num(r['peak_mb'], '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def _unit(report: dict[str, Any]) -> str:
    return report.get("unit", "frames")


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _agreement(r: dict[str, Any]) -> str:
    if r.get("recon_max_abs") is not None:  # autoencoders: reconstruction error against the reference
        return f"max-abs {r['recon_max_abs']:.4f}, MSE {r['recon_mse']:.1e}"
    return _pct(r.get("agreement"))


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


@dataclass(frozen=True)
class PreparedModels:
    """The files a bench run needs, made from a ``.keras`` model when one is given."""

    onnx: Path
    keras: Path | None
    int8: Path | None
    notes: list[str] = field(default_factory=list)


def prepare_models(*, model: Path, keras: Path | None, int8: Path | None, source: str,
                   work: Path) -> PreparedModels:
    """An ``.onnx`` passes through; a ``.keras`` is exported (and calibrated for INT8) by the typed functions
    :func:`edgeseg.export.export_model` and :func:`edgeseg.calibration.calibrate`, in this process."""
    if not model.exists():
        raise EdgesegError(f"--model `{model}`: no such file. Pass an FP32 .onnx exported by edgeseg, or its .keras.")
    if keras is not None and not keras.exists():
        raise EdgesegError(f"--keras `{keras}`: no such file. Pass the .keras the ONNX model was exported from.")
    if int8 is not None and not int8.exists():
        raise EdgesegError(f"--int8 `{int8}`: no such file. Pass a model made by `edgeseg calibrate`.")
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        return PreparedModels(model, keras, int8)
    if suffix != ".keras":
        raise EdgesegError(f"--model `{model}`: expected a .onnx or .keras file, got `{suffix or 'no suffix'}`.")
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / f"{model.stem}.onnx"
    from edgeseg.export import export_model

    export_model(model, onnx_path)
    notes = [f"exported {model} to {onnx_path}"]
    if int8 is None:
        int8 = work / f"{model.stem}.int8.onnx"
        try:
            from edgeseg.calibration import Budget, CalibrateOptions, calibrate

            # Accuracy control is part of how the INT8 file is made: the worst-SQNR layers go back to float
            # until FP32/INT8 disagreement on the frames held out from the ranges (calibrate's --holdout) is at most
            # half of edgeseg-fast's 1% allowance (other frames and OpenVINO's own kernels spend some of the rest).
            calibrate(onnx_path, source, output=int8,
                      options=CalibrateOptions(report=work / "calibrate.json", budget=Budget(FAST_MAX_DROP)))
            notes.append(f"calibrated {int8} on {source}")
        except EdgesegError as error:
            # The FP32 runners are still worth running; the INT8 ones report why they were skipped.
            log.warning("bench: no INT8 model: %s", error)
            notes.append(f"no INT8 model: {error}")
            int8 = None
    return PreparedModels(onnx_path, keras or model, int8, notes)
