"""The examples each stage feeds its net: the stage transforms and the dsrg stage's labels.

A transform turns a `Record` into the fixed-shape dict the stage's step or inference takes
(host side, numpy; randomness only through its `rng`).
"""
from __future__ import annotations

import numpy as np

from dsrg_jax.config import Config
from dsrg_jax.convention import MEAN_RGB_UINT8
from dsrg_jax.data import transforms as T
from dsrg_jax.data.derived import CueLabelSource
from dsrg_jax.data.records import DatasetError, Record


def cam_transform(size: int, flip: bool = True) -> T.Transform:
    """Classifier training: the whole image warped to size x size, random flip."""
    return T.warp_transform(size, cue_size=None, fields=("image", "labels"), flip=flip)


def dsrg_transform(size: int, grid: tuple[int, int], *, with_mask: bool,
                   flip: bool = True) -> T.Transform:
    """DSRG stage: warp + flip with the cues; the ground truth on the grid as "grid_mask".

    The grid mask is for supervision quality only, never for training."""
    fields = ("image", "labels", "cues") + (("mask",) if with_mask else ())
    base = T.warp_transform(size, cue_size=grid[0], fields=fields, flip=flip)

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        ex = base(rec, rng)
        if with_mask:
            ex["grid_mask"] = T.grid_nearest(ex.pop("mask"), grid)
        return ex

    return apply


def retrain_transform(crop: int, grid: tuple[int, int], flip: bool = True) -> T.Transform:
    """Retrain stage: random crop (255-padded labels) + flip; labels brought to the output grid.

    As Caffe's Interp layer does (`transforms.interp_labels`: label[8i, 8j] for 321 -> 41)."""
    base = T.crop_transform(crop, fields=("image", "mask"), flip=flip)

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        ex = base(rec, rng)
        ex["grid_mask"] = T.interp_labels(ex.pop("mask"), grid)
        return ex

    return apply


def inference_transform(canvas: int | None, *, with_mask: bool,
                        with_labels: bool = True) -> T.Transform:
    """Inference: the image padded bottom/right to canvas x canvas (mean colour), its size kept.

    The size is kept in "hw"; the mask is padded with 255. Images larger than the canvas are an
    error. canvas None: the image as it is (batches of one image)."""

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        del rng
        h, w = rec.image.shape[:2]
        if canvas is None:
            ex = {"image": rec.image, "hw": np.array([h, w], np.int32)}
            if with_labels:
                ex["labels"] = rec.labels
            if with_mask:
                if rec.mask is None:
                    raise DatasetError(f"image {rec.image_id!r} has no ground-truth mask")
                ex["mask"] = rec.mask
            return ex
        if h > canvas or w > canvas:
            raise DatasetError(f"image {rec.image_id!r} is {h}x{w}, larger than the inference "
                               f"canvas {canvas}; raise eval.canvas")
        pad = ((0, canvas - h), (0, canvas - w))
        img = np.empty((canvas, canvas, 3), np.uint8)
        img[:] = np.asarray(MEAN_RGB_UINT8, np.uint8)
        img[:h, :w] = rec.image
        ex = {"image": img, "hw": np.array([h, w], np.int32)}
        if with_labels:
            ex["labels"] = rec.labels
        if with_mask:
            if rec.mask is None:
                raise DatasetError(f"image {rec.image_id!r} has no ground-truth mask")
            ex["mask"] = np.pad(rec.mask, pad, constant_values=255)
        return ex

    return apply


def dsrg_train_source(cfg: Config, source, cueset):
    """The dsrg stage's train source with the image-level labels `data.labels_from` names.

    "masks": `source` as is; "cues": the cue set's labels (`CueLabelSource`)."""
    if cfg.data.labels_from == "masks":
        return source
    return CueLabelSource(source, cueset, where=cfg.data.cues_file or "cues.npz")
