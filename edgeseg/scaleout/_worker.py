"""What one worker does with one unit: decode with the runtime's readers, infer, write, mark done.

No Ray here: this module runs the same in a Ray actor and in a plain process (the tests call it
both ways). Every file a unit writes is written atomically under its final name, and the unit's
marker (``.scaleout/<key>.json``) is written last, so a unit is complete exactly when its marker
exists; a retried unit rewrites the same bytes under the same names, and nothing is appended.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.runtime import (BadInputError, EdgesegError, Frame, Model, Palette, ReconstructionResult, VideoSink,
                             heatmap, image_frames, overlay, preprocess, video_frames, write_bytes_atomic,
                             write_json_atomic, write_mask_png, write_text_atomic)
from edgeseg.scaleout._plan import Unit

log = logging.getLogger("edgeseg.scaleout")

STAGES = ("decode", "preprocess", "infer", "postprocess", "write")
WORK_DIR = ".scaleout"  # per-unit parts and markers under each source's --out folder


@dataclass(frozen=True)
class WriteOptions:
    """The output knobs of ``edgeseg segment`` that a worker needs (they mean what they mean without Ray)."""

    outputs: frozenset[str] = frozenset({"masks", "overlay", "reconstruction", "jsonl"})
    alpha: float = 0.5
    smooth: float = 0.0
    codec: str = "auto"
    batch: int = 1


@dataclass
class _State:
    smoothed: np.ndarray | None = None
    done: int = 0
    failed: int = 0
    stage_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    records: list[str] = field(default_factory=list)
    video: VideoSink | None = None


def marker_path(unit: Unit) -> Path:
    return Path(unit.out) / WORK_DIR / f"{unit.key}.json"


def part_paths(unit: Unit) -> tuple[Path, Path]:
    """The unit's ``frames.jsonl`` lines and its overlay video part."""
    work = Path(unit.out) / WORK_DIR
    return work / f"{unit.key}.jsonl", work / f"{unit.key}.mp4"


def is_complete(unit: Unit, options: WriteOptions) -> bool:
    """True when the unit's marker exists and names parts that exist (what ``--resume`` skips)."""
    marker = marker_path(unit)
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    lines, video = part_paths(unit)
    if "jsonl" in options.outputs and not lines.is_file():
        return False
    if done.get("video_frames") and not video.is_file():
        return False
    return done.get("key") == unit.key and done.get("frames_expected") == unit.frames


def run_unit(unit: Unit, model: Model, options: WriteOptions, *, worker: str = "") -> dict[str, Any]:
    """Process one unit into its outputs and return its marker (also written to :func:`marker_path`).

    Example::

        marker = run_unit(units[0], Model("fcn8.onnx", threads=2), WriteOptions())
    """
    out = Path(unit.out)
    (out / WORK_DIR).mkdir(parents=True, exist_ok=True)
    lines_path, video_path = part_paths(unit)
    temporary_video = video_path.with_name(f"{unit.key}.tmp{os.getpid()}.mp4")
    state, palette = _State(), Palette.from_rgb(model.contract.output.palette)
    started = time.perf_counter()
    try:
        inferred = (_infer(chunk, model) for chunk in _chunks(_ahead(_frames(unit), 2 * options.batch + 2),
                                                               options.batch))
        # Writing (PNG deflate, overlay drawing, the encoder pipe) runs one batch behind inference,
        # in this thread, while the next batch is inferred in another: the runtime's stages, in one actor.
        for items in _ahead(inferred, 2):
            for item in items:
                _finish(*item, unit, model, options, palette, state, temporary_video)
    finally:
        if state.video is not None:
            state.video.close()
    seconds = time.perf_counter() - started
    marker = {"key": unit.key, "frames_expected": unit.frames, "frames": state.done, "frames_failed": state.failed,
              "seconds": round(seconds, 4), "worker": worker, "pid": os.getpid(),
              "stage_ms": {k: round(v, 3) for k, v in state.stage_ms.items()},
              "video_frames": state.video.frames if state.video is not None else 0,
              "video_codec": state.video.codec if state.video is not None else None}
    if state.video is not None:
        os.replace(temporary_video, video_path)
    if "jsonl" in options.outputs:
        write_text_atomic(lines_path, "".join(state.records))
    write_json_atomic(marker_path(unit), marker)
    return marker


def _frames(unit: Unit) -> Iterator[tuple[Frame, bool, float]]:
    """(frame, warm, decode seconds): warm frames only rebuild the --smooth state."""
    if unit.kind == "images":
        frames = image_frames(unit.paths, root=unit.root)
        offset = unit.index
    else:
        frames = video_frames(unit.video, stride=unit.stride, start=unit.first - unit.warm * unit.stride,
                              max_frames=unit.count + unit.warm, seek=True)
        offset = 0
    position = 0
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(frames)
        except StopIteration:
            return
        seconds = time.perf_counter() - t0
        if offset:  # an image's index is its place in the whole source, as without Ray
            frame = Frame(frame.index + offset, frame.name, frame.image, frame.timestamp, frame.source, frame.error)
        yield frame, position < unit.warm, seconds
        position += 1


