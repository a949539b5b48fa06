"""Losses against direct numpy formulas of the official Caffe/Theano layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsrg_jax


def random_probs(rng, shape):
    logits = rng.normal(size=shape) * 3
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True) + 1e-4
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    probs = random_probs(rng, (4, 7, 9, 5))
    cues = rng.random((4, 7, 9, 5)) < 0.2
    cues[1, ..., 0] = False      # an image without background cues
    cues[2, ..., 1:] = False     # an image without foreground cues
    cues[3] = False              # an image without any cue
    return probs, cues


def test_probs_from_logits_is_softmax_plus_floor_renormalised():
    logits = np.random.default_rng(1).normal(size=(2, 3, 3, 4)).astype(np.float32) * 10
    e = np.exp(logits - logits.max(-1, keepdims=True))
    expected = e / e.sum(-1, keepdims=True) + 1e-4
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(dsrg_jax.probs_from_logits(logits), expected, rtol=1e-5, atol=1e-7)


def test_balanced_seed_loss_matches_formula(batch):
    probs, cues = batch
    log_p = np.log(probs.astype(np.float64))
    bg = [(cues[n, ..., 0] * log_p[n, ..., 0]).sum() / max(cues[n, ..., 0].sum(), 1e-4)
          for n in range(4)]
    fg = [(cues[n, ..., 1:] * log_p[n, ..., 1:]).sum() / max(cues[n, ..., 1:].sum(), 1e-4)
          for n in range(4)]
    expected = -np.mean(bg) - np.mean(fg)
    np.testing.assert_allclose(float(dsrg_jax.balanced_seed_loss(probs, cues)), expected,
                               rtol=1e-5)


def test_balanced_loss_weighs_background_and_foreground_equally():
    """With 10x more background cues, both kinds still contribute equally (unlike SEC's loss)."""
    probs = np.full((1, 10, 10, 2), 0.5, np.float32)
    probs[..., :, :5, 0], probs[..., :, :5, 1] = 0.9, 0.1   # left half: confident background
    cues = np.zeros((1, 10, 10, 2), bool)
    cues[0, :, :5, 0] = True                              # 50 background cues, all right
    cues[0, 0, 9, 1] = True                               # 1 foreground cue, unsure (0.5)
    balanced = float(dsrg_jax.balanced_seed_loss(probs, cues))
    sec = float(dsrg_jax.sec_seed_loss(probs, cues))
    np.testing.assert_allclose(balanced, -np.log(0.9) - np.log(0.5), rtol=1e-5)
    np.testing.assert_allclose(sec, -(50 * np.log(0.9) + np.log(0.5)) / 51, rtol=1e-5)


def test_sec_seed_loss_matches_formula(batch):
    probs, cues = batch
    log_p = np.log(probs.astype(np.float64))
    per_image = [(cues[n] * log_p[n]).sum() / max(cues[n].sum(), 1e-4) for n in range(4)]
    np.testing.assert_allclose(float(dsrg_jax.sec_seed_loss(probs, cues)), -np.mean(per_image),
                               rtol=1e-5)


def constrain_reference(p, q):
    """Value and the official gradient wrt P (loss grads + CRF pass-through), in float64."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    n = np.prod(p.shape[:-1])
    ratio = q / p
    inside = (ratio > 0.05) & (ratio < 20)
    log_clipped = np.log(np.clip(ratio, 0.05, 20))
    value = (q * log_clipped).sum(-1).mean()
    grad_p = -(q / p) * inside / n
    grad_log_q = q * (log_clipped + inside) / n
    return value, grad_p + (1 - q) * grad_log_q


def test_constrain_loss_value_and_official_gradient():
    rng = np.random.default_rng(2)
    p = random_probs(rng, (2, 5, 6, 4))
    q = random_probs(rng, (2, 5, 6, 4))
    value, expected_grad = constrain_reference(p, q)
    np.testing.assert_allclose(float(dsrg_jax.constrain_loss(p, q)), value, rtol=1e-5)
    grad_p, grad_q = jax.grad(dsrg_jax.constrain_loss, argnums=(0, 1))(p, q)
    np.testing.assert_allclose(grad_p, expected_grad, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(grad_q, 0.0)
    # some entries are clipped, so the clip's zero gradient is exercised
    assert np.any((q / p < 0.05) | (q / p > 20))


def test_constrain_loss_gradient_flows_through_a_differentiable_crf_only_once():
    """Q computed from P by differentiable JAX code: P still gets exactly the official gradient."""
    rng = np.random.default_rng(3)
    p = random_probs(rng, (1, 4, 4, 3))

    def fake_crf(p):  # any differentiable smoothing of P
        q = jax.nn.softmax(2.0 * jnp.log(p), axis=-1)
        return q

    grad = jax.grad(lambda p: dsrg_jax.constrain_loss(p, fake_crf(p)))(p)
    _, expected = constrain_reference(p, np.asarray(fake_crf(p)))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-9)


def test_multilabel_classification_loss_matches_formula():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 20)).astype(np.float32) * 4
    labels = rng.random((3, 20)) < 0.2
    x = logits.astype(np.float64)
    expected = np.mean(np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x))))
    np.testing.assert_allclose(float(dsrg_jax.multilabel_classification_loss(logits, labels)),
                               expected, rtol=1e-5)
