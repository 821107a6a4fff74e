import numpy as np
import pytest

from edgeseg.export._models import build_cae, build_fcn8, build_model, model_names
from edgeseg.runtime.errors import EdgesegError


def _shapes(model, names):
    return {name: tuple(model.get_layer(name).output.shape[1:]) for name in names}


def test_cae_layer_shapes_follow_the_course():
    cae = build_cae()
    encoder, decoder = cae.get_layer("encoder"), cae.get_layer("decoder")
    assert _shapes(encoder, ["enc_conv1", "enc_conv2", "enc_latent"]) == {
        "enc_conv1": (14, 14, 32), "enc_conv2": (7, 7, 64), "enc_latent": (1, 1, 2)}
    assert _shapes(decoder, ["dec_deconv1", "dec_deconv2", "dec_output"]) == {
        "dec_deconv1": (7, 7, 64), "dec_deconv2": (14, 14, 32), "dec_output": (28, 28, 1)}
    assert encoder.get_layer("enc_latent").kernel_size == (7, 7)
    assert decoder.get_layer("dec_output").kernel_size == (7, 7)
    assert tuple(cae.output.shape[1:]) == (28, 28, 1)
    # the decoder alone turns a latent point into an image
    assert decoder(np.array([[[[-8.0, 0.0]]]], np.float32)).shape == (1, 28, 28, 1)


def test_cae_options():
    cae = build_cae(latent_size=3, input_size=32)
    assert tuple(cae.get_layer("encoder").output.shape[1:]) == (1, 1, 3)
    assert tuple(cae.output.shape[1:]) == (32, 32, 1)
    with pytest.raises(EdgesegError, match="multiple of 4"):
        build_cae(input_size=30)


def test_fcn8_classic_layer_shapes_follow_the_course():
    model = build_fcn8(variant="classic", classes=3, head_width=8)
    got = _shapes(model, ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool", "conv6",
                          "conv7", "score", "upscore2", "upscore2_crop", "score_pool4", "upscore4",
                          "upscore4_crop", "score_pool3", "upscore8", "softmax"])
    assert got == {
        "block1_pool": (112, 112, 64), "block2_pool": (56, 56, 128), "block3_pool": (28, 28, 256),
        "block4_pool": (14, 14, 512), "block5_pool": (7, 7, 512), "conv6": (7, 7, 8), "conv7": (7, 7, 8),
        "score": (7, 7, 3), "upscore2": (16, 16, 3), "upscore2_crop": (14, 14, 3), "score_pool4": (14, 14, 3),
        "upscore4": (30, 30, 3), "upscore4_crop": (28, 28, 3), "score_pool3": (28, 28, 3),
        "upscore8": (224, 224, 3), "softmax": (224, 224, 3)}
    assert model.get_layer("upscore2").use_bias is False
    assert model.get_layer("conv6").kernel_size == (7, 7)


def test_fcn8_course_layer_shapes():
    model = build_fcn8(variant="course", classes=2, head_width=8)
    got = _shapes(model, ["block5_pool", "conv6", "conv7", "score", "upscore2", "fuse_pool4", "upscore4",
                          "fuse_pool3", "upscore8"])
    assert got == {"block5_pool": (7, 7, 512), "conv6": (7, 7, 8), "conv7": (7, 7, 8), "score": (7, 7, 2),
                   "upscore2": (14, 14, 512), "fuse_pool4": (14, 14, 512), "upscore4": (28, 28, 256),
                   "fuse_pool3": (28, 28, 256), "upscore8": (224, 224, 2)}
    assert model.get_layer("upscore8").kernel_size == (16, 16)


def test_registry_and_errors():
    assert model_names() == ["cae", "fcn8-classic", "fcn8-course"]
    model = build_model("fcn8-course", input_size=64, head_width=4, classes=2)
    assert tuple(model.output.shape[1:]) == (64, 64, 2)
    with pytest.raises(EdgesegError, match="cae, fcn8-classic, fcn8-course"):
        build_model("unet")
    with pytest.raises(EdgesegError, match="multiple of 32"):
        build_fcn8(input_size=100, head_width=4)
    with pytest.raises(EdgesegError, match="not found"):
        build_fcn8(input_size=32, head_width=4, backbone="/no/such/vgg.h5")


def test_local_backbone_weights_load_by_name_and_freeze(tmp_path):
    import keras

    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg.weights.h5"
    reference.save_weights(path)
    model = build_fcn8(input_size=32, head_width=4, backbone=str(path), trainable_backbone=False)
    for name in ("block1_conv1", "block5_conv3"):
        np.testing.assert_array_equal(model.get_layer(name).get_weights()[0], reference.get_layer(name).get_weights()[0])
        assert not model.get_layer(name).trainable
    assert model.get_layer("conv6").trainable