def _ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run the generator ``items`` in a thread, ``depth`` items ahead. OpenCV and onnxruntime release
    the GIL, so decoding, inference and writing overlap as in the runtime's three-stage pipeline
    (measured without this: a worker spent ~40% of each frame decoding, in series with the rest)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done, quit = object(), threading.Event()

    def put(item: Any) -> bool:
        while not quit.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the reader stopped early (its unit failed): stop decoding

    def fill() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put((done, None))
        except BaseException as error:  # an EdgesegError from the reader fails the unit, in this thread
            put((done, error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a nested _ahead ends its own thread too
                close()

    thread = threading.Thread(target=fill, name="edgeseg-decode-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item[0] is done:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        quit.set()
        thread.join(timeout=5)


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _infer(chunk: list[tuple[Frame, bool, float]], model: Model) -> list[list[Any]]:
    items = []
    for frame, warm, decode_s in chunk:
        ms = {"decode": decode_s * 1000}
        t0 = time.perf_counter()
        tensor = geometry = None
        if frame.ok:
            try:
                tensor, geometry = preprocess(frame.image, model.contract.input)
            except BadInputError as error:
                frame = Frame(frame.index, frame.name, None, frame.timestamp, frame.source, str(error))
        ms["preprocess"] = (time.perf_counter() - t0) * 1000
        items.append([frame, warm, tensor, geometry, None, ms])
    good = [item for item in items if item[2] is not None]
    if good:
        tensors = good[0][2] if len(good) == 1 else np.concatenate([item[2] for item in good])
        t0 = time.perf_counter()
        try:
            outputs = model.run(tensors)
        except Exception as error:  # a broken model or provider: the job stops, as without Ray
            raise EdgesegError(f"inference failed on `{good[0][0].name}`: {error}") from None
        seconds = time.perf_counter() - t0
        for i, item in enumerate(good):
            item[4] = outputs[i]
            item[5]["infer"] = seconds * 1000 / len(good)
    return items


def _finish(frame: Frame, warm: bool, tensor: np.ndarray | None, geometry: Any, output: np.ndarray | None,
            ms: dict[str, float], unit: Unit, model: Model, options: WriteOptions, palette: Palette, state: _State,
            temporary_video: Path) -> None:
    # The same steps, in the same float order, as the runtime's writer stage: same mask bytes.
    record = {"index": frame.index, "name": frame.name}
    if output is None:
        if not warm:
            state.failed += 1
            reason = frame.error or "no output"
            log.warning("skipped %s: %s", frame.source or frame.name, reason)
            state.records.append(_line({**record, "ok": False, "error": reason, "class_fraction": {}, "ms": ms}))
        return
    t0 = time.perf_counter()
    draw = "overlay" in options.outputs
    if model.kind == "autoencoder":
        if warm:
            return
        result = model.postprocess(output, geometry, tensor[0])
        picture = heatmap(frame.image, result.error_map, alpha=options.alpha) if draw else None
        extra = {"score": round(result.score, 6)}
    else:
        scores, activated = model.channels_last(output), False
        if options.smooth and unit.kind == "video":
            probs = model.probabilities(scores)
            if state.smoothed is not None and state.smoothed.shape == probs.shape:
                state.smoothed *= options.smooth
                state.smoothed += (1.0 - options.smooth) * probs
            else:
                state.smoothed = probs.copy()
            scores, activated = state.smoothed, True
        if warm:
            return
        result = model.segmentation(scores, geometry, activated=activated)
        picture = overlay(frame.image, result.mask, palette, alpha=options.alpha) if draw else None
        extra = {}
    t1 = time.perf_counter()
    _write(frame, result, picture, unit, options, palette, state, temporary_video)
    ms["postprocess"], ms["write"] = (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000
    state.done += 1
    for stage, value in ms.items():
        state.stage_ms[stage] += value
    fraction = getattr(result, "class_fraction", {})
    state.records.append(_line({**record, "ok": True, "error": None, "class_fraction": fraction, **extra, "ms": ms}))


def _write(frame: Frame, result: Any, picture: np.ndarray | None, unit: Unit, options: WriteOptions,
           palette: Palette, state: _State, temporary_video: Path) -> None:
    out = Path(unit.out)
    if isinstance(result, ReconstructionResult):
        if "reconstruction" in options.outputs:
            _png(out / "reconstruction" / f"{frame.name}.png", result.reconstruction)
    elif "masks" in options.outputs:
        path = out / "masks" / f"{frame.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_mask_png(path, result.mask, palette.rgb)
        except OSError as error:
            raise EdgesegError(f"Cannot write `{path}`: {error.strerror or error}.") from None
    if picture is None:
        return
    if unit.kind == "video":
        if state.video is None:
            state.video = VideoSink(temporary_video, fps=unit.fps or 25.0, codec=options.codec)
        state.video.write(picture)
    else:
        _png(out / "overlay" / f"{frame.name}.png", picture)


def _png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", image)  # the bytes cv2.imwrite writes, but written atomically
    if not ok:
        raise EdgesegError(f"Cannot encode `{path}` as PNG.")
    write_bytes_atomic(path, data.tobytes())


def _line(record: dict[str, Any]) -> str:
    if "ms" in record:
        record["ms"] = {stage: round(value, 3) for stage, value in record["ms"].items()}
    return json.dumps(record) + "\n"
