"""Conv2DTranspose and Cropping2D across their configurations: the ONNX export computes what Keras does.

The grid covers every kernel (1-8, 16) x stride (1-8) pair once, so every tf2onnx negative-pad case
(kernel < stride) is there, with SAME/VALID and odd/even sizes rotating so that each kernel and
each stride meets all four; dilations 2, 3 and (2, 3) (Keras allows them at stride 1 only) and
output_padding the same way. Converting one small model costs about 0.1 s and tf2onnx grows
faster than linearly with the graph, so the cases go in models of 8: each case is a branch from
the same input (cropped to 3x4 for the odd sizes, through a 1x1 convolution when it wants fewer
input channels), flattened and concatenated into one output. Each model is exported by `to_onnx`
(and once more through the CUDA-friendly rewrite, whose graph must carry no asymmetric
ConvTranspose pads), run by onnxruntime on seeded random input, and each case's slice of the
output is compared with Keras on its own value range, so a failure names the case.

Where TensorFlow cannot compute a dilated Conv2DTranspose (its CPU kernel without oneDNN: an
AVX2 machine, or TF_ENABLE_ONEDNN_OPTS=0), Keras' side of the dilated cases goes through the
dilation-1 rewrite, as verify's does; the rewrite itself is checked against the definition of a
transposed convolution in NumPy (``test_dilated_rewrite_spreads_the_taps``), on every machine.
"""

from __future__ import annotations

import itertools
import re

import keras
import numpy as np
import onnxruntime as ort
import pytest

from edgeseg.export._cuda_friendly import cuda_friendly, needs_rewrite, reference_model
from edgeseg.export._onnx import to_onnx

# float32 ONNX vs TensorFlow: both sum the same products in different orders; a few ulps of
# the value range is the honest bound (the default: 1e-5 x max(1, range)).
TOLERANCE = 1e-5
INPUT = (4, 5, 3)  # height even, width odd; the size-3 cases crop it to 3x4 (odd, even)


KERNELS, STRIDES, GROUP = (1, 2, 3, 4, 5, 6, 7, 8, 16), range(1, 9), 8


