import pickle
import threading
import warnings
import zipfile

import cv2
import numpy as np
import pytest

from edgeseg.runtime import EdgesegError, Model, ProviderFallbackWarning, make_session
from edgeseg.runtime import default_threads


def _bands(mask):
    # The class of each of three vertical bands, read at the band centres.
    width = mask.shape[1]
    return [int(mask[mask.shape[0] // 2, x]) for x in (width // 6, width // 2, 5 * width // 6)]


def test_mask_is_at_the_frames_own_size_and_follows_the_colour_order(seg_model, kit):
    model = Model(seg_model, provider="cpu")
    frame = kit.colour_frame(50, 90, [kit.RED, kit.GREEN, kit.BLUE])
    result = model(frame)
    assert result.mask.shape == (50, 90) and result.mask.dtype == np.uint8
    assert _bands(result.mask) == [0, 1, 2]  # RGB model: channel 0 is red, so red -> class 0
    assert sum(result.class_fraction.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.class_fraction["red"] == pytest.approx(1 / 3, abs=0.03)
    assert result.probabilities is None


def test_nchw_bgr_model_reads_channels_in_its_own_order(tmp_path, kit):
    model = Model(kit.build_segmentation(tmp_path / "nchw.onnx", layout="NCHW", color="BGR"))
    assert _bands(model(kit.colour_frame(40, 60, [kit.RED, kit.GREEN, kit.BLUE])).mask) == [2, 1, 0]


@pytest.mark.parametrize("convert", [
    lambda f: cv2.cvtColor(f, cv2.COLOR_BGR2BGRA),
    lambda f: f.astype(np.uint16) * 257,
    lambda f: f[:, :, 2],  # gray: the red channel, so red bands are bright
])
def test_bgra_16bit_and_gray_frames_are_converted(seg_model, convert, kit):
    model = Model(seg_model)
    frame = convert(kit.colour_frame(30, 45, [kit.RED, kit.GREEN, kit.BLUE]))
    mask = model(frame).mask
    assert mask.shape == (30, 45)
    if frame.ndim == 3:
        assert _bands(mask) == [0, 1, 2]


def test_probabilities_on_request(seg_model, kit):
    result = Model(seg_model)(kit.colour_frame(20, 30, [kit.BLUE]), probabilities=True)
    assert result.probabilities.shape == (20, 30, 3)
    assert np.allclose(result.probabilities.sum(axis=-1), 1.0, atol=1e-4)
    assert (result.probabilities[..., 2] > 0.99).all()


def test_batch_equals_single_calls_and_run_is_raw(seg_model, kit):
    model = Model(seg_model)
    frames = [kit.colour_frame(20 + 7 * i, 40 - 5 * i, [kit.RED, kit.BLUE, kit.GREEN][i:] + [kit.RED][:i]) for i in range(3)]
    batch = model.predict_batch(frames)
    for frame, result in zip(frames, batch):
        assert np.array_equal(result.mask, model(frame).mask)
    raw = model.run(np.zeros((2, 32, 32, 3), np.float32))
    assert raw.shape == (2, 32, 32, 3) and np.allclose(raw, 1 / 3, atol=1e-5)


def test_autoencoder_gives_reconstruction_error_map_and_score(ae_model):
    model = Model(ae_model)
    frame = np.full((40, 50), 200, np.uint8)
    result = model(frame)
    assert result.reconstruction.shape == (40, 50) and abs(int(result.reconstruction[0, 0]) - 100) <= 1
    assert result.error_map.shape == (40, 50)
    assert result.score == pytest.approx(0.5 * 200 / 255, abs=1e-3)
    assert model(np.zeros((40, 50), np.uint8)).score == pytest.approx(0.0, abs=1e-6)


def test_iterate_over_a_folder_marks_bad_items(seg_model, tmp_path, kit):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), kit.colour_frame(10, 12, [kit.GREEN]))
    (folder / "b.png").write_bytes(b"")
    pairs = list(Model(seg_model).iterate(folder))
    assert [(f.name, r is None) for f, r in pairs] == [("a", False), ("b", True)]
    assert (pairs[0][1].mask == 1).all() and "0 bytes" in pairs[1][0].error


def test_threads_share_one_model(seg_model, kit):
    model = Model(seg_model)
    frames = [kit.colour_frame(30, 30 + i, [kit.RED, kit.GREEN, kit.BLUE][i % 3:] + [kit.GREEN]) for i in range(8)]
    expected = [model(f).mask for f in frames]
    got = [None] * len(frames)

    def work(i):
        for _ in range(5):
            got[i] = model(frames[i]).mask

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))


