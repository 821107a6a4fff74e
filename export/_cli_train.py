"""``edgeseg train cae|fcn8``: argparse only at import; TensorFlow loads when a run starts."""

from __future__ import annotations

import argparse

from edgeseg.runtime._errors import EdgesegError

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


def register(subparsers: argparse._SubParsersAction) -> None:
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
    fcn.add_argument("--data", default=None, help="a folder with images/ + masks/ paired by file stem (class-id PNGs; "
                     "0/255 masks for 2 classes, thresholded at 128; RGB masks in the default palette), a folder "
                     "with the course's .npy pair (images + one-hot labels), or IMAGES.npy,LABELS.npy; default: "
                     "generated scenes")
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
    fcn.add_argument("--samples", type=int, default=64, help="how many scenes to generate when --data is not given")
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


def _trainer():
    try:
        from edgeseg.export import _train
    except ImportError as error:
        raise EdgesegError(f"edgeseg train needs TensorFlow ({error}): pip install 'edgeseg[export]'") from None
    return _train


def _run_cae(args: argparse.Namespace) -> int:
    summary = _trainer().train_cae(
        data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, val_split=args.val_split,
        seed=args.seed, latent_size=args.latent_size, input_size=args.input_size, digits=args.digits,
        learning_rate=args.learning_rate, generate_from=args.generate_from)
    print(f"best val_loss (MSE) {summary['best_val_loss']:.5f} at epoch {summary['best_epoch']}; wrote {args.out}/model.keras")
    return 0


def _run_fcn8(args: argparse.Namespace) -> int:
    summary = _trainer().train_fcn8(
        data=args.data, out=args.out, variant=args.variant, classes=args.classes, class_names=args.class_names,
        input_size=args.input_size, head_width=args.head_width, backbone_width=args.backbone_width, backbone=args.backbone,
        freeze_backbone=args.freeze_backbone, epochs=args.epochs, batch_size=args.batch_size,
        val_split=args.val_split, seed=args.seed, learning_rate=args.learning_rate, samples=args.samples)
    ious = ", ".join(f"{n} {v if v is None else round(v, 3)}" for n, v in zip(summary["classes"], summary["best_val_iou"]))
    print(f"best val_loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']}; val IoU {ious}; "
          f"wrote {args.out}/model.keras")
    return 0
