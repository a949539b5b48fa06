"""Agreement with the official DSRG code where it is a matter of a few lines (docs/fidelity.md):
the probability floors, the retrain labels on the output grid, the COCO protocol and the
retrain initialisation. Each oracle is the official code's operation written out here."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrg_jax.config import Config
from dsrg_jax.crf_host import dense_crf_host
from dsrg_jax.data import transforms as T
from dsrg_jax.ops.crf import TEST_CRF, TRAIN_CRF
from dsrg_jax.ops.losses import probs_from_logits
from dsrg_jax.train.steps import caffe_floor

dcrf = pytest.importorskip("pydensecrf.densecrf")


def _official_test_crf(image, probs):
    """test-ms-f.py: probs[probs < 1e-5] = 1e-5; CRF(im, log P, scale_factor=1)."""
    probs = probs.copy()
    probs[probs < 1e-5] = 1e-5
    h, w, c = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(probs).reshape(-1, c).T, np.float32))
    d.addPairwiseGaussian(sxy=3.0, compat=3.0)
    d.addPairwiseBilateral(sxy=80.0, srgb=13.0, rgbim=np.ascontiguousarray(image), compat=10.0)
    return np.array(d.inference(10), np.float32).T.reshape(h, w, c)


def test_test_time_crf_floors_the_probabilities_at_1e_5():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    logits = rng.normal(scale=12.0, size=(24, 30, 5))
    probs = np.asarray(jax.nn.softmax(logits, -1), np.float32)
    assert (probs < 1e-5).mean() > 0.1                       # the floor matters here
    np.testing.assert_allclose(dense_crf_host(image, probs), _official_test_crf(image, probs),
                               rtol=1e-5, atol=1e-6)
    unfloored = dense_crf_host(image, probs, dataclasses.replace(TEST_CRF, unary_floor=0.0))
    assert np.abs(unfloored - _official_test_crf(image, probs)).max() > 1e-5   # 20x the tol


def test_training_floor_is_in_place_as_the_official_crf_layer():
    """P < 1e-4 -> 1e-4 in the forward pass (the blob the losses read); the gradient is the
    softmax's own, as in Caffe where the floor happens after the softmax's forward."""
    logits = jnp.asarray(np.random.default_rng(1).normal(scale=15.0, size=(2, 5, 5, 21)))
    probs = probs_from_logits(logits)
    floored = caffe_floor(probs)
    want = np.asarray(probs).copy()
    want[want < 1e-4] = 1e-4
    np.testing.assert_array_equal(np.asarray(floored), want)
    assert (np.asarray(probs) < 1e-4).any()
    g = jax.grad(lambda p: jnp.sum(caffe_floor(p) * jnp.arange(21.0)))(probs)
    np.testing.assert_array_equal(np.asarray(g), np.broadcast_to(np.arange(21.0), g.shape))
    assert TRAIN_CRF.unary_floor == 1e-4 and TRAIN_CRF.min_prob == 1e-4


def test_retrain_labels_are_caffe_interp_samples():
    """train-f.prototxt `label_shrink` (Interp, shrink_factor 8): a 321 crop -> label[8i, 8j]."""
    label = np.random.default_rng(2).integers(0, 21, (321, 321)).astype(np.uint8)
    got = T.interp_labels(label, (41, 41))
    np.testing.assert_array_equal(got, label[::8, ::8])
    # OpenCV's nearest neighbour samples other rows (0, 7, 15, ...): the old rule differs.
    assert not np.array_equal(T.grid_nearest(label, (41, 41)), label[::8, ::8])


def test_coco_defaults_are_the_official_coco_protocol():
    from experiments.configs.coco import get_config

    cfg = get_config()
    assert cfg.pseudo.sizes == (481,)          # test-coco.py: one 481 warp
    assert cfg.eval.scales == (1.0,)           # test-coco-f.py: scale 1 only


def test_retrain_starts_from_the_dsrg_weights_by_default():
    assert Config().retrain.init == "dsrg"     # run.sh: --weights models/model-s_iter_8000
