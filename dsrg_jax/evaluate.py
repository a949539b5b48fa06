"""Scoring: a folder of predicted label PNGs against ground truth, and the pipeline's `Evaluator`.

    python -m dsrg_jax.evaluate --gt VOC2012/SegmentationClass --pred runs/voc/pred \
        [--list VOC2012/ImageSets/Segmentation/val.txt] [--num-classes 21] [--json scores.json]

Standard protocol: one C x C confusion matrix over the whole split (rows = ground truth,
columns = prediction), ground-truth pixels 255 ignored, IoU = TP / (TP + FP + FN) per class, mIoU =
mean over all classes (a class absent from both ground truth and predictions has no IoU and is
left out, as in `dsrg_jax.mean_iou`; `miou_formula="voc-official"` / `"coco-official"` give the
official scripts' means, see `dsrg_jax.ops.metrics`). PNGs are read as palette indices
(`read_label_png`), never as grey levels. Every missing prediction, wrong-size prediction or bad
value is named, all of them at once, and nothing is scored until they are fixed. Scores are in
percent.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from dsrg_jax.data.files import read_id_list, read_label_png
from dsrg_jax.data.records import IGNORE_INDEX, DatasetError
from dsrg_jax.data.registry import class_names
from dsrg_jax.ops.metrics import (
    MIOU_FORMULAS,
    MiouFormula,
    check_miou_formula,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)
from dsrg_jax.sharding import sum_over_processes

PathLike = str | os.PathLike


class EvaluationError(ValueError):
    """Predictions cannot be scored; the message names every bad or missing file."""


def confusion_matrix_np(pred: np.ndarray, gt: np.ndarray, num_classes: int, *,
                        ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Host confusion matrix of one image (any shape): int64[C, C], rows = gt, cols = pred.

    Pixels with gt == ignore_index, or gt or pred outside 0..C-1, are not counted (as
    `dsrg_jax.ops.metrics.confusion_matrix`).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    gt = gt.astype(np.int64).reshape(-1)
    pred = pred.astype(np.int64).reshape(-1)
    keep = ((gt != ignore_index) & (gt >= 0) & (gt < num_classes) & (pred >= 0)
            & (pred < num_classes))
    return np.bincount(gt[keep] * num_classes + pred[keep],
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class Evaluator:
    """One confusion matrix over a split: the one way everything scores.

    Accumulated image by image on each host and summed across hosts at the end; the pipeline and
    `evaluate_dirs` both score with it.

        ev = Evaluator(21)
        for pred, gt in ...: ev.add(pred, gt)
        ev.result()   # {"miou", "pixel_accuracy", "iou_per_class", "num_images"} (fractions)

    `miou_formula`: "standard" (default), "voc-official" or "coco-official" (`mean_iou`).
    """

    def __init__(self, num_classes: int, miou_formula: MiouFormula = "standard"):
        self.num_classes = int(num_classes)
        self.miou_formula = check_miou_formula(miou_formula)
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.num_images = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """One image: pred, gt int[H, W] (gt 255 = ignore)."""
        self.confusion += confusion_matrix_np(pred, gt, self.num_classes)
        self.num_images += 1

    def add_confusion(self, confusion: np.ndarray, num_images: int = 0) -> None:
        """Counts computed elsewhere (e.g. on the device): int[C, C]."""
        self.confusion += np.asarray(confusion, np.int64)
        self.num_images += int(num_images)

    def total(self) -> tuple[np.ndarray, int]:
        """(confusion int64[C, C], images) summed over all processes."""
        counts = sum_over_processes(np.append(self.confusion.reshape(-1), self.num_images))
        return counts[:-1].reshape(self.confusion.shape), int(counts[-1])

    def result(self) -> dict:
        """mIoU, pixel accuracy and per-class IoU (fractions) over all processes.

        The IoU of a class absent from both ground truth and predictions is None."""
        confusion, n = self.total()
        iou = iou_per_class(confusion)
        return {"miou": mean_iou(confusion, self.miou_formula),
                "pixel_accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
                "iou_per_class": [None if np.isnan(v) else float(v) for v in iou],
                "num_images": n}


@dataclasses.dataclass(frozen=True)
class Scores:
    """Scores from one confusion matrix over a split.

    Attributes:
      confusion: int64[C, C], rows = ground truth, columns = prediction.
      class_names: C names.
      iou: float64[C] IoU per class in percent (NaN: class absent from gt and predictions).
      mean_iou: mean of the defined IoUs, percent.
      pixel_accuracy: percent of counted (non-ignored) pixels predicted right.
      num_images: images scored.
    """

    confusion: np.ndarray
    class_names: tuple[str, ...]
    iou: np.ndarray
    mean_iou: float
    pixel_accuracy: float
    num_images: int

    def to_json(self) -> dict:
        """Plain JSON-able dict (NaN -> None)."""
        clean = lambda v: None if math.isnan(v) else round(float(v), 4)  # noqa: E731
        return {
            "mean_iou": clean(self.mean_iou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "num_images": self.num_images,
            "iou": {n: clean(v) for n, v in zip(self.class_names, self.iou)},
            "confusion": self.confusion.tolist(),
            "units": "percent; confusion rows = ground truth, columns = prediction",
        }

    def table(self) -> str:
        """Per-class IoU table, then mIoU and pixel accuracy."""
        width = max(12, max(len(n) for n in self.class_names) + 2)
        lines = [f"{'class':<{width}}{'IoU %':>8}", "-" * (width + 8)]
        for name, v in zip(self.class_names, self.iou):
            lines.append(f"{name:<{width}}{'-' if math.isnan(v) else f'{v:.2f}':>8}")
        lines.append("-" * (width + 8))
        lines.append(f"{'mIoU':<{width}}{self.mean_iou:>8.2f}")
        lines.append(f"{'pixel acc.':<{width}}{self.pixel_accuracy:>8.2f}")
        lines.append(f"({self.num_images} images)")
        return "\n".join(lines)


def scores_from_confusion(confusion: np.ndarray, names: Sequence[str] | None = None,
                          num_images: int = 0, miou_formula: MiouFormula = "standard") -> Scores:
    """Pure: confusion int[C, C] -> `Scores` (percent; mIoU by `miou_formula`, see `mean_iou`)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    c = confusion.shape[0]
    if confusion.shape != (c, c):
        raise ValueError(f"confusion must be square int[C, C], got {confusion.shape}")
    names = tuple(names) if names is not None else class_names(c)
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes")
    return Scores(confusion=confusion, class_names=names, iou=100.0 * iou_per_class(confusion),
                  mean_iou=100.0 * mean_iou(confusion, miou_formula),
                  pixel_accuracy=100.0 * pixel_accuracy(confusion), num_images=int(num_images))


