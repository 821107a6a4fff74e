"""``python -m edgeseg``: the same entry as the ``edgeseg`` command (:func:`edgeseg.cli.run`)."""

import signal
import sys

# Until the command line installs its own handler (its first step), SIGTERM interrupts as Ctrl-C does.
signal.signal(signal.SIGTERM, signal.default_int_handler)
try:
    from edgeseg.cli import run
except KeyboardInterrupt:  # a signal in the few milliseconds before the command line's handler is in place
    sys.stderr.write("edgeseg: interrupted\n")
    sys.exit(130)

run()
