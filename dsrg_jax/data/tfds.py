"""TensorFlow Datasets as a source of images and image-level labels (`voc/2012`, `coco/2014`).

TFDS `voc/2012` has no segmentation masks and no SBD: records from here carry image and labels
only. Optional: needs `pip install -r requirements-tfds.txt` (tensorflow-cpu +
tensorflow-datasets) and data already prepared in `data_dir` (nothing is downloaded).

Class order: `voc/2012` label k is VOC class k + 1 (aeroplane = 1 ... tvmonitor = 20); `coco/2014`
label k is the k-th category of the annotation file in ascending id order = `COCO_CLASSES[k + 1]`.
Both are checked against the dataset's own label names when it has them.
"""
from __future__ import annotations

import pathlib

import numpy as np

from dsrg_jax.data import records
from dsrg_jax.data.coco import COCO_CLASSES
from dsrg_jax.data.records import DatasetError, Record
from dsrg_jax.data.saliency import SaliencyDir
from dsrg_jax.data.voc import VOC_CLASSES

# name -> (feature path of the image-level labels, our class names)
_KNOWN = {
    "voc": ("labels", "voc"),
    "coco": (("objects", "label"), "coco"),
}


def _class_names(kind: str) -> tuple[str, ...]:
    return VOC_CLASSES if kind == "voc" else COCO_CLASSES


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetError(
            "TFDS sources need tensorflow-cpu and tensorflow-datasets: "
            "pip install -r requirements-tfds.txt"
        ) from e
    return tfds


class TfdsSource:
    """A TFDS split held in memory as `Record`s (image + image-level labels; no masks).

    Args:
      name: "voc/2012", "coco/2014" (or another version of those two).
      split: TFDS split, e.g. "train", "validation", "train[:100]".
      data_dir: where the prepared TFDS data lies (None: TFDS's default).
      max_examples: read at most this many (None: all; the decoded images are kept in memory).
      saliency, cues: as for VOCSource, matched by image id (the file-name stem).
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        *,
        data_dir: str | None = None,
        max_examples: int | None = None,
        saliency: SaliencyDir | None = None,
        cues: records.CueSource = None,
    ):
        family = name.split("/")[0]
        if family not in _KNOWN:
            raise ValueError(f"name must be a voc/... or coco/... TFDS dataset, got {name!r}")
        key, kind = _KNOWN[family]
        self.class_names = _class_names(kind)
        self.num_classes = len(self.class_names)
        tfds = _import_tfds()
        try:
            ds, info = tfds.load(name, split=split, data_dir=data_dir, with_info=True,
                                 shuffle_files=False, download=False)
        except Exception as e:
            raise DatasetError(
                f"TFDS {name!r} split {split!r} (data_dir={data_dir}): cannot load "
                f"({type(e).__name__}: {e}); prepare it with `tfds build` on a machine with "
                "the data"
            ) from e
        feature = info.features
        for k in (key if isinstance(key, tuple) else (key,)):
            feature = feature[k]
        if hasattr(feature, "feature"):  # Sequence(ClassLabel)
            feature = feature.feature
        names = list(feature.names)
        ours = [n.replace(" ", "") for n in self.class_names[1:]]
        if not all(n.isdigit() for n in names) and [n.replace(" ", "") for n in names] != ours:
            raise DatasetError(
                f"TFDS {name!r}: label names {names[:5]}... are not the expected order "
                f"{list(self.class_names[1:6])}..."
            )
        if len(names) != self.num_classes - 1:
            raise DatasetError(
                f"TFDS {name!r}: {len(names)} classes, expected {self.num_classes - 1}")
        if max_examples is not None:
            ds = ds.take(max_examples)
        self.ids, self._images, self._labels = [], [], []
        for ex in tfds.as_numpy(ds):
            fname = ex["image/filename"]
            fname = fname.decode() if isinstance(fname, bytes) else str(fname)
            self.ids.append(pathlib.Path(fname).stem)
            self._images.append(np.asarray(ex["image"], np.uint8))
            raw = ex[key] if isinstance(key, str) else ex[key[0]][key[1]]
            lab = np.zeros(self.num_classes, bool)
            lab[0] = True
            lab[np.asarray(raw, np.int64) + 1] = True
            self._labels.append(lab)
        self.saliency = saliency
        self.cues = cues

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Record:
        image_id = self.ids[index]
        image = self._images[index]
        sal = None if self.saliency is None else self.saliency.load(image_id, image.shape[:2])
        return Record(image_id, image, self._labels[index].copy(),
                      cues=records.lookup_cues(self.cues, image_id), saliency=sal)

    def check_item(self, index: int) -> list[records.Problem]:
        return records.check_by_loading(self, index)
