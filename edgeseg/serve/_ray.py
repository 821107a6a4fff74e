"""``edgeseg serve ... --ray ADDRESS --replicas N``: the same app as Ray Serve replicas.

Each replica builds the very app of one machine (:func:`edgeseg.serve.build_app`) from the model paths
and options it is handed, so it loads its own models and runs its own batchers; Ray Serve's proxy listens
on ``--host:--port`` and spreads requests over the replicas (autoscaling between ``--replicas`` and
``--max-replicas`` on requests in flight). Limits, token and endpoints are the app's, so they hold
unchanged; TLS goes to the proxy. The model files must be readable at the same paths on every node (a
shared filesystem), as for ``segment --ray``. ``/metrics`` answers for the replica that took the scrape.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.runtime import EdgesegError, stop_on_signals
from edgeseg.serve._options import ModelSpec, ServeOptions

log = logging.getLogger("edgeseg.serve")

APP_NAME = "edgeseg"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` is ``local`` (a new Ray on this machine), ``auto`` or ``ray://host:port``."""

    address: str = "local"
    replicas: int = 1
    max_replicas: int | None = None
    cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise EdgesegError(f"--replicas must be >= 1, got {self.replicas}.")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise EdgesegError(f"--max-replicas ({self.max_replicas}) must be >= --replicas ({self.replicas}).")
        if self.cpus <= 0:
            raise EdgesegError(f"--cpus-per-replica must be > 0, got {self.cpus}.")


def application(specs: Sequence[ModelSpec], options: ServeOptions, ray_options: RayOptions) -> Any:
    """The Ray Serve application: one deployment whose replicas each run :func:`build_app` for ``specs``.

    Example::

        serve.run(application(parse_models(["fcn8.onnx"]), ServeOptions(), RayOptions(replicas=2)), route_prefix="/")
    """
    from ray import serve

    specs = [dataclasses.replace(spec, path=str(Path(spec.path).resolve())) for spec in specs]
    # onnxruntime ignores the OMP_NUM_THREADS Ray sets: give each replica's engine its own CPUs.
    threads = options.threads if options.threads is not None else max(1, math.floor(ray_options.cpus))
    replica_options = dataclasses.replace(options, threads=threads)

    def build() -> Any:  # runs in each replica
        from edgeseg.serve._app import build_app
        from edgeseg.serve._server import load_models

        return build_app(load_models(specs, replica_options), replica_options)

    scaling: dict[str, Any] = {"num_replicas": ray_options.replicas}
    if ray_options.max_replicas is not None and ray_options.max_replicas > ray_options.replicas:
        scaling = {"autoscaling_config": {"min_replicas": ray_options.replicas,
                                          "max_replicas": ray_options.max_replicas,
                                          "target_ongoing_requests": max(1, options.max_batch)}}

    @serve.deployment(name="EdgesegService", ray_actor_options={"num_cpus": ray_options.cpus},
                      max_ongoing_requests=options.max_queue * len(specs), graceful_shutdown_timeout_s=options.drain,
                      graceful_shutdown_wait_loop_s=min(0.5, max(options.drain, 0.1)), **scaling)
    @serve.ingress(build)
    class EdgesegService:
        pass

    return EdgesegService.bind()


def serve_on_ray(specs: Sequence[ModelSpec], options: ServeOptions, ray_options: RayOptions, *,
                 stop: threading.Event | None = None) -> None:
    """Deploy on Ray Serve and serve until ``stop`` (SIGINT/SIGTERM set it); then delete the application, and
    shut Ray down when this call started it.

    Example::

        serve_on_ray(parse_models(["fcn8.onnx"]), ServeOptions(port=8000), RayOptions(address="local", replicas=2))
    """
    try:
        import ray
        from ray import serve
    except ImportError:
        raise EdgesegError("--ray needs Ray Serve: pip install 'edgeseg[ray,serve]'") from None
    stop = stop or threading.Event()
    port = options.port or _free_port(options.host)
    started_ray = _connect(ray, ray_options.address)
    restore = stop_on_signals(stop, finishing="the requests in flight")  # after ray.init, which sets its own
    try:
        http: dict[str, Any] = {"host": options.host, "port": port}
        if options.tls_cert:
            http.update(ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key)
        serve.start(http_options=http)
        serve.run(application(specs, options, ray_options), name=APP_NAME, route_prefix="/", blocking=False)
        scheme = "https" if options.tls_cert else "http"
        log.info("edgeseg serve: %s on %s://%s:%d/ (Ray Serve at %s, %d replica(s)%s)",
                 ", ".join(spec.name for spec in specs), scheme, options.host, port, ray_options.address,
                 ray_options.replicas, f" up to {ray_options.max_replicas}" if ray_options.max_replicas else "")
        while not stop.wait(0.5):
            pass
        began = time.monotonic()
        # Bounded: a cluster whose head went away would otherwise keep Serve's calls waiting for it (60 s).
        done = threading.Thread(target=_take_down, args=(serve, started_ray), daemon=True)
        done.start()
        done.join(options.drain + 15.0)
        log.info("edgeseg serve: stopped%s in %.2f s", "" if not done.is_alive() else " (Ray Serve did not answer)",
                 time.monotonic() - began)
    finally:
        restore()
        if started_ray:
            ray.shutdown()


def _take_down(serve: Any, started_ray: bool) -> None:
    # Deleting the application lets each replica finish its requests in flight (graceful_shutdown_timeout_s).
    serve.delete(APP_NAME)
    if started_ray:
        serve.shutdown()


def _connect(ray: Any, address: str) -> bool:
    """Join or start Ray; True when this call started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        return True
    if address == "auto" or address.startswith("ray://") or ":" in address:
        ray.init(address=address, log_to_driver=False)
        return False
    raise EdgesegError(f"--ray expects local, auto or ray://host:port, got {address!r}.")


def _free_port(host: str) -> int:
    # Ray Serve's proxy takes a port number, not a socket: pick a free one (and say which in the log).
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
