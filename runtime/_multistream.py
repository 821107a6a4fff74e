"""Several streams in one process: a reader per stream, one inference batch across streams, a writer per stream.

Each live source keeps only its newest frame (:class:`LiveSource`, ``drop-old``); a file (video,
folder) hands out its next frame. The inference loop (the calling thread) takes the waiting frame
of every stream that has one and runs them as **one batch** (cross-stream batching: one call for N
cameras instead of N), then hands each result to its stream's writer thread, which post-processes,
writes ``DIR/<name>/`` (masks, overlay video, frames.jsonl), feeds the live page and calls the
app's callback. A writer's queue is short, so a slow disk slows inference, and live sources then
drop old frames instead of queueing them: latency stays bounded and memory flat.

Supervision lives in :class:`LiveSource`: a stream silent for ``stall_timeout`` s is reconnected
with backoff; one that gives up ends alone (the others go on) and marks the run failed.
SIGINT/SIGTERM set the stop flag: nothing waits on the network (:meth:`LiveSource.close` waits at
most 1 s), the frames in flight (a batch and a few per writer) are written, videos are finalized
and ``summary.json`` is written.

Counters balance per live stream: ``grabbed - dropped == frames`` (``dropped`` includes frames
grabbed but not taken when the run stopped).
"""

from __future__ import annotations

import logging
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime.files import write_json_atomic
from edgeseg.runtime.postprocess import is_nan_output
from edgeseg.runtime._frames import Frame, VideoInfo, classify_source, open_source
from edgeseg.runtime._outdir import prepare_out
from edgeseg.runtime._model import Model
from edgeseg.runtime._signals import stop_on_signals
from edgeseg.runtime._preprocess import Geometry, preprocess
from edgeseg.runtime._rotate import RotatingOutputs
from edgeseg.runtime._streams import POLICIES, LiveSource, _safe_name, is_live

log = logging.getLogger("edgeseg.runtime")

OUTPUTS = ("masks", "overlay", "jsonl")
_LATENCY_WINDOW = 4096  # latencies kept per stream for p50/p95: the recent ones, so memory stays flat


@dataclass(frozen=True)
class StreamSpec:
    """One source of a multi-stream run and the name its outputs go under (``DIR/<name>/``)."""

    name: str
    source: str


