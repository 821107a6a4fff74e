"""Peak memory and time of exporting the full-size FCN-8 (head 4096, 134M parameters) to ONNX.

Each export runs in a fresh Python process, so its peak resident memory (``ru_maxrss`` of that
child, as the parent reads it after the child exits) counts only that export. The child builds
FCN-8 classic at 224x224 with random weights, converts it (``convert_lowmem`` or, with
``--plain``, ``tf2onnx.convert.from_keras``), writes the .onnx into a temporary directory, then
checks onnxruntime's output against Keras on one random input. A sampler thread in the child
records the peak of each phase, which shows where the memory goes.

The plain path needs far more memory than most machines have: the parent kills the child when
its resident memory passes ``--kill-above-gb`` (default 12) and reports that, so a comparison run
cannot take a shared machine down.

    python benchmarks/export_memory.py --json export_memory.json            # convert_lowmem
    python benchmarks/export_memory.py --plain --json export_memory_plain.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def build_fcn8_classic(*, size: int, classes: int, head_width: int):
    """FCN-8s classic: VGG16 conv blocks, conv6 7x7 / conv7 1x1 head, three upsampling steps.

    Written here so the benchmark does not wait for the real builder; the layers and shapes are
    the classic ones (Long et al.): VALID transposed convolutions followed by Cropping2D.
    """
    import keras
    from keras import layers

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    pool3 = vgg.get_layer("block3_pool").output  # size/8
    pool4 = vgg.get_layer("block4_pool").output  # size/16
    x = layers.Conv2D(head_width, 7, padding="same", activation="relu", name="conv6")(vgg.output)
    x = layers.Conv2D(head_width, 1, activation="relu", name="conv7")(x)
    x = layers.Conv2D(classes, 1, name="score")(x)
    x = layers.Conv2DTranspose(classes, 4, strides=2, use_bias=False, name="upscore2")(x)
    x = layers.Cropping2D(1, name="upscore2_crop")(x)
    x = layers.Add(name="fuse_pool4")([x, layers.Conv2D(classes, 1, name="score_pool4")(pool4)])
    x = layers.Conv2DTranspose(classes, 4, strides=2, use_bias=False, name="upscore4")(x)
    x = layers.Cropping2D(1, name="upscore4_crop")(x)
    x = layers.Add(name="fuse_pool3")([x, layers.Conv2D(classes, 1, name="score_pool3")(pool3)])
    x = layers.Conv2DTranspose(classes, 8, strides=8, use_bias=False, name="upscore8")(x)
    outputs = layers.Activation("softmax", name="softmax")(x)
    return keras.Model(vgg.input, outputs, name="fcn8_classic")


class _PeakSampler:
    """Samples this process's resident memory every few milliseconds; keeps the peak per phase."""

    def __init__(self, *, record: Path | None, interval_s: float = 0.01):
        import psutil

        self._record = record

        self._process = psutil.Process()
        self._interval_s = interval_s
        self._phase = "start"
        self.peaks_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def phase(self, name: str) -> None:
        self._sample()
        self._phase = name
        self._sample()

    def _sample(self) -> None:
        rss_mb = self._process.memory_info().rss / 2**20
        self.peaks_mb[self._phase] = round(max(self.peaks_mb.get(self._phase, 0.0), rss_mb), 1)

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(self._interval_s):
            self._sample()
            ticks += 1
            if self._record is not None and ticks % 20 == 0:
                # The parent may kill this process for memory; the record says how far it got.
                self._record.write_text(json.dumps(self.peaks_mb))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _build(args: argparse.Namespace):
    """The project's builder once it has landed (branch ``train``), else the copy above."""
    try:
        from edgeseg.export import build_model
    except ImportError:
        model = build_fcn8_classic(size=args.size, classes=args.classes, head_width=args.head_width)
        return model, "benchmarks/export_memory.py:build_fcn8_classic"
    model = build_model("fcn8-classic", classes=args.classes, input_size=args.size, head_width=args.head_width)
    return model, "edgeseg.export.build_model('fcn8-classic')"


