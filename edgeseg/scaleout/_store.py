"""Where a job's files live: a local path (made absolute on the driver) or an object-store URI (fsspec).

A location is a plain string: an absolute local path, or ``s3://bucket/key`` (``gs://``, ``az://``,
``abfs://``; ``file://`` means a local path). Every function here takes such strings, so units stay
a few hundred bytes of text and a worker needs nothing but the string to reach its inputs and outputs.

Local paths go through the operating system (a rename is the atomic publish); URIs through fsspec,
whose own configuration applies: ``FSSPEC_S3_ENDPOINT_URL``, ``FSSPEC_S3_KEY`` and friends, or the
nodes' usual credentials (an IAM role, ``AWS_*`` variables, a service account). The driver forwards
its ``FSSPEC_*`` variables to the workers (:func:`forwarded_env`), so one setting covers a job.
Listings are read fresh every time (fsspec's listing cache would hide what workers just wrote).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeseg.runtime import EdgesegError, write_bytes_atomic

# Object stores edgeseg reads and writes through fsspec, and the extra that brings each one's driver.
STORES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(text: str) -> str | None:
    """The URI scheme of ``text`` (``s3``), or None for a plain path."""
    match = _SCHEME.match(str(text))
    return match.group(1).lower() if match else None


def is_remote(location: str) -> bool:
    """True for an object-store URI (s3://, gs://, az://...), False for a local path."""
    return scheme(location) in STORES


def resolve(text: str | os.PathLike, *, what: str) -> str:
    """What the user typed, as every node must read it: a local path made absolute here (on the driver:
    a relative path means the user's folder, never the folder where ``ray start`` ran), ``file://``
    turned into its path, an object-store URI kept (without a trailing ``/``).

    ``what`` names the option in errors (``SOURCE``, ``--out``, ``--model``).

    Example::

        resolve("runs/clip", what="--out")          # '/home/me/runs/clip'
        resolve("s3://bucket/runs/clip/", what="--out")   # 's3://bucket/runs/clip'
    """
    text = os.fspath(text)
    kind = scheme(text)
    if kind == "file":
        text = text[len("file://"):]
    elif kind in STORES:
        return text.rstrip("/")
    elif kind is not None:
        raise EdgesegError(f"{what} `{text}`: --ray reads and writes files and object storage "
                           f"(a path, s3://, gs://, az://, file://), not {kind}:// (a stream is run without --ray).")
    # abspath, not resolve(): a symlink may lead to each node's own mount of the shared storage.
    return os.path.abspath(os.path.expanduser(text))


def join(location: str, *parts: str) -> str:
    """``location`` / ``parts``, with ``/`` for URIs."""
    if is_remote(location):
        return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(location, *parts)


def relative(location: str, base: str) -> str:
    """``location`` relative to ``base`` (a folder above it), with ``/``; ``.`` for ``base`` itself.

    Example::

        relative("s3://bucket/job/clip", "s3://bucket/job")   # 'clip'
    """
    if is_remote(location):
        rest = location.rstrip("/")[len(base.rstrip("/")):].strip("/")
        return rest or "."
    return Path(os.path.relpath(location, base)).as_posix()


def name_of(location: str) -> str:
    """The last part of a location (a file's name, a folder's name)."""
    return location.rstrip("/").rsplit("/", 1)[-1]


def filesystem(location: str) -> tuple[Any, str]:
    """The fsspec filesystem of a URI and the path inside it, configured from the ``FSSPEC_*`` variables
    of this moment (fsspec reads them only when it is imported)."""
    try:
        from fsspec.config import set_conf_env
        from fsspec.core import url_to_fs
    except ImportError:
        raise EdgesegError("object storage needs fsspec: pip install 'edgeseg[ray]'") from None
    protocol = scheme(location) or "file"
    options: dict[str, dict[str, Any]] = {}
    set_conf_env(options)
    try:
        return url_to_fs(location, **options.get(protocol, {}))
    except ImportError as error:
        extra = STORES.get(protocol, protocol)
        raise EdgesegError(f"`{location}` needs the {protocol}:// filesystem ({error}): "
                           f"pip install 'edgeseg[{extra}]'") from None


def _path(location: str) -> str:
    from fsspec.core import strip_protocol

    return strip_protocol(location)


def forwarded_env() -> dict[str, str]:
    """The driver's fsspec settings (``FSSPEC_*``), handed to every worker with its Ray runtime environment."""
    return {key: value for key, value in os.environ.items() if key.startswith("FSSPEC_")}


def exists(location: str) -> bool:
    if not is_remote(location):
        return os.path.exists(location)
    fs, path = filesystem(location)
    fs.invalidate_cache()
    return fs.exists(path)


def is_folder(location: str) -> bool:
    """A local folder, or a URI with objects under it (object stores have no empty folders)."""
    if not is_remote(location):
        return os.path.isdir(location)
    fs, path = filesystem(location)
    fs.invalidate_cache()
    return fs.isdir(path)


def find(location: str, *, recursive: bool = True) -> list[str]:
    """Every file under ``location`` (sorted, as full locations); an absent folder gives []."""
    if not is_remote(location):
        root = Path(location)
        if not root.is_dir():
            return []
        found = root.rglob("*") if recursive else root.iterdir()
        return sorted(str(p) for p in found if p.is_file())
    fs, path = filesystem(location)
    fs.invalidate_cache()
    try:
        found = fs.find(path, maxdepth=None if recursive else 1, withdirs=False)
    except FileNotFoundError:
        return []
    return sorted(fs.unstrip_protocol(p) for p in found)


def glob(pattern: str) -> list[str]:
    fs, path = filesystem(pattern)
    fs.invalidate_cache()
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(path) if not fs.isdir(p))


