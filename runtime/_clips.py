"""Clips around events: a ring buffer of ENCODED frames, cut into a playable MP4 per event.

Raw pixels for 10 s of 1080p at 15 fps are about 900 MB; the same seconds in H.264 are a few MB.
So each stream that records clips encodes its frames as it goes — the ffmpeg binary of the
``imageio-ffmpeg`` package, as :class:`VideoSink` uses it (libx264, ultrafast, one thread), here
writing a raw H.264 stream to a pipe with an access-unit delimiter before each frame and the
stream headers repeated at each keyframe — and keeps the last ``before`` seconds of access units
(from a keyframe on). A keyframe comes every ``keyframe_s`` seconds (default 0.5 s), so a clip
starts at most that long before ``at - before``. When an event asks for a clip, the units from that
keyframe on are collected, the next ones added until ``at + after``, and the clip is muxed
(``-c copy``, no re-encoding) into an MP4 beside its final name and moved into place. Frames play
at the stream's nominal ``fps``.

Example::

    clips = ClipRecorder(fps=15, before=5, after=10)
    for frame in frames:
        clips.write(frame.image, frame.timestamp)
        if event_started:
            clips.clip("run/clips/door.mp4", at=frame.timestamp)
    clips.close()   # writes the clips still waiting for their "after" seconds with what there is
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import require
from edgeseg.runtime.files import atomic_path

log = logging.getLogger("edgeseg.runtime")

_AUD = 9  # H.264 NAL unit type of the access unit delimiter
_IDR = 5


@dataclass
class _Unit:
    timestamp: float
    key: bool
    data: bytes


@dataclass
class _Pending:
    path: Path
    start: float
    until: float
    units: list[_Unit] = field(default_factory=list)

    def take(self, unit: _Unit) -> None:
        """Add the next unit: a keyframe at or before the start begins the clip anew (the encoder may lag
        behind the request, so the right first keyframe can come after it)."""
        if unit.timestamp > self.until:
            return
        if unit.key and unit.timestamp <= self.start:
            self.units = [unit]
        elif self.units or unit.key:
            self.units.append(unit)


def _ffmpeg() -> str:
    imageio_ffmpeg = require("imageio_ffmpeg", purpose="event clips", among=("cpu",))
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as error:
        raise EdgesegError(f"event clips need imageio-ffmpeg's ffmpeg binary, which it cannot find ({error}).") from None


class ClipRecorder:
    """One stream's encoded ring buffer; :meth:`clip` writes ``[at - before, at + after]`` to an MP4.

    ``write(image, timestamp)`` takes BGR frames in order (the first frame's size is the clip's;
    others are resized). ``clips_written`` counts the finished clips. Thread-safe.
    """

    def __init__(self, *, fps: float, before: float, after: float, keyframe_s: float = 0.5, crf: int = 23) -> None:
        if before < 0 or after < 0:
            raise EdgesegError(f"clips: expected seconds before and after >= 0, got {before!r} and {after!r}.")
        if keyframe_s <= 0:
            raise EdgesegError(f"clips: expected a keyframe interval > 0 s, got {keyframe_s!r}.")
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.before, self.after = float(before), float(after)
        self.keyint = max(1, round(keyframe_s * self.fps))
        self.crf = crf
        self.exe = _ffmpeg()
        self.clips_written = 0
        self.failed = 0
        self._size: tuple[int, int] | None = None
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._times: collections.deque[float] = collections.deque()
        self._ring: collections.deque[_Unit] = collections.deque()
        self._pending: list[_Pending] = []
        self._muxers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def write(self, image: np.ndarray, timestamp: float) -> None:
        """Encode one frame (BGR or gray, uint8) taken at ``timestamp`` seconds."""
        if self._closed:
            return
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if self._process is None:
            self._start(image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        with self._lock:
            self._times.append(float(timestamp))
        try:
            self._process.stdin.write(np.ascontiguousarray(image, np.uint8).data)
        except (BrokenPipeError, OSError) as error:
            raise EdgesegError(f"clips: the ffmpeg encoder stopped ({error}).") from None

    @property
    def buffered(self) -> int:
        """Encoded frames kept now (from the keyframe at or before ``before`` seconds ago)."""
        with self._lock:
            return len(self._ring)

    def clip(self, path: str | os.PathLike, *, at: float) -> Path:
        """Ask for a clip of ``[at - before, at + after]`` at ``path`` (written once ``at + after`` is encoded,
        or at :meth:`close`); returns the path."""
        path = Path(path)
        pending = _Pending(path, at - self.before, at + self.after)
        with self._lock:
            for unit in self._ring:
                pending.take(unit)
            self._pending.append(pending)
        return path

    def close(self) -> None:
        """Finish encoding; write every clip still waiting (with the frames there are); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._process is not None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._reader is not None:
                self._reader.join()
        with self._lock:
            pending, self._pending = self._pending, []
        for clip in pending:
            self._mux(clip)
        for muxer in self._muxers:
            muxer.join()

    def __enter__(self) -> ClipRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self, width: int, height: int) -> None:
        self._size = (width, height)
        command = [
            self.exe, "-hide_banner", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "pipe:0",
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-threads", "1", "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            # A keyframe every keyint frames and nowhere else, no B-frames (units come out in frame order),
            # a delimiter before each frame (where to cut) and the headers at each keyframe (a clip can start there).
            "-g", str(self.keyint), "-keyint_min", str(self.keyint), "-sc_threshold", "0", "-bf", "0",
            "-x264-params", "aud=1:repeat-headers=1", "-flush_packets", "1", "-f", "h264", "pipe:1",
        ]
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:
            raise EdgesegError(f"clips: cannot start ffmpeg ({error}).") from None
        self._reader = threading.Thread(target=self._read, name="edgeseg-clips", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        out = self._process.stdout
        while True:
            chunk = out.read1(1 << 16)
            if not chunk:
                break
            buffer += chunk
            cuts = _unit_starts(buffer)
            # Every unit but the last is complete (the last ends where the next delimiter will begin).
            for begin, end in zip(cuts, cuts[1:]):
                self._add(buffer[begin:end])
            if len(cuts) > 1:
                buffer = buffer[cuts[-1]:]
        if buffer:
            self._add(buffer)

    def _add(self, data: bytes) -> None:
        unit_is_key = _has_idr(data)
        with self._lock:
            if not self._times:
                return  # a unit without a frame cannot be: ffmpeg emits one per frame written
            unit = _Unit(self._times.popleft(), unit_is_key, data)
            self._ring.append(unit)
            self._prune()
            done = []
            for clip in self._pending:
                if unit.timestamp <= clip.until:
                    clip.take(unit)
                else:
                    done.append(clip)
            for clip in done:
                self._pending.remove(clip)
        for clip in done:
            muxer = threading.Thread(target=self._mux, args=(clip,), name="edgeseg-clip-mux", daemon=True)
            muxer.start()
            self._muxers = [m for m in self._muxers if m.is_alive()] + [muxer]

    def _prune(self) -> None:
        # Keep from the last keyframe at or before (newest - before): what the next clip could start with.
        horizon = self._ring[-1].timestamp - self.before
        keys = [i for i, unit in enumerate(self._ring) if unit.key and unit.timestamp <= horizon]
        for _ in range(keys[-1] if keys else 0):
            self._ring.popleft()

    def _mux(self, clip: _Pending) -> None:
        if not clip.units:
            self.failed += 1
            log.warning("%s: no clip written: no frame was encoded in its time span", clip.path)
            return
        data = b"".join(unit.data for unit in clip.units)
        try:
            clip.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(clip.path) as temporary:
                done = subprocess.run([self.exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "h264",
                                       "-framerate", f"{self.fps:g}", "-i", "pipe:0", "-c", "copy",
                                       "-movflags", "+faststart", "-f", "mp4", str(temporary)],
                                      input=data, capture_output=True, timeout=60)
                if done.returncode != 0:
                    raise OSError(done.stderr.decode("utf-8", "replace").strip()[-300:] or f"ffmpeg status {done.returncode}")
        except (OSError, subprocess.TimeoutExpired) as error:
            self.failed += 1
            log.warning("%s: clip not written: %s", clip.path, error)
            return
        self.clips_written += 1


def _unit_starts(data: bytes) -> list[int]:
    """Offsets of the access-unit delimiters (start code + NAL type 9) in an Annex B stream.

    Emulation prevention keeps 00 00 01 out of NAL payloads, so a start code found is a real one.
    """
    starts = []
    position = data.find(b"\x00\x00\x01")
    while position >= 0:
        if position + 3 < len(data) and data[position + 3] & 0x1F == _AUD:
            starts.append(position - 1 if position > 0 and data[position - 1] == 0 else position)
        position = data.find(b"\x00\x00\x01", position + 3)
    return starts


def _has_idr(unit: bytes) -> bool:
    position = unit.find(b"\x00\x00\x01")
    while position >= 0:
        if position + 3 < len(unit) and unit[position + 3] & 0x1F == _IDR:
            return True
        position = unit.find(b"\x00\x00\x01", position + 3)
    return False
