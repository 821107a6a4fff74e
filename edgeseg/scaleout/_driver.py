"""The driver: resolve where things are, check the cluster fits, run the units, check the outputs, join.

The job's steps, in order (each a function or a class of its own):

1. locations resolved here (:func:`edgeseg.scaleout._store.resolve`): relative paths mean the
   user's folder; the model is opened once here, so a bad one is one line, not one per worker;
2. the plan (units) and the ``--out`` rule of a run without Ray, for a folder or a URI;
3. Ray joined or started (:mod:`._cluster`), the workers checked to fit, then started (:mod:`._pool`);
4. the units run from one shared queue, with deadlines, retries and progress;
5. before anything is called done, every finished unit's marker and files are looked for where the
   job's output lives, as this machine sees it: a unit a worker finished whose outputs are not there
   (an ``--out`` the workers do not share) makes the job incomplete, exit 1, and says so;
6. the parts are joined into one machine's layout and ``summary.json``.

A job never hangs: a worker that cannot be placed holds no unit, a unit that stops moving is taken
back, and a job with no live worker stops after ``placement_timeout``, its finished units kept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.runtime import (RUN_FILES, EdgesegError, Model, RunLock, SegmentOptions, VideoInfo, check_resume, is_live,
                             open_model, prepare_out, records, split_name, stop_on_signals, write_identity)
from edgeseg.scaleout import _store
from edgeseg.scaleout._cluster import Joined, Need, check_fit, connect
from edgeseg.scaleout._merge import merge_source
from edgeseg.scaleout._plan import Placed, Source, Unit, layout, media_kind, plan
from edgeseg.scaleout._pool import Pool
from edgeseg.scaleout._worker import PACKS, WORK_DIR, missing_outputs, read_markers

log = logging.getLogger("edgeseg.scaleout")

@dataclass(frozen=True)
class ModelSpec:
    """How each worker opens its :class:`Model`: the runtime's :func:`open_model` with the job's options,
    ``threads`` set to the worker's CPUs (onnxruntime ignores the ``OMP_NUM_THREADS`` Ray sets).
    ``path``: a file every node sees at that path, or a URI each worker downloads."""

    path: str
    contract: dict[str, Any] | None = None

    def open(self, options: SegmentOptions, *, threads: int | None, path: str | None = None) -> Model:
        return open_model(path or self.path, dataclasses.replace(options, threads=threads), contract=self.contract)


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide a job runs, and how long anything may wait.

    ``address``: ``local`` (start a Ray of its own), ``auto`` or ``host:port`` / ``ray://host:port``
    (join one). Each of ``workers`` actors asks ``cpus_per_worker`` (= its inference threads),
    ``gpus_per_worker`` and ``memory_per_worker_gb`` (0: no reservation) of one node. Units:
    ``chunk`` images or ``range_frames`` frames of a video; each is tried ``retries`` + 1 times.
    ``unit_timeout``: seconds a unit may show no progress before its worker is stopped and the unit
    goes back to the queue. ``placement_timeout``: seconds the job waits with no live worker (or, with
    ``autoscale``, for nodes before it starts) before it stops. ``pack``: ``files`` (one file per
    frame, one machine's layout) or ``zip`` (one archive per unit and output). Progress (frames, as the
    runtime's :class:`Progress` shows it) follows the job's ``SegmentOptions.progress``.

    Example::

        ClusterOptions(address="auto", workers=8, cpus_per_worker=2, pack="zip", unit_timeout=120)
    """

    address: str = "local"
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_per_worker_gb: float = 0.0
    chunk: int = 64
    range_frames: int = 256
    retries: int = 3
    unit_timeout: float = 300.0
    placement_timeout: float = 60.0
    autoscale: bool = False
    pack: str = "files"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.memory_per_worker_gb < 0:
            raise EdgesegError(f"--workers >= 1, --cpus-per-worker > 0, --gpus-per-worker >= 0 and "
                               f"--memory-per-worker >= 0 expected; got {self.workers}, {self.cpus_per_worker}, "
                               f"{self.gpus_per_worker}, {self.memory_per_worker_gb}.")
        if self.chunk < 1 or self.range_frames < 1 or self.retries < 0:
            raise EdgesegError(f"chunk >= 1, range_frames >= 1 and retries >= 0 expected; got {self.chunk}, "
                               f"{self.range_frames}, {self.retries}.")
        if not (self.unit_timeout > 0 and self.placement_timeout > 0):
            raise EdgesegError(f"--unit-timeout and --placement-timeout must be > 0 seconds, got {self.unit_timeout} "
                               f"and {self.placement_timeout}.")
        if self.pack not in PACKS:
            raise EdgesegError(f"--pack must be one of {', '.join(PACKS)}, got {self.pack!r}.")


