"""Real servers shared by the runtime's tests: a stream served by ffmpeg, Debian's mosquitto, a paho-mqtt subscriber."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Broker:
    """Debian's mosquitto on 127.0.0.1, with persistence (sessions survive a restart of the broker)."""

    def __init__(self, folder, port):
        self.port = port
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {folder}/\nuser root\n")
        self.process = None

    def start(self):
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        assert wait_for(self._listening, 10), "mosquitto did not start"
        return self

    def stop(self):
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)  # mosquitto saves its sessions on the way out
            self.process.wait(timeout=10)
            self.process = None

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False


class Subscriber:
    """paho-mqtt with a persistent session (QoS 1): messages wait at the broker while it is away."""

    def __init__(self, port, client_id="edgeseg-test"):
        import paho.mqtt.client as mqtt

        self.messages = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.3)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("edgeseg/#", qos=1)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, message):
        with self.cond:
            self.messages.append((message.topic, message.payload.decode(), message.retain))
            self.cond.notify_all()

    def events(self):
        with self.cond:
            return [json.loads(payload) for topic, payload, _ in self.messages if topic.endswith("/events")]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)")
    made = Broker(tmp_path, free_port()).start()
    yield made
    made.stop()


@pytest.fixture(scope="session")
def mqtt():
    """This module's helpers: Subscriber, Broker, free_port, wait_for (the importlib import mode keeps conftest
    off sys.path)."""
    return sys.modules[__name__]


@pytest.fixture
def serve_tcp(tmp_path, kit):
    """Start ffmpeg (imageio-ffmpeg's binary) serving a looped video as live MPEG-TS on a TCP port of 127.0.0.1;
    ``start(port=None, video=None)`` returns its URL (default video: a red square moving over green, 25 fps)."""
    import imageio_ffmpeg  # in the `dev` extra

    default = kit.moving_video(tmp_path / "loop.avi", count=20, height=48, width=64, fps=25.0)
    started = []

    def start(port=None, video=None):
        port = port or free_port()
        started.append(subprocess.Popen(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
             "-i", str(video or default), "-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts",
             f"tcp://127.0.0.1:{port}?listen=1"], stdin=subprocess.DEVNULL))
        time.sleep(0.5)
        return f"tcp://127.0.0.1:{port}"

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)
