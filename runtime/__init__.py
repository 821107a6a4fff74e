"""edgeseg.runtime: the TF-free core and inference. OpenCV + onnxruntime (or OpenVINO); never TensorFlow.

What other packages and apps use, each concept once:

- errors (:mod:`edgeseg.runtime.errors`): :class:`EdgesegError` stops a run, :class:`BadInputError` costs one item;
- the contract (:mod:`edgeseg.runtime.contract`): :class:`Contract`, read from a file by :meth:`Contract.from_onnx`;
- preprocessing: :func:`preprocess` and its parts :func:`fit`, :func:`normalize`, :func:`denormalize`, :func:`restore`;
- post-processing (:mod:`edgeseg.runtime.postprocess`): class ids, probabilities, reconstruction and scores;
- files (:mod:`edgeseg.runtime.files`): the one atomic writer and :func:`sha256_of`;
- datasets (:mod:`edgeseg.runtime.datasets`): MNIST IDX/.npz, the course's .npy pair, image/mask folders;
- frames and sources, sinks, engines, :class:`Model` and :func:`segment`;
- engine choice: :func:`choose_config` reads ``edgeseg tune``'s records (:class:`EngineConfig`), else a heuristic.

onnxruntime itself is imported only when a session is built, so the contract and preprocessing
helpers work (and the ``edgeseg`` command line starts) without it.
"""

from edgeseg.runtime._frames import (Frame, VideoInfo, classify_source, frame_names, image_frames, open_source, read_image,
                                     video_frames)
from edgeseg.runtime._fused import fast_path, fuse_class_ids
from edgeseg.runtime._model import Model, resolve_engine
from edgeseg.runtime._outdir import prepare_out
from edgeseg.runtime._signals import stop_on_signals
from edgeseg.runtime._multistream import StreamOptions, StreamResult, StreamSpec, parse_sources, run_streams
from edgeseg.runtime._pipeline import RUN_FILES, SegmentOptions, Source, open_model, segment, stage_table
from edgeseg.runtime._preprocess import Geometry, denormalize, fit, normalize, preprocess, preprocess_batch, restore
from edgeseg.runtime._render import Palette, heatmap, overlay
from edgeseg.runtime._session import ProviderFallbackWarning, default_threads, make_session
from edgeseg.runtime._sinks import (FrameSink, JsonlSink, MaskSink, Outcome, OverlayImageSink, OverlayVideoSink,
                                    ReconstructionSink, RecordSink, VideoSink, read_mask_png, write_mask_png)
from edgeseg.runtime._streams import LiveSource, is_live
from edgeseg.runtime._openvino import openvino_available
from edgeseg.runtime._tuning import (
    BARS,
    RECORD_VERSION,
    EngineConfig,
    cache_dir,
    choose_config,
    cpu_flags,
    find_record,
    heuristic_config,
    machine_fingerprint,
    pick,
    record_path,
    require_gpu_fp16,
)
from edgeseg.runtime.contract import METADATA_KEY, Contract, InputSpec, OutputSpec, default_palette, write_contract
from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime.files import atomic_path, sha256_of, write_bytes_atomic, write_json_atomic, write_text_atomic
from edgeseg.runtime.postprocess import ReconstructionResult, SegmentationResult

__all__ = [
    "fast_path",
    "fuse_class_ids",
    "RecordSink",
    "ReconstructionSink",
    "OverlayVideoSink",
    "OverlayImageSink",
    "Outcome",
    "MaskSink",
    "FrameSink",
    "open_model",
    "frame_names",
    "RUN_FILES",
    "Source",
    "SegmentOptions",
    "BARS",
    "RECORD_VERSION",
    "EngineConfig",
    "cache_dir",
    "choose_config",
    "cpu_flags",
    "find_record",
    "openvino_available",
    "pick",
    "heuristic_config",
    "machine_fingerprint",
    "record_path",
    "require_gpu_fp16",
    "METADATA_KEY",
    "BadInputError",
    "Contract",
    "EdgesegError",
    "Frame",
    "Geometry",
    "InputSpec",
    "JsonlSink",
    "LiveSource",
    "Model",
    "OutputSpec",
    "Palette",
    "ProviderFallbackWarning",
    "ReconstructionResult",
    "SegmentationResult",
    "StreamOptions",
    "StreamResult",
    "StreamSpec",
    "VideoInfo",
    "VideoSink",
    "atomic_path",
    "classify_source",
    "default_palette",
    "default_threads",
    "denormalize",
    "fit",
    "heatmap",
    "image_frames",
    "is_live",
    "make_session",
    "normalize",
    "open_source",
    "overlay",
    "parse_sources",
    "prepare_out",
    "preprocess",
    "preprocess_batch",
    "read_image",
    "read_mask_png",
    "resolve_engine",
    "restore",
    "run_streams",
    "segment",
    "sha256_of",
    "stage_table",
    "stop_on_signals",
    "video_frames",
    "write_bytes_atomic",
    "write_contract",
    "write_json_atomic",
    "write_mask_png",
    "write_text_atomic",
]
