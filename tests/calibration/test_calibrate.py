"""calibrate(): every method, the chunked ranges, accuracy control, the report, the refusals, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeseg.calibration import Budget, CalibrateOptions, QuantizeOptions, calibrate, compute_flops, cpu_int8_support
from edgeseg.calibration._data import load_calibration_set
from edgeseg.calibration._quantize import RangeCollector, preprocess_for_quantization
from edgeseg.runtime.contract import Contract
from edgeseg.runtime.errors import EdgesegError

REPORT_FIELDS = {"method", "samples", "fp32", "int8", "miou_drop", "agreement", "speedup", "sqnr_db",
                 "float_nodes", "peak_mb", "warnings", "mean_abs_prob_diff", "layers", "float_compute"}
SIDE_FIELDS = {"miou", "pixel_acc", "per_class_iou", "ms_per_frame", "fps"}

FAST = CalibrateOptions(timing_rounds=1, sqnr_frames=1)


def _ops(path):
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _probabilities(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": batch})[0]


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_every_method_writes_an_int8_model_close_to_fp32_with_its_contract(kit, tmp_path, seg_model, method):
    frames = kit.write_frames(tmp_path / "f", 10, masks=tmp_path / "m")
    out = tmp_path / "int8.onnx"
    report = calibrate(seg_model, frames, output=out, masks=tmp_path / "m", options=CalibrateOptions(
        samples=10, chunk=3, quantize=QuantizeOptions(method=method, percentile=99.9), timing_rounds=2, sqnr_frames=2))
    ops = _ops(out)
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    contract = Contract.from_onnx(onnx.load(str(out)))
    assert contract.kind == "segmentation" and contract.output.classes == ("class0", "class1")
    assert contract.calibration["method"] == method and contract.calibration["samples"] == 10
    assert contract.calibration["float_nodes"] == ["up"]  # the ConvTranspose: no int8 kernel on CPU
    # INT8 of a well-calibrated tiny net agrees with FP32 on almost every pixel (loose: 8-bit noise
    # flips only pixels whose two class probabilities are within a few percent of each other).
    assert report["agreement"] > 0.95 and report["mean_abs_prob_diff"] < 0.05
    assert abs(report["miou_drop"]) < 0.05
    with load_calibration_set(frames, contract, samples=2) as few:
        batch = few.batch(0, 2)
    np.testing.assert_allclose(_probabilities(out, batch), _probabilities(seg_model, batch), atol=0.15)


def test_report_has_the_design_fields_and_is_written(kit, tmp_path, seg_model):
    frames = kit.write_frames(tmp_path / "f", 6, masks=tmp_path / "m")
    report_path, chart = tmp_path / "r.json", tmp_path / "sqnr.png"
    returned = calibrate(seg_model, frames, output=tmp_path / "q.onnx", masks=tmp_path / "m", options=CalibrateOptions(
        report=report_path, chart=chart, trt_table=tmp_path / "trt", timing_rounds=2, sqnr_frames=2))
    report = json.loads(report_path.read_text())
    assert REPORT_FIELDS <= set(report) and report == json.loads(json.dumps(returned))
    assert SIDE_FIELDS <= set(report["fp32"]) and SIDE_FIELDS <= set(report["int8"])
    assert set(report["fp32"]["per_class_iou"]) == {"class0", "class1"}
    assert report["speedup"] == pytest.approx(report["fp32"]["ms_per_frame"] / report["int8"]["ms_per_frame"])
    # Worst first, and both kinds of SQNR present for the convolutions.
    values = list(report["sqnr_db"].values())
    assert values == sorted(values)
    conv1 = next(layer for layer in report["layers"] if layer["name"] == "conv1")
    assert conv1["weights_db"] > 20 and conv1["activation_db"] > 10
    # 6 frames < the minimum: warned; ConvTranspose share of FLOPs named.
    assert any("fewer than 32" in w for w in report["warnings"])
    assert any("ConvTranspose" in w and "14.55%" in w for w in report["warnings"])
    assert report["float_compute"]["nodes"]["up"]["op"] == "ConvTranspose"
    assert report["peak_mb"] > 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.split("/")[-1] for p in report["trt_table"]} >= {"calibration.cache", "calibration.flatbuffers"}


def test_flops_are_counted_from_the_graph_shapes(tmp_path, seg_model):
    prepared = tmp_path / "p.onnx"
    preprocess_for_quantization(seg_model, prepared)
    flops = compute_flops(onnx.load(str(prepared)))
    assert flops["conv1"] == ("Conv", 2 * 8 * 32 * 32 * 3 * 9)
    assert flops["conv2"] == ("Conv", 2 * 8 * 16 * 16 * 8 * 9)
    assert flops["up"] == ("ConvTranspose", 2 * 8 * 16 * 16 * 8 * 4)
    assert flops["score"] == ("Conv", 2 * 2 * 32 * 32 * 8)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_chunked_calibration_matches_one_pass(kit, tmp_path, seg_model, method):
    frames = kit.write_frames(tmp_path / "f", 8)
    prepared = tmp_path / "p.onnx"
    preprocess_for_quantization(seg_model, prepared)
    contract = Contract.from_onnx(onnx.load(str(seg_model)))
    options = QuantizeOptions(method=method)
    results = {}
    with load_calibration_set(frames, contract) as data:
        for chunk in (1, 8):
            (tmp_path / str(chunk)).mkdir()
            collector = RangeCollector(prepared, tmp_path / str(chunk), options)
            for _, batch in data.chunks(chunk):
                collector.add("image", batch)
            assert collector.frames_seen == 8
            results[chunk] = collector.save(tmp_path / f"{chunk}.json")
    ranges1, ranges8 = results[1], results[8]
    assert set(ranges1.keys()) == set(ranges8.keys()) and "c1" in ranges1
    for name in ranges1.keys():
        lo1, hi1 = ranges1[name].range_value
        lo8, hi8 = ranges8[name].range_value
        if method == "minmax":  # running min/max: exactly the one-pass result
            assert (lo1, hi1) == (lo8, hi8)
        else:  # merged histograms re-bin as the range grows: close, not identical
            span = float(hi8 - lo8) or 1.0
            assert abs(float(hi1) - float(hi8)) <= 0.1 * span and abs(float(lo1) - float(lo8)) <= 0.1 * span


def test_accuracy_control_returns_lowest_sqnr_layers_to_float(kit, tmp_path, seg_model):
    frames = kit.write_frames(tmp_path / "f", 8)
    out = tmp_path / "q.onnx"
    report = calibrate(seg_model, frames, output=out,
                       options=CalibrateOptions(budget=Budget(max_drop=0.0), timing_rounds=2, sqnr_frames=2))
    control = report["accuracy_control"]
    assert control["drop_before"] > 0.0, "the tiny model must disagree somewhere for this test to mean anything"
    assert control["returned"] and control["returned"][0] == next(iter(control["steps"]))["returned"]
    assert control["drop_after"] <= control["drop_before"]
    assert control["within_budget"] == (control["drop_after"] <= 0.0)
    assert control["speed_cost"] > 0
    contract = Contract.from_onnx(onnx.load(str(out)))
    assert contract.calibration["excluded_nodes"] == control["returned"]
    # A returned Conv really computes in float: nothing quantizes its output any more.
    first = control["returned"][0]
    assert report["excluded_nodes"] == control["returned"] and first in {layer["name"] for layer in report["layers"]}


def test_float_nodes_and_op_types_stay_float(kit, tmp_path, seg_model):
    frames = kit.write_frames(tmp_path / "f", 6)
    report = calibrate(seg_model, frames, output=tmp_path / "q.onnx", options=CalibrateOptions(
        timing_rounds=1, sqnr_frames=1, quantize=QuantizeOptions(float_nodes=("conv2",), symmetric_activations=True)))
    assert set(report["float_nodes"]) == {"conv2", "up"}
    assert report["float_compute"]["nodes"]["conv2"]["reason"] == "kept in float"
    report = calibrate(seg_model, frames, output=tmp_path / "q2.onnx", options=CalibrateOptions(
        timing_rounds=1, sqnr_frames=1, quantize=QuantizeOptions(float_op_types=("Conv", "ConvTranspose"))))
    assert set(report["float_nodes"]) == {"conv1", "conv2", "up", "score"}


def test_autoencoder_reports_reconstruction_error(kit, tmp_path):
    model = kit.autoencoder_model(tmp_path / "cae.onnx")
    frames = kit.write_frames(tmp_path / "f", 6, size=16)
    report = calibrate(model, frames, output=tmp_path / "q.onnx", options=FAST)
    mse = report["reconstruction_mse"]
    assert set(mse) == {"fp32", "int8", "fp32_vs_int8"} and mse["fp32"] > 0
    assert mse["fp32_vs_int8"] < 0.1 * mse["fp32"]


def test_bad_models_are_refused(kit, tmp_path, seg_model):
    frames = kit.write_frames(tmp_path / "f", 4)
    bare = kit.segmentation_model(tmp_path / "bare.onnx", contract=False)
    with pytest.raises(EdgesegError, match="no edgeseg contract"):
        calibrate(bare, frames, output=tmp_path / "q.onnx")
    calibrate(seg_model, frames, output=tmp_path / "q.onnx", options=FAST)
    with pytest.raises(EdgesegError, match="already quantized"):
        calibrate(tmp_path / "q.onnx", frames, output=tmp_path / "qq.onnx")
    (tmp_path / "zip.onnx").write_bytes(b"PK\x03\x04 not onnx")
    with pytest.raises(EdgesegError, match="not an ONNX file"):
        calibrate(tmp_path / "zip.onnx", frames, output=tmp_path / "qq.onnx")
    with pytest.raises(EdgesegError, match="overwrite"):
        calibrate(seg_model, frames, output=seg_model)
    with pytest.raises(EdgesegError, match="takes a CalibrateOptions"):
        calibrate(seg_model, frames, output=tmp_path / "q4.onnx", options=QuantizeOptions())  # the old signature
    with pytest.raises(EdgesegError, match="--chunk must be an integer >= 1"):
        CalibrateOptions(chunk=0)
    for share in (1.0, -0.1, True):
        with pytest.raises(EdgesegError, match=r"--holdout must be a share in \[0, 1\)"):
            CalibrateOptions(holdout=share)
    with pytest.raises(EdgesegError, match="--max-drop"):
        Budget(float("nan"))
    with pytest.raises(EdgesegError, match="--report .*does not exist"):
        calibrate(seg_model, frames, output=tmp_path / "q3.onnx", options=CalibrateOptions(report=tmp_path / "no" / "r.json"))


def test_cpu_flags_decide_the_int8_warning():
    assert cpu_int8_support("flags\t: fpu sse avx2 avx512_vnni\n") == (True, "avx512_vnni")
    assert cpu_int8_support("Features\t: fp asimd asimddp\n")[0] is True
    has, text = cpu_int8_support("flags\t: fpu sse avx2\n")
    assert has is False and "none of" in text


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg", "calibrate", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_end_to_end_with_jpeg_0_255_masks_and_bad_input_exit_2(kit, tmp_path, seg_model):
    # Masks as a public set ships them: 0/255 JPEGs, whose edges hold in-between values. Training
    # accepts them (runtime.datasets.read_mask); calibrate must read them by the same rule.
    images, masks = tmp_path / "images", tmp_path / "masks"
    kit.write_frames(images, 6)
    masks.mkdir()
    for image in sorted(images.iterdir()):
        binary = (cv2.imread(str(image), cv2.IMREAD_GRAYSCALE) > 128).astype(np.uint8) * 255
        cv2.imwrite(str(masks / f"{image.stem}.jpg"), binary)
    read_back = [cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) for mask in sorted(masks.iterdir())]
    blurred = sum(bool(((m > 0) & (m < 255)).any()) for m in read_back)
    assert blurred >= 3, "JPEG must add in-between edge values for this test to mean anything"
    out, report = tmp_path / "out.int8.onnx", tmp_path / "r.json"
    done = _cli(seg_model, "--data", images, "--masks", masks, "-o", out, "--report", report, "--method", "entropy",
                "--rounds", "2", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "mIoU %" in done.stdout and "speedup" in done.stdout and "warning:" in done.stdout
    result = json.loads(report.read_text())
    assert result["method"] == "entropy" and result["timing"]["threads"] == 1
    assert result["frames"]["masks"] == 6 and result["frames"]["thresholded_masks"] == blurred
    assert result["fp32"]["miou"] is not None and set(result["fp32"]["per_class_iou"]) == {"class0", "class1"}
    assert any("thresholded at 128" in w for w in result["warnings"])
    assert Contract.from_onnx(out).calibration["samples"] == 6
    assert (tmp_path / "r.sqnr.png").is_file()
    assert "collecting ranges" not in done.stderr  # stderr is a pipe here: no progress bar
    # It says where it wrote, every file.
    assert f"wrote INT8 model {out}, report {report}, SQNR chart {tmp_path / 'r.sqnr.png'}" in done.stdout

    (tmp_path / "empty").mkdir()
    failed = _cli(seg_model, "--data", tmp_path / "empty", "-o", tmp_path / "x.onnx")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "is a folder with no image files" in failed.stderr and not (tmp_path / "x.onnx").exists()


def test_importing_is_light_and_calibrating_never_loads_tensorflow(kit, tmp_path, seg_model):
    frames = kit.write_frames(tmp_path / "f", 4)
    code = (
        "import sys\n"
        "import edgeseg.calibration as c\n"
        "assert not {'onnx', 'onnxruntime', 'tensorflow'} & set(sys.modules), 'import is not lazy'\n"
        f"c.calibrate({str(seg_model)!r}, {str(frames)!r}, output={str(tmp_path / 'q.onnx')!r}, "
        "options=c.CalibrateOptions(timing_rounds=1, sqnr_frames=1))\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_activation_type_follows_the_cpu_unless_chosen(kit, tmp_path, seg_model):
    from edgeseg.calibration._quantize import default_activations

    assert default_activations("x86_64") == "uint8" and default_activations("aarch64") == "int8"
    frames = kit.write_frames(tmp_path / "f", 4)
    for activations, dtype in (("int8", np.int8), ("uint8", np.uint8)):
        out = tmp_path / f"{activations}.onnx"
        report = calibrate(seg_model, frames, output=out, options=CalibrateOptions(
            timing_rounds=1, sqnr_frames=1, quantize=QuantizeOptions(activations=activations)))
        assert report["options"]["activations"] == activations
        zero_points = [i for i in onnx.load(str(out)).graph.initializer if i.name == "r1_zero_point"]
        assert onnx.numpy_helper.to_array(zero_points[0]).dtype == dtype


def test_output_softmax_stays_float_by_default_even_behind_a_transpose(tmp_path, seg_model):
    from edgeseg.calibration._quantize import output_activations

    assert output_activations(seg_model) == ["softmax"]  # tiny model: Transpose, then Softmax makes the output
    model = onnx.load(str(seg_model))
    softmax, transpose = model.graph.node[-1], model.graph.node[-2]
    # Re-order as tf2onnx exports Keras: Softmax on NCHW (axis 1), then Transpose to NHWC.
    softmax.input[0], softmax.output[0] = "logits", "probabilities_nchw"
    softmax.attribute[0].i = 1
    transpose.input[0], transpose.output[0] = "probabilities_nchw", "probabilities"
    reordered = [onnx.NodeProto.FromString(n.SerializeToString()) for n in (softmax, transpose)]
    del model.graph.node[-2:]
    model.graph.node.extend(reordered)
    onnx.save(model, str(tmp_path / "tf2onnx_like.onnx"))
    assert output_activations(tmp_path / "tf2onnx_like.onnx") == ["softmax", "to_nhwc"]


def test_conv_transpose_is_float_by_default_and_quantized_on_request(kit, tmp_path, seg_model):
    frames = kit.write_frames(tmp_path / "f", 4)
    calibrate(seg_model, frames, output=tmp_path / "a.onnx", options=FAST)
    report = calibrate(seg_model, frames, output=tmp_path / "b.onnx",
                       options=CalibrateOptions(timing_rounds=1, sqnr_frames=1, quantize=QuantizeOptions(float_op_types=())))
    def up_node(path):
        return next(n for n in onnx.load(str(path)).graph.node if n.name == "up")

    assert up_node(tmp_path / "a.onnx").input[1] == "wt"  # float weight, float output
    assert up_node(tmp_path / "b.onnx").input[1] == "wt_DequantizeLinear_Output"
    assert report["float_compute"]["nodes"]["up"]["reason"] == "no int8 kernel on the CPU execution provider"
