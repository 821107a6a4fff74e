"""edgeseg.scaleout: ``edgeseg segment --ray`` — the same job and outputs as one machine, on a Ray cluster.

The driver resolves where inputs and outputs are (paths, or object storage: ``s3://``, ``gs://``,
``az://``), plans units (chunks of image paths, frame ranges of videos: never pixels), checks the
workers fit the cluster, and feeds one shared queue to Ray actors that each hold their own
:class:`edgeseg.runtime.Model`. Each unit runs the runtime's own ``segment`` (the same pipeline,
options and outputs as one machine), its worker reading its own inputs and writing its own outputs;
the driver checks every unit's outputs are where ``--out`` is before it joins them into the
single-machine layout. Ray itself is imported only when a job starts (``pip install 'edgeseg[ray]'``).

Example::

    from edgeseg.scaleout import ClusterOptions, segment_on_ray
    segment_on_ray(["clip.mp4"], model="fcn8.onnx", out="runs/clip", cluster=ClusterOptions(workers=2))
"""

from edgeseg.scaleout._driver import ClusterOptions, ModelSpec, describe_job, segment_on_ray
from edgeseg.scaleout._merge import join_videos
from edgeseg.scaleout._plan import Source, Unit, plan, warm_frames
from edgeseg.scaleout._worker import PACKS, read_markers, run_unit, unit_source

__all__ = [
    "ClusterOptions",
    "ModelSpec",
    "PACKS",
    "Source",
    "Unit",
    "describe_job",
    "join_videos",
    "plan",
    "read_markers",
    "run_unit",
    "unit_source",
    "segment_on_ray",
    "warm_frames",
]
