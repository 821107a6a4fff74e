"""Engine choice: read a tuning record written by ``edgeseg tune``, else a documented heuristic.

This is the runtime's (small, TF-free) side of tuning; ``edgeseg.tune`` measures and writes the
records. A record is used only when it was made for *this* model file (its sha256) on *this*
machine (its fingerprint: CPU model and flags, cores, library versions); anything else falls
back to the heuristic of :func:`heuristic_config`.

Example::

    config, why, _ = choose_config("fcn8.onnx")       # what Model(engine="auto") runs
    print(config.describe(), "-", why)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from edgeseg.runtime._engines import EngineConfig, cpu_flags, heuristic_config
from edgeseg.runtime._modelfile import ModelFile, sha256_cached
from edgeseg.runtime.errors import EdgesegError

RECORD_VERSION = 1
# Share of mask pixels that must agree with the FP32 reference: exact (the default) and fast.
BARS = {"exact": 0.999, "fast": 0.99}
# The flags that change which kernels an engine runs (the rest of /proc/cpuinfo's list does not).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                "amx_int8", "amx_tile", "avx512_fp16")
LIBRARIES = ("onnxruntime", "openvino", "numpy")


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where tuning records live: ``cache`` if given, else ``$XDG_CACHE_HOME/edgeseg/tuning``
    (``~/.cache/edgeseg/tuning`` when XDG_CACHE_HOME is unset)."""
    if cache is not None:
        return Path(cache)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeseg" / "tuning"


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


def find_record(model: str | os.PathLike | ModelFile, *, cache: str | os.PathLike | None = None
                ) -> dict[str, Any] | None:
    """The tuning record for this model file on this machine, or None (none, or made elsewhere).

    The record's contents are checked, not only its name: a file copied from another machine
    or made for another model is not used. The model is hashed only when a record of this machine
    may be its own (same size, or a record that does not say): with no record here, finding none
    costs a folder listing, not a read of the whole file (1-2 s for a 512 MB model).
    """
    file = model if isinstance(model, ModelFile) else ModelFile.read(model)
    try:
        records = [path for path in cache_dir(cache).iterdir() if path.suffix == ".json"]
    except OSError:  # no cache folder yet: no record
        return None
    if not records:  # the usual first run: not even the machine's fingerprint is needed
        return None
    fingerprint = machine_fingerprint()
    suffix = f"-{fingerprint_key(fingerprint)}.json"
    if not any(_may_be_for(path, file.size) for path in records if path.name.endswith(suffix)):
        return None
    sha = file.sha256
    path = record_path(sha, fingerprint, cache)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("version") != RECORD_VERSION or record.get("model_sha256") != sha
            or record.get("fingerprint") != fingerprint):
        return None
    record["path"] = str(path)
    return record


def _may_be_for(record: Path, size: int) -> bool:
    # Records name the model's size (``model_bytes``); an older one that does not may be for any file.
    try:
        stored = json.loads(record.read_text()).get("model_bytes")
    except (OSError, ValueError, AttributeError):
        return False
    return stored is None or stored == size


def choose_config(model: str | os.PathLike | ModelFile, *, bar: str = "exact", cache: str | os.PathLike | None = None,
                  provider: str = "auto", kind: str | None = None) -> tuple[EngineConfig, str, str | None]:
    """``(config, why, int8_file)``: what ``engine="auto"`` runs for ``model`` here, and why.

    A matching record's fastest configuration at or above ``bar`` (``exact`` >= 99.9% mask
    agreement with FP32, ``fast`` >= 99%) wins; ``int8_file`` is set when that configuration runs
    another file than ``model``: the record's INT8 file, or a fused file (each only while unchanged). Else
    :func:`heuristic_config` (``kind``: the contract's, which the heuristic weighs).

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


def _usable(entry: dict[str, Any] | None) -> str | None:
    if not entry or not Path(entry["path"]).is_file():
        return None
    return entry["path"] if sha256_cached(entry["path"]) == entry["sha256"] else None


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

