"""How much of edgeseg's pipeline hides behind inference: inference-only fps against end-to-end fps.

On a generated video (textured shapes moving over a textured background, H.264 where available)
and a model of realistic cost (a small conv net built with onnx.helper, or any exported model
via --model), for each intra-op thread count asked for:

- ``infer_fps``: ``Model.run`` alone on frames preprocessed beforehand (batch 1, after a warm-up);
- ``fps``: ``edgeseg.runtime.segment`` end to end (decode, preprocess, infer, post-process,
  palette PNG masks, overlay.mp4, frames.jsonl), with its per-stage milliseconds.

    python benchmarks/runtime_pipeline.py --json bench-runtime.json
    python benchmarks/runtime_pipeline.py --model fcn8.onnx --frames 100 --threads 1,2

Run it on a quiet machine; the JSON records the machine and every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime import Contract, InputSpec, Model, OutputSpec, VideoSink, preprocess, segment, write_contract


def make_video(path: Path, *, frames: int, width: int, height: int, fps: float = 25.0, seed: int = 0) -> str:
    """Textured discs and boxes drifting over a noisy gradient; returns the codec that wrote it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.dstack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 90)]).astype(np.uint8)
    background = cv2.add(background, rng.integers(0, 40, background.shape, dtype=np.uint8))
    shapes = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-4, 4), rng.uniform(-3, 3),
               int(rng.integers(12, 40)), tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in range(6)]
    texture = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    with VideoSink(path, fps=fps) as video:
        for t in range(frames):
            frame = background.copy()
            for i, (x, y, dx, dy, r, colour) in enumerate(shapes):
                cx, cy = int(x + dx * t) % width, int(y + dy * t) % height
                if i % 2:
                    cv2.circle(frame, (cx, cy), r, colour, -1)
                else:
                    cv2.rectangle(frame, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
            video.write(cv2.add(frame, texture))
    return video.codec


def make_model(path: Path, *, size: int = 224, classes: int = 5, width: int = 64) -> None:
    """An FCN-like conv net: 3 stride-2 3x3 convs, two 3x3 convs at 1/8, 1x1 head, x8 resize, softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [helper.make_node("Transpose", ["image"], ["x0"], perm=[0, 3, 1, 2])], []
    layers = [(3, width // 2, 2), (width // 2, width, 2), (width, 2 * width, 2), (2 * width, 2 * width, 1),
              (2 * width, 2 * width, 1)]
    current = "x0"
    for i, (cin, cout, stride) in enumerate(layers):
        w = rng.normal(0, (2.0 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        current = f"r{i}"
    head = rng.normal(0, 0.1, (classes, 2 * width, 1, 1)).astype(np.float32)
    inits += [numpy_helper.from_array(head, "head"),
              numpy_helper.from_array(np.array([1, 1, 8, 8], np.float32), "scales")]
    nodes += [helper.make_node("Conv", [current, "head"], ["logits"]),
              helper.make_node("Resize", ["logits", "", "scales"], ["up"], mode="linear"),
              helper.make_node("Softmax", ["up"], ["probs"], axis=1),
              helper.make_node("Transpose", ["probs"], ["scores"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(
        nodes, "fcn_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", size, size, classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_contract(model, Contract(
        kind="segmentation",
        input=InputSpec(height=size, width=size, channels=3, color="RGB", mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225)),
        output=OutputSpec(name="scores", activation="softmax", classes=tuple(f"class{i}" for i in range(classes)))))
    onnx.save(model, str(path))


def infer_only(model: Model, video: Path, frames: int, *, warmup: int = 5) -> dict:
    capture = cv2.VideoCapture(str(video))
    batches = []
    while len(batches) < frames:
        ok, image = capture.read()
        if not ok:
            break
        batches.append(preprocess(image, model.contract.input)[0])
    capture.release()
    for batch in batches[:warmup]:
        model.run(batch)
    started = time.perf_counter()
    for batch in batches:
        model.run(batch)
    seconds = time.perf_counter() - started
    return {"infer_fps": round(len(batches) / seconds, 2), "infer_ms": round(1000 * seconds / len(batches), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an exported .onnx model (default: a generated FCN-like conv net)")
    parser.add_argument("--source", help="a video file (default: a generated one)")
    parser.add_argument("--frames", type=int, default=300, help="frames of the generated video (default: 300)")
    parser.add_argument("--size", default="320x240", help="generated video WxH (default: 320x240)")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts to compare (default: 1,2)")
    parser.add_argument("--batch", type=int, default=1, help="frames per inference call end to end (default: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per thread count; medians reported (default: 3)")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as tmp:
        tmp = Path(tmp)
        model_path = Path(args.model) if args.model else tmp / "fcn_like.onnx"
        if not args.model:
            make_model(model_path)
        video = Path(args.source) if args.source else tmp / "scene.mp4"
        codec = None
        if not args.source:
            width, height = (int(v) for v in args.size.lower().split("x"))
            codec = make_video(video, frames=args.frames, width=width, height=height)
        report = {
            "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                        "opencv": cv2.__version__, "load_avg": list(os.getloadavg())},
            "model": str(args.model or "generated fcn_like (5 conv 3x3, width 64, 224x224)"),
            "source": str(args.source or f"generated {args.size} x {args.frames} frames ({codec})"),
            "batch": args.batch,
            "threads": {},
        }
        counts = [int(t) for t in args.threads.split(",")]
        runs: dict[int, list[dict]] = {t: [] for t in counts}
        models = {t: Model(model_path, provider="cpu", threads=t) for t in counts}
        # Thread counts alternate within each repeat, so a shared machine's changing load hits them alike.
        for repeat in range(args.repeat):
            for threads in counts:
                model = models[threads]
                infer = infer_only(model, video, min(args.frames, 150))
                summary = segment(video, model=model, out=tmp / f"out{threads}_{repeat}", batch=args.batch)
                runs[threads].append({**infer, "fps": summary["fps"], "stage_ms": summary["stage_ms"],
                                      "frames": summary["frames"],
                                      "video_codec": next(iter(summary["sources"].values()))["outputs"].get("video_codec")})
        for threads in counts:
            done = runs[threads]
            infer_fps = statistics.median(r["infer_fps"] for r in done)
            fps = statistics.median(r["fps"] for r in done)
            stage_ms = {k: round(statistics.median(r["stage_ms"][k] for r in done), 3) for k in done[0]["stage_ms"]}
            figures = {"infer_fps": infer_fps, "fps": fps, "hidden": round(fps / infer_fps, 3), "stage_ms": stage_ms,
                       "frames": done[0]["frames"], "video_codec": done[0]["video_codec"], "runs": done}
            report["threads"][threads] = figures
            print(f"threads={threads}: inference only {infer_fps:.1f} fps, end to end {fps:.1f} fps "
                  f"({100 * figures['hidden']:.0f}%), median stage ms {stage_ms}")
        report["machine"]["load_avg_after"] = list(os.getloadavg())
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
