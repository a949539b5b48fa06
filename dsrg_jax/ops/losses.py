"""DSRG / SEC losses, as in the official Caffe/Theano layers.

`probs` everywhere is the segmentation net's `probs_from_logits` output, float[B, H, W, C] with
channel 0 = background; cues are bool[B, H, W, C] multi-hot.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Official constants: probability floor of the softmax and of the CRF output (`min_prob`), and the
# clip of Q / P in the constrain loss.
MIN_PROB = 1e-4
CONSTRAIN_CLIP = (0.05, 20.0)


def probs_from_logits(logits: jax.Array, *, min_prob: float = MIN_PROB) -> jax.Array:
    """Softmax over classes, plus `min_prob`, renormalised (official SoftmaxLayer).

    Args:
      logits: float[B, H, W, C].
    Returns:
      float[B, H, W, C], every entry >= min_prob / (1 + C * min_prob), summing to 1 over C.
    """
    probs = jax.nn.softmax(logits, axis=-1) + min_prob
    return probs / jnp.sum(probs, axis=-1, keepdims=True)


def balanced_seed_loss(probs: jax.Array, cues: jax.Array) -> jax.Array:
    """DSRG's balanced seed loss: background and foreground cues weighted equally.

    `-mean_n[sum_{S_bg} log P_0 / |S_bg|] - mean_n[sum_{c>=1} sum_{S_c} log P_c / |S_fg|]`, counts
    clamped at 1e-4 (an image without cues of a kind adds 0 to that term).

    Args:
      probs: float[B, H, W, C]; cues: bool[B, H, W, C].
    Returns:
      float[] loss.
    """
    log_probs = jnp.log(probs)
    cues = cues.astype(probs.dtype)
    count_bg = jnp.maximum(jnp.sum(cues[..., 0], axis=(1, 2)), MIN_PROB)
    count_fg = jnp.maximum(jnp.sum(cues[..., 1:], axis=(1, 2, 3)), MIN_PROB)
    loss_bg = -jnp.mean(jnp.sum(cues[..., 0] * log_probs[..., 0], axis=(1, 2)) / count_bg)
    loss_fg = -jnp.mean(jnp.sum(cues[..., 1:] * log_probs[..., 1:], axis=(1, 2, 3)) / count_fg)
    return loss_bg + loss_fg


def sec_seed_loss(probs: jax.Array, cues: jax.Array) -> jax.Array:
    """SEC's (unbalanced) seed loss, the ablation baseline: `-mean_n[sum_S log P / |S|]`.

    |S| counts all cue entries of the image (clamped at 1e-4; the official layer did not clamp and
    gave NaN for an image without cues).

    Args:
      probs: float[B, H, W, C]; cues: bool[B, H, W, C].
    Returns:
      float[] loss.
    """
    cues = cues.astype(probs.dtype)
    count = jnp.maximum(jnp.sum(cues, axis=(1, 2, 3)), MIN_PROB)
    return -jnp.mean(jnp.sum(cues * jnp.log(probs), axis=(1, 2, 3)) / count)


def _constrain_value(probs: jax.Array, log_q: jax.Array) -> jax.Array:
    q = jnp.exp(log_q)
    low, high = CONSTRAIN_CLIP
    return jnp.mean(jnp.sum(q * jnp.log(jnp.clip(q / probs, low, high)), axis=-1))


@jax.custom_vjp
def constrain_loss(probs: jax.Array, crf_q: jax.Array) -> jax.Array:
    """SEC's constrain-to-boundary loss with the official CRF gradient.

    Value: `mean_{n,h,w} sum_c Q log(clip(Q / P, 0.05, 20))`, Q = CRF(P).

    Gradient, as the Caffe net computes it: the loss layer's own gradients with respect to P and
    to log Q, and the CRF layer's pass-through `dP += (1 - Q) * dL/dlogQ` (the CRF itself is not
    differentiated). `crf_q` receives a zero gradient: its dependence on P is the pass-through,
    so a differentiable CRF upstream is not differentiated a second time.

    Args:
      probs: float[B, H, W, C] network probabilities P.
      crf_q: float[B, H, W, C] CRF output Q for P (clamped >= 1e-4, renormalised).
    Returns:
      float[] loss.
    """
    return _constrain_value(probs, jnp.log(crf_q))


def _constrain_fwd(probs, crf_q):
    log_q = jnp.log(crf_q)
    value, vjp = jax.vjp(_constrain_value, probs, log_q)
    return value, (vjp, crf_q)


def _constrain_bwd(residuals, g):
    vjp, crf_q = residuals
    grad_probs, grad_log_q = vjp(g)
    return grad_probs + (1.0 - crf_q) * grad_log_q, jnp.zeros_like(crf_q)


constrain_loss.defvjp(_constrain_fwd, _constrain_bwd)


def multilabel_classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean sigmoid cross-entropy of the classification net (stage `cues`).

    Args:
      logits: float[B, F]; labels: bool[B, F] foreground classes present.
    Returns:
      float[] loss.
    """
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))
