"""Training side: build and train the course's CAE and FCN-8 in Keras, export to ONNX, verify.

Needs ``pip install 'edgeseg[export]'`` (TensorFlow, tf2onnx). Public names load lazily, so
importing this package (for example by the ``edgeseg`` command line) does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it. Each module imports TensorFlow only when loaded.
_PUBLIC = {
    "save_model": "edgeseg.export._keras_file",
    "load_model": "edgeseg.export._keras_file",
    "load_record": "edgeseg.export._keras_file",
    "export_model": "edgeseg.export._onnx",
    "to_onnx": "edgeseg.export._onnx",
    "ContractFacts": "edgeseg.export._onnx",
    "VerifyRequest": "edgeseg.export._verify",
    "GraphOptions": "edgeseg.export._onnx",
    "verify_files": "edgeseg.export._verify",
    "verify_models": "edgeseg.export._verify",
    "VerifyReport": "edgeseg.export._verify",
    "cuda_friendly": "edgeseg.export._cuda_friendly",
    "build_model": "edgeseg.export._models",
    "convert_lowmem": "edgeseg.export._lowmem",
    "build_cae": "edgeseg.export._models",
    "build_fcn8": "edgeseg.export._models",
    "model_names": "edgeseg.export._models",
    "load_mnist": "edgeseg.export._data",
    "load_segmentation": "edgeseg.export._data",
    "train_cae": "edgeseg.export._train",
    "train_fcn8": "edgeseg.export._train",
    "TrainOptions": "edgeseg.export._train",
    "CAEOptions": "edgeseg.export._train",
    "FCN8Options": "edgeseg.export._train",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseg.export' has no attribute {name!r}")
    from edgeseg.export import _patches

    _patches.import_tensorflow_quietly()
    return getattr(importlib.import_module(module), name)
