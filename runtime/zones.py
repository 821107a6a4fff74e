"""Zones: named polygons of a frame, and what each class covers inside them, per frame.

A :class:`Zone` is a polygon in pixel coordinates or in fractions of the frame, optionally scoped
to some streams. :class:`ZoneMeter` measures a class-id mask (uint8 HxW at the frame's size)
against its zones: per zone, the fraction of the zone each class covers and, per class present,
its largest connected region (area in pixels, bbox, centroid; 8-connectivity, the region cut to
the zone). Each zone is rasterized once per frame size and cached (a crop and a 0/255 mask of its
bounding box); per frame a zone then costs one ``cv2.calcHist`` over its crop, and one
``cv2.connectedComponents`` labelling per class whose region is measured (all present, or only
those asked for: see :class:`ZoneMeter`).

Pixel coordinates are OpenCV's: ``(0, 0)`` is the top-left pixel's centre and a polygon's edge
pixels belong to it (as ``cv2.fillPoly`` draws it). A fraction ``(fx, fy)`` is the point
``(fx * width, fy * height)``, so ``[[0, 0], [1, 0], [1, 1], [0, 1]]`` is the whole frame at any size.

Example::

    meter = ZoneMeter([Zone("door", [(0.1, 0.2), (0.5, 0.2), (0.5, 0.9), (0.1, 0.9)], units="fraction")],
                      classes=("background", "smoke"))
    stats = meter.measure(mask)["door"]
    stats.class_fraction["smoke"], stats.regions["smoke"].area
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field

import cv2
import numpy as np

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.vectors import label_type

UNITS = ("pixels", "fraction")


@dataclass(frozen=True)
class Zone:
    """A named polygon: ``points`` as (x, y) in ``units`` (``pixels`` or ``fraction`` of the frame).

    ``streams``: the streams it applies to (None: every stream). The polygon is checked when made:
    at least 3 points, finite, fractions within [0, 1], no edge crossing another, a non-zero area.
    Pixel points are checked against a frame size by :meth:`check_fits` (at load when the size is
    known, else at the first frame).

    Example::

        Zone("dock", [(10, 200), (300, 200), (300, 239), (10, 239)], units="pixels", streams=("yard",))
    """

    name: str
    points: tuple[tuple[float, float], ...]
    _: KW_ONLY
    units: str = "pixels"
    streams: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise EdgesegError(f"field 'name': a zone needs a non-empty name, got {self.name!r}.")
        if self.units not in UNITS:
            raise EdgesegError(f"field 'units': expected 'pixels' or 'fraction', got {self.units!r}.")
        object.__setattr__(self, "points", _points(self.points))
        if self.streams is not None:
            if isinstance(self.streams, str) or not all(isinstance(s, str) and s for s in self.streams):
                raise EdgesegError(f"field 'streams': expected a list of stream names, got {self.streams!r}.")
            object.__setattr__(self, "streams", tuple(self.streams))
        if self.units == "fraction":
            for x, y in self.points:
                if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                    raise EdgesegError(f"field 'points': point ({x:g}, {y:g}) is outside the frame: fractions "
                                       "must lie in [0, 1] (or say \"units\": \"pixels\").")
        crossing = self_intersection(self.points)
        if crossing is not None:
            i, j = crossing
            raise EdgesegError(f"field 'points': the polygon crosses itself (edge {i} from point {i} meets edge {j} "
                               f"from point {j}); list the points in order around the zone.")
        if abs(_area(self.points)) <= 0.0:
            raise EdgesegError("field 'points': the polygon has no area (its points lie on one line).")

    def applies_to(self, stream: str) -> bool:
        """True when this zone is measured on ``stream``."""
        return self.streams is None or stream in self.streams

    def check_fits(self, width: int, height: int) -> None:
        """Raise EdgesegError when a pixel point lies outside a ``width`` x ``height`` frame."""
        if self.units != "pixels":
            return
        for x, y in self.points:
            if not (0.0 <= x <= width and 0.0 <= y <= height):
                raise EdgesegError(f"field 'points': point ({x:g}, {y:g}) is outside the {width}x{height} frame; "
                                   "expected 0 <= x <= width and 0 <= y <= height (or fractions with "
                                   "\"units\": \"fraction\").")

    def pixel_points(self, width: int, height: int) -> np.ndarray:
        """The polygon as int32 (N, 2) pixel points of a ``width`` x ``height`` frame (what is drawn)."""
        points = np.asarray(self.points, np.float64)
        if self.units == "fraction":
            points = points * (width, height)
        return np.rint(points).astype(np.int32)


@dataclass(frozen=True)
class Region:
    """A class's largest connected region inside a zone: pixels, bbox ``(x, y, w, h)``, centroid ``(x, y)``
    (frame pixel coordinates)."""

    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]

    def to_record(self) -> dict:
        return {"area": self.area, "bbox": list(self.bbox), "centroid": [round(c, 2) for c in self.centroid]}


@dataclass(frozen=True)
class ZoneStats:
    """One zone on one frame: its area in pixels, the fraction each class covers, each present class's
    largest region."""

    zone: str
    area: int
    class_fraction: Mapping[str, float]
    regions: Mapping[str, Region] = field(default_factory=dict)

    def to_record(self) -> dict:
        """The JSON form written in ``frames.jsonl``'s ``zones`` field."""
        # Python's round: a quarter of the time of NumPy's on a handful of values (this runs per zone and frame).
        fractions = {name: round(value, 6) for name, value in self.class_fraction.items()}
        return {"area": self.area, "class_fraction": fractions,
                "regions": {name: region.to_record() for name, region in self.regions.items()}}


