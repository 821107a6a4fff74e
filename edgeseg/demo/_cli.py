"""``edgeseg demo`` and ``edgeseg samples``: the whole chain on generated data, offline.

Imports only argparse at import time; the handlers load the rest (TensorFlow once) when they run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

log = logging.getLogger("edgeseg.demo")


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="train, export, verify, calibrate, segment and benchmark on generated data; writes report.html",
        description="Run the whole chain offline on generated sample data and write a folder with report.html. "
                    "About 2 minutes on 2 idle CPU cores (about 130 CPU-seconds), up to 5 on a busy machine; "
                    "--quick under a minute (about 20 CPU-seconds). Exit 1 if a step failed.",
    )
    demo.add_argument("--out", type=Path, default=Path("edgeseg-demo"),
                      help="output folder, created if missing (default: ./edgeseg-demo)")
    demo.add_argument("--quick", action="store_true",
                      help="tiny sizes and 1 epoch: every step in about a minute, models not useful (default: off)")
    demo.add_argument("--data", type=Path, default=None, metavar="MNIST_DIR",
                      help="local MNIST for the CAE: a folder of IDX .gz files or an .npz "
                           "(default: generated digits, no download)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training (default: 0)")
    demo.set_defaults(func=_run_demo)

    samples = subparsers.add_parser(
        "samples",
        help="regenerate the sample video, image folder, digits and sample models",
        description="Make the sample inputs (same seed, same pixels and masks) and, unless --no-models, train, "
                    "export and verify the small sample models into OUT/models/.",
    )
    samples.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default: ./samples)")
    samples.add_argument("--data", type=Path, default=None, metavar="MNIST_DIR",
                         help="local MNIST for the sample CAE: a folder of IDX .gz files or an .npz "
                              "(default: the generated digits.npz)")
    samples.add_argument("--no-models", action="store_true", help="make only the inputs, not the models (default: both)")
    samples.add_argument("--seed", type=int, default=0, help="seed of everything generated (default: 0)")
    samples.set_defaults(func=_run_samples)


def _run_demo(args: argparse.Namespace) -> int:
    from edgeseg.demo._demo import run_demo

    runner = run_demo(args.out, quick=args.quick, mnist=args.data, seed=args.seed, progress=not args.quiet)
    return _finish(runner, args.out / "report.html")


def _run_samples(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from edgeseg.demo._demo import SAMPLE_MODELS, run_chain
    from edgeseg.sampledata import make_sample_data

    spec = replace(SAMPLE_MODELS.samples, seed=args.seed)
    if args.no_models:
        make_sample_data(args.out, spec=spec)
        log.info("samples: inputs written to %s", args.out)
        return 0
    config = replace(SAMPLE_MODELS, samples=spec, seed=args.seed, mnist=args.data)
    # Training scenes are regenerated from the seed whenever needed: not worth committing.
    with tempfile.TemporaryDirectory(prefix="edgeseg-train-") as train_root:
        runner = run_chain(args.out / "models", config, data_root=args.out, train_root=Path(train_root), stages="models",
                           progress=not args.quiet)
    return _finish(runner, None)


def _finish(runner, page: Path | None) -> int:
    skipped = [r for r in runner.results if r.status == "skipped"]
    total = sum(r.seconds for r in runner.results)
    log.info("%d step(s) ok in %.0f s", sum(r.status == "ok" for r in runner.results), total)
    if page is not None and page.is_file():
        log.info("report: %s", page.resolve())
    if skipped:
        log.warning("%d step(s) skipped: %s", len(skipped), ", ".join(r.name for r in skipped))
    if runner.failed:
        log.error("%d step(s) failed: %s", len(runner.failed), ", ".join(r.name for r in runner.failed))
        return 1
    return 0
