"""The report page's own charts (PNG): training curves per epoch and a readable per-layer SQNR chart.

matplotlib comes with the ``export`` and ``calibrate`` extras; without it every function here
returns None and the page shows the same numbers as tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Above this, a layer's quantization noise is negligible; one 200 dB bar (a layer whose INT8 copy is
# exact) would otherwise squash every other bar to a sliver, so bars stop here and say so.
SQNR_CLIP_DB = 60.0


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict, path: Path, *, title: str) -> Path | None:
    """Loss and validation loss per epoch, and validation IoU per class when the history has it.

    Example::

        training_curves(json.loads(Path("fcn8/history.json").read_text()), Path("curves.png"), title="FCN-8")
    """
    plt = _pyplot()
    losses = history.get("val_loss") or []
    if plt is None or not losses:
        return None
    epochs = list(range(1, len(losses) + 1))
    ious = history.get("val_iou") or []
    panels = 2 if ious else 1
    # Stacked, not side by side: the page must stay readable on a 420 px phone screen.
    fig, axes = plt.subplots(panels, 1, figsize=(4.6, 3.0 * panels), squeeze=False)
    ax = axes[0][0]
    if len(history.get("loss") or []) == len(epochs):
        ax.plot(epochs, history["loss"], marker="o", label="training loss")
    ax.plot(epochs, losses, marker="o", label="validation loss")
    ax.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    ax.legend(fontsize=8)
    if ious:
        _iou_panel(axes[1][0], epochs, ious, history.get("classes") or [], history.get("val_miou") or [])
    _integer_epochs([row[0] for row in axes], epochs)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _iou_panel(ax, epochs: list[int], ious: Sequence[Sequence[float | None]], classes: Sequence[str],
               miou: Sequence[float]) -> None:
    for index in range(len(ious[0])):
        name = classes[index] if index < len(classes) else f"class {index}"
        ax.plot(epochs, [row[index] if row[index] is not None else float("nan") for row in ious], marker=".",
                label=name)
    if len(miou) == len(epochs):
        ax.plot(epochs, miou, color="black", linewidth=2, label="mean IoU")
    ax.set(xlabel="epoch", ylabel="IoU (1 = perfect)", title="validation IoU per class", ylim=(0, 1))
    ax.legend(fontsize=7)


def _integer_epochs(axes, epochs: list[int]) -> None:
    step = max(1, len(epochs) // 8)
    for ax in axes:
        ax.set_xticks(epochs[::step])


def sqnr_chart(layers: Sequence[dict], path: Path, *, limit: int = 25) -> Path | None:
    """Per-layer SQNR (activations and weights), worst first, bars clipped at :data:`SQNR_CLIP_DB`.

    Example::

        sqnr_chart(report["layers"], Path("sqnr.png"))
    """
    plt = _pyplot()
    shown = list(layers)[:limit]
    if plt is None or not shown:
        return None
    names = [_short_layer_name(entry.get("name", "?")) for entry in shown]
    fig, ax = plt.subplots(figsize=(5.0, 0.3 * len(shown) + 1.6))
    y = list(range(len(shown)))
    for offset, key, label in ((-0.2, "activation_db", "activations"), (0.2, "weights_db", "weights")):
        values = [entry.get(key) for entry in shown]
        bars = ax.barh([i + offset for i in y], [min(v, SQNR_CLIP_DB) if v is not None else 0 for v in values],
                       height=0.4, label=label)
        for bar, value in zip(bars, values):
            if value is not None and value > SQNR_CLIP_DB:  # the real value, where the bar was cut
                ax.text(SQNR_CLIP_DB, bar.get_y() + bar.get_height() / 2, f" {value:.0f}", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, SQNR_CLIP_DB * 1.12)
    ax.set_xlabel(f"SQNR, dB (higher = less noise; clipped at {SQNR_CLIP_DB:.0f} dB)")
    ax.set_title(f"Per-layer SQNR, worst {len(shown)} first")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _short_layer_name(name: str) -> str:
    # ONNX node names repeat the model's name and end in the op: "fcn8_classic_1/block2_conv2_1/BiasAdd".
    parts = [part for part in name.split("/") if part]
    if len(parts) >= 3:
        parts = parts[1:-1]
    short = "/".join(parts) or name
    return short if len(short) <= 32 else short[:30] + "…"
