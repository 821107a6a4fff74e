"""Zones, rules, events, clips and vector outputs through ``segment``: the one pipeline, every source kind.

Real components only: videos written here with cv2.VideoWriter, a live stream served by ffmpeg (imageio-ffmpeg's
binary), Debian's mosquitto as the MQTT broker, the live page over HTTP, pycocotools decoding the RLE.
The model is the dominant-colour classifier of tests/conftest.py (classes red, green, blue), so every mask is
known from the frame drawn.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as pycocotools_mask  # the dev extra
from pycocotools.coco import COCO

from edgeseg.runtime import EdgesegError, Source, read_mask_png, records, segment
from edgeseg.runtime.events import Event
from edgeseg.runtime.vectors import Polygon, rasterize_polygons
from edgeseg.runtime.zones import ZoneStats

FPS = 10.0
RED_FROM, RED_UNTIL = 10, 25  # the red square covers the right half on frames 10..24: t = 1.0 s to 2.4 s
FOR, CLEAR_AFTER = 0.5, 0.3


def _zones_file(path: Path, rules: list[dict], *, zones: list[dict] | None = None, sinks: list[dict] = ()) -> Path:
    zones = zones if zones is not None else [
        {"name": "right", "units": "fraction", "points": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]},
        {"name": "top-left", "units": "pixels", "points": [[0, 0], [20, 0], [20, 15], [0, 15]]},
    ]
    path.write_text(json.dumps({"zones": zones, "rules": rules, "sinks": list(sinks)}, indent=1))
    return path


RED_RIGHT = {"name": "red-right", "class": "red", "zone": "right", "fraction": 0.5, "for": FOR,
             "clear_after": CLEAR_AFTER}


def _entering_video(path: Path, kit, *, count: int = 40) -> Path:
    """Green frames; the right half red from frame RED_FROM to RED_UNTIL - 1 (a class enters a zone, then leaves)."""
    frames = []
    for i in range(count):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:] = kit.GREEN
        if RED_FROM <= i < RED_UNTIL:
            frame[:, 32:] = kit.RED
        frames.append(frame)
    return kit.write_video(path, frames, fps=FPS)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_class_entering_a_zone_starts_an_event_after_for_and_ends_it_after_clear_after(tmp_path, kit, seg_model):
    video = _entering_video(tmp_path / "door.avi", kit)
    zones = _zones_file(tmp_path / "zones.json", [RED_RIGHT])
    called, raised = [], []
    out = tmp_path / "out"
    summary = segment(video, model=seg_model, out=out, zones=str(zones), clips=(0.5, 0.5), on_result=called.append,
                      on_event=raised.append)

    frames = _lines(out / "frames.jsonl")
    times = {r["index"]: r["time_s"] for r in frames}
    assert [times[i] for i in (0, 10, 20)] == pytest.approx([0.0, 1.0, 2.0])  # the video's own clock
    start, end = _lines(out / "events.jsonl")
    assert (start["type"], end["type"], start["id"]) == ("start", "end", end["id"])
    # The condition holds from frame 10 (t 1.0 s): the event starts once it has held `for` 0.5 s (frame 15), to
    # within one frame; it is false from frame 25 (2.5 s) and the event ends `clear_after` 0.3 s later (frame 28).
    assert abs(start["frame"] - (RED_FROM + FOR * FPS)) <= 1 and start["since"] == pytest.approx(1.0)
    assert start["start"] - start["since"] >= FOR - 1e-6
    assert abs(end["frame"] - (RED_UNTIL + CLEAR_AFTER * FPS)) <= 1 and end["reason"] == "cleared"
    assert end["end"] - times[RED_UNTIL] >= CLEAR_AFTER - 1e-6
    assert start["evidence"]["fraction"] > 0.9 and end["evidence"]["peak_fraction"] > 0.9

    # The frame records: every zone's statistics, the events of the frame, all in the schema.
    assert all(not records.check_record(r) for r in frames)
    by_index = {r["index"]: r for r in frames}
    assert by_index[15]["zones"]["right"]["class_fraction"]["red"] > 0.9
    assert by_index[5]["zones"]["right"]["class_fraction"]["green"] > 0.9
    assert by_index[5]["zones"]["top-left"]["area"] == 21 * 16  # pixel corners included, as cv2.fillPoly draws
    assert by_index[15]["zones"]["right"]["regions"]["red"]["area"] > 700  # the rules' class: its largest region
    marked = {r["index"]: r["events"] for r in frames if r["events"]}
    assert marked == {start["frame"]: [{"id": start["id"], "type": "start", "rule": "red-right"}],
                      end["frame"]: [{"id": end["id"], "type": "end", "rule": "red-right"}]}

    # The on_result object carries the same, as objects; on_event got both records; the summary counts them.
    result = next(r for r in called if r.frame.index == start["frame"])
    assert isinstance(result.zones["right"], ZoneStats) and result.zones["right"].class_fraction["red"] > 0.9
    assert [e.type for e in result.events] == ["start"] and isinstance(result.events[0], Event)
    assert [(e.type, e.id) for e in raised] == [("start", start["id"]), ("end", end["id"])]
    assert summary["events"] == 1 and summary["sources"]["door"]["events"] == {"red-right": 1}
    assert summary["zones"] == str(zones) and not records.check_summary(summary)

    # Drawn on the overlay: the zone's outline (yellow while no event is active) at x = 32 over the green half.
    quiet = next(r for r in called if r.frame.index == 5).picture
    assert quiet[8:40, 32, 2].mean() > 120 and quiet[8:40, 40, 2].mean() < 30
    # The evidence: a snapshot of the frame, and a playable clip from 0.5 s before to 0.5 s after the start.
    assert cv2.imread(str(out / start["snapshot"])).shape == (48, 64, 3)
    capture = cv2.VideoCapture(str(out / start["clip"]))
    decoded = 0
    while capture.read()[0]:
        decoded += 1
    capture.release()
    assert 5 <= decoded <= 13


def test_a_stream_sends_every_event_once_to_mosquitto_though_it_was_down_a_while(tmp_path, kit, seg_model, broker,
                                                                                 mqtt, serve_tcp):
    """Debian's mosquitto; a stream served by ffmpeg; the live page of the same run; Ctrl-C's path (stop)."""
    frames = []
    for i in range(20):  # 0.4 s with the right half red, 0.4 s all green, looped at 25 fps
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:] = kit.GREEN
        if i < 10:
            frame[:, 32:] = kit.RED
        frames.append(frame)
    url = serve_tcp(video=kit.write_video(tmp_path / "blink.avi", frames, fps=25.0))
    queue = tmp_path / "queue"
    zones = _zones_file(tmp_path / "zones.json", [{**RED_RIGHT, "for": 0, "clear_after": 0}],
                        sinks=[{"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "queue": str(queue)}])
    subscriber = mqtt.Subscriber(broker.port)
    assert mqtt.wait_for(lambda: subscriber.client.is_connected())
    time.sleep(0.2)  # subscribed before the broker goes away: its session (QoS 1) keeps what comes meanwhile
    broker.stop()
    stop, raised, port = threading.Event(), [], mqtt.free_port()
    done: dict = {}

    def run():
        done["summary"] = segment(f"cam={url}", model=seg_model, out=tmp_path / "out", zones=str(zones), stop=stop,
                                  on_event=raised.append, serve=f"127.0.0.1:{port}")

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert mqtt.wait_for(lambda: sum(e.type == "start" for e in raised) >= 2, 30)  # events while it is down
        broker.start()
        assert mqtt.wait_for(lambda: len(subscriber.events()) >= 4, 30)  # then every one queued, and more
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert 'edgeseg_zone_class_fraction{class="red",stream="cam",zone="right"}' in metrics
        counted = [line for line in metrics.splitlines() if line.startswith('edgeseg_events_total{')]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 2
        assert mqtt.wait_for(lambda: _active(port), 10)  # the page lists the stream's active events
        stop.set()
    finally:
        stop.set()
        runner.join(60)
    summary = done["summary"]
    sent = _lines(tmp_path / "out" / "events.jsonl")
    assert mqtt.wait_for(lambda: len(subscriber.events()) >= len(sent), 10)
    time.sleep(0.3)  # a duplicate would come now
    subscriber.close()
    got = collections.Counter((e["id"], e["type"]) for e in subscriber.events())
    assert got == collections.Counter((e["id"], e["type"]) for e in sent)  # every event once, none twice
    assert [e["type"] for e in sent].count("start") == [e["type"] for e in sent].count("end")  # nothing left open
    assert summary["interrupted"] and summary["events"] == summary["sources"]["cam"]["events"]["red-right"]
    assert summary["event_sinks"][f"mqtt 127.0.0.1:{broker.port}"]["pending"] == 0
    assert all(not records.check_record(r) and "right" in r["zones"] for r in _lines(tmp_path / "out" / "cam" / "frames.jsonl"))


def _active(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
        health = json.loads(answer.read())
    return any(e["rule"] == "red-right" for e in health["events"]["cam"])


# pycocotools 2.0.x calls np.array(copy=False) on NumPy 2 (its own warning, not ours)
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_rle_decodes_to_the_mask_and_polygons_rasterize_back(tmp_path, kit, seg_model):
    rng = np.random.default_rng(3)
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(3):  # blobs of each colour, one with a hole, on 96x96 pictures
        image = np.zeros((96, 96, 3), np.uint8)
        image[:] = kit.GREEN
        for colour in (kit.RED, kit.BLUE):
            x, y = rng.integers(20, 76, 2)
            cv2.circle(image, (int(x), int(y)), int(rng.integers(12, 20)), colour, -1)
        cv2.circle(image, (48, 48), 6, kit.GREEN, -1)
        cv2.imwrite(str(folder / f"p{n}.png"), image)
    out = tmp_path / "out"
    summary = segment(folder, model=seg_model, out=out, outputs=("masks", "jsonl", "polygons", "rle"))
    assert summary["sources"]["photos"]["outputs"]["coco"] == "coco.json"
    coco = COCO(str(out / "coco.json"))
    for n in range(3):
        mask = read_mask_png(out / "masks" / f"p{n}.png")
        rle = json.loads((out / "rle" / f"p{n}.json").read_text())
        polygons = json.loads((out / "polygons" / f"p{n}.json").read_text())
        assert rle["size"] == polygons["size"] == [96, 96] and polygons["tolerance"] == 0.5
        assert set(rle["classes"]) == set(polygons["classes"]) == {"red", "green", "blue"}
        for i, name in enumerate(("red", "green", "blue")):
            truth = mask == i
            if not truth.any():
                continue
            entry = rle["classes"][name]
            decoded = pycocotools_mask.decode({"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()})
            assert np.array_equal(decoded.astype(bool), truth)  # bit for bit
            assert entry["area"] == truth.sum() == sum(c["area"] for c in entry["components"])
            back = rasterize_polygons([Polygon.from_record(p) for p in polygons["classes"][name]["polygons"]], (96, 96))
            assert (back & truth).sum() / (back | truth).sum() >= 0.99
            (image_id,) = [i_ for i_, image in coco.imgs.items() if image["file_name"] == f"p{n}"]
            (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=i))
            assert np.array_equal(coco.annToMask(annotation).astype(bool), truth)

    video = kit.moving_video(tmp_path / "clip.avi", count=4)
    segment(video, model=seg_model, out=tmp_path / "video", outputs=("rle",))
    assert sorted(p.name for p in (tmp_path / "video" / "rle").iterdir()) == [f"clip_{i:06d}.json" for i in range(4)]
    assert not (tmp_path / "video" / "coco.json").exists()  # a COCO file is for a run of images


def test_what_cannot_apply_is_refused_in_one_line_before_out_is_claimed(tmp_path, kit, seg_model):
    video = _entering_video(tmp_path / "door.avi", kit, count=4)
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), kit.colour_frame(48, 64, [kit.RED]))
    out = tmp_path / "out"

    def refused(source, match, **options):
        with pytest.raises(EdgesegError, match=match) as caught:
            segment(source, model=seg_model, out=out, **options)
        assert "\n" not in str(caught.value) and not out.exists()

    timed = _zones_file(tmp_path / "timed.json", [RED_RIGHT])
    refused(folder, r"rule 'red-right' counts seconds .* 'photos' is images", zones=str(timed))
    plain = _zones_file(tmp_path / "plain.json", [{**RED_RIGHT, "for": 0, "clear_after": 0}])
    refused(folder, r"--clips records video .* 'photos' is images", zones=str(plain), clips=(1, 1))
    refused(Source.video_range(video, start=2, count=2), r"a part of a source \(a --ray unit\)", zones=str(plain))
    refused(video, r"no rules, so no events", zones=str(_zones_file(tmp_path / "none.json", [])), clips=(1, 1))
    big = _zones_file(tmp_path / "big.json", [], zones=[{"name": "wide", "units": "pixels",
                                                         "points": [[0, 0], [100, 0], [100, 10]]}])
    refused(video, r"big.json line \d+: zones\[0\] 'wide' on stream 'door': field 'points': point \(100, 0\) is "
                   r"outside the 64x48 frame", zones=str(big))
    with pytest.raises(EdgesegError, match="zones"):
        segment(video, model=seg_model, out=out, zones=7)  # not a path
    # Images of several sizes: a pixel zone that does not fit one costs that image, said in its record.
    cv2.imwrite(str(folder / "small.png"), kit.colour_frame(8, 8, [kit.RED]))
    small = _zones_file(tmp_path / "small.json", [], zones=[{"name": "z", "units": "pixels",
                                                             "points": [[0, 0], [30, 0], [30, 30]]}])
    summary = segment(folder, model=seg_model, out=out, zones=str(small))
    assert (summary["frames"], summary["frames_failed"]) == (1, 1)
    failed = next(r for r in _lines(out / "frames.jsonl") if not r["ok"])
    assert failed["name"] == "small" and "small.json line" in failed["error"] and "outside the 8x8 frame" in failed["error"]


def test_rules_on_images_raise_events_image_by_image_and_a_resumed_run_adds_to_events_jsonl(tmp_path, kit, seg_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(30):  # red on the right of images 1 to 28
        colours = [kit.GREEN, kit.RED] if 0 < n < 29 else [kit.GREEN]
        cv2.imwrite(str(folder / f"{n:02d}.png"), kit.colour_frame(48, 64, colours))
    zones = _zones_file(tmp_path / "zones.json", [{**RED_RIGHT, "for": 0, "clear_after": 0}])
    out = tmp_path / "out"
    stop = threading.Event()
    first = segment(folder, model=seg_model, out=out, zones=str(zones), stop=stop, batch=1,
                    on_result=lambda r: stop.set() if r.frame.index == 1 else None)
    assert first["interrupted"] and first["frames"] < 29
    events = _lines(out / "events.jsonl")  # Ctrl-C's path: the active event ends, nothing is left open
    assert [(e["type"], e["frame"], e["reason"]) for e in events] == [("start", 1, None),
                                                                      ("end", first["frames"] - 1, "stopped")]
    second = segment(folder, model=seg_model, out=out, zones=str(zones), resume=True)
    again = _lines(out / "events.jsonl")
    assert again[:2] == events  # the earlier run's records are kept; the resumed frames raise their own
    assert [(e["type"], e["frame"], e["reason"]) for e in again[2:]] == [("start", first["frames"], None),
                                                                         ("end", 29, "cleared")]
    assert second["events"] == 1 and second["frames_resumed"] == first["frames"]


def test_the_schema_check_reads_inside_zones_and_events(tmp_path, kit, seg_model):
    video = _entering_video(tmp_path / "door.avi", kit, count=20)
    zones = _zones_file(tmp_path / "zones.json", [{**RED_RIGHT, "for": 0, "clear_after": 0}])
    segment(video, model=seg_model, out=tmp_path / "out", zones=str(zones), outputs=("jsonl",))
    record = next(r for r in _lines(tmp_path / "out" / "frames.jsonl") if r["events"])
    event = _lines(tmp_path / "out" / "events.jsonl")[0]
    assert not records.check_record(record) and not records.check_event(event)
    # Each check is able to fail: a zone without its fractions, a region's bbox a string, an event without its rule.
    broken = json.loads(json.dumps(record))
    del broken["zones"]["right"]["class_fraction"]
    broken["zones"]["right"]["regions"]["red"]["bbox"] = "0,0,1,1"
    del broken["events"][0]["rule"]
    assert records.check_record(broken) == [
        "record.zones['right']: missing 'class_fraction'",
        "record.zones['right'].regions['red'].bbox: str '0,0,1,1', expected array",
        "record.events[0]: missing 'rule'"]
    assert records.check_event({**event, "end": None, "type": "end"}) == [
        "event: an end record has its end time, a start record none"]
    assert records.check_event({**event, "schema": 9}) == ["event: schema 9, expected 1"]
