"""The datasets a config can name (`data.dataset`): their sources, classes, splits and hints.

The one place that knows what "voc", "coco" and "digits" mean; nothing else dispatches on the
name:

    ds = get_dataset(cfg.data.dataset)
    train = ds.source(cfg.data, "train", cues=cueset)      # a Source of Records
    test = ds.images_of(cfg.data, "test")                  # images only, for predictions
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from dsrg_jax.config import DataConfig
from dsrg_jax.data.coco import COCO_CLASSES, CocoSource
from dsrg_jax.data.digits import DIGIT_CLASSES, DigitsSource
from dsrg_jax.data.records import DatasetError
from dsrg_jax.data.saliency import SaliencyDir
from dsrg_jax.data.voc import VOC_CLASSES, VOCSource

Split = Literal["train", "val"]

VOC_HINT = (
    "download VOC 2012 (VOCtrainval_11-May-2012.tar from "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) and SegmentationClassAug "
    "(the SBD-augmented masks), extract them so that DIR/VOCdevkit/VOC2012/JPEGImages exists, "
    "and pass --data-dir DIR")
COCO_HINT = (
    "download COCO 2014 (train2014.zip, val2014.zip, annotations_trainval2014.zip from "
    "https://cocodataset.org/#download) and extract them so that DIR/train2014, DIR/val2014 and "
    "DIR/annotations/instances_train2014.json exist, then pass --data-dir DIR")
# Where the VOC evaluation server wants the predicted PNGs, under the submission folder.
VOC_TEST_LAYOUT = ("results", "VOC2012", "Segmentation", "comp6_test_cls")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What the pipeline needs to know about one dataset.

    Attributes:
      name: the config's `data.dataset`.
      class_names: names by class index (0 = background).
      open: (data config, split name, cues, saliency folder) -> a Source of that split.
      open_images: (data config, split name) -> a Source of the split's images only (masks and
        labels may be absent: the test split), for predictions.
      prediction_layout: sub-folders the predictions of a split go to (the test server's).
      hint: what to download when the data is missing.
      image_side: data config -> the side of its (square) images when they all have one size,
        else None.
      train_split, val_split: the split names its experiment trains and validates on.
    """

    name: str
    class_names: tuple[str, ...]
    open: Callable[..., Any]
    open_images: Callable[[DataConfig, str], Any]
    prediction_layout: tuple[str, ...] = ()
    hint: str = ""
    image_side: Callable[[DataConfig], int | None] = lambda d: None
    train_split: str = "train"
    val_split: str = "val"

    @property
    def num_classes(self) -> int:
        """Classes, background included."""
        return len(self.class_names)

    def data_fields(self) -> dict[str, Any]:
        """Config overrides ("data.<field>": value) for this dataset with its default splits."""
        return {"data.dataset": self.name, "data.num_classes": self.num_classes,
                "data.train_split": self.train_split, "data.val_split": self.val_split}

    def split_name(self, d: DataConfig, split: Split) -> str:
        """The configured name of the "train" or "val" split."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return d.train_split if split == "train" else d.val_split

    def source(self, d: DataConfig, split: Split, *, cues=None, with_saliency: bool = True):
        """The Source of the train or val split (saliency maps only where asked and set)."""
        saliency = d.saliency_dir if with_saliency else None
        return self.open(d, self.split_name(d, split), cues=cues, saliency=saliency)

    def images_of(self, d: DataConfig, split_name: str):
        """The images of any split by name, without the need of masks or labels."""
        return self.open_images(d, split_name)


def _digits(d: DataConfig, name: str, *, cues=None, saliency=None):
    if name not in ("train", "val"):
        raise DatasetError(f"digits has the splits 'train' and 'val', got {name!r}")
    n = d.num_train if name == "train" else d.num_val
    return DigitsSource(name, num_images=n, seed=0, size=d.image_size, cues=cues,
                        saliency=None if saliency is None else SaliencyDir(saliency))


def _voc_root(d: DataConfig) -> str:
    if d.data_dir is None or not pathlib.Path(d.data_dir).exists():
        raise DatasetError(f"VOC data dir {d.data_dir!r} not found: {VOC_HINT}")
    return d.data_dir


def _voc(d: DataConfig, name: str, *, cues=None, saliency=None):
    return VOCSource(_voc_root(d), name, saliency=saliency, cues=cues)


def _voc_images(d: DataConfig, name: str):
    ids = VOCSource(_voc_root(d), name, masks=None, labels={}).ids
    ones = np.ones(d.num_classes, bool)  # unused: predictions argmax over all classes
    return VOCSource(_voc_root(d), name, masks=None, labels=dict.fromkeys(ids, ones))


def _coco(d: DataConfig, name: str, *, cues=None, saliency=None):
    root = pathlib.Path(d.data_dir or "")
    ann = root / "annotations" / f"instances_{name}.json"
    if d.data_dir is None or not ann.is_file():
        raise DatasetError(f"COCO annotations {ann} not found: {COCO_HINT}")
    return CocoSource(ann, root / name, saliency=saliency, cues=cues)


DATASETS: dict[str, Dataset] = {
    "voc": Dataset("voc", tuple(VOC_CLASSES), _voc, _voc_images, VOC_TEST_LAYOUT, VOC_HINT,
                   train_split="train_aug", val_split="val"),
    "coco": Dataset("coco", tuple(COCO_CLASSES), _coco,
                    lambda d, name: _coco(d, name), (), COCO_HINT,
                    train_split="train2014", val_split="val2014"),
    "digits": Dataset("digits", tuple(DIGIT_CLASSES), _digits,
                      lambda d, name: _digits(d, name), (), "", lambda d: d.image_size),
}


def get_dataset(name: str) -> Dataset:
    """The registered dataset `name` ("voc", "coco", "digits")."""
    if name not in DATASETS:
        raise ValueError(f"data.dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


def class_names(num_classes: int) -> tuple[str, ...]:
    """The class names of the registered dataset with `num_classes` classes, else class_<i>."""
    for ds in DATASETS.values():
        if len(ds.class_names) == num_classes:
            return ds.class_names
    return tuple(f"class_{i}" for i in range(num_classes))
