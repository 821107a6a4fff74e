"""``edgeseg eval``: accuracy of deployed files on held-out labelled data, per file and engine, side by side.

Each (file, engine) runs every frame through :class:`edgeseg.runtime.Model` exactly as ``segment``
does (the contract's preprocessing, the engine at its precision, class ids restored to the frame's
size) and is scored against the mask at the mask's own size, so the figure is what a deployment
gets, not what a model-size tensor gets. Scores: per-class IoU, mIoU and pixel accuracy
(calibration's :class:`edgeseg.calibration.SegmentationScores`); for autoencoders the runtime's
reconstruction score (mean |input - output|) overall and per label where the data has labels
(MNIST). Data is read by the runtime's dataset readers (:mod:`edgeseg.runtime.datasets`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime import ENGINES as RUNTIME_ENGINES
from edgeseg.runtime import Contract, EdgesegError, Model, ModelFile

log = logging.getLogger("edgeseg.evaluate")

ENGINES = ("auto", *RUNTIME_ENGINES)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BATCH = 8


@dataclass(frozen=True)
class EvalOptions:
    """What to run: ``engines`` (each file runs on each), ``precision`` (``auto``: each engine's default for
    the file: int8 for an INT8 file, OpenVINO bf16 where the CPU has it), ``samples`` (None: every frame)."""

    engines: tuple[str, ...] = ("auto",)
    precision: str = "auto"
    samples: int | None = None
    provider: str = "auto"

    def __post_init__(self) -> None:
        bad = [e for e in self.engines if e not in ENGINES]
        if bad or not self.engines:
            raise EdgesegError(f"--engine must be one or more of {', '.join(ENGINES)} (comma-separated), got "
                               f"{','.join(self.engines) or 'nothing'}.")
        if self.precision not in PRECISIONS:
            raise EdgesegError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if self.samples is not None and self.samples < 1:
            raise EdgesegError(f"--samples must be at least 1, got {self.samples}.")


def evaluate(files: Sequence[str | os.PathLike], data: str | os.PathLike, *, masks: str | os.PathLike | None = None,
             options: EvalOptions = EvalOptions()) -> dict[str, Any]:
    """Score every file on every engine over the labelled ``data``; returns the report (JSON-ready).

    ``data``: for segmentation models a folder of images (with ``masks``), or a folder holding
    ``images/`` and ``masks/``; for autoencoders an image folder, or MNIST (an IDX folder or .npz,
    whose labels group the reconstruction error).

    Example::

        report = evaluate(["fcn8.onnx", "fcn8.int8.onnx"], "held_out/images", masks="held_out/masks",
                          options=EvalOptions(engines=("onnxruntime", "openvino")))
        print(format_table(report))
    """
    if not files:
        raise EdgesegError("edgeseg eval needs at least one .onnx file.")
    contracts = [_contract(Path(f)) for f in files]
    kind = _same_kind(files, contracts)
    dataset = _Labelled.open(data, masks=masks, contract=contracts[0], kind=kind, samples=options.samples)
    runs = []
    for path in files:
        for engine in options.engines:
            model = _open(Path(path), engine=engine, precision=options.precision, provider=options.provider)
            runs.append(_score(model, dataset, file=str(path), asked=engine))
    return {"kind": kind, "data": dataset.describe(), "classes": list(contracts[0].output.classes),
            "runs": runs, "evaluated_at": "the frame's own size, through each engine as segment runs it"}


def _contract(path: Path) -> Contract:
    if not path.is_file():
        raise EdgesegError(f"`{path}`: no such file. Pass .onnx files exported (or calibrated) by edgeseg.")
    contract = ModelFile.read(path).contract
    if contract is None:
        raise EdgesegError(f"`{path}` carries no edgeseg contract: eval needs its preprocessing and classes. "
                           "Export it with `edgeseg export`.")
    return contract


def _same_kind(files: Sequence[Any], contracts: Sequence[Contract]) -> str:
    first = contracts[0]
    if first.kind not in ("segmentation", "autoencoder"):
        raise EdgesegError(f"`{files[0]}` is an {first.kind} model: eval scores segmentation and autoencoder models.")
    for path, contract in zip(files[1:], contracts[1:]):
        if contract.kind != first.kind or contract.output.classes != first.output.classes:
            raise EdgesegError(f"`{path}` ({contract.kind}, classes {list(contract.output.classes)}) cannot be "
                               f"compared with `{files[0]}` ({first.kind}, classes {list(first.output.classes)}): "
                               "eval compares files of one model (FP32, INT8, other exports).")
    return first.kind


def _open(path: Path, *, engine: str, precision: str, provider: str) -> Model:
    # Model's precision words: OpenVINO's f32/bf16, fp16 for the GPU path, auto for each engine's default.
    knob = {"fp32": "f32" if engine == "openvino" else "auto"}.get(precision, precision)
    if precision == "bf16" and engine != "openvino":
        raise EdgesegError("--precision bf16 runs on --engine openvino (CPUs with AMX or AVX512-BF16).")
    return Model(path, engine=engine, precision=knob, provider=provider)


def _score(model: Model, dataset: _Labelled, *, file: str, asked: str) -> dict[str, Any]:
    from edgeseg.calibration import SegmentationScores

    classes = model.contract.num_classes
    scores = SegmentationScores(max(2, classes))
    errors: dict[str, list[float]] = {}
    frames, seconds = 0, 0.0
    for names, images, truths in dataset.batches(BATCH):
        start = time.perf_counter()
        results = model.predict_batch(images)
        seconds += time.perf_counter() - start
        frames += len(images)
        for result, truth in zip(results, truths):
            if model.kind == "segmentation":
                scores.add(truth, result.mask.astype(np.int64))
            else:
                errors.setdefault("all" if truth is None else str(truth), []).append(float(result.score))
    # onnxruntime's Model says fp32 for the engine; an INT8 file runs its quantized layers in int8 (as segment's summary says).
    precision = "int8" if model.contract.calibration and model.engine == "onnxruntime" else model.precision
    precision = precision.replace("f32", "fp32")  # OpenVINO's f32 is everyone's fp32
    entry: dict[str, Any] = {"file": file, "engine": model.engine, "asked": asked, "precision": precision,
                             "providers": list(model.providers), "frames": frames,
                             "ms_per_frame": 1000.0 * seconds / max(1, frames)}
    if model.kind == "segmentation":
        entry.update(scores.summary(model.contract.output.classes or tuple(str(i) for i in range(classes))))
    else:
        every = [e for values in errors.values() for e in values]
        entry["reconstruction_error"] = float(np.mean(every))
        entry["by_label"] = ({label: float(np.mean(values)) for label, values in sorted(errors.items())}
                             if "all" not in errors else None)
    return entry


class _Labelled:
    """The evaluation frames with their truth: class-id masks (segmentation) or labels / None (autoencoders)."""

    def __init__(self, items: list[tuple[str, np.ndarray, Any]], *, source: str, skipped: int, labels: str) -> None:
        self.items, self.source, self.skipped, self.labels = items, source, skipped, labels

    @classmethod
    def open(cls, data: str | os.PathLike, *, masks: Any, contract: Contract, kind: str,
             samples: int | None) -> _Labelled:
        data = Path(data)
        if not data.exists():
            raise EdgesegError(f"--data `{data}`: no such file or folder.")
        if kind == "segmentation":
            return cls._segmentation(data, masks, contract, samples)
        return cls._autoencoder(data, contract, samples)

    @classmethod
    def _segmentation(cls, data: Path, masks: Any, contract: Contract, samples: int | None) -> _Labelled:
        from edgeseg.runtime.datasets import labelled_pairs

        if masks is None and (data / "images").is_dir() and (data / "masks").is_dir():
            data, masks = data / "images", data / "masks"
        if masks is None:
            raise EdgesegError(f"--masks is needed to score a segmentation model (class-id PNGs named like the "
                               f"images in `{data}`), or pass a folder holding images/ and masks/.")
        items, skipped = [], 0
        for pair in labelled_pairs(data, masks, classes=contract.num_classes, palette=contract.output.palette or None):
            if pair.error is not None:
                skipped += 1
                continue
            items.append((pair.name, pair.image, pair.mask))
            if samples is not None and len(items) >= samples:
                break
        if not items:
            raise EdgesegError(f"No usable image/mask pairs in `{data}` and `{masks}` ({skipped} skipped; see the "
                               "lines above).")
        return cls(items, source=f"{data} + {masks}", skipped=skipped, labels="masks")

    @classmethod
    def _autoencoder(cls, data: Path, contract: Contract, samples: int | None) -> _Labelled:
        from edgeseg.runtime import open_source
        from edgeseg.runtime.datasets import load_mnist

        if data.suffix == ".npz" or (data.is_dir() and any(data.glob("*-idx3-ubyte*"))):
            digits = load_mnist(data)
            keep = np.flatnonzero(digits.test) if digits.test.any() else np.arange(len(digits.labels))
            keep = keep[:samples] if samples else keep
            items = [(f"{i}", digits.images[i], int(digits.labels[i])) for i in keep]
            return cls(items, source=str(data), skipped=0, labels="digit labels (test split where there is one)")
        items, skipped = [], 0
        for frame in open_source(data, max_frames=samples):
            if frame.ok:
                items.append((frame.name, frame.image, None))
            else:
                skipped += 1
        if not items:
            raise EdgesegError(f"No readable images in `{data}` ({skipped} unreadable).")
        return cls(items, source=str(data), skipped=skipped, labels="none")

    def batches(self, size: int) -> Iterator[tuple[list[str], list[np.ndarray], list[Any]]]:
        for start in range(0, len(self.items), size):
            chunk = self.items[start:start + size]
            yield [c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk]

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "frames": len(self.items), "skipped": self.skipped, "labels": self.labels}


def format_table(report: dict[str, Any]) -> str:
    """The runs side by side: one row per file and engine."""
    runs = report["runs"]
    names = {run["file"]: Path(run["file"]).name for run in runs}
    width = max(len("file"), *(len(n) for n in names.values()))
    if report["kind"] == "segmentation":
        classes = report["classes"] or list(runs[0]["per_class_iou"])
        columns = [max(7, len(f"IoU {c}")) for c in classes]
        head = f"{'file':<{width}}  {'engine':<11} {'precision':<10} {'mIoU %':>7} {'pix acc %':>9}" + "".join(
            f" {'IoU ' + c:>{w}}" for c, w in zip(classes, columns))
        rows = [head]
        for run in runs:
            ious = "".join(f" {_pct(run['per_class_iou'].get(c)):>{w}}" for c, w in zip(classes, columns))
            rows.append(f"{names[run['file']]:<{width}}  {run['engine']:<11} {run['precision']:<10} "
                        f"{_pct(run['miou']):>7} {_pct(run['pixel_acc']):>9}{ious}")
    else:
        labels = sorted({label for run in runs for label in (run["by_label"] or {})}, key=_label_key)
        rows = [f"{'file':<{width}}  {'engine':<11} {'precision':<10} {'error':>8}" + "".join(f" {l:>7}" for l in labels)]
        for run in runs:
            by = "".join(f" {run['by_label'][l]:>7.4f}" for l in labels) if run["by_label"] else ""
            rows.append(f"{names[run['file']]:<{width}}  {run['engine']:<11} {run['precision']:<10} "
                        f"{run['reconstruction_error']:>8.4f}{by}")
    data = report["data"]
    rows.append(f"{data['frames']} frames from {data['source']}" + (f", {data['skipped']} skipped" if data["skipped"]
                                                                     else "") + f"; scored at {report['evaluated_at']}")
    return "\n".join(rows)


def write_chart(report: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars, one group per class (and mIoU) or label, one bar per file and engine. None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    runs = report["runs"]
    if report["kind"] == "segmentation":
        groups = ["mIoU", *report["classes"]] if report["classes"] else ["mIoU"]
        values = [[run["miou"], *(run["per_class_iou"].get(c) for c in groups[1:])] for run in runs]
        ylabel = "IoU"
    else:
        groups = sorted({l for run in runs for l in (run["by_label"] or {})}, key=_label_key) or ["all"]
        values = [[(run["by_label"] or {}).get(g, run["reconstruction_error"]) for g in groups] for run in runs]
        ylabel = "reconstruction error (mean |in - out|)"
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.45 * len(groups) * max(1, len(runs))), 3.2 + 0.2 * len(runs)))
    width = 0.8 / max(1, len(runs))
    for i, (run, row) in enumerate(zip(runs, values)):
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v if v is not None else 0.0 for v in row], width=width,
               label=f"{Path(run['file']).name} · {run['engine']} {run['precision']}")
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _label_key(label: str) -> tuple[int, Any]:
    return (0, int(label)) if label.isdigit() else (1, label)
