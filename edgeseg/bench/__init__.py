"""``edgeseg bench``: the same model and frames through several engines side by side.

Public names load lazily, so ``edgeseg --help`` (which imports this package's ``_cli``) loads no NumPy.

Example::

    from edgeseg.bench import BenchConfig, run_bench
    report = run_bench(BenchConfig(model=Path("fcn8.onnx"), source="clip.mp4", runners=("ort-plain", "edgeseg")))
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it.
_PUBLIC = {name: "edgeseg.bench._bench"
           for name in ("BenchConfig", "machine_info", "markdown_table", "mask_agreement", "run_bench", "run_worker")}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseg.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
