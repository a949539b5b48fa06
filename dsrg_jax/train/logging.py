"""Metrics writers (process 0 only): JSON lines, TensorBoard event files, progress bars."""
from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Any

import jax
import numpy as np


def is_writer() -> bool:
    """Only process 0 writes logs, figures and results."""
    return jax.process_index() == 0


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, jax.Array)):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


class MetricsWriter:
    """Appends scalar metrics to `workdir/metrics.jsonl` and TensorBoard events.

    The events go to `workdir/tensorboard/<stage>`. On processes other than 0 every call does
    nothing.

    Args:
      workdir: experiment folder.
      tensorboard: also write TensorBoard event files (needs `tensorboardX`).
    """

    def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.enabled = is_writer()
        self._tb: dict[str, Any] = {}
        self._use_tb = tensorboard
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.workdir / "metrics.jsonl", "a")

    def _board(self, stage: str):
        if not self._use_tb:
            return None
        if stage not in self._tb:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: JSON lines still written
                self._use_tb = False
                return None
            self._tb[stage] = SummaryWriter(str(self.workdir / "tensorboard" / stage))
        return self._tb[stage]

    def scalars(self, stage: str, step: int, values: dict[str, Any]) -> None:
        """One JSON line {"stage", "step", **values} and one TensorBoard scalar per value."""
        if not self.enabled:
            return
        row = {"stage": stage, "step": int(step)}
        row.update({k: _plain(v) for k, v in values.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        board = self._board(stage)
        if board is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step",) and math.isfinite(v):
                    board.add_scalar(k, v, int(step))

    def resume(self, stage: str, step: int) -> int:
        """Drops the metrics.jsonl rows of `stage` past `step`; returns how many.

        Those rows were written after the checkpoint a resumed run restarts from; dropping them
        leaves each step in the log once."""
        if not self.enabled:
            return 0
        self._jsonl.close()
        path = self.workdir / "metrics.jsonl"
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:      # a line cut by a kill mid-write
                dropped += 1
                continue
            if row.get("stage") == stage and int(row.get("step", 0)) > step:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            tmp.replace(path)
        self._jsonl = open(path, "a")
        return dropped

    def image(self, stage: str, step: int, tag: str, image: np.ndarray) -> None:
        """A uint8[H, W, 3] image (e.g. a grid of cues / predictions) in TensorBoard."""
        if not self.enabled:
            return
        board = self._board(stage)
        if board is not None:
            board.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        for board in self._tb.values():
            board.close()
        self._jsonl.close()


def progress(total: int, initial: int, desc: str):
    """A tqdm bar with ETA on stderr, one line per stage.

    Silent when stderr is not a terminal or on processes other than 0."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True,
                disable=not (sys.stderr.isatty() and is_writer()))


def log(message: str) -> None:
    """A line on stdout from process 0 (flushed: progress is visible in logs and pipes)."""
    if is_writer():
        print(message, flush=True)
