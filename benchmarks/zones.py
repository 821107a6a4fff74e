"""What zones, rules and contours cost, inside the one loop and per frame, against the bare cost of segmenting.

First, the 4-stream throughput ratio inside the one loop (``pipeline``): ``segment`` on 4 copies of
the video, three ways side by side, rounds interleaved (each round runs them in a rotated order):
``bare`` (masks, overlay.mp4, frames.jsonl), ``zones`` (the same with ``zones=`` a file of 4 zones
and 2 rules per stream: zone statistics in every record, the rules, events.jsonl and snapshots, the
zones drawn on the overlay) and ``zones_polygons`` (also ``--write polygons``: every class's
contours and components per frame). Per configuration the median fps (frames / wall, all streams)
and CPU ms per frame (every thread, and the overlay encoders); ``kept``: fps of each against bare,
and bare's CPU per frame against each (the steadier figure on a shared machine).

Then each piece alone:

The sample FCN-8 (``samples/models/fcn8/model.onnx``) on ``samples/scenes.avi`` (96x96, 60 frames),
and the same frames scaled to 640x480 (the masks then come back at camera size, where zone
statistics cost more). Side by side in one run, rounds interleaved so that the machine's load
hits all alike; medians over rounds. Per frame of one stream:

- ``pipeline_ms``: the bare 4-stream run, ``segment`` (the one loop) on 4 copies of the video
  (decode, inference batched across the 4 streams, post-processing, overlay, masks, overlay.mp4,
  frames.jsonl), time / frames (at 640x480, of an MJPG copy written first);
- ``infer_ms``: ``Model.predict_batch`` of 4 frames (preprocessing and post-processing included)
  / 4, the smallest bare cost a frame can have;
- ``zones_ms``: ``Decisions.update`` with 4 zones and 2 rules (zone fractions, the largest
  regions the rules watch, rules, the record fields; no event sinks);
- ``contours_ms``: ``mask_polygons`` of every class but the background (``--write polygons``);
- ratios of ``zones_ms`` and ``zones_ms + contours_ms`` to each bare cost; a run doing both on
  the same cores keeps at least 1 / (1 + ratio) of the bare run's throughput (goal: lose <= 10%).

Each figure twice: ``wall`` (elapsed) and ``cpu`` (CPU time of every thread, and of the overlay
encoders). On a machine shared with other jobs the CPU ratio is the steadier one, and it is the
one that says what a CPU-bound run loses: the pipeline's wall time per frame overlaps its threads
on several cores, where the decisions' is one thread's.

With ``--mqtt`` (needs Debian's ``mosquitto`` and paho-mqtt): event latency from the frame on
which the condition holds (``for`` 0) to the message at a subscriber, through Decisions, the disk
queue (fsync'd) and a broker on 127.0.0.1, p50/p95.

    python benchmarks/zones.py                    # writes benchmarks/results/zones.json
    python benchmarks/zones.py --mqtt --rounds 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime import Model, open_source, segment
from edgeseg.runtime.decisions import DecisionConfig, Decisions, MqttSink, Rule, Zone, parse_decisions
from edgeseg.runtime.vectors import mask_polygons

ROOT = Path(__file__).resolve().parents[1]
STREAMS = 4


def zones_file_text(classes: tuple[str, ...]) -> str:
    """4 zones (quadrant-like, one concave) and 2 rules on them, the issue's load per stream, as a zones/rules file."""
    def zone(name, points):
        return {"name": name, "units": "fraction", "points": points}

    return json.dumps({
        "zones": [zone("door", [[0.05, 0.05], [0.45, 0.05], [0.45, 0.6], [0.05, 0.6]]),
                  zone("dock", [[0.55, 0.1], [0.95, 0.1], [0.95, 0.5], [0.75, 0.35], [0.55, 0.5]]),
                  zone("lane", [[0.1, 0.65], [0.9, 0.65], [0.8, 0.95], [0.2, 0.95]]),
                  zone("all", [[0, 0], [1, 0], [1, 1], [0, 1]])],
        "rules": [{"name": "c1-door", "class": classes[1], "zone": "door", "fraction": 0.3, "for": 1.0,
                   "clear_after": 1.0},
                  {"name": "c2-lane", "class": classes[2], "zone": "lane", "area": 200, "for": 0.5,
                   "clear_after": 1.0}],
    }, indent=1)


def zones_and_rules(classes: tuple[str, ...]) -> DecisionConfig:
    """The same zones and rules, checked, as objects (what Decisions takes)."""
    return parse_decisions(zones_file_text(classes), classes=classes)


