"""edgeseg.scaleout on the package's real two-node Ray against the single-machine run.

The reference is the runtime's own ``segment`` on the same inputs; masks must match byte for byte,
overlay.mp4 must hold every frame (counted by decoding it with cv2), frames.jsonl one line per
frame in source order. Every job here is tiny; Ray starts once (conftest.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.runtime import EdgesegError, Model, RunLock, SegmentOptions, read_mask_png, segment
from edgeseg.scaleout import ClusterOptions, segment_on_ray


def _single(check, source, out, **options):
    return segment(str(source), model=Model(check.model, threads=1), out=out, **options)


def _only(summary):
    (report,) = summary["sources"].values()
    return report


def test_folder_equals_single_machine(cluster, inputs, check, tmp_path):
    _, images = inputs
    single = _single(check, images, tmp_path / "one", recursive=True)
    summary = segment_on_ray([str(images)], model=check.model, out=tmp_path / "ray",
                             cluster=ClusterOptions(workers=2, chunk=3), options=SegmentOptions(recursive=True))
    assert check.tree(tmp_path / "ray", "masks") == check.tree(tmp_path / "one", "masks")
    assert len(check.tree(tmp_path / "ray", "masks")) == 7 and "sub/im3.png" in check.tree(tmp_path / "ray", "masks")
    assert check.tree(tmp_path / "ray", "overlay") == check.tree(tmp_path / "one", "overlay")
    assert check.lines(tmp_path / "ray" / "frames.jsonl") == check.lines(tmp_path / "one" / "frames.jsonl")
    assert (summary["frames"], summary["frames_failed"]) == (single["frames"], single["frames_failed"]) == (7, 1)
    assert _only(summary)["units"] == {"planned": 3, "finished": 3} and summary["ray"]["incomplete"] is None
    # Each unit is the runtime's own segment(): its batch rule and reporting, not a copy of them.
    keys = ("batch", "precision", "engine")
    assert [summary[k] for k in keys] == [single[k] for k in keys]
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["workers"] == summary["workers"]


def test_video_split_across_workers_is_one_overlay_with_every_frame(cluster, inputs, check, tmp_path):
    video, _ = inputs
    _single(check, video, tmp_path / "one")
    summary = segment_on_ray([str(video)], model=check.model, out=tmp_path / "ray",
                             cluster=ClusterOptions(workers=2, range_frames=8))
    assert _only(summary)["units"] == {"planned": 4, "finished": 4}
    workers = summary["workers"].values()  # a unit goes to whichever worker is ready first: one may take all
    assert sum(w["frames"] for w in workers) == check.frames and sum(w["units"] for w in workers) == 4
    # Per-worker figures mean what they say: frames over the seconds its units took, inference apart.
    assert all(w["fps"] == pytest.approx(w["frames"] / w["busy_s"], rel=0.01) for w in workers)
    assert all(w["infer_fps"] >= w["fps"] for w in workers)
    assert check.tree(tmp_path / "ray", "masks") == check.tree(tmp_path / "one", "masks")
    assert [i for i, _, _ in check.lines(tmp_path / "ray" / "frames.jsonl")] == list(range(check.frames))
    assert check.video_frames(tmp_path / "ray" / "overlay.mp4") == check.frames
    one = _only(json.loads((tmp_path / "one" / "summary.json").read_text()))
    assert _only(summary)["outputs"]["video_codec"] == one["outputs"]["video_codec"]


def test_smoothing_is_rebuilt_at_range_borders(cluster, inputs, check, tmp_path):
    video, _ = inputs
    _single(check, video, tmp_path / "one", smooth=0.5, outputs=("masks",))
    segment_on_ray([str(video)], model=check.model, out=tmp_path / "ray",
                   cluster=ClusterOptions(workers=2, range_frames=8),
                   options=SegmentOptions(outputs=("masks",), smooth=0.5))
    ours, theirs = check.tree(tmp_path / "ray", "masks"), check.tree(tmp_path / "one", "masks")
    assert ours.keys() == theirs.keys()
    # Each range starts 14 frames early, so what it cannot see weighs 0.5**14 < 1e-4: a pixel may
    # differ only where two classes were that close; in practice none does.
    agreement = np.mean([np.mean(read_mask_png(tmp_path / "ray" / "masks" / n) ==
                                 read_mask_png(tmp_path / "one" / "masks" / n)) for n in ours])
    assert agreement >= 0.999


def test_stop_leaves_valid_outputs_and_resume_completes_them(cluster, inputs, check, tmp_path):
    video, _ = inputs
    _single(check, video, tmp_path / "one")
    out = tmp_path / "ray"
    stop = threading.Event()
    result = {}
    job = threading.Thread(target=lambda: result.update(segment_on_ray(
        [str(video)], model=check.model, out=out, cluster=ClusterOptions(workers=2, range_frames=2), stop=stop)))
    job.start()
    check.first_marker(out, job)
    stop.set()  # what Ctrl-C does: no new units, the workers end theirs, finished ones are joined
    job.join(timeout=300)
    assert result["interrupted"] and _only(result)["units"]["finished"] < 15
    done = result["frames"]
    assert len(check.lines(out / "frames.jsonl")) == done == check.video_frames(out / "overlay.mp4")
    before = {name: (out / "masks" / name).stat().st_mtime_ns for name in check.tree(out, "masks")}
    # The CLI, in-process on the shared Ray: the runtime hands --ray over to edgeseg.scaleout.
    code = main(["segment", str(video), "--model", check.model, "--out", str(out), "--ray", "auto", "--workers", "2",
                 "--resume", "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and summary["ray"]["units_skipped"] == _only(result)["units"]["finished"]
    # Resumed frames are counted apart from this run's work (and its fps).
    assert summary["frames_resumed"] == done and summary["frames"] == check.frames - done
    assert _only(summary)["frames_resumed"] == done and _only(summary)["frames"] == check.frames - done
    assert summary["fps"] == pytest.approx(summary["frames"] / summary["wall_s"], rel=0.01)
    assert all((out / "masks" / name).stat().st_mtime_ns == t for name, t in before.items())  # not redone
    assert check.tree(out, "masks") == check.tree(tmp_path / "one", "masks")
    assert [i for i, _, _ in check.lines(out / "frames.jsonl")] == list(range(check.frames))
    assert check.video_frames(out / "overlay.mp4") == check.frames


def test_cli_with_several_sources_writes_one_folder_each(cluster, inputs, check, tmp_path):
    video, images = inputs
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")  # one bad video of several costs only itself
    code = main(["segment", str(video), str(images), str(broken), "--model", check.model, "--out",
                 str(tmp_path / "job"), "--ray", "auto", "--workers", "2", "--write", "masks,jsonl", "--no-progress"])
    job = json.loads((tmp_path / "job" / "summary.json").read_text())
    # As without Ray: a source that fails costs only itself, and the exit code says one failed.
    assert code == 1 and [s["frames"] for s in job["sources"].values()] == [check.frames, 4, 0]  # no --recursive
    assert job["frames_failed"] == 2 and "broken.mp4" in job["sources"]["broken"]["error"]
    assert job["failed"] == ["broken"] and job["sources"]["clip"]["folder"] == "clip"
    assert len(check.tree(tmp_path / "job" / "clip", "masks")) == check.frames
    assert len(check.tree(tmp_path / "job" / "images", "masks")) == 4
    assert not (tmp_path / "job" / "clip" / "overlay.mp4").exists()  # --write without overlay: none drawn


def test_out_holding_a_run_is_refused_unless_overwrite_as_on_one_machine(cluster, inputs, check, tmp_path):
    _, images = inputs
    out = tmp_path / "ray"
    segment_on_ray([str(images)], model=check.model, out=out, cluster=ClusterOptions(workers=1))
    command = ["segment", str(images), "--model", check.model, "--out", str(out), "--ray", "auto", "--no-progress"]
    assert main(command) == 2  # refused in one line, nothing touched
    with pytest.raises(EdgesegError, match="already holds a run.*--overwrite.*--resume"):
        segment_on_ray([str(images)], model=check.model, out=out, cluster=ClusterOptions(workers=1))
    (out / "masks" / "stale.png").write_bytes(b"from the earlier run")
    (out / "notes.txt").write_text("the user's own file")
    assert main([*command, "--overwrite"]) == 0
    assert sorted(check.tree(out, "masks")) == ["im1.png", "im2.png", "im4.png", "im5.png"]  # the stale mask is gone
    assert (out / "notes.txt").exists()
    # --resume continues only the same job (its identity in .edgeseg/run.json), and a held --out is refused.
    with pytest.raises(EdgesegError, match="--resume: the run in .* had another output options"):
        segment_on_ray([str(images)], model=check.model, out=out, cluster=ClusterOptions(workers=1),
                       options=SegmentOptions(resume=True, outputs=("masks",)))
    with RunLock(out), pytest.raises(EdgesegError, match="is in use by another edgeseg run"):
        segment_on_ray([str(images)], model=check.model, out=out, cluster=ClusterOptions(workers=1),
                       options=SegmentOptions(resume=True))
    # A job stopped before any file was joined leaves only its parts: that folder holds a run too.
    (tmp_path / "parts" / ".scaleout").mkdir(parents=True)
    with pytest.raises(EdgesegError, match="already holds a run"):
        segment_on_ray([str(images)], model=check.model, out=tmp_path / "parts", cluster=ClusterOptions(workers=1))


def test_an_autoencoder_gets_the_runtimes_batch_rule_and_the_same_reconstructions(cluster, check, tmp_path):
    cae = str(Path(check.model).parents[1] / "cae" / "model.onnx")
    digits = np.load(Path(check.model).parents[2] / "digits.npz")["x_test"][:70]
    (tmp_path / "digits").mkdir()
    for i, digit in enumerate(digits):
        cv2.imwrite(str(tmp_path / "digits" / f"{i:03d}.png"), digit)
    single = segment(str(tmp_path / "digits"), model=Model(cae, threads=1), out=tmp_path / "one")
    summary = segment_on_ray([str(tmp_path / "digits")], model=cae, out=tmp_path / "ray",
                             cluster=ClusterOptions(workers=2))  # units of 64 and 6: the single run's batches
    assert summary["batch"] == single["batch"] == 64  # no --batch: the runtime's default for autoencoders
    assert check.tree(tmp_path / "ray", "reconstruction") == check.tree(tmp_path / "one", "reconstruction")
    assert len(check.tree(tmp_path / "ray", "reconstruction")) == 70
    def scores(folder):
        return [json.loads(line)["score"] for line in (folder / "frames.jsonl").read_text().splitlines()]

    assert scores(tmp_path / "ray") == scores(tmp_path / "one")
