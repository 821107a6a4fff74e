"""``segment``: one loop that runs one source or many through a model into masks, overlays and records.

The shape (docs/architecture.md, "The one pipeline"): every source the user named is a
:class:`Source` with a feeder — a decode thread for files (read, preprocess, chunks of ``batch``
frames into a short queue), a grabber thread for cameras and URLs (:class:`LiveSource`, newest
frame only) — and a writer thread that finishes its frames (post-process, smooth, draw, write the
sinks, call back). The calling thread runs the loop: it gathers what every source has ready (a chunk
of a file, the newest frame of each stream) into ONE inference call, keeps up to ``inflight`` calls
in flight, and hands each frame's output to its source's writer, in order. So N cameras are one call
per round (cross-stream batching), a single video is the decode → infer → write pipeline of earlier
versions, and every option and every record means the same for every kind of source.

Queues are bounded everywhere (a fast stage waits for a slow one; memory stays flat); live sources
never queue (they drop old frames instead). SIGINT/SIGTERM (or ``stop``) end the loop: no new frame
is taken, frames already taken are finished and written, videos are finalized and ``summary.json``
is written, so every output stays valid.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime import records
from edgeseg.runtime.contract import Contract
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import write_json_atomic
from edgeseg.runtime._model import Model
from edgeseg.runtime._options import SegmentOptions
from edgeseg.runtime._outdir import (RunLock, check_resume, earlier_folders, identity_path, prepare_out,
                                     write_identity)
from edgeseg.runtime._signals import stop_on_signals
from edgeseg.runtime._sources import Entry, Source, expand, open_sources, split_name
from edgeseg.runtime._writer import FrameResult, Item, SourceWriter

log = logging.getLogger("edgeseg.runtime")

# What a run leaves in a source's folder: what --overwrite clears and what makes a folder "hold a run"
# (public: --ray's driver applies the same rule to its folders).
# The folders of one file per frame a source's run writes (what a --ray unit's part has to hand over to --out;
# edgeseg.scaleout moves the first three today).
FRAME_FOLDERS = ("masks", "overlay", "reconstruction", "polygons", "rle")
RUN_FILES = ("summary.json", "frames.jsonl", "overlay.mp4", *FRAME_FOLDERS, "coco.json")
# What a run with --zones leaves in --out itself (one for the run, whatever its sources).
DECISION_FILES = ("events.jsonl", "snapshots", "clips")
ROTATED = ("frames-*.jsonl", "overlay-*.mp4", ".overlay*.part.mp4", ".frames.jsonl.resume")
# The CAE's default batch on files: its 28x28 inference costs less than the per-call overhead, so frames per
# call decide its speed (benchmarks/cae_pipeline.py: batch 64 ran 1.27x a plain onnxruntime loop, batch 1 0.61x).
# Segmentation keeps 1: FCN-8 is kernel-bound, and batch 1 keeps latency and memory low.
AUTOENCODER_BATCH = 64
_END = object()


StreamResult = FrameResult  # the name of earlier versions


def open_model(model: Model | str | os.PathLike, options: SegmentOptions = SegmentOptions(), *,
               contract: Contract | Mapping[str, Any] | None = None) -> Model:
    """The one rule that turns what the user named into a :class:`Model` (the CLI, :func:`segment` and
    ``--ray``'s workers use it).

    A :class:`Model` is used as it is; a path is opened with the options' engine settings, compiled for
    throughput when frames come in batches (OpenVINO splits each batch across its streams) or several
    calls are in flight (``inflight`` > 1: one stream each).

    Example::

        model = open_model("fcn8.onnx", SegmentOptions(engine="openvino", batch=4))
    """
    if not isinstance(model, Model):
        model = Model(model, provider=options.provider, threads=options.threads, optimization=options.optimization,
                      contract=contract, engine=options.engine, precision=options.precision,
                      throughput=(options.batch or 1) > 1 or (options.inflight or 1) > 1, strict=options.strict)
    model.check_frames()  # an encoder half is refused at load, before --out is claimed
    return model


def model_precision(model: Model) -> str:
    """What the summary calls the model's precision: ``int8`` for a quantized file (calibrated by edgeseg, or
    holding QDQ/QLinear operators), else what the engine runs (``fp32``; OpenVINO's ``bf16``/``f32``)."""
    return "int8" if model.file.quantized else model.precision


def segment(sources: str | os.PathLike | int | Source | Sequence[str | os.PathLike | int | Source | Entry], *,
            model: Model | str | os.PathLike, out: str | os.PathLike | None,
            options: SegmentOptions | None = None, stop: threading.Event | None = None,
            on_result: Callable[[FrameResult], None] | None = None, serve: int | str | None = None,
            contract: Contract | Mapping[str, Any] | None = None, on_event: Callable[[Any], None] | None = None,
            **changes: Any) -> dict[str, Any]:
    """Run every frame of one source or many through ``model`` into ``out``; returns the summary.

    ``sources``: one or a list of: an image, folder, glob, ``.txt`` list, video file, webcam index or
    stream URL, each optionally ``name=SOURCE`` (or an opened :class:`Source`). One source writes
    into ``out`` itself; several (or a list or folder that expands into several, or one given a
    name) write into ``out/<name>/`` each, with one ``out/summary.json``. ``out=None`` writes nothing (use
    ``on_result``). ``model``: a :class:`Model` or an .onnx path (opened by :func:`open_model`).
    ``options``: a :class:`SegmentOptions`; any of its fields may also be given as a keyword
    (``batch=4``), checked, so a misspelt one is an error. ``on_result`` is called for every frame
    in its source's writer thread. ``serve``: a port (on 127.0.0.1) or ``"HOST:PORT"`` for the live page,
    ``/metrics`` and ``/health`` (port 0: any free port; the summary says which). ``contract``: overrides
    of the model file's contract (see :class:`Model`). ``stop``: set it to end the run (SIGINT/SIGTERM set
    it too). ``zones="zones.json"`` (an option) measures zones and runs rules on every frame
    (:mod:`edgeseg.runtime.decisions`); ``on_event`` is then called with each
    :class:`~edgeseg.runtime.events.Event` (start and end), in its source's writer thread.

    Example::

        summary = segment("clip.mp4", model="fcn8.onnx", out="runs/clip", batch=4)
        print(summary["fps"], summary["sources"]["clip"]["outputs"]["video_codec"])
        segment("clip.mp4", model="fcn8.onnx", out="runs/zones", zones="zones.json", outputs=("jsonl", "rle"),
                on_event=lambda event: print(event.type, event.rule, event.start))
    """
    options = (options or SegmentOptions()).replace(**changes)
    stop = stop or threading.Event()
    # A Ctrl-C while the model loads and the sources are named interrupts as Python does (nothing is written yet);
    # from the first frame on, it ends the run cleanly: what is in flight is finished and every output stays valid.
    run = Run(sources, model=model, out=out, options=options, stop=stop, on_result=on_result, contract=contract,
              on_event=on_event)
    restore_signals = stop_on_signals(stop)
    try:
        return run.execute(serve=serve)
    finally:
        restore_signals()  # only now: a Ctrl-C before summary.json is written still ends the run cleanly


def run_streams(sources: Sequence[str | os.PathLike | int | Source | Entry], *, model: Model | str | os.PathLike,
                out: str | os.PathLike | None = None, options: SegmentOptions | None = None,
                on_result: Callable[[FrameResult], None] | None = None, stop: threading.Event | None = None,
                serve: int | str | None = None) -> dict[str, Any]:
    """:func:`segment` under the name of earlier versions (several streams); the same loop, records and summary.

    Example::

        summary = run_streams(["door=rtsp://cam1/s", "yard=rtsp://cam2/s"], model="fcn8.onnx", out="runs/site")
    """
    return segment(list(sources), model=model, out=out, options=options, on_result=on_result, stop=stop,
                   serve=serve)


@dataclass
class _Call:
    """One inference call: its items (from one or several sources), and its outputs or the future that brings them."""

    items: list[Item]
    good: list[Item]
    started: float
    tensors: np.ndarray | None = None
    outputs: np.ndarray | None = None
    future: Future | None = None
    error: Exception | None = None


class Run:
    """One run of :func:`segment`: its model, its sources (each with a feeder and a writer), the loop.

    The live page reads it while it runs: :attr:`sources` (each a :class:`SourceWriter` with its
    counters and state), :attr:`batches`, :attr:`decisions` (zones, rules, events; None without --zones).
    """

    def __init__(self, sources: Any, *, model: Model | str | os.PathLike, out: str | os.PathLike | None,
                 options: SegmentOptions, stop: threading.Event, on_result: Callable[[FrameResult], None] | None,
                 contract: Contract | Mapping[str, Any] | None = None,
                 on_event: Callable[[Any], None] | None = None) -> None:
        self.options, self.stop = options, stop
        self.decisions: Any = None  # edgeseg.runtime.decisions.Decisions of a run with --zones
        self.model = open_model(model, options, contract=contract)
        self.root = Path(out) if out is not None else None
        typed = list(sources) if isinstance(sources, (list, tuple)) else [sources]
        if not typed:
            raise EdgesegError("no SOURCE given: pass an image, folder, video, webcam index or URL (or several).")
        entries = expand(typed, recursive=options.recursive)
        # One source writes into --out itself; a run of several, a list that expanded, or a source given a name
        # (door=rtsp://...) into --out/<name>/.
        self.single = len(typed) == 1 and len(entries) == 1 and not _named(typed[0])
        if options.smooth and self.model.kind == "autoencoder":
            raise EdgesegError(f"--smooth averages class probabilities of segmentation models; `{self.model.path}` is "
                               "an autoencoder (no classes): drop --smooth.")
        self.listeners: list[Callable[[FrameResult], None]] = [on_result] if on_result is not None else []
        self.wake = threading.Event()  # set by any feeder with something new: the loop's one wake-up
        opened = open_sources(entries, stride=options.stride, start=options.start, max_frames=options.max_frames,
                              recursive=options.recursive, exclude=self.root, live={**options.live, "wake": self.wake})
        self.lock: RunLock | None = None
        try:
            self._refuse_what_cannot_apply(opened)
            config = self._decision_config(opened)  # a zones/rules file with a mistake stops here, before --out
            folders = self._folders(opened)
            if config is not None:
                self.decisions = self._open_decisions(config, opened, on_event)
            self.sources = [SourceWriter(source, run=self, folder=folder, wake=self.wake,
                                         batch=self._batch(source)) for source, folder in zip(opened, folders)]
        except BaseException:
            for source in opened:
                source.close()
            if self.decisions is not None:
                self.decisions.close(timeout=0)
            if self.lock is not None:
                self.lock.release()
            raise
        live = any(s.source.live is not None for s in self.sources)
        # A live frame is inferred as soon as it comes; several calls in flight are for files.
        self.inflight = 1 if live else (options.inflight or self.model.streams)
        self.batches = 0
        self.batched_frames = 0
        self.infer_seconds = 0.0
        self._last_finished = 0.0
        self.error: BaseException | None = None
        self.started = self.ended = 0.0
        self.server_url: str | None = None

    # -- start -------------------------------------------------------------------------------------

    def _refuse_what_cannot_apply(self, sources: list[Source]) -> None:
        options, live = self.options, [s.name for s in sources if s.live is not None]
        if live and (options.stride != 1 or options.start):
            raise EdgesegError(f"--stride/--start select frames of files; {live[0]} is a live source, which gives its "
                               "newest frame (or every frame with --policy queue-all): drop them for live sources.")
        if live and options.inflight not in (None, 1):
            raise EdgesegError(f"--inflight {options.inflight}: a live source's frame is inferred as soon as it "
                               f"comes ({live[0]}), so one call is in flight: drop --inflight.")
        if options.show and len(sources) > 1:
            raise EdgesegError("--show opens one window; with several sources use --serve PORT to watch them all.")

    def _decision_config(self, sources: list[Source]) -> Any:
        """--zones: the zones/rules file, read and checked against the model's classes, the run's source names
        and the frame sizes known now (videos); None without --zones. Refuses what cannot apply."""
        options = self.options
        if options.zones is None:
            return None
        if self.model.kind != "segmentation":
            raise EdgesegError(f"--zones measures the classes of a segmentation model in zones; `{self.model.path}` "
                               f"is an {self.model.kind} (no classes): drop --zones.")
        from edgeseg.runtime.decisions import load_decisions

        config = load_decisions(options.zones, classes=self.model.contract.output.classes,
                                streams=[source.name for source in sources],
                                frame_sizes={source.name: source.size for source in sources if source.size})
        if config.rules:
            part = next((source for source in sources if source.part), None)
            if part is not None:
                raise EdgesegError(
                    f"{config.source}: rules need each source whole, in time order, in one process; `{part.spec}` is "
                    f"a part of a source (a --ray unit), where a rule's timing would be cut at the part's borders. Run "
                    "zones with rules on one machine, or a zones file without rules on the cluster (zone statistics "
                    "and vector outputs work there).")
            timed = next((rule for rule in config.rules if rule.for_s or rule.clear_after), None)
            still = next((source for source in sources if not source.sequential and source.error is None), None)
            if timed is not None and still is not None:
                raise EdgesegError(
                    f"{config.source}: rule {timed.name!r} counts seconds (for {timed.for_s:g}, clear_after "
                    f"{timed.clear_after:g}), but source {still.name!r} is images, which have no time: give its rules "
                    "for 0 and clear_after 0 (an event then lasts while consecutive images hold the condition), or "
                    "run a video or stream.")
        if options.clips is not None:
            if not config.rules:
                raise EdgesegError(f"--clips cuts a clip around each event; {config.source} has no rules, so no "
                                   "events: add rules or drop --clips.")
            if self.root is None:
                raise EdgesegError("--clips writes clips/<event id>.mp4 into --out; this run has none (out=None).")
            still = next((source for source in sources if not source.sequential and source.error is None), None)
            if still is not None:
                raise EdgesegError(f"--clips records video around events; source {still.name!r} is images: drop "
                                   "--clips, or run a video or stream.")
        return config

    def _open_decisions(self, config: Any, sources: list[Source], on_event: Callable[[Any], None] | None) -> Any:
        """The run's one Decisions (every source's zones and rules; events.jsonl, snapshots and clips in --out),
        its event sinks started."""
        from edgeseg.runtime.decisions import DecisionOptions, Decisions

        decisions = Decisions.from_config(
            config, classes=self.model.contract.output.classes, out=self.root if config.rules else None,
            on_event=on_event, options=DecisionOptions(clips=self.options.clips, append=self.options.resume))
        decisions.path = Path(self.options.zones)
        for source in sources:
            decisions.open_stream(source.name, fps=source.fps or None)
        return decisions

    def _folders(self, sources: list[Source]) -> list[Path | None]:
        """Each source's output folder, once --out is held by this run and its rule applied (an earlier run there
        is refused, replaced, or continued when it is the same run); this run's identity is written first."""
        if self.root is None:
            return [None] * len(sources)
        folders = [self.root] if self.single else [self.root / source.name for source in sources]
        self.lock = RunLock(self.root)  # a second run into this --out is refused from here on
        prepare_out(self.root, previous_run=lambda root: self._previous_run(root, folders),
                    overwrite=self.options.overwrite, resume=self.options.resume)
        identity = self._identity(sources, folders)
        if self.options.resume:
            check_resume(self.root, identity)
        write_identity(self.root, identity)
        return folders

    def _identity(self, sources: list[Source], folders: list[Path]) -> dict[str, Any]:
        """What makes this run this run: what --resume must find the same (json-normalized)."""
        model, options = self.model, self.options
        identity = {
            "schema": records.SCHEMA,
            "model": {"sha256": model.file.sha256},
            "contract": model.contract.to_dict(),
            "engine": {"engine": model.engine, "precision": model_precision(model)},
            "sources": {source.name: {"source": source.spec if source.live is not None else _real(source.spec),
                                      "kind": source.kind} for source in sources},
            "options": {key: getattr(options, key) for key in ("outputs", "stride", "start", "recursive", "smooth",
                                                               "alpha")},
            "folders": [folder.relative_to(self.root).as_posix() or "." for folder in folders],
            "model_file": str(model.path),
        }
        return json.loads(json.dumps(identity))

    @staticmethod
    def _previous_run(root: Path, folders: list[Path]) -> list[Path]:
        """What a run in ``root`` wrote: this run's folders' run files, and those of every source the earlier
        run's summary names (so --overwrite clears a run of other names too; a user's own files stay)."""
        found = [root / "summary.json", identity_path(root), *(root / name for name in DECISION_FILES)]
        for folder in [*folders, *earlier_folders(root)]:
            found += [folder / name for name in RUN_FILES]
            found += [path for pattern in ROTATED for path in folder.glob(pattern)]
        return found

    def _batch(self, source: Source) -> int:
        if source.live is not None:
            return 1  # a live frame waits for no other
        if self.options.batch is not None:
            return self.options.batch
        if self.model.config.batch > 1:
            # engine auto with a tuning record: the batch `edgeseg tune` measured fastest, which the record's
            # engine settings (throughput streams) were chosen for.
            return self.model.config.batch
        return AUTOENCODER_BATCH if self.model.kind == "autoencoder" else 1

    # -- run ---------------------------------------------------------------------------------------

    def execute(self, *, serve: int | str | None = None) -> dict[str, Any]:
        """Run to the end (or ``stop``) and return the summary (also written as ``summary.json``); ``serve``: a
        port or ``"HOST:PORT"`` for the live page."""
        try:
            return self._execute(serve)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _execute(self, serve: int | str | None) -> dict[str, Any]:
        server = None
        try:
            if serve is not None:
                from edgeseg.runtime._serve import LiveServer

                host, port = _address(serve)
                server = LiveServer(self, host=host, port=port).start()
                self.server_url = server.url
                log.warning("live view on %s (metrics: /metrics, health: /health)", server.url)
            self._warm_up()
            self.started = time.monotonic()
            progress = _Watch(self) if self.options.progress else None
            for source in self.sources:
                source.start()
            try:
                self._loop(progress)
            finally:
                self.ended = time.monotonic()
                self._close()
                if progress is not None:
                    progress.close()
        finally:
            if server is not None:
                server.close()
            if self.decisions is not None:
                self.decisions.close()  # done already unless the run broke before its loop: safe twice
        if self.error is not None and not isinstance(self.error, EdgesegError):
            raise self.error
        single_error = self.single and self.sources[0].fatal
        if isinstance(self.error, EdgesegError) or single_error:
            # A run of one source that could not go on (its video cannot be opened, its disk is full, the model
            # broke) stops with that one line, as before; with several sources, one failing is in the summary.
            raise self.error or EdgesegError(self.sources[0].error)
        summary = self.summary()
        if self.root is not None:
            write_json_atomic(self.root / "summary.json", summary)
        return summary

    def _warm_up(self) -> None:
        batch = max(s.batch for s in self.sources)
        finite = all(s.source.total is not None for s in self.sources)
        total = sum(s.source.total or 0 for s in self.sources)
        if self.model.kind in ("segmentation", "autoencoder") and (not finite or total > 2 * batch):
            # Pay the first-call costs (allocations; OpenVINO's per-shape kernels) before the clock starts, as every
            # bench runner does; a run of a frame or two is not worth the extra inference.
            try:
                self.model.warmup(batch)
            except Exception as error:  # a model that cannot run says so on the first real frame, with its name
                log.debug("warm-up failed: %s", error)

    def _loop(self, progress: _Watch | None = None) -> None:
        pool = ThreadPoolExecutor(max_workers=self.inflight, thread_name_prefix="edgeseg-infer") \
            if self.inflight > 1 else None
        pending: deque[_Call] = deque()
        try:
            while self.error is None:
                stopping = self.stop.is_set()
                self.wake.clear()
                # Once stopping, only what the file feeders had already taken is finished (none is left half-done).
                items = [item for source in self.sources for item in source.take(stopping=stopping)]
                if progress is not None:
                    progress.tick()
                if items:
                    pending.append(self._submit(pool, items))
                    while len(pending) >= self.inflight and self.error is None:
                        self._deliver(pending.popleft())
                    continue
                if pending:  # nothing new is ready: finish the oldest call rather than wait
                    self._deliver(pending.popleft())
                    continue
                if all(source.exhausted(stopping=stopping) for source in self.sources):
                    break
                self.wake.wait(0.05)  # a feeder sets it on each new frame or chunk
            while pending and self.error is None:
                self._deliver(pending.popleft())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, pool: ThreadPoolExecutor | None, items: list[Item]) -> _Call:
        good = [item for item in items if item.tensor is not None]
        call = _Call(items, good, started=time.perf_counter())
        if not good:
            return call
        call.tensors = good[0].tensor if len(good) == 1 else np.concatenate([i.tensor for i in good])
        if pool is not None:
            call.future = pool.submit(self.model.run, call.tensors)
            return call
        try:
            call.outputs = self.model.run(call.tensors)
        except Exception as error:  # noqa: BLE001 - reported by _deliver, as a pool call's error is
            call.error = error
        return call

    def _deliver(self, call: _Call) -> None:
        """Wait for one call and hand each source its items, in order; a failing call stops the run."""
        if call.good:
            try:
                if call.error is not None:
                    raise call.error
                outputs = call.future.result() if call.future is not None else call.outputs
            except Exception as error:  # a failing call is a broken model or provider: every frame would fail
                self.error = EdgesegError(f"inference failed on `{call.good[0].frame.name}`: {error}")
                self.stop.set()  # raised by execute() once the writers have finished what came before
                return
            finished = time.perf_counter()
            # Busy time, not the sum of overlapping calls: from when this call started or the last one ended.
            seconds = finished - max(call.started, self._last_finished)
            self._last_finished = finished
            self.infer_seconds += seconds
            self.batches += 1
            self.batched_frames += len(call.good)
            whole = (outputs, call.tensors)
            for i, item in enumerate(call.good):
                item.output = outputs[i]
                item.batch = whole
                item.ms["infer"] = seconds * 1000 / len(call.good)
        for writer, chunk in itertools.groupby(call.items, key=lambda item: item.writer):
            writer.put(list(chunk))

    def _close(self) -> None:
        """Stop every source (bounded, in parallel), let the writers finish, finalize their files."""
        for source in self.sources:
            source.stop_feeding()
        closers = [threading.Thread(target=source.close_source, daemon=True) for source in self.sources]
        for closer in closers:
            closer.start()
        for source in self.sources:
            source.finish()  # each writer ends its source's active events as it ends
        if self.decisions is not None:
            # Events still active end now (reason stopped); the sinks deliver what they can within 5 s, the rest
            # waits in their disk queues for the next run; events.jsonl is closed.
            self.decisions.close()
        for closer in closers:
            closer.join(timeout=1.5)

    # -- report ------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The run's summary (records.SUMMARY_FIELDS): run totals, and each source's own counters."""
        wall = (self.ended or time.monotonic()) - self.started if self.started else 0.0
        model = self.model
        sources = {source.name: source.report() for source in self.sources}
        engine = {"model": str(model.path), "kind": model.kind, "engine": model.engine,
                  "engine_choice": model.choice_reason, "provider": model.providers[0] if model.providers else "",
                  "providers": list(model.providers), "precision": model_precision(model),
                  "engine_streams": model.streams, "batch": max(s.batch for s in self.sources),
                  "inflight": self.inflight, "smooth": self.options.smooth}
        calls = {"batches": self.batches, "batched_frames": self.batched_frames, "infer_seconds": self.infer_seconds}
        extra: dict[str, Any] = {}
        decisions = self.decisions
        if decisions is not None:
            extra["zones"] = str(self.options.zones)
            if decisions.rules:
                extra["events"] = sum(sum(s.get("events", {}).values()) for s in sources.values())
            if decisions.sinks:
                extra["event_sinks"] = decisions.sink_counters()
        return records.run_summary(engine, sources, wall_s=wall, calls=calls,
                                   interrupted=self.stop.is_set() and self.error is None,
                                   error=str(self.error) if self.error is not None else None, serve=self.server_url,
                                   extra=extra)

    def status(self) -> dict[str, Any]:
        """The counters of every source now (for the live page): its state, frames, failures, stream stats."""
        return {source.name: source.report() for source in self.sources}


