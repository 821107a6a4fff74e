"""The engines edgeseg runs a model with, in one table, and the choice between them without a measurement.

:data:`ENGINES` is what ``Model(engine=...)`` accepts, what ``edgeseg tune`` measures and what the
heuristic weighs: a new engine (or a new precision of one) is a row here, not an edit in three places.
:class:`EngineConfig` is one way to run a model (engine, precision, threads, batch, mode), as tuning
records store it; :func:`heuristic_config` is the rule used where no record exists.

Example::

    from edgeseg.runtime import ENGINES, heuristic_config
    [name for name, engine in ENGINES.items() if engine.available()]   # e.g. ["onnxruntime", "openvino"]
    config, why = heuristic_config(kind="segmentation")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import install_hint, installed

# The CPU flags that give OpenVINO its bf16 kernels (AMX, or AVX512 with the BF16 extension).
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@dataclass(frozen=True)
class Engine:
    """One inference engine: the module it needs (from ``extra``), the precisions ``precision=`` may name for it
    (``auto``, its default, first), and which of its modes ``edgeseg tune`` measures.

    ``throughput``: the engine splits a batch across streams of its own (OpenVINO), so batched throughput
    configurations are candidates; ``fused``: the file with the class-id rule in its graph is a candidate
    (benchmarks/fast_mode.py measured it 1.0-1.45x the plain file on OpenVINO). ``gpu_precisions``: the
    precisions that run only on an NVIDIA GPU (onnxruntime's fp16 on CUDA or TensorRT): accepted by
    ``precision=``, refused in one line without the GPU, measured by ``edgeseg tune --precision`` only.
    """

    name: str
    module: str
    extra: str
    precisions: tuple[str, ...] = ("auto",)
    throughput: bool = False
    fused: bool = False
    gpu_precisions: tuple[str, ...] = ()

    def available(self) -> bool:
        """True when the engine's module is installed (without importing it)."""
        return installed(self.module)

    def measured_precisions(self, *, bf16: bool) -> tuple[str, ...]:
        """The precisions ``edgeseg tune`` tries on an FP32 file: every named one this CPU can run (bf16 only
        with :data:`BF16_FLAGS`), else the default."""
        named = tuple(p for p in self.precisions if p != "auto" and (bf16 or p != "bf16"))
        return tuple(sorted(named, key=lambda p: p != "bf16")) or ("auto",)  # bf16, the likelier winner, first


ENGINES: dict[str, Engine] = {
    "onnxruntime": Engine("onnxruntime", module="onnxruntime", extra="cpu", gpu_precisions=("fp16",)),
    "openvino": Engine("openvino", module="openvino", extra="openvino", precisions=("auto", "f32", "bf16"),
                       throughput=True, fused=True),
}
# What ``engine=`` accepts: an engine of the table, or ``auto`` (a tuning record's choice, else the heuristic's).
ENGINE_CHOICES = (*ENGINES, "auto")


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINE_CHOICES`, else EdgesegError naming them."""
    if engine not in ENGINE_CHOICES:
        raise EdgesegError(f"Unknown engine {engine!r}: expected one of {', '.join(ENGINE_CHOICES)}.")
    return engine


def openvino_available() -> bool:
    """True when ``import openvino`` would succeed (without importing it)."""
    return ENGINES["openvino"].available()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass(frozen=True)
class EngineConfig:
    """One way to run a model: engine, precision, threads (None: the engine's default), batch, mode.

    ``file`` is ``fp32`` (the model given) or ``int8`` (the record's INT8 file); ``fused``: that file with
    the class-id rule in its graph (:func:`edgeseg.runtime.fuse_class_ids`; the record keeps where).
    """

    engine: str = "onnxruntime"
    precision: str = "auto"
    threads: int | None = None
    batch: int = 1
    throughput: bool = False
    file: str = "fp32"
    fused: bool = False

    def describe(self) -> str:
        """A short human label, e.g. ``openvino bf16, 2 thread(s), batch 4, throughput``."""
        onnxruntime = "fp16" if self.precision == "fp16" else "fp32"  # onnxruntime's GPU half precision, else fp32
        precision = "int8 file" if self.file == "int8" else onnxruntime if self.engine == "onnxruntime" else self.precision
        threads = "default threads" if self.threads is None else f"{self.threads} thread(s)"
        mode = "throughput" if self.throughput else "latency"
        fused = ", fused class ids" if self.fused else ""
        return f"{self.engine} {precision}, {threads}, batch {self.batch}, {mode}{fused}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def heuristic_config(*, provider: str = "auto", kind: str | None = None) -> tuple[EngineConfig, str]:
    """The choice without a measurement, from what was measured on two machines (issue 14):

    - CUDA asked for, or onnxruntime has it (``provider="auto"``): onnxruntime (a GPU beats any CPU engine);
    - a CPU with bf16 (AMX or AVX512-BF16) and OpenVINO installed: OpenVINO at its default precision,
      bf16 (5x onnxruntime FP32 on FCN-8, 99.99% of mask pixels unchanged);
    - otherwise onnxruntime FP32: on an AVX2-only CPU OpenVINO computes f32 and ran slower than a
      plain onnxruntime loop (7.5-9.8 against 12.0 fps);
    - an autoencoder (``kind``): onnxruntime, whatever the CPU: the CAE's 4.4 MFLOP per image costs less
      than a call, and onnxruntime's calls are cheaper (6,200-8,100 images/s inside segment against
      OpenVINO's 1,200-5,100, edgeseg/bench/_worker.py).

    Example::

        config, why = heuristic_config(kind="segmentation")   # why: "heuristic: ... -> OpenVINO bf16"
    """
    if provider == "cuda" or (provider == "auto" and _ort_has_cuda()):
        return EngineConfig(), "heuristic: CUDA -> onnxruntime"
    if kind == "autoencoder":
        return EngineConfig(), "heuristic: an autoencoder (per-call cost rules) -> onnxruntime"
    bf16 = cpu_flags() & BF16_FLAGS
    if bf16 and openvino_available():
        return (EngineConfig(engine="openvino", precision="auto"),
                f"heuristic: the CPU has {'/'.join(sorted(bf16))} and OpenVINO is installed -> OpenVINO bf16")
    if not bf16:
        return EngineConfig(), "heuristic: no bf16 in this CPU -> onnxruntime fp32"
    return EngineConfig(), "heuristic: OpenVINO is not installed -> onnxruntime fp32"


def resolve_engine(engine: str, *, provider: str = "auto") -> str:
    """The engine ``engine`` means without a tuning record: ``auto`` is :func:`heuristic_config`'s
    choice (OpenVINO on a bf16 CPU with OpenVINO installed and no CUDA, else onnxruntime).

    Example::

        resolve_engine("auto", provider="cuda")  # "onnxruntime"
    """
    if check_engine(engine) != "auto":
        return engine
    return heuristic_config(provider=provider)[0].engine


def require_gpu_fp16(what: str) -> None:
    """Refuse ``what`` in one line where onnxruntime has no CUDA provider: fp16 is the GPU path, and an
    fp16 request answered by the CPU in fp32 would be a silent fallback.

    Example::

        require_gpu_fp16("--precision fp16")   # EdgesegError on a CPU-only machine
    """
    if not _ort_has_cuda():
        raise EdgesegError(f"{what} runs onnxruntime in fp16 on an NVIDIA GPU, and this onnxruntime has no CUDA "
                           f"provider: install onnxruntime-gpu ({install_hint('gpu')}) on a machine with a GPU; "
                           "on this CPU use bf16 (OpenVINO, CPUs with AVX512-BF16/AMX) or the default.")


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()
