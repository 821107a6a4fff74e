"""edgeseg.runtime: the TF-free core and inference. OpenCV + onnxruntime (or OpenVINO); never TensorFlow.

What other packages and apps use, each concept once:

- errors (:mod:`edgeseg.runtime.errors`): :class:`EdgesegError` stops a run, :class:`BadInputError` costs one item;
- the contract (:mod:`edgeseg.runtime.contract`): :class:`Contract`, read from a file by :meth:`Contract.from_onnx`;
- the model file (:class:`ModelFile`): one read of an ONNX file (metadata, contract, lazy sha256) that
  :class:`Model`, the tuning records and the pipeline share;
- preprocessing: :func:`preprocess` and its parts :func:`fit`, :func:`normalize`, :func:`denormalize`, :func:`restore`;
- post-processing (:mod:`edgeseg.runtime.postprocess`): class ids, probabilities, reconstruction and scores;
- files (:mod:`edgeseg.runtime.files`): the one atomic writer and :func:`sha256_of`;
- images in memory: :func:`decode_image` (bytes, with :func:`read_image`'s checks), :func:`encode_mask_png`, :func:`decode_mask_png`;
- :class:`Client`: a running ``edgeseg serve`` called like a :class:`Model` (standard library only);
- HTTP (:mod:`edgeseg.runtime.http`): :class:`~edgeseg.runtime.http.HttpServer`, an ASGI app on uvicorn in a thread;
- datasets (:mod:`edgeseg.runtime.datasets`): MNIST IDX/.npz, the course's .npy pair, image/mask folders;
- optional dependencies (:mod:`edgeseg.runtime.extras`): which extra brings which module, every install hint;
- progress (:mod:`edgeseg.runtime.progress`): a bar on a terminal, a log line now and then when piped;
- probe (:mod:`edgeseg.runtime.probe`): tensors read from inside the deployed engine at its precision (verify judges them);
- frames and sources (:class:`Source`, one opener for what the user typed), sinks, engines (:data:`ENGINES`),
  :class:`Model`;
- :func:`segment`: one loop for one source or many; its records (:mod:`edgeseg.runtime.records`, schema 2);
- from masks to decisions: :class:`Zone`, :class:`Rule`, :class:`Event`, :class:`Decisions` (zones, rules, events,
  event sinks, clips: :mod:`edgeseg.runtime.decisions`) and the vector forms of a mask (:mod:`edgeseg.runtime.vectors`);
- engine choice: :func:`choose_config` reads ``edgeseg tune``'s records (:class:`EngineConfig`), else a heuristic.

Names load lazily, on first use (``from edgeseg.runtime import Model`` imports the model's modules then):
``import edgeseg.runtime`` and ``import edgeseg.runtime.errors`` load neither NumPy, OpenCV nor onnxruntime,
so the ``edgeseg`` command line starts at once.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it (under edgeseg.runtime). One table: add a name here, and it is
# importable from edgeseg.runtime, listed in __all__, and loaded only when used.
_PUBLIC = {
    # errors, the contract, files
    "EdgesegError": "errors", "BadInputError": "errors",
    "Contract": "contract", "InputSpec": "contract", "OutputSpec": "contract", "METADATA_KEY": "contract",
    "default_palette": "contract", "write_contract": "contract",
    "atomic_path": "files", "sha256_of": "files", "write_bytes_atomic": "files", "write_json_atomic": "files",
    "write_text_atomic": "files",
    "Progress": "progress",
    # the model file, the model, its engines
    "ModelFile": "_modelfile",
    "Model": "_model",
    "ENGINES": "_engines", "Engine": "_engines", "EngineConfig": "_engines", "cpu_flags": "_engines",
    "heuristic_config": "_engines", "openvino_available": "_engines", "resolve_engine": "_engines",
    "require_gpu_fp16": "_engines",
    "ProviderFallbackWarning": "_session", "default_threads": "_session", "make_session": "_session",
    "fast_path": "_fused", "fuse_class_ids": "_fused",
    # engine choice from edgeseg tune's records
    "BARS": "_tuning", "RECORD_VERSION": "_tuning", "cache_dir": "_tuning", "choose_config": "_tuning",
    "find_record": "_tuning", "machine_fingerprint": "_tuning", "pick": "_tuning", "record_path": "_tuning",
    # pixels in and out
    "Geometry": "_preprocess", "denormalize": "_preprocess", "fit": "_preprocess", "normalize": "_preprocess",
    "preprocess": "_preprocess", "preprocess_batch": "_preprocess", "restore": "_preprocess",
    "ReconstructionResult": "postprocess", "SegmentationResult": "postprocess",
    "Palette": "_render", "heatmap": "_render", "overlay": "_render",
    # frames and sources
    "Frame": "_frames", "VideoInfo": "_frames", "frame_names": "_frames", "image_frames": "_frames",
    "read_image": "_frames", "video_frames": "_frames", "display_path": "_frames", "IMAGE_SUFFIXES": "_frames",
    "VIDEO_SUFFIXES": "_frames", "FOLDER_IMAGE_SUFFIXES": "_frames",
    "Source": "_sources", "Entry": "_sources", "classify_source": "_sources", "open_source": "_sources",
    "open_sources": "_sources", "expand": "_sources", "read_list": "_sources", "split_name": "_sources",
    "unique_names": "_sources",
    "LiveSource": "_streams", "is_live": "_streams",
    # sinks
    "FrameSink": "_sinks", "JsonlSink": "_sinks", "MaskSink": "_sinks", "Outcome": "_sinks",
    "OverlayImageSink": "_sinks", "OverlayVideoSink": "_sinks", "ReconstructionSink": "_sinks",
    "RecordSink": "_sinks", "SegmentClock": "_sinks", "VectorSink": "_sinks", "VideoSink": "_sinks",
    "read_mask_png": "_sinks", "write_mask_png": "_sinks",
    # from masks to decisions: zones, rules, events (segment(..., zones="zones.json", on_event=...))
    "Zone": "zones", "Rule": "events", "Event": "events", "Decisions": "decisions", "DecisionOptions": "decisions",
    "load_decisions": "decisions",
    # the segment pipeline, one source or many
    "SegmentOptions": "_options",
    "RUN_FILES": "_pipeline", "FRAME_FOLDERS": "_pipeline", "AUTOENCODER_BATCH": "_pipeline",
    "open_model": "_pipeline", "segment": "_pipeline",
    "run_streams": "_pipeline", "stage_table": "_pipeline", "model_precision": "_pipeline",
    "FrameResult": "_writer", "StreamResult": "_pipeline",
    "prepare_out": "_outdir", "RunLock": "_outdir", "check_resume": "_outdir", "write_identity": "_outdir",
    "stop_on_signals": "_signals",
    # images in memory, and a running edgeseg serve called like a Model
    "decode_image": "_imagebytes", "encode_mask_png": "_imagebytes", "decode_mask_png": "_imagebytes",
    "Client": "client",
}

# The public modules, reachable as attributes too (``edgeseg.runtime.postprocess.class_ids``), as when this
# package imported them all.
_MODULES = ("errors", "contract", "files", "postprocess", "datasets", "extras", "progress", "records", "http",
            "client", "probe", "zones", "vectors", "events", "decisions")

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"edgeseg.runtime.{name}")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseg.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgeseg.runtime.{module}"), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
