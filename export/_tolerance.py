"""The pass rule of one layer: how far the file may be from the reference, per precision.

``max |file - reference| <= tolerance x max(peak |reference|, floor)``: the error relative to the
layer's own magnitude, so every layer can fail. The old rule, ``tolerance x max(1, range)``, let a
layer whose values are all tiny pass anything (a MobileNetV2 block with doubled weights, 55%
off, printed "ok": issue 23). Floating point is relative at every magnitude, so the floor is the
precision's smallest normal number: it only keeps an all-zero layer from dividing by zero (below
it values lose relative precision). It is stated in every report.

Defaults, measured (report for issue 23): honest fp32 exports of the gallery, the sample FCN-8
and CAE, DeepLabV3+ on ResNet50 (163 layers), the TensorFlow tutorial's MobileNetV2 + pix2pix
(166) and an Attention U-Net stay below 3e-6 of each layer's peak; GroupNormalization's variance
cancels (2.6e-5 for a file against float64, 8.5e-5 for Keras itself: issue 23). So 1e-4 passes
them with room and fails a weight scaled by 1.01 in any layer, however small its values. A
model that computes in float16 (``mixed_float16``) rounds to 2^-11 = 4.9e-4 at every layer and
is judged at 1e-2; bfloat16 (2^-8 = 3.9e-3) at 5e-2.

Where float64 was computed, a file at least as close to it as Keras passes too: what separates
the two is then the arithmetic, not the export.

Another engine or precision brings its own bar (SQNR for int8 is the natural one): :func:`judge`
is the one place a layer's verdict is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.errors import EdgesegError

PRECISIONS = ("fp32", "fp16", "bf16")
# precision -> (tolerance, floor: the smallest normal number of the precision)
DEFAULT_BARS = {"fp32": (1e-4, float(np.finfo(np.float32).tiny)), "fp16": (1e-2, float(np.finfo(np.float16).tiny)),
                "bf16": (5e-2, float(np.finfo(np.float32).tiny))}
# A layer whose file-vs-Keras error is above this share of the bar is recomputed in float64 to tell who is off.
NEAR = 0.1


@dataclass(frozen=True)
class Bar:
    """What a layer must meet: ``max_abs_err <= tolerance x max(peak |reference|, floor)``."""

    precision: str
    tolerance: float
    floor: float

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgesegError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            raise EdgesegError(f"--tolerance must be a positive number, got {self.tolerance!r}.")
        if not self.floor > 0:
            raise EdgesegError(f"the floor of the pass rule must be positive, got {self.floor!r}.")

    def to_dict(self) -> dict[str, object]:
        return {"precision": self.precision, "rule": "max_abs_err <= tolerance x max(peak |reference|, floor)",
                "tolerance": self.tolerance, "floor": self.floor}

    def describe(self) -> str:
        return f"{self.precision}: max_abs_err <= {self.tolerance:g} x max(peak |value|, {self.floor:g})"


def bar_for(precision: str, *, tolerance: float | None = None) -> Bar:
    """The default bar of ``precision``; ``tolerance`` overrides its tolerance (the floor stays).

    Example::

        bar = bar_for("fp16")                 # tolerance 1e-2, floor 6.1e-5
        bar = bar_for("fp32", tolerance=1e-5)
    """
    if precision not in DEFAULT_BARS:
        raise EdgesegError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    default, floor = DEFAULT_BARS[precision]
    return Bar(precision=precision, tolerance=default if tolerance is None else tolerance, floor=floor)


class Errors:
    """A running comparison of one tensor over all inputs: max-abs error and the reference's peak magnitude."""

    def __init__(self) -> None:
        self.max_abs, self.peak, self.nan = 0.0, 0.0, False

    def add(self, reference: np.ndarray, got: np.ndarray) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        diff = np.abs(reference - np.asarray(got, dtype=np.float64))
        if diff.size:
            if np.isnan(diff).any():
                self.nan = True
            self.max_abs = max(self.max_abs, float(np.nanmax(diff)) if not np.isnan(diff).all() else 0.0)
            self.peak = max(self.peak, float(np.nanmax(np.abs(reference))) if not np.isnan(reference).all() else 0.0)

    def relative(self, floor: float) -> float:
        """The error relative to the reference's peak magnitude (at least ``floor``); inf with a NaN."""
        return math.inf if self.nan else self.max_abs / max(self.peak, floor)


def judge(file: Errors, bar: Bar, *, keras: Errors | None = None) -> bool:
    """Whether a layer passes ``bar``: ``file`` holds the file's errors against the reference.

    ``keras``: Keras' own errors against the same reference, where that reference is float64;
    a file at least as close to it as Keras passes as well.
    """
    error = file.relative(bar.floor)
    return error <= bar.tolerance or (keras is not None and error <= keras.relative(bar.floor))
