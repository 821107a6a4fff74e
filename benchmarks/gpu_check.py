"""The whole GPU path in one run; ``benchmarks/gpu_check.sh`` runs it under a 5-minute limit.

For each shipped model (samples/models/fcn8, samples/models/cae):

1. prepare (CPU): a ``--cuda-friendly`` export (needs TensorFlow), an INT8 file calibrated with a
   TensorRT table (``calibrate --trt-table``), and the FP32 CPU reference masks/reconstructions;
2. on the GPU, each configuration below: is every node on the GPU (strict: a CPU fallback is an
   error), agreement with the CPU FP32 reference, and fps:
   ``cuda-fp32`` (plain file and cuda-friendly file), ``cuda-fp16``, ``tensorrt-fp16``, ``tensorrt-int8``
   (the INT8 file through its calibration table);
3. ``edgeseg verify --engine tensorrt`` (fp16 on the cuda-friendly file; int8 on the INT8 file).

Without a GPU it stops at the first step that needs one, with one line ``gpu_check: STOPPED HERE: ...``
naming what it could not check (exit 3). ``--dry-run`` checks the script's own plumbing on a CPU: every
GPU configuration runs on the CPU instead (fp32, labelled ``cpu stand-in``, its TensorRT plan still built
from the real file and table), verify runs with ``--engine onnxruntime``; nothing it reports is a GPU figure.

    python benchmarks/gpu_check.py --json gpu_check.json            # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --json dry.json        # anywhere: the plumbing
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"fcn8": ROOT / "samples/models/fcn8", "cae": ROOT / "samples/models/cae"}
FRAMES = {"fcn8": ROOT / "samples/scenes.avi", "cae": ROOT / "samples/digits.npz"}
CALIBRATION = {"fcn8": ROOT / "samples/scenes/images", "cae": ROOT / "samples/digits.npz"}
# (label, file, provider, precision): every GPU configuration checked, in this order.
CONFIGS = (("cuda-fp32", "plain", "cuda", "auto"), ("cuda-fp32-friendly", "friendly", "cuda", "auto"),
           ("cuda-fp16", "friendly", "cuda", "fp16"), ("tensorrt-fp16", "friendly", "tensorrt", "fp16"),
           ("tensorrt-int8", "int8", "tensorrt", "auto"))
SECONDS_PER_FPS = 2.0  # per configuration: 5 configs x 2 models x 2 s, leaving the rest of 5 min to TensorRT builds


class GpuNeeded(Exception):
    """The next step needs a GPU and this machine's onnxruntime has none."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--work", type=Path, default=Path("gpu_check_work"))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: run every GPU configuration on the CPU to check the script's plumbing")
    args = parser.parse_args()
    from edgeseg.runtime import write_json_atomic

    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"dry_run": args.dry_run, "machine": _machine(), "steps": [], "models": {}}
    started = time.perf_counter()
    try:
        for name, folder in MODELS.items():
            report["models"][name] = check_model(name, folder, args, report)
    except GpuNeeded as stop:
        report["stopped"] = str(stop)
        print(f"gpu_check: STOPPED HERE: {stop}", file=sys.stderr)
    report["seconds"] = time.perf_counter() - started
    write_json_atomic(args.json, report)
    print(f"gpu_check: report in {args.json} ({report['seconds']:.0f} s)", file=sys.stderr)
    problems = [f"{m}/{c}" for m, entry in report["models"].items() for c, r in entry.get("configs", {}).items()
                if r.get("problem")]
    if problems:
        print(f"gpu_check: FAILED: {', '.join(problems)} (see {args.json})", file=sys.stderr)
    return 3 if "stopped" in report else 1 if problems else 0


def step(report: dict, text: str) -> None:
    report["steps"].append(text)
    print(f"gpu_check: {text}", file=sys.stderr, flush=True)


