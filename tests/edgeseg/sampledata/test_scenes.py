import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeseg.runtime.errors import EdgesegError
from edgeseg.sampledata._scenes import make_scene, make_scene_video, masks_dir_for, scene_frames


def test_same_seed_same_pixels_and_every_class_present():
    a, mask_a = make_scene(5, size=(64, 96), classes=4)
    b, mask_b = make_scene(np.random.default_rng(5), size=(64, 96), classes=4)
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8 and mask_a.shape == (64, 96)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(a, make_scene(6, size=(64, 96), classes=4)[0])
    assert set(np.unique(mask_a)) <= {0, 1, 2, 3} and 0 in mask_a
    present = set()
    for seed in range(5):
        present |= set(np.unique(make_scene(seed, size=(64, 64), classes=4)[1]).tolist())
    assert present == {0, 1, 2, 3}


def test_frames_move_and_video_has_masks(tmp_path):
    frames = list(scene_frames(frames=3, size=(48, 64), classes=3, seed=1))
    assert not np.array_equal(frames[0][1], frames[2][1])
    video = make_scene_video(tmp_path / "s.avi", frames=5, size=(48, 64), classes=3, fps=5, seed=1)
    capture = cv2.VideoCapture(str(video))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (48, 64, 3)
        count += 1
    assert count == 5
    masks = sorted(masks_dir_for(video).glob("*.png"))
    assert len(masks) == 5
    np.testing.assert_array_equal(cv2.imread(str(masks[2]), cv2.IMREAD_UNCHANGED), frames[2][1])


def test_bad_arguments():
    with pytest.raises(EdgesegError, match="mp4 or .avi"):
        make_scene_video("x.gif", frames=1)
    with pytest.raises(EdgesegError, match="classes"):
        make_scene(0, classes=0)


def test_scenes_do_not_import_tensorflow():
    code = "import sys, edgeseg.sampledata._scenes; sys.exit(any(m in sys.modules for m in ('tensorflow', 'keras')))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
