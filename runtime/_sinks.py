"""Where results go. Each sink is a context manager with one verb, ``write``, that flushes as it goes.

- :func:`write_mask_png` / :func:`read_mask_png`: class-id masks as palette-indexed PNGs. OpenCV
  cannot write palette PNGs, so this module writes the chunks itself (zlib; ~30 lines). Any PNG
  reader shows the colours; the pixel values are the class ids. Past 256 classes the mask is a
  16-bit gray PNG of class ids instead.
- :class:`VideoSink`: ``overlay.mp4`` in H.264 where an encoder is available — the ffmpeg binary of
  the ``imageio-ffmpeg`` package fed raw frames through a pipe, else OpenCV's ``avc1`` — and
  OpenCV's ``mp4v`` (MPEG-4 part 2, which browsers do not play) as the last resort. ``codec``
  says which one wrote the file.
- :class:`JsonlSink`: one JSON object per line, flushed per frame.

``segment`` writes through the frame sinks below, which share one protocol: a context manager
whose one verb is ``write(frame, outcome)`` (an :class:`Outcome`: the frame's result or why it
failed, its stage times, its drawn overlay), and whose ``outputs`` say, for ``summary.json``, what
was written: :class:`MaskSink`, :class:`OverlayImageSink`, :class:`OverlayVideoSink`,
:class:`ReconstructionSink`, :class:`VectorSink` (``polygons/``, ``rle/``) and :class:`RecordSink`
(``frames.jsonl``); :class:`edgeseg.runtime.vectors.CocoWriter` (``coco.json``) is one too. Rotation is not a second
writer: a :class:`SegmentClock` shared by a source's overlay video and record sinks cuts both into
numbered, finished files at the same frame.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from edgeseg.runtime._frames import display_path, opencv_path
from edgeseg.runtime._imagebytes import decode_mask_png, encode_mask_png
from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime.files import write_bytes_atomic
from edgeseg.runtime.postprocess import ReconstructionResult, Result, SegmentationResult

log = logging.getLogger("edgeseg.runtime")



def write_mask_png(path: str | os.PathLike, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Write a class-id mask as a palette-indexed PNG (8-bit ids) or a 16-bit gray PNG (more classes): the bytes
    of :func:`encode_mask_png`, atomically (a crash never leaves a half-written mask under the real name).

    Example::

        write_mask_png("masks/frame.png", result.mask, contract.output.palette)
    """
    try:
        data = encode_mask_png(mask, palette)
    except ValueError as error:
        raise OSError(str(error)) from None
    write_bytes_atomic(Path(path), data)


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Class ids from a mask PNG: palette indices of a paletted PNG, else the gray values (:func:`decode_mask_png`)."""
    try:
        return decode_mask_png(Path(path).read_bytes())
    except BadInputError as error:
        raise ValueError(f"{path}: {error}") from None


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Encode ``image`` by the path's suffix and write it atomically; raises OSError when it cannot.

    The bytes, never the path, go to OpenCV: it crashes on file names that are not valid UTF-8.

    Example::

        write_image("overlay/frame.png", picture)
    """
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", image)
    except cv2.error as error:
        raise OSError(f"OpenCV cannot encode a {path.suffix} image ({error})") from None
    if not ok:
        raise OSError(f"OpenCV cannot encode a {path.suffix} image")
    write_bytes_atomic(path, encoded.tobytes())


