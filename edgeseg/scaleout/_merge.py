"""Join the units of one source into the single-machine layout: frames.jsonl, overlay.mp4, summary.json.

Overlay parts are joined with ffmpeg's concat demuxer and ``-c copy`` (imageio-ffmpeg's binary):
no re-encode, so joining costs a file copy and every frame of every part is kept, in range order.
Without ffmpeg the parts are decoded and re-encoded through the runtime's :class:`VideoSink`.
On a shared filesystem the driver joins; for an ``--out`` in object storage a worker does
(:func:`join_stored_videos`), so the driver never carries pixels. ``frames.jsonl`` (text) is joined
by the driver either way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from edgeseg.runtime import EdgesegError, SegmentOptions, VideoSink, atomic_path
from edgeseg.scaleout import _store
from edgeseg.scaleout._plan import Source, Unit
from edgeseg.scaleout._worker import part_location, read_markers

# How a caller joins overlay parts that live in object storage: (parts, target, fps, codec) -> how it joined.
VideoJoiner = Callable[[list[str], str, float, str], str]


def merge_source(source: Source, units: list[Unit], options: SegmentOptions, *, model: dict[str, Any],
                 wall: float, interrupted: bool, extra: dict[str, Any] | None = None,
                 markers: dict[str, dict[str, Any]] | None = None, resumed: set[str] = frozenset(),
                 join_stored: VideoJoiner | None = None) -> dict[str, Any]:
    """Write ``frames.jsonl``, ``overlay.mp4`` and ``summary.json`` of one source from its finished units.

    ``markers``: the finished units' markers by key (default: read now); ``resumed``: the keys of units an
    earlier run finished (counted apart from this run's work); ``join_stored``: how overlay parts in
    object storage are joined (a worker's :func:`join_stored_videos`; required for an ``--out`` URI).
    """
    out = source.out
    ordered = sorted(units, key=lambda u: u.seq)
    markers = read_markers(ordered) if markers is None else markers
    finished = [(unit, markers[unit.key]) for unit in ordered if unit.key in markers]
    outputs: dict[str, Any] = {"summary": "summary.json"}
    if "jsonl" in options.outputs:
        _join_lines([_store.join(part_location(unit), m["outputs"]["jsonl"]) for unit, m in finished],
                    _store.join(out, "frames.jsonl"))
        outputs["jsonl"] = "frames.jsonl"
    if model["kind"] == "segmentation" and "masks" in options.outputs:
        outputs["masks"] = "masks/"
    if model["kind"] == "autoencoder" and "reconstruction" in options.outputs:
        outputs["reconstruction"] = "reconstruction/"
    videos = [(unit, m["outputs"]) for unit, m in finished if m["outputs"].get("video_frames")]
    parts = [_store.join(part_location(unit), video["video"]) for unit, video in videos]
    if parts:
        codec = videos[0][1]["video_codec"]
        frames = sum(video["video_frames"] for _, video in videos)
        target = _store.join(out, "overlay.mp4")
        if _store.is_remote(out):
            if join_stored is None:
                raise EdgesegError("merge_source() needs `join_stored` to join overlay parts in object storage.")
            how = join_stored(parts, target, source.fps, options.codec)
        else:
            how = join_videos([Path(p) for p in parts], Path(target), fps=source.fps, codec=options.codec)
        outputs.update(video="overlay.mp4", video_codec=codec, video_frames=frames, video_join=how)
    elif "overlay" in options.outputs and source.kind != "video":
        outputs["overlay"] = "overlay/"
    if finished and finished[0][1].get("pack", "files") != "files":
        outputs["pack"] = finished[0][1]["pack"]  # per-frame files packed: one archive per unit and output
    summary = {**_summary(source, finished, len(ordered), options, model, wall, interrupted, outputs),
               **_resumed_apart(finished, resumed, wall), **(extra or {})}
    _store.write_bytes(_store.join(out, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def join_stored_videos(parts: list[str], target: str, fps: float, codec: str = "auto") -> str:
    """:func:`join_videos` for parts and a target in object storage: download, join, upload (on a worker)."""
    with tempfile.TemporaryDirectory(prefix="edgeseg-join-") as folder:
        local = []
        for i, part in enumerate(parts):
            local.append(Path(folder) / f"{i:06d}.mp4")
            _store.download(part, local[-1])
        joined = Path(folder) / "overlay.mp4"
        how = join_videos(local, joined, fps=fps, codec=codec)
        _store.upload([(joined, target)])
    return how


def join_videos(parts: list[Path], target: Path, *, fps: float, codec: str = "auto") -> str:
    """Join MP4 parts in order into ``target`` (atomically); returns how: ``concat copy`` or ``re-encode``."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        exe = None
    if exe is not None:
        listing = target.with_name(f".{target.name}.parts.txt")
        # The concat demuxer resolves relative names against the list's folder; absolute ones are safest.
        listing.write_text("".join(f"file '{p.resolve().as_posix()}'\n" for p in parts), encoding="utf-8")
        try:
            with atomic_path(target) as temporary:
                command = [exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
                           "-i", str(listing), "-c", "copy", "-movflags", "+faststart", "-f", "mp4", str(temporary)]
                done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
                if done.returncode != 0:
                    raise EdgesegError(f"Cannot join the overlay parts into `{target}`: ffmpeg said "
                                       f"{done.stderr.decode(errors='replace').strip()[-300:]!r}.")
        finally:
            listing.unlink(missing_ok=True)
        return "concat copy"
    with atomic_path(target) as temporary:
        staged = temporary.with_suffix(".mp4")
        with VideoSink(staged, fps=fps, codec=codec) as sink:
            for part in parts:
                capture = cv2.VideoCapture(str(part))
                ok, image = capture.read()
                while ok:
                    sink.write(image)
                    ok, image = capture.read()
                capture.release()
        staged.replace(temporary)
    return "re-encode"


def _join_lines(parts: list[str], target: str) -> None:
    if _store.is_remote(target):
        texts = _store.read_many(parts)
        _store.write_bytes(target, b"".join(texts[part] for part in parts if part in texts))
        return
    with atomic_path(target) as temporary, open(temporary, "wb") as joined:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, joined)


def _resumed_apart(finished: list[tuple[Unit, dict[str, Any]]], resumed: set[str], wall: float) -> dict[str, Any]:
    """This run's frames and fps without the units an earlier run finished (``--resume``): those are
    ``frames_resumed``, as a run without Ray reports the frames it kept."""
    if not resumed:
        return {}
    new = [m for unit, m in finished if unit.key not in resumed]
    kept = [m for unit, m in finished if unit.key in resumed]
    frames = sum(m["frames"] for m in new)
    busy = sum(m["seconds"] for m in new)
    return {"frames": frames, "frames_resumed": sum(m["frames"] for m in kept),
            "fps": round(frames / wall, 3) if wall > 0 else 0.0,
            "worker_fps": round(frames / busy, 3) if busy > 0 else 0.0}


def _summary(source: Source, finished: list[tuple[Unit, dict[str, Any]]], planned: int, options: SegmentOptions,
             model: dict[str, Any], wall: float, interrupted: bool, outputs: dict[str, Any]) -> dict[str, Any]:
    done = sum(m["frames"] for _, m in finished)
    failed = sum(m["frames_failed"] for _, m in finished) + (1 if source.error else 0)
    # A unit's stage_ms are per frame (its runtime summary's): weigh them by its frames.
    stages = finished[0][1]["stage_ms"].keys() if finished else ()
    stage_total = {stage: sum(m["stage_ms"].get(stage, 0.0) * m["frames"] for _, m in finished) for stage in stages}
    busy = sum(m["seconds"] for _, m in finished)
    first_failure = source.error or next((m["first_failure"] for _, m in finished if m.get("first_failure")), None)
    return {
        "source": source.spec,
        "source_kind": source.kind,
        "error": source.error,
        **model,
        "frames": done,
        "frames_failed": failed,
        "first_failure": first_failure,
        "fps": round(done / wall, 3) if wall > 0 else 0.0,
        "worker_fps": round(done / busy, 3) if busy > 0 else 0.0,
        "wall_s": round(wall, 3),
        "batch": finished[0][1]["batch"] if finished else options.batch,  # the runtime's batch rule chose it
        "smooth": options.smooth,
        "interrupted": interrupted,
        "units": {"planned": planned, "finished": len(finished)},
        "stage_ms": {stage: round(total / max(done, 1), 3) for stage, total in stage_total.items()},
        "outputs": outputs,
    }