def _ids_of(gt_dir: pathlib.Path, id_list: PathLike | None) -> list[str]:
    if id_list is not None:
        return read_id_list(id_list)
    ids = sorted(p.stem for p in gt_dir.glob("*.png"))
    if not ids:
        raise EvaluationError(f"{gt_dir}: no ground-truth PNGs found")
    return ids


def evaluate_dirs(gt_dir: PathLike, pred_dir: PathLike, *, num_classes: int = 21,
                  id_list: PathLike | None = None,
                  names: Sequence[str] | None = None,
                  miou_formula: MiouFormula = "standard") -> Scores:
    """Scores `pred_dir/{id}.png` against `gt_dir/{id}.png` for every id, through `Evaluator`.

    Args:
      gt_dir: folder of ground-truth label PNGs (palette, grey or VOC-RGB; 255 = ignore).
      pred_dir: folder of predictions, same names; values 0..C-1 (palette or grey PNGs).
      num_classes: C.
      id_list: optional file of ids to score (VOC ImageSets style); default every PNG in gt_dir.
      names: class names (default from `class_names(C)`).
      miou_formula: "standard", "voc-official" or "coco-official" (see `mean_iou`).

    Returns:
      `Scores`. Raises EvaluationError naming every missing prediction, prediction whose size
      differs from its ground truth, and unreadable or out-of-range file, before scoring.
    """
    gt_dir, pred_dir = pathlib.Path(gt_dir), pathlib.Path(pred_dir)
    for name, d in (("--gt", gt_dir), ("--pred", pred_dir)):
        if not d.is_dir():
            raise EvaluationError(f"{name} {d}: folder not found")
    ids = _ids_of(gt_dir, id_list)
    ev = Evaluator(num_classes, miou_formula)
    problems: list[str] = []
    for image_id in ids:
        gt_path, pred_path = gt_dir / f"{image_id}.png", pred_dir / f"{image_id}.png"
        if not pred_path.is_file():
            problems.append(f"{pred_path}: prediction missing")
            continue
        try:
            gt = read_label_png(gt_path, num_classes)
            pred = read_label_png(pred_path, num_classes)
        except DatasetError as e:
            problems.append(str(e))
            continue
        if pred.shape != gt.shape:
            problems.append(f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH), "
                            f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]}")
            continue
        if np.any(pred == IGNORE_INDEX):
            problems.append(f"{pred_path}: prediction holds {IGNORE_INDEX} (ignore); predictions "
                            f"must be class indices 0..{num_classes - 1}")
            continue
        if not problems:  # after the first problem only checking goes on
            ev.add(pred, gt)
    if problems:
        shown = "\n  ".join(problems)
        raise EvaluationError(f"{len(problems)} of {len(ids)} predictions cannot be scored:\n  "
                              f"{shown}")
    # This process read every file: its own counts are the split's (no sum over processes).
    return scores_from_confusion(ev.confusion, names, num_images=ev.num_images,
                                 miou_formula=miou_formula)


