"""What INT8 costs and buys: accuracy FP32 vs INT8, per-layer SQNR, side-by-side speed, FLOPs left in float.

Everything streams over the calibration set in chunks and keeps only running sums.
"""

from __future__ import annotations

import itertools
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.calibration._data import IGNORE, CalibrationSet
from edgeseg.calibration._flops import count_flops
from edgeseg.runtime.contract import Contract
from edgeseg.runtime.postprocess import channels_last, class_ids
from edgeseg.runtime.probe import sqnr_db

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Compute ops the CPU execution provider runs in int8 when wrapped in Q/DQ; the rest
# (ConvTranspose above all) run in float between a DequantizeLinear and a QuantizeLinear.
CPU_INT8_OPS = frozenset({"Conv", "MatMul", "Gemm"})
# Node types in an ORT-optimized graph that compute in int8 / in float.
_INT8_KERNELS = frozenset({"QLinearConv", "NhwcQLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm",
                           "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"})
_FLOAT_KERNELS = frozenset({"Conv", "FusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm"})


# ---------------------------------------------------------------- accuracy


@dataclass
class SegmentationScores:
    """A confusion matrix over class ids, and the scores from it: per-class IoU, mIoU, pixel accuracy.

    Pixels whose truth is IGNORE (255: outside the frame, unlabelled) are left out. Calibration scores
    FP32 and INT8 with it; ``edgeseg eval`` scores each deployed file.

    Example::

        scores = SegmentationScores(2); scores.add(truth, predicted)
        scores.summary(("background", "cell"))   # {"miou", "pixel_acc", "per_class_iou"}
    """

    classes: int
    confusion: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.classes, self.classes), np.int64)

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        valid = truth != IGNORE
        index = truth[valid].astype(np.int64) * self.classes + predicted[valid]
        self.confusion += np.bincount(index, minlength=self.classes**2).reshape(self.classes, self.classes)

    def summary(self, names: Sequence[str]) -> dict:
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        present = union > 0
        return {
            "miou": float(np.nanmean(iou)) if present.any() else None,
            "pixel_acc": float(tp.sum() / max(1, self.confusion.sum())),
            "per_class_iou": {name: (None if math.isnan(v) else float(v)) for name, v in zip(names, iou)},
        }


@dataclass
class Comparison:
    """FP32 vs INT8 outputs over the calibration set."""

    fp32: dict = field(default_factory=dict)
    int8: dict = field(default_factory=dict)
    agreement: float | None = None
    mean_abs_prob_diff: float | None = None
    reconstruction_mse: dict | None = None

    def drop(self) -> float:
        """The accuracy lost, in points: mIoU (with masks), disagreement (without), MSE increase % (autoencoder)."""
        mse = self.reconstruction_mse
        if mse is not None and "fp32_power" in mse:  # an encoder: FP32-vs-INT8 noise over the code's power
            return 100.0 * mse["fp32_vs_int8"] / max(mse["fp32_power"], 1e-12)
        if mse is not None:
            return 100.0 * (mse["int8"] - mse["fp32"]) / max(mse["fp32"], 1e-12)
        if self.fp32.get("miou") is not None and self.int8.get("miou") is not None:
            return 100.0 * (self.fp32["miou"] - self.int8["miou"])
        return 100.0 * (1.0 - (self.agreement or 0.0))


def compare(fp32_session, int8_session, frames: CalibrationSet, contract: Contract, *, chunk: int = 8) -> Comparison:
    """Run both models over every frame and score them (against masks where there are masks)."""
    input_name = fp32_session.get_inputs()[0].name
    names = contract.output.classes
    result = Comparison()
    if contract.kind in ("autoencoder", "encoder"):
        result.reconstruction_mse = _output_errors(fp32_session, int8_session, input_name, frames, chunk)
        return result
    scores = {"fp32": SegmentationScores(max(2, len(names))), "int8": SegmentationScores(max(2, len(names)))}
    agree = total = 0
    abs_diff = 0.0
    values = 0
    for start, batch in frames.chunks(chunk):
        a, b = (_run(s, input_name, batch) for s in (fp32_session, int8_session))
        abs_diff += float(np.abs(a - b).sum())
        values += a.size
        ca, cb = _classes(a, contract), _classes(b, contract)
        agree += int((ca == cb).sum())
        total += ca.size
        if frames.masks is not None:
            truth = frames.mask_batch(start, start + len(batch))
            scores["fp32"].add(truth, ca)
            scores["int8"].add(truth, cb)
    result.agreement = agree / max(1, total)
    result.mean_abs_prob_diff = abs_diff / max(1, values)
    if frames.masks is not None:
        result.fp32 = scores["fp32"].summary(names or ("0", "1"))
        result.int8 = scores["int8"].summary(names or ("0", "1"))
    return result


