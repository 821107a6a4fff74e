"""`--precision fp16` on segment, bench and tune: the GPU path, refused in one line where onnxruntime has no CUDA."""

from __future__ import annotations

import onnxruntime
import pytest

from edgeseg.cli import main

pytestmark = pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                                reason="this onnxruntime has CUDA: fp16 runs here (benchmarks/gpu_check.sh checks it)")


@pytest.mark.parametrize("command", [
    ["bench", "--model", "samples/models/fcn8/model.onnx", "--source", "samples/scenes.avi", "--json", "b.json",
     "--precision", "fp16"],
    ["tune", "samples/models/fcn8/model.onnx", "--precision", "fp16"],
    ["segment", "samples/scenes.avi", "--model", "samples/models/fcn8/model.onnx", "--out", "out", "--precision", "fp16"],
    ["segment", "samples/scenes.avi", "--model", "samples/models/fcn8/model.onnx", "--out", "out", "--precision", "fp16",
     "--provider", "tensorrt"],
])
def test_fp16_without_cuda_is_one_line_and_exit_2(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    command = [str(root / a) if a.startswith("samples/") else a for a in command]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fp16 on an NVIDIA GPU" in err and "edgeseg[gpu]" in err
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "out").exists()  # refused before anything is made


def test_the_fp16_runner_and_candidates_exist_for_gpus():
    from edgeseg.bench._bench import DEFAULT_RUNNERS, RUNNERS
    from edgeseg.runtime import EngineConfig

    assert "edgeseg-fp16" in RUNNERS and "edgeseg-fp16" not in DEFAULT_RUNNERS["segmentation"]  # GPU only, on request
    assert EngineConfig("onnxruntime", "fp16").describe().startswith("onnxruntime fp16")
