import json
import os
import struct
import threading

import cv2
import numpy as np
import pytest

from edgeseg.runtime import EdgesegError, Model, read_mask_png, segment


def _jsonl(out):
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


@pytest.fixture
def messy_folder(tmp_path, kit):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_red.png"), kit.colour_frame(20, 30, [kit.RED]))
    cv2.imwrite(str(folder / "b_blue.jpg"), kit.colour_frame(41, 17, [kit.BLUE]))
    cv2.imwrite(str(folder / "c_gray16.png"), np.full((12, 12), 40000, np.uint16))
    (folder / "d_empty.png").write_bytes(b"")
    jpeg = (folder / "b_blue.jpg").read_bytes()
    (folder / "e_cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = (folder / "a_red.png").read_bytes()
    (folder / "f_cut.png").write_bytes(png[: len(png) // 2])
    (folder / "g_text.jpg").write_text("not an image at all")
    os.symlink(folder / "nowhere.png", folder / "h_unreadable.png")
    huge = bytearray(png)
    huge[16:24] = struct.pack(">II", 30000, 30000)  # header claims 900 megapixels
    (folder / "i_huge.png").write_bytes(bytes(huge))
    return folder


def test_folder_with_bad_files_costs_only_those_files(seg_model, messy_folder, tmp_path):
    out = tmp_path / "out"
    summary = segment(messy_folder, model=seg_model, out=out)
    assert summary["frames"] == 3 and summary["frames_failed"] == 6
    records = _jsonl(out)
    assert [r["name"] for r in records] == sorted(r["name"] for r in records)  # input order kept
    errors = {r["name"]: r["error"] for r in records if not r["ok"]}
    assert set(errors) == {"d_empty", "e_cut", "f_cut", "g_text", "h_unreadable", "i_huge"}
    assert "0 bytes" in errors["d_empty"] and "truncated" in errors["e_cut"]
    assert "unreadable" in errors["h_unreadable"] and "too large" in errors["i_huge"]
    red = read_mask_png(out / "masks" / "a_red.png")
    assert red.shape == (20, 30) and (red == 0).all()
    assert (read_mask_png(out / "masks" / "b_blue.png") == 2).all()
    assert cv2.imread(str(out / "overlay" / "b_blue.png")).shape == (41, 17, 3)
    assert sorted(p.stem for p in (out / "masks").iterdir()) == ["a_red", "b_blue", "c_gray16"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["frames"] == 3 and set(saved["stage_ms"]) == {"decode", "preprocess", "infer", "postprocess", "write"}
    assert saved["provider"] == "CPUExecutionProvider" and saved["outputs"]["overlay"] == "overlay/"


def test_video_gives_ordered_masks_jsonl_and_a_playable_overlay(seg_model, tmp_path, kit):
    video = kit.moving_video(tmp_path / "clip.avi", count=15)
    out = tmp_path / "out"
    summary = segment(video, model=seg_model, out=out, batch=4)
    assert summary["frames"] == 15 and summary["outputs"]["video_frames"] == 15
    assert summary["outputs"]["video_codec"]
    records = _jsonl(out)
    assert [r["index"] for r in records] == list(range(15))
    assert all(r["class_fraction"]["red"] == pytest.approx(16 * 16 / (48 * 64), abs=0.02) for r in records)
    played = _read_video(out / "overlay.mp4")
    assert len(played) == 15 and played[0].shape == (48, 64, 3)
    # batching changes nothing but speed
    single = segment(video, model=seg_model, out=tmp_path / "one", batch=1, outputs=("masks",))
    for name in ("clip_000000", "clip_000007", "clip_000014"):
        assert np.array_equal(read_mask_png(out / "masks" / f"{name}.png"),
                              read_mask_png(tmp_path / "one" / "masks" / f"{name}.png"))
    assert single["outputs"] == {"summary": "summary.json", "masks": "masks/"}
    assert not (tmp_path / "one" / "frames.jsonl").exists() and not (tmp_path / "one" / "overlay.mp4").exists()


def test_truncated_video_processes_every_decodable_frame(seg_model, tmp_path, kit):
    video = kit.moving_video(tmp_path / "clip.avi", count=30)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    summary = segment(cut, model=seg_model, out=tmp_path / "out", outputs=("jsonl",))
    assert 5 <= summary["frames"] < 30 and summary["frames_failed"] == 0
    assert len(_jsonl(tmp_path / "out")) == summary["frames"]


def test_smoothing_removes_flicker_between_frames(seg_model, tmp_path, kit):
    frames = [kit.colour_frame(32, 32, [kit.RED if i % 2 == 0 else kit.BLUE]) for i in range(8)]
    video = kit.write_video(tmp_path / "flicker.avi", frames)
    plain = segment(video, model=seg_model, out=tmp_path / "plain", outputs=("jsonl",))
    smooth = segment(video, model=seg_model, out=tmp_path / "smooth", outputs=("jsonl",), smooth=0.9)
    assert plain["frames"] == smooth["frames"] == 8
    flips = [r["class_fraction"]["red"] for r in _jsonl(tmp_path / "plain")]
    steady = [r["class_fraction"]["red"] for r in _jsonl(tmp_path / "smooth")]
    assert flips == [1.0, 0.0] * 4
    assert steady == [1.0] * 8  # the running average stays on the first colour


def test_autoencoder_folder_writes_scores_and_reconstructions(ae_model, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    cv2.imwrite(str(folder / "dark.png"), np.full((28, 28), 20, np.uint8))
    cv2.imwrite(str(folder / "bright.png"), np.full((28, 28), 240, np.uint8))
    out = tmp_path / "out"
    summary = segment(folder, model=ae_model, out=out)
    scores = {r["name"]: r["score"] for r in _jsonl(out)}
    assert scores["bright"] == pytest.approx(0.5 * 240 / 255, abs=1e-3) and scores["dark"] < scores["bright"]
    assert cv2.imread(str(out / "reconstruction" / "bright.png"), cv2.IMREAD_UNCHANGED).shape == (28, 28)
    assert (out / "overlay" / "dark.png").exists() and summary["kind"] == "autoencoder"


def test_stop_event_ends_a_video_early_with_valid_outputs(seg_model, tmp_path, kit):
    video = kit.moving_video(tmp_path / "long.avi", count=400)
    out = tmp_path / "out"
    stop = threading.Event()

    def stop_after_three_frames():
        while not stop.is_set():
            jsonl = out / "frames.jsonl"
            if jsonl.exists() and jsonl.read_text().count("\n") >= 3:
                stop.set()
            stop.wait(0.002)

    watcher = threading.Thread(target=stop_after_three_frames)
    watcher.start()
    summary = segment(video, model=Model(seg_model), out=out, stop=stop, queue_size=2)
    stop.set()
    watcher.join()
    records = _jsonl(out)
    assert summary["interrupted"] and 3 <= summary["frames"] < 400
    assert len(records) == summary["frames"] == summary["outputs"]["video_frames"]
    assert [r["index"] for r in records] == list(range(len(records)))
    assert len(_read_video(out / "overlay.mp4")) == summary["frames"]


def test_bad_options_and_unwritable_output_stop_the_run(seg_model, tmp_path, kit):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(8, 8, [kit.RED]))
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(EdgesegError, match="Cannot write to output folder"):
        segment(image, model=seg_model, out=blocker / "out")
    with pytest.raises(EdgesegError, match="Unknown output"):
        segment(image, model=seg_model, out=tmp_path / "o", outputs=("maskz",))
    with pytest.raises(EdgesegError, match="smooth"):
        segment(image, model=seg_model, out=tmp_path / "o", smooth=1.5)


def test_show_says_clearly_when_opencv_has_no_gui(seg_model, tmp_path, kit, caplog):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(8, 8, [kit.RED]))
    has_gui = "NONE" not in cv2.getBuildInformation().split("GUI:")[1].splitlines()[0]
    summary = segment(image, model=seg_model, out=tmp_path / "o", show=not has_gui)
    assert summary["frames"] == 1
    if not has_gui:
        assert "no GUI" in caplog.text and "opencv-python" in caplog.text


def test_start_stride_and_max_frames_select_files(seg_model, messy_folder, tmp_path):
    summary = segment(messy_folder, model=seg_model, out=tmp_path / "o", start=1, stride=2, max_frames=3,
                      outputs=("jsonl",))
    assert [r["name"] for r in _jsonl(tmp_path / "o")] == ["b_blue", "d_empty", "f_cut"]
    assert (summary["frames"], summary["frames_failed"]) == (1, 2)
