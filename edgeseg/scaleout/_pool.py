"""The workers and the one queue of units they all take from; deadlines, deaths, progress.

Why this shape, and not more of Ray's own machinery (measured and reasoned in issue 19):

- **Long-lived actors, one model each**, not Ray tasks: a model loads once per worker, the worker
  keeps a downloaded video for its next range, and the driver can ask a busy worker how far its unit
  is (``progress``: frames finished, seconds since it last moved) while the unit runs. The unit runs on
  a thread of the actor's own and every actor method returns within a second (a long poll), so a plain
  one-call-at-a-time actor answers those questions (see :class:`SegmentWorker` for why not a threaded one).
- **A unit goes to a worker only when that worker is alive and idle**: nothing is queued at an actor,
  so nothing waits for an actor that cannot be placed. Ray's own retries (``max_task_retries``) would
  retry a unit on the *same* actor after a restart, which is what hung when a node was lost from a
  full cluster (its replacement cannot be placed). Here a dead worker's unit goes back to the shared
  queue and the next idle worker anywhere takes it; a replacement is started and joins when placed.
- **No placement group**: it reserves all workers or none, so a cluster with room for 3 of 4 workers
  would run nothing, and a lost node turns its bundles into a rescheduling wait. The fit check
  (:mod:`edgeseg.scaleout._cluster`) refuses a job that can never fit before any actor exists.
- **``ray.util.ActorPool``** hands work to idle actors too, but has no notion of a dead actor, a
  deadline or progress; what it would save is the ten lines of :meth:`Pool._assign`.

Every wait is bounded: a unit that shows no progress (no frame finished, no byte moved) for
``unit_timeout`` seconds has its worker stopped and goes back to the queue; a job with no worker
alive for ``placement_timeout`` seconds stops with a message, its finished units kept for ``--resume``.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edgeseg.runtime import EdgesegError, SegmentOptions, VideoInfo
from edgeseg.scaleout import _store
from edgeseg.scaleout._cluster import Need, alive_nodes, describe_nodes
from edgeseg.scaleout._merge import join_stored_videos
from edgeseg.scaleout._plan import Unit
from edgeseg.scaleout._worker import Activity, Inputs, count_lines, local_part, probe_video, run_unit

log = logging.getLogger("edgeseg.scaleout")

TICK_S = 0.25  # the driver's loop: how soon it sees a finished unit when nothing else happens
WAIT_S = 1.0  # a busy worker answers a poll when its task ends, or after this long with how far it is
STOP_GRACE_S = 10.0  # after Ctrl-C, how long workers get to end their unit before they are stopped hard
LINES_EVERY_S = 10.0  # progress as log lines (stderr not a terminal): one line this often


@dataclass(frozen=True)
class Probe:
    """A task that is not a unit: measure one video in object storage (frame count, fps)."""

    location: str

    @property
    def key(self) -> str:
        return f"probe {self.location}"


class SegmentWorker:
    """One Ray actor: one model, a private temporary folder, and the task (a unit or a probe) in hand.

    ``start`` begins a task on a thread of the actor's own and returns; ``poll`` waits up to ``wait``
    seconds for it to end and says how far it is (frames finished, seconds since it last moved, the
    worker's warnings) and, once it ended, its result; ``stop`` ends the unit in hand early (it is then
    not done, and writes no marker). Every method returns within ``wait`` seconds, so a plain
    one-call-at-a-time actor serves them all: Ray 2.60's threaded actors (``max_concurrency`` > 1)
    crash at exit once a thread of theirs has used fsspec or the runtime's pipeline, and Ray reports
    that crash on the driver's stdout as a failed worker.
    """

    def __init__(self, spec: Any, options: SegmentOptions, threads: int, name: str, pack: str) -> None:
        self.name, self.options, self.pack = name, options, pack
        self.folder = tempfile.mkdtemp(prefix=f"edgeseg-{name}-")
        self.inputs = Inputs(os.path.join(self.folder, "inputs"))
        self.staging = os.path.join(self.folder, "parts")
        local = spec.path
        if _store.is_remote(spec.path):  # each worker fetches the model itself: the driver relays nothing
            local = os.path.join(self.folder, _store.name_of(spec.path))
            _store.download(spec.path, local)
        self.model = spec.open(options, threads=threads, path=local)
        self.activity = Activity()
        self.current: tuple[str, Any] | None = None  # (key, part folder or None)
        self.seen = 0
        self.stop_event = threading.Event()
        self.ended = threading.Event()
        self.ended.set()
        self.result: tuple[str, Any] | None = None  # ("done" | "fatal" | "failed", marker, info or reason)
        self.messages: collections.deque[str] = collections.deque(maxlen=200)
        logging.getLogger("edgeseg").addHandler(_Relay(self))

    def where(self) -> dict[str, Any]:
        import ray

        return {"node": ray.util.get_node_ip_address(), "host": socket.gethostname(), "pid": os.getpid()}

    def start(self, task: Unit | Probe) -> None:
        part = local_part(task, self.staging) if isinstance(task, Unit) else None
        self.stop_event.clear()
        self.activity.touch()
        self.seen, self.result, self.current = 0, None, (task.key, part)
        self.ended.clear()
        threading.Thread(target=self._work, args=(task,), name="edgeseg-task", daemon=True).start()

    def _work(self, task: Unit | Probe) -> None:
        try:
            if isinstance(task, Probe):
                try:
                    result: tuple[str, Any] = ("done", probe_video(task.location, self.inputs))
                except EdgesegError as error:  # a video no worker can open costs only its source
                    result = ("done", str(error))
            else:
                marker = run_unit(task, self.model, self.options, worker=self.name, pack=self.pack,
                                  inputs=self.inputs, staging=self.staging, activity=self.activity,
                                  stop=self.stop_event)
                described = {key: marker[key] for key in ("engine", "provider", "precision") if key in marker}
                result = ("done", {**marker, "described": described})
        except EdgesegError as error:  # a bad option, model or storage: every unit would fail alike
            result = ("fatal", str(error))
        except Exception as error:  # noqa: BLE001 - reported to the driver, which retries the unit elsewhere
            result = ("failed", f"{type(error).__name__}: {_first_line(error)}")
        self.current, self.result = None, result
        self.ended.set()

    def poll(self, wait: float) -> dict[str, Any]:
        self.ended.wait(wait)
        messages = list(self.messages)
        self.messages.clear()
        current = self.current
        answer: dict[str, Any] = {"key": None, "frames": 0, "idle_s": 0.0, "messages": messages}
        if current is not None:
            key, part = current
            frames = count_lines(part / "frames.jsonl") if part is not None else 0
            if frames != self.seen:  # a frame finished: the unit moves
                self.seen = frames
                self.activity.touch()
            answer.update(key=key, frames=frames, idle_s=self.activity.idle_s())
        if self.ended.is_set() and self.result is not None:
            answer["result"], self.result = self.result, None
        return answer

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, parts: list[str], target: str, fps: float, codec: str) -> str:
        return join_stored_videos(parts, target, fps, codec)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _Relay(logging.Handler):
    """A worker's warnings (a skipped file, a short video) go back to the driver's log through ``progress``:
    not through Ray's log relay, whose prefixes and colour codes would reach a piped stderr."""

    def __init__(self, worker: SegmentWorker) -> None:
        super().__init__(logging.WARNING)
        self.worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            for local, location in self.worker.activity.origin.items():  # name inputs as the user does
                message = message.replace(local, location)
            self.worker.messages.append(message)
        except Exception:  # noqa: BLE001 - a message that cannot be formatted is not worth failing a unit for
            pass


