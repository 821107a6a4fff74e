"""The one ``edgeseg`` command.

Each package owns its subcommands in a ``_cli`` module with a ``register(subparsers)``
function. Those modules import only ``argparse`` and friends at import time; their handlers
import TensorFlow, onnxruntime and the rest when they run, so ``edgeseg segment`` never loads
TensorFlow and ``edgeseg --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from edgeseg import __version__
from edgeseg.runtime.errors import EdgesegError

# Packages whose `_cli` module registers subcommands, in the order `edgeseg --help` lists them.
# The `_cli` modules are the one sanctioned way in: argparse only at import, heavy imports inside handlers.
_COMMAND_PACKAGES: tuple[str, ...] = (
    "edgeseg.export",
    "edgeseg.calibration",
    "edgeseg.runtime",
    "edgeseg.bench",
    "edgeseg.tune",
    "edgeseg.demo",
)

_DESCRIPTION = """\
edgeseg takes Keras vision models (a convolutional autoencoder on MNIST and FCN-8
semantic segmentation) from training to fast inference: train, export to ONNX with the
preprocessing written inside the file, verify the export layer by layer, quantize to
INT8, and segment images, folders, videos and camera streams with onnxruntime.

Run `edgeseg COMMAND --help` for each command's options."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every package's subcommands registered."""
    parser = argparse.ArgumentParser(
        prog="edgeseg",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for package in _COMMAND_PACKAGES:
        importlib.import_module(f"{package}._cli").register(subparsers)
    return parser


# The extra that brings each third-party package a command may import (pyproject.toml's extras).
_EXTRA_OF_MODULE = {
    "tensorflow": "export", "keras": "export", "tf2onnx": "export", "h5py": "export",
    "onnx": "calibrate", "matplotlib": "calibrate", "onnxruntime": "cpu", "openvino": "openvino",
    "psutil": "bench", "ray": "ray", "prometheus_client": "serve", "imageio_ffmpeg": "cpu",
}
# What a whole command needs, when the missing module is not one of the above.
_EXTRA_OF_COMMAND = {"train": "export", "export": "export", "verify": "export", "calibrate": "calibrate",
                     "bench": "bench", "demo": "cpu,export,calibrate,bench", "samples": "cpu,export,calibrate"}


def missing_extra_message(command: str, error: ModuleNotFoundError) -> str:
    """One line for a command whose optional dependency is not installed: which package, which extra.

    Example::

        missing_extra_message("export", ModuleNotFoundError(name="tf2onnx"))
        # "edgeseg export needs the `tf2onnx` package, which is not installed: pip install 'edgeseg[export]'"
    """
    module = (error.name or "").split(".")[0] or "a package"
    extra = _EXTRA_OF_MODULE.get(module) or _EXTRA_OF_COMMAND.get(command)
    fix = f": pip install 'edgeseg[{extra}]'" if extra else " (it should come with edgeseg itself: reinstall edgeseg)"
    return f"edgeseg {command} needs the `{module}` package, which is not installed{fix}"


def main(argv: list[str] | None = None) -> int:
    """Run the ``edgeseg`` command line; returns the process exit code.

    Exit codes: 0 success, 1 a check failed (``verify``), 2 a bad model, option or output
    (one line on stderr), 130 interrupted (Ctrl-C or SIGTERM, at any moment: one line).
    """
    command = "edgeseg"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"edgeseg {args.command}"
        _configure_logging(verbose=args.verbose, quiet=args.quiet)
        return int(args.func(args) or 0)
    except EdgesegError as error:
        if _interrupted(error):  # Ctrl-C while a module loaded, reported by its importer as "missing"
            return _say_interrupted(command)
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        if _interrupted(error):
            return _say_interrupted(command)
        if not isinstance(error, ModuleNotFoundError) or command == "edgeseg":
            raise
        # An optional extra is missing: one line naming it, exit 2, never a traceback.
        print(f"{command}: error: {missing_extra_message(command.split(' ', 1)[1], error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _say_interrupted(command)


def _interrupted(error: BaseException) -> bool:
    # A Ctrl-C that lands while a C extension (onnxruntime, cv2, numpy) initializes comes back as an
    # ImportError("initialization failed") caused by the KeyboardInterrupt; code that turns ImportError
    # into "install X" would then lie. Walk the chain to tell the two apart.
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _say_interrupted(command: str) -> int:
    try:
        print(f"{command}: interrupted", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    return 130


def _configure_logging(*, verbose: bool, quiet: bool) -> None:
    # The library never configures logging itself; the command line does, once.
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # Warnings are messages for the user, not for a debugger: no file path and source line.
    warnings.formatwarning = _format_warning
    if not verbose:
        # OpenCV's and FFmpeg's own log lines repeat, less clearly, what edgeseg reports itself.
        # Set before cv2 is imported (the handlers import it lazily); -v keeps them.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        if "cv2" in sys.modules:  # already loaded (edgeseg.runtime imports it): the variable came too late
            cv2 = sys.modules["cv2"]
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    for noisy in ("tensorflow", "tf2onnx", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    text = str(message)
    return f"{text}\n" if text.startswith("edgeseg") else f"warning: {text}\n"
