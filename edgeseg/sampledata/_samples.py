"""Sample inputs, made deterministically: a scene video, a scene folder with bad files, digits.

Everything comes from a seed, offline, with NumPy (the scenes from ``edgeseg.sampledata._scenes``,
the digits from ``edgeseg.sampledata._digits``; OpenCV only writes the files), so ``edgeseg samples``
rebuilds the repository's ``samples/`` folder and ``edgeseg demo`` builds the same kind of inputs in
its own folder. Same seed, same pixels, same masks, same digits, under any OpenCV and NumPy the pins
allow (checked under OpenCV 4.9, 4.14 and 5.1 with NumPy 1.26, 2.2 and 2.4). The files' bytes also
depend on their encoders: PNG and .npz on zlib, the MJPG video on OpenCV's JPEG encoder.

Layout of a sample folder (names are fixed; the demo and the tests rely on them)::

    scenes.avi  scenes_masks/000000.png ...    a short video of moving shapes + per-frame class ids
    folder/     scene_000.png ... + empty.png, truncated.jpg, notes.png (three bad files)
    folder_masks/scene_000.png ...              the good images' class ids
    scenes/images/*.png  scenes/masks/*.png     labelled still scenes (training, calibration)
    digits.npz                                  MNIST-like 28x28 digits, Keras' mnist.npz layout
"""

from __future__ import annotations

import base64
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import atomic_path

log = logging.getLogger("edgeseg.samples")

BAD_FILES = ("empty.png", "truncated.jpg", "notes.png")
# A 16x16 grey gradient as a JPEG (quality 75, encoded once by OpenCV 5.1's libjpeg-turbo), 356 bytes.
_GRADIENT_JPEG = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAx"
    "NDQ0Hyc5PTgyPC4zNDL/wAALCAAQABABAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUF"
    "BAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVW"
    "V1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi"
    "4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/APN/B3/LOvoDwd/yzr5/8Hf8s6+gPB3/ACzr/9k="
)


@dataclass(frozen=True)
class SampleSpec:
    """How much sample data to make, and from which seed.

    ``size`` is the side of every scene (a multiple of 32, so FCN-8 takes it without resizing).
    """

    size: int = 96
    classes: int = 3
    video_frames: int = 60
    fps: float = 15.0
    folder_images: int = 8
    scenes: int = 32
    digits_train: int = 2000
    digits_test: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("size", "classes", "video_frames", "folder_images", "scenes", "digits_train", "digits_test"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise EdgesegError(f"Sample setting `{key}` must be a positive integer, got {value!r}.")
        if self.classes < 2:
            raise EdgesegError(f"Samples need at least 2 classes (background and a shape), got {self.classes}.")


# The demo's --quick sizes: enough to exercise every step, small enough to train in seconds.
QUICK_SPEC = SampleSpec(size=64, video_frames=12, folder_images=4, scenes=16, digits_train=256, digits_test=64)


@dataclass(frozen=True)
class SampleData:
    """Where the made samples are."""

    root: Path
    video: Path
    video_masks: Path
    folder: Path
    folder_masks: Path
    scenes: Path
    digits: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> SampleData:
        root = Path(root)
        return cls(
            root=root,
            video=root / "scenes.avi",
            video_masks=root / "scenes_masks",
            folder=root / "folder",
            folder_masks=root / "folder_masks",
            scenes=root / "scenes",
            digits=root / "digits.npz",
        )


def make_sample_data(root: str | os.PathLike, *, spec: SampleSpec = SampleSpec()) -> SampleData:
    """Make every sample input under ``root`` (created if needed); returns where each one is.

    Example::

        data = make_sample_data("samples", spec=SampleSpec(size=64, video_frames=20))
        # data.video, data.folder (with bad files), data.scenes/images + masks, data.digits
    """
    from edgeseg.sampledata._scenes import make_scene_video

    data = SampleData.at(root)
    data.root.mkdir(parents=True, exist_ok=True)
    make_scene_video(data.video, frames=spec.video_frames, size=(spec.size, spec.size), classes=spec.classes,
                     fps=spec.fps, seed=spec.seed)
    make_scene_set(data.folder, data.folder_masks, count=spec.folder_images, size=spec.size,
                   classes=spec.classes, seed=spec.seed + 1)
    add_bad_files(data.folder)
    make_scene_set(data.scenes / "images", data.scenes / "masks", count=spec.scenes, size=spec.size,
                   classes=spec.classes, seed=spec.seed + 2)
    write_digits(data.digits, train=spec.digits_train, test=spec.digits_test, seed=spec.seed + 3)
    log.info("samples: wrote %s (video, folder with %d bad files, %d scenes, digits)",
             data.root, len(BAD_FILES), spec.scenes)
    return data


def make_scene_set(images: str | os.PathLike, masks: str | os.PathLike, *, count: int, size: int,
                   classes: int, seed: int) -> list[Path]:
    """``count`` still scenes as ``images/scene_NNN.png`` with class ids in ``masks/scene_NNN.png``.

    Each scene has its own seed (``seed * 100003 + i``), so adding scenes never changes earlier ones.

    Example::

        make_scene_set("data/images", "data/masks", count=100, size=96, classes=3, seed=0)
    """
    from edgeseg.sampledata._scenes import make_scene

    images, masks = Path(images), Path(masks)
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        image, mask = make_scene(seed * 100003 + i, size=(size, size), classes=classes)
        name = f"scene_{i:03d}.png"
        _imwrite(images / name, image)
        _imwrite(masks / name, mask)
        written.append(images / name)
    return written


def add_bad_files(folder: str | os.PathLike) -> list[Path]:
    """Add the three bad files a robust reader must survive: empty, truncated JPEG, text named .png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    empty, truncated, notes = (folder / name for name in BAD_FILES)
    empty.write_bytes(b"")
    # A real JPEG cut in half: the header parses, the picture does not. Its bytes are stored, not encoded here:
    # another libjpeg would give other bytes.
    jpeg = base64.b64decode(_GRADIENT_JPEG)
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    notes.write_text("This is not an image: edgeseg must skip it, log one line and go on.\n", encoding="utf-8")
    return [empty, truncated, notes]


def make_digits(count: int, *, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-like digits: ``(images, labels)``, uint8 ``(count, size, size)`` white on black, uint8 labels.

    Each digit is drawn in one of two stroke styles with a random pen width, height, slant, rotation
    (+-15 degrees) and shift (+-2 px), centred by its centre of mass and softened, like pen strokes in
    MNIST. Integer arithmetic only (``edgeseg.sampledata._digits``): the same bytes under any NumPy and
    OpenCV.

    Example::

        images, labels = make_digits(1000, seed=0)
    """
    from edgeseg.sampledata._digits import draw_digits

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    return draw_digits(labels, rng, size=size), labels


def write_digits(path: str | os.PathLike, *, train: int, test: int, seed: int = 0) -> Path:
    """Write ``train`` + ``test`` generated digits to an ``.npz`` in Keras' ``mnist.npz`` layout.

    Keys ``x_train``, ``y_train``, ``x_test``, ``y_test``, so ``--data`` takes it exactly like the real
    ``mnist.npz``. The archive's member timestamps are fixed, so the file is byte-for-byte reproducible.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x_train, y_train = make_digits(train, seed=seed)
    x_test, y_test = make_digits(test, seed=seed + 1)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    # np.savez stamps members with the current time; write the zip ourselves to stay reproducible.
    with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return path


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise EdgesegError(f"Cannot write `{path}`: check that the folder is writable.")
