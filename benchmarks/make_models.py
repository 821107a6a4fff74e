"""Make the benchmark's inputs: an FCN-8 classic model (.keras, FP32 ONNX NHWC and NCHW, INT8 QDQ)
and a short real video, so every benchmark and experiment here runs on the same files.

The model is briefly trained on a folder of real images and masks (the ISBI membrane set in
``../shared/data/membrane`` by default) so that its masks mean something: agreement between
runners on an untrained network measures noise in near-tied logits, not the runners.

    python benchmarks/make_models.py --data ../shared/data/membrane --out /tmp/benchx \
        --head-width 1024 --input-size 224 --steps 40

Writes ``fcn8.keras``, ``fcn8.onnx`` (NHWC), ``fcn8.nchw.onnx``, ``fcn8.int8.onnx`` (QDQ, from
the NHWC file), ``fcn8.nchw.int8.onnx`` and ``video.mp4`` (the data's images, 640x480, 30 frames).
Needs the ``export`` extra (TensorFlow, tf2onnx) and onnxruntime's quantization tools.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import cv2
import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with images/ and masks/ (masks: 0 or 255)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--head-width", type=int, default=1024, help="conv6/conv7 width (default 1024)")
    parser.add_argument("--input-size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--steps", type=int, default=40, help="training steps of batch 4 (default 40)")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    parser.add_argument("--frames", type=int, default=30, help="frames in the video (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, masks = _load_pairs(Path(args.data), args.input_size)
    write_video(Path(args.data) / "images", out / "video.mp4", frames=args.frames)
    keras_path = out / "fcn8.keras"
    if not keras_path.exists():
        train_fcn8(images, masks, keras_path, head_width=args.head_width, input_size=args.input_size,
                   steps=args.steps, lr=args.lr, seed=args.seed)
    for nchw, name in ((False, "fcn8.onnx"), (True, "fcn8.nchw.onnx")):
        if not (out / name).exists():
            export_onnx(keras_path, out / name, nchw=nchw)
        int8 = out / name.replace(".onnx", ".int8.onnx")
        if not int8.exists():
            quantize_qdq(out / name, int8, images[:16])
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")
    return 0


def _load_pairs(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    names = sorted((folder / "images").iterdir())
    images = np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (size, size)) for p in names])
    masks = np.stack([
        cv2.resize(cv2.imread(str(folder / "masks" / p.name), cv2.IMREAD_GRAYSCALE), (size, size),
                   interpolation=cv2.INTER_NEAREST) > 127 for p in names
    ]).astype(np.int64)
    rgb = images[..., ::-1].astype(np.float32) / 255.0  # the contract below: RGB, scale 1/255
    return rgb, masks


def write_video(images: Path, path: Path, *, frames: int) -> None:
    """The folder's images as an mp4 (mp4v), 640x480, cycling until ``frames`` frames."""
    if path.exists():
        return
    names = sorted(images.iterdir())
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (640, 480))
    for i in range(frames):
        writer.write(cv2.resize(cv2.imread(str(names[i % len(names)]), cv2.IMREAD_COLOR), (640, 480)))
    writer.release()


def train_fcn8(images, masks, path: Path, *, head_width: int, input_size: int, steps: int, lr: float, seed: int) -> None:
    import keras

    from edgeseg.export import build_model, save_model

    keras.utils.set_random_seed(seed)
    model = build_model("fcn8-classic", classes=2, input_size=input_size, head_width=head_width)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    for step in range(steps):
        pick = rng.choice(len(images), 4, replace=False)
        loss = model.train_on_batch(images[pick], masks[pick])
        if step % 10 == 0:
            print(f"step {step} loss {float(np.ravel(loss)[0]):.4f}", flush=True)
    # Saved uncompiled: the benchmark loads this file, and Adam's moments would triple its size.
    plain = build_model("fcn8-classic", classes=2, input_size=input_size, head_width=head_width)
    plain.set_weights(model.get_weights())
    save_model(plain, path, _contract().to_dict())


def _contract():
    from edgeseg.runtime import Contract, InputSpec, OutputSpec

    return Contract(
        kind="segmentation",
        input=InputSpec(height=224, width=224, channels=3, color="RGB", scale=1 / 255, mean=(0.0,), std=(1.0,)),
        output=OutputSpec(name="softmax", activation="softmax", classes=("membrane", "cell")),
    )


def export_onnx(keras_path: Path, onnx_path: Path, *, nchw: bool) -> None:
    """Plain tf2onnx (opset 17) with the contract written into the metadata; ``nchw`` moves the input
    transpose into the graph's edge (``inputs_as_nchw``)."""
    import tensorflow as tf
    import tf2onnx

    from edgeseg.export import load_model
    from edgeseg.runtime import write_contract

    model, _ = load_model(keras_path)
    size = model.input_shape[1]
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def forward(image):
        return {"softmax": model(image, training=False)}

    proto, _ = tf2onnx.convert.from_function(
        forward, input_signature=spec, opset=17, inputs_as_nchw=["image:0"] if nchw else None
    )
    contract = _contract()
    if nchw:
        contract = contract.replace(input=dataclasses.replace(contract.input, layout="NCHW"))
    _rename_io(proto)
    write_contract(proto, contract)
    import onnx

    onnx.save(proto, str(onnx_path))


def _rename_io(proto) -> None:
    # tf2onnx names the tensors `image:0` / `softmax`; the contract names `image`.
    mapping = {proto.graph.input[0].name: "image"}
    for node in proto.graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
    proto.graph.input[0].name = "image"


def quantize_qdq(fp32: Path, int8: Path, images: np.ndarray) -> None:
    """Static QDQ INT8 (per-channel weights, minmax) calibrated on ``images`` (RGB float 0..1, NHWC)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    layout = onnx.load(str(fp32)).graph.input[0].type.tensor_type.shape.dim
    nchw = layout[1].dim_value == 3

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": (x.transpose(2, 0, 1) if nchw else x)[None]} for x in images])

        def get_next(self):
            return next(self.items, None)

    prepared = int8.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    os.remove(prepared)
    # The quantizer keeps metadata_props; copy them again in case a version drops them.
    src, dst = onnx.load(str(fp32)), onnx.load(str(int8))
    if not any(e.key == "edgeseg" for e in dst.metadata_props):
        dst.metadata_props.extend(src.metadata_props)
        onnx.save(dst, str(int8))


if __name__ == "__main__":
    sys.exit(main())
