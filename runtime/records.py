"""The records a run writes, in one versioned schema: ``frames.jsonl`` lines and ``summary.json``.

One source, many sources and a cluster job (``--ray``) write the same records. The schema is data
here — each field with its type and meaning — so the documentation (docs/records.md) and the tests
that validate every output of the suite are made from the same table. ``SCHEMA`` changes only
when a field changes meaning or goes away; new fields may be added within a version.

Example::

    for line in open("runs/clip/frames.jsonl"):
        record = json.loads(line)
        assert not check_record(record)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 2
STAGES = ("decode", "preprocess", "infer", "postprocess", "write")


@dataclass(frozen=True)
class Field:
    """One field of a record: its name, JSON type(s), whether every record has it, and what it means."""

    name: str
    types: tuple[str, ...]
    meaning: str
    required: bool = True


def _f(name: str, types: str, meaning: str, required: bool = True) -> Field:
    return Field(name, tuple(types.split("|")), meaning, required)


FRAME_FIELDS = (
    _f("schema", "integer", "record schema version (2)"),
    _f("source", "string", "the source's name in the run (its output folder's name when the run has several)"),
    _f("index", "integer", "the frame's position in its source: file order for images, frame number for videos "
                           "and streams"),
    _f("name", "string", "output name: masks/<name>.png, overlay/<name>.png"),
    _f("file", "string", "the input: the image or video file (odd bytes escaped as \\xNN), or the stream URL"),
    _f("ok", "boolean", "true when the frame was segmented"),
    _f("error", "string|null", "why the frame failed (null when ok)"),
    _f("time_s", "number|null", "the frame's time in its video or stream, seconds (null for images)"),
    _f("latency_ms", "number", "from capture (streams) or read (files) to the frame's outputs written, ms"),
    _f("class_fraction", "object", "{class: share of the frame's pixels}, segmentation models (empty otherwise)"),
    _f("score", "number|null", "autoencoders: the anomaly score, mean reconstruction error (null otherwise)"),
    _f("nan", "boolean", "the model's output held NaN: the mask or score is made up"),
    _f("segment", "integer", "the numbered file this record and the frame's overlay went to (--rotate; else 0)"),
    _f("ms", "object", "{decode, preprocess, infer, postprocess, write}: this frame's time in each stage, ms"),
    _f("zones", "object", "runs with --zones: {zone: statistics} of the zones that apply to this source, each "
                          "with the zone fields below", required=False),
    _f("events", "array", "runs with rules: the events that started or ended on this frame, each {id, type, rule} "
                          "(the whole records are in events.jsonl)", required=False),
)

ZONE_FIELDS = (
    _f("area", "integer", "the zone's pixels in this frame (a zone in fractions scales with the frame)"),
    _f("class_fraction", "object", "{class: share of the zone's pixels}, every class of the model"),
    _f("regions", "object", "{class: region}: the largest connected region (8-connected, cut to the zone) of the "
                            "classes the rules watch in this zone, each with the region fields below"),
)

REGION_FIELDS = (
    _f("area", "integer", "the region's pixels"),
    _f("bbox", "array", "[x, y, width, height] in frame pixels"),
    _f("centroid", "array", "[x, y] in frame pixels"),
)

FRAME_EVENT_FIELDS = (
    _f("id", "string", "the event's id (the same in its start and end records)"),
    _f("type", "string", "start or end"),
    _f("rule", "string", "the rule's name"),
)

EVENT_FIELDS = (
    _f("schema", "integer", "event record schema version (1)"),
    _f("id", "string", "the event's id: its start time (Unix seconds) and a random tail; the same in its start and "
                       "end records, and unique across runs (receivers deduplicate by it)"),
    _f("type", "string", "start (the condition held `for` seconds) or end"),
    _f("stream", "string", "the source's name in the run"),
    _f("rule", "string", "the rule's name in the zones/rules file"),
    _f("zone", "string", "the rule's zone"),
    _f("class", "string", "the rule's class"),
    _f("since", "number", "the source's time (its time_s) at which the condition began to hold, seconds"),
    _f("start", "number", "the source's time at which the event started, seconds"),
    _f("end", "number|null", "the source's time at which it ended (null in a start record)"),
    _f("frame", "integer", "the index of the frame this record was made on"),
    _f("reason", "string|null", "why it ended: cleared (false for clear_after seconds), stream ended, stopped "
                                "(Ctrl-C, SIGTERM or stop); null in a start record"),
    _f("wall", "string", "UTC time the record was made, ISO 8601"),
    _f("evidence", "object", "{fraction, area, peak_fraction, peak_area, threshold}: the rule's values on this "
                             "frame and their peaks since the condition began"),
    _f("snapshot", "string|null", "snapshots/<id>.jpg: the frame at the start, relative to --out (start and end)"),
    _f("clip", "string|null", "clips/<id>.mp4: the clip around the start (--clips), relative to --out"),
)

STREAM_FIELDS = (
    _f("url", "string", "the camera index or stream URL"),
    _f("policy", "string", "drop-old (newest frame only) or queue-all"),
    _f("grabbed", "integer", "frames read from the source; grabbed = dropped + frames taken"),
    _f("dropped", "integer", "frames replaced by a newer one before inference took them, dropped after inference "
                             "because this source's writer was behind (a heavy stream paces only itself), or left "
                             "at the end"),
    _f("reconnects", "integer", "reconnections after the first open"),
    _f("stalls", "integer", "times the stream sent nothing for --stall-timeout seconds"),
    _f("gave_up", "boolean", "the source ended after --reconnect failed attempts in a row"),
    _f("failures", "array", "the last reasons the stream failed (at most 10)"),
)

SOURCE_FIELDS = (
    _f("source", "string", "what was typed (path or URL)"),
    _f("kind", "string", "image, folder, glob, list, video or stream"),
    _f("folder", "string|null", "where its outputs are, relative to --out ('.' for a run of one source)"),
    _f("state", "string", "done, stopped (by a signal or stop), failed, gave_up, or for a live run: reading, "
                          "connecting, backoff"),
    _f("frames", "integer", "frames segmented in this run"),
    _f("frames_failed", "integer", "frames that could not be read or segmented (each has a record saying why)"),
    _f("frames_nan", "integer", "frames whose model output held NaN"),
    _f("frames_resumed", "integer", "frames an earlier run had finished, kept by --resume"),
    _f("first_failure", "string|null", "the first failed frame and why"),
    _f("error", "string|null", "why the source itself stopped early (unreadable video, full disk), else null"),
    _f("fps", "number", "frames / wall_s: this source's own rate"),
    _f("wall_s", "number", "from this source's start to its last finished frame, seconds"),
    _f("latency_ms", "object", "{p50, p95} from capture or read to outputs written, recent frames, ms"),
    _f("stage_ms", "object", "{decode, preprocess, infer, postprocess, write}: mean ms per frame"),
    _f("outputs", "object", "what was written: masks, overlay, reconstruction, jsonl, video, video_codec, "
                            "video_frames, segments, polygons, rle (--write), coco (--write polygons or rle on "
                            "images: one COCO file)"),
    _f("stream", "object|null", "live sources: the stream's counters (see the stream fields); null for files"),
    _f("units", "object", "--ray: {planned, finished} units of this source", required=False),
    _f("events", "object", "runs with rules: {rule: events started on this source}", required=False),
)

SUMMARY_FIELDS = (
    _f("schema", "integer", "summary schema version (2)"),
    _f("edgeseg", "string", "the edgeseg version that wrote it"),
    _f("model", "string", "the model file that ran"),
    _f("kind", "string", "segmentation or autoencoder"),
    _f("engine", "string", "onnxruntime or openvino"),
    _f("engine_choice", "string", "why this engine and configuration ran (a tuning record, the heuristic, asked for)"),
    _f("provider", "string", "the engine's first provider or device (CPUExecutionProvider, OpenVINO:CPU...)"),
    _f("providers", "array", "every provider the session holds"),
    _f("precision", "string", "fp32, bf16, f32, fp16 or int8"),
    _f("engine_streams", "integer", "the engine's parallel streams (OpenVINO throughput mode), else 1"),
    _f("batch", "integer", "most frames of one file source per inference call"),
    _f("inflight", "integer", "inference calls in flight at once"),
    _f("smooth", "number", "weight of earlier frames' class probabilities (0: off)"),
    _f("frames", "integer", "frames segmented, all sources"),
    _f("frames_failed", "integer", "frames that failed, all sources"),
    _f("frames_nan", "integer", "frames whose output held NaN, all sources"),
    _f("frames_resumed", "integer", "frames kept from an earlier run by --resume, all sources"),
    _f("first_failure", "string|null", "the first failed frame of the run and why"),
    _f("fps", "number", "frames / wall_s, end to end, all sources"),
    _f("infer_fps", "number", "frames / seconds the engine was busy"),
    _f("wall_s", "number", "the run's wall time from its first frame taken to its end, seconds"),
    _f("batches", "integer", "inference calls"),
    _f("mean_batch", "number", "frames per inference call"),
    _f("stage_ms", "object", "{decode, preprocess, infer, postprocess, write}: mean ms per frame, all sources"),
    _f("interrupted", "boolean", "stopped by Ctrl-C, SIGTERM or the stop event: outputs valid up to there"),
    _f("error", "string|null", "why the run stopped early (a broken model), else null"),
    _f("failed", "array", "names of the sources that failed or gave up"),
    _f("serve", "string|null", "the live page's address (--serve), else null"),
    _f("sources", "object", "{name: source} each source's own counters (see the source fields)"),
    _f("ray", "object", "--ray: cluster, units planned, skipped, retried, lost", required=False),
    _f("workers", "object", "--ray: frames, fps and failures per worker", required=False),
    _f("zones", "string", "runs with --zones: the zones/rules file", required=False),
    _f("events", "integer", "runs with rules: events started, all sources (each has a start and an end record in "
                            "--out/events.jsonl)", required=False),
    _f("event_sinks", "object", "runs with event sinks: {sink: {queued, delivered, dropped, rejected, pending}}; "
                                "pending events wait in the sink's disk queue and go out when it opens again",
       required=False),
)

_TYPES = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,), "null": (type(None),),
          "object": (dict,), "array": (list, tuple)}


def frame_record(frame: Any, outcome: Any, *, source: str, latency_ms: float, segment: int = 0,
                 timed: bool = False) -> dict[str, Any]:
    """The ``frames.jsonl`` record of one finished frame (``outcome``: the runtime's Outcome; ``timed``: the
    frame comes from a video or stream, so its timestamp is its time in it)."""
    result = outcome.result
    ok = result is not None
    return {
        "schema": SCHEMA, "source": source, "index": frame.index, "name": frame.name, "file": frame.source, "ok": ok,
        "error": None if ok else (outcome.error or "no output"),
        "time_s": round(frame.timestamp, 4) if timed else None,
        "latency_ms": round(latency_ms, 3),
        "class_fraction": dict(getattr(result, "class_fraction", {}) or {}),
        "score": _finite(getattr(result, "score", None)),
        "nan": bool(getattr(outcome, "nan", False)),
        "segment": segment,
        "ms": {stage: round(value, 3) for stage, value in outcome.ms.items()},
        **({"zones": outcome.zones} if getattr(outcome, "zones", None) is not None else {}),
        **({"events": outcome.events} if getattr(outcome, "events", None) is not None else {}),
    }


def _finite(value: Any) -> float | None:
    # JSON has no NaN: a NaN score (a broken model, counted in frames_nan) is written as null.
    return round(float(value), 6) if value is not None and math.isfinite(value) else None


@dataclass
class Tally:
    """What a source (or a run) counted: the frames done, failed, NaN and resumed, and why the first failed."""

    frames: int = 0
    frames_failed: int = 0
    frames_nan: int = 0
    frames_resumed: int = 0
    first_failure: str | None = None


def source_report(where: Mapping[str, Any], tally: Tally, *, error: str | None, wall_s: float,
                  latencies: list[float], stage_total: Mapping[str, float], outputs: Mapping[str, Any],
                  stream: Mapping[str, Any] | None, events: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One source's entry in ``summary.json``'s ``sources`` (SOURCE_FIELDS). ``where``: its ``source`` (what
    was typed), ``kind``, ``folder`` (relative to --out) and ``state``; ``events``: per rule, the events
    started on it (runs with rules)."""
    frames = tally.frames
    report = {
        "source": where["source"], "kind": where["kind"], "folder": where["folder"], "state": where["state"],
        "frames": frames, "frames_failed": tally.frames_failed, "frames_nan": tally.frames_nan,
        "frames_resumed": tally.frames_resumed, "first_failure": tally.first_failure, "error": error,
        "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0, "wall_s": round(wall_s, 3),
        "latency_ms": _percentiles(latencies),
        "stage_ms": {stage: round(stage_total.get(stage, 0.0) / max(frames, 1), 3) for stage in STAGES},
        "outputs": dict(outputs), "stream": dict(stream) if stream is not None else None,
    }
    if events is not None:
        report["events"] = dict(events)
    return report