def pipeline(model: Model, source: str, rounds: int, zones_file: str) -> dict:
    """The 4-stream run inside the one loop, bare / zones / zones + polygons, side by side (see the module doc).

    Paired: each round runs the three back to back (in a rotated order), and each round's ratios to its own
    bare run are what is summarized (median and quartiles), so a load that comes and goes on a shared
    machine hits a round's three runs alike."""
    configs = {"bare": {}, "zones": {"zones": zones_file},
               "zones_polygons": {"zones": zones_file, "outputs": ("masks", "overlay", "jsonl", "polygons")}}
    names = list(configs)
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    events = 0
    for round_ in range(rounds):
        for name in names[round_ % 3:] + names[:round_ % 3]:  # rotated: no configuration always runs first
            with tempfile.TemporaryDirectory() as tmp, Clock() as clock:
                summary = segment([f"s{i}={source}" for i in range(STREAMS)], model=model, out=tmp, **configs[name])
            got[name].append((summary["fps"], clock.cpu / summary["frames"]))
            events = max(events, summary.get("events", 0))
    row: dict = {"rounds": rounds, "events_per_run": events}
    for name in names:
        row[name] = {"fps": round(statistics.median(v[0] for v in got[name]), 2),
                     "cpu_ms_per_frame": round(statistics.median(v[1] for v in got[name]), 4)}
    for name in names[1:]:
        fps = [mine[0] / bare[0] for mine, bare in zip(got[name], got["bare"])]
        cpu = [bare[1] / mine[1] for mine, bare in zip(got[name], got["bare"])]
        row[f"kept_{name}"] = {"fps": _spread(fps), "cpu": _spread(cpu)}
    return row


def _spread(values: list[float]) -> dict:
    """Median and quartiles of per-round ratios."""
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return {"median": round(median, 4), "q1": round(q1, 4), "q3": round(q3, 4)}


def cpu_name() -> str:
    name, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    wanted = [f for f in ("amx_tile", "amx_int8", "amx_bf16", "avx512_vnni", "avx512_bf16") if f in flags]
    return f"{name} ({' '.join(wanted)})" if wanted else name


