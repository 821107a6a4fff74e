"""Static INT8 quantization with onnxruntime: ranges collected in chunks, then QDQ (or QOperator) weights.

Calibration runs once, chunk by chunk, into a ranges cache; every later quantization (the
default one, and each step of accuracy control) reuses that cache through ``quantize_static``'s
``calibration_cache_path``, so returning layers to float never re-reads the frames.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import require
from edgeseg.runtime.files import write_bytes_atomic, write_json_atomic, write_text_atomic

log = logging.getLogger("edgeseg.calibration")

METHODS = ("minmax", "entropy", "percentile")
FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("auto", "int8", "uint8")
# The CPU the INT8 file is made for: "native" (this one), "avx2" (x86-64 without int8 dot product: 7-bit
# weights), "vnni" (VNNI, AMX-INT8, or an ARM dot product: full 8-bit weights).
TARGETS = ("native", "avx2", "vnni")
# Node types that mark a model as already quantized.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "QLinearAdd", "QLinearMul", "QGemm", "QLinearConcat", "QLinearSoftmax", "QLinearSigmoid",
})


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize. Defaults: QDQ, int8 per-channel weights, activations by CPU (``auto``).

    ``activations="auto"`` picks uint8 on x86-64 and int8 elsewhere (ARM, GPUs). Measured on
    FCN-8 here: with int8 activations onnxruntime's x86 CPU provider leaves every Conv that
    follows a MaxPool in float (4 of 18 in FCN-8, 1.98x instead of 2.21x); ARM and TensorRT prefer
    int8. Weights are always int8.

    ``target`` is the CPU the file is for (``native``: this one), and sets ``reduce_range`` when that is
    None: x86-64 CPUs without an int8 dot product (AVX2 only) multiply u8 x s8 pairs with
    ``vpmaddubsw``, whose 16-bit sums saturate with full-range weights, so they get 7-bit weights;
    VNNI/AMX-INT8 (and ARM's dot product) accumulate in 32 bits and get all 8. Measured (issue 24): a
    real-size FCN-8 on an AMD AVX2 CPU agreed 98.25% with FP32 at full range and 99.66% with
    ``reduce_range``, at the same speed; :attr:`rule` says which rule chose and why.

    ``symmetric_activations`` makes activation ranges symmetric around 0 (what TensorRT wants);
    weights are always symmetric. ``float_nodes`` and ``float_op_types`` stay in float.
    ``float_output`` keeps the final Softmax/Sigmoid in float: 8-bit probabilities move in steps
    of 1/256, so near-even pixels tie and argmax flips, while the op itself costs next to nothing.
    """

    method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    format: str = "qdq"
    activations: str = "auto"
    symmetric_activations: bool = False
    reduce_range: bool | None = None
    target: str = "native"
    moving_average: bool = False
    float_output: bool = True
    float_nodes: tuple[str, ...] = ()
    # onnxruntime's CPU provider has no int8 ConvTranspose: quantizing it only adds a Q/DQ round
    # trip on its output (on the tiny trained FCN: agreement 99.06% -> 99.34% when kept float, no
    # slower). Pass () for TensorRT, which has int8 deconvolution.
    float_op_types: tuple[str, ...] = ("ConvTranspose",)
    rule: str = field(default="", init=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgesegError(f"--method must be one of {', '.join(METHODS)}; got {self.method!r}.")
        if self.format not in FORMATS:
            raise EdgesegError(f"--format must be one of {', '.join(FORMATS)}; got {self.format!r}.")
        if self.activations not in ACTIVATION_TYPES:
            raise EdgesegError(f"--activations must be one of {', '.join(ACTIVATION_TYPES)}; got {self.activations!r}.")
        if self.activations == "auto":
            object.__setattr__(self, "activations", default_activations())
        if self.target not in TARGETS:
            raise EdgesegError(f"--target must be one of {', '.join(TARGETS)}; got {self.target!r}.")
        target, why = resolve_target(self.target)
        object.__setattr__(self, "target", target)
        if self.reduce_range is None:
            object.__setattr__(self, "reduce_range", target == "avx2")
            rule = f"{'7-bit (reduce_range)' if target == 'avx2' else 'full 8-bit'} weights for target {target}: {why}"
        else:
            object.__setattr__(self, "reduce_range", bool(self.reduce_range))
            rule = f"{'7-bit' if self.reduce_range else 'full 8-bit'} weights as asked (target {target}: {why})"
        object.__setattr__(self, "rule", rule)
        if not 0.0 < self.percentile <= 100.0:
            raise EdgesegError(f"--percentile must be in (0, 100], got {self.percentile}.")
        object.__setattr__(self, "float_nodes", tuple(self.float_nodes))
        object.__setattr__(self, "float_op_types", tuple(self.float_op_types))

    def summary(self) -> dict:
        return {
            "method": self.method, "percentile": self.percentile if self.method == "percentile" else None,
            "per_channel": self.per_channel, "format": self.format,
            "activations": self.activations, "weights": "int8",
            "symmetric_activations": self.symmetric_activations, "reduce_range": self.reduce_range,
            "target": self.target, "rule": self.rule,
            "float_output": self.float_output,
            "float_op_types": list(self.float_op_types),
        }


def default_activations(machine: str | None = None) -> str:
    """uint8 activations on x86-64 (what onnxruntime's x86 int8 kernels fuse best), int8 elsewhere."""
    machine = (machine or platform.machine()).lower()
    return "uint8" if machine in ("x86_64", "amd64", "x86", "i686", "i386") else "int8"


def resolve_target(target: str, cpuinfo: str | None = None) -> tuple[str, str]:
    """``(avx2 | vnni, why)``: the CPU ``target`` names; ``native`` reads this CPU's flags (``cpuinfo``: for tests).

    Example::

        resolve_target("native")   # ("vnni", "this CPU has avx512_vnni, ...: int8 dot products ...")
    """
    from edgeseg.calibration._measure import cpu_int8_support

    if target == "avx2":
        return "avx2", "asked for (x86-64 without VNNI/AMX-INT8: AVX2's vpmaddubsw saturates 16-bit sums)"
    if target == "vnni":
        return "vnni", "asked for (int8 dot products accumulate in 32 bits: no saturation)"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "x86", "i686", "i386"):
        return "vnni", f"this CPU is {machine}: its int8 kernels do not saturate 16-bit sums"
    has_dot, flags = cpu_int8_support(cpuinfo)
    if has_dot:
        return "vnni", f"this CPU has {flags}: int8 dot products accumulate in 32 bits"
    return "avx2", (f"this CPU has {flags}: AVX2's vpmaddubsw adds u8 x s8 pairs into saturating 16-bit sums, "
                    "which 7-bit weights keep from saturating")