def _output_errors(fp32_session, int8_session, input_name: str, frames: CalibrationSet, chunk: int) -> dict:
    """Mean squared errors: each model's output against its input (an autoencoder), and FP32 vs INT8.

    An encoder's output (the latent code) has no input to match: then ``fp32_power`` (the mean
    square of the FP32 code) scales the FP32-vs-INT8 error instead.
    """
    errors = {"fp32": 0.0, "int8": 0.0, "fp32_vs_int8": 0.0}
    power = 0.0
    count = 0
    same_shape = True
    for _, batch in frames.chunks(chunk):
        a, b = (_run(s, input_name, batch) for s in (fp32_session, int8_session))
        same_shape = same_shape and batch.size == a.size
        if same_shape:
            target = batch.reshape(a.shape)
            errors["fp32"] += float(np.square(a - target).sum())
            errors["int8"] += float(np.square(b - target).sum())
        errors["fp32_vs_int8"] += float(np.square(a - b).sum())
        power += float(np.square(a).sum())
        count += a.size
    result = {k: v / max(1, count) for k, v in errors.items()}
    if not same_shape:
        return {"fp32_vs_int8": result["fp32_vs_int8"], "fp32_power": power / max(1, count)}
    return result


def _run(session, input_name: str, batch: np.ndarray) -> np.ndarray:
    # One frame per call: exported models may have a fixed batch of 1.
    return np.concatenate([session.run(None, {input_name: batch[i : i + 1]})[0] for i in range(len(batch))])


def _classes(output: np.ndarray, contract: Contract) -> np.ndarray:
    """Class ids (N, H, W) of a batch of outputs, by the runtime's own post-processing (any layout,
    argmax or the one-channel threshold by activation), so INT8 is scored as ``segment`` would see it."""
    return np.stack([class_ids(channels_last(item, contract), contract) for item in output])


# ---------------------------------------------------------------- per-layer SQNR


def layer_sqnr(float_path: Path, qdq_path: Path, frames: CalibrationSet, work_dir: Path, *,
               max_frames: int = 8, max_output_mb: int = 256) -> dict[str, dict]:
    """Per node of the float model: SQNR (dB) of its weights and of its output activation in the INT8 model.

    Activation SQNR compares the float model's tensor with the INT8 model's dequantized tensor at
    the same place, so it includes the error of every layer before it (what a user sees).
    Returns ``{node: {"op": type, "weights_db": dB or None, "activation_db": dB or None}}``.
    """
    import onnx

    float_model = onnx.load(str(float_path))
    qdq_model = onnx.load(str(qdq_path))
    matched = _match_tensors(float_model, qdq_model)
    feeds = [batch for _, batch in itertools.islice(frames.chunks(1), max_frames)]
    sums = _activation_sums(float_model, qdq_model, matched=matched, feeds=feeds, work_dir=work_dir,
                            budget=max_output_mb * 2**20)
    layers = _activation_entries(sums, matched=matched, qdq_model=qdq_model)
    _add_weight_sqnr(layers, float_model=float_model, qdq_model=qdq_model)
    return layers


@dataclass(frozen=True)
class _Matched:
    """Float-model tensors with their place in the QDQ model.

    ``pairs[t]`` is the QDQ tensor holding ``t``'s INT8 value (dequantized where it is quantized),
    ``owners[t]`` the QDQ node that outputs it (the layer ``t`` is reported under).
    """

    pairs: dict[str, str]
    owners: dict[str, Any]


