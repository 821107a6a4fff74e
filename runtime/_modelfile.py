"""One ONNX file on disk, read once: what ``Model``, the tuning records and the pipeline know of the file itself.

Before this object a ``Model("m.onnx")`` opened its file six times (a head check twice, the contract
twice, a hash of the whole file for the tuning-record lookup, the engine) and hashed all of it on
every construction: 1-2 s for the 537 MB full-size FCN-8, before any frame. :meth:`ModelFile.read`
opens the file once and walks its protobuf wire format, reading only what is small (the metadata,
the graph's node types and its input/output names) and seeking past the rest (the weights), so a
512 MB model costs a few reads. The SHA-256 is computed only when asked (a tuning record that may
be this file's), once per process for an unchanged file.

Example::

    from edgeseg.runtime import ModelFile
    file = ModelFile.read("fcn8.onnx")
    print(file.contract.kind, file.quantized, file.size)
    file.sha256          # hashed now, once; the next ModelFile of the unchanged file reuses it
"""

from __future__ import annotations

import functools
import io
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from edgeseg.runtime.contract import Contract
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import sha256_of

# Operator types only a quantized graph holds (QDQ as onnxruntime's quantizer writes it, or QLinear/Integer
# ops); a DequantizeLinear alone is a weight-only scheme, not an int8 model.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})

# ModelProto, GraphProto, NodeProto and ValueInfoProto field numbers (onnx/onnx.proto3), the ones read here.
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_NODE, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_INITIALIZER = 1, 11, 12, 5
_NODE_OP_TYPE = 4
_VALUE_NAME = 1


@dataclass(frozen=True, eq=False)
class ModelFile:
    """What one read of an ONNX file found: its size and modification time, its metadata (where the
    contract lives), the operator types of its graph, and the names of its graph inputs and outputs.

    Build it with :meth:`read`; :attr:`contract`, :attr:`quantized` and :attr:`sha256` derive from it
    (the hash lazily, cached per path + size + modification time).
    """

    path: Path
    size: int
    mtime_ns: int
    metadata: Mapping[str, str]
    operators: frozenset[str]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelFile:
        """Read ``path`` (one open; the weights are skipped, not read). A missing, empty, non-regular or
        non-ONNX file raises EdgesegError in one line naming it. An unchanged file read again in the same
        process is not opened again.

        Example::

            file = ModelFile.read("fcn8.onnx")
        """
        path = Path(path)
        info = _stat(path)
        return _read_cached(path, _identity(path, info))

    @functools.cached_property
    def contract(self) -> Contract | None:
        """The edgeseg contract stored in the file (None when it carries none); a malformed one raises
        EdgesegError naming the file."""
        return Contract.from_onnx(self.metadata, origin=f"model `{self.path}`")

    @property
    def quantized(self) -> bool:
        """True for an INT8 file: calibrated by edgeseg (its contract has ``calibration``) or holding
        quantized operators (:data:`QUANTIZED_OPS`) from another tool."""
        try:
            calibrated = bool(self.contract is not None and self.contract.calibration)
        except EdgesegError:
            calibrated = False
        return calibrated or bool(self.operators & QUANTIZED_OPS)

    @property
    def sha256(self) -> str:
        """The file's SHA-256, computed on first use and cached per path + size + modification time, so an
        unchanged file is hashed once per process."""
        try:
            info = os.stat(self.path)
        except OSError as error:
            raise EdgesegError(f"Cannot read model `{self.path}`: {error.strerror or error}.") from None
        return _sha256_cached(_identity(self.path, info))

    def unchanged(self) -> bool:
        """True while the file on disk still has the size and modification time this read saw."""
        try:
            info = os.stat(self.path)
        except OSError:
            return False
        return (info.st_size, info.st_mtime_ns) == (self.size, self.mtime_ns)