def make_session(path: str | os.PathLike, *, threads: int | None = None):
    """The runtime's CPU session (same options ``edgeseg segment`` uses), for timing and comparing."""
    from edgeseg.runtime import make_session as runtime_session

    return runtime_session(path, provider="cpu", threads=threads)


def analysis_session(path: str | os.PathLike):
    """A session for analysis runs that save many activations: no memory arena, so memory goes
    back to the system after each run instead of staying at the largest run's size."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def check_quantizable(model) -> None:
    """Refuse a model that already holds quantized operators."""
    found = sorted({node.op_type for node in model.graph.node if node.op_type in QUANTIZED_OPS})
    if found:
        raise EdgesegError(
            f"The model is already quantized (it holds {', '.join(found)} nodes). Calibrate the FP32 parent model instead."
        )


def preprocess_for_quantization(source: Path, target: Path) -> None:
    """Shape inference and graph cleanup before quantization (onnxruntime's ``quant_pre_process``).

    The symbolic shape pass is skipped: these CNNs have static spatial shapes, and the symbolic
    pass is slow and fails on some tf2onnx exports.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


@dataclass
class RangeCollector:
    """Calibration ranges, collected chunk by chunk so memory is bounded by one chunk's activations.

    Histogram methods (entropy, percentile) keep one histogram per tensor between chunks, never
    the tensors; minmax keeps running minima and maxima.
    """

    model_path: Path
    work_dir: Path
    options: QuantizeOptions
    frames_seen: int = 0
    _calibrator: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from onnxruntime.quantization.calibrate import create_calibrator

        extra = {"symmetric": self.options.symmetric_activations}
        if self.options.method == "minmax":
            extra["moving_average"] = self.options.moving_average
        if self.options.method == "percentile":
            extra["percentile"] = self.options.percentile
        with _quiet():
            self._calibrator = create_calibrator(
                self.model_path, [], augmented_model_path=str(self.work_dir / "augmented.onnx"),
                calibrate_method=_method_enum(self.options.method), extra_options=extra,
            )

    def add(self, input_name: str, batch: np.ndarray) -> None:
        """Feed one chunk of frames (one frame per inference, so any batch size the model has works)."""
        feeds = [{input_name: batch[i : i + 1]} for i in range(len(batch))]
        self._calibrator.collect_data(_ListReader(feeds))
        self.frames_seen += len(batch)

    def save(self, cache: Path):
        """Compute the ranges, write them to ``cache`` (JSON) and return onnxruntime's TensorsData."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        with _quiet():
            ranges = self._calibrator.compute_data()
        save_tensors_data(ranges, cache)
        self._calibrator = None
        return ranges


def quantize(model_path: Path, output: Path, *, cache: Path, options: QuantizeOptions,
             exclude: Sequence[str] = ()) -> None:
    """Write the INT8 model for ``model_path`` using the ranges in ``cache``; ``exclude`` stays float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    op_types = None
    if options.float_op_types:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        # quantize_static's own default is the union of both registries; take the listed types out.
        op_types = sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(options.float_op_types))
    extra = {
        "ActivationSymmetric": options.symmetric_activations,
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": options.symmetric_activations,
    }
    exclude = list(exclude) + list(options.float_nodes)
    if options.float_output:
        exclude += output_activations(model_path)
    with _quiet():
        quantize_static(
            str(model_path), str(output), calibration_data_reader=None,
            quant_format=QuantFormat.QDQ if options.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=op_types, per_channel=options.per_channel, reduce_range=options.reduce_range,
            activation_type=QuantType.QUInt8 if options.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            calibrate_method=_method_enum(options.method), extra_options=extra, calibration_cache_path=str(cache),
        )


