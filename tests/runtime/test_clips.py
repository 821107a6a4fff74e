"""Clips around events from the ring buffer of encoded frames: playable, and spanning the right frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.runtime.decisions import (ClipRecorder, DecisionConfig, DecisionOptions, Decisions, Rule, Zone,
                                      read_events)

pytest.importorskip("imageio_ffmpeg", reason="clips need imageio-ffmpeg's ffmpeg (the cpu extra)")

BITS = 8


def _frame(index, size=(48, 96)):
    """The frame index written as 8 black/white bars, which survive H.264 at any quality."""
    image = np.zeros((*size, 3), np.uint8)
    width = size[1] // BITS
    for bit in range(BITS):
        if index >> bit & 1:
            image[:, bit * width:(bit + 1) * width] = 255
    return image


def _indices(path):
    capture = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        width = image.shape[1] // BITS
        out.append(sum(1 << bit for bit in range(BITS) if image[:, bit * width + 2:(bit + 1) * width - 2].mean() > 128))
    capture.release()
    return out


def test_a_clip_spans_from_the_keyframe_before_to_seconds_after(tmp_path):
    with ClipRecorder(fps=10, before=1.0, after=1.0, keyframe_s=0.5) as clips:
        for index in range(60):
            clips.write(_frame(index), index / 10)
            if index == 32:
                clips.clip(tmp_path / "a.mp4", at=3.2)  # 2.2 s .. 4.2 s; keyframes every 5 frames: from frame 20
        clips.clip(tmp_path / "b.mp4", at=5.5)  # asked while the encoder lags behind: 4.5 s .. the end (5.9 s)
    assert clips.clips_written == 2 and clips.failed == 0
    assert _indices(tmp_path / "a.mp4") == list(range(20, 43))
    assert _indices(tmp_path / "b.mp4") == list(range(45, 60))
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["a.mp4", "b.mp4"]  # no temporary files left


def test_the_ring_keeps_only_the_seconds_before(tmp_path):
    clips = ClipRecorder(fps=10, before=0.5, after=0.0, keyframe_s=0.5)
    for index in range(100):
        clips.write(_frame(index), index / 10)
    clips.close()
    assert clips.buffered <= 11  # 0.5 s before the newest frame, from a keyframe: at most 2 keyframe intervals


def test_decisions_name_the_clip_in_the_event(tmp_path):
    config = DecisionConfig((Zone("all", [(0, 0), (1, 0), (1, 1), (0, 1)], units="fraction"),),
                            (Rule("on", class_name="fg", zone="all", fraction=0.5),))
    decisions = Decisions(config, classes=("bg", "fg"), out=tmp_path, options=DecisionOptions(clips=(0.5, 0.5)))
    decisions.open_stream("cam", fps=10)
    for index in range(30):
        mask = np.full((48, 96), 1 if 10 <= index < 20 else 0, np.uint8)
        decisions.update("cam", index, index / 10, mask, _frame(index))
    decisions.close()
    start, end = read_events(tmp_path / "events.jsonl")
    assert start.clip == end.clip == f"clips/{start.id}.mp4"
    assert _indices(tmp_path / start.clip) == list(range(5, 16))  # the event starts at frame 10: 0.5 s either side
