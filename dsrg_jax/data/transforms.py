"""Transforms on `Record`s (pure numpy/OpenCV; randomness only through the `rng` argument).

Per stage (the official settings: docs/fidelity.md):
  - cues / dsrg: warp the whole image to 321x321 + random flip; cues (on the 41x41 output grid of
    the whole warped image) are flipped with it (`warp_transform`).
  - retrain: random 321 crop, image padded with the mean colour (= 0 after mean subtraction), label
    padded with 255, + flip (`crop_transform`). Cues cannot be cropped (their grid is the whole
    image).
  - pseudo-labels / eval: warps to several sizes or aspect-kept scales (`warp_sizes`, `rescale`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from dsrg_jax.convention import MEAN_RGB_UINT8
from dsrg_jax.data.records import IGNORE_INDEX, DatasetError, Record

Transform = Callable[[Record, np.random.Generator], dict]


def _resize(arr: np.ndarray, hw: tuple[int, int], interp: int) -> np.ndarray:
    out = cv2.resize(arr, (hw[1], hw[0]), interpolation=interp)
    if arr.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        out = out[..., None]
    return out


def resize_cues(cues: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of bool[h, w, C] cues to bool[H', W', C]."""
    if cues.shape[:2] == tuple(hw):
        return cues
    c = cues.shape[2]
    out = np.empty((hw[0], hw[1], c), bool)
    for start in range(0, c, 4):  # OpenCV resizes at most 4 channels at a time in uint8
        part = cues[..., start:start + 4].astype(np.uint8)
        out[..., start:start + 4] = _resize(part, hw, cv2.INTER_NEAREST).reshape(
            hw[0], hw[1], -1) > 0
    return out


def resize_record(
    rec: Record, hw: tuple[int, int], cue_hw: tuple[int, int] | None = None
) -> Record:
    """Resizes the whole image to hw = (H', W'): image/saliency bilinear, mask nearest.

    Cues stay on their grid (they cover the whole image), unless `cue_hw` asks for another grid
    (nearest neighbour).
    """
    hw = (int(hw[0]), int(hw[1]))
    cues = rec.cues
    if cues is not None and cue_hw is not None:
        cues = resize_cues(cues, cue_hw)
    return dataclasses.replace(
        rec,
        image=_resize(rec.image, hw, cv2.INTER_LINEAR),
        mask=None if rec.mask is None else _resize(rec.mask, hw, cv2.INTER_NEAREST),
        saliency=None if rec.saliency is None else _resize(rec.saliency, hw, cv2.INTER_LINEAR),
        cues=cues,
    )


def warp(rec: Record, size: int, cue_size: int | None = None) -> Record:
    """Warps the whole image to size x size (aspect not kept), as DSRG's training does."""
    return resize_record(rec, (size, size), None if cue_size is None else (cue_size, cue_size))


def rescale(rec: Record, scale: float) -> Record:
    """Aspect-kept resize by `scale` (multi-scale inference); sides rounded to integers."""
    h, w = rec.image.shape[:2]
    return resize_record(rec, (max(1, round(h * scale)), max(1, round(w * scale))))


def warp_sizes(rec: Record, sizes: Sequence[int] = (241, 321, 401)) -> list[Record]:
    """The image warped to each size (the pseudo-label stage's multi-scale input)."""
    return [warp(rec, s) for s in sizes]


def multi_scale(rec: Record, scales: Sequence[float] = (0.75, 1.0, 1.25)) -> list[Record]:
    """The image at each aspect-kept scale (the evaluation's multi-scale input)."""
    return [rescale(rec, s) for s in scales]


def hflip(rec: Record) -> Record:
    """Mirrors image, mask, saliency and cues left-right together."""
    f = lambda a: None if a is None else np.ascontiguousarray(a[:, ::-1])  # noqa: E731
    return dataclasses.replace(
        rec, image=f(rec.image), mask=f(rec.mask), saliency=f(rec.saliency), cues=f(rec.cues)
    )


def random_flip(rec: Record, rng: np.random.Generator, p: float = 0.5) -> Record:
    """hflip with probability p."""
    return hflip(rec) if rng.random() < p else rec


