"""Rewrite Conv2DTranspose layers into VALID + Cropping2D: the same math, exported cleanly.

Three cases need it:

- **Always**: a transposed convolution whose kernel is smaller than its stride, or that has
  ``output_padding``. Keras' output then reaches past what the kernel covers (those rows hold
  just the bias); tf2onnx 1.17 writes negative ConvTranspose pads for it, which onnxruntime
  rejects. A kernel zero-padded at its end covers them and computes the same numbers.
- **Always**: a dilated transposed convolution. tf2onnx converts its pads wrongly; with
  dilation ``d`` it equals a transposed convolution with dilation 1 whose kernel has ``d - 1``
  zeros between its taps (size ``(k - 1) * d + 1``), which the first case's arithmetic handles.
- **With** ``--cuda-friendly``: a SAME transposed convolution whose ``kernel - stride`` is odd
  exports with asymmetric pads, and onnxruntime's CUDA provider sends such nodes back to the CPU
  (onnxruntime issue 11312). VALID plus a crop of exactly TensorFlow's SAME padding (the smaller
  half first) is identical and runs on the GPU.

A rewritten layer keeps its name on the layer that produces its output (the crop, or the
convolution when no crop is needed), so verification compares it with the original layer.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeseg.export._graph import leaf_layers, walk
from edgeseg.runtime.errors import EdgesegError

log = logging.getLogger(__name__)

VALID_SUFFIX = "_valid"


def needs_rewrite(layer: Any, *, cuda: bool) -> bool:
    """True for a Conv2DTranspose that exports badly (always) or asymmetrically (``cuda``)."""
    if type(layer).__name__ != "Conv2DTranspose" or layer.data_format != "channels_last":
        return False
    if tuple(layer.dilation_rate) != (1, 1):
        return True
    if layer.output_padding is not None or any(k < s for k, s in zip(layer.kernel_size, layer.strides)):
        return True
    return cuda and layer.padding == "same" and any((k - s) % 2 for k, s in zip(layer.kernel_size, layer.strides))


def cuda_friendly(model: Any, *, size: tuple[int, int] | None = None) -> tuple[Any, int]:
    """A flat copy of ``model`` whose transposed convolutions all export with symmetric pads.

    Returns ``(model, rewritten)``; with nothing to rewrite, the original model and 0. ``size``
    (height, width) fixes a free ``(None, None)`` input first: the crops depend on the sizes.

    Example::

        friendly, count = cuda_friendly(model)   # then export `friendly` as usual
    """
    return _rewrite(model, cuda=True, size=size)


def exportable(model: Any, *, size: tuple[int, int] | None = None) -> tuple[Any, int]:
    """``model`` with the transposed convolutions tf2onnx cannot export made VALID (same math)."""
    return _rewrite(model, cuda=False, size=size)


def is_dilated_transpose(layer: Any) -> bool:
    """A channels_last Conv2DTranspose with a dilation above 1 (the layers the rewrite spreads)."""
    return type(layer).__name__ == "Conv2DTranspose" and layer.data_format == "channels_last" \
        and tuple(layer.dilation_rate) != (1, 1)


@functools.cache
def tensorflow_computes_dilated_transpose() -> bool:
    """Whether TensorFlow on this machine computes a dilated Conv2DTranspose itself.

    Its CPU kernel for Conv2DBackpropInput refuses dilation > 1 ("Current CPU implementations do
    not yet support dilation rates larger than 1") unless oneDNN takes the op: TensorFlow 2.21 on
    an AVX2 machine, or anywhere with TF_ENABLE_ONEDNN_OPTS=0 (issue 24). Asked once per process.
    """
    import keras

    layer = keras.layers.Conv2DTranspose(1, 2, dilation_rate=2)
    try:
        layer(np.zeros((1, 3, 3, 1), np.float32))
    except Exception as error:  # TensorFlow's InvalidArgumentError; anything else is not this question
        if "dilation" not in str(error):
            raise
        return False
    return True


def reference_model(model: Any, *, size: tuple[int, int] | None = None, force: bool = False) -> tuple[Any, tuple[str, ...]]:
    """``model`` as Keras can compute it here: its dilated Conv2DTranspose layers through the dilation-1 rewrite
    the export uses when TensorFlow cannot compute them (or always, with ``force``).

    Returns the model and the names of the layers computed through the rewrite (empty: ``model`` itself).

    Example::

        reference, rewritten = reference_model(model)
        expected = reference(x)   # Keras' numbers, on any x86-64 CPU
    """
    names = tuple(layer.name for _, layer in leaf_layers(model) if is_dilated_transpose(layer))
    if not names or (not force and tensorflow_computes_dilated_transpose()):
        return model, ()
    rewritten, _ = _rewrite(model, cuda=False, size=size, only=is_dilated_transpose)
    return rewritten, names


def _rewrite(model: Any, *, cuda: bool, size: tuple[int, int] | None,
             only: Callable[[Any], bool] | None = None) -> tuple[Any, int]:
    import keras

    def wanted(layer: Any) -> bool:
        return needs_rewrite(layer, cuda=cuda) and (only is None or only(layer))

    if not any(wanted(layer) for _, layer in leaf_layers(model)):
        return model, 0
    rewritten = 0

    def hook(layer: Any, args: tuple, kwargs: dict, path: tuple[str, ...]) -> Any:
        nonlocal rewritten
        if not wanted(layer):
            return layer(*args, **kwargs)
        rewritten += 1
        return _as_valid(layer, args[0])

    inputs = [keras.Input(batch_shape=_fixed(tuple(t.shape), size), dtype=t.dtype, name=f"input_{i}")
              for i, t in enumerate(model.inputs)]
    outputs = walk(model, inputs, hook)
    names = [layer.name for _, layer in leaf_layers(model)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        # The rewritten model is flat, and one model cannot hold two layers of one name.
        raise EdgesegError(
            f"Cannot rewrite the transposed convolutions of model `{model.name}` for export: its sub-models both hold "
            f"a layer named `{repeated[0]}`, and the rewritten model is flat. Give those layers distinct names"
            + (" (or export without --cuda-friendly)." if cuda else ".")
        )
    flat = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    log.info("rewrote %d Conv2DTranspose layer(s) into VALID + Cropping2D", rewritten)
    return flat, rewritten


def _fixed(shape: tuple, size: tuple[int, int] | None) -> tuple:
    """An image input's shape with free height/width replaced by ``size``."""
    if size is None or len(shape) != 4:
        return shape
    return (shape[0], shape[1] or size[0], shape[2] or size[1], shape[3])


def _as_valid(layer: Any, x: Any) -> Any:
    import keras

    in_sizes = x.shape[1:3]
    if None in in_sizes:  # the crop depends on the size: export fixes a free one first (--input-size)
        raise EdgesegError(
            f"Cannot rewrite layer `{layer.name}` for export: its input size {tuple(x.shape)} is not fixed; "
            "pass --input-size HxW."
        )
    out_sizes = layer.compute_output_shape(tuple(x.shape))[1:3]
    taps = _dilated_kernel(layer)
    kernel, crops = [], []
    for size, out, k, s in zip(in_sizes, out_sizes, taps.shape[:2], layer.strides):
        full = (size - 1) * s + k  # what a VALID transposed convolution produces
        # TensorFlow's SAME: the forward convolution's padding, the smaller half first.
        before = max(full - out, 0) // 2 if layer.padding == "same" else 0
        extra = max(before + out - full, 0)  # rows past the kernel's reach: zero taps cover them
        kernel.append(k + extra)
        crops.append((before, full + extra - out - before))
    needs_crop = any(c != (0, 0) for c in crops)
    config = layer.get_config()
    config.update(
        name=layer.name + VALID_SUFFIX if needs_crop else layer.name,
        padding="valid",
        kernel_size=tuple(kernel),
        dilation_rate=(1, 1),
        output_padding=None,
    )
    valid = type(layer).from_config(config)
    y = valid(x)
    padded = np.zeros((*kernel, *taps.shape[2:]), taps.dtype)
    padded[: taps.shape[0], : taps.shape[1]] = taps
    valid.set_weights([padded, *layer.get_weights()[1:]])
    return keras.layers.Cropping2D(tuple(crops), name=layer.name)(y) if needs_crop else y


def _dilated_kernel(layer: Any) -> np.ndarray:
    """The layer's kernel with ``dilation - 1`` zeros between taps: the same layer at dilation 1."""
    kernel = layer.get_weights()[0]
    rows, cols = layer.dilation_rate
    taps = np.zeros(((kernel.shape[0] - 1) * rows + 1, (kernel.shape[1] - 1) * cols + 1, *kernel.shape[2:]), kernel.dtype)
    taps[::rows, ::cols] = kernel
    return taps
