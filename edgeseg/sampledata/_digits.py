"""MNIST-like digits drawn with integer arithmetic only, so every NumPy and OpenCV gives the same bytes.

The digits used to be OpenCV's Hershey fonts (``cv2.putText`` with anti-aliasing), rotated with
``cv2.warpAffine`` and shrunk with ``cv2.resize``: OpenCV 5 replaced the Hershey renderer and 4.x
releases changed line drawing and resizing, so ``digits.npz`` came out different under each (every
digit differed under 5.1 and 4.14). Here a digit is a few strokes (polylines on a 10 x 16 grid, in
two styles), placed by one affine transform (the only floating-point step, rounded to 1/16 pixel),
and drawn at 4x: a pixel of the 112 x 112 canvas is ink when its centre lies within the pen's radius
of a stroke, decided exactly with integers. The canvas is centred on its centre of mass as MNIST's
digits are, shifted (keeping the outer 2 pixels dark), averaged down 4 x 4 and blurred with a
[1, 2, 1] kernel, all in integers.
"""

from __future__ import annotations

import math

import numpy as np

_SCALE = 4  # drawn at 4x, then averaged down: smooth grey edges like MNIST's
_FIX = 16  # stroke geometry in 1/16 of a canvas pixel
_GRID_W, _GRID_H = 10.0, 16.0  # the glyphs' design grid (y down)

Stroke = tuple[tuple[float, float], ...]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, step: float = 15.0) -> Stroke:
    # Angles in degrees, 0 = +x, 90 = +y (down); points rounded to 1/64 of the grid once, at import, so the
    # glyphs are the same numbers whatever libm computed the cosines.
    count = max(2, int(abs(end - start) / step) + 1)
    points = []
    for k in range(count):
        angle = math.radians(start + (end - start) * k / (count - 1))
        points.append((round((cx + rx * math.cos(angle)) * 64) / 64, round((cy + ry * math.sin(angle)) * 64) / 64))
    return tuple(points)


def _join(*parts: Stroke) -> Stroke:
    return tuple(point for part in parts for point in part)


# Style 0: rounded (arcs); style 1: angular (straight strokes). Each digit is a tuple of strokes.
_GLYPHS: tuple[dict[int, tuple[Stroke, ...]], ...] = (
    {
        0: (_arc(5, 8, 4.2, 7.5, 0, 360),),
        1: (((2.5, 3.5), (5.5, 0.5), (5.5, 16.0)),),
        2: (_join(_arc(5, 4.5, 4.2, 4.2, 190, 400), ((0.8, 16.0), (9.5, 16.0))),),
        3: (_join(_arc(5, 4.2, 4.0, 3.7, 200, 450), _arc(5, 11.8, 4.4, 4.2, 270, 520)),),
        4: (((7.5, 16.0), (7.5, 0.5), (0.5, 11.0), (10.0, 11.0)),),
        5: (_join(((9.0, 0.5), (2.0, 0.5), (1.5, 7.0)), _arc(5, 11, 4.5, 4.8, 225, 520)),),
        6: (_join(_arc(5.3, 8, 4.5, 7.4, 300, 170), _arc(5, 11.5, 4.4, 4.3, 170, 530)),),
        7: (((0.5, 0.5), (9.5, 0.5), (3.5, 16.0)),),
        8: (_arc(5, 4.1, 3.6, 3.6, 90, 450), _arc(5, 11.8, 4.3, 4.2, 270, 630)),
        9: (_join(_arc(5, 4.8, 4.3, 4.3, 10, 370), ((9.3, 5.6), (7.0, 16.0))),),
    },
    {
        0: (((3, 0.5), (7, 0.5), (9.5, 3.5), (9.5, 12.5), (7, 15.5), (3, 15.5), (0.5, 12.5), (0.5, 3.5), (3, 0.5)),),
        1: (((2.5, 3.0), (5.0, 0.5), (5.0, 16.0)), ((2.0, 16.0), (8.0, 16.0))),
        2: (((0.8, 3.5), (3, 0.5), (7, 0.5), (9.2, 3), (9.2, 6), (0.8, 16), (9.5, 16)),),
        3: (((0.8, 0.5), (9, 0.5), (4, 7), (7.5, 7.5), (9.5, 10), (9.5, 13), (7, 15.8), (3, 15.8), (0.5, 13.5)),),
        4: (((7, 16), (7, 0.5), (0.5, 11), (9.8, 11)),),
        5: (((9, 0.5), (1.5, 0.5), (1, 7), (6.5, 6.5), (9.3, 9), (9.3, 13), (6.5, 15.8), (3, 15.8), (0.5, 13.5)),),
        6: (((8.5, 0.8), (4, 2), (1, 7), (0.8, 12.5), (3, 15.8), (7, 15.8), (9.3, 13), (9.3, 10), (7, 7.5), (3, 7.5),
             (0.9, 9.5)),),
        7: (((0.5, 0.5), (9.5, 0.5), (4, 16)), ((3, 8), (8, 8))),
        8: (((5, 7.5), (2, 6), (1.2, 3.5), (3, 0.5), (7, 0.5), (8.8, 3.5), (8, 6), (5, 7.5), (1.3, 9.5), (0.6, 13),
             (3, 15.8), (7, 15.8), (9.4, 13), (8.7, 9.5), (5, 7.5)),),
        9: (((9.2, 7), (7, 8.5), (3, 8.5), (0.8, 6), (0.8, 3), (3, 0.5), (7, 0.5), (9.2, 3), (9.2, 9), (8, 13),
             (5, 15.8), (1.5, 15)),),
    },
)


