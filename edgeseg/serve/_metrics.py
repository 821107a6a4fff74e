"""``/metrics``: Prometheus text, per model. One registry per app (never the process-global one), so
several apps in one process (tests, Ray replicas) count apart. Labels hold only served model names,
endpoint names and status codes: a client cannot grow the series by sending odd model names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The service's counters; ``text()`` is the scrape.

    Example::

        metrics = Metrics(["fcn8"], depth=lambda name: 0)
        metrics.request("fcn8", "segment", 200, 0.012)
        body, content_type = metrics.text()
    """

    def __init__(self, models: Iterable[str], *, depth: Callable[[str], int], inflight: Callable[[str], int]) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            from edgeseg.runtime import EdgesegError
            raise EdgesegError("edgeseg serve needs prometheus_client: pip install 'edgeseg[serve]'") from None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("edgeseg_serve_requests", "Requests by model, endpoint and HTTP status",
                                ["model", "endpoint", "code"], registry=self.registry)
        self.latency = Histogram("edgeseg_serve_request_seconds", "Time from request to response, by model and "
                                 "endpoint", ["model", "endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram("edgeseg_serve_batch_size", "Items per inference call (dynamic batching)", ["model"],
                               buckets=_BATCH_BUCKETS, registry=self.registry)
        self.infer = Histogram("edgeseg_serve_inference_seconds", "Time of one inference call", ["model"],
                               buckets=_LATENCY_BUCKETS, registry=self.registry)
        queue = Gauge("edgeseg_serve_queue_depth", "Items waiting for an inference call", ["model"],
                      registry=self.registry)
        admitted = Gauge("edgeseg_serve_requests_in_flight", "Requests admitted and not yet answered (bounded by "
                         "--max-queue)", ["model"], registry=self.registry)
        for name in models:
            queue.labels(name).set_function(lambda name=name: depth(name))
            admitted.labels(name).set_function(lambda name=name: inflight(name))

    def request(self, model: str, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(code)).inc()
        self.latency.labels(model, endpoint).observe(seconds)

    def batch_done(self, model: str, items: int, seconds: float) -> None:
        self.batch.labels(model).observe(items)
        self.infer.labels(model).observe(seconds)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
