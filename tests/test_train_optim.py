"""The optimiser is Caffe's SGD: lr inside the momentum buffer, decay, lr multipliers, schedules."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsrg_jax.config import OptimConfig
from dsrg_jax.train.optim import caffe_sgd, lr_multipliers, lr_schedule


def _params():
    return {"conv": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])},
            "aspp_1": {"classifier": {"kernel": jnp.array([0.3]), "bias": jnp.array([-0.1])}}}


def test_caffe_sgd_matches_the_caffe_update_rule():
    cfg = OptimConfig(base_lr=0.1, momentum=0.9, weight_decay=0.01, schedule="step",
                      step_size=2, gamma=0.5)
    params = _params()
    tx = caffe_sgd(params, cfg)
    opt = tx.init(params)
    mult = {("conv", "kernel"): (1, 1), ("conv", "bias"): (2, 0),
            ("aspp_1", "classifier", "kernel"): (10, 1), ("aspp_1", "classifier", "bias"): (20, 0)}
    flat = {tuple(p.key for p in path): np.asarray(leaf, np.float64)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    hist = {k: np.zeros_like(v) for k, v in flat.items()}
    rng = np.random.default_rng(0)
    for step in range(5):
        grads_flat = {k: rng.normal(size=v.shape) for k, v in flat.items()}
        grads = jax.tree_util.tree_map_with_path(
            lambda path, _, grads_flat=grads_flat: jnp.asarray(
                grads_flat[tuple(p.key for p in path)], jnp.float32),
            params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        lr = 0.1 * 0.5 ** (step // 2)
        for k in flat:  # Caffe: v = m v + lr * lr_mult * (g + wd * decay_mult * w); w -= v
            lr_mult, decay_mult = mult[k]
            hist[k] = 0.9 * hist[k] + lr * lr_mult * (grads_flat[k] + 0.01 * decay_mult * flat[k])
            flat[k] = flat[k] - hist[k]
    got = {tuple(p.key for p in path): np.asarray(leaf)
           for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    for k in flat:
        np.testing.assert_allclose(got[k], flat[k], rtol=1e-5, atol=1e-6)


def test_lr_multipliers_follow_the_dsrg_prototxt():
    m = lr_multipliers(_params(), OptimConfig())
    assert m["conv"]["kernel"] == 1 and m["conv"]["bias"] == 2
    assert m["aspp_1"]["classifier"]["kernel"] == 10 and m["aspp_1"]["classifier"]["bias"] == 20


def test_schedules():
    step = lr_schedule(OptimConfig(base_lr=5e-4, schedule="step", step_size=1000, gamma=0.33))
    np.testing.assert_allclose([step(0), step(999), step(1000), step(2500)],
                               [5e-4, 5e-4, 5e-4 * 0.33, 5e-4 * 0.33 ** 2], rtol=1e-6)
    poly = lr_schedule(OptimConfig(base_lr=1e-3, schedule="poly", power=0.9, max_steps=100))
    np.testing.assert_allclose([poly(0), poly(50), poly(100)],
                               [1e-3, 1e-3 * 0.5 ** 0.9, 0.0], rtol=1e-6, atol=1e-12)
