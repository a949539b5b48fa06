"""Sources derived from another source: pseudo-labels as masks, a cue set's image labels."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from dsrg_jax.data.files import read_label_png
from dsrg_jax.data.records import DatasetError, Record


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
        rec = self.base[index]
        mask = read_label_png(self.label_dir / f"{rec.image_id}.png", self.num_classes)
        return dataclasses.replace(rec, mask=mask, cues=None, saliency=None)


class CueLabelSource:
    """A source whose image-level labels are the cue set's (`cueset.image_labels`).

    E.g. SEC's `"<i>_labels"` from the official cue file, instead of the labels derived from the
    masks. Everything else (image, mask, cues, saliency) is the base source's."""

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