@dataclass(frozen=True)
class StreamOptions:
    """How every stream of a run is read and written.

    ``rotate``: minutes per overlay/frames.jsonl segment (None: one file each). ``stall_timeout``:
    seconds without a frame before a live stream is reconnected. ``max_frames``: per stream.
    ``smooth``: weight in [0, 1) of earlier frames' class probabilities, per stream (videos and live
    streams of segmentation models; reset on reconnect; 0: off). ``policy``: live sources keep only
    their newest frame (``drop-old``) or queue every frame, up to 32 per stream (``queue-all``).
    ``overwrite``: replace the run an ``out`` folder holds (else such a folder is refused).
    """

    outputs: tuple[str, ...] = OUTPUTS
    alpha: float = 0.5
    codec: str = "auto"
    reconnect: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    open_timeout: float = 5.0
    stall_timeout: float = 5.0
    rotate: float | None = None
    max_frames: int | None = None
    smooth: float = 0.0
    policy: str = "drop-old"
    overwrite: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.outputs) - set(OUTPUTS)
        if unknown:
            raise EdgesegError(f"Unknown output(s) {', '.join(sorted(unknown))} for streams: choose from "
                               f"{', '.join(OUTPUTS)}.")
        if self.rotate is not None and self.rotate <= 0:
            raise EdgesegError(f"--rotate must be > 0 minutes, got {self.rotate}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise EdgesegError(f"`alpha` (overlay opacity) must be in [0, 1], got {self.alpha}.")
        if not 0.0 <= self.smooth < 1.0:
            raise EdgesegError(f"--smooth must be in [0, 1) (0: off), got {self.smooth}.")
        if self.policy not in POLICIES:
            raise EdgesegError(f"Unknown live policy {self.policy!r}: expected one of {', '.join(POLICIES)}.")


@dataclass(frozen=True)
class StreamResult:
    """What the callback of :func:`run_streams` receives for each finished frame (in its stream's writer thread)."""

    stream: str
    frame: Frame
    result: Any  # SegmentationResult or ReconstructionResult; None when the frame failed
    latency_ms: float  # capture (or file read) to result
    picture: np.ndarray | None  # the overlay, when overlays are drawn


def parse_sources(sources: Sequence[str | os.PathLike | int]) -> list[StreamSpec]:
    """Sources as typed (``url``, ``name=url``, files, ``.txt`` lists of those) -> named specs, names unique.

    Example::

        parse_sources(["front=rtsp://cam1/s", "clip.mp4"])  # [StreamSpec("front", ...), StreamSpec("clip", ...)]
    """
    specs: list[StreamSpec] = []
    for source in sources:
        text = str(source)
        if text.lower().endswith(".txt") and Path(text).is_file() and is_stream_list(text):
            base = Path(text).parent
            for line in _list_lines(text):
                name, value = _split_name(line)
                if not is_live(value) and not Path(value).is_absolute():
                    value = str(base / value)
                specs.append(StreamSpec(name or _default_name(value), value))
        else:
            name, value = _split_name(text)
            specs.append(StreamSpec(name or _default_name(value), value))
    return _unique(specs)


def is_stream_list(path: str | os.PathLike) -> bool:
    """True for a ``.txt`` file naming live sources or ``name=source`` lines (else it is a list of images)."""
    return any(is_live(_split_name(line)[1]) or _split_name(line)[0] for line in _list_lines(path))


def run_streams(sources: Sequence[str | os.PathLike | int | StreamSpec], *, model: Model | str | os.PathLike,
                out: str | os.PathLike | None = None, options: StreamOptions = StreamOptions(),
                on_result: Callable[[StreamResult], None] | None = None, stop: threading.Event | None = None,
                serve: int | None = None, host: str = "127.0.0.1") -> dict[str, Any]:
    """Run several sources through one model, batching across streams; returns the summary.

    ``sources``: URLs, webcam indexes, files, ``name=source`` strings or :class:`StreamSpec`.
    ``out``: outputs under ``out/<name>/`` and ``out/summary.json`` (None: write nothing, use
    ``on_result``). ``on_result`` is called for every frame in that stream's writer thread; keep it
    short. ``serve``: a port for the live page, ``/metrics`` and ``/health`` (0: any free port; the
    summary says which). ``stop``: set it to end the run (SIGINT/SIGTERM set it too).

    Example::

        def show(r):
            print(r.stream, r.frame.index, r.result.class_fraction, f"{r.latency_ms:.0f} ms")

        summary = run_streams(["door=rtsp://cam1/s", "yard=rtsp://cam2/s"], model="fcn8.onnx",
                              out="runs/site", on_result=show, options=StreamOptions(rotate=60))
        print(summary["failed"], summary["streams"]["door"]["latency_ms"])
    """
    specs = _unique([spec for source in sources
                     for spec in ([source] if isinstance(source, StreamSpec) else parse_sources([source]))])
    if not specs:
        raise EdgesegError("no sources given: pass one or more stream URLs, files or a .txt list of them.")
    if not isinstance(model, Model):
        model = Model(model)
    model.check_frames()
    if options.smooth and model.kind == "autoencoder":
        raise EdgesegError(f"--smooth averages class probabilities of segmentation models; `{model.path}` is an "
                           "autoencoder (no classes): drop --smooth.")
    root = Path(out) if out is not None else None
    if root is not None:
        prepare_out(root, previous_run=_previous_run, overwrite=options.overwrite, can_resume=False)
    stop = stop or threading.Event()
    run = _MultiRun(specs, model=model, root=root, options=options, on_result=on_result, stop=stop)
    server = None
    if serve is not None:
        from edgeseg.runtime._serve import LiveServer

        server = LiveServer(run, host=host, port=serve).start()
        log.warning("live view on %s (metrics: /metrics, health: /health)", server.url)
    restore = stop_on_signals(stop)
    try:
        run.loop()
    finally:
        restore()
        run.close()
        if server is not None:
            server.close()
    summary = run.summary(server_url=server.url if server is not None else None)
    if root is not None:
        write_json_atomic(root / "summary.json", summary)
    return summary


# -- one stream: where its frames come from, and where its results go --------------------------------


class _Stream:
    """A source (live or file) plus its writer thread and counters."""

    def __init__(self, spec: StreamSpec, *, run: _MultiRun, wake: threading.Event) -> None:
        self.spec, self.name, self.run = spec, spec.name, run
        self.options = run.options
        self.live: LiveSource | None = None
        self.files: Iterator[Frame] | None = None
        self.kind = "stream"
        self.fps = 0.0
        if is_live(spec.source):
            o = self.options
            self.live = LiveSource(spec.source, name=spec.name, policy=o.policy, reconnect=o.reconnect, backoff=o.backoff,
                                   max_backoff=o.max_backoff, open_timeout=o.open_timeout,
                                   stall_timeout=o.stall_timeout, wake=wake)
        else:
            self.kind, _ = classify_source(spec.source)
            self.files = open_source(spec.source, max_frames=self.options.max_frames)
            if self.kind == "video":
                self.fps = VideoInfo.from_video_path(spec.source).fps
        self.taken = 0
        self.done = 0
        self.failed = 0
        self.nan = 0  # frames whose model output held a NaN (their mask is made up)
        self.smoothed: np.ndarray | None = None  # the writer thread's running class probabilities (--smooth)
        self.smoothed_epoch = 0  # reconnects when `smoothed` started: a new connection starts afresh
        self.error: str | None = None
        self.exhausted = False
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.started = time.monotonic()
        self.last_result = 0.0
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        folder = run.root / spec.name if run.root is not None else None
        self.outputs = RotatingOutputs(folder, outputs=self.options.outputs, rotate=self.options.rotate,
                                       codec=self.options.codec)
        self.thread = threading.Thread(target=self._write_all, name=f"edgeseg-write-{spec.name}", daemon=True)

    def start(self) -> None:
        if self.live is not None:
            self.live.begin()
        self.thread.start()

    @property
    def state(self) -> str:
        if self.error is not None:
            return "failed"
        if self.live is not None:
            return "done" if self.exhausted else self.live.state
        return "done" if self.exhausted else "reading"

    @property
    def finished(self) -> bool:
        """Nothing more will come from this source."""
        if self.error is not None or self.exhausted:
            return True
        return self.live is not None and self.live.finished

    def take(self) -> tuple[Frame, float] | None:
        """The frame to infer next and when it was captured (monotonic), or None."""
        if self.finished:
            return None
        if self.options.max_frames is not None and self.taken >= self.options.max_frames:
            self.exhausted = True
            if self.live is not None:
                self.live.close(timeout=0)
            return None
        if self.live is not None:
            frame = self.live.take()
            if frame is None:
                return None
            self.fps = self.live.fps
            self.taken += 1
            return frame, self.live.started + frame.timestamp
        try:
            frame = next(self.files)
        except StopIteration:
            self.exhausted = True
            return None
        except EdgesegError as error:
            self.error = str(error)
            log.warning("%s: %s", self.name, error)
            return None
        self.taken += 1
        return frame, time.monotonic()

    def close_source(self) -> None:
        if self.live is not None:
            self.live.close(timeout=0.5)  # a grabber stuck in FFmpeg is left behind: stop within 1 s overall

    # -- the writer thread ------------------------------------------------------------------

    def _write_all(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                if self.error is None:
                    try:
                        self._finish(*item)
                    except Exception as error:  # a disk or callback failure ends this stream, not the run
                        self.error = f"{type(error).__name__}: {error}"
                        log.exception("%s: stream stopped", self.name)
        finally:
            self.outputs.close()

    def _finish(self, frame: Frame, captured: float, output: np.ndarray | None, geometry: Geometry | None,
                tensor: np.ndarray | None) -> None:
        run, record = self.run, {"index": frame.index, "name": frame.name}
        if output is None:
            self.failed += 1
            self.outputs.write({**record, "ok": False, "error": frame.error or "no output"}, None, None, fps=self.fps)
            return
        nan = is_nan_output(output)
        result = self._postprocess(output, geometry, tensor, nan=nan)
        picture = run.draw(frame, result) if run.wants_picture else None
        latency = (time.monotonic() - captured) * 1000
        self.latencies.append(latency)
        extra = {"score": round(result.score, 6)} if hasattr(result, "score") else \
            {"class_fraction": getattr(result, "class_fraction", {})}
        if nan:
            extra["nan"] = True
        self.outputs.write({**record, "ok": True, "latency_ms": round(latency, 3), **extra}, picture,
                           getattr(result, "mask", None), palette=run.palette.rgb, fps=self.fps)
        self.done += 1
        self.last_result = time.monotonic()
        if run.board is not None and picture is not None:
            run.board.publish(self.name, picture)
        if run.on_result is not None:
            run.on_result(StreamResult(self.name, frame, result, latency, picture))

    def _postprocess(self, output: np.ndarray, geometry: Geometry, tensor: np.ndarray, *, nan: bool) -> Any:
        model = self.run.model
        if nan:
            self.nan += 1
            if self.nan == 1:
                log.warning("%s: the model output holds NaN (masks of such frames are made up; counted in "
                            "frames_nan): the model is broken (fp16/INT8 overflow, a bad export), not the stream",
                            self.name)
        if not self.options.smooth or model.kind == "autoencoder" or self.kind not in ("stream", "video") or nan:
            # A NaN frame is kept out of the running average: it would poison every frame after it.
            return model.postprocess(output, geometry, tensor[0])
        probs = model.probabilities(model.channels_last(output))
        epoch = self.live.stats.reconnects if self.live is not None else 0
        if self.smoothed is not None and self.smoothed.shape == probs.shape and epoch == self.smoothed_epoch:
            # Exponential moving average in place: no new array per frame.
            self.smoothed *= self.options.smooth
            self.smoothed += (1.0 - self.options.smooth) * probs
        else:
            self.smoothed, self.smoothed_epoch = probs.copy(), epoch
        return model.segmentation(self.smoothed, geometry, activated=True)

    def report(self, wall: float) -> dict[str, Any]:
        lat = np.array(self.latencies) if self.latencies else np.zeros(1)
        report: dict[str, Any] = {
            "source": self.spec.source, "kind": self.kind, "state": self.state,
            "frames": self.done, "frames_failed": self.failed, "frames_nan": self.nan,
            "fps": round(self.done / wall, 3) if wall > 0 else 0.0,
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 3),
                           "p95": round(float(np.percentile(lat, 95)), 3)},
            "error": self.error, "outputs": self.outputs.listing(),
        }
        if self.live is not None:
            stats = self.live.stats
            report.update(grabbed=stats.grabbed, dropped=stats.dropped + stats.unread, reconnects=stats.reconnects,
                          stalls=stats.stalls, gave_up=stats.gave_up, failures=stats.failures[-5:])
        return report


