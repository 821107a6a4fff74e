"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one under the real name.

Every tool writes through :func:`atomic_path`: the data goes to a hidden temporary file beside the
target (same folder, so the final ``os.replace`` is atomic on one filesystem) and is moved into
place only when it is complete. :func:`sha256_of` is the one file hash (export records it, verify
checks it, the tuning cache keys on it).

The temporary file is created with mode 0o666, so the kernel applies the umask (and a folder's
default ACL) itself; the finished file gets that same mode. The umask is never read by setting it:
``os.umask(0)`` changes it for the whole process, and a file another thread created in that moment
(an ``overlay.mp4`` opened by a video writer) came out world-writable (issue 22, item 6).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


# A file name has at most 255 bytes on the usual filesystems (ext4, xfs, btrfs, tmpfs). The temporary name
# is ".<name>.<8 hex>.part": the target's name is cut to keep it within NAME_MAX whatever the target's length.
_NAME_MAX = 255
_TEMP_EXTRA = len("..") + 8 + len(".part")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``; on a clean exit it replaces ``path``, on an error it is removed.

    The temporary name is hidden (``.<name>.<random>.part``) and never longer than 255 bytes, however
    long ``path``'s own name is. The finished file has the mode a plain ``open(path, "w")`` would give
    (0o666 under the umask).

    Example::

        with atomic_path("model.onnx") as tmp:
            onnx.save(proto, str(tmp))
    """
    path = Path(path)
    temporary, mode = _create_beside(path)
    try:
        yield temporary
        # A writer may have replaced the file (Keras writes its own): give the result the mode it was created with.
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _create_beside(path: Path) -> tuple[Path, int]:
    """Create an empty hidden file beside ``path``: ``(its path, the mode the kernel gave it)``."""
    prefix = b"." + _cut_name(os.fsencode(path.name), _NAME_MAX - _TEMP_EXTRA)
    folder = os.fsencode(path.parent)
    for _ in range(100):
        candidate = os.path.join(folder, prefix + b"." + secrets.token_hex(4).encode() + b".part")
        try:
            handle = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            mode = os.fstat(handle).st_mode & 0o777
        finally:
            os.close(handle)
        return Path(os.fsdecode(candidate)), mode
    raise FileExistsError(f"no free temporary name beside {path}")


def _cut_name(name: bytes, limit: int) -> bytes:
    """``name`` cut to at most ``limit`` bytes; a UTF-8 name is cut between characters, never inside one."""
    cut = name[:limit]
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return cut  # not UTF-8 to begin with: any cut is as good
    return cut.decode("utf-8", "ignore").encode("utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def sha256_of(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (a 512 MB model never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
