"""``segment``: a source through a model into masks, overlays, ``frames.jsonl`` and ``summary.json``.

Named parts: a :class:`Source` (frames, kind, total, fps) built from what the user typed, one
:class:`SegmentOptions`, a ``Model`` built by :func:`open_model` (the one rule the CLI and the API
share), and frame sinks (:mod:`edgeseg.runtime._sinks`) that all take ``write(frame, outcome)``.

Three stages overlap, joined by bounded queues (back-pressure: a fast stage waits for a slow one,
memory stays flat): a decode thread reads and preprocesses frames, the calling thread runs
inference (in batches for finite sources), and a writer thread post-processes, draws and writes.
Each stage is one thread working in FIFO order, so outputs keep the input order. OpenCV and
onnxruntime release the GIL, so the stages really run at the same time.

SIGINT/SIGTERM set a stop flag: decoding stops, frames already decoded are finished and written,
the video is finalized and ``summary.json`` is written, so every output stays valid.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import mmap
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.runtime import postprocess as post
from edgeseg.runtime.contract import Contract
from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime.files import write_json_atomic
from edgeseg.runtime._frames import (Frame, VideoInfo, classify_source, display_path, frame_names, image_frames,
                                     video_frames)
from edgeseg.runtime._outdir import prepare_out
from edgeseg.runtime._signals import stop_on_signals
from edgeseg.runtime._model import Model
from edgeseg.runtime._preprocess import Geometry, preprocess
from edgeseg.runtime._render import Palette, heatmap, overlay
from edgeseg.runtime._sinks import (FrameSink, MaskSink, OverlayImageSink, OverlayVideoSink, Outcome,
                                    ReconstructionSink, RecordSink, read_mask_png)
from edgeseg.runtime._streams import LiveSource, is_live

log = logging.getLogger("edgeseg.runtime")

OUTPUTS = ("masks", "overlay", "reconstruction", "jsonl")
DEFAULT_OUTPUTS = ("masks", "overlay", "reconstruction", "jsonl")
STAGES = ("decode", "preprocess", "infer", "postprocess", "write")
# What a run leaves in --out: what --overwrite clears, and what makes a folder "hold a run" (public: --ray's
# driver applies the same rule to its folders).
RUN_FILES = ("summary.json", "frames.jsonl", "overlay.mp4", "masks", "overlay", "reconstruction")
_END = object()
# The CAE's default batch on files: its 28x28 inference costs less than the per-call overhead, so frames per
# call decide its speed (benchmarks/cae_pipeline.py: batch 64 ran 1.27x a plain onnxruntime loop, batch 1 0.61x).
# Segmentation keeps 1: FCN-8 is kernel-bound, and batch 1 keeps latency and memory low.
AUTOENCODER_BATCH = 64


@dataclass(frozen=True)
class SegmentOptions:
    """Every knob of :func:`segment`, validated once (``None`` means "the model's or engine's default").

    Frames: ``stride``, ``start``, ``max_frames``, ``recursive`` (subfolders). Inference: ``batch``
    (frames per call on finite sources; None: :data:`AUTOENCODER_BATCH` for autoencoders, else 1), and,
    when the model is given as a path, ``provider``, ``threads``, ``engine``, ``precision``,
    ``optimization``, ``strict`` (see :class:`Model`); ``inflight``: inference calls in flight at once,
    overlapped with decoding and writing, frames kept in order (None: the model's streams on finite sources,
    i.e. 2 or so for OpenVINO compiled for throughput, else 1; live sources always 1). Outputs: ``outputs``
    (any of masks, overlay, reconstruction, jsonl; ``summary.json`` is always written), ``alpha``
    (overlay opacity), ``smooth`` (weight in [0, 1) of earlier frames' class probabilities, videos and
    streams), ``codec`` (overlay.mp4), ``show``, ``progress``. Live sources: ``policy``, ``reconnect``.
    An ``--out`` that holds a run: ``overwrite`` clears it first, ``resume`` continues it.

    Example::

        options = SegmentOptions(batch=4, outputs=("masks", "jsonl"), smooth=0.5)
        segment("clip.mp4", model="fcn8.onnx", out="runs/clip", options=options)
    """

    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    batch: int | None = None
    stride: int = 1
    start: int = 0
    max_frames: int | None = None
    recursive: bool = False
    alpha: float = 0.5
    smooth: float = 0.0
    policy: str = "drop-old"
    reconnect: int = 5
    codec: str = "auto"
    show: bool = False
    progress: bool = False
    queue_size: int = 8
    overwrite: bool = False
    resume: bool = False
    provider: str = "auto"
    threads: int | None = None
    engine: str | None = None  # None: "auto", its choice logged at debug level only
    precision: str = "auto"
    optimization: str = "all"
    strict: bool = False
    inflight: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if self.inflight is not None and self.inflight < 1:
            raise EdgesegError(f"`inflight` (inference calls at once) must be >= 1, got {self.inflight}.")
        unknown = set(self.outputs) - set(OUTPUTS)
        if unknown:
            raise EdgesegError(f"Unknown output(s) {', '.join(sorted(unknown))}: choose from {', '.join(OUTPUTS)}.")
        if (self.batch is not None and self.batch < 1) or self.queue_size < 1:
            raise EdgesegError(f"`batch` and `queue_size` must be >= 1, got {self.batch} and {self.queue_size}.")
        if self.stride < 1 or self.start < 0 or (self.max_frames is not None and self.max_frames < 0):
            raise EdgesegError(f"Frame selection needs stride >= 1, start >= 0, max_frames >= 0; "
                               f"got {self.stride}, {self.start}, {self.max_frames}.")
        if not 0.0 <= self.smooth < 1.0:
            raise EdgesegError(f"`smooth` must be in [0, 1) (0: off), got {self.smooth}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise EdgesegError(f"`alpha` (overlay opacity) must be in [0, 1], got {self.alpha}.")
        if self.overwrite and self.resume:
            raise EdgesegError("--overwrite and --resume contradict each other: pass one.")


def open_model(model: Model | str | os.PathLike, options: SegmentOptions = SegmentOptions(), *,
               contract: Contract | Mapping[str, Any] | None = None) -> Model:
    """The one rule that turns what the user named into a :class:`Model` (the CLI and :func:`segment` use it).

    A :class:`Model` is used as it is; a path is opened with the options' engine settings, compiled for
    throughput when frames come in batches (OpenVINO splits each batch across its streams) or several
    calls are in flight (``inflight`` > 1: one stream each).

    Example::

        model = open_model("fcn8.onnx", SegmentOptions(engine="openvino", batch=4))
    """
    if not isinstance(model, Model):
        model = Model(model, provider=options.provider, threads=options.threads, optimization=options.optimization,
                      contract=contract, engine=options.engine, precision=options.precision,
                      throughput=(options.batch or 1) > 1 or (options.inflight or 1) > 1, strict=options.strict)
    model.check_frames()  # an encoder half is refused at load, before --out is claimed
    return model


# Operator names only a quantized graph holds (QDQ as onnxruntime's quantizer writes it, or QLinear/Integer ops).
_QUANTIZED_OPS = (b"QuantizeLinear", b"QLinearConv", b"QLinearMatMul", b"ConvInteger", b"MatMulInteger")


def model_precision(model: Model) -> str:
    """What the summary calls the model's precision: ``int8`` for a quantized file (calibrated by edgeseg,
    or holding QDQ/QLinear nodes), else what the engine runs (``fp32``; OpenVINO's ``bf16``/``f32``)."""
    if model.contract.calibration:
        return "int8"
    # An operator's type is a plain string in the protobuf: a byte search finds it without the onnx package
    # (not in the runtime-only install; importing it took 0.75 s, more than the CAE's whole 2,000 digits' inference).
    try:
        with open(model.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return "int8" if any(data.find(op) >= 0 for op in _QUANTIZED_OPS) else model.precision
    except (OSError, ValueError):  # the engine read it; a file we cannot map is no reason to fail the run
        return model.precision


@dataclass
class Source:
    """What the user typed, opened: an iterator of frames, its ``kind`` (image, folder, glob, list,
    video, stream), how many frames it will give (``total``, None when unknown), its frame rate (0 for
    images), and, for live sources, the :class:`LiveSource` (its stats go into the summary).

    A part of a larger source (what one worker of ``--ray`` runs) is opened with :meth:`images` or
    :meth:`video_range`; ``lead``: how many first frames only prime ``smooth`` (run, never written
    nor counted), so a range of a video gives the masks the whole video would.

    Example::

        source = Source.open("clip.mp4", SegmentOptions(stride=2))
        print(source.kind, source.total, source.fps)
    """

    spec: Any
    frames: Iterator[Frame]
    kind: str
    total: int | None
    fps: float
    live: LiveSource | None = None
    lead: int = 0

    @property
    def sequential(self) -> bool:
        """Frames of one scene in time order (a video or a stream): one overlay video, smoothing applies."""
        return self.kind in ("video", "stream")

    @classmethod
    def open(cls, spec: str | os.PathLike | int, options: SegmentOptions = SegmentOptions()) -> Source:
        if is_live(spec):
            _check_webcam(spec)
            stream = LiveSource(spec, policy=options.policy, reconnect=options.reconnect)
            stream.start()
            return cls(spec, itertools.islice(iter(stream), options.max_frames), "stream", None, stream.fps, stream)
        kind, paths = classify_source(spec, recursive=options.recursive)
        if kind == "video":
            frames = video_frames(spec, stride=options.stride, start=options.start, max_frames=options.max_frames)
            info = VideoInfo.from_video_path(spec)
            total = len(range(options.start, info.frame_count, options.stride)) if info.frame_count else None
            fps = info.fps / options.stride
        else:  # the paths are listed already: don't walk the folder twice
            chosen = itertools.islice(paths, options.start, None, options.stride)
            root = spec if kind == "folder" else None
            names = itertools.islice(frame_names(paths, root), options.start, None, options.stride)  # the whole source's
            frames = itertools.islice(image_frames(chosen, root=root, names=names), options.max_frames)
            total, fps = len(range(options.start, len(paths), options.stride)), 0.0
        if total is not None and options.max_frames is not None:
            total = min(total, options.max_frames)
        return cls(spec, frames, kind, total, fps)

    @classmethod
    def images(cls, paths: list[str | os.PathLike], *, root: str | os.PathLike | None = None,
               names: list[str] | None = None, first: int = 0) -> Source:
        """Image files as a source: ``names`` (default: :func:`frame_names` of ``paths``) and the index
        ``first`` of the first path are the whole source's, when ``paths`` is a part of it.

        Example::

            part = Source.images(paths[64:128], root="photos", names=names[64:128], first=64)
        """
        frames = (dataclasses.replace(frame, index=frame.index + first)
                  for frame in image_frames(paths, root=root, names=names))
        return cls(paths, frames, "list", len(paths), 0.0)

    @classmethod
    def video_range(cls, path: str | os.PathLike, *, start: int, count: int, stride: int = 1, lead: int = 0) -> Source:
        """Frames ``start, start + stride, ...`` (``count`` of them) of a video, reached by seeking; the
        ``lead`` frames before ``start`` (same stride) are decoded only to prime ``smooth``.

        Example::

            part = Source.video_range("clip.mp4", start=256, count=256, lead=14)
        """
        info = VideoInfo.from_video_path(path)
        frames = video_frames(path, stride=stride, start=start - lead * stride, max_frames=count + lead, seek=True)
        return cls(path, frames, "video", count, info.fps / stride, lead=lead)

    def close(self) -> None:
        if self.live is not None:
            self.live.close()


def _check_webcam(spec: Any) -> None:
    # A camera that is not there fails at once: the reconnect retries are for streams that worked.
    if not (isinstance(spec, int) or str(spec).isdigit()) or not sys.platform.startswith("linux"):
        return
    index = int(spec)
    if not Path(f"/dev/video{index}").exists():
        found = sorted(p.name for p in Path("/dev").glob("video*"))
        raise EdgesegError(f"No webcam {index}: /dev/video{index} does not exist (cameras here: "
                           f"{', '.join(found) or 'none'}). Pass another index, a video file or a stream URL.")


@dataclass
class _Item:
    frame: Frame
    tensor: np.ndarray | None = None
    geometry: Geometry | None = None
    output: np.ndarray | None = None
    arrived: float = 0.0
    ms: dict[str, float] = field(default_factory=dict)
    kept: dict[str, Any] | None = None  # the record of a frame a resumed run already finished
    batch: tuple[np.ndarray, np.ndarray] | None = None  # (outputs, inputs) of the inference call it was part of
    lead: bool = False  # only primes --smooth (Source.lead): never written nor counted


@dataclass
class _Call:
    """One inference call of the pipeline: its items, and its outputs (or the future that brings them)."""

    items: list[_Item]
    good: list[_Item]
    started: float
    tensors: np.ndarray | None = None
    outputs: np.ndarray | None = None
    future: Future | None = None
    error: Exception | None = None


def segment(source: str | os.PathLike | int | Source, *, model: Model | str | os.PathLike, out: str | os.PathLike,
            options: SegmentOptions | None = None, stop: threading.Event | None = None,
            **changes: Any) -> dict[str, Any]:
    """Run ``edgeseg segment``: every frame of ``source`` through ``model`` into ``out``; returns the summary.

    ``source``: an image, folder, glob, ``.txt`` list, video file, webcam index or stream URL (or an
    opened :class:`Source`). ``model``: a :class:`Model` or an .onnx path (opened by :func:`open_model`).
    ``options``: a :class:`SegmentOptions`; any of its fields may also be given as a keyword
    (``batch=4``), checked against the dataclass, so a misspelt one is an error, not ignored.
    ``stop``: set it to end the run early (SIGINT/SIGTERM set it too).

    Example::

        summary = segment("clip.mp4", model="fcn8.onnx", out="runs/clip", options=SegmentOptions(batch=4))
        print(summary["fps"], summary["outputs"]["video_codec"])
    """
    options = _with_changes(options or SegmentOptions(), changes)
    stop = stop or threading.Event()
    # From the first moment: a Ctrl-C while the model loads or warms up ends the run the same clean way.
    restore_signals = stop_on_signals(stop)
    try:
        model = open_model(model, options)
        out = prepare_out(out, previous_run=lambda o: [o / name for name in RUN_FILES],
                          overwrite=options.overwrite, resume=options.resume)
        opened = source if isinstance(source, Source) else Source.open(source, options)
        kept = _finished_records(out, model, options, opened) if options.resume else {}
        batch = _batch(options, model, opened)
        run = _Run(model=model, out=out, options=options, source=opened, stop=stop, kept=kept,
                   inflight=_inflight(options, model, opened, batch))
        if model.kind in ("segmentation", "autoencoder") and (opened.total is None or opened.total > 2 * batch):
            # Pay the first-call costs (allocations; OpenVINO's per-shape kernels) before the clock starts, as
            # every bench runner does; a run of a frame or two is not worth the extra inference.
            try:
                model.warmup(batch)
            except Exception as error:  # a model that cannot run says so on the first real frame, with its name
                log.debug("warm-up failed: %s", error)
        wall = _run_stages(run, opened, batch)
        if run.error is not None:
            raise run.error
        summary = run.summary(wall=wall, batch=batch)
        write_json_atomic(out / "summary.json", summary)
    finally:
        restore_signals()  # only now: a Ctrl-C before summary.json is written still ends the run cleanly
    return summary


def _batch(options: SegmentOptions, model: Model, source: Source) -> int:
    if source.live is not None:
        return 1  # a live frame waits for no other
    if options.batch is not None:
        return options.batch
    if model.config.batch > 1:
        # engine auto with a tuning record: the batch `edgeseg tune` measured fastest, which the record's
        # engine settings (throughput streams) were chosen for; FCN-8 head 256 at 128 px, quiet 2-vCPU AMX
        # machine: OpenVINO INT8 batch 4 throughput 262 fps against 228 at batch 1 (`edgeseg tune`).
        return model.config.batch
    return AUTOENCODER_BATCH if model.kind == "autoencoder" else 1


def _inflight(options: SegmentOptions, model: Model, source: Source, batch: int) -> int:
    if source.live is not None:
        return 1  # a live frame is inferred as soon as it comes, the next one waits for the newest
    if options.inflight is not None:
        return options.inflight
    # A model compiled for throughput has several streams: keep a call in flight per stream, so one call's
    # output is handed on (and the next batch gathered) while the others run. benchmarks/fast_mode.py
    # (OpenVINO, 2 streams, sample FCN-8, loaded 2-vCPU machine): batch 4 with 2 calls in flight ran
    # 1.16-1.45x batch 4 alone (median of paired rounds, 3 runs); batch 1 with 2 in flight 0.87-1.06x of it.
    return model.streams


def _with_changes(options: SegmentOptions, changes: dict[str, Any]) -> SegmentOptions:
    if not changes:
        return options
    known = {f.name for f in dataclasses.fields(SegmentOptions)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TypeError(f"segment() got unknown option(s) {', '.join(unknown)}; SegmentOptions has {', '.join(sorted(known))}.")
    return dataclasses.replace(options, **changes)


def _run_stages(run: _Run, source: Source, batch: int) -> float:
    """Decode thread, inference here, writer thread; returns the wall time."""
    live = source.live is not None
    # The stages hand each other chunks of `batch` frames: one queue operation per batch, not per
    # frame, which is what lets small models (the CAE: thousands of images/s) run faster than a loop.
    decoded: queue.Queue = queue.Queue(maxsize=1 if live else 2)
    inferred: queue.Queue = queue.Queue(maxsize=1 if live else max(2, run.options.queue_size // batch))
    decoder = threading.Thread(target=run.decode, args=(source.frames, decoded, batch), name="edgeseg-decode",
                               daemon=True)
    writer = threading.Thread(target=run.write_all, args=(inferred,), name="edgeseg-write", daemon=True)
    started = time.perf_counter()
    try:
        decoder.start()
        writer.start()
        run.infer_all(decoded, inferred)
    finally:
        if run.error is not None:
            run.stop.set()
        source.close()
        decoder.join()
        _put(inferred, _END, None)
        writer.join()
    return time.perf_counter() - started


def _finished_records(out: Path, model: Model, options: SegmentOptions, source: Source) -> dict[str, dict[str, Any]]:
    """``--resume``: the records of frames the earlier run finished whose files are there and readable."""
    path = out / "frames.jsonl"
    if not path.exists():
        return {}
    if source.sequential and "overlay" in options.outputs and model.kind != "segmentation":
        return {}  # overlay.mp4 is redrawn from saved masks; an autoencoder's heat maps need the model again
    kept: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line in flight when the earlier run was killed
            continue
        if isinstance(record, dict) and record.get("ok") and _outputs_valid(out, str(record.get("name")), model, options):
            kept[str(record["name"])] = record
    return kept


def _outputs_valid(out: Path, name: str, model: Model, options: SegmentOptions) -> bool:
    wanted = []
    if model.kind == "segmentation" and "masks" in options.outputs:
        wanted.append(out / "masks" / f"{name}.png")
    if model.kind == "autoencoder" and "reconstruction" in options.outputs:
        wanted.append(out / "reconstruction" / f"{name}.png")
    if "overlay" in options.outputs and not (out / "overlay.mp4").exists():
        wanted.append(out / "overlay" / f"{name}.png")
    for path in wanted:
        try:
            if cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED) is None:
                return False
        except OSError:
            return False
    return True


class _Run:
    """The state of one ``segment`` call, shared by its three threads (each field has one writer)."""

    def __init__(self, *, model: Model, out: Path, options: SegmentOptions, source: Source,
                 stop: threading.Event, kept: dict[str, dict[str, Any]], inflight: int = 1) -> None:
        self.model, self.out, self.options, self.source, self.stop = model, out, options, source, stop
        self.kept = kept
        self.inflight = inflight
        self.sequential = source.sequential
        self.live = source.live is not None
        self.smooth = options.smooth
        self.palette = Palette.from_rgb(model.contract.output.palette)
        self.show = options.show and _has_gui()
        self.error: BaseException | None = None
        self.done = 0
        self.failed = 0
        self.nan = 0  # frames whose model output held a NaN
        self.resumed = 0
        self.first_failure: str | None = None
        self.taken = 0  # frames taken from the source (the decode thread's); each is finished
        self.stage_total = dict.fromkeys(STAGES, 0.0)
        self.infer_seconds = 0.0
        self._last_finished = 0.0
        self.infer_finished = threading.Event()
        self.sinks, self.records = self._open_sinks()

    def _open_sinks(self) -> tuple[list[FrameSink], RecordSink | None]:
        wanted, out, kind = self.options.outputs, self.out, self.model.kind
        sinks: list[FrameSink] = []
        if kind == "segmentation" and "masks" in wanted:
            sinks.append(MaskSink(out / "masks", self.palette.rgb))
        if kind == "autoencoder" and "reconstruction" in wanted:
            sinks.append(ReconstructionSink(out / "reconstruction"))
        if "overlay" in wanted:
            sinks.append(OverlayVideoSink(out / "overlay.mp4", fps=self.source.fps or 25.0, codec=self.options.codec)
                         if self.sequential else OverlayImageSink(out / "overlay"))
        # Written last, so a frame's record carries the time its other outputs took.
        records = RecordSink(out / "frames.jsonl") if "jsonl" in wanted else None
        return sinks, records

    @property
    def draws(self) -> bool:
        return "overlay" in self.options.outputs or self.show
    # -- stage 1: decode + preprocess (its own thread) ----------------------------------------

    def decode(self, frames: Iterator[Frame], decoded: queue.Queue, batch: int) -> None:
        spec = self.model.contract.input
        chunk: list[_Item] = []
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                self.taken += 1
                item = _Item(frame, arrived=t1, ms={"decode": (t1 - t0) * 1000}, kept=self.kept.get(frame.name),
                             lead=self.taken <= self.source.lead)
                if frame.ok and item.kept is None:
                    try:
                        item.tensor, item.geometry = preprocess(frame.image, spec)
                    except BadInputError as error:
                        item.frame = Frame(frame.index, frame.name, None, frame.timestamp, frame.source, str(error))
                item.ms["preprocess"] = (time.perf_counter() - t1) * 1000
                chunk.append(item)
                if len(chunk) >= batch:
                    # A frame taken from the source is finished even when a stop comes now: a stream's
                    # grabbed - dropped then equals the frames done.
                    if not _put(decoded, chunk, self.infer_finished):
                        break
                    chunk = []
            if chunk:  # the last, shorter batch
                _put(decoded, chunk, self.infer_finished)
        except BaseException as error:  # an EdgesegError from a source stops the run, reported by segment()
            self.error = error
            self.stop.set()
        finally:
            # The end marker must arrive unless inference has already quit (then nobody reads it).
            _put(decoded, _END, self.infer_finished)

    # -- stage 2: inference (the calling thread) ----------------------------------------------

    def infer_all(self, decoded: queue.Queue, inferred: queue.Queue) -> None:
        try:
            self._infer_all(decoded, inferred)
        finally:
            self.infer_finished.set()

    def _infer_all(self, decoded: queue.Queue, inferred: queue.Queue) -> None:
        # Up to `inflight` calls run at once on pool threads (the engines release the GIL and are thread-safe);
        # results leave in the order their frames came, oldest first.
        pool = (ThreadPoolExecutor(max_workers=self.inflight, thread_name_prefix="edgeseg-infer")
                if self.inflight > 1 else None)
        pending: deque[_Call] = deque()
        try:
            while True:
                items = decoded.get()
                if items is _END:
                    break
                pending.append(self._submit(pool, items))
                while len(pending) >= self.inflight:
                    if not self._deliver(pending.popleft(), inferred):
                        return
            while pending:
                if not self._deliver(pending.popleft(), inferred):
                    return
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, pool: ThreadPoolExecutor | None, items: list[_Item]) -> _Call:
        good = [item for item in items if item.tensor is not None]
        call = _Call(items, good, started=time.perf_counter())
        if not good:
            return call
        call.tensors = good[0].tensor if len(good) == 1 else np.concatenate([i.tensor for i in good])
        if pool is not None:
            call.future = pool.submit(self.model.run, call.tensors)
            return call
        try:
            call.outputs = self.model.run(call.tensors)
        except Exception as error:  # noqa: BLE001 - reported by _deliver, as a pool call's error is
            call.error = error
        return call

    def _deliver(self, call: _Call, inferred: queue.Queue) -> bool:
        """Wait for one call, hand its items on; False when inference failed (the run stops)."""
        if call.good:
            try:
                if call.error is not None:
                    raise call.error
                outputs = call.future.result() if call.future is not None else call.outputs
            except Exception as error:  # a failing run is a broken model or provider: stop, say why
                self.error = EdgesegError(f"inference failed on `{call.good[0].frame.name}`: {error}")
                self.stop.set()
                return False
            finished = time.perf_counter()
            # Busy time, not the sum of overlapping calls: from when this call started or the last one ended.
            seconds = finished - max(call.started, self._last_finished)
            self._last_finished = finished
            self.infer_seconds += seconds
            whole = (outputs, call.tensors)
            for i, item in enumerate(call.good):
                item.output = outputs[i]
                item.batch = whole
                item.ms["infer"] = seconds * 1000 / len(call.good)
        _put(inferred, call.items, None)
        return True

    # -- stage 3: post-process, draw, write (its own thread) ----------------------------------

    def write_all(self, inferred: queue.Queue) -> None:
        progress = self.options.progress
        bar = _progress_bar(self.source.total, enabled=progress and not self.live)
        meter = _LiveMeter() if progress and self.live else None
        smoothed: np.ndarray | None = None
        try:
            while True:
                items = inferred.get()
                if items is _END:
                    break
                if self.error is not None:
                    continue  # drain so the other stages can finish
                for item, outcome in zip(items, self._results(items)):
                    smoothed = self._finish(item, outcome, smoothed)
                    bar.update(1) if bar is not None else None
                    if meter is not None:
                        meter.tick(item.arrived, self.done)
        except BaseException as error:
            self.error = self.error or error
            self.stop.set()
            while inferred.get() is not _END:  # keep draining so inference never blocks forever
                pass
        finally:
            for sink in [*self.sinks, self.records]:
                if sink is not None:
                    sink.close()
            if bar is not None:
                bar.close()
            if meter is not None:
                sys.stderr.write("\n")
            if self.show:
                cv2.destroyAllWindows()

    def _results(self, items: list[_Item]) -> list[Outcome | None]:
        """Autoencoders: the whole batch post-processed at once; other kinds: one by one in _finish."""
        done = [item for item in items if item.output is not None]
        if self.model.kind != "autoencoder" or not done:
            return [None] * len(items)
        t0 = time.perf_counter()
        whole = done[0].batch
        if whole is not None and len(whole[0]) == len(done) and all(item.batch is whole for item in done):
            outputs, inputs = whole  # the inference call's own arrays: no copy
        else:
            outputs, inputs = np.stack([i.output for i in done]), np.concatenate([i.tensor for i in done])
        try:
            results = post.reconstruction_batch(outputs, inputs, [i.geometry for i in done], self.model.contract)
        except EdgesegError as error:
            raise EdgesegError(f"model `{self.model.path}`: {error}") from None
        share = (time.perf_counter() - t0) * 1000 / len(done)
        by_item = {id(item): result for item, result in zip(done, results)}
        outcomes: list[Outcome | None] = []
        for item in items:
            result = by_item.get(id(item))
            if result is not None:
                item.ms["postprocess"] = share
            outcomes.append(None if result is None else Outcome(result))
        return outcomes

    def _finish(self, item: _Item, outcome: Outcome | None, smoothed: np.ndarray | None) -> np.ndarray | None:
        frame = item.frame
        if item.lead:
            if item.output is not None and outcome is None and self.smooth and self.sequential:
                smoothed = self._segmentation(item, smoothed)[1]
            return smoothed
        if item.kept is not None:
            self._write_kept(item)
            return smoothed
        if item.output is None:
            self.failed += 1
            reason = frame.error or "no output"
            # A lone image that fails is the run's one error (the CLI says so); in a folder it is one line of many.
            log.log(logging.DEBUG if self.source.kind == "image" else logging.WARNING, "skipped %s: %s",
                    frame.source or frame.name, reason)
            self.first_failure = self.first_failure or f"{frame.source or frame.name}: {reason}"
            if self.records is not None:
                self.records.write(frame, Outcome(None, reason, item.ms))
            return smoothed
        if post.is_nan_output(item.output):
            # The model, not the frame, is broken (fp16/INT8 overflow, a bad export): count it, say so once.
            self.nan += 1
            if self.nan == 1:
                log.warning("model `%s` gave NaN for %s: its mask is made up; frames with NaN are counted in "
                            "summary.json (frames_nan)", self.model.path, frame.name)
        t0 = time.perf_counter()
        if outcome is None:
            result, smoothed = self._segmentation(item, smoothed)
            outcome = Outcome(result)
        outcome.ms = item.ms
        if self.draws:
            outcome.picture = self._draw(frame.image, outcome.result)
        t1 = time.perf_counter()
        for sink in self.sinks:
            sink.write(frame, outcome)
        t2 = time.perf_counter()
        item.ms["postprocess"] = item.ms.get("postprocess", 0.0) + (t1 - t0) * 1000
        item.ms["write"] = (t2 - t1) * 1000
        self.done += 1
        for stage, ms in item.ms.items():
            self.stage_total[stage] += ms
        if self.records is not None:
            self.records.write(frame, outcome)
        if self.show and outcome.picture is not None:
            cv2.imshow("edgeseg", outcome.picture)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.stop.set()
        return smoothed

    def _segmentation(self, item: _Item, smoothed: np.ndarray | None) -> tuple[Any, np.ndarray | None]:
        model = self.model
        scores = model.channels_last(item.output)
        activated = False
        if self.smooth and self.sequential:
            probs = model.probabilities(scores)
            if smoothed is not None and smoothed.shape == probs.shape:
                # Exponential moving average in place: no new array per frame.
                smoothed *= self.smooth
                smoothed += (1.0 - self.smooth) * probs
            else:
                smoothed = probs.copy()
            scores, activated = smoothed, True
        return model.segmentation(scores, item.geometry, activated=activated), smoothed

    def _draw(self, image: np.ndarray, result: Any) -> np.ndarray:
        if isinstance(result, post.ReconstructionResult):
            return heatmap(image, result.error_map, alpha=self.options.alpha)
        return overlay(image, result.mask, self.palette, alpha=self.options.alpha)

    def _write_kept(self, item: _Item) -> None:
        """--resume: a frame the earlier run finished. Its files stay; a video overlay is drawn again from its
        mask, so overlay.mp4 stays whole; its record is written again in its place."""
        self.resumed += 1
        video = next((s for s in self.sinks if isinstance(s, OverlayVideoSink)), None)
        if video is not None and item.frame.ok and self.model.kind == "segmentation":
            mask = read_mask_png(self.out / "masks" / f"{item.frame.name}.png")
            video.write(item.frame, Outcome(None, picture=overlay(item.frame.image, mask, self.palette,
                                                                  alpha=self.options.alpha)))
        if self.records is not None:
            self.records.write(item.frame, Outcome(None, record=item.kept))

    # -- the report ---------------------------------------------------------------------------

    def summary(self, *, wall: float, batch: int) -> dict[str, Any]:
        done = max(self.done, 1)
        stage_ms = {stage: round(self.stage_total[stage] / done, 3) for stage in STAGES}
        outputs: dict[str, Any] = {"summary": "summary.json"}
        for sink in [self.records, *self.sinks]:
            if sink is not None:
                outputs.update(sink.outputs)
        source, model = self.source, self.model
        summary = {
            "source": display_path(str(source.spec)),
            "source_kind": source.kind,
            "model": str(model.path),
            "kind": model.kind,
            "provider": model.providers[0] if model.providers else "",
            "providers": list(model.providers),
            "engine": model.engine,
            "engine_choice": model.choice_reason,
            "precision": model_precision(model),
            "streams": model.streams,
            "frames": self.done,
            "frames_failed": self.failed,
            "frames_nan": self.nan,
            "first_failure": self.first_failure,
            "fps": round(self.done / wall, 3) if wall > 0 else 0.0,
            "infer_fps": round(self.done / self.infer_seconds, 3) if self.infer_seconds > 0 else 0.0,
            "wall_s": round(wall, 3),
            "batch": batch,
            "inflight": self.inflight,
            "smooth": self.smooth,
            "interrupted": self.stop.is_set() and self.error is None,
            "stage_ms": stage_ms,
            "outputs": outputs,
        }
        if self.options.resume:
            summary["frames_resumed"] = self.resumed
        if source.live is not None:
            stats = source.live.stats
            # grabbed = dropped + left_unread + frames + frames_failed: every frame the camera sent is accounted for.
            summary["stream"] = {"policy": source.live.policy, "grabbed": stats.grabbed, "dropped": stats.dropped,
                                 "left_unread": max(0, stats.grabbed - stats.dropped - self.taken),
                                 "reconnects": stats.reconnects, "gave_up": stats.gave_up,
                                 "failures": stats.failures[-10:]}
        return summary


class _LiveMeter:
    """The one-line live fps/latency display of a stream, refreshed once a second."""

    def __init__(self) -> None:
        self.last_line = self.window_start = time.perf_counter()
        self.window_frames = 0

    def tick(self, arrived: float, done: int) -> None:
        self.window_frames += 1
        now = time.perf_counter()
        if now - self.last_line >= 1.0:
            fps = self.window_frames / (now - self.window_start)
            sys.stderr.write(f"\r{fps:5.1f} fps  latency {(now - arrived) * 1000:6.0f} ms  frames {done}  ")
            sys.stderr.flush()
            self.last_line = self.window_start = now
            self.window_frames = 0


def stage_table(summary: dict[str, Any]) -> str:
    """The short per-stage table printed at the end of ``edgeseg segment``."""
    lines = [f"{'stage':<12}{'ms/frame':>10}"]
    lines += [f"{stage:<12}{ms:>10.2f}" for stage, ms in summary["stage_ms"].items()]
    lines.append(f"{'end to end':<12}{summary['fps']:>10.2f} fps  (inference alone {summary['infer_fps']:.2f} fps)")
    lines.append(f"{summary['frames']} frame(s) done, {summary['frames_failed']} failed; engine "
                 f"{summary.get('engine', 'onnxruntime')} ({summary['provider']}, {summary.get('precision', 'fp32')})")
    return "\n".join(lines)


def _put(q: queue.Queue, item: Any, stop: threading.Event | None) -> bool:
    # Blocking put that gives up when the run is stopping (stop=None: wait until there is room).
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if stop is not None and stop.is_set():
                return False


def _has_gui() -> bool:
    try:
        cv2.namedWindow("edgeseg")
        return True
    except cv2.error:
        log.warning("--show: this OpenCV build has no GUI (opencv-python-headless), so no window opens; "
                    "install opencv-python instead of opencv-python-headless to see frames live.")
        return False


def _progress_bar(total: int | None, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr)