def segment_on_ray(sources: list[str], *, model: ModelSpec | str | os.PathLike, out: str | os.PathLike,
                   cluster: ClusterOptions = ClusterOptions(), options: SegmentOptions = SegmentOptions(),
                   stop: threading.Event | None = None) -> dict[str, Any]:
    """``edgeseg segment`` over a Ray cluster: the same outputs as one machine; returns the job's summary.

    ``sources``, ``model`` and ``out``: paths (relative ones mean this process's folder) or object-store
    URIs (``s3://``, ``gs://``, ``az://``). ``options`` mean what they mean without Ray (each unit runs
    :func:`edgeseg.runtime.segment` with them), ``--out`` included: a folder holding a run is refused
    unless ``overwrite`` or ``resume``. The summary's ``ray.incomplete`` is None for a whole job, else why
    not (units given up, outputs not where ``out`` is, the job stopped); ``interrupted`` after a stop.

    Example::

        summary = segment_on_ray(["s3://bucket/clips/"], model="s3://bucket/fcn8.onnx", out="s3://bucket/runs/1",
                                 cluster=ClusterOptions(address="auto", workers=8))
    """
    if options.show:
        raise EdgesegError("--show opens a window on this machine; it does not combine with --ray (drop one).")
    spec = model if isinstance(model, ModelSpec) else ModelSpec(str(model))
    spec = dataclasses.replace(spec, path=_store.resolve(spec.path, what="--model"))
    out = _store.resolve(out, what="--out")
    sources = [_resolve_source(s) for s in sources]
    if not sources:
        raise EdgesegError("no SOURCE given: pass images, folders, globs, .txt lists or videos (or --source PATH).")
    stop = stop or threading.Event()
    local = _check_model(spec, options)
    cluster = _same_grain(cluster, out, options)
    placed = _storage_step(out, layout, sources, out=out, recursive=options.recursive)
    stored_videos = [p.spec for p in placed if _store.is_remote(p.spec) and media_kind(p.spec) == "video"]
    planned, units = ([], []) if stored_videos else _plan(sources, placed, out, options, cluster, probe=None)
    folders = [p.folder for p in placed]
    # As on one machine: one run at a time writes into a local --out (a second job or a plain run into it is
    # refused while this one holds it), and --resume continues only the same job. Object storage has no lock.
    lock = None if _store.is_remote(out) else RunLock(out)
    try:
        _prepare_outs(out, folders, options, clear=False)  # writable, and no run there unless --overwrite/--resume
        identity = _identity(local, placed, options, out)
        if identity is not None and options.resume:
            check_resume(Path(out), identity)
        job = _Job(sources, placed, planned, units, stored_videos, identity, spec=spec, out=out, local=local,
                   cluster=cluster, options=options)
        return _run_job(job, stop)
    finally:
        if lock is not None:
            lock.release()


def _identity(local: dict[str, Any], placed: list[Placed], options: SegmentOptions, out: str) -> dict[str, Any] | None:
    """What --resume must find the same in a local --out (the keys :func:`check_resume` compares), json-normalized."""
    if _store.is_remote(out):
        return None
    identity = {"schema": records.SCHEMA, "model": {"sha256": local["sha256"]}, "contract": local["contract"],
                "engine": {"engine": local["engine"], "precision": local["precision"]},
                "sources": {p.name: {"source": p.spec, "kind": "ray"} for p in placed},
                "options": {key: getattr(options, key) for key in ("outputs", "stride", "start", "recursive", "smooth",
                                                                   "alpha")},
                "folders": [_store.relative(p.folder, out) or "." for p in placed]}
    return json.loads(json.dumps(identity))


