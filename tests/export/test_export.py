"""`edgeseg export`: the ONNX file, its contract, its layout, and that it stays lean."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest

from edgeseg.cli import main
from edgeseg.runtime.contract import Contract, metadata_of


def _export(model_path, out, *extra):
    return main(["export", str(model_path), "-o", str(out), *extra])


def _contract(path):
    return Contract.from_onnx(onnx.load(str(path)))


def test_fcn8_export_carries_the_contract_and_a_lean_graph(exports):
    out = exports["fcn8"]  # `edgeseg export MODEL -o fcn8.onnx`, once for the session (conftest)
    proto = onnx.load(str(out))
    contract = Contract.from_onnx(proto)
    assert contract.kind == "segmentation"
    assert contract.output.classes == ("background", "cell") and contract.output.activation == "softmax"
    assert contract.input.mean == (0.485, 0.456, 0.406) and contract.input.layout == "NHWC"
    for key in ("keras_sha256", "tensorflow", "keras", "tf2onnx", "onnx", "opset", "edgeseg"):
        assert key in contract.source
    assert contract.verified is None  # not verified: no claim
    (image,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and isinstance(dims[0], str) and dims[1:] == [32, 32, 3]
    assert contract.output.name == proto.graph.output[0].name
    ops = [n.op_type for n in proto.graph.node]
    # Lean: one layout Transpose in, one out; no Shape/Gather sub-graphs around ConvTranspose.
    assert ops.count("Transpose") == 2 and ops[0] == "Transpose" and ops[-1] == "Transpose"
    assert not {"Shape", "Gather", "Concat", "Unsqueeze"} & set(ops)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_nchw_input_has_no_layout_transpose_in_front(model_files, tmp_path):
    out = tmp_path / "fcn8-nchw.onnx"
    assert _export(model_files["fcn8"], out, "--nchw", "--batch", "2") == 0
    proto = onnx.load(str(out))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 32, 32]
    assert proto.graph.node[0].op_type == "Conv"
    assert _contract(out).input.layout == "NCHW"


@pytest.mark.parametrize("name,kind", [("cae", "autoencoder"), ("encoder", "encoder"), ("decoder", "decoder")])
def test_cae_and_its_halves_export_and_run(model_files, exports, tmp_path, name, kind):
    out = exports["cae"] if name == "cae" else tmp_path / f"{name}.onnx"
    if name != "cae":
        assert _export(model_files[name], out) == 0
    contract = _contract(out)
    assert contract.kind == kind and contract.input.color == "GRAY"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == ("latent" if name == "decoder" else "image")
    assert session.get_inputs()[0].shape[1:] == ([7, 7, 2] if name == "decoder" else [28, 28, 1])
    if name == "decoder":
        raw = json.loads(metadata_of(onnx.load(str(out)))["edgeseg"])
        assert raw["latent"] == {"shape": [7, 7, 2]}  # the record's extra key survives


def test_cuda_friendly_leaves_no_asymmetric_conv_transpose(exports):
    plain, friendly = exports["fcn8"], exports["fcn8-cuda"]  # exported without and with --cuda-friendly

    def pads(path):
        return [next(list(a.ints) for a in n.attribute if a.name == "pads")
                for n in onnx.load(str(path)).graph.node if n.op_type == "ConvTranspose"]

    assert any(p[:2] != p[2:] for p in pads(plain))  # the mini FCN's up_final is asymmetric as exported
    assert all(p[:2] == p[2:] for p in pads(friendly))
    assert _contract(friendly).source["cuda_friendly"] is True


def test_foreign_keras_needs_kind_then_exports_with_given_facts(model_files, tmp_path, capsys):
    out = tmp_path / "foreign.onnx"
    assert _export(model_files["foreign"], out) == 2
    assert "--kind" in capsys.readouterr().err and not out.exists()
    assert _export(model_files["foreign"], out, "--kind", "segmentation", "--classes", "bg,cell", "--color", "BGR",
                   "--mean", "0.5", "--std", "0.25") == 0
    contract = _contract(out)
    assert contract.output.classes == ("bg", "cell") and contract.input.color == "BGR"
    assert contract.input.mean == (0.5,) and contract.input.std == (0.25,)


def test_export_refuses_what_is_not_a_keras_file(tmp_path, capsys):
    bogus = tmp_path / "model.keras"
    bogus.write_text("not a model")
    assert _export(bogus, tmp_path / "m.onnx") == 2
    assert "not a .keras file" in capsys.readouterr().err


def test_bad_batch_is_a_usage_error(model_files, tmp_path, capsys):
    assert _export(model_files["fcn8"], tmp_path / "m.onnx", "--batch", "zero") == 2
    assert "--batch" in capsys.readouterr().err