class JsonlSink:
    """``frames.jsonl``: one object per finished frame, flushed at once, so a crash keeps every line."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False) -> None:
        self.path = Path(path)
        self.append = append
        self._handle = None

    def __enter__(self) -> JsonlSink:
        self._handle = open(self.path, "a" if self.append else "w", encoding="utf-8")
        return self

    def write(self, record: Mapping[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class VideoSink:
    """An MP4 of BGR frames at a fixed size (the first frame's); later frames of another size are resized.

    ``codec`` after the first write names what encoded it: ``h264 (opencv avc1)``,
    ``h264 (ffmpeg libx264)`` or ``mpeg4 (opencv mp4v)``. ``codec="mp4v"`` forces the fallback.
    The video is written under a hidden name beside ``path`` and takes its name when it is finalized
    (:meth:`close`): a file named ``overlay.mp4`` is always a finished, playable one.

    Example::

        with VideoSink("overlay.mp4", fps=25) as video:
            for image in images:
                video.write(image)
    """

    def __init__(self, path: str | os.PathLike, *, fps: float, codec: str = "auto") -> None:
        if codec not in ("auto", "avc1", "ffmpeg", "mp4v"):
            raise EdgesegError(f"Unknown video codec {codec!r}: expected auto, avc1, ffmpeg or mp4v.")
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.part{self.path.suffix}")
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.wanted = codec
        self.codec: str | None = None
        self.frames = 0
        self._size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None
        self._ffmpeg: subprocess.Popen | None = None
        self._names = contextlib.ExitStack()  # the symlink OpenCV writes through, for a non-UTF-8 name

    def __enter__(self) -> VideoSink:
        return self

    def write(self, image: np.ndarray) -> None:
        if self._size is None:
            self._open(image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if self._ffmpeg is not None:
            try:
                self._ffmpeg.stdin.write(np.ascontiguousarray(image).data)
            except (BrokenPipeError, OSError) as error:
                raise EdgesegError(f"Cannot write `{self.path}`: the ffmpeg encoder stopped ({error}).") from None
        else:
            self._writer.write(image)
        self.frames += 1

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Finalize the file (an MP4 is playable only once its index is written)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._names.close()
        if self._ffmpeg is not None:
            process, self._ffmpeg = self._ffmpeg, None
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode != 0:
                log.warning("%s: ffmpeg exited with status %s while finalizing the video", self.path, process.returncode)
        if self.frames and self.partial.exists():
            os.replace(self.partial, self.path)

    def _open(self, width: int, height: int) -> None:
        self._size = (width, height)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # ffmpeg first: where imageio-ffmpeg is installed it always has libx264, encodes outside this
        # process (no GIL, no stall of inference), and probing OpenCV's avc1 prints encoder errors.
        attempts = {"auto": ("ffmpeg", "avc1", "mp4v")}.get(self.wanted, (self.wanted,))
        for attempt in attempts:
            if attempt == "ffmpeg":
                if self._open_ffmpeg(width, height):
                    self.codec = "h264 (ffmpeg libx264)"
                    return
                continue
            name = self._names.enter_context(opencv_path(self.partial))
            writer = _quiet_video_writer(name, attempt, self.fps, (width, height))
            if writer.isOpened():
                self._writer = writer
                self.codec = "h264 (opencv avc1)" if attempt == "avc1" else "mpeg4 (opencv mp4v)"
                if attempt == "mp4v":
                    from edgeseg.runtime.extras import install_hint

                    log.warning("%s: no H.264 encoder found (OpenCV lacks avc1, imageio-ffmpeg absent); writing "
                                "MPEG-4 part 2 (mp4v), which browsers do not play. %s for H.264.", self.path,
                                install_hint("cpu"))
                return
            writer.release()
        raise EdgesegError(f"Cannot write `{self.path}`: no video encoder could open it (tried {', '.join(attempts)}).")

    def _open_ffmpeg(self, width: int, height: int) -> bool:
        try:
            import imageio_ffmpeg
            exe = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            return False
        command = [
            exe, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "pipe:0",
            # yuv420p needs even sizes; browsers need yuv420p; faststart puts the index first for streaming.
            # ultrafast on one thread: ~1 ms a 320x240 frame here, leaving the cores to inference.
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "ultrafast", "-threads", "1", "-crf", "23",
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", str(self.partial),
        ]
        try:
            # A new session: Ctrl-C in the terminal reaches us, not the encoder, so we can finalize the file.
            self._ffmpeg = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            return False
        try:
            # A frame is bigger than the default 64 KiB pipe: without room for a few frames, every
            # write waits for ffmpeg to be scheduled several times (costly on a busy machine).
            import fcntl

            fcntl.fcntl(self._ffmpeg.stdin.fileno(), fcntl.F_SETPIPE_SZ, min(1 << 20, max(1 << 16, 4 * width * height * 3)))
        except (ImportError, AttributeError, OSError):
            pass  # not Linux, or the system caps pipe sizes lower: only slower
        return True


def _quiet_video_writer(path: str, fourcc: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    # Probing an encoder the OpenCV build lacks prints an [ERROR] line; the fallback is ours to report.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    finally:
        cv2.utils.logging.setLogLevel(level)


# -- frame sinks: one protocol, ``write(frame, outcome)``, used by ``segment`` -----------------------


@dataclass
class Outcome:
    """What became of one frame: its result (None when it failed, ``error`` says why), stage times in ms,
    the overlay drawn for it (when an overlay is written, shown or called back), whether the model gave NaN,
    its ``frames.jsonl`` record (built by the pipeline before the record sink writes it), and, in a run with
    zones, its zone statistics and the events that started or ended on it (their record forms)."""

    result: Result | None
    error: str | None = None
    ms: dict[str, float] = field(default_factory=dict)
    picture: np.ndarray | None = None
    record: dict[str, Any] | None = None
    nan: bool = False
    zones: dict[str, Any] | None = None  # runs with --zones: the frame's zone statistics (records.ZONE_FIELDS)
    events: list[dict[str, Any]] | None = None  # runs with rules: the events that started or ended on this frame


class SegmentClock:
    """When a source's numbered files (its overlay video and frames.jsonl) roll over to the next segment.

    With ``rotate`` minutes, a segment closes once its first file has been open that long: at the next
    frame, or at the next :meth:`tick` while no frame comes (an outage), so every closed segment is a
    finished, playable file on time. ``first`` > 0 (a live source resumed) numbers the files even
    without rotation. File names: ``frames.jsonl`` / ``overlay.mp4``, or ``frames-0003.jsonl`` /
    ``overlay-0003.mp4`` when numbered. What each segment holds is listed in :attr:`segments`.

    Example::

        clock = SegmentClock(rotate=60)
        video = OverlayVideoSink("runs/door", fps=25, clock=clock)
    """

    def __init__(self, rotate: float | None = None, *, first: int = 0) -> None:
        self.seconds = rotate * 60 if rotate else None
        self.segment = first
        self.numbered = rotate is not None or first > 0
        self.segments: list[dict[str, Any]] = []
        self._opened_at: float | None = None
        self._closers: list[Any] = []

    def name(self, stem: str, suffix: str) -> str:
        return f"{stem}-{self.segment:04d}.{suffix}" if self.numbered else f"{stem}.{suffix}"

    def opened(self, closer: Any) -> None:
        """A sink opened its file of the current segment; ``closer()`` closes it when the segment ends."""
        if self._opened_at is None:
            self._opened_at = time.monotonic()
        self._closers.append(closer)

    def note(self, **fields: Any) -> None:
        """What a closing sink wrote into the current segment (merged into its :attr:`segments` entry)."""
        if not self.segments or self.segments[-1]["segment"] != self.segment:
            self.segments.append({"segment": self.segment})
        self.segments[-1].update(fields)

    def tick(self) -> None:
        """Close the current segment if its time is up (called before each frame and while waiting)."""
        if self.seconds is not None and self._opened_at is not None and \
                time.monotonic() - self._opened_at >= self.seconds:
            self.close()
            self.segment += 1

    def close(self) -> None:
        closers, self._closers, self._opened_at = self._closers, [], None
        for closer in closers:
            closer()


class FrameSink:
    """Base of the frame sinks: a context manager; ``write(frame, outcome)``; ``outputs`` for the summary."""

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, frame: Any, outcome: Outcome) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish what is open; safe to call twice."""

    @property
    def outputs(self) -> dict[str, Any]:
        """What this sink wrote, as the ``outputs`` entries of its source in ``summary.json``."""
        return {}


class _FolderSink(FrameSink):
    """One PNG per frame, ``<folder>/<frame name>.png``; the folder is made on the first write."""

    key = ""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.written = 0
        self._made: set[Path] = set()

    def path_for(self, name: str) -> Path:
        return self.folder / f"{name}.png"

    def _target(self, name: str) -> Path:
        path = self.path_for(name)
        # One mkdir per folder and run, not one per image (a syscall per 28x28 digit showed in the profile).
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        return path

    def _imwrite(self, name: str, image: np.ndarray) -> None:
        path = self._target(name)
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise EdgesegError(f"Cannot write `{display_path(path)}`: OpenCV could not encode it.")
        _write_or_remove(path, data)
        self.written += 1

    @property
    def outputs(self) -> dict[str, Any]:
        return {self.key: f"{self.folder.name}/"}


def _write_or_remove(path: Path, data: Any) -> None:
    # One open and write, not an atomic rename (which tripled the syscalls of a 28x28 digit): a write that
    # fails (a full disk) removes what it cut short, and a crash's cut file is found by --resume, which decodes
    # every output it keeps.
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as error:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        raise EdgesegError(f"Cannot write `{display_path(path)}`: {error.strerror or error}.") from None


class MaskSink(_FolderSink):
    """``masks/<name>.png``: class ids as palette-indexed PNGs (segmentation results)."""

    key = "masks"

    def __init__(self, folder: str | os.PathLike, palette: Sequence[Sequence[int]]) -> None:
        super().__init__(folder)
        self.palette = palette

    def write(self, frame: Any, outcome: Outcome) -> None:
        if not isinstance(outcome.result, SegmentationResult):
            return
        path = self._target(frame.name)
        try:
            write_mask_png(path, outcome.result.mask, self.palette)
        except OSError as error:
            raise EdgesegError(f"Cannot write `{display_path(path)}`: {error.strerror or error}.") from None
        self.written += 1


class VectorSink(_FolderSink):
    """``polygons/<name>.json`` and/or ``rle/<name>.json`` in ``folder``: each frame's mask in vector form, per
    class (:func:`edgeseg.runtime.vectors.mask_vectors`: polygons with holes at ``tolerance`` pixels, COCO
    RLE, and every class's connected regions). ``forms``: ``polygons``, ``rle`` or both
    (each class's binary mask is made once for both)."""

    def __init__(self, folder: str | os.PathLike, classes: Sequence[str], *, forms: Sequence[str],
                 tolerance: float) -> None:
        super().__init__(folder)
        self.classes, self.forms, self.tolerance = tuple(classes), tuple(forms), tolerance

    def path_for(self, name: str, form: str = "polygons") -> Path:
        return self.folder / form / f"{name}.json"

    def write(self, frame: Any, outcome: Outcome) -> None:
        if not isinstance(outcome.result, SegmentationResult):
            return
        from edgeseg.runtime.vectors import mask_vectors

        mask = outcome.result.mask
        vectors = mask_vectors(mask, self.classes, forms=self.forms, tolerance=self.tolerance)
        head = {"name": frame.name, "index": frame.index, "size": [int(mask.shape[0]), int(mask.shape[1])]}
        for form in self.forms:
            record = {**head, **({"tolerance": self.tolerance} if form == "polygons" else {}), "classes": vectors[form]}
            path = self.path_for(frame.name, form)
            if path.parent not in self._made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(path.parent)
            # As the masks: one open and write (a crash's cut file has no final "}", and --resume redoes it).
            _write_or_remove(path, json.dumps(record, separators=(",", ":")).encode())
        self.written += 1

    @property
    def outputs(self) -> dict[str, Any]:
        return {form: f"{form}/" for form in self.forms}


class ReconstructionSink(_FolderSink):
    """``reconstruction/<name>.png``: an autoencoder's reconstructions at the frame's size."""

    key = "reconstruction"

    def write(self, frame: Any, outcome: Outcome) -> None:
        if isinstance(outcome.result, ReconstructionResult):
            self._imwrite(frame.name, outcome.result.reconstruction)


class OverlayImageSink(_FolderSink):
    """``overlay/<name>.png``: the drawn overlay of each image."""

    key = "overlay"

    def write(self, frame: Any, outcome: Outcome) -> None:
        if outcome.picture is not None:
            self._imwrite(frame.name, outcome.picture)


class OverlayVideoSink(FrameSink):
    """``overlay.mp4`` in ``folder`` (``overlay-NNNN.mp4`` per segment of a :class:`SegmentClock`): the drawn
    overlays of a video or stream, in order (see :class:`VideoSink`)."""

    def __init__(self, folder: str | os.PathLike, *, fps: float, codec: str = "auto",
                 clock: SegmentClock | None = None) -> None:
        self.folder, self.fps, self.codec = Path(folder), fps, codec
        self.clock = clock or SegmentClock()
        self.video: VideoSink | None = None
        self._last: dict[str, Any] = {}

    def write(self, frame: Any, outcome: Outcome) -> None:
        if outcome.picture is None:
            return
        if self.video is None:
            self.video = VideoSink(self.folder / self.clock.name("overlay", "mp4"), fps=self.fps, codec=self.codec)
            self.clock.opened(self._close_segment)
        self.video.write(outcome.picture)

    def _close_segment(self) -> None:
        video, self.video = self.video, None
        if video is None:
            return
        video.close()
        self._last = {"video": video.path.name, "video_codec": video.codec, "video_frames": video.frames}
        if self.clock.numbered:
            self.clock.note(**self._last)

    def close(self) -> None:
        self._close_segment()

    @property
    def outputs(self) -> dict[str, Any]:
        if self.clock.numbered:
            return {"segments": self.clock.segments}
        if self.video is not None and self.video.codec is not None:
            return {"video": self.video.path.name, "video_codec": self.video.codec, "video_frames": self.video.frames}
        return dict(self._last)


class RecordSink(FrameSink):
    """``frames.jsonl`` in ``folder`` (``frames-NNNN.jsonl`` per segment of a :class:`SegmentClock`): one
    record per frame (``outcome.record``, see :mod:`edgeseg.runtime.records`), flushed as it finishes.

    ``rewrite`` (a resumed run of files): the records go to a hidden file beside ``frames.jsonl`` that
    replaces it when the sink closes, after every earlier record this run did not write again (the frames
    after a stop) was added to it: an interrupted resume keeps at least the records it found, and a killed
    one leaves ``frames.jsonl`` as it was.
    """

    def __init__(self, folder: str | os.PathLike, *, clock: SegmentClock | None = None, rewrite: bool = False) -> None:
        from edgeseg.runtime.records import RESUME_FILE

        self.folder = Path(folder)
        self.clock = clock or SegmentClock()
        self.rewrite = rewrite
        self._resume_file = self.folder / RESUME_FILE
        self.lines: JsonlSink | None = None
        self._frames = 0
        self._name = ""
        self._written: list[Any] = []  # rewrite: the names written again, so the earlier file's others are kept

    def write(self, frame: Any, outcome: Outcome) -> None:
        if outcome.record is None:
            return
        if self.lines is None:
            self._name = self.clock.name("frames", "jsonl")
            target = self._resume_file if self.rewrite else self.folder / self._name
            self.lines = JsonlSink(target).__enter__()
            self._frames = 0
            self.clock.opened(self._close_segment)
        self.lines.write(outcome.record)
        self._frames += 1
        if self.rewrite:
            self._written.append(outcome.record.get("name"))

    def _close_segment(self) -> None:
        lines, self.lines = self.lines, None
        if lines is None:
            return
        if self.rewrite:
            self._keep_the_rest(lines)
        lines.__exit__(None, None, None)
        if self.rewrite:  # every record is in the new file now: it replaces the earlier run's
            os.replace(lines.path, self.folder / "frames.jsonl")
            self.rewrite = False
        if self.clock.numbered:
            self.clock.note(jsonl=self._name, frames=self._frames)

    def _keep_the_rest(self, lines: JsonlSink) -> None:
        from edgeseg.runtime.records import read_records

        written = set(self._written)
        for record in read_records(self.folder / "frames.jsonl"):
            if record.get("name") not in written:
                lines.write(record)

    def close(self) -> None:
        if self.rewrite and self.lines is None and (self.folder / "frames.jsonl").exists():
            return  # a resumed run that wrote nothing (stopped at once): the earlier records stay as they are
        self._close_segment()

    @property
    def outputs(self) -> dict[str, Any]:
        if self.clock.numbered:
            return {"segments": self.clock.segments}
        return {"jsonl": "frames.jsonl"} if self._name or self.rewrite else {}
