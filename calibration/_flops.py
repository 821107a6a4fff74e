"""FLOPs per frame counted from an ONNX graph: Conv, ConvTranspose, MatMul and Gemm, from shapes.

One multiply-add counts as 2 FLOPs. Shapes come from ONNX shape inference with the batch fixed
to 1, so the count is per frame. Element-wise ops, pooling and softmax are left out: they are a
rounding error next to the convolutions, and they are not what a matmul ceiling measures.
"""

from __future__ import annotations

import math
import os
from typing import Any

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm", "ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul")


def count_flops(model: Any) -> dict[str, Any]:
    """FLOPs of one frame: ``{"total", "by_op": {op_type: flops}, "nodes": [(name, op, flops)]}``.

    ``model`` is a path or an ``onnx.ModelProto``.

    Example::

        flops = count_flops("fcn8.onnx")
        print(f"{flops['total'] / 1e9:.1f} GFLOP per frame")
    """
    import onnx

    proto = onnx.load(os.fspath(model), load_external_data=False) if isinstance(model, (str, os.PathLike)) else model
    proto = _batch_of_one(proto)
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)

    nodes, by_op, total = [], {}, 0
    for node in inferred.graph.node:
        if node.op_type not in COUNTED:
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            continue
        nodes.append((node.name, node.op_type, flops))
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
        total += flops
    return {"total": total, "by_op": by_op, "nodes": nodes}


def _batch_of_one(proto):
    # A skeleton of the graph for shape inference: the nodes and the big weights' names, types and dims,
    # not their bytes (a copy of a 537 MB model would cost calibration its size again, and more).
    import onnx

    graph = proto.graph
    # Small tensors keep their values: shape inference reads them (Reshape's shape, Slice's starts).
    weights = [w if math.prod(w.dims) <= 4096 else onnx.TensorProto(name=w.name, data_type=w.data_type, dims=w.dims)
               for w in graph.initializer]
    skeleton = onnx.helper.make_model(
        onnx.helper.make_graph(list(graph.node), graph.name, list(graph.input), list(graph.output),
                               initializer=weights, value_info=list(graph.value_info)),
        opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    initializers = {w.name for w in weights}
    for value in skeleton.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    return skeleton


def _node_flops(node, shapes: dict[str, list]) -> int | None:
    op = node.op_type
    attrs = {a.name: a for a in node.attribute}
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        weight = shapes.get(node.input[3 if op == "QLinearConv" else 1])
        if op == "ConvTranspose":
            source = shapes.get(node.input[0])  # every input pixel scatters a whole kernel
            if not _known(weight) or not _known(source):
                return None
            c_in, c_out_per_group = weight[0], weight[1]
            return 2 * source[0] * c_in * math.prod(source[2:]) * c_out_per_group * math.prod(weight[2:])
        out = shapes.get(node.output[0])
        if not _known(weight) or not _known(out):
            return None
        c_out, c_in_per_group = weight[0], weight[1]
        return 2 * out[0] * c_out * math.prod(out[2:]) * c_in_per_group * math.prod(weight[2:])
    if op == "Gemm":
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not _known(a) or not _known(b):
            return None
        trans_a = attrs["transA"].i if "transA" in attrs else 0
        m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        n = b[0] if trans_b else b[1]
        return 2 * m * k * n
    # MatMul family: numpy broadcasting semantics
    a_index, b_index = (0, 3) if op == "QLinearMatMul" else (0, 1)
    a, b = shapes.get(node.input[a_index]), shapes.get(node.input[b_index])
    out = shapes.get(node.output[0])
    if not _known(a) or not _known(b) or not _known(out):
        return None
    k = a[-1]
    return 2 * math.prod(out) * k


def _known(shape) -> bool:
    return shape is not None and len(shape) > 0 and all(isinstance(d, int) and d > 0 for d in shape)
