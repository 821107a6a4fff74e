"""Inference side: OpenCV + onnxruntime, reading each model's contract. Never imports TensorFlow.

onnxruntime itself is imported only when a session is built, so the contract and preprocessing
helpers work (and the ``edgeseg`` command line starts) without it.
"""

from edgeseg.runtime._contract import (
    METADATA_KEY,
    Contract,
    InputSpec,
    OutputSpec,
    contract_from_metadata,
    write_contract,
)
from edgeseg.runtime._errors import BadInputError, EdgesegError
from edgeseg.runtime._preprocess import Geometry, preprocess, preprocess_batch, restore

__all__ = [
    "METADATA_KEY",
    "BadInputError",
    "Contract",
    "EdgesegError",
    "Geometry",
    "InputSpec",
    "OutputSpec",
    "contract_from_metadata",
    "preprocess",
    "preprocess_batch",
    "restore",
    "write_contract",
]