def pad_crop(
    rec: Record,
    crop: int,
    rng: np.random.Generator,
    *,
    image_fill: Sequence[int] = MEAN_RGB_UINT8,
) -> Record:
    """Random crop x crop window; smaller images are first padded bottom/right (DeepLab-style).

    The image is padded with `image_fill` (the mean colour: 0 after mean subtraction), the mask with
    255 (ignore), saliency with 0. Records with cues are refused: cues cover the whole image.
    """
    if rec.cues is not None:
        raise ValueError(
            f"record {rec.image_id!r}: cannot crop cues (they are on the grid of the whole image); "
            "use warp() for stages with cues"
        )
    h, w = rec.image.shape[:2]
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    image, mask, sal = rec.image, rec.mask, rec.saliency
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                   value=tuple(int(v) for v in image_fill))
        if mask is not None:
            mask = cv2.copyMakeBorder(mask, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        if sal is not None:
            sal = cv2.copyMakeBorder(sal, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0.0)
    y0 = int(rng.integers(0, image.shape[0] - crop + 1))
    x0 = int(rng.integers(0, image.shape[1] - crop + 1))
    def win(a):
        return None if a is None else np.ascontiguousarray(a[y0:y0 + crop, x0:x0 + crop])

    return dataclasses.replace(rec, image=win(image), mask=win(mask), saliency=win(sal))


def to_example(rec: Record, fields: Sequence[str]) -> dict:
    """The record's arrays as a dict for batching; a requested field the record lacks is an error.

    Fields: image uint8[H, W, 3], labels bool[C], mask uint8[H, W], cues bool[h, w, C],
    saliency float32[H, W].
    """
    out = {}
    for f in fields:
        v = getattr(rec, f)
        if v is None:
            raise DatasetError(
                f"image {rec.image_id!r}: this stage needs {f!r} and the record has none")
        out[f] = v
    return out


def grid_nearest(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """uint8[H, W] label map -> uint8[h, w] on the output grid (nearest neighbour)."""
    return cv2.resize(mask, (grid[1], grid[0]), interpolation=cv2.INTER_NEAREST)


def interp_labels(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """uint8[H, W] label map -> uint8[h, w] as Caffe's Interp layer samples labels onto the grid.

    The official train-f.prototxt `label_shrink`, shrink_factor 8: corner-aligned, the top-left tap,
    in Caffe's float32 arithmetic: row i reads int(float32((H-1)/(h-1)) * i). For a 321 crop and a
    41x41 grid that is label[8i, 8j]."""
    def taps(n_in: int, n_out: int) -> np.ndarray:
        ratio = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)
        return (ratio * np.arange(n_out, dtype=np.float32)).astype(np.int64)

    return mask[np.ix_(taps(mask.shape[0], grid[0]), taps(mask.shape[1], grid[1]))]


def warp_transform(
    size: int = 321, cue_size: int | None = 41, fields: Sequence[str] = ("image", "labels", "cues"),
    flip: bool = True,
) -> Transform:
    """Cue/DSRG stage: warp the whole image to size x size, random flip (cues flipped too)."""

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        rec = warp(rec, size, cue_size if rec.cues is not None else None)
        if flip:
            rec = random_flip(rec, rng)
        return to_example(rec, fields)

    return apply


def crop_transform(
    crop: int = 321, fields: Sequence[str] = ("image", "mask"), flip: bool = True,
    scale_range: tuple[float, float] | None = None,
) -> Transform:
    """Retrain stage: optional random aspect-kept rescale, random crop (255-padded labels), flip."""

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        if scale_range is not None:
            rec = rescale(rec, float(rng.uniform(*scale_range)))
        rec = pad_crop(rec, crop, rng)
        if flip:
            rec = random_flip(rec, rng)
        return to_example(rec, fields)

    return apply


def eval_transform(size: int | None = None, fields: Sequence[str] = ("image", "mask")) -> Transform:
    """No randomness: the record as it is (size None: batch 1 for mixed sizes) or warped."""

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        del rng
        if size is not None:
            rec = warp(rec, size)
        return to_example(rec, fields)

    return apply
