"""edgeseg: Keras CAE and FCN-8 models from training to fast inference at the edge.

The distribution installs four packages under one namespace:

- ``edgeseg.export``: build, train and export the Keras models (needs ``edgeseg[export]``).
- ``edgeseg.calibration``: INT8 quantization from real frames (needs ``edgeseg[calibrate]``).
- ``edgeseg.runtime``: OpenCV + onnxruntime inference; never imports TensorFlow.
- ``edgeseg`` itself: the ``edgeseg`` command line that ties them together.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
