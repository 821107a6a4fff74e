"""`edgeseg tune` and `Model(engine="auto")` on a tiny model (no timing is asserted)."""

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.runtime import (
    EdgesegError,
    EngineConfig,
    Model,
    choose_config,
    find_record,
    make_session,
    openvino_available,
    pick,
    record_path,
    segment,
)
from edgeseg.tune import TuneOptions, candidate_configs, tune

SIZE = 16


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_segmenter):
    root = tmp_path_factory.mktemp("tune")
    model = tiny_segmenter(root / "tiny.onnx", size=SIZE, classes=("bg", "fg"))
    cache = root / "cache"
    record = tune(model, TuneOptions(seconds=3, frames=2, cache=cache, progress=False, batches=(1, 2)))
    return model, cache, record


def test_tune_writes_a_record_of_this_machine_and_model(tuned):
    model, cache, record = tuned
    stored = json.loads(Path(record["path"]).read_text())
    assert Path(record["path"]).parent == cache
    assert stored["fingerprint"]["cores"] >= 1 and stored["fingerprint"]["cpu"]
    assert stored["fingerprint"]["libraries"]["onnxruntime"]
    assert len(stored["model_sha256"]) == 64
    measured = [c for c in stored["candidates"] if c["fps"]]
    reference = next(c for c in measured if c["config"] == asdict(EngineConfig()))
    assert reference["agreement"] == 1.0  # the FP32 reference agrees with itself
    assert all(0.0 <= c["agreement"] <= 1.0 for c in measured)
    fps = [c["fps"] for c in stored["candidates"] if c["fps"]]
    assert fps == sorted(fps, reverse=True)
    assert stored["choice"]["exact"] == pick(stored, "exact")[0]["config"]


def test_model_auto_runs_the_recorded_choice(tuned, caplog):
    model, cache, record = tuned
    with caplog.at_level("INFO", logger="edgeseg.runtime"):
        auto = Model(model, engine="auto", tuning_cache=cache)
    assert asdict(auto.config) == record["choice"]["exact"]
    assert auto.engine == record["choice"]["exact"]["engine"]
    assert "tuning record" in auto.choice_reason
    assert any("engine auto runs" in r.getMessage() and "tuning record" in r.getMessage() for r in caplog.records)
    # The fast bar reads the same record.
    assert asdict(Model(model, engine="auto", tuning_cache=cache, bar="fast").config) == record["choice"]["fast"]


def test_record_of_another_machine_is_not_used(tuned, tmp_path):
    model, cache, record = tuned
    forged = json.loads(Path(record["path"]).read_text())
    forged["fingerprint"]["cpu"] = "AMD EPYC 7B13"
    other = tmp_path / "cache"
    other.mkdir()
    (other / Path(record["path"]).name).write_text(json.dumps(forged))  # same file name, other machine inside
    assert find_record(model, cache=other) is None
    auto = Model(model, engine="auto", tuning_cache=other)
    assert "no tuning record" in auto.choice_reason


def test_record_of_another_model_is_not_used(tuned, tmp_path, tiny_segmenter):
    model, cache, record = tuned
    changed = tiny_segmenter(tmp_path / "tiny.onnx", size=SIZE, classes=("bg", "fg"), seed=1)  # other weights: another hash
    assert find_record(changed, cache=cache) is None
    forged = json.loads(Path(record["path"]).read_text())
    forged["model_sha256"] = "0" * 64
    other = tmp_path / "cache"
    other.mkdir()
    (other / Path(record["path"]).name).write_text(json.dumps(forged))
    assert find_record(model, cache=other) is None
    assert "no tuning record" in choose_config(model, cache=other)[1]


def test_bars_pick_the_fastest_candidate_above_each(tmp_path):
    def candidate(engine, fps, agreement, file="fp32"):
        return {"config": asdict(EngineConfig(engine=engine, file=file)), "fps": fps, "agreement": agreement}

    record = {"int8": {"path": str(tmp_path / "gone.onnx"), "sha256": "0" * 64}, "candidates": [
        candidate("openvino", 90.0, 0.9999, file="int8"),  # fastest, but its INT8 file is gone
        candidate("openvino", 80.0, 0.995),
        candidate("onnxruntime", 50.0, 1.0),
        candidate("onnxruntime", 70.0, None),  # not measured
    ]}
    assert pick(record, "exact")[0]["fps"] == 50.0
    assert pick(record, "fast")[0]["fps"] == 80.0


def test_candidates_follow_the_machine():
    plain = candidate_configs(TuneOptions(), cores=2, bf16=False, openvino=True)
    assert plain[0] == EngineConfig()  # the FP32 reference first
    assert not any(c.precision == "bf16" for c in plain) and not any(c.file == "int8" for c in plain)
    amx = candidate_configs(TuneOptions(int8=Path(__file__)), cores=2, bf16=True, openvino=False)
    assert {c.engine for c in amx} == {"onnxruntime"} and any(c.file == "int8" for c in amx)
    assert len(amx) == len(set(amx))


