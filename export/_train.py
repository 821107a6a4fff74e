"""Training runs for the CAE and FCN-8: data -> model -> best checkpoint, history.json, pictures.

Each run writes into ``out``: ``model.keras`` (the best epoch by validation loss, saved through
``save_model`` with the contract as training knows it), ``history.json`` (rewritten after every
epoch, so an interrupted run keeps what it learned) and PNG pictures.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgeseg.export import _plots
from edgeseg.export._data import MNIST_SPEC, load_mnist, load_segmentation, mnist_arrays, split
from edgeseg.export._keras_file import save_model
from edgeseg.export._models import build_cae, build_fcn8
from edgeseg.runtime.contract import Contract, InputSpec, OutputSpec, default_palette
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import write_json_atomic
from edgeseg.runtime.progress import Progress

log = logging.getLogger(__name__)

# VGG16's ImageNet weights expect Caffe preprocessing: BGR, 0..255, minus the ImageNet mean.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def training_record(contract: Contract, **extra: Any) -> dict[str, Any]:
    """The contract as training knows it: everything but ``source`` (the exporter adds it)."""
    record = contract.to_dict()
    record.pop("source", None)
    record.update(extra)
    return record


def fcn8_input_spec(*, input_size: int, backbone: str) -> InputSpec:
    """RGB scaled to 0..1 from scratch; Caffe's BGR minus mean when starting from VGG16 weights."""
    if backbone == "none":
        return InputSpec(height=input_size, width=input_size, channels=3, color="RGB", scale=1.0 / 255.0)
    return InputSpec(height=input_size, width=input_size, channels=3, color="BGR", scale=1.0, mean=_CAFFE_MEAN_BGR)


@dataclass(frozen=True)
class TrainOptions:
    """The knobs every training run shares; :class:`CAEOptions` and :class:`FCN8Options` add the model's.

    ``val_split``: the share held out for validation (random, by ``seed``, which also seeds initialisation
    and shuffling). ``verbose``: 0 quiet, else one log line per epoch and a bar on a terminal.
    """

    epochs: int = 10
    batch_size: int = 64
    val_split: float = 0.2
    seed: int = 0
    learning_rate: float = 1e-3
    verbose: int = 2

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise EdgesegError(f"--epochs must be at least 1, got {self.epochs}.")


@dataclass(frozen=True)
class CAEOptions(TrainOptions):
    """How :func:`train_cae` trains the course's CAE: the latent size, the input side, the digits kept, and the
    latent point decoded into generated.png (None: no picture; one number per latent dimension).

    Example::

        CAEOptions(digits=(1, 5, 6), epochs=10)
    """

    latent_size: int = 2
    input_size: int = 28
    digits: Sequence[int] | None = None
    generate_from: Sequence[float] | None = (-8.0, 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.generate_from is not None and len(self.generate_from) != self.latent_size:
            raise EdgesegError(f"--generate-from needs {self.latent_size} numbers (the latent size), "
                               f"got {list(self.generate_from)}.")


@dataclass(frozen=True)
class FCN8Options(TrainOptions):
    """How :func:`train_fcn8` builds and trains FCN-8 (the arguments of :func:`build_fcn8`, the class names).

    ``class_names`` None: ``background,object`` for 2 classes, else ``background,class1,...``.

    Example::

        FCN8Options(classes=3, input_size=96, backbone_width=0.125, head_width=64, epochs=3)
    """

    batch_size: int = 4
    learning_rate: float = 1e-4
    variant: str = "classic"
    classes: int = 2
    class_names: Sequence[str] | None = None
    input_size: int = 224
    head_width: int = 4096
    backbone_width: float = 1.0
    backbone: str = "none"
    freeze_backbone: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.names) != self.classes:
            raise EdgesegError(f"--class-names has {len(self.names)} names for --classes {self.classes}.")

    @property
    def names(self) -> tuple[str, ...]:
        if self.class_names:
            return tuple(self.class_names)
        if self.classes == 2:
            return ("background", "object")
        return ("background",) + tuple(f"class{i}" for i in range(1, self.classes))


