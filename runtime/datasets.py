"""Datasets, read once for everyone: MNIST (IDX .gz folder, .npz) and segmentation sets with masks.

Training (``edgeseg.export``) and calibration (``edgeseg.calibration``) both read their data here,
so a mask folder that one accepts the other accepts too, by the same rules (:func:`read_mask`).

Segmentation sources: the course's .npy pair (images N x H x W x 3, one-hot labels N x H x W x C),
folders ``images/`` + ``masks/`` paired by file stem, or generated scenes. Every image goes through
the runtime's ``fit`` + ``normalize`` with the model's ``InputSpec``, so training and inference
preprocess identically. Bad items (unreadable, size mismatch, unpaired, mask values outside the
class list) are skipped, counted and logged in one line each; an empty result stops the run.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime._frames import IMAGE_SUFFIXES, read_image
from edgeseg.runtime._preprocess import fit, normalize
from edgeseg.runtime.contract import InputSpec, default_palette
from edgeseg.runtime.errors import BadInputError, EdgesegError

log = logging.getLogger(__name__)

MNIST_SPEC = InputSpec(height=28, width=28, channels=1, color="GRAY", scale=1.0 / 255.0, mean=(0.0,), std=(1.0,))


@dataclass(frozen=True)
class Digits:
    """MNIST digits as stored: uint8 images (N, 28, 28), labels (N,); ``test`` marks the test split."""

    images: np.ndarray
    labels: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class SegmentationSet:
    """Preprocessed segmentation data: ``x`` float32 (N, H, W, C) by the spec, ``y`` class ids (N, H, W)."""

    x: np.ndarray
    y: np.ndarray
    names: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    notices: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------------------- MNIST
def load_mnist(source: str | os.PathLike | list[tuple[np.ndarray, np.ndarray, bool]], *,
               digits: tuple[int, ...] | None = None) -> Digits:
    """Load MNIST from a folder of IDX files (``*-images-idx3-ubyte[.gz]`` + labels) or an ``.npz``
    with Keras' keys (``x_train``, ``y_train``, ``x_test``, ``y_test``); or from ``(images, labels,
    is_test)`` parts already in memory (what Keras' own loader gives, in ``edgeseg.export``).

    Example::

        digits = load_mnist("data/mnist", digits=(1, 5, 6))
    """
    if isinstance(source, list):
        parts = source
    else:
        path = Path(source)
        if path.is_dir():
            parts = _idx_parts(path)
        elif path.suffix == ".npz" and path.is_file():
            parts = _npz_parts(path)
        else:
            raise EdgesegError(
                f"MNIST data `{path}` not found or not supported: expected a folder of IDX files "
                "(train-/t10k-images-idx3-ubyte.gz + labels), an .npz with x_train/y_train/x_test/y_test, or `keras`."
            )
    images = np.concatenate([p[0] for p in parts]).astype(np.uint8)
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64).reshape(-1)
    test = np.concatenate([np.full(len(p[1]), p[2]) for p in parts])
    if digits:
        keep = np.isin(labels, digits)
        if not keep.any():
            raise EdgesegError(f"No digits {list(digits)} in `{source}` (it holds {sorted(set(labels.tolist()))}).")
        images, labels, test = images[keep], labels[keep], test[keep]
    return Digits(images, labels, test)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (gzip or not) as a uint8 array; a broken file raises EdgesegError naming it."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as error:
        raise EdgesegError(f"Cannot read IDX file `{path}`: {error}.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise EdgesegError(f"`{path}` is not an unsigned-byte IDX file (bad magic number {raw[:4].hex()}).")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise EdgesegError(f"`{path}` is truncated: its header is incomplete.")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    count = int(np.prod(shape))
    body = raw[4 + 4 * ndim :]
    if len(body) != count:
        raise EdgesegError(f"`{path}` is truncated or padded: header says {shape} = {count} bytes, body has {len(body)}.")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _idx_parts(folder: Path) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    parts = []
    for prefix, is_test in (("train", False), ("t10k", True)):
        images = _first(folder, f"{prefix}-images-idx3-ubyte")
        labels = _first(folder, f"{prefix}-labels-idx1-ubyte")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            raise EdgesegError(f"`{folder}` has only one of {prefix}-images / {prefix}-labels IDX files; need both.")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise EdgesegError(f"`{images.name}` {x.shape} and `{labels.name}` {y.shape} do not pair up.")
        parts.append((x, y, is_test))
    if not parts:
        raise EdgesegError(f"No MNIST IDX files in `{folder}`: expected t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (or train-*).")
    return parts


def _first(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _npz_parts(path: Path) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    try:
        archive = np.load(path)
        keys = set(archive.files)
    except (OSError, ValueError) as error:
        raise EdgesegError(f"Cannot read `{path}` as .npz: {error}.") from None
    parts = []
    for split, is_test in (("train", False), ("test", True)):
        if f"x_{split}" in keys and f"y_{split}" in keys:
            x, y = archive[f"x_{split}"], archive[f"y_{split}"]
            if x.ndim == 4 and x.shape[-1] == 1:
                x = x[..., 0]
            if x.ndim != 3 or len(x) != len(y):
                raise EdgesegError(f"`{path}`: x_{split} {x.shape} and y_{split} {y.shape} do not pair up.")
            parts.append((x, y, is_test))
    if not parts:
        raise EdgesegError(f"`{path}` lacks MNIST keys: expected x_train/y_train and/or x_test/y_test, found {sorted(keys)}.")
    return parts


def mnist_arrays(images: np.ndarray, spec: InputSpec = MNIST_SPEC) -> np.ndarray:
    """uint8 digits (N, H, W) -> float32 (N, h, w, 1) through the runtime's fit + normalize."""
    return normalize(np.stack([fit(image, spec)[0] for image in images]), spec)


# ---------------------------------------------------------------------------------- segmentation
def load_segmentation(
    source: str | os.PathLike | None,
    *,
    spec: InputSpec,
    classes: int = 2,
    palette: tuple[tuple[int, int, int], ...] | None = None,
) -> SegmentationSet:
    """Load a segmentation set preprocessed by ``spec``.

    ``source``: a folder with ``images/`` + ``masks/`` (paired by stem), a folder holding the
    course's two .npy files (images; one-hot labels or class ids, named *label*/*mask*/*y*), or
    ``IMAGES.npy,LABELS.npy``. Masks: class-id PNGs; for 2 classes 0/255 masks are thresholded at
    the midpoint (JPEG edges too); RGB masks map through ``palette`` (default: the contract's).

    Example::

        data = load_segmentation("data/membrane", spec=InputSpec(224, 224, 3), classes=2)
    """
    layout = segmentation_layout(source)
    if layout[0] == "folders":
        return _from_folders(layout[1], spec, classes, palette or default_palette(classes))
    return _from_npy(layout[1], layout[2], spec, classes)


def segmentation_layout(source: str | os.PathLike | None) -> tuple[str, Path, Path]:
    """How :func:`load_segmentation` will read ``source``, decided from names alone (nothing is loaded):
    ``("folders", images/ and masks/'s parent, same)`` or ``("npy", images.npy, labels.npy)``. A source it
    cannot read raises EdgesegError saying what was expected, so a command can refuse it before slow work.

    Example::

        segmentation_layout("samples/scenes")   # ("folders", Path("samples/scenes"), Path("samples/scenes"))
    """
    if source is None:
        raise EdgesegError("No segmentation data given: pass --data (a folder with images/ + masks/, or the course's "
                           ".npy pair). `edgeseg samples --no-models` writes a labelled set to samples/scenes.")
    text = str(source)
    if "," in text:
        first, second = (Path(p) for p in text.split(",", 1))
        return "npy", first, second
    path = Path(source)
    if not path.is_dir():
        raise EdgesegError(f"Segmentation data `{path}` not found: expected a folder with images/ and masks/, or the .npy pair.")
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "folders", path, path
    arrays = sorted(path.glob("*.npy"))
    if len(arrays) == 2:
        labels = [p for p in arrays if any(k in p.stem.lower() for k in ("label", "mask")) or p.stem.lower().startswith("y")]
        if len(labels) == 1:
            images = next(p for p in arrays if p != labels[0])
            return "npy", images, labels[0]
    raise EdgesegError(
        f"`{path}` holds neither images/ + masks/ folders nor the course's .npy pair "
        f"(found {[p.name for p in arrays]}); expected e.g. images.npy + labels.npy."
    )


def _from_npy(images_path: Path, labels_path: Path, spec: InputSpec, classes: int) -> SegmentationSet:
    try:
        images, labels = np.load(images_path), np.load(labels_path)
    except (OSError, ValueError) as error:
        raise EdgesegError(f"Cannot read the .npy pair `{images_path}`, `{labels_path}`: {error}.") from None
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise EdgesegError(f"`{images_path}` must be images (N, H, W, 3), got {images.shape}.")
    if labels.ndim == 4:  # one-hot, as the course stores them
        if labels.shape[-1] != classes:
            raise EdgesegError(f"`{labels_path}` is one-hot over {labels.shape[-1]} classes but --classes is {classes}.")
        labels = labels.argmax(-1)
    if labels.shape[:3] != images.shape[:3]:
        raise EdgesegError(f"`{images_path}` {images.shape} and `{labels_path}` {labels.shape} do not pair up.")
    if images.dtype != np.uint8:
        # The course keeps pixels as floats; 0..1 floats are scaled back to 0..255 first.
        images = images * 255.0 if images.max() <= 1.0 else images
        images = np.clip(images, 0, 255).astype(np.uint8)
    if labels.max() >= classes:
        raise EdgesegError(f"`{labels_path}` has class id {int(labels.max())} outside 0..{classes - 1}.")
    # The .npy images are RGB; fit() takes OpenCV's BGR.
    frames = [image[:, :, ::-1] if image.shape[-1] == 3 else image for image in images]
    return _finish(frames, list(labels.astype(np.uint8)), [f"{images_path.stem}[{i}]" for i in range(len(images))], spec, (), ())


def _from_folders(root: Path, spec: InputSpec, classes: int, palette) -> SegmentationSet:
    skipped, frames, truths, names = [], [], [], []
    thresholded = 0
    for pair in labelled_pairs(root / "images", root / "masks", classes=classes, palette=palette):
        if pair.error is not None:
            skipped.append(pair.error)
            continue
        thresholded += pair.thresholded
        frames.append(pair.image)
        truths.append(pair.mask)
        names.append(pair.name)
    notices = []
    if thresholded:
        notices.append(f"{thresholded} binary mask(s) had values between 0 and 255 (JPEG edges?): thresholded at 128")
        log.info(notices[-1])
    if not frames:
        raise EdgesegError(f"No usable image/mask pairs in `{root}` ({len(skipped)} skipped; see the lines above).")
    return _finish(frames, truths, names, spec, tuple(skipped), tuple(notices))


@dataclass(frozen=True)
class LabelledImage:
    """One image and its mask (class ids, same size) as stored, or the one-line reason the pair is unusable."""

    name: str
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    thresholded: int = 0  # 1 when a 0/255 mask had in-between (JPEG edge) values, thresholded at 128
    error: str | None = None


def labelled_pairs(images: str | os.PathLike, masks: str | os.PathLike, *, classes: int,
                   palette: tuple[tuple[int, int, int], ...] | None = None) -> Iterator[LabelledImage]:
    """Images and masks paired by file stem, at their own size, read by :func:`read_mask`'s rules.

    An unpaired file, an unreadable one or a mask of another size is yielded with ``error`` set (and
    logged in one line), so the caller counts it and goes on. Training and ``edgeseg eval`` read here.

    Example::

        for pair in labelled_pairs("data/images", "data/masks", classes=2):
            if pair.error is None:
                ...  # pair.image (BGR), pair.mask (class ids)
    """
    def by_stem(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise EdgesegError(f"`{folder}` is not a folder: expected image files named like their masks.")
        return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    image_files, mask_files = by_stem(Path(images)), by_stem(Path(masks))
    palette = palette or default_palette(classes)
    for stem in sorted(set(image_files) | set(mask_files)):
        try:
            if stem not in mask_files:
                raise BadInputError(f"{image_files[stem]}: unpaired image (no masks/{stem}.*)")
            if stem not in image_files:
                raise BadInputError(f"{mask_files[stem]}: unpaired mask (no images/{stem}.*)")
            image = _read(image_files[stem])
            mask, blurred = read_mask(mask_files[stem], classes, palette)
            if image.shape[:2] != mask.shape[:2]:
                raise BadInputError(f"{mask_files[stem]}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                    f"{image.shape[1]}x{image.shape[0]}")
        except BadInputError as error:
            log.warning("skipped %s", error)
            yield LabelledImage(name=stem, error=str(error))
            continue
        yield LabelledImage(name=stem, image=image, mask=mask, thresholded=blurred)


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except BadInputError as error:
        raise BadInputError(f"{path}: {error}") from None


def read_mask(path: str | os.PathLike, classes: int, palette: tuple[tuple[int, int, int], ...] | None = None
              ) -> tuple[np.ndarray, int]:
    """A mask file as class ids (H, W) uint8, and 1 when in-between binary values were thresholded.

    The rules, the same for training and calibration: class-id images as they are; for two classes,
    a 0/255 mask (and a JPEG's in-between edge values) thresholded at 128; a gray RGB image as its
    gray values; a colour image mapped through ``palette`` (default: the contract's default palette).
    A value or colour outside the classes raises BadInputError naming the file.

    Example::

        ids, thresholded = read_mask("masks/cell_01.jpg", classes=2)
    """
    path = Path(path)
    palette = palette or default_palette(classes)
    mask = _read(path)
    if mask.ndim == 3 and mask.shape[2] >= 3:
        bgr = mask[:, :, :3]
        if np.array_equal(bgr[:, :, 0], bgr[:, :, 1]) and np.array_equal(bgr[:, :, 1], bgr[:, :, 2]):
            mask = bgr[:, :, 0]
        else:
            ids = np.full(mask.shape[:2], 255, np.uint8)
            for class_id, (r, g, b) in enumerate(palette[:classes]):
                ids[np.all(bgr == (b, g, r), axis=-1)] = class_id
            if (ids == 255).any():
                odd = bgr[ids == 255][0][::-1].tolist()
                raise BadInputError(f"{path}: colour {odd} is not in the palette of {classes} classes")
            return ids, 0
    mask = mask.reshape(mask.shape[:2])
    if mask.dtype != np.uint8:
        mask = mask.astype(np.int64)
    values = np.unique(mask)
    if classes == 2 and values.max() > 1:
        # A binary mask saved as 0/255 (JPEG adds in-between edge values): threshold at the midpoint.
        return (mask >= 128).astype(np.uint8), int(not set(values.tolist()) <= {0, 255})
    if values.max() >= classes:
        raise BadInputError(f"{path}: mask values {values[values >= classes][:5].tolist()} outside the class ids 0..{classes - 1}")
    return mask.astype(np.uint8), 0


def _finish(frames, truths, names, spec: InputSpec, skipped, notices) -> SegmentationSet:
    x = normalize(np.stack([fit(frame, spec)[0] for frame in frames]), spec)
    size = (spec.width, spec.height)
    y = np.stack([
        mask if mask.shape[1::-1] == size else cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        for mask in truths
    ]).astype(np.uint8)
    return SegmentationSet(x, y, tuple(names), tuple(skipped), tuple(notices))


def split(count: int, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, validation) index arrays; at least one item in each when count >= 2."""
    if not 0.0 < fraction < 1.0:
        raise EdgesegError(f"--val-split must be between 0 and 1 (exclusive), got {fraction}.")
    if count < 2:
        raise EdgesegError(f"Need at least 2 samples to split into training and validation, got {count}.")
    order = np.random.default_rng(seed).permutation(count)
    n_val = min(count - 1, max(1, round(count * fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
