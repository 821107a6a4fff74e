import json
import signal
import subprocess
import sys
import time

import cv2
import pytest

HEAVY = ("tensorflow", "keras", "tf2onnx")


def _edgeseg(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "edgeseg", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_import_and_segment_never_load_tensorflow(seg_model, tmp_path, kit):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(10, 10, [kit.RED]))
    code = (
        "import sys\n"
        "import edgeseg.runtime\n"
        "from edgeseg.cli import main\n"
        f"rc = main(['segment', {str(image)!r}, '--model', {str(seg_model)!r}, '--out', {str(tmp_path / 'o')!r}])\n"
        f"print(rc, sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stderr
    assert (tmp_path / "o" / "masks" / "a.png").exists()


def test_segment_prints_a_stage_table_and_writes_the_summary(seg_model, tmp_path, kit):
    video = kit.moving_video(tmp_path / "v.avi", count=6)
    out = _edgeseg("segment", video, "--model", seg_model, "--out", tmp_path / "o", "--batch", "2", "--smooth", "0.5")
    assert out.returncode == 0, out.stderr
    assert "infer" in out.stderr and "fps" in out.stderr and "overlay.mp4:" in out.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["frames"] == 6 and summary["batch"] == 2


def _one_line_error(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


def test_bad_models_exit_2_with_one_line(tmp_path, kit):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(10, 10, [kit.RED]))
    assert "no such file" in _one_line_error(_edgeseg("segment", image, "--model", tmp_path / "nope.onnx", "--out", tmp_path / "o"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x01\x02 definitely not protobuf \xff" * 10)
    assert "not a valid ONNX model" in _one_line_error(_edgeseg("segment", image, "--model", junk, "--out", tmp_path / "o"))
    bare = kit.build_segmentation(tmp_path / "bare.onnx", with_contract=False)
    line = _one_line_error(_edgeseg("segment", image, "--model", bare, "--out", tmp_path / "o"))
    assert "no edgeseg contract" in line and "`kind`" in line
    ok = _edgeseg("segment", image, "--model", bare, "--out", tmp_path / "o", "--kind", "segmentation",
                  "--input-size", "32", "--classes", "r,g,b", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    partial = _edgeseg("segment", image, "--model", bare, "--out", tmp_path / "o", "--kind", "segmentation")
    assert "`input`" in _one_line_error(partial)


def test_help_names_defaults_and_where_files_plug_in():
    out = _edgeseg("segment", "--help")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "(default: drop-old)" in text and "SOURCE is an image, a folder" in text


@pytest.mark.timeout(120)
def test_sigterm_mid_video_leaves_every_output_valid(seg_model, tmp_path, kit):
    video = kit.moving_video(tmp_path / "long.avi", count=1500, height=96, width=128)
    out = tmp_path / "o"
    process = subprocess.Popen([sys.executable, "-m", "edgeseg", "segment", str(video), "--model", str(seg_model),
                                "--out", str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    jsonl = out / "frames.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not jsonl.exists() or jsonl.read_text().count("\n") < 10):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    summary = json.loads((out / "summary.json").read_text())
    lines = jsonl.read_text().splitlines()
    assert summary["interrupted"] and 10 <= summary["frames"] < 1500
    assert len(lines) == summary["frames"] and all(json.loads(line)["ok"] for line in lines)
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    played = 0
    while capture.read()[0]:
        played += 1
    assert played == summary["frames"]
