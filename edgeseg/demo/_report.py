"""``report.html``: one static page over a demo folder, every image and link relative to it.

The page is built from the files the steps left behind (their JSON reports, plots, overlays),
so it shows what actually ran; a section whose step did not run says so instead of a picture.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2

from edgeseg.demo._charts import SQNR_CLIP_DB, sqnr_chart, training_curves
from edgeseg.runtime.files import write_text_atomic

# The report's own pictures (charts, video stills) go here, next to the page.
ASSETS = "report_files"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 .8em;line-height:1.4}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.scroll{overflow-x:auto;max-width:100%} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top} th{background:#f3f3f3}
.ok{color:#137333;font-weight:600} .failed{color:#b3261e;font-weight:600} .skipped{color:#8a6d00;font-weight:600}
img,video{max-width:100%;height:auto} img{image-rendering:pixelated;border:1px solid #ddd} img.chart{image-rendering:auto;width:640px}
.grid{display:flex;flex-wrap:wrap;gap:8px} .grid figure{margin:0;text-align:center;font-size:.8em;max-width:100%}
.grid img{width:160px} .plots img{width:380px;image-rendering:auto}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em} .explain{color:#444}
.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em 1.2em}
.swatch{display:inline-block;width:1em;height:1em;border:1px solid #555;vertical-align:middle;margin-right:.35em}
dt{font-weight:600;margin-top:.4em} dd{margin-left:1em} code{background:#f3f3f3;padding:0 .2em}
"""


def write_report(out: str | os.PathLike, results: Sequence[Any], *, config: Any = None, running: Any = None) -> Path:
    """Write ``out/report.html`` for a demo folder; ``results`` are the steps' :class:`StepResult` s.

    ``running``: the step that writes this page, shown last in the steps table with the time the page
    took up to that table (the table is made last, so its own step is not shown as 0.0 s).

    Example::

        write_report("edgeseg-demo", runner.results)
    """
    started = time.perf_counter()
    out = Path(out)
    page = _Page(out, {r.name: r for r in [*results, *([running] if running is not None else [])]})
    sections = [page.training(), page.verification(), page.int8(), page.segmentation(), page.bench()]
    if running is not None:
        results = [*results, dataclasses.replace(running, seconds=time.perf_counter() - started)]
    body = [
        "<h1>edgeseg demo</h1>",
        f"<p>{'Quick run (tiny models, 1 epoch: the pictures show that every step works, not good models)' if getattr(config, 'quick', False) else 'Full run'}: "
        "every step of the chain on generated data, offline. Each section comes from the files in this folder.</p>",
        _GLOSSARY,
        page.steps(results),
        *sections,
    ]
    text = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>edgeseg demo</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = out / "report.html"
    write_text_atomic(path, text)
    return path


_GLOSSARY = """<section id="glossary"><h2>How to read this page</h2><dl>
<dt>Mask colours</dt><dd>Each class has one colour in every mask and overlay; the legend above the pictures names them.</dd>
<dt>FP32 and INT8</dt><dd>FP32 is the exported model in 32-bit floats; INT8 is the same model with weights and
activations rounded to 8-bit integers by <code>edgeseg calibrate</code>, smaller and usually faster.</dd>
<dt>SQNR</dt><dd>Signal-to-quantization-noise ratio of one layer's output, INT8 against FP32, in dB: every 6 dB halves
the error; above about 30 dB the rounding is invisible in the masks.</dd>
<dt>Runners</dt><dd>The benchmark runs the same model on the same video with several engines and loops (plain
onnxruntime, edgeseg's pipeline, its INT8 model, OpenVINO, Keras), one after another, in fresh processes.</dd>
<dt>Agreement</dt><dd>The share of pixels whose class is the same as in the reference run (Keras or FP32 onnxruntime);
1 means identical masks.</dd>
<dt>IoU</dt><dd>Intersection over union of predicted and true pixels of a class: 1 is perfect, 0 is none right;
mIoU is its mean over the classes.</dd></dl></section>"""


