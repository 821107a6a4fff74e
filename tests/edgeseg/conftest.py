"""A tiny segmentation model for the top package's tests (bench, tune), built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.runtime import Contract, InputSpec, OutputSpec, write_contract


def build_tiny_segmenter(path: Path, *, size: int, classes: tuple[str, str], seed: int = 0) -> Path:
    """NHWC image (N, size, size, 3) -> Conv 3x3 to 2 classes -> softmax over the last axis, with a contract.

    ``seed`` draws the weights: another seed is another model (another sha256).
    """
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["logits"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Transpose", ["logits"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Softmax", ["nhwc"], ["scores"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", size, size, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", size, size, 2])],
        initializer=[numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w"),
                     numpy_helper.from_array(np.array([0.1, -0.1], np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    write_contract(model, Contract(kind="segmentation",
                                   input=InputSpec(height=size, width=size, channels=3, scale=1 / 255),
                                   output=OutputSpec(name="scores", activation="softmax", classes=classes)))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_segmenter():
    """:func:`build_tiny_segmenter` (the importlib import mode keeps conftest off sys.path)."""
    return build_tiny_segmenter
