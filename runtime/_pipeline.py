"""``segment``: a source through a model into masks, overlays, ``frames.jsonl`` and ``summary.json``.

Three stages overlap, joined by bounded queues (back-pressure: a fast stage waits for a slow one,
memory stays flat): a decode thread reads and preprocesses frames, the calling thread runs
inference (in batches for finite sources), and a writer thread post-processes, draws and writes.
Each stage is one thread working in FIFO order, so outputs keep the input order. OpenCV and
onnxruntime release the GIL, so the stages really run at the same time.

SIGINT/SIGTERM set a stop flag: decoding stops, frames already decoded are finished and written,
the video is finalized and ``summary.json`` is written, so every output stays valid.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime.files import write_json_atomic
from edgeseg.runtime._frames import (Frame, VideoInfo, classify_source, display_path, frame_names, image_frames,
                                     open_source)
from edgeseg.runtime._model import Model
from edgeseg.runtime.postprocess import ReconstructionResult
from edgeseg.runtime._preprocess import Geometry, preprocess
from edgeseg.runtime._render import Palette, heatmap, overlay
from edgeseg.runtime._sinks import JsonlSink, VideoSink, write_image, write_mask_png
from edgeseg.runtime._streams import LiveSource, is_live

log = logging.getLogger("edgeseg.runtime")

OUTPUTS = ("masks", "overlay", "reconstruction", "jsonl")
DEFAULT_OUTPUTS = ("masks", "overlay", "reconstruction", "jsonl")
STAGES = ("decode", "preprocess", "infer", "postprocess", "write")
_END = object()


@dataclass
class _Item:
    frame: Frame
    tensor: np.ndarray | None = None
    geometry: Geometry | None = None
    output: np.ndarray | None = None
    arrived: float = 0.0
    ms: dict[str, float] = field(default_factory=dict)


def segment(source: str | os.PathLike | int, *, model: Model | str | os.PathLike, out: str | os.PathLike,
            provider: str = "auto", threads: int | None = None, engine: str = "onnxruntime",
            precision: str = "auto", batch: int = 1, stride: int = 1, start: int = 0,
            max_frames: int | None = None, recursive: bool = False, outputs: Collection[str] = DEFAULT_OUTPUTS,
            alpha: float = 0.5, smooth: float = 0.0, policy: str = "drop-old", reconnect: int = 5,
            codec: str = "auto", show: bool = False, progress: bool = False, queue_size: int = 8,
            stop: threading.Event | None = None) -> dict[str, Any]:
    """Run ``edgeseg segment``: every frame of ``source`` through ``model`` into ``out``; returns the summary.

    ``source``: an image, folder, glob, ``.txt`` list, video file, webcam index or stream URL.
    ``outputs``: which of masks, overlay (PNGs for images, ``overlay.mp4`` for videos and streams),
    reconstruction (autoencoders) and jsonl to write; ``summary.json`` is always written.
    ``batch``: frames per inference call (finite sources). ``smooth``: weight in [0, 1) of the
    previous frames' class probabilities (videos and streams; 0 is off). ``policy``/``reconnect``:
    live sources. ``stop``: set it to end the run early (SIGINT/SIGTERM set it too).
    ``provider``/``threads``/``engine``/``precision``: used when ``model`` is a path (a :class:`Model`
    keeps its own); see :class:`Model`.

    Example::

        summary = segment("clip.mp4", model="fcn8.onnx", out="runs/clip")
        print(summary["fps"], summary["outputs"]["video_codec"])
    """
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise EdgesegError(f"Unknown output(s) {', '.join(sorted(unknown))}: choose from {', '.join(OUTPUTS)}.")
    if batch < 1 or queue_size < 1:
        raise EdgesegError(f"`batch` and `queue_size` must be >= 1, got {batch} and {queue_size}.")
    if not 0.0 <= smooth < 1.0:
        raise EdgesegError(f"`smooth` must be in [0, 1) (0: off), got {smooth}.")
    if not 0.0 <= alpha <= 1.0:
        raise EdgesegError(f"`alpha` (overlay opacity) must be in [0, 1], got {alpha}.")
    if not isinstance(model, Model):
        model = Model(model, provider=provider, threads=threads, engine=engine, precision=precision)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".edgeseg-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise EdgesegError(f"Cannot write to output folder `{out}`: {error.strerror or error}. "
                           "Pass a writable --out folder.") from None

    stop = stop or threading.Event()
    live = is_live(source)
    if live:
        stream = LiveSource(source, policy=policy, reconnect=reconnect)
        stream.start()
        frames: Iterator[Frame] = itertools.islice(iter(stream), max_frames)
        kind, total, fps_in, batch = "stream", None, stream.fps, 1
    else:
        stream = None
        kind, paths = classify_source(source, recursive=recursive)
        if kind == "video":
            frames = open_source(source, stride=stride, start=start, max_frames=max_frames)
        else:  # the paths are listed already: don't walk the folder twice
            if stride < 1 or start < 0 or (max_frames is not None and max_frames < 0):
                raise EdgesegError(f"Frame selection needs stride >= 1, start >= 0, max_frames >= 0; "
                                   f"got {stride}, {start}, {max_frames}.")
            chosen = itertools.islice(paths, start, None, stride)
            root = source if kind == "folder" else None
            names = itertools.islice(frame_names(paths, root), start, None, stride)  # names of the whole source
            frames = itertools.islice(image_frames(chosen, root=root, names=names), max_frames)
        if kind == "video":
            info = VideoInfo.from_video_path(source)
            total = len(range(start, info.frame_count, stride)) if info.frame_count else None
            fps_in = info.fps / stride
        else:
            total, fps_in = len(range(start, len(paths), stride)), 0.0
        if total is not None and max_frames is not None:
            total = min(total, max_frames)
    sequential = kind in ("video", "stream")
    run = _Run(model=model, out=out, outputs=set(outputs), sequential=sequential, alpha=alpha, smooth=smooth,
               codec=codec, fps=fps_in, show=show, live=live, stop=stop)

    if model.kind in ("segmentation", "autoencoder") and (total is None or total > 2 * batch):
        # Pay the first-call costs (allocations; OpenVINO's per-shape kernels) before the clock starts, as
        # every bench runner does; a run of a frame or two is not worth the extra inference.
        try:
            model.warmup(batch)
        except Exception as error:  # a model that cannot run says so on the first real frame, with its name
            log.debug("warm-up failed: %s", error)
    restore_signals = _install_signal_handlers(stop)
    # The stages hand each other chunks of `batch` frames: one queue operation per batch, not per
    # frame, which is what lets small models (the CAE: thousands of images/s) run faster than a loop.
    decoded: queue.Queue = queue.Queue(maxsize=1 if live else 2)
    inferred: queue.Queue = queue.Queue(maxsize=1 if live else max(2, queue_size // batch))
    decoder = threading.Thread(target=run.decode, args=(frames, decoded, batch), name="edgeseg-decode", daemon=True)
    writer = threading.Thread(target=run.write_all, args=(inferred, total, progress), name="edgeseg-write", daemon=True)
    started = time.perf_counter()
    try:
        decoder.start()
        writer.start()
        run.infer_all(decoded, inferred, batch)
    finally:
        if run.error is not None:
            stop.set()
        if stream is not None:
            stream.close()
        decoder.join()
        _put(inferred, _END, None)
        writer.join()
        restore_signals()
    wall = time.perf_counter() - started
    if run.error is not None:
        raise run.error
    summary = run.summary(source=source, kind=kind, wall=wall, batch=batch, stream=stream)
    write_json_atomic(out / "summary.json", summary)
    return summary


class _Run:
    """The state of one ``segment`` call, shared by its three threads (each field has one writer)."""

    def __init__(self, *, model: Model, out: Path, outputs: set[str], sequential: bool, alpha: float, smooth: float,
                 codec: str, fps: float, show: bool, live: bool, stop: threading.Event) -> None:
        self.model, self.out, self.outputs = model, out, outputs
        self.sequential, self.alpha, self.smooth, self.live, self.stop = sequential, alpha, smooth, live, stop
        self.palette = Palette.from_rgb(model.contract.output.palette)
        self.codec, self.fps = codec, fps
        self.show = show and _has_gui()
        self.error: BaseException | None = None
        self.done = 0
        self.failed = 0
        self.stage_total = dict.fromkeys(STAGES, 0.0)
        self.video: VideoSink | None = None
        self.infer_seconds = 0.0
        self.infer_finished = threading.Event()
        self.made: set[Path] = set()  # output folders created so far (the writer thread's)

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
                item = _Item(frame, arrived=t1, ms={"decode": (t1 - t0) * 1000})
                if frame.ok:
                    try:
                        item.tensor, item.geometry = preprocess(frame.image, spec)
                    except BadInputError as error:
                        item.frame = Frame(frame.index, frame.name, None, frame.timestamp, frame.source, str(error))
                item.ms["preprocess"] = (time.perf_counter() - t1) * 1000
                chunk.append(item)
                if len(chunk) >= batch:
                    if not _put(decoded, chunk, self.stop):
                        break
                    chunk = []
            if chunk and not self.stop.is_set():  # the last, shorter batch
                _put(decoded, chunk, self.stop)
        except BaseException as error:  # an EdgesegError from a source stops the run, reported by segment()
            self.error = error
            self.stop.set()
        finally:
            # The end marker must arrive unless inference has already quit (then nobody reads it).
            _put(decoded, _END, self.infer_finished)

    # -- stage 2: inference (the calling thread) ----------------------------------------------

    def infer_all(self, decoded: queue.Queue, inferred: queue.Queue, batch: int) -> None:
        try:
            self._infer_all(decoded, inferred, batch)
        finally:
            self.infer_finished.set()

    def _infer_all(self, decoded: queue.Queue, inferred: queue.Queue, batch: int) -> None:
        while True:
            items = decoded.get()
            if items is _END:
                break
            good = [item for item in items if item.tensor is not None]
            if good:
                tensors = good[0].tensor if len(good) == 1 else np.concatenate([i.tensor for i in good])
                t0 = time.perf_counter()
                try:
                    outputs = self.model.run(tensors)
                except Exception as error:  # a failing run is a broken model or provider: stop, say why
                    self.error = EdgesegError(f"inference failed on `{good[0].frame.name}`: {error}")
                    self.stop.set()
                    break
                seconds = time.perf_counter() - t0
                self.infer_seconds += seconds
                for i, item in enumerate(good):
                    item.output = outputs[i]
                    item.ms["infer"] = seconds * 1000 / len(good)
            _put(inferred, items, None)

    # -- stage 3: post-process, draw, write (its own thread) ----------------------------------

    def write_all(self, inferred: queue.Queue, total: int | None, progress: bool) -> None:
        bar = _progress_bar(total, enabled=progress and not self.live)
        smoothed: np.ndarray | None = None
        last_line, window_start, window_frames, latency = time.perf_counter(), time.perf_counter(), 0, 0.0
        try:
            with JsonlSink(self.out / "frames.jsonl") if "jsonl" in self.outputs else _Null() as jsonl:
                while True:
                    items = inferred.get()
                    if items is _END:
                        break
                    if self.error is not None:
                        continue  # drain so the other stages can finish
                    for item in items:
                        smoothed = self._finish(item, jsonl, smoothed)
                        bar.update(1) if bar is not None else None
                        window_frames += 1
                        now = time.perf_counter()
                        latency = (now - item.arrived) * 1000
                        if progress and self.live and now - last_line >= 1.0:
                            fps = window_frames / (now - window_start)
                            sys.stderr.write(f"\r{fps:5.1f} fps  latency {latency:6.0f} ms  frames {self.done}  ")
                            sys.stderr.flush()
                            last_line, window_start, window_frames = now, now, 0
        except BaseException as error:
            self.error = self.error or error
            self.stop.set()
            while inferred.get() is not _END:  # keep draining so inference never blocks forever
                pass
        finally:
            if self.video is not None:
                self.video.close()
            if bar is not None:
                bar.close()
            if progress and self.live:
                sys.stderr.write("\n")
            if self.show:
                cv2.destroyAllWindows()

    def _finish(self, item: _Item, jsonl: Any, smoothed: np.ndarray | None) -> np.ndarray | None:
        # "source": which file an output name belongs to (names drop suffixes; odd bytes are escaped).
        frame, record = item.frame, {"index": item.frame.index, "name": item.frame.name, "source": item.frame.source}
        if item.output is None:
            self.failed += 1
            reason = frame.error or "no output"
            log.warning("skipped %s: %s", frame.source or frame.name, reason)
            jsonl.write({**record, "ok": False, "error": reason, "class_fraction": {}, "ms": _round(item.ms)})
            return smoothed
        model = self.model
        t0 = time.perf_counter()
        if model.kind == "autoencoder":
            result = model.postprocess(item.output, item.geometry, item.tensor[0])
            picture = heatmap(frame.image, result.error_map, alpha=self.alpha) if "overlay" in self.outputs else None
            extra = {"score": round(result.score, 6)}
        else:
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
            result = model.segmentation(scores, item.geometry, activated=activated)
            picture = (overlay(frame.image, result.mask, self.palette, alpha=self.alpha)
                       if "overlay" in self.outputs or self.show else None)
            extra = {}
        t1 = time.perf_counter()
        self._write(frame, result, picture)
        t2 = time.perf_counter()
        item.ms["postprocess"], item.ms["write"] = (t1 - t0) * 1000, (t2 - t1) * 1000
        self.done += 1
        for stage, ms in item.ms.items():
            self.stage_total[stage] += ms
        fraction = getattr(result, "class_fraction", {})
        jsonl.write({**record, "ok": True, "error": None, "class_fraction": fraction, **extra, "ms": _round(item.ms)})
        if self.show and picture is not None:
            cv2.imshow("edgeseg", picture)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.stop.set()
        return smoothed

    def _write(self, frame: Frame, result: Any, picture: np.ndarray | None) -> None:
        name = frame.name
        if isinstance(result, ReconstructionResult):
            if "reconstruction" in self.outputs:
                _imwrite(self.out / "reconstruction" / f"{name}.png", result.reconstruction, self.made)
        elif "masks" in self.outputs:
            path = self.out / "masks" / f"{name}.png"
            _make_parent(path, self.made)
            try:
                write_mask_png(path, result.mask, self.palette.rgb)
            except OSError as error:
                raise EdgesegError(f"Cannot write `{path}`: {error.strerror or error}.") from None
        if picture is None or "overlay" not in self.outputs:
            return
        if self.sequential:
            if self.video is None:
                self.video = VideoSink(self.out / "overlay.mp4", fps=self.fps or 25.0, codec=self.codec)
            self.video.write(picture)
        else:
            _imwrite(self.out / "overlay" / f"{name}.png", picture, self.made)

    # -- the report ---------------------------------------------------------------------------

    def summary(self, *, source: Any, kind: str, wall: float, batch: int, stream: LiveSource | None) -> dict[str, Any]:
        done = max(self.done, 1)
        stage_ms = {stage: round(self.stage_total[stage] / done, 3) for stage in STAGES}
        outputs: dict[str, Any] = {"summary": "summary.json"}
        if "jsonl" in self.outputs:
            outputs["jsonl"] = "frames.jsonl"
        if self.model.kind == "segmentation" and "masks" in self.outputs:
            outputs["masks"] = "masks/"
        if self.model.kind == "autoencoder" and "reconstruction" in self.outputs:
            outputs["reconstruction"] = "reconstruction/"
        if self.video is not None:
            outputs.update(video="overlay.mp4", video_codec=self.video.codec, video_frames=self.video.frames)
        elif "overlay" in self.outputs and not self.sequential:
            outputs["overlay"] = "overlay/"
        summary = {
            "source": display_path(str(source)),
            "source_kind": kind,
            "model": str(self.model.path),
            "kind": self.model.kind,
            "provider": self.model.providers[0] if self.model.providers else "",
            "providers": list(self.model.providers),
            "engine": self.model.engine,
            "precision": self.model.precision,
            "streams": self.model.streams,
            "frames": self.done,
            "frames_failed": self.failed,
            "fps": round(self.done / wall, 3) if wall > 0 else 0.0,
            "infer_fps": round(self.done / self.infer_seconds, 3) if self.infer_seconds > 0 else 0.0,
            "wall_s": round(wall, 3),
            "batch": batch,
            "smooth": self.smooth,
            "interrupted": self.stop.is_set() and self.error is None,
            "stage_ms": stage_ms,
            "outputs": outputs,
        }
        if stream is not None:
            stats = stream.stats
            summary["stream"] = {"policy": stream.policy, "grabbed": stats.grabbed, "dropped": stats.dropped,
                                 "reconnects": stats.reconnects, "gave_up": stats.gave_up,
                                 "failures": stats.failures[-10:]}
        return summary


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


def _install_signal_handlers(stop: threading.Event):
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: the user really wants out now
        log.warning("%s: finishing the frames in flight and closing the outputs (again to abort)",
                    signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


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


def _imwrite(path: Path, image: np.ndarray, made: set[Path]) -> None:
    _make_parent(path, made)
    try:
        write_image(path, image)  # bytes through imencode: OpenCV crashes on non-UTF-8 paths
    except OSError as error:
        raise EdgesegError(f"Cannot write `{display_path(path)}`: {error.strerror or error}.") from None


def _make_parent(path: Path, made: set[Path]) -> None:
    # One mkdir per folder and run, not one per image (a syscall per 28x28 digit showed in the profile).
    if path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        made.add(path.parent)


def _round(ms: dict[str, float]) -> dict[str, float]:
    return {stage: round(value, 3) for stage, value in ms.items()}


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def write(self, record: Any) -> None:
        pass
