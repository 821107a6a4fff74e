"""What one worker does with one unit: fetch its inputs, the runtime's own :func:`segment` on them, publish.

A unit is opened as a runtime :class:`Source` (``Source.images`` for a chunk of paths,
``Source.video_range`` for a frame range, its ``lead`` frames priming ``--smooth``) and run by
``segment`` into a part folder: the outputs are the runtime's by construction (its batch rule,
smoothing, records, codec, summary), with no second pipeline here.

Where the job's files live decides the I/O, never the pipeline:

- a shared filesystem (``--out`` a path): the part folder is ``--out/.scaleout/<key>/``; the
  per-frame files (masks/, overlay/, reconstruction/) move into ``--out`` by rename (atomic);
- object storage (``--out`` a URI): inputs in the store are downloaded into the worker's own
  temporary folder (a video once for all its ranges this worker runs), the part is written there,
  then uploaded: per-frame files to ``--out/masks/<name>.png`` (the layout of one machine), or with
  ``pack="zip"`` one ZIP per unit and output (``masks/<key>.zip``, PNGs stored byte for byte), the
  unit's ``frames.jsonl`` and overlay part to ``--out/.scaleout/<key>/``.

The unit's marker (``.scaleout/<key>.json``, naming every file it published) is written last, so a
unit is complete exactly when its marker exists. A retried unit rewrites the same bytes under the
same names: nothing is appended, nothing written twice. No Ray here: this module runs the same in
a Ray actor and in a plain process.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from edgeseg.runtime import EdgesegError, Model, SegmentOptions, Source, VideoInfo, segment
from edgeseg.scaleout import _store
from edgeseg.scaleout._plan import Unit

log = logging.getLogger("edgeseg.scaleout")

WORK_DIR = ".scaleout"  # per-unit parts and markers under each source's --out
FRAME_FOLDERS = ("masks", "overlay", "reconstruction")  # one file per frame: published into --out
PACKS = ("files", "zip")  # per-frame files (one machine's layout), or one ZIP per unit and output
# A ZIP member's fixed timestamp: a unit run twice packs the same bytes (zip stores a date per member).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def part_location(unit: Unit) -> str:
    """Where the unit's ``frames.jsonl`` and overlay part stay (for ``--resume`` and the final join)."""
    return _store.join(unit.out, WORK_DIR, unit.key)


def marker_location(unit: Unit) -> str:
    return _store.join(unit.out, WORK_DIR, f"{unit.key}.json")


def part_folder(unit: Unit) -> Path:
    """The part folder of a unit whose ``--out`` is a local path."""
    return Path(part_location(unit))


def marker_path(unit: Unit) -> Path:
    return Path(marker_location(unit))


def local_part(unit: Unit, staging: str | os.PathLike) -> Path:
    """Where ``segment`` writes the unit on this worker: the part folder itself on a shared filesystem,
    ``staging/<key>`` when ``--out`` is a URI (uploaded from there)."""
    return Path(staging) / unit.key if _store.is_remote(unit.out) else part_folder(unit)


def read_markers(units: list[Unit]) -> dict[str, dict[str, Any]]:
    """The markers of the finished units among ``units`` (marker and the parts it names exist), by key.

    One listing of each ``.scaleout`` folder and one batched read of the markers: on object storage a
    job of thousands of units costs a few requests, not one per unit.
    """
    found: set[str] = set()
    for folder in dict.fromkeys(_store.join(u.out, WORK_DIR) for u in units):
        found.update(_store.find(folder))
    wanted = {marker_location(u): u for u in units if marker_location(u) in found}
    markers = {}
    for location, data in _store.read_many(list(wanted)).items():
        unit = wanted[location]
        try:
            marker = json.loads(data)
        except ValueError:
            continue
        if not isinstance(marker, dict) or marker.get("key") != unit.key or marker.get("frames_expected") != unit.frames:
            continue
        parts = [marker["outputs"][name] for name in ("jsonl", "video") if name in marker.get("outputs", {})]
        if all(_store.join(part_location(unit), part) in found for part in parts):
            markers[unit.key] = marker
    return markers


