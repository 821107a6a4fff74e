"""Bring your own model: a gallery of the Keras segmentation shapes people write, each through
export -> verify -> segment on a real video (issue 15). Tiny models (few channels, 16 px inputs)."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import onnx
import pytest

from edgeseg.cli import main
from edgeseg.export._keras_file import save_model
from edgeseg.runtime import segment
from edgeseg.runtime.contract import Contract

L = keras.layers
S = 16


def _unet():
    x = keras.Input((S, S, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    b = L.MaxPooling2D()(a)
    b = L.Conv2D(4, 3, padding="same", activation="relu")(b)
    u = L.UpSampling2D()(b)
    c = L.concatenate([u, a])
    return keras.Model(x, L.Conv2D(2, 1, activation="softmax")(c))


def _separable():
    x = keras.Input((S, S, 3))
    y = L.SeparableConv2D(4, 3, padding="same")(x)
    y = L.BatchNormalization(moving_mean_initializer="random_normal", moving_variance_initializer="ones")(y)
    y = L.Activation("relu")(y)
    z = L.SeparableConv2D(4, 3, padding="same")(y)
    z = L.BatchNormalization()(z)
    y = L.Add()([y, z])
    return keras.Model(x, L.Conv2D(3, 1, activation="softmax")(y))


def _mobilenet():
    x = keras.Input((S, S, 3))
    y = L.Conv2D(4, 3, strides=2, padding="same")(x)
    y = keras.ops.hard_swish(y)
    z = L.DepthwiseConv2D(3, padding="same")(y)
    z = L.BatchNormalization()(z)
    y = y + keras.ops.relu6(z)
    y = L.UpSampling2D(interpolation="bilinear")(y)
    return keras.Model(x, L.Conv2D(2, 1, activation="softmax")(y))


def _flat():
    x = keras.Input((S, S, 3))
    y = L.Conv2D(3, 3, padding="same")(x)
    y = L.Reshape((S * S, 3))(y)
    return keras.Model(x, L.Activation("softmax")(y))


def _preprocessing():
    x = keras.Input((None, None, 3))
    y = L.Resizing(S, S)(x)
    y = L.Rescaling(1 / 255)(y)
    norm = L.Normalization()
    norm.adapt(np.random.default_rng(0).random((2, S, S, 3)).astype("float32"))
    y = norm(y)
    return keras.Model(x, L.Conv2D(2, 3, padding="same", activation="softmax")(y))


def _dilated():
    x = keras.Input((S, S, 3))
    y = L.Conv2D(4, 3, padding="same", dilation_rate=2, activation="relu")(x)
    y = L.Conv2D(4, 3, strides=2, padding="same")(y)
    y = L.Conv2DTranspose(2, 3, strides=2, padding="same", output_padding=1)(y)
    return keras.Model(x, L.Softmax()(y))


def _dilated_transpose():
    # Sequential, as in the issue; Keras allows a dilated Conv2DTranspose at stride 1 only.
    return keras.Sequential([keras.Input((S, S, 3)),
                             L.Conv2DTranspose(4, 3, padding="same", dilation_rate=2, activation="relu", name="dil2"),
                             L.Conv2DTranspose(4, 2, padding="valid", dilation_rate=3, name="dil3"),  # 16 -> 19
                             L.Conv2D(2, 4, activation="softmax")])  # 19 -> 16


def _sigmoid():
    x = keras.Input((S, S, 3))
    y = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    return keras.Model(x, L.Conv2D(1, 1, activation="sigmoid")(y))


def _sequential():
    return keras.Sequential([keras.Input((S, S, 3)), L.Conv2D(4, 3, padding="same", activation="relu"),
                             L.Conv2D(2, 1), L.Softmax()])


def _free():
    x = keras.Input((None, None, 3))
    y = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    return keras.Model(x, L.Conv2D(2, 1, activation="softmax")(y))


# name -> (builder, export options, classes in the contract)
GALLERY = {
    "unet": (_unet, ["--classes", "background,cell"], 2),
    "separable": (_separable, ["--classes", "3"], 3),
    "mobilenet": (_mobilenet, [], 2),
    "flat": (_flat, ["--classes", "3"], 3),
    "preprocessing": (_preprocessing, ["--input-size", "16x16", "--classes", "2"], 2),
    "dilated": (_dilated, ["--classes", "2"], 2),
    "dilated_transpose": (_dilated_transpose, ["--classes", "2"], 2),
    "sigmoid": (_sigmoid, ["--classes", "horse"], 2),
    "sequential": (_sequential, ["--classes", "2"], 2),
    "free": (_free, ["--input-size", "16x24", "--classes", "2"], 2),
}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (40, 30))
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    writer.release()
    return path


def _save(tmp_path, name):
    keras.utils.set_random_seed(3)
    return save_model(GALLERY[name][0](), tmp_path / f"{name}.keras", None)


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_gallery_exports_verifies_and_segments(name, tmp_path, video, capsys):
    source = _save(tmp_path, name)
    target = tmp_path / f"{name}.onnx"
    assert main(["export", str(source), "-o", str(target), "--kind", "segmentation", *GALLERY[name][1]]) == 0
    contract = Contract.from_onnx(target)
    assert contract.num_classes == GALLERY[name][2]
    report = tmp_path / "report.json"
    code = main(["verify", str(source), str(target), "--engine", "onnxruntime", "--random", "2", "--report", str(report)])
    data = json.loads(report.read_text())
    assert code == 0, data
    assert "Traceback" not in capsys.readouterr().err
    assert data["output"]["max_abs_err"] < 1e-4 and data["output"]["argmax_agreement"] == 1.0
    summary = segment(video, model=target, out=tmp_path / "run")
    assert summary["frames"] == 3 and summary["frames_failed"] == 0
    masks = sorted((tmp_path / "run" / "masks").glob("*.png")) if (tmp_path / "run" / "masks").is_dir() else []
    for mask in masks:
        assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED).shape[:2] == (30, 40)


def _export(source, target, *options):
    return main(["export", str(source), "-o", str(target), "--kind", "segmentation", *options])


def test_normalization_constants_are_initializers_not_inputs(tmp_path):
    # Defect 1: the adapted mean/variance became graph inputs nobody feeds.
    target = tmp_path / "m.onnx"
    assert _export(_save(tmp_path, "preprocessing"), target, "--input-size", "16x16", "--classes", "2") == 0
    assert [value.name for value in onnx.load(str(target)).graph.input] == ["image"]


def test_preprocessing_inside_the_model_is_not_applied_twice(tmp_path):
    target = tmp_path / "m.onnx"
    assert _export(_save(tmp_path, "preprocessing"), target, "--input-size", "16x16", "--classes", "2") == 0
    spec = Contract.from_onnx(target).input
    assert (spec.scale, spec.mean, spec.std) == (1.0, (0.0,), (1.0,))


def test_smoke_run_refuses_a_file_that_computes_other_numbers(tmp_path):
    from edgeseg.export._checks import smoke_run
    from edgeseg.export._onnx import to_onnx
    from edgeseg.runtime.errors import EdgesegError

    keras.utils.set_random_seed(3)
    model = _sigmoid()
    proto = to_onnx(model)
    contract = Contract.from_dict({"kind": "segmentation", "input": {"height": S, "width": S, "channels": 3},
                                   "output": {"classes": ["background", "horse"]}})
    assert smoke_run(model, proto, contract) < 1e-4
    kernel = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    kernel.raw_data = bytes(len(kernel.raw_data))  # all-zero weights: runs, but computes something else
    with pytest.raises(EdgesegError, match="other numbers than Keras"):
        smoke_run(model, proto, contract)


def test_flat_output_exports_as_an_image(tmp_path):
    # Defect 4: (N, H*W, C) was read as an H*W x C image.
    target = tmp_path / "m.onnx"
    assert _export(_save(tmp_path, "flat"), target, "--classes", "3") == 0
    dims = [d.dim_value for d in onnx.load(str(target)).graph.output[0].type.tensor_type.shape.dim]
    assert dims[1:] == [S, S, 3]


def test_class_names_are_checked_against_the_output(tmp_path, capsys):
    # Defect 5: a 3-channel model exported with 2 class names failed on every frame later.
    assert _export(_save(tmp_path, "separable"), tmp_path / "m.onnx", "--classes", "bg,cell") == 2
    err = capsys.readouterr().err
    assert "3 channel(s)" in err and "--classes" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_one_channel_sigmoid_with_one_name_is_background_and_that_name(tmp_path):
    target = tmp_path / "m.onnx"
    assert _export(_save(tmp_path, "sigmoid"), target, "--classes", "horse") == 0
    contract = Contract.from_onnx(target)
    assert contract.output.classes == ("background", "horse") and contract.output.activation == "sigmoid"


def test_free_input_size_needs_input_size_and_names_an_option_that_exists(tmp_path, capsys):
    # Defect 6: the message named --input-size, which export did not have.
    assert _export(_save(tmp_path, "free"), tmp_path / "m.onnx", "--classes", "2") == 2
    assert "--input-size HxW" in capsys.readouterr().err
    target = tmp_path / "m.onnx"
    assert _export(tmp_path / "free.keras", target, "--classes", "2", "--input-size", "16x24") == 0
    spec = Contract.from_onnx(target).input
    assert (spec.height, spec.width) == (16, 24)


@pytest.mark.parametrize("dilation", [2, 3, (2, 3)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_dilated_conv_transpose_exports_and_verifies_layer_by_layer(dilation, padding, tmp_path, capsys):
    # Defect 7: rewritten to dilation 1 with zeros between the kernel taps, then compared by name.
    keras.utils.set_random_seed(5)
    x = keras.Input((S, S + 1, 3))
    y = L.Conv2DTranspose(3, 3, padding=padding, dilation_rate=dilation, bias_initializer="random_normal", name="dil")(x)
    source = save_model(keras.Model(x, L.Softmax()(y)), tmp_path / "d.keras", None)
    target, report = tmp_path / "d.onnx", tmp_path / "r.json"
    assert _export(source, target, "--classes", "3") == 0
    assert main(["verify", str(source), str(target), "--engine", "onnxruntime", "--random", "2", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    dil = [layer for layer in data["layers"] if layer["name"] == "dil"]
    assert len(dil) == 1 and dil[0]["type"] == "Conv2DTranspose" and data["not_compared"] == []
    assert data["output"]["max_abs_err"] < 1e-5
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--cuda-friendly"]], ids=["plain", "cuda_friendly"])
def test_free_input_with_rewritten_transposes_exports_and_verifies(extra, tmp_path, capsys):
    # The rewrites crop by the layer's sizes, so they run at --input-size (a traceback before).
    keras.utils.set_random_seed(6)
    x = keras.Input((None, None, 3))
    y = L.Conv2DTranspose(3, 3, padding="same", dilation_rate=2, name="dil")(x)
    y = L.Conv2DTranspose(2, 4, strides=2, padding="same", name="odd")(y)  # kernel - stride even: plain is fine
    y = L.Conv2DTranspose(2, 1, strides=2, name="small")(y)  # kernel < stride: tf2onnx's negative pads
    source = save_model(keras.Model(x, L.Softmax()(y)), tmp_path / "f.keras", None)
    target = tmp_path / "f.onnx"
    assert _export(source, target, "--classes", "2", "--input-size", "8x12", *extra) == 0
    assert main(["verify", str(source), str(target), "--engine", "onnxruntime", "--random", "1"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    spec = Contract.from_onnx(target).input
    assert (spec.height, spec.width) == (8, 12)


def test_dilated_conv_transpose_channels_first_is_refused_in_one_line(tmp_path, capsys):
    # What the rewrite does not cover (channels_first) is refused in one line, not exported wrong.
    x = keras.Input((S, S, 3))
    y = L.Permute((3, 1, 2))(x)
    y = L.Conv2DTranspose(2, 3, padding="same", dilation_rate=2, data_format="channels_first", name="dil")(y)
    model = keras.Model(x, L.Permute((2, 3, 1))(y))
    assert _export(save_model(model, tmp_path / "d.keras", None), tmp_path / "d.onnx", "--classes", "2") == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "channels_first" in errors[0] and "`dil`" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "d.onnx").exists()


def test_one_channel_agreement_uses_the_threshold(tmp_path):
    # Defect 8: an argmax over one channel always agreed, even when every pixel flipped.
    source, target = _save(tmp_path, "sigmoid"), tmp_path / "m.onnx"
    assert _export(source, target, "--classes", "horse") == 0
    proto = onnx.load(str(target))
    conv = [node for node in proto.graph.node if node.op_type == "Conv"][-1]
    bias = next(t for t in proto.graph.initializer if t.name == conv.input[2]) if len(conv.input) > 2 else None
    keep = proto.metadata_props
    if bias is None:  # a zero bias was dropped at export: add a large negative one
        bias = onnx.numpy_helper.from_array(np.full((1,), -50.0, np.float32), "edgeseg_test_bias")
        proto.graph.initializer.append(bias)
        conv.input.append(bias.name)
    else:
        bias.CopyFrom(onnx.numpy_helper.from_array(np.full((1,), -50.0, np.float32), bias.name))
    assert keep is proto.metadata_props
    onnx.save(proto, str(target))
    report = tmp_path / "r.json"
    assert main(["verify", str(source), str(target), "--engine", "onnxruntime", "--random", "2", "--report", str(report)]) == 1
    assert json.loads(report.read_text())["output"]["argmax_agreement"] < 1.0


def test_verify_lists_what_it_did_not_compare_and_runs_without_report(tmp_path, capsys):
    source, target = _save(tmp_path, "mobilenet"), tmp_path / "m.onnx"
    assert _export(source, target, "--classes", "2") == 0
    capsys.readouterr()
    assert main(["verify", str(source), str(target), "--engine", "onnxruntime", "--random", "1"]) == 0  # no --report needed (issue 11)
    out = capsys.readouterr().out
    assert "DepthwiseConv2D" in out and "BatchNormalization" in out and "output: max_abs_err" in out
    assert not list(tmp_path.glob("*.json"))


def test_matching_is_the_same_for_repeated_and_cuda_friendly_exports(tmp_path):
    # Defect 3: the same .keras verified on some exports and not others.
    source = _save(tmp_path, "separable")
    seen = []
    for index, extra in enumerate([[], [], ["--cuda-friendly"]]):
        target, report = tmp_path / f"m{index}.onnx", tmp_path / f"r{index}.json"
        assert _export(source, target, "--classes", "3", *extra) == 0
        assert main(["verify", str(source), str(target), "--engine", "onnxruntime", "--random", "1", "--report", str(report)]) == 0
        data = json.loads(report.read_text())
        seen.append(([(c["name"], c["type"]) for c in data["layers"]], data["not_compared"]))
    assert seen[0] == seen[1] == seen[2] and seen[0][1] == []
    assert [kind for _, kind in seen[0][0]].count("SeparableConv2D") == 2


def test_scale_warning_says_the_scale_that_was_given(tmp_path, caplog):
    source = _save(tmp_path, "unet")
    with caplog.at_level("WARNING"):
        assert _export(source, tmp_path / "m.onnx", "--classes", "2", "--scale", "1") == 0
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "1/255" not in text and "scale" not in text.split("defaults for input")[-1].split(";")[0]
