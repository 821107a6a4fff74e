"""One stream's outputs, optionally cut into numbered segments so a day-long run is a list of playable files.

Without rotation: ``overlay.mp4`` and ``frames.jsonl``. With ``rotate`` minutes: ``overlay-0000.mp4``
+ ``frames-0000.jsonl``, then ``-0001``... Each segment's video is finalized (H.264, index written)
the moment the next one starts, so every closed segment plays while the run goes on, and a frame
is in exactly one segment. Masks go to ``masks/<frame>.png`` either way.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime._sinks import JsonlSink, VideoSink, write_mask_png


class RotatingOutputs:
    """``write(record, picture, mask)`` per frame into ``folder`` (None: nothing is written).

    Example::

        outputs = RotatingOutputs(Path("runs/door"), outputs=("overlay", "jsonl"), rotate=60)
        outputs.write({"index": 0}, overlay_image, None, fps=25)
        outputs.close()
    """

    def __init__(self, folder: Path | None, *, outputs: Collection[str], rotate: float | None, codec: str) -> None:
        self.folder, self.outputs, self.codec = folder, set(outputs), codec
        self.rotate_s = rotate * 60 if rotate else None
        self.segment = 0
        self.segments: list[dict[str, Any]] = []  # closed ones: files and frame counts
        self._video: VideoSink | None = None
        self._jsonl: JsonlSink | None = None
        self._frames = 0
        self._opened_at = 0.0
        self._made_masks = False
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any], picture: np.ndarray | None, mask: np.ndarray | None, *,
              palette: Sequence[Sequence[int]] = (), fps: float = 25.0) -> None:
        if self.folder is None:
            return
        if self._frames and self.rotate_s is not None and time.monotonic() - self._opened_at >= self.rotate_s:
            self._close_segment()
        if self._frames == 0:
            self._opened_at = time.monotonic()
        self._frames += 1
        if "jsonl" in self.outputs:
            if self._jsonl is None:
                self._jsonl = JsonlSink(self.folder / self._name("frames", "jsonl")).__enter__()
            self._jsonl.write({**record, "segment": self.segment})
        if picture is not None and "overlay" in self.outputs:
            if self._video is None:
                self._video = VideoSink(self.folder / self._name("overlay", "mp4"), fps=fps or 25.0, codec=self.codec)
            self._video.write(picture)
        if mask is not None and "masks" in self.outputs:
            self._write_mask(record["name"], mask, palette)

    def close(self) -> None:
        if self._frames:
            self._close_segment()

    def listing(self) -> dict[str, Any]:
        """What was written: the segments (files, frames, codec) and the masks folder."""
        listing: dict[str, Any] = {"segments": list(self.segments)}
        if self._made_masks:
            listing["masks"] = "masks/"
        return listing

    def _name(self, stem: str, suffix: str) -> str:
        return f"{stem}.{suffix}" if self.rotate_s is None else f"{stem}-{self.segment:04d}.{suffix}"

    def _close_segment(self) -> None:
        entry: dict[str, Any] = {"segment": self.segment, "frames": self._frames}
        if self._jsonl is not None:
            self._jsonl.__exit__(None, None, None)
            entry["jsonl"] = self._jsonl.path.name
            self._jsonl = None
        if self._video is not None:
            self._video.close()
            entry.update(video=self._video.path.name, video_codec=self._video.codec, video_frames=self._video.frames)
            self._video = None
        self.segments.append(entry)
        self.segment += 1
        self._frames = 0

    def _write_mask(self, name: str, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
        path = self.folder / "masks" / f"{name}.png"
        if not self._made_masks:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made_masks = True
        try:
            write_mask_png(path, mask, palette)
        except OSError as error:
            raise EdgesegError(f"Cannot write `{path}`: {error.strerror or error}.") from None
