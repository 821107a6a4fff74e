"""The project's one HTTP layer: an ASGI app (Starlette) served by uvicorn in a background thread.

``edgeseg serve`` runs its inference API on it; the live page of ``edgeseg segment --serve`` is meant
to move onto it too, so the project has one HTTP stack instead of a hand-written server per feature.
:class:`HttpServer` binds its socket in the constructor (a taken port is a one-line error there, and
``port=0`` gives a free one whose number is known before any request), starts uvicorn in a thread,
and closes within a bound: it stops accepting, lets the requests in flight finish for up to ``drain``
seconds, runs the app's lifespan shutdown, and only then cancels what is left.

uvicorn and starlette come with the ``serve`` extra and are imported only when a server is built,
so ``edgeseg.runtime`` still imports without them. Nothing here configures logging: uvicorn's
loggers (``uvicorn.error``, ``uvicorn.access``) are left to the host (the CLI quiets them).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from edgeseg.runtime.errors import EdgesegError

_START_TIMEOUT_S = 30.0


class HttpServer:
    """Serve an ASGI ``app`` on ``host:port`` from a background thread; ``start()``, then ``close()``.

    ``certfile``/``keyfile``: serve HTTPS (PEM files, as uvicorn's ``--ssl-certfile/--ssl-keyfile``).
    ``drain``: seconds the requests in flight get to finish when closing. ``limit_concurrency``: open
    connections and tasks beyond which uvicorn answers 503 at once (a bound on everything in flight).
    The app's lifespan (startup/shutdown) runs in the server's thread, in its event loop.

    Example::

        from starlette.applications import Starlette
        with HttpServer(Starlette(routes=[...]), port=0) as server:   # started; closed on leaving
            print(server.url)                                         # http://127.0.0.1:41234/
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, certfile: str | os.PathLike | None = None,
                 keyfile: str | os.PathLike | None = None, drain: float = 1.0, limit_concurrency: int | None = None,
                 name: str = "edgeseg-http") -> None:
        try:
            import uvicorn
        except ImportError:
            raise EdgesegError("serving HTTP needs uvicorn and starlette: pip install 'edgeseg[serve]'") from None
        if (certfile is None) != (keyfile is None):
            raise EdgesegError("TLS needs both a certificate and its key (--tls-cert and --tls-key); got only "
                               f"the {'certificate' if keyfile is None else 'key'}.")
        if drain < 0:
            raise EdgesegError(f"drain must be >= 0 seconds, got {drain}.")
        self.drain = float(drain)
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
            timeout_graceful_shutdown=max(self.drain, 0.01), limit_concurrency=limit_concurrency,
            ssl_certfile=os.fspath(certfile) if certfile else None, ssl_keyfile=os.fspath(keyfile) if keyfile else None,
            server_header=False, timeout_keep_alive=5,
        )
        try:
            config.load()  # reads the TLS files now: a bad certificate is an error here, not in a thread
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise EdgesegError(f"cannot load the TLS certificate/key ({certfile}, {keyfile}): {error}. "
                               "Pass PEM files, the key unencrypted.") from None
        self._socket = _bind(host, port)
        self.host = host
        self.port = self._socket.getsockname()[1]
        scheme = "https" if certfile else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}/"
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as error:  # noqa: BLE001 (reported by start(), which is in the caller's thread)
            self._error = error

    def start(self) -> HttpServer:
        """Start serving; returns once the server accepts connections (its app's startup done)."""
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                reason = f": {self._error}" if self._error else " (see the log above)"
                raise EdgesegError(f"the HTTP server on {self.url} did not start{reason}")
            time.sleep(0.01)
        return self

    @property
    def running(self) -> bool:
        """True while the server thread runs."""
        return self._thread.is_alive()

    def close(self) -> bool:
        """Stop accepting, let requests in flight finish (up to ``drain`` s), shut the app down; idempotent.

        Returns True when everything in flight finished in time, False when some had to be cancelled.
        """
        if not self._thread.is_alive():
            self._socket.close()
            return True
        self._server.should_exit = True
        # uvicorn notices within 0.1 s, waits up to `drain` for the requests in flight, then runs the
        # lifespan shutdown; a second request to exit cancels whatever still runs.
        self._thread.join(self.drain + 2.0)
        clean = not self._thread.is_alive()
        if not clean:
            self._server.force_exit = True
            self._thread.join(2.0)
        self._socket.close()
        return clean

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise EdgesegError(f"cannot listen on {host}:{port}: {error.strerror or error}. "
                           "Pick another --port (0: any free one) or --host.") from None
    sock.set_inheritable(True)
    return sock
