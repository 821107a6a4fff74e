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
import signal
import sys
import threading
import warnings

from edgeseg import __version__
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.extras import check_extras, missing_message

# Packages whose `_cli` module registers subcommands, in the order `edgeseg --help` lists them.
# The `_cli` modules are the one sanctioned way in: argparse only at import, heavy imports inside handlers.
_COMMAND_PACKAGES: tuple[str, ...] = (
    "edgeseg.export",
    "edgeseg.calibration",
    "edgeseg.evaluate",
    "edgeseg.segment",
    "edgeseg.bench",
    "edgeseg.tune",
    "edgeseg.serve",
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


# The extras each command cannot start without (pyproject.toml's extras; the modules each brings are in
# edgeseg.runtime.extras.EXTRAS). Checked before the command loads anything: a missing one is one line naming
# every extra to install. `segment` needs none beyond the base install by itself: the engine it runs asks for its
# own (onnxruntime or OpenVINO), as do --serve and --ray.
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("export",),
    "export": ("export",),
    "verify": ("cpu", "export"),
    "calibrate": ("cpu", "calibrate"),
    "eval": ("cpu", "calibrate"),
    "bench": ("cpu", "bench"),
    "tune": ("cpu",),
    "demo": ("cpu", "export", "calibrate", "bench"),
    "samples": ("cpu", "export", "calibrate"),
    "serve": ("serve",),
}


def missing_extra_message(command: str, error: ModuleNotFoundError) -> str:
    """One line for a command whose optional dependency is not installed: which package, which extra
    (of the extras the command uses, where one of them brings it).

    Example::

        missing_extra_message("export", ModuleNotFoundError(name="tf2onnx"))
        # "edgeseg export needs the `tf2onnx` package, which is not installed: pip install 'edgeseg[export]'"
    """
    return missing_message(error.name or "a package", purpose=f"edgeseg {command}",
                           among=COMMAND_EXTRAS.get(command, ()))


def main(argv: list[str] | None = None) -> int:
    """Run the ``edgeseg`` command line; returns the process exit code.

    Exit codes: 0 success, 1 a check failed (``verify``), 2 a bad model, option or output
    (one line on stderr), 130 interrupted (Ctrl-C or SIGTERM, at any moment: one line).
    """
    command = "edgeseg"
    signals = InterruptRecorder()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"edgeseg {args.command}"
        _configure_logging(verbose=args.verbose, quiet=args.quiet)
        check_extras(COMMAND_EXTRAS.get(args.command, ()), purpose=command)
        return int(args.func(args) or 0)
    except EdgesegError as error:
        if signals.interrupted(error):  # Ctrl-C while a module loaded, reported by its importer as "missing"
            return _say_interrupted(command)
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        if signals.interrupted(error):
            return _say_interrupted(command)
        if not isinstance(error, ModuleNotFoundError) or command == "edgeseg":
            raise
        # An optional extra is missing: one line naming it, exit 2, never a traceback.
        print(f"{command}: error: {missing_extra_message(command.split(' ', 1)[1], error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _say_interrupted(command)
    finally:
        signals.restore()


class InterruptRecorder:
    """SIGINT/SIGTERM raise KeyboardInterrupt, as Python's default SIGINT does, and are remembered.

    Why remembered: a Ctrl-C that lands while a C extension initializes is turned into an ImportError
    by that extension, often without a trace of the interrupt (measured: SIGINT during
    ``import onnxruntime`` before numpy is loaded gives ``ImportError('import numpy failed')`` with no
    cause), and code that turns an ImportError into "install X" would then lie. ``segment`` installs
    its own handlers while frames run (finish what is in flight) and puts these back after.
    """

    def __init__(self) -> None:
        self.received = False
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = True
        raise KeyboardInterrupt

    def interrupted(self, error: BaseException) -> bool:
        """True when a signal came, or ``error`` was caused by a KeyboardInterrupt."""
        seen: set[int] = set()
        cause: BaseException | None = error
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, KeyboardInterrupt):
                return True
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        return self.received

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


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
        if "cv2" in sys.modules:  # already loaded (by an embedding program): the variable came too late
            cv2 = sys.modules["cv2"]
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    for noisy in ("tensorflow", "tf2onnx", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # TensorFlow's C++ core prints INFO/WARNING lines (oneDNN, CPU features, grappler sessions) on
    # stderr next to ours; the command line keeps them to errors unless -v. Set before TF loads.
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")



def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    text = str(message)
    return f"{text}\n" if text.startswith("edgeseg") else f"warning: {text}\n"


def run() -> None:
    """The process entry of the ``edgeseg`` command and ``python -m edgeseg``: :func:`main`, then exit.

    Why not simply ``sys.exit(main())``: every output is written and closed when ``main`` returns, but a
    thread may still be blocked in native code (FFmpeg opening a camera that never answers, a huge image
    decoding). Python's shutdown would wait on it or tear it down mid-call (``terminate called without an
    active exception``, SIGABRT). So the process leaves at once in that case, with the command's code.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if any(thread is not threading.main_thread() and thread.is_alive() for thread in threading.enumerate()):
        os._exit(code)
    sys.exit(code)
