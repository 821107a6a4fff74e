"""The layers of DESIGN.md, checked by import-linter on the installed code (contracts in pyproject.toml).

The repository keeps runtime/, export/ and calibration/ at the top but installs them under the
``edgeseg`` package; an editable install maps them there without moving files, which import-linter
cannot follow. So the test copies the installed package, as Python resolves it, into one tree first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("runtime", "export", "calibration")


def _package_tree(target: Path) -> Path:
    def folder(name: str) -> Path:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, name
        return Path(list(spec.submodule_search_locations)[0])

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    tree = target / "edgeseg"
    shutil.copytree(folder("edgeseg"), tree, ignore=ignore)
    for sub in SUBPACKAGES:
        if not (tree / sub).is_dir():
            shutil.copytree(folder(f"edgeseg.{sub}"), tree / sub, ignore=ignore)
    return target


def test_import_linter_contracts_hold(tmp_path):
    tree = _package_tree(tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    report = done.stdout + done.stderr
    assert "Contracts: " in report, report[-3000:]
    assert done.returncode == 0, report[-3000:]
    assert " BROKEN" not in report and "0 broken" in report, report[-3000:]


@pytest.mark.parametrize("forbidden", ["tensorflow", "edgeseg.export", "edgeseg.serve"])
def test_the_linter_catches_a_broken_layer(tmp_path, forbidden):
    # The contracts are only worth something if a violation fails them: plant one and expect a failure.
    tree = _package_tree(tmp_path / "src")
    (tree / "edgeseg" / "runtime" / "_planted.py").write_text(f"import {forbidden}\n")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "edgeseg.runtime._planted" in done.stdout + done.stderr


def _package_of(module: str) -> str:
    # edgeseg.runtime._model -> edgeseg.runtime; edgeseg.cli -> edgeseg; edgeseg.bench._bench -> edgeseg.bench
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and not parts[1].startswith("_")
                                                       and parts[1] not in ("cli",)) else parts[0]


def test_no_module_imports_another_packages_private_module(tmp_path):
    # Packages talk through public names (``edgeseg.runtime``, ``edgeseg.runtime.contract``, ...), never
    # through another package's ``_private`` modules: those may change without notice.
    tree = _package_tree(tmp_path / "src")
    code = (
        "import grimp, json\n"
        "graph = grimp.build_graph('edgeseg', cache_dir=None)\n"
        "out = []\n"
        "for importer in graph.modules:\n"
        "    for imported in graph.find_modules_directly_imported_by(importer):\n"
        "        out.append((importer, imported))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    edges = json.loads(done.stdout)
    assert len(edges) > 50  # the graph really was built
    leaks = [(a, b) for a, b in edges if b.startswith("edgeseg.") and _package_of(a) != _package_of(b)
             and any(part.startswith("_") for part in b.split(".")[2:])]
    assert not leaks, leaks