def _case(i, kernel, stride, *, turn, dilation=1, output_padding=None):
    # SAME/VALID and odd/even rotate with `turn`: fixing the kernel or the stride, the other walks
    # all four combinations.
    return dict(kernel=kernel, stride=stride, padding=("same", "valid")[turn % 2], size=(3, 4)[turn // 2 % 2],
                dilation=dilation, output_padding=output_padding, channels=1 + i % 3, filters=1 + (i + 1) % 3,
                bias=i % 3 != 2)


def _grid():
    cases = [_case(s, k, s, turn=s + KERNELS.index(k)) for k in KERNELS for s in STRIDES]
    dilated = itertools.product((2, 3, (2, 3)), (1, 2, 3, 4))
    cases += [_case(i, k, 1, turn=i, dilation=d) for i, (d, k) in enumerate(dilated)]
    # output_padding must be smaller than the stride; each gives tf2onnx's negative pads.
    padded = [(3, 3, 1), (3, 3, 2), (2, 2, 1), (4, 3, 2), (1, 2, 1), (5, 4, 3)]
    cases += [_case(i, k, s, turn=i, output_padding=op) for i, (k, s, op) in enumerate(padded + padded)]
    return cases


def _name(case):
    return "k{kernel}s{stride}d{dilation}op{output_padding}{padding}{size}c{channels}f{filters}b{bias:d}".format(**case)


def _grid_model(cases):
    keras.utils.set_random_seed(0)
    image = keras.Input(INPUT)
    odd = keras.layers.Cropping2D(((1, 0), (1, 0)))(image)
    adapted = {}
    branches = []
    for i, case in enumerate(cases):
        key = (case["size"], case["channels"])
        if key not in adapted:
            x = odd if case["size"] == 3 else image
            adapted[key] = x if case["channels"] == INPUT[2] else keras.layers.Conv2D(case["channels"], 1)(x)
        layer = keras.layers.Conv2DTranspose(
            case["filters"], case["kernel"], strides=case["stride"], padding=case["padding"],
            dilation_rate=case["dilation"], use_bias=case["bias"], output_padding=case["output_padding"],
            bias_initializer="random_normal", name=f"case{i}",
        )
        branches.append(keras.layers.Flatten()(layer(adapted[key])))
    return keras.Model(image, keras.layers.Concatenate()(branches), name="grid")


def _run(model, *, friendly):
    exported, _ = cuda_friendly(model) if friendly else (model, 0)
    proto = to_onnx(exported)
    x = np.random.default_rng(0).standard_normal((2, *INPUT)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    reference, _ = reference_model(model)
    return proto, np.asarray(reference(x)), session.run(None, {"image": x})[0]


def _mismatches(model, cases, expected, got):
    """Names of the cases whose slice of the output differs from Keras beyond the tolerance."""
    assert got.shape == expected.shape
    bad, start = [], 0
    for i, case in enumerate(cases):
        size = int(np.prod(model.get_layer(f"case{i}").output.shape[1:]))
        want, have = expected[:, start:start + size], got[:, start:start + size]
        if np.abs(have - want).max() > TOLERANCE * max(1.0, float(want.max() - want.min())):
            bad.append(_name(case))
        start += size
    assert start == expected.shape[1]
    return bad


def _groups():
    cases = _grid()
    return [cases[i:i + GROUP] for i in range(0, len(cases), GROUP)]


def test_the_grid_covers_every_configuration():
    cases = _grid()
    assert {(c["kernel"], c["stride"]) for c in cases if c["dilation"] == 1} == set(itertools.product(KERNELS, STRIDES))
    combos = {(c["padding"], c["size"]) for c in cases}
    assert len(combos) == 4
    for key in ("kernel", "stride", "dilation"):
        for value in {c[key] for c in cases}:
            assert {(c["padding"], c["size"]) for c in cases if c[key] == value} == combos, (key, value)
    assert {c["output_padding"] for c in cases} == {None, 1, 2, 3}
    assert {c["channels"] for c in cases} == {c["filters"] for c in cases} == {1, 2, 3}
    assert {c["bias"] for c in cases} == {True, False}


def _asymmetric(proto):
    """Indices of the cases whose ConvTranspose node has asymmetric pads."""
    found = set()
    for node in proto.graph.node:
        if node.op_type == "ConvTranspose":
            pads = next((list(a.ints) for a in node.attribute if a.name == "pads"), [0, 0, 0, 0])
            if pads[:2] != pads[2:]:
                found.add(int(re.search(r"/case(\d+)[_/]", node.name).group(1)))
    return found


def _rewritten_for_cuda(case):
    layer = keras.layers.Conv2DTranspose(1, case["kernel"], strides=case["stride"], padding=case["padding"],
                                         dilation_rate=case["dilation"], output_padding=case["output_padding"])
    return needs_rewrite(layer, cuda=True) and not needs_rewrite(layer, cuda=False)


@pytest.fixture(scope="module")
def plain_grid():
    """The whole grid exported plain, once for the module: (cases, model, proto, Keras' output, ONNX's) per group."""
    runs = []
    for cases in _groups():
        model = _grid_model(cases)
        runs.append((cases, model, *_run(model, friendly=False)))
    return runs


def test_conv_transpose_grid_matches_keras(plain_grid):
    # Plain export, the whole grid; asymmetric pads only where --cuda-friendly rewrites.
    bad, asymmetric = [], 0
    for cases, model, proto, expected, got in plain_grid:
        bad += _mismatches(model, cases, expected, got)
        assert _asymmetric(proto) <= {i for i, c in enumerate(cases) if _rewritten_for_cuda(c)}
        asymmetric += len(_asymmetric(proto))
    assert bad == [] and asymmetric > 0


def test_cuda_friendly_grid_matches_keras_with_symmetric_pads():
    # Elsewhere the friendly model is the plain one (proved above): export the cases it rewrites.
    cases = [c for c in _grid() if _rewritten_for_cuda(c)]
    assert len(cases) >= 10 and {c["size"] for c in cases} == {3, 4}
    bad = []
    for group in (cases[i:i + GROUP] for i in range(0, len(cases), GROUP)):
        model = _grid_model(group)
        proto, expected, got = _run(model, friendly=True)
        bad += _mismatches(model, group, expected, got)
        assert _asymmetric(proto) == set()
    assert bad == []


def test_a_wrong_case_is_named(plain_grid):
    # The comparison is per case: one wrong slice is found and named, the rest pass.
    cases, model, _, expected, got = plain_grid[0]
    got = got.copy()
    size = int(np.prod(model.get_layer("case0").output.shape[1:]))
    got[:, size] += 1.0  # the first value of case1
    assert _mismatches(model, cases, expected, got) == [_name(cases[1])]


def test_cropping_matches_keras():
    image = keras.Input((8, 9, 2))
    x = keras.layers.Conv2D(2, 1, name="c")(image)
    croppings = [((0, 0), (0, 0)), ((1, 1), (2, 2)), ((0, 2), (1, 0)), ((3, 1), (0, 2))]
    crops = [keras.layers.Flatten()(keras.layers.Cropping2D(c)(x)) for c in croppings]
    model = keras.Model(image, keras.layers.Concatenate()(crops))
    x = np.random.default_rng(0).standard_normal((2, 8, 9, 2)).astype(np.float32)
    session = ort.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": x})[0], np.asarray(model(x)), atol=TOLERANCE)


def test_rewrite_keeps_the_layer_name_on_the_crop_and_copies_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 5, 2)), keras.layers.Conv2DTranspose(3, 4, padding="same", name="deconv")])
    friendly, count = cuda_friendly(model)
    assert count == 1
    names = {layer.name: type(layer).__name__ for layer in friendly.layers}
    assert names["deconv"] == "Cropping2D" and names["deconv_valid"] == "Conv2DTranspose"
    np.testing.assert_array_equal(friendly.get_layer("deconv_valid").get_weights()[0], model.layers[0].get_weights()[0])


