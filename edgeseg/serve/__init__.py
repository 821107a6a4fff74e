"""edgeseg.serve: the runtime as an inference service other programs call (``edgeseg serve``).

The Open Inference Protocol v2 over HTTP (the stock ``tritonclient`` works against it) and a
segmentation endpoint (an image in, class fractions or a palette PNG mask out), with dynamic batching,
Prometheus metrics, request limits and bearer-token auth, on one machine (uvicorn, through the runtime's
:class:`edgeseg.runtime.http.HttpServer`) or as Ray Serve replicas. Starlette, uvicorn and
prometheus_client come with the ``serve`` extra; Ray with ``ray``. Nothing below ``edgeseg`` imports
this package (import-linter). Public names load lazily, so ``edgeseg --help`` loads neither NumPy nor OpenCV.

Example::

    from edgeseg.serve import ServeOptions, open_server, parse_models
    with open_server(parse_models(["samples/models/fcn8/model.onnx"]), ServeOptions(port=0)) as server:
        print(server.url)   # http://127.0.0.1:PORT/ until the block ends
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it.
_PUBLIC = {
    "build_app": "edgeseg.serve._app",
    "Batched": "edgeseg.serve._batcher", "Batcher": "edgeseg.serve._batcher",
    "ServedModel": "edgeseg.serve._models",
    "ModelSpec": "edgeseg.serve._options", "ServeOptions": "edgeseg.serve._options",
    "parse_models": "edgeseg.serve._options", "read_token": "edgeseg.serve._options",
    "RequestError": "edgeseg.serve._protocol", "encode_infer_response": "edgeseg.serve._protocol",
    "parse_infer_request": "edgeseg.serve._protocol",
    "load_models": "edgeseg.serve._server", "open_server": "edgeseg.serve._server", "serve": "edgeseg.serve._server",
    "VIEWS": "edgeseg.serve._views",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseg.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
