"""Sample data made from a seed, offline, with NumPy and OpenCV only: scenes, scene videos, digits.

``edgeseg samples`` and ``edgeseg demo`` make their inputs here; tests make theirs here too.
"""

from edgeseg.sampledata._samples import (
    BAD_FILES,
    QUICK_SPEC,
    SampleData,
    SampleSpec,
    add_bad_files,
    make_digits,
    make_sample_data,
    make_scene_set,
)
from edgeseg.sampledata._scenes import make_scene, make_scene_video, masks_dir_for, scene_frames

__all__ = [
    "BAD_FILES",
    "QUICK_SPEC",
    "SampleData",
    "SampleSpec",
    "add_bad_files",
    "make_digits",
    "make_sample_data",
    "make_scene",
    "make_scene_set",
    "make_scene_video",
    "masks_dir_for",
    "scene_frames",
]
