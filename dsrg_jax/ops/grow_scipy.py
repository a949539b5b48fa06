"""Reference region growing in numpy/scipy, written from the official layer's `generate_seed_step`.

It shares no code with `dsrg_jax.ops.grow`: it is the oracle the tests compare `dsrg_grow` with,
bit for bit, and the baseline of `benchmarks/grow.py`. It follows the official code step by step,
one image and one present class at a time: a 1-indexed label map (cues, then confident pixels,
with the background threshold nested in the foreground one), then per present class the 8-connected
components of its label (`scipy.ndimage.label`, where the official layer uses its own two-pass
labelling) that hold a cue of the class. Comparisons are in float32, as in `dsrg_grow`.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def dsrg_grow_scipy(probs: np.ndarray, seeds: np.ndarray, image_labels: np.ndarray, *,
                    theta_fg=0.85, theta_bg=0.99, grow_fg: bool = True,
                    grow_bg: bool = True) -> np.ndarray:
    """Same contract as `dsrg_jax.dsrg_grow`, on numpy arrays: grown cues bool[B, H, W, C].

    Args:
      probs: float[B, H, W, C] class probabilities, channel 0 = background.
      seeds: bool[B, H, W, C] multi-hot cues.
      image_labels: bool[B, C] classes present (channel 0 treated as present).
      theta_fg: foreground threshold (official `th2`), a number or one per image float[B].
      theta_bg: background threshold (official `th1`), a number or one per image float[B].
      grow_fg: whether pixels whose most likely class is a foreground class may be confident.
      grow_bg: whether pixels whose most likely class is the background may be confident.

    Returns:
      bool[B, H, W, C] grown cues.
    """
    probs = np.asarray(probs, dtype=np.float32)
    seeds = np.asarray(seeds, dtype=bool)
    image_labels = np.asarray(image_labels, dtype=bool)
    batch, height, width, num_classes = probs.shape
    th2 = np.broadcast_to(np.asarray(theta_fg, dtype=np.float32), (batch,))
    th1 = np.broadcast_to(np.asarray(theta_bg, dtype=np.float32), (batch,))
    grown = seeds.copy()
    for b in range(batch):
        labels = image_labels[b].copy()
        labels[0] = True  # the official image labels always hold the background
        cls_index = np.flatnonzero(labels)
        probs_selected = probs[b][..., cls_index]
        probs_c = cls_index[np.argmax(probs_selected, axis=-1)]  # first index wins a tie
        probs_p = np.max(probs_selected, axis=-1)

        # 1-indexed label map, 0 = unlabelled. The official code assigns all cues at once in
        # (class, y, x) order, so the last, i.e. highest, cue class of a pixel wins.
        label_map = np.zeros((height, width), dtype=np.int64)
        for c in range(num_classes):
            label_map[seeds[b, ..., c]] = c + 1
        # `if value > th2: (if c != 0: fg) elif value > th1: bg`: the background test is nested.
        above_th2 = probs_p > th2[b]
        above_th1 = probs_p > th1[b]
        foreground = (probs_c != 0) & above_th2 & grow_fg
        background = (probs_c == 0) & above_th2 & above_th1 & grow_bg
        confident = foreground | background
        label_map[confident] = probs_c[confident] + 1

        for c in cls_index:
            mat = label_map == c + 1
            components, _ = ndimage.label(mat, structure=_EIGHT_CONNECTED)
            # The official layer reads the cues as already grown for the classes before c; growth
            # of another class only adds pixels of that class's label, so this is the same.
            seed_c = grown[b]
            high_confidence = np.unique(components[mat & seed_c[..., c]])
            excluded = mat & ~seed_c[..., c] & (seed_c.sum(axis=-1) == 1)
            keep = np.isin(components, high_confidence[high_confidence > 0]) & ~excluded
            grown[b, ..., c] |= keep
    return grown
