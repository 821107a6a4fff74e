"""Tiny ONNX models and videos built by the tests themselves (onnx.helper, cv2.VideoWriter).

The segmentation models are a 1x1 convolution + softmax whose class is the dominant colour
channel, so a test knows the right mask of any frame it draws. Also shared by every test: a private
XDG cache, the records' schema check, and ``time_scale``, how much longer than on an idle machine
a test may wait (timeouts scale with the machine's load).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.runtime import Contract, InputSpec, OutputSpec, write_contract

SIZE = 32
# BGR colours of the three classes of the NHWC/RGB model: class i = the dominant R, G or B channel.
RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)


def _save(graph, path, contract):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if contract is not None:
        write_contract(model, contract)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_segmentation(path, *, layout="NHWC", color="RGB", size=SIZE, with_contract=True, classes=("red", "green", "blue"),
                       stride=1):
    """Dominant-channel classifier: class i where input channel i is largest (in the contract's colour order)."""
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1) * 10.0, "w")
    nodes, inputs = [], []
    if layout == "NHWC":
        inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])]
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        nodes += [helper.make_node("Conv", ["nchw", "w"], ["logits"], strides=[stride, stride]),
                  helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
                  helper.make_node("Transpose", ["probs"], ["scores"], perm=[0, 2, 3, 1])]
        out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", size // stride, size // stride, 3])
    else:
        inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])]
        nodes += [helper.make_node("Conv", ["image", "w"], ["logits"]),
                  helper.make_node("Softmax", ["logits"], ["scores"], axis=1)]
        out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3, size, size])
    graph = helper.make_graph(nodes, "seg", inputs, [out], initializer=[weight])
    contract = Contract(
        kind="segmentation",
        input=InputSpec(height=size, width=size, channels=3, color=color, layout=layout),
        output=OutputSpec(name="scores", activation="softmax", classes=classes,
                          palette=((255, 0, 0), (0, 255, 0), (0, 0, 255))),
    )
    return _save(graph, path, contract if with_contract else None)


def build_autoencoder(path, *, size=28, gain=0.5):
    """Gray autoencoder whose 'reconstruction' is the input times ``gain``: error = (1-gain) * pixel/255."""
    g = numpy_helper.from_array(np.array(gain, np.float32), "g")
    node = helper.make_node("Mul", ["image", "g"], ["recon"])
    graph = helper.make_graph(
        [node], "cae",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 1])],
        [helper.make_tensor_value_info("recon", TensorProto.FLOAT, ["N", size, size, 1])],
        initializer=[g],
    )
    contract = Contract(kind="autoencoder", input=InputSpec(height=size, width=size, channels=1, color="GRAY"),
                        output=OutputSpec(name="recon", activation="sigmoid"))
    return _save(graph, path, contract)


def colour_frame(height, width, colours, *, dtype=np.uint8):
    """A BGR frame split into vertical bands of the given colours (left to right)."""
    frame = np.zeros((height, width, 3), np.uint8)
    bands = np.array_split(np.arange(width), len(colours))
    for band, colour in zip(bands, colours):
        frame[:, band[0]: band[-1] + 1] = colour
    return frame


def write_video(path, frames, *, fps=10.0, fourcc="MJPG"):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def moving_video(path, *, count=20, height=48, width=64, fps=10.0, fourcc="MJPG"):
    """A red square moving right over a green background."""
    frames = []
    for i in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:] = GREEN
        x = (i * 3) % (width - 16)
        frame[16:32, x: x + 16] = RED
        frames.append(frame)
    return write_video(path, frames, fps=fps, fourcc=fourcc)


@contextlib.contextmanager
def without_root_file_access():
    """Permission bits apply to this thread as to any user, even as root (whose CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH ignore them): the calling thread drops both from its effective capabilities and
    gets them back at the end. Not root: nothing to drop, the bits apply already."""
    if os.geteuid() != 0:
        yield
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3; pid 0: this thread
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    kept = data[0].effective
    data[0].effective = kept & ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    try:
        yield
    finally:
        data[0].effective = kept
        libc.capset(ctypes.byref(header), data)


@pytest.fixture
def seg_model(tmp_path):
    return build_segmentation(tmp_path / "seg.onnx")


@pytest.fixture
def ae_model(tmp_path):
    return build_autoencoder(tmp_path / "cae.onnx")


@pytest.fixture(scope="session")
def kit():
    """These helpers, for tests (the importlib import mode keeps conftest off sys.path)."""
    return sys.modules[__name__]


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Every test's XDG cache (tuning records, onnxruntime's ids) is the suite's own, never the user's: a record
    a test (or another run on this machine) left in ~/.cache/edgeseg would change what engine auto picks."""
    import os

    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(autouse=True)
def records_follow_the_schema(request):
    """After every test: each summary.json, frames*.jsonl and events.jsonl the test wrote follows records' schemas.

    This is the test of docs/records.md: every output folder the suite writes is checked against the
    schema the documentation is made from (a run of one source, many sources, a cluster job).
    """
    root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if root is None:
        return
    from edgeseg.runtime import records

    problems = []
    for path in root.rglob("summary.json"):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue  # a test that writes a broken summary on purpose
        if isinstance(data, dict) and "frames" in data:  # a run's summary (other tools' summary.json have no frames)
            problems += [f"{path}: {p}" for p in records.check_summary(data)]
    for path in root.rglob("frames*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the line a killed run was writing
            problems += [f"{path}: {p}" for p in records.check_record(record)]
            if len(problems) > 20:
                break
    for path in root.rglob("events.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the line a killed run was writing
            problems += [f"{path}: {p}" for p in records.check_event(record)]
    assert not problems, "records off the schema (runtime/records.py, docs/records.md):\n" + "\n".join(problems[:20])


# -- how much slower than an idle machine this one runs now --------------------------------------------
# A timeout in a test guards against a hang; it is not a measurement, and it must not turn a busy CI box (the
# suite took 42-49 min at load 15-28 on one) red. TIME_SCALE is EDGESEG_TEST_TIME_SCALE when set, else the load
# average per core, at least 1 and at most 10, read once when the run starts. Every test's pytest-timeout limit
# (600 s, or its own marker) is multiplied by it here; a test's own waits take the `time_scale` fixture.

def _time_scale() -> float:
    forced = os.environ.get("EDGESEG_TEST_TIME_SCALE", "").strip()
    if forced:
        try:
            return max(1.0, float(forced))
        except ValueError:
            raise pytest.UsageError(f"EDGESEG_TEST_TIME_SCALE must be a number, got {forced!r}") from None
    try:
        per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return 1.0
    return min(10.0, max(1.0, per_core))


TIME_SCALE = _time_scale()


@pytest.fixture(scope="session")
def time_scale() -> float:
    """How many times longer than on an idle machine a test may wait for something to happen."""
    return TIME_SCALE


def pytest_report_header(config: pytest.Config) -> str:
    return f"edgeseg: test timeouts x{TIME_SCALE:.1f} (load per core; EDGESEG_TEST_TIME_SCALE overrides)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TIME_SCALE == 1.0:
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        limit = float(marker.args[0]) if marker is not None and marker.args else default
        if limit > 0:
            item.add_marker(pytest.mark.timeout(limit * TIME_SCALE), append=False)
