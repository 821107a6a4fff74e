"""What a cluster user meets when something is wrong: each case of issue 19 on the package's real Ray.

Each test would hang, exit 0 with half a job, or say nothing useful with the driver before this
package's fit check, shared queue, deadlines and output check; here each ends, says why, and
exits as a run without Ray would.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.runtime import Model, segment
from edgeseg.scaleout import ClusterOptions, segment_on_ray


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def test_workers_that_cannot_fit_the_cluster_are_refused_in_one_line(cluster, inputs, check, tmp_path, capsys,
                                                                    caplog):
    _, images = inputs
    base = ["segment", str(images), "--model", check.model, "--ray", "auto", "--no-progress"]
    # The cluster: a 2-CPU head and a 1-CPU node, no GPU.
    assert main([*base, "--out", str(tmp_path / "cpu"), "--workers", "4"]) == 2
    (line,) = _error_lines(capsys)
    assert "--workers 4 with 1 CPU each do not fit" in line and "holds 3 such worker(s)" in line
    assert "a worker's CPU must be on one node" in line and "--workers 3" in line
    assert main([*base, "--out", str(tmp_path / "gpu"), "--gpus-per-worker", "1"]) == 2
    (line,) = _error_lines(capsys)
    assert "--gpus-per-worker 1: this cluster has no GPU (2 node(s): 3 CPU, 0 GPU" in line
    assert main([*base, "--out", str(tmp_path / "memory"), "--memory-per-worker", "1000000"]) == 2
    (line,) = _error_lines(capsys)
    assert "holds 0 such worker(s)" in line and "memory must be on one node" in line
    # Two 2-CPU workers: the head holds one, the 1-CPU node none. Counted per node, not in total.
    assert main([*base, "--out", str(tmp_path / "split"), "--workers", "2", "--cpus-per-worker", "2"]) == 2
    assert "holds 1 such worker(s)" in _error_lines(capsys)[0]
    # An autoscaling cluster is asked for the nodes and waited for, visibly, then refused the same way.
    assert main([*base, "--out", str(tmp_path / "wait"), "--workers", "4", "--autoscale",
                 "--placement-timeout", "1"]) == 2
    assert "--autoscale: asked for more nodes, waiting up to 1 s" in caplog.text
    assert "no nodes came within --placement-timeout 1 s" in _error_lines(capsys)[0]
    # Nothing was started, nothing written: an earlier run in --out is untouched even with --overwrite.
    segment_on_ray([str(images)], model=check.model, out=tmp_path / "kept", cluster=ClusterOptions(workers=1))
    masks = sorted((tmp_path / "kept" / "masks").iterdir())
    assert main([*base, "--out", str(tmp_path / "kept"), "--workers", "4", "--overwrite"]) == 2
    assert sorted((tmp_path / "kept" / "masks").iterdir()) == masks
    assert not (tmp_path / "cpu" / ".scaleout").exists()


def test_relative_paths_mean_the_users_folder_not_the_workers(cluster, inputs, check, tmp_path, monkeypatch):
    _, images = inputs
    user = tmp_path / "user"
    shutil.copytree(images, user / "photos")
    shutil.copy(check.model, user / "model.onnx")
    # The same names where the head's and node B's workers run: a path resolved there would find these.
    for decoy in (cluster.head / "photos", cluster.node_b / "photos"):
        decoy.mkdir(exist_ok=True)
    monkeypatch.chdir(user)
    code = main(["segment", "photos", "--model", "model.onnx", "--out", "out", "--ray", "auto", "--workers", "2",
                 "--recursive", "--no-progress"])
    assert code == 0
    single = segment(str(user / "photos"), model=Model(check.model, threads=1), out=tmp_path / "one", recursive=True)
    assert check.tree(user / "out", "masks") == check.tree(tmp_path / "one", "masks") and single["frames"] == 7
    assert not (cluster.head / "out").exists() and not (cluster.node_b / "out").exists()


def test_a_folder_where_every_file_is_broken_exits_2_as_without_ray(cluster, check, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.png", "b.jpg"):
        (broken / name).write_bytes(b"not an image")
    without = main(["segment", str(broken), "--model", check.model, "--out", str(tmp_path / "one"), "--no-progress"])
    capsys.readouterr()
    code = main(["segment", str(broken), "--model", check.model, "--out", str(tmp_path / "ray"), "--ray", "auto",
                 "--workers", "2", "--no-progress"])
    assert code == without == 2
    assert "nothing was processed" in _error_lines(capsys)[0]


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux's /proc/self/cwd to give each process "
                    "its own view of one path")
def test_an_out_or_source_the_workers_do_not_share_is_not_called_done(cluster, inputs, check, tmp_path, monkeypatch,
                                                                      capsys):
    """``/proc/self/cwd/out`` is one absolute path that each process resolves in its own working folder: the
    driver here, the head's workers in theirs, node B's in its own. Like a folder on each node's local disk."""
    _, images = inputs
    for folder in (cluster.head, cluster.node_b):
        shutil.rmtree(folder / "out", ignore_errors=True)
    driver = tmp_path / "driver"
    driver.mkdir()
    monkeypatch.chdir(driver)
    code = main(["segment", str(images), "--model", check.model, "--out", "/proc/self/cwd/out", "--ray", "auto",
                 "--workers", "3", "--chunk", "3", "--recursive", "--no-progress"])
    assert code == 1
    (line,) = _error_lines(capsys)
    assert "the job is not complete: 3 unit(s) finished on the workers but their outputs are not in" in line
    assert "the workers do not share that folder with this machine" in line and "object storage" in line
    summary = json.loads((driver / "out" / "summary.json").read_text())
    assert summary["ray"]["units_unseen"] == ["0000-000000", "0000-000001", "0000-000002"]
    assert summary["frames"] == 0 and (driver / "out" / "frames.jsonl").read_text() == ""  # nothing claimed
    # The masks are all there, on the workers' own disks: the two folders together hold the whole job.
    written = {**check.tree(cluster.head / "out", "masks"), **check.tree(cluster.node_b / "out", "masks")}
    assert len(written) == 7
    # The same for inputs: a SOURCE the driver sees and the workers do not stops the job in one line, exit 2.
    shutil.copytree(images, driver / "photos")
    code = main(["segment", "/proc/self/cwd/photos", "--model", check.model, "--out", str(tmp_path / "in"),
                 "--ray", "auto", "--workers", "1", "--no-progress"])
    assert code == 2
    (line,) = _error_lines(capsys)
    assert "does not exist on node" in line and "though the driver found it" in line


