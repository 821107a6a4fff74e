"""``edgeseg tune``: measure which engine configuration runs a model fastest on this machine.

The measuring side; the runtime reads the records it writes (``Model(engine="auto")``,
:func:`edgeseg.runtime.choose_config`).

Example::

    from edgeseg.tune import TuneOptions, tune
    record = tune("fcn8.onnx", TuneOptions(seconds=30))
    print(record["choice"]["exact"])
"""

from edgeseg.tune._tune import TuneOptions, candidate_configs, tune

__all__ = ["TuneOptions", "candidate_configs", "tune"]