def test_the_heuristics_engine_is_measured_first():
    # A short budget measures the first candidates only: they must be the ones `engine="auto"` would run here.
    for first, other in (("onnxruntime", "openvino"), ("openvino", "onnxruntime")):
        configs = candidate_configs(TuneOptions(), cores=2, bf16=False, openvino=True, first=first)
        engines = [c.engine for c in configs[1:]]
        assert configs[0] == EngineConfig() and engines.index(other) == engines.count(first), engines


def test_tune_command_prints_the_table_and_choice(tuned, tmp_path, capsys):
    model, _, _ = tuned
    # Progress on (the default) while stderr is no terminal, as when piped into a file: no bar drawn into it.
    code = main(["tune", str(model), "--seconds", "1", "--frames", "1", "--cache", str(tmp_path), "--fast"])
    shown = capsys.readouterr()
    assert code == 0 and "choice at the fast bar:" in shown.out and "record:" in shown.out
    assert "\r" not in shown.err and "config/s" not in shown.err
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert f"measured {record['measured']} of {len(record['candidates'])} candidates" in shown.out
    assert record["measured"] == sum(1 for c in record["candidates"] if c["fps"] is not None) >= 1


def test_strict_session_on_the_cpu_runs(tuned):
    model, _, _ = tuned
    session = make_session(model, provider="cpu", strict=True)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert Model(model, provider="cpu", strict=True).providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize("provider, missing", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_strict_gpu_without_a_gpu_is_one_line(tuned, provider, missing):
    import onnxruntime as ort

    model, _, _ = tuned
    if missing in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has {missing}: benchmarks/gpu_check.sh checks strict on the GPU")
    with pytest.raises(EdgesegError, match=f"no {missing}") as caught:
        Model(model, provider=provider, strict=True)
    assert "\n" not in str(caught.value) and "--strict" in str(caught.value)


def test_fp16_on_the_cpu_is_a_user_error(tuned):
    model, _, _ = tuned
    with pytest.raises(EdgesegError, match="fp16 is the GPU path"):
        make_session(model, provider="cpu", fp16=True)


def test_tuning_record_path_moves_with_cache(tuned, tmp_path):
    model, _, record = tuned
    path = record_path(record["model_sha256"], record["fingerprint"], tmp_path)
    assert path.parent == tmp_path and path.name == Path(record["path"]).name


@pytest.mark.skipif(not openvino_available(), reason="the fused candidates are OpenVINO's; openvino is a dev dependency")
def test_fused_candidates_are_measured_and_model_auto_runs_the_fused_file(tuned, tmp_path):
    model, cache, record = tuned
    stored = json.loads(Path(record["path"]).read_text())
    fused = [c for c in stored["candidates"] if c["config"]["fused"] and c["fps"]]
    assert fused and Path(stored["fused"]["fp32"]["path"]).is_file()
    for candidate in fused:  # the same masks as the unfused twin: the class-id rule only moved into the graph
        twin = next(c for c in stored["candidates"] if c["config"] == {**candidate["config"], "fused": False})
        assert candidate["agreement"] == twin["agreement"]
    # Make the fused candidate the fastest: engine auto then runs the fused file, with the same masks.
    fused[0]["fps"] = 10 * max(c["fps"] or 0.0 for c in stored["candidates"])
    fused[0]["agreement"] = 1.0
    other = tmp_path / "cache"
    other.mkdir()
    (other / Path(record["path"]).name).write_text(json.dumps(stored))
    auto = Model(model, engine="auto", tuning_cache=other)
    assert auto.config.fused and auto.path == Path(stored["fused"]["fp32"]["path"])
    assert auto.contract.output.fused == "class_ids"
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    plain = Model(model, engine=auto.engine, precision=auto.precision, throughput=auto.config.throughput)
    assert np.array_equal(auto(image).mask, plain(image).mask)


def test_segment_feeds_the_batch_of_the_recorded_choice(tuned, tmp_path):
    model, _, record = tuned
    stored = json.loads(Path(record["path"]).read_text())
    # Make onnxruntime fp32 at batch 2 the fastest exact candidate: segment must then run batches of 2.
    chosen = next(c for c in stored["candidates"]
                  if c["config"]["engine"] == "onnxruntime" and c["config"]["file"] == "fp32"
                  and not c["config"]["fused"] and c["config"]["batch"] == 2)
    chosen["fps"] = 10 * max(c["fps"] or 0.0 for c in stored["candidates"])
    chosen["agreement"] = 1.0
    other = tmp_path / "cache"
    other.mkdir()
    (other / Path(record["path"]).name).write_text(json.dumps(stored))
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        cv2.imwrite(str(frames / f"{i}.png"), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    auto = Model(model, tuning_cache=other)
    assert auto.config.batch == 2
    tuned_run = segment(frames, model=auto, out=tmp_path / "tuned", outputs=("masks",))
    named_run = segment(frames, model=auto, out=tmp_path / "named", outputs=("masks",), batch=1)
    assert (tuned_run["batch"], named_run["batch"]) == (2, 1)  # a --batch the user names still wins
    assert tuned_run["frames"] == named_run["frames"] == 5
    for mask in (tmp_path / "named" / "masks").iterdir():
        assert np.array_equal(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(tmp_path / "tuned" / "masks" / mask.name), cv2.IMREAD_UNCHANGED))
