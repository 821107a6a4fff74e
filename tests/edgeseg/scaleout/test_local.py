"""``--ray local`` from the command line, as a user runs it in a pipeline: its own Ray, plain piped output.

A cluster is already running on this machine (the package's) and ``RAY_ADDRESS`` names it: ``local``
must start a Ray of its own all the same, and say so. stderr is a pipe: progress comes as log lines,
and neither Ray's token-authentication notice nor a colour code reaches it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from edgeseg.runtime import Model, segment


def test_ray_local_starts_its_own_ray_beside_a_running_cluster_and_pipes_plain_lines(cluster, inputs, check, tmp_path):
    video, _ = inputs
    env = {**os.environ, "RAY_ADDRESS": cluster.gcs}
    done = subprocess.run([sys.executable, "-m", "edgeseg", "segment", str(video), "--model", check.model, "--out",
                           str(tmp_path / "out"), "--ray", "local", "--workers", "1", "--write", "masks,jsonl"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ray"]["started_here"] and summary["ray"]["cluster"] not in ("", cluster.gcs)
    assert "Ray: started a local instance for this job" in done.stderr
    # Piped: the runtime's Progress writes log lines (every 10 s), never a bar's carriage returns; the end says it all.
    assert "\r" not in done.stderr and f"{check.frames} frame(s) done, 0 failed" in done.stderr
    assert "\x1b[" not in done.stderr + done.stdout and "Token authentication" not in done.stderr
    assert len(check.tree(tmp_path / "out", "masks")) == check.frames


def test_a_source_named_with_bytes_that_are_not_utf8_runs_on_ray_as_on_one_machine(cluster, inputs, check, tmp_path):
    # Python holds byte 0xff of argv as a lone surrogate; Ray names its job after the command line and hands that to
    # its C++ core as UTF-8, which stopped ray.init with a UnicodeEncodeError traceback. The file's own bytes go on.
    video, images = inputs
    odd_video = os.fsencode(tmp_path) + b"/clip\xff.avi"
    odd_images = os.fsencode(tmp_path) + b"/imgs\xfe"
    os.link(video, odd_video)
    os.mkdir(odd_images)
    for path in [p for p in sorted(images.glob("*.png")) if p.stem != "bad"][:3]:
        os.link(path, odd_images + b"/" + os.fsencode(path.stem) + b"\xff.png")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "edgeseg", "segment", odd_video, odd_images, "--model", check.model,
                           "--out", "ray", "--ray", cluster.gcs, "--workers", "2", "--range-frames", "10",
                           "--no-progress"], env=env, cwd=tmp_path, capture_output=True, timeout=300)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    segment([os.fsdecode(odd_video), os.fsdecode(odd_images)], model=Model(check.model, threads=1), out=tmp_path / "one")
    ours, theirs = (check.tree(tmp_path / "ray" / name, "masks") for name in ("clip\\xff", "imgs\\xfe")), \
        (check.tree(tmp_path / "one" / name, "masks") for name in ("clip\\xff", "imgs\\xfe"))
    for mine, reference, frames in zip(ours, theirs, (check.frames, 3)):
        assert mine == reference and len(mine) == frames
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["frames"] == check.frames + 3 and summary["frames_failed"] == 0
