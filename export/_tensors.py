"""The ONNX file's own intermediate tensors: every ONNX-side value verify compares comes from here.

One function, :func:`onnx_tensors`, so that another engine (OpenVINO's ``add_outputs``, TensorRT
with marked outputs) is one more branch here and verify's comparison stays as it is. Today it is
onnxruntime on the CPU, running the graph as written: with optimizations on, onnxruntime fuses
nodes and the very tensors asked for may no longer exist.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime.errors import EdgesegError


def onnx_tensors(model: str | os.PathLike | Any, names: Sequence[str], inputs: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Yield, for each array in ``inputs`` (fed to the graph's first input as it is), the values of
    the ONNX tensors ``names``: any node output, the graph input or a graph output.

    ``model`` is an ``onnx.ModelProto`` or the path of an ``.onnx`` file. The file is loaded once;
    a graph onnxruntime refuses to load is an EdgesegError (the user's to fix: re-export), a failure
    while running is onnxruntime's own error.

    Example::

        for values in onnx_tensors("m.onnx", ["edgeseg/conv1_1/Relu:0"], [x1, x2]):
            print(values["edgeseg/conv1_1/Relu:0"].shape)
    """
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(Path(model))) if isinstance(model, (str, os.PathLike)) else model
    graph_input = proto.graph.input[0].name
    wanted = [n for n in dict.fromkeys(names) if n != graph_input]
    instrumented = onnx.ModelProto()
    instrumented.CopyFrom(proto)
    present = {o.name for o in instrumented.graph.output}
    for name in wanted:
        if name not in present:
            instrumented.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    options.log_severity_level = 4  # a failure is reported once, by the caller, in one line
    try:
        session = ort.InferenceSession(instrumented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EdgesegError(f"onnxruntime cannot load the ONNX file: {error}".splitlines()[0]) from None
    del instrumented
    for feed in inputs:
        values = dict(zip(wanted, session.run(wanted, {graph_input: feed})))
        values[graph_input] = feed
        yield values
