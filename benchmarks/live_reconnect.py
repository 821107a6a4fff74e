"""How long a healthy live stream takes to come back after an outage while other cameras hang in their open.

Servers on 127.0.0.1: ``--silent`` sockets that accept and never send (an FFmpeg open on them blocks
for its whole ``open_timeout``), and one healthy ffmpeg (imageio-ffmpeg's binary) serving
``samples/scenes.avi`` as MPEG-TS over TCP. A :class:`LiveSource` per server, the silent ones begun
first; once the healthy source has frames, its server is killed for ``--outage`` seconds and started
again. Measured, per round: from the restart to the healthy source's next frame. Run it from the
checkout to measure (it imports ``edgeseg`` from the current directory first)::

    python benchmarks/live_reconnect.py --rounds 3 --json benchmarks/results/live_reconnect.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the checkout being measured, before an installed edgeseg

import imageio_ffmpeg  # noqa: E402

from edgeseg.runtime import LiveSource  # noqa: E402

VIDEO = Path(__file__).resolve().parents[1] / "samples" / "scenes.avi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Silent:
    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"tcp://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.socket.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.socket.close()
        for connection in self.held:
            connection.close()


def serve(port: int) -> subprocess.Popen:
    return subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "quiet", "-re",
                             "-stream_loop", "-1", "-i", str(VIDEO), "-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts",
                             f"tcp://127.0.0.1:{port}?listen=1"], stdin=subprocess.DEVNULL)


def wait_frame(source: LiveSource, seconds: float) -> float | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if source.take() is not None:
            return time.monotonic()
        time.sleep(0.005)
    return None


def round_trip(silent_count: int, outage: float, limit: float) -> dict:
    silent = [Silent() for _ in range(silent_count)]
    port = free_port()
    server = serve(port)
    hanging = [LiveSource(s.url, reconnect=1000, open_timeout=5.0) for s in silent]
    healthy = LiveSource(f"tcp://127.0.0.1:{port}", reconnect=1000, open_timeout=5.0)
    try:
        for source in hanging:
            source.begin()
        time.sleep(0.5)  # every silent source is inside its open
        started = time.monotonic()
        healthy.begin()
        first = wait_frame(healthy, limit)
        server.kill()
        server.wait()
        time.sleep(outage)
        restarted = time.monotonic()
        server = serve(port)
        while healthy.take() is not None:  # frames from before the outage do not count
            pass
        back = wait_frame(healthy, limit)
        return {"first_frame_s": None if first is None else round(first - started, 3),
                "back_after_restart_s": None if back is None else round(back - restarted, 3),
                "reconnects": healthy.stats.reconnects}
    finally:
        healthy.close(timeout=0)
        for source in hanging:
            source.close(timeout=0)
        for s in silent:
            s.close()
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silent", type=int, default=3, help="cameras that accept and never send (default 3)")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds the healthy server is down (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=float, default=120.0, help="give up waiting for a frame after this (s)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds = [round_trip(args.silent, args.outage, args.limit) for _ in range(args.rounds)]
    for i, result in enumerate(rounds, 1):
        print(f"round {i}: first frame {result['first_frame_s']} s, back {result['back_after_restart_s']} s after "
              f"the restart ({result['reconnects']} reconnect(s))")
    report = {"silent": args.silent, "outage_s": args.outage, "rounds": rounds,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), load "
                         f"{os.getloadavg()[0]:.1f}",
              "opencv_ffmpeg_is_thread_safe": os.environ.get("OPENCV_FFMPEG_IS_THREAD_SAFE")}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.flush()
    os._exit(0)  # grabbers of the silent cameras may still be inside FFmpeg: nothing left to wait for


if __name__ == "__main__":
    main()
