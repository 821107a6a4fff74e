"""Planning units and reading frame ranges, without Ray (fast)."""

from __future__ import annotations

import cv2
import numpy as np

from edgeseg.runtime import SegmentOptions, VideoSink, video_frames
from edgeseg.scaleout import plan, warm_frames


def _video(path, frames=40):
    rng = np.random.default_rng(1)
    with VideoSink(path, fps=10, codec="auto") as sink:  # H.264 where imageio-ffmpeg is installed
        for i in range(frames):
            image = rng.integers(0, 50, (64, 64, 3), dtype=np.uint8)
            cv2.circle(image, (10 + i, 32), 10, (0, 200, 250), -1)
            sink.write(image)
    return path


def test_a_range_read_by_seeking_has_the_pixels_of_a_full_decode(tmp_path):
    video = _video(tmp_path / "clip.mp4")
    everything = [f.image for f in video_frames(video)]
    for start in (1, 13, 29):  # inside a GOP: the decoder must roll forward from the keyframe
        got = [f for f in video_frames(video, start=start, max_frames=5, stride=2, seek=True)]
        assert [f.index for f in got] == list(range(start, start + 10, 2))
        assert all(np.array_equal(f.image, everything[f.index]) for f in got)


def test_plan_splits_a_video_into_ranges_that_start_early_when_smoothing(tmp_path):
    video = _video(tmp_path / "clip.mp4")
    sources, units = plan([str(video)], out=tmp_path / "out", options=SegmentOptions(start=2, stride=2, smooth=0.5),
                          range_frames=6)
    assert warm_frames(0.5) == 14 and warm_frames(0.0) == 0
    assert sources[0].frames == 19 and [u.first for u in units] == [2, 14, 26, 38]
    assert [u.count for u in units] == [6, 6, 6, 1]
    assert [u.warm for u in units] == [0, 6, 12, 14]  # never before the selection's start
    assert sum(u.frames for u in units) == 19 and len({u.key for u in units}) == 4
