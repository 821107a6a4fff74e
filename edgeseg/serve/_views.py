"""What ``/v1/models/{name}/segment`` answers in JSON: views of a segmentation result, picked by name.

``class_fraction`` is always there. Other views are asked for with ``?include=a,b`` and each is a pure
function of the result and the model's contract returning something JSON can hold: one line each in
:data:`VIEWS`, calling the runtime's functions for them. The vector forms of a mask are
:func:`edgeseg.runtime.vectors.mask_vectors`'s, as ``segment --write polygons,rle`` writes them per frame
(``{class: {"area", "components", "polygons" | "rle"}}``; background left out). Zone figures need a
zones file, which a service has not: they are ``segment --zones``'s. An unknown name is a 400 listing the
known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edgeseg.runtime import Contract, SegmentationResult
from edgeseg.runtime.vectors import mask_vectors

View = Callable[[SegmentationResult, Contract], Any]


def _vectors(form: str) -> View:
    return lambda result, contract: mask_vectors(result.mask, contract.output.classes, forms=(form,))[form]


VIEWS: Mapping[str, View] = {
    "class_fraction": lambda result, contract: dict(result.class_fraction),
    "classes": lambda result, contract: list(contract.output.classes),
    "palette": lambda result, contract: [list(colour) for colour in contract.output.palette],
    "polygons": _vectors("polygons"),
    "rle": _vectors("rle"),
    "components": _vectors("components"),
}
DEFAULT_VIEWS = ("class_fraction",)
