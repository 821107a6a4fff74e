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

from edgeseg.runtime import (EdgesegError, SegmentOptions, VideoInfo, classify_source, expand, frame_names, is_live,
                             split_name, unique_names)

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


def plan(sources: list[str], *, out: str | os.PathLike, options: SegmentOptions = SegmentOptions(), chunk: int = 64,
         range_frames: int = 256) -> tuple[list[Source], list[Unit]]:
    """Split ``sources`` into units, laid out as one machine lays them out: one SOURCE writes into ``out``
    itself; several (or a list, or a folder of videos) into ``out/<name>/``.

    ``options``: the frame selection (``stride``, ``start``, ``max_frames``, ``recursive``) and
    ``smooth`` (how early each video range starts), as ``edgeseg segment`` means them.

    Example::

        sources, units = plan(["clip.mp4", "photos/"], out="runs/all", range_frames=200)
    """
    if chunk < 1 or range_frames < 1:
        raise EdgesegError(f"--chunk and --range-frames must be >= 1, got {chunk} and {range_frames}.")
    # What the user typed, opened the one way the runtime opens it (lists, all-video folders and globs expand;
    # name=SOURCE names), and laid out as one machine lays it out: one source into --out, several into --out/<name>/.
    entries = expand(list(sources), recursive=options.recursive)
    names = unique_names([entry.name for entry in entries])
    single = len(sources) == 1 and len(entries) == 1 and split_name(str(sources[0])).name is None
    outs = [str(out)] if single else [str(Path(out) / name) for name in names]
    planned, units = [], []
    for number, (entry, name, folder) in enumerate(zip(entries, names, outs)):
        spec = entry.spec
        if is_live(spec):
            raise EdgesegError(f"`{spec}` is a live source; --ray runs files (images and videos) on a cluster: run "
                               "live sources without --ray.")
        kind, paths = classify_source(spec, recursive=options.recursive)
        if kind == "video":
            try:
                source, pieces = _video_units(number, spec, folder, options, range_frames, warm_frames(options.smooth),
                                              name=name)
            except EdgesegError as error:
                if len(sources) == 1:
                    raise  # the job's only source: stop with its one line, as without Ray
                log.warning("skipped %s: %s", spec, error)  # one bad video of many costs only itself
                source, pieces = Source(number, spec, kind, folder, 0, 0.0, error=str(error), name=name), []
        else:
            chosen = paths[options.start::options.stride][:options.max_frames]
            root = spec if kind == "folder" else None
            # The whole source's names (as without Ray): two files with one stem keep their suffixes.
            outputs = frame_names(paths, root)[options.start::options.stride][:options.max_frames]
            source = Source(number, spec, kind, folder, len(chosen), 0.0, name=name)
            pieces = [Unit(number, seq, "images", folder, index=i, paths=tuple(str(p) for p in chosen[i:i + chunk]),
                           names=tuple(outputs[i:i + chunk]), root=root)
                      for seq, i in enumerate(range(0, len(chosen), chunk))]
        planned.append(source)
        units += pieces
    return planned, units


def _video_units(number: int, spec: str, folder: str, options: SegmentOptions, range_frames: int,
                 warm: int, *, name: str) -> tuple[Source, list[Unit]]:
    info = VideoInfo.from_video_path(spec)
    wanted = range(options.start, info.frame_count, options.stride)[:options.max_frames]
    fps = info.fps / options.stride
    if not info.frame_count:
        # A header without a frame count: one range to the end, on one worker.
        only = Unit(number, 0, "video", folder, index=options.start, video=spec, first=options.start,
                    count=options.max_frames or 1 << 40, stride=options.stride, fps=fps)
        return Source(number, spec, "video", folder, 0, fps, name=name), [only]
    units = []
    for seq, at in enumerate(range(0, len(wanted), range_frames)):
        frames = wanted[at:at + range_frames]
        early = min(warm, at)  # never before the selection's own start
        units.append(Unit(number, seq, "video", folder, index=frames[0], video=spec, first=frames[0],
                          count=len(frames), stride=options.stride, warm=early, fps=fps))
    return Source(number, spec, "video", folder, len(wanted), fps, name=name), units
