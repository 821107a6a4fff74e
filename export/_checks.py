"""What export checks against the model itself: class names, preprocessing inside, unsupported layers,
flat outputs, and a smoke run of the converted file before it is written.

Shared by the exporter and the verifier (neither imports the other).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeseg.runtime.errors import EdgesegError

log = logging.getLogger(__name__)

# Layers that do the input's normalization inside the model.
PREPROCESSING_TYPES = frozenset({"Rescaling", "Normalization"})


def output_channels(model: Any) -> int | None:
    """The channel count of the model's (first) output, None when unknown."""
    size = model.outputs[0].shape[-1]
    return None if size is None else int(size)


def check_classes(model: Any, classes: Sequence[str] | None, activation: str) -> tuple[str, ...]:
    """Class names that fit the model's output channels, inferred when not given; else one clear error.

    A one-channel output is two classes (below and above the threshold); one name given for it
    names the foreground, and ``background`` is put before it.
    """
    channels = output_channels(model)
    if classes is None or len(classes) == 0:
        if channels is None:
            raise EdgesegError("A segmentation model needs its class names; pass --classes background,cell (or a count).")
        count = 2 if channels == 1 else channels
        inferred = ("background", *(f"class{i}" for i in range(1, count)))
        log.warning("No class names given: the output has %d channel(s), so the contract names %s; "
                    "pass --classes to name them.", channels, ",".join(inferred))
        return inferred
    classes = tuple(classes)
    if channels == 1 and len(classes) == 1:
        log.warning("The output has one %s channel, which gives two classes: the contract names them "
                    "background,%s (pixels above the threshold are %s).", activation, classes[0], classes[0])
        return ("background", *classes)
    if channels is not None and not (len(classes) == channels or (channels == 1 and len(classes) == 2)):
        expected = "2 (background and the object)" if channels == 1 else str(channels)
        raise EdgesegError(
            f"--classes names {len(classes)} classes ({','.join(classes)}) but the model's output has {channels} "
            f"channel(s); pass {expected} class names, e.g. --classes {_example(channels)}."
        )
    return classes


def _example(channels: int) -> str:
    return "background,object" if channels <= 2 else ",".join(["background", *(f"class{i}" for i in range(1, channels))])


def normalizes_itself(model: Any) -> bool:
    """True when the model holds a Rescaling or Normalization layer (it scales its own pixels)."""
    from edgeseg.export._graph import leaf_layers

    return any(type(layer).__name__ in PREPROCESSING_TYPES for _, layer in leaf_layers(model))


def refuse_unsupported(model: Any) -> None:
    """One clear error for models edgeseg cannot export right: a channels_first layer, an input that is not one image."""
    from edgeseg.export._graph import leaf_layers

    for _, layer in leaf_layers(model):
        if getattr(layer, "data_format", None) == "channels_first":
            # The contract, the runtime and the verifier read images as (H, W, C) inside the model; a channels_first
            # model's (3, 96, 96) input reads as 3 rows of 96 pixels with 96 channels.
            raise EdgesegError(
                f"Cannot export layer `{layer.name}`: its data_format is 'channels_first'; edgeseg exports channels_last "
                "models (the Keras default). Rebuild the model with data_format='channels_last' and copy the weights "
                "over; for an NCHW ONNX input, export that with --nchw."
            )
        # Dilated channels_last ones are rewritten to dilation 1 (_cuda_friendly); channels_first is not.
        if type(layer).__name__ == "Conv2DTranspose" and tuple(layer.dilation_rate) != (1, 1) and layer.data_format != "channels_last":
            raise EdgesegError(
                f"Cannot export layer `{layer.name}`: a dilated Conv2DTranspose with data_format {layer.data_format!r} "
                "converts to wrong ONNX pads; use data_format='channels_last' (the Keras default) or dilation_rate 1."
            )


def output_names(model: Any) -> list[str]:
    """The names of the model's outputs (the layers that produce them), in order."""
    names = getattr(model, "output_names", None)
    if names and len(names) == len(model.outputs):
        return list(names)
    return [t._keras_history[0].name for t in model.outputs]


