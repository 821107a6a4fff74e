"""The fast file: a segmentation model whose graph ends in the class-id rule, so it outputs uint8 ids.

The class-id rule (argmax over the classes, or a one-channel output's threshold) moves into the graph
as ArgMax (or Greater) + Cast. The engine then hands back one byte per pixel instead of C floats, and
the host skips its argmax: benchmarks/fast_levers.py measured OpenVINO batch 1 at 1.16x with the fused
ArgMax (FCN-8, 96x96). The masks are the same: ONNX's ArgMax keeps the first index on a tie, as numpy
does. ``onnx`` is imported only here, when a fast file is made.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeseg.runtime import postprocess as post
from edgeseg.runtime.contract import Contract, write_contract
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import require
from edgeseg.runtime.files import atomic_path


def fast_path(path: str | os.PathLike) -> Path:
    """Where :func:`fuse_class_ids` writes by default: ``M.onnx`` -> ``M.fast.onnx`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.fast.onnx")


def fuse_class_ids(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``path`` with the class-id rule appended to its graph (contract ``output.fused = "class_ids"``).

    The new file's first output keeps the old output's name and holds (N, H, W) class ids (uint8, uint16
    past 256 classes) for argmax models, or (N, H, W, 1)/(N, 1, H, W) for a one-channel threshold model.
    Written atomically to ``out`` (default :func:`fast_path`); returns that path. Works on INT8 files too.

    Example::

        fast = fuse_class_ids("fcn8.onnx")           # fcn8.fast.onnx
        mask = Model(fast)(image).mask                # the same mask as Model("fcn8.onnx")(image).mask
    """
    onnx = require("onnx", purpose="making a fast file", among=("calibrate",))
    from onnx import TensorProto, helper
    path = Path(path)
    contract = Contract.from_onnx(path, origin=f"model `{path}`")
    if contract is None or contract.kind != "segmentation":
        got = "no contract" if contract is None else f"kind {contract.kind!r}"
        raise EdgesegError(f"model `{path}`: fusing the class-id rule needs a segmentation model with an edgeseg "
                           f"contract, got {got}. Pass a model written by `edgeseg export`.")
    if contract.output.fused == "class_ids":
        raise EdgesegError(f"model `{path}` already outputs class ids (output.fused = 'class_ids'); use it as it is.")
    model = onnx.load(str(path))
    _append_rule(model, contract, helper, TensorProto)
    write_contract(model, contract.replace(output={"fused": "class_ids"}))
    target = Path(out) if out is not None else fast_path(path)
    with atomic_path(target) as temporary:
        onnx.save(model, str(temporary))
    return target


def _append_rule(model, contract: Contract, helper, TensorProto) -> None:
    graph = model.graph
    first = graph.output[0]
    name, scores = first.name, first.name + "/scores"
    # The old output tensor is renamed, so the ids can keep its name (the contract's output.name still holds).
    for node in graph.node:
        node.output[:] = [scores if o == name else o for o in node.output]
        node.input[:] = [scores if i == name else i for i in node.input]
    to = TensorProto.UINT8 if post.mask_dtype(contract) is np.uint8 else TensorProto.UINT16
    shape = [d.dim_param or d.dim_value for d in first.type.tensor_type.shape.dim]
    axis = len(shape) - 1 if contract.input.layout == "NHWC" else 1
    if shape and shape[axis] == 1 and contract.num_classes == 2:  # one channel: the threshold rule
        limit = helper.make_tensor(name + "/threshold", TensorProto.FLOAT, [], [post.threshold(contract)])
        graph.initializer.append(limit)
        graph.node.extend([helper.make_node("Greater", [scores, limit.name], [name + "/above"]),
                           helper.make_node("Cast", [name + "/above"], [name], to=to)])
        ids_shape = shape
    else:
        graph.node.extend([helper.make_node("ArgMax", [scores], [name + "/argmax"], axis=axis, keepdims=0),
                           helper.make_node("Cast", [name + "/argmax"], [name], to=to)])
        ids_shape = shape[:axis] + shape[axis + 1:]
    del graph.output[1:]
    graph.output[0].CopyFrom(helper.make_tensor_value_info(name, to, ids_shape or None))
