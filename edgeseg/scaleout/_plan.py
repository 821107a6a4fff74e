"""The job as a list of units: chunks of image paths and frame ranges of videos, never pixels.

A unit is small enough to pickle in a few hundred bytes (paths or URIs and integers), so the driver
never decodes anything and Ray's object store never holds a frame. Each unit writes its own outputs
and a marker, so a unit is the grain of retry and of ``--resume``. Locations are resolved on the
driver first (:func:`edgeseg.scaleout._store.resolve`): a relative path means the user's folder.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgeseg.runtime import EdgesegError, SegmentOptions, VideoInfo, classify_source, frame_names
from edgeseg.scaleout import _store

log = logging.getLogger("edgeseg.scaleout")

# Frames of earlier weight below this are forgotten when a range rebuilds its --smooth state.
SMOOTH_FORGET = 1e-4


@dataclass(frozen=True)
class Unit:
    """One piece of work: ``paths`` of images, or frames ``[first, stop)`` (with ``stride``) of a video.

    ``warm``: frames decoded and run before ``first`` only to rebuild the --smooth state; their
    outputs are not written. ``index``: the frame index (images: position in the source's list) of
    the unit's first frame; ``names``: the output names of ``paths``, as the whole source names them.
    ``out``: the folder the source's outputs go to.
    """

    source: int
    seq: int
    kind: str
    out: str
    index: int = 0
    paths: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    root: str | None = None
    video: str = ""
    first: int = 0
    count: int = 0
    stride: int = 1
    warm: int = 0
    fps: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.source:04d}-{self.seq:06d}"

    @property
    def frames(self) -> int:
        return len(self.paths) if self.kind == "images" else self.count


@dataclass(frozen=True)
class Source:
    """One SOURCE the user named, where its outputs go, and how many frames it has."""

    number: int
    spec: str
    kind: str
    out: str
    frames: int
    fps: float
    error: str | None = None


def warm_frames(smooth: float) -> int:
    """Frames a range starts early so the --smooth average has forgotten what it could not see (< 1e-4)."""
    if smooth <= 0.0:
        return 0
    return math.ceil(math.log(SMOOTH_FORGET) / math.log(smooth))


def plan(sources: list[str], *, out: str | os.PathLike, options: SegmentOptions = SegmentOptions(), chunk: int = 64,
         range_frames: int = 256, probe: Callable[[str], VideoInfo] | None = None) -> tuple[list[Source], list[Unit]]:
    """Split ``sources`` into units. One SOURCE writes into ``out`` itself; several into ``out/<stem>/``.

    ``sources`` and ``out``: paths (made absolute here) or object-store URIs. ``options``: the frame
    selection (``stride``, ``start``, ``max_frames``, ``recursive``) and ``smooth`` (how early each
    video range starts), as ``edgeseg segment`` means them. ``probe``: how a video in object storage
    is measured (the driver asks a worker, which downloads it anyway); local videos are read here.

    Example::

        sources, units = plan(["clip.mp4", "photos/"], out="runs/all", range_frames=200)
    """
    if chunk < 1 or range_frames < 1:
        raise EdgesegError(f"--chunk and --range-frames must be >= 1, got {chunk} and {range_frames}.")
    out = _store.resolve(out, what="--out")
    sources = expand_videos([_store.resolve(s, what="SOURCE") for s in sources])
    outs = _output_folders(sources, out)
    planned, units = [], []
    for number, (spec, folder) in enumerate(zip(sources, outs)):
        kind, paths = classify(spec, recursive=options.recursive)
        if kind == "video":
            measure = probe if _store.is_remote(spec) else VideoInfo.from_video_path
            if measure is None:
                raise EdgesegError(f"plan() needs `probe` to measure the video `{spec}` in object storage.")
            try:
                source, pieces = _video_units(number, spec, folder, options, range_frames, warm_frames(options.smooth),
                                              measure(spec))
            except EdgesegError as error:
                if len(sources) == 1:
                    raise  # the job's only source: stop with its one line, as without Ray
                log.warning("skipped %s: %s", spec, error)  # one bad video of many costs only itself
                source, pieces = Source(number, spec, kind, folder, 0, 0.0, error=str(error)), []
        else:
            chosen = paths[options.start::options.stride][:options.max_frames]
            root = spec if kind == "folder" else None
            # The whole source's names (as without Ray): two files with one stem keep their suffixes.
            names = _names(paths, root)[options.start::options.stride][:options.max_frames]
            source = Source(number, spec, kind, folder, len(chosen), 0.0)
            pieces = [Unit(number, seq, "images", folder, index=i, paths=tuple(chosen[i:i + chunk]),
                           names=tuple(names[i:i + chunk]), root=root)
                      for seq, i in enumerate(range(0, len(chosen), chunk))]
        planned.append(source)
        units += pieces
    return planned, units


def expand_videos(sources: list[str]) -> list[str]:
    """Each video named in a ``.txt`` list or found in a folder becomes a SOURCE of its own.

    A list's or folder's images stay one source (the runtime's listing, names and order).
    """
    expanded = []
    for spec in sources:
        if _store.is_remote(spec):
            expanded += _expand_stored_videos(spec)
            continue
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
        elif path.suffix.lower() == ".txt" and path.is_file():
            files = classify_source(spec)[1]
        else:
            expanded.append(spec)
            continue
        videos = [str(p) for p in files if p.is_file() and classify_source(p)[0] == "video"]
        if videos and len(videos) == len(files):
            expanded += videos
        else:
            expanded.append(spec)
    return expanded


def _video_units(number: int, spec: str, folder: str, options: SegmentOptions, range_frames: int,
                 warm: int, info: VideoInfo) -> tuple[Source, list[Unit]]:
    wanted = range(options.start, info.frame_count, options.stride)[:options.max_frames]
    fps = info.fps / options.stride
    if not info.frame_count:
        # A header without a frame count: one range to the end, on one worker.
        only = Unit(number, 0, "video", folder, index=options.start, video=spec, first=options.start,
                    count=options.max_frames or 1 << 40, stride=options.stride, fps=fps)
        return Source(number, spec, "video", folder, 0, fps), [only]
    units = []
    for seq, at in enumerate(range(0, len(wanted), range_frames)):
        frames = wanted[at:at + range_frames]
        early = min(warm, at)  # never before the selection's own start
        units.append(Unit(number, seq, "video", folder, index=frames[0], video=spec, first=frames[0],
                          count=len(frames), stride=options.stride, warm=early, fps=fps))
    return Source(number, spec, "video", folder, len(wanted), fps), units


def _output_folders(sources: list[str], out: str) -> list[str]:
    if len(sources) == 1:
        return [out]
    stems = [Path(_store.name_of(s.rstrip("/\\"))).stem or f"source{i}" for i, s in enumerate(sources)]
    folders = []
    for i, stem in enumerate(stems):
        # Two sources with one stem (a/clip.mp4, b/clip.mp4) get their position appended.
        folders.append(_store.join(out, stem if stems.count(stem) == 1 else f"{stem}-{i}"))
    return folders


# -- sources in object storage ----------------------------------------------------------------------
# The runtime classifies local sources (classify_source, frame_names); these few functions do the same
# for object-store URIs with the runtime's suffix rule, and are the only copy of it here. When the
# runtime's one source module makes its suffix sets public, _media_kind becomes a lookup in them.

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm",
                             ".pnm", ".jp2", ".sr", ".ras"})
_VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                             ".gif"})


def _media_kind(location: str, *, in_folder: bool = False) -> str | None:
    """``image``, ``video`` or None, by suffix (in a folder a GIF is an image, alone a video; as the runtime)."""
    suffix = PurePosixPath(_store.name_of(location)).suffix.lower()
    if suffix in _IMAGE_SUFFIXES or (in_folder and suffix == ".gif"):
        return "image"
    return "video" if suffix in _VIDEO_SUFFIXES else None


def classify(spec: str, *, recursive: bool = False) -> tuple[str, list[str]]:
    """``(kind, image locations)`` of a resolved SOURCE: the runtime's :func:`classify_source` for a local
    path, the same rule over an object store's listing for a URI."""
    if not _store.is_remote(spec):
        kind, paths = classify_source(spec, recursive=recursive)
        return kind, [str(p) for p in paths]
    try:
        return _classify_stored(spec, recursive)
    except EdgesegError:
        raise
    except OSError as error:
        raise _store.storage_error(spec, error) from None


def _classify_stored(spec: str, recursive: bool) -> tuple[str, list[str]]:
    if any(ch in spec.split("://", 1)[1] for ch in "*?["):
        matches = [m for m in _store.glob(spec) if _media_kind(m, in_folder=True)]
        if not matches:
            raise EdgesegError(f"Source `{spec}`: the pattern matches no image or video objects.")
        return "glob", matches
    if _store.is_folder(spec):
        found = _store.find(spec, recursive=recursive)
        chosen = [f for f in found if _media_kind(f, in_folder=True)]
        if not chosen:
            raise EdgesegError(f"Source `{spec}` holds no image objects ({len(found)} other object(s)). Pass a "
                               f"prefix of images, an image, a video or a glob.")
        return "folder", chosen
    if not _store.exists(spec):
        raise EdgesegError(f"Source `{spec}`: no such object (nor objects under it as a folder).")
    if spec.lower().endswith(".txt"):
        base = spec.rsplit("/", 1)[0]
        lines = [ln.strip() for ln in _store.read_bytes(spec).decode("utf-8", "replace").splitlines()]
        listed = [ln for ln in lines if ln and not ln.startswith("#")]
        return "list", [ln if _store.scheme(ln) else _store.join(base, ln) for ln in listed]
    return ("video", []) if _media_kind(spec) == "video" else ("image", [spec])


def _expand_stored_videos(spec: str) -> list[str]:
    kind, found = classify(spec)
    if kind not in ("folder", "list"):
        return [spec]
    videos = [f for f in found if _media_kind(f) == "video"]
    return videos if videos and len(videos) == len(found) else [spec]


def _names(paths: list[str], root: str | None) -> list[str]:
    """The runtime's output names (:func:`frame_names`) of local paths or of URIs (their keys under ``root``)."""
    if not paths or not _store.is_remote(paths[0]):
        return frame_names([Path(p) for p in paths], root)

    def key(location: str) -> PurePosixPath:  # bucket/key: frame_names works on path parts, as for local files
        return PurePosixPath(location.split("://", 1)[1])

    return frame_names([key(p) for p in paths], key(root) if root else None)
