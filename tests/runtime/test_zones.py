"""Zones: polygons checked when made, and per-zone class statistics equal to a brute-force count."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.zones import Zone, ZoneMeter, self_intersection

CLASSES = ("background", "smoke", "water")


def _brute(mask, zone_points, class_id):
    """Fraction, and the largest 8-connected region of one class inside a polygon, by scipy-free flood fill."""
    inside = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(inside, [zone_points], 1)
    area = int(inside.sum())
    binary = (mask == class_id) & (inside > 0)
    fraction = binary.sum() / area
    seen = np.zeros_like(binary)
    best = (0, None)
    for y, x in zip(*np.nonzero(binary)):
        if seen[y, x]:
            continue
        stack, pixels = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            pixels.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and binary[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        if len(pixels) > best[0]:
            best = (len(pixels), np.array(pixels))
    return area, fraction, best


def test_zone_statistics_equal_a_brute_force_count():
    rng = np.random.default_rng(3)
    mask = (cv2.GaussianBlur(rng.random((60, 80)).astype(np.float32), (0, 0), 3) * 3 * 255).astype(np.uint8) % 3
    zones = [Zone("left", [(0.05, 0.1), (0.5, 0.1), (0.45, 0.95), (0.1, 0.8)], units="fraction"),
             Zone("tri", [(40, 5), (79, 5), (60, 59)], units="pixels")]
    stats = ZoneMeter(zones, classes=CLASSES).measure(mask)
    assert set(stats) == {"left", "tri"}
    for zone in zones:
        points = zone.pixel_points(80, 60)
        for class_id, name in enumerate(CLASSES):
            area, fraction, (largest, pixels) = _brute(mask, points, class_id)
            got = stats[zone.name]
            assert got.area == area
            assert got.class_fraction[name] == pytest.approx(fraction, abs=1e-12)
            if largest == 0:
                assert name not in got.regions
                continue
            region = got.regions[name]
            assert region.area == largest
            ys, xs = pixels[:, 0], pixels[:, 1]
            assert region.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert region.centroid == pytest.approx((xs.mean(), ys.mean()), abs=1e-6)
        assert sum(got.class_fraction.values()) == pytest.approx(1.0)


def test_zones_are_rasterized_once_per_frame_size():
    meter = ZoneMeter([Zone("all", [(0, 0), (1, 0), (1, 1), (0, 1)], units="fraction")], classes=CLASSES)
    first = meter.rasters(40, 50)
    assert meter.rasters(40, 50) is first
    assert meter.rasters(20, 30) is not first
    whole = meter.measure(np.full((20, 30), 2, np.uint8))["all"]
    assert whole.area == 600 and whole.class_fraction == {"background": 0.0, "smoke": 0.0, "water": 1.0}
    assert whole.regions["water"].bbox == (0, 0, 30, 20)


def test_regions_only_for_the_classes_asked_and_records_are_json():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5] = 1
    mask[7:9, 7:9] = 2
    meter = ZoneMeter([Zone("z", [(0, 0), (9, 0), (9, 9), (0, 9)])], classes=CLASSES, regions=("smoke",))
    stats = meter.measure(mask)["z"]
    assert set(stats.regions) == {"smoke"}
    record = stats.to_record()
    assert record["regions"]["smoke"] == {"area": 9, "bbox": [2, 2, 3, 3], "centroid": [3.0, 3.0]}
    assert record["class_fraction"]["water"] == 0.04
    with pytest.raises(EdgesegError, match="unknown classes"):
        ZoneMeter([], classes=CLASSES, regions=("fire",))


@pytest.mark.parametrize("points, units, match", [
    ([(0, 0), (10, 10), (10, 0), (0, 10)], "pixels", "crosses itself"),
    ([(0, 0), (1.2, 0), (1, 1)], "fraction", "outside the frame"),
    ([(0, 0), (5, 5), (10, 10)], "pixels", "no area"),
    ([(0, 0), (5, 5)], "pixels", "at least 3 points"),
    ([(0, 0), (5, "a"), (1, 1)], "pixels", "number pairs"),
    ([(0, 0), (5, 0), (5, 5)], "inches", "'pixels' or 'fraction'"),
])
def test_bad_zones_are_refused_naming_the_field(points, units, match):
    with pytest.raises(EdgesegError, match=match) as error:
        Zone("bad", points, units=units)
    assert str(error.value).startswith("field '")


def test_pixel_zones_must_fit_the_frame():
    zone = Zone("dock", [(10, 10), (100, 10), (100, 50)])
    zone.check_fits(100, 50)  # the far edge is still inside (as cv2.fillPoly draws it)
    with pytest.raises(EdgesegError, match=r"\(100, 10\) is outside the 64x48 frame"):
        ZoneMeter([zone], classes=CLASSES).measure(np.zeros((48, 64), np.uint8))


def test_self_intersection_finds_crossings_and_accepts_simple_polygons():
    assert self_intersection([(0, 0), (4, 0), (4, 4), (0, 4)]) is None
    assert self_intersection([(0, 0), (4, 0), (2, 2), (4, 4), (0, 4)]) is None  # concave is fine
    assert self_intersection([(0, 0), (1, 1), (1, 0), (0, 1)]) == (0, 2)
    assert self_intersection([(0, 0), (4, 0), (4, 4), (2, 0), (0, 4)]) is not None  # touches an edge


def test_regions_per_zone_and_class_pairs():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:4, 1:4] = 1
    mask[6:9, 6:9] = 2
    zones = [Zone("a", [(0, 0), (9, 0), (9, 9), (0, 9)]), Zone("b", [(5, 5), (9, 5), (9, 9), (5, 9)])]
    stats = ZoneMeter(zones, classes=CLASSES, regions={"a": ["smoke"], "b": ["water", "smoke"]}).measure(mask)
    assert set(stats["a"].regions) == {"smoke"} and set(stats["b"].regions) == {"water"}  # smoke is not in b
    with pytest.raises(EdgesegError, match="unknown zones"):
        ZoneMeter(zones, classes=CLASSES, regions={"c": ["smoke"]})


@pytest.mark.parametrize("count, dtype", [(20, np.uint8), (300, np.uint16)])
def test_many_classes_are_counted_the_same(count, dtype):
    """Past 16 classes the fractions come from one histogram, past 256 (uint16 masks) from a bincount."""
    rng = np.random.default_rng(count)
    mask = rng.integers(0, count, (30, 40)).astype(dtype)
    classes = tuple(f"c{i}" for i in range(count))
    zone = Zone("tri", [(2, 2), (39, 5), (10, 29)])
    stats = ZoneMeter([zone], classes=classes, regions=()).measure(mask)["tri"]
    inside = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(inside, [zone.pixel_points(40, 30)], 1)
    expected = np.bincount(mask[inside > 0], minlength=count) / inside.sum()
    assert stats.area == inside.sum()
    assert [stats.class_fraction[name] for name in classes] == pytest.approx(expected.tolist(), abs=1e-12)
