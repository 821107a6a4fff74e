"""The layers of docs/architecture.md, checked by import-linter (contracts in pyproject.toml).

The repository keeps runtime/, export/ and calibration/ at the top and installs them under the
``edgeseg`` package; in a checkout, the symlinks edgeseg/runtime, edgeseg/export and edgeseg/calibration
make the folder that package, so ``lint-imports`` runs on a clone as it is (after ``pip install -e``).
The tests that plant a violation copy the package, as Python resolves it, into a tree of their own.
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


def test_import_linter_contracts_hold_on_the_checkout_as_it_is():
    # What a contributor runs after `pip install -e '.[dev]'`: lint-imports in the clone, no copy of anything.
    for sub in SUBPACKAGES:
        assert (ROOT / "edgeseg" / sub).resolve() == (ROOT / sub).resolve(), f"edgeseg/{sub} must lead to {sub}/"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
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


# -- imports by name at run time: a layer rule routed around is still broken ----------------------------------


def _contracts() -> dict[str, list[str]]:
    """Each package's forbidden modules, from pyproject.toml's import-linter contracts (the one list)."""
    import tomllib

    forbidden: dict[str, list[str]] = {}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    for contract in config:
        if contract["type"] == "forbidden":
            for source in contract["source_modules"]:
                forbidden.setdefault(source, []).extend(contract["forbidden_modules"])
        elif contract["type"] == "independence":
            for module in contract["modules"]:
                forbidden.setdefault(module, []).extend(m for m in contract["modules"] if m != module)
    return forbidden


# The runtime's one import-by-name mechanism for optional dependencies (edgeseg.runtime.extras.require): its own
# table names every extra's modules (for install hints), so the module itself is not read as importing them; each
# call of require() anywhere is checked instead.
_MECHANISM = "extras.py"
# Modules that import a name the user typed, by design: export's --custom-objects imports the user's own module
# (which refuses edgeseg's modules, so it cannot reach what export's contract forbids). Nothing else may.
_USER_MODULES = {("export", "_keras_file.py")}


def dynamic_import_violations(folder: Path, package: str, forbidden: list[str]) -> list[str]:
    """Where a module of ``folder`` imports by name (importlib.import_module, __import__, extras.require)
    something its contract forbids, or a name computed at run time that no literal table in the module states.

    import-linter reads import statements only; this closes the way around it. A module that imports by name
    may do so from a literal table (a lazy package face: name -> module); every module name it states must be
    allowed.
    """
    import ast
    import re

    dotted = re.compile(r"^[A-Za-z_]\w*(\.\w+)*$")
    problems = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Attribute) and node.func.attr in ("import_module", "require"))
            or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__", "require")))]
        if not calls:
            continue
        mechanism = path.name == _MECHANISM and path.parent == folder
        user_module = (folder.name, path.relative_to(folder).as_posix()) in _USER_MODULES
        stated = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and dotted.match(node.value)]
        if mechanism:  # only what it is asked to import by name in its own calls
            stated = [c.args[0].value for c in calls if c.args and isinstance(c.args[0], ast.Constant)]
        for name in stated:
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                problems.append(f"{path.relative_to(folder)}: imports `{name}` by name ({package} must not)")
        tables = any(isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict)
                     and all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in node.value.values)
                     for node in tree.body)
        for call in calls:
            argument = call.args[0] if call.args else None
            literal = isinstance(argument, ast.Constant) or (
                isinstance(argument, ast.JoinedStr) and isinstance(argument.values[0], ast.Constant)
                and argument.values[0].value.startswith(package + "."))
            if not literal and not tables and not mechanism and not user_module:
                problems.append(f"{path.relative_to(folder)}:{call.lineno}: imports a name computed at run time")
    return problems


def test_no_package_imports_by_name_what_its_layer_forbids():
    contracts = _contracts()
    for package, folder in (("edgeseg.runtime", "runtime"), ("edgeseg.export", "export"),
                            ("edgeseg.calibration", "calibration")):
        assert contracts[package], package
        assert dynamic_import_violations(ROOT / folder, package, contracts[package]) == []


@pytest.mark.parametrize("planted", ['importlib.import_module("edgeseg.scaleout")', 'importlib.import_module("ray")',
                                     '__import__("tensorflow")', "importlib.import_module(os.environ['WHERE'])",
                                     'require("ray", purpose="a reach up")'])
def test_a_planted_import_by_name_is_caught(tmp_path, planted):
    folder = tmp_path / "runtime"
    shutil.copytree(ROOT / "runtime", folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "_planted.py").write_text("import importlib\nimport os\n\nfrom edgeseg.runtime.extras import require\n\n\n"
                                        f"def reach_up():\n    return {planted}\n")
    problems = dynamic_import_violations(folder, "edgeseg.runtime", _contracts()["edgeseg.runtime"])
    assert problems and all("_planted.py" in p for p in problems), problems


def test_the_records_page_is_made_from_the_schema():
    from edgeseg.runtime import records

    assert (ROOT / "docs" / "records.md").read_text(encoding="utf-8") == records.documentation(), \
        "docs/records.md is stale: regenerate it with the command at its top"


def test_readme_layout_names_every_module():
    # README "Layout" is where a newcomer finds the room a change belongs in: it must not fall behind the tree.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):text.index("## ", text.index("## Layout") + 3)]
    missing = [f"{folder}/{path.relative_to(ROOT / folder).as_posix()}"
               for folder in ("edgeseg", "runtime", "export", "calibration")
               for path in sorted((ROOT / folder).rglob("*.py"))
               if path.name != "__init__.py" and path.name not in layout]
    assert not missing, f"README Layout does not name: {', '.join(missing)}"
