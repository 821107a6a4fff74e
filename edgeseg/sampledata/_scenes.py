"""Synthetic segmentation scenes: shapes on textured backgrounds, with exact class masks.

Deterministic (same seed, same pixels, under any OpenCV and NumPy the pins allow) and offline, so
tests, calibration, benchmarks and the demo have images and ground truth without shipping data.
Everything a pixel depends on is computed here with NumPy, in integers or float64 (OpenCV's cubic
resize, HSV conversion and polygon filling each changed between 4.9 and 5.x); OpenCV only writes
the files (PNG is lossless; the video is MJPG, lossy, and compared loosely).

Class 0 is background; classes 1..N-1 are shapes (circles, rectangles, triangles, ellipses),
each class with its own hue so a small network can learn them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.errors import EdgesegError

_KINDS = ("circle", "rectangle", "triangle", "ellipse")
# Video codecs by file suffix: widely decodable, and present in opencv-python-headless' own FFmpeg.
_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}


@dataclass(frozen=True)
class _Shape:
    kind: str
    class_id: int
    color: tuple[int, int, int]  # BGR
    x: float
    y: float
    radius: float
    angle: float
    vx: float
    vy: float
    spin: float


def class_color(class_id: int, classes: int) -> tuple[int, int, int]:
    """The BGR base colour shapes of ``class_id`` get (hues spread evenly over the classes).

    OpenCV's HSV -> BGR (hue in 0..179, saturation 200, value 220) computed in float64 here: OpenCV's own
    conversion rounds differently from one release to the next (4.9 and 5.1 disagree on 15 of 180 hues).
    """
    hue = int(180 * (class_id - 1) / max(1, classes - 1))
    sector_float = hue / 30.0
    sector = math.floor(sector_float)
    fraction, sector = sector_float - sector, sector % 6
    saturation, value = 200 / 255.0, 220 / 255.0
    p, q = value * (1 - saturation), value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    red, green, blue = ((value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q))[sector]
    return tuple(int(round(channel * 255)) for channel in (blue, green, red))


def make_scene(
    rng_or_seed: np.random.Generator | int, *, size: tuple[int, int] = (224, 224), classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """One random scene: ``(image, mask)``, BGR uint8 (H, W, 3) and class ids uint8 (H, W).

    Example::

        image, mask = make_scene(7, size=(64, 96), classes=3)   # same seed -> same pixels
    """
    rng = _rng(rng_or_seed)
    height, width = _check_size(size)
    _check_classes(classes)
    shapes = _random_shapes(rng, height, width, classes, moving=False)
    background = _texture(rng, height, width)
    grain = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    return _render(background, shapes, grain)


def scene_frames(
    *, frames: int, size: tuple[int, int] = (224, 224), classes: int = 2, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A deterministic sequence of ``(image, mask)`` frames: the same shapes moving over one background.

    Example::

        for image, mask in scene_frames(frames=30, size=(120, 160), classes=3, seed=1): ...
    """
    rng = np.random.default_rng(seed)
    height, width = _check_size(size)
    _check_classes(classes)
    if not isinstance(frames, int) or frames <= 0:
        raise EdgesegError(f"`frames` must be a positive integer, got {frames!r}.")
    shapes = _random_shapes(rng, height, width, classes, moving=True)
    background = _texture(rng, height, width)
    grain = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    for index in range(frames):
        yield _render(background, [_advance(s, index, height, width) for s in shapes], grain)


def masks_dir_for(video_path: str | os.PathLike) -> Path:
    """Where :func:`make_scene_video` writes the ground truth of ``video_path``: ``<stem>_masks/`` beside it."""
    video_path = Path(video_path)
    return video_path.with_name(f"{video_path.stem}_masks")


def make_scene_video(
    path: str | os.PathLike,
    *,
    frames: int = 60,
    size: tuple[int, int] = (224, 224),
    classes: int = 2,
    fps: float = 15.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic scene video (``.mp4``: mp4v, ``.avi``: MJPG) and its per-frame masks.

    The masks go to :func:`masks_dir_for` ``(path)`` as ``000000.png``, ``000001.png``, ... (class
    ids, uint8, the frame's size). Returns ``path``.

    Example::

        video = make_scene_video(tmp_path / "scene.mp4", frames=20, size=(96, 128), classes=3, fps=10, seed=2)
        first_mask = cv2.imread(str(masks_dir_for(video) / "000000.png"), cv2.IMREAD_UNCHANGED)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _FOURCC:
        raise EdgesegError(f"Scene video must end in .mp4 or .avi, got {str(path)!r}.")
    height, width = _check_size(size)
    masks_dir = masks_dir_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*_FOURCC[suffix]), float(fps), (width, height))
    if not writer.isOpened():
        raise EdgesegError(f"Cannot write video `{path}`: OpenCV has no {_FOURCC[suffix]} encoder here; try .avi.")
    try:
        for index, (image, mask) in enumerate(scene_frames(frames=frames, size=size, classes=classes, seed=seed)):
            writer.write(image)
            if not cv2.imwrite(str(masks_dir / f"{index:06d}.png"), mask):
                raise EdgesegError(f"Cannot write mask into `{masks_dir}`.")
    finally:
        writer.release()
    return path


