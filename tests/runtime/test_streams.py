"""Live sources against a real local stream: the imageio-ffmpeg binary serving a generated video on 127.0.0.1."""

import json
import socket
import subprocess
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
