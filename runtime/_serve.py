"""``--serve PORT``: a live page of every stream's newest overlay, ``/metrics`` and ``/health``.

On the project's one HTTP layer (:mod:`edgeseg.runtime.http`: Starlette on uvicorn, in a background
thread, closed within a bound; the ``serve`` extra), as ``edgeseg serve`` is. Each stream's newest
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
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

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
    """Serves one run (the pipeline's ``Run``) on ``host:port`` through the project's one HTTP layer
    (:class:`edgeseg.runtime.http.HttpServer`: Starlette on uvicorn); ``start()`` then ``close()``."""

    def __init__(self, run: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        require("prometheus_client", purpose="--serve (the live page's /metrics)")
        from prometheus_client import CollectorRegistry

        from edgeseg.runtime.http import HttpServer

        self.run = run
        self.board = Board([source.name for source in run.sources])
        run.listeners.append(self._publish)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(run))
        if getattr(run, "decisions", None) is not None:  # --zones: zone fractions and event counts, read at scrape
            from edgeseg.runtime.decisions import register_metrics

            register_metrics(self.registry, run.decisions)
        self.http = HttpServer(self._app(), host=host, port=port, drain=0.5, name="edgeseg-live-page")
        self.url = self.http.url

    def _publish(self, result: Any) -> None:
        if result.picture is not None:
            self.board.publish(result.stream, result.picture)

    def start(self) -> LiveServer:
        self.http.start()
        return self

    def close(self) -> None:
        self.board.close()  # wakes the MJPEG viewers, whose responses then end within the drain
        self.http.close()

    def page(self) -> bytes:
        def tile(name: str) -> str:
            url, text = html.escape(quote(name)), html.escape(name)
            return (f'<figure><img src="/snapshot/{url}.jpg" data-snapshot="/snapshot/{url}.jpg" alt="{text}">'
                    f'<figcaption>{text} <span id="s-{text}"></span> '
                    f'<a href="/stream/{url}.mjpg">MJPEG</a><ul class="events" id="e-{text}"></ul></figcaption>'
                    '</figure>')

        tiles = "\n".join(tile(name) for name in self.board.names)
        return _PAGE.replace("{tiles}", tiles).encode()

    def health(self) -> tuple[int, bytes]:
        """``ok`` while every source delivers (or has ended well), ``degraded`` while some are down or failed,
        ``failed`` (HTTP 503) while none delivers: all failed, or every stream reconnecting at once. With
        --zones rules, ``events``: each source's active events (what the page lists under its tile)."""
        states = {source.name: source.state for source in self.run.sources}
        down = sum(state not in ("reading", "done") for state in states.values())
        status = "ok" if down == 0 else ("failed" if down == len(states) else "degraded")
        answer: dict[str, Any] = {"status": status, "sources": states, "streams": states}
        decisions = getattr(self.run, "decisions", None)
        if decisions is not None and decisions.rules:
            answer["events"] = {name: [{"id": event.id, "rule": event.rule, "zone": event.zone,
                                        "class": event.class_name, "start": round(event.start, 3)}
                                       for event in decisions.active(name)] for name in states}
        body = json.dumps(answer).encode()
        return (503 if status == "failed" else 200), body

    def metrics(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import PlainTextResponse, Response, StreamingResponse
        from starlette.routing import Route

        board = self.board
        nocache = {"Cache-Control": "no-store"}

        async def page(_request: Any) -> Response:
            return Response(self.page(), media_type="text/html; charset=utf-8", headers=nocache)

        async def metrics(_request: Any) -> Response:
            return Response(await run_in_threadpool(self.metrics), media_type="text/plain; version=0.0.4; charset=utf-8",
                            headers=nocache)

        async def health(_request: Any) -> Response:
            code, body = self.health()
            return Response(body, status_code=code, media_type="application/json", headers=nocache)

        def unknown(name: str) -> Response:
            return PlainTextResponse(f"no stream named {name!r}\n", status_code=404, headers=nocache)

        async def snapshot(request: Any) -> Response:
            name = request.path_params["name"]
            if name not in board.names:
                return unknown(name)
            jpeg = await run_in_threadpool(board.latest, name, timeout=2.0)
            if jpeg is None:
                return PlainTextResponse(f"no overlay from {name!r} yet: try again in a moment\n", status_code=503,
                                         headers=nocache)
            return Response(jpeg, media_type="image/jpeg", headers=nocache)

        async def stream(request: Any) -> Response:
            name = request.path_params["name"]
            if name not in board.names:
                return unknown(name)
            return StreamingResponse(_mjpeg_parts(board, name), headers=nocache,
                                     media_type=f"multipart/x-mixed-replace; boundary={_BOUNDARY}")

        async def not_found(_request: Any, _error: Exception) -> Response:
            return PlainTextResponse("not found: try /, /metrics or /health\n", status_code=404)

        return Starlette(routes=[Route("/", page), Route("/index.html", page), Route("/metrics", metrics),
                                 Route("/health", health), Route("/snapshot/{name}.jpg", snapshot),
                                 Route("/stream/{name}.mjpg", stream)],
                         exception_handlers={404: not_found})


async def _mjpeg_parts(board: Any, name: str) -> Any:
    """The MJPEG stream of one stream's overlays, a part per new frame, until the board closes."""
    from starlette.concurrency import run_in_threadpool

    # Each part ends with the next boundary: browsers show a part only once its end is seen, so the
    # newest frame shows at once, and a stream that has ended still shows its last frame.
    yield f"--{_BOUNDARY}\r\n".encode()
    seq = 0
    while not board.closed:
        got = await run_in_threadpool(board.wait, name, seq, 0.5)
        if got is None:
            continue
        seq, jpeg = got
        yield (f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg
               + f"\r\n--{_BOUNDARY}\r\n".encode())


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
        dropped = CounterMetricFamily("edgeseg_stream_dropped", "Live frames replaced by a newer one or dropped late",
                                      labels=labels)
        reconnects = CounterMetricFamily("edgeseg_stream_reconnects", "Reconnections", labels=labels)
        stalls = CounterMetricFamily("edgeseg_stream_stalls", "Stalls (no frame for --stall-timeout)", labels=labels)
        nan = CounterMetricFamily("edgeseg_stream_frames_nan", "Frames whose model output held a NaN", labels=labels)
        up = GaugeMetricFamily("edgeseg_stream_up", "1 while the stream delivers frames", labels=labels)
        latency = GaugeMetricFamily("edgeseg_stream_latency_seconds", "Capture-to-result latency, recent frames",
                                    labels=["stream", "quantile"])
        for source in self.run.sources:
            name = [source.name]
            frames.add_metric(name, source.done)
            failed.add_metric(name, source.failed)
            nan.add_metric(name, source.nan)
            up.add_metric(name, 1.0 if source.state == "reading" else 0.0)
            if source.live is not None:
                stats = source.live.stats
                grabbed.add_metric(name, stats.grabbed)
                dropped.add_metric(name, stats.dropped + stats.unread + source.late)
                reconnects.add_metric(name, stats.reconnects)
                stalls.add_metric(name, stats.stalls)
            recent = np.array(source.latencies) if source.latencies else None
            for q in (0.5, 0.95):
                value = float(np.quantile(recent, q)) / 1000 if recent is not None else float("nan")
                latency.add_metric([source.name, str(q)], value)
        batches = CounterMetricFamily("edgeseg_inference_batches", "Inference calls (one takes a frame of every stream)")
        batches.add_metric([], self.run.batches)
        yield from (frames, failed, nan, grabbed, dropped, reconnects, stalls, up, latency, batches)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeseg live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px system-ui, sans-serif; margin: 1rem; background: #111; color: #eee; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1rem; }
figure { margin: 0; } img { width: 100%; image-rendering: pixelated; background: #222; min-height: 120px; }
a { color: #8cf; }
ul.events { margin: 0.3rem 0 0; padding-left: 1.2rem; color: #f66; }
</style></head>
<body><h1>edgeseg live</h1>
<p>Newest overlay of each stream (MJPEG link for VLC). <a href="/metrics">metrics</a> &middot; <a href="/health">health</a></p>
<main>
{tiles}
</main>
<script>
// The state of each stream beside its name and its active events under it (--zones rules), refreshed every
// 2 s (plain fetch, nothing to build).
async function refresh() {
  try {
    const health = await (await fetch('/health')).json();
    for (const [name, state] of Object.entries(health.streams)) {
      const el = document.getElementById('s-' + name);
      if (el) el.textContent = '(' + state + ')';
    }
    for (const [name, events] of Object.entries(health.events || {})) {
      const list = document.getElementById('e-' + name);
      if (!list) continue;
      list.replaceChildren(...events.map((e) => {
        const item = document.createElement('li');
        item.textContent = e.rule + ': ' + e['class'] + ' in ' + e.zone + ' since ' + e.start + ' s';
        return item;
      }));
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
