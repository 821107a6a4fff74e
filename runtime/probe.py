"""Tensors from inside the engine that deploys a file, and how to judge them per precision.

``edgeseg verify`` compares each Keras layer with the tensor the *deployed* engine computes at that
place: onnxruntime and TensorRT (through onnxruntime's provider) get the tensors as extra graph
outputs, OpenVINO through ``add_outputs`` on its model. Each runs with the options it deploys with
(onnxruntime's full graph optimization, OpenVINO's precision hint, TensorRT's fp16/int8 flags), and
what actually ran is read back and refused when it is not what was asked (no silent fallback).

Extra outputs can change how an engine compiles. Measured on the sample FCN-8's INT8 file:
onnxruntime keeps every QLinearConv with all tensors probed (its final output is bit-identical),
but OpenVINO compiles an Add whose inputs are probed differently (final output off by up to 0.069,
98.5% argmax agreement on random frames), while probes elsewhere change nothing. So a tensor that
feeds a node with several computed inputs is probed in a compile of its own, every run also runs
the plain compile (the deployed output), and :attr:`EngineProbe.instrumentation` reports how far the
probed compile's output is from it.

onnxruntime at fp32 can also read the tensors from the graph *as written* (``as_written``: no graph
optimization, so every node the exporter wrote runs and reading a tensor out cannot change how its
neighbours compile); its plain compile stays the deployed one. That is how ``edgeseg verify`` proves an
fp32 export. Judging the tensors is verify's (``edgeseg.export._tolerance``): this module reads them.

NumPy and the engines load when a probe runs, not on import.

Example::

    from edgeseg.runtime.probe import EngineProbe
    probe = EngineProbe("fcn8.int8.onnx", ["conv1/Relu:0"], engine="openvino", precision="int8")
    tensors = probe.run(batch)            # {"conv1/Relu:0": array, ...}
    print(probe.ran.describe())           # "openvino on CPU, int8+bf16"
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.runtime._engines import BF16_FLAGS, cpu_flags
from edgeseg.runtime._modelfile import ModelFile
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import install_hint, require

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("edgeseg.runtime")

ENGINES = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# An instrumented run whose output differs from the plain run's by more than this (x value range) is reported.
_SAME = 1e-6


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """Signal-to-quantization-noise ratio in dB (10 log10 of signal power over error power); 200 dB stands for
    "no measurable noise". The one formula: verify's bars and calibration's per-layer report both use it.

    Example::

        sqnr_db(1.0, 1e-3)   # 30.0
    """
    if noise_power <= 0.0:
        return 200.0
    if signal_power <= 0.0 or math.isinf(noise_power):
        return -200.0
    return float(10.0 * math.log10(signal_power / noise_power))


# ---------------------------------------------------------------- which engine, which precision


@dataclass(frozen=True)
class Target:
    """The engine and precision to prove a file on, and why these."""

    engine: str
    precision: str
    why: str


def resolve_target(path: str | os.PathLike, *, engine: str = "auto", precision: str = "auto",
                   provider: str = "auto") -> Target:
    """What ``engine``/``precision`` mean for ``path``: ``auto`` is what ``--engine auto`` runs the file with.

    The engine comes from :func:`edgeseg.runtime.choose_config` (a tuning record, else the heuristic);
    the precision from the file (an INT8 file is int8) and the engine (OpenVINO: bf16 where the CPU
    has it, else fp32; onnxruntime and TensorRT: fp32).

    Example::

        resolve_target("fcn8.onnx")   # Target("openvino", "bf16", ...) on a CPU with AVX512-BF16
    """
    from edgeseg.runtime._tuning import choose_config

    if engine not in (*ENGINES, "auto"):
        raise EdgesegError(f"Unknown engine {engine!r}: expected auto or one of {', '.join(ENGINES)}.")
    if precision not in (*PRECISIONS, "auto"):
        raise EdgesegError(f"Unknown precision {precision!r}: expected auto or one of {', '.join(PRECISIONS)}.")
    why = []
    if engine == "auto":
        config, reason, _ = choose_config(path, provider=provider, kind=_kind(path))
        engine = config.engine
        why.append(f"engine auto: {reason}")
    if precision == "auto":
        if is_quantized(path):
            precision, reason = "int8", "an INT8 file"
        elif engine == "openvino" and cpu_flags() & BF16_FLAGS:
            precision, reason = "bf16", "OpenVINO's default on a CPU with bf16"
        else:
            precision, reason = "fp32", f"{engine}'s default for a float file"
        why.append(f"precision auto: {reason}")
    return Target(engine=engine, precision=precision, why="; ".join(why) or "asked for")


def is_quantized(path: str | os.PathLike) -> bool:
    """True for an INT8 file (its contract has a calibration section, or its graph holds quantized operators):
    :attr:`edgeseg.runtime.ModelFile.quantized`."""
    return ModelFile.read(path).quantized


def _kind(path: str | os.PathLike) -> str | None:
    try:
        contract = ModelFile.read(path).contract
    except EdgesegError:
        return None
    return contract.kind if contract else None


# ---------------------------------------------------------------- the probe


@dataclass(frozen=True)
class Ran:
    """What actually ran: engine, device, precision, the provider or plugin detail, and the probing plan."""

    engine: str
    device: str
    precision: str
    detail: str
    isolated: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.engine} on {self.device}, {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "isolated": list(self.isolated), "notes": list(self.notes)}


@dataclass
class Instrumentation:
    """How far the probed compile's graph output is from the plain (deployed) compile's, over all runs."""

    max_abs_diff: float = 0.0
    range: float = 0.0
    argmax_agree: int = 0
    pixels: int = 0

    def add(self, plain: np.ndarray, probed: np.ndarray) -> None:
        import numpy as np

        plain, probed = np.asarray(plain, np.float64), np.asarray(probed, np.float64)
        self.max_abs_diff = max(self.max_abs_diff, float(np.abs(plain - probed).max()) if plain.size else 0.0)
        self.range = max(self.range, float(plain.max() - plain.min()) if plain.size else 0.0)
        if plain.ndim >= 3 and plain.shape[-1] > 1:
            same = plain.argmax(-1) == probed.argmax(-1)
            self.argmax_agree += int(same.sum())
            self.pixels += int(same.size)

    @property
    def same(self) -> bool:
        return self.max_abs_diff <= _SAME * max(1.0, self.range)

    def to_dict(self) -> dict[str, Any]:
        return {"same_as_deployed": self.same, "max_abs_diff": self.max_abs_diff,
                "argmax_agreement": self.argmax_agree / self.pixels if self.pixels else None}


@dataclass(frozen=True)
class EngineSettings:
    """How an engine is set up on this machine: onnxruntime's ``provider`` (``auto``: CUDA where onnxruntime
    has it, else the CPU), intra-op ``threads`` (None: the engine's default) and TensorRT's ``engine_cache``
    (None: ``$XDG_CACHE_HOME/edgeseg/tensorrt``).

    Example::

        EngineSettings(provider="cuda", threads=4)
    """

    provider: str = "auto"
    threads: int | None = None
    engine_cache: str | os.PathLike | None = None


class EngineProbe:
    """One file on one engine at one precision, with ``tensors`` readable after each run.

    ``model``: the ONNX file (a path), or a ``ModelProto`` not written yet. ``tensors``: names of ONNX tensors to read (graph outputs and
    the graph input included). ``engine``: onnxruntime, openvino or tensorrt; ``precision``: fp32,
    bf16, fp16 or int8 (see :func:`resolve_target` for ``auto``). ``settings``: provider, threads and
    TensorRT's engine cache (:class:`EngineSettings`). ``as_written``: onnxruntime at fp32 only, the tensors
    come from the graph as written (no graph optimization) while the graph output still comes from the
    deployed session. A combination the engine cannot run here, or one it would silently run otherwise
    (a CPU fallback, another precision), raises EdgesegError in one line.

    Example::

        probe = EngineProbe("m.onnx", names, engine="onnxruntime", precision="fp32")
        values = probe.run(batch)                     # {name: array} for each of `names`
        print(probe.ran.describe(), probe.instrumentation.to_dict())
    """

    def __init__(self, model: str | os.PathLike | Any, tensors: Sequence[str], *, engine: str, precision: str,
                 settings: EngineSettings = EngineSettings(), proto: Any = None, as_written: bool = False) -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None
        if isinstance(model, (str, os.PathLike)):  # `proto`: the file's graph when the caller has read it already
            self.path, self.proto = Path(model), proto if proto is not None else _load(model)
        else:  # a ModelProto in memory (export's check before writing): engines that read files get a copy
            self.proto = model
            self._tmp = tempfile.TemporaryDirectory(prefix="edgeseg-probe-")
            self.path = Path(self._tmp.name) / "model.onnx"
            if engine != "onnxruntime":
                self.path.write_bytes(model.SerializeToString())
        if engine not in ENGINES:
            raise EdgesegError(f"Unknown engine {engine!r}: expected one of {', '.join(ENGINES)}.")
        if precision not in PRECISIONS:
            raise EdgesegError(f"Unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}.")
        graph = self.proto.graph
        self.input_name = graph.input[0].name
        self.output_name = graph.output[0].name
        self.tensors = list(dict.fromkeys(tensors))
        known = {name for node in graph.node for name in node.output} | {self.input_name}
        missing = [name for name in self.tensors if name not in known]
        if missing:
            raise EdgesegError(f"`{self.path}` has no tensor named {missing[0]!r} ({len(missing)} of "
                               f"{len(self.tensors)} asked for are missing).")
        quantized = any(node.op_type == "QuantizeLinear" for node in graph.node)
        _check_precision(engine, precision, quantized=quantized, path=self.path)
        if as_written and (engine, precision) != ("onnxruntime", "fp32"):
            raise EdgesegError(f"reading tensors from the graph as written is onnxruntime fp32's; got {engine} "
                               f"{precision}.")
        probed = [n for n in self.tensors if n not in (self.input_name, self.output_name)]
        # As written, nothing is fused: a probed tensor cannot change how its neighbours compile.
        isolated = [] if as_written else _isolated(graph, probed)
        together = [n for n in probed if n not in isolated]
        self.instrumentation = Instrumentation()
        build = {"onnxruntime": _OrtRunner, "tensorrt": _OrtRunner, "openvino": _OpenVinoRunner}[engine]
        how = _Compile(engine=engine, precision=precision, settings=settings, quantized=quantized)
        # The plain compile is the deployed one: its output is the one reported, and the probed compile's
        # output is compared with it (Instrumentation).
        self._plain = build(self.path, self.proto, [], how)
        written = replace(how, as_written=as_written)
        self._together = build(self.path, self.proto, together, written) if together else None
        self._alone = [(name, build(self.path, self.proto, [name], how)) for name in isolated]
        self._names = together
        detail = self._plain.detail + ("; layers read from the graph as written (graph optimization off)"
                                       if as_written and together else "")
        self.ran = Ran(engine=engine, device=self._plain.device, precision=self._plain.precision,
                       detail=detail, isolated=tuple(isolated), notes=tuple(self._plain.notes))

    def run(self, feed: np.ndarray) -> dict[str, np.ndarray]:
        """Every asked-for tensor for one batch ``feed`` (the graph output from the plain, deployed compile)."""
        plain = self._plain.run(feed, [])[self.output_name]
        values = {self.input_name: feed, self.output_name: plain}
        if self._together is not None:
            got = self._together.run(feed, self._names)
            self.instrumentation.add(plain, got[self.output_name])
            values.update(got)
            values[self.output_name] = plain
        for name, runner in self._alone:
            values[name] = runner.run(feed, [name])[name]
        return {name: values[name] for name in self.tensors}

    def close(self) -> None:
        self._plain = self._together = None
        self._alone = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EngineProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_tensors(onnx_path: str | os.PathLike, tensor_names: Sequence[str], inputs: Iterable[np.ndarray], *,
                   engine: str, precision: str, provider: str = "auto") -> dict[str, np.ndarray]:
    """``{name: values}`` of ``tensor_names`` for every batch in ``inputs``, concatenated along the batch axis,
    as ``engine`` computes them at ``precision`` (see :class:`EngineProbe`).

    Example::

        values = engine_tensors("fcn8.int8.onnx", ["conv1/Relu:0"], [batch], engine="openvino", precision="int8")
    """
    import numpy as np

    with EngineProbe(onnx_path, tensor_names, engine=engine, precision=precision,
                     settings=EngineSettings(provider=provider)) as probe:
        runs = [probe.run(np.ascontiguousarray(batch, np.float32)) for batch in inputs]
    return {name: np.concatenate([run[name] for run in runs]) for name in dict.fromkeys(tensor_names)} if runs else {}


def _check_precision(engine: str, precision: str, *, quantized: bool, path: Path) -> None:
    """Refuse, in one line, what an engine cannot run at a precision (rather than run something else)."""
    if quantized and precision != "int8":
        raise EdgesegError(f"`{path}` is an INT8 file: it runs in int8 on every engine; verify it with "
                           f"--precision int8 (got {precision}), or pass its FP32 parent for {precision}.")
    if precision == "int8" and not quantized:
        raise EdgesegError(f"--precision int8 needs an INT8 file, and `{path}` has no quantized layers: "
                           "make one with `edgeseg calibrate`, and verify that file.")
    supported = {"onnxruntime": ("fp32", "fp16", "int8"), "openvino": ("fp32", "bf16", "int8"),
                 "tensorrt": ("fp32", "fp16", "int8")}[engine]
    if precision not in supported:
        hint = {"bf16": "bf16 runs on --engine openvino (CPUs with AMX or AVX512-BF16)",
                "fp16": "fp16 runs on the GPU: --engine onnxruntime (CUDA) or --engine tensorrt"}[precision]
        raise EdgesegError(f"engine {engine} does not run {precision} (it runs {', '.join(supported)}): {hint}.")


def _isolated(graph: Any, probed: Sequence[str]) -> list[str]:
    """Probed tensors that feed a node with several computed inputs (an Add, a Concat): compiled apart."""
    constants = {init.name for init in graph.initializer}
    constants |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    constants |= {node.output[0] for node in graph.node  # dequantized weights and biases
                  if node.op_type == "DequantizeLinear" and node.input[0] in constants}
    computed_inputs = {}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        live = [name for name in node.input if name and name not in constants]
        if len(live) > 1:
            for name in live:
                computed_inputs[name] = node.op_type
    # Q/DQ pairs and data movement between a tensor and the Add count as the tensor feeding the Add
    # (measured: onnxruntime fuses ConvTranspose -> Slice -> Q -> DQ -> Add differently when the
    # ConvTranspose's output is probed).
    feeds: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type in _PASS_THROUGH and node.input and node.output:
            feeds.setdefault(node.input[0], []).append(node.output[0])

    def reaches(name: str, depth: int = 0) -> bool:
        if name in computed_inputs:
            return True
        return depth < 4 and any(reaches(after, depth + 1) for after in feeds.get(name, ()))

    return [name for name in probed if reaches(name)]


_PASS_THROUGH = frozenset({"QuantizeLinear", "DequantizeLinear", "Slice", "Transpose", "Reshape", "Squeeze",
                           "Unsqueeze", "Identity", "Cast", "Pad"})


# ---------------------------------------------------------------- the engines


@dataclass(frozen=True)
class _Compile:
    """How each of a probe's compiles is built: the engine and its settings, the same for all of them."""

    engine: str
    precision: str
    settings: EngineSettings
    quantized: bool  # the file holds QuantizeLinear nodes
    as_written: bool = False  # onnxruntime fp32: graph optimization off, every node as the exporter wrote it


class _OrtRunner:
    """onnxruntime (CPU, CUDA, or TensorRT through its provider), deployed settings, ``names`` as extra outputs."""

    def __init__(self, path: Path, proto: Any, names: list[str], how: _Compile) -> None:
        engine, precision, as_written = how.engine, how.precision, how.as_written
        provider, threads, engine_cache = how.settings.provider, how.settings.threads, how.settings.engine_cache
        ort = require("onnxruntime", purpose=f"engine {engine}", fix=f"or {install_hint('gpu')} for CUDA and TensorRT")
        from edgeseg.runtime._session import CPU, CUDA, default_threads

        available = ort.get_available_providers()
        # Nothing to add or convert: onnxruntime reads the file itself (no copy, no serialization of the weights).
        as_is = not names and engine == "onnxruntime" and precision != "fp16"
        model = proto if as_is else _with_outputs(proto, names)
        self.notes: list[str] = []
        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads() if threads is None else threads
        options.log_severity_level = 4  # a failure is reported once, by the caller, in one line
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if as_written:  # every node as the exporter wrote it: no fusion, no layout change
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if engine == "tensorrt":
            providers, model = self._tensorrt(path, model, precision=precision, engine_cache=engine_cache,
                                              available=available)
            gpu = True
        else:
            gpu = precision == "fp16" or provider in ("cuda", "tensorrt") or (provider == "auto" and CUDA in available)
            if gpu and CUDA not in available:
                raise EdgesegError(f"{'fp16' if precision == 'fp16' else 'CUDA'} on onnxruntime needs a GPU and "
                                   f"onnxruntime-gpu; this onnxruntime has {', '.join(available)} only "
                                   f"({install_hint('gpu')} on a machine with an NVIDIA GPU).")
            providers = [CUDA] if gpu else [CPU]
            if precision == "fp16":
                model = _float16(model)
        if gpu:  # a node the GPU provider cannot take is an error, never a silent CPU fallback
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if as_is and path.is_file():
            data = str(path)
        else:
            data = model if isinstance(model, bytes) else model.SerializeToString()
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/EPFail types
            text = " ".join(str(error).split())[:240]
            where = " wholly on the GPU (export it with --cuda-friendly)" if gpu else ""
            raise EdgesegError(f"onnxruntime cannot load `{path.name}`{where} ({engine}): {text}") from None
        used = self.session.get_providers()
        if providers[0] not in used[:1]:
            raise EdgesegError(f"{engine} asked for {providers[0]}, but onnxruntime runs `{path.name}` on "
                               f"{', '.join(used)}; refusing to report another engine's numbers.")
        self.device = "cuda" if gpu else "cpu"
        self.precision = precision
        self.detail = (f"onnxruntime {ort.__version__}, providers {', '.join(used)}, graph optimization "
                       f"{'off' if as_written else 'all'}")
        self.input_name = proto.graph.input[0].name
        self.output_name = proto.graph.output[0].name

    def _tensorrt(self, path: Path, model: Any, *, precision: str, engine_cache: Any,
                  available: list[str]) -> tuple[list[Any], Any]:
        from edgeseg.runtime._tensorrt import TENSORRT, tensorrt_plan

        plan = tensorrt_plan(path, fp16=precision == "fp16", engine_cache=engine_cache, model=model)
        self.notes.extend(plan.notes)
        if TENSORRT not in available:
            raise EdgesegError(f"engine tensorrt needs an NVIDIA GPU with TensorRT and onnxruntime-gpu; this "
                               f"onnxruntime has {', '.join(available)} only ({install_hint('gpu')} and "
                               "TensorRT on a GPU machine).")
        Path(plan.options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        return [(TENSORRT, plan.options)], plan.model

    def run(self, feed: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        import numpy as np

        wanted = list(dict.fromkeys([self.output_name, *names]))
        values = self.session.run(wanted, {self.input_name: feed})
        return {name: np.asarray(value, np.float32) for name, value in zip(wanted, values)}


class _OpenVinoRunner:
    """OpenVINO on the CPU at the asked precision hint, ``names`` added as outputs of its model."""

    def __init__(self, path: Path, proto: Any, names: list[str], how: _Compile) -> None:
        from edgeseg.runtime._openvino import compiled_precision

        precision, threads, quantized = how.precision, how.settings.threads, how.quantized

        ov = require("openvino", purpose="engine 'openvino'", fix="or use --engine onnxruntime")
        if precision == "bf16" and not cpu_flags() & BF16_FLAGS:
            raise EdgesegError("precision bf16 needs a CPU with AMX or AVX512-BF16, and this one has neither; "
                               "OpenVINO would run f32: verify with --precision fp32.")
        core = ov.Core()
        model = core.read_model(str(path))
        if names:
            model.add_outputs(names)
        config: dict[str, Any] = {}
        if precision in ("fp32", "bf16"):
            config["INFERENCE_PRECISION_HINT"] = "f32" if precision == "fp32" else "bf16"
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        got = compiled_precision(self.compiled, quantized=quantized)
        wanted = {"fp32": "f32", "bf16": "bf16"}.get(precision)
        if wanted is not None and got != wanted:
            raise EdgesegError(f"OpenVINO compiled `{path.name}` in {got}, not the {precision} asked for; refusing "
                               "to report another precision's numbers.")
        self.device = "CPU"
        self.precision = "fp32" if got == "f32" else got
        self.detail = (f"OpenVINO {ov.get_version().split('-')[0]} CPU plugin, INFERENCE_PRECISION_HINT "
                       f"{got.split('+')[-1]}")
        self.notes: list[str] = []
        self.request = self.compiled.create_infer_request()
        self.ports = {name: port for port in self.compiled.outputs for name in port.get_names()}
        self.output_name = proto.graph.output[0].name

    def run(self, feed: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        import numpy as np

        result = self.request.infer({0: feed})
        out = {name: np.asarray(result[self.ports[name]], np.float32) for name in names}
        out[self.output_name] = np.asarray(result[self.compiled.outputs[0]], np.float32)
        return out


def _with_outputs(proto: Any, names: Sequence[str]) -> Any:
    """A copy of ``proto`` with ``names`` added as graph outputs."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    present = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in dict.fromkeys(names):
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model


def _float16(model: Any) -> Any:
    require("onnx", purpose="fp16 on onnxruntime (the model is converted)", among=("calibrate",))
    float16 = require("onnxruntime.transformers.float16", purpose="fp16 on onnxruntime", among=("gpu",))
    return float16.convert_float_to_float16(model, keep_io_types=True)


def _load(path: str | os.PathLike) -> Any:
    onnx = require("onnx", purpose="reading the graph", among=("calibrate",))
    path = ModelFile.read(path).path  # a missing, empty or non-ONNX file: one line naming it
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError and others for non-ONNX bytes
        raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file ({type(error).__name__}).") from None
