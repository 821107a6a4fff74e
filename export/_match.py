"""Which ONNX tensor holds each Keras call's output: found for sure, or listed with the true reason.

tf2onnx names every node after the TensorFlow name scope it came from,
``[edgeseg/]<model>/[<sub-model>_<n>/]<layer>_<n>/<op>`` (TensorFlow adds the ``_<n>``). A name
alone can point at the wrong tensor: tf2onnx moves layout transposes across layers and renames
them after the layer they came from (a Resizing layer's name ended up on the final transpose
after the softmax, issue 24), names nodes it creates itself without any scope (``Resize__12``),
and merges layers into their neighbours (a ZeroPadding2D into the next Conv's pads). So a call
is matched to a tensor only when three things agree:

1. **name**: the tensor leaves a scope named after the call's layer, under its sub-model path;
   layout nodes tf2onnx inserted (``…__<n>`` Transposes/Reshapes) belong to no layer;
2. **shape**: the tensor's static shape (ONNX shape inference) is the Keras output's, NHWC or NCHW;
3. **position**: the matching keeps the Keras graph's order: a call's tensor descends from the
   tensors of its Keras ancestors and from no tensor of a call that is not one. Pairs that
   contradict each other are all dropped, never guessed between.

A call no scope names is found by position alone when exactly one unclaimed computing node of an
op type that layer becomes lies between its matched neighbours and fits its shape (a renamed
Resize). A call whose output equals its input in Keras (Dropout at inference) takes its input's
tensor. Every other call is "not compared", with what was actually found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgeseg.export._trace import INPUT, Call, Trace

_INSERTED = re.compile(r"__\d+(:\d+)?$")  # nodes tf2onnx adds itself
# Ops that only move or relabel values: a scope made of these alone has not computed its layer.
_MOVES_ONLY = frozenset({"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Cast"})
# Layers whose whole computation may be a layout change.
LAYOUT_LAYERS = frozenset({"Reshape", "Permute", "Flatten", "Cropping2D", "Cropping1D", "Cropping3D"})
# The ONNX op a layer becomes, for finding it by position when tf2onnx dropped its name.
POSITION_OPS = {"Resizing": {"Resize", "Upsample"}, "UpSampling2D": {"Resize", "Upsample"}, "ZeroPadding2D": {"Pad"}}


@dataclass(frozen=True)
class Found:
    """Where a call's output is in the ONNX graph: a tensor (and how it was found), or why not."""

    tensor: str | None
    how: str = ""  # "name", "position" or "identity" when found
    reason: str = ""  # why not, when not found


class OnnxGraph:
    """The ONNX graph indexed for matching: producers, consumers, static shapes, ancestry."""

    def __init__(self, proto: Any) -> None:
        graph = proto.graph
        self.nodes = list(graph.node)
        self.input = graph.input[0].name
        self.outputs = [o.name for o in graph.output]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for index, node in enumerate(self.nodes):
            for name in node.output:
                self.producer[name] = index
            for name in node.input:
                self.consumers.setdefault(name, []).append(index)
        # Ancestry as bit sets: bit 0 is the graph input, bit i + 1 node i (nodes are in topological order).
        self._mask: list[int] = []
        for index, node in enumerate(self.nodes):
            mask = 1 << (index + 1)
            for name in node.input:
                mask |= self.mask(name)
            self._mask.append(mask)
        self.shapes = _static_shapes(proto)

    def bit(self, tensor: str) -> int:
        if tensor == self.input:
            return 1
        index = self.producer.get(tensor)
        return 0 if index is None else 1 << (index + 1)

    def mask(self, tensor: str) -> int:
        """The bits of everything ``tensor`` depends on, itself included (0 for a constant)."""
        if tensor == self.input:
            return 1
        index = self.producer.get(tensor)
        return 0 if index is None else self._mask[index]

    def depends_on_input(self, tensor: str) -> bool:
        return bool(self.mask(tensor) & 1)

    def above(self, a: str, b: str) -> bool:
        """``a`` is ``b`` or something ``b`` is computed from."""
        return bool(self.bit(a) & self.mask(b))

    def order(self, tensor: str) -> int:
        return -1 if tensor == self.input else self.producer.get(tensor, -1)


