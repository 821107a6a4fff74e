"""The fast levers: the class-id rule fused into the graph, several inference calls in flight."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.runtime import (Contract, EdgesegError, InputSpec, Model, OutputSpec, fast_path, fuse_class_ids,
                             open_source, read_mask_png, segment, write_contract)

ROOT = Path(__file__).resolve().parents[2]
FCN8 = ROOT / "samples" / "models" / "fcn8" / "model.onnx"
SCENES = ROOT / "samples" / "scenes.avi"


def _one_channel_model(path: Path) -> Path:
    """A one-channel logit model (red minus green): the threshold rule, not argmax, makes its ids."""
    weight = numpy_helper.from_array(np.array([1.0, -1.0, 0.0], np.float32).reshape(1, 3, 1, 1), "w")
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["logit"]),
             helper.make_node("Transpose", ["logit"], ["score"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 16, 16, 1])],
                              initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_contract(model, Contract(kind="segmentation", input=InputSpec(height=16, width=16, channels=3),
                                   output=OutputSpec(name="score", activation="none", classes=("bg", "red"))))
    onnx.save(model, str(path))
    return path


def test_fused_sample_fcn8_gives_byte_identical_masks_on_real_frames(tmp_path):
    fast = fuse_class_ids(FCN8, tmp_path / "fcn8.fast.onnx")
    plain, fused = Model(FCN8, provider="cpu"), Model(fast, provider="cpu")
    assert fused.contract.output.fused == "class_ids" and fused.contract.output.name == plain.contract.output.name
    frames = [f.image for f in open_source(SCENES, max_frames=12) if f.ok]
    assert len(frames) == 12
    ids = fused.run(np.zeros((2, 96, 96, 3), np.float32))
    assert ids.dtype == np.uint8 and ids.shape == (2, 96, 96)  # one byte per pixel out of the engine
    for image in frames:
        a, b = plain(image), fused(image)
        assert a.mask.dtype == b.mask.dtype and a.mask.tobytes() == b.mask.tobytes()
        assert a.class_fraction == b.class_fraction
    # through segment(): the same PNG bytes
    segment(SCENES, model=plain, out=tmp_path / "plain", outputs=("masks",), max_frames=6)
    segment(SCENES, model=fused, out=tmp_path / "fused", outputs=("masks",), max_frames=6)
    names = sorted(p.name for p in (tmp_path / "plain" / "masks").iterdir())
    assert len(names) == 6
    for name in names:
        assert (tmp_path / "plain" / "masks" / name).read_bytes() == (tmp_path / "fused" / "masks" / name).read_bytes()


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_fused_tiny_models_keep_their_masks_in_either_layout(tmp_path, kit, layout):
    model = kit.build_segmentation(tmp_path / "seg.onnx", layout=layout)
    fast = fuse_class_ids(model)
    assert fast == fast_path(model) == tmp_path / "seg.fast.onnx"
    frame = kit.colour_frame(40, 60, [kit.RED, kit.GREEN, kit.BLUE])
    assert np.array_equal(Model(model, provider="cpu")(frame).mask, Model(fast, provider="cpu")(frame).mask)
    assert set(np.unique(Model(fast, provider="cpu")(frame).mask)) == {0, 1, 2}


def test_fused_one_channel_model_keeps_the_threshold_rule(tmp_path):
    model = _one_channel_model(tmp_path / "one.onnx")
    fast = fuse_class_ids(model)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    plain_mask, fast_mask = Model(model, provider="cpu")(image).mask, Model(fast, provider="cpu")(image).mask
    assert np.array_equal(plain_mask, fast_mask) and 0 < fast_mask.mean() < 1  # both classes present


def test_fused_model_says_it_has_no_probabilities_and_cannot_be_fused_twice(tmp_path, kit, ae_model):
    fast = fuse_class_ids(kit.build_segmentation(tmp_path / "seg.onnx"))
    with pytest.raises(EdgesegError, match="class ids"):
        Model(fast, provider="cpu")(kit.colour_frame(8, 8, [kit.RED]), probabilities=True)
    with pytest.raises(EdgesegError, match="already outputs class ids"):
        fuse_class_ids(fast, tmp_path / "again.onnx")
    with pytest.raises(EdgesegError, match="segmentation model"):
        fuse_class_ids(ae_model)
    # an unfused contract's JSON is unchanged: no `fused` key
    assert "fused" not in Contract.from_onnx(tmp_path / "seg.onnx").to_dict()["output"]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_several_calls_in_flight_keep_frame_order_and_outputs(tmp_path, kit, engine):
    pytest.importorskip("openvino") if engine == "openvino" else None
    video = kit.moving_video(tmp_path / "clip.avi", count=23)  # a red square moving: every frame differs
    model = kit.build_segmentation(tmp_path / "seg.onnx")
    one = segment(video, model=Model(model, engine=engine), out=tmp_path / "one", outputs=("masks", "jsonl"),
                  inflight=1)
    many = segment(video, model=str(model), out=tmp_path / "many", outputs=("masks", "jsonl"), inflight=3,
                   engine=engine)
    assert one["inflight"] == 1 and many["inflight"] == 3 and many["frames"] == 23
    assert [r["index"] for r in _records(tmp_path / "many")] == list(range(23))
    for a, b in zip(_records(tmp_path / "one"), _records(tmp_path / "many")):
        assert (a["name"], a["class_fraction"]) == (b["name"], b["class_fraction"])
    for path in sorted((tmp_path / "one" / "masks").iterdir()):
        assert np.array_equal(read_mask_png(path), read_mask_png(tmp_path / "many" / "masks" / path.name))


def test_inflight_must_be_positive(seg_model, tmp_path):
    with pytest.raises(EdgesegError, match="inflight"):
        segment(seg_model, model=seg_model, out=tmp_path / "out", inflight=0)


def test_inflight_is_refused_where_it_would_be_ignored(seg_model, tmp_path, kit):
    import subprocess
    import sys

    video = kit.moving_video(tmp_path / "clip.avi", count=3)
    # A live source's frame is inferred as soon as it comes: several calls in flight cannot apply to it.
    done = subprocess.run([sys.executable, "-m", "edgeseg", "segment", str(video), "tcp://127.0.0.1:9", "--model",
                           str(seg_model), "--out", str(tmp_path / "o"), "--inflight", "2"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "--inflight" in done.stderr.strip().splitlines()[-1], done.stderr[-500:]
    # Files keep several calls in flight, one source or many.
    summary = segment([str(video), str(video)], model=seg_model, out=tmp_path / "two", inflight=2)
    assert summary["inflight"] == 2 and summary["frames"] == 6
