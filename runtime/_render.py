"""Drawing results: palette look-up tables, overlays, error-map heat maps. All vectorized OpenCV."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.runtime._preprocess import to_bgr8


@dataclass(frozen=True)
class Palette:
    """Class colours as a 256-entry BGR look-up table for ``cv2.LUT`` (built once per run)."""

    lut: np.ndarray  # (1, 256, 3) uint8, BGR
    rgb: tuple[tuple[int, int, int], ...]
    background_is_black: bool

    @classmethod
    def from_rgb(cls, colours: Sequence[Sequence[int]]) -> Palette:
        rgb = tuple(tuple(int(v) for v in c) for c in colours) or ((0, 0, 0),)
        lut = np.zeros((1, 256, 3), np.uint8)
        for i in range(256):
            lut[0, i] = rgb[i % len(rgb)][::-1]
        return cls(lut=lut, rgb=rgb, background_is_black=rgb[0] == (0, 0, 0))

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """Class-id mask (H, W) -> BGR colour image (H, W, 3)."""
        if mask.dtype != np.uint8:
            mask = (mask % len(self.rgb)).astype(np.uint8)
        return cv2.LUT(cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR), self.lut)


def overlay(image: np.ndarray, mask: np.ndarray, palette: Palette, *, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours onto the frame; a black background class leaves its pixels untouched."""
    base = to_bgr8(image)
    if base.ndim == 2:
        base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    blended = cv2.addWeighted(base, 1.0 - alpha, palette.colorize(mask), alpha, 0.0)
    if palette.background_is_black:
        cv2.copyTo(base, (mask == 0).view(np.uint8), blended)
    return blended


def heatmap(image: np.ndarray, error_map: np.ndarray, *, alpha: float = 0.5, scale: float | None = None) -> np.ndarray:
    """Blend an autoencoder's error map (as a JET heat map) onto the frame.

    ``scale``: the error shown as full red (None: this frame's maximum).
    """
    base = to_bgr8(image)
    if base.ndim == 2:
        base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    top = scale if scale else float(error_map.max()) or 1.0
    levels = cv2.convertScaleAbs(error_map, alpha=255.0 / top)
    return cv2.addWeighted(base, 1.0 - alpha, cv2.applyColorMap(levels, cv2.COLORMAP_JET), alpha, 0.0)
