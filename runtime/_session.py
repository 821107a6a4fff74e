"""The one place onnxruntime sessions are built: providers, session options, the CPU-fallback warning.

onnxruntime is imported here, inside :func:`make_session`, so ``import edgeseg.runtime`` and the
``edgeseg`` command start without it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from edgeseg.runtime._modelfile import ModelFile
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import install_hint, require

log = logging.getLogger("edgeseg.runtime")

PROVIDERS = ("auto", "cuda", "cpu", "tensorrt")
OPTIMIZATIONS = ("all", "extended", "basic", "disable")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


class ProviderFallbackWarning(RuntimeWarning):
    """CUDA was asked for, and onnxruntime runs the model on the CPU instead."""


def default_threads() -> int:
    """Intra-op threads when the caller names none: every core on machines with 2 or fewer, else all but one.

    Measured on this project's 2-vCPU build machine, quiet: 2 threads ran FCN-8 end to end at
    8.6-8.8 fps against 4.6-4.7 with 1. When another process keeps a core busy, 1 thread wins
    (4.44 against 3.81 fps): pass ``threads=1`` (``--threads 1``) there. The default does not
    guess from the machine's load, so a run is reproducible. Larger machines keep one core for
    decoding, writing and the video encoder.
    """
    try:
        cores = len(os.sched_getaffinity(0))  # respects taskset and container CPU sets
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores if cores <= 2 else cores - 1


def make_session(path: str | os.PathLike | ModelFile, *, provider: str = "auto", threads: int | None = None,
                 optimization: str = "all", strict: bool = False, fp16: bool = False,
                 engine_cache: str | os.PathLike | None = None) -> Any:
    """Build an ``onnxruntime.InferenceSession`` for ``path`` with the providers and options asked for.

    ``provider``: ``auto`` (CUDA when onnxruntime has it, else the CPU), ``cuda`` (warns loudly,
    once, when it ends up on the CPU), ``tensorrt`` (TensorRT, then CUDA, then CPU for what
    TensorRT cannot take; its built engines are kept in ``engine_cache``, default
    ``$XDG_CACHE_HOME/edgeseg/tensorrt``) or ``cpu``. ``threads``: intra-op threads (None: see
    :func:`default_threads`; 0: onnxruntime's own default). ``optimization``: graph optimization level.
    ``strict``: fail at session creation if any node would run on the CPU instead of the GPU
    (onnxruntime's ``session.disable_cpu_ep_fallback``); with ``provider="cpu"`` it changes nothing.
    ``fp16``: the GPU's half-precision path (TensorRT's FP16 kernels, or for CUDA the model's
    weights and compute converted to float16 with float32 inputs and outputs kept); refused in one
    line where onnxruntime has no such GPU provider (never run as something else on the CPU).
    With ``provider="tensorrt"`` an INT8 file runs int8: its own symmetric scales, or the calibration
    table ``calibrate --trt-table`` recorded in its contract (:func:`edgeseg.runtime._tensorrt.tensorrt_plan`).
    ``path`` may be a :class:`ModelFile` already read (``Model`` passes one), else the file is read and
    checked first.

    Example::

        session = make_session("fcn8.onnx", provider="cpu", threads=1)
        print(session.get_providers())
    """
    _check_arguments(provider=provider, optimization=optimization, threads=threads)
    file = path if isinstance(path, ModelFile) else ModelFile.read(path)
    path = file.path
    ort = require("onnxruntime", purpose="edgeseg's runtime (engine onnxruntime)", fix="or 'edgeseg[gpu]' for CUDA")
    available = ort.get_available_providers()
    _check_gpu_request(provider, strict=strict, fp16=fp16, available=available)

    options = _session_options(ort, optimization=optimization, threads=threads)
    wants_cuda = provider in ("cuda", "tensorrt") or (provider == "auto" and CUDA in available)
    requested, model = _providers_and_model(path, provider=provider, fp16=fp16, engine_cache=engine_cache,
                                            gpu=wants_cuda and CUDA in available)
    strict = strict and CUDA in requested  # on the CPU there is nothing to fall back from
    if strict:
        # onnxruntime refuses the CPU provider listed next to this option: the GPU providers alone.
        requested.remove(CPU)
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        # On the CPU alone onnxruntime's "fallback" retries the same provider after printing four lines to stdout.
        session = ort.InferenceSession(model, sess_options=options, providers=requested,
                                       enable_fallback=int(requested != [CPU]))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... classes
        if strict:
            raise EdgesegError(f"provider={provider!r} with strict: `{path.name}` cannot run wholly on the GPU "
                               f"(onnxruntime says: {_one_line(error)}). Export it with --cuda-friendly, or "
                               "drop --strict to let those nodes run on the CPU.") from None
        raise EdgesegError(f"Cannot read model `{path}`: {_describe_load_error(error)}") from None
    used = session.get_providers()
    if wants_cuda and CUDA not in used:
        _warn_cpu_fallback(provider, path=path, cuda_available=CUDA in available)
    log.debug("%s: providers %s, %s intra-op thread(s)", path.name, used, options.intra_op_num_threads)
    return session


def _check_arguments(*, provider: str, optimization: str, threads: int | None) -> None:
    if provider not in PROVIDERS:
        raise EdgesegError(f"Unknown provider {provider!r}: expected one of {', '.join(PROVIDERS)}.")
    if optimization not in OPTIMIZATIONS:
        raise EdgesegError(f"Unknown optimization level {optimization!r}: expected one of {', '.join(OPTIMIZATIONS)}.")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
        raise EdgesegError(f"`threads` must be an integer >= 0 (0: onnxruntime's default), got {threads!r}.")


def _session_options(ort: Any, *, optimization: str, threads: int | None) -> Any:
    """Optimization level, threads, and no spinning: the options every edgeseg session shares."""
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    options.intra_op_num_threads = default_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning workers burn the cores that decoding and writing need between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _providers_and_model(path: Path, *, provider: str, fp16: bool, engine_cache: str | os.PathLike | None,
                         gpu: bool) -> tuple[list[Any], Any]:
    """The providers to ask for, in order, and what onnxruntime loads (the path, bytes, or TensorRT's model)."""
    requested: list[Any] = [CUDA, CPU] if gpu else [CPU]
    model: Any = _fp16_model(path) if fp16 and provider == "cuda" else _loadable(path)
    if provider == "tensorrt":
        from edgeseg.runtime._tensorrt import tensorrt_plan

        plan = tensorrt_plan(path, fp16=fp16, engine_cache=engine_cache)
        Path(plan.options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        requested.insert(0, (TENSORRT, plan.options))
        model = plan.model
        log.info("%s: TensorRT %s%s", path.name, plan.precision, f" ({plan.notes[0]})" if plan.notes else "")
    return requested, model


def _warn_cpu_fallback(provider: str, *, path: Path, cuda_available: bool) -> None:
    reason = (f"this onnxruntime build has no CUDA provider (install onnxruntime-gpu: {install_hint('gpu')})"
              if not cuda_available else "the CUDA provider failed to start (check the CUDA/cuDNN libraries)")
    # stacklevel 3: the warning names make_session's caller, the code that asked for CUDA.
    warnings.warn(
        f"edgeseg: provider={provider!r} asked for CUDA, but `{path.name}` runs on the CPU: {reason}.",
        ProviderFallbackWarning,
        stacklevel=3,
    )


def _check_gpu_request(provider: str, *, strict: bool, fp16: bool, available: list[str]) -> None:
    gpu = provider in ("cuda", "tensorrt")
    if fp16 and not gpu:
        raise EdgesegError(f"fp16 is the GPU path (provider 'cuda' or 'tensorrt'), got provider={provider!r}; "
                           "on the CPU use engine 'openvino' (bf16 where the CPU has it).")
    missing = CUDA if provider == "cuda" else TENSORRT if provider == "tensorrt" else None
    if fp16 and missing not in available:
        # Not a warning and a CPU run: an fp16 request answered with fp32 numbers would be a silent fallback.
        raise EdgesegError(f"fp16 runs on an NVIDIA GPU ({missing}), and this onnxruntime has "
                           f"{', '.join(available)} only: install onnxruntime-gpu ({install_hint('gpu')}) on a "
                           "machine with a GPU; on this CPU use --precision bf16 (engine openvino, CPUs with "
                           "AVX512-BF16/AMX) or the default fp32.")
    if strict and missing and missing not in available:
        raise EdgesegError(f"provider={provider!r} with strict: this onnxruntime build has no {missing} "
                           f"(it has {', '.join(available)}); install onnxruntime-gpu ({install_hint('gpu')}) "
                           "on a machine with a GPU, or drop --strict.")


def _fp16_model(path: Path) -> bytes:
    """The model with float16 weights and compute, float32 inputs and outputs (CUDA's FP16 path)."""
    onnx = require("onnx", purpose="fp16 on CUDA (the model is converted)", among=("calibrate",))
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load(str(path)), keep_io_types=True).SerializeToString()


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:200] + "..."


def _loadable(path: Path) -> str | bytes:
    """What onnxruntime can open: the path, or the file's bytes when the path is not UTF-8.

    onnxruntime's Python binding passes the path on as UTF-8: a name with other bytes (allowed on Linux)
    fails as "not a valid ONNX model", which it is not. The bytes load the same graph (a model whose
    weights live in external files cannot find them this way; onnxruntime then names the missing file).
    """
    try:
        os.fsencode(path).decode("utf-8")
        return str(path)
    except UnicodeDecodeError:
        log.debug("%r: the path is not UTF-8; onnxruntime reads the model from memory", path)
        try:
            return path.read_bytes()
        except OSError as error:
            raise EdgesegError(f"Cannot read model `{path}`: {error.strerror or error}.") from None


def _describe_load_error(error: Exception) -> str:
    text = " ".join(str(error).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"not a valid ONNX model (onnxruntime says: {text}). Pass an .onnx file written by `edgeseg export`."