def run_summary(engine: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]], *, wall_s: float,
                calls: Mapping[str, float], interrupted: bool, error: str | None, serve: str | None = None,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``summary.json``: run totals over ``sources`` (each a :func:`source_report`) and the engine's facts.
    ``calls``: the inference calls' ``batches``, ``batched_frames`` and busy ``infer_seconds``."""
    batches, batched, busy = calls["batches"], calls["batched_frames"], calls["infer_seconds"]
    from edgeseg import __version__

    frames = sum(s["frames"] for s in sources.values())
    stage_ms = {stage: round(sum(s["stage_ms"][stage] * s["frames"] for s in sources.values()) / max(frames, 1), 3)
                for stage in STAGES}
    first = next((s["first_failure"] for s in sources.values() if s["first_failure"]), None)
    summary = {
        "schema": SCHEMA, "edgeseg": __version__, **engine,
        "frames": frames, "frames_failed": sum(s["frames_failed"] for s in sources.values()),
        "frames_nan": sum(s["frames_nan"] for s in sources.values()),
        "frames_resumed": sum(s["frames_resumed"] for s in sources.values()), "first_failure": first,
        "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0,
        "infer_fps": round(batched / busy, 3) if busy > 0 else 0.0,
        "wall_s": round(wall_s, 3), "batches": int(batches),
        "mean_batch": round(batched / batches, 3) if batches else 0.0, "stage_ms": stage_ms,
        "interrupted": interrupted, "error": error,
        "failed": sorted(name for name, s in sources.items() if s["state"] in ("failed", "gave_up")),
        "serve": serve, "sources": {name: dict(s) for name, s in sources.items()},
    }
    summary.update(extra or {})
    return summary


