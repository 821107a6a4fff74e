"""Untidy inputs a user meets without trying hard (issue 11, items 1-5): each is processed or named with a reason."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from edgeseg.runtime import EdgesegError, read_mask_png, segment
from edgeseg.runtime import display_path, frame_names, open_source, read_image
from edgeseg.runtime._imageheader import header_size


def _jsonl(folder):
    return [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]


def _png(path, image):
    _, data = cv2.imencode(".png", image)
    with open(path, "wb") as handle:  # bytes paths too: OpenCV's own writer crashes on them
        handle.write(data.tobytes())


def _run_in_child(code, tmp_path):
    # OpenCV segfaults on some paths: a crash must fail this test, not kill pytest.
    return subprocess.run(check=False, args=[sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)


# -- 1. file names that are not valid UTF-8 -------------------------------------------------------

def test_a_folder_with_a_non_utf8_name_is_processed_and_the_name_escaped(seg_model, tmp_path, kit):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (b"a.png", b"b_\xff.png", b"c.png"):
        _png(os.path.join(os.fsencode(folder), name), kit.colour_frame(8, 8, [kit.RED]))
    code = (f"from edgeseg.runtime import segment\n"
            f"s = segment({str(folder)!r}, model={str(seg_model)!r}, out='o')\n"
            "print(s['frames'], s['frames_failed'])\n")
    result = _run_in_child(code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["3", "0"]
    out = tmp_path / "o"
    assert (out / "masks" / "b_\\xff.png").is_file() and (out / "overlay" / "b_\\xff.png").is_file()
    records = {r["name"]: r for r in _jsonl(out)}
    assert records["b_\\xff"]["file"].endswith("in/b_\\xff.png") and records["b_\\xff"]["ok"]


def test_a_video_with_a_non_utf8_name_into_a_non_utf8_folder(seg_model, tmp_path, kit):
    raw = os.path.join(os.fsencode(tmp_path), b"v_\xfe.avi")
    kit.moving_video(tmp_path / "plain.avi", count=4)
    os.rename(os.fsencode(tmp_path / "plain.avi"), raw)
    out = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"o_\xfd"))
    code = (f"import os\nfrom edgeseg.runtime import segment\n"
            f"s = segment(os.fsdecode({raw!r}), model={str(seg_model)!r}, out=os.fsdecode({os.fsencode(out)!r}))\n"
            "(one,) = s['sources'].values()\n"
            "print(s['frames'], one['outputs']['video_frames'], one['source'])\n")
    result = _run_in_child(code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    frames, video_frames, source = result.stdout.split()
    assert (frames, video_frames) == ("4", "4") and source.endswith("v_\\xfe.avi")
    masks = sorted(os.listdir(os.path.join(os.fsencode(out), b"masks")))
    assert masks[0] == b"v_\\xfe_000000.png" and len(masks) == 4
    os.symlink(os.path.join(os.fsencode(out), b"overlay.mp4"), tmp_path / "check.mp4")  # an ASCII name to check it
    capture = cv2.VideoCapture(str(tmp_path / "check.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    capture.release()


# -- 2. inputs that share a stem ------------------------------------------------------------------

def test_inputs_sharing_a_stem_keep_their_own_outputs(seg_model, tmp_path, kit):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), kit.colour_frame(8, 8, [kit.RED]), [cv2.IMWRITE_JPEG_QUALITY, 100])
    cv2.imwrite(str(folder / "a.png"), kit.colour_frame(8, 8, [kit.BLUE]))
    cv2.imwrite(str(folder / "b.png"), kit.colour_frame(8, 8, [kit.GREEN]))
    segment(folder, model=seg_model, out=tmp_path / "o")
    masks = tmp_path / "o" / "masks"
    assert sorted(p.name for p in masks.iterdir()) == ["a.jpg.png", "a.png.png", "b.png"]
    records = {r["name"]: r["file"] for r in _jsonl(tmp_path / "o")}
    assert records == {"a.jpg": str(folder / "a.jpg"), "a.png": str(folder / "a.png"), "b": str(folder / "b.png")}
    assert read_mask_png(masks / "a.jpg.png").max() == 0  # red: class 0
    assert read_mask_png(masks / "a.png.png").min() == 2  # blue: class 2


def test_frame_names_stay_unique_whatever_the_paths(tmp_path):
    from pathlib import Path

    paths = [Path("x/a.jpg"), Path("y/a.jpg"), Path("a.jpg.png"), Path("a.jpg")]
    names = frame_names(paths)
    assert len(set(names)) == 4 and names[0] == "a.jpg"


# -- 3. JPEGs with bytes after the end-of-image marker --------------------------------------------

def test_jpeg_with_trailing_bytes_decodes_and_a_cut_one_is_refused(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    _, data = cv2.imencode(".jpg", image)
    data = data.tobytes()
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)))
    assert np.array_equal(read_image(padded), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(Exception, match="truncated JPEG"):
        read_image(cut)


# -- 4. the pixel limit, read from every format's header ------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif", ".webp", ".pgm", ".ppm", ".pbm", ".pam",
                                    ".gif", ".ras", ".hdr", ".jp2"])
def test_header_size_matches_the_decoded_size(suffix):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    if suffix in (".pgm", ".pbm"):
        image = image[:, :, 0]
    ok, data = cv2.imencode(suffix, image)
    assert ok
    data = data.tobytes()
    assert header_size(lambda offset, size: data[offset: offset + size]) == (53, 37)


def _tiny_tiff_claiming(width, height):
    # Little-endian TIFF: one IFD with ImageWidth/ImageLength (LONG) and no pixel data worth the name.
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, width * height)]
    ifd = len(entries).to_bytes(2, "little") + b"".join(
        t.to_bytes(2, "little") + k.to_bytes(2, "little") + c.to_bytes(4, "little") + v.to_bytes(4, "little")
        for t, k, c, v in entries) + b"\0\0\0\0"
    return b"II*\x00" + (16).to_bytes(4, "little") + b"\0" * 8 + ifd


def test_huge_tiff_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.tif"
    path.write_bytes(_tiny_tiff_claiming(12000, 12000))
    with pytest.raises(Exception, match=r"too large \(12000x12000"):
        read_image(path)


def test_huge_jpeg_with_its_size_after_large_metadata_is_refused_from_its_header(tmp_path):
    _, data = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))
    data = bytearray(data.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = (40000).to_bytes(2, "big") * 2  # the frame header claims 40000x40000
    app = b"".join(b"\xff\xe1" + (65000).to_bytes(2, "big") + b"\0" * 64998 for _ in range(3))  # 195 KB of metadata
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data[:2]) + app + bytes(data[2:]))
    with pytest.raises(Exception, match=r"too large \(40000x40000"):
        read_image(path)


# -- 5. everything the user pointed at is processed or named with a reason ------------------------

def test_a_folders_gif_dir_and_video_each_get_a_record(seg_model, tmp_path, kit):
    folder = tmp_path / "in"
    folder.mkdir()
    _, gif = cv2.imencode(".gif", kit.colour_frame(8, 8, [kit.GREEN]))
    (folder / "g.gif").write_bytes(gif.tobytes())
    (folder / "x.jpg").mkdir()
    kit.moving_video(folder / "v.avi", count=2)
    (folder / "notes.md").write_text("not an image")
    summary = segment(folder, model=seg_model, out=tmp_path / "o")
    records = {r["name"]: r for r in _jsonl(tmp_path / "o")}
    assert set(records) == {"g", "x", "v"} and (summary["frames"], summary["frames_failed"]) == (1, 2)
    assert records["g"]["ok"] and "folder" in records["x"]["error"] and "video" in records["v"]["error"]


def test_a_source_folder_named_like_an_image_with_nothing_in_it_stops_with_one_line(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(EdgesegError, match="no image files"):
        open_source(tmp_path / "x.jpg")


def test_the_cli_says_so_for_an_empty_folder_named_like_an_image(seg_model, tmp_path):
    (tmp_path / "x.jpg").mkdir()
    result = subprocess.run(check=False, args=[sys.executable, "-m", "edgeseg", "segment", str(tmp_path / "x.jpg"), "--model",
                             str(seg_model), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no image files" in result.stderr
    assert "Traceback" not in result.stderr


def test_display_path_escapes_only_what_is_not_utf8():
    assert display_path(os.fsdecode(b"/d/\xc3\xa9_b_\xff.png")) == "/d/\u00e9_b_\\xff.png"


# -- 6. model contracts and outputs that used to give a traceback ----------------------------------

def _model_with_metadata(path, text, *, batch_slice=False, free_size=False):
    """A pass-through ONNX model (optionally keeping only the first result of a batch) with ``text`` as contract."""
    import onnx
    from onnx import TensorProto, helper

    size = ["H", "W"] if free_size else [32, 32]
    nodes, inits = [helper.make_node("Identity", ["image"], ["scores"])], []
    if batch_slice:
        inits = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("e", 1), ("a", 0))]
        nodes = [helper.make_node("Slice", ["image", "s", "e", "a"], ["scores"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *size, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgeseg", text
    onnx.save(model, str(path))
    return path


def _contract_text(**input_changes):
    data = {"kind": "segmentation", "input": {"height": 32, "width": 32, "channels": 3, "name": "image"},
            "output": {"name": "scores", "activation": "softmax", "classes": ["r", "g", "b"]}}
    data["input"].update(input_changes)
    return json.dumps(data)


def _segment_cli(tmp_path, model, source, *extra):
    return subprocess.run(check=False, args=[sys.executable, "-m", "edgeseg", "segment", str(source), "--model", str(model),
                           "--out", str(tmp_path / "o"), *map(str, extra)], capture_output=True, text=True, timeout=120)


def _images(tmp_path, kit, count=4):
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), kit.colour_frame(32, 32, [kit.RED, kit.BLUE]))
    return folder


@pytest.mark.parametrize("contract, message", [
    (json.dumps({"kind": "segmentation", "input": "224x224"}), "`input` must be a JSON object"),
    (json.dumps({"kind": "segmentation", "input": 7}), "`input` must be a JSON object"),
    (_contract_text(height=100000, width=100000), "100000x100000 pixels"),
])
def test_bad_contracts_stop_with_one_line(contract, message, tmp_path, kit):
    model = _model_with_metadata(tmp_path / "m.onnx", contract, free_size=True)
    result = _segment_cli(tmp_path, model, _images(tmp_path, kit, 1))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_a_model_returning_fewer_results_than_the_batch_stops_with_one_line(tmp_path, kit):
    model = _model_with_metadata(tmp_path / "m.onnx", _contract_text(), batch_slice=True)
    result = _segment_cli(tmp_path, model, _images(tmp_path, kit), "--batch", "4", "--engine", "onnxruntime")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and "frame/s" not in line]  # not the bar
    assert len(lines) == 1 and "returned 1 (shape [1, 32, 32, 3]) result(s) for a batch of 4" in lines[0]


def test_is_nan_output_flags_any_nan_and_nothing_else():
    from edgeseg.runtime.postprocess import is_nan_output

    clean = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    assert not is_nan_output(clean) and not is_nan_output(clean.astype(np.float16))
    assert not is_nan_output(np.full((4, 4), 255, np.uint8))
    poisoned = clean.copy()
    poisoned[3, 4, 1] = np.nan
    assert is_nan_output(poisoned) and is_nan_output(np.full((2, 2), np.nan, np.float32))


def test_nan_outputs_are_counted_and_warned_about_once(tmp_path, kit, caplog):
    # A model that gives NaN (fp16/INT8 overflow, a bad export) must not pass silently as made-up masks.
    import logging

    from edgeseg.runtime import segment

    model = kit.build_autoencoder(tmp_path / "nan.onnx", gain=float("nan"))
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"d{i}.png"), np.full((28, 28), 40 * (i + 1), np.uint8))
    with caplog.at_level(logging.WARNING, logger="edgeseg.runtime"):
        summary = segment(folder, model=model, out=tmp_path / "out")
    assert summary["frames"] == 3 and summary["frames_nan"] == 3
    warnings = [r for r in caplog.records if "NaN" in r.getMessage()]
    assert len(warnings) == 1 and "frames_nan" in warnings[0].getMessage()
    ok = segment(folder, model=kit.build_autoencoder(tmp_path / "ok.onnx"), out=tmp_path / "ok")
    assert ok["frames_nan"] == 0
