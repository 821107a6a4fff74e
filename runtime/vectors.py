"""Vector forms of a class-id mask: polygons, COCO RLE, connected components, and a COCO JSON writer.

Pure functions of the mask, so a frame record, a COCO file and a test all compute the same thing:

- :func:`mask_polygons` / :func:`rasterize_polygons`: per class, ``cv2.findContours`` with
  ``RETR_CCOMP`` (outer boundaries and the holes inside them), each simplified by
  ``cv2.approxPolyDP`` with ``tolerance`` pixels (no point of the simplified outline is farther
  than that from the traced one; 0 keeps every traced corner). Points are pixel centres, as OpenCV
  traces them: the outline runs along the region's own edge pixels. At the default
  ``tolerance=0.5`` the polygons rasterize back to the mask with IoU >= 0.99 (tested on blobs about
  10 pixels wide and more; measured: 0.991-0.997, with about half the points of the traced outline);
  at 1.0, IoU 0.97-0.99 with a third of the points; at 0 the mask comes back exactly.
- :func:`rle_encode` / :func:`rle_decode` / :func:`rle_to_string` / :func:`rle_from_string`: COCO
  run-length encoding, bit for bit as pycocotools (column-major runs starting with a run of zeros;
  the compressed string form is COCO's 6-bits-per-character LEB128 variant with deltas).
- :func:`class_components`: per class, every connected region's area, bbox and centroid.
- :func:`mask_vectors`: all of these at once as JSON-ready records (what ``segment --write
  polygons,rle`` writes per frame; each class's binary mask made once).
- :func:`coco_polygons`: exteriors in COCO's continuous coordinates, exact under pycocotools.
- :class:`CocoWriter`: a folder run as one COCO JSON (``images``, ``categories``, ``annotations``
  with RLE or polygons), spooled to disk as it goes and assembled atomically on close.

Example::

    polygons = mask_polygons(mask, classes, tolerance=0.5)        # {"smoke": [Polygon, ...], ...}
    rle = rle_encode(mask == 1)                                    # {"size": [h, w], "counts": [...]}
    assert (rle_decode(rle) == (mask == 1)).all()
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.files import atomic_path

DEFAULT_TOLERANCE = 0.5  # pixels: IoU >= 0.99 against the mask for blobs ~10+ pixels wide (tested)


# -- polygons --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Polygon:
    """One region's outline: ``exterior`` (N, 2) int32 pixel points, and the ``holes`` inside it."""

    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()

    def to_record(self) -> dict:
        """JSON form: ``{"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}``."""
        return {"exterior": self.exterior.tolist(), "holes": [hole.tolist() for hole in self.holes]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Polygon:
        return cls(np.asarray(record["exterior"], np.int32).reshape(-1, 2),
                   tuple(np.asarray(hole, np.int32).reshape(-1, 2) for hole in record.get("holes", ())))


def binary_polygons(binary: np.ndarray, *, tolerance: float = DEFAULT_TOLERANCE, min_area: int = 0) -> list[Polygon]:
    """The outlines of a binary mask's regions, holes kept, each simplified by ``tolerance`` pixels.

    ``min_area``: regions (and holes) of fewer pixels by their contour's area are left out.

    Example::

        polygons = binary_polygons(mask == 2, tolerance=0.5)
    """
    if tolerance < 0:
        raise EdgesegError(f"tolerance: expected >= 0 pixels, got {tolerance!r}.")
    if binary.dtype == bool:
        binary = np.ascontiguousarray(binary).view(np.uint8)
    elif binary.dtype != np.uint8:
        binary = (binary != 0).view(np.uint8)  # uint8 as it is: findContours takes any non-zero as set
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    polygons = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] >= 0:
            continue  # a hole: collected under its parent below
        if min_area and cv2.contourArea(contour) < min_area and len(contour) > 2:
            continue
        holes = []
        child = hierarchy[i][2]
        while child >= 0:
            if not min_area or cv2.contourArea(contours[child]) >= min_area:
                holes.append(_simplify(contours[child], tolerance))
            child = hierarchy[child][0]
        polygons.append(Polygon(_simplify(contour, tolerance), tuple(holes)))
    return polygons


def mask_polygons(mask: np.ndarray, classes: Sequence[str], *, tolerance: float = DEFAULT_TOLERANCE,
                  skip: Iterable[str] = (), min_area: int = 0) -> dict[str, list[Polygon]]:
    """Per class present in ``mask`` (and not in ``skip``): its regions as polygons with holes.

    Example::

        for name, polygons in mask_polygons(result.mask, contract.output.classes, skip=("background",)).items():
            print(name, len(polygons))
    """
    return {name: binary_polygons(binary, tolerance=tolerance, min_area=min_area)
            for _, name, binary in class_masks(mask, classes, skip=skip)}


