import json
import os
import struct
import threading

import cv2
import numpy as np
import pytest

from edgeseg.runtime import EdgesegError, Model, Source, read_mask_png, segment


def _jsonl(out):
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def _only(summary):
    """The one source's report of a one-source run (summary.json's sources section)."""
    (report,) = summary["sources"].values()
    return report


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
    summary = segment(messy_folder, model=seg_model, out=out, engine="onnxruntime")  # its provider is checked below
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
    assert saved["provider"] == "CPUExecutionProvider" and _only(saved)["outputs"]["overlay"] == "overlay/"


def test_video_gives_ordered_masks_jsonl_and_a_playable_overlay(seg_model, tmp_path, kit):
    video = kit.moving_video(tmp_path / "clip.avi", count=15)
    out = tmp_path / "out"
    summary = segment(video, model=seg_model, out=out, batch=4)
    assert summary["frames"] == 15 and _only(summary)["outputs"]["video_frames"] == 15
    assert _only(summary)["outputs"]["video_codec"]
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
    assert _only(single)["outputs"] == {"masks": "masks/"}
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
    assert len(records) == summary["frames"] == _only(summary)["outputs"]["video_frames"]
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


# -- named parts: options, sources, sinks ------------------------------------------------------------


def test_options_are_one_frozen_dataclass_and_keywords_are_checked(seg_model, tmp_path, kit):
    from dataclasses import FrozenInstanceError

    from edgeseg.runtime import SegmentOptions, Source

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(8, 8, [kit.BLUE]))
    options = SegmentOptions(outputs=("masks",))
    with pytest.raises(FrozenInstanceError):
        options.batch = 2
    summary = segment(image, model=seg_model, out=tmp_path / "o", options=options)
    assert _only(summary)["outputs"] == {"masks": "masks/"}
    with pytest.raises(TypeError, match="batchh"):
        segment(image, model=seg_model, out=tmp_path / "o2", batchh=2)
    source = Source.open(kit.moving_video(tmp_path / "v.avi", count=9), stride=2)
    assert (source.kind, source.total, source.fps, source.sequential) == ("video", 5, 5.0, True)
    assert segment(source, model=seg_model, out=tmp_path / "o3", outputs=("jsonl",))["frames"] == 5


def test_frame_sinks_share_one_protocol_and_say_what_they_wrote(tmp_path, kit):
    from edgeseg.runtime import (Frame, MaskSink, OverlayImageSink, OverlayVideoSink, Outcome, RecordSink,
                                 SegmentationResult)
    from edgeseg.runtime.records import frame_record

    mask = np.zeros((6, 8), np.uint8)
    mask[:, 4:] = 2
    result = SegmentationResult(mask=mask, class_fraction={"red": 0.5, "blue": 0.5})
    picture = kit.colour_frame(6, 8, [kit.RED, kit.BLUE])
    sinks = [MaskSink(tmp_path / "masks", [(0, 0, 0), (0, 255, 0), (0, 0, 255)]), OverlayImageSink(tmp_path / "overlay"),
             OverlayVideoSink(tmp_path, fps=5), RecordSink(tmp_path)]
    for sink in sinks:
        with sink:
            for i in range(3):
                frame, outcome = Frame(i, f"f{i}", picture), Outcome(result, ms={"infer": 1.0}, picture=picture)
                outcome.record = frame_record(frame, outcome, source="s", latency_ms=1.0)
                sink.write(frame, outcome)
            bad, outcome = Frame(3, "bad", None, error="broken"), Outcome(None, "broken")
            outcome.record = frame_record(bad, outcome, source="s", latency_ms=1.0)
            sink.write(bad, outcome)
    outputs = {key: value for sink in sinks for key, value in sink.outputs.items()}
    assert outputs == {"masks": "masks/", "overlay": "overlay/", "video": "overlay.mp4",
                       "video_codec": outputs["video_codec"], "video_frames": 3, "jsonl": "frames.jsonl"}
    assert outputs["video_codec"].startswith(("h264", "mpeg4"))
    assert np.array_equal(read_mask_png(tmp_path / "masks" / "f2.png"), mask)
    assert sorted(p.name for p in (tmp_path / "overlay").iterdir()) == ["f0.png", "f1.png", "f2.png"]
    records = _jsonl(tmp_path)
    assert [r["ok"] for r in records] == [True, True, True, False] and records[3]["error"] == "broken"
    assert len(_read_video(tmp_path / "overlay.mp4")) == 3


