"""The training and prediction steps, pure functions of (state, batch) jitted over a mesh.

State is a plain pytree: {"step": int32[], "params": ..., "opt_state": ..., "frozen": {...}
(non-trained variables, e.g. ResNet batch-norm statistics), "rng": uint32[2] (key data)}.
A batch is a dict of global arrays sharded along axis 0 (`dsrg_jax.sharding.global_batch`):
"image" uint8[B, H, W, 3] RGB, "labels" bool[B, C], "valid" bool[B] (False on padding), and per
stage "cues" bool[B, h, w, C], "grid_mask" uint8[B, h, w] (ground truth / pseudo-labels on the
output grid, 255 = ignore).

Every loss is a valid-weighted mean of per-image terms (or a sum over valid pixels of the global
batch), so padding the batch to a multiple of the device count changes nothing; dropout draws one
key per example (`fold_in(step key, example position)`), so the masks do not depend on the device
count either.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax import lax

from dsrg_jax.config import DSRGConfig
from dsrg_jax.convention import CAFFE_MEAN_BGR
from dsrg_jax.ops.crf import dense_crf, downsample_image
from dsrg_jax.ops.grow import dsrg_grow
from dsrg_jax.ops.losses import (
    MIN_PROB,
    balanced_seed_loss,
    constrain_loss,
    probs_from_logits,
    sec_seed_loss,
)
from dsrg_jax.ops.metrics import cue_counts
from dsrg_jax.sharding import batch_sharding, per_device, replicated
from dsrg_jax.weights import InputConvention

State = dict[str, Any]


def create_state(params: Any, tx: optax.GradientTransformation, *, frozen: Any = None,
                 seed: int = 0) -> State:
    """A fresh training state (step 0)."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "frozen": {} if frozen is None else frozen,
        "rng": jax.random.key_data(jax.random.key(seed)),
    }


def weighted_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of float[B] over the valid entries (bool[B]); 0 when none is valid."""
    w = valid.astype(values.dtype)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def _variables(state_params, frozen):
    return {"params": state_params, **frozen}


def apply_with_dropout(model: nn.Module, variables: Any, x: jax.Array, key: jax.Array) -> Any:
    """model(x, train=True) with one dropout key per example: `fold_in(key, i)` for row i.

    The masks of an example depend only on the step key and its position in the global batch.
    """
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x.shape[0]))

    def one(xi, ki):
        out = model.apply(variables, xi[None], train=True, rngs={"dropout": ki})
        return jax.tree.map(lambda a: a[0], out)

    return jax.vmap(one)(x, keys)


def step_key(state: State) -> jax.Array:
    """The PRNG key of the state's current step."""
    return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def _apply_update(state: State, tx, grads) -> State:
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {**state, "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state, "step": state["step"] + 1}


def _jit_step(fn: Callable, mesh) -> Callable:
    repl = replicated(mesh)
    out = (repl, {"metrics": repl, "images": batch_sharding(mesh)})
    return jax.jit(fn, out_shardings=out, donate_argnums=(0,))


# ------------------------------------------------------------------------------------ cues


def make_cam_train_step(model: nn.Module, tx, convention: InputConvention, mesh, *,
                        single_label: bool = False) -> Callable:
    """(state, batch) -> (state, aux): one classification step of the CAM net.

    batch: image, labels (bool[B, C] incl. background; the net sees channels 1..), valid.
    Multi-label: mean sigmoid cross-entropy over the classes. single_label
    (pretraining on one-digit images, exactly one label per image): softmax cross-entropy.
    aux["metrics"]: loss, exact_match (the predicted label set / class is the true one).
    """

    def loss_fn(params, state, batch):
        x = convention.normalize(batch["image"].astype(jnp.float32))
        logits, _ = model.apply(_variables(params, state["frozen"]), x, train=True)
        labels = batch["labels"][:, 1:].astype(jnp.float32)
        if single_label:
            per_image = optax.softmax_cross_entropy(logits, labels)
            correct = (jnp.argmax(logits, -1) == jnp.argmax(labels, -1)).astype(jnp.float32)
        else:
            per_image = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)
            correct = jnp.all((logits > 0) == (labels > 0.5), axis=-1).astype(jnp.float32)
        loss = weighted_mean(per_image, batch["valid"])
        return loss, {"loss": loss, "exact_match": weighted_mean(correct, batch["valid"])}

    def step(state, batch):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"], state, batch)
        return _apply_update(state, tx, grads), {"metrics": metrics, "images": {}}

    return _jit_step(step, mesh)


