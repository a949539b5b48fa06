"""The stage table: what each stage of a run builds, from which seed, reads and writes.

    pretrain  digits only: a single-digit classifier, the digits' ImageNet (its trunk starts
              every later net)
    cues      CAM classifier -> seed cues of the train split (or an imported cue file)
    dsrg      segmentation net trained with region growing from the cues
    pseudo    CRF-refined multi-scale predictions of the dsrg net on train
    retrain   segmentation net fully supervised on the pseudo-labels
    eval      val mIoU of the dsrg and retrain nets -> results.json, figures
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

from dsrg_jax.config import Config, OptimConfig

ModelKind = Literal["pretrain", "cam", "seg"]


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One row of the stage table.

    Attributes:
      name: the stage (a workdir folder and a `--stage` choice).
      model: the net it trains or uses ("pretrain" classifier, "cam" classifier, "seg"
        segmentation net), or None.
      seed_offset: added to `run.seed` for this stage's init, data order and dropout, so that the
        stages draw independent randomness.
      optim: the stage's optimiser config, for the stages that train.
      inputs, outputs: workdir paths it reads and writes.
    """

    name: str
    model: ModelKind | None
    seed_offset: int
    optim: Callable[[Config], OptimConfig] | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


STAGE_TABLE: dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("pretrain", "pretrain", 3, lambda c: c.pretrain.optim, (),
              ("pretrain/backbone.msgpack", "pretrain/checkpoints")),
    StageSpec("cues", "cam", 0, lambda c: c.cues.optim, ("pretrain/backbone.msgpack",),
              ("cues.npz", "cues/checkpoints")),
    StageSpec("dsrg", "seg", 1, lambda c: c.dsrg.optim, ("cues.npz",),
              ("dsrg/checkpoints", "dsrg/growth")),
    StageSpec("pseudo", "seg", 1, None, ("dsrg/checkpoints",), ("pseudo_labels",)),
    StageSpec("retrain", "seg", 2, lambda c: c.retrain.optim,
              ("pseudo_labels", "dsrg/checkpoints"), ("retrain/checkpoints",)),
    StageSpec("eval", None, 0, None, ("dsrg/checkpoints", "retrain/checkpoints"),
              ("results.json", "eval", "figures")),
)}
STAGES = tuple(STAGE_TABLE)


def stage_trains(cfg: Config, stage: str) -> bool:
    """Whether `stage` trains a net in this config.

    Pretraining and retraining can be off, and an imported cue file replaces the CAM classifier."""
    return {"pretrain": cfg.pretrain.enabled, "cues": not cfg.data.cues_file, "dsrg": True,
            "retrain": cfg.retrain.enabled}.get(stage, False)


def stage_runs(cfg: Config, stage: str) -> bool:
    """Whether `stage` has anything to do in this config."""
    return {"pretrain": cfg.pretrain.enabled, "retrain": cfg.retrain.enabled}.get(stage, True)
