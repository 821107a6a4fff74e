"""``edgeseg calibrate``: the command line of the INT8 side. Imports only argparse at import time."""

from __future__ import annotations

import argparse

_DESCRIPTION = """\
Quantize an edgeseg FP32 ONNX model to INT8 (onnxruntime static quantization) from real frames,
preprocessed by the model's own contract. Compares FP32 and INT8 on those frames (against
--masks when given), times both side by side, reports per-layer SQNR, and warns about what
limits the speedup. Local files plug in as --data (folder, glob, .txt list, video, .npy/.npz array,
MNIST IDX file, or a folder with images/ and masks/) and --masks (class-id PNGs named like the images)."""


# What write_trt_table (in _quantize) writes; named here so that `--help` needs no onnxruntime.
# argparse expands %, hence no % in it.
TRT_TABLE_FORMAT = (
    "onnxruntime's TensorRT execution provider INT8 calibration table: calibration.flatbuffers (TrtTable of "
    "tensor name -> dynamic range, read through trt_int8_calibration_table_name with "
    "trt_int8_use_native_calibration_table=0), calibration.cache (the same as text, one `name amax` a line) and "
    "calibration.json (lowest, highest and amax per tensor). Each range is symmetric: amax = max(|lowest|, "
    "|highest|), which TensorRT applies as [-amax, amax]"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="INT8 static quantization from real frames, with a report",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="M.onnx", help="FP32 edgeseg ONNX model (carries its contract)")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="calibration frames: image folder, glob, .txt list, video file, .npy/.npz array (N,H,W[,C]), "
                        "MNIST IDX file (...-ubyte.gz), or a folder with images/ and masks/")
    p.add_argument("--masks", metavar="DIR", default=None,
                   help="class-id mask PNGs paired with the frames by file stem (default: none; "
                        "then the report gives FP32/INT8 agreement instead of IoU)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the INT8 model")
    p.add_argument("--report", metavar="FILE", default=None, help="write the JSON report here (default: none)")
    p.add_argument("--chart", metavar="FILE", default=None,
                   help="write a per-layer SQNR bar chart PNG here (default: next to --report as .sqnr.png)")
    _range_options(p)
    _quantization_options(p)
    _accuracy_options(p)
    _tensorrt_options(p)
    _measurement_options(p)
    p.set_defaults(func=run)


def _range_options(p: argparse.ArgumentParser) -> None:
    """How ranges are collected: the method, and which frames feed it in what chunks."""
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="calibration method (default: minmax)")
    p.add_argument("--percentile", type=float, default=99.999,
                   help="percentile kept by --method percentile (default: 99.999)")
    p.add_argument("--samples", type=int, default=128, help="calibration frames to use, at most (default: 128)")
    p.add_argument("--every", type=int, default=None, metavar="K",
                   help="take every K-th frame/image (default: spread --samples evenly over the whole source)")
    p.add_argument("--chunk", type=int, default=8,
                   help="frames per calibration chunk; memory grows with it, not with --samples (default: 8)")


def _quantization_options(p: argparse.ArgumentParser) -> None:
    """What the INT8 file looks like: scales, format, types, the target CPU, what stays float."""
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of per output channel (default: per channel)")
    p.add_argument("--format", choices=("qdq", "qoperator"), default="qdq",
                   help="quantized model format (default: qdq)")
    p.add_argument("--activations", choices=("auto", "int8", "uint8"), default="auto",
                   help="activation type (default: auto = uint8 on x86-64, where onnxruntime's CPU kernels fuse "
                        "more of the graph, int8 on ARM; weights are always int8)")
    p.add_argument("--symmetric", action="store_true",
                   help="symmetric activation ranges around 0, as TensorRT wants (default: asymmetric; "
                        "weights are always symmetric)")
    p.add_argument("--target", choices=("native", "avx2", "vnni"), default="native",
                   help="the CPU the INT8 file is for (default: native, this one). avx2: x86-64 without an int8 dot "
                        "product (no VNNI/AMX-INT8): 7-bit weights, since AVX2's vpmaddubsw saturates 16-bit sums with "
                        "full-range ones (measured: 98.25%% -> 99.66%% agreement with FP32, same speed); vnni: VNNI, "
                        "AMX-INT8 or an ARM dot product: full 8-bit weights. The report says which rule chose")
    p.add_argument("--reduce-range", action="store_true", default=None,
                   help="7-bit weights whatever the target (default: by --target)")
    p.add_argument("--float-nodes", default="", metavar="A,B",
                   help="node names to keep in float (default: none)")
    p.add_argument("--float-ops", default="ConvTranspose", metavar="OP,OP",
                   help="op types to keep in float (default: ConvTranspose, which onnxruntime's CPU provider "
                        "runs in float anyway; pass '' to quantize it, e.g. for TensorRT)")
    p.add_argument("--quantize-output", action="store_true",
                   help="quantize the final Softmax/Sigmoid too (default: keep it float; 8-bit probabilities "
                        "tie and flip argmax, and the op is cheap)")


