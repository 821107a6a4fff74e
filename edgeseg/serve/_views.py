"""What ``/v1/models/{name}/segment`` answers in JSON: views of a segmentation result, picked by name.

``class_fraction`` is always there. Other views are asked for with ``?include=a,b`` and each is a pure
function of the result and the model's contract returning something JSON can hold. This is where the
vector forms of a mask (polygons, COCO RLE, components) and zone figures plug in: one line each in
:data:`VIEWS`, calling the runtime's functions for them. An unknown name is a 400 listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edgeseg.runtime import Contract, SegmentationResult

View = Callable[[SegmentationResult, Contract], Any]

VIEWS: Mapping[str, View] = {
    "class_fraction": lambda result, contract: dict(result.class_fraction),
    "classes": lambda result, contract: list(contract.output.classes),
    "palette": lambda result, contract: [list(colour) for colour in contract.output.palette],
}
DEFAULT_VIEWS = ("class_fraction",)
