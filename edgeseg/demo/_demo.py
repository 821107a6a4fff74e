"""The whole chain on generated data, offline: what ``edgeseg demo`` and ``edgeseg samples`` run.

Every step calls another package through its own command line, in this process
(``edgeseg.cli.main([...])``), so TensorFlow loads once and each step does exactly what a user
typing that command would get. A failing step is named, recorded and logged in one line; the
steps that do not need its output still run. A step whose command is not in this build (its
package has not landed) is skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeseg.sampledata import QUICK_SPEC, SampleData, SampleSpec, make_sample_data, make_scene_set
from edgeseg.runtime.errors import EdgesegError

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
    bench_repeats: int = 2
    mnist: Path | None = None
    seed: int = 0

    @property
    def quick(self) -> bool:
        return self.samples == QUICK_SPEC


FULL = DemoConfig(train_scenes=384, fcn_epochs=12, cae_epochs=15)
# The committed sample models train longer than the demo's: they are made once, and used for real.
SAMPLE_MODELS = DemoConfig(train_scenes=512, fcn_epochs=16, cae_epochs=30)
QUICK = DemoConfig(samples=QUICK_SPEC, train_scenes=32, fcn_epochs=1, cae_epochs=1, head_width=16,
                   backbone_width=0.0625, calibrate_samples=8, calibrate_rounds=2, bench_frames=6, bench_repeats=1)


@dataclass
class StepResult:
    """What one step did: ``status`` is ok, failed or skipped; ``detail`` says why in one line."""

    name: str
    title: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    command: str = ""


class StepFailed(Exception):
    """A step could not do its work; the message is the one line the progress log and the page show."""


@dataclass
class Runner:
    """Runs named steps in order, times them, logs progress, and never lets one failure stop the rest."""

    total: int
    commands: frozenset[str]
    results: list[StepResult] = field(default_factory=list)

    def step(self, name: str, title: str, work: Callable[[], str | None], *, needs: Sequence[str] = (),
             command: str | None = None) -> bool:
        """Run ``work`` unless a needed step did not succeed or ``command`` is absent; True if it succeeded."""
        number = len(self.results) + 1
        prefix = f"demo [{number}/{self.total}] {title}"
        missing = [n for n in needs if not self.ok(n)]
        if command is not None and command not in self.commands:
            result = StepResult(name, title, "skipped",
                                detail=f"`edgeseg {command}` is not in this build, so this step cannot run")
        elif missing:
            result = StepResult(name, title, "skipped", detail=f"needs step(s) that did not succeed: {', '.join(missing)}")
        else:
            log.info("%s ...", prefix)
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
        return result.status == "ok"

    def ok(self, name: str) -> bool:
        return any(r.name == name and r.status == "ok" for r in self.results)

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if r.status == "failed"]


def available_commands() -> frozenset[str]:
    """The subcommands this build of ``edgeseg`` has (a package that has not landed has none)."""
    from edgeseg.cli import build_parser

    return frozenset(_subparsers(build_parser()))


def edgeseg(*args: str | os.PathLike) -> None:
    """Run ``edgeseg ARGS`` in this process; raise :class:`StepFailed` naming the command if it fails."""
    from edgeseg.cli import main

    argv = [str(a) for a in args]
    shown = "edgeseg " + " ".join(argv)
    log.info("  $ %s", shown)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse rejects the options: the command line changed under us
        code = exit_.code if isinstance(exit_.code, int) else 2
    if code != 0:
        raise StepFailed(f"`{shown}` exited with status {code}")


def option_supported(command: str, option: str) -> bool:
    """Whether ``edgeseg COMMAND`` (the first word of ``command``) knows ``option``."""
    from edgeseg.cli import build_parser

    words = command.split()
    parser = _subparsers(build_parser()).get(words[0])
    for word in words[1:]:
        parser = _subparsers(parser).get(word) if parser else None
    if parser is None:
        return False
    return any(option in action.option_strings for action in parser._actions)


def run_chain(out: Path, config: DemoConfig, *, data_root: Path | None = None, train_root: Path | None = None,
              stages: str = "demo") -> Runner:
    """Run the chain into ``out``. ``stages``: ``demo`` (everything) or ``models`` (data, train, slim, export, verify).

    ``data_root`` is where the sample inputs go (default ``out/data``); ``train_root`` where the
    training scenes go (default ``out/data/train``).
    """
    data = SampleData.at(data_root or out / "data")
    train_data = train_root or data.root / "train"
    fcn, cae, seg = out / FCN8_DIR, out / CAE_DIR, out / SEGMENT_DIR
    demo = stages == "demo"
    runner = Runner(total=14 if demo else 9, commands=available_commands())

    def make_data() -> str:
        make_sample_data(data.root, spec=config.samples)
        spec = config.samples
        make_scene_set(train_data / "images", train_data / "masks", count=config.train_scenes, size=spec.size,
                       classes=spec.classes, seed=spec.seed + 10)
        return (f"{spec.video_frames}-frame {spec.size}x{spec.size} video, {spec.folder_images} images + 3 bad files, "
                f"{config.train_scenes} training scenes, {spec.digits_train} digits")

    runner.step("data", "make sample data", make_data)

    def train_fcn8() -> str:
        spec = config.samples
        args = ["train", "fcn8", "--data", train_data, "--out", fcn, "--epochs", config.fcn_epochs,
                "--seed", config.seed, "--variant", "classic", "--head-width", config.head_width,
                "--input-size", spec.size, "--classes", spec.classes, "--batch-size", 16, "--learning-rate", 2e-3]
        if option_supported("train fcn8", "--backbone-width"):
            args += ["--backbone-width", config.backbone_width]
        edgeseg(*args)
        return _history_line(fcn / "history.json")

    def train_cae() -> str:
        source = config.mnist or data.digits
        edgeseg("train", "cae", "--data", source, "--out", cae, "--epochs", config.cae_epochs, "--seed", config.seed,
                "--learning-rate", 3e-3)
        return _history_line(cae / "history.json")

    runner.step("train-fcn8", "train FCN-8 on scenes", train_fcn8, needs=["data"], command="train")
    runner.step("train-cae", "train the CAE on digits", train_cae, needs=["data"], command="train")
    if not demo:
        for model, folder in (("fcn8", fcn), ("cae", cae)):
            runner.step(f"slim-{model}", f"drop {model}'s optimizer state from model.keras",
                        lambda folder=folder: _drop_optimizer(folder / "model.keras"), needs=[f"train-{model}"])
    for model, folder in (("fcn8", fcn), ("cae", cae)):
        runner.step(f"export-{model}", f"export {model} to ONNX",
                    lambda folder=folder: edgeseg("export", folder / "model.keras", "-o", folder / "model.onnx"),
                    needs=[f"train-{model}"], command="export")
    runner.step("verify-fcn8", "verify fcn8 layer by layer",
                lambda: _verify(fcn, "--images", data.scenes / "images"), needs=["export-fcn8"], command="verify")
    runner.step("verify-cae", "verify cae layer by layer",
                lambda: _verify(cae, "--random", 4), needs=["export-cae"], command="verify")
    if not demo:
        return runner

    def calibrate() -> str:
        edgeseg("calibrate", fcn / "model.onnx", "--data", data.scenes / "images", "--masks", data.scenes / "masks",
                "-o", fcn / "model.int8.onnx", "--report", fcn / "calibrate.json", "--chart", fcn / "calibrate.png",
                "--samples", config.calibrate_samples, "--rounds", config.calibrate_rounds)
        report = _read_json(fcn / "calibrate.json")
        return (f"mIoU FP32 {report['fp32']['miou']:.3f} -> INT8 {report['int8']['miou']:.3f}, "
                f"agreement {report['agreement']:.3f}, speedup {report['speedup']:.2f}x")

    runner.step("calibrate", "calibrate fcn8 to INT8", calibrate, needs=["export-fcn8"], command="calibrate")
    for source_name, source in (("video", data.video), ("folder", data.folder)):
        for precision, model_file, needed in (("fp32", "model.onnx", "export-fcn8"), ("int8", "model.int8.onnx", "calibrate")):
            target = seg / f"{source_name}-{precision}"
            runner.step(f"segment-{source_name}-{precision}", f"segment the {source_name} with {precision.upper()}",
                        lambda source=source, model_file=model_file, target=target: _segment(source, fcn / model_file, target),
                        needs=[needed], command="segment")

    def bench() -> str:
        args = ["bench", "--model", fcn / "model.onnx", "--keras", fcn / "model.keras", "--source", data.video,
                "--frames", config.bench_frames, "--repeats", config.bench_repeats, "--json", out / "bench.json",
                "--markdown", out / "bench.md", "--work-dir", out / "bench"]
        if runner.ok("calibrate"):
            args += ["--int8", fcn / "model.int8.onnx"]
        if config.quick:  # three runners and no ceiling: the whole comparison stays a few seconds
            args += ["--runners", "ort-plain,edgeseg" + (",edgeseg-int8" if runner.ok("calibrate") else ""), "--no-ceiling"]
        edgeseg(*args)
        report = _read_json(out / "bench.json")
        best = max(report["runners"].items(), key=lambda kv: kv[1].get("fps") or 0)
        return f"{len(report['runners'])} runners; fastest {best[0]} at {best[1]['fps']:.1f} frames/s"

    runner.step("bench", "benchmark the runners", bench, needs=["export-fcn8", "train-fcn8"], command="bench")

    def report() -> str:
        from edgeseg.demo._report import write_report

        page = write_report(out, runner.results + [StepResult("report", "write report.html", "ok")], config=config)
        return str(page)

    runner.step("report", "write report.html", report)
    return runner


def _drop_optimizer(path: Path) -> str:
    # A committed sample needs the weights, not Adam's two moments per weight (3x the size).
    from edgeseg.export import load_model, save_model

    before = path.stat().st_size
    model, record = load_model(path, compile=False)
    save_model(model, path, record)
    return f"{before / 1e6:.1f} MB -> {path.stat().st_size / 1e6:.1f} MB"


def _verify(folder: Path, *inputs: str | os.PathLike) -> str:
    report_path = folder / "verify.json"
    try:
        edgeseg("verify", folder / "model.keras", folder / "model.onnx", *inputs, "--report", report_path)
    finally:
        report = _read_json(report_path) if report_path.is_file() else None
    output = report.get("output", {}) if report else {}
    return (f"{len(report.get('layers', []))} layers, output max |err| {output.get('max_abs_err', float('nan')):.2e}"
            if report else "")


def _segment(source: Path, model: Path, target: Path) -> str:
    edgeseg("segment", source, "--model", model, "--out", target, "--no-progress", "--overwrite")  # a rerun replaces it
    summary = _read_json(target / "summary.json")
    return f"{summary.get('frames')} frames, {summary.get('frames_failed')} failed, {summary.get('fps', 0):.1f} frames/s"


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


def _subparsers(parser: argparse.ArgumentParser | None) -> dict[str, argparse.ArgumentParser]:
    for action in (parser._actions if parser else []):
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


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
             seed: int = 0) -> Runner:
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
        return run_chain(out, config)
