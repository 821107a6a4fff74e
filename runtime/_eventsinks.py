"""Event sinks that survive their receiver being down: MQTT, an HTTP webhook, a local command.

Every sink writes each event first into its own :class:`DiskQueue` (append-only files, fsync'd
before ``write`` returns), and a delivery thread sends the queue in order, acknowledging each
record on disk once the receiver has it. A receiver that is down costs nothing but time: the
thread retries with backoff (``backoff`` doubling up to ``max_backoff`` seconds) and the queue is
sent when it returns. Ctrl-C or a crash loses nothing that ``write`` accepted: what was not
delivered is still in the queue folder, and a sink opened on that folder later (the next run)
sends it first. The queue is bounded (``max_queued`` records): past it new events are dropped,
counted in ``dropped`` and logged. Delivery is at least once: an event whose acknowledgement was
lost in a crash is sent again on the next run, so receivers deduplicate by the event's ``id``.

MQTT topic layout (``topic`` defaults to ``edgeseg``; stream and rule names with ``/``, ``+`` or
``#`` have them replaced by ``_``):

- ``edgeseg/<stream>/events``: every event record as JSON (``type`` ``start``/``end``), QoS 1;
- ``edgeseg/<stream>/<rule>/state``: ``ON`` while the rule's event is active, else ``OFF``; QoS 1,
  retained (a Home Assistant ``binary_sensor``'s ``state_topic``);
- ``edgeseg/status``: ``online`` while connected, ``offline`` as the broker's last will; retained
  (Home Assistant's ``availability_topic``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.events import Event
from edgeseg.runtime.extras import require

log = logging.getLogger("edgeseg.runtime")

DEFAULT_MAX_QUEUED = 10_000


class DiskQueue:
    """A bounded FIFO of JSON records in a folder that outlives the process.

    Records are appended as lines to segment files (``NNNNNNNN.jsonl``, a new one every
    ``segment_records`` records) and fsync'd; delivering one appends a byte to the segment's
    ``.ack`` file (fsync'd), so the number of delivered records of a segment is that file's size.
    A segment fully acknowledged is deleted. Opening the folder again resumes after the last
    acknowledged record; a line cut by a crash (no newline) is dropped. Thread-safe: producers
    :meth:`put`, one consumer :meth:`peek` then :meth:`ack`.

    Example::

        queue = DiskQueue("~/.cache/edgeseg/events/webhook")
        queue.put({"id": "1"})
        key, record = queue.peek()
        queue.ack(key)
    """

    def __init__(self, folder: str | os.PathLike, *, max_records: int = DEFAULT_MAX_QUEUED,
                 segment_records: int = 1000) -> None:
        if max_records < 1 or segment_records < 1:
            raise EdgesegError(f"a queue needs room: max_records and segment_records >= 1, got {max_records}, "
                               f"{segment_records}.")
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise EdgesegError(f"Cannot use `{self.folder}` as an event queue: {error.strerror or error}. "
                               "Pass a writable folder.") from None
        self._lockfile = _claim(self.folder)
        self.max_records = max_records
        self.segment_records = segment_records
        self._lock = threading.Lock()
        # Per segment number: [records written, records acknowledged]
        self._segments: dict[int, list[int]] = {}
        self._writer = None
        self._reader: tuple[int, Any] | None = None  # (segment, open handle positioned at the next unacked line)
        for path in sorted(self.folder.glob("*.jsonl")):
            if path.stem.isdigit():
                self._segments[int(path.stem)] = [_complete_lines(path), _size(self._ack_path(int(path.stem)))]
        for number, (written, acked) in list(self._segments.items()):
            if acked >= written and number != max(self._segments):
                self._remove(number)

    def __len__(self) -> int:
        with self._lock:
            return self._pending()

    def _pending(self) -> int:
        return sum(max(0, written - acked) for written, acked in self._segments.values())

    def put(self, record: Mapping[str, Any]) -> bool:
        """Append one record (durable when this returns); False when the queue is full."""
        line = (json.dumps(record) + "\n").encode("utf-8")
        with self._lock:
            if self._pending() >= self.max_records:
                return False
            last = max(self._segments) if self._segments else 0
            if not self._segments or self._segments[last][0] >= self.segment_records:
                last += 1
                self._segments[last] = [0, 0]
                self._close_writer()
            if self._writer is None:
                self._writer = (last, open(self._segment_path(last), "ab"))
                _fsync_folder(self.folder)  # the new file's name must survive a crash too
            handle = self._writer[1]
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self._segments[last][0] += 1
            return True

    def peek(self) -> tuple[tuple[int, int], dict] | None:
        """The oldest record not yet acknowledged, with the key to :meth:`ack` it; None when empty."""
        with self._lock:
            while True:
                head = next((n for n in sorted(self._segments) if self._segments[n][1] < self._segments[n][0]), None)
                if head is None:
                    return None
                if self._reader is None or self._reader[0] != head:
                    self._open_reader(head)
                line = self._reader[1].readline()
                if not line.endswith(b"\n"):
                    # Cannot happen for a segment we count (only complete lines are counted); be safe.
                    self._segments[head][0] = self._segments[head][1]
                    continue
                key = (head, self._segments[head][1])
                self._reader[1].seek(-len(line), os.SEEK_CUR)  # peek, not take: ack moves on
                try:
                    return key, json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: a damaged queued record was skipped (not JSON)", self._segment_path(head))
                    self._ack_locked(key)

    def ack(self, key: tuple[int, int]) -> None:
        """Mark the record ``key`` (from :meth:`peek`) delivered."""
        with self._lock:
            self._ack_locked(key)

    def _ack_locked(self, key: tuple[int, int]) -> None:
        number, position = key
        entry = self._segments.get(number)
        if entry is None or entry[1] != position:
            return  # acknowledged already
        with open(self._ack_path(number), "ab") as handle:
            handle.write(b".")
            handle.flush()
            os.fsync(handle.fileno())
        entry[1] += 1
        if self._reader is not None and self._reader[0] == number:
            self._reader[1].readline()
        if entry[1] >= entry[0] and (self._writer is None or self._writer[0] != number or entry[0] >= self.segment_records):
            self._remove(number)

    def close(self) -> None:
        with self._lock:
            self._close_writer()
            if self._reader is not None:
                self._reader[1].close()
                self._reader = None
            if self._lockfile is not None:
                self._lockfile.close()  # releases the claim on the folder
                self._lockfile = None

    def _open_reader(self, number: int) -> None:
        if self._reader is not None:
            self._reader[1].close()
        handle = open(self._segment_path(number), "rb")
        for _ in range(self._segments[number][1]):
            handle.readline()
        self._reader = (number, handle)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer[1].close()
            self._writer = None

    def _remove(self, number: int) -> None:
        if self._writer is not None and self._writer[0] == number:
            self._close_writer()
        if self._reader is not None and self._reader[0] == number:
            self._reader[1].close()
            self._reader = None
        for path in (self._segment_path(number), self._ack_path(number)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self._segments.pop(number, None)

    def _segment_path(self, number: int) -> Path:
        return self.folder / f"{number:08d}.jsonl"

    def _ack_path(self, number: int) -> Path:
        return self.folder / f"{number:08d}.ack"


def _claim(folder: Path) -> Any:
    """Hold ``folder/lock`` (an advisory lock) while the queue is open: two writers would interleave
    records and acknowledgements. None where the system has no ``fcntl`` (the claim is then not checked)."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(folder / "lock", "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise EdgesegError(f"The event queue `{folder}` is in use by {owner}: give each sink its own queue folder "
                           "(\"queue\" in the sinks entry), or stop the other run.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    return handle


def _complete_lines(path: Path) -> int:
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with open(path, "r+b") as handle:  # a line cut by a crash: never delivered, so drop it
            handle.truncate(complete)
    return data.count(b"\n", 0, complete)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Retry(Exception):
    """The receiver cannot take the record now (down, busy): keep it and try again after a backoff."""


class Reject(Exception):
    """The receiver refused the record for good (an HTTP 400, a command failing every attempt): drop it, say so."""


class QueuedEventSink:
    """Base of the event sinks: ``write(event)`` queues on disk; a thread delivers; ``close()``.

    Counters: ``queued`` (accepted by ``write``), ``delivered``, ``dropped`` (queue full),
    ``rejected`` (refused for good), ``pending`` (waiting in the queue, this run's and earlier
    runs'). Subclasses implement ``_deliver(record)`` (raise :class:`Retry` or :class:`Reject`) and
    ``target`` (what the log lines call the receiver).
    """

    kind = "events"

    def __init__(self, *, queue: str | os.PathLike, max_queued: int = DEFAULT_MAX_QUEUED, backoff: float = 0.5,
                 max_backoff: float = 30.0) -> None:
        if backoff <= 0 or max_backoff < backoff:
            raise EdgesegError(f"backoff: expected 0 < backoff <= max_backoff, got {backoff!r} and {max_backoff!r}.")
        self.queue = DiskQueue(queue, max_records=max_queued)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.queued = self.delivered = self.dropped = self.rejected = 0
        self._wake = threading.Condition()
        self._stop = False
        self._deadline: float | None = None
        self._down_since: float | None = None
        self._thread: threading.Thread | None = None
        earlier = len(self.queue)
        if earlier:
            log.info("%s: %d events left by an earlier run wait in %s; sending them first", self.target, earlier,
                     self.queue.folder)

    def start(self) -> QueuedEventSink:
        """Start the delivery thread (done by ``write`` too); returns self."""
        with self._wake:
            if self._thread is not None or self._stop:
                return self
            self._thread = threading.Thread(target=self._run, name=f"edgeseg-{self.kind}", daemon=True)
            self._thread.start()
        return self

    @property
    def target(self) -> str:
        return self.kind

    @property
    def pending(self) -> int:
        return len(self.queue)

    def __enter__(self) -> QueuedEventSink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, event: Event | Mapping[str, Any]) -> bool:
        """Queue one event (on disk, fsync'd) for delivery; False when the queue was full and it was dropped."""
        record = event.to_record() if isinstance(event, Event) else dict(event)
        accepted = self.queue.put(record)
        with self._wake:  # writers may be several streams' threads
            if not accepted:
                self.dropped += 1
                dropped = self.dropped
            else:
                self.queued += 1
                self._wake.notify_all()
        if not accepted:
            if dropped == 1 or dropped % 100 == 0:
                log.warning("%s: event queue full (%d events in %s): event %s dropped (%d dropped so far)",
                            self.target, self.queue.max_records, self.queue.folder, record.get("id"), dropped)
            return False
        self.start()
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the queue to empty; True when it did."""
        deadline = time.monotonic() + timeout
        while len(self.queue):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` s, then stop; what is left stays queued on disk.

        Safe to call twice.
        """
        with self._wake:
            if self._stop and self._thread is None:
                return
            self._deadline = time.monotonic() + timeout
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            self._thread = None
        self._disconnect()
        left = len(self.queue)
        self.queue.close()
        if left:
            log.warning("%s: %d events not delivered yet; they wait in %s and go out when a sink opens it again "
                        "(the next run)", self.target, left, self.queue.folder)
        if self.dropped:
            log.warning("%s: %d events dropped: the queue was full (%d events)", self.target, self.dropped,
                        self.queue.max_records)

    @property
    def counters(self) -> dict[str, int]:
        return {"queued": self.queued, "delivered": self.delivered, "dropped": self.dropped,
                "rejected": self.rejected, "pending": self.pending}

    # -- the delivery thread -----------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff
        while True:
            item = self.queue.peek()
            if item is None:
                with self._wake:
                    if self._stop:
                        return
                    self._wake.wait(0.5)
                continue
            if self._stop and time.monotonic() >= (self._deadline or 0):
                return
            key, record = item
            try:
                self._deliver(record)
            except Retry as reason:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("%s: cannot deliver (%s); %d events wait in %s, retrying with backoff", self.target,
                                reason, len(self.queue), self.queue.folder)
                if not self._sleep(delay):
                    return
                delay = min(delay * 2, self.max_backoff)
                continue
            except Reject as reason:
                self.rejected += 1
                log.warning("%s: event %s refused for good (%s): dropped (%d refused so far)", self.target,
                            record.get("id"), reason, self.rejected)
            else:
                self.delivered += 1
                if self._down_since is not None:
                    log.info("%s: delivering again after %.1f s", self.target, time.monotonic() - self._down_since)
                    self._down_since = None
            delay = self.backoff
            self.queue.ack(key)

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (shorter when closing); False when the close deadline has passed."""
        with self._wake:
            if self._stop:
                left = (self._deadline or 0) - time.monotonic()
                if left <= 0:
                    return False
                seconds = min(seconds, left)
            self._wake.wait(seconds)
        return not (self._stop and time.monotonic() >= (self._deadline or 0))

    def _closing_deadline(self) -> float | None:
        return self._deadline if self._stop else None

    def _deliver(self, record: dict) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Release the connection (after the delivery thread ended)."""


class WebhookSink(QueuedEventSink):
    """POSTs each event record as JSON to ``url``; 2xx is delivered.

    A connection error, a timeout, HTTP 408, 429 or 5xx: retried with backoff until the receiver
    takes it. Another 4xx: refused for good (counted in ``rejected``, logged with the status). Each
    request carries ``Idempotency-Key: <event id>``.

    Example::

        with WebhookSink("http://127.0.0.1:1880/edgeseg", queue="~/.cache/edgeseg/events/webhook") as hook:
            hook.write(event)
    """

    kind = "webhook"

    def __init__(self, url: str, *, queue: str | os.PathLike, headers: Mapping[str, str] | None = None,
                 timeout: float = 10.0, max_queued: int = DEFAULT_MAX_QUEUED, backoff: float = 0.5,
                 max_backoff: float = 30.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise EdgesegError(f"webhook url: expected http:// or https://, got {url!r}.")
        self.url = url
        self.headers = {"Content-Type": "application/json", "User-Agent": "edgeseg", **dict(headers or {})}
        self.timeout = timeout
        super().__init__(queue=queue, max_queued=max_queued, backoff=backoff, max_backoff=max_backoff)

    @property
    def target(self) -> str:
        return f"webhook {self.url}"

    def _deliver(self, record: dict) -> None:
        request = urllib.request.Request(self.url, data=json.dumps(record).encode("utf-8"), method="POST",
                                         headers={**self.headers, "Idempotency-Key": str(record.get("id", ""))})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as error:
            if error.code in (408, 429) or error.code >= 500:
                raise Retry(f"HTTP {error.code}") from None
            raise Reject(f"HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise Retry(str(getattr(error, "reason", error))) from None


class CommandSink(QueuedEventSink):
    """Runs a local command per event: the record as JSON on its stdin, and ``EDGESEG_EVENT_ID``,
    ``_TYPE``, ``_STREAM``, ``_RULE``, ``_ZONE``, ``_CLASS`` in its environment. Exit 0 is delivered;
    another status (or running past ``timeout``) is retried with backoff, ``attempts`` times in all,
    then refused (logged with the status and the end of its stderr).

    Example::

        CommandSink(["notify-send", "edgeseg event"], queue="~/.cache/edgeseg/events/notify")
    """

    kind = "command"

    def __init__(self, argv: Sequence[str], *, queue: str | os.PathLike, timeout: float = 30.0, attempts: int = 3,
                 max_queued: int = DEFAULT_MAX_QUEUED, backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        if isinstance(argv, str) or not argv or not all(isinstance(part, str) for part in argv):
            raise EdgesegError(f"command: expected a list of strings (program and arguments), got {argv!r}.")
        if shutil.which(argv[0]) is None:
            raise EdgesegError(f"command: `{argv[0]}` is not an executable program (not found on PATH). "
                               "Give its full path.")
        if attempts < 1:
            raise EdgesegError(f"command attempts: expected >= 1, got {attempts!r}.")
        self.argv = list(argv)
        self.timeout = timeout
        self.attempts = attempts
        self._failures: dict[str, int] = {}
        super().__init__(queue=queue, max_queued=max_queued, backoff=backoff, max_backoff=max_backoff)

    @property
    def target(self) -> str:
        return f"command {self.argv[0]}"

    def _deliver(self, record: dict) -> None:
        env = {**os.environ, **{f"EDGESEG_EVENT_{key.upper()}": str(record.get(key, "")) for key in
                                ("id", "type", "stream", "rule", "zone", "class")}}
        try:
            done = subprocess.run(self.argv, input=json.dumps(record).encode("utf-8"), env=env, capture_output=True,
                                  timeout=self.timeout)
            status = f"exit status {done.returncode}" if done.returncode else None
            detail = done.stderr.decode("utf-8", "replace").strip()[-200:]
        except subprocess.TimeoutExpired:
            status, detail = f"ran past {self.timeout:g} s", ""
        except OSError as error:
            status, detail = str(error.strerror or error), ""
        key = f"{record.get('id')}/{record.get('type')}"  # a start and an end record share the event's id
        if status is None:
            self._failures.pop(key, None)
            return
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        reason = status + (f": {detail}" if detail else "")
        if failures >= self.attempts:
            self._failures.pop(key, None)
            raise Reject(f"{reason}, {failures} attempts")
        raise Retry(reason)


class MqttSink(QueuedEventSink):
    """Publishes events to an MQTT broker (paho-mqtt, QoS 1), reconnecting by itself.

    Per event: the record as JSON on ``<topic>/<stream>/events`` and ``ON``/``OFF`` (retained) on
    ``<topic>/<stream>/<rule>/state``; ``<topic>/status`` is ``online``/``offline`` (retained, the
    last will). A record is acknowledged on disk once the broker acknowledged both messages
    (PUBACK). While the broker is away paho keeps the messages and resends them on reconnection
    (every ``reconnect_min`` to ``reconnect_max`` seconds); they are published once per run.

    Example::

        with MqttSink("127.0.0.1", 1883, queue="~/.cache/edgeseg/events/mqtt") as mqtt:
            mqtt.write(event)
    """

    kind = "mqtt"

    def __init__(self, host: str, port: int = 1883, *, queue: str | os.PathLike, topic: str = "edgeseg",
                 client_id: str | None = None, username: str | None = None, password: str | None = None,
                 keepalive: int = 30, reconnect_min: float = 0.5, reconnect_max: float = 30.0,
                 max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        mqtt = require("paho.mqtt.client", purpose="MQTT event sinks")
        if not isinstance(host, str) or not host:
            raise EdgesegError(f"mqtt host: expected a host name or address, got {host!r}.")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise EdgesegError(f"mqtt port: expected 1 to 65535, got {port!r}.")
        if not isinstance(topic, str) or not topic or any(c in topic for c in "+#") or topic.endswith("/"):
            raise EdgesegError(f"mqtt topic: expected a prefix without '+', '#' or a trailing '/', got {topic!r}.")
        self.host, self.port, self.topic = host, port, topic
        self._acked: set[int] = set()
        self._published = threading.Condition()
        self._inflight: tuple[Any, list[Any]] | None = None  # (queue record id, message infos) being delivered
        self.connected = False
        super().__init__(queue=queue, max_queued=max_queued, backoff=0.2, max_backoff=1.0)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=True)
        if username is not None:
            client.username_pw_set(username, password)
        client.will_set(f"{topic}/status", "offline", qos=1, retain=True)
        client.reconnect_delay_set(reconnect_min, reconnect_max)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        try:
            client.connect_async(host, port, keepalive)
        except (OSError, ValueError) as error:
            raise EdgesegError(f"mqtt: cannot connect to {host}:{port}: {error}.") from None
        client.loop_start()  # paho's thread connects, reconnects with backoff, and resends what is unacknowledged

    @property
    def target(self) -> str:
        return f"mqtt {self.host}:{self.port}"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("%s: broker refused the connection (%s)", self.target, reason)
            return
        self.connected = True
        client.publish(f"{self.topic}/status", "online", qos=1, retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = False

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._published:
            self._acked.add(mid)
            self._published.notify_all()

    def topics(self, record: Mapping[str, Any]) -> tuple[str, str]:
        """The events topic and the state topic of one record."""
        stream, rule = _topic_part(record.get("stream", "")), _topic_part(record.get("rule", ""))
        return f"{self.topic}/{stream}/events", f"{self.topic}/{stream}/{rule}/state"

    def _deliver(self, record: dict) -> None:
        key = record.get("id"), record.get("type")
        if self._inflight is None or self._inflight[0] != key:
            # Published once: paho holds QoS 1 messages until their PUBACK, across reconnections. Not under
            # our lock: paho calls on_publish holding its own message lock, which publish() takes too.
            with self._published:
                self._acked.clear()  # PUBACKs of other messages (the status topic) are not ours
            events, state = self.topics(record)
            infos = [self._client.publish(events, json.dumps(record), qos=1),
                     self._client.publish(state, "ON" if record.get("type") == "start" else "OFF", qos=1, retain=True)]
            self._inflight = (key, infos)
        mids = [info.mid for info in self._inflight[1]]
        with self._published:
            done = self._published.wait_for(lambda: all(mid in self._acked for mid in mids), timeout=1.0)
            if done:
                self._acked.difference_update(mids)
        if not done:
            raise Retry("broker not reachable" if not self.connected else "no PUBACK yet")
        self._inflight = None

    def _disconnect(self) -> None:
        try:
            if self.connected:
                self._client.publish(f"{self.topic}/status", "offline", qos=1, retain=True).wait_for_publish(1.0)
        except (RuntimeError, ValueError):
            pass
        self._client.disconnect()
        self._client.loop_stop()


def _topic_part(name: Any) -> str:
    text = str(name) or "_"
    for char in "/+#":
        text = text.replace(char, "_")
    return text
