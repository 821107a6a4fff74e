"""Throughput against input size (224/320/512) and batch size, inference only, FCN-8 classic.

Builds an untrained FCN-8 classic per size (speed does not depend on the weights), exports it
with tf2onnx, and times a default onnxruntime session and OpenVINO at its defaults on random
inputs, rounds interleaved. Plot the result with ``plot_bench.py --sizes``.

    python benchmarks/sweep_sizes.py --head-width 1024 --sizes 224,320,512 --batches 1,4 \
        --work /tmp/sizes --out sizes.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-width", type=int, default=1024, help="conv6/conv7 width (default 1024)")
    parser.add_argument("--sizes", default="224,320,512", help="input sides (default 224,320,512)")
    parser.add_argument("--batches", default="1,4", help="batch sizes (default 1,4)")
    parser.add_argument("--images", type=int, default=8, help="images per timed pass (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the exported models")
    parser.add_argument("--out", type=Path, required=True, help="write the results JSON here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    models = {size: export(size, args.head_width, args.work) for size in sizes}

    import onnxruntime as ort
    import openvino as ov

    runs = {}
    for size, path in models.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        compiled = ov.Core().compile_model(str(path), "CPU")
        request = compiled.create_infer_request()
        engines = {"onnxruntime": lambda x, s=session: s.run(None, {"image": x}),
                   "openvino": lambda x, r=request: r.infer({0: x})}
        for engine, run in engines.items():
            for batch in batches:
                runs[(engine, size, batch)] = run
    inputs = {size: np.random.default_rng(0).random((args.images, size, size, 3), dtype=np.float32) for size in sizes}
    fps: dict[tuple, list[float]] = {key: [] for key in runs}
    for key, run in runs.items():  # warm-up
        run(inputs[key[1]][: key[2]])
    for round_ in range(args.rounds):
        for (engine, size, batch), run in runs.items():
            x = inputs[size]
            start = time.perf_counter()
            for i in range(0, len(x), batch):
                run(x[i:i + batch])
            fps[(engine, size, batch)].append(len(x) / (time.perf_counter() - start))
            print(f"round {round_} {engine} {size} batch {batch}: {fps[(engine, size, batch)][-1]:.2f} fps", flush=True)
    results = [{"engine": e, "size": s, "batch": b, "fps": statistics.median(v), "fps_all": v}
               for (e, s, b), v in fps.items()]
    args.out.write_text(json.dumps({"load_average": os.getloadavg(), "head_width": args.head_width,
                                    "results": results}, indent=2))
    return 0


def export(size: int, head_width: int, work: Path) -> Path:
    path = work / f"fcn8_{size}_h{head_width}.onnx"
    if path.exists():
        return path
    import tensorflow as tf
    import tf2onnx
    import onnx

    from edgeseg.export import build_model

    model = build_model("fcn8-classic", classes=2, input_size=size, head_width=head_width)
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def forward(image):
        return {"softmax": model(image, training=False)}

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=17)
    old = proto.graph.input[0].name
    proto.graph.input[0].name = "image"
    for node in proto.graph.node:
        node.input[:] = ["image" if n == old else n for n in node.input]
    onnx.save(proto, str(path))
    return path


if __name__ == "__main__":
    sys.exit(main())
