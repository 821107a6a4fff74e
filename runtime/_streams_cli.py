"""The multi-stream options of ``edgeseg segment`` and the hand-off to :func:`run_streams`.

Imports only argparse at import time (the CLI stays fast); ``segment``'s own command calls
:func:`wants` and, when it says so, :func:`run` instead of the one-source pipeline.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several streams (SRC1 SRC2 ..., or a .txt list of sources with optional name=url lines; "
        "outputs under DIR/<name>/, one summary.json)")
    group.add_argument("--stall-timeout", type=float, default=None, metavar="S",
                       help="live sources: reconnect a stream that sent no frame for S seconds (default: 5)")
    group.add_argument("--rotate", type=float, default=None, metavar="MINUTES",
                       help="cut each stream's overlay video and frames.jsonl into playable MINUTES-long segments "
                            "(default: one file each)")
    group.add_argument("--serve", type=int, default=None, metavar="PORT",
                       help="serve a live page of every stream's overlay, /metrics (Prometheus) and /health on PORT "
                            "(needs pip install 'edgeseg[serve]'; default: off)")
    group.add_argument("--host", default="127.0.0.1",
                       help="address --serve listens on; the page has no authentication (default: 127.0.0.1)")


def sources_of(args: argparse.Namespace) -> list[str]:
    sources = list(args.source or [])
    if args.source_option is not None:
        sources.insert(0, args.source_option)
    return sources


def wants(args: argparse.Namespace) -> bool:
    """True when this run is for :func:`run_streams`: several sources, a stream list, or a streams-only option."""
    sources = sources_of(args)
    if len(sources) > 1 or any(v is not None for v in (args.serve, args.rotate, args.stall_timeout)):
        return True
    if len(sources) == 1 and str(sources[0]).lower().endswith(".txt"):
        from pathlib import Path

        from edgeseg.runtime._multistream import is_stream_list

        return Path(sources[0]).is_file() and is_stream_list(sources[0])
    return False


def run(args: argparse.Namespace, model: Any) -> int:
    """Run the streams; exit 0 when every stream ended well, 1 when one failed or gave up, 130 when stopped."""
    from edgeseg.runtime._multistream import StreamOptions, run_streams
    from edgeseg.runtime.errors import EdgesegError

    if args.resume:
        raise EdgesegError("--resume continues the run of one file source; several streams start afresh: drop "
                           "--resume (--overwrite replaces the run in --out).")
    # Options of a single-source run that a multi-stream run does not honour: refused, never ignored.
    ignored = [flag for flag, value, default in (("--batch", args.batch, None), ("--stride", args.stride, 1),
                                                 ("--start", args.start, 0), ("--recursive", args.recursive, False),
                                                 ("--show", args.show, False), ("--inflight", args.inflight, None))
               if value != default]
    if ignored:
        raise EdgesegError(f"{', '.join(ignored)}: not for a run of several streams (one batch takes the newest "
                           "frame of every stream; the page of --serve shows them). Drop them, or run one source.")
    outputs = tuple(name.strip() for name in args.write.split(",") if name.strip() and name.strip() != "reconstruction")
    options = StreamOptions(outputs=outputs, alpha=args.alpha, codec=args.codec, reconnect=args.reconnect,
                            stall_timeout=args.stall_timeout or 5.0, rotate=args.rotate, max_frames=args.max_frames,
                            smooth=args.smooth, policy=args.policy,
                            overwrite=args.overwrite)
    summary = run_streams(sources_of(args), model=model, out=args.out, options=options, serve=args.serve,
                          host=args.host)
    for name, report in summary["streams"].items():
        print(f"{name:<16} {report['state']:<9} {report['frames']:>7} frames {report['fps']:>7.2f} fps  latency p50 "
              f"{report['latency_ms']['p50']:.0f} ms p95 {report['latency_ms']['p95']:.0f} ms", file=sys.stderr)
    print(f"wrote {args.out}/summary.json", file=sys.stderr)
    if summary["failed"] or summary["error"]:
        return 1
    return 130 if summary["interrupted"] else 0
