"""The contract every edgeseg ONNX file carries: how to preprocess its input, what its output means.

The exporter writes it into the ONNX file's ``metadata_props`` under the key ``edgeseg``, as one
JSON object (docs/architecture.md). The runtime and the calibrator read it from there, so deployment cannot
preprocess differently from training. This module needs neither ``onnx`` nor ``onnxruntime``:
it works on plain dicts, JSON text and ``ModelProto``-like objects.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeseg.runtime.errors import EdgesegError

METADATA_KEY = "edgeseg"
FORMAT_VERSION = 1

KINDS = ("segmentation", "autoencoder", "encoder", "decoder")
LAYOUTS = ("NHWC", "NCHW")
COLORS = ("RGB", "BGR", "GRAY")
RESIZE_MODES = ("stretch", "letterbox")
ACTIVATIONS = ("softmax", "sigmoid", "none")
# What the graph itself already did to its scores: "class_ids" = argmax (or the one-channel threshold rule)
# is in the graph and the output is the class-id mask (uint8/uint16), so the host does no argmax.
FUSED = ("none", "class_ids")
# A model input larger than this is refused when the contract is read: 8192x8192 is already a 768 MB RGB float tensor.
MAX_INPUT_PIXELS = 8192 * 8192
# A contract is a few levels deep; deeper JSON is refused before Python's recursion limit turns it into a traceback.
MAX_NESTING = 32

# Colours for class masks and overlays when a model names none (class 0 is background: black).
DEFAULT_PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
)


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """``n`` distinct RGB colours, background first; cycles past the built-in 16."""
    return tuple(DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)] for i in range(n))


@dataclass(frozen=True)
class InputSpec:
    """What the model's input tensor expects, and how a frame becomes it.

    A frame's pixels ``p`` (0..255, in ``color`` order) become ``(p * scale - mean) / std``,
    per channel, after resizing to ``height`` x ``width`` by ``resize``.
    """

    height: int
    width: int
    channels: int
    color: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "stretch"
    layout: str = "NHWC"
    name: str = "image"

    def __post_init__(self) -> None:
        _check_choice("input.layout", self.layout, LAYOUTS)
        _check_choice("input.color", self.color, COLORS)
        _check_choice("input.resize", self.resize, RESIZE_MODES)
        for key in ("height", "width", "channels"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise EdgesegError(f"Contract key `input.{key}` must be a positive integer, got {value!r}.")
        if self.height * self.width > MAX_INPUT_PIXELS:
            raise EdgesegError(
                f"Contract says the input is {self.height}x{self.width} pixels, more than the {MAX_INPUT_PIXELS} "
                "one frame may have (a float tensor of it would not fit in memory). Fix input.height/width."
            )
        expected = 1 if self.color == "GRAY" else 3
        if self.channels != expected:
            raise EdgesegError(
                f"Contract says input.color={self.color!r}, which has {expected} channel(s), "
                f"but input.channels={self.channels}."
            )
        for key in ("mean", "std"):
            values = tuple(_number(f"input.{key}", v) for v in getattr(self, key))
            if len(values) not in (1, self.channels):
                raise EdgesegError(
                    f"Contract key `input.{key}` needs 1 or {self.channels} values, got {len(values)}."
                )
            object.__setattr__(self, key, values)
        if any(s == 0 for s in self.std):
            raise EdgesegError("Contract key `input.std` must not contain 0.")
        scale = _number("input.scale", self.scale)
        if scale == 0:
            raise EdgesegError("Contract key `input.scale` (--scale) must not be 0: every pixel would become the mean.")
        object.__setattr__(self, "scale", scale)


@dataclass(frozen=True)
class OutputSpec:
    """What the model's (first) output means.

    ``fused``: ``none`` (scores out), or ``class_ids`` (the graph ends in the class-id rule: its output is
    the (N, H, W) class-id mask at model size; see :func:`edgeseg.runtime.fuse_class_ids`).
    """

    name: str = "output"
    activation: str = "none"
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    fused: str = "none"

    def __post_init__(self) -> None:
        _check_choice("output.activation", self.activation, ACTIVATIONS)
        _check_choice("output.fused", self.fused, FUSED)
        classes = tuple(str(c) for c in self.classes)
        palette = tuple(tuple(int(v) for v in colour) for colour in self.palette)
        if classes and not palette:
            palette = default_palette(len(classes))
        if classes and len(palette) < len(classes):
            raise EdgesegError(
                f"Contract key `output.palette` has {len(palette)} colours for {len(classes)} classes."
            )
        if any(len(colour) != 3 or not all(0 <= v <= 255 for v in colour) for colour in palette):
            raise EdgesegError("Contract key `output.palette` must hold [R, G, B] triples in 0..255.")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "palette", palette)


@dataclass(frozen=True)
class Contract:
    """The whole contract: one per ONNX file. Read it with :func:`contract_from_metadata`.

    Example::

        contract = Contract(kind="segmentation",
                            input=InputSpec(height=224, width=224, channels=3),
                            output=OutputSpec(activation="softmax", classes=("background", "cell")))
        metadata = {METADATA_KEY: contract.to_json()}
    """

    kind: str
    input: InputSpec
    output: OutputSpec = field(default_factory=OutputSpec)
    source: Mapping[str, Any] = field(default_factory=dict)
    verified: Mapping[str, Any] | None = None
    calibration: Mapping[str, Any] | None = None
    # Encoder and decoder halves: the code's size and shape ({"latent_size": 2, "shape": [1, 1, 2]}).
    latent: Mapping[str, Any] | None = None
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        if self.kind == "segmentation" and len(self.output.classes) < 1:
            raise EdgesegError("Contract of a segmentation model needs `output.classes` (one name per class).")

    @property
    def num_classes(self) -> int:
        return len(self.output.classes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input"]["mean"] = list(self.input.mean)
        data["input"]["std"] = list(self.input.std)
        data["output"]["classes"] = list(self.output.classes)
        data["output"]["palette"] = [list(c) for c in self.output.palette]
        if self.output.fused == "none":  # the common case stays out of the JSON: older readers see no change
            del data["output"]["fused"]
        data["source"] = dict(self.source)
        for optional in ("verified", "calibration", "latent"):
            if data[optional] is None:
                del data[optional]
            else:
                data[optional] = dict(data[optional])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> Contract:
        """A copy with top-level fields changed (``input``/``output`` take specs or dicts of changes)."""
        for key in ("input", "output"):
            if isinstance(changes.get(key), Mapping):
                changes[key] = dataclasses.replace(getattr(self, key), **changes[key])
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "contract") -> Contract:
        """Build and validate a contract; a missing or wrong key raises an error naming it."""
        if not isinstance(data, Mapping):
            raise EdgesegError(f"{origin}: the contract must be a JSON object, got {type(data).__name__}.")
        deep = _too_deep(data, MAX_NESTING)
        if deep is not None:
            raise EdgesegError(f"{origin}: contract key `{deep}` is nested more than {MAX_NESTING} levels deep; "
                               "a contract is a few levels of objects and lists. Re-export the model.")
        fmt = data.get("format", FORMAT_VERSION)
        if fmt != FORMAT_VERSION:
            raise EdgesegError(
                f"{origin}: contract format {fmt!r} is not supported (this edgeseg reads format {FORMAT_VERSION}); "
                "upgrade edgeseg or re-export the model."
            )
        for key in ("kind", "input"):
            if key not in data:
                raise EdgesegError(f"{origin}: the contract lacks the key `{key}`.")
        for key in ("input", "output", "source", "verified", "calibration", "latent"):
            value = data.get(key)
            if (value is not None or key == "input") and not isinstance(value, Mapping):
                raise EdgesegError(f"{origin}: contract key `{key}` must be a JSON object, got {_shown(value)}.")
        raw_input = dict(data["input"])
        for key in ("height", "width", "channels"):
            if key not in raw_input:
                raise EdgesegError(f"{origin}: the contract lacks the key `input.{key}`.")
        try:
            spec_in = InputSpec(**_known(InputSpec, raw_input))
            spec_out = OutputSpec(**_known(OutputSpec, dict(data.get("output") or {})))
            return cls(
                kind=data["kind"],
                input=spec_in,
                output=spec_out,
                source=dict(data.get("source") or {}),
                verified=data.get("verified"),
                calibration=data.get("calibration"),
                latent=data.get("latent"),
                format=fmt,
            )
        except EdgesegError as error:
            raise EdgesegError(f"{origin}: {error}") from None
        except (TypeError, ValueError, OverflowError) as error:
            raise EdgesegError(f"{origin}: malformed contract: {' '.join(str(error).split())}") from None

    @classmethod
    def from_onnx(cls, model: str | os.PathLike | Any, *, origin: str | None = None) -> Contract | None:
        """The contract stored in an ONNX model, or None when it carries none.

        ``model``: a path to an ``.onnx`` file (read without onnx or onnxruntime, skipping the graph,
        so a 512 MB model costs a few reads), an ``onnx.ModelProto``, or a metadata map such as
        onnxruntime's ``custom_metadata_map``. This is the one reader every tool uses.

        Example::

            contract = Contract.from_onnx("fcn8.onnx")
            print(contract.input.height, contract.output.classes)
        """
        if isinstance(model, (str, os.PathLike)):
            origin = origin or f"model `{model}`"
            metadata = read_onnx_metadata(model)
        elif isinstance(model, Mapping):
            metadata = model
        else:
            metadata = metadata_of(model)
        text = metadata.get(METADATA_KEY)
        if text is None:
            return None
        return cls.from_json(text, origin=origin or "model")

    @classmethod
    def from_json(cls, text: str, *, origin: str = "contract") -> Contract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise EdgesegError(f"{origin}: the `{METADATA_KEY}` metadata is not valid JSON ({error}).") from None
        except RecursionError:  # the parser recurses per level: thousands of [[[ exhaust the stack
            raise EdgesegError(f"{origin}: the `{METADATA_KEY}` metadata is nested too deep for Python's JSON parser "
                               f"(a contract is at most {MAX_NESTING} levels of objects and lists). Re-export the "
                               "model.") from None
        return cls.from_dict(data, origin=origin)


def metadata_of(model_proto: Any) -> dict[str, str]:
    """``metadata_props`` of an ``onnx.ModelProto`` as a plain dict."""
    return {entry.key: entry.value for entry in model_proto.metadata_props}


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read from its protobuf wire format without loading the graph (the
    runtime's one reader of ONNX files, :class:`edgeseg.runtime.ModelFile`, reads them once; the weights are
    skipped). A file that is not an ONNX file raises EdgesegError naming it."""
    from edgeseg.runtime._modelfile import ModelFile  # ModelFile parses contracts with this module: import late

    return dict(ModelFile.read(path).metadata)


