"""Ctrl-C and SIGTERM as a request to stop cleanly: the run finishes what is in flight and closes its outputs."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("edgeseg.runtime")


def stop_on_signals(stop: threading.Event, *, finishing: str = "the frames in flight") -> Callable[[], None]:
    """Make SIGINT/SIGTERM set ``stop`` (a second one raises KeyboardInterrupt: the user wants out now).

    Returns the function that puts the previous handlers back. Outside the main thread (where Python
    cannot install handlers) it does nothing and the caller's own ``stop`` is the only way in.

    Example::

        restore = stop_on_signals(stop, finishing="the units in flight")
        try:
            run_until(stop)
        finally:
            restore()
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: the user really wants out now
        log.warning("%s: finishing %s and closing the outputs (again to abort)", signal.Signals(signum).name,
                    finishing)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
