"""Training data: the runtime's dataset readers, plus Keras' own MNIST loader (which downloads).

Everything that reads files lives in :mod:`edgeseg.runtime.datasets`, shared with calibration;
this module adds only what needs Keras.
"""

from __future__ import annotations

import os

from edgeseg.runtime.datasets import (
    MNIST_SPEC,
    Digits,
    SegmentationSet,
    load_segmentation,
    mnist_arrays,
    read_idx,
    split,
)
from edgeseg.runtime.datasets import load_mnist as _load_mnist_files
from edgeseg.runtime.errors import EdgesegError

__all__ = ["MNIST_SPEC", "Digits", "SegmentationSet", "load_mnist", "load_segmentation", "mnist_arrays", "read_idx",
           "split"]


def load_mnist(source: str | os.PathLike, *, digits: tuple[int, ...] | None = None) -> Digits:
    """Load MNIST from a folder of IDX files, an ``.npz`` with Keras' keys, or ``"keras"`` (Keras
    downloads it; needs the internet: pass a local folder or .npz where there is none).

    Example::

        digits = load_mnist("data/mnist", digits=(1, 5, 6))
    """
    if str(source) != "keras":
        return _load_mnist_files(source, digits=digits)
    import keras

    try:
        (xa, ya), (xb, yb) = keras.datasets.mnist.load_data()
    except Exception as error:  # no network: urllib raises many types
        raise EdgesegError(f"Keras could not download MNIST ({error}); pass --data FOLDER of IDX .gz files or an .npz.") from None
    return _load_mnist_files([(xa, ya, False), (xb, yb, True)], digits=digits)