def write_contract(model_proto: Any, contract: Contract) -> None:
    """Store ``contract`` in ``model_proto.metadata_props`` (in place), replacing an older one."""
    kept = [(e.key, e.value) for e in model_proto.metadata_props if e.key != METADATA_KEY]
    del model_proto.metadata_props[:]
    for key, value in kept:
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()


def _known(spec: type, data: dict[str, Any]) -> dict[str, Any]:
    # Unknown keys are ignored so that later formats can extend a section without breaking readers.
    names = {f.name for f in dataclasses.fields(spec)}
    kept = {k: v for k, v in data.items() if k in names}
    for key in ("mean", "std"):
        if key in kept and not isinstance(kept[key], Sequence):
            kept[key] = (kept[key],)
    return kept


def _number(key: str, value: Any) -> float:
    """A finite float, or EdgesegError naming the key (NaN or infinity would make every input NaN)."""
    flag = {"input.scale": "--scale", "input.mean": "--mean", "input.std": "--std"}.get(key)
    named = f"`{key}` ({flag})" if flag else f"`{key}`"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise EdgesegError(f"Contract key {named} must hold numbers, got {_shown(value)}.")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise EdgesegError(f"Contract key {named} must hold numbers, got {_shown(value)}.") from None
    if not math.isfinite(number):
        raise EdgesegError(f"Contract key {named} must hold finite numbers, got {value!r}.")
    return number


def _too_deep(value: Any, limit: int) -> str | None:
    """The dotted key where ``value`` nests more than ``limit`` containers deep, or None (no recursion)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, Mapping):
            children = [(v, f"{where}.{k}" if where else str(k)) for k, v in item.items()]
        elif isinstance(item, (list, tuple)):
            children = [(v, f"{where}[{i}]") for i, v in enumerate(item)]
        else:
            continue
        if depth >= limit:
            return where[:60] + ("..." if len(where) > 60 else "")
        stack.extend((child, key, depth + 1) for child, key in children)
    return None


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, list)) else repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise EdgesegError(f"Contract key `{key}` must be one of {', '.join(choices)}; got {value!r}.")