def train_cae(*, data: str | os.PathLike, out: str | os.PathLike, options: CAEOptions = CAEOptions()
              ) -> dict[str, Any]:
    """Train the course's CAE on MNIST; returns the summary also written to history.json.

    Example::

        summary = train_cae(data="data/mnist", out="runs/cae", options=CAEOptions(digits=(1, 5, 6), epochs=10))
        summary["best_val_loss"]
    """
    out = _prepare(out, options.seed)
    latent_size = options.latent_size
    digits_set = load_mnist(data, digits=tuple(options.digits) if options.digits else None)
    spec = dataclasses.replace(MNIST_SPEC, height=options.input_size, width=options.input_size)
    x = mnist_arrays(digits_set.images, spec)
    train_idx, val_idx = split(len(x), fraction=options.val_split, seed=options.seed)
    log.info("CAE: %d training and %d validation digits from %s", len(train_idx), len(val_idx), data)

    model = build_cae(latent_size=latent_size, input_size=options.input_size)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss="mse")
    latent = {"latent_size": latent_size, "shape": [1, 1, latent_size]}
    contract = Contract(kind="autoencoder", input=spec, output=OutputSpec(name="reconstruction", activation="none"))
    history = _fit(model, (x[train_idx], x[train_idx]), (x[val_idx], x[val_idx]), out=out,
                   record=training_record(contract, latent=latent), options=options)
    encoder, decoder = _save_halves(model, out, spec=spec, latent=latent)
    _cae_pictures(model, encoder, decoder, x[val_idx], digits_set.labels[val_idx], out=out, options=options)
    history["digits"] = sorted(set(digits_set.labels.tolist()))
    history["train_samples"], history["val_samples"] = int(len(train_idx)), int(len(val_idx))
    return _write_history(out, history)


def _save_halves(model: keras.Model, out: Path, *, spec: InputSpec, latent: dict[str, Any]) -> tuple[Any, Any]:
    """encoder.keras and decoder.keras, each with its own contract; returns the two sub-models."""
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    save_model(encoder, out / "encoder.keras", training_record(
        Contract(kind="encoder", input=spec, output=OutputSpec(name="latent", activation="none")), latent=latent))
    # The decoder's input is a latent code, not an image. InputSpec needs an image, so it holds a
    # 1x1 single-channel placeholder with identity scaling; `latent` says what the input really is
    # ((N, 1, 1, latent_size), NHWC), and `image` what the output is.
    decoder_spec = InputSpec(height=1, width=1, channels=1, color="GRAY", scale=1.0, name="latent")
    save_model(decoder, out / "decoder.keras", training_record(
        Contract(kind="decoder", input=decoder_spec, output=OutputSpec(name="reconstruction", activation="none")),
        latent={**latent, "input_is_latent": True},
        image={"height": spec.height, "width": spec.width, "channels": 1, "scale": spec.scale}))
    return encoder, decoder


def _cae_pictures(model: keras.Model, encoder: Any, decoder: Any, val: np.ndarray, labels: np.ndarray, *, out: Path,
                  options: CAEOptions) -> None:
    """reconstructions.png, latent_space.png and (with ``generate_from``) generated.png, from validation digits."""
    shown = val[:10]
    _plots.reconstructions(shown, model.predict(shown, verbose=0), out / "reconstructions.png")
    codes = encoder.predict(val, verbose=0)
    _plots.latent_space(codes, labels, out / "latent_space.png")
    if options.generate_from is not None:
        point = np.asarray(options.generate_from, np.float32).reshape(1, 1, 1, options.latent_size)
        _plots.generated(decoder.predict(point, verbose=0)[0], list(options.generate_from), out / "generated.png")


def train_fcn8(*, data: str | os.PathLike | None, out: str | os.PathLike, options: FCN8Options = FCN8Options()
               ) -> dict[str, Any]:
    """Train FCN-8 on a segmentation set (``data=None``: generated scenes); returns the summary.

    Example::

        summary = train_fcn8(data="data/membrane", out="runs/fcn", options=FCN8Options(head_width=64, epochs=5))
        summary["val_iou"][-1]      # per class, last epoch
    """
    out = _prepare(out, options.seed)
    names, classes = options.names, options.classes
    spec = fcn8_input_spec(input_size=options.input_size, backbone=options.backbone)
    palette = default_palette(classes)
    dataset = load_segmentation(data, spec=spec, classes=classes, palette=palette)
    if dataset.skipped:
        log.warning("%d item(s) skipped (listed above)", len(dataset.skipped))
    train_idx, val_idx = split(len(dataset.x), fraction=options.val_split, seed=options.seed)
    log.info("FCN-8 %s: %d training and %d validation images from %s", options.variant, len(train_idx),
             len(val_idx), data if data is not None else "generated scenes")

    model = build_fcn8(variant=options.variant, classes=classes, input_size=options.input_size,
                       head_width=options.head_width, backbone_width=options.backbone_width,
                       backbone=options.backbone, trainable_backbone=not options.freeze_backbone)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss="sparse_categorical_crossentropy")
    contract = Contract(kind="segmentation", input=spec,
                        output=OutputSpec(name="probabilities", activation="softmax", classes=names, palette=palette))
    x_val, y_val = dataset.x[val_idx], dataset.y[val_idx]
    iou = _IoU(x_val, y_val, classes, options.batch_size)
    history = _fit(model, (dataset.x[train_idx], dataset.y[train_idx]), (x_val, y_val), out=out,
                   record=training_record(contract), options=options, extra=iou)
    predictions = iou.predict(model)
    rgb = _to_rgb8(x_val, spec)
    _plots.segmentation_grid(rgb, y_val, predictions, palette, out / "predictions.png")
    final = per_class_iou(y_val, predictions, classes)
    _plots.iou_bars(final, names, out / "iou.png")
    history.update(classes=list(names), best_val_iou=_nan_to_none(final), skipped=list(dataset.skipped),
                   notices=list(dataset.notices), train_samples=int(len(train_idx)), val_samples=int(len(val_idx)))
    return _write_history(out, history)


