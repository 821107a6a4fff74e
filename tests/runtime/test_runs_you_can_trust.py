"""Runs you can trust: --resume never loses or mixes records, one run per --out, --overwrite moves before it deletes.

Real processes, real signals, real locks; a real unprivileged user where root would hide a permission error.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import pytest

from edgeseg.runtime import EdgesegError, segment


def _images(folder, kit, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), kit.colour_frame(16, 16, [kit.RED, kit.BLUE][i % 2:] or [kit.RED]))
    return folder


def _names(out):
    return [json.loads(line)["name"] for line in (out / "frames.jsonl").read_text().splitlines()]


def test_an_interrupted_resume_keeps_every_record_it_found(tmp_path, kit, seg_model):
    folder, out = _images(tmp_path / "in", kit, 30), tmp_path / "out"
    segment(folder, model=seg_model, out=out)
    (out / "masks" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\ncut by a crash")  # redone by the resume
    stop = threading.Event()

    (out / "masks" / "025.png").unlink()  # would be redone, but the run is stopped before it gets there

    def stop_soon(result):
        if result.frame.index == 5:
            stop.set()

    resumed = segment(folder, model=seg_model, out=out, resume=True, stop=stop, on_result=stop_soon)
    assert resumed["interrupted"] and resumed["frames"] == 1  # 005 was redone, then the stop
    assert not (out / "masks" / "025.png").exists()
    assert _names(out) == [f"{i:03d}" for i in range(30)]  # every record is still there, in order, once
    assert not (out / ".frames.jsonl.resume").exists()


@pytest.mark.parametrize("change", ["model", "contract", "source"])
def test_resume_refuses_another_model_contract_or_source(tmp_path, kit, seg_model, change):
    folder, out = _images(tmp_path / "in", kit, 4), tmp_path / "out"
    segment(folder, model=seg_model, out=out, max_frames=2)
    other = {"model": {"model": kit.build_segmentation(tmp_path / "other.onnx", stride=2)},
             "contract": {"contract": {"input": {"color": "BGR"}}},
             "source": {"sources": _images(tmp_path / "elsewhere" / "in", kit, 4)}}[change]
    arguments = {"sources": folder, "model": seg_model, **other}
    with pytest.raises(EdgesegError, match=r"--resume: the run in .* had another (model file|model contract|sources)"):
        segment(arguments.pop("sources"), out=out, resume=True, **arguments)
    assert len(_names(out)) == 2  # nothing written by the refused run
    assert segment(folder, model=seg_model, out=out, resume=True)["frames"] == 2  # the same run goes on


_HOLD = textwrap.dedent("""
    import sys, time
    from edgeseg.runtime._outdir import RunLock
    lock = RunLock(sys.argv[1])
    print("holding", flush=True)
    time.sleep(60)