# ------------------------------------------------------------------------------------ dsrg


def caffe_floor(probs: jax.Array, floor: float = MIN_PROB) -> jax.Array:
    """`P < floor -> floor` in the forward pass, the gradient of P passed through unchanged.

    The official CRF layer floors the softmax blob in place (`probs[probs < min_prob] = min_prob`),
    which the CRF, the growth and both losses then read, while the softmax's backward is computed
    from its own inputs. probs: float[B, h, w, C]."""
    return probs + lax.stop_gradient(jnp.maximum(probs, floor) - probs)


def crf_image(images: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """The training CRF's image as the official CRF layer makes it.

    The Caffe blob (BGR minus the mean) zoomed to the grid with scipy's order-1 zoom, the mean added
    back, rounded. images: uint8[B, H, W, 3] RGB -> uint8[B, h, w, 3] BGR. (With the permutohedral
    lattice the channel order changes the result; the exact kernel does not depend on it.)"""
    bgr = images.astype(jnp.float32)[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
    return downsample_image(bgr, tuple(grid), mean=CAFFE_MEAN_BGR)


def grow_options(cfg: DSRGConfig) -> dict[str, Any]:
    """`dsrg_grow`'s keyword arguments from the config.

    The thresholds and the foreground / background growth switches (the ablation's
    "foreground only" / "background only" rows)."""
    return dict(theta_fg=cfg.theta_fg, theta_bg=cfg.theta_bg, grow_fg=cfg.grow_fg,
                grow_bg=cfg.grow_bg)


def crf_and_grow(images_small: jax.Array, probs: jax.Array, cues: jax.Array, labels: jax.Array,
                 cfg: DSRGConfig) -> tuple[jax.Array, jax.Array]:
    """CRF of the (stop-gradient) probabilities, then region growing from the original cues.

    Args:
      images_small: uint8[B, h, w, 3] image on the output grid; probs: float[B, h, w, C];
      cues: bool[B, h, w, C] original cues; labels: bool[B, C].
    Returns:
      (q float[B, h, w, C] CRF output, grown bool[B, h, w, C]).
    """
    q = dense_crf(images_small, lax.stop_gradient(probs), cfg.crf, kernel=cfg.crf_kernel)
    if not cfg.grow:
        return q, cues
    return q, dsrg_grow(q, cues, labels, **grow_options(cfg))


def dsrg_losses(probs: jax.Array, q: jax.Array, grown: jax.Array, valid: jax.Array,
                cfg: DSRGConfig) -> dict[str, jax.Array]:
    """Seed loss on the grown cues + constrain loss, each a valid-weighted mean over images."""
    seed_fn = balanced_seed_loss if cfg.seed_loss == "balanced" else sec_seed_loss
    seed = weighted_mean(jax.vmap(lambda p, c: seed_fn(p[None], c[None]))(probs, grown), valid)
    out = {"seed_loss": seed}
    if cfg.constrain_loss:
        con = weighted_mean(jax.vmap(lambda p, s: constrain_loss(p[None], s[None]))(probs, q),
                            valid)
        out["constrain_loss"] = con
        out["loss"] = seed + con
    else:
        out["loss"] = seed
    return out


def make_dsrg_train_step(model: nn.Module, tx, convention: InputConvention, mesh,
                         cfg: DSRGConfig) -> Callable:
    """(state, batch) -> (state, aux): one DSRG step, as the official training step.

    logits -> P (floored as Caffe, `caffe_floor`) -> [per device: CRF Q of the BGR image
    (`crf_image`), growth from the original cues] -> balanced seed loss on the grown cues +
    constrain loss -> Caffe SGD update.

    batch: image, labels, cues, valid, optional grid_mask (for the supervision quality).
    aux["metrics"]: loss, seed_loss, constrain_loss, counts_grown / counts_cues int32[C, 3]
      (TP, FP, FN of grown and original cues against grid_mask, valid images only).
    aux["images"]: grown bool[B, h, w, C], crf float[B, h, w, C], probs float[B, h, w, C],
      image_small uint8[B, h, w, 3] (the CRF's image).
    """
    grid_fn = per_device(functools.partial(crf_and_grow, cfg=cfg), mesh, 4)

    def loss_fn(params, state, batch):
        x = convention.normalize(batch["image"].astype(jnp.float32))
        key = step_key(state)
        logits = apply_with_dropout(model, _variables(params, state["frozen"]), x, key)
        probs = caffe_floor(probs_from_logits(logits))
        small = crf_image(batch["image"], probs.shape[1:3])
        q, grown = grid_fn(small, probs, batch["cues"], batch["labels"])
        losses = dsrg_losses(probs, q, grown, batch["valid"], cfg)
        return losses["loss"], (losses, q, grown, probs, small)

    def step(state, batch):
        grads, (losses, q, grown, probs, small) = jax.grad(loss_fn, has_aux=True)(
            state["params"], state, batch)
        metrics = dict(losses)
        if "grid_mask" in batch:
            gt = jnp.where(batch["valid"][:, None, None], batch["grid_mask"].astype(jnp.int32),
                           255)
            metrics["counts_grown"] = cue_counts(grown, gt)
            metrics["counts_cues"] = cue_counts(batch["cues"], gt)
        images = {"grown": grown, "crf": q, "probs": probs, "image_small": small}
        return _apply_update(state, tx, grads), {"metrics": metrics, "images": images}

    return _jit_step(step, mesh)


# ---------------------------------------------------------------------------------- retrain


def make_retrain_step(model: nn.Module, tx, convention: InputConvention, mesh) -> Callable:
    """(state, batch) -> (state, aux): fully supervised softmax cross-entropy on the pseudo-labels.

    batch: image, grid_mask uint8[B, h, w] (pseudo-labels on the output grid, 255 ignored), valid.
    The loss is the sum over the valid pixels of the global batch over their count (Caffe
    SoftmaxWithLoss, normalize VALID).
    """

    def loss_fn(params, state, batch):
        x = convention.normalize(batch["image"].astype(jnp.float32))
        logits = apply_with_dropout(model, _variables(params, state["frozen"]), x,
                                    step_key(state))
        labels = batch["grid_mask"].astype(jnp.int32)
        ok = (labels != 255) & batch["valid"][:, None, None]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(ok, labels, 0))
        loss = jnp.sum(jnp.where(ok, ce, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
        return loss, {"loss": loss}

    def step(state, batch):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"], state, batch)
        return _apply_update(state, tx, grads), {"metrics": metrics, "images": {}}

    return _jit_step(step, mesh)


# ---------------------------------------------------------------------------------- predict


def make_predict(model: nn.Module, convention: InputConvention) -> Callable:
    """(variables, images uint8[B, H, W, 3]) -> the model's eval-mode output.

    Logits float32[B, h, w, C] for a segmentation net, (logits float[B, F], features
    float[B, h, w, K]) for the CAM classifier."""

    @jax.jit
    def predict(variables, images):
        x = convention.normalize(images.astype(jnp.float32))
        return model.apply(variables, x, train=False)

    return predict
