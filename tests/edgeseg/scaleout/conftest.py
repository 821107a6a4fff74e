"""One real two-node Ray cluster for every scale-out test, the inputs they share, and helpers.

The head is started with ``ray.init(address="local")``: always a Ray of its own, never a cluster that
may already run on this machine (``RAY_ADDRESS`` or ``ray start`` of someone else). Node B joins it with
``ray start --address ... --block``, from its own working folder and with its own TMPDIR: its workers
share neither with the head's, as two machines would not. Ray starts once per package (it is the slow
part: 5-15 s on a busy 2-vCPU machine); every job is tiny.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
import ray
from onnx import TensorProto, helper, numpy_helper

from edgeseg.runtime import Contract, InputSpec, OutputSpec, write_contract

REPO = Path(__file__).resolve().parents[3]
MODEL = str(REPO / "samples" / "models" / "fcn8" / "model.onnx")
FRAMES = 30


@dataclass
class Cluster:
    gcs: str
    head: Path  # the head's working folder: where its workers' relative paths would land
    node_b: Path  # node B's working folder
    node: subprocess.Popen  # node B's `ray start --block`: its session holds the node's processes

    def kill_node_b(self) -> None:
        """Node B goes away as a machine does: every process at once. Only the package's last test may."""
        stop_node(self.node)


def pytest_configure(config):
    config.addinivalue_line("markers", "kills_node_b: runs after every other test of the scale-out package")


def pytest_collection_modifyitems(items):
    # The test that kills node B runs after the package's other tests, which need it (and before any other
    # package's, so that Ray stops once this package is done).
    here = Path(__file__).parent
    ours = [i for i, item in enumerate(items) if Path(str(item.path)).parent == here]
    if not ours:
        return
    last = [items[i] for i in ours if items[i].get_closest_marker("kills_node_b")]
    rest = [items[i] for i in ours if not items[i].get_closest_marker("kills_node_b")]
    items[ours[0]:ours[-1] + 1] = rest + last


def _alive() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def _start_node(gcs: str, root: Path, cpus: int, *, name: str, expect: int) -> subprocess.Popen:
    folder = root / name
    (folder / "tmp").mkdir(parents=True)
    # Ray's files of this node in a folder of its own: `ray start` writes the address it joined to
    # <temp dir>/ray_current_cluster, which in the default /tmp/ray would redirect anyone's `ray.init("auto")`
    # on this machine to this test's cluster. Short, because Ray's socket paths must fit in 107 bytes.
    ray_dir = tempfile.mkdtemp(prefix="esray-", dir="/tmp")
    node = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={gcs}",
                             f"--num-cpus={cpus}", "--block", "--disable-usage-stats", f"--temp-dir={ray_dir}"],
                            cwd=folder, env={**os.environ, "TMPDIR": str(folder / "tmp")}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node.ray_dir = ray_dir  # removed with the node
    deadline = time.monotonic() + 180
    while _alive() < expect:
        if node.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start --address {gcs} did not join (exit {node.poll()})")
        time.sleep(0.2)
    return node


def node_processes(node: subprocess.Popen) -> list[int]:
    """The processes of a node started here: its session (Ray gives each worker a process group of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == node.pid:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def stop_node(node: subprocess.Popen) -> None:
    """End a node started here, as a machine that goes away: every process of its session, by id, at once."""
    for pid in node_processes(node):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.wait(timeout=30)
    shutil.rmtree(node.ray_dir, ignore_errors=True)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    head = root / "head"
    head.mkdir()
    # Every Ray of this package (the head, node B, the drivers the tests start) keeps its files under a temporary
    # folder of its own: never /tmp/ray, where a cluster someone else runs on this machine keeps its address file.
    ray_tmp = tempfile.mkdtemp(prefix="esr-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = ray_tmp
    previous = os.getcwd()
    os.chdir(head)  # the head's raylet, and so its workers, keep this working folder
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    finally:
        os.chdir(previous)
    gcs = ray.get_runtime_context().gcs_address
    node_b = _start_node(gcs, root, 1, name="node-b", expect=2)
    try:
        yield Cluster(gcs, head, root / "node-b", node_b)
    finally:
        ray.shutdown()
        stop_node(node_b)
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="package")
def inputs(tmp_path_factory):
    """A 30-frame MJPG video and a folder of 7 images in two levels plus one broken file."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    video = root / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for i in range(FRAMES):
        image = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        cv2.circle(image, (8 + i, 32), 14, (40, 200, 250), -1)
        writer.write(image)
    writer.release()
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(7):
        folder = images / "sub" if i % 3 == 0 else images
        cv2.imwrite(str(folder / f"im{i}.png"), rng.integers(0, 255, (48, 40 + i, 3), dtype=np.uint8))
    (images / "bad.png").write_bytes(b"not a png")  # costs only itself, with or without Ray
    return video, images


def _tree(folder: Path, sub: str) -> dict[str, bytes]:
    return {p.relative_to(folder / sub).as_posix(): p.read_bytes() for p in sorted((folder / sub).rglob("*.png"))}


def _lines(path: Path) -> list[tuple[int, str, bool]]:
    return [(r["index"], r["name"], r["ok"]) for r in map(json.loads, Path(path).read_text().splitlines())]


def _video_frames(path: Path) -> int:
    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def _first_marker(folder: Path, job, timeout: float = 120) -> dict:
    """The first unit marker a running job writes (to act while it runs)."""
    alive = job.is_alive if hasattr(job, "is_alive") else (lambda: job.poll() is None)  # a thread or a process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        for marker in sorted((folder / ".scaleout").glob("0*-*.json")) if (folder / ".scaleout").is_dir() else []:
            try:
                return json.loads(marker.read_text())
            except (OSError, ValueError):
                pass
        time.sleep(0.01)
    raise AssertionError("no unit finished (or the job ended) before the test could act")


@pytest.fixture(scope="package")
def check():
    """Helpers the tests share (the importlib import mode keeps conftest off sys.path)."""
    return SimpleNamespace(tree=_tree, lines=_lines, video_frames=_video_frames, first_marker=_first_marker,
                           model=MODEL, frames=FRAMES, repo=REPO)


def build_hanging_segmenter(path: Path, *, size: int = 32) -> Path:
    """A valid segmentation model whose every inference spins in an ONNX Loop of 10**12 steps: a unit that
    never finishes, as a decoder stuck on a bad file or a wedged GPU call would."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    nodes = [
        # The loop starts from a value of the input, so no optimizer can run it ahead (constant folding would
        # spin at session creation instead of at inference).
        helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "zero"], ["start"]),
        helper.make_node("Loop", ["steps", "true", "start"], ["spun"], body=body),
        helper.make_node("Mul", ["spun", "zero"], ["nothing"]),
        helper.make_node("Add", ["image", "nothing"], ["scores"]),  # 3 channels: 3 classes, after the spin
    ]
    graph = helper.make_graph(
        nodes, "hang",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", size, size, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", size, size, 3])],
        initializer=[numpy_helper.from_array(np.array(10 ** 12, np.int64), "steps"),
                     numpy_helper.from_array(np.array(True), "true"),
                     numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    write_contract(model, Contract(kind="segmentation", input=InputSpec(height=size, width=size, channels=3),
                                   output=OutputSpec(name="scores", activation="none", classes=("a", "b", "c"))))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="package")
def hanging_segmenter():
    return build_hanging_segmenter
