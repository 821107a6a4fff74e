"""The driver: start a pool of Ray actors, hand them units, retry what a dead worker held, merge.

Why Ray actors driven by ``ray.wait`` and not Ray Data's ``map_batches``: a unit here is coarse
(a frame range of a video, a chunk of paths) and writes files rather than returning rows, so Ray
Data's block machinery adds nothing but startup and a streaming executor to tune; what this job
needs is a pool of long-lived actors that each hold one :class:`Model`, a retry of exactly the
unit whose actor died (on a replacement actor), a progress bar counting frames, and Ctrl-C that
finishes the units in flight. That is ~100 lines on ``ray.wait``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.runtime import (RUN_FILES, EdgesegError, Model, SegmentOptions, open_model, prepare_out, records,
                             stop_on_signals, write_json_atomic)
from edgeseg.scaleout._merge import merge_source
from edgeseg.scaleout._plan import Source, Unit, plan
from edgeseg.scaleout._worker import WORK_DIR, read_marker, run_unit

log = logging.getLogger("edgeseg.scaleout")

IN_FLIGHT_PER_WORKER = 2  # one running, one queued at the actor: no idle gap between units


@dataclass(frozen=True)
class ModelSpec:
    """How each worker opens its :class:`Model`: the runtime's :func:`open_model` with the job's options,
    ``threads`` set to the worker's CPUs (onnxruntime ignores the ``OMP_NUM_THREADS`` Ray sets)."""

    path: str
    contract: dict[str, Any] | None = None

    def open(self, options: SegmentOptions, *, threads: int | None) -> Model:
        return open_model(self.path, dataclasses.replace(options, threads=threads), contract=self.contract)


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide: ``address`` is ``local``, ``auto`` or ``ray://host:port``."""

    address: str = "local"
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    chunk: int = 64
    range_frames: int = 256
    retries: int = 3


