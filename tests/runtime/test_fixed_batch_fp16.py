"""A fixed-batch file segments any number of frames; fp16 is the GPU path and says so where there is none."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest

from edgeseg.runtime import EdgesegError, Model, segment


def _fixed_batch(kit, path, batch):
    """The dominant-channel model with its batch axis fixed, as `edgeseg export --batch N` writes it."""
    kit.build_segmentation(path)
    proto = onnx.load(str(path))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(proto, str(path))
    return path


def test_a_fixed_batch_file_runs_any_batch_and_feeds_its_own(kit, tmp_path):
    model = Model(_fixed_batch(kit, tmp_path / "b2.onnx", 2), engine="onnxruntime")
    assert model.fixed_batch == 2 and model.config.batch == 2  # segment feeds the graph's batch
    frames = [kit.colour_frame(20, 30, colours) for colours in ([kit.RED], [kit.GREEN], [kit.BLUE])]
    masks = [r.mask for r in model.predict_batch(frames)]  # 3 frames: one full batch, one padded
    assert [int(np.bincount(m.ravel()).argmax()) for m in masks] == [0, 1, 2]
    assert [r.mask.shape for r in model.predict_batch(frames[:1])] == [(20, 30)]


def test_segment_a_folder_with_a_fixed_batch_file_writes_every_frame(kit, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, colour in enumerate((kit.RED, kit.GREEN, kit.BLUE)):
        cv2.imwrite(str(folder / f"f{i}.png"), kit.colour_frame(16, 16, [colour]))
    summary = segment(folder, model=_fixed_batch(kit, tmp_path / "b2.onnx", 2), out=tmp_path / "out",
                      engine="onnxruntime")
    assert summary["frames"] == 3 and summary["frames_failed"] == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    assert [r["ok"] for r in records] == [True] * 3


def test_fp16_without_a_gpu_is_refused_in_one_line(seg_model):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: fp16 runs here (benchmarks/gpu_check.sh checks it)")
    for options in ({}, {"provider": "tensorrt"}, {"engine": "onnxruntime"}):
        with pytest.raises(EdgesegError, match="fp16 runs on an NVIDIA GPU") as error:
            Model(seg_model, precision="fp16", **options)
        assert "\n" not in str(error.value)
    with pytest.raises(EdgesegError, match="GPU path"):
        Model(seg_model, precision="fp16", engine="openvino")
