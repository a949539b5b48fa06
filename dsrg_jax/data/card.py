"""A dataset card's numbers: what the objects of a split look like on the net's output grid.

Measured from the split's masks, on the segmentation net's output grid.

DSRG assumes objects that are solid blobs on the output grid (VOC: ~30% of the pixels are
foreground, objects many cells thick), so that a CAM peak lies on the object and a grown region
stays on it. `mask_statistics` measures that for any Source with masks:

    stats = mask_statistics(DigitsSource("train", size=56), grid=(15, 15), max_images=500)
    stats["fg_fraction"], stats["width_cells"]["p5"], stats["share_at_least_2_cells"]

An object is the pixels of one class in one image; its thickness is its stroke width
(`stroke_width`: twice the median distance to the outside over its skeleton) in output cells
(pixels x grid / image side).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from dsrg_jax.ops.metrics import IGNORE_INDEX


def stroke_width(mask: np.ndarray) -> float:
    """The typical stroke width of a shape in pixels. bool[h, w] -> float (0 for an empty mask).

    Twice the median distance to the outside over its skeleton (the medial axis)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0.0
    inside = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return float(2.0 * np.median(inside[skeletonize(mask)]))


def object_widths(mask: np.ndarray, grid: Sequence[int]) -> list[tuple[int, float]]:
    """(class, stroke width in output cells) of every foreground class in a uint8[H, W] mask.

    Only classes present count (0 = background, IGNORE_INDEX not an object); the cell is H / grid[0]
    pixels."""
    cell = mask.shape[0] / grid[0]
    return [(int(c), stroke_width(mask == c) / cell)
            for c in np.unique(mask) if c not in (0, IGNORE_INDEX)]


def mask_statistics(source, grid: Sequence[int], *, max_images: int | None = 500) -> dict:
    """The card's numbers over the first `max_images` images of `source` (all: None).

    Returns a JSON-ready dict: num_images; fg_fraction (foreground share of the labelled
    pixels); objects_per_image (mean); width_cells (min, p5, median of the objects' stroke widths
    in output cells); share_at_least_2_cells (share of objects at least 2 cells thick); grid.
    """
    n = len(source) if max_images is None else min(len(source), max_images)
    if n == 0:
        raise ValueError("mask_statistics: the source has no images")
    fg = labelled = 0
    widths: list[float] = []
    for i in range(n):
        mask = source[i].mask
        if mask is None:
            raise ValueError(f"mask_statistics: image {source[i].image_id!r} has no mask")
        valid = mask != IGNORE_INDEX
        labelled += int(valid.sum())
        fg += int((valid & (mask > 0)).sum())
        widths += [w for _, w in object_widths(mask, grid)]
    w = np.asarray(widths, np.float64)
    return {
        "num_images": n,
        "grid": [int(g) for g in grid],
        "fg_fraction": fg / max(labelled, 1),
        "objects_per_image": len(w) / n,
        "width_cells": ({"min": float(w.min()), "p5": float(np.percentile(w, 5)),
                         "median": float(np.median(w))} if len(w) else None),
        "share_at_least_2_cells": float((w >= 2.0).mean()) if len(w) else float("nan"),
    }
