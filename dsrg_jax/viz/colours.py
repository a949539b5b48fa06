"""Pictures as arrays, no matplotlib: cues, label maps and overlays in VOC palette colours."""
from __future__ import annotations

from typing import Any

import numpy as np

from dsrg_jax.data.files import VOC_PALETTE


def cue_colours(cues: np.ndarray, palette: np.ndarray = VOC_PALETTE) -> np.ndarray:
    """Multi-hot cues bool[H, W, C] -> uint8[H, W, 3].

    Each pixel gets the colour of its highest cue class (background black, as in VOC), the VOC
    "void" colour (224, 224, 192) where it has no cue."""
    cues = np.asarray(cues, dtype=bool)
    label = np.where(cues.any(-1), cues.shape[-1] - 1 - np.argmax(cues[..., ::-1], -1), 0)
    rgb = palette[label % len(palette)].astype(np.uint8)
    rgb[~cues.any(-1)] = VOC_PALETTE[255]
    return rgb


def label_colours(label: np.ndarray, palette: np.ndarray = VOC_PALETTE) -> np.ndarray:
    """Index map int[H, W] (255 = ignore) -> uint8[H, W, 3] in the VOC palette."""
    return palette[np.asarray(label).astype(np.int64) % len(palette)].astype(np.uint8)


def overlay(image: np.ndarray, label: np.ndarray, *, alpha: float = 0.6,
            palette: np.ndarray = VOC_PALETTE, background: bool = False) -> np.ndarray:
    """Label map blended on an image. image: uint8[H, W, 3]; label: int[H, W] (255 = ignore).

    Class pixels become `alpha * colour + (1 - alpha) * image`; background (0, unless
    `background`) and 255 pixels keep the image. Returns uint8[H, W, 3].
    """
    image = np.asarray(image)
    label = np.asarray(label)
    if image.shape[:2] != label.shape:
        raise ValueError(f"overlay: image {image.shape} and label {label.shape} differ in H, W")
    colour = label_colours(label, palette).astype(np.float32)
    paint = label != 255
    if not background:
        paint &= label != 0
    mixed = alpha * colour + (1.0 - alpha) * image.astype(np.float32)
    out = np.where(paint[..., None], mixed, image.astype(np.float32))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def to_rgb(panel: Any, palette: np.ndarray = VOC_PALETTE) -> np.ndarray:
    """A panel as uint8[H, W, 3].

    bool[H, W, C] cues -> `cue_colours`; int[H, W] label map -> `label_colours`; RGB uint8[H, W, 3]
    (or float in [0, 1]) as it is."""
    panel = np.asarray(panel)
    if panel.dtype == bool and panel.ndim == 3:
        return cue_colours(panel, palette)
    if panel.ndim == 2:
        return label_colours(panel, palette)
    if panel.ndim == 3 and panel.shape[-1] == 3:
        if np.issubdtype(panel.dtype, np.floating):
            return np.clip(np.round(panel * 255.0), 0, 255).astype(np.uint8)
        return panel.astype(np.uint8)
    raise ValueError(f"cannot draw a panel of dtype {panel.dtype} and shape {panel.shape}: "
                     f"expected bool[H, W, C] cues, int[H, W] labels or uint8[H, W, 3] RGB")