def main(argv: Sequence[str] | None = None) -> Scores:
    """The command line; predictions that cannot be scored -> one line naming every bad file.

    Exit status 2 then (`--debug`: the traceback)."""
    from dsrg_jax import cli

    parser = argparse.ArgumentParser(prog="python -m dsrg_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, type=pathlib.Path,
                        help="folder of ground-truth PNGs (e.g. VOC2012/SegmentationClass)")
    parser.add_argument("--pred", required=True, type=pathlib.Path,
                        help="folder of predicted PNGs named like the ground truth")
    parser.add_argument("--list", type=pathlib.Path, default=None, dest="id_list",
                        help="ids to score (e.g. ImageSets/Segmentation/val.txt); default: every "
                             "PNG in --gt")
    parser.add_argument("--num-classes", type=int, default=21, help="C (default 21, VOC)")
    parser.add_argument("--json", type=pathlib.Path, default=None,
                        help="also write the scores and the confusion matrix here")
    parser.add_argument("--miou-formula", default="standard", choices=MIOU_FORMULAS,
                        help="standard (default: classes present in gt or predictions), "
                             "voc-official / coco-official (the official scripts' means)")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.num_classes < 2 or args.num_classes > 255:
        parser.error("--num-classes must be in 2..255")
    # Exit status 2: the predictions (or the files around them) cannot be scored.
    return cli.run(lambda: _score_and_report(args), debug=args.debug, status=2)


def _score_and_report(args) -> Scores:
    """`main`'s scoring, printing and --json output, from its parsed flags."""
    scores = evaluate_dirs(args.gt, args.pred, num_classes=args.num_classes,
                           id_list=args.id_list, miou_formula=args.miou_formula)
    print(scores.table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(scores.to_json(), indent=2))
        print(f"scores: {args.json}")
    return scores


if __name__ == "__main__":
    main()
