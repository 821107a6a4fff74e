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

from edgeseg.runtime import (FOLDER_IMAGE_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES, EdgesegError, Entry,
                             SegmentOptions, VideoInfo, classify_source, expand, frame_names, split_name, unique_names)
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
    name: str = ""  # the source's name in the job (its records say it)

    @property
    def key(self) -> str:
        return f"{self.source:04d}-{self.seq:06d}"

    @property
    def frames(self) -> int:
        return len(self.paths) if self.kind == "images" else self.count


@dataclass(frozen=True)
class Source:
    """One SOURCE the user named, its name in the job, where its outputs go, and how many frames it has."""

    number: int
    spec: str
    kind: str
    out: str
    frames: int
    fps: float
    error: str | None = None
    name: str = ""


def warm_frames(smooth: float) -> int:
    """Frames a range starts early so the --smooth average has forgotten what it could not see (< 1e-4)."""
    if smooth <= 0.0:
        return 0
    return math.ceil(math.log(SMOOTH_FORGET) / math.log(smooth))


@dataclass(frozen=True)
class Placed:
    """One source of the job after expansion: what it is (``spec``), its ``name`` and its output ``folder``."""

    spec: str
    name: str
    folder: str


def layout(sources: list[str], *, out: str, recursive: bool = False) -> list[Placed]:
    """The job's sources as one machine lays them out: lists, all-video folders and globs expanded
    (the runtime's :func:`expand`; the same rule over an object store's listing for URIs), named
    (``name=SOURCE`` or the default), one source into ``out``, several into ``out/<name>/``.

    ``sources`` and ``out``: resolved (absolute paths or URIs, see :func:`_store.resolve`).

    Example::

        layout(["/data/clips/"], out="/runs/job")   # [Placed('/data/clips/a.mp4', 'a', '/runs/job/a'), ...]
    """
    entries: list[Entry] = []
    for text in sources:
        entry = split_name(text)
        if _store.is_remote(entry.spec):
            videos = _expand_stored_videos(entry.spec)
            name = entry.name if len(videos) == 1 else None
            entries += [Entry(v, name or _stored_name(v)) for v in videos]
        else:
            entries += [e for e in expand([text], recursive=recursive) if isinstance(e, Entry)]
    names = unique_names([entry.name for entry in entries])
    single = len(sources) == 1 and len(entries) == 1 and split_name(sources[0]).name is None
    folders = [out] if single else [_store.join(out, name) for name in names]
    return [Placed(e.spec, name, folder) for e, name, folder in zip(entries, names, folders)]


def plan(sources: list[str], *, out: str | os.PathLike, options: SegmentOptions = SegmentOptions(), chunk: int = 64,
         range_frames: int = 256, probe: Callable[[str], VideoInfo] | None = None,
         placed: list[Placed] | None = None) -> tuple[list[Source], list[Unit]]:
    """Split ``sources`` into units, laid out as one machine lays them out (:func:`layout`, or ``placed``
    when the caller has it): one SOURCE writes into ``out`` itself; several (or a list, or a folder of
    videos) into ``out/<name>/``.

    ``sources`` and ``out``: paths (made absolute here) or object-store URIs. ``options``: the frame
    selection (``stride``, ``start``, ``max_frames``, ``recursive``) and ``smooth`` (how early each
    video range starts), as ``edgeseg segment`` means them. ``probe``: how a video in object storage
    is measured (the driver asks a worker, which downloads it anyway); local videos are read here.

    Example::

        sources, units = plan(["clip.mp4", "scans/"], out="runs/job", chunk=32)
    """
    if chunk < 1 or range_frames < 1:
        raise EdgesegError(f"--chunk and --range-frames must be >= 1, got {chunk} and {range_frames}.")
    out = _store.resolve(out, what="--out")
    if placed is None:
        placed = layout([_resolve_named(s) for s in sources], out=out, recursive=options.recursive)
    planned, units = [], []
    for number, where in enumerate(placed):
        spec, name, folder = where.spec, where.name, where.folder
        kind, paths = classify(spec, recursive=options.recursive)
        if kind == "video":
            measure = probe if _store.is_remote(spec) else VideoInfo.from_video_path
            if measure is None:
                raise EdgesegError(f"plan() needs `probe` to measure the video `{spec}` in object storage.")
            try:
                source, pieces = _video_units(number, spec, folder, options, range_frames, warm_frames(options.smooth),
                                              measure(spec), name=name)
            except EdgesegError as error:
                if len(placed) == 1:
                    raise  # the job's only source: stop with its one line, as without Ray
                log.warning("skipped %s: %s", spec, error)  # one bad video of many costs only itself
                source, pieces = Source(number, spec, kind, folder, 0, 0.0, error=str(error), name=name), []
        else:
            chosen = paths[options.start::options.stride][:options.max_frames]
            root = spec if kind == "folder" else None
            # The whole source's names (as without Ray): two files with one stem keep their suffixes.
            outputs = _names(paths, root)[options.start::options.stride][:options.max_frames]
            source = Source(number, spec, kind, folder, len(chosen), 0.0, name=name)
            pieces = [Unit(number, seq, "images", folder, index=i, paths=tuple(chosen[i:i + chunk]),
                           names=tuple(outputs[i:i + chunk]), root=root, name=name)
                      for seq, i in enumerate(range(0, len(chosen), chunk))]
        planned.append(source)
        units += pieces
    return planned, units


