"""CAMs and seed cues from CAMs + saliency against numpy formulas."""
import numpy as np
import pytest

import dsrg_jax


@pytest.fixture
def cam_inputs():
    rng = np.random.default_rng(0)
    features = np.maximum(rng.normal(size=(3, 6, 7, 16)), 0).astype(np.float32)
    weights = rng.normal(size=(16, 5)).astype(np.float32)
    labels = rng.random((3, 5)) < 0.5
    labels[:, 0] = True
    return features, weights, labels


def test_cams_are_relu_of_weighted_features_normalised_by_their_maximum(cam_inputs):
    features, weights, labels = cam_inputs
    raw = np.maximum(np.einsum("bhwk,kf->bhwf", features.astype(np.float64), weights), 0)
    peak = raw.max(axis=(1, 2), keepdims=True)
    expected = np.where(peak > 0, raw / np.where(peak > 0, peak, 1), 0) * labels[:, None, None]
    cams = np.asarray(dsrg_jax.class_activation_maps(features, weights, labels))
    np.testing.assert_allclose(cams, expected, rtol=1e-5, atol=1e-6)
    assert np.all(cams[~labels[:, None, None, :].repeat(6, 1).repeat(7, 2)] == 0)


def test_foreground_cues_relative_rule_and_saliency_background(cam_inputs):
    features, weights, labels = cam_inputs
    cams = np.asarray(dsrg_jax.class_activation_maps(features, weights, labels))
    saliency = np.random.default_rng(1).random((3, 6, 7)).astype(np.float32) * 200
    cues = np.asarray(dsrg_jax.seed_cues_from_cams(cams, labels, saliency))
    assert cues.shape == (3, 6, 7, 6) and cues.dtype == bool
    peak = cams.max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(cues[..., 1:], (cams > 0.2 * peak) & labels[:, None, None])
    normalised = saliency / saliency.max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(cues[..., 0], normalised < 0.06)


def test_background_falls_back_to_low_cams_without_saliency(cam_inputs):
    features, weights, labels = cam_inputs
    cams = np.asarray(dsrg_jax.class_activation_maps(features, weights, labels))
    cues = np.asarray(dsrg_jax.seed_cues_from_cams(cams, labels, bg_cam_threshold=0.3))
    np.testing.assert_array_equal(cues[..., 0], (cams * labels[:, None, None]).max(-1) < 0.3)


def test_top_fraction_rule_takes_the_top_20_percent_of_each_present_class():
    rng = np.random.default_rng(2)
    cams = rng.random((2, 10, 10, 3)).astype(np.float32)  # distinct values: no ties
    labels = np.array([[True, False, True], [False, True, False]])
    cues = np.asarray(dsrg_jax.seed_cues_from_cams(cams, labels, fg_rule="top_fraction"))
    counts = cues[..., 1:].sum(axis=(1, 2))
    np.testing.assert_array_equal(counts, np.where(labels, 20, 0))
    for b, f in zip(*np.nonzero(labels)):
        kth = np.sort(cams[b, ..., f].ravel())[-20]
        np.testing.assert_array_equal(cues[b, ..., f + 1], cams[b, ..., f] >= kth)


def test_bad_arguments_are_named():
    cams = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="fg_rule"):
        dsrg_jax.seed_cues_from_cams(cams, np.ones((1, 2), bool), fg_rule="top")
    with pytest.raises(ValueError, match="`saliency`"):
        dsrg_jax.seed_cues_from_cams(cams, np.ones((1, 2), bool), np.zeros((1, 5, 5)))
    with pytest.raises(ValueError, match="`weights`"):
        dsrg_jax.class_activation_maps(np.zeros((1, 4, 4, 8)), np.zeros((7, 2)))
