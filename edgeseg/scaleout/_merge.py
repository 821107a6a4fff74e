"""Join the units of one source into the single-machine layout: frames.jsonl, overlay.mp4, summary.json.

Overlay parts are joined with ffmpeg's concat demuxer and ``-c copy`` (imageio-ffmpeg's binary):
no re-encode, so joining costs a file copy and every frame of every part is kept, in range order.
Without ffmpeg the parts are decoded and re-encoded through the runtime's :class:`VideoSink`.
On a shared filesystem the driver joins; for an ``--out`` in object storage a worker does
(:func:`join_stored_videos`), so the driver never carries pixels. ``frames.jsonl`` (text) is joined
by the driver either way.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from edgeseg.runtime import EdgesegError, SegmentOptions, VideoSink, atomic_path, records
from edgeseg.scaleout import _store
from edgeseg.scaleout._plan import Source, Unit
from edgeseg.scaleout._worker import part_location, read_markers

# How a caller joins overlay parts that live in object storage: (parts, target, fps, codec) -> how it joined.
VideoJoiner = Callable[[list[str], str, float, str], str]


def merge_source(source: Source, units: list[Unit], options: SegmentOptions, *, kind: str, wall: float,
                 interrupted: bool, markers: dict[str, dict[str, Any]] | None = None, resumed: set[str] = frozenset(),
                 join_stored: VideoJoiner | None = None) -> dict[str, Any]:
    """Write ``frames.jsonl`` and the overlay video of one source from its finished units; return its report
    for ``summary.json`` (the runtime's records.SOURCE_FIELDS: the same as a run on one machine).

    ``markers``: the finished units' markers by key (default: read now); ``resumed``: the keys of units an
    earlier run finished (their frames are ``frames_resumed``, apart from this run's work); ``join_stored``:
    how overlay parts in object storage are joined (a worker's :func:`join_stored_videos`; required for an
    ``--out`` URI).
    """
    out = source.out
    ordered = sorted(units, key=lambda u: u.seq)
    markers = read_markers(ordered) if markers is None else markers
    finished = [(unit, markers[unit.key]) for unit in ordered if unit.key in markers]
    outputs: dict[str, Any] = {}
    if "jsonl" in options.outputs:
        _join_lines([_store.join(part_location(unit), m["outputs"]["jsonl"]) for unit, m in finished],
                    _store.join(out, "frames.jsonl"))
        outputs["jsonl"] = "frames.jsonl"
    if kind == "segmentation" and "masks" in options.outputs:
        outputs["masks"] = "masks/"
    if kind == "autoencoder" and "reconstruction" in options.outputs:
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
            join_stored(parts, target, source.fps, options.codec)
        else:
            join_videos([Path(p) for p in parts], Path(target), fps=source.fps, codec=options.codec)
        outputs.update(video="overlay.mp4", video_codec=codec, video_frames=frames)
    elif "overlay" in options.outputs and source.kind != "video":
        outputs["overlay"] = "overlay/"
    if finished and finished[0][1].get("pack", "files") != "files":
        outputs["pack"] = finished[0][1]["pack"]  # per-frame files packed: one archive per unit and output
    return _report(source, finished, len(ordered), wall, interrupted, outputs, resumed)


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


def _report(source: Source, finished: list[tuple[Unit, dict[str, Any]]], planned: int, wall: float,
            interrupted: bool, outputs: dict[str, Any], resumed: set[str]) -> dict[str, Any]:
    # A unit --resume kept counts as frames_resumed, never as this run's frames (nor in its fps, stages, latency):
    # as a run without Ray reports the frames it kept.
    parts = [_as_resumed(m["report"]) if unit.key in resumed else m["report"] for unit, m in finished]
    if parts:
        report = records.merge_reports(parts, wall_s=wall)
    else:
        where = {"source": source.spec, "kind": source.kind, "folder": None, "state": "done"}
        report = records.source_report(where, records.Tally(), error=None, wall_s=wall, latencies=[], stage_total={},
                                       outputs={}, stream=None)
    done = len(finished) == planned
    state = "failed" if source.error else ("done" if done else ("stopped" if interrupted else "failed"))
    report.update(source=source.spec, kind=source.kind, state=state, outputs=outputs,
                  error=source.error or report["error"], units={"planned": planned, "finished": len(finished)})
    if source.error:
        report.update(frames_failed=report["frames_failed"] + 1, first_failure=report["first_failure"] or source.error)
    return report


def _as_resumed(report: dict[str, Any]) -> dict[str, Any]:
    """A kept unit's report as this run sees it: its frames are resumed ones; no time of this run's."""
    return {**report, "frames": 0, "frames_resumed": report["frames_resumed"] + report["frames"]}
