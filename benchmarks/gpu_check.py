"""The whole GPU check in one run (issue 14 item 4); ``benchmarks/gpu_check.sh`` runs it under a 5-minute limit.

For each shipped model (samples/models/*/model.onnx): a ``--cuda-friendly`` export next to it (needs
TensorFlow), FP32 CPU reference outputs on the sample frames, then on the GPU: a strict CUDA session
(no node may fall back to the CPU) of the plain and the CUDA-friendly file, the FP16 path, agreement
of each with the CPU FP32 reference, and fps. Every step that needs a GPU says so and the script stops
there, saying which step, when this onnxruntime has no CUDA provider. Results go to --json.

    python benchmarks/gpu_check.py --json benchmarks/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"fcn8": ROOT / "samples/models/fcn8", "cae": ROOT / "samples/models/cae"}
FRAMES = {"fcn8": ROOT / "samples/scenes.avi", "cae": ROOT / "samples/digits.npz"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--work", type=Path, default=Path("gpu_check_work"))
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args()
    from edgeseg.runtime import write_json_atomic

    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"steps": [], "models": {}}
    try:
        for name, folder in MODELS.items():
            report["models"][name] = check_model(name, folder, args, report)
    except GpuNeeded as stop:
        report["stopped"] = str(stop)
        print(f"gpu_check: STOPPED HERE: {stop}", file=sys.stderr)
    write_json_atomic(args.json, report)
    print(f"gpu_check: report in {args.json}", file=sys.stderr)
    return 0 if "stopped" not in report else 3


class GpuNeeded(Exception):
    """The next step needs a GPU and this machine's onnxruntime has none."""


def step(report: dict, text: str) -> None:
    report["steps"].append(text)
    print(f"gpu_check: {text}", file=sys.stderr, flush=True)


def check_model(name: str, folder: Path, args: argparse.Namespace, report: dict) -> dict:
    from edgeseg.runtime import Model

    plain = folder / "model.onnx"
    friendly = export_friendly(folder / "model.keras", args.work / f"{name}.cuda_friendly.onnx", report)
    images = load_frames(name, args.frames)
    reference = Model(plain, provider="cpu")
    expected = outputs(reference, images)
    step(report, f"{name}: CPU FP32 reference on {len(images)} frames done")
    require_gpu(report, f"{name}: strict CUDA sessions, FP16 and fps")
    result = {}
    for label, path in (("plain", plain), ("cuda_friendly", friendly)):
        for fp16 in (False, True):
            result[f"{label}{'_fp16' if fp16 else ''}"] = gpu_run(path, images, expected, fp16=fp16, report=report)
    return result


def export_friendly(keras: Path, out: Path, report: dict) -> Path:
    from edgeseg.export import export_model

    if not out.exists():
        result = export_model(keras, out, cuda_friendly=True)
        step(report, f"exported {out.name} ({getattr(result, 'rewritten', '?')} transposed conv(s) rewritten)")
    return out


def load_frames(name: str, count: int) -> list[np.ndarray]:
    from edgeseg.runtime import open_source

    return [f.image for f in open_source(str(FRAMES[name]), max_frames=count) if f.ok]


def outputs(model, images: list[np.ndarray]) -> list[np.ndarray]:
    results = model.predict_batch(images)
    return [r.mask if hasattr(r, "mask") else r.reconstruction for r in results]


def require_gpu(report: dict, what: str) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise GpuNeeded(f"{what} need a GPU: this onnxruntime has {ort.get_available_providers()} "
                        "(install onnxruntime-gpu on a CUDA machine: pip install 'edgeseg[gpu]')")
    step(report, f"CUDA provider present; next: {what}")


def gpu_run(path: Path, images: list[np.ndarray], expected: list[np.ndarray], *, fp16: bool, report: dict) -> dict:
    from edgeseg.runtime import EdgesegError, Model, make_session

    entry: dict = {"file": path.name, "fp16": fp16}
    try:
        make_session(path, provider="cuda", strict=True, fp16=fp16)  # fails if any node would fall back
        entry["strict"] = "ok: every node on the GPU"
    except EdgesegError as error:
        entry["strict"] = f"failed: {error}"
    model = Model(path, provider="cuda")
    if fp16:  # the FP16 session behind the same pre/post-processing
        model.session = make_session(path, provider="cuda", fp16=True)
    got = outputs(model, images)
    entry["agreement"] = float(np.mean([np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)) <= (0 if a.ndim == 2 else 1))
                                        for a, b in zip(got, expected)]))
    start = time.perf_counter()
    rounds = 0
    while time.perf_counter() - start < 3.0:
        outputs(model, images)
        rounds += 1
    entry["fps"] = rounds * len(images) / (time.perf_counter() - start)
    step(report, f"{path.name} fp16={fp16}: strict {entry['strict']}; agreement {entry['agreement']:.4%}; "
                 f"{entry['fps']:.1f} fps")
    return entry


if __name__ == "__main__":
    sys.exit(main())
