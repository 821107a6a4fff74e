"""Live sources: a webcam index or a stream URL (RTSP, HTTP, TCP, UDP...), read so they never fall behind.

A grabber thread reads frames as fast as the camera sends them. With the default ``drop-old``
policy it keeps only the newest frame and counts the ones nobody took (``dropped``), so latency
stays at one frame however slow inference is; ``queue-all`` keeps every frame in a bounded queue
(the grabber waits when it is full). When the stream fails, the grabber reconnects with
exponential backoff, up to ``reconnect`` attempts in a row, then ends the source.

Opening and silence, whatever the protocol:

- Each source opens in its own thread with its own ``open_timeout``. OpenCV serializes every FFmpeg
  open behind one process-wide lock unless ``OPENCV_FFMPEG_IS_THREAD_SAFE`` is set (FFmpeg >= 4 is
  thread-safe; OpenCV >= 4.8 reads the variable at each open): without it one camera that accepts
  and never sends held every other camera's (re)connect for its whole open timeout (a healthy
  stream took 58.9 s to come back after a 2 s outage beside 3 silent ones). edgeseg sets it when
  the first live source begins, unless the environment already says otherwise.
- A stream silent for ``stall_timeout`` seconds is a stall (``stats.stalls``) and is reconnected.
  FFmpeg's read timeout is the stall timeout; a read that ran into it is the stall, even when OpenCV
  then hands back a frame still buffered in the decoder (RTSP and TCP do: counting only failed reads
  noticed an RTSP freeze after 3x the timeout and called a TCP freeze "stream ended").

Stopping never waits on the network: :meth:`LiveSource.close` sets a flag and waits at most
``timeout`` (1 s) for the grabber. A grabber stuck in FFmpeg's open or read is a daemon thread left
behind: it sees the flag when FFmpeg returns, releases its capture and publishes nothing more.
Such a thread must not still be inside OpenCV when Python finalizes: Python 3.11-3.13 end a daemon
thread that wakes up then with ``pthread_exit``, whose unwinding through OpenCV's binding aborts
the process ("terminate called without an active exception", exit 134). So, at exit, every live
source is stopped and each grabber is given the rest of its native call's own timeout to return
(:func:`settle_live_sources`). The ``edgeseg`` command leaves with ``os._exit`` instead when a thread
is still alive (:func:`edgeseg.cli.run`), so it never waits for them.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import cv2

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime._frames import Frame

log = logging.getLogger("edgeseg.runtime")

POLICIES = ("drop-old", "queue-all")
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "tcp://", "udp://", "srt://")
# Schemes with no default port; udp and srt may leave the host out (listen on every interface).
_NEEDS_PORT = ("tcp", "udp", "srt")
_MAY_LISTEN = ("udp", "srt")
# A read or open that returns this long after its own timeout is not expected: the rest is FFmpeg's teardown.
_NATIVE_MARGIN = 1.0

_T = TypeVar("_T")


def is_live(spec: object) -> bool:
    """True for a webcam index (``0``, ``"1"``) or a stream URL."""
    if isinstance(spec, int):
        return True
    text = str(spec)
    return text.isdigit() or text.lower().startswith(URL_SCHEMES)


def validate_source(spec: int | str) -> int | str:
    """A live source as LiveSource takes it (a webcam index as int), or EdgesegError in one line saying what
    is wrong with the URL: a port that is not a number in 1..65535, no host, spaces or control characters.

    Checked before anything connects, so a typo fails at once instead of after every retry.

    Example::

        validate_source("rtsp://10.0.0.5:554/stream")   # 'rtsp://10.0.0.5:554/stream'
        validate_source("rtsp://10.0.0.5:99999/s")      # EdgesegError: ... port 99999 is not in 1..65535 ...
    """
    if isinstance(spec, int) or str(spec).isdigit():
        return int(spec)
    text = str(spec)
    if not text.lower().startswith(URL_SCHEMES):
        raise EdgesegError(f"`{_shown_url(text)}` is not a live source: expected a webcam index or a URL starting "
                           f"with {', '.join(URL_SCHEMES)}.")
    shown = _shown_url(text)
    bad = next((ch for ch in text if ch.isspace() or ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        what = "a space" if bad == " " else f"the control character {bad!r}"
        raise EdgesegError(f"Stream URL `{shown}` contains {what}: percent-encode it (a space is %20) or remove it.")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as error:
        detail = str(error)
        if "Port" in detail:
            raw = text.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1].rsplit(":", 1)[-1]
            detail = f"port {raw!r} is not a number in 1..65535"
        raise EdgesegError(f"Stream URL `{shown}`: {detail}. Fix the URL.") from None
    scheme = parts.scheme.lower()
    if port == 0:
        raise EdgesegError(f"Stream URL `{shown}`: port 0 is not in 1..65535. Fix the URL.")
    listens = scheme in _MAY_LISTEN or (scheme == "tcp" and "listen" in parts.query)
    if not parts.hostname and not listens:
        raise EdgesegError(f"Stream URL `{shown}` has no host: expected {scheme}://HOST[:PORT]/... Fix the URL.")
    if port is None and scheme in _NEEDS_PORT:
        raise EdgesegError(f"Stream URL `{shown}` has no port: {scheme}:// needs one ({scheme}://HOST:PORT). Fix the URL.")
    return text


def _shown_url(url: str) -> str:
    """A URL as it may be printed: a password in it becomes ``***``."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        credentials, host = authority.rsplit("@", 1)
        if ":" in credentials:
            authority = credentials.split(":", 1)[0] + ":***@" + host
    return f"{head}://{authority}{slash}{tail}"