@dataclass(frozen=True)
class _Raster:
    zone: Zone
    x0: int
    y0: int
    x1: int
    y1: int
    inside: np.ndarray | None  # uint8 0/255 over the zone's bounding box; None: all of it (a rectangle)
    outside: np.ndarray | None  # its complement: OR-ed onto a crop, it turns the pixels outside into 255
    area: int


class ZoneMeter:
    """Measures class-id masks against zones; rasterizes each zone once per frame size.

    ``classes``: the model's class names (mask value i is ``classes[i]``; every value is a class id, as a
    segmentation result's mask is: up to 16 classes, the last one's pixels are what the others leave). ``regions``: whose largest
    region is measured: None, every class present in every zone; a list of class names, those in
    every zone; a mapping ``{zone: [class, ...]}``, those pairs only. Regions are what costs here (a
    connected-components labelling each: several times a zone's fractions, which are one
    ``calcHist``), so a pipeline measures the pairs its rules watch. ``connectivity``: 4 or 8. Not thread-safe: one meter per stream (the
    cache is small: one byte per zone pixel).

    Example::

        meter = ZoneMeter(zones, classes=contract.output.classes, regions=("smoke",))
        for name, stats in meter.measure(result.mask).items():
            print(name, stats.class_fraction)
    """

    def __init__(self, zones: Iterable[Zone], *, classes: Sequence[str],
                 regions: Iterable[str] | Mapping[str, Iterable[str]] | None = None, connectivity: int = 8) -> None:
        self.zones = tuple(zones)
        names = [zone.name for zone in self.zones]
        if len(set(names)) != len(names):
            raise EdgesegError(f"zone names must be unique, got {names}.")
        if connectivity not in (4, 8):
            raise EdgesegError(f"connectivity: expected 4 or 8, got {connectivity!r}.")
        self.classes = tuple(classes)
        wanted: dict[str, set[str]] | None = None
        if isinstance(regions, Mapping):
            unknown_zones = set(regions) - set(names)
            if unknown_zones:
                raise EdgesegError(f"regions: unknown zones {sorted(unknown_zones)}; expected some of {names}.")
            wanted = {zone: set(regions.get(zone, ())) for zone in names}
            asked = set().union(*wanted.values())
        elif regions is not None:
            asked = set(regions)
            wanted = {zone: asked for zone in names}
        else:
            asked = set()
        if not asked <= set(self.classes):
            raise EdgesegError(f"regions: unknown classes {sorted(asked - set(self.classes))}; "
                               f"expected some of {', '.join(self.classes)}.")
        # Per zone: the class ids whose regions are measured (None: all present).
        self._region_ids = None if wanted is None else {
            zone: {i for i, name in enumerate(self.classes) if name in these} for zone, these in wanted.items()}
        self.connectivity = connectivity
        self._cache: dict[tuple[int, int], list[_Raster]] = {}

    def rasters(self, height: int, width: int) -> list[_Raster]:
        """The zones rasterized for one frame size (cached); raises EdgesegError for a pixel zone that does not fit."""
        key = (height, width)
        cached = self._cache.get(key)
        if cached is None:
            cached = [self._rasterize(zone, height, width) for zone in self.zones]
            if len(self._cache) >= 8:  # a stream that changes size over and over must not grow memory
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def measure(self, mask: np.ndarray) -> dict[str, ZoneStats]:
        """Per zone: the class fractions and each present class's largest region, for one mask."""
        if mask.ndim != 2:
            raise EdgesegError(f"expected a 2-D class-id mask, got shape {mask.shape}.")
        out = {}
        n = len(self.classes)
        for raster in self.rasters(*mask.shape):
            crop = mask[raster.y0:raster.y1, raster.x0:raster.x1]
            counts = _histogram(crop, raster, n)
            fractions = dict(zip(self.classes, (counts / max(raster.area, 1)).tolist()))
            regions = {}
            asked = None if self._region_ids is None else self._region_ids[raster.zone.name]
            if asked is None or asked:
                for i in np.flatnonzero(counts):
                    if asked is None or i in asked:
                        regions[self.classes[i]] = self._largest(crop, raster, int(i))
            out[raster.zone.name] = ZoneStats(raster.zone.name, raster.area, fractions, regions)
        return out

    def _largest(self, crop: np.ndarray, raster: _Raster, class_id: int) -> Region:
        binary = cv2.compare(crop, class_id, cv2.CMP_EQ)
        if raster.inside is not None:
            binary = cv2.bitwise_and(binary, raster.inside)
        # Labels alone, then the areas and the winner's box and centroid: a third of the CPU time of
        # connectedComponentsWithStats (which computes them for every region) on 640x480.
        count, labels = cv2.connectedComponents(binary, connectivity=self.connectivity, ltype=label_type(binary))
        if count < 2:
            return Region(0, (0, 0, 0, 0), (0.0, 0.0))
        if count == 2:  # one region (the usual case): it is the binary mask itself
            chosen, area = binary, cv2.countNonZero(binary)
        else:  # the areas from the class's own pixels only (a bincount of the whole crop is 3x slower)
            areas = np.bincount(labels[binary != 0], minlength=count)
            best = int(np.argmax(areas))
            chosen, area = cv2.compare(labels, best, cv2.CMP_EQ), int(areas[best])
        x, y, w, h = cv2.boundingRect(chosen)
        moments = cv2.moments(chosen[y:y + h, x:x + w], True)
        cx, cy = moments["m10"] / moments["m00"] + x, moments["m01"] / moments["m00"] + y
        return Region(int(area), (x + raster.x0, y + raster.y0, w, h), (cx + raster.x0, cy + raster.y0))

    def _rasterize(self, zone: Zone, height: int, width: int) -> _Raster:
        zone.check_fits(width, height)
        points = zone.pixel_points(width, height)
        x0, y0 = np.clip(points.min(axis=0), 0, (width - 1, height - 1))
        x1, y1 = np.clip(points.max(axis=0) + 1, 1, (width, height))
        inside = np.zeros((int(y1 - y0), int(x1 - x0)), np.uint8)
        cv2.fillPoly(inside, [points - (x0, y0)], 255)
        area = int(cv2.countNonZero(inside))
        # A zone that fills its bounding box (an upright rectangle, the usual zone) needs no mask: faster passes.
        if area == inside.size:
            return _Raster(zone, int(x0), int(y0), int(x1), int(y1), None, None, area)
        return _Raster(zone, int(x0), int(y0), int(x1), int(y1), inside, cv2.bitwise_not(inside), area)


