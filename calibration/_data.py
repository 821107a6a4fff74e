"""Calibration frames: read once, fitted to the model's input, spilled to a memory-mapped file.

Every later pass (calibration, FP32 vs INT8 evaluation, per-layer error, accuracy control)
re-reads the frames in chunks from that file, so memory stays bounded by the chunk, not by
``--samples``, and every pass sees exactly the pixels inference would see: the frames go
through the runtime's own :func:`fit` and :func:`normalize` (the contract's preprocessing).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime import Geometry, VideoInfo, classify_source, fit, normalize, open_source
from edgeseg.runtime.contract import Contract, InputSpec
from edgeseg.runtime.datasets import read_idx, read_mask
from edgeseg.runtime.errors import BadInputError, EdgesegError

log = logging.getLogger("edgeseg.calibration")

IGNORE = 255  # mask value for pixels outside the frame (letterbox bars) or without a label

# Natural images (EM slices, street scenes, MNIST strokes) have neighbouring pixels that are
# strongly correlated: lag-1 autocorrelation is typically 0.8-0.99 (0.91 on the ISBI membrane
# slices, 0.81 on MNIST test digits). Uniform or Gaussian noise sits at 0 +- 0.01. Below this median the frames are noise.
NOISE_AUTOCORRELATION = 0.3
# A frame whose pixels vary by less than one grey level carries no range information.
FLAT_STD = 1.0


@dataclass(frozen=True)
class FrameStats:
    """What reading the calibration frames found, for the report and the sanity checks."""

    source: str
    kind: str
    read: int
    skipped: int
    skipped_reasons: tuple[str, ...] = ()
    masks: int = 0
    thresholded_masks: int = 0  # binary 0/255 masks with in-between (JPEG edge) values, thresholded at 128
    median_autocorrelation: float = 1.0
    flat_frames: int = 0
    distinct_frames: int = 0


@dataclass
class CalibrationSet:
    """Fitted uint8 frames (N, H, W, C) in the model's colour order, optional masks (N, H, W).

    Both are ``np.memmap`` files in a temporary folder that :meth:`close` removes. ``index`` (set by
    :meth:`split`) makes the set a view of some of those frames: only the chunk in use is read.
    """

    spec: InputSpec
    pixels: np.ndarray
    masks: np.ndarray | None
    names: list[str]
    stats: FrameStats
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def _rows(self, start: int, stop: int) -> slice | np.ndarray:
        return slice(start, stop) if self.index is None else self.index[start:stop]

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` as the model's float32 input batch."""
        out = normalize(np.asarray(self.pixels[self._rows(start, stop)]), self.spec)
        if self.spec.layout == "NCHW":
            out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
        return out

    def mask_batch(self, start: int, stop: int) -> np.ndarray | None:
        """Masks ``start:stop`` (class ids, IGNORE outside the frame), or None without masks."""
        return None if self.masks is None else np.asarray(self.masks[self._rows(start, stop)])

    def split(self, share: float) -> tuple[CalibrationSet, CalibrationSet]:
        """``(kept, held_out)`` views: ``share`` of the frames, spread evenly over the set, held out.

        Calibration takes its ranges from ``kept`` and reports accuracy on ``held_out``, so the figures
        are not measured on the frames the ranges were fitted to. Both views close with this set.

        Example::

            kept, held = frames.split(0.25)   # 128 frames -> 96 kept, 32 held out
        """
        if not 0.0 < share < 1.0:
            raise EdgesegError(f"--holdout must be a share between 0 and 1 (exclusive), got {share}.")
        n = len(self)
        if n < 2:
            raise EdgesegError(f"Holding out frames needs at least 2 of them, got {n}: pass more with --data, "
                               "or --holdout 0 to evaluate on the calibration frames.")
        count = min(n - 1, max(1, round(n * share)))
        rows = np.arange(n) if self.index is None else self.index
        held = np.unique(np.round(np.linspace(0, n - 1, count + 2)[1:-1]).astype(np.int64))
        kept = np.setdiff1d(np.arange(n), held)
        return self._view(rows[kept], kept), self._view(rows[held], held)

    def _view(self, rows: np.ndarray, positions: np.ndarray) -> CalibrationSet:
        return CalibrationSet(spec=self.spec, pixels=self.pixels, masks=self.masks,
                              names=[self.names[i] for i in positions], stats=self.stats, index=rows)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, batch)`` for consecutive chunks of at most ``size`` frames."""
        for start in range(0, len(self), size):
            yield start, self.batch(start, min(len(self), start + size))

    def close(self) -> None:
        self.pixels = self.masks = None  # drop the memmaps before removing their files
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> CalibrationSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_calibration_set(data: str | Path, contract: Contract, *, samples: int = 128, every: int | None = None,
                         masks: str | Path | None = None) -> CalibrationSet:
    """Read up to ``samples`` calibration frames (and their masks) for a model with ``contract``.

    ``data`` is an image folder, a glob, a ``.txt`` list, a video (frames sampled evenly over
    its length, or every ``every``-th), an ``.npy``/``.npz`` array of images (N, H, W[, C]; the
    course's arrays), an MNIST IDX image file (``...-ubyte.gz``), or a folder holding ``images/``
    and ``masks/``. Masks pair with frames by file stem and are read by
    :func:`edgeseg.runtime.datasets.read_mask`, the rules training uses (0/255 and JPEG-edge
    masks of a two-class model thresholded at 128, colour masks through the contract's palette).

    Example::

        with load_calibration_set("clips/street.mp4", contract, samples=64) as frames:
            for start, batch in frames.chunks(8):
                ...
    """
    request = _request(data, masks=masks, samples=samples, every=every)
    kind, items = _open_items(request)
    mask_paths = _mask_paths(request, contract)
    spill = _Spill.create(samples=samples, spec=contract.input, with_masks=mask_paths is not None)
    try:
        tally = _read_frames(items, contract=contract, mask_paths=mask_paths, spill=spill, samples=samples)
        _check_read(tally, request=request, mask_paths=mask_paths)
        stats = tally.stats(source=str(request.data), kind=kind, with_masks=mask_paths is not None)
        _check_not_degenerate(stats)
    except BaseException:
        spill.discard()
        raise
    return spill.calibration_set(names=tally.names, stats=stats)


@dataclass(frozen=True)
class _Request:
    """Where the frames and masks come from, and how many to take (validated)."""

    data: Path
    masks: str | Path | None  # as given (or ``data/masks``): error messages quote it verbatim
    samples: int
    every: int | None


def _request(data: str | Path, *, masks: str | Path | None, samples: int, every: int | None) -> _Request:
    """Check the counts; a folder holding ``images/`` and ``masks/`` (and no --masks) means both."""
    if samples < 1:
        raise EdgesegError(f"--samples must be at least 1, got {samples}.")
    if every is not None and every < 1:
        raise EdgesegError(f"--every must be at least 1, got {every}.")
    data = Path(data)
    if masks is None and data.is_dir() and (data / "images").is_dir() and (data / "masks").is_dir():
        data, masks = data / "images", data / "masks"
    return _Request(data=data, masks=masks, samples=samples, every=every)


def _open_items(request: _Request):
    """``(kind, items)``: the source's kind and its ``(name, image, error)`` triples."""
    data = request.data
    if data.is_file() and (data.suffix.lower() in (".npy", ".npz") or data.name.endswith(("-ubyte.gz", "-ubyte"))):
        return "array", _array_images(data, samples=request.samples, every=request.every)
    return _source_images(data, samples=request.samples, every=request.every)


def _mask_paths(request: _Request, contract: Contract) -> dict[str, Path] | None:
    """The masks by stem, or None without masks; only a segmentation model can be scored against masks."""
    if request.masks is None:
        return None
    if contract.kind != "segmentation":
        raise EdgesegError(f"--masks: model kind `{contract.kind}` has no classes to score against masks; "
                           "drop --masks (its report compares reconstructions instead).")
    return _mask_index(Path(request.masks))


class _Spill:
    """The memory-mapped files the fitted frames (and masks) are written to, in a temporary folder."""

    def __init__(self, tmp: tempfile.TemporaryDirectory, pixels: np.ndarray, masks: np.ndarray | None,
                 spec: InputSpec) -> None:
        self.tmp, self.pixels, self.masks, self.spec = tmp, pixels, masks, spec

    @classmethod
    def create(cls, *, samples: int, spec: InputSpec, with_masks: bool) -> _Spill:
        tmp = tempfile.TemporaryDirectory(prefix="edgeseg-calib-")
        shape = (samples, spec.height, spec.width, spec.channels)
        pixels = np.lib.format.open_memmap(Path(tmp.name) / "pixels.npy", mode="w+", dtype=np.uint8, shape=shape)
        masks = None
        if with_masks:
            masks = np.lib.format.open_memmap(Path(tmp.name) / "masks.npy", mode="w+", dtype=np.uint8,
                                              shape=shape[:3])
        return cls(tmp, pixels, masks, spec)

    def put(self, index: int, item: _Fitted) -> None:
        self.pixels[index] = item.pixels
        if self.masks is not None:
            self.masks[index] = item.mask

    def discard(self) -> None:
        self.pixels = self.masks = None  # drop the memmaps before removing their files
        self.tmp.cleanup()

    def calibration_set(self, *, names: list[str], stats: FrameStats) -> CalibrationSet:
        n = len(names)
        return CalibrationSet(spec=self.spec, pixels=self.pixels[:n],
                              masks=None if self.masks is None else self.masks[:n],
                              names=names, stats=stats, _tmp=self.tmp)


@dataclass(frozen=True)
class _Fitted:
    """One frame fitted to the model's input, its mask placed alike (None without masks)."""

    pixels: np.ndarray
    mask: np.ndarray | None = None
    thresholded: int = 0  # 1 when the mask was a 0/255 mask with JPEG-edge values, thresholded


@dataclass
class _Tally:
    """What reading has kept and refused so far, and the numbers the sanity checks need."""

    names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)
    autocorr: list[float] = field(default_factory=list)
    fingerprints: set[bytes] = field(default_factory=set)
    flat: int = 0
    thresholded: int = 0

    def refuse(self, name: str, error: str) -> None:
        self.skipped.append(f"{name}: {error}")
        log.warning("skipping calibration frame %s: %s", name, error)

    def keep(self, name: str, item: _Fitted) -> None:
        self.names.append(name)
        self.thresholded += item.thresholded
        gray = item.pixels.mean(axis=2, dtype=np.float32)
        self.flat += float(gray.std()) < FLAT_STD
        self.autocorr.append(_neighbour_correlation(gray))
        self.fingerprints.add(cv2.resize(item.pixels, (8, 8), interpolation=cv2.INTER_AREA).tobytes())

    def stats(self, *, source: str, kind: str, with_masks: bool) -> FrameStats:
        return FrameStats(
            source=source, kind=kind, read=len(self.names), skipped=len(self.skipped),
            skipped_reasons=tuple(self.skipped[:20]), masks=len(self.names) if with_masks else 0,
            thresholded_masks=self.thresholded, median_autocorrelation=float(np.median(self.autocorr)),
            flat_frames=int(self.flat), distinct_frames=len(self.fingerprints),
        )


def _read_frames(items, *, contract: Contract, mask_paths: dict[str, Path] | None, spill: _Spill,
                 samples: int) -> _Tally:
    """Fit up to ``samples`` frames into ``spill``; a bad frame or mask costs only itself."""
    tally = _Tally()
    for name, image, error in items:
        if len(tally.names) >= samples:
            break
        item = None
        if error is None:
            try:
                item = _fit_item(image, name=name, contract=contract, mask_paths=mask_paths)
            except BadInputError as bad:
                error = str(bad)
        if error is not None:
            tally.refuse(name, error)
        elif item is None:
            tally.unpaired.append(name)
        else:
            spill.put(len(tally.names), item)
            tally.keep(name, item)
    return tally


def _fit_item(image: np.ndarray, *, name: str, contract: Contract,
              mask_paths: dict[str, Path] | None) -> _Fitted | None:
    """The frame fitted (and its mask placed alike); None when masks are given and none pairs with it.

    The frame is fitted first: a frame that cannot be used is refused as such, paired or not.
    """
    fitted, geometry = fit(image, contract.input)
    if mask_paths is None:
        return _Fitted(pixels=fitted)
    mask_path = mask_paths.get(Path(name).name)
    if mask_path is None:
        return None
    mask, thresholded = _fit_mask(mask_path, geometry, contract)
    return _Fitted(pixels=fitted, mask=mask, thresholded=thresholded)


def _check_read(tally: _Tally, *, request: _Request, mask_paths: dict[str, Path] | None) -> None:
    """Every image has its mask, and at least one frame was kept."""
    data = request.data
    if mask_paths is not None and tally.unpaired:
        raise EdgesegError(
            f"Masks `{request.masks}` do not pair with images `{data}`: {len(tally.unpaired)} image(s) have no mask "
            f"with the same stem (first: {tally.unpaired[0]!r}; masks there look like {sorted(mask_paths)[:3]}). "
            "Name each mask after its image (cells_01.png -> masks/cells_01.png)."
        )
    if not tally.names and tally.skipped:
        raise EdgesegError(f"No usable calibration frames in `{data}`: all {len(tally.skipped)} read were refused "
                           f"(first: {tally.skipped[0]}). Fix those files or point --data/--masks elsewhere.")
    if not tally.names:
        raise EdgesegError(f"No calibration frames in `{data}`: expected images, a video or an .npy array.")


def _check_not_degenerate(stats: FrameStats) -> None:
    if stats.flat_frames == stats.read:
        raise EdgesegError(
            f"Calibration data `{stats.source}` is constant: all {stats.read} frame(s) vary by less than "
            f"{FLAT_STD:g} grey level. Calibration needs frames like those the model will see; pass real images or video."
        )
    if stats.median_autocorrelation < NOISE_AUTOCORRELATION:
        raise EdgesegError(
            f"Calibration data `{stats.source}` looks like random noise: neighbouring pixels correlate at "
            f"{stats.median_autocorrelation:.2f} (median over {stats.read} frames; real images give > 0.8, noise ~0). "
            "Pass frames like those the model will see."
        )


def _neighbour_correlation(gray: np.ndarray) -> float:
    left, right = gray[:, :-1].ravel(), gray[:, 1:].ravel()
    if left.size < 2 or left.std() == 0 or right.std() == 0:
        return 1.0  # flat frames are caught by the flat-frame check, not as noise
    return float(np.corrcoef(left, right)[0, 1])


def _source_images(data: Path, *, samples: int, every: int | None):
    kind, paths = classify_source(data)
    if kind == "video":
        if every is None:
            # Evenly over the whole video: calibration should see every scene, not its first seconds.
            count = VideoInfo.from_video_path(data).frame_count
            every = max(1, count // samples) if count else 1
        frames = open_source(data, stride=every, max_frames=samples * 2)
    else:
        if not paths:
            raise EdgesegError(f"No calibration frames in `{data}`: the {kind} holds no image files.")
        if every is None:
            every = max(1, len(paths) // samples)
        frames = open_source(data, stride=every)
    return kind, ((f.name, f.image, f.error) for f in frames)


def _load_array(path: Path) -> np.ndarray:
    """An .npy (memory-mapped), an .npz (its images array) or an MNIST IDX image file (the datasets reader)."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = [k for k in ("x", "images", "x_test", "x_train") if k in archive.files] or archive.files
                images = [k for k in keys if archive[k].ndim in (3, 4)]
                if not images:
                    raise EdgesegError(f"`{path}` holds no image array (N, H, W[, C]); it has {archive.files}.")
                return archive[images[0]]
        return read_idx(path)
    except (OSError, ValueError, EOFError) as error:
        raise EdgesegError(f"Cannot read `{path}` as an image array: {error}.") from None


def _array_images(path: Path, *, samples: int, every: int | None):
    array = _load_array(path)
    if array.ndim == 4 and array.shape[-1] not in (1, 3, 4) and array.shape[1] in (1, 3):
        raise EdgesegError(f"`{path}`: expected images as (N, H, W[, C]) channels-last, got shape {array.shape}.")
    if array.ndim not in (3, 4) or len(array) == 0:
        raise EdgesegError(f"`{path}`: expected images as (N, H, W[, C]), got shape {array.shape}.")
    step = every or max(1, len(array) // samples)
    # The course's arrays hold floats in 0..1 (already divided by 255) or uint8 0..255.
    floats = array.dtype.kind == "f"
    peak = float(np.max(array[: min(len(array), 64)])) if floats else 255.0
    gain = 255.0 if floats and peak <= 1.0 + 1e-6 else 1.0
    is_rgb = array.ndim == 4 and array.shape[-1] == 3

    def items():
        for i in range(0, len(array), step):
            image = np.asarray(array[i], dtype=np.float32) * gain if floats else np.asarray(array[i])
            image = np.clip(image, 0, 255).astype(np.uint8) if floats else image
            if is_rgb:  # numpy arrays are RGB by convention; the runtime's frames are BGR as OpenCV reads
                image = image[..., ::-1]
            yield f"{path.stem}_{i:06d}", np.ascontiguousarray(image), None

    return items()


def _mask_index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise EdgesegError(f"--masks `{folder}`: not a folder. Expected a folder of class-id PNGs named like the images.")
    _, paths = classify_source(folder)
    if not paths:
        raise EdgesegError(f"--masks `{folder}`: the folder holds no mask images.")
    return {p.stem: p for p in paths}


def _fit_mask(path: Path, geometry: Geometry, contract: Contract) -> tuple[np.ndarray, int]:
    """The mask at ``path`` read by the datasets rules, placed like its frame; 1 when it was thresholded."""
    mask, thresholded = read_mask(path, contract.num_classes, contract.output.palette or None)
    if mask.shape != (geometry.frame_height, geometry.frame_width):
        raise BadInputError(f"mask {path.name} is {mask.shape[1]}x{mask.shape[0]}, its image "
                            f"{geometry.frame_width}x{geometry.frame_height}")
    spec = contract.input
    placed = cv2.resize(mask, (geometry.width, geometry.height), interpolation=cv2.INTER_NEAREST)
    canvas = np.full((spec.height, spec.width), IGNORE, np.uint8)
    canvas[geometry.top:geometry.top + geometry.height, geometry.left:geometry.left + geometry.width] = placed
    return canvas, thresholded