def test_a_unit_that_stops_moving_is_taken_back_and_the_job_ends(cluster, inputs, check, hanging_segmenter,
                                                                 tmp_path, capsys):
    _, images = inputs
    model = hanging_segmenter(tmp_path / "hang.onnx")
    summary = segment_on_ray([str(images / "im1.png")], model=model, out=tmp_path / "out",
                             cluster=ClusterOptions(workers=1, unit_timeout=1, retries=1))
    ray = summary["ray"]
    # Tried on a first worker, stopped after 1 s of silence, given back to the queue, tried on a second worker.
    assert ray["units_timed_out"] == 2 and ray["units_retried"] == 1 and ray["units_lost"] == ["0000-000000"]
    assert [w["timed_out"] for w in summary["workers"].values()] == [1, 1]
    assert "no progress for" in ray["incomplete"] and "--resume tries them again" in ray["incomplete"]
    assert summary["frames"] == 0 and not summary["interrupted"]


@pytest.mark.kills_node_b
def test_losing_a_node_of_a_full_cluster_hands_its_work_to_the_live_workers(cluster, check, tmp_path):
    """Three workers fill the cluster (2 CPUs on the head, 1 on node B); node B is killed mid-job. Its worker's
    unit goes back to the queue, its replacement can never be placed, and the job finishes on the head."""
    video = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for i in range(90):  # 30 units: node B's worker, however slow to start, takes some
        writer.write(np.full((64, 64, 3), (i * 7) % 250, np.uint8))
    writer.release()
    segment(str(video), model=Model(check.model, threads=1), out=tmp_path / "one")
    out = tmp_path / "ray"
    result = {}
    job = threading.Thread(target=lambda: result.update(segment_on_ray(
        [str(video)], model=check.model, out=out, cluster=ClusterOptions(workers=3, range_frames=3))))
    job.start()
    try:
        _first_unit_on(cluster.node.pid, out, job)  # node B's worker has just taken its next unit
    finally:
        cluster.kill_node_b()
    job.join(timeout=300)
    assert not job.is_alive(), "the job hung after losing a node"
    assert any(w["died"] for w in result["workers"].values())
    assert next(iter(result["sources"].values()))["units"]["finished"] == 30 and result["ray"]["units_lost"] == []
    assert check.tree(out, "masks") == check.tree(tmp_path / "one", "masks")
    assert [i for i, _, _ in check.lines(out / "frames.jsonl")] == list(range(90))


def _first_unit_on(session: int, out: Path, job: threading.Thread) -> None:
    """Wait until a worker of the node whose session is ``session`` has finished a unit."""
    while job.is_alive():
        for marker in sorted((out / ".scaleout").glob("0*-*.json")) if (out / ".scaleout").is_dir() else []:
            try:
                if os.getsid(json.loads(marker.read_text())["pid"]) == session:
                    return
            except (OSError, ValueError, KeyError):
                pass
    raise AssertionError("the job ended before node B's worker finished a unit")
