"""Calibration frames: every kind of source, sampling, masks, and the refusals of degenerate data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.calibration._data import IGNORE, load_calibration_set
from edgeseg.runtime.contract import Contract, InputSpec, OutputSpec
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime import preprocess

SIZE = 32
CONTRACT = Contract(kind="segmentation", input=InputSpec(height=SIZE, width=SIZE, channels=3, color="RGB"),
                    output=OutputSpec(activation="softmax", classes=("bg", "fg")))


def test_folder_frames_are_preprocessed_exactly_like_inference(kit, tmp_path):
    folder = kit.write_frames(tmp_path / "f", 5)
    with load_calibration_set(folder, CONTRACT, samples=10) as frames:
        assert len(frames) == 5 and frames.stats.kind == "folder"
        expected, _ = preprocess(cv2.imread(str(folder / "frame_002.png")), CONTRACT.input)
        np.testing.assert_array_equal(frames.batch(2, 3), expected)


def test_samples_spread_evenly_over_a_folder_and_every_k(kit, tmp_path):
    folder = kit.write_frames(tmp_path / "f", 12)
    with load_calibration_set(folder, CONTRACT, samples=4) as frames:
        assert frames.names == ["frame_000", "frame_003", "frame_006", "frame_009"]
    with load_calibration_set(folder, CONTRACT, samples=100, every=5) as frames:
        assert frames.names == ["frame_000", "frame_005", "frame_010"]
    with load_calibration_set(str(folder / "frame_00*.png"), CONTRACT, samples=100) as frames:
        assert frames.stats.kind == "glob" and len(frames) == 10


def _write_video(natural_image, path, count):
    rng = np.random.default_rng(3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 48))
    for _ in range(count):
        writer.write(natural_image(rng, 48))
    writer.release()
    return path


def test_video_is_sampled_over_its_whole_length(kit, tmp_path):
    video = _write_video(kit.natural_image, tmp_path / "clip.avi", 40)
    with load_calibration_set(video, CONTRACT, samples=5) as frames:
        assert frames.stats.kind == "video"
        assert [int(n.rsplit("_", 1)[1]) for n in frames.names] == [0, 8, 16, 24, 32]
    with load_calibration_set(video, CONTRACT, samples=3, every=2) as frames:
        assert [int(n.rsplit("_", 1)[1]) for n in frames.names] == [0, 2, 4]


def test_course_npy_arrays_in_0_1_floats_read_as_pixels(kit, tmp_path):
    rng = np.random.default_rng(0)
    images = np.stack([kit.natural_image(rng, SIZE) for _ in range(6)])  # RGB by numpy convention
    np.save(tmp_path / "x.npy", images.astype(np.float32) / 255.0)
    with load_calibration_set(tmp_path / "x.npy", CONTRACT, samples=3) as frames:
        assert frames.stats.kind == "array" and len(frames) == 3
        # Same size and RGB contract: the stored pixels are the array's own values back (within rounding).
        assert np.abs(frames.pixels[1].astype(int) - images[2].astype(int)).max() <= 1


def test_images_and_masks_folder_pairs_by_stem_and_maps_binary_masks(kit, tmp_path):
    root = tmp_path / "membrane"
    kit.write_frames(root / "images", 4, masks=root / "masks")
    for mask_path in (root / "masks").iterdir():  # store as {0, 255} like the ISBI membrane masks
        cv2.imwrite(str(mask_path), cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) * 255)
    with load_calibration_set(root, CONTRACT, samples=10) as frames:
        assert frames.masks is not None and frames.stats.masks == 4
        assert set(np.unique(frames.masks).tolist()) <= {0, 1}


def test_letterbox_marks_bars_as_ignored(kit, tmp_path):
    kit.write_frames(tmp_path / "i", 2, size=48, masks=tmp_path / "m")
    wide = tmp_path / "i" / "frame_000.png"
    cv2.imwrite(str(wide), np.concatenate([cv2.imread(str(wide))] * 2, axis=1))
    mask = tmp_path / "m" / "frame_000.png"
    cv2.imwrite(str(mask), np.concatenate([cv2.imread(str(mask), 0)] * 2, axis=1))
    contract = CONTRACT.replace(input={"resize": "letterbox"})
    with load_calibration_set(tmp_path / "i", contract, masks=tmp_path / "m") as frames:
        assert (frames.masks[0][:4] == IGNORE).all() and (frames.masks[0][SIZE // 2] != IGNORE).all()


def test_unreadable_frames_are_skipped_and_counted(kit, tmp_path):
    folder = kit.write_frames(tmp_path / "f", 6)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "empty.jpg").write_bytes(b"")
    with load_calibration_set(folder, CONTRACT, samples=100) as frames:
        assert len(frames) == 6 and frames.stats.skipped == 2
        assert any("broken" in reason for reason in frames.stats.skipped_reasons)


@pytest.mark.parametrize("make, message", [
    (lambda rng: rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), "random noise"),
    (lambda rng: np.full((48, 48, 3), 90, np.uint8), "constant"),
])
def test_random_or_constant_data_is_refused(kit, tmp_path, make, message):
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), make(rng))
    with pytest.raises(EdgesegError, match=message):
        load_calibration_set(tmp_path, CONTRACT)


def test_empty_folder_and_unpaired_masks_are_refused(kit, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgesegError, match="no image files"):
        load_calibration_set(tmp_path / "empty", CONTRACT)
    kit.write_frames(tmp_path / "i", 3, masks=tmp_path / "m")
    (tmp_path / "m" / "frame_001.png").rename(tmp_path / "m" / "other.png")
    with pytest.raises(EdgesegError, match="do not pair.*frame_001"):
        load_calibration_set(tmp_path / "i", CONTRACT, masks=tmp_path / "m")


def test_mask_with_out_of_range_class_costs_only_its_frame(kit, tmp_path):
    # Three classes: no 0/255 thresholding applies, so a 7 is out of range (read_mask's rule).
    three = CONTRACT.replace(output={"classes": ("bg", "a", "b"), "palette": ()})
    kit.write_frames(tmp_path / "i", 4, masks=tmp_path / "m")
    cv2.imwrite(str(tmp_path / "m" / "frame_002.png"), np.full((48, 48), 7, np.uint8))
    with load_calibration_set(tmp_path / "i", three, masks=tmp_path / "m") as frames:
        assert len(frames) == 3 and frames.stats.skipped == 1
        assert "frame_002" in frames.stats.skipped_reasons[0] and "[7]" in frames.stats.skipped_reasons[0]


def test_mnist_idx_and_npz_arrays(kit, tmp_path):
    import gzip

    rng = np.random.default_rng(0)
    digits = np.stack([cv2.cvtColor(kit.natural_image(rng, 28), cv2.COLOR_BGR2GRAY) for _ in range(5)])
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in digits.shape)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + digits.tobytes())
    np.savez(tmp_path / "digits.npz", x_test=digits, y_test=np.arange(5))
    gray = Contract(kind="autoencoder", input=InputSpec(height=28, width=28, channels=1, color="GRAY"))
    for source in ("t10k-images-idx3-ubyte.gz", "digits.npz"):
        with load_calibration_set(tmp_path / source, gray, samples=5) as frames:
            assert len(frames) == 5
            np.testing.assert_array_equal(frames.pixels[3][..., 0], digits[3])
    (tmp_path / "bad-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(EdgesegError, match="not an unsigned-byte IDX file"):
        load_calibration_set(tmp_path / "bad-ubyte.gz", gray)