# -- the run: one inference loop over every stream ---------------------------------------------------


class _MultiRun:
    def __init__(self, specs: list[StreamSpec], *, model: Model, root: Path | None, options: StreamOptions,
                 on_result: Callable[[StreamResult], None] | None, stop: threading.Event) -> None:
        from edgeseg.runtime._render import Palette

        self.model, self.root, self.options, self.on_result, self.stop = model, root, options, on_result, stop
        self.palette = Palette.from_rgb(model.contract.output.palette)
        self.board = None  # set by the live server
        self.wake = threading.Event()
        self.streams = [_Stream(spec, run=self, wake=self.wake) for spec in specs]
        self.batches = 0
        self.batched_frames = 0
        self.infer_seconds = 0.0
        self.started = time.monotonic()
        self.ended: float | None = None
        self.error: str | None = None

    @property
    def wants_picture(self) -> bool:
        return "overlay" in self.options.outputs or self.board is not None or self.on_result is not None

    def draw(self, frame: Frame, result: Any) -> np.ndarray:
        from edgeseg.runtime._render import heatmap, overlay

        if hasattr(result, "error_map"):
            return heatmap(frame.image, result.error_map, alpha=self.options.alpha)
        return overlay(frame.image, result.mask, self.palette, alpha=self.options.alpha)

    def loop(self) -> None:
        self.started = time.monotonic()
        for stream in self.streams:
            stream.start()
        spec = self.model.contract.input
        while not self.stop.is_set():
            self.wake.clear()
            taken = [(stream, got) for stream in self.streams if (got := stream.take()) is not None]
            if not taken:
                if all(stream.finished for stream in self.streams):
                    break
                self.wake.wait(0.05)  # a live source sets it on each new frame
                continue
            self._infer([(stream, frame, captured, *self._prepare(frame, spec)) for stream, (frame, captured) in taken])
        self.ended = time.monotonic()

    @staticmethod
    def _prepare(frame: Frame, spec: Any) -> tuple[Frame, np.ndarray | None, Geometry | None]:
        if not frame.ok:
            return frame, None, None
        try:
            tensor, geometry = preprocess(frame.image, spec)
        except BadInputError as error:
            return Frame(frame.index, frame.name, None, frame.timestamp, frame.source, str(error)), None, None
        return frame, tensor, geometry

    def _infer(self, items: list[tuple]) -> None:
        good = [item for item in items if item[4] is not None]
        outputs: list[np.ndarray | None] = [None] * len(items)
        if good:
            batch = np.concatenate([item[4] for item in good])
            t0 = time.perf_counter()
            try:
                result = self.model.run(batch)
            except Exception as error:  # a broken model or provider: every stream would fail the same way
                self.error = f"inference failed: {error}"
                log.error("%s", self.error)
                self.stop.set()
                return
            self.infer_seconds += time.perf_counter() - t0
            self.batches += 1
            self.batched_frames += len(good)
            rows = iter(range(len(good)))
            outputs = [result[next(rows)] if item[4] is not None else None for item in items]
        for (stream, _frame, captured, frame, tensor, geometry), output in zip(items, outputs):
            # Blocking put: the writer always drains, and waiting here is the back-pressure on inference.
            stream.queue.put((frame, captured, output, geometry, tensor))

    def close(self) -> None:
        """Stop every source (at most 1 s each, in parallel), let the writers finish and finalize their files."""
        if self.ended is None:
            self.ended = time.monotonic()
        closers = [threading.Thread(target=stream.close_source, daemon=True) for stream in self.streams]
        for closer in closers:
            closer.start()
        for stream in self.streams:
            if stream.thread.is_alive():
                stream.queue.put(None)
        for closer in closers:
            closer.join(timeout=1.5)
        for stream in self.streams:
            stream.thread.join()

    def summary(self, *, server_url: str | None) -> dict[str, Any]:
        wall = (self.ended or time.monotonic()) - self.started
        streams = {stream.name: stream.report(wall) for stream in self.streams}
        failed = sorted(name for name, report in streams.items() if report["state"] in ("failed", "gave_up"))
        return {
            "model": str(self.model.path), "kind": self.model.kind, "engine": self.model.engine,
            "provider": self.model.providers[0] if self.model.providers else "",
            "streams": streams,
            "frames": sum(report["frames"] for report in streams.values()),
            "frames_nan": sum(report["frames_nan"] for report in streams.values()),
            "wall_s": round(wall, 3),
            "batches": self.batches,
            "mean_batch": round(self.batched_frames / self.batches, 3) if self.batches else 0.0,
            "infer_fps": round(self.batched_frames / self.infer_seconds, 3) if self.infer_seconds else 0.0,
            "interrupted": self.stop.is_set() and self.error is None,
            "error": self.error,
            "failed": failed,
            "serve": server_url,
        }


