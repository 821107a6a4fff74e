"""edgeseg.segment: the ``edgeseg segment`` command (its options, help and report); the pipeline itself is
:func:`edgeseg.runtime.segment`, and ``--ray`` hands the same options to :mod:`edgeseg.scaleout`."""
