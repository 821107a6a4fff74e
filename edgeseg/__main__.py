import sys

try:
    from edgeseg.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line itself loads: one line, not a traceback
    sys.stderr.write("edgeseg: interrupted\n")
    sys.exit(130)

sys.exit(main())
