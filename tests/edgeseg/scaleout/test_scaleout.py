"""edgeseg.scaleout on a real local Ray (one shared instance, two 1-CPU actors) against the single-machine run.

The reference is the runtime's own ``segment`` on the same inputs; masks must match byte for byte,
overlay.mp4 must hold every frame (counted by decoding it with cv2), frames.jsonl one line per
frame in source order. Ray starts once for the module (~5-10 s); every job here is tiny.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray

from edgeseg.cli import main
from edgeseg.runtime import EdgesegError, Model, SegmentOptions, read_mask_png, segment
from edgeseg.scaleout import ClusterOptions, segment_on_ray


MODEL = str(Path(__file__).resolve().parents[3] / "samples" / "models" / "fcn8" / "model.onnx")
FRAMES = 30


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
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


def _single(source, out, **options):
    return segment(str(source), model=Model(MODEL, threads=1), out=out, **options)


def _tree(folder: Path, sub: str) -> dict[str, bytes]:
    return {p.relative_to(folder / sub).as_posix(): p.read_bytes() for p in sorted((folder / sub).rglob("*.png"))}


def _lines(path: Path) -> list[tuple[int, str, bool]]:
    return [(r["index"], r["name"], r["ok"]) for r in map(json.loads, path.read_text().splitlines())]


def _video_frames(path: Path) -> int:
    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def _only(summary):
    (report,) = summary["sources"].values()
    return report


def test_folder_equals_single_machine(cluster, inputs, tmp_path):
    _, images = inputs
    single = _single(images, tmp_path / "one", recursive=True)
    summary = segment_on_ray([str(images)], model=MODEL, out=tmp_path / "ray",
                             cluster=ClusterOptions(workers=2, chunk=3), options=SegmentOptions(recursive=True))
    assert _tree(tmp_path / "ray", "masks") == _tree(tmp_path / "one", "masks")
    assert len(_tree(tmp_path / "ray", "masks")) == 7 and "sub/im3.png" in _tree(tmp_path / "ray", "masks")
    assert _tree(tmp_path / "ray", "overlay") == _tree(tmp_path / "one", "overlay")
    assert _lines(tmp_path / "ray" / "frames.jsonl") == _lines(tmp_path / "one" / "frames.jsonl")
    assert (summary["frames"], summary["frames_failed"]) == (single["frames"], single["frames_failed"]) == (7, 1)
    assert _only(summary)["units"] == {"planned": 3, "finished": 3}
    # Each unit is the runtime's own segment(): its batch rule and reporting, not a copy of them.
    assert [summary[k] for k in ("batch", "precision", "engine")] == [single[k] for k in ("batch", "precision", "engine")]
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["workers"] == summary["workers"]


def test_video_split_across_workers_is_one_overlay_with_every_frame(cluster, inputs, tmp_path):
    video, _ = inputs
    _single(video, tmp_path / "one")
    summary = segment_on_ray([str(video)], model=MODEL, out=tmp_path / "ray",
                             cluster=ClusterOptions(workers=2, range_frames=8))
    assert _only(summary)["units"] == {"planned": 4, "finished": 4}
    assert len(summary["workers"]) == 2 and sum(w["frames"] for w in summary["workers"].values()) == FRAMES
    assert _tree(tmp_path / "ray", "masks") == _tree(tmp_path / "one", "masks")
    assert [i for i, _, _ in _lines(tmp_path / "ray" / "frames.jsonl")] == list(range(FRAMES))
    assert _video_frames(tmp_path / "ray" / "overlay.mp4") == FRAMES
    one = _only(json.loads((tmp_path / "one" / "summary.json").read_text()))
    assert _only(summary)["outputs"]["video_codec"] == one["outputs"]["video_codec"]


def test_smoothing_is_rebuilt_at_range_borders(cluster, inputs, tmp_path):
    video, _ = inputs
    _single(video, tmp_path / "one", smooth=0.5, outputs=("masks",))
    segment_on_ray([str(video)], model=MODEL, out=tmp_path / "ray", cluster=ClusterOptions(workers=2, range_frames=8),
                   options=SegmentOptions(outputs=("masks",), smooth=0.5))
    ours, theirs = _tree(tmp_path / "ray", "masks"), _tree(tmp_path / "one", "masks")
    assert ours.keys() == theirs.keys()
    # Each range starts 14 frames early, so what it cannot see weighs 0.5**14 < 1e-4: a pixel may
    # differ only where two classes were that close; in practice none does.
    agreement = np.mean([np.mean(read_mask_png(tmp_path / "ray" / "masks" / n) ==
                                 read_mask_png(tmp_path / "one" / "masks" / n)) for n in ours])
    assert agreement >= 0.999


def test_killed_worker_is_replaced_and_its_units_redone(cluster, inputs, tmp_path):
    video, _ = inputs
    _single(video, tmp_path / "one")
    out = tmp_path / "ray"
    result = {}
    job = threading.Thread(target=lambda: result.update(segment_on_ray(
        [str(video)], model=MODEL, out=out, cluster=ClusterOptions(workers=2, range_frames=1))))
    job.start()
    pid = _first_marker_pid(out, job)
    os.kill(pid, signal.SIGKILL)
    job.join(timeout=300)
    assert result["ray"]["units_retried"] >= 1 and result["ray"]["units_lost"] == []
    assert any(w["died"] for w in result["workers"].values())
    assert _tree(out, "masks") == _tree(tmp_path / "one", "masks")
    assert [i for i, _, _ in _lines(out / "frames.jsonl")] == list(range(FRAMES))  # none lost, none twice
    assert _video_frames(out / "overlay.mp4") == FRAMES


def test_stop_leaves_valid_outputs_and_resume_completes_them(cluster, inputs, tmp_path):
    video, _ = inputs
    _single(video, tmp_path / "one")
    out = tmp_path / "ray"
    stop = threading.Event()
    result = {}
    job = threading.Thread(target=lambda: result.update(segment_on_ray(
        [str(video)], model=MODEL, out=out, cluster=ClusterOptions(workers=2, range_frames=2), stop=stop)))
    job.start()
    _first_marker_pid(out, job)
    stop.set()  # what Ctrl-C does: no new units, the ones in flight finish, the parts are joined
    job.join(timeout=300)
    assert result["interrupted"] and _only(result)["units"]["finished"] < 15
    done = result["frames"]
    assert len(_lines(out / "frames.jsonl")) == done == _video_frames(out / "overlay.mp4")
    before = {name: (out / "masks" / name).stat().st_mtime_ns for name in _tree(out, "masks")}
    # The CLI, in-process on the shared Ray: the runtime hands --ray over to edgeseg.scaleout.
    code = main(["segment", str(video), "--model", MODEL, "--out", str(out), "--ray", "auto", "--workers", "2",
                 "--resume", "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and summary["ray"]["units_skipped"] == _only(result)["units"]["finished"]
    assert all((out / "masks" / name).stat().st_mtime_ns == t for name, t in before.items())  # not redone
    assert _tree(out, "masks") == _tree(tmp_path / "one", "masks")
    assert [i for i, _, _ in _lines(out / "frames.jsonl")] == list(range(FRAMES))
    assert _video_frames(out / "overlay.mp4") == FRAMES


def _first_marker_pid(out: Path, job: threading.Thread) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.is_alive():
        for marker in sorted((out / ".scaleout").glob("0*-*.json")) if (out / ".scaleout").is_dir() else []:
            try:
                return json.loads(marker.read_text())["pid"]
            except (OSError, ValueError):
                pass
        time.sleep(0.01)
    raise AssertionError("no unit finished (or the job ended) before the test could act")


def test_cli_with_several_sources_writes_one_folder_each(cluster, inputs, tmp_path):
    video, images = inputs
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")  # one bad video of several costs only itself
    code = main(["segment", str(video), str(images), str(broken), "--model", MODEL, "--out", str(tmp_path / "job"),
                 "--ray", "auto", "--workers", "2", "--write", "masks,jsonl", "--no-progress"])
    job = json.loads((tmp_path / "job" / "summary.json").read_text())
    # As without Ray: a source that fails costs only itself, and the exit code says one failed.
    assert code == 1 and [s["frames"] for s in job["sources"].values()] == [FRAMES, 4, 0]  # images: no --recursive
    assert job["frames_failed"] == 2 and "broken.mp4" in job["sources"]["broken"]["error"]
    assert job["failed"] == ["broken"] and job["sources"]["clip"]["folder"] == "clip"
    assert len(_tree(tmp_path / "job" / "clip", "masks")) == FRAMES and len(_tree(tmp_path / "job" / "images", "masks")) == 4
    assert not (tmp_path / "job" / "clip" / "overlay.mp4").exists()  # --write without overlay: none drawn


def test_out_holding_a_run_is_refused_unless_overwrite_as_on_one_machine(cluster, inputs, tmp_path):
    _, images = inputs
    out = tmp_path / "ray"
    segment_on_ray([str(images)], model=MODEL, out=out, cluster=ClusterOptions(workers=1))
    command = ["segment", str(images), "--model", MODEL, "--out", str(out), "--ray", "auto", "--no-progress"]
    assert main(command) == 2  # refused in one line, nothing touched
    with pytest.raises(EdgesegError, match="already holds a run.*--overwrite.*--resume"):
        segment_on_ray([str(images)], model=MODEL, out=out, cluster=ClusterOptions(workers=1))
    (out / "masks" / "stale.png").write_bytes(b"from the earlier run")
    (out / "notes.txt").write_text("the user's own file")
    assert main([*command, "--overwrite"]) == 0
    assert sorted(_tree(out, "masks")) == ["im1.png", "im2.png", "im4.png", "im5.png"]  # the stale mask is gone
    assert (out / "notes.txt").exists()
    # A job stopped before any file was joined leaves only its parts: that folder holds a run too.
    (tmp_path / "parts" / ".scaleout").mkdir(parents=True)
    with pytest.raises(EdgesegError, match="already holds a run"):
        segment_on_ray([str(images)], model=MODEL, out=tmp_path / "parts", cluster=ClusterOptions(workers=1))


def test_an_autoencoder_gets_the_runtimes_batch_rule_and_the_same_reconstructions(cluster, tmp_path):
    cae = str(Path(MODEL).parents[1] / "cae" / "model.onnx")
    digits = np.load(Path(MODEL).parents[2] / "digits.npz")["x_test"][:70]
    (tmp_path / "digits").mkdir()
    for i, digit in enumerate(digits):
        cv2.imwrite(str(tmp_path / "digits" / f"{i:03d}.png"), digit)
    single = segment(str(tmp_path / "digits"), model=Model(cae, threads=1), out=tmp_path / "one")
    summary = segment_on_ray([str(tmp_path / "digits")], model=cae, out=tmp_path / "ray",
                             cluster=ClusterOptions(workers=2))  # units of 64 and 6: the single run's batches
    assert summary["batch"] == single["batch"] == 64  # no --batch: the runtime's default for autoencoders
    assert _tree(tmp_path / "ray", "reconstruction") == _tree(tmp_path / "one", "reconstruction")
    assert len(_tree(tmp_path / "ray", "reconstruction")) == 70
    scores = [json.loads(line)["score"] for line in (tmp_path / "ray" / "frames.jsonl").read_text().splitlines()]
    assert scores == [json.loads(line)["score"] for line in (tmp_path / "one" / "frames.jsonl").read_text().splitlines()]
