"""The whole chain on generated data, offline: what ``edgeseg demo`` and ``edgeseg samples`` run.

Every step calls the typed Python function behind its command (``train_fcn8``, ``export_model``,
``verify_files``, ``calibrate``, ``segment``, ``run_bench``) in this process, so TensorFlow loads
once and a step's result is a value, not a parsed line of output. A failing step is named,
recorded and logged in one line; the steps that do not need its output still run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import write_json_atomic, write_text_atomic
from edgeseg.runtime.progress import Progress
from edgeseg.sampledata import QUICK_SPEC, SampleData, SampleSpec, make_sample_data, make_scene_set

log = logging.getLogger("edgeseg.demo")

# Where each step writes, relative to the demo's folder (the report reads the same names).
FCN8_DIR, CAE_DIR, SEGMENT_DIR = "fcn8", "cae", "segment"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one run. ``FULL`` is the demo (a few minutes), ``QUICK`` the test suite's (under one)."""

    samples: SampleSpec = SampleSpec()
    train_scenes: int = 256
    fcn_epochs: int = 8
    cae_epochs: int = 4
    head_width: int = 64
    backbone_width: float = 0.125
    calibrate_samples: int = 32
    calibrate_rounds: int = 10
    bench_frames: int = 30
    bench_repeats: int = 1
    # Each runner is a fresh process; the Keras ones load TensorFlow each time (the slowest part of a
    # bench), so the demo keeps one Keras runner (plus Keras as the reference) and one round.
    bench_runners: tuple[str, ...] = ("keras-predict", "ort-plain", "opencv-dnn", "openvino", "openvino-int8",
                                      "edgeseg", "edgeseg-int8", "edgeseg-fast")
    bench_keras_reference: bool = True
    bench_ceiling: bool = True
    mnist: Path | None = None
    seed: int = 0

    @property
    def quick(self) -> bool:
        return self.samples == QUICK_SPEC


FULL = DemoConfig(train_scenes=384, fcn_epochs=12, cae_epochs=15)
# The committed sample models train longer than the demo's: they are made once, and used for real.
SAMPLE_MODELS = DemoConfig(train_scenes=512, fcn_epochs=16, cae_epochs=30)
QUICK = DemoConfig(samples=QUICK_SPEC, train_scenes=32, fcn_epochs=1, cae_epochs=1, head_width=16,
                   backbone_width=0.0625, calibrate_samples=8, calibrate_rounds=2, bench_frames=6,
                   # three runners, FP32 onnxruntime as the reference, no ceiling: no TensorFlow process, seconds
                   bench_runners=("ort-plain", "edgeseg", "edgeseg-int8"), bench_keras_reference=False,
                   bench_ceiling=False)


@dataclass
class StepResult:
    """What one step did: ``status`` is ok, failed or skipped; ``detail`` says why in one line."""

    name: str
    title: str
    status: str
    seconds: float = 0.0
    detail: str = ""


class StepFailed(Exception):
    """A step could not do its work; the message is the one line the progress log and the page show."""


@dataclass
class Runner:
    """Runs named steps in order, times them, logs each outcome in one line, and never lets one failure stop
    the rest. ``progress``: the display over the steps (a bar on a terminal, a line now and then when piped)."""

    total: int
    results: list[StepResult] = field(default_factory=list)
    progress: Progress | None = None

    def step(self, name: str, title: str, work: Callable[[], str | None], *, needs: Sequence[str] = ()) -> bool:
        """Run ``work`` unless a needed step did not succeed; True if it succeeded."""
        number = len(self.results) + 1
        prefix = f"demo [{number}/{self.total}] {title}"
        missing = [n for n in needs if not self.ok(n)]
        if missing:
            result = StepResult(name, title, "skipped", detail=f"needs step(s) that did not succeed: {', '.join(missing)}")
        else:
            if self.progress is not None:
                self.progress.note(title)
            started = time.perf_counter()
            try:
                detail = work() or ""
                result = StepResult(name, title, "ok", detail=detail)
            except (StepFailed, EdgesegError) as error:
                result = StepResult(name, title, "failed", detail=str(error))
            except Exception as error:  # a bug in a step must not lose the other steps; say which failed
                log.debug("step %s crashed", name, exc_info=True)
                result = StepResult(name, title, "failed", detail=f"{type(error).__name__}: {error}")
            result.seconds = time.perf_counter() - started
        level = logging.WARNING if result.status == "failed" else logging.INFO
        timing = f" in {result.seconds:.1f} s" if result.status != "skipped" else ""
        log.log(level, "%s: %s%s%s", prefix, result.status.upper(), timing, f" - {result.detail}" if result.detail else "")
        self.results.append(result)
        if self.progress is not None:
            self.progress.update(note=title)
        return result.status == "ok"

    def ok(self, name: str) -> bool:
        return any(r.name == name and r.status == "ok" for r in self.results)

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if r.status == "failed"]