def draw_digits(labels: np.ndarray, rng: np.random.Generator, *, size: int = 28) -> np.ndarray:
    """One uint8 ``(size, size)`` image per label, white strokes on black; draws its variations from ``rng``."""
    images = np.zeros((len(labels), size, size), np.uint8)
    big = size * _SCALE
    centres = np.arange(big, dtype=np.int64) * _FIX + _FIX // 2  # pixel centres in 1/16 px
    for i, label in enumerate(labels):
        style = int(rng.integers(len(_GLYPHS)))
        radius = int(rng.integers(48, 81))  # the pen's radius in 1/16 px at 4x: 3-5 px, a stroke 1.5-2.5 px wide at 28
        height = float(rng.uniform(0.55, 0.65)) * big  # the glyph's height on the canvas (MNIST: a 20 px box)
        aspect = float(rng.uniform(0.85, 1.1))
        slant = float(rng.uniform(-0.1, 0.3))
        angle = math.radians(float(rng.uniform(-15, 15)))
        shift = rng.integers(-2 * _SCALE, 2 * _SCALE + 1, size=2)
        matrix = _placement(height, aspect, slant, angle, big)
        ink = np.zeros((big, big), bool)
        for stroke in _GLYPHS[style][int(label)]:
            _stroke(ink, centres, np.array([_apply(matrix, point) for point in stroke], np.int64), radius)
        ink = _centred(ink, shift)
        images[i] = _blur(_shrink(ink))
    return images


def _placement(height: float, aspect: float, slant: float, angle: float, big: int) -> tuple[float, ...]:
    """The affine map from the glyph grid to the canvas: centre, scale, slant, rotate (floats, used once a point)."""
    scale = height / _GRID_H
    sx, sy = scale * aspect, scale
    cos, sin = math.cos(angle), math.sin(angle)
    # p' = R (S (p - c) with x sheared by -slant * y) + canvas centre
    a, b = sx, -slant * sy
    c, d = 0.0, sy
    m00, m01 = cos * a - sin * c, cos * b - sin * d
    m10, m11 = sin * a + cos * c, sin * b + cos * d
    cx, cy = _GRID_W / 2, _GRID_H / 2
    half = big / 2
    return m00, m01, half - (m00 * cx + m01 * cy), m10, m11, half - (m10 * cx + m11 * cy)


