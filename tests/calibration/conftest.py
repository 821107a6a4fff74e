"""Tiny edgeseg ONNX models built with onnx.helper, and natural-looking frames written into tmp_path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.runtime.contract import Contract, InputSpec, OutputSpec, write_contract

SIZE = 32


def segmentation_model(path: Path, *, size: int = SIZE, classes: int = 2, contract: bool = True) -> Path:
    """NHWC image -> Conv+Relu -> Conv(stride 2)+Relu -> ConvTranspose(x2)+Relu -> Conv 1x1 -> Softmax (NHWC)."""
    rng = np.random.default_rng(0)

    def weight(name, shape, fan_in):
        return numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)

    inits = [
        weight("w1", (8, 3, 3, 3), 27), numpy_helper.from_array(np.full(8, 0.05, np.float32), "b1"),
        weight("w2", (8, 8, 3, 3), 72), numpy_helper.from_array(np.zeros(8, np.float32), "b2"),
        weight("wt", (8, 8, 2, 2), 32), numpy_helper.from_array(np.zeros(8, np.float32), "bt"),
        weight("w3", (classes, 8, 1, 1), 8), numpy_helper.from_array(np.linspace(-0.2, 0.2, classes).astype(np.float32), "b3"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["x_nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["x_nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("ConvTranspose", ["r2", "wt", "bt"], ["u"], strides=[2, 2], name="up"),
        helper.make_node("Relu", ["u"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w3", "b3"], ["logits"], name="score"),
        helper.make_node("Transpose", ["logits"], ["logits_nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Softmax", ["logits_nhwc"], ["probabilities"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_fcn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", size, size, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if contract:
        write_contract(model, Contract(
            kind="segmentation",
            input=InputSpec(height=size, width=size, channels=3, color="RGB", name="image"),
            output=OutputSpec(name="probabilities", activation="softmax",
                              classes=tuple(f"class{i}" for i in range(classes))),
        ))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def autoencoder_model(path: Path, *, size: int = 16) -> Path:
    """Gray NHWC image -> Conv(stride 2)+Relu -> ConvTranspose(x2) -> Sigmoid, same shape out."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "we"),
        numpy_helper.from_array((rng.standard_normal((4, 1, 2, 2)) * 0.5).astype(np.float32), "wd"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["x"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["x", "we"], ["e"], pads=[1, 1, 1, 1], strides=[2, 2], name="encode"),
        helper.make_node("Relu", ["e"], ["er"], name="relu"),
        helper.make_node("ConvTranspose", ["er", "wd"], ["d"], strides=[2, 2], name="decode"),
        helper.make_node("Sigmoid", ["d"], ["s"], name="sigmoid"),
        helper.make_node("Transpose", ["s"], ["reconstruction"], perm=[0, 2, 3, 1], name="to_nhwc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cae",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 1])],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["N", size, size, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_contract(model, Contract(kind="autoencoder", input=InputSpec(height=size, width=size, channels=1,
                                                                          color="GRAY", name="image"),
                                   output=OutputSpec(name="reconstruction", activation="sigmoid")))
    onnx.save(model, str(path))
    return path


def natural_image(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Smooth blobs on a gradient: neighbouring pixels correlate like a photo's, unlike noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size, 3), np.float32)
    image += (xx[..., None] * rng.uniform(0.5, 2.0, 3) + yy[..., None] * rng.uniform(0.5, 2.0, 3))
    for _ in range(4):
        centre = rng.integers(0, size, 2)
        colour = rng.uniform(0, 255, 3)
        cv2.circle(image, (int(centre[0]), int(centre[1])), int(rng.integers(4, size // 3)), colour.tolist(), -1)
    image = cv2.GaussianBlur(image, (5, 5), 1.5)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_frames(folder: Path, count: int, *, seed: int = 0, size: int = 48, masks: Path | None = None) -> Path:
    """``count`` PNG frames (and class-id masks by stem: bright pixels are class 1)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if masks is not None:
        masks.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = natural_image(rng, size)
        cv2.imwrite(str(folder / f"frame_{i:03d}.png"), image)
        if masks is not None:
            cv2.imwrite(str(masks / f"frame_{i:03d}.png"), (image.mean(axis=2) > 128).astype(np.uint8))
    return folder


@pytest.fixture
def kit() -> SimpleNamespace:
    """The builders above, for test modules (pytest's importlib mode cannot import conftest by name)."""
    return SimpleNamespace(SIZE=SIZE, segmentation_model=segmentation_model, autoencoder_model=autoencoder_model,
                           natural_image=natural_image, write_frames=write_frames)


@pytest.fixture
def seg_model(tmp_path) -> Path:
    return segmentation_model(tmp_path / "tiny.onnx")


@pytest.fixture
def frames(tmp_path) -> Path:
    return write_frames(tmp_path / "frames", 12)
