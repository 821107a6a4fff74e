"""The output folder rule every run follows: writable, held by one run at a time, never silently merged.

A folder that holds a run is refused unless ``overwrite`` (which removes only what a run writes: a
user's own files in it stay) or ``resume`` (the caller continues the run) is given. A run holds its
folder (:class:`RunLock`: an exclusive lock on ``.edgeseg/lock``, released by the kernel when the
process dies), so a second run into the same ``--out`` is refused in one line naming the holder; and
it writes what makes it this run (:func:`run_identity`: the model file's sha256 and contract, the
engine, the sources, the options that change outputs) to ``.edgeseg/run.json`` before any output,
so ``--resume`` refuses to continue a run of another model or other sources.

Overwriting first moves the earlier run's files aside (renames, one per entry: instant however big
the run) and deletes them after; nothing is deleted before everything could be moved, so a file
that cannot be removed leaves the earlier run whole and the new one refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import write_json_atomic

STATE = ".edgeseg"  # the run's own state in --out: its lock, identity and the earlier run's files on their way out


def prepare_out(out: str | os.PathLike, *, previous_run: Callable[[Path], Sequence[Path]], overwrite: bool = False,
                resume: bool = False, can_resume: bool = True) -> Path:
    """Create ``out``, check it is writable, and apply the rule to the files ``previous_run(out)`` names.

    Example::

        out = prepare_out("runs/clip", previous_run=lambda o: [p for p in [o / "summary.json"] if p.exists()],
                          overwrite=True)
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".edgeseg-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise EdgesegError(f"Cannot write to output folder `{out}`: {error.strerror or error}. "
                           "Pass a writable --out folder.") from None
    previous = [path for path in dict.fromkeys(previous_run(out)) if path.exists() or path.is_symlink()]
    if not previous or resume:
        return out
    if not overwrite:
        fixes = "--overwrite to replace it, --resume to continue it" if can_resume else "--overwrite to replace it"
        names = ", ".join(sorted({path.relative_to(out).parts[0] for path in previous}))
        raise EdgesegError(f"Output folder `{out}` already holds a run ({names}): pass {fixes}, or another --out.")
    _clear(out, previous)
    return out


def _clear(out: Path, paths: list[Path]) -> None:
    """Move ``paths`` (what a run wrote) aside, then delete them in the background; undo the moves if one fails."""
    trash = out / STATE / f"old-{time.time_ns()}"
    moved: list[tuple[Path, Path]] = []
    try:
        trash.mkdir(parents=True)
        for number, path in enumerate(paths):
            target = trash / f"{number:06d}"
            os.replace(path, target)
            moved.append((path, target))
    except OSError as error:
        for path, target in reversed(moved):
            with contextlib.suppress(OSError):
                os.replace(target, path)
        with contextlib.suppress(OSError):
            trash.rmdir()
        raise EdgesegError(f"--overwrite: cannot remove the earlier run's `{error.filename or out}` "
                           f"({error.strerror or error}); nothing was deleted. Fix its permissions, or pass another "
                           "--out.") from None
    _remove_later(trash)


def _remove_later(trash: Path) -> None:
    # Deleting a big earlier run (100,000 masks) takes minutes: it runs beside the new run, and what a stopped
    # process leaves behind goes with the next run's trash (everything under .edgeseg/old-* is ours to delete).
    def remove() -> None:
        for old in sorted(trash.parent.glob("old-*")):
            shutil.rmtree(old, ignore_errors=True)

    threading.Thread(target=remove, name="edgeseg-remove-old-run", daemon=True).start()


class RunLock:
    """The one run that writes into ``out`` now: an exclusive, non-blocking lock on ``out/.edgeseg/lock``.

    The kernel releases it when the process ends, however it ends, so a killed run never blocks the next.

    Example::

        with RunLock("runs/clip"):
            ...
    """

    def __init__(self, out: str | os.PathLike) -> None:
        import fcntl

        self.path = Path(out) / STATE / "lock"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a+", encoding="utf-8")
        except OSError as error:
            raise EdgesegError(f"Cannot write to output folder `{out}`: {error.strerror or error}. "
                               "Pass a writable --out folder.") from None
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise EdgesegError(f"Output folder `{out}` is in use by another edgeseg run ({holder}): wait for it to "
                               "end, or pass another --out.") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self._handle.flush()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing the file releases the lock


def identity_path(out: Path) -> Path:
    return out / STATE / "run.json"


def earlier_folders(root: Path) -> list[Path]:
    """The source folders an earlier run in ``root`` wrote: those its identity names (written when it started,
    so a killed run is known too) and those its ``summary.json`` names. Only ``root`` and its children."""
    named: list[str] = []
    for path, key in ((identity_path(root), "folders"), (root / "summary.json", "sources")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        value = data.get(key) or data.get("streams") or {}
        if isinstance(value, dict):  # a summary's sources: each with its folder (or its name, earlier versions)
            named += [report.get("folder", name) if isinstance(report, dict) else name for name, report in value.items()]
        elif isinstance(value, list):
            named += value
    folders = []
    for relative in dict.fromkeys(n for n in named if isinstance(n, str)):
        folder = (root / relative).resolve()
        if folder == root.resolve() or folder.parent == root.resolve():
            folders.append(root / relative)
    return folders


def check_resume(out: Path, identity: Mapping[str, Any]) -> None:
    """Refuse, in one line, to resume a run whose identity differs from ``identity`` (another model, contract,
    engine, source or output-changing option)."""
    try:
        earlier = json.loads(identity_path(out).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if any((out / name).exists() for name in ("frames.jsonl", "summary.json")) or any(out.glob("*/frames*.jsonl")):
            raise EdgesegError(f"--resume: `{out}` holds a run without its identity (.edgeseg/run.json: an earlier "
                               "edgeseg version, or not edgeseg's), so it cannot be continued safely: pass --overwrite "
                               "or another --out.") from None
        return
    except (OSError, ValueError) as error:
        raise EdgesegError(f"--resume: cannot read `{identity_path(out)}` ({error}): pass --overwrite or another "
                           "--out.") from None
    for key, label in (("model", "model file (sha256)"), ("contract", "model contract (preprocessing, classes)"),
                       ("engine", "engine and precision"), ("sources", "sources"), ("options", "output options")):
        if earlier.get(key) != identity.get(key):
            raise EdgesegError(f"--resume: the run in `{out}` had another {label}: {_difference(earlier.get(key), identity.get(key))}. "
                               "Resume with what it ran with, or pass --overwrite (or another --out).")


def write_identity(out: Path, identity: Mapping[str, Any]) -> None:
    write_json_atomic(identity_path(out), {**identity, "pid": os.getpid(), "started": time.time()})


def _difference(before: Any, now: Any) -> str:
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                return f"{key} was {_short(before.get(key))}, now {_short(now.get(key))}"
    return f"was {_short(before)}, now {_short(now)}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
