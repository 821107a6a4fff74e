"""Conv2DTranspose and Cropping2D across their configurations: the ONNX export computes what Keras does.

Each case is one small Sequential model (so the Sequential path is exercised too), exported by
`to_onnx` and run by onnxruntime on seeded random input; then the same through the CUDA-friendly
rewrite, whose graph must carry no asymmetric ConvTranspose pads.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import onnxruntime as ort
import pytest

from edgeseg.export._cuda_friendly import cuda_friendly
from edgeseg.export._onnx import to_onnx

# float32 ONNX vs TensorFlow: both sum the same products in different orders; a few ulps of
# the value range is the honest bound (the default: 1e-5 x max(1, range)).
TOLERANCE = 1e-5


def _transpose_model(*, size, channels, filters, kernel, stride, padding, bias, output_padding=None):
    keras.utils.set_random_seed(kernel * 100 + stride * 10 + size)
    layer = keras.layers.Conv2DTranspose(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        use_bias=bias,
        output_padding=output_padding,
        bias_initializer="random_normal",
        name="deconv",
    )
    return keras.Sequential([keras.Input((size, size + 1, channels)), layer], name="grid")


def _check(model, *, friendly: bool) -> None:
    exported, _ = cuda_friendly(model) if friendly else (model, 0)
    proto = to_onnx(exported)
    x = np.random.default_rng(0).standard_normal((2, *model.inputs[0].shape[1:])).astype(np.float32)
    expected = np.asarray(model(x))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    assert got.shape == expected.shape
    bound = TOLERANCE * max(1.0, float(expected.max() - expected.min()))
    assert np.abs(got - expected).max() <= bound
    if friendly:
        for node in proto.graph.node:
            if node.op_type == "ConvTranspose":
                pads = next((list(a.ints) for a in node.attribute if a.name == "pads"), [0, 0, 0, 0])
                assert pads[:2] == pads[2:], f"asymmetric ConvTranspose pads {pads} survived the rewrite"


def _fast_cases():
    # A fixed sample of the wide grid: every kernel and stride value appears, SAME and VALID,
    # odd and even sizes (width is always height + 1), bias on and off, 1-3 channels.
    cases = [
        (1, 1, "same"), (2, 1, "valid"), (2, 2, "same"), (3, 2, "same"), (3, 1, "valid"), (4, 2, "same"),
        (4, 3, "same"), (5, 2, "same"), (5, 4, "valid"), (6, 3, "same"), (7, 2, "same"), (7, 5, "valid"),
        (8, 4, "same"), (8, 3, "same"), (16, 8, "same"), (16, 5, "valid"), (2, 6, "same"), (3, 7, "same"),
        (1, 8, "valid"), (6, 6, "same"),
    ]
    for i, (kernel, stride, padding) in enumerate(cases):
        yield dict(size=3 + i % 2, channels=1 + i % 3, filters=1 + (i + 1) % 3, kernel=kernel, stride=stride,
                   padding=padding, bias=i % 4 != 3)


@pytest.mark.parametrize("case", list(_fast_cases()), ids=lambda c: "k{kernel}s{stride}{padding}c{channels}".format(**c))
def test_conv_transpose_matches_keras(case):
    model = _transpose_model(**case)
    _check(model, friendly=False)
    _check(model, friendly=True)


@pytest.mark.parametrize("output_padding", [1, 2])
def test_conv_transpose_output_padding_matches_keras(output_padding):
    model = _transpose_model(size=4, channels=2, filters=2, kernel=3, stride=3, padding="valid", bias=True,
                             output_padding=output_padding)
    _check(model, friendly=False)


@pytest.mark.parametrize("cropping", [((0, 0), (0, 0)), ((1, 1), (2, 2)), ((0, 2), (1, 0)), ((3, 1), (0, 2))])
def test_cropping_matches_keras(cropping):
    model = keras.Sequential(
        [keras.Input((8, 9, 2)), keras.layers.Conv2D(2, 1, name="c"), keras.layers.Cropping2D(cropping, name="crop")]
    )
    _check(model, friendly=False)


def test_rewrite_keeps_the_layer_name_on_the_crop_and_copies_weights():
    model = _transpose_model(size=4, channels=2, filters=3, kernel=4, stride=1, padding="same", bias=True)
    friendly, count = cuda_friendly(model)
    assert count == 1
    names = {layer.name: type(layer).__name__ for layer in friendly.layers}
    assert names["deconv"] == "Cropping2D" and names["deconv_valid"] == "Conv2DTranspose"
    np.testing.assert_array_equal(friendly.get_layer("deconv_valid").get_weights()[0], model.layers[0].get_weights()[0])


@pytest.mark.slow
def test_wide_grid():
    # The full product over kernels x strides x padding x size parity x bias, a few minutes.
    for kernel, stride, padding, size, bias in itertools.product(
        (1, 2, 3, 4, 5, 6, 7, 8, 16), range(1, 9), ("same", "valid"), (3, 4), (True, False)
    ):
        if bias and (kernel + stride) % 3:  # bias on a third of the cases keeps the grid bounded
            continue
        model = _transpose_model(size=size, channels=2, filters=2, kernel=kernel, stride=stride, padding=padding, bias=bias)
        _check(model, friendly=False)
        _check(model, friendly=True)