def _match_tensors(float_model, qdq_model) -> _Matched:
    float_tensors = {out for node in float_model.graph.node for out in node.output} | {
        o.name for o in float_model.graph.output}
    # In the QDQ model a quantized tensor T flows T -> QuantizeLinear -> DequantizeLinear -> T'.
    # Layers are the QDQ model's nodes (a Conv there has absorbed the Relu after it, so its output
    # carries the Relu's tensor name, which the float model also has).
    q_of = {node.input[0]: node.output[0] for node in qdq_model.graph.node if node.op_type == "QuantizeLinear"}
    dq_of = {node.input[0]: node.output[0] for node in qdq_model.graph.node if node.op_type == "DequantizeLinear"}
    pairs, owners = {}, {}
    for node in qdq_model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant", "Shape") or not node.output:
            continue
        tensor = node.output[0]
        float_name = tensor.removesuffix("_QuantizeLinear_Input")
        if float_name not in float_tensors:
            continue
        pairs[float_name] = dq_of.get(q_of.get(tensor, ""), tensor)
        owners[float_name] = node
    return _Matched(pairs=pairs, owners=owners)


def _activation_sums(float_model, qdq_model, *, matched: _Matched, feeds: list[np.ndarray], work_dir: Path,
                     budget: int) -> dict[str, list[float]]:
    """``{float tensor: [signal power, noise power]}`` summed over ``feeds``."""
    sums = {t: [0.0, 0.0] for t in matched.pairs}
    # Every saved tensor of a frame stays alive until the run returns: group the tensors so one
    # run holds at most ~max_output_mb of them (FCN-8 at 224 holds ~1 GB of activations per frame).
    for group, tensors in enumerate(_groups(matched.pairs, _tensor_bytes(float_model), budget)):
        float_aug = _with_outputs(float_model, tensors, work_dir / f"sqnr_float_{group}.onnx")
        qdq_aug = _with_outputs(qdq_model, [matched.pairs[t] for t in tensors], work_dir / f"sqnr_int8_{group}.onnx")
        _add_group(sums, tensors=tensors, pairs=matched.pairs, paths=(float_aug, qdq_aug), feeds=feeds)
        float_aug.unlink()
        qdq_aug.unlink()
    return sums


def _add_group(sums: dict[str, list[float]], *, tensors: list[str], pairs: dict[str, str],
               paths: tuple[Path, Path], feeds: list[np.ndarray]) -> None:
    """Run both instrumented models (float, QDQ) on every feed and add each tensor's powers to ``sums``."""
    from edgeseg.calibration._quantize import analysis_session

    sessions = [analysis_session(paths[0]), analysis_session(paths[1])]
    input_name = sessions[0].get_inputs()[0].name
    int8_names = [pairs[t] for t in tensors]
    for batch in feeds:
        fa = dict(zip(tensors, sessions[0].run(tensors, {input_name: batch})))
        qa = dict(zip(int8_names, sessions[1].run(int8_names, {input_name: batch})))
        for tensor in tensors:
            x, y = fa[tensor].astype(np.float64), qa[pairs[tensor]].astype(np.float64)
            if x.shape != y.shape:
                continue
            sums[tensor][0] += float(np.square(x).sum())
            sums[tensor][1] += float(np.square(x - y).sum())
        del fa, qa
    del sessions


def _activation_entries(sums: dict[str, list[float]], *, matched: _Matched, qdq_model) -> dict[str, dict]:
    """One report entry per QDQ node: its output's SQNR and what the node itself adds."""
    # Activation SQNR accumulates down the graph; what a layer itself adds is its output's
    # noise-to-signal ratio minus that of its noisiest input (both measured, so this is exact
    # only when noise adds up independently; good enough to rank layers).
    nsr = {t: (noise / signal if signal > 0 else 0.0) for t, (signal, noise) in sums.items()}
    q_input = {node.output[0]: node.input[0] for node in qdq_model.graph.node if node.op_type == "QuantizeLinear"}
    dq_input = {node.output[0]: node.input[0] for node in qdq_model.graph.node if node.op_type == "DequantizeLinear"}
    layers: dict[str, dict] = {}
    for tensor, (signal, noise) in sums.items():
        node = matched.owners[tensor]
        inputs = [q_input.get(dq_input.get(name, ""), name).removesuffix("_QuantizeLinear_Input") for name in node.input]
        before = max((nsr[name] for name in inputs if name in nsr), default=0.0)
        added = max(0.0, nsr[tensor] - before)
        layers[node.name] = {"op": node.op_type, "weights_db": None, "activation_db": sqnr_db(signal, noise),
                             "added_db": sqnr_db(1.0, added)}
    return layers


