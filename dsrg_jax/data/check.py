"""The up-front dataset check: every item is read before training starts.

A bad item (corrupt JPEG, missing mask, an id in a list with no file, mask values outside 0..C-1 /
255, no labels for an id because the labels file is for another split, ...) stops the run with one
error that names each file and its problem; with `skip_bad=True` (an explicit opt-in) the bad items
are left out instead, each logged, and counted in the returned report. Nothing is dropped silently.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging

from dsrg_jax.data.records import DatasetError, Problem, Source, Subset

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
            + "\nFix them, or opt in to skipping them (skip_bad=True / --skip-bad-data); skipped "
            "items are counted and logged."
        )
    for p in problems:
        log.warning("%s: skipping %s", name, p)
    if len(bad) == n:
        raise DatasetError(f"{name}: all {n} items are bad (first: {problems[0]}); nothing left")
    log.warning("%s: skipped %d of %d items (see the warnings above)", name, len(bad), n)
    good = [i for i, r in enumerate(results) if not r]
    return Subset(source, good), report
