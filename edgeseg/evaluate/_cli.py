"""``edgeseg eval``: the command line (argparse only at import)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="accuracy of deployed files (FP32, INT8, ...) on labelled data, per file and engine",
        description=(
            "Run every FILE on every --engine over labelled frames, exactly as `edgeseg segment` runs it (the "
            "contract's preprocessing, the engine at its precision, class ids restored to the frame's size), and "
            "score it against the masks at their own size: per-class IoU, mIoU and pixel accuracy, side by side. "
            "Autoencoders: the reconstruction error (mean |input - output|) per label where the data has labels "
            "(MNIST). Use frames the model and its calibration never saw. Writes --json, a table, and a PNG chart."
        ),
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.onnx",
                        help="edgeseg ONNX files of one model (e.g. its FP32 export and its INT8 file)")
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="segmentation: a folder of images (with --masks) or a folder with images/ and masks/; "
                             "autoencoders: an image folder, or MNIST (IDX folder or .npz; labels group the error)")
    parser.add_argument("--masks", metavar="DIR", default=None,
                        help="class-id mask images named like the images (default: DATA/masks when DATA has images/)")
    parser.add_argument("--engine", default="auto", metavar="E[,E]",
                        help="engines to run each file on, comma-separated: auto, onnxruntime, openvino (default: "
                             "auto, what `edgeseg segment` runs the file with here)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="auto: each engine's default for the file (int8 for an INT8 file, OpenVINO bf16 on CPUs "
                             "with it, else fp32); fp32; bf16 (OpenVINO); fp16 (onnxruntime on a GPU) (default: auto)")
    parser.add_argument("--provider", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto",
                        help="onnxruntime's execution provider (default: auto)")
    parser.add_argument("--samples", type=int, default=None, metavar="N", help="score the first N frames (default: all)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the report here (default: none)")
    parser.add_argument("--chart", type=Path, default=None, metavar="FILE",
                        help="bar chart PNG (default: next to --json as .png; none without --json)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edgeseg.evaluate import EvalOptions, evaluate, format_table, write_chart
    from edgeseg.runtime import EdgesegError, write_json_atomic

    options = EvalOptions(engines=tuple(e.strip() for e in args.engine.split(",") if e.strip()),
                          precision=args.precision, samples=args.samples, provider=args.provider)
    for flag, path in (("--json", args.json), ("--chart", args.chart)):
        if path is not None and not path.parent.is_dir():
            raise EdgesegError(f"{flag} `{path}`: folder `{path.parent}` does not exist; create it first.")
    report = evaluate(args.files, args.data, masks=args.masks, options=options)
    chart = args.chart or (args.json.with_suffix(".png") if args.json else None)
    if chart is not None:
        written = write_chart(report, chart)
        report["chart"] = str(written) if written else None
    if args.json:
        write_json_atomic(args.json, report)
    print(format_table(report))
    return 0
