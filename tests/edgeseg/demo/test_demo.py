"""`edgeseg demo --quick` end to end, its report page, and how the step runner copes with failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from edgeseg.demo._demo import Runner, StepFailed, StepResult
from edgeseg.demo._report import write_report
from edgeseg.sampledata import BAD_FILES

SECTIONS = ("glossary", "steps", "training", "verification", "int8", "segmentation", "bench")


class _Links(HTMLParser):
    """Every src/href of a page, and the ids of its sections."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.sections: list[str] = []
        self.text: list[str] = []
        self.swatches: list[str] = []  # the legend's colours, in order
        self._legend_item = False
        self.legend: list[str] = []  # the legend's class names, in order

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "swatch":
            self.swatches.append(attrs.get("style", "").removeprefix("background:"))
            self._legend_item = True
        for key in ("src", "href"):
            if attrs.get(key):
                self.references.append(attrs[key])
        if tag == "section":
            self.sections.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if tag == "li":
            self._legend_item = False

    def handle_data(self, data):
        self.text.append(data)
        if self._legend_item and data.strip():
            self.legend.append(data.strip())


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _assert_references_resolve(page: Path, references: list[str]) -> None:
    root = page.parent.resolve()
    for reference in references:
        parsed = urlparse(reference)
        assert not parsed.scheme and not parsed.netloc, f"{reference!r} is not a relative link"
        assert not reference.startswith("/"), f"{reference!r} is absolute"
        target = (page.parent / unquote(parsed.path)).resolve()
        assert target.is_relative_to(root), f"{reference!r} points outside the demo folder"
        assert target.exists(), f"{reference!r} does not exist"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, time_scale):
    out = tmp_path_factory.mktemp("demo") / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="2", TF_NUM_INTEROP_THREADS="1")
    # The timeout guards against a hang: it scales with the machine's load (the demo took > 300 s at load 15).
    done = subprocess.run([sys.executable, "-m", "edgeseg", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300 * time_scale)
    return out, done


def test_quick_demo_runs_every_step_and_fails_none(quick_demo):
    out, done = quick_demo
    assert done.returncode == 0, done.stderr[-3000:]
    progress = [line for line in done.stderr.splitlines() if line.startswith("demo [")]
    finished = [line for line in progress if not line.endswith(" ...")]
    assert len(finished) == 14, progress
    assert all(": OK in " in line for line in finished), [line for line in finished if ": OK in " not in line]
    for path in ("fcn8/model.onnx", "fcn8/model.int8.onnx", "cae/model.onnx", "fcn8/verify.json", "cae/verify.json",
                 "fcn8/calibrate.json", "bench.json", "bench.md", "segment/video-int8/summary.json",
                 "segment/folder-int8/summary.json", "report.html"):
        assert (out / path).is_file(), path
    folder = json.loads((out / "segment/folder-fp32/summary.json").read_text())
    assert folder["frames_failed"] == len(BAD_FILES)
    assert json.loads((out / "fcn8/verify.json").read_text())["ok"] is True
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench["runners"]) == {"ort-plain", "edgeseg", "edgeseg-int8"}
    assert bench["runners"]["edgeseg"]["agreement"] > 0.99  # the same FP32 model, another loop


def test_report_page_has_every_section_and_every_reference_resolves(quick_demo):
    out, _ = quick_demo
    page = out / "report.html"
    parsed = _parse(page)
    assert parsed.sections == list(SECTIONS)
    _assert_references_resolve(page, parsed.references)
    _assert_served(out, parsed.references)
    text = " ".join(parsed.text)
    # The legend names every class in its mask colour, as the model's contract says.
    from edgeseg.runtime.contract import Contract

    output = Contract.from_onnx(out / "fcn8/model.onnx").output
    assert parsed.legend == list(output.classes)
    assert parsed.swatches == ["#%02x%02x%02x" % tuple(colour) for colour in output.palette[:len(output.classes)]]
    # Per-epoch training curves for both models, drawn as charts, and the clipped SQNR chart.
    for chart in ("report_files/fcn8_curves.png", "report_files/cae_curves.png", "report_files/sqnr.png"):
        assert chart in parsed.references
    for term in ("SQNR", "Agreement", "Runners", "blurry"):
        assert term in text, term
    _assert_no_python_values(text)
    for bad in BAD_FILES:
        assert Path(bad).stem in text  # the bad files are listed with their reasons
    assert any(r.endswith(".mp4") for r in parsed.references)
    assert sum(r.endswith(".png") for r in parsed.references) >= 8


def _assert_served(root: Path, references: list[str]) -> None:
    # A real HTTP server over the folder, as a browser would load the page: every link answers 200.
    import functools
    import http.server
    import threading
    import urllib.request

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        with urllib.request.urlopen(base + "report.html", timeout=10) as answer:
            assert answer.status == 200 and b"<h1>edgeseg demo</h1>" in answer.read()
        for reference in references:
            with urllib.request.urlopen(base + reference, timeout=10) as answer:
                assert answer.status == 200 and answer.read(1), reference
    finally:
        server.shutdown()
        server.server_close()


