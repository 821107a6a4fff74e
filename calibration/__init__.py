"""INT8 side: static quantization of an edgeseg ONNX model from real calibration frames.

Needs ``pip install 'edgeseg[calibrate]'`` plus onnxruntime (``edgeseg[cpu]`` or ``[gpu]``).
Public names load lazily, so importing this package (the ``edgeseg`` command line does) stays light.

Example::

    from edgeseg.calibration import CalibrateOptions, QuantizeOptions, calibrate
    options = CalibrateOptions(quantize=QuantizeOptions(method="entropy"), samples=64)
    report = calibrate("fcn8.onnx", "frames/", output="fcn8.int8.onnx", options=options)
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it. onnx/onnxruntime load only when one is used.
_PUBLIC = {
    "Budget": "edgeseg.calibration._calibrate",
    "CalibrateOptions": "edgeseg.calibration._calibrate",
    "calibrate": "edgeseg.calibration._calibrate",
    "format_table": "edgeseg.calibration._calibrate",
    "write_chart": "edgeseg.calibration._calibrate",
    "QuantizeOptions": "edgeseg.calibration._quantize",
    # The building blocks calibrate() is made of, for experiments (benchmarks/calibration_variants.py).
    "RangeCollector": "edgeseg.calibration._quantize",
    "preprocess_for_quantization": "edgeseg.calibration._quantize",
    "quantize": "edgeseg.calibration._quantize",
    "METHODS": "edgeseg.calibration._quantize",
    "write_trt_table": "edgeseg.calibration._quantize",
    "read_trt_table": "edgeseg.calibration._quantize",
    "CalibrationSet": "edgeseg.calibration._data",
    "load_calibration_set": "edgeseg.calibration._data",
    "cpu_int8_support": "edgeseg.calibration._measure",
    "SegmentationScores": "edgeseg.calibration._measure",
    "IGNORE": "edgeseg.calibration._data",
    "compute_flops": "edgeseg.calibration._measure",
    "count_flops": "edgeseg.calibration._flops",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseg.calibration' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
