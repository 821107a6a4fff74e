"""The Dockerfile's steps, run in a fresh venv (no image can be built on this machine: no container daemon).

The test reads the Dockerfile itself: the build stage's COPY lines give the source tree, its RUN lines
the venv and the pip install, the final stage's ENTRYPOINT and CMD the command (with the image's paths
mapped onto the repository and ``--port 0``). So a dependency missing from the runtime-only install plus
the serve extra, or a COPY that forgets a package, fails here. ~20 s: a real pip install into a new venv.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


@pytest.mark.slow
def test_the_dockerfile_steps_install_a_runtime_only_server_that_serves(tmp_path, serve_process):
    build, final = _stages((ROOT / "Dockerfile").read_text())
    assert ("USER", "edgeseg") in final and ("USER", "root") not in final  # the server never runs as root
    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    for word, rest in build:
        if word == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                (shutil.copytree if (ROOT / source).is_dir() else shutil.copy2)(ROOT / source, src / source)
        elif word == "RUN":
            command = shlex.split(rest.replace("/opt/edgeseg", str(venv)))
            # The image's `python` and `pip` are this interpreter's: the same commands, run here.
            command = ([sys.executable, "-m", "pip", *command[1:]] if command[0] == "pip" else
                       [sys.executable if part == "python" else part for part in command])
            done = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    python = venv / "bin" / "python"
    absent = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in ('tensorflow', 'keras', "
                             "'ray', 'onnx', 'tritonclient', 'imageio_ffmpeg') if u.find_spec(m)])"],
                            capture_output=True, text=True, check=True)
    assert absent.stdout.strip() == "[]"  # the runtime-only install: no training, cluster or test packages

    # The image's files (COPY into the final stage) are the repository's; the port is any free one.
    copied = {rest.split()[-1]: str(ROOT / rest.split()[0]) for word, rest in final
              if word == "COPY" and not rest.startswith("--from")}
    entrypoint = json.loads(dict(final)["ENTRYPOINT"])
    command = [copied.get(part, part) for part in json.loads(dict(final)["CMD"])]
    assert entrypoint[:2] == ["edgeseg", "serve"] and Path(command[0]).is_file()
    options = " ".join(entrypoint[2:]).replace("--port 8000", "").replace("--host 0.0.0.0", "").split()
    server = serve_process([*options, *command], python=str(python))
    with urllib.request.urlopen(server.url + "v2/health/ready", timeout=30) as response:
        assert json.loads(response.read()) == {"ready": True}
    image = (ROOT / "samples" / "folder" / "scene_000.png").read_bytes()
    request = urllib.request.Request(server.url + "v1/models/fcn8/segment", data=image, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert answer["width"] == 96 and set(answer["class_fraction"]) == {"background", "class1", "class2"}
