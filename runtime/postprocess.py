"""Post-processing: what a model's raw output means, as pure functions of its contract.

One place decides how scores become class ids (argmax, or the threshold rule of a one-channel
output by its activation), probabilities, class fractions, and an autoencoder's reconstruction,
error map and anomaly score. The runtime, calibration's accuracy measurement and the benchmark all
call these, so a mask means the same thing everywhere.

Example::

    scores = channels_last(raw[0], contract)
    ids = class_ids(scores, contract)                 # model-size uint8 class ids
    result = segmentation(scores, geometry, contract)  # at the frame's own size
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
from edgeseg.runtime._preprocess import Geometry, denormalize, restore
from edgeseg.runtime.contract import Contract, InputSpec
from edgeseg.runtime.errors import EdgesegError


@dataclass(frozen=True)
class SegmentationResult:
    """Class ids at the frame's own size (uint8, or uint16 past 256 classes), and what they cover."""

    mask: np.ndarray
    class_fraction: Mapping[str, float]
    probabilities: np.ndarray | None = None  # (H, W, classes) float32, only when asked for


@dataclass(frozen=True)
class ReconstructionResult:
    """An autoencoder's output: the reconstruction (8-bit BGR or gray), per-pixel error, one score."""

    reconstruction: np.ndarray
    error_map: np.ndarray  # float32 (H, W): mean |input - output| over channels, in model units
    score: float  # mean of the error map over the frame's content: higher is more anomalous


Result = SegmentationResult | ReconstructionResult


def mask_dtype(contract: Contract) -> type:
    """Class ids fit uint8 up to 256 classes, uint16 past that."""
    return np.uint8 if contract.num_classes <= 256 else np.uint16


def is_nan_output(output: np.ndarray) -> bool:
    """True when a model's raw output for one frame holds a NaN: its mask or score would be made up.

    The caller counts such frames (``summary["frames_nan"]``) and warns once; a model that gives
    NaN is broken (overflow in fp16/INT8, a bad export), not the frame.

    Example::

        if is_nan_output(output):
            nan_frames += 1
    """
    output = np.asarray(output)
    # A sum propagates NaN without a temporary boolean array the size of the output.
    return output.dtype.kind in "fc" and bool(np.isnan(output.sum(dtype=np.float64)))


def channels_last(output: np.ndarray, contract: Contract) -> np.ndarray:
    """One output item as (H, W, C) whatever the model's layout."""
    if output.ndim == 2:
        return output[:, :, None]
    if output.ndim != 3:
        raise EdgesegError(f"expected a (C, H, W) or (H, W, C) output per frame, got shape {output.shape}.")
    expected = contract.num_classes if contract.kind == "segmentation" else contract.input.channels
    last_fits = output.shape[-1] in (expected, 1)
    first_fits = output.shape[0] in (expected, 1)
    if first_fits and (not last_fits or contract.input.layout == "NCHW"):
        return output.transpose(1, 2, 0)
    return output


def threshold(contract: Contract, *, activated: bool = False) -> float:
    """Where a one-channel, two-class output turns to class 1: p > 0.5, or logit > 0 without activation.

    ``activated``: the scores are already probabilities (a model with sigmoid, or smoothed ones).
    """
    return 0.0 if contract.output.activation == "none" and not activated else 0.5


def class_ids(scores: np.ndarray, contract: Contract, *, activated: bool = False) -> np.ndarray:
    """(H, W, C) scores -> (H, W) class ids at the scores' size (argmax, or the one-channel threshold).

    A model whose contract says ``output.fused == "class_ids"`` already gives the ids, (H, W) or (H, W, 1):
    they are returned as they are (no argmax on the host).
    """
    classes = contract.output.classes
    dtype = mask_dtype(contract)
    if contract.output.fused == "class_ids":
        ids = scores[..., 0] if scores.ndim == 3 else scores
        return ids if ids.dtype == dtype else ids.astype(dtype)
    if scores.shape[-1] == 1 and len(classes) == 2:
        return (scores[..., 0] > threshold(contract, activated=activated)).astype(dtype)
    if scores.shape[-1] != len(classes):
        raise EdgesegError(f"the model's output has {scores.shape[-1]} channels but the contract names "
                           f"{len(classes)} classes.")
    return _argmax_last(scores).astype(dtype, copy=False)


