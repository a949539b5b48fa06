"""Dataset checks: `check_files` (fast) and `check_dataset` (every item read and decoded).

`check_files` checks that every file an id list names exists; the experiments run it at start.
`check_dataset` reads and decodes every item (`python -m dsrg_jax.data.check`).

A bad item (corrupt JPEG, missing mask, an id in a list with no file, mask values outside 0..C-1 /
255, no labels for an id because the labels file is for another split, ...) stops the run with one
error that names each file and its problem; with `skip_bad=True` (an explicit opt-in) the bad items
are left out instead, each logged, and counted in the returned report. Nothing is dropped silently.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import logging
import pathlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from dsrg_jax import cli
from dsrg_jax.config import Config, override
from dsrg_jax.data.records import DatasetError, Problem, Source, Subset
from dsrg_jax.data.registry import DATASETS, get_dataset

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CheckReport:
    """What the check found: items checked, and the problems (empty when all is well)."""

    num_checked: int
    problems: list[Problem]

    @property
    def num_skipped(self) -> int:
        return len({p.image_id for p in self.problems})

    @property
    def num_ok(self) -> int:
        return self.num_checked - self.num_skipped


def check_dataset(
    source: Source,
    *,
    skip_bad: bool = False,
    num_workers: int = 2,
    max_listed: int = 20,
    name: str = "dataset",
) -> tuple[Source, CheckReport]:
    """Reads every item of `source`; returns (usable source, report).

    Args:
      source: the dataset to check.
      skip_bad: opt in to leaving bad items out (logged one by one and counted) instead of failing.
      num_workers: reader threads.
      max_listed: problems spelt out in the error message (all are counted).
      name: what to call the dataset in messages.
    Raises:
      DatasetError listing the files and their problems when any item is bad and skip_bad is False,
      or when nothing usable is left.
    """
    n = len(source)
    if n == 0:
        raise DatasetError(f"{name}: no items to check (empty id list?)")
    with cf.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = list(pool.map(source.check_item, range(n)))
    problems = [p for r in results for p in r]
    bad = [i for i, r in enumerate(results) if r]
    report = CheckReport(n, problems)
    if not problems:
        log.info("%s: checked %d items, all fine", name, n)
        return source, report
    if not skip_bad:
        lines = "\n".join(f"  {p}" for p in problems[:max_listed])
        more = len(problems) - max_listed
        raise DatasetError(
            f"{name}: {len(bad)} of {n} items are bad:\n{lines}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix them, or opt in to skipping them in Python (check_dataset(..., "
            "skip_bad=True); the experiments' CLIs have no such flag); skipped items are "
            "counted and logged."
        )
    for p in problems:
        log.warning("%s: skipping %s", name, p)
    if len(bad) == n:
        raise DatasetError(f"{name}: all {n} items are bad (first: {problems[0]}); nothing left")
    log.warning("%s: skipped %d of %d items (see the warnings above)", name, len(bad), n)
    good = [i for i, r in enumerate(results) if not r]
    return Subset(source, good), report


def item_files(source: Source, index: int) -> list[pathlib.Path]:
    """The files item `index` of a VOC-style or COCO source needs: image, mask, saliency map."""
    image_id = source.ids[index]
    if hasattr(source, "mask_path"):  # VOCSource: paths by id
        files = [source.image_path(image_id), source.mask_path(image_id)]
    else:  # CocoSource: image path by index; masks come from the annotation file
        files = [source.image_path(index)]
    sal = getattr(source, "saliency", None)
    if sal is not None:
        files.append(sal.path(image_id))
    return [pathlib.Path(f) for f in files if f is not None]


def check_files(source: Source, *, name: str = "dataset", max_listed: int = 5,
                num_workers: int = 8) -> int:
    """The fast check: the id list is not empty and every file its items need exists.

    Nothing is decoded; `check_dataset` does that. Returns the number of items.

    Raises:
      DatasetError naming the number of missing files and the first `max_listed` of them.
    """
    n = len(source)
    if n == 0:
        raise DatasetError(f"{name}: the id list is empty")

    def missing(i):
        return [(source.ids[i], f) for f in item_files(source, i) if not f.is_file()]

    with cf.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        gone = [m for r in pool.map(missing, range(n)) for m in r]
    if gone:
        shown = ", ".join(str(f) for _, f in gone[:max_listed])
        more = f" and {len(gone) - max_listed} more" if len(gone) > max_listed else ""
        raise DatasetError(
            f"{name}: {len(gone)} files of {len({i for i, _ in gone})} of the {n} images are "
            f"missing: {shown}{more}; fix the data (or the id list); `python -m "
            f"dsrg_jax.data.check` reads every file and lists every problem")
    return n


# What PIL raises for a file it cannot read: UnidentifiedImageError (an OSError) for a header it
# does not know, OSError for truncated data or no permission, SyntaxError / ValueError for broken
# PNG chunks.
_UNREADABLE = (OSError, SyntaxError, ValueError)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, UnidentifiedImageError):
        return "not an image file PIL can identify"
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def check_sizes_and_masks(source: Source, *, canvas: int | None, num_classes: int,
                          name: str = "dataset", max_listed: int = 5,
                          num_workers: int = 8) -> None:
    """What the later stages need of a VOC-style source, checked before any training.

    Every image fits the inference canvas (its header is read, the pixels are not) and every mask
    holds only class indices 0..C-1 or 255 (each mask is decoded). One DatasetError lists the bad
    files, an image or mask PIL cannot read among them. Sources without per-file masks (COCO,
    digits) are not checked here.

    Args:
      canvas: the inference canvas side (`eval.canvas`), or None (no size limit).
    """
    if not hasattr(source, "image_path") or not hasattr(source, "mask_path"):
        return
    allowed = np.zeros(256, bool)
    allowed[:num_classes] = allowed[255] = True

    def problems(i):
        image_id, out = source.ids[i], []
        path = pathlib.Path(source.image_path(image_id))
        try:
            with Image.open(path) as im:
                w, h = im.size
        except _UNREADABLE as e:
            return [f"{path}: cannot read the image ({_reason(e)})"]
        if canvas is not None and max(h, w) > canvas:
            out.append(f"{path} is {h}x{w}, larger than the inference canvas {canvas} (pass "
                       f"--canvas {max(h, w)} or more)")
        mask = source.mask_path(image_id)
        if mask is not None and pathlib.Path(mask).is_file():
            try:
                with Image.open(mask) as m:
                    values = np.unique(np.asarray(m))
            except _UNREADABLE as e:
                return [*out, f"{mask}: cannot read the mask ({_reason(e)})"]
            bad = values[~allowed[values]]
            if bad.size:
                out.append(f"{mask} holds values {bad[:5].tolist()} (expected 0..{num_classes - 1}"
                           f" or 255)")
        return out

    with cf.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        found = [p for r in pool.map(problems, range(len(source))) for p in r]
    if found:
        more = f" and {len(found) - max_listed} more" if len(found) > max_listed else ""
        raise DatasetError(f"{name}: {len(found)} problems: {'; '.join(found[:max_listed])}"
                           f"{more}")


def main(argv=None) -> None:
    """`python -m dsrg_jax.data.check --dataset voc --data-dir DIR`: the full check."""
    p = argparse.ArgumentParser(
        prog="python -m dsrg_jax.data.check",
        description="Read and decode every image, mask and saliency map of the splits an "
                    "experiment uses; list every bad file of every split.")
    p.add_argument("--dataset", default="voc", choices=sorted(DATASETS))
    p.add_argument("--data-dir", default=None,
                   help="the --data-dir of the experiment (not used by digits)")
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to check (default: the experiment's train and val splits)")
    p.add_argument("--saliency-dir", default=None, help="the --saliency-dir of the experiment")
    p.add_argument("--workers", type=int, default=8, help="reader threads")
    cli.add_debug_flag(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cli.run(lambda: check_splits(a.dataset, a.data_dir, a.splits, saliency_dir=a.saliency_dir,
                                 num_workers=a.workers), debug=a.debug)


def check_splits(dataset: str, data_dir: str | None, splits=None, *,
                 saliency_dir: str | None = None, num_workers: int = 8) -> None:
    """`check_dataset` of every split, printing each fine one.

    Default: the dataset's train and val splits. Raises one DatasetError with the problems of every
    bad split."""
    ds = get_dataset(dataset)
    d = override(Config(), **ds.data_fields(), **{"data.data_dir": data_dir,
                                                  "data.saliency_dir": saliency_dir}).data
    errors: list[str] = []
    opening: dict[str, list[str]] = {}    # error opening a split -> the splits it stops
    for split in splits or [d.train_split, d.val_split]:
        name = f"{dataset} {split}"
        try:
            src = ds.open(d, split, saliency=saliency_dir if split == d.train_split else None)
        except (DatasetError, OSError) as e:   # every split is checked, reported together
            opening.setdefault(cli.one_line(e), []).append(name)
            continue
        try:
            _, report = check_dataset(src, num_workers=num_workers, name=name)
            print(f"{split}: {report.num_checked} items, all fine")
        except DatasetError as e:
            errors.append(str(e))
        except OSError as e:
            errors.append(f"{name}: {cli.one_line(e)}")
    errors += [f"{', '.join(names)}: {msg}" for msg, names in opening.items()]
    if errors:
        raise DatasetError("\n".join(errors))


if __name__ == "__main__":
    main()