def check_model(name: str, folder: Path, args: argparse.Namespace, report: dict) -> dict:
    from edgeseg.runtime import Model

    files = {"plain": folder / "model.onnx",
             "friendly": export_friendly(folder / "model.keras", args.work / f"{name}.cuda_friendly.onnx", report),
             "int8": calibrate_int8(name, files_dir=args.work, report=report)}
    images = load_frames(name, args.frames)
    expected = outputs(Model(files["plain"], provider="cpu", engine="onnxruntime"), images)
    step(report, f"{name}: CPU FP32 reference on {len(images)} frames done")
    if not args.dry_run:
        require_gpu(report, f"{name}: strict CUDA (plain and --cuda-friendly), CUDA fp16, TensorRT fp16/int8, "
                            "verify --engine tensorrt and fps")
    result: dict = {"files": {k: str(v) for k, v in files.items()}, "configs": {}}
    for label, which, provider, precision in CONFIGS:
        result["configs"][label] = run_config(files[which], images, expected, provider=provider, precision=precision,
                                              dry_run=args.dry_run, label=f"{name} {label}", report=report)
    result["verify"] = {
        "fp16": verify(folder / "model.keras", files["friendly"], "fp16", args, report, name),
        "int8": verify(folder / "model.keras", files["int8"], "int8", args, report, name),
    }
    return result


def export_friendly(keras: Path, out: Path, report: dict) -> Path:
    from edgeseg.export import GraphOptions, export_model

    if not out.exists():
        result = export_model(keras, out, graph=GraphOptions(cuda_friendly=True))
        step(report, f"exported {out.name} ({getattr(result, 'rewritten', '?')} transposed conv(s) rewritten)")
    return out


def calibrate_int8(name: str, *, files_dir: Path, report: dict) -> Path:
    """The INT8 file with its TensorRT table beside it (what --provider tensorrt runs it by)."""
    from edgeseg.calibration import CalibrateOptions, calibrate

    out, table = files_dir / f"{name}.int8.onnx", files_dir / f"{name}.trt"
    if not out.exists():
        result = calibrate(MODELS[name] / "model.onnx", CALIBRATION[name], output=out,
                           options=CalibrateOptions(trt_table=table, samples=32, timing_rounds=2, sqnr_frames=2))
        step(report, f"calibrated {out.name} ({result['target']['rule'].split(':')[0]}), TensorRT table in {table.name}/")
    return out


def load_frames(name: str, count: int) -> list[np.ndarray]:
    from edgeseg.runtime import open_source

    if FRAMES[name].suffix == ".npz":
        from edgeseg.runtime.datasets import load_mnist

        return list(load_mnist(FRAMES[name]).images[:count])
    return [f.image for f in open_source(str(FRAMES[name]), max_frames=count) if f.ok]


def outputs(model, images: list[np.ndarray]) -> list[np.ndarray]:
    results = model.predict_batch(images)
    return [r.mask if hasattr(r, "mask") else r.reconstruction for r in results]


def require_gpu(report: dict, what: str) -> None:
    import onnxruntime as ort

    from edgeseg.runtime.extras import install_hint

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise GpuNeeded(f"{what} need a GPU: this onnxruntime has {', '.join(providers)} "
                        f"(install onnxruntime-gpu and TensorRT on a CUDA machine: {install_hint('gpu')})")
    step(report, f"CUDA provider present ({', '.join(providers)}); next: {what}")


