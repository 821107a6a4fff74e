"""Keras' own value of every layer call: the model's graph run eagerly, call by call.

Verification compares the output of every layer *call*: a shared layer is called twice, a nested
model's layers run inside it, and ``keras.ops`` functions called between layers (``ops.nn.relu``,
``x[..., ::-1]``, ``preprocess_input``) are operations of the graph without being layers. A flat
Keras model that outputs each of them cannot be built (a name used twice, an operation that is not
a layer: issue 23, 0 of 163 DeepLabV3+ layers compared). Running the graph eagerly with a hook on
each call needs no such model: :func:`edgeseg.export._graph.walk` enters sub-models and calls every
operation on real tensors, and each call's output is kept as it is computed. The same run records
the graph (which call feeds which: the positions matching relies on), the output shapes, and which
calls are identities at inference (Dropout, a zero crop), so no second walk is needed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INPUT = -1  # the model input, where a call's producers are listed


@dataclass(frozen=True)
class Call:
    """One call of a layer or operation, in graph order.

    ``name`` is what reports show: the layer's name, qualified by its sub-model path where two
    sub-models hold a layer of that name (``encoder/conv``), with ``#k`` for the k-th call of a
    shared layer (``shared#2``).
    """

    index: int
    name: str
    layer_name: str
    type: str
    path: tuple[str, ...]
    layer: bool  # a Keras layer; False for a keras.ops operation called between layers
    inputs: tuple[int, ...]  # the calls feeding it (INPUT for the model input)
    shape: tuple[int, ...] | None  # output shape without the batch; None when the output is not one tensor
    identity: bool  # its output is its input, unchanged (Dropout at inference, a zero crop)
    dtype: str


@dataclass(frozen=True)
class Trace:
    """The graph of calls one eager run went through, and which calls give the model's outputs."""

    calls: tuple[Call, ...]
    outputs: tuple[int, ...]
    _ancestors: dict[int, frozenset[int]] = field(default_factory=dict, compare=False, repr=False)

    def ancestors(self, index: int) -> frozenset[int]:
        """Every call ``index`` depends on (not itself; INPUT included when it reads the model input)."""
        if index not in self._ancestors:
            found: set[int] = set()
            for producer in self.calls[index].inputs:
                found.add(producer)
                if producer != INPUT:
                    found |= self.ancestors(producer)
            self._ancestors[index] = frozenset(found)
        return self._ancestors[index]


def trace_model(model: Any, batch: np.ndarray) -> tuple[Trace, dict[int, np.ndarray], list[np.ndarray]]:
    """Run ``model`` on ``batch`` call by call: the graph, every call's output, the model's outputs.

    Example::

        trace, values, outputs = trace_model(model, images[:1])
        for call in trace.calls:
            print(call.name, call.type, values[call.index].shape)
    """
    import keras

    trace, tensors, outputs = _run(model, batch, identities=True)
    values = {index: keras.ops.convert_to_numpy(t) for index, t in tensors.items()}
    return trace, values, outputs


def call_values(model: Any, batch: np.ndarray, *, names: Collection[str]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Run ``model`` on ``batch`` again: the outputs of the calls named ``names`` (report names) and the model's outputs.

    ``model`` may be another build of the traced one (its float64 copy, its dilation-1 rewrite):
    calls are found by report name, and a name it does not have is an error.
    """
    import keras

    trace, tensors, outputs = _run(model, batch, identities=False)
    by_name = {call.name: call.index for call in trace.calls}
    missing = [name for name in names if by_name.get(name) not in tensors]
    if missing:
        raise RuntimeError(f"the Keras model has no single-tensor call named {', '.join(missing[:3])} on this run")
    return {name: keras.ops.convert_to_numpy(tensors[by_name[name]]) for name in names}, outputs


def _run(model: Any, batch: np.ndarray, *, identities: bool) -> tuple[Trace, dict[int, Any], list[np.ndarray]]:
    import keras

    from edgeseg.export._graph import walk

    producer: dict[int, int] = {}  # id(tensor) -> the call that made it
    alive: list[Any] = []  # every tensor of the run stays referenced, so no id is reused while it lasts
    raw: list[dict[str, Any]] = []
    tensors: dict[int, Any] = {}

    def hook(operation: Any, args: tuple, kwargs: dict, path: tuple[str, ...]) -> Any:
        if getattr(operation, "_call_has_training_arg", False) and "training" not in kwargs:
            kwargs = {**kwargs, "training": False}
        out = operation(*args, **kwargs)
        index = len(raw)
        sources = _tensors((args, kwargs))
        feeding = tuple(dict.fromkeys(producer.get(id(t), INPUT) for t in sources))
        outputs = _tensors(out)
        for tensor in outputs:
            producer[id(tensor)] = index
        alive.extend(outputs)
        one = outputs[0] if len(outputs) == 1 and not isinstance(out, (list, tuple, dict)) else None
        identity = identities and one is not None and len(sources) == 1 and _same(sources[0], one)
        raw.append({"operation": operation, "path": path, "inputs": feeding, "identity": identity,
                    "shape": None if one is None else tuple(int(d) for d in one.shape[1:]),
                    "dtype": None if one is None else keras.backend.standardize_dtype(one.dtype)})
        if one is not None:
            tensors[index] = one
        return out

    image = keras.ops.convert_to_tensor(batch, dtype=model.inputs[0].dtype)
    producer[id(image)] = INPUT
    alive.append(image)
    final = _tensors(walk(model, [image], hook))
    outputs = tuple(producer.get(id(t), INPUT) for t in final)
    return Trace(calls=_calls(raw), outputs=outputs), tensors, [keras.ops.convert_to_numpy(t) for t in final]


def _calls(raw: list[dict[str, Any]]) -> tuple[Call, ...]:
    """The run's calls with their report names (see :class:`Call`)."""
    import keras

    paths: dict[str, set[tuple[str, ...]]] = {}
    for item in raw:
        paths.setdefault(item["operation"].name, set()).add(item["path"])
    seen: dict[tuple[tuple[str, ...], int], int] = {}
    calls = []
    for index, item in enumerate(raw):
        operation, path = item["operation"], item["path"]
        name = operation.name if len(paths[operation.name]) == 1 else "/".join((*path, operation.name))
        key = (path, id(operation))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            name = f"{name}#{seen[key]}"
        calls.append(Call(index=index, name=name, layer_name=operation.name, type=type(operation).__name__, path=path,
                          layer=isinstance(operation, keras.layers.Layer), inputs=item["inputs"], shape=item["shape"],
                          identity=item["identity"], dtype=item["dtype"] or ""))
    return tuple(calls)


def _same(a: Any, b: Any) -> bool:
    import keras

    if tuple(a.shape) != tuple(b.shape) or str(a.dtype) != str(b.dtype):
        return False
    return bool(np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)))


