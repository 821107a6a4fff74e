"""Dynamic batching: requests that arrive together share one inference call.

One worker thread per model takes the oldest waiting request, then gathers more until the batch
holds ``max_batch`` items or ``max_delay`` has passed since that oldest request arrived, and runs
them as one batch. It waits only for requests that are on their way: the service announces each
request it admits (:meth:`Batcher.expect`) before decoding its body, so a lone client never waits
(measured on the sample FCN-8: a fixed 5 ms wait made one client's requests 2.3x slower). Under load
the worker is busy when requests arrive, so by the time it is free the delay has passed and it takes
what waits at once. The queue is bounded by the caller's admission (``--max-queue``); the worker never
holds more than one batch.

A request's items stay together (a v2 request may carry a batch of its own); results come back as a
``concurrent.futures.Future`` per request, which an event loop awaits with ``asyncio.wrap_future``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("edgeseg.serve")


@dataclass(frozen=True)
class Batched:
    """One request's share of an inference call: its outputs and the size of the call it rode in."""

    output: np.ndarray
    batch: int
    queue_ms: float
    infer_ms: float


@dataclass
class _Job:
    items: np.ndarray
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers submitted arrays into batches for ``run`` (a batch in, a batch out, first axis = items).

    ``on_batch(items, seconds)`` is called after each inference call (metrics). ``close()`` finishes
    every job already submitted, then stops the worker.

    Example::

        batcher = Batcher(model.run, max_batch=8, max_delay=0.005, name="fcn8").start()
        batched = batcher.submit(preprocessed).result()   # a Batched; .output[0] is this item's output
        batcher.close()
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_delay: float, name: str,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.name = name
        self._on_batch = on_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._expected = 0  # requests admitted and not yet submitted: the ones worth waiting for
        self._thread = threading.Thread(target=self._work, name=f"edgeseg-batcher-{name}", daemon=True)

    @property
    def depth(self) -> int:
        """Items waiting for an inference call."""
        with self._cond:
            return sum(len(job.items) for job in self._queue)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def expect(self) -> None:
        """A request is on its way (its body is being read or decoded): a batch may wait for it."""
        with self._cond:
            self._expected += 1

    def forget(self) -> None:
        """An expected request will not come (it failed before :meth:`submit`)."""
        with self._cond:
            self._expected -= 1
            self._cond.notify()

    def submit(self, items: np.ndarray, *, expected: bool = False) -> concurrent.futures.Future:
        """Queue ``items`` (N, ...) for the next batch; the future gives a :class:`Batched`.

        ``expected``: this request was announced by :meth:`expect` (and is no longer on its way once queued).
        """
        if len(items) > self.max_batch:
            raise ValueError(f"a batch of {len(items)} is more than max_batch={self.max_batch}")
        job = _Job(items)
        with self._cond:
            if expected:
                self._expected -= 1
            if self._closed:
                self._cond.notify()
                raise RuntimeError(f"model {self.name!r} is shutting down")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def close(self, timeout: float = 5.0) -> None:
        """Run what was submitted, then stop the worker (within ``timeout`` s)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            jobs = self._gather()
            if not jobs:
                return
            self._run_batch(jobs)

    def _gather(self) -> list[_Job]:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return []
                self._cond.wait()
            jobs = [self._queue.popleft()]
            count = len(jobs[0].items)
            deadline = jobs[0].arrived + self.max_delay
            while count < self.max_batch:
                if self._queue:
                    if count + len(self._queue[0].items) > self.max_batch:
                        break
                    jobs.append(self._queue.popleft())
                    count += len(jobs[-1].items)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed or self._expected <= 0:
                    break
                self._cond.wait(remaining)
            return jobs

    def _run_batch(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        try:
            batch = jobs[0].items if len(jobs) == 1 else np.concatenate([job.items for job in jobs])
            outputs = self._run(batch)
        except BaseException as error:  # noqa: BLE001 (each request gets the error; the worker goes on)
            for job in jobs:
                job.future.set_exception(error)
            return
        seconds = time.monotonic() - started
        count = len(batch)
        if self._on_batch is not None:
            self._on_batch(count, seconds)
        offset = 0
        for job in jobs:
            n = len(job.items)
            job.future.set_result(Batched(outputs[offset: offset + n], count, (started - job.arrived) * 1000,
                                          seconds * 1000))
            offset += n