def _accuracy_options(p: argparse.ArgumentParser) -> None:
    """Accuracy control: the drop allowed, and the frames kept out to measure it on."""
    p.add_argument("--max-drop", type=float, default=None, metavar="X",
                   help="accuracy control: return lowest-SQNR layers to float until the drop is at most X points "
                        "(mIoU with masks, pixel disagreement without, %% MSE increase for autoencoders; "
                        "default: off)")
    p.add_argument("--holdout", type=float, default=None, metavar="SHARE",
                   help="share of the frames (masks and all) kept out of the ranges: the accuracy figures and "
                        "--max-drop's control are measured on them (default: 0.25 with --max-drop, else 0: "
                        "everything calibrates and is measured)")


def _tensorrt_options(p: argparse.ArgumentParser) -> None:
    """The calibration table TensorRT INT8 reads beside the file."""
    p.add_argument("--trt-table", metavar="DIR", default=None,
                   help="also write a TensorRT calibration table into DIR (default: none); the INT8 file's contract "
                        "records where (keep DIR beside it), and `--provider tensorrt` with the INT8 file runs TensorRT "
                        "INT8 by it. Format: " + TRT_TABLE_FORMAT)


def _measurement_options(p: argparse.ArgumentParser) -> None:
    """How FP32 and INT8 are timed side by side, and the progress display."""
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for FP32 and INT8 alike (default: the runtime's choice, as in edgeseg segment: "
                        "every core on machines with 2 cores or fewer, else all but one; 0: onnxruntime's own default)")
    p.add_argument("--rounds", type=int, default=20, help="timed runs per model (default: 20)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress display (default: a bar on a terminal, a line every 15 s when piped)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgeseg.calibration import Budget, CalibrateOptions, QuantizeOptions, calibrate, format_table

    quantize = QuantizeOptions(
        method=args.method, percentile=args.percentile, per_channel=not args.per_tensor, format=args.format,
        activations=args.activations, symmetric_activations=args.symmetric,
        reduce_range=args.reduce_range, target=args.target, float_output=not args.quantize_output,
        float_nodes=_names(args.float_nodes), float_op_types=_names(args.float_ops),
    )
    chart = args.chart
    if chart is None and args.report:
        chart = str(Path(args.report).with_suffix(".sqnr.png"))
    options = CalibrateOptions(
        quantize=quantize, samples=args.samples, every=args.every, chunk=args.chunk,
        budget=None if args.max_drop is None else Budget(args.max_drop), report=args.report, chart=chart,
        trt_table=args.trt_table, threads=args.threads, timing_rounds=args.rounds,
        progress=not args.no_progress and not args.quiet, holdout=args.holdout)
    report = calibrate(args.model, args.data, output=args.output, masks=args.masks, options=options)
    print(format_table(report))
    wrote = [f"INT8 model {args.output}"] + [f"{what} {path}" for what, path in (
        ("report", args.report), ("SQNR chart", report.get("chart")), ("TensorRT table", args.trt_table)) if path]
    print("wrote " + ", ".join(wrote))
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())