def run_config(path: Path, images: list[np.ndarray], expected: list[np.ndarray], *, provider: str, precision: str,
               dry_run: bool, label: str, report: dict) -> dict:
    from edgeseg.runtime import EdgesegError, Model, make_session
    from edgeseg.runtime._tensorrt import tensorrt_plan

    entry: dict = {"file": path.name, "provider": provider, "precision": precision}
    int8 = "int8" in path.name
    if provider == "tensorrt":  # the plan (precision flags, INT8 by table or by its own scales) needs no GPU
        plan = tensorrt_plan(path, fp16=precision == "fp16")
        entry["tensorrt"] = {"precision": plan.precision, "int8": plan.int8, "table": plan.table,
                             "options": {k: v for k, v in plan.options.items() if k != "trt_engine_cache_path"}}
        if dry_run and plan.int8 == "table":  # the float graph TensorRT would get, run on the CPU
            path = path.with_name(f"{path.stem}.tensorrt-input.onnx")
            path.write_bytes(plan.model)
    if dry_run:
        entry["stand_in"] = "cpu stand-in (fp32): plumbing only, not a GPU figure"
        provider, precision = "cpu", "auto"
    else:
        try:  # strict: session creation fails if any node would run on the CPU
            make_session(path, provider=provider, strict=True, fp16=precision == "fp16")
            entry["strict"] = "ok: every node on the GPU"
        except EdgesegError as error:
            entry["strict"] = f"failed: {error}"
            entry["problem"] = "a node falls back to the CPU"
    try:
        model = Model(path, engine="onnxruntime", provider=provider, precision=precision)
    except EdgesegError as error:
        entry.update(problem=f"cannot run: {error}")
        step(report, f"{label}: cannot run: {error}")
        return entry
    entry["providers"] = list(model.providers)
    got = outputs(model, images)
    # Reconstructions (autoencoders): pixels within 1 8-bit level of FP32's, 2 for fp16, 8 for int8.
    entry["levels"] = 0 if model.kind == "segmentation" else 8 if int8 else 2 if precision == "fp16" else 1
    entry["agreement"] = agreement(got, expected, levels=entry["levels"])
    model.warmup(1)
    start, rounds = time.perf_counter(), 0
    while time.perf_counter() - start < SECONDS_PER_FPS:
        outputs(model, images)
        rounds += 1
    entry["fps"] = rounds * len(images) / (time.perf_counter() - start)
    bar = 0.999 if not int8 and entry["precision"] != "fp16" else 0.99
    if entry["agreement"] < bar:
        entry["problem"] = f"agreement {entry['agreement']:.4%} below {bar:.1%}"
    step(report, f"{label}: {entry.get('strict', entry.get('stand_in'))}; agreement {entry['agreement']:.4%}; "
                 f"{entry['fps']:.1f} fps on {', '.join(entry['providers'])}")
    return entry


def agreement(got: list[np.ndarray], expected: list[np.ndarray], *, levels: int) -> float:
    """Share of pixels within ``levels`` of the reference: 0 for class-id masks (equal ids), a few 8-bit levels
    for reconstructions (a gray one is 2-D like a mask: the caller says which)."""
    same = [np.abs(a.astype(np.int16) - b.astype(np.int16)) <= levels for a, b in zip(got, expected)]
    return float(np.mean([s.mean() for s in same]))


def verify(keras: Path, onnx_path: Path, precision: str, args: argparse.Namespace, report: dict, name: str) -> dict:
    from edgeseg.cli import main as edgeseg

    engine = ["--engine", "onnxruntime", "--precision", "int8" if precision == "int8" else "fp32"] if args.dry_run \
        else ["--engine", "tensorrt", "--precision", precision]
    out = args.work / f"{name}.verify.{precision}.json"
    with contextlib.redirect_stdout(io.StringIO()):  # its table is in the report; the steps say the verdict
        code = edgeseg(["-q", "verify", str(keras), str(onnx_path), "--random", "2", "--report", str(out), *engine])
    result = json.loads(out.read_text()) if out.exists() else {}
    entry = {"exit_code": code, "ok": result.get("ok"), "first_failure": result.get("first_failure"),
             "engine": result.get("engine"), "error": result.get("error"), "report": str(out)}
    step(report, f"{name}: verify {' '.join(engine)}: exit {code}"
                 + (f", first failure {entry['first_failure']}" if entry["first_failure"] else "")
                 + (f" ({entry['error']})" if entry["error"] else ""))
    return entry


def _machine() -> dict:
    import platform

    import onnxruntime as ort

    return {"python": platform.python_version(), "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers(), "cpu": platform.processor() or platform.machine()}


if __name__ == "__main__":
    sys.exit(main())