class _Page:
    def __init__(self, out: Path, results: dict[str, Any]) -> None:
        self.out = out
        self.results = results

    # -- helpers -------------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        return html.escape(Path(os.path.relpath(path, self.out)).as_posix(), quote=True)

    def img(self, path: Path | None, alt: str, *, css: str = "") -> str:
        if path is None or not path.is_file():
            return ""
        return f'<img src="{self.rel(path)}" alt="{html.escape(alt)}"{f" class={css!r}" if css else ""}>'

    def link(self, path: Path, text: str | None = None) -> str:
        if not path.exists():
            return ""
        return f'<a href="{self.rel(path)}">{html.escape(text or path.name)}</a>'

    def links(self, *paths: Path) -> str:
        return "<p>Files: " + " · ".join(filter(None, (self.link(p) for p in paths))) + "</p>" \
            if any(p.exists() for p in paths) else ""

    def missing(self, *names: str) -> str:
        # Why a section is empty: the first of its steps that did not succeed, in its own words.
        for name in names:
            result = self.results.get(name)
            if result is not None and result.status != "ok":
                return f'<p class="note">Step <code>{name}</code> {result.status}: {html.escape(result.detail)}</p>'
        return ""

    # -- sections ------------------------------------------------------------------------------
    def steps(self, results: Sequence[Any]) -> str:
        rows = [[str(i), html.escape(r.title), f'<span class="{r.status}">{r.status}</span>', f"{r.seconds:.1f}",
                 html.escape(r.detail)] for i, r in enumerate(results, 1)]
        total = sum(r.seconds for r in results)
        return ('<section id="steps"><h2>Steps</h2>' + _table(["#", "step", "status", "seconds", "what it did"], rows)
                + f"<p>Total {total:.0f} s.</p></section>")

    def training(self) -> str:
        parts = ['<section id="training"><h2>Training</h2>']
        for name, title in (("fcn8", "FCN-8 (narrow VGG16 encoder) on generated scenes"), ("cae", "CAE on digits")):
            folder = self.out / name
            parts.append(f"<h3>{title}</h3>" + self.missing(f"train-{name}"))
            history = _load(folder / "history.json")
            if history:
                curves = training_curves(history, self.out / ASSETS / f"{name}_curves.png", title=name.upper())
                parts.append(self.img(curves, f"{name} training curves", css="chart") if curves else
                             '<p class="note">Install matplotlib (the export extra) to see these curves as a chart.</p>')
                parts.append(_epoch_table(history))
            if name == "cae":
                parts.append(_CAE_NOTE)
            pictures = sorted(folder.glob("*.png")) if folder.is_dir() else []
            pictures = [p for p in pictures if p.name != "calibrate.png"]
            parts.append('<div class="grid plots">' + "".join(
                f"<figure>{self.img(p, p.stem)}<figcaption>{html.escape(_PICTURES.get(p.stem, p.stem))}</figcaption></figure>"
                for p in pictures) + "</div>")
            parts.append(self.links(folder / "history.json", folder / "model.keras"))
        return "\n".join(parts) + "</section>"

    def verification(self) -> str:
        rows = []
        for name in ("fcn8", "cae"):
            report = _load(self.out / name / "verify.json")
            if not report:
                continue
            output = report.get("output") or {}
            rows.append([name, f'<span class="{"ok" if report.get("ok") else "failed"}">{_yes(report.get("ok"))}</span>',
                         _fmt(len(report.get("layers") or [])), _fmt(report.get("tolerance")),
                         _fmt(output.get("max_abs_err")), _fmt(output.get("argmax_agreement")),
                         _fmt(report.get("first_failure")),
                         self.link(self.out / name / "verify.json") + " " + self.link(self.out / name / "model.onnx")])
        table = _table(["model", "all layers within tolerance", "layers checked", "tolerance", "output max |err|",
                        "argmax agreement", "first failing layer", "files"], rows) if rows else ""
        return ('<section id="verification"><h2>Verification: Keras vs ONNX</h2>'
                '<p class="explain">The same inputs go through the Keras model and its ONNX export; every layer\'s '
                "output is compared. Errors near 1e-6 are float rounding: the export computes what Keras computes.</p>"
                + self.missing("verify-fcn8", "verify-cae") + table + "</section>")

    def int8(self) -> str:
        report = _load(self.out / "fcn8" / "calibrate.json")
        parts = ['<section id="int8"><h2>FP32 vs INT8</h2>', self.missing("calibrate")]
        if not report:
            return "\n".join(parts) + "</section>"
        fp32, int8 = report.get("fp32") or {}, report.get("int8") or {}
        labels = {"miou": "mIoU on the calibration scenes", "pixel_acc": "pixel accuracy", "ms_per_frame": "ms per frame"}
        parts.append(_table(["", "FP32", "INT8"], [[labels[k], _fmt(fp32.get(k)), _fmt(int8.get(k))] for k in labels]))
        facts = [("calibration method", _fmt(report.get("method"))), ("calibration frames", _fmt(report.get("samples"))),
                 ("mIoU drop, FP32 minus INT8", _fmt(report.get("miou_drop"))), ("agreement with FP32", _fmt(report.get("agreement"))),
                 ("speed-up (FP32 ms / INT8 ms)", _fmt(report.get("speedup"))), ("peak memory MB", _fmt(report.get("peak_mb"))),
                 ("layers kept in float", _fmt(len(report.get("float_nodes") or [])))]
        parts.append(_table(["", "value"], [list(f) for f in facts]))
        parts.extend(f'<p class="note">{html.escape(str(w))}</p>' for w in report.get("warnings") or [])
        chart = sqnr_chart(report.get("layers") or [], self.out / ASSETS / "sqnr.png")
        if chart:
            parts.append(f"<p class=\"explain\">Per-layer SQNR, worst layers first. Bars stop at {SQNR_CLIP_DB:.0f} dB "
                         "(the noise is negligible beyond that; the real value is written at the end of a cut bar).</p>")
            parts.append(self.img(chart, "per-layer SQNR", css="chart"))
        parts.append(self.links(self.out / "fcn8" / "calibrate.json", self.out / "fcn8" / "model.int8.onnx"))
        return "\n".join(parts) + "</section>"

    def legend(self) -> str:
        """Class name and colour of every class of the segmentation model, from its contract."""
        from edgeseg.runtime.contract import Contract

        model = self.out / "fcn8" / "model.onnx"
        if not model.is_file():
            return ""
        try:
            output = Contract.from_onnx(model).output
        except Exception:  # a broken export is reported by its own step; the page still renders
            return ""
        items = "".join(f'<li><span class="swatch" style="background:#{r:02x}{g:02x}{b:02x}"></span>'
                        f"{html.escape(str(name))}</li>" for name, (r, g, b) in zip(output.classes, output.palette))
        return f'<ul class="legend" id="legend">{items}</ul>'

    def segmentation(self) -> str:
        parts = ['<section id="segmentation"><h2>Segmentation</h2>', self.legend()]
        for source in ("video", "folder"):
            for precision in ("fp32", "int8"):
                parts.extend(self._segment_run(source, precision))
        return "\n".join(parts) + "</section>"

    def _segment_run(self, source: str, precision: str) -> list[str]:
        folder = self.out / "segment" / f"{source}-{precision}"
        parts = [f"<h3>{source}, {precision.upper()}</h3>" + self.missing(f"segment-{source}-{precision}")]
        summary = _load(folder / "summary.json")
        if not summary:
            return parts
        stages = summary.get("stage_ms") or {}
        parts.append(f"<p>{_fmt(summary.get('frames'))} frames, {_fmt(summary.get('frames_failed'))} failed, "
                     f"{_fmt(summary.get('fps'))} frames/s; ms per frame by stage: "
                     + ", ".join(f"{html.escape(str(k))} {_fmt(v)}" for k, v in stages.items()) + "</p>")
        parts.append(self._failures(folder))
        if source == "video":
            parts.append(self._video(folder, f"{source}-{precision}"))
        else:
            overlays = sorted((folder / "overlay").glob("*.png"))[:8]
            parts.append('<div class="grid">' + "".join(
                f"<figure>{self.img(p, p.stem)}<figcaption>{html.escape(p.stem)}</figcaption></figure>"
                for p in overlays) + "</div>")
        parts.append(self.links(folder / "summary.json", folder / "frames.jsonl"))
        return parts

    def _failures(self, folder: Path) -> str:
        failed = []
        path = folder / "frames.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not record.get("ok", True):
                    failed.append(record)
        if not failed:
            return ""
        return _table(["bad item", "why it was skipped"], [[_fmt(r.get("name")), _fmt(r.get("error"))] for r in failed])

    def _video(self, folder: Path, label: str) -> str:
        videos = sorted(folder.glob("*.mp4")) + sorted(folder.glob("*.avi"))
        if not videos:
            return ""
        video = videos[0]
        # Not every browser plays every codec (mp4v is common without H.264): show stills as well.
        stills = _stills(video, self.out / ASSETS / f"{label}-stills", count=4)
        return (f'<video controls loop muted width="320" src="{self.rel(video)}"></video>'
                f"<p>{self.link(video, 'download the overlay video')}</p>"
                '<div class="grid">' + "".join(f"<figure>{self.img(p, p.stem)}<figcaption>{p.stem}</figcaption></figure>"
                                               for p in stills) + "</div>")

    def bench(self) -> str:
        report = _load(self.out / "bench.json")
        parts = ['<section id="bench"><h2>Benchmark</h2>', self.missing("bench")]
        if not report:
            return "\n".join(parts) + "</section>"
        reference = report.get("agreement_reference")
        parts.append(f"<p class=\"explain\">{_fmt(report.get('frames'))} frames of the sample video, "
                     f"{_fmt(report.get('repeats'))} round(s); agreement is measured against "
                     f"<code>{_fmt(reference)}</code>. One run on a shared machine: compare the rows, not the absolute "
                     "numbers.</p>")
        rows = [[html.escape(name), _fmt(r.get("fps")), _fmt(r.get("infer_fps")), _fmt(r.get("agreement")),
                 _fmt(r.get("peak_mb")), _fmt(r.get("skipped"))] for name, r in (report.get("runners") or {}).items()]
        parts.append(_table(["runner", "frames/s end to end", "inference frames/s", "agreement", "peak MB",
                             "skipped because"], rows))
        machine = report.get("machine") or {}
        if isinstance(machine, dict):
            parts.append("<p>Machine: " + "; ".join(f"{html.escape(str(k))} {_fmt(v)}" for k, v in machine.items()) + "</p>")
        parts.append(self.links(self.out / "bench.json", self.out / "bench.md"))
        return "\n".join(parts) + "</section>"


