"""The output folder rule every run follows: writable, and never silently merged with an earlier run.

A folder that holds a run is refused unless ``overwrite`` (which removes only what a run writes: a
user's own files in it stay) or ``resume`` (the caller continues the run) is given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeseg.runtime.errors import EdgesegError


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
    previous = [path for path in previous_run(out) if path.exists() or path.is_symlink()]
    if not previous or resume:
        return out
    if not overwrite:
        fixes = "--overwrite to replace it, --resume to continue it" if can_resume else "--overwrite to replace it"
        names = ", ".join(sorted({path.relative_to(out).parts[0] for path in previous}))
        raise EdgesegError(f"Output folder `{out}` already holds a run ({names}): pass {fixes}, or another --out.")
    for path in previous:  # only what a run writes: a user's own files in --out stay
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    return out
