"""Orbax checkpoints of a training stage: state pytree + JSON metadata (data position, metrics).

One `CheckpointManager` per stage folder (`workdir/<stage>/checkpoints`), synchronous saves (a
SIGTERM handler can save and exit without waiting on a background thread).
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Save / restore of (state, meta) under `directory`.

    Args:
      directory: folder for this stage's checkpoints (created).
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes checkpoint `step` (overwrites nothing: an existing step is skipped)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) of checkpoint `step` (default latest), arrays placed like `like`."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), like)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def close(self) -> None:
        self.manager.close()
