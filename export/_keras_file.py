"""The ``.keras`` file as edgeseg writes it: Keras' own archive plus the preprocessing record.

Training appends one member, ``edgeseg.json``, to the zip archive Keras writes. It holds the
contract as far as training knows it (kind, input preprocessing, classes and palette; docs/architecture.md),
so the exporter reads everything it needs from the one file. Keras ignores the extra member when
loading. A ``.keras`` file from elsewhere simply has no record.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import atomic_path

RECORD_MEMBER = "edgeseg.json"


def save_model(model: Any, path: str | os.PathLike, record: dict[str, Any] | None) -> Path:
    """Save ``model`` to ``path`` (a ``.keras`` file) with ``record`` inside, atomically.

    The archive is written into a temporary file beside the target and moved into place, so a
    crash never leaves a half-written model where the user expects one.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise EdgesegError(f"Model path must end in .keras, got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras insists on the .keras suffix of the file it writes.
    with atomic_path(path) as temporary:
        keras_path = temporary.with_name(temporary.name + ".keras")
        try:
            model.save(keras_path)
            if record is not None:
                with zipfile.ZipFile(keras_path, "a") as archive:
                    archive.writestr(RECORD_MEMBER, json.dumps(record, indent=2, sort_keys=True))
            os.replace(keras_path, temporary)
        finally:
            keras_path.unlink(missing_ok=True)
    return path


def load_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The preprocessing record stored in a ``.keras`` file, or None if it has none."""
    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"Cannot read model `{path}`: no such file.")
    if not zipfile.is_zipfile(path):
        raise EdgesegError(f"Cannot read model `{path}`: not a .keras file (expected a zip archive).")
    with zipfile.ZipFile(path) as archive:
        if RECORD_MEMBER not in archive.namelist():
            return None
        try:
            return json.loads(archive.read(RECORD_MEMBER))
        except json.JSONDecodeError as error:
            raise EdgesegError(f"Cannot read model `{path}`: its {RECORD_MEMBER} is not valid JSON ({error}).") from None


def load_model(path: str | os.PathLike, *, compile: bool = False) -> tuple[Any, dict[str, Any] | None]:
    """Load a ``.keras`` file: ``(model, record)``; the record is None for foreign files."""
    record = load_record(path)
    import keras

    try:
        model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # Keras raises many types for a broken archive; name the file once.
        raise EdgesegError(f"Cannot read model `{path}`: Keras could not load it ({type(error).__name__}: {error}).") from None
    return model, record
