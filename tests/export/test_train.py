import gzip
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.export._keras_file import load_model
from edgeseg.export._train import FCN8Options, train_fcn8
from edgeseg.sampledata import make_scene_set
from edgeseg.runtime.contract import Contract


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _mnist_like(folder, n=64):
    # Blobs at a digit-dependent place: enough structure for a loss to fall.
    rng = np.random.default_rng(0)
    labels = rng.choice([1, 5, 6], size=n).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    for i, d in enumerate(labels):
        images[i, 4 + d : 12 + d, 6:22] = 200 + rng.integers(0, 50)
    folder.mkdir()
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return folder


def test_fcn8_training_lowers_the_loss_and_writes_everything(tmp_path):
    make_scene_set(tmp_path / "data" / "images", tmp_path / "data" / "masks", count=16, size=32, classes=2, seed=1)
    # VGG16 at 1/8 width (as samples/models/fcn8): the same training loop, 1/60 of the weights.
    summary = train_fcn8(data=tmp_path / "data", out=tmp_path, options=FCN8Options(
        input_size=32, head_width=8, backbone_width=0.125, epochs=4, batch_size=4, learning_rate=1e-3, seed=1,
        classes=2, verbose=0))
    assert summary["loss"][-1] < summary["loss"][0]
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["val_loss"]) == 4 and len(history["val_iou"]) == 4
    assert all(len(epoch) == 2 for epoch in history["val_iou"])
    for picture in ("predictions.png", "iou.png"):
        assert (tmp_path / picture).stat().st_size > 1000
    model, record = load_model(tmp_path / "model.keras")
    contract = Contract.from_dict(record)
    assert contract.kind == "segmentation" and contract.output.classes == ("background", "object")
    assert (contract.input.height, contract.input.color) == (32, "RGB") and "source" not in record
    assert model.output.shape[1:] == (32, 32, 2)


def test_cli_train_cae_end_to_end(tmp_path):
    data = _mnist_like(tmp_path / "mnist")
    out = tmp_path / "cae"
    code = main(["train", "cae", "--data", str(data), "--digits", "1,5,6", "--epochs", "3", "--batch-size", "16",
                 "--out", str(out), "--generate-from=-8,0", "--seed", "3"])
    assert code == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_loss"]) == 3 and history["val_loss"][-1] < history["val_loss"][0]
    assert history["digits"] == [1, 5, 6]
    for picture in ("reconstructions.png", "latent_space.png", "generated.png"):
        assert (out / picture).stat().st_size > 1000
    _, record = load_model(out / "model.keras")
    assert record["kind"] == "autoencoder" and record["input"]["color"] == "GRAY"
    assert record["latent"]["latent_size"] == 2
    decoder, decoder_record = load_model(out / "decoder.keras")
    assert decoder_record["kind"] == "decoder" and decoder_record["latent"]["shape"] == [1, 1, 2]
    assert decoder.predict(np.zeros((1, 1, 1, 2), np.float32), verbose=0).shape == (1, 28, 28, 1)
    assert load_model(out / "encoder.keras")[1]["kind"] == "encoder"


def test_cli_train_fcn8_same_seed_same_history(tmp_path):
    make_scene_set(tmp_path / "data" / "images", tmp_path / "data" / "masks", count=6, size=32, classes=3, seed=0)
    runs = []
    for name in ("a", "b"):
        code = main(["train", "fcn8", "--data", str(tmp_path / "data"), "--out", str(tmp_path / name), "--input-size", "32", "--head-width", "4",
                     "--backbone-width", "0.125", "--epochs", "1", "--batch-size", "3", "--seed", "7", "--classes", "3"])
        assert code == 0
        history = json.loads((tmp_path / name / "history.json").read_text())
        assert len(history["val_iou"][0]) == 3 and history["classes"] == ["background", "class1", "class2"]
        runs.append(history["val_loss"])
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def test_cli_errors_are_one_line_exit_2(tmp_path):
    (tmp_path / "nothing").mkdir()  # a folder, but without images/ + masks/ or the .npy pair
    out = subprocess.run([sys.executable, "-m", "edgeseg", "train", "fcn8", "--data", str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "o"), "--input-size", "32", "--head-width", "4"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "edgeseg train: error: `" in out.stderr and "holds neither images/ + masks/" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_train_help_names_defaults_and_bad_item_rule():
    out = subprocess.run([sys.executable, "-m", "edgeseg", "train", "fcn8", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "skipped and counted" in text and "(default: 4096)" in text
    cae = subprocess.run([sys.executable, "-m", "edgeseg", "train", "cae", "--help"], capture_output=True, text=True)
    assert "--generate-from" in cae.stdout and "--digits" in cae.stdout
