"""The front door: `--help` loads nothing heavy, the runtime's lazy face keeps its names, one table of extras."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import edgeseg.runtime
from edgeseg.runtime.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("cv2", "numpy", "onnxruntime", "openvino", "tensorflow", "onnx", "tqdm")


def test_help_of_every_command_loads_no_heavy_module():
    # One process for all the help pages: main() exits through SystemExit after printing each.
    code = (
        "import sys, json\n"
        "from edgeseg.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "commands = [a for a in parser._actions if a.__class__.__name__ == '_SubParsersAction'][0].choices\n"
        "for argv in [['--help'], *[[c, '--help'] for c in commands]]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps({{'commands': sorted(commands), 'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"segment", "export", "calibrate", "bench", "tune", "demo"} <= set(seen["commands"])
    assert seen["heavy"] == [], f"`edgeseg --help` loaded {seen['heavy']}"


def test_every_public_runtime_name_resolves_and_star_import_works():
    names = edgeseg.runtime.__all__
    assert len(names) == len(set(names)) and {"Model", "segment", "Contract", "ModelFile", "ENGINES"} <= set(names)
    for name in names:
        assert getattr(edgeseg.runtime, name) is not None, name
    scope: dict = {}
    exec("from edgeseg.runtime import *", scope)
    assert set(names) <= set(scope)
    assert callable(edgeseg.runtime.postprocess.class_ids)  # the public modules, as attributes


def test_the_extras_table_is_pyprojects():
    # Every install hint comes from EXTRAS: it must name the extras pyproject.toml defines, bringing those packages.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(extras) - {"dev"}
    module_of = {"tensorflow-cpu": "tensorflow", "onnxruntime-gpu": "onnxruntime", "imageio-ffmpeg": "imageio_ffmpeg",
                 "paho-mqtt": "paho", "pyyaml": "yaml",
                 "protobuf": None}  # protobuf comes with onnx and TensorFlow; no command needs it alone
    for name, requirements in extras.items():
        if name == "dev":
            continue
        for requirement in requirements:
            package = re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0]
            module = module_of.get(package, package.replace("-", "_"))
            assert module is None or module in EXTRAS[name].modules, f"[{name}] brings {package}: not in EXTRAS"
