"""Stage `dsrg`: the segmentation net trained from the seed cues with region growing.

Inputs: cues.npz (the train split's cues on the output grid). Each step (`steps.
make_dsrg_train_step`): logits -> P -> CRF Q -> cues grown from the original cues -> balanced seed
loss + constrain loss. Alongside, from the step's own outputs: the supervision quality of the
grown cues per epoch (the paper's Fig. 4), growth snapshots of a few fixed images per epoch (the
growth figure) and TensorBoard image grids.
Output: dsrg/checkpoints, dsrg/growth/epoch_*.npz, dsrg/done.json.
"""
from __future__ import annotations

import math

import numpy as np

from dsrg_jax import viz
from dsrg_jax.data import transforms as T
from dsrg_jax.data.cues import load_cues
from dsrg_jax.ops.metrics import cue_quality
from dsrg_jax.pipeline import nets
from dsrg_jax.pipeline.sources import dsrg_train_source, dsrg_transform
from dsrg_jax.pipeline.splits import has_masks
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import to_host
from dsrg_jax.train import steps
from dsrg_jax.train.logging import is_writer


class SupervisionHook:
    """Supervision quality (precision / recall / IoU of the cues vs the ground truth) per epoch.

    Measured on the output grid. Epoch 0 = the original cues, epoch e = the grown cues of the e-th
    pass over the train split (the paper's Fig. 4). Kept in the checkpoints (`state`)."""

    def __init__(self, steps_per_epoch: float, num_classes: int):
        self.steps_per_epoch = steps_per_epoch
        self.records: list[dict] = []
        self.cur = np.zeros((num_classes, 3), np.int64)
        self.orig = np.zeros((num_classes, 3), np.int64)

    def update(self, step: int, metrics: dict) -> dict:
        if "counts_grown" not in metrics:
            return {}
        self.cur += np.asarray(metrics["counts_grown"], np.int64)
        if (step - 1) / self.steps_per_epoch < 1:
            self.orig += np.asarray(metrics["counts_cues"], np.int64)
        if step % max(1, round(self.steps_per_epoch)) == 0:
            return self._close(round(step / self.steps_per_epoch))
        return {}

    def _close(self, epoch: int, partial: float | None = None) -> dict:
        if not self.records:
            self.records.append({"epoch": 0, **cue_quality(self.orig)})
        q = {"epoch": epoch, **cue_quality(self.cur)}
        if partial is not None:
            q["partial"] = partial
        self.records.append(q)
        self.cur[:] = 0
        return {f"supervision_{k}": v for k, v in q.items() if k != "epoch"}

    def finish(self, step: int) -> None:
        """Closes a last partial epoch (if any steps were counted since the last epoch end)."""
        if self.cur.sum():
            frac = step / self.steps_per_epoch
            self._close(math.ceil(frac), partial=round(frac - math.floor(frac), 3))
        elif not self.records and self.orig.sum():
            self.records.append({"epoch": 0, **cue_quality(self.orig)})

    def state(self) -> dict:
        return {"records": self.records, "cur": self.cur.tolist(), "orig": self.orig.tolist()}

    def restore(self, state: dict) -> None:
        self.records = list(state["records"])
        self.cur = np.asarray(state["cur"], np.int64)
        self.orig = np.asarray(state["orig"], np.int64)


