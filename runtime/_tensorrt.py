"""How a file runs on TensorRT (through onnxruntime's TensorRT provider): precision flags and INT8.

An INT8 file from ``edgeseg calibrate`` reaches TensorRT one of two ways:

- **explicit**: its Q/DQ nodes are symmetric int8 (zero points 0, what ``calibrate --symmetric
  --activations int8`` writes): TensorRT runs the file's own scales;
- **table**: anything else (the x86 default is asymmetric uint8 activations, which TensorRT cannot
  take): the Q/DQ nodes are taken out again (weights dequantized in place, the int8 values kept)
  and TensorRT quantizes that float graph by the calibration table ``calibrate --trt-table`` wrote,
  whose tensor names are the float graph's. TensorRT refuses a table on a graph holding any Q/DQ
  node, so the file cannot be given as it is. The contract of the INT8 file records where its table is.

Everything here runs without a GPU (so it is tested on CPUs); only building the session needs one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.runtime._modelfile import ModelFile
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import require

TENSORRT = "TensorrtExecutionProvider"
TABLE_FILE = "calibration.flatbuffers"


@dataclass(frozen=True)
class TensorrtPlan:
    """What to give onnxruntime: the model (a path, or serialized bytes), the provider options, and why.

    ``int8``: ``None`` (a float file), ``"explicit"`` or ``"table"`` (see the module docstring).
    """

    model: str | bytes
    options: dict[str, Any]
    precision: str
    int8: str | None = None
    table: str | None = None
    notes: tuple[str, ...] = field(default=())


def engine_cache_dir(engine_cache: str | os.PathLike | None = None) -> Path:
    """Where built TensorRT engines are kept (building takes minutes; the cache makes it once per model and GPU)."""
    if engine_cache is not None:
        return Path(engine_cache)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeseg" / "tensorrt"


def tensorrt_plan(path: str | os.PathLike, *, fp16: bool = False, engine_cache: str | os.PathLike | None = None,
                  model: Any = None) -> TensorrtPlan:
    """The TensorRT provider options for ``path`` (and the model to give it), by the file's precision.

    A float file runs fp32, or fp16 with ``fp16``; an INT8 file runs int8 (with fp16 for the layers
    TensorRT keeps in float), explicitly or by its calibration table. ``model``: the ``ModelProto``
    when the caller changed it (extra outputs); else the file is read when needed.
    Raises EdgesegError naming the fix when an INT8 file can reach TensorRT neither way.

    Example::

        plan = tensorrt_plan("fcn8.int8.onnx")
        print(plan.int8, plan.options["trt_int8_enable"])   # "table" True
    """
    path = Path(path)
    cache = engine_cache_dir(engine_cache)  # created by the caller when it builds the session (a GPU is there then)
    options: dict[str, Any] = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                               "trt_fp16_enable": bool(fp16)}
    source = model if model is not None else str(path)
    if not _is_quantized(path, model):
        return TensorrtPlan(model=_serialized(source), options=options, precision="fp16" if fp16 else "fp32")
    proto = model if model is not None else _load(path)
    # Layers TensorRT keeps out of int8 (a float ConvTranspose, the output softmax) run in fp16, as with --best.
    options.update(trt_int8_enable=True, trt_fp16_enable=True)
    if symmetric_int8(proto):
        return TensorrtPlan(model=proto.SerializeToString(), options=options, precision="int8", int8="explicit",
                            notes=("symmetric int8 Q/DQ: TensorRT runs the file's own scales",))
    table = calibration_table(path)
    options.update(trt_int8_calibration_table_name=os.path.relpath(table, cache),
                   trt_int8_use_native_calibration_table=False)
    stripped = strip_qdq(proto, keep=set(read_table_names(table)))
    return TensorrtPlan(model=stripped.SerializeToString(), options=options, precision="int8", int8="table",
                        table=str(table),
                        notes=(f"asymmetric Q/DQ: TensorRT quantizes the float graph by the table {table}",))


def calibration_table(path: str | os.PathLike) -> Path:
    """The TensorRT calibration table recorded in an INT8 file's contract (``calibrate --trt-table``), checked."""
    from edgeseg.runtime.contract import Contract
    from edgeseg.runtime.files import sha256_of

    path = Path(path)
    contract = Contract.from_onnx(path, origin=f"model `{path}`")
    entry = ((contract.calibration or {}) if contract else {}).get("trt_table")
    if not entry:
        raise EdgesegError(
            f"`{path}` is an INT8 file with asymmetric (uint8) activations, which TensorRT cannot run as they are, "
            "and it records no TensorRT calibration table. Calibrate again with --trt-table DIR (TensorRT then "
            "quantizes by the table), or with --symmetric --activations int8 (TensorRT runs the file's own scales).")
    table = (path.parent / entry["path"] / TABLE_FILE).resolve()
    if not table.is_file():
        raise EdgesegError(f"`{path}` records its TensorRT calibration table in `{table.parent}`, but `{table}` is not "
                           "there. Keep the --trt-table folder next to the INT8 file, or calibrate again.")
    if entry.get("sha256") and sha256_of(table) != entry["sha256"]:
        raise EdgesegError(f"`{table}` is not the calibration table `{path}` was written with (sha256 differs). "
                           "Calibrate again with --trt-table.")
    return table