def test_autoencoder_batches_give_the_same_scores_as_single_frames(ae_model, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(7):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (28 + i, 28), dtype=np.uint8))
    one = segment(folder, model=ae_model, out=tmp_path / "one", outputs=("jsonl", "reconstruction"))
    many = segment(folder, model=ae_model, out=tmp_path / "many", outputs=("jsonl", "reconstruction"), batch=4)
    assert one["frames"] == many["frames"] == 7
    assert [r["score"] for r in _jsonl(tmp_path / "one")] == pytest.approx([r["score"] for r in _jsonl(tmp_path / "many")], abs=2e-6)
    for i in range(7):
        a = cv2.imread(str(tmp_path / "one" / "reconstruction" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "many" / "reconstruction" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert a.shape == (28 + i, 28) and np.array_equal(a, b)


# -- an --out that holds a run -----------------------------------------------------------------------


def _images(folder, kit, count):
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:02d}.png"), kit.colour_frame(10, 12, [kit.RED if i % 2 else kit.BLUE]))
    return folder


def test_out_that_holds_a_run_is_refused_unless_overwrite(seg_model, tmp_path, kit):
    folder = _images(tmp_path / "in", kit, 2)
    out = tmp_path / "out"
    segment(folder, model=seg_model, out=out)
    (out / "masks" / "stale.png").write_bytes((out / "masks" / "00.png").read_bytes())
    (out / "notes.txt").write_text("mine")
    with pytest.raises(EdgesegError, match="already holds a run.*--overwrite.*--resume"):
        segment(folder, model=seg_model, out=out)
    summary = segment(folder, model=seg_model, out=out, overwrite=True)
    assert summary["frames"] == 2 and sorted(p.name for p in (out / "masks").iterdir()) == ["00.png", "01.png"]
    assert (out / "notes.txt").read_text() == "mine"  # only what a run writes is cleared


def test_resume_skips_finished_frames_and_redoes_missing_ones(seg_model, tmp_path, kit):
    folder = _images(tmp_path / "in", kit, 6)
    out = tmp_path / "out"
    segment(folder, model=seg_model, out=out, max_frames=4)  # as if interrupted after 4 frames
    (out / "masks" / "01.png").unlink()  # a finished frame whose output is gone is done again
    with open(out / "frames.jsonl", "a") as handle:
        handle.write('{"index": 4, "name": "04", "ok": tr')  # the line in flight when it was killed
    before = (out / "masks" / "00.png").stat().st_mtime_ns
    summary = segment(folder, model=seg_model, out=out, resume=True)
    assert (summary["frames"], summary["frames_resumed"], summary["frames_failed"]) == (3, 3, 0)
    records = _jsonl(out)
    assert [r["name"] for r in records] == ["00", "01", "02", "03", "04", "05"] and all(r["ok"] for r in records)
    assert (out / "masks" / "00.png").stat().st_mtime_ns == before
    assert (read_mask_png(out / "masks" / "01.png") == 0).all() and (read_mask_png(out / "masks" / "04.png") == 2).all()


def test_resume_of_a_video_keeps_the_overlay_whole(seg_model, tmp_path, kit):
    video = kit.moving_video(tmp_path / "clip.avi", count=12)
    out = tmp_path / "out"
    segment(video, model=seg_model, out=out, max_frames=5)
    summary = segment(video, model=seg_model, out=out, resume=True)
    assert (summary["frames"], summary["frames_resumed"]) == (7, 5)
    assert [r["index"] for r in _jsonl(out)] == list(range(12))
    assert _only(summary)["outputs"]["video_frames"] == 12 and len(_read_video(out / "overlay.mp4")) == 12


# -- damaged inputs, interrupted streams, quantized models ----------------------------------------------


def _damage_frames(video, frames):
    """Wipe the JPEG headers of the given frames of an MJPG AVI (each becomes undecodable)."""
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for k in frames:
        data[starts[k]: starts[k] + 200] = bytes(200)
    video.write_bytes(bytes(data))
    return video


def test_a_damaged_frame_mid_video_costs_only_that_frame(seg_model, tmp_path, kit):
    video = _damage_frames(kit.moving_video(tmp_path / "clip.avi", count=30), [14, 15, 16])
    summary = segment(video, model=seg_model, out=tmp_path / "o", outputs=("jsonl",))
    records = _jsonl(tmp_path / "o")
    assert summary["frames"] + summary["frames_failed"] == 30 == len(records)
    assert 1 <= summary["frames_failed"] <= 3 and [r["index"] for r in records] == list(range(30))
    assert all(r["ok"] for r in records[20:]) and "could not be decoded" in summary["first_failure"]


def test_an_int8_model_is_reported_as_int8(tmp_path, kit):
    import onnx
    from onnx import helper, numpy_helper

    from edgeseg.runtime import Contract, write_contract

    plain = onnx.load(str(kit.build_segmentation(tmp_path / "fp32.onnx")))
    graph = plain.graph
    # Quantize-dequantize the input (a QDQ model as onnxruntime's quantizer writes them).
    graph.initializer.extend([numpy_helper.from_array(np.array(1 / 255, np.float32), "s"),
                              numpy_helper.from_array(np.array(0, np.uint8), "z")])
    graph.node.insert(0, helper.make_node("QuantizeLinear", ["image", "s", "z"], ["image_q"]))
    graph.node.insert(1, helper.make_node("DequantizeLinear", ["image_q", "s", "z"], ["image_dq"]))
    graph.node[2].input[0] = "image_dq"
    onnx.save(plain, str(tmp_path / "qdq.onnx"))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(8, 8, [kit.RED]))
    assert segment(image, model=tmp_path / "qdq.onnx", out=tmp_path / "q")["precision"] == "int8"
    assert segment(image, model=tmp_path / "fp32.onnx", out=tmp_path / "f", engine="onnxruntime")["precision"] == "fp32"
    calibrated = onnx.load(str(tmp_path / "fp32.onnx"))
    contract = Contract.from_onnx(calibrated)
    write_contract(calibrated, contract.replace(calibration={"method": "minmax", "samples": 8}))
    onnx.save(calibrated, str(tmp_path / "cal.onnx"))
    assert segment(image, model=tmp_path / "cal.onnx", out=tmp_path / "c")["precision"] == "int8"


