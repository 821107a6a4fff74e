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
from edgeseg.runtime._frames import Frame, VideoInfo, open_source, read_image
from edgeseg.runtime._preprocess import Geometry, preprocess, preprocess_batch, restore

__all__ = [
    "METADATA_KEY",
    "BadInputError",
    "Contract",
    "EdgesegError",
    "Frame",
    "Geometry",
    "InputSpec",
    "VideoInfo",
    "OutputSpec",
    "contract_from_metadata",
    "open_source",
    "preprocess",
    "preprocess_batch",
    "read_image",
    "restore",
    "write_contract",
]