# Every live source that has begun, for settle_live_sources (weak: a source nobody holds is collected).
_LIVE: weakref.WeakSet[LiveSource] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_SETUP_DONE = False


def _setup_once() -> None:
    """At the first live source: parallel FFmpeg opens, and the exit hook that keeps Python from aborting."""
    global _SETUP_DONE
    with _LIVE_LOCK:
        if _SETUP_DONE:
            return
        _SETUP_DONE = True
        # Set before any grabber thread runs (OpenCV reads it at each open); a value the user set is kept.
        os.environ.setdefault("OPENCV_FFMPEG_IS_THREAD_SAFE", "1")
        atexit.register(settle_live_sources)


def settle_live_sources(timeout: float | None = None) -> bool:
    """Stop every live source and wait until no grabber is inside OpenCV/FFmpeg; True when none is.

    Each grabber gets the rest of its current open or read's own timeout (``open_timeout`` or
    ``stall_timeout``), at most ``timeout`` seconds in all (None: as long as that takes). Runs at
    exit on its own (see the module's docstring); a program that must exit within a second calls
    it with a short ``timeout`` and, when it returns False, flushes its output and ends with
    ``os._exit(code)``, which skips the finalization a late grabber would abort.

    Example::

        if not settle_live_sources(timeout=0.5):
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    """
    with _LIVE_LOCK:
        sources = list(_LIVE)
    for source in sources:
        source._request_stop()
    # No native call outlives its own timeout by much: that bounds the wait even when `timeout` is None.
    longest = max((max(src.open_timeout, src.stall_timeout) for src in sources), default=0.0) + 2 * _NATIVE_MARGIN
    give_up = time.monotonic() + (longest if timeout is None else min(timeout, longest))
    for source in sources:
        thread = source._thread
        while thread is not None and thread.is_alive():
            now = time.monotonic()
            busy_until = source._native_until or now + 0.5  # in Python: it ends at once
            if now >= busy_until or now >= give_up:
                break
            thread.join(0.05)
    return not any(s._thread is not None and s._thread.is_alive() for s in sources)


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
        self.spec = validate_source(spec)
        for key, value in (("stall_timeout", stall_timeout), ("open_timeout", open_timeout), ("backoff", backoff),
                           ("max_backoff", max_backoff)):
            if not (isinstance(value, (int, float)) and 0 <= value < float("inf")) or (value == 0 and "timeout" in key):
                raise EdgesegError(f"`{key}` must be a finite number of seconds{' > 0' if 'timeout' in key else ' >= 0'}, "
                                   f"got {value!r}.")
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
        # When the grabber's current OpenCV call (open, read, release) must have returned by, or None when it
        # is in Python: what settle_live_sources waits for.
        self._native_until: float | None = None

    def begin(self) -> LiveSource:
        """Start grabbing in the background and return at once (:meth:`start` also waits for the first open)."""
        if self._thread is None:
            _setup_once()
            self.started = time.monotonic()
            self._thread = threading.Thread(target=self._grab, name=f"edgeseg-grab-{self.name}", daemon=True)
            with _LIVE_LOCK:
                _LIVE.add(self)
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
        self._request_stop()
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

    def _request_stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def _native(self, timeout: float, call: Callable[..., _T], *args: object) -> _T:
        """``call(*args)``, an OpenCV call that returns within ``timeout`` s, marked as such for settle_live_sources."""
        self._native_until = time.monotonic() + timeout + _NATIVE_MARGIN
        try:
            return call(*args)
        finally:
            self._native_until = None

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
            capture = self._native(self.open_timeout, cv2.VideoCapture, self.spec)
        else:
            # The read timeout is the stall timeout: a stream silent that long fails its read and is reconnected.
            capture = self._native(self.open_timeout, cv2.VideoCapture, self.spec, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.stall_timeout * 1000)])
        if capture.isOpened():
            fps = capture.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and 0 < fps < 1000 else self.fps or 25.0
            return capture
        self._release(capture)
        return None

    def _release(self, capture: cv2.VideoCapture) -> None:
        # In the grabber's own thread, always: a capture released from another thread while it reads crashes FFmpeg.
        self._native(self.stall_timeout, capture.release)

    def _grab(self) -> None:
        index, failures = 0, 0
        try:
            while not self._stop.is_set():
                self.state = "connecting"
                capture = self._open()
                if self._stop.is_set():  # close() gave up waiting for this open: leave quietly
                    if capture is not None:
                        self._release(capture)
                    break
                if capture is None:
                    self.stats.failures.append("could not open the stream")
                else:
                    if self._opened.is_set():
                        self.stats.reconnects += 1
                        log.info("%s: reconnected", _shown_url(str(self.spec)))
                    self._opened.set()
                    index, failures = self._read(capture, index, failures)
                    self._release(capture)
                if self._stop.is_set():
                    break
                failures += 1
                if failures > self.reconnect:
                    self.stats.gave_up = True
                    self.state = "gave_up"
                    log.warning("%s: giving up after %d failed reconnect attempt(s)", _shown_url(str(self.spec)),
                                self.reconnect)
                    break
                delay = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
                log.info("%s: reconnecting in %.1f s (attempt %d of %d)", _shown_url(str(self.spec)), delay, failures,
                         self.reconnect)
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
        # FFmpeg's read timeout is stall_timeout; a read that lasted nearly that long ran into it.
        stalled_after = 0.9 * self.stall_timeout
        while not self._stop.is_set():
            began = time.monotonic()
            ok, image = self._native(self.stall_timeout, capture.read)
            now = time.monotonic()
            stalled = now - began >= stalled_after
            if ok and not stalled:
                failures, last = 0, now
                self.stats.grabbed += 1
                self._publish(Frame(index, f"{self.name}_{index:06d}", image, now - self.started,
                                    source=str(self.spec)))
                index += 1
                continue
            if self._stop.is_set():  # closed meanwhile: neither a stall nor an end of the stream
                break
            if stalled:
                # The stream went silent. OpenCV may still hand back a frame from the decoder's buffer: it is
                # from before the silence, so it is not published as a new one.
                self.stats.stalls += 1
                reason = f"stalled: no frame for {now - last:.1f} s after frame {index}"
            else:
                reason = f"stream ended after frame {index}"
            self.stats.failures.append(reason)
            log.warning("%s: %s", _shown_url(str(self.spec)), reason)
            break
        return index, failures


def _safe_name(url: str) -> str:
    tail = url.split("://", 1)[-1].split("@")[-1]
    return "".join(ch if ch.isalnum() else "_" for ch in tail).strip("_")[:40] or "stream"