class _Watch:
    """Feeds what the run has finished to the one progress display (:class:`edgeseg.runtime.progress.Progress`:
    a bar on a terminal, a log line every 10 s when piped), with the run's fps and each source's state."""

    def __init__(self, run: Run) -> None:
        from edgeseg.runtime.progress import Progress

        totals = [s.source.total for s in run.sources]
        total = sum(totals) if all(t is not None for t in totals) else None
        self.run, self.shown, self.last = run, 0, 0.0
        self.progress = Progress(total, desc="edgeseg segment", unit="frame", every=10.0)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        self.last = now
        done = sum(s.done + s.failed + s.resumed for s in self.run.sources)
        note = f"{done / max(now - self.run.started, 1e-9):.1f} fps"
        if len(self.run.sources) > 1 or self.run.sources[0].live is not None:
            note += "; " + ", ".join(f"{s.name} {s.state}" for s in self.run.sources)
        self.progress.update(done - self.shown, note=note)
        self.shown = done

    def close(self) -> None:
        self.last = 0.0
        self.tick()
        self.progress.close()


def _address(serve: int | str) -> tuple[str, int]:
    """``8080`` or ``"0.0.0.0:8080"`` -> (host, port); the page binds 127.0.0.1 unless a host is named."""
    text = str(serve)
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise EdgesegError(f"--serve expects a port (0-65535) or HOST:PORT, got {text!r}.")
    return host.strip("[]") or "127.0.0.1", number


