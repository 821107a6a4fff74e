"""Jobs whose inputs, model and outputs live in object storage: a real S3 server (moto's) on 127.0.0.1.

The workers (on the head and on node B, which share no working folder) read their own inputs from
the bucket and write their own outputs to it, through s3fs; the driver only lists, plans and checks.
Every mask is compared byte for byte with one machine's run on local copies of the same files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from types import SimpleNamespace

import pytest

from edgeseg.cli import main
from edgeseg.runtime import Model, segment
from edgeseg.runtime.records import check_summary

s3fs = pytest.importorskip("s3fs", reason="the object-storage tests need s3fs (the dev extra installs it)")


@pytest.fixture(scope="module")
def bucket(inputs, check, tmp_path_factory):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}", "FSSPEC_S3_KEY": "edgeseg",
           "FSSPEC_S3_SECRET": "edgeseg-secret"}
    fs = s3fs.S3FileSystem(endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], key="edgeseg", secret="edgeseg-secret")
    fs.mkdir("media")
    video, images = inputs
    fs.put(str(video), "media/clip.avi")
    fs.put(str(images), "media/images", recursive=True)
    fs.put(check.model, "media/model.onnx")
    # One machine's outputs on local copies of the same files: the reference.
    local = tmp_path_factory.mktemp("one")
    model = Model(check.model, threads=1)
    segment(str(video), model=model, out=local / "clip")
    segment(str(images), model=model, out=local / "images", recursive=True)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)  # the driver's fsspec settings, forwarded to every worker
        yield SimpleNamespace(fs=fs, env=env, one=local)
    server.stop()


def _masks(fs, prefix: str) -> dict[str, bytes]:
    found = fs.find(f"{prefix}/masks")
    return {path[len(prefix) + len("/masks/"):]: data for path, data in fs.cat(found).items()}


def test_images_and_a_video_from_the_bucket_to_the_bucket_equal_one_machine(cluster, bucket, check, tmp_path):
    fs = bucket.fs
    code = main(["segment", "s3://media/clip.avi", "s3://media/images", "--model", "s3://media/model.onnx",
                 "--out", "s3://media/runs/job", "--ray", "auto", "--workers", "2", "--recursive",
                 "--range-frames", "8", "--chunk", "3", "--no-progress"])
    assert code == 0
    assert _masks(fs, "media/runs/job/clip") == check.tree(bucket.one / "clip", "masks")
    assert _masks(fs, "media/runs/job/images") == check.tree(bucket.one / "images", "masks")
    for name in ("clip", "images"):
        records = [json.loads(line) for line in fs.cat(f"media/runs/job/{name}/frames.jsonl").decode().splitlines()]
        assert [(r["index"], r["name"], r["ok"]) for r in records] == check.lines(bucket.one / name / "frames.jsonl")
        # A record names its input by URI, never by a worker's temporary copy; its source by the job's name.
        assert all(r["file"].startswith("s3://media/") and r["source"] == name for r in records)
    fs.get("media/runs/job/clip/overlay.mp4", str(tmp_path / "overlay.mp4"))
    assert check.video_frames(tmp_path / "overlay.mp4") == check.frames
    job = json.loads(fs.cat("media/runs/job/summary.json"))
    assert [s["frames"] for s in job["sources"].values()] == [check.frames, 7] and job["ray"]["incomplete"] is None
    assert check_summary(job) == []  # the runtime's schema, in the bucket too
    assert job["ray"]["units"] == 4 + 3


def test_zip_packs_each_units_masks_into_one_object_and_a_second_run_is_refused(cluster, bucket, check, capsys):
    fs = bucket.fs
    command = ["segment", "s3://media/images", "--model", "s3://media/model.onnx", "--out", "s3://media/runs/zip",
               "--ray", "auto", "--workers", "2", "--recursive", "--chunk", "3", "--pack", "zip", "--no-progress"]
    assert main(command) == 0
    archives = sorted(fs.find("media/runs/zip/masks"))
    assert archives == [f"media/runs/zip/masks/0000-00000{i}.zip" for i in range(3)]
    unpacked = {}
    for data in fs.cat(archives).values():
        with zipfile.ZipFile(io.BytesIO(data)) as packed:
            unpacked.update({name: packed.read(name) for name in packed.namelist()})
    assert unpacked == check.tree(bucket.one / "images", "masks")  # the same PNG bytes, 3 objects instead of 7
    summary = json.loads(fs.cat("media/runs/zip/summary.json"))
    (report,) = summary["sources"].values()
    assert report["outputs"]["pack"] == "zip" and summary["frames"] == 7
    capsys.readouterr()
    assert main(command) == 2  # the --out rule of one machine, in the bucket too: refused before Ray is asked
    assert "Output folder `s3://media/runs/zip` already holds a run" in capsys.readouterr().err


def test_resume_after_the_driver_was_killed_finishes_the_job_in_the_bucket(cluster, bucket, check, tmp_path):
    fs = bucket.fs
    command = ["segment", "s3://media/clip.avi", "--model", "s3://media/model.onnx", "--out", "s3://media/runs/killed",
               "--range-frames", "10", "--no-progress"]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-m", "edgeseg", *command, "--ray", cluster.gcs, "--workers", "1"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not fs.glob("media/runs/killed/.scaleout/0000-*.json"):  # a unit's marker: the unit is done
            assert driver.poll() is None and time.monotonic() < deadline, "no unit finished before the driver ended"
            fs.invalidate_cache()
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)  # no summary, no join: only the units' own objects are there
        driver.wait()
    assert not fs.exists("media/runs/killed/summary.json")
    assert main([*command, "--ray", "auto", "--workers", "2", "--resume"]) == 0  # another width, the same units
    summary = json.loads(fs.cat("media/runs/killed/summary.json"))
    assert summary["ray"]["units_skipped"] >= 1 and summary["frames_resumed"] >= 10
    assert summary["frames"] + summary["frames_resumed"] == check.frames
    assert _masks(fs, "media/runs/killed") == check.tree(bucket.one / "clip", "masks")
    records = fs.cat("media/runs/killed/frames.jsonl").decode().splitlines()
    assert [json.loads(r)["index"] for r in records] == list(range(check.frames))
    fs.get("media/runs/killed/overlay.mp4", str(tmp_path / "overlay.mp4"))
    assert check.video_frames(tmp_path / "overlay.mp4") == check.frames
