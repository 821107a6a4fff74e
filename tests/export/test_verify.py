"""`edgeseg verify`: layer-by-layer parity, a broken export named by its layer, bad input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest

from edgeseg.cli import main


def _verify(keras_path, onnx_path, report, *extra):
    # Pinned: `--engine auto` (the default) depends on the CPU (OpenVINO bf16 where it has bf16).
    engine = [] if "--engine" in extra else ["--engine", "onnxruntime"]
    code = main(["verify", str(keras_path), str(onnx_path), "--report", str(report), *engine, *extra])
    return code, (json.loads(report.read_text()) if report.exists() else None)


@pytest.mark.parametrize("name", ["fcn8", "fcn8-nchw", "fcn8-cuda"])
def test_exports_verify_on_every_inspected_layer(model_files, exports, tmp_path, name):
    code, report = _verify(model_files["fcn8"], exports[name], tmp_path / "r.json", "--random", "2")
    assert code == 0 and report["ok"] and report["first_failure"] is None
    names = [layer["name"] for layer in report["layers"]]
    # Nested encoder flattened; Keras names; every inspected type present.
    assert names == ["block1_conv1", "block1_pool", "block2_conv1", "block2_pool", "score4", "up4", "crop4", "score3",
                     "fuse", "up_final", "softmax"]
    assert {"name", "type", "shape", "max_abs_err", "max_rel_err", "ok"} <= set(report["layers"][0])
    assert report["not_compared"] == []
    assert report["layers"][5]["shape"] == [18, 18, 2] and report["layers"][5]["type"] == "Conv2DTranspose"
    assert report["output"]["argmax_agreement"] == 1.0
    assert report["inputs"] == {"kind": "random", "count": 2, "skipped": 0}


def test_sequential_cae_verifies_on_images_through_the_contract(model_files, exports, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not a png")
    code, report = _verify(model_files["cae"], exports["cae"], tmp_path / "r.json", "--images", str(images))
    assert code == 0
    assert report["inputs"] == {"kind": "images", "count": 2, "skipped": 1}
    assert [layer["type"] for layer in report["layers"]] == ["Conv2D", "Conv2D", "Conv2DTranspose", "Conv2DTranspose", "Activation"]


def test_single_channel_nchw_export_verifies(model_files, exports, tmp_path):
    code, report = _verify(model_files["cae"], exports["cae-nchw"], tmp_path / "r.json", "--random", "2")
    assert code == 0 and len(report["layers"]) == 5
    # With one channel tf2onnx's layout change is a Reshape; NCHW input makes it go away too.
    assert onnx.load(str(exports["cae-nchw"])).graph.node[0].op_type == "Conv"


def test_layers_transposed_reports_only_transposed_convolutions(model_files, exports, tmp_path):
    code, report = _verify(model_files["fcn8"], exports["fcn8"], tmp_path / "r.json", "--layers", "transposed", "--random", "1")
    assert code == 0 and [layer["name"] for layer in report["layers"]] == ["up4", "up_final"]


def _broken(source, target, op_type, mutate, *, index=0):
    proto = onnx.load(str(source))
    node = [n for n in proto.graph.node if n.op_type == op_type][index]
    mutate(proto, node)
    onnx.save(proto, str(target))


def test_altered_conv_transpose_pads_fail_and_name_the_layer(model_files, exports, tmp_path, capsys):
    def shift_pads(proto, node):
        pads = next(a for a in node.attribute if a.name == "pads")
        begin, end = list(pads.ints[:2]), list(pads.ints[2:])
        assert begin != end  # up_final (kernel 5, stride 2, SAME) exports asymmetric
        pads.ints[:] = end + begin  # same output size, content shifted by a pixel

    broken = tmp_path / "broken.onnx"
    _broken(exports["fcn8"], broken, "ConvTranspose", shift_pads, index=1)
    code, report = _verify(model_files["fcn8"], broken, tmp_path / "r.json", "--random", "1")
    assert code == 1 and report["ok"] is False and report["first_failure"] == "up_final"
    assert [layer["name"] for layer in report["layers"] if not layer["ok"]] == ["up_final", "softmax"]
    assert "FIRST FAILURE: up_final" in capsys.readouterr().out


def test_altered_crop_fails_and_names_the_crop(model_files, exports, tmp_path):
    def move_slice(proto, node):
        starts = next(i for i in proto.graph.initializer if i.name == node.input[1])
        values = onnx.numpy_helper.to_array(starts).copy()
        values[:] = 0  # crop from the top-left corner instead of centred
        starts.CopyFrom(onnx.numpy_helper.from_array(values, starts.name))
        ends = next(i for i in proto.graph.initializer if i.name == node.input[2])
        end_values = onnx.numpy_helper.to_array(ends).copy()
        end_values[:] = end_values - 1
        ends.CopyFrom(onnx.numpy_helper.from_array(end_values, ends.name))

    broken = tmp_path / "broken.onnx"
    _broken(exports["fcn8"], broken, "Slice", move_slice)
    code, report = _verify(model_files["fcn8"], broken, tmp_path / "r.json", "--random", "1")
    assert code == 1 and report["first_failure"] == "crop4"


def test_bad_inputs_are_one_line_and_exit_2(model_files, exports, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert _verify(text, exports["fcn8"], tmp_path / "r.json")[0] == 2
    assert "not a .keras file" in capsys.readouterr().err
    assert _verify(model_files["fcn8"], model_files["fcn8"], tmp_path / "r.json")[0] == 2
    assert "not an ONNX file" in capsys.readouterr().err
    assert _verify(model_files["fcn8"], exports["cae"], tmp_path / "r.json")[0] == 2
    err = capsys.readouterr().err
    assert "does not come from this Keras model" in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _verify(model_files["fcn8"], exports["fcn8"], tmp_path / "r.json", "--images", str(empty))[0] == 2


def test_export_with_verify_records_the_summary(model_files, tmp_path):
    out, report = tmp_path / "v.onnx", tmp_path / "r.json"
    assert main(["export", str(model_files["fcn8"]), "-o", str(out), "--verify", "--random", "1", "--report", str(report)]) == 0
    from edgeseg.runtime.contract import Contract

    verified = Contract.from_onnx(onnx.load(str(out))).verified
    assert verified["ok"] is True and verified["layers_checked"] == 11 and 0 <= verified["max_abs_err"] < 1e-4
    assert json.loads(report.read_text())["ok"] is True


@pytest.mark.parametrize(
    "name, options, kind",
    [
        # 32 px is the smallest size with all five poolings; the classic one at 1/8 width (the course
        # variant has no narrow form): the same layers, crops and transposes, a fraction of the cost.
        ("fcn8-classic", {"classes": 3, "input_size": 32, "head_width": 8, "backbone_width": 0.125}, "segmentation"),
        ("fcn8-course", {"classes": 3, "input_size": 32, "head_width": 8}, "segmentation"),
        ("cae", {}, "autoencoder"),
    ],
)
def test_the_course_builders_export_and_verify_plain_and_cuda_friendly(tmp_path, name, options, kind):
    import keras

    from edgeseg.export._keras_file import save_model
    from edgeseg.export._models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(name, **options)
    spec = {"height": 32, "width": 32, "channels": 3, "color": "RGB", "scale": 1 / 255} if kind == "segmentation" \
        else GRAY_SPEC
    record = {"kind": kind, "input": spec}
    if kind == "segmentation":
        record["output"] = {"activation": "softmax", "classes": ["a", "b", "c"]}
    source = save_model(model, tmp_path / "m.keras", record)
    for extra in ([], ["--cuda-friendly", "--nchw"]):
        # export --verify: the same layer-by-layer verify, on the model export has loaded already (a full-width
        # VGG16 is loaded and traced once per file, not twice); `edgeseg verify` itself is tested above.
        target, written = tmp_path / f"m{len(extra)}.onnx", tmp_path / "r.json"
        code = main(["export", str(source), "-o", str(target), *extra, "--verify", "--random", "2", "--report",
                     str(written)])
        report = json.loads(written.read_text())
        assert code == 0 and report["ok"], report["first_failure"]
        assert report["engine"]["engine"] == "onnxruntime" and report["compared"] == report["layers_total"]
        types = {layer["type"] for layer in report["layers"]}
        assert "Conv2DTranspose" in types  # the hard layers were really compared, not skipped
        if kind == "segmentation":
            assert report["output"]["argmax_agreement"] == 1.0


GRAY_SPEC = {"height": 28, "width": 28, "channels": 1, "color": "GRAY", "scale": 1 / 255}


def _stderr_lines(capfd):
    """What verify said on stderr, less its progress lines and TensorFlow's start-up chatter."""
    err = capfd.readouterr().err
    assert "Traceback" not in err and "onnxruntime:" not in err  # no traceback, no second onnxruntime line
    return [line for line in err.splitlines() if line.startswith(("edgeseg", "verify"))
            and not line.startswith("edgeseg verify: input ")]


