import gzip
import logging
import struct

import cv2
import numpy as np
import pytest

from edgeseg.export._data import load_mnist, load_segmentation, mnist_arrays, read_idx, split
from edgeseg.runtime.contract import InputSpec
from edgeseg.runtime.errors import EdgesegError

SPEC = InputSpec(height=32, width=32, channels=3, color="RGB", scale=1 / 255)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _digits(n=12):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def test_mnist_from_idx_gz_with_digit_filter(tmp_path):
    x, y = _digits()
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y)
    digits = load_mnist(tmp_path, digits=(1, 5, 6))
    assert sorted(set(digits.labels.tolist())) == [1, 5, 6] and len(digits.labels) == 4
    np.testing.assert_array_equal(digits.images[0], x[1])
    arrays = mnist_arrays(digits.images)
    assert arrays.shape == (4, 28, 28, 1) and arrays.dtype == np.float32
    np.testing.assert_allclose(arrays[0, :, :, 0], x[1] / 255.0, rtol=1e-6)


def test_mnist_from_npz_and_bad_sources(tmp_path):
    x, y = _digits()
    np.savez(tmp_path / "m.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    digits = load_mnist(tmp_path / "m.npz")
    assert len(digits.images) == 14 and digits.test.sum() == 2
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(EdgesegError, match="x_train"):
        load_mnist(tmp_path / "bad.npz")
    with pytest.raises(EdgesegError, match="No MNIST IDX files"):
        load_mnist(tmp_path)
    with pytest.raises(EdgesegError, match="No digits"):
        load_mnist(tmp_path / "m.npz", digits=(11,))


def test_truncated_and_foreign_idx_files(tmp_path):
    x, _ = _digits()
    _write_idx(tmp_path / "a.gz", x)
    raw = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "b.gz", "wb") as handle:
        handle.write(raw[:-100])
    assert read_idx(tmp_path / "a.gz").shape == (12, 28, 28)
    with pytest.raises(EdgesegError, match="truncated"):
        read_idx(tmp_path / "b.gz")
    (tmp_path / "c").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(EdgesegError, match="magic"):
        read_idx(tmp_path / "c")


def _pair(root, stem, image, mask, *, mask_ext=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / f"{stem}.png"), image)
    cv2.imwrite(str(root / "masks" / f"{stem}{mask_ext}"), mask)


def test_untidy_folder_skips_bad_items_with_one_line_each(tmp_path, caplog):
    rng = np.random.default_rng(1)
    square = np.zeros((40, 40), np.uint8)
    square[10:30, 10:30] = 255
    _pair(tmp_path, "a_colour", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), square)
    _pair(tmp_path, "b_gray_big", rng.integers(0, 255, (80, 60), dtype=np.uint8), cv2.resize(square, (60, 80)))
    _pair(tmp_path, "c_jpeg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), cv2.GaussianBlur(square, (5, 5), 2), mask_ext=".jpg")
    _pair(tmp_path, "d_mismatch", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), np.zeros((30, 30), np.uint8))
    (tmp_path / "images" / "e_empty.png").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "masks" / "e_empty.png"), square)
    cv2.imwrite(str(tmp_path / "images" / "f_alone.png"), square)
    cv2.imwrite(str(tmp_path / "masks" / "g_alone.png"), square)
    with caplog.at_level(logging.WARNING):
        data = load_segmentation(tmp_path, spec=SPEC, classes=2)
    assert data.names == ("a_colour", "b_gray_big", "c_jpeg")
    assert data.x.shape == (3, 32, 32, 3) and data.y.shape == (3, 32, 32)
    assert set(np.unique(data.y)) == {0, 1}
    assert len(data.skipped) == 4
    reasons = " | ".join(data.skipped)
    for expected in ("d_mismatch.png: mask is 30x30", "e_empty.png: empty file", "f_alone.png: unpaired image",
                     "g_alone.png: unpaired mask"):
        assert expected in reasons
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 4
    assert len(data.notices) == 1 and "thresholded at 128" in data.notices[0]
    # the gray image became RGB, identically in all three channels
    np.testing.assert_array_equal(data.x[1, :, :, 0], data.x[1, :, :, 2])


def test_class_id_and_palette_masks(tmp_path):
    ids = np.zeros((32, 32), np.uint8)
    ids[:, 16:] = 2
    ids[:8] = 1
    _pair(tmp_path, "ok", np.full((32, 32, 3), 90, np.uint8), ids)
    bad = ids.copy()
    bad[0, 0] = 7
    _pair(tmp_path, "outside", np.full((32, 32, 3), 90, np.uint8), bad)
    palette = ((0, 0, 0), (255, 0, 0), (0, 0, 255))
    rgb = np.array(palette, np.uint8)[ids][:, :, ::-1]  # written as BGR
    _pair(tmp_path, "palette", np.full((32, 32, 3), 90, np.uint8), rgb)
    data = load_segmentation(tmp_path, spec=SPEC, classes=3, palette=palette)
    assert data.names == ("ok", "palette")
    np.testing.assert_array_equal(data.y[0], ids)
    np.testing.assert_array_equal(data.y[1], ids)
    assert "outside.png: mask values [7] outside the class ids 0..2" in data.skipped[0]


def test_nothing_usable_stops_the_run(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"\x89PNG trunc")
    (tmp_path / "masks" / "x.png").write_bytes(b"")
    with pytest.raises(EdgesegError, match="No usable image/mask pairs"):
        load_segmentation(tmp_path, spec=SPEC, classes=2)


def test_course_npy_pair_one_hot(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    ids = rng.integers(0, 3, (3, 64, 64))
    np.save(tmp_path / "images.npy", images.astype(np.float32) / 255.0)
    np.save(tmp_path / "labels.npy", np.eye(3, dtype=np.float32)[ids])
    data = load_segmentation(tmp_path, spec=SPEC, classes=3)
    assert data.x.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(data.y, np.stack([cv2.resize(i.astype(np.uint8), (32, 32), interpolation=cv2.INTER_NEAREST) for i in ids]))
    # RGB stays RGB: the red channel of the input is channel 0 of x
    full = load_segmentation(tmp_path, spec=InputSpec(height=64, width=64, channels=3, color="RGB"), classes=3)
    np.testing.assert_allclose(full.x[0, :, :, 0], images[0, :, :, 0] / 255.0, atol=1 / 255 + 1e-6)
    with pytest.raises(EdgesegError, match="one-hot over 3 classes"):
        load_segmentation(tmp_path, spec=SPEC, classes=2)


def test_no_data_is_one_clear_error_and_split():
    with pytest.raises(EdgesegError, match="pass --data"):
        load_segmentation(None, spec=SPEC, classes=3)
    train, val = split(10, fraction=0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    with pytest.raises(EdgesegError, match="val-split"):
        split(10, fraction=1.5, seed=0)
