"""Join the units of one source into the single-machine layout: frames.jsonl, overlay.mp4, summary.json.

Overlay parts are joined with ffmpeg's concat demuxer and ``-c copy`` (imageio-ffmpeg's binary):
no re-encode, so joining costs a file copy and every frame of every part is kept, in range order.
Without ffmpeg the parts are decoded and re-encoded through the runtime's :class:`VideoSink`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2

from edgeseg.runtime import EdgesegError, SegmentOptions, VideoSink, atomic_path, records
from edgeseg.scaleout._plan import Source, Unit
from edgeseg.scaleout._worker import part_folder, read_marker


def merge_source(source: Source, units: list[Unit], options: SegmentOptions, *, kind: str, wall: float,
                 interrupted: bool) -> dict[str, Any]:
    """Write ``frames.jsonl`` and the overlay video of one source from its finished units; return its report
    for ``summary.json`` (the runtime's records.SOURCE_FIELDS: the same as a run on one machine)."""
    out = Path(source.out)
    out.mkdir(parents=True, exist_ok=True)
    markers = [(unit, read_marker(unit)) for unit in sorted(units, key=lambda u: u.seq)]
    finished = [(unit, marker) for unit, marker in markers if marker is not None]
    outputs: dict[str, Any] = {}
    if "jsonl" in options.outputs:
        _join_lines([part_folder(unit) / m["outputs"]["jsonl"] for unit, m in finished], out / "frames.jsonl")
        outputs["jsonl"] = "frames.jsonl"
    if kind == "segmentation" and "masks" in options.outputs:
        outputs["masks"] = "masks/"
    if kind == "autoencoder" and "reconstruction" in options.outputs:
        outputs["reconstruction"] = "reconstruction/"
    videos = [(unit, m["outputs"]) for unit, m in finished if m["outputs"].get("video_frames")]
    parts = [part_folder(unit) / video["video"] for unit, video in videos]
    if parts:
        codec = videos[0][1]["video_codec"]
        frames = sum(video["video_frames"] for _, video in videos)
        join_videos(parts, out / "overlay.mp4", fps=source.fps, codec=options.codec)
        outputs.update(video="overlay.mp4", video_codec=codec, video_frames=frames)
    elif "overlay" in options.outputs and source.kind != "video":
        outputs["overlay"] = "overlay/"
    return _report(source, [m for _, m in finished], len(markers), wall, interrupted, outputs)


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


def _join_lines(parts: list[Path], target: Path) -> None:
    with atomic_path(target) as temporary, open(temporary, "wb") as joined:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, joined)


def _report(source: Source, markers: list[dict[str, Any]], planned: int, wall: float, interrupted: bool,
            outputs: dict[str, Any]) -> dict[str, Any]:
    parts = [marker["report"] for marker in markers]
    if parts:
        report = records.merge_reports(parts, wall_s=wall)
    else:
        where = {"source": source.spec, "kind": source.kind, "folder": None, "state": "done"}
        report = records.source_report(where, records.Tally(), error=None, wall_s=wall, latencies=[], stage_total={},
                                       outputs={}, stream=None)
    done = len(markers) == planned
    state = "failed" if source.error else ("done" if done else ("stopped" if interrupted else "failed"))
    report.update(source=source.spec, kind=source.kind, state=state, outputs=outputs,
                  error=source.error or report["error"], units={"planned": planned, "finished": len(markers)})
    if source.error:
        report.update(frames_failed=report["frames_failed"] + 1, first_failure=report["first_failure"] or source.error)
    return report
