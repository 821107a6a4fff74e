"""A model file is read once (ModelFile), and every bad model or contract is one line at load, never at a frame."""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.runtime import (Contract, EdgesegError, Model, ModelFile, machine_fingerprint, openvino_available,
                             record_path, segment, write_contract)

ENGINES = ["onnxruntime"] + (["openvino"] if openvino_available() else [])


class _Opens:
    """Counts the opens of one path from Python (builtins.open, io.open, os.open): what edgeseg's code does.
    The engines' own C++ readers (onnxruntime, OpenVINO) are not seen, and are not edgeseg's to count."""

    def __init__(self, monkeypatch, path: Path) -> None:
        self.count, self.target = 0, os.path.realpath(path)
        for owner, name in ((builtins, "open"), (io, "open"), (os, "open")):
            original = getattr(owner, name)
            monkeypatch.setattr(owner, name, self._counting(original))

    def _counting(self, original):
        def counted(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(file) == self.target:
                self.count += 1
            return original(file, *args, **kwargs)
        return counted


def _copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


@pytest.mark.parametrize("engine", [None, *ENGINES])
def test_one_model_opens_its_file_once_and_hashes_it_only_for_a_record(seg_model, tmp_path, monkeypatch, engine):
    model = _copy(seg_model, tmp_path / f"fresh-{engine}.onnx")  # not read before in this process
    cache = tmp_path / "cache"
    cache.mkdir()
    # A record of this machine for another model (another size): not this file's, so no reason to hash it.
    record_path("0" * 64, machine_fingerprint(), cache).write_text(json.dumps({"model_bytes": 1}))
    opens = _Opens(monkeypatch, model)
    Model(model, engine=engine, tuning_cache=cache)
    # One read: head, metadata, contract, graph names. No hash: no tuning record here could be this file's.
    assert opens.count == 1


def test_the_hash_is_computed_once_for_an_unchanged_file(seg_model, tmp_path, monkeypatch):
    model = _copy(seg_model, tmp_path / "m.onnx")
    opens = _Opens(monkeypatch, model)
    first = ModelFile.read(model).sha256
    assert opens.count == 2  # the read, then the hash
    assert ModelFile.read(model).sha256 == first and opens.count == 2  # neither again
    data = bytearray(model.read_bytes())
    data[-1] ^= 1  # the same size: only the modification time tells it changed
    model.write_bytes(bytes(data))
    os.utime(model, ns=(1, 1))
    opens.count = 0
    assert ModelFile.read(model).sha256 != first and opens.count == 2


def test_the_file_says_what_it_holds(seg_model, tmp_path):
    plain = ModelFile.read(seg_model)
    assert plain.inputs == ("image",) and plain.outputs == ("scores",)
    assert plain.contract.kind == "segmentation" and not plain.quantized
    assert {"Conv", "Softmax", "Transpose"} <= plain.operators
    # A QDQ graph, as onnxruntime's quantizer writes it, is quantized whatever its contract says.
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              initializer=[numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                                           numpy_helper.from_array(np.array(0, np.uint8), "z")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "q.onnx"))
    quantized = ModelFile.read(tmp_path / "q.onnx")
    assert quantized.quantized and quantized.contract is None


def _renamed(path: Path, old: bytes, new: bytes) -> Path:
    # Rename a tensor in the graph (not in the contract, which names it too) by its bytes: same length.
    data = path.read_bytes()
    graph_end = data.index(b"edgeseg")
    path.write_bytes(data[:graph_end].replace(old, new) + data[graph_end:])
    return path


@pytest.mark.parametrize("engine", ENGINES)
def test_a_tensor_name_that_is_not_utf8_is_one_line_at_load(seg_model, tmp_path, engine):
    # A fuzzed file the engines load, whose names their bindings then fail to decode (UnicodeDecodeError before).
    model = _renamed(_copy(seg_model, tmp_path / "m.onnx"), b"scores", b"sc\xffres")
    with pytest.raises(EdgesegError, match=r"not UTF-8 text") as error:
        Model(model, engine=engine)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_model_path_that_is_not_utf8_runs(seg_model, tmp_path, kit, engine):
    # Linux allows any bytes in a name; onnxruntime's binding took them for "not a valid ONNX model".
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/m\xff\xfe.onnx"))
    _copy(seg_model, odd)
    frame = kit.colour_frame(32, 32, [kit.RED, kit.BLUE])
    np.testing.assert_array_equal(Model(odd, engine=engine)(frame).mask, Model(seg_model, engine=engine)(frame).mask)


def test_classes_that_disagree_with_the_output_are_refused_at_load(tmp_path, kit):
    model = kit.build_segmentation(tmp_path / "m.onnx", classes=("a", "b"))  # the graph outputs 3 channels
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(8, 8, [kit.RED]))
    for _ in range(2):  # refused before --out is claimed: the rerun meets the same line, not "already holds a run"
        with pytest.raises(EdgesegError, match=r"output `scores` has 3 channels .* names 2 classes"):
            segment(image, model=model, out=tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_an_encoder_half_is_refused_at_load_not_run_as_segmentation(tmp_path, kit):
    model = kit.build_segmentation(tmp_path / "m.onnx")
    proto = onnx.load(str(model))
    write_contract(proto, Contract.from_onnx(proto).replace(kind="encoder"))
    onnx.save(proto, str(model))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), kit.colour_frame(8, 8, [kit.RED]))
    with pytest.raises(EdgesegError, match="'encoder' model"):
        segment(image, model=model, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert Model(model).run(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 32, 32, 3)  # raw runs still work


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX feature")
def test_a_fifo_as_model_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(EdgesegError, match="not a regular file"):
        Model(tmp_path / "m.onnx")