def _mark_tf2onnx_phases(sampler: _PeakSampler) -> None:
    """Name the phases inside tf2onnx's plain path (instrumentation only; behaviour unchanged)."""
    import tf2onnx.convert
    import tf2onnx.graph
    import tf2onnx.optimizer
    import tf2onnx.tf_loader

    def marked(owner, attribute: str, phase: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            sampler.phase(phase)
            return original(*args, **kwargs)

        setattr(owner, attribute, wrapper)

    marked(tf2onnx.tf_loader, "from_trackable", "convert: freeze variables into constants")
    marked(tf2onnx.tf_loader, "tf_optimize", "convert: grappler")
    marked(tf2onnx.convert, "process_tf_graph", "convert: tf2onnx graph from GraphDef")
    marked(tf2onnx.optimizer, "optimize_graph", "convert: tf2onnx optimizers")
    marked(tf2onnx.graph.Graph, "make_model", "convert: make ModelProto")


def _child(args: argparse.Namespace) -> dict:
    import numpy as np

    sampler = _PeakSampler(record=args.phase_record)
    sampler.phase("import")
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)

    sampler.phase("build")
    model, builder = _build(args)
    parameters = int(model.count_params())
    image = np.random.default_rng(args.seed).random((1, args.size, args.size, 3), dtype=np.float32)
    expected = model(image, training=False).numpy()
    spec = [tf.TensorSpec((None, args.size, args.size, 3), tf.float32, name="image")]

    sampler.phase("convert")
    started = time.perf_counter()
    if args.plain:
        import tf2onnx

        _mark_tf2onnx_phases(sampler)
        proto = tf2onnx.convert.from_keras(model, input_signature=spec, opset=args.opset)[0]
    else:
        from edgeseg.export import convert_lowmem

        proto = convert_lowmem(model, spec, opset=args.opset)
    convert_s = time.perf_counter() - started

    sampler.phase("save")
    with tempfile.TemporaryDirectory(prefix="export_memory-") as folder:
        path = Path(folder) / "fcn8_classic.onnx"
        onnx.save(proto, str(path))
        export_s = time.perf_counter() - started
        file_mb = path.stat().st_size / 2**20
        del proto
        export_peak_mb = max(sampler.peaks_mb.values())

        sampler.phase("check")
        # One intra-op thread: the check is about numbers, and the machine is shared.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: image})[0]
    sampler.stop()
    return {
        "path": "plain" if args.plain else "lowmem",
        "builder": builder,
        "parameters": parameters,
        "weights_mb": round(parameters * 4 / 2**20, 1),
        "file_mb": round(file_mb, 1),
        "convert_s": round(convert_s, 2),
        "export_s": round(export_s, 2),
        "export_peak_rss_mb": export_peak_mb,
        "phase_peak_rss_mb": sampler.peaks_mb,
        "check": {
            "max_abs_err": float(np.abs(got - expected).max()),
            "argmax_agreement": float((got.argmax(-1) == expected.argmax(-1)).mean()),
        },
    }


def _parent(args: argparse.Namespace) -> dict:
    import psutil

    record = Path(tempfile.mkdtemp(prefix="export_memory-")) / "phases.json"
    command = [sys.executable, __file__, "--child", "--phase-record", str(record), *sys.argv[1:]]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, stdout=output, env=environment)
        child = psutil.Process(process.pid)
        killed = False
        while process.poll() is None:
            try:
                if child.memory_info().rss > args.kill_above_gb * 2**30:
                    process.kill()
                    killed = True
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)
        wall_s = time.perf_counter() - started
        output.seek(0)
        text = output.read()
    # ru_maxrss of the children we waited for: the child's peak resident memory, in KiB on Linux.
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if process.returncode == 0:
        result = json.loads(text.strip().splitlines()[-1])
    else:
        result = {"path": "plain" if args.plain else "lowmem"}
        if record.exists():
            result["phase_peak_rss_mb"] = json.loads(record.read_text())
    if record.exists():
        record.unlink()
    record.parent.rmdir()
    result.update(
        {
            "ok": process.returncode == 0,
            "returncode": process.returncode,
            "killed_above_gb": args.kill_above_gb if killed else None,
            "peak_rss_mb": round(peak_mb, 1),
            "process_wall_s": round(wall_s, 2),
            "settings": {
                "size": args.size, "classes": args.classes, "head_width": args.head_width,
                "opset": args.opset, "threads": args.threads, "seed": args.seed,
            },
        }
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", action="store_true", help="measure tf2onnx.convert.from_keras instead of convert_lowmem")
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file (default: print only)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--classes", type=int, default=2, help="output classes (default 2, as the project's builder)")
    parser.add_argument("--head-width", type=int, default=4096, help="conv6/conv7 width (default 4096: 134M parameters)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow/onnxruntime threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (default 0)")
    parser.add_argument("--kill-above-gb", type=float, default=12.0,
                        help="kill the export when its resident memory passes this (default 12)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase-record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    result = _parent(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