def merge_reports(parts: Iterable[Mapping[str, Any]], *, wall_s: float) -> dict[str, Any]:
    """One source's report from the reports of its parts (``--ray`` units), weighted by their frames.

    Latency percentiles are the frame-weighted mean of the parts' (exact percentiles would need every
    frame's latency); ``wall_s`` is the job's.
    """
    parts = list(parts)
    first = parts[0]
    frames = sum(p["frames"] for p in parts)

    def weighted(get: Callable[[Mapping[str, Any]], float]) -> float:
        return round(sum(get(p) * p["frames"] for p in parts) / max(frames, 1), 3)

    return {
        **first, "frames": frames, "frames_failed": sum(p["frames_failed"] for p in parts),
        "frames_nan": sum(p["frames_nan"] for p in parts), "frames_resumed": sum(p["frames_resumed"] for p in parts),
        "first_failure": next((p["first_failure"] for p in parts if p["first_failure"]), None),
        "error": next((p["error"] for p in parts if p["error"]), None),
        "state": "failed" if any(p["state"] == "failed" for p in parts) else first["state"],
        "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0, "wall_s": round(wall_s, 3),
        "latency_ms": {q: weighted(lambda p, q=q: p["latency_ms"][q]) for q in ("p50", "p95")},
        "stage_ms": {stage: weighted(lambda p, s=stage: p["stage_ms"][s]) for stage in STAGES},
    }


