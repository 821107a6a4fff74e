"""Rules, events, the zones/rules file and the Decisions object, fed by synthetic masks and by a real model on a video."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgeseg.runtime import Model
from edgeseg.runtime.decisions import (DecisionConfig, DecisionOptions, Decisions, EventLog, Rule, RuleEngine, Zone,
                                       load_decisions, parse_decisions, read_events, register_metrics)
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.events import EVENT_SCHEMA, Event
from edgeseg.runtime.zones import Region, ZoneStats

CLASSES = ("background", "smoke", "water")


def _stats(fraction, area=0, zone="door", name="smoke"):
    regions = {name: Region(area, (0, 0, 1, 1), (0.0, 0.0))} if area else {}
    return {zone: ZoneStats(zone, 100, {name: fraction}, regions)}


def _run(engine, values, *, fps=10.0, stream="cam", area=False):
    """Feed one value per frame; returns [(frame, event)] in order."""
    out = []
    for index, value in enumerate(values):
        stats = _stats(0.0, value) if area else _stats(value)
        out += [(index, event) for event in engine.update(stream, index, index / fps, stats)]
    return out


def test_an_event_starts_when_the_condition_held_for_seconds_and_ends_after_clear_after():
    rule = Rule("smoke-door", class_name="smoke", zone="door", fraction=0.3, for_s=1.0, clear_after=0.5)
    engine = RuleEngine([rule])
    values = [0.0] * 10 + [0.5] * 30 + [0.0] * 30  # true from frame 10 (1.0 s) to frame 39 (3.9 s)
    events = _run(engine, values)
    assert [(frame, event.type) for frame, event in events] == [(20, "start"), (45, "end")]
    start, end = events[0][1], events[1][1]
    assert (start.since, start.start, end.end) == pytest.approx((1.0, 2.0, 4.5))
    assert start.id == end.id and end.reason == "cleared" and start.stream == "cam"
    assert start.evidence == {"fraction": 0.5, "area": 0.0, "peak_fraction": 0.5, "peak_area": 0.0, "threshold": 0.3}
    assert engine.counts == {("cam", "smoke-door"): 1}


def test_a_short_blip_raises_nothing_and_hysteresis_keeps_an_event_through_noise():
    rule = Rule("r", class_name="smoke", zone="door", fraction=0.3, for_s=0.5)
    assert _run(RuleEngine([rule]), [0.0, 0.4, 0.4, 0.0, 0.4, 0.4, 0.4, 0.0]) == []  # never 0.5 s in a row
    noisy = [0.35] * 5 + [0.28, 0.32] * 10
    assert [e.type for _, e in _run(RuleEngine([Rule("r", class_name="smoke", zone="door", fraction=0.3)]), noisy)] \
        == ["start"] + ["end", "start"] * 10  # without hysteresis: flickers
    steady = Rule("r", class_name="smoke", zone="door", fraction=0.3, hysteresis=0.05)
    assert [e.type for _, e in _run(RuleEngine([steady]), noisy + [0.2])] == ["start", "end"]


def test_area_and_below_rules():
    area = Rule("big", class_name="smoke", zone="door", area=50, for_s=0.2)
    assert [(f, e.type) for f, e in _run(RuleEngine([area]), [10, 60, 60, 60, 10], area=True)] == [(3, "start"), (4, "end")]
    below = Rule("lane-clear", class_name="smoke", zone="door", fraction=0.1, below=True)
    assert [(f, e.type) for f, e in _run(RuleEngine([below]), [0.5, 0.05, 0.5])] == [(1, "start"), (2, "end")]


def test_streams_are_separate_and_finish_ends_active_events():
    engine = RuleEngine([Rule("r", class_name="smoke", zone="door", fraction=0.3)])
    assert [e.type for _, e in _run(engine, [0.5], stream="a")] == ["start"]
    assert _run(engine, [0.0], stream="b") == []
    assert [e.stream for e in engine.active()] == ["a"]
    assert engine.update("a", 5, 0.5, {"other": _stats(1.0)["door"]}) == []  # its zone not measured: waits
    ended = engine.finish("a", 6, 0.6, reason="stopped")
    assert [(e.type, e.reason, e.end) for e in ended] == [("end", "stopped", 0.6)]
    assert engine.active() == [] and engine.finish("b", 1, 0.1) == []


def test_a_timestamp_going_back_restarts_the_timers():
    engine = RuleEngine([Rule("r", class_name="smoke", zone="door", fraction=0.3, for_s=1.0)])
    for index, t in enumerate([5.0, 5.5]):
        assert engine.update("cam", index, t, _stats(0.5)) == []
    assert engine.update("cam", 2, 0.2, _stats(0.5)) == []  # reconnected: the clock restarted
    assert engine.update("cam", 3, 0.9, _stats(0.5)) == []
    assert [e.type for e in engine.update("cam", 4, 1.2, _stats(0.5))] == ["start"]


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one threshold"),
    ({"fraction": 0.3, "area": 10}, "exactly one threshold"),
    ({"fraction": 1.5}, "field 'fraction'"),
    ({"fraction": 0.3, "for_s": -1}, "field 'for'"),
    ({"area": 10, "hysteresis": float("nan")}, "field 'hysteresis'"),
])
def test_bad_rules_are_refused(kwargs, match):
    with pytest.raises(EdgesegError, match=match):
        Rule("r", class_name="smoke", zone="door", **kwargs)


def test_event_records_are_versioned_and_the_log_survives_a_cut_line(tmp_path):
    engine = RuleEngine([Rule("r", class_name="smoke", zone="door", fraction=0.3, clear_after=0.1)])
    events = [e for _, e in _run(engine, [0.5, 0.5, 0.0, 0.0, 0.0])]
    path = tmp_path / "events.jsonl"
    with EventLog(path) as log:
        for event in events:
            log.write(event)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["schema"] for r in records] == [EVENT_SCHEMA] * 2 and records[0]["class"] == "smoke"
    assert records[0]["end"] is None and records[1]["end"] == pytest.approx(0.3)
    with open(path, "a") as handle:
        handle.write('{"schema": 1, "id": "cut')  # a crash in the middle of a line
    assert read_events(path) == events
    with pytest.raises(EdgesegError, match="schema"):
        Event.from_record({**records[0], "schema": "other/9"})


GOOD = """{
  "zones": [
    {"name": "door", "units": "fraction",
     "points": [[0.1, 0.2], [0.5, 0.2], [0.5, 0.9], [0.1, 0.9]]},
    {"name": "dock", "units": "pixels", "points": [[10, 20], [60, 20], [60, 40]],
     "streams": ["yard"]}
  ],
  "rules": [
    {"name": "smoke-door", "class": "smoke", "zone": "door", "fraction": 0.3, "for": 5,
     "clear_after": 3, "hysteresis": 0.05},
    {"name": "water-dock", "class": "water", "zone": "dock", "area": 40}
  ],
  "sinks": [
    {"type": "webhook", "url": "http://127.0.0.1:9/hook", "name": "hook"},
    {"type": "command", "argv": ["true"], "attempts": 2}
  ]
}
"""


def test_a_good_file_loads_into_typed_objects():
    config = parse_decisions(GOOD, classes=CLASSES, streams=("front", "yard"), frame_sizes={"yard": (64, 48)})
    assert [z.name for z in config.zones] == ["door", "dock"] and config.zones[1].streams == ("yard",)
    assert config.rules[0] == Rule("smoke-door", class_name="smoke", zone="door", fraction=0.3, for_s=5, clear_after=3,
                                   hysteresis=0.05)
    assert [(s.type, s.key) for s in config.sinks][0] == ("webhook", "webhook-hook")
    assert [z.name for z in config.zones_for("front")] == ["door"]


@pytest.mark.parametrize("old, new, expected", [
    ('"class": "smoke"', '"class": "smok"', "line 9: rules[0] 'smoke-door' field 'class': unknown class 'smok'; "
                                            "the model's classes are background, smoke, water."),
    ('[60, 40]]', '[70, 40]]', "line 5: zones[1] 'dock' on stream 'yard': field 'points': point (70, 40) is outside "
                               "the 64x48 frame"),
    ('[0.5, 0.9], [0.1, 0.9]]', '[0.1, 0.9], [0.5, 0.9]]', "line 4: zones[0] 'door' field 'points': the polygon "
                                                           "crosses itself"),
    ('"streams": ["yard"]', '"streams": ["yrd"]', "line 6: zones[1] 'dock' field 'streams': unknown stream 'yrd'; "
                                                  "expected one of front, yard."),
    ('"for": 5', '"fro": 5', "line 9: rules[0] 'smoke-door' unknown field 'fro'; expected one of name, class, zone"),
    ('"zone": "dock"', '"zone": "deck"', "line 11: rules[1] 'water-dock' field 'zone': unknown zone 'deck'"),
    ('"units": "pixels", ', '', "line 5: zones[1] 'dock' field 'units' is missing; expected \"pixels\" or \"fraction\"."),
    ('"area": 40}', '"area": -4}', "line 11: rules[1] 'water-dock' field 'area': expected pixels >= 0, got -4."),
    ('"type": "command"', '"type": "cmd"', "line 15: sinks[1] field 'type': expected one of mqtt, webhook, command"),
    ('"attempts": 2', '"attempts": "2"', "line 15: sinks[1] (command) field 'attempts': expected an integer"),
    ('"clear_after": 3,', '"clear_after": 3', "line 10: not valid JSON (Expecting ',' delimiter"),
])
def test_a_file_with_a_mistake_is_refused_in_one_line_naming_the_line_and_field(old, new, expected):
    assert old in GOOD
    with pytest.raises(EdgesegError) as error:
        parse_decisions(GOOD.replace(old, new), classes=CLASSES, streams=("front", "yard"),
                        frame_sizes={"yard": (64, 48)}, name="zones.json")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("zones.json " + expected.split(":")[0] + ":"), message
    assert expected in message, message


def test_yaml_files_name_their_lines_too(tmp_path):
    path = tmp_path / "zones.yaml"
    path.write_text("zones:\n  - name: door\n    units: fraction\n    points: [[0, 0], [1, 0], [1, 1]]\n"
                    "rules:\n  - name: r\n    zone: door\n    class: fire\n    fraction: 0.5\n")
    with pytest.raises(EdgesegError, match=r"^zones.yaml line 8: rules\[0\] 'r' field 'class': unknown class 'fire'"):
        load_decisions(path, classes=CLASSES)
    path.write_text(path.read_text().replace("fire", "smoke"))
    assert load_decisions(path, classes=CLASSES).rules[0].class_name == "smoke"


def _door_config(**rule):
    zone = Zone("door", [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)], units="fraction")  # the left half
    return DecisionConfig((zone,), (Rule("smoke-door", class_name="smoke", zone="door", fraction=0.3, **rule),))


def test_decisions_measure_deliver_snapshot_draw_and_count(tmp_path):
    seen = []
    decisions = Decisions(_door_config(for_s=0.2, clear_after=0.2), classes=CLASSES, out=tmp_path, on_event=seen.append)
    registry = CollectorRegistry()
    register_metrics(registry, decisions)
    picture = np.full((40, 60, 3), 90, np.uint8)
    for index in range(12):
        mask = np.zeros((40, 60), np.uint8)
        if 2 <= index < 7:
            mask[:, :20] = 1  # two thirds of the door zone
        fields, events = decisions.update("front", index, index / 10, mask, picture)
        assert fields["zones"]["door"]["area"] == 40 * 31  # x from 0 to 30 as cv2.fillPoly draws it
        if index == 4:
            assert [e.type for e in events] == ["start"] and fields["events"] == [
                {"id": events[0].id, "type": "start", "rule": "smoke-door"}]
            assert fields["zones"]["door"]["class_fraction"]["smoke"] == pytest.approx(800 / 1240, abs=1e-6)
            assert fields["zones"]["door"]["regions"]["smoke"]["bbox"] == [0, 0, 20, 40]
            drawn = decisions.draw(picture.copy(), "front")
            edge = drawn[:, 30].astype(int)  # the zone's right edge: red while the event is active
            assert ((edge[:, 2] > 200) & (edge[:, 0] < 60)).sum() > 30
            assert "smoke-door" in json.dumps(fields)
    assert [e.type for e in seen] == ["start", "end"]
    start = seen[0]
    assert start.snapshot == f"snapshots/{start.id}.jpg" and seen[1].snapshot == start.snapshot
    assert cv2.imread(str(tmp_path / start.snapshot)).shape == (40, 60, 3)
    metrics = generate_latest(registry).decode()
    assert 'edgeseg_events_total{rule="smoke-door",stream="front"} 1.0' in metrics
    assert 'edgeseg_zone_class_fraction{class="smoke",stream="front",zone="door"} 0.0' in metrics
    decisions.close()
    assert [e.type for e in read_events(tmp_path / "events.jsonl")] == ["start", "end"]


def test_close_ends_active_events_as_stopped(tmp_path):
    decisions = Decisions(_door_config(), classes=CLASSES, out=tmp_path)
    decisions.update("front", 0, 0.0, np.ones((10, 10), np.uint8))
    assert len(decisions.active()) == 1
    decisions.close()
    assert [(e.type, e.reason) for e in read_events(tmp_path / "events.jsonl")] == [("start", None), ("end", "stopped")]


def test_a_class_entering_a_zone_of_a_real_video_raises_an_event_on_the_right_frame(tmp_path, kit):
    """The tiny dominant-colour model on a video: a red square enters the right half at frame 8."""
    frames = []
    for index in range(30):
        frame = np.zeros((32, 64, 3), np.uint8)
        frame[:] = kit.GREEN
        x = 2 + 3 * index  # left edge; the square (14 px wide) lies inside the right half from x = 32 (index 10)
        if x + 14 <= 64:
            frame[8:24, x: x + 14] = kit.RED
        frames.append(frame)
    video = kit.write_video(tmp_path / "enter.avi", frames, fps=10.0)
    model = Model(kit.build_segmentation(tmp_path / "seg.onnx"))
    config = DecisionConfig((Zone("right", [(0.5, 0), (1, 0), (1, 1), (0.5, 1)], units="fraction"),),
                            (Rule("red-right", class_name="red", zone="right", area=200, for_s=0.3, clear_after=0.2),))
    decisions = Decisions(config, classes=("red", "green", "blue"), out=tmp_path / "run")
    events = []
    for frame, result in model.iterate(str(video)):
        events += decisions.update("clip", frame.index, frame.timestamp, result.mask, frame.image)[1]
    decisions.close()
    # red region in the zone >= 200 px: 16 rows x 14 columns from index 10 (x = 32) while the square is
    # whole (x + 14 <= 64 up to index 16); held 0.3 s -> starts at index 13; gone at 17, cleared 0.2 s later -> 19.
    assert [(e.type, e.frame) for e in events] == [("start", 13), ("end", 19)]


def test_regions_all_and_streams_fed_from_threads_at_once(tmp_path):
    import threading

    decisions = Decisions(_door_config(), classes=CLASSES, out=tmp_path, options=DecisionOptions(regions="all"))
    fields, _ = decisions.update("probe", 0, 0.0, np.full((8, 8), 2, np.uint8))
    assert set(fields["zones"]["door"]["regions"]) == {"water"}  # not a class the rule watches: measured for "all"

    def feed(stream):
        for index in range(40):
            decisions.update(stream, index, index / 10, np.full((8, 8), index // 5 % 2, np.uint8))

    threads = [threading.Thread(target=feed, args=(f"cam{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decisions.close()
    events = read_events(tmp_path / "events.jsonl")
    for i in range(4):
        mine = [e.type for e in events if e.stream == f"cam{i}"]
        assert mine == ["start", "end"] * 4, mine  # on for 5 frames, off for 5, four times; every line whole
