"""`edgeseg bench` plumbing on a tiny ONNX model and three frames (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.bench._bench import (
    BenchConfig,
    markdown_table,
    mask_agreement,
    run_bench,
    schedule,
)
from edgeseg.bench._ceiling import measure_ceiling
from edgeseg.calibration._flops import count_flops
from edgeseg.runtime import (Contract, EdgesegError, InputSpec, OutputSpec, read_mask_png, segment, write_contract,
                             write_mask_png)

SIZE = 8


def _frames(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        cv2.imwrite(str(folder / f"f{i}.png"), rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_segmenter):
    root = tmp_path_factory.mktemp("bench")
    model = tiny_segmenter(root / "tiny.onnx", size=SIZE, classes=("background", "object"))
    return model, _frames(root / "frames")


@pytest.fixture(scope="module")
def report(tiny, tmp_path_factory):
    model, frames = tiny
    config = BenchConfig(
        model=model, source=str(frames), runners=("ort-plain", "opencv-dnn", "edgeseg", "keras-predict", "openvino-int8", "edgeseg-fast"),
        frames=3, repeats=2, work_dir=tmp_path_factory.mktemp("work"), measure_ceiling=False,
    )
    return run_bench(config)


def test_report_has_the_design_fields_for_every_runner(report):
    assert set(report) >= {"machine", "ceiling_gflops", "runners", "flops_per_frame", "ratios"}
    assert report["agreement_reference"] == "ort-plain"  # no Keras model given: FP32 onnxruntime, said so
    for name in ("ort-plain", "opencv-dnn", "edgeseg"):
        r = report["runners"][name]
        assert set(r) >= {"fps", "infer_fps", "stage_ms", "agreement", "gflops", "efficiency", "peak_mb", "runs"}
        assert len(r["runs"]) == 2 and all(run["frames"] == 3 for run in r["runs"])
        assert set(r["stage_ms"]) == {"decode", "preprocess", "infer", "postprocess", "write"}
        assert r["fps"] > 0 and r["infer_fps"] >= r["fps"] and r["peak_mb"] > 10
        assert r["gflops"] == pytest.approx(report["flops_per_frame"] * r["infer_fps"] / 1e9)
        assert r["efficiency"] is None  # no ceiling measured in this run
    # The same model through two engines writes the same masks.
    assert report["runners"]["opencv-dnn"]["agreement"] > 0.99
    assert report["runners"]["edgeseg"]["agreement"] > 0.99  # the runtime's masks, read back from its --out
    assert report["runners"]["ort-plain"]["agreement"] == 1.0
    assert report["ratios"]["ort-plain"] == 1.0
    json.dumps(report)  # the report is plain JSON


def test_skipped_runner_is_reported_with_its_reason(report):
    r = report["runners"]["keras-predict"]
    assert "--keras" in r["skipped"]
    assert r["fps"] is None and len(r["runs"]) == 1  # not retried on later rounds
    assert "--int8" in report["runners"]["openvino-int8"]["skipped"]
    assert "skipped" not in report["runners"]["edgeseg-fast"]


def test_edgeseg_fast_runs_the_recorded_choice_and_agrees(report):
    fast = report["runners"]["edgeseg-fast"]
    assert fast["config"] == {"file": "fp32", "engine": "openvino", "precision": "auto", "batch": 4, "throughput": True,
                              "fused": True}
    assert report["edgeseg_fast"]["config"] == fast["config"]
    assert report["edgeseg_fast"]["agreement"] == fast["agreement"] >= 0.95  # bf16 flips only near-ties
    assert report["edgeseg_fast"]["below_bar"] == (fast["agreement"] < 0.99)  # no INT8 file given: the bf16 choice
    assert fast["runs"][0]["engine"] == "openvino" and fast["runs"][0]["frames"] == 3
    assert fast["runs"][0]["inflight"] >= 1  # a call in flight per OpenVINO stream
    from edgeseg.runtime import heuristic_config

    # `edgeseg` runs the runtime's default engine: auto, the heuristic here (no tuning record for this file)
    assert report["runners"]["edgeseg"]["config"]["engine"] == heuristic_config(kind="segmentation")[0].engine
    assert report["kind"] == "segmentation" and report["unit"] == "frames"
    assert report["ratios"]["keras-predict"] is None


def test_masks_written_per_frame_at_frame_size(report, tiny):
    run = report["runners"]["ort-plain"]["runs"][0]
    masks = sorted(Path(run["masks"]).glob("*.png"))
    assert [m.name for m in masks] == ["f0.png", "f1.png", "f2.png"]
    mask = read_mask_png(masks[0])
    assert mask.shape == (12, 16) and set(np.unique(mask)) <= {0, 1}


def test_markdown_table_has_a_row_per_runner(report):
    table = markdown_table(report)
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| runner")]
    assert [row.split("|")[1].strip() for row in rows] == ["ort-plain", "opencv-dnn", "edgeseg", "keras-predict", "openvino-int8", "edgeseg-fast"]
    assert "skipped: no Keras model given" in table
    assert "100.00%" in table  # ort-plain agrees with itself


def test_schedule_interleaves_rounds():
    assert schedule(["a", "b", "c"], 2) == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]


def test_runs_really_ran_interleaved(report):
    runs = [(run["started"], name) for name, r in report["runners"].items() for run in r["runs"] if "skipped" not in run]
    order = [name for _, name in sorted(runs)]
    assert order == ["ort-plain", "opencv-dnn", "edgeseg", "edgeseg-fast"] * 2


def test_flops_of_a_conv_counted_by_hand(tiny):
    model, _ = tiny
    flops = count_flops(model)
    # 2 FLOPs x 2 output channels x 8x8 output pixels x 3 input channels x 3x3 kernel
    assert flops["total"] == 2 * 2 * 8 * 8 * 3 * 3 * 3 == 6912
    assert flops["by_op"] == {"Conv": 6912}


def test_flops_of_matmul_gemm_and_conv_transpose_by_hand():
    init = [
        numpy_helper.from_array(np.zeros((5, 6), np.float32), "m"),
        numpy_helper.from_array(np.zeros((7, 5), np.float32), "g"),
        numpy_helper.from_array(np.zeros((2, 3, 2, 2), np.float32), "t"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "m"], ["y1"]),  # (1,4,5) @ (5,6)
        helper.make_node("Gemm", ["a", "g"], ["y2"], transB=1),  # (3,5) @ (7,5)^T
        helper.make_node("ConvTranspose", ["c", "t"], ["y3"], strides=[2, 2]),  # (1,2,4,4) -> (1,3,8,8)
    ]
    graph = helper.make_graph(
        nodes, "ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 5]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", 2, 4, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2", "y3")],
        initializer=init,
    )
    flops = count_flops(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert flops["by_op"] == {
        "MatMul": 2 * 4 * 6 * 5,  # batch of one (the symbolic n is fixed to 1)
        "Gemm": 2 * 3 * 5 * 7,
        "ConvTranspose": 2 * 2 * 4 * 4 * 3 * 2 * 2,  # every input pixel scatters a 3x2x2 kernel
    }


def test_ceiling_measures_fp32_and_reports_every_point():
    ceiling = measure_ceiling(threads=(1,), sizes=(64,), budget_s=0.01)
    assert ceiling["fp32"] > 0
    engines = {(d["engine"], d["dtype"]) for d in ceiling["details"]}
    assert ("numpy", "fp32") in engines and ("onnxruntime MatMul", "fp32") in engines
    int8 = [d for d in ceiling["details"] if d["dtype"] == "int8"]
    assert int8 and all(d["gflops"] or d.get("error") for d in int8)


def test_mask_agreement_counts_pixels(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    mask = np.zeros((4, 5), np.uint8)
    write_mask_png(b / "x.png", mask, [(0, 0, 0), (255, 0, 0)])
    mask[0, :] = 1  # 5 of 20 pixels differ
    write_mask_png(a / "x.png", mask, [(0, 0, 0), (255, 0, 0)])
    assert mask_agreement(a, b) == pytest.approx(0.75)


def test_unknown_runner_is_refused_naming_the_known_ones(tiny):
    model, frames = tiny
    with pytest.raises(EdgesegError, match="openvino-f32"):
        BenchConfig(model=model, source=str(frames), runners=("ort-fast",))


def test_cli_writes_json_and_markdown(tiny, tmp_path):
    model, frames = tiny
    out = subprocess.run(
        [sys.executable, "-m", "edgeseg", "bench", "--model", str(model), "--source", str(frames),
         "--runners", "ort-plain", "--frames", "2", "--repeats", "1", "--no-ceiling",
         "--json", str(tmp_path / "B.json"), "--markdown", str(tmp_path / "B.md"), "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "B.json").read_text())
    assert report["runners"]["ort-plain"]["runs"][0]["frames"] == 2
    assert (tmp_path / "B.md").read_text() == out.stdout


def test_cli_missing_model_is_one_clear_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "edgeseg", "bench", "--model", str(tmp_path / "none.onnx"), "--source", str(tmp_path),
         "--json", str(tmp_path / "B.json")],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no such file" in out.stderr


@pytest.mark.slow
def test_keras_model_is_exported_and_is_the_agreement_reference(tiny, tmp_path):
    import keras
    from edgeseg.export import save_model

    _, frames = tiny
    image = keras.Input((SIZE, SIZE, 3), name="image")
    scores = keras.layers.Conv2D(2, 3, padding="same", activation="softmax", name="conv")(image)
    model = keras.Model(image, scores)
    model.get_layer("conv").set_weights([np.random.default_rng(0).standard_normal((3, 3, 3, 2)).astype(np.float32),
                                         np.zeros(2, np.float32)])
    contract = Contract(kind="segmentation", input=InputSpec(height=SIZE, width=SIZE, channels=3, scale=1 / 255),
                        output=OutputSpec(name="scores", activation="softmax", classes=("background", "object")))
    save_model(model, tmp_path / "tiny.keras", contract.to_dict())
    out = subprocess.run(
        [sys.executable, "-m", "edgeseg", "bench", "--model", str(tmp_path / "tiny.keras"), "--source", str(frames),
         "--runners", "keras-call,ort-plain", "--frames", "3", "--repeats", "1", "--no-ceiling",
         "--json", str(tmp_path / "B.json"), "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "B.json").read_text())
    assert report["agreement_reference"] == "keras-call"
    assert report["notes"][0].startswith("exported")
    assert report["runners"]["keras-call"]["agreement"] == 1.0
    assert report["runners"]["ort-plain"]["agreement"] > 0.99  # the export computes what Keras computes


def _tiny_autoencoder(path: Path) -> Path:
    """Gray 28x28 (N, 28, 28, 1) -> 3x3 conv to 1 channel -> sigmoid, with an autoencoder contract."""
    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array((rng.standard_normal((1, 1, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["conv"], ["sig"]),
        helper.make_node("Transpose", ["sig"], ["reconstruction"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cae",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 28, 28, 1])],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["n", 28, 28, 1])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    contract = Contract(kind="autoencoder", input=InputSpec(height=28, width=28, channels=1, color="GRAY", scale=1 / 255),
                        output=OutputSpec(name="reconstruction", activation="sigmoid"))
    write_contract(model, contract)
    onnx.save(model, str(path))
    return path


def _digits(folder: Path, count: int = 5) -> Path:
    """Small 28x28 gray PNGs: a bar whose position and angle change per digit."""
    folder.mkdir()
    for i in range(count):
        digit = np.zeros((28, 28), np.uint8)
        cv2.line(digit, (6 + 3 * i, 4), (20 - 2 * i, 24), 255, 3)
        cv2.imwrite(str(folder / f"d{i}.png"), digit)
    return folder


@pytest.fixture(scope="module")
def ae_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    model, digits = _tiny_autoencoder(root / "cae.onnx"), _digits(root / "digits")
    config = BenchConfig(model=model, source=str(digits), runners=("ort-plain", "openvino", "edgeseg", "edgeseg-fast",
                                                                    "keras-predict-1"),
                         frames=5, repeats=1, work_dir=root / "work", measure_ceiling=False)
    return run_bench(config), root


def test_autoencoder_bench_reports_reconstruction_error_and_images(ae_report):
    report, root = ae_report
    assert report["kind"] == "autoencoder" and report["unit"] == "images"
    assert report["agreement_reference"] == "ort-plain"
    runners = report["runners"]
    for name in ("ort-plain", "openvino", "edgeseg", "edgeseg-fast"):
        r = runners[name]
        assert r["agreement"] is None  # masks mean nothing here
        assert 0.0 <= r["recon_max_abs"] <= 0.02 and 0.0 <= r["recon_mse"] <= 1e-4, name
        assert r["runs"][0]["frames"] == 5 and r["fps"] > 0 and r["infer_fps"] > 0
        assert set(r["stage_ms"]) == {"decode", "preprocess", "infer", "postprocess", "write"}
    assert runners["ort-plain"]["recon_max_abs"] == 0.0  # the reference against itself
    # Peers run Keras' default batch; edgeseg runs what `edgeseg segment` runs by default (as the README says).
    plain = segment(root / "digits", model=root / "cae.onnx", out=root / "plain", outputs=("reconstruction",))
    assert runners["ort-plain"]["batch"] == 32 and runners["edgeseg"]["batch"] == plain["batch"] > 32
    assert runners["edgeseg-fast"]["config"]["engine"] == "onnxruntime"
    assert runners["openvino"]["runs"][0]["precision"] in ("bf16", "fp32")
    assert "--keras" in runners["keras-predict-1"]["skipped"]
    # Every runner wrote the runtime's reconstructions, one 28x28 PNG per digit.
    written = sorted((root / "work" / "edgeseg.0" / "reconstruction").glob("*.png"))
    assert [p.stem for p in written] == [f"d{i}" for i in range(5)]
    assert cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED).shape == (28, 28)
    assert report["flops_per_frame"] == 2 * 9 * 28 * 28 or report["flops_per_frame"] > 0


def test_autoencoder_markdown_shows_reconstruction_error(ae_report):
    table = markdown_table(ae_report[0])
    assert "images/s (e2e)" in table and "max-abs 0.0000, MSE 0.0e+00" in table


def test_reconstruction_agreement_in_pixel_units(tmp_path):
    from edgeseg.bench._bench import reconstruction_agreement

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    image = np.full((4, 5), 100, np.uint8)
    cv2.imwrite(str(b / "x.png"), image)
    image[0, 0] = 151  # one pixel 51/255 = 0.2 off
    cv2.imwrite(str(a / "x.png"), image)
    found = reconstruction_agreement(a, b)
    assert found["recon_max_abs"] == pytest.approx(0.2)
    assert found["recon_mse"] == pytest.approx(0.04 / 20)


def test_bench_help_prints_text_not_a_dict():
    from edgeseg.cli import build_parser

    parser = build_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    text = " ".join(bench.format_help().split())
    assert ">= 99% agreement" in text and "{'" not in text


def test_bench_class_ids_follow_the_runtime_threshold_rule():
    from edgeseg.bench._worker import class_ids

    logits = Contract(kind="segmentation", input=InputSpec(height=1, width=2, channels=3),
                      output=OutputSpec(name="y", activation="none", classes=("bg", "fg")))
    # One-channel logits: 0.3 is a positive logit (class 1), the old 0.5 rule called it class 0.
    output = np.array([[[[0.3], [-0.2]]]], np.float32)
    assert class_ids(output, logits).tolist() == [[1, 0]]
