"""``edgeseg train``, ``export`` and ``verify``: argparse only at import; TensorFlow loads when a command runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import write_json_atomic
from edgeseg.export._tolerance import DEFAULT_SQNR_DB, DEFAULT_TOLERANCE

log = logging.getLogger(__name__)

VERIFY_CRASHED = 3  # distinct from 1 (a layer out of tolerance) and 2 (bad input)
OUTPUT_ONLY = 4  # verify compared only the final output: nothing could be matched layer by layer


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_export(subparsers)
    _register_verify(subparsers)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="Keras .keras model -> ONNX with the contract inside",
        description="Convert a .keras model to ONNX (input `image`, static height/width) and write the "
        "contract (preprocessing, classes, source versions) into its metadata. Contract facts come from the "
        "edgeseg record inside the .keras file; the options below override them or supply them for a "
        ".keras made elsewhere.",
    )
    export.add_argument("model", metavar="MODEL.keras", help="the Keras model file to export (a local .keras path, or a "
                        "legacy .h5 file; a SavedModel folder is refused with the fix)")
    export.add_argument("-o", dest="output", metavar="FILE", required=True, help="the .onnx file to write (written atomically)")
    export.add_argument("--output", dest="head", metavar="NAME|all",
                        help="which output of a model with several to export, by the name of the layer that makes it "
                        "(default: the first), or `all` (the ONNX outputs then take the Keras names and the contract "
                        "lists each)")
    _loading_options(export)
    _graph_options(export)
    _export_verify_options(export)
    _contract_fact_options(export)
    export.set_defaults(func=_run_export)


def _graph_options(export: argparse.ArgumentParser) -> None:
    """The shape of the ONNX graph export writes: opset, batch, layout, CUDA-friendly transposed convs."""
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


def _export_verify_options(export: argparse.ArgumentParser) -> None:
    """``export --verify``: verify before writing, on what inputs, judged how."""
    export.add_argument("--verify", action="store_true", help="verify layer by layer before writing; exit 1 if a layer fails")
    export.add_argument("--images", metavar="DIR", help="with --verify: a local folder of images to verify on (default: random inputs)")
    export.add_argument("--random", type=int, default=4, metavar="N", help="with --verify and no --images: N seeded random inputs (default: 4)")
    export.add_argument("--report", metavar="FILE", help="with --verify: also write the verify report JSON here (default: none)")
    export.add_argument(
        "--tolerance", type=float, default=None, help="with --verify: max-abs error <= TOLERANCE x max(peak |value|, "
        "floor) (default: the model's precision's, see `edgeseg verify --help`)"
    )


def _contract_fact_options(export: argparse.ArgumentParser) -> None:
    """The contract facts a .keras made elsewhere lacks (or ours should override)."""
    facts = export.add_argument_group("contract facts (default: the .keras file's edgeseg record)")
    facts.add_argument("--kind", choices=("segmentation", "autoencoder", "encoder", "decoder"), help="what the model is")
    facts.add_argument("--color", choices=("RGB", "BGR", "GRAY"), help="colour order the model expects")
    facts.add_argument("--scale", type=float, help="pixel scale before mean/std (e.g. 0.00392156862745098 = 1/255)")
    facts.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean subtracted after scaling")
    facts.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std divided by after the mean")
    facts.add_argument("--resize", choices=("stretch", "letterbox"), help="how frames are fitted to the input size")
    facts.add_argument("--classes", metavar="N|a,b,...", help="class names (comma-separated) or a class count N "
                       "(default: inferred from the output's channels; one name for a one-channel output is the foreground)")
    facts.add_argument("--input-size", metavar="HxW|N", type=_size,
                       help="working size of a model that takes any input size, e.g. 256x256 (frames are resized to it)")


def _register_verify(subparsers: argparse._SubParsersAction) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="prove layer by layer that an ONNX export computes what Keras computes",
        description="Run the same inputs through the Keras model and its ONNX export and compare the outputs of "
        "every layer call it can find for sure in the file (nested, shared and around keras.ops calls; by name, "
        "shape and position), listing those it cannot with the reason, and of the final output. The ONNX side's "
        "tensors are read from the engine that deploys the file (--engine, --precision). The bar: where the engine "
        "computes the file as written (fp32), a layer passes when its max-abs error <= TOLERANCE x max(peak |value|, "
        "floor), and where Keras and the file differ near that bar the layer is recomputed in float64 and the file "
        "is judged against it; where the engine lowers the precision (bf16, fp16, int8), a layer passes when its SQNR "
        "against Keras is at least the precision's --sqnr-* bar. Exit 0 when layers were compared and all pass; 1 "
        "naming the first layer in graph order that does not; 2 when it cannot start (bad options, a missing, damaged "
        "or non-ONNX/non-Keras file, an ONNX graph the engine refuses to load, an engine or precision this machine "
        "cannot run, a missing extra such as TensorFlow); 3 when it started but could not finish (the engine failed "
        "running a file it had loaded, or a defect of verify); 4 when no layer could be compared and only the final "
        "output was (and it passes). With --report the JSON is written in every case: ok false, exit_code and error "
        "say why.",
    )
    verify.add_argument("model", metavar="MODEL.keras", help="the Keras model file (a local .keras or .h5 path)")
    verify.add_argument("onnx", metavar="M.onnx", help="its ONNX export (a local .onnx path made by `edgeseg export`)")
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--images", metavar="DIR", help="a local folder of images, preprocessed as the ONNX contract says")
    source.add_argument("--random", type=int, default=4, metavar="N", help="N seeded random inputs when no --images (default: 4)")
    verify.add_argument(
        "--layers", choices=("all", "transposed"), default="all", help="which layers to report: every layer call (default) or Conv2DTranspose only"
    )
    _verify_judge_options(verify)
    verify.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    _loading_options(verify)
    verify.add_argument("--report", metavar="FILE", help="also write the report JSON here (default: print the table only)")
    verify.set_defaults(func=_run_verify)


def _verify_judge_options(verify: argparse.ArgumentParser) -> None:
    """Which engine and precision the ONNX side runs in, and the bar each layer must pass."""
    verify.add_argument(
        "--tolerance", type=float, default=None,
        help="with --precision fp32 (the engine computes the file as written): pass when max-abs error <= TOLERANCE x "
        "max(peak |value|, floor), the floor being the smallest normal number of the precision the model computes in "
        f"(default: {DEFAULT_TOLERANCE['fp32']:g} for an fp32 model, {DEFAULT_TOLERANCE['fp16']:g} for mixed_float16, "
        f"{DEFAULT_TOLERANCE['bf16']:g} for mixed_bfloat16)"
    )
    verify.add_argument("--engine", choices=("auto", "onnxruntime", "openvino", "tensorrt"), default="auto",
                        help="the engine the ONNX side runs on, with the settings it deploys with; each layer's tensor "
                        "is read from that engine itself (onnxruntime fp32: from the graph as written, the output from "
                        "the deployed session) (default: auto, what `edgeseg segment --engine auto` would run the file "
                        "with: a tuning record, else OpenVINO on CPUs with bf16, else onnxruntime). A fallback (CPU for "
                        "GPU, another precision) is refused, never reported as the asked-for engine")
    verify.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16", "int8"), default="auto",
                        help="the precision the engine computes in (default: auto: int8 for an INT8 file, bf16 for "
                        "OpenVINO on a CPU with bf16, else fp32). fp32 is judged by --tolerance, the others by SQNR")
    for name, db in DEFAULT_SQNR_DB.items():
        verify.add_argument(f"--sqnr-{name}", type=float, default=db, metavar="DB",
                            help=f"{name}: pass when a layer's SQNR against Keras is at least DB dB (default: {db:g})")


def _loading_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--custom-objects", metavar="MODULE",
                        help="a .py file (or importable module) defining the model's custom layers; imported before "
                        "loading, so its @keras.saving.register_keras_serializable classes are found (default: none)")
    parser.add_argument("--unsafe-deserialization", action="store_true",
                        help="let Keras run the Python code a Lambda layer stores in the file (Keras' safe_mode=False); "
                        "only for files you trust (default: off)")


def _check_paths(args: argparse.Namespace, *, onnx_in: str | None = None, onnx_out: str | None = None) -> None:
    """What can be checked without TensorFlow, before it loads (5-20 s): the files and folders named."""
    import os

    from edgeseg.export._keras_file import check_model_path

    check_model_path(args.model)
    if args.custom_objects and args.custom_objects.endswith(".py") and not Path(args.custom_objects).is_file():
        raise EdgesegError(f"--custom-objects `{args.custom_objects}`: no such file; pass the .py file that defines "
                           "the model's custom layers.")
    if onnx_in is not None:
        from edgeseg.export._verify import check_onnx_path

        check_onnx_path(onnx_in)
    if onnx_out is not None:
        parent = next((p for p in Path(onnx_out).absolute().parents if p.exists()), None)
        if Path(onnx_out).is_dir() or parent is None or not os.access(parent, os.W_OK):
            raise EdgesegError(f"Cannot write `{onnx_out}`: "
                               + ("it is a folder" if Path(onnx_out).is_dir() else f"`{parent}` is not writable")
                               + ". Choose a writable -o path.")


def _load_tensorflow() -> None:
    from edgeseg.export import _patches

    log.info("edgeseg: loading TensorFlow...")
    _patches.import_tensorflow_quietly()


def _run_export(args: argparse.Namespace) -> int:
    _check_paths(args, onnx_out=args.output)
    _load_tensorflow()
    from edgeseg.export._onnx import ContractFacts, GraphOptions, export_model
    from edgeseg.export._verify import VerifyRequest

    facts = ContractFacts(
        kind=args.kind,
        color=args.color,
        scale=args.scale,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
        classes=_classes(args.classes),
        height=args.input_size[0] if args.input_size else None,
        width=args.input_size[1] if args.input_size else None,
    )
    if (args.images or args.report) and not args.verify:
        raise EdgesegError("--images and --report belong to --verify; add --verify.")
    request = None
    if args.verify:
        request = VerifyRequest(images=Path(args.images) if args.images else None, random=args.random, tolerance=args.tolerance)
    result = export_model(
        args.model,
        args.output,
        graph=GraphOptions(opset=args.opset, batch=_batch(args.batch), nchw=args.nchw, cuda_friendly=args.cuda_friendly),
        facts=facts,
        verify=request,
        output=args.head,
        custom_objects=args.custom_objects,
        unsafe=args.unsafe_deserialization,
    )
    print(f"wrote {result.path} ({result.nodes} nodes, kind {result.contract.kind}"
          + (f", {result.rewritten} transposed conv(s) made CUDA-friendly" if args.cuda_friendly else "") + ")")
    if result.report is None:
        return 0
    print(result.report.table())
    if args.report:
        _write_json(Path(args.report), result.report.to_dict())
    return _verdict_code(result.report)


def _verdict_code(report: Any) -> int:
    if report.first_failure is not None:
        log.error("verify: layer `%s` is out of tolerance", report.first_failure)
        return 1
    if report.output_only:
        log.error("verify: no layer could be compared layer by layer; only the final output was (see not_compared)")
        return OUTPUT_ONLY
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    try:
        _check_paths(args, onnx_in=args.onnx)
    except EdgesegError as error:
        _verify_failed(args, 2, str(error))
        raise
    try:
        _load_tensorflow()
        from edgeseg.export._verify import VerifyRequest, verify_files
    except ModuleNotFoundError as error:  # a runtime-only install: cli.main names the extra, exit 2
        _verify_failed(args, 2, f"a package is not installed: {error.name}")
        raise

    try:
        request = VerifyRequest(images=args.images, random=args.random, tolerance=args.tolerance, seed=args.seed,
                                layers=args.layers,
                                sqnr={name: getattr(args, f"sqnr_{name}") for name in DEFAULT_SQNR_DB})
        report = verify_files(
            args.model,
            args.onnx,
            request=request,
            engine=args.engine,
            precision=args.precision,
            custom_objects=args.custom_objects,
            unsafe=args.unsafe_deserialization,
        )
    except EdgesegError as error:  # bad options or an unreadable file: the user's to fix, exit 2
        _verify_failed(args, 2, str(error))
        raise
    except ModuleNotFoundError as error:  # an extra is not installed: cli.main says which, in one line, exit 2
        _verify_failed(args, 2, f"a package is not installed: {error.name}")
        raise
    except Exception as error:  # started, could not finish: its own exit code, still a report
        line = f"{type(error).__name__}: {error}".splitlines()[0]
        _verify_failed(args, VERIFY_CRASHED, line)
        engine = type(error).__module__.split(".")[0]
        if engine in ("onnxruntime", "openvino"):
            log.error("verify could not finish: %s loaded `%s` but failed running it (%s); re-export the model.",
                      engine, args.onnx, line)
        else:
            log.error("verify could not finish (%s); this is a bug in edgeseg verify, not a divergence.", line)
        return VERIFY_CRASHED
    if args.report:
        _write_json(Path(args.report), report.to_dict())
    print(report.table())
    return _verdict_code(report)


def _verify_failed(args: argparse.Namespace, code: int, reason: str) -> None:
    """The report of a verify that did not compare: ok false, the exit code and the reason."""
    if args.report:
        _write_json(Path(args.report), {"ok": False, "exit_code": code, "error": reason, "first_failure": None})


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except OSError as error:
        raise EdgesegError(f"Cannot write report `{path}`: {error.strerror}. Choose a writable --report path.") from None


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.isdigit() and int(p) > 0 for p in parts):
        return (int(parts[0]), int(parts[-1]))
    raise argparse.ArgumentTypeError(f"expected HxW such as 256x256 (or one number N for NxN), got {text!r}")


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


# -- train ----------------------------------------------------------------------------------

_BAD_ITEMS = ("Bad items (unreadable image, image/mask size mismatch, unpaired file, mask values outside "
              "the class list) are skipped and counted, one line each; a run with none left stops.")


class _DefaultsFormatter(argparse.HelpFormatter):
    # Appends "(default: X)" where the help text does not already say it and there is a default to show.
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="build and train the CAE or FCN-8; writes model.keras, history.json, PNGs",
                                  description="Build and train a model. Writes <out>/model.keras (best epoch by "
                                  "validation loss), <out>/history.json and PNG pictures.")
    models = train.add_subparsers(dest="model", metavar="MODEL", required=True)
    fmt = _DefaultsFormatter

    cae = models.add_parser("cae", formatter_class=fmt, help="the course's convolutional autoencoder on MNIST",
                            description="Train the CAE on MNIST. Also writes encoder.keras, decoder.keras, "
                            "reconstructions.png, latent_space.png and generated.png.")
    cae.add_argument("--data", required=True, help="MNIST: a folder of IDX files (t10k-/train-images-idx3-ubyte.gz + "
                     "labels), an .npz with x_train/y_train/x_test/y_test, or `keras` (downloads; needs the internet)")
    _common(cae, epochs=10, batch_size=64, learning_rate=1e-3)
    cae.add_argument("--digits", type=_ints, default=None, help="keep only these digits, e.g. 1,5,6 (default: all)")
    cae.add_argument("--latent-size", type=int, default=2, help="size of the latent code (1x1xN)")
    cae.add_argument("--input-size", type=int, default=28, help="side of the input image (multiple of 4)")
    cae.add_argument("--generate-from", type=_floats, default=(-8.0, 0.0), metavar="A,B",
                     help="latent point to decode into generated.png (one number per latent dimension)")
    cae.set_defaults(func=_run_cae)

    fcn = models.add_parser("fcn8", formatter_class=fmt, help="FCN-8 semantic segmentation (VGG16 encoder)",
                            description="Train FCN-8. Writes predictions.png (image/truth/prediction/overlay) and "
                            "iou.png (per-class validation IoU). " + _BAD_ITEMS)
    fcn.add_argument("--data", required=True, help="a folder with images/ + masks/ paired by file stem (class-id PNGs; "
                     "0/255 masks for 2 classes, thresholded at 128; RGB masks in the default palette), a folder "
                     "with the course's .npy pair (images + one-hot labels), or IMAGES.npy,LABELS.npy "
                     "(required; samples/scenes is a small generated set)")
    _common(fcn, epochs=10, batch_size=4, learning_rate=1e-4)
    fcn.add_argument("--variant", choices=("classic", "course"), default="classic", help="which FCN-8 of the course")
    fcn.add_argument("--classes", type=int, default=2, help="number of classes, background included")
    fcn.add_argument("--class-names", type=lambda s: tuple(s.split(",")), default=None,
                     help="comma-separated class names (default: background,object or background,class1,...)")
    fcn.add_argument("--input-size", type=int, default=224, help="side of the square input (multiple of 32); images are stretched to it")
    fcn.add_argument("--head-width", type=int, default=4096, help="width of conv6/conv7 (the course: 4096)")
    fcn.add_argument("--backbone-width", type=float, default=1.0,
                     help="multiplier of VGG16's 64/128/256/512 filters, e.g. 0.125 for a fast small model (default: 1.0)")
    fcn.add_argument("--backbone", default="none", help="VGG16 weights: none, imagenet (downloads) or a local no-top .h5 path")
    fcn.add_argument("--freeze-backbone", action="store_true", help="keep the VGG16 layers fixed")
    fcn.set_defaults(func=_run_fcn8)


def _common(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, learning_rate: float) -> None:
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="samples per step")
    parser.add_argument("--val-split", type=float, default=0.2, help="fraction held out for validation (random, by --seed)")
    parser.add_argument("--learning-rate", type=float, default=learning_rate, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and shuffling")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,5,6, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as -8,0, got {text!r}") from None


def _trainer(data: str, *, segmentation: bool = False):
    # Check what the user typed before TensorFlow takes seconds to load and --out is created.
    if data != "keras" and not all(Path(part).exists() for part in str(data).split(",")):
        raise EdgesegError(f"--data `{data}`: no such file or folder. Pass a local dataset (see --help).")
    if segmentation:  # the layout is known from names alone: a folder that cannot be read is refused now
        from edgeseg.runtime.datasets import segmentation_layout

        segmentation_layout(data)
    from edgeseg.export import _patches

    _patches.import_tensorflow_quietly()
    from edgeseg.export import _train  # a missing extra: the command line names it (edgeseg.cli.COMMAND_EXTRAS)

    return _train


def _run_cae(args: argparse.Namespace) -> int:
    train = _trainer(args.data)
    options = train.CAEOptions(
        epochs=args.epochs, batch_size=args.batch_size, val_split=args.val_split, seed=args.seed,
        learning_rate=args.learning_rate, latent_size=args.latent_size, input_size=args.input_size, digits=args.digits,
        generate_from=args.generate_from)
    summary = train.train_cae(data=args.data, out=args.out, options=options)
    print(f"best val_loss (MSE) {summary['best_val_loss']:.5f} at epoch {summary['best_epoch']}; wrote {args.out}/model.keras")
    return 0


def _run_fcn8(args: argparse.Namespace) -> int:
    train = _trainer(args.data, segmentation=True)
    options = train.FCN8Options(
        epochs=args.epochs, batch_size=args.batch_size, val_split=args.val_split, seed=args.seed,
        learning_rate=args.learning_rate, variant=args.variant, classes=args.classes, class_names=args.class_names,
        input_size=args.input_size, head_width=args.head_width, backbone_width=args.backbone_width,
        backbone=args.backbone, freeze_backbone=args.freeze_backbone)
    summary = train.train_fcn8(data=args.data, out=args.out, options=options)
    ious = ", ".join(f"{n} {v if v is None else round(v, 3)}" for n, v in zip(summary["classes"], summary["best_val_iou"]))
    print(f"best val_loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']}; val IoU {ious}; "
          f"wrote {args.out}/model.keras")
    return 0
