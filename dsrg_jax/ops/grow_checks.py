"""Argument checks of `dsrg_grow`: shapes, dtypes and thresholds at trace time, values at run time.

Every message starts with "dsrg_grow:" and names the argument.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# `validate=True`: how far the sum of a pixel's probabilities over C may be from 1 (plus the
# machine epsilon of the input dtype, for bfloat16 / float16 inputs).
SUM_TOLERANCE = 1e-3


def check_inputs(probs, seeds, image_labels) -> None:
    """Trace-time checks of shapes and dtypes, with messages naming the argument."""
    for name, x in (("probs", probs), ("seeds", seeds), ("image_labels", image_labels)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"dsrg_grow: `{name}` must be an array, got {type(x).__name__}")
    if probs.ndim != 4:
        raise ValueError(
            f"dsrg_grow: `probs` must be float[B, H, W, C], got shape {tuple(probs.shape)}")
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise TypeError(f"dsrg_grow: `probs` must have a floating dtype, got {probs.dtype}")
    b, h, w, c = probs.shape
    if b == 0:
        raise ValueError("dsrg_grow: `probs` has an empty batch (B=0); call it with at least one "
                         "image")
    if h == 0 or w == 0:
        raise ValueError(f"dsrg_grow: `probs` has an empty image grid (H, W) = {(h, w)}")
    if 2 * h * w >= 2**31:
        raise ValueError(f"dsrg_grow: `probs` grid {(h, w)} is too large (2 * H * W must fit in "
                         f"int32)")
    if c < 2:
        raise ValueError(
            f"dsrg_grow: `probs` needs at least 2 classes (background + one), got C={c}")
    if seeds.dtype != jnp.bool_:
        raise TypeError(
            f"dsrg_grow: `seeds` must be bool[B, H, W, C] (multi-hot cues), got dtype "
            f"{seeds.dtype}; convert with `seeds.astype(bool)`")
    if tuple(seeds.shape) != (b, h, w, c):
        raise ValueError(
            f"dsrg_grow: `seeds` must have the shape of `probs` {(b, h, w, c)}, "
            f"got {tuple(seeds.shape)}")
    if image_labels.dtype != jnp.bool_:
        raise TypeError(
            f"dsrg_grow: `image_labels` must be bool[B, C], got dtype {image_labels.dtype}; "
            f"convert with `image_labels.astype(bool)`")
    if tuple(image_labels.shape) != (b, c):
        raise ValueError(
            f"dsrg_grow: `image_labels` must be bool[B, C] = {(b, c)}, "
            f"got shape {tuple(image_labels.shape)}")


def check_threshold(name: str, value, batch: int):
    """A threshold as given (number, float[] or float[B]); host values must lie in [0, 1]."""
    expected = f"a number in [0, 1] or a float array of shape () or ({batch},)"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"dsrg_grow: `{name}` must be {expected}, got {value!r}")
    if isinstance(value, numbers.Real):
        if not 0.0 <= float(value) <= 1.0:  # False for NaN too
            raise ValueError(f"dsrg_grow: `{name}` must be {expected}, got {value!r}")
        return float(value)
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"dsrg_grow: `{name}` must be {expected}, got {type(value).__name__}")
    if not jnp.issubdtype(value.dtype, jnp.floating) or tuple(value.shape) not in ((), (batch,)):
        raise ValueError(f"dsrg_grow: `{name}` must be {expected}, got an array of dtype "
                         f"{value.dtype} and shape {tuple(value.shape)}")
    if isinstance(value, (np.ndarray, np.generic)):  # on the host: checked now
        values = np.asarray(value, np.float64)
        if not np.all((values >= 0.0) & (values <= 1.0)):
            raise ValueError(f"dsrg_grow: `{name}` must be {expected}, got values outside "
                             f"[0, 1] or NaN: {values}")
    return value


def check_switch(name: str, value) -> bool:
    """A static switch (`grow_fg`, `grow_bg`, `validate`) as a Python bool; TypeError otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"dsrg_grow: `{name}` must be a Python bool (static), got "
                        f"{type(value).__name__}")
    return bool(value)


def validate_values(probs: jax.Array, theta_fg, theta_bg) -> None:
    """Run-time checks of the values (`checkify.check`): NaN, negative, non-normalised."""
    tolerance = SUM_TOLERANCE + float(jnp.finfo(probs.dtype).eps)
    probs = probs.astype(jnp.float32)
    checkify.check(~jnp.any(jnp.isnan(probs)), "dsrg_grow: `probs` contains NaN")
    checkify.check(jnp.all(probs >= 0), "dsrg_grow: `probs` must be >= 0, got a minimum of {m}",
                   m=jnp.min(probs))
    error = jnp.max(jnp.abs(jnp.sum(probs, axis=-1) - 1.0))
    checkify.check(error <= tolerance,
                   f"dsrg_grow: `probs` must sum to 1 over C (within {tolerance:.2g}), got a "
                   "pixel off by {e}", e=error)
    for name, theta in (("theta_fg", theta_fg), ("theta_bg", theta_bg)):
        theta = jnp.asarray(theta, jnp.float32)
        checkify.check(jnp.all((theta >= 0) & (theta <= 1)),
                       f"dsrg_grow: `{name}` must lie in [0, 1], got {{t}}", t=theta)