def test_a_file_that_loads_but_cannot_run_exits_3_with_one_line_and_a_report(model_files, exports, tmp_path, capfd,
                                                                             caplog):
    # The first convolution's kernel claims 4 input channels: onnxruntime loads the graph (the ONNX
    # checker and shape inference pass) and fails only when it runs it. Not a divergence (1), not a
    # bad invocation (2): verify could not finish (3), and the report says why.
    proto = onnx.load(str(exports["fcn8"]))
    weight = next(t for t in proto.graph.initializer if len(t.dims) == 4 and t.dims[1] == 3)
    weight.CopyFrom(onnx.numpy_helper.from_array(np.ones((weight.dims[0], 4, *weight.dims[2:]), np.float32), weight.name))
    onnx.checker.check_model(proto)
    broken = tmp_path / "cannot_run.onnx"
    onnx.save(proto, str(broken))
    capfd.readouterr()
    code, report = _verify(model_files["fcn8"], broken, tmp_path / "r.json", "--random", "1")
    assert code == 3
    assert report["ok"] is False and report["exit_code"] == 3 and "channels" in report["error"]
    assert _stderr_lines(capfd) == []  # under pytest the CLI's log line goes to caplog, not stderr
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "could not finish" in lines[0] and "failed running it" in lines[0] and "bug" not in lines[0]


