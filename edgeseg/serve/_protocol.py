"""The Open Inference Protocol (KServe v2) over HTTP: tensors in and out, JSON and binary.

A request body is a JSON object, optionally followed by raw tensor bytes (the binary tensor
extension: the header ``Inference-Header-Content-Length`` says where the JSON ends, and each input
with ``parameters.binary_data_size`` takes its bytes from what follows, in order). A response does
the same for the outputs asked for in binary (``parameters.binary_data``, or the request's
``parameters.binary_data_output``). Pure functions of bytes and arrays: the app does the I/O.
Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
binary data extension.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "inference-header-content-length"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


class RequestError(Exception):
    """A request the server cannot take: its HTTP status and one line saying why (and the fix)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # one line, whatever went into it
        self.headers = headers or {}


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name of a NumPy dtype.

    Example::

        datatype_of(np.dtype(np.float32))   # "FP32"
    """
    try:
        return _NAMES[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise ValueError(f"no Open Inference Protocol datatype for {dtype}") from None


@dataclass(frozen=True)
class InferRequest:
    """A parsed ``/infer`` request: the input tensors by name, and which outputs to return how."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[tuple[str, bool], ...] | None  # (name, binary); None: all outputs
    binary_output: bool  # the request's default for outputs it does not list


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a request body (JSON, then binary tensors when ``header_length`` is given) or raise RequestError.

    Example::

        request = parse_infer_request(body, headers.get("inference-header-content-length"))
        request.inputs["image"].shape   # (1, 96, 96, 3)
    """
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise RequestError(400, f"header Inference-Header-Content-Length is {header_length!r}: expected the "
                                    f"length of the JSON part, 0..{len(body)} (the body's size).")
        head, binary = body[:length], memoryview(body)[length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        document = json.loads(head)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the request is not valid JSON ({error}): send an inference request object "
                                '{"inputs": [{"name", "shape", "datatype", "data"}]}.') from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise RequestError(400, 'the request has no "inputs" list: send {"inputs": [{"name", "shape", "datatype", '
                                '"data"}]}.')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for number, spec in enumerate(document["inputs"]):
        array, used = _tensor(spec, number, binary[offset:])
        offset += used
        inputs[spec["name"]] = array
    if offset != len(binary):
        raise RequestError(400, f"the request carries {len(binary)} bytes of binary tensor data but its inputs' "
                                f"binary_data_size add up to {offset}.")
    parameters = document.get("parameters") if isinstance(document.get("parameters"), dict) else {}
    outputs = None
    if isinstance(document.get("outputs"), list):
        outputs = tuple(_requested_output(spec, parameters) for spec in document["outputs"])
    return InferRequest(id=str(document["id"]) if document.get("id") is not None else None, inputs=inputs,
                        outputs=outputs, binary_output=bool(parameters.get("binary_data_output", False)))


def _tensor(spec: Any, number: int, binary: memoryview) -> tuple[np.ndarray, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise RequestError(400, f'input #{number} is not an object with a "name".')
    name = spec["name"]
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(400, f'input "{name}": "shape" must be a list of non-negative integers, got {shape!r}.')
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(400, f'input "{name}": datatype {datatype!r} is not one this server takes '
                                f"({', '.join(DATATYPES)}).")
    dtype = DATATYPES[datatype].newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    parameters = spec.get("parameters") if isinstance(spec.get("parameters"), dict) else {}
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize or size > len(binary):
            raise RequestError(400, f'input "{name}": binary_data_size {size!r} does not fit shape {shape} of '
                                    f"{datatype} ({count * dtype.itemsize} bytes) and the {len(binary)} bytes sent.")
        return np.frombuffer(binary[:size], dtype).reshape(shape), size
    if "data" not in spec:
        raise RequestError(400, f'input "{name}" has neither "data" nor parameters.binary_data_size.')
    try:
        array = np.asarray(spec["data"], dtype=dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise RequestError(400, f'input "{name}": its "data" is not a list of {datatype} numbers ({error}).') from None
    if array.size != count:
        raise RequestError(400, f'input "{name}": "data" holds {array.size} values but shape {shape} needs {count}.')
    return array.reshape(shape), 0


def _requested_output(spec: Any, parameters: dict[str, Any]) -> tuple[str, bool]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise RequestError(400, 'each of "outputs" must be an object with a "name".')
    own = spec.get("parameters") if isinstance(spec.get("parameters"), dict) else {}
    return spec["name"], bool(own.get("binary_data", parameters.get("binary_data_output", False)))


def encode_infer_response(*, model: str, version: str, request_id: str | None,
                          outputs: Sequence[tuple[str, np.ndarray, bool]]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers for ``(name, array, binary)`` outputs.

    Example::

        body, headers = encode_infer_response(model="fcn8", version="1", request_id=None,
                                              outputs=[("scores", scores, True)])
    """
    described, blobs = [], []
    for name, array, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if binary:
            blob = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        described.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request_id is not None:
        document["id"] = request_id
    head = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    "inference-header-content-length": str(len(head))}
