"""Third-party fixes the exporter needs, applied once, in one place.

tf2onnx 1.17 predates NumPy 2: its constant folding and some handlers call names NumPy 2 removed
(``np.object``, ``np.cast``). Keras ships the fix for its own ONNX export
(``keras.src.export.tf2onnx_lib.patch_tf2onnx``); we reuse it rather than copy it.

When this can go: when tf2onnx releases a version that supports NumPy 2 (tf2onnx issue 2390
tracks it); then pin ``tf2onnx>=<that version>`` in the ``export`` extra and delete this module.
"""

from __future__ import annotations

import functools
import warnings


@functools.cache
def apply() -> None:
    """Patch tf2onnx for NumPy 2; idempotent (runs once per process)."""
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    with warnings.catch_warnings():
        # Its `hasattr(np, "object")` probe triggers NumPy's FutureWarning; the probe is the point.
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()
