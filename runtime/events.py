"""Rules and events: "smoke covers more than 30% of the door zone for 5 s" as data, and what it raises.

A :class:`Rule` watches one class in one zone: a threshold on the fraction of the zone the class
covers (``fraction``) or on its largest region's area in pixels (``area``), held for ``for_s``
seconds (``"for"`` in a rules file) before an event starts; the event ends once the condition has
been false for ``clear_after`` seconds, where false means past the threshold by more than
``hysteresis`` (so a value hovering at the threshold neither flickers nor ends the event).

:class:`RuleEngine` is fed per frame (stream, frame index, timestamp in seconds on the stream's
clock, per-zone statistics) and returns the :class:`Event` records that start or end on that frame:
an event is two records with one ``id``, ``type`` ``start`` then ``end``. Times are the stream's
(a video's position, a live stream's seconds since it started); ``wall`` is the UTC time the record
was made. Records are versioned (``"schema": 1``, an integer like ``frames.jsonl``'s, changed only when
a field changes meaning or goes away) and written one per line to ``events.jsonl`` by :class:`EventLog`.

Example::

    engine = RuleEngine([Rule("smoke-door", class_name="smoke", zone="door", fraction=0.3, for_s=5, clear_after=3)])
    for event in engine.update("front", frame.index, frame.timestamp, meter.measure(mask)):
        print(event.type, event.rule, event.evidence["fraction"])
"""

from __future__ import annotations

import datetime
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.zones import ZoneStats

EVENT_SCHEMA = 1
EVENT_TYPES = ("start", "end")


