"""Keras -> ONNX with little memory: convert the graph without its weights, then put them back.

``tf2onnx.convert.from_keras`` freezes every variable into a constant of a TensorFlow GraphDef,
runs grappler over it, copies each constant into numpy and again into tf2onnx's own graph, and
folds layout ops (HWIO -> OIHW transposes) on those copies. Measured on the full-size FCN-8 (134M
parameters, 512 MiB; ``benchmarks/export_memory.py --plain``): freezing alone takes the process
from 1.9 to 7.2 GB, grappler passes 10 GB. Here the weights never enter TensorFlow's graph:

1. trace ``model.stateless_call(weights, ..., x)`` as a ``tf.function`` whose extra inputs are the
   variables, so the frozen GraphDef holds only placeholders and tf2onnx converts a few kilobytes;
2. tf2onnx leaves the layout ops it would have folded (Transpose of a kernel to OIHW, Reshape +
   Squeeze of a bias) as nodes on those inputs; we fold exactly those ops ourselves, one weight
   at a time, straight from its variable, and store the result as an initializer.

For convolution / transposed convolution / cropping / add / activation models (the CAE, FCN-8)
the result has the same nodes, the same initializer bytes and the same graph inputs and outputs
as the plain path, so onnxruntime's outputs are bit-identical (``tests/export/test_lowmem.py``).
Known differences, none of which changes what the graph computes: intermediate tensor names lack
the plain path's ``<model>_1/`` prefix; tf2onnx's optimizations that need weight values are not
run, so BatchNormalization stays arithmetic on its statistics instead of being fused into the
Conv kernel (equal up to float rounding) and identical constants are not merged.
No tf2onnx or numpy patch is needed: the numpy-2 crash (``np.product``) lives only in tf2onnx's
``large_model`` path, which this never takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

# Prefix of the temporary graph inputs that carry the weights during conversion; they are
# replaced by initializers before the model is returned.
_WEIGHT_PREFIX = "edgeseg_lowmem_weight_"

# Ops that only move or relabel the bytes of a weight. tf2onnx folds exactly these into its
# constants on the plain path, with numpy; doing the same here gives bit-identical initializers.
_FOLDABLE = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast"})


def convert_lowmem(
    model: Any,
    input_signature: Sequence[Any] | None = None,
    *,
    opset: int = 17,
    inputs_as_nchw: Sequence[str] | None = None,
) -> Any:
    """Convert a Keras model to an ``onnx.ModelProto`` the way ``tf2onnx`` does, in far less memory.

    A drop-in for ``tf2onnx.convert.from_keras(model, input_signature=..., opset=...,
    inputs_as_nchw=...)[0]``: same graph input and output names, shapes and meaning, same
    initializer values. Peak memory stays near two copies of the weights instead of tens.

    Args:
        model: a Keras 3 model (functional or Sequential) on the TensorFlow backend.
        input_signature: one ``tf.TensorSpec`` per model input; its ``name`` becomes the ONNX input
            name. None takes the shapes and names of ``model.inputs``.
        opset: ONNX opset.
        inputs_as_nchw: names of inputs to expose as NCHW, as in tf2onnx.

    Example:
        >>> spec = [tf.TensorSpec((None, 224, 224, 3), tf.float32, name="image")]
        >>> onnx.save(convert_lowmem(model, spec, opset=17), "fcn8.onnx")
    """
    import tensorflow as tf
    import tf2onnx

    input_signature = _input_signature(model, input_signature)
    variables = list(model.trainable_variables) + list(model.non_trainable_variables)
    n_trainable = len(model.trainable_variables)
    weight_names = [f"{_WEIGHT_PREFIX}{index}" for index in range(len(variables))]
    weight_specs = [
        tf.TensorSpec(tuple(variable.shape), tf.as_dtype(variable.dtype), name=name)
        for variable, name in zip(variables, weight_names)
    ]
    output_names = _output_names(model)
    function = _weights_as_arguments(model, n_inputs=len(input_signature), n_trainable=n_trainable,
                                     output_names=output_names)
    captured = _captured_constants(function, list(input_signature) + weight_specs)
    proto, _ = tf2onnx.convert.from_function(
        function,
        input_signature=list(input_signature) + weight_specs,
        opset=opset,
        inputs_as_nchw=list(inputs_as_nchw) if inputs_as_nchw else None,
    )
    proto.graph.name = model.name
    _order_outputs(proto.graph, output_names)
    loaders = {name: _loader(variable) for name, variable in zip(weight_names, variables)}
    _weights_to_initializers(proto.graph, loaders)
    _captures_to_initializers(proto.graph, captured)
    return proto


def _weights_as_arguments(model: Any, *, n_inputs: int, n_trainable: int, output_names: list[str]) -> Any:
    """The model as a ``tf.function`` of (inputs..., weights...) returning ``{output name: tensor}``."""
    import tensorflow as tf

    def call(*args):
        inputs, weights = args[:n_inputs], list(args[n_inputs:])
        # stateless_call reads every variable from `weights`, so the traced graph captures no
        # variable and freezing has nothing to copy.
        outputs, _ = model.stateless_call(
            weights[:n_trainable], weights[n_trainable:], inputs[0] if n_inputs == 1 else list(inputs),
            training=False,
        )
        return dict(zip(output_names, tf.nest.flatten(outputs)))

    return tf.function(call, autograph=False)


def _captured_constants(function: Any, signature: list[Any]) -> dict[str, np.ndarray]:
    """Tensors the traced graph captured by value (a Normalization layer's adapted mean and variance).

    tf2onnx turns each capture into a graph input that nobody feeds; their values are known
    here, by the name of the placeholder that stands for them.
    """
    concrete = function.get_concrete_function(*signature)
    values = {}
    for value, placeholder in zip(concrete.captured_inputs, concrete.graph.internal_captures):
        if getattr(value, "dtype", None) is not None and value.dtype.name != "resource":
            values[placeholder.name] = np.asarray(value)
    return values


def _captures_to_initializers(graph: Any, captured: dict[str, np.ndarray]) -> None:
    # A captured constant's input becomes an initializer (the value it stood for); matched by the
    # placeholder's name, with or without tf2onnx's `:0` suffix.
    from onnx import numpy_helper

    def value_of(name: str) -> np.ndarray | None:
        for key in (name, name.split(":")[0], f"{name}:0"):
            if key in captured:
                return captured[key]
        return None

    kept = []
    for value in graph.input:
        constant = value_of(value.name)
        if constant is None:
            kept.append(value)
        else:
            graph.initializer.append(numpy_helper.from_array(constant, value.name))
    del graph.input[:]
    graph.input.extend(kept)


def _input_signature(model: Any, input_signature: Sequence[Any] | None) -> list[Any]:
    import tensorflow as tf

    if input_signature is None:
        return [
            tf.TensorSpec(tuple(tensor.shape), tf.as_dtype(tensor.dtype), name=tensor.name.split(":")[0])
            for tensor in model.inputs
        ]
    input_signature = list(input_signature) if isinstance(input_signature, (list, tuple)) else [input_signature]
    if len(input_signature) != len(model.inputs):
        raise ValueError(
            f"input_signature: expected one tf.TensorSpec per model input ({len(model.inputs)}), "
            f"got {len(input_signature)}."
        )
    return input_signature


def _output_names(model: Any) -> list[str]:
    # Keras' output_names where the model has them (functional): the names from_keras uses.
    # A Sequential model (which from_keras cannot convert) has none; name its outputs after the
    # layers that produce them, as a functional model would.
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    names = [tensor._keras_history[0].name for tensor in model.outputs]
    if len(set(names)) != len(names):
        names = [tensor.name for tensor in model.outputs]
    return names


def _loader(variable: Any) -> Callable[[], np.ndarray]:
    import keras

    return lambda: keras.ops.convert_to_numpy(variable)


def _order_outputs(graph: Any, output_names: list[str]) -> None:
    # from_function orders a dict's outputs by key; from_keras keeps model.output_names' order.
    by_name = {value.name: value for value in graph.output}
    ordered = [type(by_name[name])() for name in output_names]
    for copy, name in zip(ordered, output_names):
        copy.CopyFrom(by_name[name])
    del graph.output[:]
    graph.output.extend(ordered)


def _derived_from_weights(graph: Any, *, weights: Iterable[str], initializers: dict[str, Any]) -> dict[str, Any]:
    """Values computable from the weights by foldable ops alone: name -> the node that makes it (None for a
    weight itself), in graph order."""
    derived: dict[str, Any] = {name: None for name in weights}
    for node in graph.node:
        if node.op_type not in _FOLDABLE or not node.input or node.input[0] not in derived:
            continue
        if any(name and name not in derived and name not in initializers for name in node.input[1:]):
            continue
        derived[node.output[0]] = node
    return derived


def _weights_to_initializers(graph: Any, loaders: dict[str, Callable[[], np.ndarray]]) -> None:
    """Replace the weight inputs by initializers, folding the layout ops tf2onnx left on them.

    A folded value is computed straight from its variable, and only where a kept node reads it,
    one weight at a time: the transient copies of a kernel (numpy, then its bytes) never pile up.
    """
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in graph.initializer}
    derived = _derived_from_weights(graph, weights=loaders, initializers=initializers)
    # `derived` holds the folded nodes, so their ids stay theirs while it lives.
    folded_ids = {id(node) for node in derived.values() if node is not None}
    kept_nodes = [node for node in graph.node if id(node) not in folded_ids]
    needed = _referenced_names(kept_nodes) | {value.name for value in graph.output}

    def evaluate(name: str) -> np.ndarray:
        node = derived[name]
        if node is None:
            return loaders[name]()
        data = evaluate(node.input[0])
        extra = [
            None if not item else evaluate(item) if item in derived else numpy_helper.to_array(initializers[item])
            for item in node.input[1:]
        ]
        return _fold(node, data, extra)

    new_initializers = []
    zero_biases = set()
    for name in derived:
        if name in needed:
            value = evaluate(name)
            if value.ndim == 1 and not value.any():
                zero_biases.add(name)
            # from_array writes C-order bytes from any view, so a transposed kernel is copied once.
            new_initializers.append(numpy_helper.from_array(value, name))
            del value
    _drop_zero_biases(kept_nodes, zero_biases)
    needed = _referenced_names(kept_nodes) | {value.name for value in graph.output}
    new_initializers = [tensor for tensor in new_initializers if tensor.name in needed]

    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept_inputs = [value for value in graph.input if value.name not in loaders]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    # Shape constants that only the folded nodes used go too.
    still_used = needed | {tensor.name for tensor in new_initializers}
    kept_initializers = [tensor for tensor in graph.initializer if tensor.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(new_initializers)
    graph.initializer.extend(kept_initializers)


def _drop_zero_biases(nodes: Sequence[Any], zero_biases: set[str]) -> None:
    # tf2onnx drops an all-zero bias when it is a constant (a freshly initialised model has
    # them); here it was an input then, so drop it now: adding zero changes no output bit.
    for node in nodes:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) == 3 and node.input[2] in zero_biases:
            del node.input[2]


def _referenced_names(nodes: Sequence[Any]) -> set[str]:
    """Every tensor name the nodes read, including from the bodies of If/Loop/Scan."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                names |= _referenced_names(list(subgraph.node))
    return names


def _fold(node: Any, data: np.ndarray, extra: list[np.ndarray | None]) -> np.ndarray:
    """Apply one layout op with ONNX semantics (the same numpy calls tf2onnx folds with)."""
    from onnx import helper

    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    op = node.op_type
    if op == "Identity":
        return data
    if op == "Transpose":
        return np.transpose(data, attributes.get("perm"))
    if op == "Cast":
        return data.astype(helper.tensor_dtype_to_np_dtype(attributes["to"]))
    if op == "Reshape":
        shape = [int(size) for size in extra[0]]
        if not attributes.get("allowzero", 0):
            shape = [data.shape[index] if size == 0 else size for index, size in enumerate(shape)]
        return np.reshape(data, shape)
    axes = attributes.get("axes")
    if axes is None and extra and extra[0] is not None:
        axes = [int(axis) for axis in extra[0]]
    if op == "Squeeze":
        return np.squeeze(data, axis=None if axes is None else tuple(axes))
    if op == "Unsqueeze":
        rank = data.ndim + len(axes)
        for axis in sorted(axis % rank for axis in axes):
            data = np.expand_dims(data, axis)
        return data
    raise AssertionError(f"no folding rule for {op}")
