"""A real ``edgeseg serve`` process on a free port (``--port 0``; the URL is read from its log line)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

_URL = re.compile(r" on (https?://[^ ]+/) ")


class ServerProcess:
    """``python -m edgeseg serve ARGS --port 0`` with its stderr collected; ``url`` once it listens."""

    def __init__(self, args: list[str], *, python: str = sys.executable, timeout: float = 240.0) -> None:
        # The timeout only bounds a hang: Ray Serve took 60 s to be ready on 2 cores loaded 5x over.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([python, "-m", "edgeseg", "serve", *args, "--port", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._found = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._found.wait(timeout) or not self.url:
            self.stop()
            raise AssertionError("edgeseg serve did not start:\n" + "".join(self.lines[-30:]))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            match = _URL.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._found.set()
        self._found.set()  # the process ended

    @property
    def address(self) -> str:
        """host:port, as tritonclient takes it."""
        return self.url.split("://", 1)[1].rstrip("/")

    def terminate(self) -> float:
        """SIGTERM; returns the seconds until the process exited."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def serve_process():
    """Start servers; each one is stopped at the end of the test session (or by the test)."""
    started: list[ServerProcess] = []

    def start(args: list[str], *, python: str = sys.executable) -> ServerProcess:
        server = ServerProcess([str(a) for a in args], python=python)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory, tiny_segmenter) -> dict[str, Path]:
    """Two tiny 2-class segmenters (32x32, different weights) for the server tests."""
    folder = tmp_path_factory.mktemp("serve-models")
    return {"tiny": tiny_segmenter(folder / "tiny.onnx", size=32, classes=("background", "thing")),
            "other": tiny_segmenter(folder / "other.onnx", size=32, classes=("sky", "ground"), seed=1)}
