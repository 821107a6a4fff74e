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
    assert "infer" in out.stderr and "fps" in out.stderr and "v: overlay video h264" in out.stderr
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


def test_nothing_processed_and_missing_webcam_exit_2_with_one_line(seg_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    line = _one_line_error(_edgeseg("segment", broken, "--model", seg_model, "--out", tmp_path / "o"))
    assert "nothing was processed" in line and "broken" in line
    line = _one_line_error(_edgeseg("segment", "57", "--model", seg_model, "--out", tmp_path / "w"))
    assert "No webcam 57" in line


def test_out_holding_a_run_is_one_line_and_resume_continues(seg_model, tmp_path, kit):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(10, 10, [kit.RED]))
    args = ("segment", image, "--model", seg_model, "--out", tmp_path / "o", "--no-progress")
    assert _edgeseg(*args).returncode == 0
    assert "--overwrite" in _one_line_error(_edgeseg(*args))
    assert _edgeseg(*args, "--overwrite").returncode == 0
    resumed = _edgeseg(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["frames_resumed"] == 1


def test_damaged_video_and_cuda_fallback_print_no_library_noise(seg_model, tmp_path, kit):
    video = tmp_path / "clip.avi"
    kit.moving_video(video, count=20)
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[8]: starts[8] + 200] = bytes(200)
    video.write_bytes(bytes(data))
    out = _edgeseg("segment", video, "--model", seg_model, "--out", tmp_path / "o", "--no-progress",
                   "--provider", "cuda")
    assert out.returncode == 0, out.stderr
    assert "[mjpeg" not in out.stderr and "bad vlc" not in out.stderr  # FFmpeg's own lines
    assert ".py:" not in out.stderr and "warnings.warn" not in out.stderr  # warnings without file and source line
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["frames"] + summary["frames_failed"] == 20 and summary["frames_failed"] >= 1


