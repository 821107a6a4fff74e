"""``edgeseg eval``: per-class IoU, mIoU and pixel accuracy of deployed files on labelled data, per engine.

Public names load lazily, so ``edgeseg --help`` loads no NumPy.

Example::

    from edgeseg.evaluate import EvalOptions, evaluate, format_table
    report = evaluate(["fcn8.onnx", "fcn8.int8.onnx"], "held_out/images", masks="held_out/masks",
                      options=EvalOptions(engines=("onnxruntime", "openvino")))
    print(format_table(report))
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it.
_PUBLIC = {name: "edgeseg.evaluate._evaluate" for name in ("EvalOptions", "evaluate", "format_table", "write_chart")}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseg.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
