"""``edgeseg segment ... --ray ADDRESS``: the runtime's command hands its parsed options over to here.

The options are defined by the runtime's ``segment`` parser (so ``--help`` lists them in one
place); the runtime imports this package by name only when ``--ray`` is given.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgeseg.runtime import EdgesegError, stage_table
from edgeseg.scaleout._driver import ClusterOptions, ModelSpec, segment_on_ray
from edgeseg.scaleout._plan import Selection
from edgeseg.scaleout._worker import WriteOptions


def run_from_args(args: argparse.Namespace, *, contract: dict[str, Any] | None = None) -> int:
    """Run the parsed ``edgeseg segment`` options on Ray; ``contract``: the runtime's contract overrides."""
    sources = ([args.source_option] if args.source_option is not None else []) + list(args.source or [])
    if not sources:
        raise EdgesegError("no SOURCE given: pass images, folders, globs, .txt lists or videos (or --source PATH).")
    if args.show:
        raise EdgesegError("--show opens a window on this machine; it does not combine with --ray (drop one).")
    if getattr(args, "inflight", None) is not None:
        raise EdgesegError("--inflight sets the calls in flight of one machine's pipeline; with --ray each worker "
                           "runs one call at a time and --workers sets how many run at once. Drop --inflight.")
    live = [name for name in ("serve", "rotate", "stall_timeout") if getattr(args, name, None) is not None]
    if live:
        raise EdgesegError(f"--{live[0].replace('_', '-')} is for live streams; --ray runs files (images and videos). "
                           "Drop one of them.")
    spec = ModelSpec(args.model, provider=args.provider, optimization=args.optimization, contract=contract,
                     engine=args.engine, precision=args.precision, strict=args.strict)
    cluster = ClusterOptions(address=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker, resume=args.resume,
                             progress=not args.no_progress)
    write = WriteOptions(outputs=frozenset(n.strip() for n in args.write.split(",") if n.strip()), alpha=args.alpha,
                         smooth=args.smooth, codec=args.codec, batch=args.batch or 1)
    select = Selection(stride=args.stride, start=args.start, max_frames=args.max_frames, recursive=args.recursive)
    summary = segment_on_ray(sources, model=spec, out=args.out, cluster=cluster, write=write, select=select)
    if "stage_ms" in summary:
        print(stage_table({**summary, "infer_fps": summary.get("worker_fps", 0.0)}), file=sys.stderr)
    workers = summary.get("workers", {})
    print(f"{summary['frames']} frame(s) on {len(workers)} worker(s); wrote {args.out}/summary.json", file=sys.stderr)
    return 130 if summary["interrupted"] else (1 if summary["ray"]["units_lost"] else 0)
