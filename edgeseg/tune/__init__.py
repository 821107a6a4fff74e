"""``edgeseg tune``: measure which engine configuration runs a model fastest on this machine.

The measuring side; the runtime reads the records it writes (``Model(engine="auto")``,
:func:`edgeseg.runtime.choose_config`). Public names load lazily, so ``edgeseg --help`` loads no NumPy.

Example::

    from edgeseg.tune import TuneOptions, tune
    record = tune("fcn8.onnx", TuneOptions(seconds=30))
    print(record["choice"]["exact"])
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it.
_PUBLIC = {name: "edgeseg.tune._tune" for name in ("TuneOptions", "candidate_configs", "tune")}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseg.tune' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
