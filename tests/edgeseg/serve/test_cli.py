"""``edgeseg serve``'s user errors: one line, exit 2, before anything listens."""

from __future__ import annotations

import pytest

from edgeseg.cli import main
from edgeseg.serve import parse_models


@pytest.mark.parametrize("args, words", [
    (["missing.onnx"], "model `missing.onnx`: no such file"),
    (["{model}", "--max-batch", "0"], "--max-batch must be >= 1, got 0"),
    (["a={model}", "a={model}"], "two models are named 'a'"),
    (["bad name={model}"], "cannot be used in a URL"),
    (["{model}", "--token", "x", "--token-file", "t.txt"], "--token and --token-file both given"),
    (["{model}", "--token-file", "missing.txt"], "--token-file `missing.txt`: cannot read it"),
    (["{model}", "--tls-cert", "c.pem"], "TLS needs both --tls-cert and --tls-key"),
    (["{model}", "--ray", "local", "--replicas", "0"], "--replicas must be >= 1"),
])
def test_bad_options_are_one_line_and_exit_2(serve_models, capsys, args, words):
    code = main(["serve", *[a.format(model=serve_models["tiny"]) for a in args], "--port", "0"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and words in error and "\n" not in error and error.startswith("edgeseg serve: error:")


def test_model_names_come_from_name_equals_or_the_file_or_its_folder(serve_models, tmp_path):
    folder = tmp_path / "fcn8"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(serve_models["tiny"].read_bytes())
    specs = parse_models([str(serve_models["tiny"]), str(folder / "model.onnx"), f"b={serve_models['other']}"])
    assert [s.name for s in specs] == ["tiny", "fcn8", "b"]
