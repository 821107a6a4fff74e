"""Pictures of a training run (PNG, matplotlib's Agg backend, imported only when drawing)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window; the CLI may run headless
    import matplotlib.pyplot as plt

    return plt


def reconstructions(inputs: np.ndarray, outputs: np.ndarray, path: Path, *, count: int = 10) -> Path:
    """Top row inputs, bottom row reconstructions (N, H, W, 1), values about 0..1."""
    plt = _pyplot()
    count = min(count, len(inputs))
    fig, axes = plt.subplots(2, count, figsize=(1.2 * count, 2.6), squeeze=False)
    for i in range(count):
        for row, images in enumerate((inputs, outputs)):
            axes[row, i].imshow(np.clip(images[i, :, :, 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    return _save(fig, plt, path)


def latent_space(codes: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """The first two latent dimensions, one colour per digit."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    codes = codes.reshape(len(codes), -1)
    ys = codes[:, 1] if codes.shape[1] > 1 else np.zeros(len(codes))
    for digit in sorted(set(labels.tolist())):
        pick = labels == digit
        ax.scatter(codes[pick, 0], ys[pick], s=4, alpha=0.6, label=str(digit))
    ax.set_xlabel("latent 0")
    ax.set_ylabel("latent 1")
    ax.legend(title="digit", markerscale=3)
    ax.set_title("validation digits in the latent space")
    return _save(fig, plt, path)


def generated(image: np.ndarray, point: Sequence[float], path: Path) -> Path:
    """The decoder's image for one latent point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.5, 2.7))
    ax.imshow(np.clip(image[:, :, 0], 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"decoded {list(point)}", fontsize=8)
    ax.axis("off")
    return _save(fig, plt, path)


def segmentation_grid(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray,
                      palette: Sequence[Sequence[int]], path: Path, *, count: int = 4) -> Path:
    """Rows of image / truth / prediction / overlay; ``images`` uint8 RGB (N, H, W, 3)."""
    plt = _pyplot()
    count = min(count, len(images))
    colours = np.asarray(palette, np.uint8)
    fig, axes = plt.subplots(count, 4, figsize=(8, 2.1 * count), squeeze=False)
    for i in range(count):
        overlay = (0.55 * images[i] + 0.45 * colours[predictions[i]]).astype(np.uint8)
        for j, (title, picture) in enumerate((("image", images[i]), ("truth", colours[truths[i]]),
                                               ("prediction", colours[predictions[i]]), ("overlay", overlay))):
            axes[i, j].imshow(picture)
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title, fontsize=9)
    return _save(fig, plt, path)


def iou_bars(ious: Sequence[float], classes: Sequence[str], path: Path) -> Path:
    """Per-class IoU on validation as bars, with the mean as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(3.5, 0.9 * len(classes) + 1.5), 3.2))
    values = [0.0 if np.isnan(v) else v for v in ious]
    ax.bar(list(classes), values, color="tab:blue")
    ax.axhline(float(np.nanmean(ious)), color="tab:red", linestyle="--", label=f"mean {np.nanmean(ious):.3f}")
    for x, v in enumerate(values):
        ax.text(x, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("IoU (validation)")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
