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

from edgeseg.runtime import EdgesegError, SegmentOptions, VideoSink, atomic_path, write_json_atomic
from edgeseg.scaleout._plan import Source, Unit
from edgeseg.scaleout._worker import part_folder, read_marker


def merge_source(source: Source, units: list[Unit], options: SegmentOptions, *, model: dict[str, Any],
                 wall: float, interrupted: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``frames.jsonl``, ``overlay.mp4`` and ``summary.json`` of one source from its finished units."""
    out = Path(source.out)
    out.mkdir(parents=True, exist_ok=True)
    markers = [(unit, read_marker(unit)) for unit in sorted(units, key=lambda u: u.seq)]
    finished = [(unit, marker) for unit, marker in markers if marker is not None]
    outputs: dict[str, Any] = {"summary": "summary.json"}
    if "jsonl" in options.outputs:
        _join_lines([part_folder(unit) / m["outputs"]["jsonl"] for unit, m in finished], out / "frames.jsonl")
        outputs["jsonl"] = "frames.jsonl"
    if model["kind"] == "segmentation" and "masks" in options.outputs:
        outputs["masks"] = "masks/"
    if model["kind"] == "autoencoder" and "reconstruction" in options.outputs:
        outputs["reconstruction"] = "reconstruction/"
    videos = [(unit, m["outputs"]) for unit, m in finished if m["outputs"].get("video_frames")]
    parts = [part_folder(unit) / video["video"] for unit, video in videos]
    if parts:
        codec = videos[0][1]["video_codec"]
        frames = sum(video["video_frames"] for _, video in videos)
        outputs.update(video="overlay.mp4", video_codec=codec, video_frames=frames,
                       video_join=join_videos(parts, out / "overlay.mp4", fps=source.fps, codec=options.codec))
    elif "overlay" in options.outputs and source.kind != "video":
        outputs["overlay"] = "overlay/"
    summary = {**_summary(source, finished, len(markers), options, model, wall, interrupted, outputs), **(extra or {})}
    write_json_atomic(out / "summary.json", summary)
    return summary


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