def probabilities(scores: np.ndarray, contract: Contract) -> np.ndarray:
    """Scores as probabilities (softmax/sigmoid applied where the model has no activation of its own)."""
    if contract.output.fused == "class_ids":
        raise EdgesegError("this model outputs class ids (output.fused = 'class_ids'), not scores: probabilities "
                           "and --smooth need the unfused model (the .onnx the fast file was made from).")
    scores = scores.astype(np.float32, copy=False)
    if contract.output.activation != "none":
        return scores
    if scores.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-scores))
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def class_fraction(mask: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    """The share of the mask's pixels in each class, by name."""
    counts = _class_counts(mask, len(classes))
    return {name: round(float(c) / mask.size, 6) for name, c in zip(classes, counts)}


def segmentation(scores: np.ndarray, geometry: Geometry, contract: Contract, *, with_probabilities: bool = False,
                 activated: bool = False) -> SegmentationResult:
    """(H, W, C) model-size scores -> class-id mask at the frame's size (argmax before resizing).

    ``activated``: the scores are already probabilities (e.g. temporally smoothed ones).
    """
    spec = contract.input
    small = class_ids(scores, contract, activated=activated)
    resized = scores.shape[:2] != (spec.height, spec.width)
    if resized:  # an output coarser than the input (an output stride): back to input size first
        small = cv2.resize(small, (spec.width, spec.height), interpolation=cv2.INTER_NEAREST)
    mask = restore(small, geometry, nearest=True)
    probs = None
    if with_probabilities:
        probs = scores if activated else probabilities(scores, contract)
        if resized:
            probs = cv2.resize(probs, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
            probs = probs[:, :, None] if probs.ndim == 2 else probs
        probs = restore(probs, geometry, nearest=False)
    return SegmentationResult(mask=mask, class_fraction=class_fraction(mask, contract.output.classes),
                              probabilities=probs)


def error_map(output: np.ndarray, model_input: np.ndarray) -> np.ndarray:
    """Per-pixel reconstruction error: mean |input - output| over channels, float32 (H, W), model units."""
    if output.size != model_input.size:
        raise EdgesegError(f"autoencoder output shape {output.shape} does not match its input {model_input.shape}.")
    return np.abs(model_input - output.reshape(model_input.shape)).mean(axis=-1, dtype=np.float32)


def anomaly_score(errors: np.ndarray, geometry: Geometry) -> float:
    """The mean of an error map over the frame's content (letterbox bars left out)."""
    crop = errors[geometry.top: geometry.top + geometry.height, geometry.left: geometry.left + geometry.width]
    return float(crop.mean())


def reconstruction(output: np.ndarray, model_input: np.ndarray, geometry: Geometry, spec: InputSpec
                   ) -> ReconstructionResult:
    """An autoencoder's (H, W, C) output and its (H, W, C) input -> reconstruction, error map, score."""
    errors = error_map(output, model_input)
    return ReconstructionResult(
        reconstruction=restore(denormalize(output.reshape(model_input.shape), spec), geometry, nearest=False),
        error_map=restore(errors, geometry, nearest=False),
        score=anomaly_score(errors, geometry),
    )


def reconstruction_batch(outputs: np.ndarray, model_inputs: np.ndarray, geometries: list[Geometry],
                         contract: Contract) -> list[ReconstructionResult]:
    """:func:`reconstruction` for a whole batch: error maps, scores and 8-bit reconstructions in a few
    array operations instead of a dozen small ones per image (the CAE's 28x28 digits take far less time
    to infer than to post-process one by one).

    ``outputs`` and ``model_inputs``: (N, ...) in the model's layout; results in the same order.

    Example::

        results = reconstruction_batch(session_output, batch, geometries, contract)
    """
    inputs = _batch_channels_last(model_inputs, contract)
    recon = _batch_channels_last(outputs, contract)
    if recon.size != inputs.size:
        raise EdgesegError(f"autoencoder output shape {outputs.shape} does not match its input {model_inputs.shape}.")
    recon = recon.reshape(inputs.shape)
    errors = np.abs(inputs - recon).mean(axis=-1, dtype=np.float32)
    pixels = denormalize(recon, contract.input)
    full = all(g.top == 0 and g.left == 0 and (g.height, g.width) == errors.shape[1:] for g in geometries)
    scores = (errors.mean(axis=(1, 2)).tolist() if full
              else [anomaly_score(e, g) for e, g in zip(errors, geometries)])
    return [ReconstructionResult(reconstruction=restore(pixels[i], g, nearest=False),
                                 error_map=restore(errors[i], g, nearest=False), score=float(scores[i]))
            for i, g in enumerate(geometries)]


def _batch_channels_last(batch: np.ndarray, contract: Contract) -> np.ndarray:
    if batch.ndim == 3:
        return batch[..., None]
    first = channels_last(batch[0], contract)
    return batch if first.shape == batch.shape[1:] else batch.transpose(0, 2, 3, 1)


def _argmax_last(scores: np.ndarray) -> np.ndarray:
    # Profiled in the writer thread (FCN-8, 224x224x2): argmax over a 2-long last axis costs 0.34 ms,
    # one comparison 0.03 ms. Same ids: a tie goes to class 0 either way.
    if scores.shape[-1] == 2:
        return scores[..., 1] > scores[..., 0]
    return scores.argmax(axis=-1)


def _class_counts(mask: np.ndarray, classes: int) -> np.ndarray:
    # np.bincount widens uint8 to intp first (0.73 ms for 640x480); OpenCV's histogram counts in place
    # (exact below 2**24 pixels, where float32 still holds every integer).
    if mask.dtype == np.uint8 and mask.size < 2**24 and classes <= 256:
        hist = cv2.calcHist([mask], [0], None, [classes], [0, classes]).ravel()
        return hist.astype(np.int64)
    return np.bincount(mask.ravel(), minlength=classes)[:classes]
