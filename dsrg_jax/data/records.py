"""The common record format every dataset source produces, and the source protocol.

One `Record` is one image with everything known about it. VOC, SBD, COCO, TFDS and the embedded
`digits` dataset all produce the same records, so transforms and the pipeline never ask where an
image came from.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

IGNORE_INDEX = 255  # VOC's "boundary / don't care" value in label maps.


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad input found by a dataset check: which image, which file, what is wrong."""

    image_id: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem} (image id {self.image_id!r})"


@dataclasses.dataclass
class Record:
    """One image and its annotations.

    Attributes:
      image_id: the dataset's id for the image (VOC: "2007_000032").
      image: uint8[H, W, 3], RGB.
      labels: bool[C] image-level labels, channel 0 = background (always True).
      mask: uint8[H, W] class indices 0..C-1, 255 = ignore; None where unknown (e.g. test images).
      cues: bool[h, w, C] multi-hot seed cues on the segmentation output grid of the whole image
        (41x41 for a 321x321 warp); None where not (yet) known.
      saliency: float32[H, W] in [0, 1]; None where not given.
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
    cues: np.ndarray | None = None
    saliency: np.ndarray | None = None

    def __post_init__(self) -> None:
        validate_record(self)

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[0])


def validate_record(rec: Record) -> None:
    """Raises ValueError naming the field if a record's arrays have the wrong shape or dtype."""
    where = f"record {rec.image_id!r}"
    img = rec.image
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{where}: image must be uint8[H, W, 3], got {img.dtype}{list(img.shape)}")
    h, w = img.shape[:2]
    lab = rec.labels
    if lab.dtype != np.bool_ or lab.ndim != 1:
        raise ValueError(f"{where}: labels must be bool[C], got {lab.dtype}{list(lab.shape)}")
    c = lab.shape[0]
    # (field, its array, the dtype it needs, whether its shape is right, the expected form)
    checks = (
        ("mask", rec.mask, np.uint8, lambda a: a.shape == (h, w),
         f"uint8[{h}, {w}] like the image"),
        ("cues", rec.cues, np.bool_, lambda a: a.ndim == 3 and a.shape[2] == c,
         f"bool[h, w, {c}] (C from labels)"),
        ("saliency", rec.saliency, np.float32, lambda a: a.shape == (h, w),
         f"float32[{h}, {w}] like the image"),
    )
    for name, arr, dtype, shape_ok, expected in checks:
        if arr is not None and (arr.dtype != dtype or not shape_ok(arr)):
            raise ValueError(f"{where}: {name} must be {expected}, got {arr.dtype}"
                             f"{list(arr.shape)}")


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Image-level labels of a label map.

    Args:
      mask: uint8[H, W], values 0..num_classes-1 or 255.
      num_classes: C, including background.
    Returns:
      bool[C]: classes with at least one pixel; channel 0 (background) always True.
    """
    values = np.unique(mask)
    values = values[values != IGNORE_INDEX]
    if values.size and values.max() >= num_classes:
        raise ValueError(
            f"mask holds class {int(values.max())}, expected 0..{num_classes - 1} or 255")
    labels = np.zeros(num_classes, bool)
    labels[values] = True
    labels[0] = True
    return labels


# Cues by image id: a mapping or a function of the id giving bool[h, w, C] or a (cues, labels)
# pair (as `dsrg_jax.data.cues.CueSet[id]` does); ids it lacks give None.
CueSource = Mapping[str, np.ndarray] | Callable[[str], "np.ndarray | None"] | Any | None


def lookup_cues(cues: CueSource, image_id: str) -> np.ndarray | None:
    """The cues bool[h, w, C] of one image id; None if the source has none for it."""
    if cues is None:
        return None
    if callable(cues):
        value = cues(image_id)
    else:
        if image_id not in cues:
            return None
        value = cues[image_id]
    if isinstance(value, tuple):  # (cues, labels) pairs
        value = value[0]
    return None if value is None else np.asarray(value, dtype=bool)


class Source(Protocol):
    """What a dataset offers to transforms, checks and the pipeline (random access by index)."""

    ids: Sequence[str]
    class_names: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...

    def check_item(self, index: int) -> list[Problem]:
        """Every problem with item `index` (files missing, undecodable, bad values); [] if fine."""
        ...


class Subset:
    """A source restricted to some of its indices (e.g. with bad items skipped)."""

    def __init__(self, source: Source, indices: Sequence[int]):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.ids = [source.ids[i] for i in self.indices]
        self.class_names = source.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Record:
        return self.source[int(self.indices[index])]

    def check_item(self, index: int) -> list[Problem]:
        return self.source.check_item(int(self.indices[index]))


def check_by_loading(source, index: int) -> list[Problem]:
    """Loads item `index` of a source; returns the first DatasetError/ValueError as [Problem]."""
    image_id = source.ids[index]
    try:
        source[index]
    except (DatasetError, ValueError) as e:
        msg = str(e)
        path, sep, problem = msg.partition(": ")
        if not sep:
            path, problem = "?", msg
        return [Problem(image_id, path, problem)]
    return []
