"""`edgeseg eval`: IoU of deployed files on labelled frames, per file and engine, against hand-computed figures."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.cli import main
from edgeseg.runtime import Contract, InputSpec, OutputSpec, write_contract

RED, GREEN = (0, 0, 255), (0, 255, 0)  # BGR


def _model(path, graph_nodes, inputs, outputs, inits, contract):
    model = helper.make_model(helper.make_graph(graph_nodes, "m", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    write_contract(model, contract)
    onnx.save(model, str(path))
    return path


def red_vs_green(path):
    """Class 1 ("red") where the red channel beats the green one, else class 0: a model whose masks a test knows."""
    weight = np.zeros((2, 3, 1, 1), np.float32)
    weight[1, 0], weight[1, 1] = 10.0, -10.0  # RGB input: logit1 = 10 (R - G), logit0 = 0
    nodes = [helper.make_node("Transpose", ["image"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=1),
             helper.make_node("Transpose", ["p"], ["scores"], perm=[0, 2, 3, 1])]
    return _model(path, nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 16, 16, 3])],
                  [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 16, 16, 2])],
                  [numpy_helper.from_array(weight, "w")],
                  Contract(kind="segmentation", input=InputSpec(height=16, width=16, channels=3),
                           output=OutputSpec(name="scores", activation="softmax", classes=("other", "red"))))


def halves(tmp_path, count=3):
    """Frames 16x32: left half red, right half green; masks say red over the left three quarters."""
    images, masks = tmp_path / "data" / "images", tmp_path / "data" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(count):
        frame = np.zeros((16, 32, 3), np.uint8)
        frame[:, :16], frame[:, 16:] = RED, GREEN
        truth = np.zeros((16, 32), np.uint8)
        truth[:, :24] = 1
        cv2.imwrite(str(images / f"f{i}.png"), frame)
        cv2.imwrite(str(masks / f"f{i}.png"), truth)
    (images / "unpaired.png").write_bytes(cv2.imencode(".png", frame)[1].tobytes())
    return tmp_path / "data"


def test_eval_scores_each_file_on_each_engine_against_hand_computed_iou(tmp_path, capsys):
    model = red_vs_green(tmp_path / "m.onnx")
    copy = tmp_path / "m2.onnx"
    copy.write_bytes(model.read_bytes())
    report_path = tmp_path / "eval.json"
    code = main(["eval", str(model), str(copy), "--data", str(halves(tmp_path)), "--engine", "onnxruntime,openvino",
                 "--precision", "fp32", "--json", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    # Predicted red: 16 of 32 columns; truth red: 24. IoU red = 16/24, IoU other = 8/16, pixel accuracy 24/32.
    assert [(r["file"].endswith("m.onnx"), r["engine"]) for r in report["runs"]] == [
        (True, "onnxruntime"), (True, "openvino"), (False, "onnxruntime"), (False, "openvino")]
    for run in report["runs"]:
        assert run["per_class_iou"] == pytest.approx({"other": 0.5, "red": 2 / 3})
        assert run["miou"] == pytest.approx(7 / 12) and run["pixel_acc"] == pytest.approx(0.75)
        assert run["frames"] == 3 and run["precision"] == "fp32"
    assert report["data"]["skipped"] == 1  # the unpaired image: counted, named in the log, not scored
    assert report["chart"] and (tmp_path / "eval.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "58.33" in table and "75.00" in table and "66.67" in table


def test_eval_of_an_autoencoder_groups_the_error_by_label(tmp_path):
    gain = np.array(0.5, np.float32)  # reconstruction = input / 2: error = pixel / 255 / 2, known per digit
    path = _model(tmp_path / "ae.onnx", [helper.make_node("Mul", ["image", "g"], ["recon"])],
                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28, 1])],
                  [helper.make_tensor_value_info("recon", TensorProto.FLOAT, ["N", 28, 28, 1])],
                  [numpy_helper.from_array(gain, "g")],
                  Contract(kind="autoencoder", input=InputSpec(height=28, width=28, channels=1, color="GRAY"),
                           output=OutputSpec(name="recon", activation="sigmoid")))
    x = np.concatenate([np.full((2, 28, 28), 102, np.uint8), np.full((2, 28, 28), 204, np.uint8)])
    np.savez(tmp_path / "digits.npz", x_test=x, y_test=np.array([3, 3, 7, 7]))
    assert main(["eval", str(path), "--data", str(tmp_path / "digits.npz"), "--engine", "onnxruntime",
                 "--json", str(tmp_path / "e.json")]) == 0
    run = json.loads((tmp_path / "e.json").read_text())["runs"][0]
    assert run["by_label"] == pytest.approx({"3": 0.2, "7": 0.4}) and run["reconstruction_error"] == pytest.approx(0.3)


def test_eval_bad_requests_are_one_line(tmp_path, capsys):
    model = red_vs_green(tmp_path / "m.onnx")
    data = halves(tmp_path)
    assert main(["eval", str(model), "--data", str(data / "images")]) == 2
    assert "--masks is needed" in capsys.readouterr().err
    assert main(["eval", str(model), "--data", str(data), "--engine", "tensorflow"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--engine must be one or more of" in err