def segment_on_ray(sources: list[str], *, model: ModelSpec | str | os.PathLike, out: str | os.PathLike,
                   cluster: ClusterOptions = ClusterOptions(), options: SegmentOptions = SegmentOptions(),
                   stop: threading.Event | None = None) -> dict[str, Any]:
    """``edgeseg segment`` over a Ray cluster: the same outputs as one machine; returns the job's summary.

    ``options`` mean what they mean without Ray (each unit runs :func:`edgeseg.runtime.segment`
    with them), ``--out`` included: a folder holding a run is refused unless ``overwrite`` or ``resume``.

    Example::

        summary = segment_on_ray(["clip.mp4"], model="fcn8.onnx", out="runs/clip",
                                 cluster=ClusterOptions(address="local", workers=2))
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec(str(model))
    _check(cluster, options)
    # Fail here, in one line, on a bad model: not once per actor in a worker log.
    local = spec.open(dataclasses.replace(options, provider="cpu" if options.provider == "cuda" else options.provider),
                      threads=1)
    cluster = _same_grain(cluster, Path(out), options)
    planned, units = plan(list(sources), out=out, options=options, chunk=cluster.chunk,
                          range_frames=cluster.range_frames)
    _prepare_outs(Path(out), planned, options)
    todo = [u for u in units if not (options.resume and read_marker(u) is not None)]
    Path(out, WORK_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out, WORK_DIR, "plan.json"), {"chunk": cluster.chunk, "range_frames": cluster.range_frames})
    ray = _ray()
    started_ray = _connect(ray, cluster.address)
    pool = _Pool(ray, spec, cluster, options)
    started = time.perf_counter()
    stop = stop or threading.Event()
    restore = stop_on_signals(stop, finishing="the units in flight")  # after ray.init, which installs handlers of its own
    try:
        pool.run(todo, total=sum(u.frames for u in todo), stop=stop)
    finally:
        restore()
        pool.close()
        if started_ray:
            ray.shutdown()
    wall = time.perf_counter() - started
    reports = {s.name: merge_source(s, [u for u in units if u.source == s.number], options, kind=local.kind, wall=wall,
                                    interrupted=pool.interrupted) for s in planned}
    for source in planned:  # where each source's outputs are, relative to --out, as one machine says it
        reports[source.name]["folder"] = Path(os.path.relpath(source.out, out)).as_posix()
    if pool.lost:
        log.warning("%d unit(s) failed after %d tries each (see summary.json ray.units_lost); run again with --resume",
                    len(pool.lost), cluster.retries + 1)
    summary = _job_summary(spec, local, options, cluster, pool, units, todo, reports, wall)
    write_json_atomic(Path(out) / "summary.json", summary)
    return summary


def _job_summary(spec: ModelSpec, local: Model, options: SegmentOptions, cluster: ClusterOptions, pool: _Pool,
                 units: list[Unit], todo: list[Unit], reports: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    """The job's summary.json: the runtime's schema (each source's report merged from its units'), plus --ray's
    own sections (workers, units)."""
    markers = [m for u in units if (m := read_marker(u)) is not None]
    engine = {"model": spec.path, "kind": local.kind, "engine": pool.described.get("engine", local.engine),
              "engine_choice": local.choice_reason, "provider": pool.described.get("provider", ""),
              "providers": [pool.described.get("provider", "")], "precision": pool.described.get("precision",
                                                                                                local.precision),
              "engine_streams": local.streams, "batch": max((m["batch"] for m in markers), default=1),
              "inflight": options.inflight or 1, "smooth": options.smooth}
    extra = {"workers": pool.worker_stats(), "ray": {"address": cluster.address, "workers": cluster.workers,
             "cpus_per_worker": cluster.cpus_per_worker, "gpus_per_worker": cluster.gpus_per_worker,
             "units": len(units), "units_skipped": len(units) - len(todo), "units_retried": pool.retried,
             "units_lost": [u.key for u in pool.lost]}}
    calls = {"batches": sum(m.get("batches", 0) for m in markers), "batched_frames": sum(m["frames"] for m in markers),
             "infer_seconds": sum(m.get("infer_seconds", 0.0) for m in markers)}
    return records.run_summary(engine, reports, wall_s=wall, calls=calls, interrupted=pool.interrupted, error=None,
                               extra=extra)


class _Pool:
    """Actors, the units in flight on each, and the retry of units whose actor died."""

    def __init__(self, ray: Any, spec: ModelSpec, cluster: ClusterOptions, options: SegmentOptions) -> None:
        self.ray, self.spec, self.cluster, self.options = ray, spec, cluster, options
        self.worker_class = _worker_class(ray)
        self.actors: dict[str, Any] = {}
        self.inflight: dict[Any, tuple[Unit, str]] = {}
        self.stats: dict[str, dict[str, float]] = {}
        self.attempts: collections.Counter = collections.Counter()
        self.lost: list[Unit] = []
        self.retried = 0
        self.interrupted = False
        self.described: dict[str, Any] = {}
        self._next = 0
        for _ in range(cluster.workers):
            self._spawn()

    def _spawn(self) -> None:
        name = f"w{self._next}"
        self._next += 1
        threads = max(1, int(self.cluster.cpus_per_worker))  # onnxruntime ignores Ray's OMP_NUM_THREADS
        self.actors[name] = self.worker_class.options(
            num_cpus=self.cluster.cpus_per_worker, num_gpus=self.cluster.gpus_per_worker,
            scheduling_strategy="SPREAD",  # across nodes first: decode where the work is, on every node
        ).remote(self.spec, self.options, threads, name)
        self.stats[name] = {"frames": 0, "frames_failed": 0, "seconds": 0.0, "units": 0, "died": 0}

    def run(self, units: list[Unit], *, total: int, stop: threading.Event) -> None:
        pending = collections.deque(units)
        bar = _bar(total, self.options.progress)
        try:
            try:
                self._loop(pending, bar, stop)
            except KeyboardInterrupt:
                log.warning("Ctrl-C: finishing the units in flight and joining the outputs (again to abort)")
                self.interrupted = True
                self._loop(collections.deque(), bar, stop)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: join what is complete now
        finally:
            if bar is not None:
                bar.close()

    def _loop(self, pending: collections.deque, bar: Any, stop: threading.Event) -> None:
        while pending or self.inflight:
            if stop.is_set() and pending:
                self.interrupted = True
                pending.clear()
            self._submit(pending)
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                self._collect(ref, pending, bar)
            if bar is not None:
                bar.set_postfix_str(f"workers {len(self.actors)}", refresh=False)

    def _submit(self, pending: collections.deque) -> None:
        load = collections.Counter(name for _, name in self.inflight.values())
        for name, actor in list(self.actors.items()):
            while pending and load[name] < IN_FLIGHT_PER_WORKER:
                unit = pending.popleft()
                self.inflight[actor.run.remote(unit)] = (unit, name)
                load[name] += 1

    def _collect(self, ref: Any, pending: collections.deque, bar: Any) -> None:
        unit, name = self.inflight.pop(ref)
        exceptions = self.ray.exceptions
        try:
            marker = self.ray.get(ref)
        except (exceptions.RayActorError, exceptions.WorkerCrashedError) as error:
            self._worker_died(name, error)
            self.attempts[unit.key] += 1
            if self.attempts[unit.key] > self.cluster.retries:
                self.lost.append(unit)
            else:
                self.retried += 1
                pending.appendleft(unit)  # first again: outputs stay in order for a reader who watches
            return
        except exceptions.RayTaskError as error:
            cause = error.cause if isinstance(getattr(error, "cause", None), BaseException) else error
            if isinstance(cause, EdgesegError):
                raise EdgesegError(str(cause)) from None
            raise
        if marker.get("interrupted"):  # a signal reached the worker: not done, --resume redoes it
            self.interrupted = True
            return
        stats = self.stats[name]
        for key in ("frames", "frames_failed", "seconds"):
            stats[key] += marker[key]
        stats["units"] += 1
        self.described = self.described or marker.get("described", {})
        if bar is not None:
            bar.update(marker["frames"] + marker["frames_failed"])

    def _worker_died(self, name: str, error: BaseException) -> None:
        if name not in self.actors:
            return  # already replaced (its other unit in flight failed too)
        cause = getattr(error, "error_msg", None) or str(error).splitlines()[0]
        if "__init__" in str(error) or "creation task" in str(error):
            raise EdgesegError(f"worker {name} could not start: {cause}") from None
        log.warning("worker %s died (%s); its units go to a new worker", name, cause[:200])
        del self.actors[name]
        self.stats[name]["died"] = 1
        self._spawn()

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        return {name: {"frames": int(s["frames"]), "frames_failed": int(s["frames_failed"]), "units": int(s["units"]),
                       "fps": round(s["frames"] / s["seconds"], 3) if s["seconds"] else 0.0, "died": bool(s["died"])}
                for name, s in self.stats.items() if s["units"] or s["died"]}

    def close(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors.clear()


def _worker_class(ray: Any) -> Any:
    class SegmentWorker:
        """One Ray actor: one Model with ``threads`` inference threads, fed units by the driver."""

        def __init__(self, spec: ModelSpec, options: SegmentOptions, threads: int, name: str) -> None:
            self.model, self.options, self.name = spec.open(options, threads=threads), options, name

        def run(self, unit: Unit) -> dict[str, Any]:
            marker = run_unit(unit, self.model, self.options, worker=self.name)
            described = {key: marker[key] for key in ("engine", "provider", "precision") if key in marker}
            return {**marker, "described": described}

    return ray.remote(max_restarts=0, max_task_retries=0)(SegmentWorker)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EdgesegError("--ray needs Ray Data: pip install 'edgeseg[ray]'") from None
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Join or start Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(include_dashboard=False)  # workers' warnings (a skipped file) reach this terminal
    elif address == "auto" or address.startswith("ray://") or ":" in address:
        ray.init(address=address)
    else:
        raise EdgesegError(f"--ray expects local, auto or ray://host:port, got {address!r}.")
    return True


def _check(cluster: ClusterOptions, options: SegmentOptions) -> None:
    if cluster.workers < 1 or cluster.cpus_per_worker <= 0 or cluster.gpus_per_worker < 0:
        raise EdgesegError(f"--workers >= 1, --cpus-per-worker > 0 and --gpus-per-worker >= 0 expected; got "
                           f"{cluster.workers}, {cluster.cpus_per_worker}, {cluster.gpus_per_worker}.")
    if options.show:
        raise EdgesegError("--show opens a window on this machine; it does not combine with --ray (drop one).")


def _same_grain(cluster: ClusterOptions, out: Path, options: SegmentOptions) -> ClusterOptions:
    # --resume must cut the job into the units the interrupted run cut, or nothing would match.
    if not options.resume:
        return cluster
    try:
        grain = json.loads((out / WORK_DIR / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return cluster
    return dataclasses.replace(cluster, chunk=int(grain["chunk"]), range_frames=int(grain["range_frames"]))


def _prepare_outs(out: Path, sources: list[Source], options: SegmentOptions) -> None:
    """The single-machine --out rule for the job's folder and each source's: a folder holding a run
    (its files, or this package's parts) is refused unless --overwrite (they are cleared) or --resume."""
    for folder in dict.fromkeys([out, *(Path(s.out) for s in sources)]):
        # The parts count as a run: an earlier job's must never be joined into this one's outputs.
        prepare_out(folder, previous_run=lambda o: [o / name for name in (*RUN_FILES, WORK_DIR)],
                    overwrite=options.overwrite, resume=options.resume)


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr)