def test_dilated_rewrite_spreads_the_taps():
    # dilation 3, kernel 2: taps at 0 and 3 of a 4-wide kernel, zeros between, at dilation 1.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 5, 2)),
                              keras.layers.Conv2DTranspose(3, 2, dilation_rate=3, padding="valid", name="dil")])
    flat, count = cuda_friendly(model)
    layer = flat.get_layer("dil")
    assert count == 1 and tuple(layer.dilation_rate) == (1, 1) and tuple(layer.kernel_size) == (4, 4)
    kernel, original = layer.get_weights()[0], model.get_layer("dil").get_weights()[0]
    np.testing.assert_array_equal(kernel[::3, ::3], original)
    assert not kernel[1:3].any() and not kernel[:, 1:3].any()
    x = np.random.default_rng(1).standard_normal((1, 4, 5, 2)).astype(np.float32)
    bias = model.get_layer("dil").get_weights()[1]
    np.testing.assert_allclose(np.asarray(flat(x)), _valid_transpose(x, original, bias, dilation=3), atol=1e-5)


def _valid_transpose(x, kernel, bias, *, dilation):
    """A stride-1 VALID transposed convolution by its definition: each input pixel scatters its dilated kernel taps."""
    n, h, w, _ = x.shape
    kh, kw, filters, _ = kernel.shape  # Keras keeps a transposed kernel as (kh, kw, filters, in_channels)
    out = np.zeros((n, h + (kh - 1) * dilation, w + (kw - 1) * dilation, filters))
    for a in range(kh):
        for b in range(kw):
            out[:, a * dilation:a * dilation + h, b * dilation:b * dilation + w] += x @ kernel[a, b].T
    return out + bias
