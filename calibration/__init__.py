"""INT8 side: static quantization of an edgeseg ONNX model from real calibration frames.

Needs ``pip install 'edgeseg[calibrate]'`` plus onnxruntime (``edgeseg[cpu]`` or ``[gpu]``).
"""

__all__: list[str] = []