def read_marker(unit: Unit) -> dict[str, Any] | None:
    """The unit's marker when it is complete (marker and the parts it names exist), else None."""
    return read_markers([unit]).get(unit.key)


def missing_outputs(units: list[Unit], markers: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """For each finished unit, the files its marker names that are not where the job's output lives."""
    by_key = {u.key: u for u in units}
    listed: dict[str, set[str]] = {}
    missing: dict[str, list[str]] = {}
    for key, marker in markers.items():
        unit = by_key[key]
        for folder, names in marker.get("published", {}).items():
            where = _store.join(unit.out, folder)
            if where not in listed:
                listed[where] = set(_store.find(where))
            gone = [name for name in names if _store.join(where, name) not in listed[where]]
            if gone:
                missing.setdefault(key, []).extend(f"{folder}/{name}" for name in gone)
    return missing


def unit_source(unit: Unit, local: list[str] | str | None = None) -> Source:
    """The unit as a runtime source: the same frames, names and indices the whole source gives them.

    ``local``: where this worker holds the unit's inputs (downloaded from object storage); default
    the unit's own paths.
    """
    if unit.kind == "images":
        paths = list(local) if local is not None else list(unit.paths)
        return Source.images(paths, root=unit.root if local is None else None, names=list(unit.names),
                             first=unit.index, name=unit.name or "images")
    return Source.video_range(local or unit.video, start=unit.first, count=unit.count, stride=unit.stride,
                              lead=unit.warm, name=unit.name or None)


class Activity:
    """When the unit in hand last moved (a frame finished, bytes arrived or left): the driver's deadline
    is on silence, so a long download or a long unit is not cut while it moves."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.origin: dict[str, str] = {}  # this worker's copy of an input -> its URI (for what it says)

    def touch(self, *_: Any) -> None:
        self.last = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self.last


class Inputs:
    """A worker's inputs as local files: local paths as they are (checked to exist on this node),
    objects downloaded into ``folder`` (images per unit; the last ``keep_videos`` videos kept, so the
    next range of the same video costs no second download).

    Example::

        inputs = Inputs(tempfile.mkdtemp())
        local = inputs.video("s3://bucket/clip.mp4")
    """

    def __init__(self, folder: str | os.PathLike, *, keep_videos: int = 2) -> None:
        self.folder = Path(folder)
        self.keep_videos = keep_videos
        self.videos: collections.OrderedDict[str, Path] = collections.OrderedDict()
        self.download_s = 0.0
        self._lock = threading.Lock()

    def images(self, unit: Unit, activity: Activity | None = None) -> tuple[list[str] | None, dict[str, str]]:
        """Local paths of the unit's images (None: use them where they are) and {local path: location}."""
        if not any(_store.is_remote(p) for p in unit.paths):
            _require_visible(unit, list(unit.paths))
            return None, {}
        folder = self.folder / "images" / unit.key
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        local = [str(folder / f"{i:06d}{Path(_store.name_of(p)).suffix}") for i, p in enumerate(unit.paths)]
        started = time.perf_counter()
        for gone in _store.download_many(list(zip(unit.paths, local)), callback=_callback(activity)):
            Path(local[unit.paths.index(gone)]).write_bytes(b"")  # gone since it was listed: the runtime says so
        self.download_s += time.perf_counter() - started
        return local, dict(zip(local, unit.paths))

    def video(self, location: str, activity: Activity | None = None) -> str:
        """A local path of the video: ``location`` itself, or its download (cached)."""
        if not _store.is_remote(location):
            return location
        with self._lock:  # a probe and a unit of one video must not download it twice at once
            if location in self.videos:
                self.videos.move_to_end(location)
                return str(self.videos[location])
            folder = self.folder / "videos" / hashlib.sha256(location.encode()).hexdigest()[:16]
            folder.mkdir(parents=True, exist_ok=True)
            # The original name: the runtime names a video's frames after its stem (clip_000042).
            path = folder / _store.name_of(location)
            started = time.perf_counter()
            partial = folder / f".{path.name}.part"
            _store.download(location, partial, callback=_callback(activity))
            partial.replace(path)
            self.download_s += time.perf_counter() - started
            self.videos[location] = path
            while len(self.videos) > self.keep_videos:
                _, old = self.videos.popitem(last=False)
                shutil.rmtree(old.parent, ignore_errors=True)
            return str(path)

    def done_with(self, unit: Unit) -> None:
        shutil.rmtree(self.folder / "images" / unit.key, ignore_errors=True)


def probe_video(location: str, inputs: Inputs) -> VideoInfo:
    """What a video says about itself, read from this worker's copy (which its ranges then use)."""
    return VideoInfo.from_video_path(inputs.video(location))


def run_unit(unit: Unit, model: Model, options: SegmentOptions, *, worker: str = "", pack: str = "files",
             inputs: Inputs | None = None, staging: str | os.PathLike | None = None,
             activity: Activity | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run one unit with the runtime's ``segment``, publish its outputs, and return its marker (also written
    to :func:`marker_location`, last).

    ``inputs``: the worker's :class:`Inputs` (default: a temporary one for this call); ``staging``:
    the local folder for parts of units whose ``--out`` is a URI (default: a temporary folder);
    ``activity`` is touched as the unit moves; ``stop`` ends it early. A unit stopped early returns
    ``{"key", "interrupted": True}`` and writes no marker: it is not done, so ``--resume`` runs it again.

    Example::

        marker = run_unit(units[0], Model("fcn8.onnx", threads=2), SegmentOptions())
    """
    if pack not in PACKS:
        raise EdgesegError(f"pack must be one of {', '.join(PACKS)}, got {pack!r}.")
    started = time.perf_counter()
    activity = activity or Activity()
    with tempfile.TemporaryDirectory(prefix="edgeseg-unit-") as own:
        inputs = inputs or Inputs(own)
        remote_out = _store.is_remote(unit.out)
        part = local_part(unit, staging or own)
        local, origin, download_s = _fetch_inputs(unit, inputs, activity)
        # Its own part folder, cleared on a retry; the job's --out rule was applied by the driver. The records
        # are always written: they count the unit's frames as they finish (the driver's progress).
        wanted = options.outputs if "jsonl" in options.outputs else (*options.outputs, "jsonl")
        run = dataclasses.replace(options, outputs=wanted, overwrite=True, resume=False, progress=False, show=False)
        try:
            summary = segment(unit_source(unit, local), model=model, out=part, options=run, stop=stop)
        finally:
            if unit.kind == "images":
                inputs.done_with(unit)
        if summary["interrupted"]:
            return {"key": unit.key, "interrupted": True}
        (report,) = summary["sources"].values()  # the part's own source report (records.SOURCE_FIELDS)
        first_failure = summary["first_failure"]
        if origin:
            first_failure = _name_sources(part / "frames.jsonl", origin, first_failure)
            report = {**report, "first_failure": first_failure}
        upload_started = time.perf_counter()
        published = _publish(unit, part, pack, activity)
        marker = {"key": unit.key, "frames_expected": unit.frames, "frames": summary["frames"],
                  "frames_failed": summary["frames_failed"], "first_failure": first_failure,
                  "seconds": round(time.perf_counter() - started, 3), "segment_s": summary["wall_s"],
                  "infer_fps": summary["infer_fps"], "worker": worker, "node": _node(), "pid": os.getpid(),
                  "report": report, "batches": summary["batches"],
                  "infer_seconds": summary["frames"] / summary["infer_fps"] if summary["infer_fps"] else 0.0,
                  "pack": pack, "published": published,
                  "io_s": {"download": round(download_s, 3), "upload": round(time.perf_counter() - upload_started, 3)},
                  "outputs": {k: v for k, v in report["outputs"].items() if k in ("jsonl", "video", "video_codec",
                                                                                  "video_frames")},
                  **{key: summary[key] for key in ("batch", "engine", "provider", "precision")}}
        _store.write_bytes(marker_location(unit), (json.dumps(marker, indent=2) + "\n").encode())
        if remote_out:
            shutil.rmtree(part, ignore_errors=True)
    return marker


def _fetch_inputs(unit: Unit, inputs: Inputs, activity: Activity) -> tuple[str | None, dict[str, str], float]:
    """The unit's inputs where this worker reads them: (local copy or None, local -> stored names, download s)."""
    fetched_s = inputs.download_s
    if unit.kind == "images":
        local, origin = inputs.images(unit, activity)
    else:
        local, origin = _video_input(unit, inputs, activity)
    activity.origin = origin
    return local, origin, inputs.download_s - fetched_s


def _video_input(unit: Unit, inputs: Inputs, activity: Activity) -> tuple[str | None, dict[str, str]]:
    if not _store.is_remote(unit.video):
        _require_visible(unit, [unit.video])
        return None, {}
    local = inputs.video(unit.video, activity)
    return local, {local: unit.video}


def _require_visible(unit: Unit, paths: list[str]) -> None:
    # The driver listed these files; a node that cannot see any of them does not share the storage.
    if paths and not any(os.path.exists(p) for p in paths):
        raise EdgesegError(f"unit {unit.key}: its input `{paths[0]}` (and the unit's {len(paths) - 1} other(s)) does "
                           f"not exist on node {_node()}, though the driver found it: SOURCE must be on storage every "
                           "node mounts at the same path, or in object storage (s3://, gs://, az://).")


def _callback(activity: Activity | None) -> Any:
    if activity is None:
        return None
    from fsspec.callbacks import Callback

    class Touch(Callback):
        def call(self, *args: Any, **kwargs: Any) -> None:
            activity.touch()

    return Touch()


def count_lines(path: Path) -> int:
    """Frames a unit finished so far: the lines of its part's ``frames.jsonl`` (flushed per frame)."""
    try:
        with open(path, "rb") as handle:
            return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 16), b""))
    except OSError:
        return 0


