"""Walking a Keras model layer by layer, nested sub-models flattened.

Verification needs every layer call's output, and the CUDA-friendly rewrite needs to swap layers
while keeping the rest. Both re-run the model's graph, calling each leaf layer (and each
``keras.ops`` operation between layers) through a hook: verification on real tensors, the
rewrite on fresh symbolic inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# hook(layer, args, kwargs, path) -> outputs; path is the tuple of enclosing sub-model names.
LayerHook = Callable[[Any, tuple, dict, tuple[str, ...]], Any]


def walk(model: Any, inputs: Sequence[Any], hook: LayerHook, *, path: tuple[str, ...] = ()) -> Any:
    """Re-run ``model`` on ``inputs`` (symbolic or real tensors), calling ``hook`` for every leaf layer.

    Sub-models (functional or Sequential) are entered, not called, so the result is one flat
    graph whose layers are the original layer objects (or whatever ``hook`` returns).

    Example::

        seen = []
        image = keras.Input((28, 28, 1))
        out = walk(model, [image], lambda layer, a, k, p: (seen.append(layer.name), layer(*a, **k))[1])
    """
    import keras

    if isinstance(model, keras.Sequential):
        x = inputs[0]
        for layer in model.layers:
            x = _call(layer, (x,), {}, hook, path)
        return x

    def call_fn(operation: Any, *args: Any, **kwargs: Any) -> Any:
        return _call(operation, args, kwargs, hook, path)

    # Keras 3's own graph runner (private, but the one place that knows the node order and
    # argument plumbing of a functional model); `call_fn` intercepts each node's call.
    return model._run_through_graph(list(inputs), call_fn=call_fn)


def _call(layer: Any, args: tuple, kwargs: dict, hook: LayerHook, path: tuple[str, ...]) -> Any:
    import keras

    if isinstance(layer, keras.Model):
        return walk(layer, list(args) if len(args) > 1 else [args[0]], hook, path=(*path, layer.name))
    return hook(layer, args, kwargs, path)


def leaf_layers(model: Any) -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf layer of ``model`` with the path of sub-model names that holds it, in graph order."""
    import keras

    found: list[tuple[tuple[str, ...], Any]] = []

    def visit(model: Any, path: tuple[str, ...]) -> None:
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                visit(layer, (*path, layer.name))
            elif not isinstance(layer, keras.layers.InputLayer):
                found.append((path, layer))

    visit(model, ())
    return found
