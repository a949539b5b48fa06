"""Figures (matplotlib, PNG): cue maps in VOC colours and region-growing panels."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dsrg_jax.data.files import VOC_PALETTE


def cue_colours(cues: np.ndarray, palette: np.ndarray = VOC_PALETTE) -> np.ndarray:
    """Multi-hot cues bool[H, W, C] -> uint8[H, W, 3]: the colour of the pixel's highest cue class
    (background black, as in VOC), the VOC "void" colour (224, 224, 192) where it has no cue."""
    cues = np.asarray(cues, dtype=bool)
    label = np.where(cues.any(-1), cues.shape[-1] - 1 - np.argmax(cues[..., ::-1], -1), 0)
    rgb = palette[label % len(palette)].astype(np.uint8)
    rgb[~cues.any(-1)] = VOC_PALETTE[255]
    return rgb


def label_colours(label: np.ndarray, palette: np.ndarray = VOC_PALETTE) -> np.ndarray:
    """Index map int[H, W] (255 = ignore) -> uint8[H, W, 3] in the VOC palette."""
    return palette[np.asarray(label) % len(palette)].astype(np.uint8)


def save_growth_figure(path: str | os.PathLike, rows: Sequence[dict], *, title: str = "") -> None:
    """One row per image: panels named by the dict keys (cue maps bool[H, W, C] or RGB uint8).

    Args:
      path: PNG to write.
      rows: e.g. [{"cues": bool[H, W, C], "probabilities (argmax)": uint8[H, W, 3],
        "grown cues": bool[H, W, C]}, ...]; every row has the same keys.
      title: figure title.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0])
    fig, axes = plt.subplots(len(rows), len(names), squeeze=False,
                             figsize=(2.2 * len(names), 2.2 * len(rows)))
    for r, row in enumerate(rows):
        for c, name in enumerate(names):
            panel = np.asarray(row[name])
            if panel.dtype == bool:
                panel = cue_colours(panel)
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
