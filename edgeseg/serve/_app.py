"""The service as one ASGI app (Starlette): the same app runs on uvicorn here and in each Ray Serve replica.

Endpoints (``{name}`` is a served model; ``/versions/1`` may follow it in the v2 paths):

- Open Inference Protocol v2: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``
  (metadata: tensors, and the contract's preprocessing under ``edgeseg``), ``/v2/models/{name}/ready``,
  ``/v2/models/{name}/config`` (Triton's), ``POST /v2/models/{name}/infer`` (JSON and binary tensors),
  ``POST /v2/repository/index``.
- ``POST /v1/models/{name}/segment``: an encoded image (raw body or multipart) in; JSON (class fractions,
  ``?include=`` more views) or, with ``Accept: image/png``, the palette PNG mask at the image's size.
- ``GET /metrics``: Prometheus text.

Every request is bounded: its body (413), its image's pixels (400, from the header), the requests per
model in flight (503 + Retry-After). Errors are JSON ``{"error": "one line"}``, as the protocol says. A
bearer token, when set, guards everything but ``/v2/health``. No request reaches the file system: a
model name only looks up the dict of models loaded at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from email import policy
from email.parser import BytesParser
from typing import Any

import numpy as np

from edgeseg import __version__
from edgeseg.runtime import BadInputError, EdgesegError, decode_image, encode_mask_png, preprocess_batch
from edgeseg.serve._batcher import Batched, Batcher
from edgeseg.serve._metrics import Metrics
from edgeseg.serve._models import CLASS_IDS, VERSION, ServedModel
from edgeseg.serve._options import ServeOptions
from edgeseg.serve._protocol import HEADER_LENGTH, RequestError, datatype_of, encode_infer_response, parse_infer_request
from edgeseg.serve._views import DEFAULT_VIEWS, VIEWS

log = logging.getLogger("edgeseg.serve")

RETRY_AFTER_S = 1


def build_app(models: Sequence[ServedModel], options: ServeOptions) -> Any:
    """The Starlette app serving ``models`` (loaded, see :meth:`ServedModel.load`) with ``options``.

    Its lifespan starts one batcher per model and, at shutdown, runs what was submitted and stops them.

    Example::

        app = build_app([ServedModel.load(ModelSpec("fcn8", "fcn8.onnx"), options)], options)
        HttpServer(app, port=8000).start()
    """
    try:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.middleware import Middleware
        from starlette.routing import Route
    except ImportError:
        raise EdgesegError("edgeseg serve needs starlette and uvicorn: pip install 'edgeseg[serve]'") from None
    service = _Service(models, options)
    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes = [
        Route("/v2", service.server_metadata),
        Route("/v2/health/live", service.live),
        Route("/v2/health/ready", service.ready),
        Route("/v2/repository/index", service.repository_index, methods=["POST"]),
        *(Route(p, service.model_metadata) for p in model_paths),
        *(Route(p + "/ready", service.model_ready) for p in model_paths),
        *(Route(p + "/config", service.model_config) for p in model_paths),
        *(Route(p + "/infer", service.infer, methods=["POST"]) for p in model_paths),
        Route("/v1/models/{name}/segment", service.segment, methods=["POST"]),
        Route("/metrics", service.metrics_text),
    ]

    async def not_found(request: Any, exc: HTTPException) -> Any:
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}.")
        return _error(exc.status_code, f"no endpoint {request.url.path}: try /v2, /v2/models/NAME, "
                                       "/v2/models/NAME/infer, /v1/models/NAME/segment or /metrics.")

    middleware = [Middleware(_BearerAuth, token=options.token)] if options.token else []
    return Starlette(routes=routes, middleware=middleware, lifespan=service.lifespan,
                     exception_handlers={404: not_found, 405: not_found})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


def _api(endpoint: str | None) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Turn a handler's errors into one-line JSON answers, and count the request for its model."""
    def wrap(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def run(self: _Service, request: Any) -> Any:
            started = time.monotonic()
            try:
                response = await handler(self, request)
            except RequestError as error:
                response = _error(error.status, error.message, error.headers)
            except BadInputError as error:  # the request's image or tensor: it costs only this request
                response = _error(400, str(error))
            except EdgesegError as error:  # the model failed on a valid request: the server's fault
                log.warning("%s: %s", request.url.path, error)
                response = _error(500, str(error))
            except Exception as error:  # noqa: BLE001 (one request's defect must not take the server down)
                log.exception("%s failed", request.url.path)
                response = _error(500, f"internal error ({type(error).__name__}: {error}); see the server log.")
            name = request.path_params.get("name")
            if endpoint is not None and name in self.models:
                self.metrics.request(name, endpoint, response.status_code, time.monotonic() - started)
            return response
        return run
    return wrap


class _Service:
    def __init__(self, models: Sequence[ServedModel], options: ServeOptions) -> None:
        self.models = {served.name: served for served in models}
        self.options = options
        self.inflight = {name: 0 for name in self.models}
        self.metrics = Metrics(self.models, depth=self._depth, inflight=self.inflight.__getitem__)
        self.is_ready = False
        # Which process answered (a Ray Serve replica, or this server): in a response header.
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    def _depth(self, name: str) -> int:
        batcher = self.models[name].batcher
        return batcher.depth if batcher is not None else 0

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        for served in self.models.values():
            served.batcher = Batcher(served.model.run, max_batch=self.options.max_batch,
                                     max_delay=self.options.max_delay_ms / 1000, name=served.name,
                                     on_batch=functools.partial(self.metrics.batch_done, served.name)).start()
        grpc = None
        if self.options.grpc_port is not None:
            from edgeseg.serve._grpc import start_grpc

            grpc = await start_grpc(self, host=self.options.host, port=self.options.grpc_port)
        self.is_ready = True
        try:
            yield
        finally:
            self.is_ready = False
            if grpc is not None:
                await grpc.stop(self.options.drain)
            for served in self.models.values():
                if served.batcher is not None:
                    served.batcher.close()

    # -- health and metadata -------------------------------------------------------------

    async def server_metadata(self, request: Any) -> Any:
        return _json({"name": "edgeseg", "version": __version__,
                      "extensions": ["binary_tensor_data", "model_configuration"]})

    async def live(self, request: Any) -> Any:
        return _json({"live": True})

    async def ready(self, request: Any) -> Any:
        return _json({"ready": self.is_ready}, status=200 if self.is_ready else 503)

    @_api(None)
    async def repository_index(self, request: Any) -> Any:
        return _json([{"name": name, "version": VERSION, "state": "READY" if self.is_ready else "UNAVAILABLE"}
                      for name in self.models])

    @_api("metadata")
    async def model_metadata(self, request: Any) -> Any:
        return _json(self._model(request).metadata())

    @_api("ready")
    async def model_ready(self, request: Any) -> Any:
        served = self._model(request)
        return _json({"name": served.name, "ready": self.is_ready}, status=200 if self.is_ready else 503)

    @_api("config")
    async def model_config(self, request: Any) -> Any:
        return _json(self._model(request).config())

    async def metrics_text(self, request: Any) -> Any:
        from starlette.responses import Response

        body, content_type = self.metrics.text()
        return Response(body, media_type=content_type)

    # -- inference -----------------------------------------------------------------------

    @_api("infer")
    async def infer(self, request: Any) -> Any:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response

        served = self._model(request)
        async with self.admitted(served) as ticket:
            body = await self._body(request)
            parsed = await run_in_threadpool(parse_infer_request, body, request.headers.get(HEADER_LENGTH))
            wanted = parsed.outputs or tuple((name, parsed.binary_output) for name, _, _ in served.outputs())
            known = [name for name, _, _ in served.outputs()]
            for name, _ in wanted:
                if name not in known:
                    raise RequestError(400, f"model {served.name!r} has no output {name!r}: it has "
                                            f"{', '.join(known)}.")
            batched = await self.infer_tensors(served, parsed.inputs, ticket)

            def encode() -> tuple[bytes, dict[str, str]]:
                arrays = {served.output_name: batched.output}
                if any(name == CLASS_IDS for name, _ in wanted):
                    arrays[CLASS_IDS] = served.class_ids(batched.output)
                return encode_infer_response(model=served.name, version=VERSION, request_id=parsed.id,
                                             outputs=[(name, arrays[name], binary) for name, binary in wanted])

            content, headers = await run_in_threadpool(encode)
        return Response(content, headers={**headers, **self._headers(batched)})

    @_api("segment")
    async def segment(self, request: Any) -> Any:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response

        served = self._model(request)
        if not served.segmentation:
            raise RequestError(400, f"model {served.name!r} is an {served.contract.kind} model; /segment takes "
                                    f"segmentation models: send its tensors to /v2/models/{served.name}/infer.")
        views = _views(request.query_params.get("include"))
        png = "image/png" in request.headers.get("accept", "").lower()
        async with self.admitted(served) as ticket:
            body = await self._body(request)
            data = _image_part(body, request.headers.get("content-type", ""))
            started = time.perf_counter()
            image_shape, batch, geometry = await run_in_threadpool(self._prepare, served, data)
            prepared = time.perf_counter()
            batched = await self._infer(served, batch, ticket)

            def answer() -> tuple[bytes, str]:
                result = served.model.postprocess(batched.output[0], geometry)
                if png:
                    return encode_mask_png(result.mask, served.contract.output.palette), "image/png"
                document = {"model": served.name, "width": image_shape[1], "height": image_shape[0],
                            "batch": batched.batch,
                            **{view: VIEWS[view](result, served.contract) for view in views}}
                return json.dumps(document).encode(), "application/json"

            content, media = await run_in_threadpool(answer)
        ms = {"decode": (prepared - started) * 1000, "queue": batched.queue_ms, "infer": batched.infer_ms}
        timing = ", ".join(f"{stage};dur={value:.2f}" for stage, value in ms.items())
        return Response(content, media_type=media, headers={**self._headers(batched), "server-timing": timing})

    def _prepare(self, served: ServedModel, data: bytes) -> tuple[tuple[int, ...], np.ndarray, Any]:
        image = decode_image(data, max_pixels=self.options.max_pixels)
        batch, geometries = preprocess_batch([image], served.contract.input)
        return image.shape, batch, geometries[0]

    async def infer_tensors(self, served: ServedModel, inputs: dict[str, np.ndarray], ticket: _Ticket) -> Batched:
        """The v2 inference of ``inputs`` (checked against the model's input) through the model's batcher;
        ``ticket``: what :meth:`admitted` gave."""
        return await self._infer(served, self._input(served, inputs), ticket)

    def _input(self, served: ServedModel, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if list(inputs) != [served.input_name]:
            raise RequestError(400, f"model {served.name!r} takes one input, {served.input_name!r}; the request "
                                    f"has {', '.join(map(repr, inputs))}.")
        array = inputs[served.input_name]
        if array.dtype != np.float32:
            raise RequestError(400, f"input {served.input_name!r}: datatype {datatype_of(array.dtype)}, expected "
                                    "FP32 (preprocessed as the metadata's edgeseg.contract.input says).")
        if array.ndim != 4 or list(array.shape[1:]) != served.input_shape or not array.shape[0]:
            raise RequestError(400, f"input {served.input_name!r}: shape {list(array.shape)}, expected "
                                    f"[N, {', '.join(map(str, served.input_shape))}] with N >= 1.")
        if array.shape[0] > self.options.max_batch:
            raise RequestError(400, f"input {served.input_name!r}: a batch of {array.shape[0]} is more than this "
                                    f"server's --max-batch {self.options.max_batch}: split it.")
        return array

    async def _infer(self, served: ServedModel, batch: np.ndarray, ticket: _Ticket) -> Batched:
        if ticket.batcher is None:
            raise RequestError(503, "the server is starting or stopping: retry.",
                               headers={"retry-after": str(RETRY_AFTER_S)})
        try:
            ticket.expected = False
            future = ticket.batcher.submit(batch, expected=True)
        except RuntimeError:
            raise RequestError(503, "the server is stopping: retry (on another replica).",
                               headers={"retry-after": str(RETRY_AFTER_S)}) from None
        return await asyncio.wrap_future(future)

    # -- request plumbing ----------------------------------------------------------------

    def _model(self, request: Any) -> ServedModel:
        return self.model(request.path_params["name"], request.path_params.get("version"))

    def model(self, name: str, version: str | None) -> ServedModel:
        """The served model ``name`` (``version``: None, empty or "1"), or RequestError 404."""
        served = self.models.get(name)
        if served is None:
            raise RequestError(404, f"unknown model {name!r}: this server has {', '.join(sorted(self.models))}.")
        if version and version != VERSION:
            raise RequestError(404, f"model {name!r} has version {VERSION} only, not {version!r}.")
        return served

    @contextlib.asynccontextmanager
    async def admitted(self, served: ServedModel) -> AsyncIterator[_Ticket]:
        """Admit one request for ``served`` (or RequestError 503 past ``--max-queue``) and announce it to the
        model's batcher, which may then wait for it to share a call."""
        # Runs on the event loop only: a plain counter is safe.
        if self.inflight[served.name] >= self.options.max_queue:
            raise RequestError(503, f"model {served.name!r} already has {self.options.max_queue} requests in flight "
                                    f"(--max-queue): retry after {RETRY_AFTER_S} s.",
                               headers={"retry-after": str(RETRY_AFTER_S)})
        self.inflight[served.name] += 1
        ticket = _Ticket(served.batcher)
        if ticket.batcher is not None:
            ticket.batcher.expect()
            ticket.expected = True
        try:
            yield ticket
        finally:
            self.inflight[served.name] -= 1
            if ticket.expected:  # it failed before reaching the batcher: no batch waits for it
                ticket.batcher.forget()

    async def _body(self, request: Any) -> bytes:
        limit = self.options.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the request body is {int(declared)} bytes, more than this server's "
                                    f"--max-body-mb {self.options.max_body_mb:g} ({limit} bytes).")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"the request body is more than this server's --max-body-mb "
                                        f"{self.options.max_body_mb:g} ({limit} bytes).")
            chunks.append(chunk)
        return b"".join(chunks)

    def _headers(self, batched: Batched) -> dict[str, str]:
        return {"x-edgeseg-batch": str(batched.batch), "x-edgeseg-replica": self.replica}