@dataclass(frozen=True)
class Rule:
    """When a class in a zone raises an event. Exactly one of ``fraction`` (0..1 of the zone) or ``area``
    (pixels of the class's largest region in the zone) is the threshold; ``below=True`` turns "at
    least" into "at most". ``for_s``: seconds the condition must hold before the event starts.
    ``clear_after``: seconds it must be false before the event ends. ``hysteresis``: how far past the
    threshold the value must go to count as false (a fraction, or pixels for ``area``).

    Example::

        Rule("water-dock", class_name="water", zone="dock", area=400, for_s=2, clear_after=10, hysteresis=50)
    """

    name: str
    _: KW_ONLY
    class_name: str
    zone: str
    fraction: float | None = None
    area: float | None = None
    below: bool = False
    for_s: float = 0.0
    clear_after: float = 0.0
    hysteresis: float = 0.0

    def __post_init__(self) -> None:
        for key in ("name", "class_name", "zone"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise EdgesegError(f"field {_file_key(key)!r}: expected a non-empty name, got {value!r}.")
        if (self.fraction is None) == (self.area is None):
            raise EdgesegError("a rule needs exactly one threshold: 'fraction' (0 to 1 of the zone) or 'area' "
                               f"(pixels of the largest region), got fraction={self.fraction!r} and area={self.area!r}.")
        if self.fraction is not None and not (_number(self.fraction) and 0.0 <= self.fraction <= 1.0):
            raise EdgesegError(f"field 'fraction': expected a number from 0 to 1, got {self.fraction!r}.")
        if self.area is not None and not (_number(self.area) and self.area >= 0):
            raise EdgesegError(f"field 'area': expected pixels >= 0, got {self.area!r}.")
        if not isinstance(self.below, bool):
            raise EdgesegError(f"field 'below': expected true or false, got {self.below!r}.")
        for key in ("for_s", "clear_after", "hysteresis"):
            value = getattr(self, key)
            if not (_number(value) and value >= 0):
                raise EdgesegError(f"field {_file_key(key)!r}: expected a number >= 0, got {value!r}.")

    @property
    def threshold(self) -> float:
        return float(self.fraction if self.fraction is not None else self.area)

    def value(self, stats: ZoneStats) -> float:
        """What this rule compares on one frame of its zone: the class's fraction or its largest region's area."""
        if self.fraction is not None:
            return float(stats.class_fraction.get(self.class_name, 0.0))
        region = stats.regions.get(self.class_name)
        return float(region.area) if region is not None else 0.0

    def holds(self, value: float, *, active: bool) -> bool:
        """True when the condition holds: past the threshold to start; within ``hysteresis`` of it to go on."""
        margin = self.hysteresis if active else 0.0
        if self.below:
            return value <= self.threshold + margin
        return value >= self.threshold - margin


@dataclass(frozen=True, kw_only=True)
class Event:
    """One record of an event: ``type`` ``start`` (the condition held ``for`` seconds) or ``end`` (it was
    false ``clear_after`` seconds, or the stream ended: ``reason``).

    ``since``: stream time the condition began to hold; ``start``: when the event started; ``end``:
    when it ended (None in a start record). ``frame``: the frame index of this record. ``evidence``:
    the rule's values (``fraction`` and ``area`` now, their peaks so far, the ``threshold``).
    ``snapshot``/``clip``: paths of the JPEG and clip written for it, relative to the run's folder.

    Example::

        Event.from_record(json.loads(line)).evidence["peak_fraction"]
    """

    id: str
    type: str
    stream: str
    rule: str
    zone: str
    class_name: str
    since: float
    start: float
    frame: int
    evidence: Mapping[str, float]
    end: float | None = None
    reason: str | None = None
    wall: str = ""
    snapshot: str | None = None
    clip: str | None = None

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise EdgesegError(f"event field 'type': expected 'start' or 'end', got {self.type!r}.")
        if self.type == "end" and self.end is None:
            raise EdgesegError("event field 'end': an end record needs its end time.")

    def to_record(self) -> dict[str, Any]:
        """The versioned JSON record (``events.jsonl``, MQTT, webhooks): ``class_name`` is written ``class``."""
        return {"schema": EVENT_SCHEMA, "id": self.id, "type": self.type, "stream": self.stream, "rule": self.rule,
                "zone": self.zone, "class": self.class_name, "since": round(self.since, 6),
                "start": round(self.start, 6), "end": None if self.end is None else round(self.end, 6),
                "frame": self.frame, "reason": self.reason, "wall": self.wall,
                "evidence": {k: round(float(v), 6) for k, v in self.evidence.items()},
                "snapshot": self.snapshot, "clip": self.clip}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Event:
        """An event from its record; refuses another schema with a line that says which."""
        if record.get("schema") != EVENT_SCHEMA:
            raise EdgesegError(f"event record schema {record.get('schema')!r}: expected {EVENT_SCHEMA!r}.")
        try:
            return cls(id=record["id"], type=record["type"], stream=record["stream"], rule=record["rule"],
                       zone=record["zone"], class_name=record["class"], since=record["since"], start=record["start"],
                       frame=record["frame"], evidence=dict(record["evidence"]), end=record.get("end"),
                       reason=record.get("reason"), wall=record.get("wall", ""), snapshot=record.get("snapshot"),
                       clip=record.get("clip"))
        except KeyError as missing:
            raise EdgesegError(f"event record: missing field {missing.args[0]!r}.") from None


@dataclass
class _State:
    since: float | None = None  # the condition holds since (not yet an event)
    clear_since: float | None = None  # an active event's condition is false since
    event: Event | None = None  # the start record of the active event
    peak_fraction: float = 0.0
    peak_area: float = 0.0
    last: float = -math.inf


@dataclass
class _Stream:
    states: dict[str, _State] = field(default_factory=dict)


class RuleEngine:
    """Evaluates rules per stream and frame; returns the events that start or end.

    Each stream is evaluated on its own state, so writer threads may feed different streams at
    once; one stream must be fed from one thread, in order. A timestamp that goes back (a stream
    that reconnected) restarts the timers of that stream but keeps its active events.
    ``counts[(stream, rule)]`` counts the events started.

    Example::

        engine = RuleEngine(rules)
        events = engine.update("front", 120, 4.8, stats)      # stats: {zone: ZoneStats}
        events += engine.finish("front", 121, 4.84)            # the stream ended: active events end
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise EdgesegError(f"rule names must be unique, got {names}.")
        self.counts: dict[tuple[str, str], int] = {}
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()

    def _stream(self, stream: str) -> _Stream:
        state = self._streams.get(stream)
        if state is None:
            with self._lock:
                state = self._streams.setdefault(stream, _Stream({rule.name: _State() for rule in self.rules}))
        return state

    def update(self, stream: str, frame_index: int, timestamp: float, stats: Mapping[str, ZoneStats]) -> list[Event]:
        """The events that start or end on this frame of ``stream`` (rules whose zone is not in ``stats`` wait)."""
        events = []
        states = self._stream(stream).states
        for rule in self.rules:
            zone = stats.get(rule.zone)
            if zone is None:
                continue
            state = states[rule.name]
            if timestamp < state.last:
                state.since = None if state.since is None else timestamp
                state.clear_since = None if state.clear_since is None else timestamp
            state.last = timestamp
            value = rule.value(zone)
            fraction = float(zone.class_fraction.get(rule.class_name, 0.0))
            region = zone.regions.get(rule.class_name)
            area = float(region.area) if region is not None else 0.0
            holding = rule.holds(value, active=state.event is not None)
            if state.event is None:
                if not holding:
                    state.since = None
                    continue
                if state.since is None:
                    state.since, state.peak_fraction, state.peak_area = timestamp, 0.0, 0.0
                state.peak_fraction, state.peak_area = max(state.peak_fraction, fraction), max(state.peak_area, area)
                if timestamp - state.since >= rule.for_s - 1e-9:
                    state.event = Event(id=_new_id(), type="start", stream=stream, rule=rule.name, zone=rule.zone,
                                        class_name=rule.class_name, since=state.since, start=timestamp,
                                        frame=frame_index, evidence=self._evidence(rule, state, fraction, area),
                                        wall=_now())
                    state.clear_since = None
                    key = (stream, rule.name)
                    self.counts[key] = self.counts.get(key, 0) + 1
                    events.append(state.event)
                continue
            state.peak_fraction, state.peak_area = max(state.peak_fraction, fraction), max(state.peak_area, area)
            if holding:
                state.clear_since = None
                continue
            if state.clear_since is None:
                state.clear_since = timestamp
            if timestamp - state.clear_since >= rule.clear_after - 1e-9:
                events.append(self._end(rule, state, frame_index, timestamp, fraction, area, "cleared"))
        return events

    def finish(self, stream: str, frame_index: int, timestamp: float, *, reason: str = "stream ended") -> list[Event]:
        """End every active event of ``stream`` (the stream ended or the run stopped)."""
        events = []
        states = self._stream(stream).states
        for rule in self.rules:
            state = states[rule.name]
            if state.event is not None:
                last = state.event.evidence
                events.append(self._end(rule, state, frame_index, max(timestamp, state.event.start),
                                        last.get("fraction", 0.0), last.get("area", 0.0), reason))
            state.since = state.clear_since = None
        return events

    def active(self, stream: str | None = None) -> list[Event]:
        """The start records of the events active now (of one stream, or of all)."""
        streams = [self._streams.get(stream)] if stream is not None else list(self._streams.values())
        return [state.event for entry in streams if entry is not None for state in entry.states.values()
                if state.event is not None]

    def streams(self) -> list[str]:
        return list(self._streams)

    def _end(self, rule: Rule, state: _State, frame_index: int, timestamp: float, fraction: float, area: float,
             reason: str) -> Event:
        start = state.event
        assert start is not None  # only called for an active event
        event = replace(start, type="end", end=timestamp, frame=frame_index, reason=reason, wall=_now(),
                        evidence=self._evidence(rule, state, fraction, area))
        state.event, state.since, state.clear_since = None, None, None
        return event

    @staticmethod
    def _evidence(rule: Rule, state: _State, fraction: float, area: float) -> dict[str, float]:
        return {"fraction": fraction, "area": area, "peak_fraction": state.peak_fraction,
                "peak_area": state.peak_area, "threshold": rule.threshold}


class EventLog:
    """``events.jsonl``: one versioned record per line, flushed and fsync'd as each event comes (an
    event is rare and must survive a crash); thread-safe.

    Example::

        with EventLog("run/events.jsonl") as log:
            log.write(event)
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self._lock = threading.Lock()
        self._handle = open(self.path, "a" if append else "w", encoding="utf-8")

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, event: Event) -> None:
        line = json.dumps(event.to_record()) + "\n"
        with self._lock:
            if self._handle is None:
                raise EdgesegError(f"`{self.path}` is closed: no event can be written to it.")
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


def read_events(path: str | os.PathLike) -> list[Event]:
    """The events of an ``events.jsonl`` (a last line cut by a crash is left out)."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        events.append(Event.from_record(record))
    return events


def _file_key(key: str) -> str:
    return {"class_name": "class", "for_s": "for"}.get(key, key)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _new_id() -> str:
    # Frigate's form: start time and a random tail; unique across runs, so receivers can deduplicate by it.
    return f"{time.time():.6f}-{secrets.token_hex(3)}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
