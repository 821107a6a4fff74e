"""edgeseg: Keras CAE and FCN-8 models from training to fast inference at the edge.

The distribution installs its parts under one namespace:

- ``edgeseg.runtime``: OpenCV + onnxruntime inference; never imports TensorFlow.
- ``edgeseg.export``: build, train and export the Keras models (needs ``edgeseg[export]``).
- ``edgeseg.calibration``: INT8 quantization from real frames (needs ``edgeseg[calibrate]``).
- ``edgeseg`` itself: the command line, ``bench``, ``demo``, ``sampledata``, ``tune``, ``scaleout``.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

__all__ = ["__version__"]

# A source checkout keeps runtime/, export/ and calibration/ beside this folder (README "Layout"); an
# installed edgeseg holds them inside it. Python puts the checkout first on sys.path when run from its
# root (`python -m pytest`, `python -m edgeseg`), and this folder then shadows the installed package:
# let it find its three parts beside it, so the checkout works as the installed package does.
_here = _Path(__file__).resolve().parent
if not (_here / "runtime").is_dir() and (_here.parent / "runtime" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - a package's own __path__
del _Path, _here