class Clock:
    """Wall and CPU milliseconds of a block; CPU counts every thread of this process and the child
    processes that ended in it (the overlay encoders), so on a shared machine it is the steadier figure."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = (time.perf_counter() - self.wall) * 1000, (_cpu() - self.cpu) * 1000


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(model: Model, images: list[np.ndarray], rounds: int, *, source: str | None) -> dict:
    classes = model.contract.output.classes
    config = zones_and_rules(classes)
    masks = [result.mask for result in model.predict_batch(images)]
    times: dict[str, list[tuple[float, float]]] = {"pipeline": [], "infer": [], "zones": [], "contours": []}
    for _ in range(rounds):
        if source is not None:
            with tempfile.TemporaryDirectory() as tmp, Clock() as clock:
                summary = segment([f"s{i}={source}" for i in range(STREAMS)], model=model, out=tmp)
            frames = summary["frames"]
            times["pipeline"].append((clock.wall / frames, clock.cpu / frames))
        with Clock() as clock:
            for i in range(0, len(images) - STREAMS + 1, STREAMS):
                model.predict_batch(images[i:i + STREAMS])
        frames = len(images) // STREAMS * STREAMS
        times["infer"].append((clock.wall / frames, clock.cpu / frames))
        decisions = Decisions(config, classes=classes)
        with Clock() as clock:
            for index, mask in enumerate(masks):
                for stream in range(STREAMS):
                    decisions.update(f"cam{stream}", index, index / 15, mask)
        times["zones"].append((clock.wall / (len(masks) * STREAMS), clock.cpu / (len(masks) * STREAMS)))
        decisions.close()
        with Clock() as clock:
            for mask in masks:
                for stream in range(STREAMS):
                    mask_polygons(mask, classes, skip=("background",))
        times["contours"].append((clock.wall / (len(masks) * STREAMS), clock.cpu / (len(masks) * STREAMS)))
    row = {"frame": f"{images[0].shape[1]}x{images[0].shape[0]}", "frames": len(images), "streams": STREAMS,
           "zones_per_stream": len(config.zones), "rules_per_stream": len(config.rules), "rounds": rounds}
    for kind, column in (("wall", 0), ("cpu", 1)):
        ms = {key: statistics.median(value[column] for value in values) for key, values in times.items() if values}
        row[kind] = {f"{key}_ms": round(value, 4) for key, value in ms.items()}
        for bare in ("pipeline", "infer"):
            if bare in ms:
                zones, both = ms["zones"] / ms[bare], (ms["zones"] + ms["contours"]) / ms[bare]
                row[kind][f"ratio_zones_to_{bare}"] = round(zones, 4)
                row[kind][f"ratio_zones_contours_to_{bare}"] = round(both, 4)
                row[kind][f"throughput_kept_vs_{bare}"] = round(1 / (1 + both), 4)
    return row


def pipeline_latency(model: Model, source: str, runs: int = 5) -> dict:
    """Through the whole pipeline: a frame read (a file source's read time, so waits in its read-ahead queue count)
    on which a rule's condition holds (``for`` 0) -> the event's message at an MQTT subscriber (through inference,
    the zones, the rules, events.jsonl and the sink's disk queue, both fsync'd, and a local mosquitto)."""
    import paho.mqtt.client as mqtt

    classes = model.contract.output.classes
    with tempfile.TemporaryDirectory() as tmp, _Mosquitto(Path(tmp)) as port:
        arrived: dict[tuple[str, str], float] = {}
        got = threading.Condition()

        def on_message(client, userdata, message):
            record = json.loads(message.payload)
            with got:
                arrived[(record["id"], record["type"])] = time.monotonic()
                got.notify_all()

        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        subscriber.on_message = on_message
        subscriber.connect("127.0.0.1", port)
        subscriber.subscribe("edgeseg/+/events", qos=1)
        subscriber.loop_start()
        zones = Path(tmp) / "zones.json"
        zones.write_text(json.dumps({
            "zones": [{"name": "bottom", "units": "fraction", "points": [[0, 0.6], [1, 0.6], [1, 1], [0, 1]]}],
            "rules": [{"name": "c2-bottom", "class": classes[2], "zone": "bottom", "fraction": 0.15}],
            "sinks": [{"type": "mqtt", "host": "127.0.0.1", "port": port, "queue": str(Path(tmp) / "queue")}]}))
        read: dict[tuple[str, str], float] = {}

        def on_result(result):
            for event in result.events:  # the frame's read time: its result's time less its latency
                read[(event.id, event.type)] = time.monotonic() - result.latency_ms / 1000

        for run in range(runs):
            segment(source, model=model, out=Path(tmp) / f"run{run}", zones=str(zones), on_result=on_result,
                    outputs=("jsonl",))
        with got:
            got.wait_for(lambda: set(read) <= set(arrived), timeout=10)
        subscriber.loop_stop()
    latencies = sorted((arrived[key] - read[key]) * 1000 for key in read if key in arrived)
    starts = sorted((arrived[key] - read[key]) * 1000 for key in read if key in arrived and key[1] == "start")
    return {"messages": len(latencies), "p50_ms": round(statistics.median(latencies), 2),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
            "starts_p50_ms": round(statistics.median(starts), 2),
            "path": "frame read -> segment (inference, zones, rules, events.jsonl, disk queue) -> mosquitto on "
                    "127.0.0.1 -> subscriber, QoS 1"}


class _Mosquitto:
    """Debian's mosquitto on a free port of 127.0.0.1 for the length of a with block, which gets the port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> int:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        conf = self.folder / "m.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        self.broker = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return port

    def __exit__(self, *exc) -> None:
        self.broker.terminate()
        self.broker.wait()


def mqtt_latency(model: Model, events: int = 40) -> dict:
    """Condition true on a frame -> the event's message at a subscriber, through Decisions alone and a local mosquitto."""
    import paho.mqtt.client as mqtt

    with tempfile.TemporaryDirectory() as tmp, _Mosquitto(Path(tmp)) as port:
        arrived: dict[str, float] = {}
        got = threading.Condition()

        def on_message(client, userdata, message):
            record = json.loads(message.payload)
            with got:
                arrived[f"{record['id']}/{record['type']}"] = time.perf_counter()
                got.notify_all()

        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        subscriber.on_message = on_message
        subscriber.connect("127.0.0.1", port)
        subscriber.subscribe("edgeseg/+/events", qos=1)
        subscriber.loop_start()
        classes = model.contract.output.classes
        config = DecisionConfig((Zone("all", [(0, 0), (1, 0), (1, 1), (0, 1)], units="fraction"),),
                                (Rule("on", class_name=classes[1], zone="all", fraction=0.5),))
        sink = MqttSink("127.0.0.1", port, queue=Path(tmp) / "queue")
        decisions = Decisions(config, classes=classes, sinks=[sink])
        time.sleep(0.5)
        latencies = []
        for index in range(2 * events):
            mask = np.full((96, 96), 1 if index % 2 == 0 else 0, np.uint8)
            start = time.perf_counter()
            _, raised = decisions.update("cam", index, index / 15, mask)
            key = f"{raised[0].id}/{raised[0].type}"
            with got:
                got.wait_for(lambda: key in arrived, timeout=10)
            latencies.append((arrived[key] - start) * 1000)
            time.sleep(0.02)
        decisions.close()
        subscriber.loop_stop()
    latencies.sort()
    return {"events": len(latencies), "p50_ms": round(statistics.median(latencies), 2),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2), "broker": "mosquitto on 127.0.0.1, QoS 1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "samples/models/fcn8/model.onnx"))
    parser.add_argument("--source", default=str(ROOT / "samples/scenes.avi"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mqtt", action="store_true", help="also measure event latency through a local mosquitto")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/zones.json"))
    parser.add_argument("--pipeline-only", action="store_true", help="only the 4-stream ratio inside the one loop")
    args = parser.parse_args()
    model = Model(args.model)
    images = [frame.image for frame in open_source(args.source) if frame.ok]
    load = os.getloadavg()
    report = {"machine": f"{cpu_name()}, {os.cpu_count()} vCPUs, shared with other jobs while measured (load average "
                         f"{load[0]:.1f} at the start)",
              "model": os.path.relpath(args.model, ROOT), "source": os.path.relpath(args.source, ROOT),
              "engine": f"{model.engine} {model.precision}", "pipeline": [], "sizes": []}
    work = tempfile.TemporaryDirectory()
    zones_file = Path(work.name) / "zones.json"
    zones_file.write_text(zones_file_text(model.contract.output.classes))
    for size in (None, (640, 480)):
        frames = images if size is None else [cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) for image in images]
        source = args.source
        if size is not None:  # the same scenes at camera size, as a video the 4 streams decode (MJPG: no codec needed)
            source = str(Path(work.name) / "scenes_640x480.avi")
            writer = cv2.VideoWriter(source, cv2.VideoWriter_fourcc(*"MJPG"), 15.0, size)
            for frame in frames:
                writer.write(frame)
            writer.release()
        ratio = {"frame": f"{frames[0].shape[1]}x{frames[0].shape[0]}", "frames": len(frames), "streams": STREAMS,
                 "zones_per_stream": 4, "rules_per_stream": 2, **pipeline(model, source, args.rounds, str(zones_file))}
        report["pipeline"].append(ratio)
        kept, both = ratio["kept_zones"], ratio["kept_zones_polygons"]
        print(f"{ratio['frame']:>8} the one loop, 4 streams: bare {ratio['bare']['fps']:.1f} fps; with 4 zones and 2 "
              f"rules per stream {kept['fps']['median']:.1%} of it (quartiles {kept['fps']['q1']:.1%}-"
              f"{kept['fps']['q3']:.1%}; bare's CPU per frame against it {kept['cpu']['median']:.1%}); also --write "
              f"polygons {both['fps']['median']:.1%} (CPU {both['cpu']['median']:.1%})")
        if args.pipeline_only:
            continue
        row = measure(model, frames, args.rounds, source=source)
        report["sizes"].append(row)
        for kind in ("wall", "cpu"):
            figures = row[kind]
            bare = " ".join(f"{key} {figures[f'{key}_ms']:.3f}" for key in ("pipeline", "infer") if f"{key}_ms" in figures)
            kept = " ".join(f"{figures[k]:.1%} vs {k.rsplit('_', 1)[1]}" for k in figures if k.startswith("throughput"))
            print(f"{row['frame']:>8} {kind:>4} ms per frame and stream: bare {bare}; zones+rules "
                  f"{figures['zones_ms']:.3f}, contours {figures['contours_ms']:.3f}; throughput kept >= {kept}")
    if args.mqtt:
        report["pipeline_latency"] = latency = pipeline_latency(model, args.source)
        print(f"event latency through segment, frame read -> message at the subscriber: p50 {latency['p50_ms']} ms, "
              f"p95 {latency['p95_ms']} ms ({latency['messages']} messages)")
        report["mqtt_latency"] = mqtt_latency(model)
        print(f"event latency, condition true -> message at the subscriber: p50 {report['mqtt_latency']['p50_ms']} ms, "
              f"p95 {report['mqtt_latency']['p95_ms']} ms")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
