"""Live sources against a real local stream: the imageio-ffmpeg binary serving a generated video on 127.0.0.1."""

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import pytest

from edgeseg.runtime import EdgesegError, LiveSource, segment
from edgeseg.runtime._streams import is_live

import imageio_ffmpeg  # in the `dev` extra


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """ffmpeg looping a video as MPEG-TS over TCP, in real time; kill() and start() again at will."""

    def __init__(self, video, port):
        self.command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
                        "-stream_loop", "-1", "-i", str(video), "-c:v", "mpeg2video", "-q:v", "5",
                        "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"]
        self.url = f"tcp://127.0.0.1:{port}"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        return self

    def kill(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def server(tmp_path, kit):
    video = kit.moving_video(tmp_path / "loop.avi", count=20, fps=25.0)
    serving = Server(video, _free_port()).start()
    yield serving
    serving.kill()


def _lines(path):
    return path.read_text().count("\n") if path.exists() else 0


def test_sources_that_are_live():
    assert is_live(0) and is_live("1") and is_live("rtsp://cam/1") and is_live("HTTP://x/y.mjpg")
    assert not is_live("clip.mp4") and not is_live("folder/")


@pytest.mark.timeout(90)
def test_stream_killed_mid_run_and_restarted_is_reconnected(server, seg_model, tmp_path):
    out = tmp_path / "out"
    restarted = threading.Event()

    def kill_and_restart():
        deadline = time.monotonic() + 40
        while _lines(out / "frames.jsonl") < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()
        time.sleep(0.5)
        server.start()
        restarted.set()

    chaos = threading.Thread(target=kill_and_restart)
    chaos.start()
    summary = segment(server.url, model=seg_model, out=out, max_frames=30, reconnect=10)
    chaos.join()
    assert restarted.is_set()
    (report,) = summary["sources"].values()
    assert summary["frames"] == 30 and report["kind"] == "stream" and report["state"] == "done"
    assert report["stream"]["reconnects"] >= 1 and not report["stream"]["gave_up"]
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    indices = [r["index"] for r in records]
    assert len(records) == 30 and indices == sorted(indices)
    assert all(r["class_fraction"]["green"] > 0.8 for r in records)
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 30


@pytest.mark.timeout(90)
def test_stream_that_dies_for_good_ends_the_run_with_outputs_kept(server, seg_model, tmp_path):
    out = tmp_path / "out"

    def kill_after_some_frames():
        deadline = time.monotonic() + 40
        while _lines(out / "frames.jsonl") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()

    chaos = threading.Thread(target=kill_after_some_frames)
    chaos.start()
    summary = segment(server.url, model=seg_model, out=out, reconnect=1)
    chaos.join()
    (report,) = summary["sources"].values()
    assert report["stream"]["gave_up"] and report["state"] == "gave_up" and summary["frames"] >= 3
    assert json.loads((out / "summary.json").read_text())["frames"] == summary["frames"]
    assert _lines(out / "frames.jsonl") == summary["frames"]


def test_unreachable_url_fails_after_the_configured_attempts(seg_model, tmp_path):
    url = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    summary = segment(url, model=seg_model, out=tmp_path / "out", reconnect=1)
    assert time.monotonic() - started < 30
    (name, report), = summary["sources"].items()
    assert summary["failed"] == [name] and summary["frames"] == 0 and report["state"] == "gave_up"
    assert "gave up after 1 failed reconnect attempt(s)" in report["error"] and report["stream"]["gave_up"]


@pytest.mark.timeout(90)
def test_drop_old_keeps_the_newest_frame_and_counts_the_rest(server):
    source = LiveSource(server.url, policy="drop-old", reconnect=3, backoff=0.2)
    indices = []
    for frame in source:
        indices.append(frame.index)
        time.sleep(0.2)  # a slow consumer: ~5 frames arrive per frame taken
        if len(indices) == 6:
            break
    source.close()
    assert source.stats.dropped > 0
    assert indices[-1] - indices[1] > len(indices) - 2  # skipped ahead to the newest frames


@pytest.mark.timeout(90)
def test_queue_all_keeps_every_frame(server):
    source = LiveSource(server.url, policy="queue-all", reconnect=3, backoff=0.2)
    indices = []
    for frame in source:
        indices.append(frame.index)
        time.sleep(0.05)
        if len(indices) == 8:
            break
    source.close()
    assert indices == list(range(indices[0], indices[0] + 8)) and source.stats.dropped == 0


# -- issue 22: URLs checked up front, parallel opens, silence is a stall whatever the protocol, exit -----------

@pytest.mark.parametrize("url, message", [
    ("rtsp://10.0.0.5:99999/s", "port '99999' is not a number in 1..65535"),
    ("rtsp://10.0.0.5:80a/s", "port '80a' is not a number in 1..65535"),
    ("tcp://127.0.0.1:0", "port 0 is not in 1..65535"),
    ("rtsp:///stream", "has no host"),
    ("http://:8080/live.ts", "has no host"),
    ("rtsp://cam one/s", "contains a space"),
    ("rtsp://cam/s\tx", "contains the control character '\\t'"),
    ("tcp://127.0.0.1", "has no port"),
    ("rtsp://[::1/s", "Invalid IPv6 URL"),
])
def test_malformed_urls_are_refused_up_front_in_one_line(url, message):
    from edgeseg.runtime._streams import validate_source

    with pytest.raises(EdgesegError, match=re.escape(message)) as refused:
        validate_source(url)
    assert "\n" not in str(refused.value)
    with pytest.raises(EdgesegError, match=re.escape(message)):
        LiveSource(url)  # before any thread or socket


def test_well_formed_urls_and_webcams_pass_and_passwords_are_not_printed():
    from edgeseg.runtime._streams import validate_source

    for url in ("rtsp://user:pw@10.0.0.5:554/s?x=1", "udp://:1234", "tcp://0.0.0.0:9000?listen=1",
                "http://[::1]:8080/x.mjpg", "RTSP://CAM/s"):
        assert validate_source(url) == url
    assert validate_source("0") == 0 and validate_source(2) == 2
    with pytest.raises(EdgesegError) as refused:
        validate_source("rtsp://admin:hunter2@cam:99999/s")
    assert "hunter2" not in str(refused.value) and "admin:***@cam" in str(refused.value)


class SilentServer:
    """Accepts every connection on 127.0.0.1 and never sends a byte (nor answers a request)."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.url = f"tcp://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.socket.accept()[0])
            except OSError:
                return

    def close(self):  # an FFmpeg open still waiting on it returns at once
        self.socket.close()
        for connection in self.held:
            connection.close()


@pytest.mark.timeout(120)
def test_one_silent_camera_does_not_hold_up_the_others_open(server, time_scale):
    # OpenCV opened FFmpeg streams one at a time behind a process-wide lock: a camera that accepts and never
    # sends held every other (re)connect for its whole open timeout (58.9 s to come back beside 3 such).
    silent = [SilentServer() for _ in range(3)]
    hanging = [LiveSource(s.url, open_timeout=20 * time_scale, reconnect=0) for s in silent]
    healthy = LiveSource(server.url, open_timeout=20 * time_scale, reconnect=3, backoff=0.2)
    try:
        for source in hanging:
            source.begin()
        assert _wait(lambda: all(s.state == "connecting" for s in hanging) and _connected(silent), 20 * time_scale)
        healthy.begin()
        assert _wait(lambda: healthy.stats.grabbed > 0 or healthy.finished, 20 * time_scale)
        opening = [s.state for s in hanging]
    finally:
        healthy.close()
        for source in hanging:
            source.close(timeout=0)
        for s in silent:
            s.close()
    assert healthy.stats.grabbed > 0
    assert opening == ["connecting"] * 3  # the healthy stream read frames while all three were still opening


def _wait(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def _connected(servers):
    return all(s.held for s in servers)


def _rtsp_server(port):
    import shutil

    python = shutil.which("python3", path="/usr/bin")
    check = [python, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"]
    if python is None or subprocess.run(check, capture_output=True).returncode != 0:
        pytest.skip("no RTSP server: apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good "
                    "gstreamer1.0-plugins-ugly")
    from pathlib import Path

    return subprocess.Popen([python, str(Path(__file__).with_name("rtsp_server.py")), str(port)], stdout=subprocess.DEVNULL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["tcp", "http", "rtsp"])
def test_a_stream_that_goes_silent_is_a_stall_and_nothing_from_the_silence_is_published(protocol, tmp_path, kit,
                                                                                       time_scale):
    port = _free_port()
    if protocol == "rtsp":
        process, url = _rtsp_server(port), f"rtsp://127.0.0.1:{port}/cam"
    else:
        video = kit.moving_video(tmp_path / "loop.avi", count=20, fps=25.0)
        target = f"tcp://127.0.0.1:{port}?listen=1" if protocol == "tcp" else f"http://127.0.0.1:{port}/live.ts"
        extra = ["-listen", "1"] if protocol == "http" else []
        process = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "quiet", "-re",
                                    "-stream_loop", "-1", "-i", str(video), "-c:v", "mpeg2video", "-f", "mpegts", *extra,
                                    target], stdin=subprocess.DEVNULL)
        url = target.split("?")[0]
    stall = 1.5
    # Retries until the server listens (a probe connection would take ffmpeg's one client); none after the stall.
    source = LiveSource(url, policy="queue-all", stall_timeout=stall, reconnect=8, backoff=0.25, max_backoff=0.5,
                        open_timeout=10 * time_scale)
    timestamps, frozen, before = [], None, 0
    try:
        source.begin()
        deadline = time.monotonic() + 60 * time_scale
        while not source.finished and time.monotonic() < deadline and (frozen is None or
                                                                       len(source.stats.failures) == before):
            frame = source.take()
            if frame is None:
                time.sleep(0.005)
                continue
            timestamps.append(frame.timestamp)
            if len(timestamps) == 10:
                process.send_signal(signal.SIGSTOP)  # the server freezes: connection open, nothing sent
                frozen, before = time.monotonic() - source.started, len(source.stats.failures)
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(timeout=10)
        source.close()
    assert source.stats.stalls == 1 and source.stats.failures[before].startswith("stalled: no frame for"), source.stats
    # A read that ran into the timeout handed back frames buffered before the silence (RTSP twice, 2 s apart):
    # they are not new frames. Frames in flight at the freeze may arrive just after it, never a timeout later.
    late = [t - frozen for t in timestamps if t > frozen + 0.6 * stall]
    assert late == [], f"frames published {late} s into the silence"


_EXIT_CHILD = '''
import socket, sys, threading, time
from edgeseg.runtime import LiveSource
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(4)
held = []
threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
source = LiveSource(f"tcp://127.0.0.1:{server.getsockname()[1]}", open_timeout=1.0, reconnect=0).begin()

class SlowTeardown:  # big native libraries take a while to unload: the stuck open returns meanwhile
    def __del__(self, sleep=time.sleep):
        sleep(1.5)

sys.modules["slow_teardown"] = SlowTeardown()
time.sleep(0.3)
source.close(timeout=0)  # the grabber is left in FFmpeg's open
print("leaving", flush=True)
'''


def test_leaving_while_a_grabber_is_stuck_in_an_open_never_aborts_the_process():
    # Python 3.11-3.13 end a daemon thread that leaves native code during finalization with pthread_exit; its
    # unwinding through OpenCV's binding aborted the process ("terminate called without an active exception").
    done = subprocess.run([sys.executable, "-c", _EXIT_CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "leaving"