def _name_sources(jsonl: Path, origin: dict[str, str], first_failure: str | None) -> str | None:
    """Records and the first failure name a downloaded input by its URI, not by this worker's temporary copy."""
    lines = []
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("file") in origin:  # schema 2: `file` names the input
            record["file"] = origin[record["file"]]
        lines.append(json.dumps(record))
    jsonl.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    if first_failure:
        for local, location in origin.items():
            first_failure = first_failure.replace(local, location)
    return first_failure


def _publish(unit: Unit, part: Path, pack: str, activity: Activity) -> dict[str, list[str]]:
    """Move or upload the unit's per-frame files (or their ZIP) into ``--out``; its parts into ``.scaleout``."""
    published: dict[str, list[str]] = {}
    pairs: list[tuple[Path, str]] = []
    for folder in FRAME_FOLDERS:
        if not (part / folder).is_dir():
            continue
        files = sorted(p for p in (part / folder).rglob("*") if p.is_file())
        if pack == "zip":
            archive = part / f"{folder}.zip"
            with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
                for path in files:
                    info = zipfile.ZipInfo(path.relative_to(part / folder).as_posix(), date_time=_ZIP_DATE)
                    info.external_attr = 0o644 << 16
                    zipped.writestr(info, path.read_bytes())
            pairs.append((archive, _store.join(unit.out, folder, f"{unit.key}.zip")))
            published[folder] = [f"{unit.key}.zip"]
        else:
            names = [path.relative_to(part / folder).as_posix() for path in files]
            pairs += [(path, _store.join(unit.out, folder, name)) for path, name in zip(files, names)]
            published[folder] = names
    if _store.is_remote(unit.out):
        # The records and the overlay part go up too: the driver joins them, --resume checks them.
        pairs += [(path, _store.join(part_location(unit), path.name)) for path in (part / "frames.jsonl",
                                                                                   part / "overlay.mp4")
                  if path.is_file()]
    _store.upload(pairs, callback=_callback(activity))
    activity.touch()
    return published


def _node() -> str:
    return socket.gethostname()

