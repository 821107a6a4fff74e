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
from edgeseg.runtime._model import Model, ReconstructionResult, SegmentationResult
from edgeseg.runtime._pipeline import segment
from edgeseg.runtime._preprocess import Geometry, preprocess, preprocess_batch, restore
from edgeseg.runtime._session import ProviderFallbackWarning, make_session
from edgeseg.runtime._sinks import VideoSink, read_mask_png, write_mask_png
from edgeseg.runtime._streams import LiveSource

__all__ = [
    "METADATA_KEY",
    "BadInputError",
    "Contract",
    "EdgesegError",
    "Frame",
    "Geometry",
    "InputSpec",
    "LiveSource",
    "Model",
    "OutputSpec",
    "ProviderFallbackWarning",
    "ReconstructionResult",
    "SegmentationResult",
    "VideoInfo",
    "VideoSink",
    "contract_from_metadata",
    "make_session",
    "open_source",
    "preprocess",
    "preprocess_batch",
    "read_image",
    "read_mask_png",
    "restore",
    "segment",
    "write_contract",
    "write_mask_png",
]
