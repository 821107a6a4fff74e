"""The one progress display of edgeseg's commands: a bar on a terminal, a quiet line now and then when piped.

A bar is drawn only where a person watches it: when the stream (stderr) is a terminal. Piped into a
file or a CI log, a bar is a run of carriage returns that turns into one unreadable line, so there
:class:`Progress` logs a plain line (logger ``edgeseg.progress``, level INFO) every ``every`` seconds
at most, and a last one when the work took long enough to have shown one. While a bar is drawn, log
lines of the process are written above it instead of through it.

Example::

    from edgeseg.runtime.progress import Progress
    with Progress(len(configs), desc="edgeseg tune", unit="config") as progress:
        for config in configs:
            measure(config)
            progress.update(note=config.describe())
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("edgeseg.progress")


class Progress:
    """Progress over ``total`` items (None: unknown) of ``unit``, named ``desc``.

    ``enabled``: False shows nothing at all (``--no-progress``). ``every``: seconds between two log lines
    when the stream is not a terminal (None: no lines, for callers that log each item themselves).
    ``leave``: keep the finished bar on screen (False for a bar nested in another one). ``stream``:
    where a bar goes (default: stderr, as the log does).
    """

    def __init__(self, total: int | None, *, desc: str, unit: str = "item", enabled: bool = True,
                 every: float | None = 15.0, leave: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self._note = ""
        self._every = every
        self._started = self._last = time.monotonic()
        self._lines = 0
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._closed = not enabled
        stream = stream if stream is not None else sys.stderr
        if enabled and _is_terminal(stream):
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=leave)
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm())

    @property
    def drawn(self) -> bool:
        """True when a bar is on a terminal (else log lines, or nothing)."""
        return self._bar is not None

    def update(self, count: int = 1, *, note: str | None = None) -> None:
        """``count`` more items done; ``note`` says what the latest one was (shown beside the bar or in the line)."""
        if self._closed:
            return
        self.done += count
        if note is not None:
            self._note = note
        if self._bar is not None:
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(count)
        elif self._every is not None and time.monotonic() - self._last >= self._every:
            self._line()

    def note(self, text: str) -> None:
        """What is being done now, before it is done (a long stage's name)."""
        if self._closed:
            return
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        """End the display: the bar is closed; piped, a last line says how long it took (if a line was shown)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            if self._redirect is not None:
                self._redirect.close()
        elif self._lines:
            log.info("%s: %s in %.0f s", self.desc, self._count(), time.monotonic() - self._started)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> None:
        self._last = time.monotonic()
        self._lines += 1
        log.info("%s: %s, %.0f s%s", self.desc, self._count(), self._last - self._started,
                 f" - {self._note}" if self._note else "")

    def _count(self) -> str:
        if self.total:
            return f"{self.done}/{self.total} {self.unit}(s) ({100 * self.done / self.total:.0f}%)"
        return f"{self.done} {self.unit}(s)"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