_CAE_NOTE = ("<p class=\"explain\">Why the CAE's reconstructions are blurry: it squeezes every 28x28 digit through a "
             "latent code of two numbers, so it can keep only a digit's rough shape, and it is trained to minimise "
             "the mean squared error, which rewards an average of the plausible strokes (a soft grey blur) over a "
             "sharp guess. Two numbers also make the latent space a plane that can be drawn, and decoding any point "
             "of it gives a new digit (generated).</p>")

_PICTURES = {
    "predictions": "validation scenes: image, true mask, predicted mask, overlay",
    "iou": "validation IoU per class, best epoch",
    "reconstructions": "digits (top) and their reconstructions (bottom)",
    "latent_space": "each digit's 2-number latent code, coloured by digit",
    "generated": "a digit decoded from one chosen latent point",
}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # Cells are already HTML; a table wider than the screen scrolls instead of stretching the page.
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _epoch_table(history: dict) -> str:
    # One row per epoch: the numbers behind the curves, readable without matplotlib.
    losses = history.get("val_loss") or []
    ious = history.get("val_iou") or []
    classes = history.get("classes") or []
    header = ["epoch", "training loss", "validation loss"]
    if ious:
        header += [f"val IoU {html.escape(str(c))}" for c in classes[:len(ious[0])]] + ["val mIoU"]
    rows = []
    for i, loss in enumerate(losses):
        row = [str(i + 1), _fmt(_at(history.get("loss"), i)), _fmt(loss)]
        if ious:
            row += [_fmt(v) for v in _at(ious, i) or []] + [_fmt(_at(history.get("val_miou"), i))]
        rows.append(row)
    best = history.get("best_epoch")
    note = f"<p>The saved model is the best epoch by validation loss: epoch {_fmt(best)}.</p>" if best else ""
    return _table(header, rows) + note


def _at(values: Any, index: int) -> Any:
    return values[index] if isinstance(values, list) and index < len(values) else None


def _stills(video: Path, folder: Path, *, count: int) -> list[Path]:
    capture = cv2.VideoCapture(str(video))
    frames = []
    try:
        ok, image = capture.read()
        while ok:
            frames.append(image)
            ok, image = capture.read()
    finally:
        capture.release()
    if not frames:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    picks = sorted({round(i * (len(frames) - 1) / max(1, count - 1)) for i in range(count)})
    stills = []
    for index in picks:
        path = folder / f"frame_{index:04d}.png"
        if cv2.imwrite(str(path), frames[index]):
            stills.append(path)
    return stills


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fmt(value: Any) -> str:
    """A value as page text: numbers rounded, yes/no for booleans, lists joined; never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return _yes(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) or "-"
    if isinstance(value, dict):
        return "; ".join(f"{html.escape(str(k))} {_fmt(v)}" for k, v in value.items()) or "-"
    return html.escape(str(value))


def _yes(value: Any) -> str:
    return "yes" if value else "no"
