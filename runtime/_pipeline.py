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
RUN_FILES = ("summary.json", "frames.jsonl", "overlay.mp4", "masks", "overlay", "reconstruction")
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
            contract: Contract | Mapping[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
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
    it too).

    Example::

        summary = segment("clip.mp4", model="fcn8.onnx", out="runs/clip", batch=4)
        print(summary["fps"], summary["sources"]["clip"]["outputs"]["video_codec"])
    """
    options = (options or SegmentOptions()).replace(**changes)
    stop = stop or threading.Event()
    # A Ctrl-C while the model loads and the sources are named interrupts as Python does (nothing is written yet);
    # from the first frame on, it ends the run cleanly: what is in flight is finished and every output stays valid.
    run = Run(sources, model=model, out=out, options=options, stop=stop, on_result=on_result, contract=contract)
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
    counters and state), :attr:`batches`.
    """

    def __init__(self, sources: Any, *, model: Model | str | os.PathLike, out: str | os.PathLike | None,
                 options: SegmentOptions, stop: threading.Event, on_result: Callable[[FrameResult], None] | None,
                 contract: Contract | Mapping[str, Any] | None = None) -> None:
        self.options, self.stop = options, stop
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
            folders = self._folders(opened)
            self.sources = [SourceWriter(source, run=self, folder=folder, wake=self.wake,
                                         batch=self._batch(source)) for source, folder in zip(opened, folders)]
        except BaseException:
            for source in opened:
                source.close()
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
        found = [root / "summary.json", identity_path(root)]
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
            source.finish()
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
        return records.run_summary(engine, sources, wall_s=wall, calls=calls,
                                   interrupted=self.stop.is_set() and self.error is None,
                                   error=str(self.error) if self.error is not None else None, serve=self.server_url)

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
    if len(summary["sources"]) > 1 or any(s["stream"] for s in summary["sources"].values()):
        for name, report in summary["sources"].items():
            latency = report["latency_ms"]
            lines.append(f"  {name:<16} {report['state']:<8} {report['frames']:>7} frames {report['fps']:>8.2f} fps  "
                         f"latency p50 {latency['p50']:.0f} ms p95 {latency['p95']:.0f} ms")
    return "\n".join(lines)
