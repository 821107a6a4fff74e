import signal
import sys

_received: list[int] = []


def _on_signal(signum: int, _frame: object) -> None:
    _received.append(signum)  # remembered: an extension that fails its import on it may hide the interrupt
    raise KeyboardInterrupt


for _sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_sig, _on_signal)
try:
    from edgeseg.cli import main
except (KeyboardInterrupt, ImportError) as error:  # Ctrl-C while the command line loads: one line
    if isinstance(error, ImportError) and not _received:
        raise
    sys.stderr.write("edgeseg: interrupted\n")
    sys.exit(130)

sys.exit(main())
