"""From masks to decisions: a zones/rules file, and the one object the pipeline feeds per frame.

:func:`load_decisions` reads a zones/rules file (JSON; YAML too where PyYAML is installed) and
checks it against the model's classes, the run's streams and, where known, their frame sizes: a
mistake stops the run at start with one line naming the file, the line and the field. The file::

    {
      "zones": [
        {"name": "door", "units": "fraction", "points": [[0.1, 0.2], [0.5, 0.2], [0.5, 0.9], [0.1, 0.9]]},
        {"name": "dock", "units": "pixels", "points": [[10, 200], [300, 200], [300, 239]], "streams": ["yard"]}
      ],
      "rules": [
        {"name": "smoke-at-door", "class": "smoke", "zone": "door", "fraction": 0.3, "for": 5,
         "clear_after": 3, "hysteresis": 0.05}
      ],
      "sinks": [
        {"type": "mqtt", "host": "127.0.0.1", "port": 1883, "topic": "edgeseg"},
        {"type": "webhook", "url": "http://127.0.0.1:1880/edgeseg"},
        {"type": "command", "argv": ["/usr/local/bin/on-event"]}
      ]
    }

:class:`Decisions` is built from that file, the model's classes and the sinks; per frame,
``update(stream, frame_index, timestamp, mask, picture)`` measures the zones, evaluates the rules
and returns the frame record's new fields and the events of that frame, which it has already
written (``events.jsonl``, a snapshot JPEG, a clip, every sink, the ``on_event`` callback).
``draw(picture, stream)`` draws the zones and active events on an overlay; ``close()`` ends what is
active (``reason`` ``stopped``) and closes everything. :func:`register_metrics` puts
``edgeseg_zone_class_fraction{stream,zone,class}`` and ``edgeseg_events_total{stream,rule}`` on a
prometheus_client registry, read at scrape time.

Example::

    decisions = Decisions.from_file("zones.json", classes=model.contract.output.classes, out="run")
    for frame, result in model.iterate("samples/scenes.avi"):
        fields, events = decisions.update("scenes", frame.index, frame.timestamp, result.mask, frame.image)
    decisions.close()
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.runtime._clips import ClipRecorder
from edgeseg.runtime._eventsinks import CommandSink, DiskQueue, MqttSink, QueuedEventSink, WebhookSink
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.events import EVENT_SCHEMA, Event, EventLog, Rule, RuleEngine, read_events
from edgeseg.runtime.extras import require
from edgeseg.runtime.files import write_bytes_atomic
from edgeseg.runtime.zones import Zone, ZoneMeter, ZoneStats

log = logging.getLogger("edgeseg.runtime")

__all__ = [
    "EVENT_SCHEMA", "ClipRecorder", "CommandSink", "DecisionConfig", "DecisionOptions", "Decisions", "DiskQueue", "Event",
    "EventLog", "MqttSink", "QueuedEventSink", "Rule", "RuleEngine", "SinkSpec", "WebhookSink", "Zone", "ZoneMeter", "ZoneStats",
    "default_queue_root", "load_decisions", "parse_decisions", "read_events", "register_metrics",
]

_ZONE_KEYS = ("name", "points", "units", "streams")
_RULE_KEYS = ("name", "class", "zone", "fraction", "area", "below", "for", "clear_after", "hysteresis")
_SINK_KEYS = {
    "mqtt": ("host", "port", "topic", "client_id", "username", "password", "keepalive"),
    "webhook": ("url", "headers", "timeout"),
    "command": ("argv", "timeout", "attempts"),
}
_SINK_COMMON = ("type", "name", "queue", "max_queued")


@dataclass(frozen=True)
class SinkSpec:
    """One ``sinks`` entry of a zones/rules file: its ``type`` (mqtt, webhook, command) and options."""

    type: str
    options: Mapping[str, Any]
    name: str | None = None
    queue: str | None = None
    max_queued: int = 10_000

    def build(self, *, queue_root: str | os.PathLike | None = None) -> QueuedEventSink:
        """The sink, its disk queue at ``queue`` or under ``queue_root`` (default: :func:`default_queue_root`)."""
        folder = Path(self.queue).expanduser() if self.queue else Path(queue_root or default_queue_root()) / self.key
        options = dict(self.options)
        if self.type == "mqtt":
            return MqttSink(options.pop("host"), options.pop("port", 1883), queue=folder, max_queued=self.max_queued,
                            **options)
        if self.type == "webhook":
            return WebhookSink(options.pop("url"), queue=folder, max_queued=self.max_queued, **options)
        return CommandSink(options.pop("argv"), queue=folder, max_queued=self.max_queued, **options)

    @property
    def key(self) -> str:
        """The queue folder's name: ``<type>-<name>``, or ``<type>-<hash of the options>`` (same sink, same queue)."""
        if self.name:
            return f"{self.type}-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}"
        digest = hashlib.sha256(json.dumps(dict(self.options), sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.type}-{digest}"


@dataclass(frozen=True)
class DecisionConfig:
    """What a zones/rules file holds, checked: zones, rules, sinks."""

    zones: tuple[Zone, ...] = ()
    rules: tuple[Rule, ...] = ()
    sinks: tuple[SinkSpec, ...] = ()
    source: str = "<python>"

    def zones_for(self, stream: str) -> tuple[Zone, ...]:
        return tuple(zone for zone in self.zones if zone.applies_to(stream))


def default_queue_root() -> Path:
    """Where sinks keep their event queues between runs: ``$XDG_CACHE_HOME/edgeseg/events``
    (``~/.cache/edgeseg/events``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeseg" / "events"


# -- the file ----------------------------------------------------------------------------------------


class _Node(dict):
    """A mapping read from the file, with the line it starts on and the line of each key."""

    line: int = 0
    key_lines: dict[str, int]


def load_decisions(path: str | os.PathLike, *, classes: Sequence[str] | None, streams: Iterable[str] | None = None,
                   frame_sizes: Mapping[str, tuple[int, int]] | None = None) -> DecisionConfig:
    """Read and check a zones/rules file; EdgesegError with one line (file, line, field) on a mistake.

    ``classes``: the model's classes (a rule's ``class`` must be one; None: not checked, as where the
    model is not at hand). ``streams``: the run's stream
    names (a zone's ``streams`` must name them; None: not checked). ``frame_sizes``: ``{stream:
    (width, height)}`` where known at start: pixel zones must lie inside those frames (else
    :class:`Decisions` checks them at each stream's first frame).

    Example::

        config = load_decisions("zones.json", classes=("background", "smoke"), streams=("front", "yard"))
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EdgesegError(f"Cannot read the zones/rules file `{path}`: {getattr(error, 'strerror', None) or error}.") from None
    return parse_decisions(text, classes=classes, streams=streams, frame_sizes=frame_sizes, name=path.name,
                           yaml=path.suffix.lower() in (".yaml", ".yml"))


def parse_decisions(text: str, *, classes: Sequence[str] | None, streams: Iterable[str] | None = None,
                    frame_sizes: Mapping[str, tuple[int, int]] | None = None, name: str = "<text>",
                    yaml: bool = False) -> DecisionConfig:
    """:func:`load_decisions` of a file's text (``name`` is what the error lines call it)."""
    data = _parse_yaml(text, name) if yaml else _parse_json(text, name)
    check = _Checker(name, None if classes is None else tuple(classes), None if streams is None else tuple(streams), dict(frame_sizes or {}))
    return check.config(data)


class _Checker:
    def __init__(self, name: str, classes: tuple[str, ...] | None, streams: tuple[str, ...] | None,
                 sizes: dict[str, tuple[int, int]]) -> None:
        self.name, self.classes, self.streams, self.sizes = name, classes, streams, sizes

    def fail(self, node: Any, where: str, message: str, key: str | None = None) -> EdgesegError:
        line = getattr(node, "key_lines", {}).get(key) if key else None
        line = line or getattr(node, "line", 0)
        at = f"{self.name} line {line}" if line else self.name
        return EdgesegError(f"{at}: {where}{message}")

    def config(self, data: Any) -> DecisionConfig:
        if not isinstance(data, dict):
            raise self.fail(data, "", f"expected an object with \"zones\" and \"rules\", got {type(data).__name__}.")
        self.unknown(data, "", ("zones", "rules", "sinks"))
        zones = tuple(self.zone(item, i) for i, item in enumerate(self.items(data, "zones")))
        rules = tuple(self.rule(item, i, zones) for i, item in enumerate(self.items(data, "rules")))
        sinks = tuple(self.sink(item, i) for i, item in enumerate(self.items(data, "sinks")))
        self.unique(data, "zones", zones)
        self.unique(data, "rules", rules)
        return DecisionConfig(zones, rules, sinks, self.name)

    def items(self, data: dict, key: str) -> list:
        items = data.get(key, [])
        if not isinstance(items, list):
            raise self.fail(data, "", f"field {key!r}: expected a list, got {type(items).__name__}.", key)
        return items

    def unique(self, data: dict, key: str, items: tuple) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                node = data[key][i]
                raise self.fail(node, f"{key}[{i}] field 'name': ", f"{item.name!r} is used twice; names must be unique.",
                                "name")
            seen.add(item.name)

    def unknown(self, node: dict, where: str, known: Sequence[str]) -> None:
        for key in node:
            if key not in known:
                raise self.fail(node, where, f"unknown field {key!r}; expected one of {', '.join(known)}.", key)

    def zone(self, node: Any, i: int) -> Zone:
        where = f"zones[{i}] "
        if not isinstance(node, dict):
            raise self.fail(node, where, f"expected an object, got {node!r}.")
        where = f"zones[{i}] {node.get('name', '')!r} ".replace("'' ", "")
        self.unknown(node, where, _ZONE_KEYS)
        for key in ("name", "points", "units"):
            if key not in node:
                raise self.fail(node, where, f"field {key!r} is missing" +
                                ("; expected \"pixels\" or \"fraction\"." if key == "units" else "."))
        try:
            zone = Zone(node["name"], node["points"], units=node["units"], streams=node.get("streams"))
        except EdgesegError as error:
            raise self.fail(node, where, str(error), _field_of(error)) from None
        for stream in zone.streams or ():
            if self.streams is not None and stream not in self.streams:
                raise self.fail(node, where, f"field 'streams': unknown stream {stream!r}; expected one of "
                                f"{', '.join(self.streams)}.", "streams")
        for stream, (width, height) in self.sizes.items():
            if zone.applies_to(stream):
                try:
                    zone.check_fits(width, height)
                except EdgesegError as error:
                    raise self.fail(node, where, f"on stream {stream!r}: {error}", "points") from None
        return zone

    def rule(self, node: Any, i: int, zones: tuple[Zone, ...]) -> Rule:
        where = f"rules[{i}] "
        if not isinstance(node, dict):
            raise self.fail(node, where, f"expected an object, got {node!r}.")
        where = f"rules[{i}] {node.get('name', '')!r} ".replace("'' ", "")
        self.unknown(node, where, _RULE_KEYS)
        for key in ("name", "class", "zone"):
            if key not in node:
                raise self.fail(node, where, f"field {key!r} is missing.")
        if self.classes is not None and node["class"] not in self.classes:
            raise self.fail(node, where, f"field 'class': unknown class {node['class']!r}; the model's classes are "
                            f"{', '.join(self.classes)}.", "class")
        names = [zone.name for zone in zones]
        if node["zone"] not in names:
            raise self.fail(node, where, f"field 'zone': unknown zone {node['zone']!r}; the file's zones are "
                            f"{', '.join(names) or '(none)'}.", "zone")
        try:
            return Rule(node["name"], class_name=node["class"], zone=node["zone"], fraction=node.get("fraction"),
                        area=node.get("area"), below=node.get("below", False), for_s=node.get("for", 0.0),
                        clear_after=node.get("clear_after", 0.0), hysteresis=node.get("hysteresis", 0.0))
        except EdgesegError as error:
            raise self.fail(node, where, str(error), _field_of(error)) from None

    def sink(self, node: Any, i: int) -> SinkSpec:
        where = f"sinks[{i}] "
        if not isinstance(node, dict):
            raise self.fail(node, where, f"expected an object, got {node!r}.")
        kind = node.get("type")
        if kind not in _SINK_KEYS:
            raise self.fail(node, where, f"field 'type': expected one of {', '.join(_SINK_KEYS)}, got {kind!r}.",
                            "type")
        where = f"sinks[{i}] ({kind}) "
        self.unknown(node, where, _SINK_COMMON + _SINK_KEYS[kind])
        required = {"mqtt": "host", "webhook": "url", "command": "argv"}[kind]
        if required not in node:
            raise self.fail(node, where, f"field {required!r} is missing.")
        types = {"host": str, "port": int, "topic": str, "client_id": str, "username": str, "password": str,
                 "keepalive": int, "url": str, "headers": dict, "timeout": (int, float), "argv": list, "attempts": int,
                 "name": str, "queue": str, "max_queued": int}
        for key, value in node.items():
            wanted = types.get(key)
            if wanted is not None and (not isinstance(value, wanted) or isinstance(value, bool)):
                raise self.fail(node, where, f"field {key!r}: expected {_type_name(wanted)}, got {value!r}.", key)
        if kind == "command" and not (node["argv"] and all(isinstance(part, str) for part in node["argv"])):
            raise self.fail(node, where, f"field 'argv': expected a non-empty list of strings, got {node['argv']!r}.",
                            "argv")
        if node.get("max_queued", 1) < 1:
            raise self.fail(node, where, f"field 'max_queued': expected >= 1, got {node['max_queued']!r}.", "max_queued")
        options = {key: (dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value)
                   for key, value in node.items() if key not in _SINK_COMMON}
        return SinkSpec(kind, options, name=node.get("name"), queue=node.get("queue"),
                        max_queued=node.get("max_queued", 10_000))


def _type_name(wanted: Any) -> str:
    names = {str: "a string", int: "an integer", dict: "an object", list: "a list", (int, float): "a number"}
    return names.get(wanted, str(wanted))


def _field_of(error: EdgesegError) -> str | None:
    match = re.match(r"field '(\w+)'", str(error))
    return match.group(1) if match else None


def _parse_json(text: str, name: str) -> Any:
    import json.decoder
    import json.scanner

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        string, end = s_and_end
        starts: list[int] = []

        def recording(s: str, idx: int):
            starts.append(idx)
            return scan_once(s, idx)

        pairs, end = json.decoder.JSONObject(s_and_end, strict, recording, None, list, memo)
        node = _Node(pairs if isinstance(pairs, list) else [])
        node.line = string.count("\n", 0, s_and_end[1]) + 1
        node.key_lines = {key: string.count("\n", 0, start) + 1 for (key, _), start in zip(pairs or [], starts)}
        return node, end

    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # the pure-Python scanner calls our parse_object
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as error:
        raise EdgesegError(f"{name} line {error.lineno}: not valid JSON ({error.msg}, column {error.colno}).") from None


def _parse_yaml(text: str, name: str) -> Any:
    yaml = require("yaml", purpose=f"{name}: a YAML zones/rules file", fix="or write it as JSON")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise EdgesegError(f"{name}{where}: not valid YAML ({getattr(error, 'problem', None) or error}).") from None
    constructor = yaml.SafeLoader(text)

    def convert(node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            out = _Node()
            out.line = node.start_mark.line + 1
            out.key_lines = {}
            for key, value in node.value:
                out[str(key.value)] = convert(value)
                out.key_lines[str(key.value)] = key.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [convert(item) for item in node.value]
        return constructor.construct_object(node)

    return convert(root) if root is not None else _Node()


# -- the object the pipeline feeds ---------------------------------------------------------------------


@dataclass
class _StreamState:
    meter: ZoneMeter
    zones: tuple[Zone, ...]
    fps: float | None = None
    clips: ClipRecorder | None = None
    last_index: int = 0
    last_time: float = 0.0
    stats: dict[str, ZoneStats] = field(default_factory=dict)


@dataclass(frozen=True)
class DecisionOptions:
    """How a :class:`Decisions` records and measures, beside where it writes and whom it tells.

    ``clips``: ``(seconds_before, seconds_after)`` to write a clip around each event (None: no clips).
    ``snapshots``: write a JPEG of the picture at each event start. ``regions``: whose largest region is
    measured and recorded: ``"rules"``, the (zone, class) pairs the rules watch; ``"all"``, every class
    present in every zone (a connected-components pass each: see :class:`ZoneMeter`). ``connectivity``:
    of the regions. ``append``: add to an ``events.jsonl`` already there (a resumed run). ``queue_root``:
    where the sinks a config names keep their disk queues (None: :func:`default_queue_root`).

    Example::

        DecisionOptions(clips=(5, 10), regions="all")
    """

    clips: tuple[float, float] | None = None
    snapshots: bool = True
    regions: str = "rules"
    connectivity: int = 8
    append: bool = False
    queue_root: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.regions not in ("rules", "all"):
            raise EdgesegError(f"regions: expected 'rules' or 'all', got {self.regions!r}.")
        if self.clips is not None and (len(self.clips) != 2 or min(self.clips) < 0):
            raise EdgesegError(f"clips: expected (seconds_before, seconds_after), both >= 0, got {self.clips!r}.")


class Decisions:
    """Zones, rules and event outputs for a run of one or many streams; fed once per frame.

    ``classes``: the model's classes. ``out``: the run's folder (``events.jsonl``,
    ``snapshots/<event id>.jpg``, ``clips/<event id>.mp4``; None: no files). ``sinks``: event sinks
    (started here, closed by :meth:`close`). ``on_event``: called with each event, in the thread that
    called :meth:`update`. ``options``: clips (they need ``picture`` in :meth:`update`), snapshots,
    regions, appending (:class:`DecisionOptions`). Streams may be fed from different threads at once;
    each stream from one thread, in order.

    Example::

        decisions = Decisions(load_decisions("zones.json", classes=classes), classes=classes, out="run",
                              sinks=[WebhookSink("http://127.0.0.1:8000/hook", queue="run/queue")])
        fields, events = decisions.update("front", 0, 0.0, mask, picture)
        decisions.draw(picture, "front")
        decisions.close()
    """

    def __init__(self, config: DecisionConfig, *, classes: Sequence[str], out: str | os.PathLike | None = None,
                 sinks: Iterable[QueuedEventSink] = (), on_event: Callable[[Event], None] | None = None,
                 options: DecisionOptions = DecisionOptions()) -> None:
        self.config = config
        self.classes = tuple(classes)
        unknown = sorted({rule.class_name for rule in config.rules} - set(self.classes))
        if unknown:
            raise EdgesegError(f"{config.source}: rules name classes the model does not have: {', '.join(unknown)}; "
                               f"the model's classes are {', '.join(self.classes)}.")
        self.regions = options.regions
        self.out = Path(out) if out is not None else None
        self.sinks = list(sinks)
        self.clips = options.clips
        self.on_event = on_event
        self.snapshots = options.snapshots and self.out is not None
        self.connectivity = options.connectivity
        self.engine = RuleEngine(config.rules)
        self.path: Path | None = None  # the file the config was read from (from_file), to name its lines
        self.log = EventLog(self.out / "events.jsonl", append=options.append) if self.out is not None else None
        self.events_written = 0
        self._streams: dict[str, _StreamState] = {}
        self._paths: dict[str, tuple[str | None, str | None]] = {}  # event id -> (snapshot, clip)
        self._lock = threading.Lock()
        self._layers: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # the zones drawn, per stream, size, active zones
        self._closed = False
        for sink in self.sinks:
            sink.start()

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, classes: Sequence[str], streams: Iterable[str] | None = None,
                  frame_sizes: Mapping[str, tuple[int, int]] | None = None, out: str | os.PathLike | None = None,
                  on_event: Callable[[Event], None] | None = None, sinks: Iterable[QueuedEventSink] = (),
                  options: DecisionOptions = DecisionOptions()) -> Decisions:
        """Load and check a zones/rules file and build the sinks it names (plus ``sinks`` given here).

        Example::

            decisions = Decisions.from_file("zones.json", classes=model.contract.output.classes, out="run",
                                             options=DecisionOptions(clips=(5, 10)))
        """
        config = load_decisions(path, classes=classes, streams=streams, frame_sizes=frame_sizes)
        decisions = cls.from_config(config, classes=classes, out=out, on_event=on_event, sinks=sinks, options=options)
        decisions.path = Path(path)
        return decisions

    @classmethod
    def from_config(cls, config: DecisionConfig, *, classes: Sequence[str], out: str | os.PathLike | None = None,
                    on_event: Callable[[Event], None] | None = None, sinks: Iterable[QueuedEventSink] = (),
                    options: DecisionOptions = DecisionOptions()) -> Decisions:
        """A checked config (:func:`load_decisions`) with the sinks it names built (plus ``sinks`` given here),
        their disk queues under ``options.queue_root``.

        Example::

            config = load_decisions("zones.json", classes=classes, streams=("front",))
            decisions = Decisions.from_config(config, classes=classes, out="run")
        """
        built: list[QueuedEventSink] = []
        try:
            for spec in config.sinks:
                built.append(spec.build(queue_root=options.queue_root))
            return cls(config, classes=classes, out=out, sinks=[*built, *sinks], on_event=on_event, options=options)
        except BaseException:
            for sink in built:
                sink.close(timeout=0)
            raise

    def open_stream(self, stream: str, *, fps: float | None = None, size: tuple[int, int] | None = None) -> None:
        """Declare a stream before its first frame (optional): its fps (for clips) and frame size
        ``(width, height)`` (pixel zones are checked against it now instead of at the first frame)."""
        state = self._state(stream)
        if fps:
            state.fps = float(fps)
        if size is not None:
            state.meter.rasters(size[1], size[0])

    def update(self, stream: str, frame_index: int, timestamp: float, mask: np.ndarray,
               picture: np.ndarray | None = None) -> tuple[dict[str, Any], list[Event]]:
        """Measure one frame's zones, evaluate the rules, deliver the events that start or end on it.

        Returns the frame record's fields, ``{"zones": {zone: {"area", "class_fraction", "regions"}},
        "events": [{"id", "type", "rule"}]}``, and the events (as written to ``events.jsonl``).
        ``picture``: the frame (BGR) for snapshots and clips.
        """
        state = self._state(stream)
        stats = state.meter.measure(mask)
        state.stats, state.last_index, state.last_time = stats, frame_index, timestamp
        if state.clips is None and self.clips is not None and picture is not None:
            state.clips = ClipRecorder(fps=state.fps or 25.0, before=self.clips[0], after=self.clips[1])
        if state.clips is not None and picture is not None:
            state.clips.write(picture, timestamp)
        events = [self._deliver(event, state, picture) for event in self.engine.update(stream, frame_index, timestamp, stats)]
        fields = {"zones": {name: value.to_record() for name, value in stats.items()},
                  "events": [{"id": event.id, "type": event.type, "rule": event.rule} for event in events]}
        return fields, events

    def finish(self, stream: str, *, reason: str = "stream ended") -> list[Event]:
        """A stream ended: end its active events (at its last frame's time) and write its pending clips."""
        state = self._streams.get(stream)
        if state is None:
            return []
        events = [self._deliver(event, state, None)
                  for event in self.engine.finish(stream, state.last_index, state.last_time, reason=reason)]
        if state.clips is not None:
            state.clips.close()
        return events

    def active(self, stream: str | None = None) -> list[Event]:
        """The events active now (their start records), of one stream or of all."""
        return self.engine.active(stream)

    def draw(self, picture: np.ndarray, stream: str) -> np.ndarray:
        """Draw ``stream``'s zones (red while one of their rules is active, else yellow) and its active
        events on ``picture`` (BGR, drawn in place and returned).

        The zones of a stream are drawn once per frame size and set of active zones, into a layer and its
        mask, then copied onto each picture (one ``cv2.copyTo``: a twentieth of drawing them again at 96x96,
        under half at 640x480); crisp lines, no anti-aliasing, so the copied pixels are the zones' colours."""
        height, width = picture.shape[:2]
        active = self.engine.active(stream)
        scale = max(0.35, min(width, height) / 640)
        layer, mask = self._layer(stream, width, height, frozenset(event.zone for event in active), scale)
        cv2.copyTo(layer, mask, picture)
        for row, event in enumerate(active):
            text = f"{event.rule}: {event.class_name} in {event.zone}"
            cv2.putText(picture, text, (4, int(14 * scale * 1.6) * (row + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale,
                        (0, 0, 255), 1, cv2.LINE_AA)
        return picture

    def _layer(self, stream: str, width: int, height: int, hot: frozenset[str],
               scale: float) -> tuple[np.ndarray, np.ndarray]:
        key = (stream, width, height, hot)
        got = self._layers.get(key)
        if got is None:
            layer = np.zeros((height, width, 3), np.uint8)
            thick = max(1, round(scale * 2))
            for zone in self.config.zones_for(stream):
                points = zone.pixel_points(width, height)
                colour = (0, 0, 255) if zone.name in hot else (0, 220, 255)
                cv2.polylines(layer, [points.reshape(-1, 1, 2)], True, colour, thick, cv2.LINE_8)
                x, y = points[np.argmin(points[:, 1])]
                cv2.putText(layer, zone.name, (int(x) + 2, max(int(y) - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.45 * scale, colour, 1, cv2.LINE_8)
            mask = cv2.inRange(layer, (0, 0, 1), (255, 255, 255))  # every drawn pixel has red > 0
            if len(self._layers) >= 32:  # streams that change size or zones' states over and over: memory stays flat
                self._layers.clear()
            got = self._layers[key] = (layer, mask)
        return got

    def check_frame(self, stream: str, width: int, height: int) -> None:
        """Raise EdgesegError, one line naming the file's line and field, when a pixel zone of ``stream`` does
        not fit a ``width`` x ``height`` frame (the pipeline calls it when a stream's frame size is first seen).
        Thread-safe: it touches no stream state."""
        for zone in self.config.zones_for(stream):
            try:
                zone.check_fits(width, height)
            except EdgesegError as error:
                if self.path is not None:  # the checker names the line: read the file again, with this size
                    load_decisions(self.path, classes=self.classes, frame_sizes={stream: (width, height)})
                raise EdgesegError(f"{self.config.source}: zone {zone.name!r} on stream {stream!r}: {error}") from None

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.config.rules

    def stats(self, stream: str) -> dict[str, ZoneStats]:
        """``stream``'s newest zone statistics (of the last frame :meth:`update` measured)."""
        state = self._streams.get(stream)
        return dict(state.stats) if state is not None else {}

    def counts(self, stream: str) -> dict[str, int]:
        """Events started on ``stream`` so far, per rule (every rule named, 0 included)."""
        counts = self.engine.counts
        return {rule.name: counts.get((stream, rule.name), 0) for rule in self.config.rules}

    def sink_counters(self) -> dict[str, dict[str, int]]:
        """Each event sink's counters (queued, delivered, dropped, rejected, pending), by its target."""
        return {sink.target: dict(sink.counters) for sink in self.sinks}

    def latest(self) -> dict[str, dict[str, ZoneStats]]:
        """Each stream's newest zone statistics (what ``/metrics`` shows)."""
        return {name: state.stats for name, state in list(self._streams.items())}

    def close(self, *, timeout: float = 5.0) -> None:
        """End every active event (``reason`` ``stopped``), write pending clips, deliver what the sinks can
        within ``timeout`` s (the rest waits in their queues), close ``events.jsonl``. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            self.finish(stream, reason="stopped")
        for sink in self.sinks:
            sink.close(timeout=timeout)
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> Decisions:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _state(self, stream: str) -> _StreamState:
        state = self._streams.get(stream)
        if state is None:
            with self._lock:
                state = self._streams.get(stream)
                if state is None:
                    zones = self.config.zones_for(stream)
                    regions = None
                    if self.regions == "rules":
                        regions = {zone.name: {rule.class_name for rule in self.config.rules if rule.zone == zone.name}
                                   for zone in zones}
                    meter = ZoneMeter(zones, classes=self.classes, regions=regions, connectivity=self.connectivity)
                    state = self._streams[stream] = _StreamState(meter, zones)
        return state

    def _deliver(self, event: Event, state: _StreamState, picture: np.ndarray | None) -> Event:
        if event.type == "start":
            snapshot = clip = None
            if self.snapshots and picture is not None:
                snapshot = f"snapshots/{event.id}.jpg"
                ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 85])
                if ok:
                    try:
                        (self.out / "snapshots").mkdir(parents=True, exist_ok=True)
                        write_bytes_atomic(self.out / snapshot, data.tobytes())
                    except OSError as error:
                        raise EdgesegError(f"Cannot write `{self.out / snapshot}`: {error.strerror or error}.") from None
                else:
                    snapshot = None
            if state.clips is not None and self.out is not None:
                clip = f"clips/{event.id}.mp4"
                state.clips.clip(self.out / clip, at=event.start)
            self._paths[event.id] = (snapshot, clip)
        else:
            snapshot, clip = self._paths.pop(event.id, (None, None))
        event = replace(event, snapshot=snapshot, clip=clip)
        if self.log is not None:
            self.log.write(event)
        for sink in self.sinks:
            sink.write(event)
        self.events_written += 1
        if self.on_event is not None:
            self.on_event(event)
        return event


# -- Prometheus ------------------------------------------------------------------------------------


def register_metrics(registry: Any, decisions: Decisions) -> Any:
    """Put ``edgeseg_zone_class_fraction{stream,zone,class}`` (gauge: each stream's newest frame) and
    ``edgeseg_events_total{stream,rule}`` (counter: events started) on a prometheus_client
    ``registry``; read from ``decisions`` at scrape time. Returns the collector (to unregister it).

    Example::

        from prometheus_client import CollectorRegistry, generate_latest
        registry = CollectorRegistry()
        register_metrics(registry, decisions)
        print(generate_latest(registry).decode())
    """
    core = require("prometheus_client.core", purpose="zone and event metrics")
    CounterMetricFamily, GaugeMetricFamily = core.CounterMetricFamily, core.GaugeMetricFamily

    class _Collector:
        def collect(self):
            fractions = GaugeMetricFamily("edgeseg_zone_class_fraction",
                                          "Fraction of the zone each class covers, newest frame",
                                          labels=["stream", "zone", "class"])
            for stream, zones in decisions.latest().items():
                for zone, stats in zones.items():
                    for name, value in stats.class_fraction.items():
                        fractions.add_metric([stream, zone, name], value)
            events = CounterMetricFamily("edgeseg_events", "Events started, per stream and rule",
                                         labels=["stream", "rule"])
            counts = dict(decisions.engine.counts)
            for stream in decisions.engine.streams():
                for rule in decisions.config.rules:
                    events.add_metric([stream, rule.name], counts.get((stream, rule.name), 0))
            yield fractions
            yield events

        def describe(self):
            return []

    collector = _Collector()
    registry.register(collector)
    return collector