@dataclass(frozen=True)
class _Job:
    """A planned job whose --out is held: what :func:`_run_job` needs."""

    sources: list[str]
    placed: list[Placed]
    planned: list[Source]
    units: list[Unit]
    stored_videos: list[str]  # videos in object storage: planned once a worker has probed them
    identity: dict[str, Any] | None
    spec: ModelSpec
    out: str
    local: dict[str, Any]  # the model as opened here
    cluster: ClusterOptions
    options: SegmentOptions


def _run_job(job: _Job, stop: threading.Event) -> dict[str, Any]:
    """The job once its --out is held: Ray joined, the fit checked, workers started, units run, outputs checked."""
    sources, placed, planned, units, stored_videos = job.sources, job.placed, job.planned, job.units, job.stored_videos
    spec, out, cluster, options, identity = job.spec, job.out, job.cluster, job.options, job.identity
    folders = [p.folder for p in placed]
    ray = _ray()
    started = time.perf_counter()
    joined = connect(ray, cluster.address)
    start_s = time.perf_counter() - started
    pool: Pool | None = None
    setup = time.perf_counter()
    # After ray.init, which installs handlers of its own. A stop ends each worker's unit at its frames in flight:
    # seconds, not a unit's minutes; those units are not done, and --resume runs them again.
    restore = stop_on_signals(stop, finishing="the frames in flight on each worker (--resume redoes their units)")
    try:
        need = Need(cluster.cpus_per_worker, cluster.gpus_per_worker, cluster.memory_per_worker_gb)
        check_fit(ray, need, cluster.workers, autoscale=cluster.autoscale, timeout=cluster.placement_timeout,
                  stop=stop)
        if options.overwrite:  # only now: a job refused above leaves the earlier run as it was
            _prepare_outs(out, folders, options, clear=True)
        if identity is not None:
            write_identity(Path(out), identity)
        # A Ray this job started inherited this process's environment; a joined cluster gets the store settings
        # with each worker (a runtime environment: fresh worker processes, about 2 s more per job start).
        forward = _uses_store(spec, out, [p.spec for p in placed]) and not joined.started
        pool = Pool(ray, spec, cluster, options, env=_store.forwarded_env() if forward else {},
                    progress=options.progress)
        pool.start()
        if stored_videos:
            infos = pool.probe(stored_videos, stop=stop)
            _raise_if_stopped(pool)
            planned, units = _plan(sources, placed, out, options, cluster, probe=lambda url: _probed(infos, url))
        _storage_step(out, _store.write_bytes, _store.join(out, WORK_DIR, "plan.json"), json.dumps(
            {"chunk": cluster.chunk, "range_frames": cluster.range_frames, "pack": cluster.pack}).encode())
        before = _finished_before(units) if options.resume else {}
        todo = [u for u in units if u.key not in before]
        if before:
            log.info("--resume: %d of %d unit(s) (%d frames) are done already; %d frame(s) to go", len(before),
                     len(units), sum(m["frames"] + m["frames_failed"] for m in before.values()),
                     sum(u.frames for u in todo))
        began = time.perf_counter()
        pool.run(todo, stop=stop)
        wall = time.perf_counter() - began
        _raise_if_stopped(pool, stopped_ok=True)
        job = dataclasses.replace(job, planned=planned, units=units)
        return _finish(job, _Ran(pool, joined, todo, before, wall=wall, start_s=start_s, setup_s=began - setup))
    finally:
        restore()
        if pool is not None:
            pool.close()
        if joined.started:
            ray.shutdown()


@dataclass(frozen=True)
class _Ran:
    """What running a job's units left: the pool, the cluster joined, the units run and those --resume kept, times."""

    pool: Pool
    joined: Joined
    todo: list[Unit]
    before: dict[str, dict[str, Any]]  # unit key -> marker of the units an earlier run finished
    wall: float
    start_s: float
    setup_s: float


