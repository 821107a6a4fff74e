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
