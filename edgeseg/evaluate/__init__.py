"""``edgeseg eval``: per-class IoU, mIoU and pixel accuracy of deployed files on labelled data, per engine.

Example::

    from edgeseg.evaluate import EvalOptions, evaluate, format_table
    report = evaluate(["fcn8.onnx", "fcn8.int8.onnx"], "held_out/images", masks="held_out/masks",
                      options=EvalOptions(engines=("onnxruntime", "openvino")))
    print(format_table(report))
"""

from edgeseg.evaluate._evaluate import EvalOptions, evaluate, format_table, write_chart

__all__ = ["EvalOptions", "evaluate", "format_table", "write_chart"]
