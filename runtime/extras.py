"""The optional dependencies: which extra of ``pyproject.toml`` brings which module, and the one install hint.

Every "pip install 'edgeseg[...]'" that edgeseg prints is made here, from :data:`EXTRAS`, so a hint
cannot name an extra that does not bring the module (a test holds the table to ``pyproject.toml``).
Nothing here imports a heavy module: :func:`missing` only looks for them (``importlib.util.find_spec``),
so the command line can check a command's extras before it loads anything.

Example::

    from edgeseg.runtime.extras import require
    ov = require("openvino", purpose="--engine openvino")   # or EdgesegError:
    # "--engine openvino needs the `openvino` package, which is not installed: pip install 'edgeseg[openvino]'"
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

from edgeseg.runtime.errors import EdgesegError


@dataclass(frozen=True)
class Extra:
    """What one extra installs, as top-level import names: ``needs`` (a command that uses the extra cannot
    start without them) and ``optional`` (features with a fallback: edgeseg says what it does instead)."""

    needs: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        return self.needs + self.optional


# pyproject.toml's extras (dev aside), as the modules they bring. Order matters: where several extras
# bring a module and the caller prefers none of them, the first one is named.
EXTRAS: dict[str, Extra] = {
    "cpu": Extra(needs=("onnxruntime",), optional=("imageio_ffmpeg",)),     # H.264 overlays; else OpenCV's mp4v
    "gpu": Extra(needs=("onnxruntime",), optional=("imageio_ffmpeg",)),
    "openvino": Extra(needs=("openvino",)),
    "export": Extra(needs=("tensorflow", "keras", "tf2onnx", "onnx", "matplotlib"), optional=("h5py",)),
    "calibrate": Extra(needs=("onnx",), optional=("matplotlib",)),          # matplotlib: the SQNR chart only
    "bench": Extra(needs=("onnx",), optional=("openvino", "psutil")),       # no OpenVINO: its runners are skipped
    "serve": Extra(needs=("prometheus_client", "starlette", "uvicorn")),
    "grpc": Extra(needs=("tritonclient", "grpc")),                       # edgeseg serve --grpc-port
    "events": Extra(needs=("paho",), optional=("yaml",)),                  # yaml: zones/rules files in YAML
    "ray": Extra(needs=("ray", "fsspec")),                                 # fsspec: --ray's object storage
    "s3": Extra(needs=("s3fs",)),                                          # --ray with s3:// URIs
    "gcs": Extra(needs=("gcsfs",)),
    "azure": Extra(needs=("adlfs",)),
}


# What the base install brings (pyproject.toml's dependencies): missing, edgeseg itself is broken.
BASE = ("numpy", "cv2", "tqdm")


def install_hint(*extras: str) -> str:
    """The pip command that installs ``extras``.

    Example::

        install_hint("cpu", "serve")   # "pip install 'edgeseg[cpu,serve]'"
    """
    unknown = [extra for extra in extras if extra not in EXTRAS]
    if unknown or not extras:
        raise ValueError(f"unknown extra(s) {unknown or list(extras)}: expected some of {', '.join(EXTRAS)}")
    return f"pip install 'edgeseg[{','.join(extras)}]'"


def extra_of(module: str, *, among: Sequence[str] = ()) -> str | None:
    """The extra that brings ``module`` (a dotted name counts by its top level), preferring those in ``among``.

    Example::

        extra_of("openvino.runtime")                       # "openvino"
        extra_of("openvino", among=("cpu", "bench"))      # "bench"
    """
    top = module.split(".")[0]
    bringing = [name for name, extra in EXTRAS.items() if top in extra.modules]
    preferred = [name for name in among if name in bringing]
    return (preferred or bringing or [None])[0]


def installed(module: str) -> bool:
    """True when ``import module`` would find it (it is not imported; a blocked import counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None, i.e. imports of it are blocked
        return False


def missing(extras: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``{extra: its needed modules that are not installed}`` for the extras that lack any.

    Example::

        missing(["cpu", "export"])   # {} when both are installed; {"export": ("tensorflow", ...)} without TF
    """
    found = {}
    for name in extras:
        absent = tuple(module for module in EXTRAS[name].needs if not installed(module))
        if absent:
            found[name] = absent
    return found


def check_extras(extras: Sequence[str], *, purpose: str) -> None:
    """Raise one EdgesegError naming every missing module of ``extras`` and the pip command for them all.

    Example::

        check_extras(("cpu", "export"), purpose="edgeseg export")
        # EdgesegError: edgeseg export needs the export extra (missing: tensorflow, keras, tf2onnx, onnx,
        # matplotlib): pip install 'edgeseg[export]'
    """
    absent = missing(extras)
    if not absent:
        return
    names = list(absent)
    extras_text = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    modules = ", ".join(dict.fromkeys(module for found in absent.values() for module in found))
    raise EdgesegError(f"{purpose} needs the {extras_text} extra{'s' if len(names) > 1 else ''} "
                       f"(missing: {modules}): {install_hint(*names)}")


def missing_message(module: str, *, purpose: str, among: Sequence[str] = (), fix: str = "") -> str:
    """The one line for an optional ``module`` that is not installed: which package, which extra.

    A module no extra names (a dependency of a dependency) is put down to the extras in ``among``, the
    ones the caller uses; a module of the base install means edgeseg itself needs reinstalling.
    ``fix``: another way out, appended in brackets (e.g. "or use --engine onnxruntime").

    Example::

        missing_message("tf2onnx", purpose="edgeseg export")
        # "edgeseg export needs the `tf2onnx` package, which is not installed: pip install 'edgeseg[export]'"
    """
    top = module.split(".")[0]
    extra = extra_of(top, among=among)
    extras = (extra,) if extra else () if top in BASE else tuple(among)
    how = (f": {install_hint(*extras)}" if extras else
           " (it should come with edgeseg itself: reinstall edgeseg)")
    return f"{purpose} needs the `{top}` package, which is not installed{how}{f' ({fix})' if fix else ''}"


def require(module: str, *, purpose: str, among: Sequence[str] = (), fix: str = "") -> ModuleType:
    """Import ``module``, or raise EdgesegError with :func:`missing_message` (not installed) or the reason it
    failed to load (installed but broken).

    Example::

        ort = require("onnxruntime", purpose="edgeseg's runtime")
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        name = error.name or module
        if name.split(".")[0] != module.split(".")[0]:  # the module is there; one of its own dependencies is not
            raise EdgesegError(f"{purpose}: `{module}` is installed but cannot load: {error}. Reinstall it"
                               f"{f' ({install_hint(extra)})' if (extra := extra_of(module, among=among)) else ''}."
                               ) from error
        raise EdgesegError(missing_message(module, purpose=purpose, among=among, fix=fix)) from error
    except ImportError as error:
        extra = extra_of(module, among=among)
        raise EdgesegError(f"{purpose}: `{module}` is installed but cannot load: {error}. Reinstall it"
                           f"{f' ({install_hint(extra)})' if extra else ''}.") from error