def worker_class(ray: Any) -> Any:
    # No restarts and no task retries: a dead worker's unit goes back to the shared queue (Pool), never waits
    # for the same actor to come back.
    return ray.remote(max_restarts=0, max_task_retries=0)(SegmentWorker)


@dataclass
class _Slot:
    """The driver's view of one worker."""

    name: str
    actor: Any
    spawned: float
    ready_ref: Any = None
    node: str = ""
    task: Unit | Probe | None = None
    poll_ref: Any = None
    active: float = 0.0  # driver clock: when the task in hand last moved
    frames: int = 0  # frames of the unit in hand counted into the progress so far
    last_source: int | None = None
    videos: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2))

    @property
    def ready(self) -> bool:
        return self.ready_ref is None

    @property
    def busy(self) -> bool:
        return self.task is not None


class _Queue:
    """The job's units in order, grouped by source: a worker is handed the next unit of the source it
    worked on last or holds the video of (a video in object storage is then downloaded once per worker),
    else the first unit left. A unit given back goes to the front of its source."""

    def __init__(self, tasks: list[Any]) -> None:
        self.groups: dict[Any, collections.deque] = {}
        self.video: dict[Any, str] = {}
        for task in tasks:
            group = task.source if isinstance(task, Unit) else None
            self.groups.setdefault(group, collections.deque()).append(task)
            if isinstance(task, Unit) and task.kind == "video":
                self.video.setdefault(group, task.video)

    def __len__(self) -> int:
        return sum(len(q) for q in self.groups.values())

    def take(self, slot: _Slot) -> Any:
        for group, tasks in self.groups.items():
            if tasks and (group == slot.last_source or self.video.get(group) in slot.videos):
                return tasks.popleft()
        for tasks in self.groups.values():
            if tasks:
                return tasks.popleft()
        raise IndexError("empty queue")

    def give_back(self, task: Any) -> None:
        group = task.source if isinstance(task, Unit) else None
        self.groups.setdefault(group, collections.deque()).appendleft(task)

    def clear(self) -> list[Any]:
        left = [task for tasks in self.groups.values() for task in tasks]
        self.groups.clear()
        return left