def class_masks(mask: np.ndarray, classes: Sequence[str], *, skip: Iterable[str] = ()):
    """``(class id, name, binary)`` for each class present in ``mask`` and not in ``skip``; ``binary`` is
    uint8 0/255 (one ``cv2.compare`` per class: less CPU than a histogram first for a few classes).

    Example::

        for class_id, name, binary in class_masks(result.mask, classes, skip=("background",)):
            print(name, cv2.countNonZero(binary))
    """
    skipped = set(skip)
    for i, name in enumerate(classes):
        if name in skipped:
            continue
        binary = cv2.compare(mask, i, cv2.CMP_EQ)
        if cv2.countNonZero(binary):
            yield i, name, binary


def rasterize_polygons(polygons: Iterable[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """Polygons back to a bool mask of ``shape`` (H, W): each exterior filled, its holes cut out.

    A hole's outline runs along the region's own pixels (OpenCV traces holes from inside the
    region), so the hole is cut and its outline drawn back.

    Example::

        iou = (rasterize_polygons(polygons, mask.shape) & truth).sum() / (rasterize_polygons(...) | truth).sum()
    """
    out = np.zeros(shape, np.uint8)
    for polygon in polygons:
        # Each region alone, then merged: a region inside another's hole is a polygon of its own and must
        # not be cut by that hole.
        layer = np.zeros(shape, np.uint8)
        cv2.fillPoly(layer, [polygon.exterior.reshape(-1, 1, 2)], 1)
        if polygon.holes:
            holes = [hole.reshape(-1, 1, 2) for hole in polygon.holes]
            cv2.fillPoly(layer, holes, 0)
            cv2.polylines(layer, holes, True, 1)
        out |= layer
    return out.astype(bool)


def coco_polygons(binary: np.ndarray, *, tolerance: float = DEFAULT_TOLERANCE) -> list[list[float]]:
    """The exteriors of a binary mask's regions as COCO polygons: flat ``[x1, y1, x2, y2, ...]`` lists in
    COCO's continuous coordinates (pixel (x, y) covers [x, x+1) x [y, y+1)), which pycocotools
    rasterizes back to the regions with their holes filled — exactly at ``tolerance=0``.

    An outline through the edge pixels' centres (what :func:`binary_polygons` gives) loses half of
    every edge pixel in pycocotools (IoU about 0.85 on blobs 10 pixels wide), so the outline is
    traced on the mask at twice the size instead, where it runs a quarter pixel inside the region's
    edge: every pixel centre of the region is inside it, every other one outside.

    Example::

        annotation["segmentation"] = coco_polygons(mask == 1)
    """
    up = cv2.resize((np.asarray(binary) != 0).view(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        if tolerance > 0 and len(contour) > 3:
            contour = cv2.approxPolyDP(contour, 2 * tolerance, True)
        if len(contour) >= 3:  # COCO needs 3 points; a 1-pixel region traces 4 at twice the size
            out.append(((contour.reshape(-1, 2) + 0.5) / 2).ravel().tolist())
    return out


def _simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance > 0 and len(contour) > 3:
        contour = cv2.approxPolyDP(contour, tolerance, True)
    return contour.reshape(-1, 2).astype(np.int32)


# -- COCO RLE --------------------------------------------------------------------------------------


def rle_encode(binary: np.ndarray) -> dict:
    """COCO RLE of a binary (H, W) mask, uncompressed: ``{"size": [h, w], "counts": [...]}``.

    Runs go down the columns (column-major, as COCO) and start with the run of zeros (0 when the
    first pixel is set). Equal to ``pycocotools.mask.frPyObjects`` of it, run for run.

    Example::

        rle_encode(np.array([[0, 1], [1, 1]], bool))   # {"size": [2, 2], "counts": [1, 3]}
    """
    if binary.ndim != 2:
        raise EdgesegError(f"expected a 2-D mask, got shape {binary.shape}.")
    height, width = binary.shape
    flat = np.asarray(binary, bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [height, width], "counts": []}
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(edges)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return {"size": [height, width], "counts": counts.tolist()}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """A COCO RLE (counts as a list or the compressed string) back to a bool (H, W) mask.

    Example::

        mask = rle_decode({"size": [2, 2], "counts": "12"})
    """
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = rle_from_string(counts)
    counts = np.asarray(counts, np.int64)
    if counts.sum() != height * width:
        raise EdgesegError(f"RLE counts add up to {int(counts.sum())} pixels, expected {height}x{width} = "
                           f"{height * width}.")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T


def rle_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed counts string (as ``pycocotools.mask.encode`` writes it, decoded as ASCII).

    Each count (after the first two, its difference from the count two before) is cut into 5-bit
    groups, least significant first, each a character ``48 + group`` with 0x20 set while more follow.

    Example::

        rle_to_string([1, 3])   # '12'
    """
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative delta ends at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_from_string(text: str | bytes) -> list[int]:
    """COCO's compressed counts string back to the list of run lengths (the inverse of :func:`rle_to_string`)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise EdgesegError("RLE string ends inside a count: not a COCO compressed RLE.")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise EdgesegError(f"RLE string holds {text[p]!r} at {p}: not a COCO compressed RLE (characters "
                                   "'0' to 'o').")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_compress(rle: Mapping[str, Any]) -> dict:
    """The same RLE with its counts as COCO's compressed string (the form COCO JSON files hold)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts if isinstance(counts, str) else rle_to_string(counts)}


def rle_area(rle: Mapping[str, Any]) -> int:
    """Pixels set (the sum of the odd runs)."""
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = rle_from_string(counts)
    return int(sum(counts[1::2]))


# -- connected components --------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One connected region of one class: pixels, bbox ``(x, y, w, h)``, centroid ``(x, y)``."""

    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]

    def to_record(self) -> dict:
        return {"area": self.area, "bbox": list(self.bbox), "centroid": [round(c, 2) for c in self.centroid]}


def class_components(mask: np.ndarray, classes: Sequence[str], *, connectivity: int = 8, min_area: int = 1,
                     skip: Iterable[str] = ()) -> dict[str, list[Component]]:
    """Per class present (and not in ``skip``): its connected regions, largest first.

    Example::

        class_components(result.mask, contract.output.classes, skip=("background",), min_area=20)
    """
    if connectivity not in (4, 8):
        raise EdgesegError(f"connectivity: expected 4 or 8, got {connectivity!r}.")
    return {name: binary_components(binary, connectivity=connectivity, min_area=min_area)
            for _, name, binary in class_masks(mask, classes, skip=skip)}


def binary_components(binary: np.ndarray, *, connectivity: int = 8, min_area: int = 1) -> list[Component]:
    """The connected regions of a binary (uint8 0/non-zero) mask, largest first.

    Example::

        binary_components(cv2.compare(mask, 2, cv2.CMP_EQ), min_area=20)
    """
    count, _, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=connectivity,
                                                                  ltype=label_type(binary))
    found = [Component(int(s[4]), (int(s[0]), int(s[1]), int(s[2]), int(s[3])), (float(c[0]), float(c[1])))
             for s, c in zip(stats[1:count], centroids[1:count]) if s[4] >= min_area]
    return sorted(found, key=lambda comp: -comp.area)


def label_type(binary: np.ndarray) -> int:
    """The label type for ``cv2.connectedComponents*`` of ``binary``: ``CV_16U`` where its labels cannot
    overflow 16 bits (fewer than 65535 pixels set: every label, provisional ones included, starts at a set
    pixel), else ``CV_32S``. 16-bit labels take a third of the CPU time at 640x480 (measured: 0.57 against
    1.6 ms a class); a class covering a fifth of such a frame or more takes 32 bits."""
    return cv2.CV_16U if cv2.countNonZero(binary) < 65535 else cv2.CV_32S


VECTOR_FORMS = ("polygons", "rle", "components")


def mask_vectors(mask: np.ndarray, classes: Sequence[str], *, forms: Iterable[str] = VECTOR_FORMS,
                 tolerance: float = DEFAULT_TOLERANCE, skip: Iterable[str] = ("background",),
                 connectivity: int = 8) -> dict[str, dict[str, Any]]:
    """A mask's vector forms as JSON-ready records, per class present (and not in ``skip``), each class's
    binary mask made once for every form asked:

    - ``"polygons"``: ``{class: {"area", "components", "polygons": [{"exterior", "holes"}]}}``
      (:func:`binary_polygons` at ``tolerance`` pixels);
    - ``"rle"``: ``{class: {"area", "components", "rle": {"size": [h, w], "counts": "..."}}}`` (COCO's
      compressed string: ``pycocotools.mask.decode`` gives the class's pixels back exactly);
    - ``"components"``: ``{class: {"area", "components"}}``.

    ``area``: the class's pixels; ``components``: its connected regions, largest first, each
    ``{"area", "bbox": [x, y, w, h], "centroid": [x, y]}`` (:func:`binary_components`). What
    ``segment --write polygons,rle`` writes per frame, and what ``edgeseg serve`` answers with
    ``?include=polygons``.

    Example::

        vectors = mask_vectors(result.mask, contract.output.classes, forms=("rle",))
        pycocotools.mask.decode({**vectors["rle"]["smoke"]["rle"]})
    """
    forms = tuple(forms)
    unknown = sorted(set(forms) - set(VECTOR_FORMS))
    if unknown:
        raise EdgesegError(f"vector forms: unknown {', '.join(unknown)}; expected some of {', '.join(VECTOR_FORMS)}.")
    if connectivity not in (4, 8):
        raise EdgesegError(f"connectivity: expected 4 or 8, got {connectivity!r}.")
    out: dict[str, dict[str, Any]] = {form: {} for form in forms}
    for _, name, binary in class_masks(mask, classes, skip=skip):
        components = [c.to_record() for c in binary_components(binary, connectivity=connectivity)]
        common = {"area": int(sum(c["area"] for c in components)), "components": components}
        for form in forms:
            entry = dict(common)
            if form == "polygons":
                entry["polygons"] = [p.to_record() for p in binary_polygons(binary, tolerance=tolerance)]
            elif form == "rle":
                entry["rle"] = rle_compress(rle_encode(binary))
            out[form][name] = entry
    return out


# -- COCO JSON for a folder run --------------------------------------------------------------------


class CocoWriter:
    """A run's masks as one COCO JSON file: ``images``, ``categories``, ``annotations``.

    One annotation per class per image (COCO-stuff style, ``iscrowd`` 0), category id = the class id
    in the mask; classes in ``skip`` (default: ``background``) get none. ``form="rle"`` (exact, the
    compressed string as COCO files hold it) or ``"polygons"`` (:func:`coco_polygons`: exteriors
    simplified by ``tolerance``; COCO polygons have no holes, so holes are filled: use RLE where
    they matter).
    Annotations are spooled to a temporary file beside the target as frames come, and the JSON is
    assembled and moved into place on close: memory stays flat and a crash leaves no half file.
    A sink: ``write(frame, result)`` with a frame's ``index``/``name`` and a result's ``mask``.

    Example::

        with CocoWriter("run/coco.json", classes=contract.output.classes) as coco:
            for frame, result in model.iterate("photos/"):
                coco.write(frame, result)
    """

    def __init__(self, path: str | os.PathLike, *, classes: Sequence[str], form: str = "rle",
                 tolerance: float = DEFAULT_TOLERANCE, skip: Iterable[str] = ("background",)) -> None:
        if form not in ("rle", "polygons"):
            raise EdgesegError(f"COCO form: expected 'rle' or 'polygons', got {form!r}.")
        self.path = Path(path)
        self.classes = tuple(classes)
        self.form = form
        self.tolerance = tolerance
        self.skip = set(skip)
        self.images = 0
        self.annotations = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Two spools beside the target: image lines and annotation lines, joined on close.
        self._spools = [tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.path.parent) for _ in range(2)]

    def __enter__(self) -> CocoWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, frame: Any, result: Any) -> None:
        """Add one frame's mask: ``result`` is a segmentation result or the pipeline's ``Outcome`` holding one
        (a failed frame, or a result without ``mask``, is skipped)."""
        mask = getattr(getattr(result, "result", result), "mask", None)
        if mask is None or self._spools is None:
            return
        height, width = mask.shape
        image_id = int(frame.index)
        images, annotations = self._spools
        images.write(json.dumps({"id": image_id, "file_name": str(frame.name), "height": height, "width": width}) + "\n")
        self.images += 1
        for i, _, binary in class_masks(mask, self.classes, skip=self.skip):
            x, y, w, h = cv2.boundingRect(binary)
            if self.form == "rle":
                segmentation: Any = rle_compress(rle_encode(binary))
            else:
                segmentation = coco_polygons(binary, tolerance=self.tolerance)
            self.annotations += 1
            annotations.write(json.dumps({"id": self.annotations, "image_id": image_id, "category_id": int(i),
                                          "segmentation": segmentation, "area": int(cv2.countNonZero(binary)),
                                          "bbox": [x, y, w, h], "iscrowd": 0}) + "\n")

    def close(self) -> None:
        """Assemble the COCO JSON and move it into place; safe to call twice."""
        if self._spools is None:
            return
        spools, self._spools = self._spools, None
        try:
            categories = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(self.classes)
                          if name not in self.skip]
            with atomic_path(self.path) as temporary, open(temporary, "w", encoding="utf-8") as out:
                out.write('{"info": {"description": "edgeseg segment"}, "licenses": [],\n "categories": ')
                out.write(json.dumps(categories))
                for key, spool in zip(("images", "annotations"), spools):
                    out.write(f',\n "{key}": [')
                    spool.seek(0)
                    for n, line in enumerate(spool):
                        out.write(("\n  " if n == 0 else ",\n  ") + line.rstrip("\n"))
                    out.write("]")
                out.write("}\n")
        finally:
            for spool in spools:
                spool.close()

    @property
    def outputs(self) -> dict[str, Any]:
        return {"coco": self.path.name}
