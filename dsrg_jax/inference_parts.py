"""Parts of `dsrg_jax.inference`: the result type, input normalisation and small helpers."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dsrg_jax.convention import get_input_convention

Normalize = str | Callable[[jax.Array], jax.Array] | None


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """Result of `segment` for a batch.

    Attributes:
      logits: float32[B, H, W, C] summed full-size logits over scales (and flips).
      probs: float32[B, H, W, C] softmax of `logits` (restricted to labelled classes if asked).
      labels: uint8[B, H, W] argmax of `probs` (no CRF).
      probs_crf: float32[B, H, W, C] after the dense CRF, or None without CRF.
      labels_crf: uint8[B, H, W] argmax after the CRF, or None without CRF.
    """

    logits: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    probs_crf: np.ndarray | None = None
    labels_crf: np.ndarray | None = None

    @property
    def final(self) -> np.ndarray:
        """The prediction to write: after the CRF if one ran, else before. uint8[B, H, W]."""
        return self.labels if self.labels_crf is None else self.labels_crf


def normalize_images(images: jax.Array, normalize: Normalize) -> jax.Array:
    """uint8/float[B, H, W, 3] RGB -> float32 network input, by `normalize`.

    `normalize`: an input convention's name ("caffe", "torchvision" / "imagenet":
    `dsrg_jax.convention`), None (as float32) or a function."""
    if callable(normalize):
        return jnp.asarray(normalize(images), jnp.float32)
    x = jnp.asarray(images, jnp.float32)
    if normalize is None:
        return x
    try:
        return get_input_convention(normalize).normalize(x)
    except ValueError:
        raise ValueError(f"normalize must be 'caffe', 'torchvision', 'imagenet', None or a "
                         f"function, got {normalize!r}") from None


def scaled_size(size: int, scale: float) -> int:
    """Side length at `scale`: round(scale * size), at least 1 (as `transforms.rescale`)."""
    return max(1, round(size * scale))


def flip_region(x: jax.Array, width: jax.Array) -> jax.Array:
    """Per image: columns [:width[b]] of x float[B, H, W, C] mirrored, the rest kept."""
    cols = jnp.arange(x.shape[2])[None, :]
    idx = jnp.where(cols < width[:, None], width[:, None] - 1 - cols, cols)
    return jnp.take_along_axis(x, idx[:, None, :, None], axis=2)


def label_mask(image_labels: np.ndarray | None, num_classes: int, batch: int) -> np.ndarray | None:
    """bool[B, C] of allowed classes (background always allowed), or None for all classes."""
    if image_labels is None:
        return None
    allowed = np.asarray(image_labels, bool)
    if allowed.shape != (batch, num_classes):
        raise ValueError(f"image_labels must be bool[{batch}, {num_classes}], got "
                         f"{allowed.shape}")
    allowed = allowed.copy()
    allowed[:, 0] = True
    return allowed


def group_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices in batches of equal (H, W), at most `batch_size` each, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(sizes):
        groups.setdefault(tuple(hw), []).append(i)
    return [idx[k:k + batch_size] for idx in groups.values()
            for k in range(0, len(idx), batch_size)]
