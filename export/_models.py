"""The course's two networks in Keras, registered by name: ``cae``, ``fcn8-classic``, ``fcn8-course``.

Layer for layer as the course defines them (issue 2). The VGG16 encoder of FCN-8 uses Keras' own
layer names (``block1_conv1`` ... ``block5_pool``) so that ImageNet weights, a local ``.h5`` file
and the verifier's layer-by-layer report all line up by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
from keras import layers

from edgeseg.runtime.errors import EdgesegError

FCN8_VARIANTS = ("classic", "course")

# VGG16's convolutional blocks: (block, number of 3x3 convs, filters), exactly keras.applications'.
_VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def build_cae(*, latent_size: int = 2, input_size: int = 28) -> keras.Model:
    """The course's convolutional autoencoder: encoder and decoder are models of their own.

    Encoder: Conv2D(32, 3x3, /2, SAME, relu) -> Conv2D(64, 3x3, /2, SAME, relu) ->
    Conv2D(latent, 7x7, VALID) = a 1x1xlatent code. Decoder: Conv2DTranspose(64, 7x7, VALID, relu)
    -> Conv2DTranspose(32, 3x3, x2, SAME, relu) -> Conv2DTranspose(1, 7x7, x2, SAME), linear
    (the course trains it with MSE on pixels scaled to 0..1). For other input sizes the 7x7
    kernels become (input_size / 4) so the code stays 1x1.

    Example::

        cae = build_cae()
        code = cae.get_layer("encoder")(images)          # (N, 1, 1, 2)
        image = cae.get_layer("decoder")(np.array([[[[-8.0, 0.0]]]]))
    """
    _check_positive("latent_size", latent_size)
    _check_positive("input_size", input_size)
    if input_size % 4:
        raise EdgesegError(
            f"CAE input size must be a multiple of 4 (two stride-2 layers), got {input_size}; try 28."
        )
    bottom = input_size // 4

    image = keras.Input((input_size, input_size, 1), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="enc_conv1")(image)
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="enc_conv2")(x)
    code = layers.Conv2D(latent_size, bottom, padding="valid", name="enc_latent")(x)
    encoder = keras.Model(image, code, name="encoder")

    latent = keras.Input((1, 1, latent_size), name="latent")
    y = layers.Conv2DTranspose(64, bottom, padding="valid", activation="relu", name="dec_deconv1")(latent)
    y = layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu", name="dec_deconv2")(y)
    y = layers.Conv2DTranspose(1, 7, strides=2, padding="same", name="dec_output")(y)
    decoder = keras.Model(latent, y, name="decoder")

    outer = keras.Input((input_size, input_size, 1), name="image")
    return keras.Model(outer, decoder(encoder(outer)), name="cae")


def build_fcn8(
    *,
    variant: str = "classic",
    classes: int = 2,
    input_size: int = 224,
    head_width: int = 4096,
    backbone: str = "none",
    trainable_backbone: bool = True,
    backbone_width: float = 1.0,
) -> keras.Model:
    """FCN-8 on a VGG16 encoder, in the course's ``classic`` (FCN-8s) or ``course`` form.

    ``classic``: conv6 (7x7) and conv7 (1x1) of ``head_width`` with relu, a 1x1 score; twice
    Conv2DTranspose(n, 4x4, x2, VALID, no bias) + Cropping2D(1) added to a 1x1 score of
    block4_pool, then block3_pool; Conv2DTranspose(n, 8x8, x8); softmax.
    ``course``: conv6 7x7 SAME relu, 1x1 relu, 1x1 n relu; Conv2DTranspose(512, 4x4, x2, SAME)
    added to block4_pool; Conv2DTranspose(256, 4x4, x2, SAME) added to block3_pool;
    Conv2DTranspose(n, 16x16, x8, SAME, softmax).

    ``backbone``: ``none`` (random init), ``imagenet`` (Keras downloads VGG16's weights; needs
    the internet) or a local ``.h5`` / ``.weights.h5`` file of Keras' VGG16 without its top.
    ``backbone_width`` multiplies VGG16's 64/128/256/512 filters (layer names unchanged): a narrow
    ``classic`` FCN-8 trains in seconds on 2 cores (the demo and the sample models use 0.125).

    Example::

        model = build_fcn8(variant="classic", classes=2, input_size=224, head_width=1024)
    """
    if variant not in FCN8_VARIANTS:
        raise EdgesegError(f"Unknown FCN-8 variant {variant!r}; expected one of {', '.join(FCN8_VARIANTS)}.")
    _check_positive("classes", classes)
    _check_positive("head_width", head_width)
    _check_positive("input_size", input_size)
    if input_size % 32:
        raise EdgesegError(
            f"FCN-8 input size must be a multiple of 32 (VGG16 halves it five times), got {input_size}; "
            f"try {max(32, round(input_size / 32) * 32)}."
        )
    if backbone_width != 1.0 and (variant != "classic" or backbone != "none" or not 0 < backbone_width < 1):
        raise EdgesegError(
            f"backbone_width={backbone_width!r}: a narrower VGG16 needs variant `classic`, backbone `none` "
            "(pretrained weights have the full width) and a width in (0, 1]."
        )
    n = classes
    image = keras.Input((input_size, input_size, 3), name="image")
    pools = _vgg16_encoder(image, width=backbone_width)
    pool3, pool4, pool5 = pools[3], pools[4], pools[5]

    if variant == "classic":
        x = layers.Conv2D(head_width, 7, padding="same", activation="relu", name="conv6")(pool5)
        x = layers.Conv2D(head_width, 1, activation="relu", name="conv7")(x)
        x = layers.Conv2D(n, 1, name="score")(x)
        x = layers.Conv2DTranspose(n, 4, strides=2, padding="valid", use_bias=False, name="upscore2")(x)
        x = layers.Cropping2D(1, name="upscore2_crop")(x)
        x = layers.Add(name="fuse_pool4")([x, layers.Conv2D(n, 1, name="score_pool4")(pool4)])
        x = layers.Conv2DTranspose(n, 4, strides=2, padding="valid", use_bias=False, name="upscore4")(x)
        x = layers.Cropping2D(1, name="upscore4_crop")(x)
        x = layers.Add(name="fuse_pool3")([x, layers.Conv2D(n, 1, name="score_pool3")(pool3)])
        x = layers.Conv2DTranspose(n, 8, strides=8, padding="valid", use_bias=False, name="upscore8")(x)
        output = layers.Activation("softmax", name="softmax")(x)
    else:
        x = layers.Conv2D(head_width, 7, padding="same", activation="relu", name="conv6")(pool5)
        x = layers.Conv2D(head_width, 1, activation="relu", name="conv7")(x)
        x = layers.Conv2D(n, 1, activation="relu", name="score")(x)
        x = layers.Conv2DTranspose(512, 4, strides=2, padding="same", name="upscore2")(x)
        x = layers.Add(name="fuse_pool4")([x, pool4])
        x = layers.Conv2DTranspose(256, 4, strides=2, padding="same", name="upscore4")(x)
        x = layers.Add(name="fuse_pool3")([x, pool3])
        output = layers.Conv2DTranspose(n, 16, strides=8, padding="same", activation="softmax", name="upscore8")(x)

    model = keras.Model(image, output, name=f"fcn8_{variant}")
    if backbone != "none":
        _load_backbone(model, backbone, input_size=input_size)
    for name in backbone_layer_names():
        model.get_layer(name).trainable = trainable_backbone
    return model


def backbone_layer_names() -> list[str]:
    """Keras' VGG16 layer names, in order: block1_conv1 ... block5_pool."""
    names = []
    for block, convs, _ in _VGG16_BLOCKS:
        names += [f"block{block}_conv{i}" for i in range(1, convs + 1)] + [f"block{block}_pool"]
    return names