def _tensors(value: Any) -> list[Any]:
    """The tensors in a call's arguments or outputs, in order."""
    import keras

    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return [value] if keras.ops.is_tensor(value) else []


def compute_dtype(model: Any) -> str:
    """The dtype most layers compute in: ``float16`` for a ``mixed_float16`` model, else their own."""
    from edgeseg.export._graph import leaf_layers

    found: dict[str, int] = {}
    for _, layer in leaf_layers(model):
        dtype = str(getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None) or "float32")
        found[dtype] = found.get(dtype, 0) + 1
    return max(found, key=found.get) if found else "float32"


def float64_copy(model: Any) -> tuple[Any, tuple[str, ...]]:
    """A copy of ``model`` computing in float64 with the same weights: the reference that tells who is off.

    Each layer is rebuilt from its config with a float64 dtype and given the original's weights;
    a layer that cannot be rebuilt so (a Lambda, whose function only unsafe mode deserializes, or a
    custom layer whose config does not round-trip) is shared as it is and computes in its own
    dtype. Returns the copy and the names of those shared layers.
    """
    import keras

    pairs: list[tuple[Any, Any]] = []
    shared: list[str] = []

    def clone(layer: Any) -> Any:
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a keras.ops operation computes in the dtype it is given
        if isinstance(layer, keras.layers.Lambda):
            shared.append(layer.name)
            return layer
        try:
            config = layer.get_config()
            config["dtype"] = "float64"
            copy = type(layer).from_config(config)
        except Exception:  # noqa: BLE001 - any layer class may refuse its own config; it is then shared as it is
            shared.append(layer.name)
            return layer
        pairs.append((layer, copy))
        return copy

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for layer, twin in pairs:
        values = layer.get_weights()
        if len(values) != len(twin.weights):
            raise RuntimeError(f"layer `{layer.name}` has {len(values)} weights, its float64 copy {len(twin.weights)}")
        twin.set_weights([np.asarray(v).astype(w.dtype) for v, w in zip(values, twin.weights)])
        if hasattr(twin, "finalize_state"):  # layers that derive constants from their weights (Normalization) do it here, as Keras' loader does
            twin.finalize_state()
    return copy, tuple(shared)
