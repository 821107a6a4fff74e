"""The one progress display: a bar on a terminal, plain log lines when piped, never a bar in a file."""

from __future__ import annotations

import io
import logging

from edgeseg.runtime.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_it_logs_lines_and_draws_nothing(caplog):
    stream = io.StringIO()  # a file or a pipe: no terminal
    with caplog.at_level(logging.INFO, logger="edgeseg.progress"):
        with Progress(3, desc="job", unit="frame", stream=stream, every=0) as progress:
            for name in ("a", "b", "c"):
                progress.update(note=name)
    assert stream.getvalue() == ""  # nothing drawn into it
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "job: 1/3 frame(s) (33%), 0 s - a" and lines[2].startswith("job: 3/3 frame(s) (100%)")
    assert lines[-1].startswith("job: 3/3 frame(s) (100%) in ")  # the closing line, as lines were shown


def test_piped_and_quick_it_stays_silent(caplog):
    with caplog.at_level(logging.INFO, logger="edgeseg.progress"):
        with Progress(3, desc="job", stream=io.StringIO()) as progress:  # every 15 s: a quick job shows no line
            progress.update(3)
    assert caplog.records == []


def test_on_a_terminal_it_draws_a_bar_and_log_lines_go_above_it():
    terminal = _Terminal()
    with Progress(2, desc="job", unit="config", stream=terminal) as progress:
        assert progress.drawn
        progress.update(note="first")
        progress.update(note="second")
    drawn = terminal.getvalue()
    assert "\r" in drawn and "2/2" in drawn and "second" in drawn


def test_disabled_shows_nothing(caplog):
    terminal = _Terminal()
    with caplog.at_level(logging.INFO, logger="edgeseg.progress"):
        with Progress(2, desc="job", stream=terminal, enabled=False, every=0) as progress:
            progress.update(2)
    assert terminal.getvalue() == "" and caplog.records == [] and not progress.drawn
