"""The CAE end to end: ``edgeseg segment`` against a plain onnxruntime loop, side by side in one run.

2,000 generated digits (``edgeseg.sampledata.make_digits``) are written as PNG files; both ways
read each file, preprocess it, run the committed CAE, compute the reconstruction, error and score,
and write the reconstruction PNG and a score record:

- ``ort-plain``: the loop a user writes: ``cv2.imread`` -> ``/255`` -> ``session.run`` (batch 1) ->
  reconstruction and mean absolute error -> ``cv2.imwrite`` + one JSON line;
- ``edgeseg``: ``segment(folder, outputs=("reconstruction", "jsonl"))`` at its defaults (autoencoders:
  batch 64), and ``edgeseg-b1`` at batch 1, to show what the batch buys.

Runs are interleaved (plain, edgeseg, b1, plain, ...) so a busy neighbour costs each the same; the figure
is the median of ``--repeats``. Ratios are against ort-plain.

    python benchmarks/cae_pipeline.py --json benchmarks/results/cae_pipeline_2vcpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime import SegmentOptions, default_threads, make_session, segment
from edgeseg.sampledata import make_digits

MODEL = Path(__file__).resolve().parent.parent / "samples" / "models" / "cae" / "model.onnx"


def plain_loop(paths: list[Path], model: Path, out: Path, threads: int) -> float:
    """The onnxruntime loop without edgeseg; returns images per second."""
    session = make_session(model, provider="cpu", threads=threads)
    name = session.get_inputs()[0].name
    (out / "reconstruction").mkdir(parents=True)
    started = time.perf_counter()
    with open(out / "scores.jsonl", "w") as records:
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            tensor = image.astype(np.float32)[None, :, :, None] / 255.0
            recon = session.run(None, {name: tensor})[0]
            score = float(np.abs(tensor - recon).mean())
            cv2.imwrite(str(out / "reconstruction" / path.name), (np.clip(recon[0, :, :, 0], 0, 1) * 255).astype(np.uint8))
            records.write(json.dumps({"name": path.stem, "score": round(score, 6)}) + "\n")
    return len(paths) / (time.perf_counter() - started)


def edgeseg_run(folder: Path, model: Path, out: Path, threads: int, batch: int | None) -> float:
    options = SegmentOptions(outputs=("reconstruction", "jsonl"), batch=batch, threads=threads, provider="cpu")
    started = time.perf_counter()
    summary = segment(folder, model=model, out=out, options=options)
    seconds = time.perf_counter() - started  # the whole call, model load included, like the plain loop's session
    assert summary["frames"] == len(list(folder.iterdir())), summary
    return summary["frames"] / seconds


def machine() -> dict:
    info = {"platform": platform.platform(), "python": sys.version.split()[0]}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags"))
        info["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
        info["vcpus"] = text.count("processor\t:")
    except (OSError, StopIteration):
        pass
    with open("/proc/loadavg") as handle:
        info["loadavg_at_start"] = handle.read().split()[:3]
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for both (default: edgeseg's)")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    threads = args.threads if args.threads is not None else default_threads()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "digits"
        folder.mkdir()
        images, _ = make_digits(args.images, seed=0)
        for i, image in enumerate(images):
            cv2.imwrite(str(folder / f"{i:05d}.png"), image)
        paths = sorted(folder.iterdir())
        runners = {"ort-plain": lambda out: plain_loop(paths, args.model, out, threads),
                   "edgeseg": lambda out: edgeseg_run(folder, args.model, out, threads, None),
                   "edgeseg-b1": lambda out: edgeseg_run(folder, args.model, out, threads, 1)}
        runs: dict[str, list[float]] = {name: [] for name in runners}
        for repeat in range(args.repeats):
            for name, run in runners.items():
                runs[name].append(run(Path(tmp) / f"{name}-{repeat}"))
    fps = {name: statistics.median(values) for name, values in runs.items()}
    result = {"machine": machine(), "images": args.images, "threads": threads, "model": str(args.model),
              "command": "python benchmarks/cae_pipeline.py " + " ".join(sys.argv[1:]),
              "note": "2-vCPU machine shared with other helpers' builds and tests while measured",
              "runners": {name: {"fps": round(fps[name], 1), "runs": [round(v, 1) for v in runs[name]],
                                 "vs_ort_plain": round(fps[name] / fps["ort-plain"], 3)} for name in runners}}
    for name, row in result["runners"].items():
        print(f"{name:<14}{row['fps']:>9.1f} img/s  {row['vs_ort_plain']:.2f}x ort-plain  runs {row['runs']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