def output_activations(model_path: Path) -> list[str]:
    """The Softmax/Sigmoid nodes that make the graph outputs, and the layout ops after them.

    tf2onnx exports a Keras softmax as Softmax on NCHW followed by a Transpose back to NHWC, so
    the walk from each output steps back over data-movement ops.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    found = []
    for output in graph.output:
        node, path = producer.get(output.name), []
        while node is not None and node.op_type in ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"):
            path.append(node.name)
            node = producer.get(node.input[0])
        if node is not None and node.op_type in ("Softmax", "Sigmoid"):
            found += [node.name, *path]
    return found


def trt_amax(lowest: float, highest: float) -> float:
    """The symmetric dynamic range TensorRT needs: the larger magnitude of the two ends.

    onnxruntime's own writer stores max(highest, lowest), which drops a negative end larger
    than the positive one (a range -51.3..30.8 became 30.8).
    """
    return max(abs(float(lowest)), abs(float(highest)))


def write_trt_table(ranges: Mapping[str, tuple[float, float]], folder: Path) -> list[str]:
    """Write the TensorRT calibration table for ``ranges`` (tensor -> (lowest, highest)) into ``folder``.

    Format: see :data:`edgeseg.calibration._cli.TRT_TABLE_FORMAT` (kept with --help, which needs no onnxruntime).
    Returns the files written.

    Example::

        write_trt_table({"conv1": (-51.3, 30.8)}, Path("trt"))   # conv1 -> amax 51.3
    """
    import flatbuffers
    from onnxruntime.quantization.CalTableFlatBuffers import KeyValue, TrtTable

    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(ranges)
    amax = {name: trt_amax(*ranges[name]) for name in names}
    builder = flatbuffers.Builder(1024)
    entries = []
    for name in names:
        key, value = builder.CreateString(name), builder.CreateString(repr(amax[name]))
        KeyValue.KeyValueStart(builder)
        KeyValue.KeyValueAddKey(builder, key)
        KeyValue.KeyValueAddValue(builder, value)
        entries.append(KeyValue.KeyValueEnd(builder))
    TrtTable.TrtTableStartDictVector(builder, len(entries))
    for entry in reversed(entries):  # flatbuffers vectors are built back to front
        builder.PrependUOffsetTRelative(entry)
    vector = builder.EndVector()
    TrtTable.TrtTableStart(builder)
    TrtTable.TrtTableAddDict(builder, vector)
    builder.Finish(TrtTable.TrtTableEnd(builder))
    write_bytes_atomic(folder / "calibration.flatbuffers", bytes(builder.Output()))
    write_text_atomic(folder / "calibration.cache", "".join(f"{name} {amax[name]!r}\n" for name in names))
    write_json_atomic(folder / "calibration.json", {
        name: {"lowest": float(ranges[name][0]), "highest": float(ranges[name][1]), "amax": amax[name]}
        for name in names})
    return sorted(str(folder / f) for f in ("calibration.flatbuffers", "calibration.cache", "calibration.json"))


def read_trt_table(folder: Path) -> dict[str, float]:
    """Read ``calibration.flatbuffers`` back as tensor -> amax (what the TensorRT provider will read)."""
    from onnxruntime.quantization.CalTableFlatBuffers import TrtTable

    table = TrtTable.TrtTable.GetRootAsTrtTable(Path(folder, "calibration.flatbuffers").read_bytes(), 0)
    entries = (table.Dict(i) for i in range(table.DictLength()))
    return {entry.Key().decode(): float(entry.Value()) for entry in entries}


class _ListReader:
    """The calibration data reader onnxruntime expects, over one chunk's feeds."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def _method_enum(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # onnxruntime's quantizer logs "please run pre-processing" through the root logger even
    # after we did; keep its INFO/WARNING noise out of the user's terminal, errors still pass.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _onnxruntime():
    return require("onnxruntime", purpose="edgeseg calibrate", among=("cpu",))
