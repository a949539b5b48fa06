"""Synthetic class-probability maps around real cue layouts (for tests, benchmarks and the demo).

A trained segmentation net is confident inside and around an object's cues and unsure near
boundaries; these maps imitate that: per class, a blurred cue mask (wider than the cues) plus
smooth noise, through a softmax. They are not a model of any network, only realistic inputs for
region growing: connected confident regions that extend past the cues, with ragged borders.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def synthetic_probs(cues: np.ndarray, image_labels: np.ndarray, rng: np.random.Generator, *,
                    spread: float = 0.08, sharpness: float = 12.0,
                    noise: float = 1.5) -> np.ndarray:
    """Smooth probability maps that favour each cue's class around its cues.

    Args:
      cues: bool[B, H, W, C] multi-hot cues.
      image_labels: bool[B, C] classes present (absent classes get low scores).
      rng: numpy random generator (the maps are deterministic given its state).
      spread: blur radius as a fraction of the grid side.
      sharpness: logit scale of the blurred cue evidence.
      noise: amplitude of the smooth logit noise.

    Returns:
      float32[B, H, W, C], summing to 1 over C.
    """
    b, h, w, c = cues.shape
    sigma = (0, spread * h, spread * w, 0)
    evidence = ndimage.gaussian_filter(cues.astype(np.float64), sigma=sigma, mode="constant")
    evidence /= np.maximum(evidence.max(axis=(1, 2), keepdims=True), 1e-6)
    field = ndimage.gaussian_filter(rng.normal(size=(b, h, w, c)),
                                    sigma=(0, spread * h / 2, spread * w / 2, 0))
    field /= np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-6)
    present = image_labels.copy()
    present[:, 0] = True
    logits = sharpness * evidence + noise * field - 6.0 * ~present[:, None, None, :]
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)


def upsample_nearest(cues: np.ndarray, factor: int) -> np.ndarray:
    """bool[B, H, W, C] -> bool[B, H', W', C] with H' = factor * (H - 1) + 1 (41 -> 81 -> 161).

    Grid point (i, j) of the coarse grid lands on (factor * i, factor * j), as the centres of a
    stride-8 output do at a stride of 8 / factor; the pixels between take the nearest point.
    """
    b, h, w, c = cues.shape
    rows = np.minimum(np.round(np.arange(factor * (h - 1) + 1) / factor).astype(int), h - 1)
    cols = np.minimum(np.round(np.arange(factor * (w - 1) + 1) / factor).astype(int), w - 1)
    return cues[:, rows][:, :, cols]


def spiral_path(size: int) -> np.ndarray:
    """bool[size, size]: a one-pixel-wide square spiral from the corner (0, 0) inwards.

    The most winding region a flood fill can meet: the growth benchmark's and tests' worst case."""
    path = np.zeros((size, size), bool)
    directions = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    y = x = turn = 0
    path[0, 0] = True
    length = size - 1
    while length > 0:
        for _ in range(2 if turn else 1):
            for _ in range(length):
                y, x = y + directions[turn % 4][0], x + directions[turn % 4][1]
                path[y, x] = True
            turn += 1
        length -= 2
    return path

