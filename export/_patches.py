"""Third-party fixes the exporter needs, applied once, in one place.

TensorFlow 2.21 writes its start-up lines ("oneDNN custom operations are on", absl's "before
InitializeLog" warning) from C++ static initializers straight to file descriptor 2, before it reads
TF_CPP_MIN_LOG_LEVEL: :func:`import_tensorflow_quietly` imports it once with fd 2 pointed at
/dev/null. When this can go: when TensorFlow honours the variable for those lines.

tf2onnx 1.17 predates NumPy 2: its constant folding and some handlers call names NumPy 2 removed
(``np.object``, ``np.cast``). Keras ships the fix for its own ONNX export
(``keras.src.export.tf2onnx_lib.patch_tf2onnx``); we reuse it rather than copy it.

When this can go: when tf2onnx releases a version that supports NumPy 2 (tf2onnx issue 2390
tracks it); then pin ``tf2onnx>=<that version>`` in the ``export`` extra and delete this module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
import warnings

log = logging.getLogger("edgeseg.export")


@functools.cache
def apply() -> None:
    """Patch tf2onnx for NumPy 2; idempotent (runs once per process)."""
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    with warnings.catch_warnings():
        # Its `hasattr(np, "object")` probe triggers NumPy's FutureWarning; the probe is the point.
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()


@functools.cache
def import_tensorflow_quietly() -> None:
    """Import TensorFlow once with its native start-up lines silenced; idempotent.

    Every command that loads TensorFlow loads it here first (train, export, verify, the demo, bench
    exporting a .keras), so this is where the one line "loading TensorFlow" is said: it takes 10-40 s
    on a small CPU, silent otherwise. Errors are not hidden: a broken install fails again, audibly, at
    the caller's own import. Set TF_CPP_MIN_LOG_LEVEL=0 to see TensorFlow's lines.
    """
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    log.info("loading TensorFlow (10-40 s on a small CPU)...")
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the lines TensorFlow does filter
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        importlib.import_module("tensorflow")
    except Exception:  # noqa: BLE001 - see the docstring: the caller's import reports it
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