def per_class_iou(truth: np.ndarray, prediction: np.ndarray, classes: int) -> list[float]:
    """Intersection over union per class; NaN for a class absent from both."""
    ious = []
    for c in range(classes):
        t, p = truth == c, prediction == c
        union = np.logical_or(t, p).sum()
        ious.append(float(np.logical_and(t, p).sum() / union) if union else float("nan"))
    return ious


class _IoU:
    """Per-class validation IoU after each epoch (Keras' metrics average; we want every class)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: int, batch_size: int) -> None:
        self.x, self.y, self.classes, self.batch_size = x, y, classes, batch_size

    def predict(self, model: keras.Model) -> np.ndarray:
        return model.predict(self.x, batch_size=self.batch_size, verbose=0).argmax(-1).astype(np.uint8)

    def __call__(self, model: keras.Model, history: dict[str, Any]) -> str:
        ious = per_class_iou(self.y, self.predict(model), self.classes)
        history.setdefault("val_iou", []).append(_nan_to_none(ious))
        history.setdefault("val_miou", []).append(float(np.nanmean(ious)))
        return "val_iou " + " ".join(f"{v:.3f}" for v in ious)


def _fit(model: keras.Model, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *, out: Path,
         record: dict[str, Any], options: TrainOptions, extra: Any = None) -> dict[str, Any]:
    """Fit, saving model.keras at each best validation loss and history.json after every epoch."""
    epochs, verbose = options.epochs, options.verbose
    history: dict[str, Any] = {"loss": [], "val_loss": [], "epoch_seconds": [], "best_epoch": None, "best_val_loss": None}

    # A bar over the epochs on a terminal; piped, the epoch lines below are the progress (no extra lines).
    bar = Progress(epochs, desc="train", unit="epoch", enabled=verbose > 0, every=None)

    class Checkpoint(keras.callbacks.Callback):
        # Keras' ModelCheckpoint cannot add our record to the archive; this saves through save_model.
        best_weights = None

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            history["loss"].append(float(logs["loss"]))
            history["val_loss"].append(float(logs["val_loss"]))
            note = extra(self.model, history) if extra else ""
            seconds = time.perf_counter() - self.started
            history["epoch_seconds"].append(round(seconds, 2))
            best = history["best_val_loss"]
            if best is None or logs["val_loss"] < best:
                history["best_epoch"], history["best_val_loss"] = epoch + 1, float(logs["val_loss"])
                Checkpoint.best_weights = self.model.get_weights()
                save_model(self.model, out / "model.keras", record)
                note += "  best: saved model.keras"
            if verbose > 0:
                # One line per epoch, in one place (Keras' own lines are off): what a log file keeps.
                line = (f"epoch {epoch + 1}/{epochs}  loss {logs['loss']:.4f}  val_loss {logs['val_loss']:.4f}"
                        f"  {note.strip()}  ({seconds:.1f} s)").replace("   ", "  ")
                log.info("%s", line)
            bar.update(1)
            _write_history(out, history)

    try:
        model.fit(*train, validation_data=val, epochs=epochs, batch_size=options.batch_size, shuffle=True,
                  verbose=0, callbacks=[Checkpoint()])
    finally:
        bar.close()
    model.set_weights(Checkpoint.best_weights)  # pictures and sub-models show the saved (best) epoch
    return history


def _prepare(out, seed: int) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise EdgesegError(f"Cannot write to --out `{out}`: {error.strerror}. Pick a writable folder.") from None
    keras.utils.set_random_seed(seed)
    return out


def _write_history(out: Path, history: dict[str, Any]) -> dict[str, Any]:
    write_json_atomic(out / "history.json", history)
    return history


def _to_rgb8(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    # Undo normalize() for the pictures: p = (x * std + mean) / scale, then to RGB order.
    pixels = (x * np.asarray(spec.std, np.float32) + np.asarray(spec.mean, np.float32)) / spec.scale
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    if spec.color == "BGR":
        pixels = pixels[..., ::-1]
    elif spec.color == "GRAY":
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 5) for v in values]