# -- reading records back: --resume -----------------------------------------------------------------


def read_records(path: Path) -> Iterable[dict[str, Any]]:
    """The records of a ``frames.jsonl`` file; a line cut by a crash (or not JSON) is skipped."""
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def finished(folder: Path | None) -> dict[str, dict[str, Any]]:
    """``--resume``: the records of frames an earlier run finished, by name (whether their files are still
    there and whole is checked frame by frame as the run reaches them, so a big job starts at once).

    Reads ``frames.jsonl`` and the ``.frames.jsonl.resume`` a killed resume left beside it.
    """
    if folder is None:
        return {}
    kept: dict[str, dict[str, Any]] = {}
    for path in (folder / "frames.jsonl", folder / RESUME_FILE):
        for record in read_records(path):
            if record.get("schema") == SCHEMA and record.get("ok") is True and isinstance(record.get("name"), str):
                kept[record["name"]] = record
    return kept


RESUME_FILE = ".frames.jsonl.resume"  # where a resumed run writes its records before they replace frames.jsonl


def next_index(folder: Path | None) -> int:
    """A live source resumed: the index after the last one its earlier records hold (names never repeat)."""
    if folder is None:
        return 0
    last = -1
    for path in sorted(folder.glob("frames*.jsonl")):
        for record in read_records(path):
            if isinstance(record.get("index"), int):
                last = max(last, record["index"])
    return last + 1


