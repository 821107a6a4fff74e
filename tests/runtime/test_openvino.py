"""The OpenVINO engine behind ``Model``: same masks as onnxruntime, what it reports, the missing-package error."""

import importlib.util
import json
import pickle
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from edgeseg.runtime import EdgesegError, Model, segment

# The OpenVINO engine is an extra (`openvino`, also in `bench`): CI installs it, so these tests run there;
# `pytest tests/runtime` with only `.[cpu,dev]` runs the rest, and the missing-package test below.
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")


def _random_frames(count, *, seed=0, size=(40, 52)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


@needs_openvino
def test_f32_masks_equal_onnxruntime_and_the_engine_is_reported(seg_model):
    frames = _random_frames(4)
    reference = Model(seg_model, provider="cpu").predict_batch(frames)
    model = Model(seg_model, engine="openvino", precision="f32")
    assert (model.engine, model.precision, model.providers) == ("openvino", "f32", ("OpenVINO:CPU",))
    assert "engine='openvino'" in repr(model)
    results = model.predict_batch(frames)
    for got, want in zip(results, reference):
        assert got.mask.shape == frames[0].shape[:2]
        np.testing.assert_array_equal(got.mask, want.mask)
        assert got.class_fraction == pytest.approx(want.class_fraction, abs=1e-6)


@needs_openvino
def test_default_precision_agrees_with_onnxruntime(seg_model):
    frames = _random_frames(3, seed=1)
    model = Model(seg_model, engine="openvino")
    assert model.precision in ("bf16", "f16", "f32")  # bf16 on CPUs with AMX/AVX512-BF16
    raw = model.run(np.stack([cv2.resize(f, (32, 32)) for f in frames]).astype(np.float32) / 255)
    want = Model(seg_model, provider="cpu").run(np.stack([cv2.resize(f, (32, 32)) for f in frames])
                                                  .astype(np.float32) / 255)
    assert raw.shape == want.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(raw, want, atol=2e-2)  # bf16 keeps ~3 significant digits
    for got, ref in zip(model.predict_batch(frames), Model(seg_model, provider="cpu").predict_batch(frames)):
        assert np.mean(got.mask == ref.mask) >= 0.97  # only near-tied pixels may flip


@needs_openvino
def test_autoencoder_reconstruction_matches(ae_model):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    want = Model(ae_model, provider="cpu")(digit)
    got = Model(ae_model, engine="openvino", precision="f32")(digit)
    np.testing.assert_array_equal(got.reconstruction, want.reconstruction)
    np.testing.assert_allclose(got.error_map, want.error_map, atol=1e-6)
    assert got.score == pytest.approx(want.score, abs=1e-6) and got.score > 0.03  # 64 lit pixels x 0.5 / 784


@needs_openvino
def test_threads_share_one_model(seg_model):
    model = Model(seg_model, engine="openvino", precision="f32")
    frames = _random_frames(6, seed=2)
    expected = [r.mask for r in model.predict_batch(frames)]
    found: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(k):
        try:
            found[k] = [model(f).mask for f in frames for _ in range(3)][::3]
        except BaseException as error:  # a thread's exception does not reach pytest by itself
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    assert sorted(found) == [0, 1, 2]  # every thread finished with its masks
    for masks in found.values():
        assert len(masks) == len(expected)
        for got, want in zip(masks, expected):
            np.testing.assert_array_equal(got, want)


@needs_openvino
def test_throughput_mode_splits_batches_and_keeps_their_order(seg_model):
    frames = _random_frames(5, seed=4)
    batch = np.stack([cv2.resize(f, (32, 32)) for f in frames]).astype(np.float32) / 255
    plain = Model(seg_model, engine="openvino", precision="f32")
    split = Model(seg_model, engine="openvino", precision="f32", throughput=True)
    assert plain.streams == 1 and split.streams >= 1
    split.warmup(4)
    np.testing.assert_allclose(split.run(batch), plain.run(batch), atol=1e-6)  # 5 frames over the streams
    np.testing.assert_allclose(split.run(batch[:1]), plain.run(batch[:1]), atol=1e-6)


@needs_openvino
def test_pickles_with_its_engine(seg_model):
    copy = pickle.loads(pickle.dumps(Model(seg_model, engine="openvino", precision="f32")))
    assert (copy.engine, copy.precision) == ("openvino", "f32")


@needs_openvino
def test_segment_reports_engine_and_precision(seg_model, tmp_path, kit):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, colours in enumerate([(kit.RED, kit.GREEN), (kit.BLUE, kit.RED), (kit.GREEN, kit.BLUE)]):
        cv2.imwrite(str(folder / f"f{i}.png"), kit.colour_frame(24, 30, colours))
    summary = segment(folder, model=seg_model, engine="openvino", precision="f32", batch=2,
                      out=tmp_path / "out", outputs=("masks",))
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (on_disk["engine"], on_disk["precision"], on_disk["frames"]) == ("openvino", "f32", 3)
    assert summary["providers"] == ["OpenVINO:CPU"]
    plain = segment(folder, model=seg_model, provider="cpu", out=tmp_path / "plain", outputs=("masks",))
    assert (plain["engine"], plain["precision"]) == ("onnxruntime", "fp32")
    for i in range(3):
        a = cv2.imread(str(tmp_path / "out" / "masks" / f"f{i}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "plain" / "masks" / f"f{i}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(a, b)


@needs_openvino
def test_cli_engine_option(seg_model, tmp_path, kit):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(20, 20, (kit.RED,)))
    done = subprocess.run([sys.executable, "-m", "edgeseg", "segment", str(image), "--model", str(seg_model),
                           "--out", str(tmp_path / "o"), "--engine", "openvino", "--precision", "f32",
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "engine openvino" in done.stderr
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["engine"] == "openvino"


def test_missing_openvino_is_one_clear_line(seg_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets where it is not installed
    with pytest.raises(EdgesegError, match=r"pip install 'edgeseg\[openvino\]'"):
        Model(seg_model, engine="openvino")
    assert Model(seg_model, engine="auto", provider="cpu").engine == "onnxruntime"  # auto falls back quietly


@needs_openvino
def test_bad_engine_and_precision_are_user_errors(seg_model, tmp_path):
    with pytest.raises(EdgesegError, match="Unknown engine 'tensorrt'"):
        Model(seg_model, engine="tensorrt")
    with pytest.raises(EdgesegError, match="Unknown precision 'int4'"):
        Model(seg_model, engine="openvino", precision="int4")
    with pytest.raises(EdgesegError, match="OpenVINO's knob"):
        Model(seg_model, engine="onnxruntime", precision="f32")
    with pytest.raises(EdgesegError, match="no such file"):
        Model(tmp_path / "missing.onnx", engine="openvino")
    # `auto` is what this machine's heuristic says: OpenVINO only on a CPU with bf16 (AMX or AVX512-BF16).
    from edgeseg.runtime import heuristic_config

    expected = heuristic_config(provider="cpu", kind="segmentation")[0].engine
    assert Model(seg_model, engine="auto", provider="cpu", tuning_cache=tmp_path / "cache").engine == expected


def test_default_engine_is_auto_and_named_onnxruntime_knobs_keep_onnxruntime(seg_model, tmp_path, kit):
    from edgeseg.runtime import heuristic_config

    expected = heuristic_config()[0].engine  # no tuning record for this file: the heuristic decides
    default = Model(seg_model, tuning_cache=tmp_path / "cache")
    assert default.engine == expected and "no tuning record" in default.choice_reason
    for knobs in ({"provider": "cpu"}, {"optimization": "basic"}):
        kept = Model(seg_model, tuning_cache=tmp_path / "cache", **knobs)
        assert kept.engine == "onnxruntime" and "onnxruntime's knob" in kept.choice_reason
    # threads named at the default engine are kept, whichever engine runs
    assert Model(seg_model, threads=1, tuning_cache=tmp_path / "cache").config.threads == 1
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(8, 8, [kit.RED]))
    summary = segment(image, model=seg_model, out=tmp_path / "o")
    assert summary["engine"] == expected and summary["engine_choice"]