# -- helpers ---------------------------------------------------------------------------------------


def _list_lines(path: str | os.PathLike) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _split_name(text: str) -> tuple[str | None, str]:
    # "name=url": the name is a plain word before the first "=" (a URL's query may hold "=" too).
    head, sep, tail = text.partition("=")
    if sep and head and all(ch.isalnum() or ch in "-_" for ch in head) and "://" not in head:
        return head, tail
    return None, text


def _default_name(source: str) -> str:
    if is_live(source):
        return f"camera{source}" if str(source).isdigit() else _safe_name(str(source))
    return Path(source).stem or "source"


def _unique(specs: list[StreamSpec]) -> list[StreamSpec]:
    seen: dict[str, int] = {}
    unique = []
    for spec in specs:
        count = seen.get(spec.name, 0)
        seen[spec.name] = count + 1
        unique.append(spec if count == 0 else StreamSpec(f"{spec.name}-{count + 1}", spec.source))
    return unique


def _previous_run(root: Path) -> list[Path]:
    """What an earlier multi-stream run in ``root`` wrote: its summary.json and each of its streams' outputs."""
    summary = root / "summary.json"
    if not summary.exists():
        return []
    try:
        earlier = list(json.loads(summary.read_text()).get("streams", {}))
    except (OSError, ValueError, AttributeError):
        earlier = []
    paths = [summary]
    for name in earlier:
        folder = root / name
        if folder.is_dir() and folder.resolve().parent == root.resolve():
            paths += [*folder.glob("frames*.jsonl"), *folder.glob("overlay*.mp4"), folder / "masks"]
    return paths
