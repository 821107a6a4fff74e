"""The Open Inference Protocol's gRPC form (``inference.GRPCInferenceService``), beside the HTTP one.

It runs in the HTTP app's event loop (started and stopped by its lifespan) and goes through the same
service: the same models, admission bound, batchers (a gRPC and an HTTP request share inference calls),
token and metrics. The service definition is the one Triton and KServe publish; its generated Python
modules come with ``tritonclient[grpc]`` (the ``grpc`` extra), so the stock ``tritonclient.grpc`` client
and this server read the same messages. Tensors travel as ``raw_input_contents``/``raw_output_contents``
(what the stock client sends) or as typed ``contents``. gRPC runs on one machine (``--grpc-port``), not
behind Ray Serve, whose gRPC proxy needs its own service definitions.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

import numpy as np

from edgeseg import __version__
from edgeseg.runtime import EdgesegError
from edgeseg.serve._models import CLASS_IDS, VERSION, ServedModel
from edgeseg.serve._protocol import DATATYPES, RequestError, datatype_of

log = logging.getLogger("edgeseg.serve")

# The typed `contents` field that holds each datatype (InferTensorContents).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents"}


def _modules() -> tuple[Any, Any, Any]:
    try:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError:
        raise EdgesegError("--grpc-port needs grpcio and the protocol's generated modules: "
                           "pip install 'edgeseg[grpc]'") from None
    return grpc, service_pb2, service_pb2_grpc


async def start_grpc(service: Any, *, host: str, port: int) -> Any:
    """Start the gRPC server for ``service`` (the app's) on ``host:port``; returns the ``grpc.aio`` server."""
    grpc, pb, pb_grpc = _modules()
    limit = service.options.max_body
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", -1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_servicer(pb, pb_grpc, grpc, service), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if service.options.tls_cert:
            with open(service.options.tls_key, "rb") as key, open(service.options.tls_cert, "rb") as cert:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as error:
        raise EdgesegError(f"--grpc-port: cannot listen on {address}: {error}. Pick another port.") from None
    await server.start()
    log.info("edgeseg serve: gRPC on %s:%d", host, bound)
    return server


def _servicer(pb: Any, pb_grpc: Any, grpc: Any, service: Any) -> Any:
    calls = _Calls(grpc, service)

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (the protocol's names)
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerReadyResponse(ready=service.is_ready)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await calls.guard(context, lambda: pb.ServerMetadataResponse(
                name="edgeseg", version=__version__, extensions=["model_configuration"]))

        async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await calls.guard(context, lambda: pb.ModelReadyResponse(
                ready=service.is_ready and service.model(request.name, request.version) is not None))

        async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await calls.guard(context, lambda: _model_metadata(
                pb, service.model(request.name, request.version)))

        async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await calls.guard(context, lambda: _model_config(
                pb, service, service.model(request.name, request.version)))

        async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await _model_infer(pb, calls, request, context)

        async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await calls.guard(context, lambda: pb.RepositoryIndexResponse(models=[
                pb.RepositoryIndexResponse.ModelIndex(name=n, version=VERSION, state="READY") for n in service.models]))

    return Servicer()


class _Calls:
    """What every RPC shares: the bearer-token check, the gRPC status of an HTTP-style refusal, the metrics."""

    def __init__(self, grpc: Any, service: Any) -> None:
        self.grpc, self.service = grpc, service
        self.codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                      404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                      503: grpc.StatusCode.UNAVAILABLE}
        self.expected = f"Bearer {service.options.token}" if service.options.token else None

    def check_token(self, context: Any) -> None:
        if self.expected is None:
            return
        given = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(given.encode(), self.expected.encode()):
            reason = "no authorization metadata" if not given else "a wrong bearer token"
            raise RequestError(401, f"{reason}: send ('authorization', 'Bearer TOKEN') with the server's --token.")

    async def abort(self, context: Any, error: RequestError) -> None:
        await context.abort(self.codes.get(error.status, self.grpc.StatusCode.INVALID_ARGUMENT), error.message)

    async def guard(self, context: Any, answer: Any) -> Any:
        """``answer()`` for an authorized caller; a RequestError (bad token, unknown model) aborts the call."""
        try:
            self.check_token(context)
            return answer()
        except RequestError as error:
            await self.abort(context, error)

    def count(self, name: str, code: int, started: float) -> None:
        if name in self.service.models:
            self.service.metrics.request(name, "grpc_infer", code, time.monotonic() - started)


async def _model_infer(pb: Any, calls: _Calls, request: Any, context: Any) -> Any:
    """One inference through the service's admission bound and batcher, counted in the metrics."""
    service, started, name = calls.service, time.monotonic(), request.model_name
    try:
        calls.check_token(context)
        served = service.model(name, request.model_version)
        async with service.admitted(served) as ticket:
            inputs, wanted = _inputs(request), _wanted(served, request)
            batched = await service.infer_tensors(served, inputs, ticket)
        response = _outputs(pb, served, request, wanted, batched.output)
        code = 200
    except RequestError as error:
        calls.count(name, error.status, started)
        await calls.abort(context, error)
        raise  # abort() raises; this line is never reached
    except EdgesegError as error:  # the model failed on a valid request
        calls.count(name, 500, started)
        await context.abort(calls.grpc.StatusCode.INTERNAL, " ".join(str(error).split()))
        raise
    context.set_trailing_metadata((("x-edgeseg-batch", str(batched.batch)),))
    calls.count(name, code, started)
    return response


def _model_metadata(pb: Any, served: ServedModel) -> Any:
    metadata = served.metadata()
    tensors = [[pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in metadata[side]] for side in ("inputs", "outputs")]
    return pb.ModelMetadataResponse(name=metadata["name"], versions=metadata["versions"],
                                    platform=metadata["platform"], inputs=tensors[0], outputs=tensors[1])


def _model_config(pb: Any, service: Any, served: ServedModel) -> Any:
    """Triton's model configuration: tensors, batching, and the contract as a parameter."""
    from tritonclient.grpc import model_config_pb2 as mc

    def tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
        return {"name": name, "data_type": getattr(mc, f"TYPE_{datatype}"), "dims": shape[1:]}

    config = mc.ModelConfig(
        name=served.name, platform="edgeseg_onnx", backend=served.model.engine,
        max_batch_size=service.options.max_batch,
        input=[mc.ModelInput(**tensor(served.input_name, "FP32", [-1, *served.input_shape]))],
        output=[mc.ModelOutput(**tensor(*o)) for o in served.outputs()],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=int(service.options.max_delay_ms * 1000)),
        parameters={"edgeseg_contract": mc.ModelParameter(string_value=json.dumps(served.contract.to_dict()))})
    return pb.ModelConfigResponse(config=config)


