"""Rewrite SAME-padded Conv2DTranspose layers into VALID + Cropping2D, the same math.

A SAME transposed convolution whose ``kernel - stride`` is odd exports to an ONNX ConvTranspose
with asymmetric pads, and onnxruntime's CUDA provider sends such nodes back to the CPU
(onnxruntime issue 11312). The VALID convolution computes the full output and the crop removes
``kernel - stride`` rows and columns exactly where TensorFlow's SAME padding does (the smaller
half first), so the result is identical and every node stays on the GPU.
"""

from __future__ import annotations

import logging
from typing import Any

from edgeseg.export._graph import leaf_layers, walk

log = logging.getLogger(__name__)

VALID_SUFFIX = "_valid"


def needs_rewrite(layer: Any) -> bool:
    """True for a SAME Conv2DTranspose whose export would carry asymmetric pads."""
    if type(layer).__name__ != "Conv2DTranspose" or layer.padding != "same":
        return False
    if layer.output_padding is not None or tuple(layer.dilation_rate) != (1, 1):
        return False  # Keras' own arithmetic differs there; leave those layers untouched.
    if layer.data_format != "channels_last":
        return False
    return any((k - s) % 2 == 1 and k > s for k, s in zip(layer.kernel_size, layer.strides))


def cuda_friendly(model: Any) -> tuple[Any, int]:
    """A flat copy of ``model`` with each asymmetric SAME Conv2DTranspose made VALID + crop.

    Returns ``(model, rewritten)``; with nothing to rewrite, the original model and 0. The crop
    takes the original layer's name (so verification compares it with the original layer's
    output); the VALID convolution is named ``<name>_valid`` and carries the same weights.

    Example::

        friendly, count = cuda_friendly(model)   # then export `friendly` as usual
    """
    import keras

    rewritten = 0

    def hook(layer: Any, args: tuple, kwargs: dict, path: tuple[str, ...]) -> Any:
        nonlocal rewritten
        if not needs_rewrite(layer):
            return layer(*args, **kwargs)
        config = layer.get_config()
        config.update(name=layer.name + VALID_SUFFIX, padding="valid")
        valid = type(layer).from_config(config)
        full = valid(*args, **kwargs)
        valid.set_weights(layer.get_weights())
        crops = []
        for axis, (k, s) in enumerate(zip(layer.kernel_size, layer.strides)):
            full_size = full.shape[1 + axis]
            same_size = layer.compute_output_shape(args[0].shape)[1 + axis]
            total = full_size - same_size if full_size is not None and same_size is not None else max(k - s, 0)
            crops.append((total // 2, total - total // 2))
        rewritten += 1
        return keras.layers.Cropping2D(tuple(crops), name=layer.name)(full)

    if not any(needs_rewrite(layer) for _, layer in leaf_layers(model)):
        return model, 0
    inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=f"input_{i}") for i, t in enumerate(model.inputs)]
    outputs = walk(model, inputs, hook)
    friendly = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    log.info("cuda-friendly: rewrote %d SAME Conv2DTranspose layer(s) into VALID + Cropping2D", rewritten)
    return friendly, rewritten