def continue_segments(folder: Path) -> int:
    """A live source resumed: the next segment number. An earlier run's unnumbered ``frames.jsonl`` and
    ``overlay.mp4`` become segment 0 (renamed), so every file of the stream is numbered in order."""
    numbers = [int(p.stem.rsplit("-", 1)[1]) for pattern in ("frames-*.jsonl", "overlay-*.mp4")
               for p in folder.glob(pattern) if p.stem.rsplit("-", 1)[1].isdigit()]
    if numbers:
        return max(numbers) + 1
    moved = False
    for name, numbered in (("frames.jsonl", "frames-0000.jsonl"), ("overlay.mp4", "overlay-0000.mp4")):
        if (folder / name).exists():
            os.replace(folder / name, folder / numbered)
            moved = True
    return 1 if moved else 0


# -- validation: the schema as a check ---------------------------------------------------------------


def check_record(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with a ``frames.jsonl`` record against FRAME_FIELDS (empty: nothing)."""
    problems = _check(record, FRAME_FIELDS, "record")
    if not problems and record["schema"] != SCHEMA:
        problems.append(f"record: schema {record['schema']}, expected {SCHEMA}")
    if not problems and set(record["ms"]) - set(STAGES):
        problems.append(f"record: unknown stages {sorted(set(record['ms']) - set(STAGES))}")
    if problems:
        return problems
    for name, zone in (record.get("zones") or {}).items():  # inside the fields that have fields of their own
        problems += _check(zone, ZONE_FIELDS, f"record.zones[{name!r}]")
        for key, region in (zone.get("regions") or {}).items() if isinstance(zone, Mapping) else ():
            problems += _check(region, REGION_FIELDS, f"record.zones[{name!r}].regions[{key!r}]")
    for i, event in enumerate(record.get("events") or ()):
        problems += _check(event, FRAME_EVENT_FIELDS, f"record.events[{i}]")
    return problems


def check_event(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with an ``events.jsonl`` record against EVENT_FIELDS (empty: nothing).

    Example::

        for line in open("runs/site/events.jsonl"):
            assert not check_event(json.loads(line))
    """
    from edgeseg.runtime.events import EVENT_SCHEMA, EVENT_TYPES

    problems = _check(record, EVENT_FIELDS, "event")
    if not problems and record["schema"] != EVENT_SCHEMA:
        problems.append(f"event: schema {record['schema']}, expected {EVENT_SCHEMA}")
    if not problems and record["type"] not in EVENT_TYPES:
        problems.append(f"event: type {record['type']!r}, expected one of {', '.join(EVENT_TYPES)}")
    if not problems and (record["type"] == "end") != (record["end"] is not None):
        problems.append("event: an end record has its end time, a start record none")
    return problems


def check_summary(summary: Mapping[str, Any]) -> list[str]:
    """What is wrong with a ``summary.json`` against SUMMARY_FIELDS and SOURCE_FIELDS (empty: nothing)."""
    problems = _check(summary, SUMMARY_FIELDS, "summary")
    for name, source in (summary.get("sources") or {}).items():
        problems += _check(source, SOURCE_FIELDS, f"sources[{name!r}]")
        if isinstance(source, Mapping) and isinstance(source.get("stream"), Mapping):
            problems += _check(source["stream"], STREAM_FIELDS, f"sources[{name!r}].stream")
    if not problems and summary["schema"] != SCHEMA:
        problems.append(f"summary: schema {summary['schema']}, expected {SCHEMA}")
    return problems


def _check(data: Any, fields: tuple[Field, ...], where: str) -> list[str]:
    if not isinstance(data, Mapping):
        return [f"{where}: not an object"]
    known = {f.name: f for f in fields}
    problems = [f"{where}: unknown field {key!r} (not in the schema)" for key in data if key not in known]
    for f in fields:
        if f.name not in data:
            if f.required:
                problems.append(f"{where}: missing {f.name!r}")
            continue
        value = data[f.name]
        allowed = tuple(t for name in f.types for t in _TYPES[name])
        bad_bool = isinstance(value, bool) and "boolean" not in f.types
        if not isinstance(value, allowed) or bad_bool or (isinstance(value, float) and not math.isfinite(value)):
            problems.append(f"{where}.{f.name}: {type(value).__name__} {value!r:.60}, expected {'|'.join(f.types)}")
    return problems


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50": 0.0, "p95": 0.0}
    ordered = sorted(latencies)

    def at(q: float) -> float:  # linear interpolation, as numpy.percentile's default
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {"p50": round(at(0.5), 3), "p95": round(at(0.95), 3)}


def schema_table(fields: tuple[Field, ...]) -> str:
    """A Markdown table of ``fields`` (docs/records.md is made of these)."""
    rows = ["| field | type | meaning |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {' or '.join(f.types)}{'' if f.required else ' (optional)'} | {f.meaning} |"
             for f in fields]
    return "\n".join(rows)


def documentation() -> str:
    """docs/records.md: the schema of every record a run writes, made from the tables above (a test keeps them equal).

    Example::

        Path("docs/records.md").write_text(documentation())
    """
    return f"""# The records a run writes (schema {SCHEMA})

`edgeseg segment` (and `edgeseg.runtime.segment`, and `--ray`) write two kinds of record, the same for
one source, many sources and a cluster job. This page is made from `runtime/records.py`
(`python -c "from edgeseg.runtime import records; print(records.documentation(), end='')" > docs/records.md`);
the test suite checks every `summary.json` and `frames*.jsonl` it writes against the same tables.
`schema` changes only when a field changes meaning or goes away; fields may be added within a version.

Where they are: a run of one source writes into `--out`; a run of several (or of a list or folder that
expands into several, or of one named source `name=SOURCE`) writes each source's files into
`--out/<name>/` and one `--out/summary.json`. With `--rotate` (or a live source resumed), a source's
`frames.jsonl` and `overlay.mp4` are numbered files, `frames-0000.jsonl`, `overlay-0000.mp4`, ... —
the `segments` of its `outputs` list them in order.

## `frames.jsonl`: one line per frame, written as the frame finishes

{schema_table(FRAME_FIELDS)}

### `zones.<zone>`: one zone on one frame (runs with `--zones`)

{schema_table(ZONE_FIELDS)}

### `zones.<zone>.regions.<class>`: a class's largest region in the zone

{schema_table(REGION_FIELDS)}

### `events[]`: an event that started or ended on the frame (runs with rules)

{schema_table(FRAME_EVENT_FIELDS)}

## `events.jsonl`: one line per event start and end (runs with rules), in `--out`

Written and fsync'd as each event starts or ends, one file for the run (every source's events, each
naming its `stream`); the same record goes to the event sinks (MQTT, webhook, command). An event is two
records with one `id`: `start`, then `end`. Event records have their own schema version.

{schema_table(EVENT_FIELDS)}

## `summary.json`: the run

{schema_table(SUMMARY_FIELDS)}

### `sources.<name>`: each source

{schema_table(SOURCE_FIELDS)}

### `sources.<name>.stream`: a live source's counters

{schema_table(STREAM_FIELDS)}
"""