""")


def test_a_second_run_into_the_same_out_is_refused_naming_the_holder(tmp_path, kit, seg_model):
    folder, out = _images(tmp_path / "in", kit, 2), tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        done = subprocess.run([sys.executable, "-m", "edgeseg", "segment", str(folder), "--model", str(seg_model),
                               "--out", str(out), "--overwrite"], capture_output=True, text=True, timeout=120)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert f"in use by another edgeseg run (pid {holder.pid}" in lines[0]
        assert not (out / "masks").exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert segment(folder, model=seg_model, out=out)["frames"] == 2  # the lock died with its process


@pytest.mark.timeout(120)
def test_a_killed_run_of_several_sources_still_holds_its_out(tmp_path, kit, seg_model):
    video = kit.moving_video(tmp_path / "long.avi", count=400)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "edgeseg", "segment", f"a={video}", f"b={video}", "--model",
                            str(seg_model), "--out", str(out), "--no-progress"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "a" / "frames.jsonl").exists():
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    assert not (out / "summary.json").exists()  # killed: no summary, only its identity and outputs
    with pytest.raises(EdgesegError, match="already holds a run"):
        segment([f"c={video}"], model=seg_model, out=out, max_frames=1)
    replaced = segment([f"c={video}"], model=seg_model, out=out, max_frames=1, overwrite=True)
    assert list(replaced["sources"]) == ["c"]
    assert not list((out / "a").iterdir()) and not list((out / "b").iterdir())  # the killed run's files went


def _without_root_powers(command):
    """``command`` run so that file permissions bind it: as root, with the capabilities that override them
    dropped (setpriv, util-linux); as another user, as it is."""
    import shutil

    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): cannot drop the powers that bypass permissions")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--", *command]


def test_overwrite_that_cannot_remove_the_earlier_run_deletes_nothing(tmp_path, kit, seg_model):
    folder, out = _images(tmp_path / "in", kit, 3), tmp_path / "out"
    segment(folder, model=seg_model, out=out)
    before = sorted(p.name for p in (out / "masks").iterdir())
    os.chmod(out / "masks", 0o555)  # moving a folder needs write access to it (its ".." entry)
    try:
        done = subprocess.run(_without_root_powers([sys.executable, "-m", "edgeseg", "segment", str(folder),
                                                    "--model", str(seg_model), "--out", str(out), "--overwrite"]),
                              capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(out / "masks", 0o755)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "nothing was deleted" in lines[0], done.stderr
    assert sorted(p.name for p in (out / "masks").iterdir()) == before  # the earlier run is whole
    assert (out / "frames.jsonl").exists() and (out / "summary.json").exists()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_a_rotated_segment_closes_on_time_while_the_stream_is_down(tmp_path, kit, seg_model):
    import imageio_ffmpeg

    video = kit.moving_video(tmp_path / "loop.avi", count=20, fps=25.0)
    port = _free_port()
    server = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
                               "-stream_loop", "-1", "-i", str(video), "-c:v", "mpeg2video", "-f", "mpegts",
                               f"tcp://127.0.0.1:{port}?listen=1"], stdin=subprocess.DEVNULL)
    out, stop, seen, found = tmp_path / "out", threading.Event(), [], {}

    def outage():
        deadline = time.monotonic() + 60
        while len(seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()  # the camera goes away for longer than a segment
        down = time.monotonic()
        while time.monotonic() - down < 20 and not (out / "overlay-0000.mp4").exists():
            time.sleep(0.05)
        found["after_s"] = time.monotonic() - down
        capture = cv2.VideoCapture(str(out / "overlay-0000.mp4"))  # finalized: it plays while the run goes on
        found["frames"] = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        capture.release()
        stop.set()

    helper = threading.Thread(target=outage)
    helper.start()
    try:
        segment(f"tcp://127.0.0.1:{port}", model=seg_model, out=out, stop=stop, rotate=1 / 60, reconnect=50,
                on_result=lambda r: seen.append(r.frame.index))
    finally:
        stop.set()
        helper.join()
        server.kill()
        server.wait(timeout=10)
    assert found["frames"] >= 5 and found["after_s"] < 5.0, found  # 1 s segments: closed on time, not at the end


@pytest.mark.timeout(120)
def test_health_says_503_while_every_stream_is_down(tmp_path, seg_model):
    import urllib.error
    import urllib.request

    serve, stop, answers = _free_port(), threading.Event(), []

    def ask():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not answers:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{serve}/health", timeout=2)
                time.sleep(0.2)  # ok: not down yet (the first attempt may still be connecting)
            except urllib.error.HTTPError as error:
                answers.append((error.code, json.loads(error.read())))
            except OSError:
                time.sleep(0.2)  # not listening yet
        stop.set()

    helper = threading.Thread(target=ask)
    helper.start()
    summary = segment([f"a=tcp://127.0.0.1:{_free_port()}", f"b=tcp://127.0.0.1:{_free_port()}"], model=seg_model,
                      out=None, stop=stop, serve=serve, reconnect=50)
    helper.join()
    (code, health), = answers
    assert code == 503 and health["status"] == "failed" and set(health["sources"]) == {"a", "b"}
    assert summary["interrupted"] and summary["frames"] == 0


_WRITE_WITH_LITTLE_ROOM = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
    from edgeseg.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_write_that_runs_out_of_room_leaves_no_cut_picture_under_its_name(tmp_path, kit, seg_model):
    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # its overlay PNG is ~12 kB
    cv2.imwrite(str(folder / "a.png"), noise)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _WRITE_WITH_LITTLE_ROOM, "segment", str(folder), "--model",
                           str(seg_model), "--out", str(out), "--engine", "onnxruntime"], capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Cannot write" in lines[-1], done.stderr
    for picture in (out / "overlay").glob("*") if (out / "overlay").exists() else []:
        assert cv2.imread(str(picture)) is not None, f"{picture.name} was left cut short under its real name"
    assert not list((out / "overlay").glob("*")) if (out / "overlay").exists() else True