def sha256_cached(path: str | os.PathLike) -> str:
    """:func:`edgeseg.runtime.sha256_of` with the process-wide cache of :attr:`ModelFile.sha256` (for files
    that are not read as models, such as a tuning record's INT8 file)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as error:
        raise EdgesegError(f"Cannot read `{path}`: {error.strerror or error}.") from None
    return _sha256_cached(_identity(path, info))


# -- the read ------------------------------------------------------------------------------------------

def _stat(path: Path) -> os.stat_result:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise EdgesegError(f"Cannot read model `{path}`: no such file. Pass the path of an .onnx file.") from None
    except OSError as error:
        raise EdgesegError(f"Cannot read model `{path}`: {error.strerror or error}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise EdgesegError(f"Cannot read model `{path}`: it is a folder. Pass the path of an .onnx file.")
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read forever, a device never end
        raise EdgesegError(f"Cannot read model `{path}`: not a regular file (a pipe, socket or device). "
                           "Pass the path of an .onnx file.")
    if info.st_size == 0:
        raise EdgesegError(f"Cannot read model `{path}`: empty file (0 bytes). Pass an exported .onnx file.")
    return info


def _identity(path: Path, info: os.stat_result) -> tuple[Any, ...]:
    return (os.fsencode(os.path.abspath(path)), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(identity: tuple[Any, ...]) -> str:
    return sha256_of(os.fsdecode(identity[0]))


@functools.lru_cache(maxsize=32)
def _read_cached(path: Path, identity: tuple[Any, ...]) -> ModelFile:
    size, mtime_ns = identity[3], identity[4]
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            if head.startswith(b"PK"):
                raise EdgesegError(
                    f"Cannot read model `{path}`: not an ONNX file (got a ZIP archive, e.g. a .keras model). "
                    "Export it first: edgeseg export MODEL.keras -o M.onnx.")
            if head.startswith(b"\x89HDF"):
                raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file (got an HDF5 file, e.g. a Keras "
                                   ".h5 model). Export it first: edgeseg export MODEL.h5 -o M.onnx.")
            handle.seek(0)
            metadata, operators, inputs, outputs = _scan(handle, size)
    except OSError as error:
        raise EdgesegError(f"Cannot read model `{path}`: {error.strerror or error}.") from None
    except (ValueError, EOFError) as error:  # UnicodeDecodeError is a ValueError
        raise EdgesegError(f"Cannot read model `{path}`: not a valid ONNX model ({error}). Pass an .onnx file "
                           "written by `edgeseg export`.") from None
    return ModelFile(path=path, size=size, mtime_ns=mtime_ns, metadata=MappingProxyType(metadata),
                     operators=frozenset(operators), inputs=tuple(inputs), outputs=tuple(outputs))


def _scan(handle: BinaryIO, size: int) -> tuple[dict[str, str], set[str], list[str], list[str]]:
    """One pass over a ModelProto: metadata entries, node op types, graph input/output names."""
    metadata: dict[str, str] = {}
    operators: set[str] = set()
    inputs: list[str] = []
    outputs: list[str] = []
    for number, wire, length in _fields(handle, size):
        if wire != 2:
            continue
        if number == _MODEL_METADATA:
            entry = _strings(handle.read(length))
            metadata[entry.get(1, b"").decode("utf-8", "replace")] = entry.get(2, b"").decode("utf-8", "replace")
        elif number == _MODEL_GRAPH:
            for field, kind, span in _fields(handle, handle.tell() + length):
                if kind != 2 or field == _GRAPH_INITIALIZER:
                    continue  # the weights: skipped by their length, never read
                if field == _GRAPH_NODE:
                    operators.update(_text(handle.read(n), "an operator type")
                                     for f, k, n in _fields(handle, handle.tell() + span) if f == _NODE_OP_TYPE and k == 2)
                elif field in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                    names = [_text(handle.read(n), "a graph input or output name")
                             for f, k, n in _fields(handle, handle.tell() + span) if f == _VALUE_NAME and k == 2]
                    (inputs if field == _GRAPH_INPUT else outputs).extend(names)
    return metadata, operators, inputs, outputs


def _fields(handle: BinaryIO, end: int) -> Iterator[tuple[int, int, int]]:
    """``(field number, wire type, length or value)`` of each field up to ``end``. After a length-delimited
    field is yielded the handle moves past it, whether or not the caller read it."""
    while handle.tell() < end:
        key = _varint(handle)
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, _varint(handle)
        elif wire == 1:
            handle.seek(8, io.SEEK_CUR)
        elif wire == 5:
            handle.seek(4, io.SEEK_CUR)
        elif wire == 2:
            length = _varint(handle)
            start = handle.tell()
            if start + length > end:
                raise ValueError("a field runs past the end of its message")
            yield number, wire, length
            handle.seek(start + length)
        else:
            raise ValueError(f"wire type {wire} is not used by ONNX files")
    if handle.tell() != end:
        raise ValueError("a field runs past the end of its message")


def _varint(handle: BinaryIO) -> int:
    result, shift = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise EOFError("the file ends inside a field")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("a malformed varint")


def _strings(data: bytes) -> dict[int, bytes]:
    # The length-delimited fields of one small message (a metadata entry): {field number: bytes}.
    stream, found = io.BytesIO(data), {}
    for number, wire, length in _fields(stream, len(data)):
        if wire != 2:
            raise ValueError("a metadata entry holds a field that is not a string")
        found[number] = stream.read(length)
    return found


def _text(data: bytes, what: str) -> str:
    # Names reach Python through the engines' bindings, which fail on bytes that are not UTF-8: refuse at load.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 text ({data[:40]!r}); ONNX names are UTF-8") from None