def _apply(matrix: tuple[float, ...], point: tuple[float, float]) -> tuple[int, int]:
    m00, m01, tx, m10, m11, ty = matrix
    x, y = point
    return round((m00 * x + m01 * y + tx) * _FIX), round((m10 * x + m11 * y + ty) * _FIX)


def _stroke(ink: np.ndarray, centres: np.ndarray, points: np.ndarray, radius: int) -> None:
    """Mark every pixel whose centre lies within ``radius`` of the polyline ``points`` (round caps and joins),
    decided in exact integers; all its segments at once, over the polyline's bounding box."""
    big = ink.shape[0]
    x0, x1 = max(0, (int(points[:, 0].min()) - radius) // _FIX), min(big, (int(points[:, 0].max()) + radius) // _FIX + 1)
    y0, y1 = max(0, (int(points[:, 1].min()) - radius) // _FIX), min(big, (int(points[:, 1].max()) + radius) // _FIX + 1)
    if x0 >= x1 or y0 >= y1:
        return
    start, delta = points[:-1], points[1:] - points[:-1]  # (segments, 2)
    ax, ay = start[:, 0, None, None], start[:, 1, None, None]
    dx, dy = delta[:, 0, None, None], delta[:, 1, None, None]
    wx = centres[None, None, x0:x1] - ax  # (segments, 1, width)
    wy = centres[None, y0:y1, None] - ay  # (segments, height, 1)
    length = dx * dx + dy * dy
    near_start = wx * wx + wy * wy
    dot = wx * dx + wy * dy
    near_end = (wx - dx) ** 2 + (wy - dy) ** 2
    across = near_start * length - dot * dot  # squared distance to the segment's line, times its length
    reach = radius * radius
    inside = np.where(dot <= 0, near_start <= reach,
                      np.where(dot >= length, near_end <= reach, across <= reach * length))
    ink[y0:y1, x0:x1] |= inside.any(axis=0)


def _centred(ink: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Move the ink's centre of mass to the canvas centre plus ``shift`` (whole pixels), as MNIST centres its digits."""
    count = int(ink.sum())
    big = ink.shape[0]
    if count == 0:
        return ink
    ys, xs = np.nonzero(ink)
    # Rounded integer means: (2 * sum + count) // (2 * count)
    cx = (2 * int(xs.sum()) + count) // (2 * count)
    cy = (2 * int(ys.sum()) + count) // (2 * count)
    move_x = _within(big // 2 - cx + int(shift[0]), int(xs.min()), int(xs.max()), big)
    move_y = _within(big // 2 - cy + int(shift[1]), int(ys.min()), int(ys.max()), big)
    moved = np.zeros_like(ink)
    src_x, dst_x = slice(max(0, -move_x), min(big, big - move_x)), slice(max(0, move_x), min(big, big + move_x))
    src_y, dst_y = slice(max(0, -move_y), min(big, big - move_y)), slice(max(0, move_y), min(big, big + move_y))
    moved[dst_y, dst_x] = ink[src_y, src_x]
    return moved


def _within(move: int, low: int, high: int, big: int) -> int:
    # Keep the outer 2 pixels dark, as MNIST does (3 at 4x: the blur spreads one more): the shift gives way
    # where the ink would reach them.
    margin = 3 * _SCALE
    return min(max(move, margin - low), big - 1 - margin - high) if high - low < big - 2 * margin else move


def _shrink(ink: np.ndarray) -> np.ndarray:
    """4 x 4 area average of the ink: 0..255 in integers (sum of 16 cells, rounded)."""
    size = ink.shape[0] // _SCALE
    cells = ink.reshape(size, _SCALE, size, _SCALE).sum(axis=(1, 3), dtype=np.int64)
    return (cells * 255 + _SCALE * _SCALE // 2) // (_SCALE * _SCALE)


def _blur(values: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] x [1, 2, 1] / 16 blur, rounded, in integers: the softness of a pen stroke."""
    padded = np.pad(values, 1)
    rows = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
    both = rows[:-2] + 2 * rows[1:-1] + rows[2:]
    return ((both + 8) // 16).astype(np.uint8)
