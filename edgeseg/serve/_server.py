"""``edgeseg serve`` on one machine: load the models, serve the app until SIGTERM/Ctrl-C, drain, exit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from edgeseg.runtime import stop_on_signals
from edgeseg.runtime.http import HttpServer
from edgeseg.serve._app import build_app
from edgeseg.serve._models import ServedModel
from edgeseg.serve._options import ModelSpec, ServeOptions

log = logging.getLogger("edgeseg.serve")


def load_models(specs: Sequence[ModelSpec], options: ServeOptions) -> list[ServedModel]:
    """Open every model (a bad one stops the start, in one line, before anything listens).

    Example::

        served = load_models(parse_models(["fcn8.onnx"]), ServeOptions())   # [ServedModel fcn8]
    """
    return [ServedModel.load(spec, options) for spec in specs]


def open_server(specs: Sequence[ModelSpec], options: ServeOptions) -> HttpServer:
    """The service for ``specs`` on ``options.host:options.port``, built and bound but not started.

    Example::

        with open_server(parse_models(["fcn8.onnx"]), ServeOptions(port=0)) as server:
            print(server.url)   # serving until the block ends
    """
    app = build_app(load_models(specs, options), options)
    # uvicorn's own bound on connections and tasks: beyond the per-model admission (--max-queue), so a flood
    # of idle connections is refused with 503 instead of holding file descriptors without end.
    limit = options.max_queue * len(specs) + 64
    return HttpServer(app, host=options.host, port=options.port, certfile=options.tls_cert, keyfile=options.tls_key,
                      drain=options.drain, limit_concurrency=limit, name="edgeseg-serve")


def serve(specs: Sequence[ModelSpec], options: ServeOptions, *, stop: threading.Event | None = None) -> float:
    """Serve until ``stop`` is set (SIGINT/SIGTERM set it from the main thread); returns the seconds the
    drain took. Requests in flight get ``options.drain`` seconds to finish; new ones are refused meanwhile.

    Example::

        serve(parse_models(["fcn8=fcn8.onnx"]), ServeOptions(port=8000, token="s3cret"))
    """
    stop = stop or threading.Event()
    server = open_server(specs, options)
    restore = stop_on_signals(stop, finishing="the requests in flight")
    try:
        server.start()
        names = ", ".join(spec.name for spec in specs)
        log.info("edgeseg serve: %s on %s (v2: %sv2/models/NAME/infer, segment: %sv1/models/NAME/segment)%s",
                    names, server.url, server.url, server.url, "; bearer token required" if options.token else "")
        while not stop.wait(0.2):
            if not server.running:
                break
        began = time.monotonic()
        clean = server.close()
        took = time.monotonic() - began
        log.info("edgeseg serve: stopped%s in %.2f s", "" if clean else " (requests still running were cancelled)",
                    took)
        return took
    finally:
        server.close()
        restore()
