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
    code = main(["verify", str(source), str(target), "--random", "2", "--report", str(report)])
    data = json.loads(report.read_text())
    assert code == 0, data
    assert "Traceback" not in capsys.readouterr().err
    assert data["output"]["max_abs_err"] < 1e-4 and data["output"]["argmax_agreement"] == 1.0
    summary = segment(video, model=target, out=tmp_path / "run")
    assert summary["frames"] == 3 and summary["frames_failed"] == 0
    masks = sorted((tmp_path / "run" / "masks").glob("*.png")) if (tmp_path / "run" / "masks").is_dir() else []
    for mask in masks:
        assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED).shape[:2] == (30, 40)
