import json

import pytest

from edgeseg.runtime import Contract, EdgesegError, InputSpec, OutputSpec
from edgeseg.runtime.contract import METADATA_KEY, write_contract


def _contract(**changes):
    base = Contract(
        kind="segmentation",
        input=InputSpec(height=64, width=96, channels=3, color="RGB", mean=(0.5, 0.4, 0.3), std=(0.2,)),
        output=OutputSpec(name="probs", activation="softmax", classes=("background", "cell")),
        source={"keras_sha256": "ab" * 32},
    )
    return base.replace(**changes)


def test_round_trip_through_json_keeps_every_field():
    contract = _contract(verified={"ok": True, "max_abs_err": 1e-6, "layers_checked": 7})
    again = Contract.from_json(contract.to_json())
    assert again == contract
    data = json.loads(contract.to_json())
    assert data["format"] == 1
    assert data["input"]["mean"] == [0.5, 0.4, 0.3]
    assert data["output"]["palette"][:2] == [[0, 0, 0], [230, 25, 75]]


def test_default_palette_has_one_colour_per_class_and_background_black():
    contract = _contract()
    assert len(contract.output.palette) == 2
    assert contract.output.palette[0] == (0, 0, 0)


@pytest.mark.parametrize("missing", ["kind", "input"])
def test_missing_top_level_key_is_named(missing):
    data = _contract().to_dict()
    del data[missing]
    with pytest.raises(EdgesegError, match=f"`{missing}`"):
        Contract.from_dict(data)


def test_missing_input_key_is_named():
    data = _contract().to_dict()
    del data["input"]["height"]
    with pytest.raises(EdgesegError, match="`input.height`"):
        Contract.from_dict(data, origin="m.onnx")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("layout", "HWC", "input.layout"),
        ("color", "YUV", "input.color"),
        ("resize", "crop", "input.resize"),
        ("channels", 1, "has 3 channel"),
        ("std", [0.0], "must not contain 0"),
        ("mean", [1, 2], "1 or 3 values"),
        ("scale", float("nan"), r"`input.scale` \(--scale\) must hold finite numbers, got nan"),
        ("scale", float("inf"), "must hold finite numbers, got inf"),
        ("scale", 0, "must not be 0"),
        ("mean", [0.0, float("-inf"), 0.0], r"`input.mean` \(--mean\) must hold finite numbers, got -inf"),
        ("std", [float("nan")], r"`input.std` \(--std\) must hold finite numbers"),
        ("std", [{"a": 1}], "must hold numbers, got"),
        ("scale", 10 ** 400, "must hold numbers"),
    ],
)
def test_bad_input_values_are_refused_with_the_key(key, value, message):
    data = _contract().to_dict()
    data["input"][key] = value
    with pytest.raises(EdgesegError, match=message):
        Contract.from_dict(data)


def test_segmentation_needs_classes():
    with pytest.raises(EdgesegError, match="output.classes"):
        _contract(output=OutputSpec(activation="softmax"))


def test_unknown_keys_are_ignored_so_later_formats_can_extend():
    data = _contract().to_dict()
    data["input"]["future_option"] = 3
    data["extension"] = {"x": 1}
    assert Contract.from_dict(data).input == _contract().input


def test_wrong_format_version_is_refused():
    data = _contract().to_dict()
    data["format"] = 99
    with pytest.raises(EdgesegError, match="format 99"):
        Contract.from_dict(data)


def test_metadata_round_trip_on_a_real_model_proto():
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph)
    onnx.helper.set_model_props(model, {"other": "kept"})
    write_contract(model, _contract())
    write_contract(model, _contract(kind="autoencoder"))  # replaces, does not duplicate
    meta = {e.key: e.value for e in onnx.load_from_string(model.SerializeToString()).metadata_props}
    assert meta["other"] == "kept"
    assert Contract.from_onnx(meta).kind == "autoencoder"
    assert list(meta).count(METADATA_KEY) == 1


def test_model_without_contract_reads_as_none():
    assert Contract.from_onnx({"producer": "x"}) is None


def test_broken_json_names_the_key():
    with pytest.raises(EdgesegError, match="not valid JSON"):
        Contract.from_onnx({METADATA_KEY: "{not json"})


@pytest.mark.parametrize("value", ["224x224", 7, None, [224, 224, 3]])
def test_an_input_section_that_is_not_an_object_is_named(value):
    with pytest.raises(EdgesegError, match="`input` must be a JSON object"):
        Contract.from_dict({"kind": "segmentation", "input": value, "output": {"classes": ["a"]}})


def test_an_input_larger_than_the_cap_is_refused_when_read():
    from edgeseg.runtime.contract import MAX_INPUT_PIXELS

    with pytest.raises(EdgesegError, match="100000x100000 pixels"):
        InputSpec(height=100000, width=100000, channels=3)
    assert InputSpec(height=8192, width=8192, channels=3).height * 8192 == MAX_INPUT_PIXELS  # the cap itself is allowed


def test_nesting_is_bounded_and_named_whether_the_json_parser_copes_or_not():
    from edgeseg.runtime.contract import MAX_NESTING

    data = _contract().to_dict()
    data["source"] = {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
    with pytest.raises(EdgesegError, match=rf"`source.deep\[0\]\[0\].*` is nested more than {MAX_NESTING} levels"):
        Contract.from_json(json.dumps(data))
    text = json.dumps(_contract().to_dict())[:-1] + ', "x": ' + "[" * 50000 + "]" * 50000 + "}"
    with pytest.raises(EdgesegError, match="nested too deep for Python's JSON parser"):
        Contract.from_json(text)  # was a RecursionError traceback
    data["source"] = {"ok": [[[1]]]}
    assert Contract.from_json(json.dumps(data)).source == {"ok": [[[1]]]}
