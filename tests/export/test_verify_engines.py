"""`edgeseg verify --engine/--precision`: the deployed engine's own tensors, judged per precision, planted defects named."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseg.cli import main

ENGINES = [("onnxruntime", []), ("openvino", ["--precision", "fp32"])]


@pytest.fixture(scope="module")
def files(model_files, exports, tmp_path_factory):
    """The mini FCN-8 exported, its INT8 file (8 scenes, no accuracy control), and 2 scenes to verify on."""
    from edgeseg.calibration import CalibrateOptions, calibrate
    from edgeseg.sampledata import make_scene_set

    folder = tmp_path_factory.mktemp("engines")
    make_scene_set(folder / "scenes" / "images", folder / "scenes" / "masks", count=8, size=48, classes=2, seed=3)
    make_scene_set(folder / "verify" / "images", folder / "verify" / "masks", count=2, size=48, classes=2, seed=4)
    fp32, int8 = exports["fcn8"], folder / "fcn8.int8.onnx"
    calibrate(fp32, folder / "scenes" / "images", output=int8,
              options=CalibrateOptions(samples=8, timing_rounds=1, sqnr_frames=1))
    return {"keras": model_files["fcn8"], "fp32": fp32, "int8": int8, "images": folder / "verify" / "images"}


def _verify(files, onnx_path, report, *extra):
    code = main(["verify", str(files["keras"]), str(onnx_path), "--images", str(files["images"]), "--report",
                 str(report), *extra])
    return code, json.loads(report.read_text())


def _edit(source, target, edit):
    proto = onnx.load(str(source))
    edit(proto)
    onnx.save(proto, str(target))
    return target


def _scale(proto, name, factor):
    init = next(i for i in proto.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * factor).astype(np.float32), name))


def _weight_of(layer):
    def edit(proto):  # one convolution's kernel x 1.01: a 1% error, far above fp32 rounding
        conv = next(n for n in proto.graph.node if n.op_type == "Conv" and f"/{layer}" in n.name)
        _scale(proto, conv.input[1], 1.01)
    return edit


def _activation_scale_of(layer):
    def edit(proto):  # the layer's output quantizer: scale / 10, so 90% of its range clips
        inits = {i.name for i in proto.graph.initializer}
        quant = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
                     and f"/{layer}" in n.input[0])
        _scale(proto, quant.input[1], 0.1)  # the scale Q and DQ share
    return edit


@pytest.mark.parametrize("engine, extra", ENGINES, ids=[e for e, _ in ENGINES])
def test_a_weight_scaled_by_1_01_is_the_first_divergence_on_each_engine(files, tmp_path, engine, extra):
    broken = _edit(files["fp32"], tmp_path / "w.onnx", _weight_of("block2_conv1"))
    code, report = _verify(files, broken, tmp_path / "r.json", "--engine", engine, *extra)
    assert code == 1 and report["first_failure"] == "block2_conv1"
    assert [layer["ok"] for layer in report["layers"][:2]] == [True, True]  # block1_conv1, block1_pool: untouched
    assert report["engine"]["engine"] == engine and report["engine"]["precision"] == "fp32"
    assert report["bar"] == {"precision": "fp32", "rule": "max_abs_err <= tolerance x max(peak |reference|, floor)",
                             "tolerance": 1e-4, "floor": float(np.finfo(np.float32).tiny), "min_sqnr_db": None}
    assert report["instrumentation"]["same_as_deployed"] is True
    assert report["ranked"][0]["ok"] is False  # worst first


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_int8_passes_its_sqnr_bar_and_a_corrupted_scale_is_named(files, tmp_path, engine):
    code, report = _verify(files, files["int8"], tmp_path / "ok.json", "--engine", engine)
    assert code == 0, report["first_failure"]
    # precision auto: an INT8 file is int8; the bar is SQNR, and every layer was read from the engine itself
    assert report["engine"]["precision"].startswith("int8") and report["bar"]["min_sqnr_db"] == 20.0
    assert report["engine"]["device"].lower() == "cpu" and "precision auto: an INT8 file" in report["engine"]["why"]
    assert min(layer["sqnr_db"] for layer in report["layers"]) >= 20.0
    assert report["instrumentation"]["same_as_deployed"] is True

    broken = _edit(files["int8"], tmp_path / "q.onnx", _activation_scale_of("block2_conv1"))
    code, report = _verify(files, broken, tmp_path / "bad.json", "--engine", engine)
    assert code == 1 and report["first_failure"] == "block2_conv1"
    failed = {entry["name"] for entry in report["ranked"] if not entry["ok"]}
    assert "block2_conv1" in failed and all(entry["ok"] for entry in report["ranked"][len(failed):])


def test_the_sqnr_bar_is_set_per_precision(files, tmp_path, caplog):
    code, report = _verify(files, files["int8"], tmp_path / "r.json", "--engine", "onnxruntime", "--sqnr-int8", "199",
                           "--tolerance", "0.5")
    assert code == 1 and report["bar"]["min_sqnr_db"] == 199.0 and report["first_failure"] == "block1_conv1"
    assert report["bar"]["rule"] == "sqnr_db >= min_sqnr_db" and report["bar"]["tolerance"] is None
    # --tolerance is the fp32 rule's: at int8 it is not silently dropped but said to be unused
    assert any("--tolerance applies" in r.getMessage() and "--sqnr-int8" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("extra, expected", [
    (["--engine", "onnxruntime", "--precision", "bf16"], "does not run bf16"),
    (["--engine", "openvino", "--precision", "int8"], "needs an INT8 file"),
    (["--engine", "onnxruntime", "--precision", "fp16"], "needs a GPU"),
    (["--engine", "tensorrt", "--precision", "fp16"], "engine tensorrt needs an NVIDIA GPU"),
])
def test_what_an_engine_cannot_run_here_is_refused_in_one_line(files, tmp_path, capsys, extra, expected):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the refusals below are for machines without it")
    code, report = _verify(files, files["fp32"], tmp_path / "r.json", *extra)
    err = capsys.readouterr().err
    assert code == 2 and report["exit_code"] == 2 and expected in report["error"]
    assert err.count("\n") == 1 and expected in err
