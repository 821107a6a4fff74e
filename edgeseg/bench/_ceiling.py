"""The machine's own ceiling: the best dense matrix-multiply GFLOP/s it reaches, FP32 and INT8.

Measured in the same run as the runners, so efficiency compares like with like on a machine whose
speed drifts (shared cores, turbo, thermal). FP32 is the best of numpy's BLAS and onnxruntime's
``MatMul`` over a few sizes and thread counts; bf16 is OpenVINO's MatMul at its defaults where
the CPU runs bf16; INT8 is onnxruntime's ``MatMulInteger`` (u8 x s8,
the kernel its QDQ convolutions lower to) where it runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

SIZES = (256, 512, 1024, 2048)


def measure_ceiling(*, threads: Sequence[int] = (1, 2), sizes: Sequence[int] = SIZES,
                    budget_s: float = 1.0) -> dict[str, Any]:
    """Best GFLOP/s of square matmuls: ``{"fp32", "bf16", "int8", "details": [...]}`` (None where not run).

    Each (engine, size, threads) point repeats for about ``budget_s`` seconds and keeps its best
    repeat: the ceiling is what the machine *can* do, so the best, not the median, is the figure.

    Example::

        ceiling = measure_ceiling(threads=(1,), sizes=(256,), budget_s=0.1)
        ceiling["fp32"]  # e.g. 95.0
    """
    details = []
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        details.append({"engine": "numpy", "dtype": "fp32", "size": n, "threads": "default",
                        "gflops": _best_gflops(lambda: a @ b, n, budget_s)})
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        for t in threads:
            for n in sizes:
                details.append(_ort_point(ort, "MatMul", n, t, budget_s, rng))
                details.append(_ort_point(ort, "MatMulInteger", n, t, budget_s, rng))
    details += _openvino_points(sizes, budget_s, rng)
    best = {}
    for dtype in ("fp32", "bf16", "int8"):
        points = [d["gflops"] for d in details if d["dtype"] == dtype and d["gflops"] is not None]
        best[dtype] = max(points) if points else None
    return {**best, "details": details}


def _openvino_points(sizes: Sequence[int], budget_s: float, rng) -> list[dict[str, Any]]:
    # OpenVINO's CPU plugin runs FP32 models in bf16 where the CPU has it (AMX, AVX512-BF16): a
    # runner at its defaults is then bounded by the bf16 ceiling, not the FP32 one.
    try:
        import openvino as ov
    except ImportError:
        return []
    core = ov.Core()
    points = []
    for n in sizes:
        model = core.read_model(_matmul_model("MatMul", n).SerializeToString(), b"")
        compiled = core.compile_model(model, "CPU")
        dtype = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        request = compiled.create_infer_request()
        feeds = {0: rng.standard_normal((n, n), dtype=np.float32)}
        points.append({"engine": "openvino MatMul (defaults)", "dtype": dtype, "size": n, "threads": "default",
                       "gflops": _best_gflops(lambda: request.infer(feeds), n, budget_s)})
    return points


def precision_name(hint: Any) -> str:
    """OpenVINO's inference precision (an ``ov.Type``) as ``bf16``, ``f16`` or ``fp32``."""
    text = str(hint).lower()
    return "bf16" if "bfloat16" in text or "bf16" in text else "f16" if "float16" in text or "f16" in text else "fp32"


def _best_gflops(fn, n: int, budget_s: float) -> float:
    fn()  # warm-up
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    repeats = 0
    while repeats < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        repeats += 1
    return 2.0 * n**3 / best / 1e9


def _ort_point(ort, op: str, n: int, threads: int, budget_s: float, rng) -> dict[str, Any]:
    dtype = "fp32" if op == "MatMul" else "int8"
    model = _matmul_model(op, n)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    point: dict[str, Any] = {"engine": f"onnxruntime {op}", "dtype": dtype, "size": n, "threads": threads}
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - a build without this kernel; record why, keep measuring
        point.update(gflops=None, error=f"{type(error).__name__}: {error}")
        return point
    if op == "MatMul":
        feeds = {"a": rng.standard_normal((n, n), dtype=np.float32)}
    else:
        feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8)}
    point["gflops"] = _best_gflops(lambda: session.run(None, feeds), n, budget_s)
    return point


def _matmul_model(op: str, n: int):
    """``y = a @ b`` with ``b`` a constant, as a convolution's weights are (engines prepack constants)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    if op == "MatMul":
        a_type, y_type, b = TensorProto.FLOAT, TensorProto.FLOAT, rng.standard_normal((n, n), dtype=np.float32)
    else:
        a_type, y_type, b = TensorProto.UINT8, TensorProto.INT32, rng.integers(-127, 127, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])],
        f"{op}_{n}",
        [helper.make_tensor_value_info("a", a_type, [n, n])],
        [helper.make_tensor_value_info("y", y_type, [n, n])],
        initializer=[numpy_helper.from_array(b, "b")],
    )
    # IR 9 (not this onnx's newest) so that older onnxruntime builds load it too.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