def _truncated(source, target):
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # the protobuf header is intact, the rest is gone


def _unknown_op(source, target):
    proto = onnx.load(str(source))  # the contract stays valid; the graph names an op nobody implements
    proto.graph.node[0].op_type = "NoSuchOp"
    onnx.save(proto, str(target))


def _damaged_weights(source, target):
    import zipfile

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            new.writestr(item, data[: len(data) // 3] if item.filename.endswith(".h5") else data)


@pytest.mark.parametrize("damage, which, expected", [
    (_truncated, "onnx", "not an ONNX file"),
    (_unknown_op, "onnx", "onnxruntime cannot load"),
    (_damaged_weights, "keras", "Keras could not load it"),
])
def test_damaged_files_are_user_errors_exit_2_with_a_report(model_files, exports, tmp_path, capfd, damage, which, expected):
    # A damaged file is the user's to replace (re-export, re-save): verify cannot start, exit 2.
    keras_path, onnx_path = model_files["fcn8"], exports["fcn8"]
    if which == "onnx":
        onnx_path = tmp_path / "damaged.onnx"
        damage(exports["fcn8"], onnx_path)
    else:
        keras_path = tmp_path / "damaged.keras"
        damage(model_files["fcn8"], keras_path)
    capfd.readouterr()
    code, report = _verify(keras_path, onnx_path, tmp_path / "r.json", "--random", "1")
    assert code == 2
    assert report["ok"] is False and report["exit_code"] == 2 and expected in report["error"]
    lines = _stderr_lines(capfd)
    assert len(lines) == 1 and expected in lines[0]


def test_verify_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(phrase in text for phrase in ("Exit 0", "1 naming the first layer", "2 when it cannot start", "3 when it started"))
