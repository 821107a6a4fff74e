"""``edgeseg segment ... --ray ADDRESS``: the runtime's command hands its parsed options over to here.

The runtime's ``segment`` parser defines ``--ray``, ``--workers``, ``--cpus-per-worker`` and
``--gpus-per-worker``; :func:`add_arguments` adds the rest of the cluster options to that parser
(``edgeseg.cli`` calls it), so ``edgeseg segment --help`` lists them all. Only argparse at import.

Exit codes are those of a run without Ray: 0 done, 2 a bad option, model, source or output (one
line; also when every frame failed), 130 interrupted, and 1 when the job is not whole (units given
up, outputs not where ``--out`` is, or the job stopped): the summary and the error line say which.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster options beyond ``--ray/--workers/--cpus-per-worker/--gpus-per-worker`` (the runtime's)."""
    group = parser.add_argument_group(
        "cluster: storage, deadlines, fit (--ray only; see README \"Running on a cluster\")")
    group.add_argument("--memory-per-worker", type=float, default=0.0, metavar="GB",
                       help="--ray: memory each worker reserves on its node, checked before the job (default: 0, none)")
    group.add_argument("--chunk", type=int, default=64, metavar="N",
                       help="--ray: images per unit (the grain of scheduling, retry and --resume) (default: 64)")
    group.add_argument("--range-frames", type=int, default=256, metavar="N",
                       help="--ray: video frames per unit (default: 256)")
    group.add_argument("--retries", type=int, default=3, metavar="N",
                       help="--ray: a unit whose worker died, stalled or failed is tried again up to N times "
                            "(default: 3)")
    group.add_argument("--pack", choices=("files", "zip"), default="files",
                       help="--ray: per-frame outputs as one file each (one machine's layout) or one ZIP per unit and "
                            "output (masks/<unit>.zip: far fewer objects in object storage) (default: files)")
    group.add_argument("--unit-timeout", type=float, default=300.0, metavar="S",
                       help="--ray: a unit that shows no progress (no frame finished, no byte moved) for S seconds has "
                            "its worker stopped and goes back to the queue (default: 300)")
    group.add_argument("--placement-timeout", type=float, default=60.0, metavar="S",
                       help="--ray: with no worker alive for S seconds the job stops, finished units kept for "
                            "--resume; with --autoscale also how long to wait for nodes before the job starts "
                            "(default: 60)")
    group.add_argument("--autoscale", action="store_true",
                       help="--ray: the cluster adds nodes on demand: a job that does not fit yet asks for them and "
                            "waits (--placement-timeout) instead of being refused")


def cluster_options(args: argparse.Namespace) -> Any:
    """The :class:`ClusterOptions` of a parsed ``edgeseg segment --ray`` command line."""
    from edgeseg.scaleout._driver import ClusterOptions

    progress = "off" if args.no_progress else ("bar" if sys.stderr.isatty() else "lines")
    return ClusterOptions(address=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker,
                          memory_per_worker_gb=getattr(args, "memory_per_worker", 0.0),
                          chunk=getattr(args, "chunk", 64), range_frames=getattr(args, "range_frames", 256),
                          retries=getattr(args, "retries", 3),
                          pack=getattr(args, "pack", "files"), unit_timeout=getattr(args, "unit_timeout", 300.0),
                          placement_timeout=getattr(args, "placement_timeout", 60.0),
                          autoscale=getattr(args, "autoscale", False), progress=progress)


def run_from_args(args: argparse.Namespace, *, options: Any, contract: dict[str, Any] | None = None) -> int:
    """Run the parsed ``edgeseg segment`` on Ray; ``options``: the runtime's :class:`SegmentOptions` built
    from ``args``; ``contract``: the runtime's contract overrides. Returns the exit code."""
    from edgeseg.runtime import EdgesegError
    from edgeseg.scaleout._driver import ModelSpec, segment_on_ray

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
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        # Ray colours what it prints itself (a "(raylet)" notice on stdout when a node loses a worker): plain text
        # where the output is piped or logged. Read by Ray when it prints, so setting it here is enough.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    summary = segment_on_ray(sources, model=ModelSpec(args.model, contract=contract), out=args.out,
                             cluster=cluster_options(args), options=options)
    print(report(summary, out=args.out), file=sys.stderr)
    ray = summary["ray"]
    if summary["interrupted"]:
        return 130
    if ray["incomplete"]:
        print(f"edgeseg segment: error: the job is not complete: {ray['incomplete']}", file=sys.stderr)
        return 1
    if summary["frames"] == 0 and not summary.get("frames_resumed"):
        # As without Ray: nothing processed (every file broken) is never a success.
        reason = summary.get("first_failure") or "the sources gave no frames"
        raise EdgesegError(f"nothing was processed ({reason}); see {args.out}/frames.jsonl.")
    return 0


def report(summary: dict[str, Any], *, out: str) -> str:
    """What a person reads at the end: frames, wall time and fps, each worker's own fps, Ray's start apart."""
    ray = summary["ray"]
    resumed = f", {summary['frames_resumed']} kept from the earlier run" if summary.get("frames_resumed") else ""
    lines = [f"{summary['frames']} frame(s) done, {summary['frames_failed']} failed{resumed}; "
             f"{summary['fps']:.2f} fps over {summary['wall_s']:.1f} s on {len(summary.get('workers', {}))} worker(s) "
             f"(Ray {'started' if ray['started_here'] else 'joined'} in {ray['start_s']:.1f} s, apart)"]
    for name, worker in sorted(summary.get("workers", {}).items()):
        note = " (died)" if worker["died"] else ""
        lines.append(f"  {name} on {worker['node'] or '?'}: {worker['frames']} frame(s) in {worker['busy_s']:.1f} s "
                     f"busy: {worker['fps']:.1f} fps end to end, {worker['infer_fps']:.1f} fps inference alone{note}")
    engine = f"{summary.get('engine', '?')} ({summary.get('provider', '')}, {summary.get('precision', '')})"
    lines.append(f"engine {engine}; wrote {out.rstrip('/')}/summary.json")
    return "\n".join(lines)
