import numpy as np
import pytest

from edgeseg.runtime import BadInputError, InputSpec, preprocess, preprocess_batch, restore


def _gradient(h, w):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_scale_mean_std_and_colour_order_follow_the_spec():
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R as OpenCV stores them
    spec = InputSpec(height=4, width=4, channels=3, color="RGB", scale=0.5, mean=(1, 2, 3), std=(2, 4, 8))
    batch, _ = preprocess(frame, spec)
    assert batch.shape == (1, 4, 4, 3) and batch.dtype == np.float32
    # RGB order: R=30 first.
    np.testing.assert_allclose(batch[0, 0, 0], [(30 * 0.5 - 1) / 2, (20 * 0.5 - 2) / 4, (10 * 0.5 - 3) / 8])


def test_bgr_spec_keeps_opencv_order_and_nchw_moves_channels_first():
    frame = _gradient(5, 7)
    spec = InputSpec(height=5, width=7, channels=3, color="BGR", scale=1.0, layout="NCHW")
    batch, _ = preprocess(frame, spec)
    assert batch.shape == (1, 3, 5, 7)
    np.testing.assert_array_equal(batch[0].transpose(1, 2, 0), frame.astype(np.float32))


@pytest.mark.parametrize(
    "frame",
    [
        np.full((6, 6), 128, np.uint8),                      # gray 2-D
        np.full((6, 6, 1), 128, np.uint8),                   # gray with a channel axis
        np.full((6, 6, 4), 128, np.uint8),                   # BGRA
        np.full((6, 6, 3), 128 * 257, np.uint16),            # 16-bit colour
    ],
    ids=["gray", "gray1", "bgra", "uint16"],
)
def test_any_frame_kind_is_converted_not_refused(frame):
    for color, channels in (("RGB", 3), ("GRAY", 1)):
        spec = InputSpec(height=3, width=3, channels=channels, color=color, scale=1.0)
        batch, geometry = preprocess(frame, spec)
        assert batch.shape == (1, 3, 3, channels)
        np.testing.assert_allclose(batch, 128.0)
        assert (geometry.frame_height, geometry.frame_width) == (6, 6)


def test_letterbox_keeps_aspect_and_restore_undoes_it():
    frame = _gradient(50, 100)
    spec = InputSpec(height=64, width=64, channels=3, scale=1.0, resize="letterbox")
    batch, geometry = preprocess(frame, spec)
    assert (geometry.top, geometry.left, geometry.height, geometry.width) == (16, 0, 32, 64)
    assert np.all(batch[0, :16] == 0) and np.all(batch[0, 48:] == 0)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 32:] = 1  # right half of the content
    back = restore(mask, geometry, nearest=True)
    assert back.shape == (50, 100)
    assert back[:, :50].max() == 0 and back[:, 50:].min() == 1


def test_restore_stretch_resizes_probabilities_with_channels():
    spec = InputSpec(height=8, width=8, channels=3)
    _, geometry = preprocess(_gradient(20, 30), spec)
    probs = np.random.default_rng(1).random((8, 8, 2)).astype(np.float32)
    assert restore(probs, geometry, nearest=False).shape == (20, 30, 2)
    assert restore(probs[:, :, :1], geometry, nearest=False).shape == (20, 30, 1)


def test_batch_of_mixed_sizes_matches_single_calls():
    spec = InputSpec(height=16, width=16, channels=3)
    frames = [_gradient(16, 16), _gradient(33, 17), np.full((9, 40), 7, np.uint8)]
    batch, geometries = preprocess_batch(frames, spec)
    assert batch.shape == (3, 16, 16, 3)
    for i, frame in enumerate(frames):
        single, geometry = preprocess(frame, spec)
        np.testing.assert_array_equal(batch[i], single[0])
        assert geometry == geometries[i]


@pytest.mark.parametrize("bad", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), None])
def test_non_images_raise_bad_input(bad):
    with pytest.raises(BadInputError):
        preprocess(bad, InputSpec(height=4, width=4, channels=3))