def run_chain(out: Path, config: DemoConfig, *, data_root: Path | None = None, train_root: Path | None = None,
              stages: str = "demo", progress: bool = True) -> Runner:
    """Run the chain into ``out``. ``stages``: ``demo`` (everything) or ``models`` (data, train, slim, export, verify).

    ``data_root`` is where the sample inputs go (default ``out/data``); ``train_root`` where the
    training scenes go (default ``out/data/train``). ``progress``: a bar over the steps on a terminal, a
    line every 15 s when piped (each step's outcome is logged either way).
    """
    data = SampleData.at(data_root or out / "data")
    chain = _Chain(out=out, config=config, data=data, train_data=train_root or data.root / "train")
    demo = stages == "demo"
    total = 14 if demo else 9
    with Progress(total, desc="edgeseg demo" if demo else "edgeseg samples", unit="step", enabled=progress) as shown:
        runner = Runner(total=total, progress=shown)
        chain.models(runner, slim=not demo)
        if demo:
            chain.deploy(runner)
    runner.progress = None
    return runner


@dataclass(frozen=True)
class _Chain:
    """The steps of one run: where each reads and writes, and the sizes it uses."""

    out: Path
    config: DemoConfig
    data: SampleData
    train_data: Path

    @property
    def fcn(self) -> Path:
        return self.out / FCN8_DIR

    @property
    def cae(self) -> Path:
        return self.out / CAE_DIR

    def models(self, runner: Runner, *, slim: bool) -> None:
        """Data, training, (slimming), export and verification of both models."""
        runner.step("data", "make sample data", self.make_data)
        runner.step("train-fcn8", "train FCN-8 on scenes", self.train_fcn8, needs=["data"])
        runner.step("train-cae", "train the CAE on digits", self.train_cae, needs=["data"])
        folders = (("fcn8", self.fcn), ("cae", self.cae))
        if slim:
            for model, folder in folders:
                runner.step(f"slim-{model}", f"drop {model}'s optimizer state from model.keras",
                            lambda folder=folder: _drop_optimizer(folder / "model.keras"), needs=[f"train-{model}"])
        for model, folder in folders:
            runner.step(f"export-{model}", f"export {model} to ONNX", lambda folder=folder: _export(folder),
                        needs=[f"train-{model}"])
        runner.step("verify-fcn8", "verify fcn8 layer by layer",
                    lambda: _verify(self.fcn, images=self.data.scenes / "images"), needs=["export-fcn8"])
        runner.step("verify-cae", "verify cae layer by layer", lambda: _verify(self.cae, random=4),
                    needs=["export-cae"])

    def deploy(self, runner: Runner) -> None:
        """INT8 calibration, segmentation of the video and the folder, the benchmark and the page."""
        runner.step("calibrate", "calibrate fcn8 to INT8", self.calibrate, needs=["export-fcn8"])
        for source_name, source in (("video", self.data.video), ("folder", self.data.folder)):
            for precision, model_file, needed in (("fp32", "model.onnx", "export-fcn8"),
                                                  ("int8", "model.int8.onnx", "calibrate")):
                target = self.out / SEGMENT_DIR / f"{source_name}-{precision}"
                runner.step(f"segment-{source_name}-{precision}", f"segment the {source_name} with {precision.upper()}",
                            lambda source=source, model=self.fcn / model_file, target=target: _segment(source, model, target),
                            needs=[needed])
        runner.step("bench", "benchmark the runners", lambda: self.bench(with_int8=runner.ok("calibrate")),
                    needs=["export-fcn8", "train-fcn8"])

        def report() -> str:
            from edgeseg.demo._report import write_report

            return str(write_report(self.out, runner.results, config=self.config,
                                    running=StepResult("report", "write report.html", "ok")))

        runner.step("report", "write report.html", report)

    def make_data(self) -> str:
        spec = self.config.samples
        make_sample_data(self.data.root, spec=spec)
        make_scene_set(self.train_data / "images", self.train_data / "masks", count=self.config.train_scenes,
                       size=spec.size, classes=spec.classes, seed=spec.seed + 10)
        return (f"{spec.video_frames}-frame {spec.size}x{spec.size} video, {spec.folder_images} images + 3 bad files, "
                f"{self.config.train_scenes} training scenes, {spec.digits_train} digits")

    def train_fcn8(self) -> str:
        from edgeseg.export import FCN8Options, train_fcn8

        config, spec = self.config, self.config.samples
        train_fcn8(data=self.train_data, out=self.fcn, options=FCN8Options(
            epochs=config.fcn_epochs, seed=config.seed, variant="classic", head_width=config.head_width,
            backbone_width=config.backbone_width, input_size=spec.size, classes=spec.classes, batch_size=16,
            learning_rate=2e-3))
        return _history_line(self.fcn / "history.json")

    def train_cae(self) -> str:
        from edgeseg.export import CAEOptions, train_cae

        train_cae(data=self.config.mnist or self.data.digits, out=self.cae,
                  options=CAEOptions(epochs=self.config.cae_epochs, seed=self.config.seed, learning_rate=3e-3))
        return _history_line(self.cae / "history.json")

    def calibrate(self) -> str:
        from edgeseg.calibration import CalibrateOptions, calibrate

        options = CalibrateOptions(report=self.fcn / "calibrate.json", chart=self.fcn / "calibrate.png",
                                   samples=self.config.calibrate_samples, timing_rounds=self.config.calibrate_rounds)
        report = calibrate(self.fcn / "model.onnx", self.data.scenes / "images", masks=self.data.scenes / "masks",
                           output=self.fcn / "model.int8.onnx", options=options)
        return (f"mIoU FP32 {report['fp32']['miou']:.3f} -> INT8 {report['int8']['miou']:.3f}, "
                f"agreement {report['agreement']:.3f}, speedup {report['speedup']:.2f}x")

    def bench(self, *, with_int8: bool) -> str:
        from edgeseg.bench import BenchConfig, markdown_table, run_bench

        config = self.config
        runners = tuple(r for r in config.bench_runners if with_int8 or not r.endswith("-int8"))
        report = run_bench(BenchConfig(
            model=self.fcn / "model.onnx", keras=self.fcn / "model.keras" if config.bench_keras_reference else None,
            source=str(self.data.video), int8=self.fcn / "model.int8.onnx" if with_int8 else None, runners=runners,
            frames=config.bench_frames, repeats=config.bench_repeats, work_dir=self.out / "bench",
            measure_ceiling=config.bench_ceiling))
        report["notes"] = []
        write_json_atomic(self.out / "bench.json", report)
        write_text_atomic(self.out / "bench.md", markdown_table(report))
        best = max(report["runners"].items(), key=lambda kv: kv[1].get("fps") or 0)
        return f"{len(report['runners'])} runners; fastest {best[0]} at {best[1]['fps']:.1f} frames/s"