def _assert_no_python_values(text: str) -> None:
    import re

    for raw in (r"\bNone\b", r"\bTrue\b", r"\bFalse\b", r"\{'", r"\['", r"\[\d", r"\bnan\b"):
        assert not re.search(raw, text), f"raw Python value {raw!r} on the page: {re.search(raw, text)}"


def test_report_charts_clip_a_200_db_layer_and_show_curves_per_epoch(tmp_path):
    (tmp_path / "fcn8").mkdir()
    layers = [{"name": f"m/l{i}/BiasAdd", "op": "Conv", "weights_db": 45.0, "activation_db": 20.0 + i}
              for i in range(5)] + [{"name": "m/exact/BiasAdd", "op": "Add", "weights_db": None, "activation_db": 200.0}]
    (tmp_path / "fcn8" / "calibrate.json").write_text(json.dumps({
        "fp32": {"miou": 0.8, "pixel_acc": 0.9, "ms_per_frame": 3.0}, "int8": {"miou": 0.79, "pixel_acc": None},
        "method": "minmax", "agreement": 0.99, "layers": layers, "float_nodes": ["a"], "warnings": []}))
    (tmp_path / "fcn8" / "history.json").write_text(json.dumps({
        "loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.6, 0.4], "val_iou": [[0.5, None], [0.7, 0.2], [0.9, 0.6]],
        "val_miou": [0.25, 0.45, 0.75], "classes": ["background", "disc"], "best_epoch": 3, "skipped": []}))
    page = write_report(tmp_path, [], running=StepResult("report", "write report.html", "ok"))
    parsed = _parse(page)
    _assert_references_resolve(page, parsed.references)
    text = " ".join(parsed.text)
    assert "Bars stop at 60 dB" in text
    # The page's own step, timed by the page (the charts above took real time): not the 0.0 s it once showed.
    cells = [t.strip() for t in parsed.text if t.strip()]
    at = cells.index("write report.html")
    assert cells[at + 1] == "ok" and float(cells[at + 2]) > 0.0, cells[at: at + 3]
    assert "report_files/sqnr.png" in parsed.references and "report_files/fcn8_curves.png" in parsed.references
    import cv2

    assert cv2.imread(str(tmp_path / "report_files" / "sqnr.png")) is not None
    # One table row per epoch with the per-class IoU, a missing value shown as "-".
    assert "0.9" in text and "0.75" in text and " - " in f" {' '.join(t.strip() for t in parsed.text)} "
    _assert_no_python_values(text)


def test_a_failing_step_is_named_its_dependents_skip_and_the_rest_run(tmp_path):
    runner = Runner(total=3)

    def broken() -> str:
        raise StepFailed("`edgeseg export x.keras` exited with status 2")

    assert runner.step("a", "first", broken) is False
    assert runner.step("b", "needs a", lambda: "never", needs=["a"]) is False
    assert runner.step("c", "independent", lambda: "done") is True
    status = {r.name: (r.status, r.detail) for r in runner.results}
    assert status["a"] == ("failed", "`edgeseg export x.keras` exited with status 2")
    assert status["b"][0] == "skipped" and "a" in status["b"][1]
    assert status["c"] == ("ok", "done")
    assert [r.name for r in runner.failed] == ["a"]

    page = write_report(tmp_path, runner.results)
    parsed = _parse(page)
    assert parsed.sections == list(SECTIONS)
    assert "exited with status 2" in " ".join(parsed.text)
    _assert_references_resolve(page, parsed.references)


def test_a_crashing_step_does_not_stop_the_run():
    runner = Runner(total=2)
    assert runner.step("a", "crashes", lambda: 1 / 0) is False
    assert runner.step("b", "runs anyway", lambda: "ok") is True
    assert runner.results[0].status == "failed" and "ZeroDivisionError" in runner.results[0].detail


def test_demo_refuses_a_missing_mnist_path_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgeseg", "demo", "--quick", "--out", str(tmp_path / "o"),
                           "--data", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("edgeseg demo: error: --data")


def test_backbone_width_narrows_vgg16_and_keeps_its_layer_names():
    from edgeseg.export._models import backbone_layer_names, build_fcn8
    from edgeseg.runtime import EdgesegError

    narrow = build_fcn8(variant="classic", classes=3, input_size=32, head_width=8, backbone_width=0.125)
    assert narrow.get_layer("block1_conv1").filters == 8 and narrow.get_layer("block5_conv3").filters == 64
    assert all(narrow.get_layer(name) is not None for name in backbone_layer_names())
    assert narrow.output.shape[1:] == (32, 32, 3)
    with pytest.raises(EdgesegError, match="backbone_width"):
        build_fcn8(variant="course", input_size=32, head_width=8, backbone_width=0.5)
