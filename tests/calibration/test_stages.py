"""What calibrate keeps and writes: every contract field, JPEG 0/255 masks, the TensorRT table, progress, --help."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.calibration import CalibrateOptions, QuantizeOptions, calibrate
from edgeseg.calibration._data import load_calibration_set
from edgeseg.calibration._quantize import (RangeCollector, preprocess_for_quantization, read_trt_table, trt_amax,
                                           write_trt_table)
from edgeseg.runtime import default_threads
from edgeseg.runtime.contract import Contract, InputSpec, OutputSpec, write_contract
from edgeseg.runtime.errors import EdgesegError

CAE = Path(__file__).resolve().parents[2] / "samples" / "models" / "cae" / "model.onnx"
FAST = CalibrateOptions(timing_rounds=1, sqnr_frames=1)


def _without_calibration(path) -> dict:
    data = Contract.from_onnx(path).to_dict()
    data.pop("calibration", None)
    return data


# ------------------------------------------------------------------ refused frames


def test_frames_all_refused_say_why_not_that_there_were_none(kit, tmp_path, seg_model):
    kit.write_frames(tmp_path / "i", 3, masks=tmp_path / "m")
    for mask in (tmp_path / "m").iterdir():  # masks half the size of their images
        cv2.imwrite(str(mask), np.zeros((24, 24), np.uint8))
    with pytest.raises(EdgesegError) as refused:
        calibrate(seg_model, tmp_path / "i", masks=tmp_path / "m", output=tmp_path / "q.onnx", options=FAST)
    message = str(refused.value)
    assert "all 3 read were refused" in message and "24x24" in message and "expected images" not in message


# ------------------------------------------------------------------ the contract survives


def test_calibrating_the_committed_cae_keeps_every_contract_field(kit, tmp_path):
    frames = kit.write_frames(tmp_path / "f", 4, size=28)
    out = tmp_path / "cae.int8.onnx"
    report = calibrate(CAE, frames, output=out, options=replace(FAST, samples=4))
    before = _without_calibration(CAE)
    assert before["latent"] == {"latent_size": 2, "shape": [1, 1, 2]}
    assert _without_calibration(out) == before
    assert Contract.from_onnx(out).calibration["samples"] == 4
    assert report["reconstruction_mse"]["fp32"] > 0


def _encoder_half(path: Path) -> Path:
    """Gray 16x16 image -> Conv(stride 2)+Relu -> GlobalAveragePool -> Flatten: a 4-number code."""
    weight = numpy_helper.from_array(np.random.default_rng(2).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["image"], ["x"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="encode"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["latent"], name="flatten"),
    ]
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 16, 16, 1])],
                              [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["N", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_contract(model, Contract(kind="encoder", input=InputSpec(height=16, width=16, channels=1, color="GRAY"),
                                   output=OutputSpec(name="latent"), source={"keras": "3", "batch": "dynamic"},
                                   verified={"max_abs_diff": 1e-6}, latent={"latent_size": 4, "shape": [4]}))
    onnx.save(model, str(path))
    return path


def test_an_encoder_half_keeps_its_latent_and_a_decoder_half_is_refused(kit, tmp_path):
    encoder = _encoder_half(tmp_path / "encoder.onnx")
    frames = kit.write_frames(tmp_path / "f", 4, size=16)
    report = calibrate(encoder, frames, output=tmp_path / "e8.onnx", options=FAST)
    assert _without_calibration(tmp_path / "e8.onnx") == _without_calibration(encoder)
    assert Contract.from_onnx(tmp_path / "e8.onnx").latent == {"latent_size": 4, "shape": [4]}
    mse = report["reconstruction_mse"]  # a code has no input to match: FP32-vs-INT8 error over its power
    assert set(mse) == {"fp32_vs_int8", "fp32_power"} and mse["fp32_vs_int8"] < 0.05 * mse["fp32_power"]
    model = onnx.load(str(encoder))
    write_contract(model, Contract.from_onnx(encoder).replace(kind="decoder"))
    onnx.save(model, str(tmp_path / "decoder.onnx"))
    with pytest.raises(EdgesegError, match="decoder half"):
        calibrate(tmp_path / "decoder.onnx", frames, output=tmp_path / "d8.onnx", options=FAST)


# ------------------------------------------------------------------ the TensorRT table


def test_trt_table_holds_symmetric_amax_even_for_a_larger_negative_end(tmp_path):
    ranges = {"neg": (-51.3, 30.8), "pos": (-0.5, 2.0), "relu": (0.0, 7.25), "flat": (0.0, 0.0)}
    files = write_trt_table(ranges, tmp_path / "trt")
    assert [Path(f).name for f in files] == ["calibration.cache", "calibration.flatbuffers", "calibration.json"]
    assert read_trt_table(tmp_path / "trt") == {"neg": 51.3, "pos": 2.0, "relu": 7.25, "flat": 0.0}
    text = dict(line.split(" ") for line in (tmp_path / "trt" / "calibration.cache").read_text().splitlines())
    assert {k: float(v) for k, v in text.items()} == read_trt_table(tmp_path / "trt")
    assert json.loads((tmp_path / "trt" / "calibration.json").read_text())["neg"] == {
        "lowest": -51.3, "highest": 30.8, "amax": 51.3}


def test_trt_table_from_calibrate_matches_the_calibrated_ranges(kit, tmp_path, seg_model):
    frames = kit.write_frames(tmp_path / "f", 6)
    calibrate(seg_model, frames, output=tmp_path / "q.onnx", options=replace(FAST, trt_table=tmp_path / "trt"))
    table = read_trt_table(tmp_path / "trt")
    # The same ranges, collected independently (minmax is exact and chunk-independent).
    prepared = tmp_path / "p.onnx"
    preprocess_for_quantization(seg_model, prepared)
    with load_calibration_set(frames, Contract.from_onnx(seg_model)) as data:
        collector = RangeCollector(prepared, tmp_path, QuantizeOptions())
        for _, batch in data.chunks(8):
            collector.add("image", batch)
        ranges = collector.save(tmp_path / "ranges.json")
    expected = {name: (float(ranges[name].range_value[0][0]), float(ranges[name].range_value[1][0]))
                for name in ranges.keys()}
    assert set(table) == set(expected)
    negative = [name for name, (lo, hi) in expected.items() if -lo > hi]
    assert negative, "the tiny model must have a tensor whose negative end is larger for this test to mean anything"
    for name, (lo, hi) in expected.items():
        assert table[name] == pytest.approx(trt_amax(lo, hi), rel=1e-6)
        assert table[name] >= max(lo, hi)
    assert all(table[name] > max(expected[name]) for name in negative)  # where max(highest, lowest) was wrong


# ------------------------------------------------------------------ progress and --help


def test_progress_bar_goes_to_stderr_only_when_asked(kit, tmp_path, seg_model, capsys, monkeypatch):
    frames = kit.write_frames(tmp_path / "f", 4)
    calibrate(seg_model, frames, output=tmp_path / "q0.onnx", options=replace(FAST, progress=True))
    assert capsys.readouterr().err == ""  # stderr is no terminal here: no bar drawn into it (and under 15 s no line)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the bar
    calibrate(seg_model, frames, output=tmp_path / "q.onnx", options=replace(FAST, progress=True))
    shown = capsys.readouterr()
    assert "reading frames" in shown.err and "writing the INT8 model" in shown.err and shown.out == ""
    assert "9/9" in shown.err  # every stage counted: the bar ends full
    calibrate(seg_model, frames, output=tmp_path / "q2.onnx", options=FAST)
    assert capsys.readouterr().err == ""


def test_help_states_the_real_default_threads_and_the_trt_format():
    from edgeseg.cli import build_parser

    calibrate_parser = build_parser()._subparsers._group_actions[0].choices["calibrate"]
    text = " ".join(calibrate_parser.format_help().split())
    assert "--no-progress" in text
    assert "every core on machines with 2 cores or fewer, else all but one" in text
    cores = len(os.sched_getaffinity(0))
    assert default_threads() == (cores if cores <= 2 else cores - 1)  # the rule the help states
    assert re.search(r"TensorRT execution provider INT8 calibration table: calibration\.flatbuffers", text)
    assert "amax = max(|lowest|, |highest|)" in text
