"""convert_lowmem gives the graph the plain tf2onnx path gives, and what Keras computes.

The full-size FCN-8 is too big for a test; its memory and time are measured by
``benchmarks/export_memory.py``. Here a mini FCN-8 with the same kinds of layers (Conv2D with
bias, Conv2DTranspose SAME and VALID with and without bias, Cropping2D, Add, Softmax) and a few
channels stands in for it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

import keras
import onnx
import onnxruntime
import tensorflow as tf
import tf2onnx

from keras import layers  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from edgeseg.export._lowmem import _WEIGHT_PREFIX, _fold, convert_lowmem  # noqa: E402

SIZE = 32
# onnxruntime (MLAS) and Keras (oneDNN) sum convolutions in different orders; float32 rounding
# of sums of a few hundred terms stays far below 1e-5 on outputs of order 1.
KERAS_ATOL = 1e-5


def _randomize(model, seed):
    # Random biases too: Keras initialises them to zero and tf2onnx drops zero biases, which
    # would hide a bias put in the wrong place.
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        values = rng.normal(scale=0.3, size=variable.shape).astype("float32")
        if "variance" in variable.path:
            values = np.abs(values) + 0.5
        variable.assign(values)
    return model


def _mini_fcn8(classes=3, width=4, *, randomize=True):
    image = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="block1_conv")(image)
    pool1 = layers.MaxPooling2D(name="pool1")(x)  # 16
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="block2_conv")(pool1)
    pool2 = layers.MaxPooling2D(name="pool2")(x)  # 8
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="block3_conv")(pool2)
    pool3 = layers.MaxPooling2D(name="pool3")(x)  # 4
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="conv6")(pool3)
    x = layers.Conv2D(2 * width, 1, activation="relu", name="conv7")(x)
    x = layers.Conv2D(classes, 1, name="score")(x)
    x = layers.Conv2DTranspose(classes, 4, strides=2, use_bias=False, name="up_valid")(x)  # 10
    x = layers.Cropping2D(1, name="crop")(x)  # 8
    x = layers.Add(name="fuse_pool2")([x, layers.Conv2D(classes, 1, name="score_pool2")(pool2)])
    x = layers.Conv2DTranspose(classes, 3, strides=2, padding="same", name="up_same")(x)  # 16
    x = layers.Add(name="fuse_pool1")([x, layers.Conv2D(classes, 1, name="score_pool1")(pool1)])
    x = layers.Conv2DTranspose(classes, 2, strides=2, use_bias=False, name="up_final")(x)  # 32
    outputs = layers.Softmax(name="softmax")(x)
    model = keras.Model(image, outputs, name="mini_fcn8")
    return _randomize(model, seed=0) if randomize else model


@pytest.fixture(scope="module")
def mini():
    return _mini_fcn8()


@pytest.fixture(scope="module")
def signature():
    return [tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image")]


@pytest.fixture(scope="module")
def plain(mini, signature):
    return tf2onnx.convert.from_keras(mini, input_signature=signature, opset=17)[0]


@pytest.fixture(scope="module")
def lowmem(mini, signature):
    return convert_lowmem(mini, signature, opset=17)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((2, SIZE, SIZE, 3), dtype=np.float32)


def _run(proto, feeds):
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _value_infos(values):
    # tf2onnx numbers its symbolic dimensions from a global counter ("unk__142"), so only
    # whether a dimension is symbolic is compared, not the symbol.
    return [
        (
            value.name,
            value.type.tensor_type.elem_type,
            [dim.dim_value if dim.HasField("dim_value") else "?" for dim in value.type.tensor_type.shape.dim],
        )
        for value in values
    ]


def _nodes(proto):
    return [
        (node.op_type, len(node.input), sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute))
        for node in proto.graph.node
    ]


def _initializer_values(proto):
    return sorted((tuple(t.dims), t.data_type, numpy_helper.to_array(t).tobytes()) for t in proto.graph.initializer)


def test_outputs_match_keras(mini, lowmem, images):
    expected = mini(images, training=False).numpy()
    (got,) = _run(lowmem, {"image": images})
    assert got.shape == expected.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_allclose(got, expected, atol=KERAS_ATOL, rtol=0)


def test_graph_inputs_and_outputs_are_the_plain_paths(plain, lowmem):
    assert _value_infos(lowmem.graph.input) == _value_infos(plain.graph.input)
    assert _value_infos(lowmem.graph.output) == _value_infos(plain.graph.output)
    assert [value.name for value in lowmem.graph.input] == ["image"]
    assert [value.name for value in lowmem.graph.output] == ["softmax"]


def test_nodes_and_weights_are_the_plain_paths_so_outputs_are_bit_identical(plain, lowmem, images):
    # Same op sequence with the same attributes (pads of the SAME ConvTranspose included), and
    # the same initializer bytes: kernels in OIHW / IOHW exactly where tf2onnx folds them.
    assert _nodes(lowmem) == _nodes(plain)
    assert _initializer_values(lowmem) == _initializer_values(plain)
    (ours,) = _run(lowmem, {"image": images})
    (theirs,) = _run(plain, {"image": images})
    np.testing.assert_array_equal(ours, theirs)


def test_fresh_model_with_zero_biases_gives_the_plain_graph(signature, images):
    # Keras initialises biases to zero and tf2onnx drops zero biases from Conv/ConvTranspose;
    # convert_lowmem does the same, so an untrained model's graph matches too.
    keras.utils.set_random_seed(7)
    fresh = _mini_fcn8(randomize=False)
    plain = tf2onnx.convert.from_keras(fresh, input_signature=signature, opset=17)[0]
    ours = convert_lowmem(fresh, signature, opset=17)
    assert _nodes(ours) == _nodes(plain)
    assert _initializer_values(ours) == _initializer_values(plain)
    np.testing.assert_array_equal(_run(ours, {"image": images})[0], _run(plain, {"image": images})[0])


def test_no_weight_input_is_left_and_every_variable_is_an_initializer(mini, lowmem):
    names = {value.name for value in lowmem.graph.input} | {t.name for t in lowmem.graph.initializer}
    names |= {name for node in lowmem.graph.node for name in [*node.input, *node.output]}
    assert not [name for name in names if name.startswith(_WEIGHT_PREFIX)]
    sizes = sorted(int(np.prod(t.dims)) for t in lowmem.graph.initializer)
    for variable in mini.variables:
        assert int(np.prod(variable.shape)) in sizes, variable.path
    onnx.checker.check_model(lowmem)


def test_inputs_as_nchw_matches_the_plain_path(mini, signature, images):
    plain = tf2onnx.convert.from_keras(mini, input_signature=signature, opset=17, inputs_as_nchw=["image"])[0]
    ours = convert_lowmem(mini, signature, opset=17, inputs_as_nchw=["image"])
    assert _value_infos(ours.graph.input) == _value_infos(plain.graph.input)
    assert _value_infos(ours.graph.input)[0][2] == ["?", 3, SIZE, SIZE]
    (got,) = _run(ours, {"image": images.transpose(0, 3, 1, 2)})
    np.testing.assert_allclose(got, mini(images).numpy(), atol=KERAS_ATOL, rtol=0)


def test_without_signature_takes_the_model_inputs(mini, plain, images):
    ours = convert_lowmem(mini, None)
    assert _value_infos(ours.graph.input) == _value_infos(plain.graph.input)
    (got,) = _run(ours, {"image": images})
    np.testing.assert_allclose(got, mini(images).numpy(), atol=KERAS_ATOL, rtol=0)


def test_batchnorm_frozen_layer_dense_and_several_outputs_keep_keras_order_and_values():
    image = keras.Input((8, 8, 3), name="img")
    # A frozen layer moves its weights to non_trainable_variables, as a frozen VGG16 backbone does.
    x = layers.Conv2D(4, 3, padding="same", trainable=False)(image)
    x = layers.Conv2D(4, 3, use_bias=False)(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Flatten()(x)
    model = _randomize(keras.Model(image, [layers.Dense(2, name="zeta")(x), layers.Dense(5, name="alpha")(x)]), 2)
    signature = [tf.TensorSpec((None, 8, 8, 3), tf.float32, name="img")]
    plain = tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)[0]
    ours = convert_lowmem(model, signature, opset=17)
    # Output order is Keras' (zeta before alpha), not alphabetical.
    assert _value_infos(ours.graph.output) == _value_infos(plain.graph.output)
    assert [value.name for value in ours.graph.output] == ["zeta", "alpha"]
    batch = np.random.default_rng(3).random((2, 8, 8, 3), dtype=np.float32)
    expected = [tensor.numpy() for tensor in model(batch, training=False)]
    # The plain path fuses BatchNormalization into the Conv kernel; here it stays as arithmetic on
    # the moving statistics: the same math, rounded in another order.
    for got, want in zip(_run(ours, {"img": batch}), expected):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_sequential_model_converts_although_from_keras_cannot():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="conv"),
         layers.Conv2DTranspose(2, 3, strides=2, padding="same", name="up")],
        name="seq",
    )
    _randomize(model, 4)
    ours = convert_lowmem(model, [tf.TensorSpec((None, 8, 8, 3), tf.float32, name="x")])
    assert [value.name for value in ours.graph.output] == ["up"]
    batch = np.random.default_rng(5).random((2, 8, 8, 3), dtype=np.float32)
    (got,) = _run(ours, {"x": batch})
    np.testing.assert_allclose(got, model(batch).numpy(), atol=KERAS_ATOL, rtol=0)


def test_wrong_number_of_input_specs_is_named(mini):
    spec = tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image")
    with pytest.raises(ValueError, match=r"one tf.TensorSpec per model input \(1\), got 2"):
        convert_lowmem(mini, [spec, spec])


def test_conversion_patches_neither_numpy_nor_tf2onnx(mini, signature):
    # No numpy-2 shim (np.product) is needed: it is only used on tf2onnx's large_model path.
    import tf2onnx.convert
    import tf2onnx.tf_loader

    before = (set(vars(np)), dict(vars(tf2onnx.convert)), dict(vars(tf2onnx.tf_loader)))
    convert_lowmem(mini, signature)
    after = (set(vars(np)), dict(vars(tf2onnx.convert)), dict(vars(tf2onnx.tf_loader)))
    assert after == before
    assert not hasattr(np, "product")


@pytest.mark.parametrize(
    ("op", "shape", "attributes", "extra"),
    [
        ("Transpose", (2, 3, 4, 5), {"perm": [3, 2, 0, 1]}, []),
        ("Transpose", (2, 3, 4), {}, []),
        ("Reshape", (2, 3, 4), {}, [np.array([0, -1], np.int64)]),
        ("Reshape", (1, 1, 1, 6), {}, [np.array([6], np.int64)]),
        ("Squeeze", (1, 3, 1, 2), {}, [np.array([0, -2], np.int64)]),
        ("Squeeze", (1, 3, 1, 2), {}, []),
        ("Unsqueeze", (3, 2), {}, [np.array([0, -1], np.int64)]),
        ("Cast", (2, 3), {"to": onnx.TensorProto.FLOAT16}, []),
        ("Identity", (2, 3), {}, []),
    ],
)
def test_folding_follows_onnx_semantics(op, shape, attributes, extra):
    data = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    names = ["data", *(f"in{index}" for index in range(len(extra)))]
    node = helper.make_node(op, names, ["out"], **attributes)
    expected = ReferenceEvaluator(node).run(None, dict(zip(names, [data, *extra])))[0]
    got = _fold(node, data, list(extra))
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
