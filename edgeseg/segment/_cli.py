"""``edgeseg segment``: one command for one source or many; the runtime's pipeline runs them all.

Imports only argparse at import time (``edgeseg --help`` stays fast). Every option means the same for
every kind of source; the pipeline refuses, in one line, an option that cannot apply to a source.
``--ray`` hands the same :class:`SegmentOptions` to :mod:`edgeseg.scaleout`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

_EPILOG = """\
SOURCE is an image, a folder (sorted; --recursive for subfolders), a glob in quotes, a .txt
file listing paths or sources, a video file, a webcam index (0) or a stream URL (rtsp://,
http://, tcp://), optionally named: door=rtsp://cam/s. One SOURCE writes into --out:
masks/<name>.png (palette-indexed class ids), overlay/<name>.png (images) or overlay.mp4
(videos and streams), frames.jsonl (one line per frame) and summary.json. Several sources
(or a .txt list naming streams or videos, or a folder of videos) write --out/<name>/ each and
one --out/summary.json; live streams are batched into one inference call per round.
The records' fields are documented in docs/records.md (schema 2).

A model exported by `edgeseg export` carries its preprocessing; for an ONNX file without the
edgeseg contract, pass --kind, --input-size and --classes (plus --color, --layout, --scale,
--mean, --std, --resize where the defaults are wrong).

An --out that already holds a run is refused: pass --overwrite to replace that run's outputs
(your own files there stay) or --resume to continue an interrupted run (files: finished frames
are kept; streams: go on with new files numbered after the earlier ones).
Exit codes: 0 every source ended well, 1 a source failed or a stream gave up, 2 a user error
(one line), 130 stopped by Ctrl-C or SIGTERM (every output valid).
onnxruntime itself writes a device id under $XDG_CACHE_HOME (or ~/.cache)/Microsoft/DeveloperTools
when it is imported; edgeseg writes nothing outside --out but the disk queues of a --zones file's
event sinks (under $XDG_CACHE_HOME/edgeseg/events, or where a sink's "queue" says).

examples:
  edgeseg segment clip.mp4 --model fcn8.onnx --out runs/clip --smooth 0.5
  edgeseg segment door=rtsp://cam1/s yard=rtsp://cam2/s --model fcn8.onnx --out site --rotate 60 --serve 8080
  edgeseg segment door=rtsp://cam1/s --model fcn8.onnx --out site --zones zones.json --clips 5,10 --write jsonl,rle"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images, folders, videos and streams with an ONNX model",
        description="Run an ONNX segmentation or autoencoder model on images, folders, videos, webcams "
                    "and stream URLs — one or many in one run — with OpenCV + onnxruntime (or OpenVINO); "
                    "write masks, overlays, frames.jsonl and summary.json.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", nargs="*", metavar="SOURCE",
                        help="image, folder, glob, .txt list, video file, webcam index or stream URL, optionally "
                             "name=SOURCE; several: one run over all of them")
    parser.add_argument("--source", dest="source_option", metavar="PATH",
                        help="the same as SOURCE (for scripts that name every option)")
    parser.add_argument("--model", required=True, metavar="FILE", help="the .onnx model (required)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder, created if missing (required)")
    _inference(parser)
    _frames(parser)
    _outputs(parser)
    _streams(parser)
    _decisions(parser)
    _contract(parser)
    _cluster(parser)
    parser.set_defaults(func=_run)


def _inference(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("inference")
    run.add_argument("--engine", choices=("onnxruntime", "openvino", "auto"), default=None,
                     help="inference engine: onnxruntime, openvino (needs pip install 'edgeseg[openvino]'; "
                          "bf16 on CPUs that have it, several times faster there), or auto: what `edgeseg tune` "
                          "measured fastest here, else openvino on a bf16 CPU with openvino installed and no GPU, "
                          "else onnxruntime; --provider other than auto, --optimization or --strict mean "
                          "onnxruntime (default: auto)")
    run.add_argument("--precision", choices=("auto", "f32", "bf16", "fp16"), default="auto",
                     help="auto (each engine's default: OpenVINO bf16 where the CPU has it, onnxruntime fp32), f32 or "
                          "bf16 (openvino engine; bf16 refused on a CPU without AMX or AVX512-BF16), or fp16 "
                          "(onnxruntime on an NVIDIA GPU, --provider cuda or tensorrt; refused in one line where "
                          "onnxruntime has no CUDA) (default: auto)")
    run.add_argument("--provider", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto",
                     help="onnxruntime provider: auto uses CUDA when it works, else the CPU (default: auto); "
                          "tensorrt keeps its built engines under the XDG cache")
    run.add_argument("--strict", action="store_true",
                     help="with --provider cuda/tensorrt: fail at start if any node would run on the CPU")
    run.add_argument("--threads", type=int, default=None, metavar="N",
                     help="inference threads (default: onnxruntime every core on machines with 2 or fewer, else all "
                          "but one; openvino every core; 0: the engine's own choice). On a machine where another "
                          "process keeps a core busy, --threads 1 is often faster: measure with edgeseg bench")
    run.add_argument("--optimization", choices=("all", "extended", "basic", "disable"), default="all",
                     help="onnxruntime graph optimization level (default: all)")
    run.add_argument("--batch", type=int, default=None, metavar="N",
                     help="most frames of one file source per inference call (a live source gives its newest frame, "
                          "and one call takes a frame of every stream that has one); with --engine openvino, > 1 "
                          "also compiles for throughput (default: the batch of the `edgeseg tune` record that "
                          "--engine auto runs, else 64 for autoencoders, else 1)")
    run.add_argument("--inflight", type=int, default=None, metavar="N",
                     help="inference calls in flight at once on files, overlapped with decoding and writing, frames "
                          "kept in order; > 1 with --engine openvino compiles for throughput (default: the model's "
                          "streams, i.e. several for --engine openvino with --batch > 1, else 1; live sources: 1)")


def _frames(parser: argparse.ArgumentParser) -> None:
    sel = parser.add_argument_group("frames")
    sel.add_argument("--recursive", action="store_true", help="include subfolders of a SOURCE folder (default: off)")
    sel.add_argument("--stride", type=int, default=1, metavar="N",
                     help="take every N-th frame or file of file sources (default: 1)")
    sel.add_argument("--start", type=int, default=0, metavar="N",
                     help="skip the first N frames or files of file sources (default: 0)")
    sel.add_argument("--max-frames", type=int, default=None, metavar="N",
                     help="stop each source after N frames (default: all)")


def _outputs(parser: argparse.ArgumentParser) -> None:
    outp = parser.add_argument_group("outputs")
    outp.add_argument("--write", default="masks,overlay,reconstruction,jsonl", metavar="LIST",
                      help="comma-separated outputs to write: masks, overlay, reconstruction (autoencoders), jsonl, "
                           "and, not by default, the vector forms of each mask: polygons (polygons/<name>.json: each "
                           "class's regions as polygons with their holes, simplified by --polygon-tolerance) and rle "
                           "(rle/<name>.json: each class as COCO RLE, decodable by pycocotools), both with each "
                           "class's connected regions (area, bbox, centroid); a source of images also gets one COCO "
                           "coco.json (RLE with rle, else polygons); summary.json is always written "
                           "(default: masks,overlay,reconstruction,jsonl)")
    outp.add_argument("--polygon-tolerance", type=float, default=0.5, metavar="PX",
                      help="--write polygons: no point of a simplified outline is farther than PX pixels from the "
                           "traced one; 0.5 rasterizes back to the mask with IoU >= 0.99 for regions ~10 px wide and "
                           "more, 0 keeps every corner (exact) (default: 0.5)")
    outp.add_argument("--alpha", type=float, default=0.5, help="overlay opacity, 0..1 (default: 0.5)")
    outp.add_argument("--smooth", type=float, default=0.0, metavar="W",
                      help="videos/streams: weight of earlier frames' class probabilities, 0..1, against flicker; "
                           "restarted after a reconnect (default: 0, off)")
    outp.add_argument("--codec", choices=("auto", "avc1", "ffmpeg", "mp4v"), default="auto",
                      help="overlay video encoder: auto tries ffmpeg libx264 (imageio-ffmpeg), then OpenCV avc1, then "
                           "mp4v (default: auto)")
    outp.add_argument("--rotate", type=float, default=None, metavar="MINUTES",
                      help="cut each source's overlay video and frames.jsonl into numbered MINUTES-long files, each "
                           "closed on time (also while a stream is down), so a day-long run is a list of playable "
                           "files (default: one file each)")
    outp.add_argument("--show", action="store_true",
                      help="show overlays in a window (one source; needs an OpenCV with a GUI; default: off)")
    outp.add_argument("--no-progress", action="store_true",
                      help="no progress bar or live fps line (default: a bar on a terminal, a log line every few "
                           "seconds when stderr is piped)")
    outp.add_argument("--overwrite", action="store_true",
                      help="--out already holds a run: delete that run's outputs first (default: refuse)")
    outp.add_argument("--resume", action="store_true",
                      help="--out holds an interrupted run: continue it, keeping finished frames of files and going "
                           "on with streams (default: refuse)")


def _streams(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live sources (webcams and stream URLs)")
    group.add_argument("--policy", choices=("drop-old", "queue-all"), default="drop-old",
                       help="keep only the newest frame (drop-old) or queue every frame, 32 at most (default: drop-old)")
    group.add_argument("--reconnect", type=int, default=5, metavar="N",
                       help="reconnect attempts in a row, with backoff, before a stream gives up (default: 5)")
    group.add_argument("--open-timeout", type=float, default=5.0, metavar="S",
                       help="seconds one attempt to open a stream may take; streams open in parallel (default: 5)")
    group.add_argument("--stall-timeout", type=float, default=5.0, metavar="S",
                       help="a stream that sends no frame for S seconds counts a stall and is reconnected (default: 5)")
    group.add_argument("--serve", type=int, default=None, metavar="PORT",
                       help="serve a live page of every source's newest overlay, /metrics (Prometheus) and /health on "
                            "PORT (0: any free port; needs pip install 'edgeseg[serve]'; default: off)")
    group.add_argument("--host", default="127.0.0.1",
                       help="address --serve listens on; the page has no authentication (default: 127.0.0.1)")


def _decisions(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("zones, rules and events (README \"From masks to decisions\")")
    group.add_argument("--zones", metavar="FILE",
                       help="a zones/rules file (JSON, or YAML with pip install 'edgeseg[events]'): named polygons in "
                            "pixels or fractions of the frame, optionally per source (\"streams\"); every frame's "
                            "record gets each zone's class fractions and largest regions, and the overlay shows the "
                            "zones. Its rules (a class in a zone past a fraction or area, held \"for\" seconds, "
                            "ended after \"clear_after\") raise events: --out/events.jsonl, snapshots/<id>.jpg, the "
                            "file's sinks (MQTT, webhook, command; queued on disk, under $XDG_CACHE_HOME/edgeseg/events "
                            "unless a sink names its \"queue\", while a receiver is down), the live page and "
                            "/metrics. A mistake in the file stops the run at start, naming the line and field. With "
                            "--ray: a file without rules (zone statistics only) (default: none)")
    group.add_argument("--clips", metavar="BEFORE,AFTER",
                       help="with --zones rules, on videos and streams: write clips/<event id>.mp4 (H.264) from "
                            "BEFORE seconds before each event's start to AFTER seconds after it, cut from a ring "
                            "buffer of encoded frames (default: no clips)")


def _clips(text: str | None) -> tuple[float, float] | None:
    from edgeseg.runtime import EdgesegError

    if text is None:
        return None
    try:
        before, after = (float(part) for part in text.split(","))
    except ValueError:
        raise EdgesegError(f"--clips expects BEFORE,AFTER in seconds (e.g. 5,10), got {text!r}.") from None
    return before, after


def _contract(parser: argparse.ArgumentParser) -> None:
    con = parser.add_argument_group("contract (only for ONNX files without the edgeseg contract, or to override it)")
    con.add_argument("--kind", choices=("segmentation", "autoencoder"), help="what the model computes")
    con.add_argument("--input-size", metavar="HxW", help="model input size, e.g. 224 or 224x224")
    con.add_argument("--classes", metavar="N|NAMES", help="number of classes, or their names comma-separated")
    con.add_argument("--color", choices=("RGB", "BGR", "GRAY"), help="channel order the model expects")
    con.add_argument("--layout", choices=("NHWC", "NCHW"), help="input tensor layout")
    con.add_argument("--scale", type=float, help="pixel scale before mean/std, e.g. 0.00392156862745098 (1/255)")
    con.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted after scaling")
    con.add_argument("--std", metavar="S[,S,S]", help="per-channel std divided by after the mean")
    con.add_argument("--resize", choices=("stretch", "letterbox"), help="how frames are fitted to the input size")


def _cluster(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group("cluster (Ray; pip install 'edgeseg[ray]'; see README \"Running on a cluster\")")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="run on Ray: local (a Ray of its own, even beside a running cluster), auto (RAY_ADDRESS / "
                          "the running cluster), host:port or ray://host:port. SOURCE, --model and --out may then be "
                          "object-store URIs (s3://, gs://, az://; pip install 'edgeseg[s3]' and alike)")
    ray.add_argument("--workers", type=int, default=2, metavar="N", help="--ray: actors, each with its own model (default: 2)")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                     help="--ray: CPUs (= inference threads) per actor (default: 1)")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="--ray: GPUs per actor (default: 0)")
    ray.add_argument("--memory-per-worker", type=float, default=0.0, metavar="GB",
                     help="--ray: memory each worker reserves on its node, checked before the job (default: 0, none)")
    ray.add_argument("--chunk", type=int, default=64, metavar="N",
                     help="--ray: images per unit (the grain of scheduling, retry and --resume) (default: 64)")
    ray.add_argument("--range-frames", type=int, default=256, metavar="N",
                     help="--ray: video frames per unit (default: 256)")
    ray.add_argument("--retries", type=int, default=3, metavar="N",
                     help="--ray: a unit whose worker died, stalled or failed is tried again up to N times (default: 3)")
    ray.add_argument("--pack", choices=("files", "zip"), default="files",
                     help="--ray: per-frame outputs as one file each (one machine's layout) or one ZIP per unit and "
                          "output (masks/<unit>.zip: far fewer objects in object storage) (default: files)")
    ray.add_argument("--unit-timeout", type=float, default=300.0, metavar="S",
                     help="--ray: a unit that shows no progress (no frame finished, no byte moved) for S seconds has "
                          "its worker stopped and goes back to the queue (default: 300)")
    ray.add_argument("--placement-timeout", type=float, default=60.0, metavar="S",
                     help="--ray: with no worker alive for S seconds the job stops, finished units kept for --resume; "
                          "with --autoscale also how long to wait for nodes before the job starts (default: 60)")
    ray.add_argument("--autoscale", action="store_true",
                     help="--ray: the cluster adds nodes on demand: a job that does not fit yet asks for them and "
                          "waits (--placement-timeout) instead of being refused")


def _run(args: argparse.Namespace) -> int:
    from edgeseg.runtime import EdgesegError, SegmentOptions, display_path, require_gpu_fp16, segment, stage_table

    sources = ([args.source_option] if args.source_option is not None else []) + list(args.source or [])
    if not sources:
        raise EdgesegError("no SOURCE given: pass an image, folder, video, webcam index or URL (or --source PATH).")
    if args.precision == "fp16":  # the GPU path: refused before --out is claimed or a cluster job is planned
        require_gpu_fp16("segment --precision fp16")
    options = SegmentOptions(
        outputs=tuple(name.strip() for name in args.write.split(",") if name.strip()),
        batch=args.batch, stride=args.stride, start=args.start, max_frames=args.max_frames, recursive=args.recursive,
        alpha=args.alpha, smooth=args.smooth, policy=args.policy, reconnect=args.reconnect,
        open_timeout=args.open_timeout, stall_timeout=args.stall_timeout, rotate=args.rotate, codec=args.codec,
        show=args.show, progress=not args.no_progress, overwrite=args.overwrite, resume=args.resume,
        provider=args.provider, threads=args.threads, engine=args.engine, precision=args.precision,
        optimization=args.optimization, strict=args.strict, inflight=args.inflight, zones=args.zones,
        clips=_clips(args.clips), polygon_tolerance=args.polygon_tolerance)
    contract = contract_overrides(args) or None
    if args.ray:
        return _run_on_ray(args, sources, options, contract)
    serve = None if args.serve is None else f"{args.host}:{args.serve}"
    summary = segment(sources, model=args.model, out=args.out, options=options, contract=contract, serve=serve)
    if summary["frames"] == 0 and not summary["interrupted"] and not summary["frames_resumed"] and not summary["failed"]:
        # Nothing was processed: a table of zero timings and exit 0 would read as success.
        reason = summary["first_failure"] or "the source gave no frames"
        raise EdgesegError(f"nothing was processed from `{display_path(sources[0])}` ({reason}); see "
                           f"{display_path(args.out)}/frames.jsonl.")
    print(stage_table(summary), file=sys.stderr)
    for name, report in summary["sources"].items():
        codec = report["outputs"].get("video_codec")
        if codec:
            print(f"{name}: overlay video {codec}", file=sys.stderr)
    print(f"wrote {display_path(args.out)}/summary.json", file=sys.stderr)
    if summary["failed"] or summary["error"]:
        return 1
    return 130 if summary["interrupted"] else 0


def _run_on_ray(args: argparse.Namespace, sources: list[str], options: Any, contract: dict[str, Any] | None) -> int:
    from edgeseg.runtime import EdgesegError, display_path, stage_table

    live = [flag for flag, value in (("--serve", args.serve), ("--rotate", args.rotate), ("--clips", args.clips))
            if value is not None]
    if live:
        raise EdgesegError(f"{live[0]} is for a run on this machine; --ray runs files (images and videos) on a "
                           "cluster. Drop one of them.")
    vectors = [name for name in ("polygons", "rle") if name in options.outputs]
    if vectors:
        raise EdgesegError(f"--write {vectors[0]} is for a run on this machine for now: --ray's units do not hand "
                           "their polygons/ and rle/ folders over to --out yet. Drop it, or run without --ray.")
    if options.zones is not None:
        from edgeseg.runtime.decisions import load_decisions

        # Rules need each source whole and in time order in one writer: a unit (a range of a video) would cut a
        # rule's `for` and `clear_after` at its borders, and each unit's events would start anew. Zone statistics
        # are per frame: they work on a cluster.
        config = load_decisions(options.zones, classes=None)
        if config.rules:
            raise EdgesegError(f"{config.source} has rules: events need each source whole, in time order, in one "
                               "process, and --ray cuts sources into units, which would cut a rule's timing at their "
                               "borders. Run it without --ray, or with a zones file without rules (zone statistics "
                               "work on a cluster).")
    if args.show:
        raise EdgesegError("--show opens a window on this machine; it does not combine with --ray (drop one).")
    if args.inflight is not None:
        raise EdgesegError("--inflight sets the calls in flight of one machine's pipeline; with --ray each worker "
                           "runs one call at a time and --workers sets how many run at once. Drop --inflight.")
    from edgeseg.runtime.extras import require

    require("ray", purpose="--ray")  # what is missing is said before the job is planned
    from edgeseg.scaleout import ClusterOptions, ModelSpec, describe_job, segment_on_ray

    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        # Ray colours what it prints itself (a "(raylet)" notice on stdout when a node loses a worker): plain text
        # where the output is piped or logged. Read by Ray when it prints, so setting it here is enough.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    cluster = ClusterOptions(address=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker, memory_per_worker_gb=args.memory_per_worker,
                             chunk=args.chunk, range_frames=args.range_frames, retries=args.retries, pack=args.pack,
                             unit_timeout=args.unit_timeout, placement_timeout=args.placement_timeout,
                             autoscale=args.autoscale)
    summary = segment_on_ray(sources, model=ModelSpec(args.model, contract=contract), out=args.out, cluster=cluster,
                             options=options)
    print(stage_table(summary), file=sys.stderr)
    print(describe_job(summary, out=display_path(args.out)), file=sys.stderr)
    if summary["interrupted"]:
        return 130
    if summary["ray"]["incomplete"]:
        print(f"edgeseg segment: error: the job is not complete: {summary['ray']['incomplete']}", file=sys.stderr)
        return 1
    if summary["frames"] == 0 and not summary["frames_resumed"] and not summary["failed"]:
        # As without Ray: nothing processed (every file broken) is never a success.
        reason = summary["first_failure"] or "the sources gave no frames"
        raise EdgesegError(f"nothing was processed ({reason}); see {display_path(args.out)}/frames.jsonl.")
    return 1 if summary["failed"] or summary["error"] else 0


def contract_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The contract options of ``args`` as overrides for :class:`edgeseg.runtime.Model` (empty: none given)."""
    from edgeseg.runtime import EdgesegError

    overrides: dict[str, Any] = {}
    spec: dict[str, Any] = {}
    if args.kind:
        overrides["kind"] = args.kind
    if args.input_size:
        try:
            parts = [int(p) for p in args.input_size.lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2) or min(parts, default=0) <= 0:
            raise EdgesegError(f"--input-size expects N or HxW (e.g. 224x224), got {args.input_size!r}.")
        spec["height"], spec["width"] = parts[0], parts[-1]
    if args.color:
        spec["color"] = args.color
        spec["channels"] = 1 if args.color == "GRAY" else 3
    for key in ("layout", "scale", "resize"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    for key in ("mean", "std"):
        text = getattr(args, key)
        if text is not None:
            try:
                spec[key] = [float(v) for v in text.split(",")]
            except ValueError:
                raise EdgesegError(f"--{key} expects numbers separated by commas, got {text!r}.") from None
    if spec:
        overrides["input"] = spec
    if args.classes:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        if len(names) == 1 and names[0].isdigit():
            names = [f"class{i}" for i in range(int(names[0]))]
        overrides["output"] = {"classes": names}
    return overrides
