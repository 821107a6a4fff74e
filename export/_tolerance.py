"""The pass rule of one layer: how far the deployed file may be from the reference, per precision.

One scheme, two rules, chosen by what the engine does with the file (``--precision``):

* **the engine computes the file as written** (fp32): what is proven is the export, so the rule
  is the error relative to the layer's own magnitude,
  ``max |file - reference| <= tolerance x max(peak |reference|, floor)``, at the precision the
  *model* computes in. Every layer can fail: the old rule, ``tolerance x max(1, range)``, let a
  layer whose values are all tiny pass anything (a MobileNetV2 block with doubled weights, 55%
  off, printed "ok": issue 23). Floating point is relative at every magnitude, so the floor is the
  precision's smallest normal number: it only keeps an all-zero layer from dividing by zero
  (below it values lose relative precision). It is stated in every report.
* **the engine lowers the precision** (bf16, fp16, int8): what is proven is the deployment, whose
  rounding or quantization noise spreads over every value of a tensor; the rule is the tensor's
  signal-to-quantization-noise ratio against the reference, ``SQNR >= min_sqnr_db``, with one bar
  per precision (``--sqnr-bf16`` etc.).

Tolerances of the relative rule, measured (report for issue 23): honest fp32 exports of the
gallery, the sample FCN-8 and CAE, DeepLabV3+ on ResNet50 (163 layers), the TensorFlow tutorial's
MobileNetV2 + pix2pix (166) and an Attention U-Net stay below 3e-6 of each layer's peak;
GroupNormalization's variance cancels (2.6e-5 for a file against float64, 8.5e-5 for Keras itself:
issue 23). So 1e-4 passes them with room and fails a weight scaled by 1.01 in any layer, however
small its values. A model that computes in float16 (``mixed_float16``) rounds to 2^-11 = 4.9e-4 at
every layer and is judged at 1e-2; bfloat16 (2^-8 = 3.9e-3) at 5e-2. Where float64 was computed, a
file at least as close to it as Keras passes too: what separates the two is then the arithmetic,
not the export.

SQNR bars, measured (report for issue 24; benchmarks/results/verify_engines_*.json, 2-vCPU Xeon with
AVX512-BF16/VNNI), each set from the worst correct layer: bf16 on OpenVINO 45.7 dB (sample FCN-8)
and 50.1 dB (FCN-8 head 256, 128 px); int8 34.1 dB (sample, onnxruntime and OpenVINO), 33.5/34.7 dB
(128 px, onnxruntime/OpenVINO). What the bars must catch: one activation scale off by 10x gave
4.1 dB, the AVX2 saturation of issue 24 17.3 dB. fp16 has 3 more mantissa bits than bf16: about
18 dB more. So bf16 30 dB, fp16 40 dB, int8 20 dB.

:func:`judge` is the one place a layer's verdict is made, :func:`bar_for` the one place a bar is
chosen. No NumPy at import: ``edgeseg verify --help`` shows these defaults without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.probe import sqnr_db

if TYPE_CHECKING:
    import numpy as np

# The precisions an engine computes in: fp32 runs the file as written, the others lower it.
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# The relative rule, by the precision the model computes in: tolerance, and floor = that precision's smallest
# normal number (bfloat16 has float32's exponent, so float32's).
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
FLOOR = {"fp32": 2.0 ** -126, "fp16": 2.0 ** -14, "bf16": 2.0 ** -126}
# The SQNR rule, by the precision the engine lowers the file to (measured: see the module docstring).
DEFAULT_SQNR_DB = {"bf16": 30.0, "fp16": 40.0, "int8": 20.0}
RELATIVE = "max_abs_err <= tolerance x max(peak |reference|, floor)"
SQNR = "sqnr_db >= min_sqnr_db"
# A layer whose file-vs-Keras error is above this share of the relative bar is recomputed in float64 to tell who
# is off.
NEAR = 0.1


@dataclass(frozen=True)
class Bar:
    """What a layer must meet: ``rule`` is :data:`RELATIVE` (``tolerance``, ``floor``) or :data:`SQNR`
    (``min_sqnr_db``). ``precision``: what the values are computed in (the model's precision for the
    relative rule, the engine's for SQNR). ``floor`` is set for both: the relative error of every layer
    is reported.

    Example::

        bar = bar_for("int8")                          # SQNR >= 20 dB
        ok = judge(errors, bar)
    """

    precision: str
    rule: str
    floor: float
    tolerance: float | None = None
    min_sqnr_db: float | None = None

    def __post_init__(self) -> None:
        if self.rule == RELATIVE:
            if not (isinstance(self.tolerance, (int, float)) and self.tolerance > 0 and math.isfinite(self.tolerance)):
                raise EdgesegError(f"--tolerance must be a positive number, got {self.tolerance!r}.")
        elif self.rule == SQNR:
            if not (isinstance(self.min_sqnr_db, (int, float)) and math.isfinite(self.min_sqnr_db)):
                raise EdgesegError(f"--sqnr-{self.precision} must be a number of dB, got {self.min_sqnr_db!r}.")
        else:
            raise EdgesegError(f"a bar's rule must be {RELATIVE!r} or {SQNR!r}, got {self.rule!r}.")
        if not self.floor > 0:
            raise EdgesegError(f"the floor of the pass rule must be positive, got {self.floor!r}.")

    @property
    def relative(self) -> bool:
        return self.rule == RELATIVE

    def to_dict(self) -> dict[str, Any]:
        """The report's ``bar``: the rule and its numbers (those of the other rule are None)."""
        return {"precision": self.precision, "rule": self.rule, "tolerance": self.tolerance,
                "floor": self.floor if self.relative else None, "min_sqnr_db": self.min_sqnr_db}

    def describe(self) -> str:
        if self.relative:
            return f"{self.precision}: max_abs_err <= {self.tolerance:g} x max(peak |value|, {self.floor:g})"
        return f"{self.precision}: SQNR >= {self.min_sqnr_db:g} dB"


def bar_for(precision: str = "fp32", *, model: str = "fp32", tolerance: float | None = None,
            sqnr: Mapping[str, float] | None = None) -> Bar:
    """The bar for an engine computing at ``precision`` a file whose model computes in ``model``.

    fp32 (the file as written): the relative rule at ``model``'s precision, ``tolerance`` overriding its
    default (the floor stays). bf16/fp16/int8: SQNR, ``sqnr`` overriding the defaults per precision.
    OpenVINO's ``int8+bf16`` is judged as int8.

    Example::

        bar_for("fp32")                           # relative, tolerance 1e-4, floor 1.2e-38
        bar_for("fp32", model="fp16")             # a mixed_float16 model: tolerance 1e-2, floor 6.1e-5
        bar_for("bf16", sqnr={"bf16": 35})        # SQNR >= 35 dB
    """
    base = precision.split("+")[0]
    if base not in PRECISIONS:
        raise EdgesegError(f"Unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}.")
    if model not in DEFAULT_TOLERANCE:
        raise EdgesegError(f"Unknown model precision {model!r}: expected one of {', '.join(DEFAULT_TOLERANCE)}.")
    if tolerance is not None and not (tolerance > 0 and math.isfinite(tolerance)):
        raise EdgesegError(f"--tolerance must be a positive number, got {tolerance!r}.")
    if base == "fp32":
        return Bar(precision=model, rule=RELATIVE, floor=FLOOR[model],
                   tolerance=DEFAULT_TOLERANCE[model] if tolerance is None else float(tolerance))
    bars = {**DEFAULT_SQNR_DB, **(sqnr or {})}
    floor = FLOOR["fp16"] if "fp16" in (base, model) else FLOOR["fp32"]
    return Bar(precision=base, rule=SQNR, floor=floor, min_sqnr_db=float(bars[base]))


class Errors:
    """A running comparison of one tensor over all inputs: max-abs error, the reference's peak magnitude, and
    signal and noise power (SQNR).

    Example::

        errors = Errors(); errors.add(reference, got)
        print(errors.max_abs, errors.relative(bar.floor), errors.sqnr_db)
    """

    def __init__(self) -> None:
        self.max_abs, self.peak, self.nan = 0.0, 0.0, False
        self.signal = self.noise = 0.0

    def add(self, reference: np.ndarray, got: np.ndarray) -> None:
        import numpy as np

        reference = np.asarray(reference, dtype=np.float64)
        diff = np.abs(reference - np.asarray(got, dtype=np.float64))
        if not diff.size:
            return
        if np.isnan(diff).any():
            self.nan = True
        self.max_abs = max(self.max_abs, float(np.nanmax(diff)) if not np.isnan(diff).all() else 0.0)
        self.peak = max(self.peak, float(np.nanmax(np.abs(reference))) if not np.isnan(reference).all() else 0.0)
        self.noise += float(np.nansum(np.square(diff)))
        self.signal += float(np.nansum(np.square(reference)))

    def relative(self, floor: float) -> float:
        """The error relative to the reference's peak magnitude (at least ``floor``); inf with a NaN."""
        return math.inf if self.nan else self.max_abs / max(self.peak, floor)

    @property
    def sqnr_db(self) -> float:
        """Signal over noise power in dB over everything added; -200 with a NaN."""
        return -200.0 if self.nan else sqnr_db(self.signal, self.noise)


def judge(file: Errors, bar: Bar, *, keras: Errors | None = None) -> bool:
    """Whether a layer passes ``bar``: ``file`` holds the file's errors against the reference.

    ``keras``: Keras' own errors against the same reference, where that reference is float64 (the
    relative rule only); a file at least as close to it as Keras passes as well.

    Example::

        judge(errors, bar_for("fp32"))
    """
    if not bar.relative:
        return file.sqnr_db >= bar.min_sqnr_db
    error = file.relative(bar.floor)
    return error <= bar.tolerance or (keras is not None and error <= keras.relative(bar.floor))


def badness(errors: Errors, bar: Bar) -> float:
    """How far past its bar a tensor is, for ranking (above 1 fails): the relative error over the tolerance, or
    the SQNR missing from the bar in dB over the bar (SQNR rule).

    Example::

        worst = max(layers, key=lambda name: badness(errors[name], bar))
    """
    if bar.relative:
        return errors.relative(bar.floor) / bar.tolerance
    return 1.0 + (bar.min_sqnr_db - errors.sqnr_db) / max(abs(bar.min_sqnr_db), 1.0)