def _resolve_named(text: str) -> str:
    entry = split_name(str(text))
    resolved = _store.resolve(entry.spec, what="SOURCE")
    return f"{entry.name}={resolved}" if entry.name else resolved


def _video_units(number: int, spec: str, folder: str, options: SegmentOptions, range_frames: int,
                 warm: int, info: VideoInfo, *, name: str) -> tuple[Source, list[Unit]]:
    wanted = range(options.start, info.frame_count, options.stride)[:options.max_frames]
    fps = info.fps / options.stride
    if not info.frame_count:
        # A header without a frame count: one range to the end, on one worker.
        only = Unit(number, 0, "video", folder, index=options.start, video=spec, first=options.start,
                    count=options.max_frames or 1 << 40, stride=options.stride, fps=fps, name=name)
        return Source(number, spec, "video", folder, 0, fps, name=name), [only]
    units = []
    for seq, at in enumerate(range(0, len(wanted), range_frames)):
        frames = wanted[at:at + range_frames]
        early = min(warm, at)  # never before the selection's own start
        units.append(Unit(number, seq, "video", folder, index=frames[0], video=spec, first=frames[0],
                          count=len(frames), stride=options.stride, warm=early, fps=fps, name=name))
    return Source(number, spec, "video", folder, len(wanted), fps, name=name), units


# -- sources in object storage ----------------------------------------------------------------------
# The runtime classifies local sources (classify_source, frame_names); these few functions do the same
# for object-store URIs with the runtime's own suffix sets.


def media_kind(location: str, *, in_folder: bool = False) -> str | None:
    """``image``, ``video`` or None, by suffix (in a folder a GIF is an image, alone a video; as the runtime)."""
    suffix = PurePosixPath(_store.name_of(location)).suffix.lower()
    if suffix in (FOLDER_IMAGE_SUFFIXES if in_folder else IMAGE_SUFFIXES):
        return "image"
    return "video" if suffix in VIDEO_SUFFIXES else None


def _stored_name(location: str) -> str:
    stem = PurePosixPath(_store.name_of(location))
    return (stem.stem if stem.suffix else stem.name) or "source"


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
        matches = [m for m in _store.glob(spec) if media_kind(m, in_folder=True)]
        if not matches:
            raise EdgesegError(f"Source `{spec}`: the pattern matches no image or video objects.")
        return "glob", matches
    if _store.is_folder(spec):
        found = _store.find(spec, recursive=recursive)
        chosen = [f for f in found if media_kind(f, in_folder=True)]
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
    return ("video", []) if media_kind(spec) == "video" else ("image", [spec])


def _expand_stored_videos(spec: str) -> list[str]:
    kind, found = classify(spec)
    if kind not in ("folder", "list"):
        return [spec]
    videos = [f for f in found if media_kind(f) == "video"]
    return videos if videos and len(videos) == len(found) else [spec]


def _names(paths: list[str], root: str | None) -> list[str]:
    """The runtime's output names (:func:`frame_names`) of local paths or of URIs (their keys under ``root``)."""
    if not paths or not _store.is_remote(paths[0]):
        return frame_names([Path(p) for p in paths], root)

    def key(location: str) -> PurePosixPath:  # bucket/key: frame_names works on path parts, as for local files
        return PurePosixPath(location.split("://", 1)[1])

    return frame_names([key(p) for p in paths], key(root) if root else None)