def _real(spec: str) -> str:
    try:
        return os.path.realpath(spec)
    except (OSError, ValueError):
        return spec


def _named(spec: Any) -> bool:
    if isinstance(spec, Entry):
        return spec.name is not None
    return not isinstance(spec, Source) and split_name(str(spec)).name is not None


def stage_table(summary: dict[str, Any]) -> str:
    """The short table printed at the end of ``edgeseg segment``: per-stage ms, fps, and one line per source."""
    lines = [f"{'stage':<12}{'ms/frame':>10}"]
    lines += [f"{stage:<12}{ms:>10.2f}" for stage, ms in summary["stage_ms"].items()]
    lines.append(f"{'end to end':<12}{summary['fps']:>10.2f} fps  (inference alone {summary['infer_fps']:.2f} fps)")
    lines.append(f"{summary['frames']} frame(s) done, {summary['frames_failed']} failed; engine "
                 f"{summary['engine']} ({summary['provider']}, {summary['precision']})")
    if "events" in summary:
        counts: dict[str, int] = {}
        for report in summary["sources"].values():
            for rule, count in report.get("events", {}).items():
                counts[rule] = counts.get(rule, 0) + count
        rules = ", ".join(f"{rule} {count}" for rule, count in counts.items())
        lines.append(f"{summary['events']} event(s) started ({rules}): events.jsonl")
    for sink, counters in summary.get("event_sinks", {}).items():
        lines.append(f"  {sink}: {counters['delivered']} delivered, {counters['pending']} waiting in its queue, "
                     f"{counters['dropped']} dropped (queue full), {counters['rejected']} refused")
    if len(summary["sources"]) > 1 or any(s["stream"] for s in summary["sources"].values()):
        for name, report in summary["sources"].items():
            latency = report["latency_ms"]
            lines.append(f"  {name:<16} {report['state']:<8} {report['frames']:>7} frames {report['fps']:>8.2f} fps  "
                         f"latency p50 {latency['p50']:.0f} ms p95 {latency['p95']:.0f} ms")
    return "\n".join(lines)
