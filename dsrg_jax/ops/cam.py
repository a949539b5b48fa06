"""Class activation maps and seed cues from CAMs + saliency.

CAM of class c (Zhou et al. 2016): `cam_c(x) = sum_k w_kc f_k(x)` over the last convolutional
features, ReLU, divided by its maximum per image and class. Seed cues on the same grid:
  - foreground: `cam_c > 0.2 * max cam_c` for every class in the image label (SEC's rule, used by
    the DSRG authors' code), or the paper's wording, the top 20% of the class's pixels;
  - background: pixels whose saliency (divided by its maximum in the image) is below 0.06; without
    a saliency map, pixels where every present class's normalised CAM is below `bg_cam_threshold`.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

# SEC / DSRG constants (docs/fidelity.md gives the source of each).
FG_RELATIVE_THRESHOLD = 0.2      # SEC: cam_c > 0.2 * max(cam_c)
FG_TOP_FRACTION = 0.2            # paper: "top 20%" of the CAM's pixels
BG_SALIENCY_THRESHOLD = 0.06     # SEC: normalised saliency < 0.06
# Ours (no official value exists for the CAM fallback): no present class reaches 10% of its peak.
BG_CAM_THRESHOLD = 0.1

_EPS = 1e-12


@jax.jit
def class_activation_maps(features: jax.Array, weights: jax.Array,
                          image_labels: jax.Array | None = None) -> jax.Array:
    """Normalised CAMs.

    Args:
      features: float[B, h, w, K] last convolutional features (after ReLU).
      weights: float[K, F] classifier weights over the F foreground classes (no bias: a CAM is
        the per-pixel contribution to each class score).
      image_labels: optional bool[B, F]; absent classes get an all-zero map.

    Returns:
      float[B, h, w, F] in [0, 1]: ReLU of the CAM divided by its per-image, per-class maximum
      (an all-zero map stays zero).
    """
    if features.ndim != 4:
        raise ValueError(f"class_activation_maps: `features` must be float[B, h, w, K], "
                         f"got shape {tuple(features.shape)}")
    if weights.ndim != 2 or weights.shape[0] != features.shape[-1]:
        raise ValueError(f"class_activation_maps: `weights` must be "
                         f"float[K={features.shape[-1]}, F], got shape {tuple(weights.shape)}")
    cams = jax.nn.relu(jnp.einsum("bhwk,kf->bhwf", features, weights))
    peak = jnp.max(cams, axis=(1, 2), keepdims=True)
    cams = jnp.where(peak > _EPS, cams / jnp.maximum(peak, _EPS), 0.0)
    if image_labels is not None:
        if image_labels.shape != (features.shape[0], weights.shape[1]):
            raise ValueError(f"class_activation_maps: `image_labels` must be bool"
                             f"{[features.shape[0], weights.shape[1]]}, "
                             f"got {tuple(image_labels.shape)}")
        cams = jnp.where(image_labels[:, None, None, :], cams, 0.0)
    return cams


def _top_fraction_mask(cams: jax.Array, fraction: float) -> jax.Array:
    """Pixels among the top `fraction` of each map's values (and above zero): bool[B, h, w, F]."""
    b, h, w, f = cams.shape
    count = max(1, int(round(fraction * h * w)))
    flat = jnp.sort(cams.reshape(b, h * w, f), axis=1)
    kth_largest = flat[:, h * w - count][:, None, None, :]
    return (cams >= kth_largest) & (cams > 0)


def seed_cues_from_cams(
    cams: jax.Array,
    image_labels: jax.Array,
    saliency: jax.Array | None = None,
    *,
    fg_rule: Literal["relative", "top_fraction"] = "relative",
    fg_threshold: float = FG_RELATIVE_THRESHOLD,
    fg_top_fraction: float = FG_TOP_FRACTION,
    bg_saliency_threshold: float = BG_SALIENCY_THRESHOLD,
    bg_cam_threshold: float = BG_CAM_THRESHOLD,
) -> jax.Array:
    """Multi-hot seed cues from normalised CAMs and, optionally, saliency.

    Args:
      cams: float[B, h, w, F] normalised CAMs of the F foreground classes.
      image_labels: bool[B, F] foreground classes present.
      saliency: optional float[B, h, w] saliency on the same grid (any non-negative scale; it is
        divided by its per-image maximum). Without it, background comes from low CAMs.
      fg_rule: "relative" (SEC, `cam > fg_threshold * max cam`) or "top_fraction" (paper).
      fg_threshold, fg_top_fraction, bg_saliency_threshold, bg_cam_threshold: see module doc.

    Returns:
      bool[B, h, w, F + 1]: channel 0 background, channel c the cue of foreground class c - 1.
      A pixel may be a cue of several classes.
    """
    if cams.ndim != 4 or image_labels.shape != (cams.shape[0], cams.shape[-1]):
        raise ValueError(f"seed_cues_from_cams: expected cams float[B, h, w, F] and image_labels "
                         f"bool[B, F], got {tuple(cams.shape)} and {tuple(image_labels.shape)}")
    present = image_labels[:, None, None, :]
    if fg_rule == "relative":
        peak = jnp.max(cams, axis=(1, 2), keepdims=True)
        foreground = (cams > fg_threshold * peak) & (peak > 0)
    elif fg_rule == "top_fraction":
        foreground = _top_fraction_mask(cams, fg_top_fraction)
    else:
        raise ValueError(f"seed_cues_from_cams: fg_rule must be 'relative' or 'top_fraction', "
                         f"got {fg_rule!r}")
    foreground = foreground & present

    if saliency is not None:
        if saliency.shape != cams.shape[:3]:
            raise ValueError(f"seed_cues_from_cams: `saliency` must be float{list(cams.shape[:3])}"
                             f" (the CAM grid), got {tuple(saliency.shape)}")
        peak = jnp.max(saliency, axis=(1, 2), keepdims=True)
        background = saliency / jnp.maximum(peak, _EPS) < bg_saliency_threshold
    else:
        strongest = jnp.max(jnp.where(present, cams, 0.0), axis=-1)
        background = strongest < bg_cam_threshold
    return jnp.concatenate([background[..., None], foreground], axis=-1)