def select_outputs(model: Any, output: str | None) -> tuple[list[int], Any]:
    """The Keras outputs to export and the model that computes just those: ``output`` names one (default:
    the first), or ``all``.

    A model with several outputs (a segmentation head and an edge head, say) is exported with the
    head asked for; the contract describes the first exported output.
    """
    import keras

    names = output_names(model)
    shapes = ", ".join(f"`{n}` {tuple(t.shape)}" for n, t in zip(names, model.outputs))
    if output == "all":
        return list(range(len(names))), model
    if output is None:
        index = 0
        if len(names) > 1:
            log.warning("The model has %d outputs (%s); exporting the first, `%s`. Pass --output NAME for another, or "
                        "--output all.", len(names), shapes, names[0])
    elif output in names:
        index = names.index(output)
    else:
        raise EdgesegError(f"--output {output!r}: the model has no output of that name; its outputs are {shapes} "
                           "(or pass --output all).")
    if len(names) == 1:
        return [0], model
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return [index], keras.Model(inputs, model.outputs[index], name=model.name)


def flat_spatial_shape(model: Any, height: int, width: int) -> tuple[int, int] | None:
    """(H, W) of a flat ``(N, H*W, C)`` output (a Reshape before the softmax), None for an image output."""
    from edgeseg.export._graph import leaf_layers

    shape = tuple(model.outputs[0].shape)
    if len(shape) != 3:
        return None
    pixels = shape[1]
    if pixels == height * width:
        return height, width
    # Otherwise the last 4-D layer output whose pixel count fits (the tensor the Reshape flattened).
    for _, layer in reversed(leaf_layers(model)):
        out = getattr(layer, "output", None)
        dims = tuple(getattr(out, "shape", ()) or ())
        if len(dims) == 4 and dims[1] and dims[2] and dims[1] * dims[2] == pixels:
            return int(dims[1]), int(dims[2])
    raise EdgesegError(
        f"Model `{model.name}` ends in a flat output {shape} whose {pixels} rows fit no image size of the model; "
        "end it in an (H, W, classes) output."
    )


def smoke_run(model: Any, proto: Any, contract: Any, *, tolerance: float = 1e-3, seed: int = 0) -> float:
    """Run the converted file once with onnxruntime on a sample input and compare it with Keras.

    ``model`` computes what the file should (all its outputs, in order). Returns the max-abs
    difference; raises EdgesegError (so nothing is written) when the file cannot run or computes
    something else. Where TensorFlow cannot compute a dilated Conv2DTranspose on this CPU, Keras'
    side goes through the same dilation-1 rewrite the export uses.
    """
    import onnxruntime as ort

    from edgeseg.export._cuda_friendly import reference_model

    rng = np.random.default_rng(seed)
    graph_input = proto.graph.input[0]
    keras_shape = [d if d is not None else 1 for d in model.inputs[0].shape[1:]]
    if len(keras_shape) == 3 and contract.kind != "decoder":
        keras_shape[0], keras_shape[1] = contract.input.height, contract.input.width
    first = graph_input.type.tensor_type.shape.dim[0]
    batch = int(first.dim_value) if first.HasField("dim_value") else 1  # a fixed-batch export gets its batch
    sample = rng.random((batch, *keras_shape), dtype=np.float32)
    if contract.kind != "decoder" and contract.input.scale == 1.0:
        sample *= 255.0  # a model that normalizes itself sees raw pixels
    feed = sample.transpose(0, 3, 1, 2) if contract.input.layout == "NCHW" and sample.ndim == 4 else sample
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {graph_input.name: np.ascontiguousarray(feed)})
    except Exception as error:  # onnxruntime raises its own Fail/InvalidArgument types
        raise EdgesegError(
            f"The converted model does not run in onnxruntime, so nothing was written: {str(error).splitlines()[0]}"
        ) from None
    size = (contract.input.height, contract.input.width) if contract.kind != "decoder" else None
    reference, _ = reference_model(model, size=size)
    expected_all = reference(sample, training=False)
    expected_all = list(expected_all) if isinstance(expected_all, (list, tuple)) else [expected_all]
    worst = 0.0
    for got, expected in zip(outputs, expected_all):
        expected = np.asarray(expected)
        if got.size != expected.size:
            raise EdgesegError(f"The converted model's output {got.shape} differs from Keras' {expected.shape}; "
                               "nothing was written.")
        if got.ndim == 4 and contract.input.layout == "NCHW" and got.shape != expected.shape:
            got = got.transpose(0, 2, 3, 1)
        diff = float(np.max(np.abs(got.reshape(expected.shape).astype(np.float64) - expected)))
        scale = max(1.0, float(np.max(np.abs(expected))))
        if not diff <= tolerance * scale:
            raise EdgesegError(
                f"The converted model computes other numbers than Keras (max-abs difference {diff:.3g} on a sample input); "
                "nothing was written. Run `edgeseg verify` on a test export to find the layer."
            )
        worst = max(worst, diff)
    return worst