def _static_shapes(proto: Any) -> dict[str, tuple[int | None, ...]]:
    """Each tensor's static shape from ONNX shape inference (None per unknown dimension).

    Large initializers are turned into typed graph inputs first: inference needs their shapes, not
    their values, and a 512 MB model is not copied twice for it.
    """
    import onnx

    light = onnx.ModelProto()
    if _small(proto):
        light.CopyFrom(proto)
    else:
        _copy_without_weights(proto, light)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a help: without it shapes are checked on the values
        inferred = light
    shapes: dict[str, tuple[int | None, ...]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    return shapes


def _small(proto: Any) -> bool:
    return sum(len(t.raw_data) for t in proto.graph.initializer) < 64 << 20


def _copy_without_weights(proto: Any, light: Any) -> None:
    import onnx

    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    graph = light.graph
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    graph.output.extend(proto.graph.output)
    for tensor in proto.graph.initializer:
        if len(tensor.raw_data) > 4096 or len(tensor.float_data) > 1024:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            graph.initializer.append(tensor)


def fits(onnx_shape: tuple[int | None, ...] | None, keras_shape: tuple[int, ...]) -> bool:
    """The ONNX tensor (batch first) can hold the Keras output (batch left out): NHWC, NCHW or unknown."""
    if onnx_shape is None:
        return True
    rest = onnx_shape[1:]
    layouts = [tuple(keras_shape)]
    if len(keras_shape) == 3:
        layouts.append((keras_shape[2], keras_shape[0], keras_shape[1]))
    return any(len(rest) == len(k) and all(d is None or d == e for d, e in zip(rest, k)) for k in layouts)


def match_calls(proto: Any, trace: Trace, *, wanted: Iterable[int]) -> dict[int, Found]:
    """Find the ONNX tensor of each call in ``wanted`` (indices into ``trace.calls``).

    Every layer call takes part in the matching (its position constrains its neighbours');
    the result holds the wanted ones.

    Example::

        found = match_calls(onnx.load("m.onnx"), trace, wanted=range(len(trace.calls)))
        print({trace.calls[i].name: f.tensor or f.reason for i, f in found.items()})
    """
    graph = OnnxGraph(proto)
    return _Matcher(graph, trace).run(set(wanted))


@dataclass
class _Scope:
    """The nodes of one layer scope, the calls it may be ({call index: name rank}) and its exit tensors in order."""

    nodes: list[int]
    candidates: dict[int, int]
    exits: list[str]


class _Matcher:
    def __init__(self, graph: OnnxGraph, trace: Trace) -> None:
        self.graph = graph
        self.trace = trace
        self.calls = trace.calls
        self.matched: dict[int, str] = {}
        self.how: dict[int, str] = {}
        self.scope_taken: dict[int, str] = {}
        self.reasons: dict[int, str] = {}
        self.banned: set[tuple[int, str]] = set()
        self.scopes, self.node_scope = _scopes(graph, [c for c in self.calls if c.layer])
        self.options: dict[int, list[str]] = {}  # call -> scopes it may be, best first
        for key, scope in sorted(self.scopes.items(), key=lambda item: item[1].nodes[0]):
            for index in scope.candidates:
                self.options.setdefault(index, []).append(key)
        for index, keys in self.options.items():
            keys.sort(key=lambda k: self.scopes[k].candidates[index])  # stable: graph order within a rank

    def run(self, wanted: set[int]) -> dict[int, Found]:
        order = [c for c in self.calls if c.layer and c.shape is not None and (c.index in self.options or not c.identity)]
        for call in order:  # 1. by name, checked against the calls matched before it
            self._by_name(call)
        self._drop_contradictions()  # 2. pairs whose order contradicts the Keras graph: all dropped
        for call in order:  # 3. again against what is now certain; then by position
            if call.index not in self.matched and not self._by_name(call):
                self._by_position(call)
        self._drop_contradictions()
        for call in self.calls:  # 4. identities take their input's tensor
            if call.layer and call.index not in self.matched and call.identity:
                self._identity(call)
        found = {}
        for index in wanted:
            call = self.calls[index]
            if index in self.matched:
                found[index] = Found(self.matched[index], how=self.how[index])
            elif call.shape is None:
                found[index] = Found(None, reason="it does not output one tensor")
            else:
                found[index] = Found(None, reason=self.reasons.get(index) or self._not_found(call))
        return found

    # -- by name -----------------------------------------------------------------------------

    def _by_name(self, call: Call) -> bool:
        taken = set(self.scope_taken.values())
        shape_reason = layout_reason = position_reason = ""
        for key in self.options.get(call.index, ()):
            if key in taken:
                continue
            scope = self.scopes[key]
            if call.type not in LAYOUT_LAYERS and all(self.graph.nodes[i].op_type in _MOVES_ONLY for i in scope.nodes):
                layout_reason = (f"its ONNX nodes (`{self.graph.nodes[scope.nodes[0]].name}`) only move data: tf2onnx "
                                 "moved the layer's computation away from its name")
                continue
            exits = [t for t in scope.exits if self.graph.depends_on_input(t)]
            fitting = [t for t in exits if fits(self.graph.shapes.get(t), call.shape)]
            if exits and not fitting:
                node = self.graph.nodes[self.graph.producer[exits[-1]]].name
                shape_reason = (f"shape differs: its ONNX node `{node}` outputs {_shape(self.graph.shapes.get(exits[-1]))}, "
                                f"Keras {(None, *call.shape)}")
                continue
            # The scope's last tensor of the right shape: an earlier one is a step inside the layer.
            tensor = fitting[-1] if fitting else None
            if tensor is None or (call.index, tensor) in self.banned:
                continue
            problem = self._position_problem(call, tensor)
            if problem is None:
                self._take(call, tensor, "name", key)
                return True
            position_reason = problem
        reason = position_reason or shape_reason or layout_reason
        if reason:
            self.reasons[call.index] = reason
        return False

    def _take(self, call: Call, tensor: str, how: str, key: str | None = None) -> None:
        self.matched[call.index] = tensor
        self.how[call.index] = how
        self.reasons.pop(call.index, None)
        if key is not None:
            self.scope_taken[call.index] = key

    def _drop(self, index: int, reason: str) -> None:
        tensor = self.matched.pop(index)
        self.banned.add((index, tensor))
        self.scope_taken.pop(index, None)
        self.how.pop(index, None)
        self.reasons[index] = reason

    # -- position ----------------------------------------------------------------------------

    def _nearest_matched(self, call: Call) -> set[int]:
        """The call's closest Keras ancestors that have a tensor (INPUT stands for the graph input)."""
        found, stack, seen = set(), list(call.inputs), set()
        while stack:
            producer = stack.pop()
            if producer in seen:
                continue
            seen.add(producer)
            if producer == INPUT or producer in self.matched:
                found.add(producer)
            else:
                stack.extend(self.calls[producer].inputs)
        return found

    def _tensor(self, index: int) -> str:
        return self.graph.input if index == INPUT else self.matched[index]

    def _position_problem(self, call: Call, tensor: str) -> str | None:
        """Why ``tensor`` cannot be ``call``'s output given the calls matched so far; None when it can."""
        for index in self._nearest_matched(call):
            source = self._tensor(index)
            if not self.graph.above(source, tensor) or (source == tensor and not call.identity):
                name = "the model input" if index == INPUT else f"`{self.calls[index].name}`"
                return f"position contradicts the Keras graph: its named ONNX node does not follow {name}'s"
        ancestors = self.trace.ancestors(call.index)
        for index, other in self.matched.items():
            if index == call.index:
                continue
            if other == tensor:
                return f"its named ONNX tensor is already `{self.calls[index].name}`'s"
            if index not in ancestors and self.graph.above(other, tensor):
                return (f"position contradicts the Keras graph: its named ONNX node comes after "
                        f"`{self.calls[index].name}`'s, which Keras does not compute before it")
            if call.index in self.trace.ancestors(index) and not self.graph.above(tensor, other):
                return (f"position contradicts the Keras graph: its named ONNX node does not lead to "
                        f"`{self.calls[index].name}`'s, which Keras computes from it")
        return None

    def _drop_contradictions(self) -> None:
        """Drop every matched call whose tensor's position contradicts another's (both, when neither can be told)."""
        while True:
            conflicts: dict[int, list[int]] = {}
            items = [(i, t) for i, t in self.matched.items() if self.how[i] != "identity"]
            for a, ta in items:
                ancestors_a = self.trace.ancestors(a)
                for b, tb in items:
                    if a == b:
                        continue
                    keras_above = b in ancestors_a  # b feeds a in Keras
                    onnx_above = self.graph.above(tb, ta) and tb != ta
                    if tb == ta or (keras_above and not onnx_above) or (onnx_above and not keras_above):
                        conflicts.setdefault(a, []).append(b)
            if not conflicts:
                return
            worst = max(len(v) for v in conflicts.values())
            for index, others in conflicts.items():
                if len(others) == worst:
                    self._drop(index, f"position contradicts the Keras graph: its named ONNX node `{self.matched[index]}` "
                                      f"is out of order with `{self.calls[others[0]].name}`'s")

    def _by_position(self, call: Call) -> bool:
        """A call no scope names: the one unclaimed node of the op type it becomes between its matched neighbours."""
        ops = POSITION_OPS.get(call.type)
        if ops is None:
            return False
        near = self._nearest_matched(call)
        above = [self._tensor(i) for i in near]
        below = [self.matched[i] for i in self._nearest_matched_below(call)]
        candidates = []
        for index, node in enumerate(self.graph.nodes):
            if node.op_type not in ops or index in self.node_scope:
                continue
            out = node.output[0]
            if all(self.graph.above(a, out) and a != out for a in above) \
                    and all(self.graph.above(out, b) and b != out for b in below) \
                    and fits(self.graph.shapes.get(out), call.shape) and (call.index, out) not in self.banned:
                candidates.append(out)
        # Another unfound call of the same kind beside it would make the choice a guess.
        rivals = [c for c in self.calls if c.layer and c.index != call.index and c.index not in self.matched
                  and POSITION_OPS.get(c.type) == ops and self._nearest_matched(c) & near]
        if len(candidates) == 1 and not rivals:
            self._take(call, candidates[0], "position")
            return True
        if candidates:
            count = len(candidates) if len(candidates) > 1 else 1 + len(rivals)
            self.reasons[call.index] = (f"node not found: no ONNX node carries its name, and {count} layers or nodes "
                                        f"of its kind ({'/'.join(sorted(ops))}) lie where it would be")
        return False

    def _nearest_matched_below(self, call: Call) -> set[int]:
        """The matched calls closest below ``call`` in Keras (only unmatched calls between)."""
        below = set()
        for other in self.calls:
            if other.index in self.matched and call.index in self._through(other):
                below.add(other.index)
        return below

    def _through(self, call: Call) -> set[int]:
        """The calls between ``call`` and its nearest matched ancestors, those ancestors included."""
        found, stack = set(), list(call.inputs)
        while stack:
            producer = stack.pop()
            if producer in found or producer == INPUT:
                continue
            found.add(producer)
            if producer not in self.matched:
                stack.extend(self.calls[producer].inputs)
        return found

    # -- identities and reasons --------------------------------------------------------------

    def _identity(self, call: Call) -> None:
        producer = call.inputs[0] if call.inputs else INPUT
        while producer != INPUT and producer not in self.matched and self.calls[producer].identity:
            producer = self.calls[producer].inputs[0]
        if producer == INPUT or producer in self.matched:
            self._take(call, self._tensor(producer), "identity")
        else:
            self.reasons[call.index] = (f"it passes its input on unchanged, and the tensor of its input "
                                        f"`{self.calls[producer].name}` was not found")

    def _not_found(self, call: Call) -> str:
        if call.type == "ZeroPadding2D":
            consumer = next((c for c in self.calls if call.index in c.inputs), None)
            key = self.scope_taken.get(consumer.index) if consumer is not None else None
            if key is not None and any(_padded(self.graph.nodes[i]) for i in self.scopes[key].nodes):
                return (f"merged into `{consumer.name}`: tf2onnx made the padding that node's pads, "
                        "so no ONNX tensor holds the padded image")
        return "node not found: no ONNX node carries its name, and none could be told by its position"


def _padded(node: Any) -> bool:
    return node.op_type in ("Conv", "ConvTranspose", "MaxPool", "AveragePool") and any(
        a.name == "pads" and any(a.ints) for a in node.attribute)


def _scopes(graph: OnnxGraph, layers: list[Call]) -> tuple[dict[str, _Scope], dict[int, str]]:
    """The graph's layer scopes by key, and each named node's scope key.

    A scope is the outermost part of a node's name that is a layer's name (plus TensorFlow's
    ``_<n>`` suffixes) under the call's sub-model path. Rank 0: the name plus one suffix (what
    TensorFlow writes), 1: the bare name, 2: more suffixes.
    """
    by_name: dict[str, list[Call]] = {}
    for call in layers:
        by_name.setdefault(call.layer_name, []).append(call)
    node_scope: dict[int, str] = {}
    options: dict[str, dict[int, int]] = {}
    for index, node in enumerate(graph.nodes):
        name = node.name if "/" in node.name else (node.output[0].rsplit(":", 1)[0] if node.output else "")
        if node.op_type in _MOVES_ONLY and _INSERTED.search(node.name):
            continue  # a layout node tf2onnx inserted: it belongs to no layer, whatever its name says
        parts = name.split("/")
        for depth in range(len(parts) - 1):
            candidates = _candidates(parts[depth], parts[:depth], by_name)
            if candidates:
                key = "/".join(parts[: depth + 1])
                node_scope[index] = key
                options.setdefault(key, {}).update(candidates)
                break
    scopes: dict[str, _Scope] = {}
    members: dict[str, set[int]] = {}
    for index, key in node_scope.items():
        members.setdefault(key, set()).add(index)
    for key, nodes in members.items():
        exits = []
        for index in sorted(nodes):
            for tensor in graph.nodes[index].output:
                users = graph.consumers.get(tensor, [])
                if tensor in graph.outputs or any(u not in nodes for u in users):
                    exits.append(tensor)
        scopes[key] = _Scope(nodes=sorted(nodes), candidates=options[key], exits=exits)
    return scopes, node_scope


def _candidates(part: str, outer: list[str], by_name: dict[str, list[Call]]) -> dict[int, int]:
    """Calls a scope part may be: {call index: rank}; a call whose sub-model path the outer parts do not hold ranks
    last (a rewritten export is flat: its scopes lost the sub-model names)."""
    found: dict[int, int] = {}
    base, suffixes = part, 0
    while True:
        for call in by_name.get(base, ()):
            rank = (0 if suffixes == 1 else 1 if suffixes == 0 else 2) + (0 if _holds(outer, call.path) else 3)
            found[call.index] = min(rank, found.get(call.index, rank))
        match = re.fullmatch(r"(.+)_\d+", base)
        if match is None:
            return found
        base, suffixes = match.group(1), suffixes + 1


def _holds(outer: list[str], path: tuple[str, ...]) -> bool:
    """The outer scope parts contain the sub-model path, in order (each name plus TensorFlow's suffixes)."""
    position = 0
    for model in path:
        while position < len(outer) and not _named(outer[position], model):
            position += 1
        if position == len(outer):
            return False
        position += 1
    return True


def _named(part: str, name: str) -> bool:
    return part == name or re.fullmatch(re.escape(name) + r"(_\d+)+", part) is not None


def _shape(shape: tuple[int | None, ...] | None) -> str:
    return "unknown" if shape is None else str(tuple(shape))
