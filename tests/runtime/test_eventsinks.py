"""Event sinks against real receivers: an HTTP server on 127.0.0.1, a mosquitto broker, a local command.

The receiver is taken down and brought back; every event must arrive exactly once, in order, also
across a restart of the sending process and after Ctrl-C.
"""

from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgeseg.runtime.decisions import CommandSink, DiskQueue, MqttSink, WebhookSink
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.events import EVENT_SCHEMA, Event

ROOT = Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _event(n, kind="start", stream="cam", rule="smoke-door"):
    return Event(id=f"ev-{n}", type=kind, stream=stream, rule=rule, zone="door", class_name="smoke", since=n,
                 start=n + 0.5, frame=n * 10, evidence={"fraction": 0.4}, end=None if kind == "start" else n + 2.0)


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Receiver:
    """A webhook receiver on a fixed port that can be taken down and brought back."""

    def __init__(self, port, *, refuse=()):
        self.port, self.refuse = port, set(refuse)
        self.bodies, self.keys = [], []
        self._server = None

    def up(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body["id"] in receiver.refuse:
                    self.send_response(400)
                else:
                    receiver.bodies.append(body)
                    receiver.keys.append(self.headers["Idempotency-Key"])
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def down(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def ids(self):
        return [(body["id"], body["type"]) for body in self.bodies]


@pytest.fixture
def receiver():
    made = Receiver(_free_port())
    yield made
    made.down()


def _webhook(receiver, queue, **kwargs):
    return WebhookSink(f"http://127.0.0.1:{receiver.port}/hook", queue=queue, backoff=0.05, max_backoff=0.2, timeout=2,
                       **kwargs)


def test_webhook_receiver_down_then_back_gets_every_event_once_in_order(tmp_path, receiver):
    sink = _webhook(receiver, tmp_path / "queue").start()
    events = [_event(n) for n in range(5)]
    for event in events:
        assert sink.write(event)
    time.sleep(0.4)  # the receiver is down: retried with backoff, nothing lost
    assert sink.pending == 5 and sink.delivered == 0
    receiver.up()
    assert sink.flush(10)
    sink.write(_event(5, "end"))
    assert sink.flush(10)
    sink.close()
    assert receiver.ids == [(f"ev-{n}", "start") for n in range(5)] + [("ev-5", "end")]
    assert receiver.keys == [body["id"] for body in receiver.bodies]
    assert receiver.bodies[0]["schema"] == EVENT_SCHEMA and receiver.bodies[0]["class"] == "smoke"
    assert sink.counters == {"queued": 6, "delivered": 6, "dropped": 0, "rejected": 0, "pending": 0}
    left = DiskQueue(tmp_path / "queue")
    assert len(left) == 0  # all acknowledged on disk: the next run sends nothing again
    left.close()


def test_queued_events_survive_a_restart_of_the_process(tmp_path, receiver):
    first = _webhook(receiver, tmp_path / "queue").start()
    for n in range(4):
        first.write(_event(n))
    first.close(timeout=0.2)  # the receiver never came: they stay on disk
    assert first.pending == 4
    receiver.up()
    second = _webhook(receiver, tmp_path / "queue").start()  # the next run, same queue
    assert second.flush(10)
    second.close()
    assert receiver.ids == [(f"ev-{n}", "start") for n in range(4)]


def test_nothing_is_lost_on_ctrl_c(tmp_path, receiver):
    script = textwrap.dedent(f"""
        import sys, time
        from edgeseg.runtime.decisions import WebhookSink
        from edgeseg.runtime.events import EVENT_SCHEMA, Event
        sink = WebhookSink("http://127.0.0.1:{receiver.port}/hook", queue=sys.argv[1], backoff=0.05, max_backoff=0.1)
        sink.start()
        for n in range(6):
            sink.write(Event(id=f"ev-{{n}}", type="start", stream="cam", rule="r", zone="z", class_name="smoke",
                             since=0.0, start=0.0, frame=n, evidence={{}}))
        print("queued", flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "queue")], stdout=subprocess.PIPE,
                               text=True, cwd=ROOT)
    assert process.stdout.readline().strip() == "queued"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) != 0  # stopped by KeyboardInterrupt, no clean close
    receiver.up()
    sink = _webhook(receiver, tmp_path / "queue").start()
    assert sink.flush(10)
    sink.close()
    assert receiver.ids == [(f"ev-{n}", "start") for n in range(6)]


def test_a_refused_event_is_counted_and_the_queue_goes_on(tmp_path, caplog):
    receiver = Receiver(_free_port(), refuse={"ev-1"}).up()
    try:
        sink = _webhook(receiver, tmp_path / "queue").start()
        for n in range(3):
            sink.write(_event(n))
        assert sink.flush(10)
        sink.close()
    finally:
        receiver.down()
    assert receiver.ids == [("ev-0", "start"), ("ev-2", "start")]
    assert sink.rejected == 1 and "event ev-1 refused for good (HTTP 400" in caplog.text


def test_a_full_queue_drops_new_events_and_says_so(tmp_path, receiver, caplog):
    sink = _webhook(receiver, tmp_path / "queue", max_queued=3).start()
    accepted = [sink.write(_event(n)) for n in range(5)]
    assert accepted == [True, True, True, False, False]
    sink.close(timeout=0)
    assert sink.dropped == 2 and sink.pending == 3
    assert "event queue full" in caplog.text and "2 events dropped" in caplog.text


def test_disk_queue_resumes_after_the_last_acknowledged_record_and_drops_a_cut_line(tmp_path):
    queue = DiskQueue(tmp_path, segment_records=2)
    for n in range(5):
        assert queue.put({"n": n})
    key, record = queue.peek()
    assert record == {"n": 0} and queue.peek()[1] == {"n": 0}  # peek does not take
    queue.ack(key)
    queue.ack(queue.peek()[0])
    assert len(queue) == 3 and not (tmp_path / "00000001.jsonl").exists()  # a delivered segment is removed
    queue.ack(queue.peek()[0])
    queue.close()
    with open(tmp_path / "00000003.jsonl", "ab") as handle:
        handle.write(b'{"n": 9')  # a write cut by a crash
    again = DiskQueue(tmp_path, segment_records=2)
    taken = []
    while (item := again.peek()) is not None:
        taken.append(item[1]["n"])
        again.ack(item[0])
    assert taken == [3, 4]
    assert again.put({"n": 5}) and again.peek()[1] == {"n": 5}
    with pytest.raises(EdgesegError, match=r"is in use by process \d+"):
        DiskQueue(tmp_path)  # one sink per queue folder
    again.close()
    DiskQueue(tmp_path).close()  # free again once closed


def test_command_sink_runs_the_command_per_event_and_retries_a_failure(tmp_path):
    log = tmp_path / "calls.txt"
    hook = tmp_path / "hook.py"
    hook.write_text(textwrap.dedent("""
        import json, os, sys
        event = json.load(sys.stdin)
        with open(sys.argv[1], "a") as out:
            out.write(f"{event['id']} {os.environ['EDGESEG_EVENT_TYPE']} {os.environ['EDGESEG_EVENT_RULE']}\\n")
        sys.exit(3 if event["id"] == "ev-1" else 0)
    """))
    sink = CommandSink([sys.executable, str(hook), str(log)], queue=tmp_path / "queue", attempts=2, backoff=0.05,
                       max_backoff=0.1).start()
    sink.write(_event(0))
    sink.write(_event(1, "end"))
    sink.write(_event(2))
    assert sink.flush(20)
    sink.close()
    assert log.read_text().splitlines() == ["ev-0 start smoke-door", "ev-1 end smoke-door", "ev-1 end smoke-door",
                                            "ev-2 start smoke-door"]
    assert (sink.delivered, sink.rejected) == (2, 1)
    with pytest.raises(EdgesegError, match="not an executable program"):
        CommandSink(["no-such-program-here"], queue=tmp_path / "q2")


# -- MQTT, with a real broker (Debian's mosquitto: the broker fixture and Subscriber are in conftest.py) -------


def test_mqtt_broker_down_then_back_gets_every_event_once(tmp_path, broker, mqtt):
    """With Debian's mosquitto (not a pure-Python broker)."""
    subscriber = mqtt.Subscriber(broker.port)
    sink = MqttSink("127.0.0.1", broker.port, queue=tmp_path / "queue", reconnect_min=0.1, reconnect_max=0.3).start()
    try:
        assert _wait(lambda: sink.connected)
        sink.write(_event(0))
        sink.write(_event(0, "end"))
        assert _wait(lambda: len(subscriber.events()) == 2)
        time.sleep(0.2)  # the subscriber's PUBACKs reach the broker (else it redelivers them after its restart)
        broker.stop()
        for n in range(1, 5):
            sink.write(_event(n))
        time.sleep(0.5)
        assert sink.pending >= 3 and sink.delivered == 2
        broker.start()
        assert sink.flush(15)
        assert _wait(lambda: len(subscriber.events()) >= 6, 15)
        time.sleep(0.3)  # a duplicate would come now
        got = [(event["id"], event["type"]) for event in subscriber.events()]
        assert collections.Counter(got) == collections.Counter([("ev-0", "start"), ("ev-0", "end")] +
                                                               [(f"ev-{n}", "start") for n in range(1, 5)])
        assert got[:2] == [("ev-0", "start"), ("ev-0", "end")]
        states = [(topic, payload) for topic, payload, _ in subscriber.messages if topic.endswith("/state")]
        assert states[:2] == [("edgeseg/cam/smoke-door/state", "ON"), ("edgeseg/cam/smoke-door/state", "OFF")]
    finally:
        sink.close()
        subscriber.close()
    late = mqtt.Subscriber(broker.port, client_id="edgeseg-late")  # retained topics: what Home Assistant reads on start
    try:
        assert _wait(lambda: ("edgeseg/cam/smoke-door/state", "ON", True) in late.messages)
        assert _wait(lambda: ("edgeseg/status", "offline", True) in late.messages)
    finally:
        late.close()


def test_sinks_named_in_the_zones_file_are_built_and_fed_by_decisions(tmp_path, receiver):
    import numpy as np

    from edgeseg.runtime.decisions import DecisionOptions, Decisions

    receiver.up()
    path = tmp_path / "zones.json"
    path.write_text(json.dumps({
        "zones": [{"name": "all", "units": "fraction", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
        "rules": [{"name": "on", "class": "fg", "zone": "all", "fraction": 0.5}],
        "sinks": [{"type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook", "name": "hook"}]}))
    decisions = Decisions.from_file(path, classes=("bg", "fg"), options=DecisionOptions(queue_root=tmp_path / "queues"))
    for index, value in enumerate([0, 1, 1, 0]):
        decisions.update("cam", index, index / 10, np.full((4, 4), value, np.uint8))
    decisions.close()
    assert [(body["type"], body["frame"]) for body in receiver.bodies] == [("start", 1), ("end", 3)]
    assert (tmp_path / "queues" / "webhook-hook").is_dir()