def test_contractless_model_is_refused_naming_the_key_unless_facts_are_given(tmp_path, kit):
    path = kit.build_segmentation(tmp_path / "bare.onnx", with_contract=False)
    with pytest.raises(EdgesegError, match="no edgeseg contract.*`kind`"):
        Model(path)
    with pytest.raises(EdgesegError, match="`input.height`"):
        Model(path, contract={"kind": "segmentation", "input": {"width": 32}, "output": {"classes": ["a", "b", "c"]}})
    model = Model(path, contract={"kind": "segmentation", "input": {"height": 32, "width": 32},
                                  "output": {"classes": ["r", "g", "b"]}})
    assert _bands(model(kit.colour_frame(16, 30, [kit.RED, kit.GREEN, kit.BLUE])).mask) == [0, 1, 2]


def test_overrides_merge_into_a_stored_contract(seg_model, kit):
    model = Model(seg_model, contract={"input": {"color": "BGR"}})
    assert model.contract.input.color == "BGR" and model.contract.output.classes == ("red", "green", "blue")
    assert _bands(model(kit.colour_frame(16, 30, [kit.RED, kit.GREEN, kit.BLUE])).mask) == [2, 1, 0]


def test_contract_disagreeing_with_the_graph_is_refused(seg_model):
    with pytest.raises(EdgesegError, match="input.layout/height/width/channels"):
        Model(seg_model, contract={"input": {"height": 64}})


def test_bad_model_files_stop_with_one_clear_line(tmp_path):
    with pytest.raises(EdgesegError, match="no such file"):
        Model(tmp_path / "missing.onnx")
    text = tmp_path / "text.onnx"
    text.write_text("hello, not a model")
    with pytest.raises(EdgesegError, match="not a valid ONNX model"):
        Model(text)
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(EdgesegError, match="ZIP archive"):
        Model(archive)


def test_providers_are_reported_and_cuda_fallback_warns(seg_model):
    import onnxruntime

    assert Model(seg_model, provider="cpu").providers == ("CPUExecutionProvider",)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        # On a GPU machine: CUDA runs, or the fallback to the CPU is announced; never a silent CPU run.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session = make_session(seg_model, provider="cuda")
        fell_back = any(issubclass(w.category, ProviderFallbackWarning) for w in caught)
        if session.get_providers()[0] == "CUDAExecutionProvider":
            assert not fell_back
        else:
            assert fell_back and session.get_providers() == ["CPUExecutionProvider"]
    else:
        with pytest.warns(ProviderFallbackWarning, match="runs on the CPU"):
            session = make_session(seg_model, provider="cuda")
        assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(EdgesegError, match="auto, cuda, cpu"):
        make_session(seg_model, provider="gpu")
    with pytest.raises(EdgesegError, match="threads"):
        make_session(seg_model, threads=-1)


def test_session_options_are_applied(seg_model):
    session = make_session(seg_model, provider="cpu", threads=1, optimization="basic")
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert str(options.graph_optimization_level).endswith("ENABLE_BASIC")
    assert make_session(seg_model).get_session_options().intra_op_num_threads == default_threads() >= 1


def test_model_pickles_as_its_arguments_for_worker_processes(seg_model, kit):
    model = Model(seg_model, provider="cpu", threads=1, contract={"input": {"color": "BGR"}})
    copy = pickle.loads(pickle.dumps(model))
    assert copy.session is not model.session and copy.contract == model.contract
    frame = kit.colour_frame(16, 30, [kit.RED, kit.GREEN, kit.BLUE])
    assert np.array_equal(copy(frame).mask, model(frame).mask)


def test_output_coarser_than_the_input_is_mapped_back(tmp_path, kit):
    model = Model(kit.build_segmentation(tmp_path / "s2.onnx", stride=2))
    result = model(kit.colour_frame(45, 60, [kit.RED, kit.GREEN, kit.BLUE]), probabilities=True)
    assert result.mask.shape == (45, 60) and _bands(result.mask) == [0, 1, 2]
    assert result.probabilities.shape == (45, 60, 3)


def test_encoder_halves_load_for_raw_runs_but_refuse_frames(tmp_path, kit):
    path = kit.build_segmentation(tmp_path / "enc.onnx", with_contract=False)
    model = Model(path, contract={"kind": "encoder", "input": {"height": 32, "width": 32}})
    assert model.run(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 32, 32, 3)
    with pytest.raises(EdgesegError, match="'encoder' model"):
        model(np.zeros((8, 8, 3), np.uint8))
