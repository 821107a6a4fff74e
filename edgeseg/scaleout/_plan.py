"""The job as a list of units: chunks of image paths and frame ranges of videos, never pixels.

A unit is small enough to pickle in a few hundred bytes (paths and integers), so the driver never
decodes anything and the object store never holds a frame. Each unit writes its own outputs and a
marker, so a unit is the grain of retry and of ``--resume``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from edgeseg.runtime import EdgesegError, SegmentOptions, VideoInfo, classify_source, frame_names

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
         range_frames: int = 256) -> tuple[list[Source], list[Unit]]:
    """Split ``sources`` into units. One SOURCE writes into ``out`` itself; several into ``out/<stem>/``.

    ``options``: the frame selection (``stride``, ``start``, ``max_frames``, ``recursive``) and
    ``smooth`` (how early each video range starts), as ``edgeseg segment`` means them.

    Example::

        sources, units = plan(["clip.mp4", "photos/"], out="runs/all", range_frames=200)
    """
    if chunk < 1 or range_frames < 1:
        raise EdgesegError(f"--chunk and --range-frames must be >= 1, got {chunk} and {range_frames}.")
    sources = expand_videos(sources)
    outs = _output_folders(sources, Path(out))
    planned, units = [], []
    for number, (spec, folder) in enumerate(zip(sources, outs)):
        kind, paths = classify_source(spec, recursive=options.recursive)
        if kind == "video":
            try:
                source, pieces = _video_units(number, spec, folder, options, range_frames, warm_frames(options.smooth))
            except EdgesegError as error:
                if len(sources) == 1:
                    raise  # the job's only source: stop with its one line, as without Ray
                log.warning("skipped %s: %s", spec, error)  # one bad video of many costs only itself
                source, pieces = Source(number, spec, kind, folder, 0, 0.0, error=str(error)), []
        else:
            chosen = paths[options.start::options.stride][:options.max_frames]
            root = spec if kind == "folder" else None
            # The whole source's names (as without Ray): two files with one stem keep their suffixes.
            names = frame_names(paths, root)[options.start::options.stride][:options.max_frames]
            source = Source(number, spec, kind, folder, len(chosen), 0.0)
            pieces = [Unit(number, seq, "images", folder, index=i, paths=tuple(str(p) for p in chosen[i:i + chunk]),
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
                 warm: int) -> tuple[Source, list[Unit]]:
    info = VideoInfo.from_video_path(spec)
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


def _output_folders(sources: list[str], out: Path) -> list[str]:
    if len(sources) == 1:
        return [str(out)]
    stems = [Path(s.rstrip("/\\")).stem or f"source{i}" for i, s in enumerate(sources)]
    folders = []
    for i, stem in enumerate(stems):
        # Two sources with one stem (a/clip.mp4, b/clip.mp4) get their position appended.
        folders.append(str(out / (stem if stems.count(stem) == 1 else f"{stem}-{i}")))
    return folders