def _drop_optimizer(path: Path) -> str:
    # A committed sample needs the weights, not Adam's two moments per weight (3x the size).
    from edgeseg.export import load_model, save_model

    before = path.stat().st_size
    model, record = load_model(path, compile=False)
    save_model(model, path, record)
    return f"{before / 1e6:.1f} MB -> {path.stat().st_size / 1e6:.1f} MB"


def _export(folder: Path) -> str:
    from edgeseg.export import export_model

    result = export_model(folder / "model.keras", folder / "model.onnx")
    return f"{result.nodes} nodes, kind {result.contract.kind}"


def _verify(folder: Path, *, images: Path | None = None, random: int = 4) -> str:
    from edgeseg.export import VerifyRequest, verify_files

    report = verify_files(folder / "model.keras", folder / "model.onnx",
                          request=VerifyRequest(images=images, random=random))
    write_json_atomic(folder / "verify.json", report.to_dict())
    if not report.ok:
        raise StepFailed(f"layer `{report.first_failure}` is out of tolerance (see {folder / 'verify.json'})")
    output = report.to_dict().get("output") or {}
    return f"{len(report.to_dict().get('layers') or [])} layers, output max |err| {output.get('max_abs_err', float('nan')):.2e}"


def _segment(source: Path, model: Path, target: Path) -> str:
    from edgeseg.runtime import SegmentOptions, segment

    summary = segment(source, model=model, out=target, options=SegmentOptions(overwrite=True))  # a rerun replaces it
    return f"{summary['frames']} frames, {summary['frames_failed']} failed, {summary.get('fps') or 0:.1f} frames/s"


def _history_line(path: Path) -> str:
    history = _read_json(path) if path.is_file() else {}
    losses = history.get("val_loss") or []
    line = f"{len(losses)} epoch(s), final val_loss {losses[-1]:.4f}" if losses else ""
    ious = history.get("best_val_iou")
    if ious and all(isinstance(v, (int, float)) for v in ious):
        line += f", val IoU per class {', '.join(f'{v:.2f}' for v in ious)}"
    return line


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StepFailed(f"cannot read `{path}`: {error}") from None


@contextlib.contextmanager
def _quiet_tensorflow():
    # TensorFlow's C++ logs go to stderr before Python logging exists; the CLI run is what a user reads.
    previous = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


def run_demo(out: str | os.PathLike, *, quick: bool = False, mnist: str | os.PathLike | None = None,
             seed: int = 0, progress: bool = True) -> Runner:
    """Train, export, verify, calibrate, segment and benchmark on generated data; write ``out/report.html``.

    Example::

        runner = run_demo("edgeseg-demo", quick=True)
        print([r.status for r in runner.results])   # the page is edgeseg-demo/report.html
    """
    out = Path(out)
    config = QUICK if quick else FULL
    config = replace(config, seed=seed, samples=replace(config.samples, seed=seed),
                     mnist=Path(mnist) if mnist is not None else None)
    if config.mnist is not None and not config.mnist.exists():
        raise EdgesegError(f"--data `{config.mnist}` not found: expected a folder of MNIST IDX .gz files or an .npz.")
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_tensorflow():
        return run_chain(out, config, progress=progress)
