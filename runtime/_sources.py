"""The one way to open what the user typed: a :class:`Source` per input, named, ready for the pipeline.

What can be typed: an image, a folder (sorted; ``recursive`` for subfolders), a glob, a ``.txt``
list, a video file, a webcam index or a stream URL, each optionally as ``name=SOURCE``. A run takes
one or several of them. Three things expand into several sources, each with an output folder of its
own: a ``.txt`` list that names streams, videos or folders; a folder that holds only videos; a glob
that matches only videos. A list's image files stay together as one source (an image list), so a
list of photos is one source whose outputs go where a folder's would.

A ``.txt`` list is read one way everywhere (UTF-8, a BOM allowed, bytes that are not UTF-8 kept as
the file system's own, ``#`` starts a comment) and each line is decided on its own: a line that
names an existing file is a path, even when it holds ``=`` (``size=large.png``); otherwise
``name=SOURCE`` when the part before the first ``=`` is a plain word; otherwise a path. Relative
paths are relative to the list.

Example::

    sources = open_sources(["door=rtsp://cam1/s", "clips/"], SegmentOptions())
    for source in sources:
        print(source.name, source.kind, source.total)
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime._frames import (FOLDER_IMAGE_SUFFIXES, VIDEO_SUFFIXES, Frame, VideoInfo,
                                     display_path, folder_paths, frame_names, image_frames, video_frames)
from edgeseg.runtime._streams import LiveSource, _safe_name, is_live, validate_source

KINDS = ("image", "folder", "glob", "list", "video", "stream")


@dataclass(frozen=True)
class Entry:
    """One thing the user named: ``spec`` (a path, URL or webcam index as text) and its ``name``, if given."""

    spec: str
    name: str | None = None


@dataclass
class Source:
    """What the user typed, opened: its ``name`` in the run (records and output folders use it), its
    ``kind`` (image, folder, glob, list, video, stream), an iterator of frames, how many it will give
    (``total``, None when unknown), its frame rate (0 for images), and, for live sources, the
    :class:`LiveSource` (its counters go into the summary; the pipeline starts it).

    A part of a larger source (what one worker of ``--ray`` runs) is opened with :meth:`images` or
    :meth:`video_range` (``part`` is True); ``lead``: how many first frames only prime ``smooth`` (run, never written
    nor counted), so a range of a video gives the masks the whole video would. ``paths``: the image
    files of an image-like source, in order.

    Example::

        source = Source.open("clip.mp4", stride=2)
        print(source.name, source.kind, source.total, source.fps)
    """

    spec: str
    name: str
    kind: str
    frames: Iterator[Frame]
    total: int | None
    fps: float
    live: LiveSource | None = None
    lead: int = 0
    paths: list[Path] = field(default_factory=list)
    error: str | None = None  # a source of a run of several that could not be opened: it costs only itself
    size: tuple[int, int] | None = None  # (width, height) of every frame where known at open (a video file)
    part: bool = False  # a part of a larger source (images / video_range: a --ray unit), not the whole of it

    @property
    def sequential(self) -> bool:
        """Frames of one scene in time order (a video or a stream): one overlay video, smoothing applies."""
        return self.kind in ("video", "stream")

    @classmethod
    def open(cls, spec: str | os.PathLike | int, *, name: str | None = None, stride: int = 1, start: int = 0,
             max_frames: int | None = None, recursive: bool = False, exclude: Path | None = None,
             live: dict[str, Any] | None = None) -> Source:
        """Open one source. ``exclude``: a folder never listed (the run's own ``--out`` inside a source folder).
        ``live``: keyword arguments of :class:`LiveSource` (policy, reconnect, timeouts) for a camera or URL."""
        text = _text(spec)
        if is_live(text):
            _check_webcam(text)
            stream = LiveSource(text, name=name, **(live or {}))
            return cls(text, name or stream.name, "stream", iter(()), None, 0.0, stream)
        kind, paths = classify_source(text, recursive=recursive, exclude=exclude)
        name = name or default_name(text, kind)
        if kind == "video":
            frames = video_frames(text, stride=stride, start=start, max_frames=max_frames)
            info = VideoInfo.from_video_path(text)
            total = len(range(start, info.frame_count, stride)) if info.frame_count else None
            if total is not None and max_frames is not None:
                total = min(total, max_frames)
            return cls(text, name, kind, frames, total, info.fps / stride, size=_size(info))
        root = text if kind == "folder" else None
        chosen = paths[start::stride][:max_frames]
        names = frame_names(paths, root)[start::stride][:max_frames]  # the whole source's: never shifted by --start
        return cls(text, name, kind, image_frames(chosen, root=root, names=names), len(chosen), 0.0, paths=chosen)

    @classmethod
    def images(cls, paths: Sequence[str | os.PathLike], *, root: str | os.PathLike | None = None,
               names: Sequence[str] | None = None, first: int = 0, name: str = "images") -> Source:
        """Image files as a source: ``names`` (default: :func:`frame_names` of ``paths``) and the index
        ``first`` of the first path are the whole source's, when ``paths`` is a part of it.

        Example::

            part = Source.images(paths[64:128], root="photos", names=names[64:128], first=64)
        """
        chosen = [Path(p) for p in paths]
        frames = (dataclasses.replace(frame, index=frame.index + first)
                  for frame in image_frames(chosen, root=root, names=None if names is None else list(names)))
        return cls(str(root or name), name, "list", frames, len(chosen), 0.0, paths=chosen, part=True)

    @classmethod
    def video_range(cls, path: str | os.PathLike, *, start: int, count: int, stride: int = 1, lead: int = 0,
                    name: str | None = None) -> Source:
        """Frames ``start, start + stride, ...`` (``count`` of them) of a video, reached by seeking; the
        ``lead`` frames before ``start`` (same stride) are decoded only to prime ``smooth``.

        Example::

            part = Source.video_range("clip.mp4", start=256, count=256, lead=14)
        """
        info = VideoInfo.from_video_path(path)
        frames = video_frames(path, stride=stride, start=start - lead * stride, max_frames=count + lead, seek=True)
        text = _text(path)
        return cls(text, name or default_name(text, "video"), "video", frames, count, info.fps / stride, lead=lead,
                   size=_size(info), part=True)

    def close(self) -> None:
        """Stop a live source (bounded); close a file source's frame generator."""
        if self.live is not None:
            self.live.close(timeout=0.5)
        close = getattr(self.frames, "close", None)
        if close is not None:
            close()


def open_sources(specs: Sequence[str | os.PathLike | int | Entry | Source], *, stride: int = 1, start: int = 0,
                 max_frames: int | None = None, recursive: bool = False, exclude: Path | None = None,
                 live: dict[str, Any] | None = None) -> list[Source]:
    """Every source of a run, opened and uniquely named (a second ``door`` becomes ``door-2``).

    Opened sources (:class:`Source`) are taken as they are. Example::

        sources = open_sources(["cams.txt", "clip.mp4"], max_frames=100)
    """
    entries = expand(specs, recursive=recursive)
    names = unique_names([entry.name for entry in entries])
    for entry in entries:  # a typo in a URL or a camera that is not there is the user's: refused before anything opens
        if isinstance(entry, Entry) and is_live(entry.spec):
            validate_source(entry.spec)
            _check_webcam(entry.spec)
    opened = []
    try:
        for entry, name in zip(entries, names):
            if isinstance(entry, Source):
                entry.name = name
                opened.append(entry)
                continue
            try:
                opened.append(Source.open(entry.spec, name=name, stride=stride, start=start, max_frames=max_frames,
                                          recursive=recursive, exclude=exclude, live=live))
            except EdgesegError as error:
                if len(entries) == 1:
                    raise  # the run's only source: the run stops with its one line
                # One source of several that cannot be opened costs only itself: it is recorded as failed.
                opened.append(failed_source(entry.spec, name, str(error)))
    except BaseException:
        for source in opened:
            source.close()
        raise
    return opened


def failed_source(spec: str, name: str, reason: str) -> Source:
    """A source that could not be opened, as a source with no frames and its reason."""
    return Source(spec, name, "video" if Path(spec).suffix.lower() in VIDEO_SUFFIXES else "image", iter(()), 0, 0.0,
                  error=reason)


def expand(specs: Sequence[str | os.PathLike | int | Entry | Source], *, recursive: bool = False) -> list[Entry | Source]:
    """What the user typed as named entries, lists and all-video folders or globs expanded (nothing opened).

    Each entry's name is set: the one given (``name=SOURCE``) or :func:`default_name`.

    Example::

        expand(["front=rtsp://cam1/s", "clip.mp4"])   # [Entry('rtsp://cam1/s', 'front'), Entry('clip.mp4', 'clip')]
    """
    entries: list[Entry | Source] = []
    for spec in specs:
        if isinstance(spec, Source):
            entries.append(spec)
            continue
        entry = spec if isinstance(spec, Entry) else split_name(_text(spec))
        path = Path(entry.spec)
        if not is_live(entry.spec) and path.suffix.lower() == ".txt" and path.is_file():
            entries += _list_entries(path, entry.name)
        elif not is_live(entry.spec) and (videos := _all_videos(entry.spec, recursive=recursive)):
            entries += [Entry(video, default_name(video, "video")) for video in videos]
        else:
            entries.append(Entry(entry.spec, entry.name or default_name(entry.spec)))
    return entries


def read_list(path: str | os.PathLike) -> list[Entry]:
    """The lines of a ``.txt`` list as entries, each decided on its own (see the module's docstring).

    Example::

        read_list("cams.txt")   # [Entry('rtsp://10.0.0.5/s', 'door'), Entry('/data/size=large.png', None)]
    """
    path = Path(path)
    try:
        # utf-8-sig: a BOM (Windows editors write one) is not part of the first line.
        text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as error:
        raise EdgesegError(f"Cannot read list `{display_path(path)}`: {error.strerror or error}.") from None
    base = path.parent
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = split_name(line) if not _resolve(line, base).exists() else Entry(line)
        spec = entry.spec if is_live(entry.spec) else str(_resolve(entry.spec, base))
        entries.append(Entry(spec, entry.name))
    return entries


def split_name(text: str) -> Entry:
    """``name=SOURCE`` -> Entry(SOURCE, name) when the part before the first ``=`` is a plain word
    (letters, digits, ``-``, ``_``); else the whole text is the source (a URL's query may hold ``=``)."""
    head, sep, tail = text.partition("=")
    if sep and head and tail and all(ch.isalnum() or ch in "-_" for ch in head):
        return Entry(tail, head)
    return Entry(text)


def default_name(spec: str, kind: str | None = None) -> str:
    """A source's name when none is given: ``camera0``, a URL's host and path, a file's stem, a folder's name."""
    if is_live(spec):
        return f"camera{spec}" if spec.isdigit() else _safe_name(spec)
    path = Path(spec.rstrip("/\\"))
    if kind == "glob" or any(ch in spec for ch in "*?["):
        return "glob"
    return display_path(path.stem if path.suffix else path.name) or "source"


def unique_names(names: Sequence[str | None]) -> list[str]:
    """Names made unique in order: a repeated ``door`` becomes ``door-2``, ``door-3``..."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        name = name or "source"
        count = seen.get(name, 0) + 1
        seen[name] = count
        unique.append(name if count == 1 else f"{name}-{count}")
    return unique


def classify_source(spec: str | os.PathLike, *, recursive: bool = False,
                    exclude: Path | None = None) -> tuple[str, list[Path]]:
    """``(kind, image_paths)`` for a finite source; kind is image, folder, glob, list or video.

    Example::

        kind, paths = classify_source("scans/", recursive=True)
    """
    text = _text(spec)
    path = Path(text)
    if path.is_dir():
        paths = folder_paths(path, recursive=recursive)
        if exclude is not None:
            paths = [p for p in paths if not _inside(p, exclude)]
            if not paths:
                raise EdgesegError(f"Source `{display_path(text)}` holds nothing but this run's own --out "
                                   f"`{display_path(exclude)}`: pass another --out, outside the source folder.")
        return "folder", paths
    if any(ch in text for ch in "*?[") and not path.exists():
        # A folder the pattern matches by an image suffix (x.jpg/) is kept, to be named with its reason.
        matches = sorted(Path(p) for p in globlib.glob(text, recursive=True)
                         if Path(p).is_file() or _is_folder_item(Path(p)))
        if exclude is not None:
            matches = [p for p in matches if not _inside(p, exclude)]
        if not matches:
            raise EdgesegError(f"Source `{display_path(text)}`: the pattern matches no files.")
        return "glob", matches
    if not path.exists() and not path.is_symlink():
        raise EdgesegError(f"Source `{display_path(text)}`: no such file or folder.")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "list", [Path(entry.spec) for entry in read_list(path)]
    if suffix in VIDEO_SUFFIXES:
        return "video", []
    return "image", [path]


def open_source(spec: str | os.PathLike, *, stride: int = 1, start: int = 0, max_frames: int | None = None,
                recursive: bool = False) -> Iterator[Frame]:
    """Frames from one finite source the user typed: an image, a folder, a glob, a ``.txt`` list or a video.

    Example::

        for frame in open_source("scans/", recursive=True):
            if frame.ok:
                print(frame.name, frame.image.shape)
    """
    if stride < 1 or start < 0 or (max_frames is not None and max_frames < 0):
        raise EdgesegError(f"Frame selection needs stride >= 1, start >= 0, max_frames >= 0; "
                           f"got {stride}, {start}, {max_frames}.")
    if is_live(_text(spec)):
        raise EdgesegError(f"`{spec}` is a live source: open it with LiveSource, or run it with segment().")
    return Source.open(spec, stride=stride, start=start, max_frames=max_frames, recursive=recursive).frames


def _list_entries(path: Path, name: str | None) -> list[Entry]:
    """A list's entries: its image files as one image-list entry (the list itself), every other line its own."""
    entries = read_list(path)
    others = [e for e in entries if e.name is not None or is_live(e.spec) or _not_an_image(e.spec)]
    if not others:
        return [Entry(str(path), name or default_name(str(path)))]  # a plain image list: one source, as a folder
    images = [e for e in entries if e not in others]
    if images:
        raise EdgesegError(
            f"List `{display_path(path)}` mixes image files ({display_path(images[0].spec)}) with streams, videos or "
            f"named sources ({display_path(others[0].spec)}): put the images in a list of their own (or a folder) "
            "and name that list as one line.")
    return [Entry(e.spec, e.name or default_name(e.spec)) for e in entries]


def _not_an_image(spec: str) -> bool:
    path = Path(spec)
    if path.is_dir():
        return True
    suffix = path.suffix.lower()
    return suffix in VIDEO_SUFFIXES - FOLDER_IMAGE_SUFFIXES or (suffix == ".txt" and path.is_file())


def _all_videos(spec: str, *, recursive: bool) -> list[str]:
    """The videos of a folder or glob that holds nothing else (each becomes a source); else []."""
    path = Path(spec)
    if path.is_dir():
        try:
            items = [p for p in (path.rglob("*") if recursive else path.iterdir()) if p.is_file()]
        except OSError:
            return []
    elif any(ch in spec for ch in "*?[") and not path.exists():
        items = [Path(p) for p in globlib.glob(spec, recursive=True) if Path(p).is_file()]
    else:
        return []
    videos = sorted(p for p in items if p.suffix.lower() in VIDEO_SUFFIXES - FOLDER_IMAGE_SUFFIXES)
    images = [p for p in items if p.suffix.lower() in FOLDER_IMAGE_SUFFIXES]
    return [str(p) for p in videos] if videos and not images else []


def _is_folder_item(path: Path) -> bool:
    return path.suffix.lower() in FOLDER_IMAGE_SUFFIXES or path.suffix.lower() in VIDEO_SUFFIXES


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def _resolve(text: str, base: Path) -> Path:
    path = Path(text)
    return path if path.is_absolute() else base / path


def _text(spec: str | os.PathLike | int | bytes) -> str:
    return os.fsdecode(spec) if isinstance(spec, (bytes, os.PathLike)) else str(spec)


def _check_webcam(spec: str) -> None:
    # A camera that is not there fails at once: the reconnect retries are for streams that worked.
    if not spec.isdigit() or not sys.platform.startswith("linux"):
        return
    if not Path(f"/dev/video{spec}").exists():
        found = sorted(p.name for p in Path("/dev").glob("video*"))
        raise EdgesegError(f"No webcam {spec}: /dev/video{spec} does not exist (cameras here: "
                           f"{', '.join(found) or 'none'}). Pass another index, a video file or a stream URL.")



def _size(info: VideoInfo) -> tuple[int, int] | None:
    return (info.width, info.height) if info.width > 0 and info.height > 0 else None