def _add_weight_sqnr(layers: dict[str, dict], *, float_model, qdq_model) -> None:
    """Set ``weights_db`` of each node with a quantized weight (adding the node if it had no activation entry)."""
    for node_name, op_type, w, dequantized in _weight_pairs(float_model, qdq_model):
        entry = layers.setdefault(node_name, {"op": op_type, "weights_db": None, "activation_db": None,
                                              "added_db": None})
        noise = float(np.square(w - dequantized).sum())
        entry["weights_db"] = sqnr_db(float(np.square(w).sum()), noise)


def _tensor_bytes(model) -> dict[str, int]:
    sizes = {}
    for info in list(model.graph.value_info) + list(model.graph.output):
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in info.type.tensor_type.shape.dim]
        sizes[info.name] = 4 * int(np.prod(dims)) if dims else 4
    return sizes


def _groups(pairs: dict[str, str], sizes: dict[str, int], budget: int) -> list[list[str]]:
    groups, current, used = [], [], 0
    for tensor in pairs:
        size = sizes.get(tensor, budget // 8)  # unknown shape: assume a large-ish tensor
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(tensor)
        used += size
    return groups + [current] if current else groups


def _weight_pairs(float_model, qdq_model):
    """``(node, op, float weight, dequantized int8 weight)`` for each quantized weight of a compute node.

    Done here rather than with ``qdq_loss_debug.create_weight_matching``, which stops at biases it
    cannot find by name (ConvTranspose biases); only the weight input (index 1) is compared.
    """
    from onnx import numpy_helper

    floats = {init.name: init for init in float_model.graph.initializer}
    qinits = {init.name: init for init in qdq_model.graph.initializer}
    dq_nodes = {node.output[0]: node for node in qdq_model.graph.node if node.op_type == "DequantizeLinear"}
    for node in qdq_model.graph.node:
        if node.op_type not in COMPUTE_OPS or len(node.input) < 2 or node.input[1] not in dq_nodes:
            continue
        dq = dq_nodes[node.input[1]]
        if dq.input[0] not in qinits:
            continue
        original = dq.input[0].removesuffix("_quantized")
        if original not in floats:
            continue
        w = numpy_helper.to_array(floats[original]).astype(np.float64)
        q = numpy_helper.to_array(qinits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(qinits[dq.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(qinits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 else 0.0
        if np.ndim(scale) == 1 and scale.size > 1:  # per channel along `axis`
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) else zero
        yield node.name, node.op_type, w, (q - zero) * scale


# Ops that only move or reshape data: returning one to float changes no arithmetic.
DATA_MOVEMENT = frozenset({"Transpose", "Reshape", "Slice", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Pad",
                           "Gather", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Cast"})


def worst_first(layers: dict[str, dict], *, key: str = "activation_db") -> list[tuple[str, float]]:
    """``(node, dB)`` sorted worst first; a node's dB is the lower of its weights' and ``key``'s.

    ``activation_db`` (cumulative) is what the report shows; accuracy control ranks by
    ``added_db``, the noise each layer adds itself, so it does not just pick the last layers.
    """
    scored = []
    for name, entry in layers.items():
        values = [v for v in (entry["weights_db"], entry.get(key)) if v is not None]
        if values:
            scored.append((name, min(values)))
    return sorted(scored, key=lambda item: item[1])


def _with_outputs(model, tensors: Sequence[str], path: Path) -> Path:
    """Save ``model`` with ``tensors`` added as graph outputs (added in place, then removed: no copy)."""
    import onnx

    existing = {o.name for o in model.graph.output}
    added = [t for t in dict.fromkeys(tensors) if t not in existing]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in added)
    try:
        onnx.save(model, str(path))
    finally:
        for _ in added:
            model.graph.output.pop()
    return path


# ---------------------------------------------------------------- speed


@dataclass(frozen=True)
class Timing:
    ms_per_frame: float
    fps: float
    runs: int


def time_side_by_side(paths: dict[str, Path], frames: CalibrationSet, *, rounds: int = 20, warmup: int = 3,
                      threads: int | None = None) -> dict[str, Timing]:
    """Latency of each model on the same frames, interleaved run by run with the same session options.

    Interleaving (A, B, A, B, ...) makes load from other processes hit both models alike. The
    median is the latency and fps is its inverse (batch 1, one stream): medians shrug off the
    runs another process preempted, which on a shared machine the mean does not.
    """
    from edgeseg.calibration._quantize import make_session

    sessions = {name: make_session(path, threads=threads) for name, path in paths.items()}
    input_name = next(iter(sessions.values())).get_inputs()[0].name
    feeds = [frames.batch(i, i + 1) for i in range(min(len(frames), 4))]
    times = {name: [] for name in sessions}
    for r in range(warmup + rounds):
        feed = {input_name: feeds[r % len(feeds)]}
        order = list(sessions.items()) if r % 2 == 0 else list(sessions.items())[::-1]
        for name, session in order:
            start = time.perf_counter()
            session.run(None, feed)
            if r >= warmup:
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: Timing(float(np.median(t)), float(1000.0 / np.median(t)), len(t)) for name, t in times.items()}


# ---------------------------------------------------------------- compute left in float


def compute_flops(model) -> dict[str, tuple[str, int]]:
    """Multiply-add FLOPs (2 per MAC) of each Conv/ConvTranspose/MatMul/Gemm node: ``{name: (op, flops)}``.

    Per frame (the batch counts as 1); shapes come from ONNX shape inference (see :mod:`._flops`).
    """
    return {name: (op, flops) for name, op, flops in count_flops(model)["nodes"]}


@dataclass(frozen=True)
class Kernels:
    """What onnxruntime's optimized graph computes in int8 and in float (the EP's own view)."""

    int8: int
    float: int
    float_names: frozenset[str]

    def counts(self) -> dict[str, int]:
        return {"int8": self.int8, "float": self.float}


def optimized_kernels(path: Path, work_dir: Path) -> Kernels:
    """Build ``path``'s session once, save the optimized graph, and count its int8 and float compute nodes."""
    import onnx

    from edgeseg.calibration._quantize import _onnxruntime

    ort = _onnxruntime()
    options = ort.SessionOptions()
    # EXTENDED, not ALL: ALL adds layout nodes (NCHWc) that rename float Convs; the int8 fusions are the same.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    target = work_dir / f"{Path(path).stem}.optimized.onnx"
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(target)).graph
    int8 = sum(node.op_type in _INT8_KERNELS for node in graph.node)
    floats = frozenset(node.name for node in graph.node if node.op_type in _FLOAT_KERNELS)
    return Kernels(int8=int8, float=len(floats), float_names=floats)


def float_compute(qdq_model, flops: dict[str, tuple[str, int]], kernels: Kernels) -> dict[str, dict]:
    """Compute nodes of the INT8 model that run in float on the CPU EP, with their FLOPs and why.

    The optimized graph says which (``kernels``); the QDQ graph says why: the node was kept in
    float (no quantized weight), its type has no int8 kernel (ConvTranspose), or the EP could not
    fuse it (its input comes through an op that stays float, e.g. MaxPool with int8 activations).
    """
    dq_outputs = {n.output[0] for n in qdq_model.graph.node if n.op_type == "DequantizeLinear"}
    left = {}
    for node in qdq_model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        quantized_inputs = all(name in dq_outputs for name in node.input[:2])
        if not quantized_inputs:
            reason = "kept in float" + (" (no int8 kernel on the CPU execution provider anyway)"
                                        if node.op_type not in CPU_INT8_OPS else "")
        elif node.op_type not in CPU_INT8_OPS:
            reason = "no int8 kernel on the CPU execution provider"
        elif node.name in kernels.float_names:
            reason = "not fused into an int8 kernel by the CPU execution provider"
        else:
            continue
        left[node.name] = {"op": node.op_type, "flops": flops.get(node.name, (node.op_type, 0))[1], "reason": reason}
    return left


# ---------------------------------------------------------------- the CPU


def cpu_int8_support(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU has int8 dot-product instructions (VNNI, AMX, ARM dot product), and which."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return True, f"unknown ({platform.machine()}; no /proc/cpuinfo)"
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    found = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "asimddp", "i8mm"})
    return bool(found), ", ".join(found) or "none of avx512_vnni, avx_vnni, amx_int8, asimddp"