class _Ticket:
    """One admitted request: the batcher it was announced to, and whether it is still on its way there."""

    def __init__(self, batcher: Batcher | None) -> None:
        self.batcher = batcher
        self.expected = False


class _BearerAuth:
    """ASGI middleware: ``Authorization: Bearer TOKEN`` on every request but ``/v2/health/*``."""

    def __init__(self, app: Any, *, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v2/health/"):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        reason = "no Authorization header" if not given else "a wrong bearer token"
        response = _error(401, f"{reason}: send 'Authorization: Bearer TOKEN' with the server's --token.",
                          headers={"www-authenticate": "Bearer"})
        await response(scope, receive, send)


def _json(document: Any, *, status: int = 200) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(document, status_code=status)


def _views(include: str | None) -> tuple[str, ...]:
    asked = tuple(v.strip() for v in (include or "").split(",") if v.strip())
    unknown = [v for v in asked if v not in VIEWS]
    if unknown:
        raise RequestError(400, f"include={','.join(unknown)}: no such view; known: {', '.join(VIEWS)}.")
    return tuple(dict.fromkeys(DEFAULT_VIEWS + asked))


def _image_part(body: bytes, content_type: str) -> bytes:
    """The image bytes of a request: the body itself, or the ``image`` (else ``file``, else first) part of a
    multipart/form-data body."""
    if not content_type.lower().startswith("multipart/"):
        return body
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if not parts:
        raise RequestError(400, "the multipart body holds no parts: send the image as a form field named 'image' "
                                "(curl -F image=@photo.jpg) or as the raw body.")
    by_name = {part.get_param("name", header="content-disposition"): part for part in parts}
    part = by_name.get("image") or by_name.get("file") or parts[0]
    return part.get_payload(decode=True) or b""
