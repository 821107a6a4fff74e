"""Vector forms of masks: COCO RLE bit for bit against pycocotools, polygons back to the mask, components, COCO JSON."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from edgeseg.runtime import Outcome
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.vectors import (DEFAULT_TOLERANCE, CocoWriter, Polygon, binary_polygons, class_components, coco_polygons,
                                     mask_polygons, rasterize_polygons, rle_area, rle_compress, rle_decode, rle_encode,
                                     rle_from_string, rle_to_string)

# pycocotools 2.0.x calls np.array(copy=False) on NumPy 2 (its own warning, not ours)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def _blobs(rng, shape, sigma, quantile=0.6):
    field = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), sigma)
    return field > np.quantile(field, quantile)


def _masks(seed=0, count=60):
    rng = np.random.default_rng(seed)
    out = [np.zeros((5, 7), bool), np.ones((3, 4), bool), np.eye(6, dtype=bool), np.zeros((1, 1), bool),
           np.ones((1, 1), bool)]
    for i in range(count):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        out.append(rng.random((h, w)) < rng.random() if i % 2 else _blobs(rng, (h, w), 2.0))
    out.append(_blobs(rng, (300, 400), 8.0))  # long runs: counts past 5 bits and big negative deltas
    return out


def test_rle_equals_pycocotools_bit_for_bit():
    for mask in _masks():
        ours = rle_encode(mask)
        theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["size"] == list(theirs["size"])
        assert rle_to_string(ours["counts"]).encode() == theirs["counts"]  # the compressed string, byte for byte
        assert coco_mask.frPyObjects(ours, *mask.shape)["counts"] == theirs["counts"]  # our counts, their reading
        assert rle_from_string(theirs["counts"]) == ours["counts"]
        assert np.array_equal(rle_decode(theirs | {"counts": theirs["counts"].decode()}), mask)
        assert np.array_equal(coco_mask.decode(rle_compress(ours) | {"counts": rle_compress(ours)["counts"].encode()}),
                              mask.astype(np.uint8))
        assert rle_area(ours) == int(mask.sum()) == int(coco_mask.area(theirs))


def test_rle_hand_computed_cases_from_the_coco_spec():
    # Column-major runs starting with zeros: [[0, 1], [1, 1]] reads 0, 1, 1, 1 down the columns.
    assert rle_encode(np.array([[0, 1], [1, 1]], bool)) == {"size": [2, 2], "counts": [1, 3]}
    assert rle_encode(np.array([[1, 0], [1, 0]], bool)) == {"size": [2, 2], "counts": [0, 2, 2]}
    # 5-bit groups, 0x20 = more follows, 48 added: 1 -> '1', 3 -> '3'; 100 = 0b11_00100 -> 'T' then '3'.
    assert rle_to_string([1, 3]) == "13"
    assert rle_to_string([100]) == "T3"  # 100 & 31 = 4, | 0x20 -> 36 -> 'T'; then 100 >> 5 = 3 -> '3'
    # After the first two counts, the difference from the count two before: 5 - 7 = -2 -> 0b11110 -> 'N'.
    assert rle_to_string([1, 7, 3, 5]) == "173N"  # -2 & 31 = 30 -> 'N'; -2 >> 5 = -1 with bit 0x10 set: done
    assert rle_from_string(rle_to_string([1, 7, 3, 5])) == [1, 7, 3, 5]
    with pytest.raises(EdgesegError, match="expected 2x2 = 4"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})


def test_polygons_rasterize_back_with_iou_099_at_the_stated_tolerance():
    rng = np.random.default_rng(1)
    holes = 0
    for _ in range(8):
        mask = _blobs(rng, (120, 160), 6.0)
        polygons = binary_polygons(mask, tolerance=DEFAULT_TOLERANCE)
        holes += sum(len(polygon.holes) for polygon in polygons)
        back = rasterize_polygons(polygons, mask.shape)
        iou = (back & mask).sum() / (back | mask).sum()
        assert iou >= 0.99, iou
        traced = sum(len(p.exterior) for p in binary_polygons(mask, tolerance=0))
        assert sum(len(p.exterior) for p in polygons) < traced  # it did simplify
    assert holes > 0  # the blobs had holes, and they came back


def test_polygons_keep_holes_and_islands_in_holes_exactly_at_zero_tolerance():
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    mask[10:30, 10:30] = False  # a hole
    mask[15:25, 15:25] = True  # an island inside the hole
    mask[18:22, 18:22] = False  # a hole in the island
    polygons = binary_polygons(mask, tolerance=0)
    assert sorted(len(p.holes) for p in polygons) == [1, 1]
    assert np.array_equal(rasterize_polygons(polygons, mask.shape), mask)
    again = [Polygon.from_record(json.loads(json.dumps(p.to_record()))) for p in polygons]
    assert np.array_equal(rasterize_polygons(again, mask.shape), mask)


def test_mask_polygons_and_components_per_class():
    classes = ("background", "smoke", "water")
    mask = np.zeros((30, 30), np.uint8)
    mask[2:8, 2:8] = 1
    mask[20:22, 20:25] = 1
    mask[10:20, 10:12] = 2
    polygons = mask_polygons(mask, classes, skip=("background",))
    assert set(polygons) == {"smoke", "water"} and len(polygons["smoke"]) == 2
    components = class_components(mask, classes, skip=("background",))
    assert [c.area for c in components["smoke"]] == [36, 10]
    assert components["smoke"][0].bbox == (2, 2, 6, 6) and components["smoke"][0].centroid == (4.5, 4.5)
    assert components["water"][0].to_record() == {"area": 20, "bbox": [10, 10, 2, 10], "centroid": [10.5, 14.5]}
    assert class_components(mask, classes, min_area=11, skip=("background",))["smoke"][0].area == 36


@pytest.mark.parametrize("form", ["rle", "polygons"])
def test_coco_writer_makes_a_file_pycocotools_reads(tmp_path, form):
    classes = ("background", "smoke", "water")
    rng = np.random.default_rng(2)
    masks = []
    path = tmp_path / "coco.json"
    with CocoWriter(path, classes=classes, form=form, tolerance=0) as coco:
        for index in range(3):
            mask = (_blobs(rng, (48, 64), 3.0).astype(np.uint8) + _blobs(rng, (48, 64), 3.0, 0.8)).astype(np.uint8)
            masks.append(mask)
            result = SimpleNamespace(mask=mask)
            # a result, or the pipeline's Outcome holding one (a frame sink's write(frame, outcome))
            coco.write(SimpleNamespace(index=index, name=f"frame_{index}"), Outcome(result) if index % 2 else result)
        coco.write(SimpleNamespace(index=9, name="failed"), None)  # a failed frame has no result: skipped
        assert not path.exists()  # assembled on close, never half written
    assert [p.name for p in tmp_path.iterdir()] == ["coco.json"]  # the spools are gone
    data = COCO(str(path))
    assert sorted(data.getImgIds()) == [0, 1, 2]
    assert [c["name"] for c in data.loadCats(data.getCatIds())] == ["smoke", "water"]
    for index, mask in enumerate(masks):
        for ann in data.loadAnns(data.getAnnIds(imgIds=[index])):
            truth = mask == ann["category_id"]
            got = data.annToMask(ann).astype(bool)
            assert ann["area"] == truth.sum()
            if form == "rle":
                assert np.array_equal(got, truth)
            else:  # COCO polygons have no holes: the regions come back filled
                assert np.array_equal(got, _filled(truth))


def test_coco_polygons_are_exact_under_pycocotools_at_zero_tolerance():
    rng = np.random.default_rng(4)
    for _ in range(5):
        truth = _filled(_blobs(rng, (40, 56), 2.5))
        polygons = coco_polygons(truth, tolerance=0)
        back = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, *truth.shape))).astype(bool)
        assert np.array_equal(back, truth)


def _filled(binary):
    out = np.zeros(binary.shape, np.uint8)
    contours, _ = cv2.findContours(binary.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, 1, -1)
    return out.astype(bool)
