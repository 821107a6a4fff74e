"""Engine choice: read a tuning record written by ``edgeseg tune``, else a documented heuristic.

This is the runtime's (small, TF-free) side of tuning; ``edgeseg.tune`` measures and writes the
records. A record is used only when it was made for *this* model file (its sha256) on *this*
machine (its fingerprint: CPU model and flags, cores, library versions); anything else falls
back to the heuristic of :func:`heuristic_config`.

Example::

    config, why = choose_config("fcn8.onnx")          # what Model(engine="auto") runs
    print(config.describe(), "-", why)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import sha256_of

RECORD_VERSION = 1
# Share of mask pixels that must agree with the FP32 reference: exact (the default) and fast.
BARS = {"exact": 0.999, "fast": 0.99}
# The flags that change which kernels an engine runs (the rest of /proc/cpuinfo's list does not).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                "amx_int8", "amx_tile", "avx512_fp16")
LIBRARIES = ("onnxruntime", "openvino", "numpy")


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
        onnxruntime = "fp16" if self.precision == "fp16" else "fp32"
        precision = "int8 file" if self.file == "int8" else onnxruntime if self.engine == "onnxruntime" else self.precision
        threads = "default threads" if self.threads is None else f"{self.threads} thread(s)"
        mode = "throughput" if self.throughput else "latency"
        fused = ", fused class ids" if self.fused else ""
        return f"{self.engine} {precision}, {threads}, batch {self.batch}, {mode}{fused}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where tuning records live: ``cache`` if given, else ``$XDG_CACHE_HOME/edgeseg/tuning``
    (``~/.cache/edgeseg/tuning`` when XDG_CACHE_HOME is unset)."""
    if cache is not None:
        return Path(cache)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeseg" / "tuning"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_fingerprint() -> dict[str, Any]:
    """What makes a measurement valid only here: CPU model, its kernel-relevant flags, usable cores,
    and the engines' versions (a new onnxruntime or OpenVINO may change which configuration wins)."""
    flags = cpu_flags()
    return {
        "cpu": _cpu_model(),
        "flags": sorted(flag for flag in KERNEL_FLAGS if flag in flags),
        "cores": _cores(),
        "machine": platform.machine(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


def record_path(model_sha256: str, fingerprint: dict[str, Any], cache: str | os.PathLike | None = None) -> Path:
    """The record file for one model on one machine."""
    return cache_dir(cache) / f"{model_sha256[:16]}-{fingerprint_key(fingerprint)}.json"


def find_record(model: str | os.PathLike, *, cache: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The tuning record for this model file on this machine, or None (none, or made elsewhere).

    The record's contents are checked, not only its name: a file copied from another machine
    or made for another model is not used.
    """
    sha = sha256_of(model)
    fingerprint = machine_fingerprint()
    path = record_path(sha, fingerprint, cache)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (record.get("version") != RECORD_VERSION or record.get("model_sha256") != sha
            or record.get("fingerprint") != fingerprint):
        return None
    record["path"] = str(path)
    return record


def choose_config(model: str | os.PathLike, *, bar: str = "exact", cache: str | os.PathLike | None = None,
                  provider: str = "auto", kind: str | None = None) -> tuple[EngineConfig, str, str | None]:
    """``(config, why, int8_file)``: what ``engine="auto"`` runs for ``model`` here, and why.

    A matching record's fastest configuration at or above ``bar`` (``exact`` >= 99.9% mask
    agreement with FP32, ``fast`` >= 99%) wins; ``int8_file`` is set when that configuration runs
    another file than ``model``: the record's INT8 file, or a fused file (each only while unchanged). Else :func:`heuristic_config` (``kind``: the
    contract's, which the heuristic weighs).

    Example::

        config, why, _ = choose_config("fcn8.onnx", bar="fast")
    """
    if bar not in BARS:
        raise EdgesegError(f"Unknown agreement bar {bar!r}: expected one of {', '.join(BARS)}.")
    record = find_record(model, cache=cache) if provider not in ("cuda", "tensorrt") else None
    picked = pick(record, bar) if record is not None else None
    if picked is not None:
        candidate, int8 = picked
        why = (f"tuning record {Path(record['path']).name}: fastest measured here at the {bar} bar "
               f"({candidate['fps']:.1f} fps, {100 * candidate['agreement']:.2f}% agreement)")
        return EngineConfig.from_dict(candidate["config"]), why, int8
    config, why = heuristic_config(provider=provider, kind=kind)
    return config, f"no tuning record for this model on this machine (run `edgeseg tune`); {why}", None


def pick(record: dict[str, Any], bar: str) -> tuple[dict[str, Any], str | None] | None:
    """The record's fastest candidate at or above ``bar`` that can run now, with the file it runs when
    that is not the model itself (its INT8 file, or a fused file; None: none qualifies). The one rule
    both ``edgeseg tune`` and ``engine="auto"`` apply."""
    runnable = [c for c in record.get("candidates", [])
                if c.get("fps") and c.get("agreement") is not None and c["agreement"] >= BARS[bar]]
    for candidate in sorted(runnable, key=lambda c: -c["fps"]):
        config = candidate["config"]
        if config.get("fused"):
            entry = (record.get("fused") or {}).get(config.get("file", "fp32"))
        elif config.get("file") == "int8":
            entry = record.get("int8")
        else:
            return candidate, None
        path = _usable(entry)
        if path is not None:  # else the file moved or changed since tuning: the next candidate
            return candidate, path
    return None


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
    """
    if provider == "cuda" or (provider == "auto" and _ort_has_cuda()):
        return EngineConfig(), "heuristic: CUDA -> onnxruntime"
    if kind == "autoencoder":
        return EngineConfig(), "heuristic: an autoencoder (per-call cost rules) -> onnxruntime"
    from edgeseg.runtime._openvino import openvino_available

    bf16 = cpu_flags() & {"amx_bf16", "avx512_bf16"}
    if bf16 and openvino_available():
        return (EngineConfig(engine="openvino", precision="auto"),
                f"heuristic: the CPU has {'/'.join(sorted(bf16))} and OpenVINO is installed -> OpenVINO bf16")
    if not bf16:
        return EngineConfig(), "heuristic: no bf16 in this CPU -> onnxruntime fp32"
    return EngineConfig(), "heuristic: OpenVINO is not installed -> onnxruntime fp32"


def require_gpu_fp16(what: str) -> None:
    """Refuse ``what`` in one line where onnxruntime has no CUDA provider: fp16 is the GPU path, and an
    fp16 request answered by the CPU in fp32 would be a silent fallback."""
    if not _ort_has_cuda():
        raise EdgesegError(f"{what} runs onnxruntime in fp16 on an NVIDIA GPU, and this onnxruntime has no CUDA "
                           "provider: install onnxruntime-gpu (pip install 'edgeseg[gpu]') on a machine with a GPU; "
                           "on this CPU use bf16 (OpenVINO, CPUs with AVX512-BF16/AMX) or the default.")


def _usable(entry: dict[str, Any] | None) -> str | None:
    if not entry or not Path(entry["path"]).is_file():
        return None
    return entry["path"] if sha256_of(entry["path"]) == entry["sha256"] else None


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(module: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return None


def record_dict(config: EngineConfig) -> dict[str, Any]:
    """A configuration as JSON-ready data (what records store)."""
    return asdict(config)
