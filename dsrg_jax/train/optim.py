"""Caffe's SGD in optax: lr inside the momentum buffer, weight decay, lr multipliers, schedules.

Caffe (`SGDSolver::ComputeUpdateValue`) per parameter w with multipliers (lr_mult, decay_mult):
    v <- momentum * v + lr(t) * lr_mult * (grad + weight_decay * decay_mult * w);   w <- w - v
DSRG's prototxt: weights lr_mult 1 / decay 1, biases lr_mult 2 / decay 0, the new classifier
(fc8) weights 10 / decay 1, biases 20 / decay 0.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from dsrg_jax.config import OptimConfig


def lr_schedule(cfg: OptimConfig) -> Callable[[jax.Array], jax.Array]:
    """step -> learning rate.

    "step": base_lr * gamma ** floor(step / step_size) (Caffe lr_policy "step");
    "poly": base_lr * (1 - step / max_steps) ** power (Caffe "poly");
    "constant": base_lr.
    """
    base = float(cfg.base_lr)
    if cfg.schedule == "step":
        return lambda step: base * jnp.power(cfg.gamma, jnp.floor(step / cfg.step_size))
    if cfg.schedule == "poly":
        return lambda step: base * jnp.power(
            jnp.maximum(1.0 - step / cfg.max_steps, 0.0), cfg.power)
    if cfg.schedule == "constant":
        return lambda step: jnp.asarray(base, jnp.float32)
    raise ValueError(f"optim.schedule must be 'step', 'poly' or 'constant', got {cfg.schedule!r}")


def _is_bias(path: tuple[str, ...]) -> bool:
    return path[-1] == "bias"


def _is_classifier(path: tuple[str, ...]) -> bool:
    return any("classifier" in p for p in path)


def lr_multipliers(params: Any, cfg: OptimConfig) -> Any:
    """Pytree like `params` of floats: Caffe lr_mult per leaf.

    Weights 1, biases 2, classifier weights 10, classifier biases 20, with the config's values."""
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path in flat:
        if _is_classifier(path):
            out[path] = cfg.classifier_bias_lr_mult if _is_bias(path) else cfg.classifier_lr_mult
        else:
            out[path] = cfg.bias_lr_mult if _is_bias(path) else 1.0
    return traverse_util.unflatten_dict(out)


def decay_mask(params: Any) -> Any:
    """Pytree like `params` of bools: weight decay on weights (kernels), not on biases."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({p: not _is_bias(p) for p in flat})


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by a constant of the same tree structure."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(init, update)


def caffe_sgd(params: Any, cfg: OptimConfig) -> optax.GradientTransformation:
    """optax transformation equal to Caffe's SGD with DSRG's lr multipliers and schedule.

    Args:
      params: the parameter pytree (to build the multiplier and decay trees).
      cfg: optimiser settings. `cfg.optimizer == "adam"` gives Adam with the same schedule,
        multipliers and decoupled-from-nothing L2 decay (for small nets trained from scratch).
    """
    if cfg.optimizer == "adam":
        return optax.chain(
            optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask(params)),
            optax.scale_by_adam(),
            optax.scale_by_schedule(lr_schedule(cfg)),
            scale_by_tree(lr_multipliers(params, cfg)),
            optax.scale(-1.0),
        )
    if cfg.optimizer != "caffe_sgd":
        raise ValueError(f"optim.optimizer must be 'caffe_sgd' or 'adam', got {cfg.optimizer!r}")
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask(params)),
        optax.scale_by_schedule(lr_schedule(cfg)),
        scale_by_tree(lr_multipliers(params, cfg)),
        optax.trace(decay=cfg.momentum, nesterov=False),   # v = m v + lr * g  (lr inside v)
        optax.scale(-1.0),
    )