class GrowthSnapshots:
    """The grown cues and CRF prediction of a few fixed train images, written at every epoch end.

    Taken from the training step's own outputs whenever one of them is in a batch, written as
    dsrg/growth/epoch_<e>.npz {images, cues, grown, pred, masks, final} (epoch 0: the original cues,
    before training). A flipped copy is mirrored back, so every epoch lines up."""

    def __init__(self, exp: Experiment, source, indices, grid: tuple[int, int]):
        self.dir = exp.path("dsrg", "growth")
        self.row = {int(i): k for k, i in enumerate(indices)}
        size = exp.cfg.data.input_size
        warped = [T.warp(source[i], size, grid[0]) for i in indices]
        self.images = np.stack([r.image for r in warped]) if warped else None
        self.cues = np.stack([r.cues for r in warped]) if warped else None
        self.masks = (np.stack([T.grid_nearest(r.mask, grid) if r.mask is not None
                                else np.zeros(grid, np.uint8) for r in warped])
                      if warped else None)
        self.grown = None if self.cues is None else self.cues.copy()
        self.pred = None if self.cues is None else np.zeros(self.cues.shape[:3], np.int64)

    def capture(self, batch: dict, aux: dict) -> None:
        """Keeps the step's growth of the fixed images in this host batch."""
        rows = [r for r, i in enumerate(batch["index"])
                if batch["valid"][r] and int(i) in self.row]
        if not rows:
            return
        grown = to_host(aux["images"]["grown"])
        pred = np.argmax(to_host(aux["images"]["crf"]), -1)
        for r in rows:
            k = self.row[int(batch["index"][r])]
            g, p = grown[r], pred[r]
            if not np.array_equal(batch["cues"][r], self.cues[k]):   # a flipped example
                g, p = g[:, ::-1], p[:, ::-1]
            self.grown[k], self.pred[k] = g, p

    def write(self, epoch: int, final: bool = False) -> None:
        if not is_writer() or self.images is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(self.dir / f"epoch_{epoch:03d}.npz", images=self.images,
                            cues=self.cues, grown=self.grown, pred=self.pred, masks=self.masks,
                            final=np.asarray(final))

    def on_step(self, steps_per_epoch: float):
        """A `train_loop` callback: capture every step, write at every epoch end."""
        every = max(1, round(steps_per_epoch))

        def fn(step, batch, aux, state):
            del state
            self.capture(batch, aux)
            if step % every == 0:
                self.write(step // every)

        return fn


def image_logger(exp: Experiment, every: int):
    """TensorBoard grid every `every` steps: per image (rows) cues | grown cues | prediction."""

    def fn(step, batch, aux, state):
        del state
        if step % every or not is_writer():
            return
        grown = to_host(aux["images"]["grown"])
        pred = np.argmax(to_host(aux["images"]["probs"]), -1)
        rows = [np.concatenate([viz.cue_colours(batch["cues"][i]), viz.cue_colours(grown[i]),
                                viz.label_colours(pred[i])], axis=1)
                for i in range(min(4, len(grown)))]
        exp.writer.image("dsrg", step, "cues_grown_prediction", np.concatenate(rows, axis=0))

    return fn


def run_dsrg(exp: Experiment) -> dict:
    """Trains the segmentation net with region growing; returns the stage's info."""
    cfg = exp.cfg
    cueset = load_cues(exp.path("cues.npz"))
    model, variables, conv = nets.build_model(cfg, "dsrg", nets.pretrained_backbone(exp))
    size = cfg.data.input_size
    grid = nets.output_grid(model, variables, size)
    if tuple(cueset.grid_size) != grid:
        raise ValueError(f"cues are on a {cueset.grid_size} grid but the segmentation net gives "
                         f"{grid} for {size}x{size} inputs")
    source = exp.dataset.source(cfg.data, "train", cues=cueset, with_saliency=False)
    source = dsrg_train_source(cfg, source, cueset)
    optim = cfg.dsrg.optim
    steps_per_epoch = len(source) / optim.batch_size
    hook = SupervisionHook(steps_per_epoch, cfg.data.num_classes)
    snapshots = GrowthSnapshots(exp, source, range(min(cfg.run.num_figure_images, len(source))),
                                grid)
    log_images = image_logger(exp, cfg.run.image_log_every)
    on_epoch = snapshots.on_step(steps_per_epoch)
    if not exp.path("dsrg", "checkpoints").exists():
        snapshots.write(0)

    def on_step(*args):
        on_epoch(*args)
        log_images(*args)

    variables, last = nets.train_stage(
        exp, "dsrg", variables=variables,
        make_step=lambda tx: steps.make_dsrg_train_step(model, tx, conv, exp.mesh, cfg.dsrg),
        source=source, transform=dsrg_transform(size, grid, with_mask=has_masks(source),
                                                flip=cfg.data.flip),
        hook=hook, on_step=on_step)
    hook.finish(optim.max_steps)
    snapshots.write(math.ceil(optim.max_steps / steps_per_epoch), final=True)
    return {"last": last, "supervision": hook.records, "grid": list(grid)}
