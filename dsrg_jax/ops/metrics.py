"""Segmentation metrics as sums: confusion matrices (jit-able) and scores from them (host).

Standard protocol: one confusion matrix over the whole split, pixels whose ground truth is 255
ignored, IoU = TP / (TP + FP + FN) per class, mIoU = mean over all classes. A class that appears
neither in the ground truth nor in the predictions has no IoU (NaN) and is left out of the mean;
a class with a union but no true positive counts as 0.

The official scripts' formulas, by `mean_iou(formula=...)` (`MIOU_FORMULAS`):
  "voc-official": `training/tools/evaluate.py` `jaccard`: the mean over the classes with
    TP > 0 only (a class never predicted right is left out, which raises the mean);
  "coco-official": `test-coco-f.py` / `test-coco.py`: TP / max(1, union) averaged over all C
    classes (a class absent from both counts 0).
All three agree when every class has TP > 0 (a trained net on the full VOC or COCO val).

Per-batch counts are int32 on the device; accumulate them on the host in int64 (`np.add`), since
a large split (e.g. COCO val) has more pixels than int32 holds.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255
MiouFormula = Literal["standard", "voc-official", "coco-official"]
MIOU_FORMULAS: tuple[str, ...] = ("standard", "voc-official", "coco-official")


def confusion_matrix(pred: jax.Array, gt: jax.Array, num_classes: int, *,
                     ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """Counts of (ground truth, prediction) pairs.

    Args:
      pred: int[...] predicted class per pixel.
      gt: int[...] ground truth of the same shape; `ignore_index` pixels are not counted, nor are
        pixels whose gt or pred lies outside 0..num_classes-1.
      num_classes: C.

    Returns:
      int32[C, C], rows = ground truth, columns = prediction.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"confusion_matrix: `pred` {tuple(pred.shape)} and `gt` "
                         f"{tuple(gt.shape)} must have the same shape")
    pred = pred.astype(jnp.int32).reshape(-1)
    gt = gt.astype(jnp.int32).reshape(-1)
    valid = ((gt != ignore_index) & (gt >= 0) & (gt < num_classes)
             & (pred >= 0) & (pred < num_classes))
    pair = jnp.where(valid, gt * num_classes + pred, 0)
    counts = jnp.bincount(pair, weights=valid.astype(jnp.int32), length=num_classes ** 2)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """float64[C] IoU per class from a confusion matrix; NaN where the union is empty."""
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def check_miou_formula(formula: str) -> str:
    """`formula` if it is one of `MIOU_FORMULAS`, else ValueError naming them."""
    if formula not in MIOU_FORMULAS:
        raise ValueError(f"miou formula must be one of {list(MIOU_FORMULAS)}, got {formula!r}")
    return formula


def mean_iou(confusion: np.ndarray, formula: MiouFormula = "standard") -> float:
    """Mean IoU of a confusion matrix int[C, C] (see module doc for the formulas).

    "standard": over the classes with a union; "voc-official": over the classes with TP > 0;
    "coco-official": TP / max(1, union) over all C classes. NaN when no class qualifies.
    """
    check_miou_formula(formula)
    confusion = np.asarray(confusion, dtype=np.int64)
    if formula == "coco-official":
        tp = np.diag(confusion)
        union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
        return float(np.mean(tp / np.maximum(1, union))) if len(tp) else float("nan")
    iou = iou_per_class(confusion)
    if formula == "voc-official":
        iou = np.where(np.diag(confusion) > 0, iou, np.nan)
    return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of counted pixels predicted correctly."""
    confusion = np.asarray(confusion, dtype=np.int64)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def cue_counts(cues: jax.Array, gt: jax.Array, *, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """Per-class agreement of multi-hot cues with the ground truth (supervision quality).

    Args:
      cues: bool[B, H, W, C] multi-hot cues (or grown cues).
      gt: int[B, H, W] ground truth; `ignore_index` pixels are not counted.

    Returns:
      int32[C, 3]: per class (TP, FP, FN) = (cue of c where gt is c, cue of c where gt is not c,
      gt is c without a cue of c).
    """
    if cues.shape[:-1] != gt.shape:
        raise ValueError(f"cue_counts: `cues` {tuple(cues.shape)} must be `gt` "
                         f"{tuple(gt.shape)} + (C,)")
    num_classes = cues.shape[-1]
    valid = (gt != ignore_index)[..., None]
    is_class = gt[..., None] == jnp.arange(num_classes)
    axes = tuple(range(cues.ndim - 1))
    tp = jnp.sum(cues & is_class & valid, axis=axes, dtype=jnp.int32)
    fp = jnp.sum(cues & ~is_class & valid, axis=axes, dtype=jnp.int32)
    fn = jnp.sum(~cues & is_class & valid, axis=axes, dtype=jnp.int32)
    return jnp.stack([tp, fp, fn], axis=-1)


def cue_quality(counts: np.ndarray) -> dict[str, float]:
    """Precision, recall and IoU of cues from (summed) `cue_counts`, as the paper's Fig. 4.

    precision = sum TP / sum (TP + FP) over classes (how many cue labels are right);
    recall = sum TP / sum (TP + FN) (how many labelled pixels have their true class as a cue);
    iou = sum TP / sum (TP + FP + FN); miou = mean of the per-class IoUs that exist;
    fg_precision / fg_recall: the same over the foreground classes 1.. only (how many foreground
    cue labels are right; how many object pixels carry a cue of their class), bg_precision /
    bg_recall over class 0 (background).
    """
    counts = np.asarray(counts, dtype=np.int64)
    tp, fp, fn = counts[:, 0].sum(), counts[:, 1].sum(), counts[:, 2].sum()

    def ratio(num, den):
        return float(num / den) if den else float("nan")

    union = counts.sum(axis=1)
    per_class = np.where(union > 0, counts[:, 0] / np.maximum(union, 1), np.nan)
    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "miou": float(np.nanmean(per_class)) if np.any(union > 0) else float("nan"),
        "fg_precision": ratio(counts[1:, 0].sum(), counts[1:, :2].sum()),
        "fg_recall": ratio(counts[1:, 0].sum(), counts[1:, 0].sum() + counts[1:, 2].sum()),
        "bg_precision": ratio(counts[0, 0], counts[0, :2].sum()),
        "bg_recall": ratio(counts[0, 0], counts[0, 0] + counts[0, 2]),
    }


confusion_matrix = jax.jit(confusion_matrix, static_argnames=("num_classes", "ignore_index"))
cue_counts = jax.jit(cue_counts, static_argnames=("ignore_index",))
