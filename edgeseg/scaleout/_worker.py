"""What one worker does with one unit: the runtime's own :func:`edgeseg.runtime.segment` on its part.

A unit is opened as a runtime :class:`Source` (``Source.images`` for a chunk of paths,
``Source.video_range`` for a frame range, its ``lead`` frames priming ``--smooth``) and run by
``segment`` into the unit's part folder ``.scaleout/<key>/``: the outputs are the runtime's by
construction (its batch rule, smoothing, records, codec, summary), with no second pipeline here.

Then the per-frame files (masks/, overlay/, reconstruction/) move into the source's ``--out`` by
rename (atomic on one filesystem), and the unit's marker (``.scaleout/<key>.json``) is written
last, so a unit is complete exactly when its marker exists. A retried unit clears its part folder
and renames the same bytes onto the same names: nothing is appended, nothing written twice.
No Ray here: this module runs the same in a Ray actor and in a plain process.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from edgeseg.runtime import Model, SegmentOptions, Source, segment, write_json_atomic
from edgeseg.scaleout._plan import Unit

WORK_DIR = ".scaleout"  # per-unit parts and markers under each source's --out folder
FRAME_FOLDERS = ("masks", "overlay", "reconstruction")  # one file per frame: moved into --out


def part_folder(unit: Unit) -> Path:
    """Where ``segment`` writes the unit (its frames.jsonl, overlay.mp4 and summary.json stay here)."""
    return Path(unit.out) / WORK_DIR / unit.key


def marker_path(unit: Unit) -> Path:
    return Path(unit.out) / WORK_DIR / f"{unit.key}.json"


def read_marker(unit: Unit) -> dict[str, Any] | None:
    """The unit's marker when it is complete (marker and the parts it names exist), else None."""
    try:
        marker = json.loads(marker_path(unit).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("key") != unit.key or marker.get("frames_expected") != unit.frames:
        return None
    parts = [marker["outputs"][name] for name in ("jsonl", "video") if name in marker.get("outputs", {})]
    return marker if all((part_folder(unit) / part).is_file() for part in parts) else None


def unit_source(unit: Unit) -> Source:
    """The unit as a runtime source: the same frames, names and indices the whole source gives them."""
    if unit.kind == "images":
        return Source.images(list(unit.paths), root=unit.root, names=list(unit.names), first=unit.index)
    return Source.video_range(unit.video, start=unit.first, count=unit.count, stride=unit.stride, lead=unit.warm)


def run_unit(unit: Unit, model: Model, options: SegmentOptions, *, worker: str = "") -> dict[str, Any]:
    """Run one unit with the runtime's ``segment`` and return its marker (also written to :func:`marker_path`).

    A unit stopped by a signal returns ``{"key", "interrupted": True}`` and writes no marker: it is
    not done, so ``--resume`` runs it again.

    Example::

        marker = run_unit(units[0], Model("fcn8.onnx", threads=2), SegmentOptions())
    """
    part = part_folder(unit)
    # Its own part folder, cleared on a retry; the job's --out rule was applied by the driver.
    options = dataclasses.replace(options, overwrite=True, resume=False, progress=False, show=False)
    summary = segment(unit_source(unit), model=model, out=part, options=options)
    if summary["interrupted"]:
        return {"key": unit.key, "interrupted": True}
    _move_frame_files(part, Path(unit.out))
    (report,) = summary["sources"].values()  # the part's own source report (records.SOURCE_FIELDS)
    marker = {"key": unit.key, "frames_expected": unit.frames, "frames": summary["frames"],
              "frames_failed": summary["frames_failed"], "first_failure": summary["first_failure"],
              "seconds": summary["wall_s"], "worker": worker, "pid": os.getpid(), "report": report,
              "batches": summary["batches"],
              "infer_seconds": summary["frames"] / summary["infer_fps"] if summary["infer_fps"] else 0.0,
              "outputs": {k: v for k, v in report["outputs"].items() if k in ("jsonl", "video", "video_codec",
                                                                              "video_frames")},
              **{key: summary[key] for key in ("batch", "engine", "provider", "precision")}}
    write_json_atomic(marker_path(unit), marker)
    return marker


def _move_frame_files(part: Path, out: Path) -> None:
    made: set[Path] = set()
    for folder in FRAME_FOLDERS:
        if not (part / folder).is_dir():
            continue
        for path in sorted((part / folder).rglob("*")):
            if path.is_dir():
                continue
            target = out / folder / path.relative_to(part / folder)
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            os.replace(path, target)
