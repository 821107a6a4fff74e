import cv2
import numpy as np
import pytest

from edgeseg.runtime import VideoSink, read_mask_png, write_mask_png
from edgeseg.runtime._render import Palette, overlay


def test_palette_png_keeps_class_ids_and_shows_the_palette(tmp_path):
    mask = np.random.default_rng(0).integers(0, 3, (37, 53), dtype=np.uint8)
    palette = [(0, 0, 0), (255, 0, 0), (0, 128, 255)]
    path = tmp_path / "m.png"
    write_mask_png(path, mask, palette)
    assert np.array_equal(read_mask_png(path), mask)
    # Any PNG reader shows the colours: OpenCV expands the palette to BGR.
    shown = cv2.imread(str(path), cv2.IMREAD_COLOR)
    expected = np.array([c[::-1] for c in palette], np.uint8)[mask]
    assert np.array_equal(shown, expected)
    assert path.read_bytes()[25] == 3  # colour type 3: palette-indexed


def test_many_classes_fall_back_to_16bit_gray(tmp_path):
    mask = (np.arange(40 * 30).reshape(30, 40) % 300).astype(np.uint16)
    write_mask_png(tmp_path / "m.png", mask, [(1, 2, 3)])
    assert np.array_equal(read_mask_png(tmp_path / "m.png"), mask)


def test_overlay_blends_classes_and_keeps_a_black_background(tmp_path):
    palette = Palette.from_rgb([(0, 0, 0), (255, 0, 0)])
    image = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), np.uint8)
    mask[:, 3:] = 1
    drawn = overlay(image, mask, palette, alpha=0.5)
    assert (drawn[:, :3] == 100).all()
    assert np.allclose(drawn[:, 3:], [50, 50, 178], atol=1)  # BGR: half grey, half red
    assert overlay(image[:, :, 0], mask, palette).shape == (4, 6, 3)


@pytest.mark.parametrize("codec", ["auto", "mp4v"])
def test_video_sink_writes_a_playable_mp4_and_names_its_codec(tmp_path, codec):
    path = tmp_path / "v.mp4"
    with VideoSink(path, fps=10, codec=codec) as video:
        for i in range(12):
            frame = np.zeros((48, 63, 3), np.uint8)  # odd width: H.264 needs padding
            frame[:, : 5 * i + 1] = (0, 0, 255)
            video.write(frame)
    assert video.codec and (codec == "auto" or video.codec.startswith("mpeg4"))
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    assert len(frames) == 12
    assert frames[-1][:, :50, 2].mean() > 200 and frames[0][:, 20:, 2].mean() < 40
