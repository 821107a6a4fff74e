"""edgeseg: Keras CAE and FCN-8 models from training to fast inference at the edge.

The distribution installs its parts under one namespace:

- ``edgeseg.runtime``: OpenCV + onnxruntime inference; never imports TensorFlow.
- ``edgeseg.export``: build, train and export the Keras models (needs ``edgeseg[export]``).
- ``edgeseg.calibration``: INT8 quantization from real frames (needs ``edgeseg[calibrate]``).
- ``edgeseg`` itself: the command line, ``bench``, ``demo``, ``sampledata``, ``tune``, ``scaleout``.
"""

import os as _os
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"

# OpenCV's own pixel limit backs edgeseg's header check (edgeseg.runtime.read_image): a decoder that reads
# another size than the header parser did (a pixel bomb crafted for it) still refuses before allocating.
# OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, when cv2 loads, and any edgeseg module may be the first to
# load it, so the default is set here, the one place every import passes through. Its own default (2**30
# pixels, 3 GB for RGB) is no limit worth the name; a value already in the environment is kept, and nothing
# changes when cv2 was loaded before edgeseg.
if "cv2" not in _sys.modules:
    _os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "100000000")  # edgeseg.runtime's DEFAULT_MAX_PIXELS

__all__ = ["__version__"]

# runtime/, export/ and calibration/ sit at the top of the repository (README "Layout") and install inside
# this package. In a checkout, the symlinks edgeseg/runtime -> ../runtime (and export, calibration) make the
# folder what Python and import-linter see (`python -m pytest`, `python -m edgeseg`, `lint-imports` after
# `pip install -e .`). Where a checkout has no symlinks (git's core.symlinks=false writes them as small text
# files), let this package find its three parts beside it instead.
_here = _Path(__file__).resolve().parent
if not (_here / "runtime").is_dir() and (_here.parent / "runtime" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - a package's own __path__
del _Path, _here, _os, _sys