@dataclass
class WorkerStats:
    node: str = ""
    frames: int = 0
    frames_failed: int = 0
    units: int = 0
    busy_s: float = 0.0  # seconds its units took, inputs and outputs included
    infer_s: float = 0.0  # seconds of inference alone (from each unit's runtime summary)
    io_s: float = 0.0  # seconds of downloads and uploads (object storage)
    died: bool = False
    timed_out: int = 0

    def report(self) -> dict[str, Any]:
        return {"node": self.node, "frames": self.frames, "frames_failed": self.frames_failed, "units": self.units,
                "busy_s": round(self.busy_s, 3),
                # End to end on this worker: its frames over the seconds its units took (decode, infer, write, I/O).
                "fps": round(self.frames / self.busy_s, 3) if self.busy_s else 0.0,
                "infer_fps": round(self.frames / self.infer_s, 3) if self.infer_s else 0.0,
                "io_s": round(self.io_s, 3), "died": self.died, "timed_out": self.timed_out}


class Pool:
    """``workers`` actors and the shared queue; see the module's docstring for the rules.

    Example::

        pool = Pool(ray, spec, cluster, options, env={})
        pool.start()
        pool.run(units, stop=threading.Event())
        pool.close()
    """

    def __init__(self, ray: Any, spec: Any, cluster: Any, options: SegmentOptions, *, env: dict[str, str],
                 progress: bool = False) -> None:
        self.ray, self.spec, self.cluster, self.options = ray, spec, cluster, options
        self.need = Need(cluster.cpus_per_worker, cluster.gpus_per_worker, cluster.memory_per_worker_gb)
        self.env = env
        self.progress = progress
        self.actor_class = worker_class(ray)
        self.slots: dict[str, _Slot] = {}
        self.refs: dict[Any, tuple[str, str]] = {}  # object ref -> (worker name, what it answers)
        self.stats: dict[str, WorkerStats] = {}
        self.attempts: collections.Counter = collections.Counter()
        self.lost: dict[str, str] = {}  # unit key -> why it was given up
        self.done: dict[str, dict[str, Any]] = {}  # unit key -> the marker its worker returned
        self.probed: dict[str, VideoInfo | str] = {}
        self.retried = 0
        self.timed_out = 0
        self.interrupted = False
        self.stopped: str | None = None  # why the job stopped before its queue was empty
        self.fatal: EdgesegError | None = None
        self.described: dict[str, Any] = {}
        self.first_ready_s: float | None = None
        self._started = time.monotonic()
        self._next = 0
        self._idle_deaths = 0
        self._no_worker_since: float | None = None
        self._interrupted_at = 0.0
        self._bar: _Progress | None = None

    # -- workers -------------------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self.cluster.workers):
            self._spawn()

    def _spawn(self) -> None:
        name = f"w{self._next}"
        self._next += 1
        options: dict[str, Any] = {"num_cpus": self.need.cpus, "num_gpus": self.need.gpus,
                                   "scheduling_strategy": "SPREAD"}  # across nodes first: every node decodes
        if self.need.memory_gb > 0:
            options["memory"] = int(self.need.memory_gb * 1024 ** 3)
        if self.env:
            options["runtime_env"] = {"env_vars": self.env}
        threads = max(1, int(self.need.cpus))  # onnxruntime ignores the OMP_NUM_THREADS Ray sets
        actor = self.actor_class.options(**options).remote(self.spec, self.options, threads, name, self.cluster.pack)
        slot = _Slot(name, actor, time.monotonic())
        slot.ready_ref = actor.where.remote()
        self.refs[slot.ready_ref] = (name, "ready")
        self.slots[name] = slot
        self.stats[name] = WorkerStats()

    def _retire(self, slot: _Slot, *, kill: bool) -> None:
        self.slots.pop(slot.name, None)
        for ref in [ref for ref, (name, _) in self.refs.items() if name == slot.name]:
            del self.refs[ref]
        if kill:
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone: nothing to stop
                pass

    def _alive(self) -> list[_Slot]:
        return [slot for slot in self.slots.values() if slot.ready]

    # -- the loop ------------------------------------------------------------------------------

    def probe(self, locations: list[str], *, stop: threading.Event) -> dict[str, VideoInfo | str]:
        """Measure videos in object storage on the workers (which keep the download for their ranges)."""
        if locations:
            self._loop(_Queue([Probe(location) for location in dict.fromkeys(locations)]), stop, total=0)
        return self.probed

    def run(self, units: list[Unit], *, stop: threading.Event) -> None:
        """Run ``units`` until each is done or given up, the job is stopped, or no worker can go on."""
        self._bar = _Progress(self.progress, sum(u.frames for u in units))
        try:
            self._loop(_Queue(units), stop, total=len(units))
        finally:
            self._bar.close()

    def _loop(self, queue: _Queue, stop: threading.Event, *, total: int) -> None:
        try:
            while self.fatal is None and self.stopped is None:
                if stop.is_set() and not self.interrupted:
                    self._interrupt(queue)
                self._top_up(queue)
                self._assign(queue)
                if not any(slot.busy for slot in self.slots.values()) and (not len(queue) or self.interrupted):
                    return
                if self._stalled(queue, total):
                    return
                self._poll()
                self._wait()
                self._handle_all(queue)
                self._deadlines(queue)
                if self._bar is not None:
                    self._bar.tick(sum(s.busy for s in self.slots.values()), len(self._alive()))
        except KeyboardInterrupt:  # a second Ctrl-C: the user wants out now; finished units are kept
            self.interrupted = True
        except self.ray.exceptions.RayError as error:
            self.stopped = (f"lost the Ray cluster ({_first_line(error)}); {len(self.done)} unit(s) are done and kept: "
                            "rerun with --resume when the cluster is back")

    def _interrupt(self, queue: _Queue) -> None:
        self.interrupted = True
        self._interrupted_at = time.monotonic()
        queue.clear()
        for slot in self.slots.values():
            if slot.busy:
                self._call(slot, slot.actor.stop.remote(), "call")

    def _top_up(self, queue: _Queue) -> None:
        # Replace workers that died or were stopped, while there is work they could take.
        while len(self.slots) < self.cluster.workers and len(queue) and not self.interrupted:
            self._spawn()

    def _assign(self, queue: _Queue) -> None:
        if self.interrupted:
            return
        now = time.monotonic()
        for slot in self._alive():
            if slot.busy or not len(queue):
                continue
            task = queue.take(slot)
            slot.task, slot.active, slot.frames = task, now, 0
            if isinstance(task, Unit):
                slot.last_source = task.source
                if task.kind == "video" and _store.is_remote(task.video) and task.video not in slot.videos:
                    slot.videos.append(task.video)
            else:
                slot.videos.append(task.location)
            self._call(slot, slot.actor.start.remote(task), "call")

    def _call(self, slot: _Slot, ref: Any, what: str) -> None:
        self.refs[ref] = (slot.name, what)

    def _poll(self) -> None:
        # One poll in flight per busy worker, always: it returns the moment the task ends (no idle gap between
        # units), else after WAIT_S with the frames finished so far.
        for slot in self.slots.values():
            if slot.busy and slot.poll_ref is None:
                slot.poll_ref = slot.actor.poll.remote(WAIT_S)
                self._call(slot, slot.poll_ref, "poll")

    def _wait(self) -> None:
        if self.refs:
            self.ray.wait(list(self.refs), num_returns=1, timeout=TICK_S)
        else:
            time.sleep(TICK_S)

    def _handle_all(self, queue: _Queue) -> None:
        if not self.refs:
            return
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        for ref in ready:
            if ref not in self.refs:
                continue  # its worker was retired by an earlier answer in this batch
            name, what = self.refs.pop(ref)
            slot = self.slots.get(name)
            if slot is None:
                continue
            if what == "ready":
                self._became_ready(slot, ref)
            elif what == "poll":
                self._polled(slot, ref, queue)
            else:
                self._called(slot, ref, queue)

    def _became_ready(self, slot: _Slot, ref: Any) -> None:
        try:
            where = self.ray.get(ref)
        except self.ray.exceptions.RayError as error:
            setup = isinstance(error, self.ray.exceptions.RuntimeEnvSetupError)
            if setup or "creation task" in str(error) or "__init__" in str(error):
                # The model could not be opened there (or --model is not where that node looks).
                self.fatal = EdgesegError(f"worker {slot.name} could not start: {_cause(error)}")
                return
            self._lost(slot, f"died while starting: {_first_line(error)}", queue=None)
            return
        slot.ready_ref = None
        slot.node = where.get("node", "")
        self.stats[slot.name].node = slot.node
        if self.first_ready_s is None:
            self.first_ready_s = time.monotonic() - self._started

    def _called(self, slot: _Slot, ref: Any, queue: _Queue) -> None:
        """A call whose answer is nothing (start, stop): only its failure matters, a worker that is gone."""
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as error:
            self._lost(slot, _reason(error), queue=queue)

    def _polled(self, slot: _Slot, ref: Any, queue: _Queue) -> None:
        slot.poll_ref = None
        try:
            answer = self.ray.get(ref)
        except self.ray.exceptions.RayError as error:  # the worker died, or Ray stopped it (memory): not trusted
            self._lost(slot, _reason(error), queue=queue)
            return
        for message in answer["messages"]:
            log.warning("%s", message)
        task = slot.task
        if task is None:
            return
        if answer["key"] == task.key:
            slot.active = max(slot.active, time.monotonic() - answer["idle_s"])
            if isinstance(task, Unit) and answer["frames"] > slot.frames and self._bar is not None:
                self._bar.add(answer["frames"] - slot.frames)
                slot.frames = answer["frames"]
        if "result" in answer:
            slot.task = None
            self._ended(slot, task, *answer["result"], queue=queue)

    def _ended(self, slot: _Slot, task: Unit | Probe, how: str, value: Any, *, queue: _Queue) -> None:
        if how == "fatal":
            self.fatal = EdgesegError(value)  # a bad option, model or storage: every unit would fail alike
        elif how == "failed":
            self._failed(task, value, queue, slot)
        elif isinstance(task, Probe):
            self.probed[task.location] = value
        elif not value.get("interrupted"):  # stopped early: not done, --resume runs it again
            self._count(slot, task, value)

    def _count(self, slot: _Slot, unit: Unit, marker: dict[str, Any]) -> None:
        self.done[unit.key] = marker
        stats = self.stats[slot.name]
        stats.frames += marker["frames"]
        stats.frames_failed += marker["frames_failed"]
        stats.units += 1
        stats.busy_s += marker["seconds"]
        stats.io_s += sum(marker.get("io_s", {}).values())
        if marker.get("infer_fps"):
            stats.infer_s += marker["frames"] / marker["infer_fps"]
        self.described = self.described or marker.get("described", {})
        if self._bar is not None:
            self._bar.add(marker["frames"] + marker["frames_failed"] - slot.frames)
        slot.frames = 0

    def _lost(self, slot: _Slot, reason: str, *, queue: _Queue | None, task: Any = None) -> None:
        """A worker died (its process, or its node): its task goes back to the queue, a new worker is started."""
        task = task or slot.task
        self._retire(slot, kill=True)  # gone already, or not to be trusted (Ray stopped it for memory)
        self.stats[slot.name].died = True
        if self._bar is not None and slot.frames:
            self._bar.add(-slot.frames)  # those frames were never published: they will be counted when redone
        if task is None:
            self._idle_deaths += 1
            if self._idle_deaths > 3 * self.cluster.workers:
                self.fatal = EdgesegError(f"workers keep dying before they take any work (last: {reason}); "
                                          "see the Ray logs of the nodes (ray logs, /tmp/ray/session_latest/logs).")
            return
        where = f" on {slot.node}" if slot.node else ""
        log.warning("worker %s%s died (%s); %s goes back to the queue for the next free worker",
                    slot.name, where, reason[:200], _what(task))
        self._again(task, reason, queue)

    def _failed(self, task: Any, reason: str, queue: _Queue, slot: _Slot) -> None:
        if self._bar is not None and slot.frames:
            self._bar.add(-slot.frames)
        slot.frames = 0
        log.warning("%s failed on worker %s: %s", _what(task), slot.name, reason[:300])
        self._again(task, reason, queue)

    def _again(self, task: Any, reason: str, queue: _Queue | None) -> None:
        if isinstance(task, Probe):
            self.attempts[task.key] += 1
            if self.attempts[task.key] > self.cluster.retries:
                self.probed[task.location] = f"could not be read by a worker: {reason}"
            elif queue is not None:
                queue.give_back(task)
            return
        self.attempts[task.key] += 1
        if self.attempts[task.key] > self.cluster.retries or queue is None or self.interrupted:
            if not self.interrupted:
                self.lost[task.key] = reason
                log.error("unit %s gave up after %d tries (last: %s); it is left for --resume", task.key,
                          self.attempts[task.key], reason[:200])
            return
        self.retried += 1
        queue.give_back(task)

    def _deadlines(self, queue: _Queue) -> None:
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if not slot.busy:
                continue
            if self.interrupted and now - self._interrupted_at > STOP_GRACE_S:
                log.warning("worker %s did not end %s within %.0f s of the stop: stopped hard", slot.name,
                            _what(slot.task), STOP_GRACE_S)
                self._retire(slot, kill=True)
                continue
            silent = now - slot.active
            if silent <= self.cluster.unit_timeout:
                continue
            task = slot.task
            log.warning("%s on worker %s%s showed no progress for %.0f s (--unit-timeout): that worker is stopped and "
                        "the unit goes back to the queue", _what(task), slot.name,
                        f" ({slot.node})" if slot.node else "", silent)
            self.stats[slot.name].timed_out += 1
            self.timed_out += 1
            if self._bar is not None and slot.frames:
                self._bar.add(-slot.frames)
            self._retire(slot, kill=True)  # a hung decoder or engine call cannot be interrupted otherwise
            self._again(task, f"no progress for {silent:.0f} s (--unit-timeout {self.cluster.unit_timeout:g})", queue)

    def _stalled(self, queue: _Queue, total: int) -> bool:
        """True (and ``stopped`` says why) when no worker has been alive for ``placement_timeout``."""
        if self._alive() or self.interrupted:
            self._no_worker_since = None
            return False
        now = time.monotonic()
        self._no_worker_since = self._no_worker_since or now
        waited = now - self._no_worker_since
        if waited < self.cluster.placement_timeout:
            return False
        try:
            free = self.ray.available_resources()
            nodes = describe_nodes(alive_nodes(self.ray))
        except Exception:  # noqa: BLE001 - the cluster itself may be what is gone; say what we know
            free, nodes = {}, "unknown: the cluster does not answer"
        left = len(queue) + sum(1 for s in self.slots.values() if s.busy)
        self.stopped = (f"no worker could be placed for {waited:.0f} s (--placement-timeout): each needs "
                        f"{self.need.describe()}, the cluster has {free.get('CPU', 0):g} CPU and "
                        f"{free.get('GPU', 0):g} GPU free ({nodes}). {len(self.done)} of {total or left} unit(s) are "
                        "done and kept: rerun with --resume when the cluster has room")
        return True

    # -- after the run -------------------------------------------------------------------------

    def join_stored(self, parts: list[str], target: str, fps: float, codec: str) -> str:
        """Join overlay parts in object storage on a live worker (the driver never carries the pixels)."""
        alive = [slot for slot in self._alive() if not slot.busy]
        if not alive:
            raise EdgesegError(f"no live worker to join the overlay parts into `{target}`: rerun with --resume")
        ref = alive[0].actor.join.remote(parts, target, fps, codec)
        try:
            return self.ray.get(ref, timeout=max(600.0, self.cluster.unit_timeout))
        except self.ray.exceptions.RayTaskError as error:
            cause = error.cause if isinstance(getattr(error, "cause", None), BaseException) else error
            raise EdgesegError(f"joining the overlay parts into `{target}` failed: {_first_line(cause)}") from None
        except self.ray.exceptions.RayError as error:
            raise EdgesegError(f"joining the overlay parts into `{target}` failed: {_first_line(error)}; rerun with "
                               "--resume") from None

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {name: stats.report() for name, stats in self.stats.items() if stats.units or stats.died
                or stats.timed_out}

    def close(self) -> None:
        """End every worker: an idle one first removes its temporary folder, then each is stopped by Ray
        (``ray.kill``; an actor left to end by itself after a threaded unit dies at exit in Ray 2.60 and Ray
        reports that as a worker crash on the driver's stdout)."""
        closing = [slot.actor.close.remote() for slot in self.slots.values() if slot.ready and not slot.busy]
        if closing:
            try:
                self.ray.wait(closing, num_returns=len(closing), timeout=5.0)
            except Exception:  # noqa: BLE001 - the cluster may be gone; the stop below is all that is left
                pass
        for slot in list(self.slots.values()):
            self._retire(slot, kill=True)