def _finish(job: _Job, ran: _Ran) -> dict[str, Any]:
    """Check every finished unit's outputs where the job's output lives, join, and write summary.json
    (the runtime's schema: each source's report merged from its units' by :func:`records.merge_reports`)."""
    out, units, options, local, pool, before = job.out, job.units, job.options, job.local, ran.pool, ran.before
    markers = _storage_step(out, read_markers, units)  # as this machine sees --out, not as the workers said
    gaps = _storage_step(out, missing_outputs, units, markers)
    unseen = [u for u in ran.todo if u.key in pool.done and u.key not in markers]
    incomplete = _incomplete(unseen, gaps, pool, out, job.cluster)
    if incomplete:
        log.error("%s", incomplete)
    complete = {key: m for key, m in markers.items() if key not in gaps}
    join = pool.join_stored if _store.is_remote(out) else None
    reports = {s.name: merge_source(s, [u for u in units if u.source == s.number], options, kind=local["kind"],
                                    wall=ran.wall, interrupted=pool.interrupted, markers=complete, resumed=set(before),
                                    join_stored=join) for s in job.planned}
    for source in job.planned:  # where each source's outputs are, relative to --out, as one machine says it
        reports[source.name]["folder"] = _store.relative(source.out, out)
    extra = {"workers": pool.worker_stats(), "ray": {
        **_ray_section(job.cluster, ran), "units": len(units), "units_skipped": len(before),
        "units_retried": pool.retried, "units_timed_out": pool.timed_out, "units_lost": sorted(pool.lost),
        "units_unseen": [u.key for u in unseen], "units_incomplete": sorted(gaps), "stopped": pool.stopped,
        "incomplete": incomplete}}
    # This run's inference calls only: the units --resume kept were an earlier run's work.
    new = [m for key, m in complete.items() if key not in before]
    calls = {"batches": sum(m["batches"] for m in new), "batched_frames": sum(m["frames"] for m in new),
             "infer_seconds": sum(m["infer_seconds"] for m in new)}
    summary = records.run_summary(_engine_section(job, pool, complete), reports, wall_s=ran.wall, calls=calls,
                                  interrupted=pool.interrupted, error=None, extra=extra)
    _store.write_bytes(_store.join(out, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _engine_section(job: _Job, pool: Pool, complete: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The summary's engine fields: what the workers ran this run, else (every unit kept by --resume) what the
    earlier run's markers say, else the model as opened here."""
    local = job.local
    described = pool.described or {k: v for m in list(complete.values())[:1] for k, v in m.items()
                                    if k in ("engine", "provider", "precision")}
    return {"model": job.spec.path, "kind": local["kind"], "engine": described.get("engine", local["engine"]),
            "engine_choice": local["engine_choice"], "provider": described.get("provider", ""),
            "providers": [described.get("provider", "")],
            "precision": described.get("precision", local["precision"]), "engine_streams": local["streams"],
            "batch": max((m["batch"] for m in complete.values()), default=1), "inflight": 1,
            "smooth": job.options.smooth}


def _ray_section(cluster: ClusterOptions, ran: _Ran) -> dict[str, Any]:
    """Where the job ran and what it asked; Ray's own start (once per cluster) apart from this job's set-up
    (fit check, workers started, videos probed)."""
    joined, pool = ran.joined, ran.pool
    return {"address": cluster.address, "cluster": joined.gcs, "started_here": joined.started,
            "nodes": len(joined.nodes), "workers": cluster.workers, "cpus_per_worker": cluster.cpus_per_worker,
            "gpus_per_worker": cluster.gpus_per_worker, "memory_per_worker_gb": cluster.memory_per_worker_gb,
            "pack": cluster.pack, "start_s": round(ran.start_s, 3), "setup_s": round(ran.setup_s, 3),
            "workers_ready_s": round(pool.first_ready_s, 3) if pool.first_ready_s is not None else None}


def describe_job(summary: dict[str, Any], *, out: str) -> str:
    """What a person reads at the end of a ``--ray`` job: frames (resumed apart), wall time and fps, each
    worker's own fps, Ray's start apart.

    Example::

        print(describe_job(segment_on_ray(["clip.mp4"], model="fcn8.onnx", out="runs/clip"), out="runs/clip"))
    """
    ray = summary["ray"]
    resumed = f", {summary['frames_resumed']} kept from the earlier run" if summary.get("frames_resumed") else ""
    lines = [f"{summary['frames']} frame(s) done, {summary['frames_failed']} failed{resumed}; "
             f"{summary['fps']:.2f} fps over {summary['wall_s']:.1f} s on {len(summary.get('workers', {}))} worker(s) "
             f"(Ray {'started' if ray['started_here'] else 'joined'} in {ray['start_s']:.1f} s, apart)"]
    for name, worker in sorted(summary.get("workers", {}).items()):
        note = " (died)" if worker["died"] else ""
        lines.append(f"  {name} on {worker['node'] or '?'}: {worker['frames']} frame(s) in {worker['busy_s']:.1f} s "
                     f"busy: {worker['fps']:.1f} fps end to end, {worker['infer_fps']:.1f} fps inference alone{note}")
    engine = f"{summary.get('engine', '?')} ({summary.get('provider', '')}, {summary.get('precision', '')})"
    lines.append(f"engine {engine}; wrote {out.rstrip('/')}/summary.json")
    return "\n".join(lines)


def _resolve_source(text: str | os.PathLike) -> str:
    """A SOURCE as every node must read it (:func:`_store.resolve`), its ``name=`` kept; a live one refused."""
    entry = split_name(os.fspath(text))
    if is_live(entry.spec):
        raise EdgesegError(f"`{entry.spec}` is a live source; --ray runs files (images and videos) on a cluster: run "
                           "live sources without --ray.")
    resolved = _store.resolve(entry.spec, what="SOURCE")
    return f"{entry.name}={resolved}" if entry.name else resolved


def _incomplete(unseen: list[Unit], gaps: dict[str, list[str]], pool: Pool, out: str,
                cluster: ClusterOptions) -> str | None:
    """Why the job is not whole (one sentence per cause), or None."""
    said = []
    if unseen:
        nodes = sorted({pool.done[u.key].get("node", "?") for u in unseen})
        said.append(f"{len(unseen)} unit(s) finished on the workers but their outputs are not in `{out}` as this "
                    f"machine sees it ({_keys([u.key for u in unseen])}; written on {', '.join(nodes)}): the workers "
                    "do not share that folder with this machine. Pass an --out every node mounts at the same path, "
                    "or object storage (s3://, gs://, az://)")
    if gaps:
        first = next(iter(gaps.values()))[0]
        said.append(f"{len(gaps)} finished unit(s) name output files that are not in `{out}` ({_keys(list(gaps))}; "
                    f"first: {first}); --resume redoes them")
    if pool.lost:
        reason = next(iter(pool.lost.values()))
        said.append(f"{len(pool.lost)} unit(s) gave up after {cluster.retries + 1} tries ({_keys(list(pool.lost))}; "
                    f"first: {reason[:200]}); --resume tries them again")
    if pool.stopped:
        said.append(f"the job stopped: {pool.stopped}")
    return "; ".join(said) + "." if said else None


def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _raise_if_stopped(pool: Pool, *, stopped_ok: bool = False) -> None:
    if pool.fatal is not None:
        raise pool.fatal
    if pool.stopped and not stopped_ok:
        raise EdgesegError(f"the job stopped before it began: {pool.stopped}")


def _probed(infos: dict[str, VideoInfo | str], location: str) -> VideoInfo:
    info = infos.get(location, "the job stopped before a worker could read it")
    if isinstance(info, str):
        raise EdgesegError(f"Cannot open video `{location}`: {info}" if "`" not in info else info)
    return info


def _plan(sources: list[str], placed: list[Placed], out: str, options: SegmentOptions, cluster: ClusterOptions,
          probe: Any) -> tuple[list[Source], list[Unit]]:
    return _storage_step(out, plan, sources, out=out, options=options, chunk=cluster.chunk,
                         range_frames=cluster.range_frames, probe=probe, placed=placed)


def _storage_step(where: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a driver step that reads or writes object storage: a store that refuses is one line, not a traceback."""
    try:
        return function(*args, **kwargs)
    except EdgesegError:
        raise
    except OSError as error:
        raise _store.storage_error(where, error) from None


def _check_model(spec: ModelSpec, options: SegmentOptions) -> dict[str, Any]:
    """Open the model here once: a bad one stops the job in one line, not once per worker in its log."""
    cpu = dataclasses.replace(options, provider="cpu" if options.provider in ("cuda", "tensorrt") else options.provider)
    with tempfile.TemporaryDirectory(prefix="edgeseg-model-") as folder:
        path = spec.path
        if _store.is_remote(path):
            path = os.path.join(folder, _store.name_of(spec.path))
            _storage_step(spec.path, _store.download, spec.path, path)
        model = spec.open(cpu, threads=1, path=path)
        return {"kind": model.kind, "engine": model.engine, "precision": model.precision,
                "sha256": model.file.sha256, "contract": model.contract.to_dict(),
                "engine_choice": model.choice_reason, "streams": model.streams}


def _uses_store(spec: ModelSpec, out: str, sources: list[str]) -> bool:
    return any(_store.is_remote(x) for x in (spec.path, out, *sources))


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EdgesegError("--ray needs Ray: pip install 'edgeseg[ray]'") from None
    return ray


def _same_grain(cluster: ClusterOptions, out: str, options: SegmentOptions) -> ClusterOptions:
    # --resume must cut the job into the units the interrupted run cut (and pack them alike), or nothing matches.
    if not options.resume:
        return cluster
    try:
        grain = json.loads(_store.read_bytes(_store.join(out, WORK_DIR, "plan.json")))
    except (OSError, ValueError):
        return cluster
    return dataclasses.replace(cluster, chunk=int(grain["chunk"]), range_frames=int(grain["range_frames"]),
                               pack=str(grain.get("pack", cluster.pack)))


def _finished_before(units: list[Unit]) -> dict[str, dict[str, Any]]:
    """--resume: units an earlier run finished, whose marker, parts and published files are all there."""
    if not units:
        return {}
    out = units[0].out
    markers = _storage_step(out, read_markers, units)
    gaps = _storage_step(out, missing_outputs, units, markers)
    return {key: marker for key, marker in markers.items() if key not in gaps}


def _prepare_outs(out: str, folders: list[str], options: SegmentOptions, *, clear: bool) -> None:
    """The single-machine --out rule for the job's folder and each source's: a folder holding a run
    (its files, or this package's parts) is refused unless --overwrite or --resume. ``clear``: apply
    --overwrite (delete that run's files); without it, only check (writable, not refused)."""
    for folder in dict.fromkeys([out, *folders]):
        if _store.is_remote(folder):
            _storage_step(folder, _prepare_stored_out, folder, options, clear=clear)
            continue
        # The parts count as a run: an earlier job's must never be joined into this one's outputs.
        prepare_out(Path(folder), previous_run=lambda o: [o / name for name in (*RUN_FILES, WORK_DIR)],
                    overwrite=options.overwrite and clear, resume=options.resume or (options.overwrite and not clear))


def _prepare_stored_out(folder: str, options: SegmentOptions, *, clear: bool) -> None:
    """:func:`prepare_out` for an ``--out`` in object storage: the same rule, and a probe write."""
    if not clear:
        probe = _store.join(folder, ".edgeseg-write-test")
        _store.write_bytes(probe, b"")
        _store.remove([probe])
    previous = [_store.join(folder, name) for name in (*RUN_FILES, WORK_DIR)]
    previous = [location for location in previous if _store.exists(location)]
    if not previous or options.resume or (options.overwrite and not clear):
        return
    if not options.overwrite:
        names = ", ".join(sorted(_store.name_of(p) for p in previous))
        raise EdgesegError(f"Output folder `{folder}` already holds a run ({names}): pass --overwrite to replace it, "
                           "--resume to continue it, or another --out.")
    _store.remove(previous)
