import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.cli import build_parser, missing_extra_message

ROOT = Path(__file__).resolve().parents[2]


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_option_of_every_command_has_help_text():
    parser = build_parser()
    commands = _subcommands(parser)
    for name, sub in {"edgeseg": parser, **commands}.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"`edgeseg {name}`: option {action.option_strings or action.dest} has no help text"


def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "edgeseg", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("edgeseg ")


def test_unknown_command_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "edgeseg", "no-such-command"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def _without(tmp_path, *modules):
    # A sitecustomize that blocks imports of `modules`, as on a machine without that extra installed.
    folder = tmp_path / "hide"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {**__import__("os").environ, "PYTHONPATH": str(folder)}


@pytest.mark.parametrize("command, hidden, extra", [
    (["export", "samples/models/fcn8/model.keras", "-o", "m.onnx"], ("tensorflow", "keras", "tf2onnx"), "export"),
    (["calibrate", "samples/models/fcn8/model.onnx", "--data", "samples/folder", "-o", "x.int8.onnx"], ("onnx",),
     "calibrate"),
    # A runtime-only install (`pip install '.[cpu]'`): what a stranger met first.
    (["demo", "--quick", "--out", "out"], ("tensorflow", "keras", "tf2onnx", "onnx", "matplotlib"),
     "export,calibrate,bench"),
    (["samples", "--out", "out"], ("tensorflow", "keras", "tf2onnx", "onnx", "matplotlib"), "export,calibrate"),
    (["bench", "--model", "samples/models/fcn8/model.onnx", "--source", "samples/folder", "--json", "b.json"],
     ("onnx",), "bench"),
    # A runtime-only install: exit 2 naming the extra, not exit 3 "a bug in edgeseg verify" (issue 24).
    (["verify", "samples/models/fcn8/model.keras", "samples/models/fcn8/model.onnx"], ("tensorflow", "keras", "tf2onnx"),
     "export"),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, command, hidden, extra):
    command = [str(tmp_path / arg) if arg in ("out", "b.json") or (arg.endswith(".onnx") and "/" not in arg) else arg
               for arg in command]
    out = subprocess.run([sys.executable, "-m", "edgeseg", *command], capture_output=True, text=True,
                         env=_without(tmp_path, *hidden), cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], out.stderr  # one line, before anything starts
    assert f"pip install 'edgeseg[{extra}]'" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing was made: no empty report folder


def test_missing_extra_message_names_package_and_extra():
    # The extra the command installs anyway when it brings the package (bench brings OpenVINO), else the one that does.
    message = missing_extra_message("bench", ModuleNotFoundError("no", name="openvino.runtime"))
    assert "`openvino`" in message and "edgeseg[bench]" in message
    assert "edgeseg[openvino]" in missing_extra_message("segment", ModuleNotFoundError("no", name="openvino"))
    # A package no extra names (a dependency of one): the command's own extras.
    assert "edgeseg[cpu,bench]" in missing_extra_message("bench", ModuleNotFoundError("no", name="somethingelse"))
    assert "reinstall edgeseg" in missing_extra_message("segment", ModuleNotFoundError("no", name="numpy"))


def test_every_help_page_formats_cleanly():
    # argparse %-formats help strings but not descriptions: a stray `%%` or a printed dict means a garbled page.
    parser = build_parser()
    for name, sub in {"edgeseg": parser, **_subcommands(parser)}.items():
        text = sub.format_help()
        assert "%%" not in text and "{'" not in text and "%(" not in text, f"`edgeseg {name} --help` is garbled"
