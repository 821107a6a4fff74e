"""Every knob of ``segment``, for every kind of source, in one frozen, validated dataclass.

One option means one thing for every source: an image folder, a video, a camera, a list of
cameras. Where an option cannot apply to a kind of source the pipeline says so in one line when the
run starts (:func:`edgeseg.runtime.segment`), never silently.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from edgeseg.runtime.errors import EdgesegError

OUTPUTS = ("masks", "overlay", "reconstruction", "jsonl")  # the default outputs
VECTOR_OUTPUTS = ("polygons", "rle")  # vector forms of each mask, asked for by name
KNOWN_OUTPUTS = OUTPUTS + VECTOR_OUTPUTS
POLICIES = ("drop-old", "queue-all")
CODECS = ("auto", "avc1", "ffmpeg", "mp4v")


@dataclass(frozen=True)
class SegmentOptions:
    """Every knob of :func:`segment`, validated once (``None`` means "the model's or engine's default").

    Frames: ``stride``, ``start``, ``max_frames`` (per source), ``recursive`` (subfolders).
    Inference: ``batch`` (most frames of one file source per call; None: :data:`AUTOENCODER_BATCH`
    for autoencoders, else 1 — a live source gives its newest frame, and one call carries a frame of
    every stream that has one), ``inflight`` (inference calls in flight at once on files, frames kept
    in order; None: the model's streams), and, when the model is given as a path, ``provider``,
    ``threads``, ``engine``, ``precision``, ``optimization``, ``strict`` (see :class:`Model`).
    Outputs: ``outputs`` (any of masks, overlay, reconstruction, jsonl; ``summary.json`` is always
    written), ``alpha`` (overlay opacity), ``smooth`` (weight in [0, 1) of earlier frames' class
    probabilities, videos and streams, reset on reconnect), ``codec`` (overlay videos), ``rotate``
    (minutes per overlay video and frames.jsonl segment; None: one file each), ``show``, ``progress``;
    also ``polygons`` and ``rle`` (not by default): per frame ``polygons/<name>.json`` (each class's
    regions as polygons with holes, simplified by ``polygon_tolerance`` pixels) and ``rle/<name>.json``
    (each class as COCO RLE), each with the class's connected regions; a source of images also gets one
    COCO ``coco.json``.
    Decisions: ``zones`` (the path of a zones/rules file: per-zone class statistics in every record,
    rules, events in ``events.jsonl``, event sinks; see :mod:`edgeseg.runtime.decisions`), ``clips``
    (``(seconds_before, seconds_after)``: an H.264 clip around each event; needs ``zones`` with rules).
    Live sources: ``policy`` (keep the newest frame, or queue every frame up to 32), ``reconnect``
    (attempts in a row), ``open_timeout`` and ``stall_timeout`` (seconds). An ``--out`` that holds a
    run: ``overwrite`` clears it first, ``resume`` continues it.

    Example::

        options = SegmentOptions(batch=4, outputs=("masks", "jsonl"), smooth=0.5)
        segment("clip.mp4", model="fcn8.onnx", out="runs/clip", options=options)
    """

    outputs: tuple[str, ...] = OUTPUTS
    batch: int | None = None
    stride: int = 1
    start: int = 0
    max_frames: int | None = None
    recursive: bool = False
    alpha: float = 0.5
    smooth: float = 0.0
    policy: str = "drop-old"
    reconnect: int = 5
    open_timeout: float = 5.0
    stall_timeout: float = 5.0
    rotate: float | None = None
    codec: str = "auto"
    show: bool = False
    progress: bool = False
    queue_size: int = 8
    overwrite: bool = False
    resume: bool = False
    provider: str = "auto"
    threads: int | None = None
    engine: str | None = None  # None: "auto", its choice logged at debug level only
    precision: str = "auto"
    optimization: str = "all"
    strict: bool = False
    inflight: int | None = None
    zones: str | None = None  # a path, not objects: the options travel to --ray's workers (pickled)
    clips: tuple[float, float] | None = None
    polygon_tolerance: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", tuple(self.outputs))
        unknown = set(self.outputs) - set(KNOWN_OUTPUTS)
        if unknown:
            raise EdgesegError(f"Unknown output(s) {', '.join(sorted(unknown))}: choose from "
                               f"{', '.join(KNOWN_OUTPUTS)}.")
        self._check_decisions()
        if self.inflight is not None and self.inflight < 1:
            raise EdgesegError(f"`inflight` (inference calls at once) must be >= 1, got {self.inflight}.")
        if (self.batch is not None and self.batch < 1) or self.queue_size < 1:
            raise EdgesegError(f"`batch` and `queue_size` must be >= 1, got {self.batch} and {self.queue_size}.")
        if self.stride < 1 or self.start < 0 or (self.max_frames is not None and self.max_frames < 0):
            raise EdgesegError(f"Frame selection needs stride >= 1, start >= 0, max_frames >= 0; "
                               f"got {self.stride}, {self.start}, {self.max_frames}.")
        _in_range("smooth", self.smooth, 0.0, 1.0, "[0, 1) (0: off)", upper_open=True)
        _in_range("alpha", self.alpha, 0.0, 1.0, "[0, 1] (overlay opacity)")
        if self.policy not in POLICIES:
            raise EdgesegError(f"Unknown live policy {self.policy!r}: expected one of {', '.join(POLICIES)}.")
        if self.codec not in CODECS:
            raise EdgesegError(f"Unknown video codec {self.codec!r}: expected one of {', '.join(CODECS)}.")
        if self.reconnect < 0:
            raise EdgesegError(f"`reconnect` must be >= 0 attempts, got {self.reconnect}.")
        for key in ("open_timeout", "stall_timeout"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise EdgesegError(f"`{key}` must be a number of seconds > 0, got {value}.")
        if self.rotate is not None and not (math.isfinite(self.rotate) and self.rotate > 0):
            raise EdgesegError(f"`rotate` must be > 0 minutes, got {self.rotate}.")
        if self.overwrite and self.resume:
            raise EdgesegError("--overwrite and --resume contradict each other: pass one.")

    def _check_decisions(self) -> None:
        if self.zones is not None:
            if isinstance(self.zones, os.PathLike):
                object.__setattr__(self, "zones", os.fspath(self.zones))
            if not isinstance(self.zones, str) or not self.zones.strip():
                raise EdgesegError(f"`zones` must be the path of a zones/rules file (JSON or YAML), got {self.zones!r}.")
        if self.clips is not None:
            clips = self.clips
            if isinstance(clips, str) or not hasattr(clips, "__len__") or len(clips) != 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                    for v in clips):
                raise EdgesegError(f"`clips` must be (seconds_before, seconds_after), two numbers >= 0, got {clips!r}.")
            object.__setattr__(self, "clips", (float(clips[0]), float(clips[1])))
            if self.zones is None:
                raise EdgesegError("--clips cuts a clip around each event: it needs --zones FILE with rules.")
        if not (isinstance(self.polygon_tolerance, (int, float)) and math.isfinite(self.polygon_tolerance)
                and self.polygon_tolerance >= 0):
            raise EdgesegError(f"`polygon_tolerance` must be >= 0 pixels (0: every traced corner), got "
                               f"{self.polygon_tolerance!r}.")

    def replace(self, **changes: Any) -> SegmentOptions:
        """A copy with ``changes``; an unknown name is a TypeError naming the known ones, never ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; SegmentOptions has {', '.join(sorted(known))}.")
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def live(self) -> dict[str, Any]:
        """The keyword arguments of a :class:`LiveSource` these options give."""
        return {"policy": self.policy, "reconnect": self.reconnect, "open_timeout": self.open_timeout,
                "stall_timeout": self.stall_timeout}


def _in_range(key: str, value: float, low: float, high: float, expected: str, *, upper_open: bool = False) -> None:
    ok = math.isfinite(value) and low <= value and (value < high if upper_open else value <= high)
    if not ok:
        raise EdgesegError(f"`{key}` must be in {expected}, got {value}.")
