"""The optional OpenVINO engine: the same ONNX file, compiled by OpenVINO for the CPU.

On CPUs with AMX/AVX512-BF16 OpenVINO computes in bf16 by default (benchmarks/FINDINGS.md: ~12x
onnxruntime FP32 on FCN-8, 99.99% of mask pixels unchanged); ``precision="f32"`` forces f32.
``openvino`` is imported here, only when this engine is chosen, so it stays an optional extra.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from edgeseg.runtime._engines import BF16_FLAGS, ENGINES, cpu_flags
from edgeseg.runtime._modelfile import ModelFile
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import require

log = logging.getLogger("edgeseg.runtime")

PRECISIONS = ENGINES["openvino"].precisions


class OpenVinoEngine:
    """A compiled OpenVINO model with one infer request per calling thread (so it is thread-safe).

    ``precision``: ``auto`` (OpenVINO's default: bf16 where the CPU has it), ``f32`` or ``bf16`` (only
    where the CPU has it).
    ``threads``: inference threads (None or 0: OpenVINO's default, every core; measured best here).
    ``throughput``: compile for throughput (OpenVINO's streams, one per pair of cores or so) and split
    each batch across them, for batched files; measured on FCN-8 batch 4 here: 64.5-65.5 fps against
    54.3-57.4 with the default latency hint. A batch of 1 then runs on one stream only: keep it off
    for live sources.

    Example::

        engine = OpenVinoEngine("fcn8.onnx")
        scores = engine.run(batch)            # (N, H, W, C) float32 in, first output out
        print(engine.precision)               # "bf16" on AMX CPUs
    """

    def __init__(self, path: str | os.PathLike | ModelFile, *, precision: str = "auto", threads: int | None = None,
                 throughput: bool = False) -> None:
        if precision not in PRECISIONS:
            raise EdgesegError(f"Unknown precision {precision!r} for engine 'openvino': expected one of "
                               f"{', '.join(PRECISIONS)} (auto: OpenVINO's default, bf16 where the CPU has it).")
        if precision == "bf16" and not cpu_flags() & BF16_FLAGS:
            raise EdgesegError("precision 'bf16' needs a CPU with AMX or AVX512-BF16, and this one has neither; "
                               "use precision 'auto' (f32 here).")
        ov = require("openvino", purpose="engine 'openvino'", fix="or use --engine onnxruntime")
        # A file that is no protobuf at all is refused by the read, before OpenVINO tries every other frontend
        # on it (noisily); a path given as a ModelFile was read already.
        file = path if isinstance(path, ModelFile) else ModelFile.read(path)
        self.path = file.path
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as error:  # OpenVINO raises RuntimeError subclasses with long texts
            text = " ".join(str(error).split())[:200]
            raise EdgesegError(f"Cannot read model `{self.path}`: OpenVINO says: {text}. "
                               "Pass an .onnx file written by `edgeseg export`.") from None
        self.quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        config: dict[str, Any] = {}
        if precision in ("f32", "bf16"):
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if throughput:
            config["PERFORMANCE_HINT"] = "THROUGHPUT"
        self._compiled = core.compile_model(model, "CPU", config)
        self.streams = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if throughput else 1
        self.precision = compiled_precision(self._compiled, quantized=self.quantized)
        try:
            self.inputs = [(port.get_any_name(), _shape(port.get_partial_shape())) for port in self._compiled.inputs]
            self.outputs = [(port.get_any_name(), _shape(port.get_partial_shape())) for port in self._compiled.outputs]
        except UnicodeDecodeError as error:  # ModelFile.read refuses these names; a graph OpenVINO changed may not
            raise EdgesegError(f"Cannot read model `{self.path}`: a tensor name is not UTF-8 text ({error}). "
                               "Re-export the model with UTF-8 names.") from None
        self._local = threading.local()
        log.debug("%s: engine openvino, precision %s, %d stream(s)", self.path.name, self.precision, self.streams)

    def run(self, batch: np.ndarray, input_index: int = 0) -> np.ndarray:
        """A float32 batch in, the first output out (a fresh array the caller may keep)."""
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = [self._compiled.create_infer_request() for _ in range(self.streams)]
        if self.streams == 1 or len(batch) == 1:
            # infer() copies the outputs out of the request, so the next call cannot overwrite them.
            return requests[0].infer({input_index: batch})[0]
        parts = np.array_split(batch, min(self.streams, len(batch)))
        for request, part in zip(requests, parts):
            request.start_async({input_index: part})
        outputs = []
        for request, _ in zip(requests, parts):
            request.wait()
            outputs.append(request.get_output_tensor(0).data.copy())
        return np.concatenate(outputs)


def compiled_precision(compiled: Any, *, quantized: bool) -> str:
    """What a compiled model computes in, read back from OpenVINO: ``f32``, ``bf16``, ``f16``, or ``int8+<that>``."""
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    base = "bf16" if "bf16" in hint or "bfloat16" in hint else "f16" if "f16" in hint else "f32"
    # INT8 QDQ files run int8 convolutions whatever the hint; the hint covers the rest.
    return f"int8+{base}" if quantized else base


def _shape(partial: Any) -> list[int | str]:
    return [d.get_length() if d.is_static else "?" for d in partial]