class _Progress:
    """Frames done, shown by the runtime's one :class:`Progress` (a bar on a terminal, a log line every
    ``LINES_EVERY_S`` when stderr is piped), with the recent rate and the busy workers as its note."""

    def __init__(self, enabled: bool, total: int) -> None:
        from edgeseg.runtime.progress import Progress

        self.shown = Progress(total, desc="edgeseg segment --ray", unit="frame", enabled=enabled, every=LINES_EVERY_S)
        self.total = total
        self.window: collections.deque[tuple[float, int]] = collections.deque([(time.monotonic(), 0)])

    def add(self, frames: int) -> None:
        self.shown.update(frames)  # negative: frames of a unit taken back, counted again when it is redone

    def tick(self, busy: int, alive: int) -> None:
        now = time.monotonic()
        self.window.append((now, self.shown.done))
        while len(self.window) > 2 and now - self.window[0][0] > 30:
            self.window.popleft()
        (t0, f0), (t1, f1) = self.window[0], self.window[-1]
        fps = (f1 - f0) / (t1 - t0) if t1 > t0 else 0.0
        left = f", about {(self.total - self.shown.done) / fps:.0f} s left" if fps > 0 else ""
        self.shown.update(0, note=f"{fps:.1f} fps{left}, workers {busy}/{alive} busy")

    def close(self) -> None:
        self.shown.close()


def _what(task: Any) -> str:
    return f"unit {task.key}" if isinstance(task, Unit) else task.key


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _cause(error: BaseException) -> str:
    # The creation task's own exception is the last line Ray quotes of it ("EdgesegError: Cannot read ...").
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return lines[0] if lines else type(error).__name__