def read_table_names(table: str | os.PathLike) -> list[str]:
    """The tensor names of a TensorRT calibration table in onnxruntime's flatbuffers format."""
    trt_table = require("onnxruntime.quantization.CalTableFlatBuffers.TrtTable",
                        purpose="reading a TensorRT calibration table", among=("gpu",))
    table = trt_table.TrtTable.GetRootAsTrtTable(Path(table).read_bytes(), 0)
    return [table.Dict(i).Key().decode() for i in range(table.DictLength())]


def symmetric_int8(model: Any) -> bool:
    """True when every QuantizeLinear of ``model`` is int8 with zero point 0 (what TensorRT runs explicitly)."""
    from onnx import TensorProto, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    quantizers = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    for node in quantizers:
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zero is None or zero.data_type != TensorProto.INT8 or numpy_helper.to_array(zero).any():
            return False
    return bool(quantizers)


def strip_qdq(model: Any, *, keep: set[str] = frozenset()) -> Any:
    """A float copy of a QDQ model: Q->DQ pairs on activations removed, DQ on weights folded into float weights.

    The float graph keeps the tensor names the ranges were collected on: where a pair's two ends
    both exist, the one in ``keep`` (the table's names) names the tensor, else the one before the pair.

    Example::

        float_model = strip_qdq(onnx.load("m.int8.onnx"), keep=set(read_table_names(table)))
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {init.name: init for init in graph.initializer}
    dropped, folded, group, floor_zero = _scan_dequantizers(graph, inits)
    canonical = _canonical_names(group, outputs={o.name for o in graph.output}, keep=keep)
    kept = _float_nodes(graph, dropped=dropped, canonical=canonical, relu={canonical[name] for name in floor_zero})
    used = {name for node in kept for name in node.input}
    del graph.node[:]
    graph.node.extend(kept)
    remaining = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining + [w for w in folded if w.name in used])
    del graph.value_info[:]  # the quantized types no longer hold
    return onnx.shape_inference.infer_shapes(out)


def _root(group: dict[str, str], name: str) -> str:
    while group.get(name, name) != name:
        name = group[name]
    return name


def _scan_dequantizers(graph: Any, inits: dict[str, Any]) -> tuple[set[int], list[Any], dict[str, str], set[str]]:
    """Each DequantizeLinear: a weight's folded into a float initializer, an activation's Q->DQ pair dropped.

    Returns the positions in ``graph.node`` of the nodes dropped (positions, not ``id()``: protobuf's message
    wrappers are made afresh once released), the folded weights, the union-find over the names of one tensor
    (before and after each pair) and the pairs whose range starts at 0 (the quantizer took a Relu's place).
    """
    from onnx import numpy_helper

    producer = {name: (position, node) for position, node in enumerate(graph.node) for name in node.output}
    group: dict[str, str] = {}
    dropped: set[int] = set()
    folded = []
    floor_zero: set[str] = set()
    for position, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in inits:  # a weight: fold scale and zero point into a float initializer
            folded.append(numpy_helper.from_array(_dequantized(node, inits), node.output[0]))
            dropped.add(position)
            continue
        quantizer_at, quantizer = producer.get(source, (None, None))
        if quantizer is not None and quantizer.op_type == "QuantizeLinear":
            dropped.update((position, quantizer_at))
            group[_root(group, node.output[0])] = _root(group, quantizer.input[0])
            _, made_by = producer.get(quantizer.input[0], (None, None))
            if made_by is not None and made_by.op_type in _ABSORBS_RELU and _clips_at_zero(quantizer, inits):
                floor_zero.add(node.output[0])
    return dropped, folded, group, floor_zero


def _canonical_names(group: dict[str, str], *, outputs: set[str], keep: set[str]) -> dict[str, str]:
    """The one name of each tensor: the graph output's, else the table's, else the name before the first pair."""
    members: dict[str, list[str]] = {}
    for name in group:
        members.setdefault(_root(group, name), []).append(name)
    canonical = {}
    for root, names in members.items():
        names = [root, *names]
        chosen = next((n for n in names if n in outputs), None) or next((n for n in names if n in keep), root)
        canonical.update({n: chosen for n in names})
    return canonical


def _float_nodes(graph: Any, *, dropped: set[int], canonical: dict[str, str], relu: set[str]) -> list[Any]:
    """The nodes left, renamed to the canonical names, with the Relus the quantizers had taken the place of."""
    import onnx

    kept = []
    for position, node in enumerate(graph.node):
        if position in dropped:
            continue
        node.input[:] = [canonical.get(n, n) for n in node.input]
        node.output[:] = [canonical.get(n, n) for n in node.output]
        kept.append(node)
        for position, name in enumerate(node.output):
            if name in relu:  # QDQ drops a Relu before an unsigned zero-point-0 quantizer; the float graph needs it
                node.output[position] = f"{name}/relu_input"
                kept.append(onnx.helper.make_node("Relu", [node.output[position]], [name], name=f"{name}/relu"))
    return kept


# The ops after which onnxruntime's QDQ quantizer drops a Relu (an unsigned zero-point-0 quantizer clips the same).
_ABSORBS_RELU = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul"})


def _clips_at_zero(quantizer: Any, inits: dict[str, Any]) -> bool:
    """True when the quantizer's lowest value is 0.0 (uint8 with zero point 0, int8 with -128)."""
    from onnx import TensorProto, numpy_helper

    zero = inits.get(quantizer.input[2]) if len(quantizer.input) > 2 else None
    if zero is None:
        return True  # the default zero point is uint8 0
    lowest = 0 if zero.data_type == TensorProto.UINT8 else -128 if zero.data_type == TensorProto.INT8 else None
    return lowest is not None and bool((numpy_helper.to_array(zero) == lowest).all())


def _dequantized(node: Any, inits: dict[str, Any]) -> Any:
    """A DequantizeLinear of initializers, computed: (q - zero point) * scale, per channel along its axis."""
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[node.input[0]]).astype("float64")
    scale = numpy_helper.to_array(inits[node.input[1]]).astype("float64")
    zero = numpy_helper.to_array(inits[node.input[2]]).astype("float64") if len(node.input) > 2 else 0.0
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[next((a.i for a in node.attribute if a.name == "axis"), 1)] = scale.size
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if getattr(zero, "ndim", 0) else zero
    return ((q - zero) * scale).astype("float32")


def _is_quantized(path: Path, model: Any) -> bool:
    if model is not None:
        return any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    # The file's one read (its operators, no weights): a float file needs no onnx package here.
    return ModelFile.read(path).quantized


def _serialized(model: Any) -> str | bytes:
    return model if isinstance(model, str) else model.SerializeToString()


def _load(path: Path) -> Any:
    onnx = require("onnx", purpose="TensorRT with an INT8 file", among=("calibrate",))
    return onnx.load(str(path))