def read_bytes(location: str) -> bytes:
    if not is_remote(location):
        return Path(location).read_bytes()
    fs, path = filesystem(location)
    return fs.cat_file(path)


def read_many(locations: list[str]) -> dict[str, bytes]:
    """Several small files at once (one batched request on object stores); missing ones are left out."""
    if not locations:
        return {}
    if not is_remote(locations[0]):
        found = {}
        for location in locations:
            try:
                found[location] = Path(location).read_bytes()
            except OSError:
                pass
        return found
    fs, _ = filesystem(locations[0])
    paths = {_path(location): location for location in locations}
    data = fs.cat(list(paths), on_error="omit")
    return {paths[path]: value for path, value in data.items() if isinstance(value, bytes)}


def write_bytes(location: str, data: bytes) -> None:
    """Write one file: atomically for a local path (temporary + rename); one PUT (atomic) for an object."""
    if not is_remote(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(location, data)
        return
    fs, path = filesystem(location)
    fs.pipe_file(path, data)


def download(location: str, target: str | os.PathLike, *, callback: Any = None) -> None:
    """Copy ``location`` to the local file ``target`` (``callback``: fsspec's, to see bytes arrive)."""
    if not is_remote(location):
        shutil.copyfile(location, target)
        return
    fs, path = filesystem(location)
    if callback is None:
        fs.get_file(path, os.fspath(target))
    else:
        fs.get_file(path, os.fspath(target), callback=callback)


def download_many(pairs: list[tuple[str, str | os.PathLike]], *, callback: Any = None) -> list[str]:
    """Copy several files to local paths (concurrent requests on object stores); returns the locations that
    were not there (gone since they were listed)."""
    if not pairs:
        return []
    if not is_remote(pairs[0][0]):
        missing = []
        for location, target in pairs:
            try:
                shutil.copyfile(location, target)
            except FileNotFoundError:
                missing.append(location)
        return missing
    fs, _ = filesystem(pairs[0][0])
    try:
        fs.get([_path(location) for location, _ in pairs], [os.fspath(target) for _, target in pairs],
               **({"callback": callback} if callback is not None else {}))
        return []
    except FileNotFoundError:  # one is gone: fetch one by one to know which
        missing = []
        for location, target in pairs:
            try:
                fs.get_file(_path(location), os.fspath(target))
            except FileNotFoundError:
                missing.append(location)
        return missing


def upload(pairs: Iterable[tuple[str | os.PathLike, str]], *, callback: Any = None) -> None:
    """Local files to their locations: renames for local targets (atomic), batched PUTs for URIs."""
    pairs = [(os.fspath(local), target) for local, target in pairs]
    if not pairs:
        return
    if not is_remote(pairs[0][1]):
        made: set[str] = set()
        for local, target in pairs:
            folder = os.path.dirname(target)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            os.replace(local, target)
        return
    fs, _ = filesystem(pairs[0][1])
    fs.put([local for local, _ in pairs], [_path(target) for _, target in pairs],
           **({"callback": callback} if callback is not None else {}))


def remove(locations: list[str]) -> None:
    """Delete files and folders (recursively); absent ones are fine."""
    for location in locations:
        if not is_remote(location):
            if os.path.isdir(location) and not os.path.islink(location):
                shutil.rmtree(location)
            elif os.path.lexists(location):
                os.unlink(location)
    remote = [location for location in locations if is_remote(location)]
    if remote:
        fs, _ = filesystem(remote[0])
        fs.invalidate_cache()
        present = [_path(r) for r in remote if fs.exists(_path(r))]
        if present:
            fs.rm(present, recursive=True)


def storage_error(location: str, error: BaseException) -> EdgesegError:
    """One line for a store that refused us: what, where, and the likely fix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, PermissionError):
        hint = "check the credentials the nodes use (FSSPEC_* variables, AWS_*, an IAM role or service account)"
    elif isinstance(error, FileNotFoundError):
        hint = "check the bucket and the path exist"
    else:
        hint = "check the address (FSSPEC_S3_ENDPOINT_URL for an S3-compatible server) and that it is up"
    return EdgesegError(f"Cannot reach `{location}`: {text}. {hint[0].upper()}{hint[1:]}.")
