"""Sources and transforms of each stage, built from the config (host side, numpy)."""
from __future__ import annotations

import dataclasses
import pathlib

import cv2
import numpy as np

from dsrg_jax.data import transforms as T
from dsrg_jax.data.records import DatasetError, Record
from dsrg_jax.train.config import Config, ConfigError

VOC_HINT = (
    "download VOC 2012 (VOCtrainval_11-May-2012.tar from "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) and SegmentationClassAug "
    "(the SBD-augmented masks), extract them so that DIR/VOCdevkit/VOC2012/JPEGImages exists, "
    "and pass --data-dir DIR")
COCO_HINT = (
    "download COCO 2014 (train2014.zip, val2014.zip, annotations_trainval2014.zip from "
    "https://cocodataset.org/#download) and extract them so that DIR/train2014, DIR/val2014 and "
    "DIR/annotations/instances_train2014.json exist, then pass --data-dir DIR")


def make_source(cfg: Config, split: str, *, cues=None, with_saliency: bool = True):
    """The dataset of `split` ("train" = cfg.data.train_split, "val" = cfg.data.val_split)."""
    d = cfg.data
    saliency = d.saliency_dir if with_saliency else None
    if d.dataset == "digits":
        from dsrg_jax.data.digits import DigitsSource
        from dsrg_jax.data.saliency import SaliencyDir

        n = d.num_train if split == "train" else d.num_val
        return DigitsSource(split, num_images=n, seed=0, size=d.image_size, cues=cues,
                            saliency=None if saliency is None else SaliencyDir(saliency))
    name = d.train_split if split == "train" else d.val_split
    if d.dataset == "voc":
        from dsrg_jax.data.voc import VOCSource

        if d.data_dir is None or not pathlib.Path(d.data_dir).exists():
            raise DatasetError(f"VOC data dir {d.data_dir!r} not found: {VOC_HINT}")
        return VOCSource(d.data_dir, name, saliency=saliency, cues=cues)
    if d.dataset == "coco":
        from dsrg_jax.data.coco import CocoSource

        root = pathlib.Path(d.data_dir or "")
        ann = root / "annotations" / f"instances_{name}.json"
        if d.data_dir is None or not ann.is_file():
            raise DatasetError(f"COCO annotations {ann} not found: {COCO_HINT}")
        return CocoSource(ann, root / name, saliency=saliency, cues=cues)
    raise ValueError(f"data.dataset must be 'voc', 'coco' or 'digits', got {d.dataset!r}")


