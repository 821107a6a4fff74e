"""``--serve PORT``: a live page of every stream's newest overlay, ``/metrics`` and ``/health``.

Standard library HTTP server (one thread per client) in a daemon thread. Each stream's newest
overlay is at ``/snapshot/<name>.jpg`` (one JPEG) and ``/stream/<name>.mjpg`` (multipart MJPEG,
for VLC, ffplay or a browser tab). The page is a few lines of HTML and plain script (no build
step, no CDN) that reloads each tile from its snapshot as soon as the last one has loaded: every
browser paints that, headless ones included, where multipart MJPEG is not painted by Chromium's
``--screenshot`` and holds one connection per tile open. Only the newest overlay of each stream is
kept (JPEG-encoded once, by the stream's writer), so a slow viewer skips frames and never holds
memory. ``/metrics`` is Prometheus text from ``prometheus_client`` (the ``serve`` extra), read from
the run's counters at scrape time. Binds 127.0.0.1 unless told otherwise: the page shows camera
pictures and has no authentication.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import cv2
import numpy as np

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import require

log = logging.getLogger("edgeseg.runtime")

_BOUNDARY = "edgesegframe"


class Board:
    """The newest JPEG of each stream, with a condition viewers wait on."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._cond = threading.Condition()
        self.closed = False

    def publish(self, name: str, picture: np.ndarray) -> None:
        ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return
        with self._cond:
            seq = self._latest.get(name, (0, b""))[0] + 1
            self._latest[name] = (seq, data.tobytes())
            self._cond.notify_all()

    def latest(self, name: str, *, timeout: float) -> bytes | None:
        """The newest JPEG of ``name``, waiting up to ``timeout`` s for the first one."""
        got = self.wait(name, 0, timeout)
        return got[1] if got is not None else None

    def wait(self, name: str, after: int, timeout: float) -> tuple[int, bytes] | None:
        with self._cond:
            self._cond.wait_for(lambda: self.closed or self._latest.get(name, (0, b""))[0] > after, timeout)
            got = self._latest.get(name)
            return got if got is not None and got[0] > after else None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class LiveServer:
    """Serves one run (the pipeline's ``Run``) on ``host:port``; ``start()`` then ``close()``."""

    def __init__(self, run: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        CollectorRegistry = require("prometheus_client", purpose="--serve").CollectorRegistry
        self.run = run
        self.board = Board([source.name for source in run.sources])
        run.listeners.append(self._publish)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(run))
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as error:
            raise EdgesegError(f"--serve: cannot listen on {host}:{port}: {error.strerror or error}. "
                               "Pick another port (0: any free one).") from None
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="edgeseg-serve", daemon=True)

    def _publish(self, result: Any) -> None:
        if result.picture is not None:
            self.board.publish(result.stream, result.picture)

    def start(self) -> LiveServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.board.close()  # wakes the MJPEG viewers, which then end their responses
        self.httpd.shutdown()
        self.httpd.server_close()

    def page(self) -> bytes:
        def tile(name: str) -> str:
            url, text = html.escape(quote(name)), html.escape(name)
            return (f'<figure><img src="/snapshot/{url}.jpg" data-snapshot="/snapshot/{url}.jpg" alt="{text}">'
                    f'<figcaption>{text} <span id="s-{text}"></span> '
                    f'<a href="/stream/{url}.mjpg">MJPEG</a></figcaption></figure>')

        tiles = "\n".join(tile(name) for name in self.board.names)
        return _PAGE.replace("{tiles}", tiles).encode()

    def health(self) -> tuple[int, bytes]:
        """``ok`` while every source delivers (or has ended well), ``degraded`` while some are down or failed,
        ``failed`` (HTTP 503) while none delivers: all failed, or every stream reconnecting at once."""
        states = {source.name: source.state for source in self.run.sources}
        down = sum(state not in ("reading", "done") for state in states.values())
        status = "ok" if down == 0 else ("failed" if down == len(states) else "degraded")
        body = json.dumps({"status": status, "sources": states, "streams": states}).encode()
        return (503 if status == "failed" else 200), body

    def metrics(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Collector:
    """Reads the run's counters at scrape time (no second copy of any counter)."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["stream"]
        frames = CounterMetricFamily("edgeseg_stream_frames", "Frames segmented", labels=labels)
        failed = CounterMetricFamily("edgeseg_stream_frames_failed", "Frames that could not be segmented", labels=labels)
        grabbed = CounterMetricFamily("edgeseg_stream_grabbed", "Frames read from the live source", labels=labels)
        dropped = CounterMetricFamily("edgeseg_stream_dropped", "Live frames replaced by a newer one", labels=labels)
        reconnects = CounterMetricFamily("edgeseg_stream_reconnects", "Reconnections", labels=labels)
        stalls = CounterMetricFamily("edgeseg_stream_stalls", "Stalls (no frame for --stall-timeout)", labels=labels)
        nan = CounterMetricFamily("edgeseg_stream_frames_nan", "Frames whose model output held a NaN", labels=labels)
        up = GaugeMetricFamily("edgeseg_stream_up", "1 while the stream delivers frames", labels=labels)
        latency = GaugeMetricFamily("edgeseg_stream_latency_seconds", "Capture-to-result latency, recent frames",
                                    labels=["stream", "quantile"])
        for stream in self.run.sources:
            name = [stream.name]
            frames.add_metric(name, stream.done)
            failed.add_metric(name, stream.failed)
            nan.add_metric(name, stream.nan)
            up.add_metric(name, 1.0 if stream.state == "reading" else 0.0)
            if stream.live is not None:
                stats = stream.live.stats
                grabbed.add_metric(name, stats.grabbed)
                dropped.add_metric(name, stats.dropped + stats.unread)
                reconnects.add_metric(name, stats.reconnects)
                stalls.add_metric(name, stats.stalls)
            recent = np.array(stream.latencies) if stream.latencies else None
            for q in (0.5, 0.95):
                value = float(np.quantile(recent, q)) / 1000 if recent is not None else float("nan")
                latency.add_metric([stream.name, str(q)], value)
        batches = CounterMetricFamily("edgeseg_inference_batches", "Cross-stream inference calls")
        batches.add_metric([], self.run.batches)
        yield from (frames, failed, nan, grabbed, dropped, reconnects, stalls, up, latency, batches)


def _handler(server: LiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", server.page())
            elif path == "/metrics":
                self._send(200, "text/plain; version=0.0.4; charset=utf-8", server.metrics())
            elif path == "/health":
                code, body = server.health()
                self._send(code, "application/json", body)
            elif path.startswith("/stream/") and path.endswith(".mjpg"):
                self._mjpeg(unquote(path[len("/stream/"):-len(".mjpg")]))
            elif path.startswith("/snapshot/") and path.endswith(".jpg"):
                self._snapshot(unquote(path[len("/snapshot/"):-len(".jpg")]))
            else:
                self._send(404, "text/plain", b"not found: try /, /metrics or /health\n")

        def _snapshot(self, name: str) -> None:
            if name not in server.board.names:
                self._send(404, "text/plain", f"no stream named {name!r}\n".encode())
                return
            jpeg = server.board.latest(name, timeout=2.0)
            if jpeg is None:
                self._send(503, "text/plain", f"no overlay from {name!r} yet: try again in a moment\n".encode())
            else:
                self._send(200, "image/jpeg", jpeg)

        def _send(self, code: int, kind: str, body: bytes) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the viewer left mid-answer: nothing to tell anyone

        def _mjpeg(self, name: str) -> None:
            board = server.board
            if name not in board.names:
                self._send(404, "text/plain", f"no stream named {name!r}\n".encode())
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seq = 0
            try:
                # Each part ends with the next boundary: browsers show a part only once its end is seen, so
                # the newest frame shows at once, and a stream that has ended still shows its last frame.
                self.wfile.write(f"--{_BOUNDARY}\r\n".encode())
                while not board.closed:
                    got = board.wait(name, seq, timeout=0.5)
                    if got is None:
                        continue
                    seq, jpeg = got
                    self.wfile.write(f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                                     + jpeg + f"\r\n--{_BOUNDARY}\r\n".encode())
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the viewer went away

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
            log.debug("serve: " + format, *args)

    return Handler


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeseg live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px system-ui, sans-serif; margin: 1rem; background: #111; color: #eee; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1rem; }
figure { margin: 0; } img { width: 100%; image-rendering: pixelated; background: #222; min-height: 120px; }
a { color: #8cf; }
</style></head>
<body><h1>edgeseg live</h1>
<p>Newest overlay of each stream (MJPEG link for VLC). <a href="/metrics">metrics</a> &middot; <a href="/health">health</a></p>
<main>
{tiles}
</main>
<script>
// The state of each stream beside its name, refreshed every 2 s (plain fetch, nothing to build).
async function refresh() {
  try {
    const health = await (await fetch('/health')).json();
    for (const [name, state] of Object.entries(health.streams)) {
      const el = document.getElementById('s-' + name);
      if (el) el.textContent = '(' + state + ')';
    }
  } catch (e) {}
}
refresh(); setInterval(refresh, 2000);
// Each tile asks for the next snapshot once the last one has loaded (or 1 s after one failed):
// as fast as the viewer can take them, never more than one request per tile at a time.
for (const img of document.querySelectorAll('img[data-snapshot]')) {
  const next = (wait) => setTimeout(() => { img.src = img.dataset.snapshot + '?t=' + Date.now(); }, wait);
  img.addEventListener('load', () => next(100));
  img.addEventListener('error', () => next(1000));
}
</script>
</body></html>
"""
