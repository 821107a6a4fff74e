"""``edgeseg tune``: measure which engine configuration runs a model fastest here (registers the subcommand)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="measure the fastest engine configuration for a model on this machine",
        description=(
            "Measure candidate configurations of MODEL on this machine (engine onnxruntime/openvino x precision "
            "f32, bf16 where the CPU has it, int8 with --int8 x threads x batch x latency/throughput), each "
            "with its mask agreement against FP32 onnxruntime, within --seconds (the engine the heuristic would "
            "pick here first: what does not fit the budget is listed as not measured); write a tuning record (machine "
            "fingerprint, model sha256) to the cache. `edgeseg segment --engine auto` and Model(engine='auto') "
            "then run the fastest configuration at the exact bar (>= 99.9% agreement), or the fast bar "
            "(>= 99%) where asked."
        ),
    )
    parser.add_argument("model", type=Path, help="the FP32 .onnx exported by edgeseg")
    parser.add_argument("--int8", type=Path, default=None,
                        help="also try this INT8 .onnx (made by `edgeseg calibrate` from MODEL; default: none)")
    parser.add_argument("--source", default=None,
                        help="frames to measure on: a video or folder of images (default: generated scenes)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget for all candidates (default 60)")
    parser.add_argument("--frames", type=int, default=8, help="frames per pass (default 8)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="record folder (default: $XDG_CACHE_HOME/edgeseg/tuning, i.e. ~/.cache/edgeseg/tuning)")
    parser.add_argument("--fast", action="store_true",
                        help="report the choice at the fast bar (>= 99%% agreement) instead of exact (>= 99.9%%); "
                             "the record holds both")
    parser.add_argument("--precision", choices=("auto", "fp16"), default="auto",
                        help="fp16: measure onnxruntime in fp16 on the GPU next to its fp32 (CUDA); refused in one line "
                             "where onnxruntime has no CUDA (default: auto, the CPU engines' precisions)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display (default: a bar on a terminal, a line every 15 s when piped)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edgeseg.runtime import EngineConfig
    from edgeseg.tune import TuneOptions, tune

    options = TuneOptions(int8=args.int8, source=args.source, seconds=args.seconds, cache=args.cache,
                          frames=args.frames, progress=not args.no_progress and not args.quiet,
                          precision=args.precision)
    record = tune(args.model, options)
    print(f"{'fps':>8}  {'agreement':>9}  configuration")
    for candidate in record["candidates"]:
        config = EngineConfig.from_dict(candidate["config"]).describe()
        if candidate.get("fps") is None:
            print(f"{'-':>8}  {'-':>9}  {config}: {candidate.get('skipped', 'not measured')}")
        else:
            print(f"{candidate['fps']:8.2f}  {100 * candidate['agreement']:8.2f}%  {config}")
    total, measured = len(record["candidates"]), record["measured"]
    left = f"; {total - measured} not measured: raise --seconds (now {args.seconds:g}) to measure them" if measured < total else ""
    print(f"measured {measured} of {total} candidates, the likeliest winners first{left}")
    bar = "fast" if args.fast else "exact"
    choice = record["choice"][bar]
    label = EngineConfig.from_dict(choice).describe() if choice else "none passed the bar (the heuristic runs)"
    print(f"choice at the {bar} bar: {label}\nrecord: {record['path']}")
    return 0
