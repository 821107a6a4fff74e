"""Which configuration `edgeseg-fast` should be: candidates end to end through ``segment``, interleaved.

Each candidate is ``(model file, engine, precision, batch, threads)`` run through
``edgeseg.runtime.segment(..., outputs=("masks",))`` on the same frames; its masks are compared
with a reference run's (Keras FP32 when --keras is given, via the bench worker, else onnxruntime FP32).
The fastest candidate with agreement >= --min-agreement is the choice (``cli/_bench_worker.py``'s
``FAST`` records it).

    python benchmarks/fast_candidates.py --model /tmp/benchx/fcn8.onnx --int8 /tmp/benchx/fcn8.int8.onnx \
        --keras /tmp/benchx/fcn8.keras --source /tmp/benchx/video.mp4 --frames 20 --json fast.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from edgeseg.bench import machine_info, mask_agreement, run_worker


def candidates(model: str, int8: str | None) -> list[dict]:
    found = []
    for label, path in (("fp32-file", model), ("int8-file", int8)):
        if not path:
            continue
        for batch in (1, 2, 4):
            found.append({"name": f"openvino {label} b{batch}", "model": path, "engine": "openvino",
                          "precision": "auto", "batch": batch, "threads": None})
        found.append({"name": f"openvino {label} b4 1 thread", "model": path, "engine": "openvino",
                      "precision": "auto", "batch": 4, "threads": 1})
    found.append({"name": "onnxruntime int8-file b1", "model": int8, "engine": "onnxruntime", "precision": "auto",
                  "batch": 1, "threads": None} if int8 else None)
    return [c for c in found if c]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="FP32 .onnx")
    parser.add_argument("--int8", default=None, help="INT8 QDQ .onnx")
    parser.add_argument("--keras", default=None, help=".keras reference (default: onnxruntime FP32)")
    parser.add_argument("--source", required=True, help="video or folder")
    parser.add_argument("--frames", type=int, default=20, help="frames per run (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--min-agreement", type=float, default=0.99, help="agreement bar (default 0.99)")
    parser.add_argument("--json", required=True, help="write the results here")
    args = parser.parse_args()
    from edgeseg.runtime import segment

    work = Path(tempfile.mkdtemp(prefix="fast-candidates-"))
    job = {"model": args.model, "keras": args.keras, "int8": args.int8, "source": args.source,
           "frames": args.frames, "threads": None}
    reference_runner = "keras-call" if args.keras else "ort-plain"
    reference = run_worker({**job, "runner": reference_runner}, work / "reference")
    found = candidates(args.model, args.int8)
    fps: dict[str, list[float]] = {c["name"]: [] for c in found}
    infer: dict[str, list[float]] = {c["name"]: [] for c in found}
    agreement: dict[str, float | None] = {}
    for round_ in range(args.rounds):
        for c in found:
            out = work / f"{round_}-{c['name'].replace(' ', '_')}"
            summary = segment(args.source, model=c["model"], engine=c["engine"], precision=c["precision"],
                              threads=c["threads"], batch=c["batch"], max_frames=args.frames, out=out,
                              outputs=("masks",))
            fps[c["name"]].append(summary["fps"])
            infer[c["name"]].append(summary["infer_fps"])
            agreement[c["name"]] = mask_agreement(out / "masks", Path(reference["masks"]))
            print(f"{c['name']:<32} {summary['fps']:7.2f} fps  infer {summary['infer_fps']:7.2f}  "
                  f"agree {agreement[c['name']]:.4%}", flush=True)
    rows = [{**c, "fps": statistics.median(fps[c["name"]]), "fps_all": fps[c["name"]],
             "infer_fps": statistics.median(infer[c["name"]]), "agreement": agreement[c["name"]]} for c in found]
    eligible = [r for r in rows if (r["agreement"] or 0) >= args.min_agreement]
    choice = max(eligible, key=lambda r: r["fps"]) if eligible else None
    report = {"machine": machine_info(), "reference": reference_runner, "frames": args.frames,
              "rounds": args.rounds, "min_agreement": args.min_agreement, "candidates": rows,
              "choice": choice and choice["name"], "load_average_end": list(os.getloadavg())}
    Path(args.json).write_text(json.dumps(report, indent=2))
    print("choice:", report["choice"])


if __name__ == "__main__":
    main()
