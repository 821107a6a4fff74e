"""Preprocessing as a pure function of the contract's :class:`InputSpec`.

Training, verification, calibration and inference all call :func:`preprocess`, so the model sees
the same numbers everywhere. Frames come as OpenCV gives them: BGR, BGRA or grayscale, 8 or 16
bit or floating point (0..1), any size; the result is a float32 batch in the model's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.runtime.contract import InputSpec
from edgeseg.runtime.errors import BadInputError


@dataclass(frozen=True)
class Geometry:
    """How a frame was placed into the model's input, to map outputs back onto the frame.

    The frame's content occupies rows ``top:top+height`` and columns ``left:left+width`` of the
    model's input (the whole input for ``stretch``; a centred box for ``letterbox``).
    """

    frame_height: int
    frame_width: int
    top: int
    left: int
    height: int
    width: int


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any OpenCV image as 8-bit BGR or 8-bit single-channel gray (H, W).

    The contract's ``scale`` applies to 8-bit pixels (0..255), so every depth is brought to that range
    first, by a fixed rule that never looks at the image's own statistics:

    - 16-bit (uint16): divided by 257 (65535 -> 255);
    - floating point (float TIFF, Radiance HDR, PFM, OpenEXR): the usual 0..1 convention, multiplied by
      255 and rounded; values outside 0..1 are clipped (HDR highlights saturate) and NaN becomes 0;
    - other integer depths (int8, int16, int32) have no agreed range and are refused (BadInputError).

    BGRA drops alpha; (H, W, 1) becomes (H, W).

    Example::

        to_bgr8(np.full((2, 2, 3), 0.5, np.float32))[0, 0]   # array([128, 128, 128], dtype=uint8)
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        shape = getattr(image, "shape", None)
        raise BadInputError(f"not an image: expected an (H, W) or (H, W, C) array, got shape {shape}")
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=1.0 / 257.0)
    elif image.dtype.kind == "f":
        # fmax drops NaN (to 0) where clip would keep it; inf saturates like any value past 1.
        scaled = np.multiply(image, np.float32(255.0), dtype=np.float32)
        image = np.rint(np.minimum(np.fmax(scaled, 0.0), 255.0)).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadInputError(f"{image.dtype} pixels have no agreed range: convert the image to 8- or 16-bit unsigned "
                            "integers, or to floating point in 0..1")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        elif channels != 3:
            raise BadInputError(f"not an image: {channels} channels (expected 1, 3 or 4)")
    return image


def fit(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """Resize (``stretch`` or ``letterbox``) and convert colour: uint8 (H, W, C) in ``spec.color``."""
    image = to_bgr8(image)
    frame_h, frame_w = image.shape[:2]
    target_h, target_w = spec.height, spec.width
    if spec.resize == "letterbox":
        ratio = min(target_h / frame_h, target_w / frame_w)
        height = max(1, min(target_h, round(frame_h * ratio)))
        width = max(1, min(target_w, round(frame_w * ratio)))
        top, left = (target_h - height) // 2, (target_w - width) // 2
    else:
        height, width, top, left = target_h, target_w, 0, 0
    if (frame_h, frame_w) != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    image = _convert_color(image, spec.color)
    if (height, width) != (target_h, target_w):
        canvas = np.zeros((target_h, target_w, image.shape[2]), np.uint8)
        canvas[top : top + height, left : left + width] = image
        image = canvas
    return image, Geometry(frame_h, frame_w, top, left, height, width)


def normalize(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 pixels (..., H, W, C) -> float32 ``(p * scale - mean) / std``, still channels-last."""
    std = np.asarray(spec.std, np.float32)
    gain = np.float32(spec.scale) / std
    offset = np.asarray(spec.mean, np.float32) / std
    out = np.multiply(pixels, gain, dtype=np.float32)
    out -= offset
    return out


def denormalize(values: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The inverse of :func:`normalize` for (..., H, W, C) model values: 8-bit pixels in OpenCV's order
    (BGR, or gray without the channel axis). Works on one frame or a batch; NaN becomes 0."""
    pixels = (values * np.asarray(spec.std, np.float32) + np.asarray(spec.mean, np.float32)) / np.float32(spec.scale)
    # fmax drops NaN (a broken model's output) where clip would keep it and the cast would warn.
    pixels = np.minimum(np.fmax(pixels, 0), 255).astype(np.uint8)
    if spec.color == "GRAY":
        return pixels[..., 0]
    return np.ascontiguousarray(pixels[..., ::-1]) if spec.color == "RGB" else pixels


def preprocess(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """One frame -> a (1, ...) float32 batch in the model's layout, and where the frame went.

    Example::

        batch, geometry = preprocess(cv2.imread("cells.png"), contract.input)
        probabilities = session.run(None, {contract.input.name: batch})[0]
    """
    pixels, geometry = fit(image, spec)
    return _to_layout(normalize(pixels[None], spec), spec), geometry


def preprocess_batch(images: Sequence[np.ndarray], spec: InputSpec) -> tuple[np.ndarray, list[Geometry]]:
    """Several frames of any sizes -> one (N, ...) float32 batch and each frame's geometry."""
    fitted = [fit(image, spec) for image in images]
    pixels = np.stack([p for p, _ in fitted])
    return _to_layout(normalize(pixels, spec), spec), [g for _, g in fitted]


def restore(output: np.ndarray, geometry: Geometry, *, nearest: bool) -> np.ndarray:
    """Map a model-sized (H, W) or (H, W, C) output back onto its frame's own size.

    ``nearest=True`` for class ids (no invented in-between labels); ``False`` for
    probabilities, reconstructions and error maps.
    """
    crop = output[geometry.top : geometry.top + geometry.height, geometry.left : geometry.left + geometry.width]
    size = (geometry.frame_width, geometry.frame_height)
    if crop.shape[1::-1] == size:
        return np.ascontiguousarray(crop)
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    resized = cv2.resize(crop, size, interpolation=interpolation)
    if crop.ndim == 3 and resized.ndim == 2:  # cv2 drops a trailing axis of length 1
        resized = resized[:, :, None]
    return resized


def _convert_color(image: np.ndarray, color: str) -> np.ndarray:
    if image.ndim == 2:
        return image[:, :, None] if color == "GRAY" else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if color == "GRAY":
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    if color == "RGB":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _to_layout(batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    if spec.layout == "NCHW":
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return batch
