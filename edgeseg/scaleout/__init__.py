"""edgeseg.scaleout: ``edgeseg segment --ray`` — the same job and outputs as one machine, on a Ray cluster.

The driver plans units (chunks of image paths, frame ranges of videos: never pixels), a pool of
Ray actors each holding its own :class:`edgeseg.runtime.Model` runs each unit with the runtime's
own ``segment`` (the same pipeline, options and outputs as one machine), and the driver joins the
parts into the single-machine layout.
Ray itself is imported only when a job starts (``pip install 'edgeseg[ray]'``).

Example::

    from edgeseg.scaleout import ClusterOptions, segment_on_ray
    segment_on_ray(["clip.mp4"], model="fcn8.onnx", out="runs/clip", cluster=ClusterOptions(workers=2))
"""

from edgeseg.scaleout._driver import ClusterOptions, ModelSpec, segment_on_ray
from edgeseg.scaleout._merge import join_videos
from edgeseg.scaleout._plan import Source, Unit, plan, warm_frames
from edgeseg.scaleout._worker import run_unit, unit_source

__all__ = [
    "ClusterOptions",
    "ModelSpec",
    "Source",
    "Unit",
    "join_videos",
    "plan",
    "run_unit",
    "unit_source",
    "segment_on_ray",
    "warm_frames",
]
