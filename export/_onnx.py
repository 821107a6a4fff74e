"""Keras model -> ONNX ``ModelProto`` -> contract in its metadata -> atomic write.

The one conversion call is :func:`_convert` (the low-memory drop-in for tf2onnx's
``from_keras``); everything else (the functional wrapper that names the input and fixes its
shape, the NCHW input, the contract) is ours, so another converter drops in at that one call site.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.runtime.contract import KINDS, Contract, write_contract
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import sha256_of, write_bytes_atomic
from edgeseg.export._verify import VerifyRequest

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "image"
# The functional wrapper every export goes through (it names and shapes the input); tf2onnx
# names nodes `edgeseg/<model>/<layer>/<op>`, and verification finds each layer by those names.
WRAPPER_NAME = "edgeseg"


@dataclass(frozen=True)
class ContractFacts:
    """Contract facts given on the command line; None means "what the .keras record says".

    Explicit values win over the record, so a foreign ``.keras`` (no record) exports too.
    """

    kind: str | None = None
    color: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str | None = None
    classes: tuple[str, ...] | None = None
    height: int | None = None  # the working size of a model that takes any size (--input-size HxW)
    width: int | None = None


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    path: Path
    contract: Contract
    nodes: int
    rewritten: int = 0
    report: Any = None  # the VerifyReport when verification ran


@dataclass(frozen=True)
class GraphOptions:
    """The shape of the ONNX graph :func:`export_model` writes (``--opset``, ``--batch``, ``--nchw``,
    ``--cuda-friendly``).

    ``batch``: a fixed batch size (None: dynamic). ``nchw``: an NCHW input (default NHWC, as Keras).
    ``cuda_friendly``: SAME Conv2DTranspose layers that would get asymmetric pads rewritten as VALID + crop
    (the same math), so onnxruntime's CUDA provider runs every node.

    Example::

        GraphOptions(batch=4, cuda_friendly=True)
    """

    opset: int = DEFAULT_OPSET
    batch: int | None = None
    nchw: bool = False
    cuda_friendly: bool = False

    def __post_init__(self) -> None:
        if self.batch is not None and (isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1):
            raise EdgesegError(f"--batch must be `dynamic` or a positive integer, got {self.batch!r}.")


def to_onnx(
    model: Any,
    *,
    height: int | None = None,
    width: int | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    nchw: bool = False,
    input_name: str = INPUT_NAME,
) -> Any:
    """Convert a Keras model (functional or Sequential, nested sub-models too) to ONNX.

    The ONNX input is ``input_name`` with static height and width (dynamic ones bloat every
    ConvTranspose with Shape/Slice sub-graphs) and a dynamic batch unless ``batch`` is given.
    ``height``/``width`` fill the model's unknown spatial sizes. ``nchw`` makes the input NCHW.

    Example::

        proto = to_onnx(model, opset=17)          # (N, H, W, C) input named "image"
        onnx.save(proto, "model.onnx")
    """
    import keras
    import tensorflow as tf

    from edgeseg.export import _patches
    from edgeseg.export._checks import flat_spatial_shape
    from edgeseg.export._cuda_friendly import exportable

    _patches.apply()
    shape = _input_shape(model, height=height, width=width)
    model, _ = exportable(model, size=(shape[0], shape[1]) if len(shape) == 3 else None)
    image = keras.Input(shape=tuple(shape), batch_size=batch, name=input_name)
    # Calling the model inside a functional wrapper is also what makes Sequential models
    # convertible (tf2onnx fails on a bare Sequential: KeyError 'keras_tensor_N', issue 2448).
    output = model(image)
    if len(model.outputs) > 1:
        # Each output gets its Keras name (both would be named after the wrapped model, and collide).
        from edgeseg.export._checks import output_names

        output = [keras.layers.Identity(name=name)(tensor) for name, tensor in zip(output_names(model), output)]
    flat = flat_spatial_shape(model, shape[0], shape[1]) if len(shape) == 3 else None
    if flat is not None:
        # A flat (N, H*W, C) output (Reshape + softmax): the file outputs (N, H, W, C), the same numbers
        # as an image, so the runtime reads it like any segmentation output.
        output = keras.layers.Reshape((*flat, output.shape[-1]), name="edgeseg_spatial")(output)
    wrapper = keras.Model(image, output, name=WRAPPER_NAME)
    signature = (tf.TensorSpec((batch, *shape), tf.float32, name=input_name),)
    proto = _convert(wrapper, input_signature=signature, opset=opset)
    if nchw:
        if len(shape) != 3:
            raise EdgesegError(f"--nchw needs an image input (H, W, C); model `{model.name}` takes {tuple(shape)}.")
        _input_as_nchw(proto, input_name)
    return proto


def _input_shape(model: Any, *, height: int | None, width: int | None) -> list[int]:
    """The input shape without the batch, unknown height and width filled in; refused while still unknown."""
    if len(model.inputs) != 1:
        raise EdgesegError(
            f"Cannot export model `{model.name}`: it has {len(model.inputs)} inputs; edgeseg exports models with one input."
        )
    shape = list(model.inputs[0].shape[1:])
    if len(shape) == 3:
        shape[0] = shape[0] if shape[0] is not None else height
        shape[1] = shape[1] if shape[1] is not None else width
    if any(d is None for d in shape):
        raise EdgesegError(
            f"Cannot export model `{model.name}`: its input shape {tuple(model.inputs[0].shape)} has unknown sizes; "
            "edgeseg exports a fixed working size: pass --input-size HxW (e.g. --input-size 256x256)."
        )
    return shape


def _convert(model: Any, *, input_signature: Sequence[Any], opset: int) -> Any:
    # The single conversion call site. `convert_lowmem` is a drop-in for
    # `tf2onnx.convert.from_keras(model, input_signature=..., opset=...)[0]` that keeps the
    # weights out of TensorFlow's frozen graph: the full-size FCN-8 converts at ~3 GB peak
    # instead of being killed for memory (see export/_lowmem.py).
    from edgeseg.export._lowmem import convert_lowmem

    return convert_lowmem(model, input_signature, opset=opset)


def _input_as_nchw(proto: Any, name: str) -> None:
    """Make graph input ``name`` NCHW (in place), removing the NHWC->NCHW Transpose tf2onnx put after it.

    Done on the graph rather than through tf2onnx's ``inputs_as_nchw`` so the conversion call
    keeps the plain signature a drop-in converter offers.
    """
    import onnx

    graph = proto.graph
    value = next(v for v in graph.input if v.name == name)
    dims = value.type.tensor_type.shape.dim
    n, h, w, c = (onnx.TensorShapeProto.Dimension() for _ in range(4))
    for copy, dim in zip((n, h, w, c), dims):
        copy.CopyFrom(dim)
    del dims[:]
    dims.extend([n, c, h, w])
    consumers = [node for node in graph.node if name in node.input]
    nhwc = f"{name}__nhwc"
    needs_nhwc = False
    chw = [d.dim_value for d in (c, h, w)]
    for node in consumers:
        if _is_to_nchw(node, graph, chw):
            # NHWC -> NCHW right after the input (a Transpose, or a Reshape where C or H*W is 1):
            # now a no-op, so its readers read the input itself.
            if any(output.name == node.output[0] for output in graph.output):
                raise EdgesegError("--nchw: the model's output is its own input, transposed; nothing to export.")
            for other in graph.node:
                other.input[:] = [name if i == node.output[0] else i for i in other.input]
            graph.node.remove(node)
        else:
            node.input[:] = [nhwc if i == name else i for i in node.input]
            needs_nhwc = True
    if needs_nhwc:
        graph.node.insert(0, onnx.helper.make_node("Transpose", [name], [nhwc], name=nhwc, perm=[0, 2, 3, 1]))


def _is_to_nchw(node: Any, graph: Any, chw: list[int]) -> bool:
    import onnx

    if node.op_type == "Transpose":
        return [list(a.ints) for a in node.attribute if a.name == "perm"] == [[0, 3, 1, 2]]
    # A Reshape equals that transpose only when one side of it is 1 (C, or H*W).
    if node.op_type == "Reshape" and (chw[0] == 1 or chw[1] * chw[2] == 1):
        shape = next((i for i in graph.initializer if i.name == node.input[1]), None)
        return shape is not None and list(onnx.numpy_helper.to_array(shape))[1:] == chw
    return False


def build_contract(
    model: Any,
    record: Mapping[str, Any] | None,
    facts: ContractFacts,
    *,
    output_name: str,
    layout: str = "NHWC",
    source: Mapping[str, Any] | None = None,
) -> Contract:
    """The contract for ``model``: the record as training wrote it, overridden by ``facts``.

    What the model itself states is inferred and checked: the input size and channels, the
    output activation and channel count against the class names, and preprocessing layers inside
    the model (then the contract's own scale/mean/std are the identity, so nothing is applied twice).
    A decoder's latent code shape goes into the contract's ``latent`` field.
    """
    from edgeseg.export._checks import check_classes

    record = dict(record or {})
    kind = facts.kind or record.get("kind")
    if kind is None:
        raise EdgesegError(
            f"The .keras file has no edgeseg record, so the model's kind is unknown; pass --kind ({'|'.join(KINDS)})."
        )
    raw = None
    if not record and kind != "decoder" and facts.scale is None and facts.mean is None and facts.std is None:
        raw = _takes_raw_pixels(model)
    raw_input = _input_facts(model, record, facts, kind, raw=raw is not None)
    if raw is not None:
        log.warning("The model takes raw 0..255 pixels (%s): the contract feeds them as they are (scale 1, mean 0, "
                    "std 1); pass --scale/--mean/--std to override.", raw)
    raw_input["layout"] = layout
    # The ONNX input's name: a decoder's takes a latent code, every other model an image.
    raw_input["name"] = "latent" if kind == "decoder" else INPUT_NAME
    raw_output = dict(record.get("output") or {})
    raw_output["name"] = output_name
    if facts.classes is not None:
        raw_output["classes"] = list(facts.classes)
        if len(raw_output.get("palette") or ()) < len(facts.classes):
            raw_output.pop("palette", None)
    raw_output.setdefault("activation", _final_activation(model))
    if kind == "segmentation":
        raw_output["classes"] = list(check_classes(model, raw_output.get("classes"), raw_output["activation"]))
        if len(raw_output.get("palette") or ()) < len(raw_output["classes"]):
            raw_output.pop("palette", None)
    latent = record.get("latent")
    if kind == "decoder" and latent is None:
        latent = {"shape": [d for d in model.inputs[0].shape[1:]]}
    data = {"kind": kind, "input": raw_input, "output": raw_output, "source": dict(source or {}), "latent": latent}
    return Contract.from_dict(data, origin="export")


def _takes_raw_pixels(model: Any) -> str | None:
    """Why the model wants raw 0..255 pixels (an integer input, or a Rescaling/Normalization layer inside), or None."""
    import keras

    from edgeseg.export._checks import normalizes_itself

    dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
    if "int" in dtype:
        return f"its input is {dtype}"
    if normalizes_itself(model):
        return "a Rescaling/Normalization layer inside normalizes them"
    return None


def _input_facts(model: Any, record: Mapping[str, Any], facts: ContractFacts, kind: str, *, raw: bool = False) -> dict[str, Any]:
    """The contract's input section: the record, the model's own shape, then the options (``raw``: pixels as they are)."""
    raw_input = dict(record.get("input") or {})
    if raw:
        raw_input.update(scale=1.0, mean=[0.0], std=[1.0])
    if facts.height is not None:
        raw_input["height"], raw_input["width"] = facts.height, facts.width
    # A decoder's input is the latent code; its contract input describes the image it makes.
    image_tensor = model.outputs[0] if kind == "decoder" else model.inputs[0]
    image_shape = tuple(image_tensor.shape[1:])
    if len(image_shape) == 3:
        for key, size in zip(("height", "width", "channels"), image_shape):
            if size is not None and raw_input.get(key) is None:
                raw_input[key] = int(size)
    if kind != "decoder" and (raw_input.get("height") is None or raw_input.get("width") is None):
        raise EdgesegError(
            f"Model `{model.name}` takes any input size {tuple(image_tensor.shape)}; edgeseg exports a fixed working "
            "size: pass --input-size HxW (e.g. --input-size 256x256)."
        )
    for key in ("color", "scale", "mean", "std", "resize"):
        value = getattr(facts, key)
        if value is not None:
            raw_input[key] = value
    defaulted = [key for key in ("color", "scale", "mean", "std", "resize") if key not in raw_input]
    if "color" not in raw_input and raw_input.get("channels") in (1, 3):
        raw_input["color"] = "GRAY" if raw_input["channels"] == 1 else "RGB"
    if defaulted and not record:
        # A foreign .keras: say it loudly once: a wrong default here makes every deployed prediction wrong.
        taken = {"color": raw_input.get("color"), "scale": "1/255", "mean": "0", "std": "1", "resize": "stretch"}
        log.warning(
            "The contract takes defaults for input %s; pass --%s to set them.",
            ", ".join(f"{key} {taken[key]}" for key in defaulted), "/--".join(defaulted),
        )
    return raw_input


def write_metadata(proto: Any, contract: Contract) -> None:
    """Write ``contract`` into ``proto``'s metadata, in place (every field, ``latent`` included)."""
    write_contract(proto, contract)


def save_onnx(proto: Any, path: str | os.PathLike) -> Path:
    """Write ``proto`` to ``path`` through a temporary file beside it, so no half-written model is left."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, proto.SerializeToString())
    except OSError as error:
        raise EdgesegError(f"Cannot write `{path}`: {error.strerror or error}. Choose a writable -o path.") from None
    return path


def source_versions(*, keras_sha256: str, opset: int, **more: Any) -> dict[str, Any]:
    """The contract's ``source``: what made this file, so a result can be reproduced."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    from edgeseg import __version__

    return {
        "keras_sha256": keras_sha256,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "opset": opset,
        "edgeseg": __version__,
        **more,
    }


def export_model(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    graph: GraphOptions = GraphOptions(),
    facts: ContractFacts = ContractFacts(),
    verify: VerifyRequest | None = None,
    output: str | None = None,
    custom_objects: str | None = None,
    unsafe: bool = False,
) -> ExportResult:
    """Export a ``.keras`` (or legacy ``.h5``) file to ONNX with the contract inside; optionally verify first.

    ``graph``: opset, batch, layout and the CUDA-friendly rewrite (:class:`GraphOptions`). ``output``: which
    of several Keras outputs to export, by name (default: the first), or ``all`` (the ONNX outputs are then
    named after the Keras ones, and the contract's ``source.outputs`` names each). ``custom_objects``: the
    module defining the model's custom layers; ``unsafe``: allow the Python code of Lambda layers (see
    ``load_model``).

    With ``verify``, the export is checked layer by layer before it is written, the summary
    goes into the contract's ``verified``, and the file is written even when a layer fails
    (the result's report says which; the command line exits 1).

    Example::

        result = export_model("runs/fcn8/model.keras", "fcn8.onnx", graph=GraphOptions(opset=17),
                              verify=VerifyRequest(random=2))
        print(result.contract.output.classes, result.report.ok)
    """
    from edgeseg.export._checks import output_names, refuse_unsupported, select_outputs, smoke_run
    from edgeseg.export._cuda_friendly import cuda_friendly as rewrite
    from edgeseg.export._keras_file import load_model
    from edgeseg.export._verify import verify_models

    progress(f"loading {model_path}")
    model, record = load_model(model_path, custom_objects=custom_objects, unsafe=unsafe)
    refuse_unsupported(model)
    heads, chosen = select_outputs(model, output)
    names = [output_names(model)[k] for k in heads]
    # The contract first: a missing fact fails here, before the slow conversion.
    contract = build_contract(chosen, record, facts, output_name="", layout="NCHW" if graph.nchw else "NHWC",
                              source=_export_source(model_path, graph, heads=heads))
    progress("converting to ONNX")
    size = (contract.input.height, contract.input.width)
    exported, rewritten = rewrite(chosen, size=size) if graph.cuda_friendly else (chosen, 0)
    proto = to_onnx(exported, height=contract.input.height, width=contract.input.width, opset=graph.opset,
                    batch=graph.batch, nchw=graph.nchw, input_name=contract.input.name)
    contract = _name_outputs(contract, proto, keras_names=names)
    progress("running the ONNX file once and comparing it with Keras")
    smoke_run(chosen, proto, contract)
    report = None
    if verify is not None:
        progress("verifying layer by layer")
        report = verify_models(model, proto, contract, request=verify)
        contract = contract.replace(verified=report.summary())
    write_metadata(proto, contract)
    path = save_onnx(proto, output_path)
    log.info("exported %s -> %s (%d nodes, opset %d)", model_path, path, len(proto.graph.node), graph.opset)
    return ExportResult(path=path, contract=contract, nodes=len(proto.graph.node), rewritten=rewritten, report=report)


def _export_source(model_path: str | os.PathLike, graph: GraphOptions, *, heads: list[int]) -> dict[str, Any]:
    """The contract's ``source``: the Keras file's hash, the versions, and how the graph was shaped."""
    return source_versions(keras_sha256=sha256_of(model_path), opset=graph.opset,
                           batch="dynamic" if graph.batch is None else graph.batch,
                           cuda_friendly=graph.cuda_friendly, keras_outputs=heads)


def _name_outputs(contract: Contract, proto: Any, *, keras_names: list[str]) -> Contract:
    """The contract's output is the file's first; with several, ``source.outputs`` maps each to its Keras name."""
    if len(keras_names) > 1:
        source = {**contract.source, "outputs": [{"name": o.name, "keras_output": name}
                                                 for o, name in zip(proto.graph.output, keras_names)]}
        contract = contract.replace(source=source)
    return contract.replace(output={"name": proto.graph.output[0].name})


def progress(stage: str) -> None:
    """One line per stage of a long command, so a user sees it is working: a log record, which the
    command line shows on stderr and a library caller sees only if it configures logging."""
    log.info("edgeseg: %s...", stage)


def _final_activation(model: Any) -> str:
    # The contract's output.activation when training recorded none: read it off the last layer.
    from edgeseg.export._graph import leaf_layers

    leaves = leaf_layers(model)
    if not leaves:
        return "none"
    last = leaves[-1][1]
    tensor = model.outputs[0]
    while getattr(tensor, "_keras_history", None) is not None:  # the layer that makes the (first) output
        last = tensor._keras_history[0]
        if not hasattr(last, "outputs") or not last.outputs:
            break
        tensor = last.outputs[0]  # a nested model: its own output layer
    name = type(last).__name__.lower()
    if name == "softmax":
        return "softmax"
    activation = getattr(last, "activation", None)
    activation = getattr(activation, "__name__", activation)
    return activation if activation in ("softmax", "sigmoid") else "none"
