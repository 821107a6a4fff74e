"""The ``.keras`` file as edgeseg writes it: Keras' own archive plus the preprocessing record.

Training appends one member, ``edgeseg.json``, to the zip archive Keras writes. It holds the
contract as far as training knows it (kind, input preprocessing, classes and palette; docs/architecture.md),
so the exporter reads everything it needs from the one file. Keras ignores the extra member when
loading. A ``.keras`` file from elsewhere simply has no record.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import atomic_path

log = logging.getLogger(__name__)

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


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_model_path(path: str | os.PathLike) -> str:
    """What the model path holds, checked without TensorFlow: ``"keras"`` or ``"h5"``; else one clear error.

    A SavedModel folder is refused here, with the fix: Keras 3 cannot load one as a model.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            raise EdgesegError(
                f"Cannot read model `{path}`: it is a TensorFlow SavedModel folder, which Keras 3 cannot load as a model "
                "(only as an opaque TFSMLayer, with no layers to verify). Save the model as .keras where it was built: "
                "model.save('model.keras')."
            )
        raise EdgesegError(f"Cannot read model `{path}`: it is a folder; pass the .keras (or .h5) file.")
    if not path.is_file():
        raise EdgesegError(f"Cannot read model `{path}`: no such file.")
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except OSError as error:
        raise EdgesegError(f"Cannot read model `{path}`: {error.strerror or error}.") from None
    if head.startswith(HDF5_SIGNATURE):
        return "h5"
    if not zipfile.is_zipfile(path):
        raise EdgesegError(f"Cannot read model `{path}`: not a .keras file (expected a zip archive, or a legacy .h5 file).")
    return "keras"


def import_custom_objects(module: str) -> dict[str, Any]:
    """Import the user's module (a ``.py`` path or an importable name) that defines the model's custom layers.

    Importing runs its ``@keras.saving.register_keras_serializable`` decorators; its public classes
    and functions are also returned, for custom objects that are not registered.

    Example::

        objects = import_custom_objects("my_layers.py")   # or "mypackage.layers"
    """
    import importlib
    import importlib.util
    import inspect

    path = Path(module)
    if not module.endswith(".py") and module.split(".")[0] == "edgeseg":  # the one import by a name the user typed: never into edgeseg itself
        raise EdgesegError(f"--custom-objects `{module}`: edgeseg's own modules define no custom layers; pass the .py "
                           "file or module that defines your model's layers.")
    try:
        if module.endswith(".py"):
            if not path.is_file():
                raise EdgesegError(f"--custom-objects `{module}`: no such file; pass the .py file that defines the layers.")
            spec = importlib.util.spec_from_file_location(f"edgeseg_custom_{path.stem}", path)
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
        else:
            loaded = importlib.import_module(module)
    except EdgesegError:
        raise
    except Exception as error:  # the user's module may raise anything while it runs
        where = f" (line {error.lineno})" if isinstance(error, SyntaxError) else ""
        raise EdgesegError(f"--custom-objects `{module}` could not be imported: {type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}{where}.") from None
    return {name: value for name, value in vars(loaded).items()
            if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))}


def load_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The preprocessing record stored in a ``.keras`` file, or None if it has none (or is an .h5 file)."""
    path = Path(path)
    if check_model_path(path) == "h5":
        return None
    with zipfile.ZipFile(path) as archive:
        if RECORD_MEMBER not in archive.namelist():
            return None
        try:
            return json.loads(archive.read(RECORD_MEMBER))
        except json.JSONDecodeError as error:
            raise EdgesegError(f"Cannot read model `{path}`: its {RECORD_MEMBER} is not valid JSON ({error}).") from None


def load_model(path: str | os.PathLike, *, compile: bool = False, custom_objects: str | None = None,
               unsafe: bool = False) -> tuple[Any, dict[str, Any] | None]:
    """Load a ``.keras`` (or legacy ``.h5``) file: ``(model, record)``; the record is None for foreign files.

    ``custom_objects``: the module that defines the model's custom layers (see
    :func:`import_custom_objects`). ``unsafe``: let Keras run the Python code a ``Lambda`` layer
    stores in the file (Keras' ``safe_mode=False``); only for files you trust.
    """
    record = load_record(path)
    objects = import_custom_objects(custom_objects) if custom_objects else None
    import keras

    if unsafe:
        log.warning("Loading `%s` with --unsafe-deserialization: Python code stored in it (Lambda layers) runs; "
                    "use this only for files you trust.", path)
    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=not unsafe, custom_objects=objects)
    except Exception as error:  # Keras raises many types for a broken archive; name the file once.
        raise EdgesegError(_load_error(path, error, custom_objects)) from None
    return model, record


def _load_error(path: str | os.PathLike, error: Exception, custom_objects: str | None) -> str:
    """One line for what Keras said, with the fix when there is one."""
    import re

    text = str(error)
    if "Lambda" in text and "safe_mode" in text:
        return (f"Cannot read model `{path}`: it holds a Lambda layer, whose Python code Keras runs only when asked; "
                "if you trust the file, pass --unsafe-deserialization.")
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if missing:
        given = f" (--custom-objects `{custom_objects}` does not define it)" if custom_objects else ""
        return (f"Cannot read model `{path}`: it uses `{missing.group(1)}`, which Keras cannot find{given}; pass "
                "--custom-objects MODULE, the .py file (or module) that defines and registers it.")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"Cannot read model `{path}`: Keras could not load it ({type(error).__name__}: {first[:300]})."
