"""edgeseg.serve: the runtime as an inference service other programs call (``edgeseg serve``).

The Open Inference Protocol v2 over HTTP (the stock ``tritonclient`` works against it) and a
segmentation endpoint (an image in, class fractions or a palette PNG mask out), with dynamic batching,
Prometheus metrics, request limits and bearer-token auth, on one machine (uvicorn, through the runtime's
:class:`edgeseg.runtime.http.HttpServer`) or as Ray Serve replicas. Starlette, uvicorn and
prometheus_client come with the ``serve`` extra; Ray with ``ray``. Nothing below ``edgeseg`` imports
this package (import-linter).

Example::

    from edgeseg.serve import ServeOptions, open_server, parse_models
    with open_server(parse_models(["samples/models/fcn8/model.onnx"]), ServeOptions(port=0)) as server:
        print(server.url)   # http://127.0.0.1:PORT/ until the block ends
"""

from edgeseg.serve._app import build_app
from edgeseg.serve._batcher import Batched, Batcher
from edgeseg.serve._models import ServedModel
from edgeseg.serve._options import ModelSpec, ServeOptions, parse_models, read_token
from edgeseg.serve._protocol import RequestError, encode_infer_response, parse_infer_request
from edgeseg.serve._server import load_models, open_server, serve
from edgeseg.serve._views import VIEWS

__all__ = [
    "Batched",
    "Batcher",
    "ModelSpec",
    "RequestError",
    "ServeOptions",
    "ServedModel",
    "VIEWS",
    "build_app",
    "encode_infer_response",
    "load_models",
    "open_server",
    "parse_infer_request",
    "parse_models",
    "read_token",
    "serve",
]