def _random_shapes(rng: np.random.Generator, height: int, width: int, classes: int, *, moving: bool) -> list[_Shape]:
    shapes = []
    side = min(height, width)
    # Each shape class appears at least once when there is room; a few extra shapes add occlusion.
    class_ids = list(range(1, classes)) + [int(c) for c in rng.integers(1, classes, size=int(rng.integers(0, 3)))]
    if classes == 1:
        class_ids = []
    for class_id in class_ids:
        base = np.array(class_color(class_id, classes), np.int16)
        color = tuple(int(v) for v in np.clip(base + rng.integers(-25, 26, size=3), 0, 255))
        speed = side * 0.03 if moving else 0.0
        direction = rng.uniform(0, 2 * math.pi)
        shapes.append(
            _Shape(
                kind=_KINDS[int(rng.integers(len(_KINDS)))],
                class_id=class_id,
                color=color,
                x=float(rng.uniform(0.15, 0.85) * width),
                y=float(rng.uniform(0.15, 0.85) * height),
                radius=float(rng.uniform(0.08, 0.22) * side),
                angle=float(rng.uniform(0, 180)),
                vx=speed * math.cos(direction),
                vy=speed * math.sin(direction),
                spin=float(rng.uniform(-4, 4)) if moving else 0.0,
            )
        )
    return shapes


def _advance(shape: _Shape, steps: int, height: int, width: int) -> _Shape:
    # Bounce off the borders: fold the straight-line position back into [0, size).
    def fold(position: float, limit: int) -> float:
        period = 2 * limit
        p = position % period
        return p if p < limit else period - p

    return _Shape(
        shape.kind, shape.class_id, shape.color,
        fold(shape.x + shape.vx * steps, width), fold(shape.y + shape.vy * steps, height),
        shape.radius, shape.angle + shape.spin * steps, shape.vx, shape.vy, shape.spin,
    )


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Smooth low-frequency noise plus faint stripes: enough texture that "not flat" != "object". Float64 NumPy
    # only (OpenCV's cubic resize of float32 images changed between releases): the same pixels everywhere.
    coarse = rng.uniform(60, 150, size=(max(2, height // 24), max(2, width // 24), 3)).astype(np.float32)
    rows, cols = _cubic_matrix(coarse.shape[0], height), _cubic_matrix(coarse.shape[1], width)
    smooth = np.einsum("yi,ijc,xj->yxc", rows, coarse.astype(np.float64), cols)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    period, theta = rng.uniform(8, 24), rng.uniform(0, math.pi)
    stripes = 12 * np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    return np.clip(smooth + stripes[:, :, None], 0, 255).astype(np.uint8)


def _cubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` weights of bicubic upsampling as OpenCV's INTER_CUBIC places it: pixel centres,
    a = -0.75, edge pixels repeated."""
    position = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    left = np.floor(position).astype(np.int64)
    t, a = position - left, -0.75
    weights = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
               ((a + 2) * t - (a + 3)) * t * t + 1,
               ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1]
    weights.append(1 - weights[0] - weights[1] - weights[2])
    matrix = np.zeros((size_out, size_in))
    for k, weight in enumerate(weights):
        np.add.at(matrix, (np.arange(size_out), np.clip(left + k - 1, 0, size_in - 1)), weight)
    return matrix


def _render(background: np.ndarray, shapes: list[_Shape], grain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = background.copy()
    mask = np.zeros(background.shape[:2], np.uint8)
    for shape in shapes:
        for canvas, value in ((image, shape.color), (mask, shape.class_id)):
            _draw(canvas, shape, value)
    image = np.clip(image.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    return image, mask


def _draw(canvas: np.ndarray, shape: _Shape, value: tuple[int, int, int] | int) -> None:
    # The pixels a shape covers, decided per pixel by an exact rule (integers, or float64 far from any
    # boundary case): the mask is exactly the pixels the image's shape covers. OpenCV's fillPoly changed its
    # edge rule between 4.9 and 5.x, so it is not used.
    height, width = canvas.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy, r = int(round(shape.x)), int(round(shape.y)), shape.radius
    if shape.kind == "circle":
        radius = int(round(r))
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius * radius
    elif shape.kind == "ellipse":
        a, b = int(round(r)), int(round(r * 0.55))
        angle = math.radians(shape.angle)
        u = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
        v = (ys - cy) * math.cos(angle) - (xs - cx) * math.sin(angle)
        inside = u * u * (b * b) + v * v * (a * a) <= (a * b) ** 2
    else:
        corners = 4 if shape.kind == "rectangle" else 3
        angles = [math.radians(shape.angle) + 2 * math.pi * k / corners for k in range(corners)]
        points = [(int(round(shape.x + r * math.cos(t))), int(round(shape.y + r * math.sin(t)))) for t in angles]
        inside = np.ones((height, width), bool)
        for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):  # convex, corners in order: one side of each edge
            inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    canvas[inside] = value


def _rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise EdgesegError(f"`size` must be (height, width), got {size!r}.") from None
    if height < 8 or width < 8:
        raise EdgesegError(f"`size` must be at least 8x8, got {height}x{width}.")
    return height, width


def _check_classes(classes: int) -> None:
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= 255:
        raise EdgesegError(f"`classes` must be an integer in 1..255 (class 0 is background), got {classes!r}.")
