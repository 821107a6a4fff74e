"""The pass rule of one layer: how far the file may be from the reference, per precision.

``max |file - reference| <= tolerance x max(peak |reference|, floor)``: the error relative to the
layer's own magnitude, so every layer can fail. The old rule, ``tolerance x max(1, range)``, let a
layer whose values are all tiny pass anything (a MobileNetV2 block with doubled weights, 55%
off, printed "ok": issue 23). The floor only keeps an all-zero layer from dividing by zero; it
is stated in every report.

Defaults, measured on this project's gallery and FCN-8s (report for issue 23): an exact fp32
export stays below 1e-5 of a layer's peak except where arithmetic cancels (GroupNormalization's
variance: 2.6e-5 for the file against float64, 8.5e-5 for Keras itself), so 1e-4 passes every
honest export and fails a weight scaled by 1.01. A model that computes in float16
(``mixed_float16``) rounds to 2^-11 = 4.9e-4 at every layer, so it is judged at 1e-2; bfloat16
(2^-8 = 3.9e-3) at 5e-2.

Another engine or precision brings its own bar (SQNR for int8 is the natural one): ``judge``
is the one place a layer's verdict is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.errors import EdgesegError

PRECISIONS = ("fp32", "fp16", "bf16")
# precision -> (tolerance, floor)
DEFAULT_BARS = {"fp32": (1e-4, 1e-6), "fp16": (1e-2, 1e-4), "bf16": (5e-2, 1e-4)}
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

        bar = bar_for("fp16")                 # tolerance 1e-2, floor 1e-4
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


def judge(errors: Errors, bar: Bar) -> bool:
    """Whether a layer whose file-vs-reference errors are ``errors`` passes ``bar``."""
    return errors.relative(bar.floor) <= bar.tolerance
