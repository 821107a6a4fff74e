"""Post-processing as pure functions of the contract: one rule for class ids, probabilities and errors."""

import numpy as np
import pytest

from edgeseg.runtime import Contract, EdgesegError, Geometry, InputSpec, OutputSpec
from edgeseg.runtime import postprocess as post


def _contract(classes, activation):
    return Contract(kind="segmentation", input=InputSpec(height=4, width=6, channels=3),
                    output=OutputSpec(activation=activation, classes=classes))


def test_two_class_fast_path_and_counts_match_argmax_and_bincount():
    rng = np.random.default_rng(3)
    scores = rng.random((40, 50, 2)).astype(np.float32)
    scores[:5, :, 1] = scores[:5, :, 0]  # ties go to class 0, as argmax sends them
    np.testing.assert_array_equal(post._argmax_last(scores), scores.argmax(axis=-1))
    mask = rng.integers(0, 3, (37, 41)).astype(np.uint8)
    np.testing.assert_array_equal(post._class_counts(mask, 4), np.bincount(mask.ravel(), minlength=4))
    np.testing.assert_array_equal(post._class_counts(mask.astype(np.uint16), 3), np.bincount(mask.ravel(), minlength=3))


@pytest.mark.parametrize("activation, threshold", [("sigmoid", 0.5), ("none", 0.0)])
def test_one_channel_threshold_follows_the_activation(activation, threshold):
    contract = _contract(("background", "object"), activation)
    scores = np.array([[[threshold - 0.01], [threshold + 0.01]]], np.float32)
    np.testing.assert_array_equal(post.class_ids(scores, contract), [[0, 1]])
    # Smoothed scores are probabilities whatever the model's own activation.
    assert post.threshold(contract, activated=True) == 0.5


def test_channel_count_must_match_the_classes():
    with pytest.raises(EdgesegError, match="3 channels but the contract names 2 classes"):
        post.class_ids(np.zeros((2, 2, 3), np.float32), _contract(("a", "b"), "softmax"))


def test_probabilities_apply_the_missing_activation_only():
    logits = np.array([[[0.0, 2.0]]], np.float32)
    probs = post.probabilities(logits, _contract(("a", "b"), "none"))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert probs[0, 0, 1] > 0.85
    np.testing.assert_array_equal(post.probabilities(logits, _contract(("a", "b"), "softmax")), logits)


def test_segmentation_restores_the_frame_size_and_counts_classes():
    contract = _contract(("a", "b"), "softmax")
    scores = np.zeros((4, 6, 2), np.float32)
    scores[:, 3:, 1] = 1.0
    result = post.segmentation(scores, Geometry(8, 12, 0, 0, 4, 6), contract, with_probabilities=True)
    assert result.mask.shape == (8, 12) and result.probabilities.shape == (8, 12, 2)
    assert result.class_fraction == {"a": 0.5, "b": 0.5}


def test_reconstruction_error_map_and_score():
    spec = InputSpec(height=4, width=4, channels=1, color="GRAY")
    model_input = np.full((4, 4, 1), 0.5, np.float32)
    output = model_input.copy()
    output[:2] = 0.0
    result = post.reconstruction(output, model_input, Geometry(4, 4, 0, 0, 4, 4), spec)
    assert result.error_map.shape == (4, 4) and result.error_map[0, 0] == pytest.approx(0.5)
    assert result.score == pytest.approx(0.25)
    assert result.reconstruction.shape == (4, 4) and result.reconstruction[3, 3] == 127  # 0.5 / (1/255), truncated
