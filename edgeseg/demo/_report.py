"""``report.html``: one static page over a demo folder, every image and link relative to it.

The page is built from the files the steps left behind (their JSON reports, plots, overlays),
so it shows what actually ran; a section whose step did not run says so instead of a picture.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2

from edgeseg.runtime.files import write_text_atomic

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3} .ok{color:#137333;font-weight:600} .failed{color:#b3261e;font-weight:600}
.skipped{color:#8a6d00;font-weight:600} img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:8px} .grid figure{margin:0;text-align:center;font-size:.8em}
.grid img{width:160px} .plots img{width:380px} img.chart{max-width:640px} .note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
code{background:#f3f3f3;padding:0 .2em}
"""


def write_report(out: str | os.PathLike, results: Sequence[Any], *, config: Any = None) -> Path:
    """Write ``out/report.html`` for a demo folder; ``results`` are the steps' :class:`StepResult` s.

    Example::

        write_report("edgeseg-demo", runner.results)
    """
    out = Path(out)
    page = _Page(out, {r.name: r for r in results})
    body = [
        "<h1>edgeseg demo</h1>",
        f"<p>{'Quick run' if getattr(config, 'quick', False) else 'Full run'}: every step of the chain on "
        "generated data, offline. Each section comes from the files in this folder.</p>",
        page.steps(results),
        page.training(),
        page.verification(),
        page.int8(),
        page.segmentation(),
        page.bench(),
    ]
    text = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>edgeseg demo</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = out / "report.html"
    write_text_atomic(path, text)
    return path


