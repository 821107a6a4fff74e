"""What ``edgeseg serve`` serves and how: the models by name, and one frozen options object."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.runtime import EdgesegError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The file names `edgeseg export` and `edgeseg train` write: the folder names such a model better.
_GENERIC_STEMS = frozenset({"model", "model.int8", "model.fast"})


@dataclass(frozen=True)
class ModelSpec:
    """One served model: the name clients use in URLs, and its ONNX file."""

    name: str
    path: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise EdgesegError(f"model name {self.name!r} cannot be used in a URL: expected letters, digits, '_', '.' "
                               "or '-' (at most 64, not starting with a symbol). Name it: NAME=path/to/model.onnx.")


def parse_models(items: Sequence[str]) -> list[ModelSpec]:
    """``MODEL.onnx`` or ``NAME=MODEL.onnx`` items -> specs. The default name is the file's stem, or its folder's
    name for the stems the exporter writes (``samples/models/fcn8/model.onnx`` -> ``fcn8``). Names are unique.

    Example::

        parse_models(["samples/models/fcn8/model.onnx", "int8=fcn8.int8.onnx"])   # names fcn8, int8
    """
    if not items:
        raise EdgesegError("no model given: pass MODEL.onnx (or NAME=MODEL.onnx), one or more.")
    specs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or (os.sep in name or "/" in name):  # a path holding "=" is a path
            path, name = item, _default_name(Path(item))
        if not Path(path).is_file():
            raise EdgesegError(f"model `{path}`: no such file. Pass an .onnx file (NAME=path to name it).")
        specs.append(ModelSpec(name=name, path=path))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise EdgesegError(f"two models are named {spec.name!r}: name them apart, e.g. a=one.onnx b=two.onnx.")
        seen.add(spec.name)
    return specs


def _default_name(path: Path) -> str:
    stem = path.name[:-len(".onnx")] if path.name.endswith(".onnx") else path.stem
    if stem in _GENERIC_STEMS and path.resolve().parent.name:
        suffix = stem[len("model"):]
        return path.resolve().parent.name + suffix
    return stem


@dataclass(frozen=True)
class ServeOptions:
    """How ``edgeseg serve`` runs. Every knob has the command line's name and default (``edgeseg serve --help``).

    Batching: up to ``max_batch`` items per inference call, gathered for at most ``max_delay_ms`` after the
    oldest waiting request arrived. Limits: ``max_queue`` requests per model admitted at once (more: 503 with
    Retry-After), ``max_body_mb`` per request body (413), ``max_pixels`` per decoded image (400, checked
    from the header before decoding). ``token``: bearer token required on everything but ``/v2/health``.
    ``drain``: seconds the requests in flight get to finish on SIGTERM. ``grpc_port``: also serve the
    protocol's gRPC form there (None: off). The engine knobs mean what they
    mean for :class:`edgeseg.runtime.Model` (``engine=None``: auto, by ``edgeseg tune``'s record when there is one).

    Example::

        options = ServeOptions(port=0, max_batch=16, max_delay_ms=2, token="s3cret")
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    max_delay_ms: float = 5.0
    max_queue: int = 64
    max_body_mb: float = 16.0
    max_pixels: int = 25_000_000
    token: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    drain: float = 1.0
    grpc_port: int | None = None
    engine: str | None = None
    provider: str = "auto"
    threads: int | None = None
    precision: str = "auto"
    optimization: str = "all"
    strict: bool = False

    def __post_init__(self) -> None:
        checks = (("port", self.port, 0 <= self.port <= 65535, "0..65535 (0: any free port)"),
                  ("max_batch", self.max_batch, self.max_batch >= 1, ">= 1"),
                  ("max_delay_ms", self.max_delay_ms, 0 <= self.max_delay_ms <= 10_000, "0..10000"),
                  ("max_queue", self.max_queue, self.max_queue >= 1, ">= 1"),
                  ("max_body_mb", self.max_body_mb, self.max_body_mb > 0, "> 0"),
                  ("max_pixels", self.max_pixels, self.max_pixels >= 1, ">= 1"),
                  ("drain", self.drain, 0 <= self.drain <= 600, "0..600 seconds"))
        for name, value, ok, expected in checks:
            if not ok:
                raise EdgesegError(f"--{name.replace('_', '-')} must be {expected}, got {value}.")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise EdgesegError(f"--grpc-port must be 0..65535 (0: any free port), got {self.grpc_port}.")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise EdgesegError("the bearer token must be non-empty and hold no spaces or newlines.")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise EdgesegError("TLS needs both --tls-cert and --tls-key.")

    @property
    def max_body(self) -> int:
        """The body limit in bytes."""
        return int(self.max_body_mb * 1024 * 1024)


def read_token(*, token: str | None, token_file: str | None) -> str | None:
    """The bearer token from ``--token`` or ``--token-file`` (its first line; the file keeps it out of ``ps``).

    Example::

        read_token(token=None, token_file="/run/secrets/edgeseg")   # the file's first line, stripped
    """
    if token is not None and token_file is not None:
        raise EdgesegError("--token and --token-file both given: pass one.")
    if token_file is None:
        return token
    try:
        text = Path(token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise EdgesegError(f"--token-file `{token_file}`: cannot read it ({error}).") from None
    if not text:
        raise EdgesegError(f"--token-file `{token_file}` is empty: put the token on its first line.")
    return text.splitlines()[0].strip()
