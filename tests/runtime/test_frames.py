import cv2
import numpy as np
import pytest

from edgeseg.runtime import EdgesegError
from edgeseg.runtime import VideoInfo, open_source, read_image


def _image(seed, h=24, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def untidy_folder(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), _image(1))
    cv2.imwrite(str(folder / "b.jpg"), _image(2))
    cv2.imwrite(str(folder / "sub" / "c.png"), _image(3))
    cv2.imwrite(str(folder / "d16.png"), (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    jpeg = (folder / "b.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = (folder / "a.png").read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.md").write_text("ignored: no image suffix")
    return folder


def test_folder_yields_every_file_sorted_and_marks_each_bad_one(untidy_folder):
    frames = list(open_source(untidy_folder))
    names = [f.name for f in frames]
    # cut.jpg and cut.png share a stem: both keep their suffix so neither overwrites the other's outputs
    assert names == sorted(names) == ["a", "b", "cut.jpg", "cut.png", "d16", "empty", "text"]
    good = {f.name for f in frames if f.ok}
    assert good == {"a", "b", "d16"}
    errors = {f.source.rsplit("/", 1)[-1]: f.error for f in frames if not f.ok}
    assert "0 bytes" in errors["empty.png"]
    assert "truncated JPEG" in errors["cut.jpg"]
    assert "not a decodable image" in errors["cut.png"] and "not a decodable image" in errors["text.jpg"]
    d16 = next(f for f in frames if f.name == "d16")
    assert d16.image.dtype == np.uint16  # 16-bit kept for the preprocessor to convert


def test_recursive_folder_names_keep_the_subfolder(untidy_folder):
    names = [f.name for f in open_source(untidy_folder, recursive=True) if f.ok]
    assert "sub/c" in names


def test_stride_start_and_max_frames_select_items(untidy_folder):
    names = [f.name for f in open_source(untidy_folder, start=1, stride=2, max_frames=2)]
    assert names == ["b", "cut.png"]


def test_glob_and_list_file(untidy_folder, tmp_path):
    assert [f.name for f in open_source(str(untidy_folder / "*.png"))] == ["a", "cut", "d16", "empty"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\nimgs/b.jpg\n{untidy_folder / 'a.png'}\nimgs/missing.png\n")
    frames = list(open_source(listing))
    assert [f.name for f in frames] == ["b", "a", "missing"]
    assert frames[0].ok and frames[1].ok and "unreadable" in frames[2].error


def test_huge_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((300, 400), np.uint8))
    with pytest.raises(Exception, match="too large"):
        read_image(path, max_pixels=100_000)


def _write_video(path, frames=12, size=(40, 32)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (i * 20) % 256, np.uint8))
    writer.release()
    return path


def test_video_frames_with_stride_and_timestamps(tmp_path):
    path = _write_video(tmp_path / "v.avi")
    info = VideoInfo.from_video_path(path)
    assert (info.width, info.height, info.frame_count) == (40, 32, 12) and info.fps == pytest.approx(10.0)
    frames = list(open_source(path, start=2, stride=3))
    assert [f.index for f in frames] == [2, 5, 8, 11]
    assert frames[1].name == "v_000005" and frames[1].timestamp == pytest.approx(0.5, abs=0.11)
    assert abs(int(frames[1].image.mean()) - 100) <= 3


def test_truncated_video_yields_the_decodable_frames(tmp_path, caplog):
    path = _write_video(tmp_path / "v.avi", frames=30)
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    frames = list(open_source(cut))
    assert 5 <= len(frames) < 30 and all(f.ok for f in frames)


@pytest.mark.parametrize("spec, message", [("nope/none.png", "no such file"), ("nope/*.png", "matches no files")])
def test_missing_sources_stop_with_one_line(spec, message, tmp_path):
    with pytest.raises(EdgesegError, match=message):
        open_source(str(tmp_path / spec))


def test_unopenable_video_stops_the_run(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(EdgesegError, match="Cannot open video"):
        list(open_source(bad))
