"""``edgeseg segment ... --ray ADDRESS``: the runtime's command hands its parsed options over to here.

The options are defined by the runtime's ``segment`` parser (so ``--help`` lists them in one
place) and arrive as the same :class:`SegmentOptions` a single-machine run gets; the runtime
imports this package by name only when ``--ray`` is given.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgeseg.runtime import EdgesegError, SegmentOptions, stage_table
from edgeseg.scaleout._driver import ClusterOptions, ModelSpec, segment_on_ray


def run_from_args(args: argparse.Namespace, *, options: SegmentOptions,
                  contract: dict[str, Any] | None = None) -> int:
    """Run the parsed ``edgeseg segment`` on Ray; ``options``: what the runtime built from ``args``;
    ``contract``: the runtime's contract overrides."""
    sources = ([args.source_option] if args.source_option is not None else []) + list(args.source or [])
    if not sources:
        raise EdgesegError("no SOURCE given: pass images, folders, globs, .txt lists or videos (or --source PATH).")
    live = [name for name in ("serve", "rotate", "stall_timeout") if getattr(args, name, None) is not None]
    if live:
        raise EdgesegError(f"--{live[0].replace('_', '-')} is for live streams; --ray runs files (images and videos). "
                           "Drop one of them.")
    cluster = ClusterOptions(address=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker)
    summary = segment_on_ray(sources, model=ModelSpec(args.model, contract=contract), out=args.out, cluster=cluster,
                             options=options)
    if "stage_ms" in summary:
        print(stage_table({**summary, "infer_fps": summary.get("worker_fps", 0.0)}), file=sys.stderr)
    workers = summary.get("workers", {})
    print(f"{summary['frames']} frame(s) on {len(workers)} worker(s); wrote {args.out}/summary.json", file=sys.stderr)
    return 130 if summary["interrupted"] else (1 if summary["ray"]["units_lost"] else 0)