class _Page:
    def __init__(self, out: Path, results: dict[str, Any]) -> None:
        self.out = out
        self.results = results

    # -- helpers -------------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        return html.escape(Path(os.path.relpath(path, self.out)).as_posix(), quote=True)

    def img(self, path: Path, alt: str) -> str:
        return f'<img src="{self.rel(path)}" alt="{html.escape(alt)}">' if path.is_file() else ""

    def link(self, path: Path, text: str | None = None) -> str:
        if not path.exists():
            return ""
        return f'<a href="{self.rel(path)}">{html.escape(text or path.name)}</a>'

    def missing(self, *names: str) -> str:
        # Why a section is empty: the first of its steps that did not succeed, in its own words.
        for name in names:
            result = self.results.get(name)
            if result is None:
                continue
            if result.status != "ok":
                return f'<p class="note">Step <code>{name}</code> {result.status}: {html.escape(result.detail)}</p>'
        return ""

    # -- sections ------------------------------------------------------------------------------
    def steps(self, results: Sequence[Any]) -> str:
        rows = "".join(
            f"<tr><td>{i}</td><td>{html.escape(r.title)}</td><td class=\"{r.status}\">{r.status}</td>"
            f"<td>{r.seconds:.1f}</td><td>{html.escape(r.detail)}</td></tr>"
            for i, r in enumerate(results, 1)
        )
        total = sum(r.seconds for r in results)
        return (f'<section id="steps"><h2>Steps</h2><table><tr><th>#</th><th>step</th><th>status</th><th>s</th>'
                f"<th>detail</th></tr>{rows}</table><p>Total {total:.0f} s.</p></section>")

    def training(self) -> str:
        parts = ['<section id="training"><h2>Training</h2>']
        for name, title in (("fcn8", "FCN-8 (narrow VGG16 encoder) on generated scenes"), ("cae", "CAE on digits")):
            folder = self.out / name
            parts.append(f"<h3>{title}</h3>" + self.missing(f"train-{name}"))
            history = _load(folder / "history.json")
            if history:
                parts.append(_history_table(history))
            pictures = sorted(folder.glob("*.png")) if folder.is_dir() else []
            pictures = [p for p in pictures if p.name != "calibrate.png"]
            parts.append('<div class="grid plots">' + "".join(
                f"<figure>{self.img(p, p.stem)}<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in pictures
            ) + "</div>")
            parts.append("<p>" + " · ".join(filter(None, (self.link(folder / "history.json"), self.link(folder / "model.keras")))) + "</p>")
        return "\n".join(parts) + "</section>"

    def verification(self) -> str:
        rows = []
        for name in ("fcn8", "cae"):
            report = _load(self.out / name / "verify.json")
            if not report:
                continue
            output = report.get("output") or {}
            rows.append(
                f"<tr><td>{name}</td><td class=\"{'ok' if report.get('ok') else 'failed'}\">{report.get('ok')}</td>"
                f"<td>{len(report.get('layers') or [])}</td><td>{_fmt(report.get('tolerance'))}</td>"
                f"<td>{_fmt(output.get('max_abs_err'))}</td><td>{_fmt(output.get('argmax_agreement'))}</td>"
                f"<td>{html.escape(str(report.get('first_failure') or '-'))}</td>"
                f"<td>{self.link(self.out / name / 'verify.json')} {self.link(self.out / name / 'model.onnx')}</td></tr>")
        table = ("<table><tr><th>model</th><th>ok</th><th>layers checked</th><th>tolerance</th><th>output max |err|</th>"
                 f"<th>argmax agreement</th><th>first failure</th><th>files</th></tr>{''.join(rows)}</table>") if rows else ""
        return ('<section id="verification"><h2>Verification: Keras vs ONNX</h2>'
                + self.missing("verify-fcn8", "verify-cae") + table + "</section>")

    def int8(self) -> str:
        report = _load(self.out / "fcn8" / "calibrate.json")
        parts = ['<section id="int8"><h2>FP32 vs INT8</h2>', self.missing("calibrate")]
        if report:
            fp32, int8 = report.get("fp32") or {}, report.get("int8") or {}
            rows = "".join(f"<tr><td>{key}</td><td>{_fmt(fp32.get(key))}</td><td>{_fmt(int8.get(key))}</td></tr>"
                           for key in ("miou", "pixel_acc", "ms_per_frame"))
            parts.append(f"<table><tr><th></th><th>FP32</th><th>INT8</th></tr>{rows}</table>")
            facts = {k: report.get(k) for k in ("method", "samples", "miou_drop", "agreement", "speedup", "peak_mb")}
            facts["float_nodes"] = len(report.get("float_nodes") or [])
            parts.append("<table>" + "".join(f"<tr><th>{k}</th><td>{_fmt(v)}</td></tr>" for k, v in facts.items()) + "</table>")
            for warning in report.get("warnings") or []:
                parts.append(f'<p class="note">{html.escape(str(warning))}</p>')
            parts.append(self.img(self.out / "fcn8" / "calibrate.png", "per-layer SQNR").replace("<img ", '<img class="chart" '))
            parts.append("<p>" + " · ".join(filter(None, (self.link(self.out / "fcn8" / "calibrate.json"),
                                                         self.link(self.out / "fcn8" / "model.int8.onnx")))) + "</p>")
        return "\n".join(parts) + "</section>"

    def segmentation(self) -> str:
        parts = ['<section id="segmentation"><h2>Segmentation</h2>']
        for source in ("video", "folder"):
            for precision in ("fp32", "int8"):
                folder = self.out / "segment" / f"{source}-{precision}"
                parts.append(f"<h3>{source}, {precision.upper()}</h3>" + self.missing(f"segment-{source}-{precision}"))
                summary = _load(folder / "summary.json")
                if not summary:
                    continue
                stages = summary.get("stage_ms") or {}
                parts.append(
                    f"<p>{summary.get('frames')} frames, {summary.get('frames_failed')} failed, "
                    f"{_fmt(summary.get('fps'))} frames/s; ms per stage: "
                    + ", ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in stages.items()) + "</p>")
                parts.append(self._failures(folder))
                if source == "video":
                    parts.append(self._video(folder))
                else:
                    overlays = sorted((folder / "overlay").glob("*.png"))[:8]
                    parts.append('<div class="grid">' + "".join(
                        f"<figure>{self.img(p, p.stem)}<figcaption>{html.escape(p.stem)}</figcaption></figure>"
                        for p in overlays) + "</div>")
                parts.append("<p>" + " · ".join(filter(None, (self.link(folder / "summary.json"),
                                                             self.link(folder / "frames.jsonl")))) + "</p>")
        return "\n".join(parts) + "</section>"

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
        rows = "".join(f"<tr><td>{html.escape(str(r.get('name')))}</td><td>{html.escape(str(r.get('error')))}</td></tr>"
                       for r in failed)
        return f"<table><tr><th>bad item</th><th>why it was skipped</th></tr>{rows}</table>"

    def _video(self, folder: Path) -> str:
        videos = sorted(folder.glob("*.mp4")) + sorted(folder.glob("*.avi"))
        if not videos:
            return ""
        video = videos[0]
        # Not every browser plays every codec (mp4v is common without H.264): show stills as well.
        stills = _stills(video, folder / "stills", count=4)
        return (f'<video controls loop muted width="320" src="{self.rel(video)}"></video>'
                f"<p>{self.link(video, 'download the overlay video')}</p>"
                '<div class="grid">' + "".join(f"<figure>{self.img(p, p.stem)}<figcaption>{p.stem}</figcaption></figure>"
                                               for p in stills) + "</div>")

    def bench(self) -> str:
        report = _load(self.out / "bench.json")
        parts = ['<section id="bench"><h2>Benchmark</h2>', self.missing("bench")]
        if report:
            runners = report.get("runners") or {}
            rows = "".join(
                f"<tr><td>{html.escape(name)}</td><td>{_fmt(r.get('fps'))}</td><td>{_fmt(r.get('infer_fps'))}</td>"
                f"<td>{_fmt(r.get('agreement'))}</td><td>{_fmt(r.get('peak_mb'))}</td></tr>"
                for name, r in runners.items())
            parts.append("<table><tr><th>runner</th><th>frames/s end to end</th><th>inference frames/s</th>"
                         f"<th>agreement</th><th>peak MB</th></tr>{rows}</table>")
            machine = report.get("machine")
            if machine:
                facts = machine.items() if isinstance(machine, dict) else [("machine", machine)]
                parts.append("<p>Machine: " + "; ".join(f"{html.escape(str(k))} {_fmt(v)}" for k, v in facts) + "</p>")
            parts.append("<p>" + " · ".join(filter(None, (self.link(self.out / "bench.json"), self.link(self.out / "bench.md")))) + "</p>")
        return "\n".join(parts) + "</section>"


def _history_table(history: dict) -> str:
    # Per-epoch series (as long as val_loss) show their last value; plain numbers show as they are.
    epochs = len(history.get("val_loss") or [])
    rows = []
    for key, value in history.items():
        if isinstance(value, list) and epochs and len(value) == epochs:
            value = value[-1]
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{_fmt(value)}</td></tr>")
    classes = history.get("classes")
    if isinstance(classes, list) and classes:
        rows.append(f"<tr><td>classes</td><td>{html.escape(', '.join(map(str, classes)))}</td></tr>")
    return f"<table><tr><th>metric</th><th>last epoch</th></tr>{''.join(rows)}</table>"


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
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value)[:200])
    return html.escape(str(value)) if value is not None else "-"
