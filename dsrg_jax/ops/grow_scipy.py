"""Reference region growing in numpy/scipy, written directly from the rules (DESIGN.md 2.3 step 2).

It shares no code with `dsrg_jax.ops.grow`: it is the oracle the tests compare `dsrg_grow` with,
bit for bit, and the baseline of `benchmarks/grow.py`. One image and one present class at a time,
8-connected components from `scipy.ndimage.label`, as the official layer does with its own
connected-component labelling.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def dsrg_grow_scipy(probs: np.ndarray, seeds: np.ndarray, image_labels: np.ndarray, *,
                    theta_fg: float = 0.85, theta_bg: float = 0.99) -> np.ndarray:
    """Same contract as `dsrg_jax.dsrg_grow`, on numpy arrays.

    Args:
      probs: float[B, H, W, C] class probabilities, channel 0 = background.
      seeds: bool[B, H, W, C] multi-hot cues.
      image_labels: bool[B, C] classes present (channel 0 treated as present).

    Returns:
      bool[B, H, W, C] grown cues.
    """
    probs = np.asarray(probs)
    seeds = np.asarray(seeds, dtype=bool)
    image_labels = np.asarray(image_labels, dtype=bool)
    grown = seeds.copy()
    for b in range(probs.shape[0]):
        present = np.flatnonzero(image_labels[b] | (np.arange(probs.shape[-1]) == 0))
        selected = probs[b][..., present]
        best_class = present[np.argmax(selected, axis=-1)]
        best_prob = np.max(selected, axis=-1)

        label_map = np.full(best_class.shape, -1, dtype=np.int64)
        for c in range(probs.shape[-1]):  # ascending, so the highest cue class wins
            label_map[seeds[b, ..., c]] = c
        confident = np.where(best_class == 0, best_prob > theta_bg, best_prob > theta_fg)
        label_map[confident] = best_class[confident]

        num_cues = seeds[b].sum(axis=-1)
        for c in present:
            region = label_map == c
            components, _ = ndimage.label(region, structure=_EIGHT_CONNECTED)
            seeded = np.unique(components[region & seeds[b, ..., c]])
            keep = np.isin(components, seeded[seeded > 0])
            cue_of_one_other_class = (num_cues == 1) & ~seeds[b, ..., c]
            grown[b, ..., c] |= keep & ~cue_of_one_other_class
    return grown