def _inputs(request: Any) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(400, f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents.")
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype not in DATATYPES:
            raise RequestError(400, f"input {tensor.name!r}: datatype {tensor.datatype!r} is not one this server "
                                    f"takes ({', '.join(DATATYPES)}).")
        dtype = DATATYPES[tensor.datatype].newbyteorder("<")
        shape = list(tensor.shape)
        count = int(np.prod(shape, dtype=np.int64)) if all(d >= 0 for d in shape) else -1
        if raw:
            if count < 0 or len(raw[index]) != count * dtype.itemsize:
                raise RequestError(400, f"input {tensor.name!r}: {len(raw[index])} raw bytes do not fit shape {shape} "
                                        f"of {tensor.datatype}.")
            array = np.frombuffer(raw[index], dtype)
        else:
            values = getattr(tensor.contents, _CONTENTS.get(tensor.datatype, "fp32_contents"))
            array = np.asarray(values, dtype=dtype)
            if array.size != count:
                raise RequestError(400, f"input {tensor.name!r}: {array.size} values, shape {shape} needs {count}.")
        inputs[tensor.name] = array.reshape(shape)
    return inputs


def _wanted(served: ServedModel, request: Any) -> list[str]:
    known = [name for name, _, _ in served.outputs()]
    wanted = [o.name for o in request.outputs] or known
    for name in wanted:
        if name not in known:
            raise RequestError(400, f"model {served.name!r} has no output {name!r}: it has {', '.join(known)}.")
    return wanted


def _outputs(pb: Any, served: ServedModel, request: Any, wanted: list[str], outputs: np.ndarray) -> Any:
    arrays = {served.output_name: outputs}
    if CLASS_IDS in wanted:
        arrays[CLASS_IDS] = served.class_ids(outputs)
    response = pb.ModelInferResponse(model_name=served.name, model_version=VERSION, id=request.id)
    for name in wanted:
        array = np.ascontiguousarray(arrays[name])
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=list(array.shape))
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return response