def _histogram(crop: np.ndarray, raster: _Raster, n: int) -> np.ndarray:
    """Pixel count per class id 0..n-1 inside the zone (a segmentation mask's ids are all < n)."""
    if crop.dtype == np.uint8 and n <= 16:
        # A compare and a count per class: 3-5x less CPU than calcHist's full histogram for a few classes; the
        # last class is what the others leave of the zone (every id is < n), one compare less (a third of it
        # for 3 classes). Pixels outside the zone become 255, which no class id is here.
        view = crop if raster.outside is None else cv2.bitwise_or(crop, raster.outside)
        counts = np.array([cv2.countNonZero(cv2.compare(view, i, cv2.CMP_EQ)) for i in range(n - 1)] + [0],
                          np.float64)
        counts[-1] = raster.area - counts.sum()
        return counts
    if crop.dtype == np.uint8 and n <= 256:
        # A crop is a view: OpenCV takes its row step. Counts come as float32, exact up to 2**24.
        return cv2.calcHist([crop], [0], raster.inside, [n], [0, n]).ravel().astype(np.float64)
    return np.bincount((crop if raster.inside is None else crop[raster.inside > 0]).ravel(), minlength=n)[:n]


def _points(points: object) -> tuple[tuple[float, float], ...]:
    try:
        pairs = [tuple(point) for point in points]  # type: ignore[union-attr]
    except TypeError:
        raise EdgesegError(f"field 'points': expected a list of [x, y] pairs, got {points!r}.") from None
    out = []
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
            raise EdgesegError(f"field 'points': expected [x, y] number pairs, got {list(pair)!r}.")
        x, y = float(pair[0]), float(pair[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise EdgesegError(f"field 'points': expected finite numbers, got {list(pair)!r}.")
        out.append((x, y))
    if len(out) > 1 and out[0] == out[-1]:
        out.pop()  # a closed ring (GeoJSON style) repeats its first point: the polygon is the same
    if len(out) < 3:
        raise EdgesegError(f"field 'points': a zone needs at least 3 points, got {len(out)}.")
    return tuple(out)


def _area(points: Sequence[tuple[float, float]]) -> float:
    xs, ys = np.asarray(points, np.float64).T
    return 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def self_intersection(points: Sequence[tuple[float, float]]) -> tuple[int, int] | None:
    """The first pair of edges (i, j) of a closed polygon that touch or cross, adjacent edges excepted; None
    when the polygon is simple. Edge i runs from point i to point i+1 (O(n^2): zones have few points).

    Example::

        self_intersection([(0, 0), (1, 1), (1, 0), (0, 1)])   # (0, 2): a bow tie
    """
    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a point by construction
            if _segments_touch(*edges[i], *edges[j]):
                return i, j
    return None


def _segments_touch(p1, p2, q1, q2) -> bool:
    def orient(a, b, c) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    def on(a, b, c) -> bool:  # c on segment ab, given collinear
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    d1, d2, d3, d4 = orient(q1, q2, p1), orient(q1, q2, p2), orient(p1, p2, q1), orient(p1, p2, q2)
    if ((d1 > 0) != (d2 > 0)) and d1 != 0 and d2 != 0 and ((d3 > 0) != (d4 > 0)) and d3 != 0 and d4 != 0:
        return True
    return ((d1 == 0 and on(q1, q2, p1)) or (d2 == 0 and on(q1, q2, p2))
            or (d3 == 0 and on(p1, p2, q1)) or (d4 == 0 and on(p1, p2, q2)))
