"""One source of a run: its feeder (what the loop takes from it) and its writer (how each frame is finished).

The feeder of a file source is a decode thread that reads frames, preprocesses them and puts chunks
of ``batch`` items in a short queue; a live source's feeder is its :class:`LiveSource`, whose newest
frame the loop takes and preprocesses. The writer is a thread with a short queue: for each frame it
runs the ONE per-frame finish — a frame that failed is recorded with its reason; a NaN output is
counted and warned about once; segmentation scores are smoothed over time (``smooth``, restarted
after a reconnect); the result is drawn when an overlay is wanted; the sinks write it (masks,
overlay pictures or video, reconstructions, then the record); the listeners are called.

Counters balance: every frame taken from the source is finished (done, failed or kept from an earlier
run), and a live source's ``grabbed - dropped`` equals the frames taken.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.runtime import postprocess as post
from edgeseg.runtime import records
from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime._frames import Frame, display_path
from edgeseg.runtime._preprocess import Geometry, preprocess
from edgeseg.runtime._render import Palette, heatmap, overlay
from edgeseg.runtime._options import VECTOR_OUTPUTS
from edgeseg.runtime._sinks import (FrameSink, MaskSink, OverlayImageSink, OverlayVideoSink, Outcome, ReconstructionSink,
                                    RecordSink, SegmentClock, VectorSink, read_mask_png)
from edgeseg.runtime._sources import Source
from edgeseg.runtime.vectors import CocoWriter

if TYPE_CHECKING:
    from edgeseg.runtime._pipeline import Run

log = logging.getLogger("edgeseg.runtime")

STAGES = ("decode", "preprocess", "infer", "postprocess", "write")
_LATENCY_WINDOW = 4096  # latencies kept per source for p50/p95: the recent ones, so memory stays flat
_END = None


@dataclass(frozen=True)
class FrameResult:
    """What ``on_result`` receives for each finished frame, in that source's writer thread (keep it short).

    ``stream`` is the source's name in the run; ``result`` is a SegmentationResult or
    ReconstructionResult (None when the frame failed: ``record["error"]`` says why); ``latency_ms``
    runs from capture (or file read) to result; ``picture`` is the overlay, when overlays are drawn;
    ``record`` is the frame's ``frames.jsonl`` record. In a run with ``zones``: ``zones`` is
    ``{zone: ZoneStats}`` (``class_fraction``, the largest ``regions``; the record holds their JSON form)
    and ``events`` the :class:`~edgeseg.runtime.events.Event` records that started or ended on this frame.

    Example::

        segment(["door=rtsp://cam/s"], model="fcn8.onnx", out=None,
                on_result=lambda r: print(r.stream, r.frame.index, r.record["class_fraction"]))
    """

    stream: str
    frame: Frame
    result: Any
    latency_ms: float
    picture: np.ndarray | None
    record: Mapping[str, Any] = field(default_factory=dict)
    zones: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[Any, ...] = ()


@dataclass
class Item:
    """One frame on its way through the loop."""

    writer: SourceWriter
    frame: Frame
    arrived: float  # monotonic: when it was captured (live) or read (files)
    tensor: np.ndarray | None = None
    geometry: Geometry | None = None
    output: np.ndarray | None = None
    ms: dict[str, float] = field(default_factory=dict)
    kept: dict[str, Any] | None = None  # the record of a frame a resumed run already finished
    batch: tuple[np.ndarray, np.ndarray] | None = None  # (outputs, inputs) of the inference call it was part of
    lead: bool = False  # only primes smoothing (Source.lead): never written nor counted
    raised: tuple[Any, ...] = ()  # runs with rules: the events that started or ended on this frame


class SourceWriter:
    """A source in a run: feeder, writer thread, sinks and counters (each counter has one writing thread)."""

    def __init__(self, source: Source, *, run: Run, folder: Path | None, wake: threading.Event, batch: int) -> None:
        self.source, self.run, self.folder, self.wake, self.batch = source, run, folder, wake, batch
        self.name = source.name
        self.live = source.live
        self.options = options = run.options
        self.model = model = run.model
        self.palette = Palette.from_rgb(model.contract.output.palette)
        self.smoothing = bool(options.smooth) and source.sequential and model.kind == "segmentation"
        resuming = options.resume and folder is not None
        self.kept = records.finished(folder) if resuming and source.live is None else {}
        # A live stream resumed goes on: new indices after its last one, its files numbered after the earlier ones.
        self.index_offset = records.next_index(folder) if resuming and source.live is not None else 0
        first_segment = records.continue_segments(folder) if resuming and source.live is not None else 0
        self.show = options.show and _has_gui()
        # counters
        self.taken = 0
        self.done = 0
        self.failed = 0
        self.nan = 0
        self.resumed = 0
        self.late = 0  # live frames inferred but dropped because this source's writer was behind
        self.first_failure: str | None = None
        self.error: str | None = None
        self.fatal = False  # this source cannot go on (its file cannot be read, its outputs cannot be written)
        self.stage_total = dict.fromkeys(STAGES, 0.0)
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        self.decisions = run.decisions  # zones, rules, events of the run (--zones), else None
        self._zone_size: tuple[int, int] | None = None  # the frame size its pixel zones were checked against
        self._fps_told = False
        self._smoothed: np.ndarray | None = None
        self._smoothed_epoch = 0
        # feeder
        self._ready: queue.Queue = queue.Queue(maxsize=2)
        self._decoder: threading.Thread | None = None
        self._abandoned = threading.Event()  # the loop has ended: the decoder puts nothing more
        self._exhausted = False
        # writer
        self.clock = SegmentClock(options.rotate, first=first_segment)
        self.sinks, self.records = self._open_sinks()
        self._queue: queue.Queue = queue.Queue(maxsize=4 if self.live is not None else max(2, options.queue_size // batch))
        self._thread = threading.Thread(target=self._write_all, name=f"edgeseg-write-{self.name}", daemon=True)

    def _open_sinks(self) -> tuple[list[FrameSink], RecordSink | None]:
        folder, wanted, kind = self.folder, self.options.outputs, self.model.kind
        if folder is None:
            return [], None
        sinks: list[FrameSink] = []
        if kind == "segmentation" and "masks" in wanted:
            sinks.append(MaskSink(folder / "masks", self.palette.rgb))
        forms = [form for form in VECTOR_OUTPUTS if form in wanted]
        if kind == "segmentation" and forms:
            classes = self.model.contract.output.classes
            sinks.append(VectorSink(folder, classes, forms=forms, tolerance=self.options.polygon_tolerance))
            if not self.source.sequential:  # a run of images is also one COCO file (RLE: exact; else polygons)
                sinks.append(CocoWriter(folder / "coco.json", classes=classes, form="rle" if "rle" in forms
                                        else "polygons", tolerance=self.options.polygon_tolerance))
        if kind == "autoencoder" and "reconstruction" in wanted:
            sinks.append(ReconstructionSink(folder / "reconstruction"))
        if "overlay" in wanted:
            sinks.append(OverlayVideoSink(folder, fps=self.source.fps or 25.0, codec=self.options.codec,
                                          clock=self.clock) if self.source.sequential
                         else OverlayImageSink(folder / "overlay"))
        # Written last, so a frame's record carries the time its other outputs took.
        # A resumed file source rewrites its records in order (kept and new), never truncating the earlier file.
        rewrite = self.options.resume and self.source.live is None and (folder / "frames.jsonl").exists()
        records_sink = RecordSink(folder, clock=self.clock, rewrite=rewrite) if "jsonl" in wanted else None
        return sinks, records_sink

    # -- the feeder: what the loop takes ----------------------------------------------------------

    def start(self) -> None:
        self.first_frame_at = time.monotonic()  # a source's own rate runs from its start to its last frame
        if self.source.error is not None:
            self._fail(self.source.error)
            self._thread.start()
            return
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        for sink in [*self.sinks, self.records]:
            if sink is not None:
                sink.__enter__()
        if self.live is not None:
            self.live.begin()
        else:
            self._decoder = threading.Thread(target=self._decode_all, name=f"edgeseg-decode-{self.name}", daemon=True)
            self._decoder.start()
        self._thread.start()

    def take(self, *, stopping: bool) -> list[Item]:
        """What this source has ready now (never waits): a chunk of a file's frames, or a stream's newest frame."""
        if self._exhausted or self.fatal:
            return []
        if self.live is None:
            try:
                chunk = self._ready.get_nowait()
            except queue.Empty:
                return []
            if chunk is _END:
                self._exhausted = True
                return []
            return chunk
        if stopping:
            return []
        if self.options.max_frames is not None and self.taken >= self.options.max_frames:
            self._exhausted = True
            self.live.close(timeout=0)
            return []
        frame = self.live.take()
        if frame is None:
            return []
        captured = self.live.started + frame.timestamp
        if self.index_offset:
            index = frame.index + self.index_offset
            frame = dataclasses.replace(frame, index=index, name=f"{self.name}_{index:06d}")
        self.taken += 1
        t0 = time.perf_counter()
        item = Item(self, frame, arrived=captured)
        try:
            self._preprocess(item)
        except EdgesegError as error:  # a pixel zone that does not fit this stream's frames: the stream stops
            self._fail(str(error))
            self._exhausted = True
            self.live.close(timeout=0)
            return []
        item.ms = {"decode": 0.0, "preprocess": (time.perf_counter() - t0) * 1000}
        return [item]

    def exhausted(self, *, stopping: bool) -> bool:
        """Nothing more will come from this source (when stopping: nothing already taken is left)."""
        if self._exhausted or self.fatal:
            return True
        if self.live is not None:
            return stopping or (self.live.finished)
        # Stopping: what was handed over is finished; a frame still being decoded (a huge image: seconds) is not
        # waited for. It gets no record, so --resume does it.
        return stopping and self._ready.empty()

    def _decode_all(self) -> None:
        frames, run, chunk = self.source.frames, self.run, []
        lead = self.source.lead
        try:
            while not run.stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                self.taken += 1
                kept = self.kept.get(frame.name)
                if kept is not None and not self._outputs_valid(frame.name):
                    kept = None  # its files are gone or were cut by a crash: it is done again
                item = Item(self, frame, arrived=time.monotonic(), kept=kept, lead=self.taken <= lead)
                if item.kept is None:
                    self._preprocess(item)
                item.ms = {"decode": (t1 - t0) * 1000, "preprocess": (time.perf_counter() - t1) * 1000}
                chunk.append(item)
                if len(chunk) >= self.batch:
                    self._hand_over(chunk)  # the loop drains it, also when stopping: a frame taken is finished
                    chunk = []
            if chunk:  # the last, shorter chunk
                self._hand_over(chunk)
        except EdgesegError as error:  # the source itself failed (a video that cannot be opened): it ends here
            self._fail(str(error))
        except BaseException as error:  # a bug: the run stops and says so
            run.error = run.error or error
            run.stop.set()
        finally:
            self._hand_over(_END)

    def _hand_over(self, chunk: Any) -> None:
        # Blocks while the loop is behind (back-pressure), unless the loop has ended (an error): then nobody reads.
        while not self._abandoned.is_set():
            try:
                self._ready.put(chunk, timeout=0.1)
                break
            except queue.Full:
                continue
        self.wake.set()

    def _preprocess(self, item: Item) -> None:
        if not item.frame.ok:
            return
        if self.decisions is not None and not self._zones_fit(item):
            return
        try:
            item.tensor, item.geometry = preprocess(item.frame.image, self.model.contract.input)
        except BadInputError as error:
            item.frame = dataclasses.replace(item.frame, image=None, error=str(error))

    def _zones_fit(self, item: Item) -> bool:
        """Pixel zones against this frame's size, once per size: a video or stream whose frames they do not fit
        stops (EdgesegError, one line naming the zones file's line and field); an image costs itself."""
        height, width = item.frame.image.shape[:2]
        if (width, height) == self._zone_size:
            return True
        try:
            self.decisions.check_frame(self.name, width, height)
        except EdgesegError as error:
            if self.source.sequential:
                raise
            item.frame = dataclasses.replace(item.frame, image=None, error=str(error))
            return False
        self._zone_size = (width, height)
        return True

    def stop_feeding(self) -> None:
        """After the loop: the decoder ends (it sees the run stop, or it is done) without handing anything over."""
        self._abandoned.set()
        if self._decoder is not None:
            self._decoder.join(timeout=0.3)  # a decoder stuck in a huge image is a daemon thread left behind

    def close_source(self) -> None:
        """Close the source (a live one within a bound); a file's frames only once its decoder has let go."""
        if self._decoder is None or not self._decoder.is_alive():
            self.source.close()

    # -- the writer -------------------------------------------------------------------------------

    def put(self, chunk: list[Item]) -> None:
        """Hand finished inference to the writer. A file source's writer that is behind blocks the loop
        (back-pressure: nothing is lost); a live source's never does: its frame is dropped and counted, so a
        heavy stream (a 4K camera's overlay video) sets its own pace, not every other stream's."""
        if self.live is None or self.live.policy == "queue-all":  # queue-all: every frame, at the writer's pace
            self._queue.put(chunk)
            return
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:
            self.late += len(chunk)
            self.taken -= len(chunk)  # --max-frames counts the frames a source writes

    def finish(self) -> None:
        """After the loop: let the writer drain, then wait for it (it closes the sinks)."""
        self._queue.put(_END)
        self._thread.join()

    def _write_all(self) -> None:
        try:
            while True:
                try:
                    chunk = self._queue.get(timeout=1.0)
                except queue.Empty:
                    self.clock.tick()  # an outage: a rotated segment still closes on time
                    continue
                if chunk is _END:
                    return
                if self.fatal:
                    continue  # drain so the loop never blocks on a writer that gave up
                try:
                    for item, outcome in zip(chunk, self._batch_results(chunk)):
                        self._finish(item, outcome)
                except EdgesegError as error:  # a disk or output failure ends this source, not the run
                    self._fail(str(error))
                except Exception as error:  # noqa: BLE001 - a callback's bug: this source stops, said once
                    self._fail(f"{type(error).__name__}: {error}")
                    log.exception("%s: stopped", self.name)
        finally:
            self._end_events()
            for sink in [*self.sinks, self.records]:
                if sink is not None:
                    try:
                        sink.close()
                    except EdgesegError as error:
                        self._fail(str(error))
            if self.show:
                import cv2

                cv2.destroyAllWindows()

    def _end_events(self) -> None:
        """This source has ended (or the run stops): its active events end, its pending clips are written."""
        if self.decisions is None:
            return
        reason = "stopped" if self.run.stop.is_set() else "stream ended"
        try:
            self.decisions.finish(self.name, reason=reason)
        except EdgesegError as error:
            self._fail(str(error))
        except Exception as error:  # noqa: BLE001 - an on_event callback's bug: said once, the run ends normally
            self._fail(f"{type(error).__name__}: {error}")
            log.exception("%s: ending its events failed", self.name)

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
            log.warning("%s: %s", self.name, reason)
        self.fatal = True
        self.wake.set()

    def _batch_results(self, chunk: list[Item]) -> list[Outcome | None]:
        """Autoencoders: a whole call post-processed at once (the CAE's speed); other kinds: one by one."""
        done = [item for item in chunk if item.output is not None and not item.lead]
        if self.model.kind != "autoencoder" or not done:
            return [None] * len(chunk)
        t0 = time.perf_counter()
        whole = done[0].batch
        if whole is not None and len(whole[0]) == len(done) and all(item.batch is whole for item in done):
            outputs, inputs = whole  # the inference call's own arrays: no copy
        else:
            outputs, inputs = np.stack([i.output for i in done]), np.concatenate([i.tensor for i in done])
        try:
            results = post.reconstruction_batch(outputs, inputs, [i.geometry for i in done], self.model.contract)
        except EdgesegError as error:
            raise EdgesegError(f"model `{self.model.path}`: {error}") from None
        share = (time.perf_counter() - t0) * 1000 / len(done)
        by_item = {id(item): result for item, result in zip(done, results)}
        outcomes: list[Outcome | None] = []
        for item in chunk:
            result = by_item.get(id(item))
            if result is not None:
                item.ms["postprocess"] = share
            outcomes.append(None if result is None else Outcome(result))
        return outcomes

    def _finish(self, item: Item, outcome: Outcome | None) -> None:
        """The one per-frame finish: record a failure, or post-process, draw, write, call back."""
        frame = item.frame
        if item.lead:  # primes the running average only
            if item.output is not None and self.smoothing:
                self._scores(item.output)
            return
        now = time.monotonic()
        if item.kept is not None:
            self._write_kept(item)
            self.last_frame_at = time.monotonic()
            return
        latency = (now - item.arrived) * 1000
        if item.output is None:
            self.failed += 1
            reason = frame.error or "no output"
            # A lone image that fails is the run's one error (the CLI says so); in a folder it is one line of many.
            log.log(logging.DEBUG if self.source.kind == "image" else logging.WARNING, "skipped %s: %s",
                    frame.source or frame.name, reason)
            self.first_failure = self.first_failure or f"{frame.source or frame.name}: {reason}"
            outcome = Outcome(None, reason, item.ms)
        else:
            outcome = self._result(item, outcome)
        t1 = time.perf_counter()
        self.clock.tick()
        for sink in self.sinks:
            sink.write(frame, outcome)
        item.ms["write"] = (time.perf_counter() - t1) * 1000
        record = outcome.record = records.frame_record(frame, outcome, source=self.name, latency_ms=latency,
                                                       segment=self.clock.segment, timed=self.source.sequential)
        if self.records is not None:
            self.records.write(frame, outcome)
        if outcome.result is not None:
            self.done += 1
            self.latencies.append(latency)
            for stage, ms in item.ms.items():
                self.stage_total[stage] += ms
        self.last_frame_at = time.monotonic()
        if self.run.listeners:
            zones = self.decisions.stats(self.name) if outcome.zones is not None else {}
            result = FrameResult(self.name, frame, outcome.result, latency, outcome.picture, record, zones,
                                 item.raised)
            for listener in self.run.listeners:
                listener(result)
        if self.show and outcome.picture is not None:
            import cv2

            cv2.imshow("edgeseg", outcome.picture)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.run.stop.set()

    def _result(self, item: Item, outcome: Outcome | None) -> Outcome:
        t0 = time.perf_counter()
        nan = post.is_nan_output(item.output)
        if nan:
            # The model, not the frame, is broken (fp16/INT8 overflow, a bad export): count it, say so once.
            self.nan += 1
            if self.nan == 1:
                log.warning("%s: model `%s` gave NaN for %s: its mask is made up (frames with NaN are counted in "
                            "summary.json, frames_nan)", self.name, self.model.path, item.frame.name)
        if outcome is None:
            if self.model.kind == "autoencoder":
                result = self.model.postprocess(item.output, item.geometry, item.tensor[0])
            elif self.smoothing and not nan:  # a NaN frame would poison every frame after it
                result = self.model.segmentation(self._scores(item.output), item.geometry, activated=True)
            else:
                result = self.model.segmentation(self.model.channels_last(item.output), item.geometry)
            outcome = Outcome(result)
        outcome.nan = nan
        outcome.ms = item.ms
        if self.draws:
            outcome.picture = self._draw(item.frame.image, outcome.result)
        if self.decisions is not None and isinstance(outcome.result, post.SegmentationResult):
            self._decide(item, outcome)
        item.ms["postprocess"] = item.ms.get("postprocess", 0.0) + (time.perf_counter() - t0) * 1000
        return outcome

    def _decide(self, item: Item, outcome: Outcome) -> None:
        """Zones, rules and events on this frame: the record's ``zones`` (and ``events``), the events delivered
        (events.jsonl, snapshot, clip, sinks, on_event), the zones and active events drawn on the overlay."""
        decisions, frame = self.decisions, item.frame
        if not self._fps_told and self.live is not None and self.live.fps:
            decisions.open_stream(self.name, fps=self.live.fps)  # a stream's rate is known once it is open
        self._fps_told = True
        fields, events = decisions.update(self.name, frame.index, frame.timestamp, outcome.result.mask, frame.image)
        outcome.zones = fields["zones"]
        if decisions.rules:
            outcome.events = fields["events"]
            item.raised = tuple(events)
        if outcome.picture is not None:
            decisions.draw(outcome.picture, self.name)

    def _scores(self, output: np.ndarray) -> np.ndarray:
        """The running average of class probabilities (exponential, in place), restarted after a reconnect."""
        probs = self.model.probabilities(self.model.channels_last(output))
        epoch = self.live.stats.reconnects if self.live is not None else 0
        smoothed, weight = self._smoothed, self.options.smooth
        if smoothed is not None and smoothed.shape == probs.shape and epoch == self._smoothed_epoch:
            smoothed *= weight
            smoothed += (1.0 - weight) * probs
        else:
            self._smoothed, self._smoothed_epoch = probs.copy(), epoch
        return self._smoothed

    @property
    def draws(self) -> bool:
        return "overlay" in self.options.outputs or self.show or bool(self.run.listeners)

    def _draw(self, image: np.ndarray, result: Any) -> np.ndarray:
        if isinstance(result, post.ReconstructionResult):
            return heatmap(image, result.error_map, alpha=self.options.alpha)
        return overlay(image, result.mask, self.palette, alpha=self.options.alpha)

    def _write_kept(self, item: Item) -> None:
        """--resume: a frame the earlier run finished. Its files stay; a video overlay is drawn again from its
        mask, so the overlay video stays whole; its record is written again in its place."""
        self.resumed += 1
        video = next((s for s in self.sinks if isinstance(s, OverlayVideoSink)), None)
        if video is not None and item.frame.ok and self.model.kind == "segmentation":
            mask = read_mask_png(self.folder / "masks" / f"{item.frame.name}.png")
            video.write(item.frame, Outcome(None, picture=overlay(item.frame.image, mask, self.palette,
                                                                  alpha=self.options.alpha)))
        coco = next((s for s in self.sinks if isinstance(s, CocoWriter)), None)
        if coco is not None and item.frame.ok:  # the run's COCO file holds every image, kept ones from their masks
            mask = read_mask_png(self.folder / "masks" / f"{item.frame.name}.png")
            coco.write(item.frame, post.SegmentationResult(mask, {}))
        if self.records is not None:
            self.records.write(item.frame, Outcome(None, record=item.kept))

    def _outputs_valid(self, name: str) -> bool:
        """--resume: a finished frame's files are there and decode (a file cut by a crash is redone)."""
        wanted, kind, folder = self.options.outputs, self.model.kind, self.folder
        paths = []
        if kind == "segmentation" and "masks" in wanted:
            paths.append(folder / "masks" / f"{name}.png")
        if kind == "autoencoder" and "reconstruction" in wanted:
            paths.append(folder / "reconstruction" / f"{name}.png")
        if "overlay" in wanted and not self.source.sequential:
            paths.append(folder / "overlay" / f"{name}.png")
        forms = [form for form in VECTOR_OUTPUTS if form in wanted] if kind == "segmentation" else []
        if forms and not self.source.sequential and "masks" not in wanted:
            return False  # the run's COCO file is rebuilt from kept frames' masks: without them, redo the frame
        if any(not _whole_json(folder / form / f"{name}.json") for form in forms):
            return False
        if self.source.sequential and "overlay" in wanted and kind != "segmentation":
            return False  # the overlay video is redrawn from saved masks; heat maps need the model again
        return all(_whole_png(path) for path in paths)

    # -- report -----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """What this source is doing: reading, connecting, backoff, done, failed, gave_up or stopped."""
        if self.error is not None:
            return "failed"
        if self.live is not None:
            if self._exhausted:
                return "done"
            return self.live.state
        if self._exhausted:
            return "stopped" if self.run.stop.is_set() and self.run.error is None and self._decoder_stopped_early \
                else "done"
        return "reading"

    @property
    def _decoder_stopped_early(self) -> bool:
        total = self.source.total
        return total is not None and self.taken < total + self.source.lead

    def report(self) -> dict[str, Any]:
        """This source's part of ``summary.json`` (records.SOURCE_FIELDS)."""
        outputs: dict[str, Any] = {}
        for sink in [self.records, *self.sinks]:
            if sink is not None:
                outputs.update(sink.outputs)
        wall = (self.last_frame_at - self.first_frame_at) if self.first_frame_at and self.last_frame_at else 0.0
        stream, error = None, self.error
        if self.live is not None:
            stats = self.live.stats
            if stats.gave_up and error is None:
                last = stats.failures[-1] if stats.failures else "no frames"
                error = f"gave up after {self.options.reconnect} failed reconnect attempt(s) in a row: {last}"
            # grabbed = dropped + frames taken: every frame the camera sent is accounted for.
            stream = {"url": str(self.live.spec), "policy": self.live.policy, "grabbed": stats.grabbed,
                      "dropped": stats.dropped + stats.unread + self.late, "reconnects": stats.reconnects,
                      "stalls": stats.stalls,
                      "gave_up": stats.gave_up, "failures": list(stats.failures[-10:])}
        folder = None
        if self.folder is not None and self.run.root is not None:
            folder = "." if self.folder == self.run.root else self.folder.relative_to(self.run.root).as_posix()
        where = {"source": display_path(self.source.spec), "kind": self.source.kind, "folder": folder,
                 "state": self.state}
        tally = records.Tally(self.done, self.failed, self.nan, self.resumed, self.first_failure)
        events = self.decisions.counts(self.name) if self.decisions is not None and self.decisions.rules else None
        return records.source_report(where, tally, error=error, wall_s=wall, latencies=list(self.latencies),
                                     stage_total=self.stage_total, outputs=outputs, stream=stream, events=events)


def _whole_png(path: Path) -> bool:
    """A PNG the earlier run finished: its signature first and its IEND chunk last (a write cut by a crash has
    no IEND). Two small reads, not a decode: a resumed job of 100,000 frames starts at once."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(-12, os.SEEK_END)
            tail = handle.read(12)
    except OSError:
        return False
    return head == b"\x89PNG\r\n\x1a\n" and tail == b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _whole_json(path: Path) -> bool:
    """A vector file the earlier run finished: it ends with the object's closing brace (one read of a byte)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"}"
    except OSError:
        return False


def _has_gui() -> bool:
    import cv2

    try:
        cv2.namedWindow("edgeseg")
        return True
    except cv2.error:
        log.warning("--show: this OpenCV build has no GUI (opencv-python-headless), so no window opens; "
                    "install opencv-python instead of opencv-python-headless to see frames live.")
        return False


