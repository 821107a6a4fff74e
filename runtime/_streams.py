"""Live sources: a webcam index or a stream URL (RTSP, HTTP, TCP, UDP...), read so they never fall behind.

A grabber thread reads frames as fast as the camera sends them. With the default ``drop-old``
policy it keeps only the newest frame and counts the ones nobody took (``dropped``), so latency
stays at one frame however slow inference is; ``queue-all`` keeps every frame in a bounded queue
(the grabber waits when it is full). When the stream fails, the grabber reconnects with
exponential backoff, up to ``reconnect`` attempts in a row, then ends the source. A stream that
sends nothing for ``stall_timeout`` seconds (FFmpeg's read timeout) counts a stall and is reconnected.

Stopping never waits on the network: :meth:`LiveSource.close` sets a flag and waits at most
``close_timeout`` (1 s) for the grabber. A grabber stuck in FFmpeg's open or read (a server that
accepts and never sends blocks for the whole open timeout) is a daemon thread that is left behind:
it sees the flag when FFmpeg returns, releases its capture and publishes nothing more.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime._frames import Frame

log = logging.getLogger("edgeseg.runtime")

POLICIES = ("drop-old", "queue-all")
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "tcp://", "udp://", "srt://")


def is_live(spec: object) -> bool:
    """True for a webcam index (``0``, ``"1"``) or a stream URL."""
    if isinstance(spec, int):
        return True
    text = str(spec)
    return text.isdigit() or text.lower().startswith(URL_SCHEMES)


@dataclass
class StreamStats:
    """What happened to a live source (updated by the grabber thread; read after the run)."""

    grabbed: int = 0
    dropped: int = 0
    reconnects: int = 0
    stalls: int = 0
    unread: int = 0  # grabbed, never taken: left behind by close(); grabbed - dropped - unread were taken
    failures: list[str] = field(default_factory=list)
    gave_up: bool = False


class LiveSource:
    """Frames from a camera or URL; iterate it, then read :attr:`stats`. Call :meth:`close` to stop.

    Example::

        source = LiveSource("rtsp://camera/stream", policy="drop-old", reconnect=5)
        for frame in source:
            ...
        print(source.stats.dropped)
    """

    def __init__(self, spec: int | str, *, policy: str = "drop-old", reconnect: int = 5, backoff: float = 0.5,
                 max_backoff: float = 8.0, open_timeout: float = 5.0, stall_timeout: float = 5.0,
                 queue_size: int = 32, name: str | None = None, wake: threading.Event | None = None) -> None:
        if policy not in POLICIES:
            raise EdgesegError(f"Unknown live policy {policy!r}: expected one of {', '.join(POLICIES)}.")
        if reconnect < 0:
            raise EdgesegError(f"`reconnect` must be >= 0 attempts, got {reconnect}.")
        self.spec = int(spec) if str(spec).isdigit() else str(spec)
        if stall_timeout <= 0 or open_timeout <= 0:
            raise EdgesegError(f"`stall_timeout` and `open_timeout` must be > 0 seconds, got {stall_timeout} and "
                               f"{open_timeout}.")
        self.name = name or (f"camera{self.spec}" if isinstance(self.spec, int) else _safe_name(self.spec))
        self.policy = policy
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self.stall_timeout = stall_timeout
        # What it is doing now (idle, connecting, reading, backoff, gave_up, stopped): read at any time from
        # another thread; one writer, the grabber.
        self.state = "idle"
        self.started = time.monotonic()  # a frame was captured at started + frame.timestamp (monotonic clock)
        self._wake = wake  # set on every new frame, for a consumer that waits on several sources
        self.stats = StreamStats()
        self.fps = 0.0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=queue_size)
        self._latest: Frame | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()

    def begin(self) -> LiveSource:
        """Start grabbing in the background and return at once (:meth:`start` also waits for the first open)."""
        if self._thread is None:
            self.started = time.monotonic()
            self._thread = threading.Thread(target=self._grab, name=f"edgeseg-grab-{self.name}", daemon=True)
            self._thread.start()
        return self

    def start(self) -> LiveSource:
        """Open the stream and start grabbing; raises EdgesegError when the first open and every retry fail."""
        if self._thread is None:
            self.begin()
            while not (self._opened.is_set() or self._done.is_set() or self._stop.is_set()):
                self._opened.wait(0.05)
            if not self._opened.is_set() and not self._stop.is_set():
                reason = self.stats.failures[-1] if self.stats.failures else "no frames"
                raise EdgesegError(f"Cannot open live source `{self.spec}`: {reason} "
                                   f"(tried {1 + self.reconnect} time(s)). Check the URL or camera index.")
        return self

    def __iter__(self) -> Iterator[Frame]:
        self.start()
        while True:
            frame = self._next()
            if frame is None:
                return
            yield frame

    @property
    def finished(self) -> bool:
        """True once the grabber has ended (gave up or stopped) and no frame is left to take."""
        return self._done.is_set() and self._latest is None and self._queue.empty()

    def take(self) -> Frame | None:
        """The newest frame not taken yet, or None: never waits (for a consumer of several sources)."""
        if self.policy == "queue-all":
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                return None
        with self._cond:
            frame, self._latest = self._latest, None
            return frame

    def close(self, timeout: float = 1.0) -> None:
        """Stop grabbing; waits at most ``timeout`` seconds (a grabber blocked in FFmpeg is left behind).

        Frames grabbed and never taken are counted in ``stats.unread``.
        """
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        with self._cond:
            if self._latest is not None:
                self._latest = None
                self.stats.unread += 1
            while not self._queue.empty():
                self._queue.get_nowait()
                self.stats.unread += 1
            if self.state != "gave_up":
                self.state = "stopped"
            self._done.set()
            self._cond.notify_all()

    def _next(self) -> Frame | None:
        if self.policy == "queue-all":
            while True:
                try:
                    return self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._done.is_set() and self._queue.empty():
                        return None
        with self._cond:
            while self._latest is None and not self._done.is_set():
                self._cond.wait(0.1)
            frame, self._latest = self._latest, None
            return frame

    def _publish(self, frame: Frame) -> None:
        if self.policy == "queue-all":
            while not self._stop.is_set():
                try:
                    self._queue.put(frame, timeout=0.1)
                    if self._wake is not None:
                        self._wake.set()
                    return
                except queue.Full:
                    continue
            self.stats.grabbed -= 1  # stopped before anyone could take it: never grabbed, as close() counts
            return
        with self._cond:
            if self._stop.is_set():  # close() has counted what was left; a late frame is not grabbed
                self.stats.grabbed -= 1
                return
            if self._latest is not None:
                self.stats.dropped += 1
            self._latest = frame
            self._cond.notify()
        if self._wake is not None:
            self._wake.set()

    def _open(self) -> cv2.VideoCapture | None:
        if isinstance(self.spec, int):
            capture = cv2.VideoCapture(self.spec)
        else:
            # The read timeout is the stall timeout: a stream silent that long fails its read and is reconnected.
            capture = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.stall_timeout * 1000)])
        if capture.isOpened():
            fps = capture.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and 0 < fps < 1000 else self.fps or 25.0
            return capture
        capture.release()
        return None

    def _grab(self) -> None:
        index, failures = 0, 0
        try:
            while not self._stop.is_set():
                self.state = "connecting"
                capture = self._open()
                if self._stop.is_set():  # close() gave up waiting for this open: leave quietly
                    if capture is not None:
                        capture.release()
                    break
                if capture is None:
                    self.stats.failures.append("could not open the stream")
                else:
                    if self._opened.is_set():
                        self.stats.reconnects += 1
                        log.info("%s: reconnected", self.spec)
                    self._opened.set()
                    index, failures = self._read(capture, index, failures)
                    capture.release()
                if self._stop.is_set():
                    break
                failures += 1
                if failures > self.reconnect:
                    self.stats.gave_up = True
                    self.state = "gave_up"
                    log.warning("%s: giving up after %d failed reconnect attempt(s)", self.spec, self.reconnect)
                    break
                delay = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
                log.info("%s: reconnecting in %.1f s (attempt %d of %d)", self.spec, delay, failures, self.reconnect)
                self.state = "backoff"
                self._stop.wait(delay)
        finally:
            if self.state != "gave_up":
                self.state = "stopped"
            self._done.set()
            with self._cond:
                self._cond.notify_all()
            if self._wake is not None:
                self._wake.set()

    def _read(self, capture: cv2.VideoCapture, index: int, failures: int) -> tuple[int, int]:
        self.state = "reading"
        last = time.monotonic()
        while not self._stop.is_set():
            ok, image = capture.read()
            now = time.monotonic()
            if not ok:
                if now - last >= 0.9 * self.stall_timeout:
                    self.stats.stalls += 1
                    reason = f"stalled: no frame for {now - last:.1f} s after frame {index}"
                else:
                    reason = f"stream ended after frame {index}"
                self.stats.failures.append(reason)
                log.warning("%s: %s", self.spec, reason)
                break
            failures, last = 0, now
            self.stats.grabbed += 1
            self._publish(Frame(index, f"{self.name}_{index:06d}", image, now - self.started, source=str(self.spec)))
            index += 1
        return index, failures


def _safe_name(url: str) -> str:
    tail = url.split("://", 1)[-1].split("@")[-1]
    return "".join(ch if ch.isalnum() else "_" for ch in tail).strip("_")[:40] or "stream"
