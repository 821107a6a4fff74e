"""The ONNX file's own intermediate tensors: every ONNX-side value verify compares comes from here.

One function, :func:`onnx_tensors`, over the engines of :class:`edgeseg.runtime.probe.EngineProbe`:
onnxruntime at fp32 reads the tensors from the graph as written (with optimizations on, onnxruntime
fuses nodes, and reading a tensor out changes how its neighbours are fused), the graph output from the
deployed session; every other engine and precision (OpenVINO's ``add_outputs``, TensorRT and CUDA
through onnxruntime, bf16/fp16/int8) reads them from the engine as it deploys the file. Verify's
matching and comparison do not depend on which.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np


class Tensors(Iterator[dict[str, np.ndarray]]):
    """The values of the asked-for tensors, one dict per input; ``ran`` says what computed them and
    ``instrumentation`` how far the probed compile's output was from the deployed one's (both
    :mod:`edgeseg.runtime.probe`'s). The engine is closed when the inputs run out."""

    def __init__(self, probe: Any, inputs: Iterable[np.ndarray]) -> None:
        self._probe, self._inputs = probe, iter(inputs)
        self.ran, self.instrumentation = probe.ran, probe.instrumentation

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            feed = next(self._inputs)
        except StopIteration:
            self._probe.close()
            raise
        return self._probe.run(feed)

    def close(self) -> None:
        """Release the engine before the inputs run out (idempotent)."""
        self._probe.close()


def onnx_tensors(model: str | os.PathLike | Any, names: Sequence[str], inputs: Iterable[np.ndarray], *,
                 engine: str = "onnxruntime", precision: str = "fp32", proto: Any = None) -> Tensors:
    """Yield, for each array in ``inputs`` (fed to the graph's first input as it is), the values of
    the ONNX tensors ``names`` (any node output, the graph input or a graph output) as ``engine``
    computes them at ``precision``.

    ``model`` is the path of an ``.onnx`` file (``proto``: its graph, when already read) or an
    ``onnx.ModelProto``. The engine is built once, before the first input; a graph it refuses to
    load, or an engine/precision this machine cannot run, is an EdgesegError in one line (the
    user's to fix); a failure while running is the engine's own error.

    Example::

        for values in onnx_tensors("m.onnx", ["edgeseg/conv1_1/Relu:0"], [x1, x2]):
            print(values["edgeseg/conv1_1/Relu:0"].shape)
        tensors = onnx_tensors("m.int8.onnx", names, [x], engine="openvino", precision="int8")
        first = next(tensors); print(tensors.ran.describe())
    """
    from edgeseg.runtime.probe import EngineProbe

    probe = EngineProbe(model, names, engine=engine, precision=precision, proto=proto,
                        as_written=(engine, precision) == ("onnxruntime", "fp32"))
    return Tensors(probe, inputs)