def grid_nearest(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """uint8[H, W] label map -> uint8[h, w] on the output grid (nearest neighbour)."""
    return cv2.resize(mask, (grid[1], grid[0]), interpolation=cv2.INTER_NEAREST)


def cls_transform(size: int, flip: bool = True) -> T.Transform:
    """Classifier training: whole image warped to size x size, random flip."""
    return T.dsrg_transform(size, cue_size=None, fields=("image", "labels"), flip=flip)


def dsrg_transform(size: int, grid: tuple[int, int], *, with_mask: bool,
                   flip: bool = True) -> T.Transform:
    """DSRG stage: warp + flip with the cues; the ground truth on the grid (for supervision
    quality only, never for training) as "grid_mask"."""
    fields = ("image", "labels", "cues") + (("mask",) if with_mask else ())
    base = T.dsrg_transform(size, cue_size=grid[0], fields=fields, flip=flip)

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        ex = base(rec, rng)
        if with_mask:
            ex["grid_mask"] = grid_nearest(ex.pop("mask"), grid)
        return ex

    return apply


def retrain_transform(crop: int, grid: tuple[int, int], flip: bool = True) -> T.Transform:
    """Retrain stage: random crop (255-padded labels) + flip; labels on the output grid."""
    base = T.crop_transform(crop, fields=("image", "mask"), flip=flip)

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        ex = base(rec, rng)
        ex["grid_mask"] = grid_nearest(ex.pop("mask"), grid)
        return ex

    return apply


def infer_transform(canvas: int, *, with_mask: bool, with_labels: bool = True) -> T.Transform:
    """Inference: the image padded bottom/right to canvas x canvas (mean colour), its size kept in
    "hw"; the mask padded with 255. Images larger than the canvas are an error."""

    def apply(rec: Record, rng: np.random.Generator) -> dict:
        del rng
        h, w = rec.image.shape[:2]
        if h > canvas or w > canvas:
            raise DatasetError(f"image {rec.image_id!r} is {h}x{w}, larger than the inference "
                               f"canvas {canvas}; raise eval.canvas")
        img = cv2.copyMakeBorder(rec.image, 0, canvas - h, 0, canvas - w, cv2.BORDER_CONSTANT,
                                 value=T.MEAN_RGB_UINT8)
        ex = {"image": img, "hw": np.array([h, w], np.int32)}
        if with_labels:
            ex["labels"] = rec.labels
        if with_mask:
            if rec.mask is None:
                raise DatasetError(f"image {rec.image_id!r} has no ground-truth mask")
            ex["mask"] = cv2.copyMakeBorder(rec.mask, 0, canvas - h, 0, canvas - w,
                                            cv2.BORDER_CONSTANT, value=255)
        return ex

    return apply


class PseudoLabelSource:
    """A source whose masks are replaced by pseudo-label PNGs `label_dir/<id>.png`."""

    def __init__(self, base, label_dir: str | pathlib.Path, num_classes: int):
        self.base = base
        self.label_dir = pathlib.Path(label_dir)
        self.ids = base.ids
        self.class_names = base.class_names
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Record:
        from dsrg_jax.data.files import read_label_png

        rec = self.base[index]
        mask = read_label_png(self.label_dir / f"{rec.image_id}.png", self.num_classes)
        return dataclasses.replace(rec, mask=mask, cues=None, saliency=None)


LABELS_FROM = ("masks", "cues")


class CueLabelSource:
    """A source whose image-level labels are the cue set's (`cueset.image_labels`), e.g. SEC's
    `"<i>_labels"` from the official cue file, instead of the labels derived from the masks.
    Everything else (image, mask, cues, saliency) is the base source's."""

    def __init__(self, base, cueset, where: str = "the cue set"):
        self.base = base
        self.cueset = cueset
        self.ids = base.ids
        self.class_names = base.class_names
        missing = [i for i in base.ids if i not in cueset]
        if missing:
            raise DatasetError(
                f"{where}: no cues (so no image-level labels) for {len(missing)} of the "
                f"{len(base.ids)} train images (first: {missing[:3]}); data.labels_from='cues' "
                "needs every train image in the cue file: use --labels-from masks, or a cue "
                "file of this train split")

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name):  # num_classes, check_item, image_path, ...: the base's
        if name in ("base", "cueset") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, index: int) -> Record:
        rec = self.base[index]
        labels = np.asarray(self.cueset.image_labels[self.cueset.index_of(rec.image_id)], bool)
        if labels.shape != rec.labels.shape:
            raise DatasetError(f"cue set labels of {rec.image_id!r} have {labels.shape[0]} "
                               f"classes, the dataset {rec.labels.shape[0]}")
        return dataclasses.replace(rec, labels=labels.copy())


def with_labels_from(cfg: Config, source, cueset):
    """The dsrg stage's train source with the image-level labels cfg.data.labels_from names:
    "masks": `source` as is; "cues": the cue set's labels (`CueLabelSource`)."""
    kind = cfg.data.labels_from
    if kind not in LABELS_FROM:
        raise ConfigError(f"data.labels_from must be one of {LABELS_FROM}, got {kind!r} "
                          "(--labels-from)")
    if kind == "masks":
        return source
    return CueLabelSource(source, cueset, where=cfg.data.cues_file or "cues.npz")
