"""Frames and the finite sources that yield them: one image, a folder, a glob, a list file, a video.

A source is any iterable of :class:`Frame`. Each kind of source is a plain generator function;
:func:`open_source` picks one from what the user typed. A file that cannot be read becomes a
frame with ``image=None`` and ``error`` set, so it costs that item and the run goes on.
Live sources (cameras, stream URLs) live in the runtime's stream module.
"""

from __future__ import annotations

import glob as globlib
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.errors import BadInputError, EdgesegError

log = logging.getLogger("edgeseg.runtime")

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm", ".jp2", ".sr", ".ras"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif"})
# Larger images are refused per item rather than decoded into gigabytes (OpenCV's own cap is 2**30).
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class Frame:
    """One item from a source: an image (BGR/BGRA/gray as OpenCV decodes it) or the reason it has none."""

    index: int
    name: str
    image: np.ndarray | None
    timestamp: float = 0.0
    source: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself (frame_count may be 0 or wrong for damaged files)."""

    width: int
    height: int
    fps: float
    frame_count: int

    @classmethod
    def from_video_path(cls, path: str | os.PathLike) -> VideoInfo:
        capture = _open_video(path)
        try:
            return cls._from_capture(capture)
        finally:
            capture.release()

    @classmethod
    def _from_capture(cls, capture: cv2.VideoCapture) -> VideoInfo:
        fps = capture.get(cv2.CAP_PROP_FPS)
        return cls(
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=float(fps) if fps and fps > 0 and np.isfinite(fps) else 25.0,
            frame_count=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
        )


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image file as OpenCV would (alpha and 16-bit kept), or raise BadInputError saying why."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise BadInputError(f"unreadable file ({error.strerror or error})") from None
    if data.size == 0:
        raise BadInputError("empty file (0 bytes)")
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:].tobytes():
        # libjpeg decodes a truncated JPEG with a grey bottom and only a warning: refuse it instead.
        raise BadInputError("truncated JPEG (no end-of-image marker)")
    width_height = _header_size(data)
    if width_height and width_height[0] * width_height[1] > max_pixels:
        raise BadInputError(f"image too large ({width_height[0]}x{width_height[1]} > {max_pixels} pixels)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise BadInputError("not a decodable image (corrupt, truncated or not an image)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise BadInputError(f"image too large ({image.shape[1]}x{image.shape[0]} > {max_pixels} pixels)")
    return image


def image_frames(paths: Iterable[str | os.PathLike], *, root: str | os.PathLike | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Frame]:
    """Frames from image files in the given order; a bad file yields a frame with ``error`` set."""
    for index, path in enumerate(paths):
        path = Path(path)
        name = _frame_name(path, root)
        try:
            yield Frame(index, name, read_image(path, max_pixels=max_pixels), source=str(path))
        except BadInputError as error:
            yield Frame(index, name, None, source=str(path), error=str(error))


def folder_paths(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by suffix, case-insensitive), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgesegError(f"Cannot read folder `{folder}`: not a directory.")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in candidates if p.is_file() or p.is_symlink()]
    images = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
    ignored = len(files) - len(images)
    if ignored:
        log.info("%s: ignoring %d file(s) without an image suffix", folder, ignored)
    return images


def video_frames(path: str | os.PathLike, *, stride: int = 1, start: int = 0,
                 max_frames: int | None = None, max_failures: int = 25) -> Iterator[Frame]:
    """Decode a video file frame by frame; a damaged file yields every decodable frame, then says where it ended.

    A frame that fails to decode in the middle costs only itself: it comes as a frame with an error,
    and reading goes on. ``max_failures`` failed reads in a row end the video (its damaged or cut tail).
    """
    capture = _open_video(path)
    info = VideoInfo._from_capture(capture)
    stem = Path(path).stem
    try:
        index, yielded = 0, 0
        failed: list[int] = []  # failed reads since the last good one: yielded only once a later one works
        while max_frames is None or yielded < max_frames:
            wanted = index >= start and (index - start) % stride == 0
            # grab() skips the colour conversion of unwanted frames
            ok, image = capture.read() if wanted else (capture.grab(), None)
            if not ok:
                failed.append(index)
                if len(failed) >= max_failures or (info.frame_count and index + 1 >= info.frame_count):
                    break
                index += 1
                continue
            for lost in (i for i in failed if i >= start and (i - start) % stride == 0):
                if max_frames is not None and yielded >= max_frames:
                    break
                yield Frame(lost, f"{stem}_{lost:06d}", None, 0.0, source=str(path),
                            error=f"frame {lost} could not be decoded (damaged data in the video)")
                yielded += 1
            failed = []
            if not wanted:
                index += 1
                continue
            if max_frames is not None and yielded >= max_frames:
                break
            timestamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            yield Frame(index, f"{stem}_{index:06d}", image, timestamp, source=str(path))
            index += 1
            yielded += 1
        ended = failed[0] if failed else index  # the first frame that could not be read
        if max_frames is None and info.frame_count and ended < info.frame_count:
            log.warning("%s: video ended after %d of the %d frames its header announces (truncated or damaged)",
                        path, ended, info.frame_count)
    finally:
        capture.release()


def open_source(spec: str | os.PathLike, *, stride: int = 1, start: int = 0, max_frames: int | None = None,
                recursive: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Frame]:
    """Frames from a path the user typed: an image, a folder, a glob, a ``.txt`` list of paths, or a video.

    Example::

        for frame in open_source("scans/", recursive=True):
            if frame.ok:
                print(frame.name, frame.image.shape)
    """
    if stride < 1 or start < 0 or (max_frames is not None and max_frames < 0):
        raise EdgesegError(f"Frame selection needs stride >= 1, start >= 0, max_frames >= 0; got {stride}, {start}, {max_frames}.")
    kind, paths = classify_source(spec, recursive=recursive)
    if kind == "video":
        return video_frames(spec, stride=stride, start=start, max_frames=max_frames)
    root = spec if kind == "folder" else None
    frames = image_frames(itertools.islice(paths, start, None, stride), root=root, max_pixels=max_pixels)
    return itertools.islice(frames, max_frames)


def classify_source(spec: str | os.PathLike, *, recursive: bool = False) -> tuple[str, list[Path]]:
    """``(kind, image_paths)`` for a finite source; kind is image, folder, glob, list or video."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        return "folder", folder_paths(path, recursive=recursive)
    if any(ch in text for ch in "*?[") and not path.exists():
        matches = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
        if not matches:
            raise EdgesegError(f"Source `{text}`: the pattern matches no files.")
        return "glob", matches
    if not path.exists():
        raise EdgesegError(f"Source `{text}`: no such file or folder.")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        base = path.parent
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        paths = [Path(ln) if Path(ln).is_absolute() else base / ln for ln in lines if ln and not ln.startswith("#")]
        return "list", paths
    if suffix in VIDEO_SUFFIXES:
        return "video", []
    return "image", [path]


def _open_video(path: str | os.PathLike) -> cv2.VideoCapture:
    if not Path(path).is_file():
        raise EdgesegError(f"Cannot open video `{path}`: no such file.")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise EdgesegError(f"Cannot open video `{path}`: OpenCV found no decodable video stream in it.")
    return capture


def _frame_name(path: Path, root: str | os.PathLike | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).with_suffix("").as_posix()
        except ValueError:
            pass
    return path.stem


def _header_size(data: np.ndarray) -> tuple[int, int] | None:
    # Width and height from PNG and JPEG headers, so a huge image is refused before it is decoded.
    head = data[:64 * 1024].tobytes()
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            length = int.from_bytes(head[i + 2 : i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(head[i + 7 : i + 9], "big"), int.from_bytes(head[i + 5 : i + 7], "big")
            i += 2 + length
    return None
