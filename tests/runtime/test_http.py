"""edgeseg.runtime.http.HttpServer: a real uvicorn in a thread, over HTTP and HTTPS, closed within its bound."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.request

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from edgeseg.runtime import EdgesegError
from edgeseg.runtime.http import HttpServer


def _app(entered: threading.Event | None = None) -> Starlette:
    async def hello(request):
        return PlainTextResponse("hello")

    async def slow(request):
        if entered is not None:
            entered.set()
        await asyncio.sleep(0.4)
        return PlainTextResponse("done")

    return Starlette(routes=[Route("/", hello), Route("/slow", slow)])


def test_close_lets_the_request_in_flight_finish_then_stops_listening():
    entered = threading.Event()
    server = HttpServer(_app(entered), port=0, drain=2.0).start()
    assert server.url.startswith("http://127.0.0.1:")
    answers = []
    caller = threading.Thread(target=lambda: answers.append(
        urllib.request.urlopen(server.url + "slow", timeout=10).read()))
    caller.start()
    assert entered.wait(10)  # the request is in flight
    assert server.close() is True  # drained: nothing had to be cancelled
    caller.join(10)
    assert answers == [b"done"] and not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_a_taken_port_and_a_lone_certificate_are_one_line_errors():
    with HttpServer(_app(), port=0) as first:
        with pytest.raises(EdgesegError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            HttpServer(_app(), port=first.port)
    with pytest.raises(EdgesegError, match="both a certificate and its key"):
        HttpServer(_app(), certfile="cert.pem")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_https_with_a_certificate_and_key(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    with HttpServer(_app(), port=0, certfile=cert, keyfile=key) as server:
        assert server.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        assert urllib.request.urlopen(server.url, context=context, timeout=10).read() == b"hello"
        with pytest.raises(urllib.error.URLError):  # a client that does not trust it is refused
            urllib.request.urlopen(server.url, timeout=10)
    with pytest.raises(EdgesegError, match="cannot load the TLS certificate"):
        HttpServer(_app(), certfile=key, keyfile=cert)