# name -> (builder, fixed arguments): each registered variant is one line of architecture arguments.
_REGISTRY: dict[str, tuple[Callable[..., keras.Model], dict[str, Any]]] = {
    "cae": (build_cae, {}),
    "fcn8-classic": (build_fcn8, {"variant": "classic"}),
    "fcn8-course": (build_fcn8, {"variant": "course"}),
}


def model_names() -> list[str]:
    """The registered model names."""
    return sorted(_REGISTRY)


def build_model(name: str, **options: Any) -> keras.Model:
    """Build a registered model by name with its builder's keyword options.

    Example::

        model = build_model("fcn8-classic", classes=3, input_size=224, head_width=512)
    """
    if name not in _REGISTRY:
        raise EdgesegError(f"Unknown model {name!r}; known models: {', '.join(model_names())}.")
    builder, fixed = _REGISTRY[name]
    clash = sorted(set(fixed) & set(options))
    if clash:
        raise EdgesegError(f"Model {name!r} fixes {', '.join(clash)}; do not pass it.")
    try:
        return builder(**fixed, **options)
    except TypeError as error:  # an unknown keyword: name it rather than let Keras guess
        raise EdgesegError(f"Model {name!r}: {error}.") from None


def _vgg16_encoder(image: keras.KerasTensor, *, width: float = 1.0) -> dict[int, keras.KerasTensor]:
    """VGG16's convolutional blocks on ``image``; returns each block's pooled output by block number."""
    pools = {}
    x = image
    for block, convs, filters in _VGG16_BLOCKS:
        for i in range(1, convs + 1):
            x = layers.Conv2D(max(1, round(filters * width)), 3, padding="same", activation="relu",
                              name=f"block{block}_conv{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
        pools[block] = x
    return pools


def _load_backbone(model: keras.Model, backbone: str, *, input_size: int) -> None:
    # keras.applications.VGG16 knows both ImageNet's download and Keras' .h5 layouts; we copy its
    # weights over by layer name instead of nesting it, so the layer names stay flat in our model.
    if backbone != "imagenet":
        path = Path(os.path.expanduser(backbone))
        if not path.is_file():
            raise EdgesegError(
                f"Backbone weights `{backbone}` not found: expected `none`, `imagenet` or the path of a "
                "VGG16 (no top) .h5 file, e.g. vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5."
            )
        weights = str(path)
    else:
        weights = "imagenet"
    try:
        reference = keras.applications.VGG16(
            include_top=False, weights=weights, input_shape=(input_size, input_size, 3)
        )
    except Exception as error:  # network errors, a wrong file: Keras raises many types; name the source
        raise EdgesegError(
            f"Cannot load VGG16 backbone weights from `{backbone}` ({type(error).__name__}: {error}). "
            "Pass a local VGG16 no-top .h5 file, or `none` to train from scratch."
        ) from None
    for name in backbone_layer_names():
        model.get_layer(name).set_weights(reference.get_layer(name).get_weights())


def _check_positive(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise EdgesegError(f"`{key}` must be a positive integer, got {value!r}.")