_INTERRUPT_AT = """
import os, runpy, signal, sys

class SignalOnImport:  # a real SIGINT, sent the moment `target` starts to import
    def find_spec(self, name, path=None, target=None):
        if name == {target!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

if {target!r}:
    sys.meta_path.insert(0, SignalOnImport())
sys.argv = {argv!r}
runpy.run_module("edgeseg", run_name="__main__")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("moment", ["edgeseg.cli", "numpy", "onnxruntime", "frames"])
def test_ctrl_c_at_any_moment_is_one_clean_exit_130(seg_model, tmp_path, kit, moment):
    video = kit.moving_video(tmp_path / "long.avi", count=600)
    out = tmp_path / "o"
    argv = ["edgeseg", "segment", str(video), "--model", str(seg_model), "--out", str(out)]
    code = _INTERRUPT_AT.format(target="" if moment == "frames" else moment, argv=argv)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if moment == "frames":
        jsonl = out / "frames.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not jsonl.exists() or jsonl.read_text().count("\n") < 5):
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "needs onnxruntime" not in stderr, stderr
    if moment == "frames":  # every output is valid for the frames done
        summary = json.loads((out / "summary.json").read_text())
        lines = (out / "frames.jsonl").read_text().splitlines()
        assert summary["interrupted"] and 5 <= len(lines) == summary["frames"] < 600
    else:  # before any frame: one line, nothing written
        assert [line for line in stderr.splitlines() if line.strip()] in (["edgeseg: interrupted"],
                                                                         ["edgeseg segment: interrupted"])
        assert not (out / "summary.json").exists()


@pytest.mark.timeout(120)
def test_sigterm_while_a_lone_stream_waits_to_reconnect_stops_the_run(seg_model, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on: refused, then backoff between attempts
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "o"
    process = subprocess.Popen([sys.executable, "-m", "edgeseg", "segment", f"tcp://127.0.0.1:{port}", "--model",
                                str(seg_model), "--out", str(out), "--reconnect", "20", "--no-progress"],
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:  # the stream is in backoff now
            if "reconnecting in" in line:
                break
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        process.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert process.returncode == 130 and summary["interrupted"], rest
    assert next(iter(summary["sources"].values()))["state"] == "stopped"
    assert took < 5.0, f"took {took:.2f} s to stop (goal: 1 s; before: never, it went on reconnecting)"  # loaded CI


# -- --zones, --clips, --write polygons,rle ---------------------------------------------------------------------


def _in_process(capsys, *args):
    from edgeseg.cli import main

    code = main(["segment", *map(str, args)])
    return code, capsys.readouterr().err


def test_a_zones_file_with_a_mistake_is_refused_in_one_line_naming_the_line_and_field(seg_model, tmp_path, kit, capsys):
    video = kit.moving_video(tmp_path / "door.avi", count=3)
    whole = {"name": "all", "units": "fraction", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}
    mistakes = {  # each item on its own line: zones[0] on line 3, rules[0] on line 6
        "unknown class": ([whole], [{"name": "r", "class": "smoke", "zone": "all", "fraction": 0.3}],
                          "line 6: rules[0] 'r' field 'class': unknown class 'smoke'; the model's classes are red, "
                          "green, blue."),
        "crossing": ([{"name": "bow", "units": "fraction", "points": [[0, 0], [1, 1], [1, 0], [0, 1]]}], [],
                     "line 3: zones[0] 'bow' field 'points': the polygon crosses itself"),
        "unknown stream": ([{**whole, "streams": ["yard"]}], [],
                           "line 3: zones[0] 'all' field 'streams': unknown stream 'yard'; expected one of door."),
        "outside": ([{"name": "big", "units": "pixels", "points": [[0, 0], [200, 0], [200, 10]]}], [],
                    "line 3: zones[0] 'big' on stream 'door': field 'points': point (200, 0) is outside the 64x48 "
                    "frame"),
        "unknown field": ([{**whole, "colour": "red"}], [],
                          "line 3: zones[0] 'all' unknown field 'colour'; expected one of name, points, units, "
                          "streams."),
    }
    for name, (zones, rules, expected) in mistakes.items():
        path = tmp_path / f"{name.replace(' ', '-')}.json"
        path.write_text('{\n "zones": [\n  ' + ",\n  ".join(map(json.dumps, zones)) + '\n ],\n "rules": [\n  '
                        + ",\n  ".join(map(json.dumps, rules)) + "\n ]\n}\n")
        code, err = _in_process(capsys, video, "--model", seg_model, "--out", tmp_path / "o", "--zones", path)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and f"{path.name} {expected}" in lines[0], (name, err)
        assert not (tmp_path / "o").exists()  # refused before --out is claimed


def test_ray_refuses_rules_and_vector_outputs_in_one_line_before_planning(seg_model, tmp_path, kit, capsys):
    video = kit.moving_video(tmp_path / "door.avi", count=3)
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps({"zones": [{"name": "all", "units": "fraction", "points": [[0, 0], [1, 0], [1, 1]]}],
                                 "rules": [{"name": "r", "class": "red", "zone": "all", "fraction": 0.3}]}))
    common = (video, "--model", seg_model, "--out", tmp_path / "o", "--ray", "local")
    code, err = _in_process(capsys, *common, "--zones", zones)
    assert code == 2 and "zones.json has rules: events need each source whole" in err and len(err.splitlines()) == 1
    code, err = _in_process(capsys, *common, "--write", "jsonl,rle")
    assert code == 2 and "--write rle is for a run on this machine" in err
    code, err = _in_process(capsys, video, "--model", seg_model, "--out", tmp_path / "o", "--clips", "2")
    assert code == 2 and "--clips expects BEFORE,AFTER" in err
    code, err = _in_process(capsys, video, "--model", seg_model, "--out", tmp_path / "o", "--write", "masks,vectors")
    assert code == 2 and "Unknown output(s) vectors: choose from masks, overlay, reconstruction, jsonl, polygons, rle" in err
    assert not (tmp_path / "o").exists()


def test_segment_with_zones_prints_the_events_and_writes_vector_files(seg_model, tmp_path, kit):
    video = kit.moving_video(tmp_path / "door.avi", count=10)
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps({"zones": [{"name": "all", "units": "fraction", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
                                 "rules": [{"name": "red-seen", "class": "red", "zone": "all", "fraction": 0.05}]}))
    out = _edgeseg("segment", video, "--model", seg_model, "--out", tmp_path / "o", "--zones", zones, "--clips", "0.2,0.2",
                   "--write", "jsonl,overlay,polygons,rle", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "1 event(s) started (red-seen 1): events.jsonl" in out.stderr
    assert {p.name for p in (tmp_path / "o").iterdir()} >= {"events.jsonl", "clips", "snapshots", "polygons", "rle",
                                                             "frames.jsonl", "overlay.mp4", "summary.json"}
    assert len(list((tmp_path / "o" / "rle").glob("*.json"))) == 10