@pytest.mark.timeout(90)
def test_an_interrupted_stream_accounts_for_every_grabbed_frame(seg_model, tmp_path, kit):
    import socket
    import subprocess

    import imageio_ffmpeg  # in the `dev` extra

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    video = kit.moving_video(tmp_path / "loop.avi", count=20, fps=25.0)
    server = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
                               "-stream_loop", "-1", "-i", str(video), "-c:v", "mpeg2video", "-f", "mpegts",
                               f"tcp://127.0.0.1:{port}?listen=1"], stdin=subprocess.DEVNULL)
    out, stop = tmp_path / "out", threading.Event()

    def stop_after_eight_frames():
        while not stop.is_set():
            jsonl = out / "frames.jsonl"
            if jsonl.exists() and jsonl.read_text().count("\n") >= 8:
                stop.set()
            stop.wait(0.01)

    watcher = threading.Thread(target=stop_after_eight_frames)
    watcher.start()
    try:
        summary = segment(f"tcp://127.0.0.1:{port}", model=seg_model, out=out, stop=stop, outputs=("jsonl",))
    finally:
        stop.set()
        watcher.join()
        server.kill()
        server.wait(timeout=10)
    stream = _only(summary)["stream"]
    assert summary["interrupted"] and summary["frames"] >= 8 and len(_jsonl(out)) == summary["frames"]
    assert stream["grabbed"] == stream["dropped"] + summary["frames"] + summary["frames_failed"]


def test_a_video_range_with_lead_frames_gives_what_the_whole_video_gives(seg_model, tmp_path, kit):
    # The flicker video: with smooth=0.9 frame 5 is red only because of frames 0-4, which the range
    # runs as lead frames (primed, never written nor counted).
    frames = [kit.colour_frame(32, 32, [kit.RED if i % 2 == 0 else kit.BLUE]) for i in range(8)]
    video = kit.write_video(tmp_path / "flicker.avi", frames)
    whole = segment(video, model=seg_model, out=tmp_path / "whole", outputs=("masks", "jsonl"), smooth=0.9)
    part = segment(Source.video_range(video, start=5, count=3, lead=5), model=seg_model, out=tmp_path / "part",
                   outputs=("masks", "jsonl"), smooth=0.9)
    bare = segment(Source.video_range(video, start=5, count=3), model=seg_model, out=tmp_path / "bare",
                   outputs=("jsonl",), smooth=0.9)
    assert (whole["frames"], part["frames"], bare["frames"]) == (8, 3, 3)
    assert [r["index"] for r in _jsonl(tmp_path / "part")] == [5, 6, 7]
    assert _jsonl(tmp_path / "part")[0]["class_fraction"] == _jsonl(tmp_path / "whole")[5]["class_fraction"]
    assert [r["class_fraction"]["red"] for r in _jsonl(tmp_path / "bare")] == [0.0, 0.0, 0.0]  # unprimed: blue
    masks = sorted(p.name for p in (tmp_path / "part" / "masks").iterdir())
    assert masks == ["flicker_000005.png", "flicker_000006.png", "flicker_000007.png"]
    assert all((tmp_path / "part" / "masks" / n).read_bytes() == (tmp_path / "whole" / "masks" / n).read_bytes()
               for n in masks)


def test_a_part_of_an_image_list_keeps_the_whole_sources_names_and_indices(seg_model, tmp_path, kit):
    paths = []
    for i, suffix in enumerate(("png", "png", "bmp")):
        path = tmp_path / "in" / f"{'a' if i < 2 else 'b'}{i if i == 1 else ''}.{suffix}"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), kit.colour_frame(16, 16, [kit.RED]))
        paths.append(path)
    segment(Source.images(paths[1:], names=["a1", "b"], first=1), model=seg_model, out=tmp_path / "part",
            outputs=("masks", "jsonl"))
    assert [(r["index"], r["name"]) for r in _jsonl(tmp_path / "part")] == [(1, "a1"), (2, "b")]
    assert sorted(p.name for p in (tmp_path / "part" / "masks").iterdir()) == ["a1.png", "b.png"]
