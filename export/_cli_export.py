"""``edgeseg export`` and ``edgeseg verify``: registered here, heavy imports inside the handlers."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from edgeseg.runtime._errors import EdgesegError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="Keras .keras model -> ONNX with the contract inside",
        description="Convert a .keras model to ONNX (input `image`, static height/width) and write the "
        "contract (preprocessing, classes, source versions) into its metadata. Contract facts come from the "
        "edgeseg record inside the .keras file; the options below override them or supply them for a "
        ".keras made elsewhere.",
    )
    export.add_argument("model", metavar="MODEL.keras", help="the Keras model file to export (a local .keras path)")
    export.add_argument("-o", dest="output", metavar="FILE", required=True, help="the .onnx file to write (written atomically)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    export.add_argument(
        "--batch", default="dynamic", metavar="dynamic|N", help="batch size of the ONNX input: `dynamic` (default) or a fixed N"
    )
    export.add_argument("--nchw", action="store_true", help="make the ONNX input NCHW (default: NHWC, as Keras)")
    export.add_argument(
        "--cuda-friendly",
        action="store_true",
        help="rewrite SAME Conv2DTranspose layers that would get asymmetric pads into VALID + crop (same math), "
        "so onnxruntime's CUDA provider runs every node (default: off)",
    )
    export.add_argument("--verify", action="store_true", help="verify layer by layer before writing; exit 1 if a layer fails")
    export.add_argument("--images", metavar="DIR", help="with --verify: a local folder of images to verify on (default: random inputs)")
    export.add_argument("--random", type=int, default=4, metavar="N", help="with --verify and no --images: N seeded random inputs (default: 4)")
    export.add_argument("--report", metavar="FILE", help="with --verify: also write the verify report JSON here (default: none)")
    export.add_argument(
        "--tolerance", type=float, default=1e-5, help="with --verify: max-abs error <= TOLERANCE x max(1, value range) (default: 1e-5)"
    )
    facts = export.add_argument_group("contract facts (default: the .keras file's edgeseg record)")
    facts.add_argument("--kind", choices=("segmentation", "autoencoder", "encoder", "decoder"), help="what the model is")
    facts.add_argument("--color", choices=("RGB", "BGR", "GRAY"), help="colour order the model expects")
    facts.add_argument("--scale", type=float, help="pixel scale before mean/std (e.g. 0.00392156862745098 = 1/255)")
    facts.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean subtracted after scaling")
    facts.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std divided by after the mean")
    facts.add_argument("--resize", choices=("stretch", "letterbox"), help="how frames are fitted to the input size")
    facts.add_argument("--classes", metavar="N|a,b,...", help="class names (comma-separated) or a class count N")
    export.set_defaults(func=_run_export)

    verify = subparsers.add_parser(
        "verify",
        help="prove layer by layer that an ONNX export computes what Keras computes",
        description="Run the same inputs through the Keras model and its ONNX export and compare the outputs of "
        "every Conv2D, Conv2DTranspose, Cropping2D, Add and activation layer. Exit 0 when all are within "
        "tolerance, 1 naming the first layer that is not, 2 for bad input.",
    )
    verify.add_argument("model", metavar="MODEL.keras", help="the Keras model file (a local .keras path)")
    verify.add_argument("onnx", metavar="M.onnx", help="its ONNX export (a local .onnx path made by `edgeseg export`)")
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--images", metavar="DIR", help="a local folder of images, preprocessed as the ONNX contract says")
    source.add_argument("--random", type=int, default=4, metavar="N", help="N seeded random inputs when no --images (default: 4)")
    verify.add_argument(
        "--layers", choices=("all", "transposed"), default="all", help="which layers to report: all inspected ones (default) or Conv2DTranspose only"
    )
    verify.add_argument(
        "--tolerance", type=float, default=1e-5, help="pass when max-abs error <= TOLERANCE x max(1, layer value range) (default: 1e-5)"
    )
    verify.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    verify.add_argument("--report", metavar="FILE", required=True, help="the report JSON to write")
    verify.set_defaults(func=_run_verify)


def _run_export(args: argparse.Namespace) -> int:
    from edgeseg.export._onnx import ContractFacts, VerifyRequest, export_model

    facts = ContractFacts(
        kind=args.kind,
        color=args.color,
        scale=args.scale,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
        classes=_classes(args.classes),
    )
    if (args.images or args.report) and not args.verify:
        raise EdgesegError("--images and --report belong to --verify; add --verify.")
    request = None
    if args.verify:
        request = VerifyRequest(images=Path(args.images) if args.images else None, random=args.random, tolerance=args.tolerance)
    result = export_model(
        args.model,
        args.output,
        opset=args.opset,
        batch=_batch(args.batch),
        nchw=args.nchw,
        cuda_friendly=args.cuda_friendly,
        facts=facts,
        verify=request,
    )
    print(f"wrote {result.path} ({result.nodes} nodes, kind {result.contract.kind}"
          + (f", {result.rewritten} transposed conv(s) made CUDA-friendly" if args.cuda_friendly else "") + ")")
    if result.report is None:
        return 0
    print(result.report.table())
    if args.report:
        _write_json(Path(args.report), result.report.to_dict())
    return 0 if result.report.ok else 1


def _run_verify(args: argparse.Namespace) -> int:
    from edgeseg.export._verify import verify_files

    report = verify_files(
        args.model,
        args.onnx,
        images=args.images,
        random=args.random,
        layers=args.layers,
        tolerance=args.tolerance,
        seed=args.seed,
    )
    _write_json(Path(args.report), report.to_dict())
    print(report.table())
    if not report.ok:
        log.error("verify: layer `%s` is out of tolerance", report.first_failure)
        return 1
    return 0


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as error:
        raise EdgesegError(f"Cannot write report `{path}`: {error.strerror}. Choose a writable --report path.") from None


def _batch(text: str) -> int | None:
    if text == "dynamic":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise EdgesegError(f"--batch must be `dynamic` or a positive integer, got {text!r}.")


def _classes(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise EdgesegError(f"--classes needs at least one class, got {text!r}.")
        return ("background", *(f"class{i}" for i in range(1, count)))
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
